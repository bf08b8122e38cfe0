"""The command line: a working run, and every bad-input path (one-line error, non-zero exit,
nothing written)."""

import json
import shutil
import subprocess
import sys

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
