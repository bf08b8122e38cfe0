"""Settings in PNGs (sdweb.infotext): AUTOMATIC1111's `parameters` text as A1111 writes and parses it,
sdweb's own JSON chunk, the CLI's `--settings-from`, and a real third-party reader (`sd-parsers` from
PyPI) recognising sdweb's PNGs as AUTOMATIC1111 output."""

import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from sdweb import infotext
from sdweb.cli import main
from sdweb.errors import ConfigError

# Written by AUTOMATIC1111's webui: the example in its own infotext_utils.parse_generation_parameters
# docstring (an early version: combined sampler names, no schedule type), and one as 1.10 writes it
# (Schedule type, Clip skip, a quoted value holding commas and colons, Version), with a two-line prompt.
A1111_OLD = """girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate
Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""
A1111_NEW = """masterpiece, a lighthouse on a cliff at dusk,
oil painting <lora:add_detail:0.7>
Negative prompt: blurry, lowres
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3889221, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1"""


def test_reads_a1111s_own_infotexts():
    r = infotext.parse_parameters(A1111_OLD)
    assert r.request == {
        "prompt": A1111_OLD.split("\n")[0], "negative_prompt": A1111_OLD.split("\n")[1][len("Negative prompt: "):],
        "steps": 20, "scheduler": "euler-a", "guidance": 7.0, "seed": 965400086, "width": 512, "height": 512}
    assert r.notes == ()
    r = infotext.parse_parameters(A1111_NEW)
    assert r.request == {
        "prompt": "masterpiece, a lighthouse on a cliff at dusk,\noil painting <lora:add_detail:0.7>",
        "negative_prompt": "blurry, lowres", "steps": 30, "scheduler": "dpm++2m-karras", "guidance": 6.5,
        "seed": 3889221, "width": 512, "height": 768, "clip_skip": 1}
    assert len(r.notes) == 1 and "'v1-5-pruned-emaonly'" in r.notes[0] and "owner/name" in r.notes[0]


@pytest.mark.parametrize("sampler, schedule, want", [
    ("DPM++ 2M Karras", None, "dpm++2m-karras"),  # before A1111 1.9
    ("DPM++ 2M", None, "dpm++2m"),  # before 1.9: the uniform schedule
    ("DPM++ 2M", "Automatic", "dpm++2m-karras"),  # 1.9+: its default schedule is Karras
    ("DPM++ 2M", "Uniform", "dpm++2m"),
    ("PLMS", "Automatic", "pndm"),
    ("DDIM", None, "ddim"),
    ("Euler", "Automatic", "euler"),
    ("LCM", "Automatic", "lcm"),
    ("DDPM", None, "ddpm"),
])
def test_a1111_sampler_names(sampler, schedule, want):
    line = f"Steps: 4, Sampler: {sampler}, " + (f"Schedule type: {schedule}, " if schedule else "") + "CFG scale: 7, Seed: 1"
    assert infotext.parse_parameters(f"a cat\n{line}").request["scheduler"] == want


def test_a_sampler_sdweb_lacks_is_a_note_not_an_error():
    r = infotext.parse_parameters("a cat\nSteps: 4, Sampler: DPM++ SDE, Schedule type: Exponential, CFG scale: 7, Seed: 1")
    assert "scheduler" not in r.request and r.request["steps"] == 4
    assert len(r.notes) == 1 and "'DPM++ SDE'" in r.notes[0]


def test_writes_create_infotexts_format():
    s = dict(model="stable-diffusion-v1-5/stable-diffusion-v1-5", prompt="a lighthouse, at dusk",
             negative_prompt="blurry", steps=25, guidance=7.5, seed=42, scheduler="dpm++2m-karras", width=512,
             height=768, clip_skip=1)
    assert infotext.format_parameters(s) == (
        "a lighthouse, at dusk\nNegative prompt: blurry\n"
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, "
        "Model: stable-diffusion-v1-5/stable-diffusion-v1-5, Clip skip: 2")
    # no negative prompt: no line for it; clip skip 0 (A1111's 1) is left out; a colon in a value is quoted
    s.update(negative_prompt="", clip_skip=0, guidance=7.0, scheduler="pndm", model="C:/models/sd")
    assert infotext.format_parameters(s) == (
        'a lighthouse, at dusk\nSteps: 25, Sampler: PLMS, Schedule type: Automatic, CFG scale: 7, Seed: 42, '
        'Size: 512x768, Model: "C:/models/sd"')
    # a run from an image: A1111's img2img field for the strength
    s.update(strength=0.75, image={"name": "cat.jpg", "sha256": "ab" * 32, "width": 512, "height": 768})
    assert infotext.format_parameters(s).endswith(', Model: "C:/models/sd", Denoising strength: 0.75')
    # the settings' LoRAs go into the prompt as A1111 writes them: <lora:the file's stem:scale>
    s.update(loras=[{"name": "loras/film grain.safetensors", "scale": 0.7}, {"name": "lcm-lora-sdv1-5", "scale": 1.0}])
    assert infotext.format_parameters(s).split("\n")[0] == \
        "a lighthouse, at dusk <lora:film grain:0.7> <lora:lcm-lora-sdv1-5:1>"


@pytest.mark.parametrize("scheduler", list(infotext.SAMPLERS))
def test_format_then_parse_gives_the_settings_back(scheduler):
    s = dict(model="owner/name", prompt="line one, (weighted:1.2)\nline two", negative_prompt="a: b, c", steps=7,
             guidance=3.5, seed=4294967295, scheduler=scheduler, width=448, height=640, clip_skip=2)
    r = infotext.parse_parameters(infotext.format_parameters(s))
    assert r.request == s and r.notes == ()


def _png(tmp_path, text: dict, name="in.png"):
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    path = tmp_path / name
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_read_png_prefers_sdwebs_json_and_refuses_what_carries_nothing(tmp_path):
    exact = dict(model="owner/name", prompt="p", negative_prompt="", steps=3, guidance=2.0, seed=5, scheduler="ddim",
                 width=64, height=64, num_images=1, clip_skip=0, precision="fp16", variant="fp16", backend="webgpu",
                 preview_every=1)
    r = infotext.read_png(_png(tmp_path, infotext.png_text(exact)).read_bytes())
    assert r.source == "sdweb" and r.request == {k: v for k, v in exact.items() if k in infotext.RESTORED}
    r = infotext.read_png(_png(tmp_path, {"parameters": A1111_OLD}).read_bytes())
    assert r.source == "parameters" and r.request["seed"] == 965400086
    with pytest.raises(ConfigError, match="no settings"):
        infotext.read_png(_png(tmp_path, {"Comment": "hello"}).read_bytes())
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    with pytest.raises(ConfigError, match="JPEG"):
        infotext.read_png((tmp_path / "x.jpg").read_bytes())
    with pytest.raises(ConfigError, match="not a PNG"):
        infotext.read_png(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ConfigError, match="Size: big"):
        infotext.read_png(_png(tmp_path, {"parameters": "p\nSteps: 2, Seed: 3, Size: big"}).read_bytes())


GEN = ["generate", "--steps", "2", "--width", "64", "--height", "64", "-q"]


def test_cli_png_is_read_by_sd_parsers_as_automatic1111(sd1_tiny, tmp_path, capsys):
    """A real reader of A1111 metadata (sd-parsers) recognises sdweb's PNG as AUTOMATIC1111 output."""
    sd_parsers = pytest.importorskip("sd_parsers")  # in the [test] extra
    out = tmp_path / "a.png"
    assert main(GEN + ["--model", str(sd1_tiny), "--prompt", "a red fox, in snow", "--negative-prompt", "blurry, dark",
                       "--seed", "77", "--guidance", "6.5", "--scheduler", "euler-a", "-o", str(out)]) == 0
    info = sd_parsers.ParserManager().parse(str(out))
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    [sampler] = info.samplers
    assert sampler.name == "Euler a"
    assert [p.value for p in sampler.prompts] == ["a red fox, in snow"]
    assert [p.value for p in sampler.negative_prompts] == ["blurry, dark"]
    assert sampler.parameters["seed"] == "77" and sampler.parameters["steps"] == "2"
    assert sampler.parameters["cfg_scale"] == "6.5" and info.metadata["Size"] == "64x64"
    assert sampler.model.name == str(sd1_tiny)


