"""f16 compute on the WebGPU backend against diffusers in fp32 (the reference, not our own f32 path):
every scheduler family on the SD 1.x tiny model with CFG, and SD 2.x's v-prediction, at PSNR >= 30 dB
on the final image (measured: 54 to 56 dB on SD 1.x, 44 dB on SD 2.x); the latents of every step within
5e-2 x max|ref| of diffusers' (f16's 2^-11 roundings, 2e-3 of a UNet's output, grow through a
multistep solver's steps: measured 3e-3 (DDIM) to 2.4e-2 (DPM++ 2M Karras, v-prediction)). The
UNet and the text encoder compute in f16 (settings.stage_compute); the VAE in f32, as the models'
force_upcast asks (diffusers' default)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdweb.model import ModelFolder  # noqa: E402
from sdweb.pipeline import Pipeline  # noqa: E402
from sdweb.schedulers import SCHEDULERS  # noqa: E402
from test_pipeline import NEGATIVE, PROMPT, psnr, run_diffusers  # noqa: E402

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available() or "f16" not in webgpu.compute_dtypes():
    pytest.skip("no WebGPU adapter with shader-f16 (lavapipe has it: mesa-vulkan-drivers)", allow_module_level=True)

def compare(folder, diffusers_pipe, monkeypatch, name, steps=4, seed=11):
    ours = Pipeline(ModelFolder(folder), webgpu, compute="f16", keep_loaded=True)
    m = ours.info.size_multiple
    width, height = 4 * m, 3 * m
    latents = []
    res = ours.generate(PROMPT, NEGATIVE, steps=steps, guidance=7.5, seed=seed, scheduler=name, width=width,
                        height=height, progress=lambda p: p.stage == "unet" and p.step and latents.append(p.latents))
    assert res.settings["compute"] == "f16"
    ref_steps, ref_image = run_diffusers(diffusers_pipe(folder), monkeypatch, name, steps=steps, guidance=7.5,
                                         seed=seed, width=width, height=height, negative=NEGATIVE)
    for got, ref in zip(latents, ref_steps):
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 5e-2, f"{name}: latents rel err {err:.2e}"
    p = psnr(res.images[0], ref_image[0])
    print(f"f16 compute vs diffusers fp32: {folder.name} {name}: PSNR {p:.1f} dB")  # the figure (pytest -s)
    assert p >= 30, f"{name}: PSNR {p:.1f} dB against diffusers fp32"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_sd1_every_scheduler_in_f16(sd1_tiny, diffusers_pipe, monkeypatch, name):
    compare(sd1_tiny, diffusers_pipe, monkeypatch, name)


def test_sd2_v_prediction_in_f16(sd2_tiny, diffusers_pipe, monkeypatch):
    compare(sd2_tiny, diffusers_pipe, monkeypatch, "dpm++2m-karras")


def test_runs_from_an_image_in_f16(sd1_tiny, sd1_inpaint_tiny, diffusers_pipe, monkeypatch):
    """img2img and the 9-channel UNet's inpainting (its mask and masked-image latents made in the
    UNet's f16) against diffusers' Img2Img and Inpaint pipelines in fp32, at f16's bounds."""
    from test_editing import check, image, soft_mask

    check("img2img", sd1_tiny, diffusers_pipe, monkeypatch, "euler-a", img=image("astronaut.png"), strength=0.7,
          steps=4, backend=webgpu, compute="f16")
    img = image("coffee.webp")
    check("inpaint", sd1_inpaint_tiny, diffusers_pipe, monkeypatch, "dpm++2m", img=img,
          mask=soft_mask(img.width, img.height), strength=1.0, steps=4, width=112, height=80, backend=webgpu,
          compute="f16")
