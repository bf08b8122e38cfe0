"""The command line: a working run, and every bad-input path (one-line error, non-zero exit,
nothing written)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdweb.cli import main
from sdweb.model import ModelFolder
from sdweb.pipeline import Pipeline

GEN = ["generate", "--prompt", "a red fox in snow", "--steps", "2", "--seed", "4", "-q"]


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sdweb: error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def model_copy(sd1_tiny, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(sd1_tiny, dst)
    return dst


def test_generate_writes_the_pipeline_image(sd1_tiny, tmp_path, capsys):
    out = tmp_path / "fox.png"
    inter = tmp_path / "inter"
    code, _, err = run(GEN + ["--model", str(sd1_tiny), "--output", str(out), "--save-intermediates",
                              str(inter), "--preview-every", "1", "--width", "64", "--height", "48",
                              "--scheduler", "ddim"], capsys)
    assert code == 0, err
    img = np.asarray(Image.open(out))
    want = Pipeline(ModelFolder(sd1_tiny)).generate("a red fox in snow", steps=2, seed=4, width=64, height=48,
                                                   scheduler="ddim")
    assert np.array_equal(img, want.images[0])
    assert sorted(p.name for p in inter.iterdir()) == ["step-0001.png", "step-0002.png"]
    text = Image.open(out).text
    params = json.loads(text["sdweb"])
    assert params["seed"] == 4 and params["prompt"] == "a red fox in snow" and params["scheduler"] == "ddim"
    assert text["parameters"] == ("a red fox in snow\nSteps: 2, Sampler: DDIM, Schedule type: Automatic, CFG scale: "
                                  f"7.5, Seed: 4, Size: 64x48, Model: {sd1_tiny}")
    assert "timings:" in err and "unet" in err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_taesd_previews_and_draft_decode(sd1_tiny, taesd_tiny, tmp_path, capsys, monkeypatch):
    """With madebyollin/taesd downloaded (./weights/), --save-intermediates writes its decode of every
    step's x0 at the image's size, the pipeline's previews; --decoder taesd writes the pipeline's
    draft; --preview approx the linear map, scaled to the image's size, about ten a run."""
    from sdweb.model import AutoencoderFolder

    monkeypatch.chdir(tmp_path)
    shutil.copytree(taesd_tiny, tmp_path / "weights" / "madebyollin" / "taesd")
    args = GEN + ["--model", str(sd1_tiny), "--width", "64", "--height", "48", "--scheduler", "euler", "--steps", "3"]
    events = []
    want = Pipeline(ModelFolder(sd1_tiny), tiny_autoencoder=AutoencoderFolder(taesd_tiny)).generate(
        "a red fox in snow", steps=3, seed=4, width=64, height=48, scheduler="euler", decoder="taesd",
        progress=events.append)
    previews = [p.preview[0] for p in events if p.preview is not None]
    assert len(previews) == 3

    code, _, err = run(args + ["--save-intermediates", "inter", "--decoder", "taesd", "-o", "draft.png"], capsys)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open("draft.png")), want.images[0])
    assert json.loads(Image.open("draft.png").text["sdweb"])["decoder"] == "taesd"
    assert sorted(p.name for p in (tmp_path / "inter").iterdir()) == ["step-0001.png", "step-0002.png", "step-0003.png"]
    for k, want_preview in enumerate(previews):
        assert np.array_equal(np.asarray(Image.open(f"inter/step-{k + 1:04d}.png")), want_preview)

    shutil.rmtree("inter")
    code, _, err = run(args + ["--save-intermediates", "inter", "--preview", "approx", "--steps", "20"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "inter").iterdir())
    assert names == [f"step-{k:04d}.png" for k in range(2, 21, 2)]
    assert Image.open("inter/step-0002.png").size == (64, 48)  # the latents' 8x6, each pixel 8x8
    assert json.loads(Image.open("out.png").text["sdweb"])["decoder"] == "vae"

    # a draft from an image: TAESD encodes it too (the pipeline's run, whose parity with diffusers
    # test_editing holds)
    from sdweb import picture

    code, _, err = run(args + ["--image", str(IMAGES / "chelsea.jpg"), "--strength", "0.7", "--decoder", "taesd",
                               "-o", "edit.png"], capsys)
    assert code == 0, err
    want = Pipeline(ModelFolder(sd1_tiny), tiny_autoencoder=AutoencoderFolder(taesd_tiny)).generate(
        "a red fox in snow", steps=3, seed=4, width=64, height=48, scheduler="euler", decoder="taesd", strength=0.7,
        image=picture.read(IMAGES / "chelsea.jpg"))
    assert set(want.timings) >= {"load_tiny_autoencoder_encoder", "vae_encoder"} and "load_vae_encoder" not in want.timings
    assert np.array_equal(np.asarray(Image.open("edit.png")), want.images[0])


