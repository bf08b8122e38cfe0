"""Whole text-to-image runs of the three tiny test models on the WebGPU backend against the NumPy
backend (the reference): images at PSNR >= 40 dB, for two schedulers per model, every weight
precision, CFG with two images, and `sdweb generate --backend webgpu` through the CLI.

Sizes and step counts are small so the file runs in seconds on lavapipe."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from PIL import Image

from sdweb.backends import numpy as nb
from sdweb.cli import main
from sdweb.model import ModelFolder
from sdweb.pipeline import Pipeline

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

PROMPT = "a lighthouse on a cliff at dusk"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


CASES = [  # model fixture, scheduler, precision, keyword arguments of generate
    ("sd1_tiny", "euler", "fp32", {}),
    ("sd1_tiny", "dpm++2m", "fp16", dict(num_images=2, width=64, height=48)),
    ("sd2_tiny", "ddim", "fp32", {}),
    ("sd2_tiny", "euler-a", "bf16", dict(negative_prompt="fog")),  # stochastic: noise from the same generators
    ("nomid_tiny", "pndm", "fp32", dict(guidance=1.0)),  # no CFG: batch 1 through the UNet
    ("nomid_tiny", "dpm++2m-karras", "fp16", {}),
]


@pytest.mark.parametrize("fixture,scheduler,precision,kw", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_pipeline_matches_numpy(request, fixture, scheduler, precision, kw):
    folder = ModelFolder(request.getfixturevalue(fixture))
    args = dict(steps=3, seed=11, width=64, height=64, scheduler=scheduler) | kw
    ref = Pipeline(folder, nb, precision=precision).generate(PROMPT, **args)
    latents = []
    got = Pipeline(folder, webgpu, precision=precision).generate(
        PROMPT, progress=lambda p: p.stage == "unet" and p.step and latents.append(p.latents), **args)
    # Progress.latents is a host array on every backend, the last one the result's latents
    assert latents and all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in latents)
    np.testing.assert_array_equal(latents[-1], got.latents)
    assert got.images.shape == ref.images.shape
    for g, r in zip(got.images, ref.images):
        assert psnr(g, r) >= 40, f"PSNR {psnr(g, r):.1f} dB"
    assert got.settings["backend"] == "webgpu"


def test_components_free_their_gpu_memory(sd2_tiny):
    ctx = webgpu.context()
    pipe = Pipeline(ModelFolder(sd2_tiny), webgpu)
    gc.collect()
    base = ctx.bytes_in_use
    peaks = []
    for steps in (1, 2, 2):
        ctx.reset_peak()
        pipe.generate(PROMPT, steps=steps, seed=1, width=64, height=64)
        gc.collect()
        assert ctx.bytes_in_use == base  # every activation and weight given back
        peaks.append(ctx.peak_bytes)
    assert peaks[2] == peaks[1]  # no growth from run to run: the pool is reused and trimmed


def test_cli_generate_on_webgpu(sd1_tiny, tmp_path, capsys):
    out = tmp_path / "gpu.png"
    code = main(["generate", "--prompt", PROMPT, "--steps", "2", "--seed", "5", "-q", "--model", str(sd1_tiny),
                 "--width", "64", "--height", "64", "--scheduler", "ddim", "--backend", "webgpu", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "falling back" not in err
    want = Pipeline(ModelFolder(sd1_tiny)).generate(PROMPT, steps=2, seed=5, width=64, height=64, scheduler="ddim")
    assert psnr(np.asarray(Image.open(out)), want.images[0]) >= 40


def test_cli_falls_back_without_an_adapter(sd1_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(webgpu, "available", lambda: False)
    out = tmp_path / "cpu.png"
    code = main(["generate", "--prompt", PROMPT, "--steps", "1", "--seed", "5", "-q", "--model", str(sd1_tiny),
                 "--width", "64", "--height", "64", "--backend", "webgpu", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "falling back to the NumPy backend" in err
    assert out.is_file()


# --- runs from an image (their parity with diffusers on this backend: tests/test_editing.py) ------------

def _mask(width, height):
    from sdweb import picture

    m = np.zeros((height, width), np.uint8)
    m[height // 4: 3 * height // 4, width // 3:] = 255
    buf = __import__("io").BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    return picture.read(buf.getvalue(), "mask.png", "mask")


def test_a_run_from_an_image_frees_its_gpu_memory(sd1_inpaint_tiny):
    from pathlib import Path

    from sdweb import picture

    ctx = webgpu.context()
    pipe = Pipeline(ModelFolder(sd1_inpaint_tiny), webgpu)
    image = picture.read(Path(__file__).resolve().parent / "data" / "images" / "astronaut.png")
    gc.collect()
    base = ctx.bytes_in_use
    pipe.generate(PROMPT, steps=1, seed=1, image=image, mask=_mask(96, 96))
    gc.collect()
    assert ctx.bytes_in_use == base  # the encoder half, the UNet and the decoder each given back
