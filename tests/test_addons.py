"""Textual inversion, LoRA and LCM through the whole pipeline, against diffusers on the tiny models:
every image at PSNR >= 40 dB, on the NumPy backend and on WebGPU (lavapipe: the LoRAs fused on the
GPU by fuse_lora). Then the command line's flags for them, and their errors.

References: diffusers' load_textual_inversion (a diffusers multi-vector concept and an A1111 .pt);
load_lora_weights + fuse_lora (a PEFT LoRA of the UNet and the text encoder, made with peft as
tests/test_lora.py makes them; its kohya twin, whose reference is the PEFT file's fusion because
diffusers 0.42.1 drops kohya attention alphas that vary between modules; two LoRAs at once through
set_adapters; a kohya text-encoder-only LoRA); LatentConsistencyModelPipeline on lcm-tiny (an LCM
UNet with time_cond_proj_dim); and StableDiffusionPipeline with the LCM scheduler and a LoRA at
guidance 1 (the LCM-LoRA recipe). Each case also checks that its add-on changes the image, so a
run that ignored it would fail.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from PIL import Image

from sdweb.addons import FolderLibrary
from sdweb.cli import main
from sdweb.model import ModelFolder
from sdweb.pipeline import Pipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("peft")

from test_lora import make_lora  # noqa: E402  (tests/ is on sys.path under pytest)

TI_PROMPT = "a photo of <cat-toy> next to emb-one, at dusk"
PROMPT = "a watercolor lighthouse on a cliff at dusk"
RUN = dict(steps=3, guidance=7.5, seed=7, width=64, height=64, scheduler="euler", negative_prompt="blurry")


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def files(sd1_tiny, tmp_path_factory):
    """The add-on files: two PEFT LoRAs, the first one's kohya twin and its text-encoder half, a
    diffusers textual-inversion concept (3 vectors) and an A1111 .pt embedding (1 vector)."""
    out = tmp_path_factory.mktemp("addons")
    peft, kohya = make_lora(sd1_tiny, out / "first", seed=0)
    second, _ = make_lora(sd1_tiny, out / "second", seed=1)
    safetensors_torch.save_file(kohya, out / "kohya_style.safetensors")
    safetensors_torch.save_file({k: v for k, v in kohya.items() if k.startswith("lora_te_")}, out / "te_only.safetensors")
    g = torch.Generator().manual_seed(5)
    safetensors_torch.save_file({"<cat-toy>": torch.randn(3, 32, generator=g) * 0.05}, out / "learned_embeds.safetensors")
    torch.save({"string_to_param": {"*": torch.randn(1, 32, generator=g) * 0.05}, "name": "x"}, out / "emb-one.pt")
    return {"dir": out, "peft": peft, "second": second, "kohya": out / "kohya_style.safetensors",
            "te_only": out / "te_only.safetensors", "concept": out / "learned_embeds.safetensors",
            "a1111": out / "emb-one.pt"}


def diffusers_image(folder, prompt, *, negative_prompt="", steps, guidance, seed, width, height, scheduler=None,
                    loras=(), embeddings=(), lcm_pipeline=False, monkeypatch):
    """diffusers' image for these settings, with the noise contract's latents (and its later draws
    for the stochastic LCM scheduler). loras: [(path, scale)], fused; embeddings: [(path, token)]."""
    cls = diffusers.LatentConsistencyModelPipeline if lcm_pipeline else diffusers.StableDiffusionPipeline
    torch.set_num_threads(1)
    pipe = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if scheduler == "lcm":
        pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    elif scheduler == "euler":
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    for path, token in embeddings:
        pipe.load_textual_inversion(str(path), token=token)
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        pipe.load_lora_weights(str(path), adapter_name=name)
    if len(loras) == 1:
        pipe.fuse_lora(lora_scale=loras[0][1], adapter_names=names)
    elif loras:
        pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
        pipe.fuse_lora(adapter_names=names)
    rng = np.random.default_rng(seed)
    f = pipe.vae_scale_factor
    latents = torch.from_numpy(rng.standard_normal((1, 4, height // f, width // f), dtype=np.float32))
    monkeypatch.setattr(importlib.import_module("diffusers.schedulers.scheduling_lcm"), "randn_tensor",
                        lambda shape, **kw: torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)))
    kw = {} if lcm_pipeline else dict(negative_prompt=negative_prompt)
    with torch.no_grad():
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                   latents=latents, output_type="np", **kw)
    return (out.images[0] * 255).round().astype(np.uint8)


def cases(files, sd1_tiny, lcm_tiny):
    """name -> (folder, our generate() arguments, diffusers_image() arguments, the same run without
    the add-on, whose image must differ)."""
    lora = lambda *pairs: [(str(p), s) for p, s in pairs]  # noqa: E731
    return {
        "textual-inversion": (
            sd1_tiny, dict(RUN, prompt=TI_PROMPT, embeddings=[str(files["concept"]), str(files["a1111"])]),
            dict(RUN, prompt=TI_PROMPT, embeddings=[(files["concept"], None), (files["a1111"], "emb-one")]),
            dict(RUN, prompt=TI_PROMPT)),
        "lora-peft": (sd1_tiny, dict(RUN, prompt=PROMPT, loras=lora((files["peft"], 0.7))),
                      dict(RUN, prompt=PROMPT, loras=[(files["peft"], 0.7)]), dict(RUN, prompt=PROMPT)),
        "lora-kohya": (sd1_tiny, dict(RUN, prompt=PROMPT, loras=lora((files["kohya"], 0.7))),
                       dict(RUN, prompt=PROMPT, loras=[(files["peft"], 0.7)]), dict(RUN, prompt=PROMPT)),
        "two-loras": (sd1_tiny, dict(RUN, prompt=PROMPT, loras=lora((files["kohya"], 0.7), (files["second"], -0.4))),
                      dict(RUN, prompt=PROMPT, loras=[(files["peft"], 0.7), (files["second"], -0.4)]),
                      dict(RUN, prompt=PROMPT, loras=lora((files["kohya"], 0.7)))),
        "text-encoder-lora": (sd1_tiny, dict(RUN, prompt=PROMPT, loras=lora((files["te_only"], 1.0))),
                              dict(RUN, prompt=PROMPT, loras=[(files["te_only"], 1.0)]), dict(RUN, prompt=PROMPT)),
        "lcm-model": (lcm_tiny, dict(prompt=PROMPT, steps=4, seed=7, width=64, height=64),
                      dict(prompt=PROMPT, steps=4, guidance=8.5, seed=7, width=64, height=64, lcm_pipeline=True),
                      dict(prompt=PROMPT, steps=4, seed=7, width=64, height=64, guidance=1.0)),
        "lcm-lora": (sd1_tiny, dict(prompt=PROMPT, steps=4, guidance=1.0, seed=7, width=64, height=64, scheduler="lcm",
                                    loras=lora((files["peft"], 1.0))),
                     dict(prompt=PROMPT, steps=4, guidance=1.0, seed=7, width=64, height=64, scheduler="lcm",
                          loras=[(files["peft"], 1.0)]),
                     dict(prompt=PROMPT, steps=4, guidance=1.0, seed=7, width=64, height=64, scheduler="lcm")),
    }


@pytest.fixture(scope="module")
def references(files, sd1_tiny, lcm_tiny):
    """name -> (folder, ours, reference image, image without the add-on), the references computed once."""
    table, cache = cases(files, sd1_tiny, lcm_tiny), {}

    def get(name):
        if name not in cache:
            folder, ours, theirs, without = table[name]
            with pytest.MonkeyPatch.context() as mp:
                ref = diffusers_image(folder, monkeypatch=mp, **theirs)
            plain = Pipeline(ModelFolder(folder)).generate(**without).images[0]
            cache[name] = folder, ours, ref, plain
        return cache[name]

    return get


NAMES = ["textual-inversion", "lora-peft", "lora-kohya", "two-loras", "text-encoder-lora", "lcm-model", "lcm-lora"]


def backend_module(name):
    if name == "numpy":
        from sdweb.backends import numpy as nb

        return nb
    webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
    if not webgpu.available():
        pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)")
    return webgpu


@pytest.mark.parametrize("backend", ["numpy", pytest.param("webgpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", NAMES)
def test_image_equals_diffusers(references, name, backend):
    folder, ours, ref, plain = references(name)
    got = Pipeline(ModelFolder(folder), backend_module(backend)).generate(**ours)
    assert psnr(got.images[0], ref) >= 40, f"{name} on {backend}: PSNR {psnr(got.images[0], ref):.1f} dB"
    assert psnr(plain, ref) < 35, f"{name}: the add-on barely changes the image ({psnr(plain, ref):.1f} dB)"
    assert got.settings["loras"] == [{"name": n, "scale": s} for n, s in ours.get("loras", [])]
    assert got.settings["embeddings"] == ours.get("embeddings", [])


def test_lora_tag_equals_the_lora_setting(references, files, sd1_tiny):
    """<lora:NAME:0.7> in the prompt finds NAME in the library's folder and is removed from the text:
    the image is the --lora one."""
    _, ours, ref, _ = references("lora-kohya")
    pipe = Pipeline(ModelFolder(sd1_tiny), library=FolderLibrary(files["dir"]))
    got = pipe.generate(**dict(ours, prompt=PROMPT + " <lora:kohya_style:0.7>", loras=[]))
    assert psnr(got.images[0], ref) >= 40
    # te/unet scales apart: <lora:NAME:0:0.7> leaves the text encoder alone
    split = pipe.generate(**dict(ours, prompt=PROMPT + " <lora:kohya_style:0:0.7>", loras=[])).images[0]
    assert 0 < psnr(split, got.images[0]) < 60


def test_kept_components_follow_the_loras(files, sd1_tiny):
    """A pipeline that keeps its components (the page's small models) builds a component again when
    its LoRAs change, and not when they do not."""
    pipe = Pipeline(ModelFolder(sd1_tiny), keep_loaded=True)
    with_lora = dict(RUN, prompt=PROMPT, loras=[(str(files["kohya"]), 0.7)])
    a = pipe.generate(**with_lora)
    unet = pipe._loaded["unet"]
    assert pipe.generate(**with_lora).images.tobytes() == a.images.tobytes() and pipe._loaded["unet"] is unet
    base = pipe.generate(**dict(RUN, prompt=PROMPT))
    assert pipe._loaded["unet"] is not unet
    assert np.array_equal(base.images, Pipeline(ModelFolder(sd1_tiny)).generate(**dict(RUN, prompt=PROMPT)).images)


# --- the command line --------------------------------------------------------------------------------


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


GEN = ["generate", "--steps", "3", "--seed", "7", "--width", "64", "--height", "64", "--scheduler", "euler",
       "--negative-prompt", "blurry", "-q"]


def test_cli_loras_and_embeddings(files, sd1_tiny, tmp_path, capsys, monkeypatch):
    """--lora PATH:SCALE, --embedding, --embedding-dir and a tag found in --lora-dir give the
    pipeline's image, and the PNG records them."""
    monkeypatch.chdir(tmp_path)  # no ./embeddings or ./loras here: the defaults find nothing
    emb_dir = tmp_path / "embs"
    emb_dir.mkdir()
    (emb_dir / "emb-one.pt").write_bytes(files["a1111"].read_bytes())
    (emb_dir / "README.txt").write_text("not an embedding: skipped")
    out = tmp_path / "x.png"
    prompt = TI_PROMPT + " <lora:second:-0.4>"
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "second.safetensors").write_bytes(files["second"].read_bytes())
    code, _, err = run(GEN + ["--model", str(sd1_tiny), "--prompt", prompt, "--lora", f"{files['kohya']}:0.7",
                              "--embedding", str(files["concept"]), "--embedding-dir", str(emb_dir), "-o", str(out)],
                       capsys)
    assert code == 0, err
    want = Pipeline(ModelFolder(sd1_tiny)).generate(**dict(
        RUN, prompt=TI_PROMPT, loras=[(str(files["kohya"]), 0.7), (str(files["second"]), -0.4)],
        embeddings=[str(files["concept"]), str(emb_dir / "emb-one.pt")]))
    assert np.array_equal(np.asarray(Image.open(out)), want.images[0])
    text = Image.open(out).text
    params = json.loads(text["sdweb"])
    assert params["loras"] == [{"name": str(files["kohya"]), "scale": 0.7}]
    assert params["embeddings"] == [str(files["concept"]), str(emb_dir / "emb-one.pt")]
    assert params["prompt"] == prompt
    # A1111's text names the --lora file as a tag, as A1111 writes LoRAs
    assert text["parameters"].startswith(prompt + " <lora:kohya_style:0.7>\nNegative prompt: blurry\n")

    code, out_text, _ = run(["tokenize", "--model", str(sd1_tiny), "--embedding", str(files["concept"]),
                             "(a <cat-toy>:1.2) BREAK cat <lora:second:0.5>"], capsys)
    assert code == 0
    lines = out_text.splitlines()
    assert lines[0] == "chunk 1 of 2: 4 of 75 tokens"
    assert lines[2] == "(a</w>:1.2) (<cat-toy>#0:1.2) (<cat-toy>#1:1.2) (<cat-toy>#2:1.2)"
    assert lines[3] == "chunk 2 of 2: 1 of 75 tokens" and lines[5] == "cat</w>"
    assert lines[6] == "LoRA second: text encoder scale 0.5, UNet scale 0.5"


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdweb: error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cli_addon_errors(files, sd1_tiny, sd2_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd2_lora = tmp_path / "sd2.safetensors"
    _, kohya2 = make_lora(sd2_tiny, tmp_path / "sd2", seed=3)
    safetensors_torch.save_file(kohya2, sd2_lora)
    capsys.readouterr()  # diffusers' progress bars while the LoRA was made
    out = tmp_path / "x.png"
    base = GEN + ["--model", str(sd1_tiny), "-o", str(out)]
    code, _, err = run(base + ["--prompt", "a cat <lora:nowhere:0.5>"], capsys)
    one_line_error(code, err, "LoRA 'nowhere' not found", "loras")
    code, _, err = run(base + ["--prompt", "a cat", "--negative-prompt", "<lora:x:1>"], capsys)
    one_line_error(code, err, "negative prompt", "tags belong in the prompt")
    code, _, err = run(base + ["--prompt", "a cat", "--embedding-dir", "nope"], capsys)
    one_line_error(code, err, "--embedding-dir nope: no such folder")
    code, _, err = run(base + ["--prompt", "a cat", "--lora", f"{files['kohya']}:strong"], capsys)
    one_line_error(code, err, "not found")  # no number after the last ':': the whole text is the name
    # a LoRA made for another model: the file and its first bad key, before any image work
    code, _, err = run(base + ["--prompt", "a cat", "--lora", str(sd2_lora)], capsys)
    one_line_error(code, err, str(sd2_lora), "key 'lora_")
    # an embedding for another text-encoder width
    torch.save({"string_to_param": {"*": torch.zeros(1, 24)}}, tmp_path / "wide.pt")
    code, _, err = run(base + ["--prompt", "a cat", "--embedding", str(tmp_path / "wide.pt")], capsys)
    one_line_error(code, err, "wide.pt", "hidden_size 32")
    assert not out.exists() and not list(tmp_path.glob("*.part"))