def test_console_script_runs(sd1_tiny, tmp_path):
    out = tmp_path / "x.png"
    r = subprocess.run([sys.executable, "-m", "sdweb.cli", *GEN, "--model", str(sd1_tiny), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file()


def test_tokenize(sd1_tiny, capsys):
    code, out, _ = run(["tokenize", "--model", str(sd1_tiny), "a photo of a cat"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "chunk 1 of 1: 5 of 75 tokens"
    ids = json.loads(lines[1])
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and len(ids) == 77
    assert lines[2].split() == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]


def test_info(sd1_tiny, capsys):
    code, out, _ = run(["info", str(sd1_tiny)], capsys)
    assert code == 0
    for component in ("text_encoder", "unet", "vae"):
        assert f"  {component}:" in out
    assert out.count("all shapes validated") == 3


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needles", [
    (["--width", "50"], ["width 50", "multiple of"]),
    (["--height", "4096"], ["height 4096"]),
    (["--steps", "0"], ["steps 0", "1 to 1000"]),
    (["--steps", "1001"], ["steps 1001"]),
    (["--scheduler", "heun"], ["'heun'", "euler-a"]),
    (["--guidance", "-1"], ["guidance -1"]),
    (["--precision", "int8"], ["'int8'", "fp16"]),
    (["--output", "out.txt"], ["--output out.txt", ".png"]),
    (["--seed", "-1"], ["seed -1", "0 to 4294967295"]),
    (["--seed", "4294967296"], ["seed 4294967296"]),
    (["--preview-every", "0"], ["preview_every 0", "1 to 1000"]),
    (["--preview-every", "-3", "--save-intermediates", "inter"], ["preview_every -3"]),
    (["--num-images", "0"], ["num_images 0", "1 to 16"]),
    (["--clip-skip", "-1"], ["clip_skip -1"]),
    (["--clip-skip", "50"], ["clip_skip 50", "text encoder has"]),
    (["--backend", "cuda"], ["'cuda'", "numpy"]),
    (["--variant", "../x"], ["variant '../x'"]),
    (["--preview", "taesd"], ["--preview taesd", "--save-intermediates DIR"]),
    (["--decoder", "taesd"], ["tiny autoencoder madebyollin/taesd not found", "sdweb download madebyollin/taesd"]),
    (["--decoder", "me/tiny", "--save-intermediates", "inter"], ["tiny autoencoder me/tiny not found"]),
])
def test_bad_settings(sd1_tiny, tmp_path, capsys, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(GEN + ["--model", str(sd1_tiny)] + args, capsys)
    one_line_error(code, err, *needles)
    assert list(tmp_path.iterdir()) == []


def test_huge_num_images_is_refused_before_any_work(sd1_tiny, tmp_path, capsys, monkeypatch):
    """The count is checked before output names, the model or anything else is allocated."""
    import tracemalloc

    monkeypatch.chdir(tmp_path)
    tracemalloc.start()
    try:
        code, _, err = run(GEN + ["--model", str(sd1_tiny), "--num-images", "1000000"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_error(code, err, "num_images 1000000", "1 to 16")
    assert peak < 10 << 20, f"{peak / 2**20:.0f} MiB allocated before refusing"
    assert list(tmp_path.iterdir()) == []


def test_bad_argument_type(sd1_tiny, capsys):
    with pytest.raises(SystemExit) as e:
        main(GEN + ["--model", str(sd1_tiny), "--steps", "many"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--steps" in err and "'many'" in err


def test_unwritable_output(sd1_tiny, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(GEN + ["--model", str(sd1_tiny), "--output", str(blocker / "out.png")], capsys)
    one_line_error(code, err, "does not exist")
    code, _, err = run(GEN + ["--model", str(sd1_tiny), "--output", str(tmp_path / "nope" / "o.png")], capsys)
    one_line_error(code, err, "nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_model_folder(tmp_path, capsys):
    code, _, err = run(GEN + ["--model", str(tmp_path / "nothing"), "-o", str(tmp_path / "o.png")], capsys)
    one_line_error(code, err, "nothing")
    code, _, err = run(GEN + ["--model", "someone/not-downloaded", "-o", str(tmp_path / "o.png")], capsys)
    one_line_error(code, err, "someone/not-downloaded", "sdweb download")
    assert list(tmp_path.iterdir()) == []


def test_missing_component(model_copy, tmp_path, capsys):
    shutil.rmtree(model_copy / "unet")
    out = tmp_path / "o.png"
    code, _, err = run(GEN + ["--model", str(model_copy), "-o", str(out)], capsys)
    one_line_error(code, err, "unet")
    assert not out.exists()


def test_truncated_safetensors(model_copy, tmp_path, capsys):
    f = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.png"
    code, _, err = run(GEN + ["--model", str(model_copy), "-o", str(out)], capsys)
    one_line_error(code, err, "diffusion_pytorch_model.safetensors")
    assert not out.exists()


def test_corrupt_safetensors_header(model_copy, tmp_path, capsys):
    f = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:12] = b"\x00\xff{["  # garbage inside the JSON header
    f.write_bytes(bytes(data))
    out = tmp_path / "o.png"
    code, _, err = run(GEN + ["--model", str(model_copy), "-o", str(out)], capsys)
    one_line_error(code, err, "diffusion_pytorch_model.safetensors")
    assert not out.exists()


def test_shape_disagrees_with_config(model_copy, tmp_path, capsys):
    cfg_path = model_copy / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["cross_attention_dim"] = cfg["cross_attention_dim"] * 2
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "o.png"
    code, _, err = run(GEN + ["--model", str(model_copy), "-o", str(out)], capsys)
    one_line_error(code, err, "attn2.to_k.weight", "but the config needs")
    assert not out.exists()


# --- runs from an image ---------------------------------------------------------------------------

IMAGES = Path(__file__).resolve().parent / "data" / "images"


def test_generate_from_an_image_records_its_inputs(sd1_tiny, tmp_path, capsys):
    """--image/--mask/--strength run Pipeline.generate on the same files, and the PNG's parameters
    name each input file with its sha256; a resize is said."""
    import hashlib

    from sdweb import picture

    mask = np.zeros((96, 144), np.uint8)
    mask[20:70, 60:130] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "cat.png"
    code, _, err = run(GEN + ["--model", str(sd1_tiny), "--image", str(IMAGES / "chelsea.jpg"), "--mask",
                              str(tmp_path / "mask.png"), "--strength", "0.9", "--steps", "3", "--width", "128",
                              "--height", "80", "-o", str(out)], capsys)
    assert code == 0, err
    assert "the image is 144x96 pixels; it is resized to 128x80 with Lanczos" in err
    want = Pipeline(ModelFolder(sd1_tiny)).generate(
        "a red fox in snow", steps=3, seed=4, width=128, height=80, strength=0.9,
        image=picture.read(IMAGES / "chelsea.jpg"), mask=picture.read(tmp_path / "mask.png", what="mask"))
    assert np.array_equal(np.asarray(Image.open(out)), want.images[0])
    params = json.loads(Image.open(out).text["sdweb"])
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (IMAGES / "chelsea.jpg", tmp_path / "mask.png")}
    assert params["image"] == {"name": "chelsea.jpg", "sha256": sha["chelsea.jpg"], "width": 144, "height": 96}
    assert params["mask"] == {"name": "mask.png", "sha256": sha["mask.png"], "width": 144, "height": 96}
    assert params["strength"] == 0.9 and params["outpaint"] is None


def test_settings_from_a_run_from_an_image_asks_for_the_image(sd1_tiny, tmp_path, capsys):
    """A PNG names the files it was made from but does not hold them: --settings-from wants --image
    again, and with it (and the mask) remakes the image."""
    mask = tmp_path / "mask.png"
    Image.fromarray(np.tri(96, 96, dtype=np.uint8) * 255).save(mask)
    first = tmp_path / "first.png"
    code, _, err = run(GEN + ["--model", str(sd1_tiny), "--image", ASTRONAUT, "--mask", str(mask), "--strength",
                              "0.8", "--steps", "4", "-o", str(first)], capsys)
    assert code == 0, err
    assert "Denoising strength: 0.8" in Image.open(first).text["parameters"]
    code, _, err = run(["generate", "--settings-from", str(first), "-q", "-o", str(tmp_path / "x.png")], capsys)
    one_line_error(code, err, f"--settings-from {first}: it was made from the image astronaut.png (sha256",
                   "give that file with --image")
    again = tmp_path / "again.png"
    code, _, err = run(["generate", "--settings-from", str(first), "--image", ASTRONAUT, "--mask", str(mask), "-q",
                        "-o", str(again)], capsys)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    assert not (tmp_path / "x.png").exists()


def _make_inputs(folder):
    """Input files that are wrong in every way a file can be, in `folder`."""
    (folder / "notes.txt").write_text("not an image")
    good = (IMAGES / "astronaut.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (9000, 8)).save(folder / "huge.png")
    Image.new("L", (96, 80)).save(folder / "small-mask.png")
    Image.fromarray(np.zeros((96, 96), np.uint16)).save(folder / "deep-mask.png")  # 16-bit grayscale
    Image.new("RGBA", (96, 96), (255, 255, 255, 0)).save(folder / "clear-mask.png")


ASTRONAUT = str(IMAGES / "astronaut.png")
BAD_INPUTS = {  # case -> (arguments, with {in} the folder of _make_inputs; what the one line says)
    "missing": (["--image", "{in}/gone.png"], ["image", "gone.png", "cannot be read"]),
    "not an image": (["--image", "{in}/notes.txt"], ["image", "notes.txt", "is not an image file"]),
    "damaged": (["--image", "{in}/cut.png"], ["image", "cut.png", "is damaged"]),
    "huge": (["--image", "{in}/huge.png"], ["huge.png is 9000x8 pixels, far larger"]),
    "mask size": (["--image", ASTRONAUT, "--mask", "{in}/small-mask.png"],
                  ["mask small-mask.png is 96x80", "image astronaut.png is 96x96", "the image's size"]),
    "mask mode": (["--image", ASTRONAUT, "--mask", "{in}/deep-mask.png"],
                  ["deep-mask.png has pixel mode I;16", "8-bit grayscale"]),
    "mask transparency": (["--image", ASTRONAUT, "--mask", "{in}/clear-mask.png"],
                          ["clear-mask.png has transparent pixels"]),
    "mask alone": (["--mask", "{in}/small-mask.png"], ["mask applies to a run from an image"]),
    "strength 0": (["--image", ASTRONAUT, "--strength", "0"], ["strength 0.0 is not allowed", "at most 1"]),
    "strength 1.5": (["--image", ASTRONAUT, "--strength", "1.5"], ["strength 1.5"]),
    "strength alone": (["--strength", "0.5"], ["strength applies to a run from an image"]),
    "no step left": (["--image", ASTRONAUT, "--strength", "0.3"], ["strength 0.3 with 2 steps runs no step"]),
    "outpaint": (["--image", ASTRONAUT, "--outpaint", "8,0,0,0"], ["outpaint 8,0,0,0", "multiple of 16"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_files_and_settings(sd1_tiny, tmp_path, capsys, monkeypatch, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _make_inputs(inputs)
    args, needles = BAD_INPUTS[case]
    monkeypatch.chdir(tmp_path)
    before = sorted(inputs.iterdir())
    code, _, err = run(GEN + ["--model", str(sd1_tiny)] + [a.replace("{in}", str(inputs)) for a in args], capsys)
    one_line_error(code, err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"] and sorted(inputs.iterdir()) == before


def test_inpainting_model_without_a_mask(sd1_inpaint_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in ([], ["--image", str(IMAGES / "astronaut.png")]):
        code, _, err = run(GEN + ["--model", str(sd1_inpaint_tiny)] + args, capsys)
        one_line_error(code, err, "is an inpainting model", "give it an image and a mask")
    assert list(tmp_path.iterdir()) == []
    code, _, err = run(GEN + ["--model", str(sd1_inpaint_tiny), "--image", str(IMAGES / "astronaut.png"),
                              "--outpaint", "0,0,32,0"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "out.png").size == (128, 96)