def test_cli_settings_from_remakes_the_image_and_flags_override(sd1_tiny, tmp_path, capsys, monkeypatch):
    first = tmp_path / "first.png"
    assert main(GEN + ["--model", str(sd1_tiny), "--prompt", "a blue bird", "--seed", "5", "--scheduler", "dpm++2m",
                       "--num-images", "2", "-o", str(first)]) == 0
    second_image = tmp_path / "first-1.png"  # seed 6
    again = tmp_path / "again.png"
    assert main(["generate", "--settings-from", str(second_image), "-q", "-o", str(again)]) == 0
    # made alone rather than second in a batch: batched matmuls may round differently in the last bit
    diff = np.abs(np.asarray(Image.open(again), dtype=int) - np.asarray(Image.open(second_image), dtype=int))
    assert diff.max() <= 1 and diff.mean() < 0.01
    assert json.loads(Image.open(again).text["sdweb"])["seed"] == 6
    # a flag wins over the PNG: another seed, another image, the rest as the PNG says
    other = tmp_path / "other.png"
    assert main(["generate", "--settings-from", str(second_image), "--seed", "9", "-q", "-o", str(other)]) == 0
    s = json.loads(Image.open(other).text["sdweb"])
    assert s["seed"] == 9 and s["prompt"] == "a blue bird" and s["scheduler"] == "dpm++2m"
    assert not np.array_equal(np.asarray(Image.open(other)), np.asarray(Image.open(second_image)))
    # an A1111 PNG names a checkpoint, not a model sdweb can find: --model is asked for, in one line
    capsys.readouterr()
    a1111 = _png(tmp_path, {"parameters": A1111_OLD})
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--settings-from", str(a1111), "-q", "-o", "x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdweb: error: --model is required") and "\n" not in err
    assert main(["generate", "--settings-from", "missing.png", "--model", str(sd1_tiny), "-q"]) == 2
    assert "--settings-from missing.png" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
