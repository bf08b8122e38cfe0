"""TAESD (sdweb.autoencoder_tiny) on the WebGPU backend, on lavapipe or whatever adapter wgpu finds:
decode and encode against the NumPy backend (the reference, itself equal to diffusers:
tests/test_autoencoder_tiny.py) in every weight precision, and a text-to-image run with TAESD
previews and the draft decoder against diffusers' StableDiffusionPipeline with vae=AutoencoderTiny;
where SDWEB_TAESD_DIR points at the trained TAESD, a real photo's round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sdweb.autoencoder_tiny import AutoencoderTiny
from sdweb.backends import numpy as nb
from sdweb.model import AutoencoderFolder, ModelFolder
from sdweb.pipeline import Pipeline
from gpu_checks import check  # noqa: E402
from test_autoencoder_tiny import photo, psnr, round_trip  # noqa: E402

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

PROMPT = "a lighthouse on a cliff at dusk"


def build(folder, backend, precision):
    store = folder.weights(precision, lazy=backend.takes_weight_refs)
    model = AutoencoderTiny(folder.config(), store.prefix(""), backend)
    store.finish()
    return model


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 1e-4), ("bf16", 1e-4)])
def test_decode_and_encode_match_numpy(taesd_tiny, precision, tol):
    """Both halves, the same held weights on both sides (so the bound is the f32 arithmetic's), a
    batch of two at a non-square size, latents with tails past the tanh clamp."""
    folder = AutoencoderFolder(taesd_tiny)
    ref, gpu = build(folder, nb, precision), build(folder, webgpu, precision)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 4, 5, 7), dtype=np.float32) * 4
    x = rng.uniform(-1, 1, (2, 3, 40, 56)).astype(np.float32)
    check(webgpu.numpy(gpu.decode(webgpu.tensor(z))), ref.decode(z), tol)
    check(webgpu.numpy(gpu.encode(webgpu.tensor(x))), ref.encode(x), tol)


@pytest.mark.parametrize("scheduler", ["euler", "dpm++2m"])
def test_previews_and_draft_decode_match_diffusers(sd1_tiny, taesd_tiny, diffusers_pipe, scheduler):
    """decoder="taesd" on WebGPU: the image of diffusers' pipeline with vae=AutoencoderTiny (>= 40 dB),
    and every step's TAESD preview equals the NumPy backend's (>= 40 dB). Both samplers are
    deterministic, so diffusers needs only the first latents."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from sdweb.schedulers import forced_options

    args = dict(steps=3, seed=11, width=64, height=48, scheduler=scheduler, decoder="taesd")
    runs = {}
    for backend in (nb, webgpu):
        events = []
        pipe = Pipeline(ModelFolder(sd1_tiny), backend, tiny_autoencoder=AutoencoderFolder(taesd_tiny))
        res = pipe.generate(PROMPT, progress=events.append, **args)
        runs[backend.name] = res, [p.preview for p in events if p.preview is not None]
    (got, got_previews), (ref, ref_previews) = runs["webgpu"], runs["numpy"]
    assert len(got_previews) == len(ref_previews) == 3
    for g, r in zip(got_previews, ref_previews):
        assert g.shape == r.shape == (1, 48, 64, 3) and psnr(g, r) >= 40

    pipe = diffusers_pipe(sd1_tiny)
    pipe.vae = diffusers.AutoencoderTiny.from_pretrained(taesd_tiny)
    cls = {"euler": diffusers.EulerDiscreteScheduler, "dpm++2m": diffusers.DPMSolverMultistepScheduler}[scheduler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **forced_options(scheduler))
    latents = torch.from_numpy(np.random.default_rng(11).standard_normal((1, 4, 6, 8), dtype=np.float32))
    out = pipe(PROMPT, num_inference_steps=3, height=48, width=64, latents=latents, output_type="np").images
    want = (out * 255).round().astype(np.uint8)
    assert psnr(got.images[0], want[0]) >= 40, f"PSNR {psnr(got.images[0], want[0]):.1f} dB"
    assert psnr(ref.images[0], want[0]) >= 40


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SDWEB_TAESD_DIR"), reason="SDWEB_TAESD_DIR (madebyollin/taesd's "
                    "config.json and diffusion_pytorch_model.safetensors) is not set")
def test_real_taesd_round_trip_of_a_photo():
    """The trained TAESD on the GPU: the photo's round trip as the NumPy backend's (>= 40 dB; that one
    equals diffusers', tests/test_autoencoder_tiny.py) and the photo's (>= 24 dB)."""
    folder = AutoencoderFolder(os.environ["SDWEB_TAESD_DIR"])
    image = photo("chelsea-256x168.png")
    ours = {}
    for backend in (nb, webgpu):
        ae = build(folder, backend, "fp32")
        ours[backend.name] = round_trip(image, lambda x: ae.encode(backend.tensor(x)),
                                        lambda z: backend.numpy(ae.decode(z)))
    assert psnr(ours["webgpu"], ours["numpy"]) >= 40
    assert psnr(ours["webgpu"], image) >= 24
