"""Runs from an image against diffusers 0.42.1's StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline on the tiny test models, fp32, NumPy backend: img2img with every
scheduler on an SD 1.x-style model and three on the SD 2.x-style one (v-prediction), inpainting on
4-channel models (the known region put back each step) and the 9-channel inpainting model, strength
below 1 and 1, batches, guidance on and off, non-square images, images resized with Lanczos, masks
of several modes, outpainting. Final latents within 1e-4 x max|reference|, images at PSNR >= 40 dB,
and as many UNet steps as diffusers takes.

diffusers is handed the noise contract's draws: its pipelines' and schedulers' `randn_tensor` are
patched to return, per call, each image's next standard normals from `default_rng(seed + k)`; its VAE
encodings take the posterior mean (`retrieve_latents` with sample_mode="argmax"), as sdweb's do.
The WebGPU backend (the VAE's encoder on the GPU too) is held to the same bounds on an img2img, a
4-channel and a 9-channel inpainting case.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from sdweb import picture  # noqa: E402
from sdweb.model import AutoencoderFolder, ModelFolder  # noqa: E402
from sdweb.pipeline import Pipeline  # noqa: E402
from sdweb.schedulers import forced_options  # noqa: E402

# diffusers' own: NumPy 2 on its schedulers' tensors, and its notice that one image serves a batch
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:You have passed 2 text prompts:FutureWarning")]
IMAGES = Path(__file__).resolve().parent / "data" / "images"
PROMPT = "a watercolor lighthouse on a cliff at dusk"
NEGATIVE = "blurry"
DIFFUSERS_CLASS = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
                   "euler-a": "EulerAncestralDiscreteScheduler", "dpm++2m": "DPMSolverMultistepScheduler",
                   "dpm++2m-karras": "DPMSolverMultistepScheduler", "lcm": "LCMScheduler", "ddpm": "DDPMScheduler"}
DRAWING_MODULES = ("schedulers.scheduling_euler_ancestral_discrete", "schedulers.scheduling_ddpm",
                   "schedulers.scheduling_lcm", "pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
                   "pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint")
ENCODING_MODULES = DRAWING_MODULES[3:]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def image(name: str) -> picture.Picture:
    return picture.read(IMAGES / name)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(array)
    (im.convert(mode) if mode else im).save(buf, format="PNG")
    return buf.getvalue()


def soft_mask(width: int, height: int, mode: str = "L") -> picture.Picture:
    """A white ellipse with soft edges on black, right of centre: binarising at 0.5 and the resize
    both decide pixels here."""
    y, x = np.mgrid[:height, :width]
    d = ((x - 0.6 * width) / (0.3 * width)) ** 2 + ((y - 0.5 * height) / (0.35 * height)) ** 2
    grey = np.clip((1.3 - d) * 255, 0, 255).astype(np.uint8)
    data = png(np.stack([grey] * 3, -1) if mode == "RGB" else grey, mode if mode == "1" else None)
    return picture.read(data, f"mask-{mode}.png", "mask")


def diffusers_run(kind, folder, diffusers_pipe, monkeypatch, name, *, seed, num_images, tiny=None, tiling=False,
                  **call):
    """A diffusers img2img or inpaint run fed the noise contract, with vae=AutoencoderTiny from folder
    `tiny` where given, the VAE in tiles with `tiling`; -> (latents after each step, images)."""
    base = diffusers_pipe(folder)
    if tiling:  # vae.enable_tiling() on the shared pipeline's VAE, for this test only
        monkeypatch.setattr(base.vae, "use_tiling", True)
    sched = getattr(diffusers, DIFFUSERS_CLASS[name]).from_config(base.scheduler.config, **forced_options(name))
    cls = diffusers.StableDiffusionImg2ImgPipeline if kind == "img2img" else diffusers.StableDiffusionInpaintPipeline
    vae = base.vae if tiny is None else diffusers.AutoencoderTiny.from_pretrained(tiny)
    pipe = cls(**dict(base.components, scheduler=sched, vae=vae, requires_safety_checker=False))
    pipe.set_progress_bar_config(disable=True)
    gens = [np.random.default_rng(seed + k) for k in range(num_images)]

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        assert shape[0] == len(gens), shape
        return torch.from_numpy(np.concatenate([g.standard_normal((1, *shape[1:]), dtype=np.float32) for g in gens]))

    for mod in DRAWING_MODULES:
        monkeypatch.setattr(importlib.import_module(f"diffusers.{mod}"), "randn_tensor", randn_tensor)
    for mod in ENCODING_MODULES:
        module = importlib.import_module(f"diffusers.{mod}")
        monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None, sample_mode="sample",
                            f=module.retrieve_latents: f(out, generator, "argmax"))
    steps = []
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_images_per_prompt=num_images, output_type="np",
               callback_on_step_end=lambda _p, i, t, kw: steps.append(kw["latents"].clone().numpy()) or kw, **call)
    return steps, (out.images * 255).round().astype(np.uint8)


def check(kind, folder, diffusers_pipe, monkeypatch, name, *, img, mask=None, strength, guidance=7.5, steps=5,
          seed=21, num_images=1, width=None, height=None, outpaint=None, backend=None, tiny=None, vae_tiling=None,
          compute="f32"):
    """Our run against diffusers' in fp32; with `tiny` (a tiny autoencoder's folder) a draft,
    decoder=tiny, against diffusers' pipeline with vae=AutoencoderTiny; vae_tiling "on" against
    vae.enable_tiling(). Bounds: the final latents within 1e-4 x max and the images at 40 dB in f32
    compute (NumPy, or WebGPU's reference path); with compute="f16" on WebGPU, f16's bounds of
    tests/test_webgpu_f16.py (5e-2 x max, 30 dB)."""
    tol, db = (1e-4, 40) if compute == "f32" else (5e-2, 30)
    ours = Pipeline(ModelFolder(folder), **({"backend": backend, "compute": compute} if backend else {}),
                    keep_loaded=True, tiny_autoencoder=None if tiny is None else AutoencoderFolder(tiny))
    progress = []
    res = ours.generate(PROMPT, NEGATIVE, steps=steps, guidance=guidance, seed=seed, scheduler=name,
                        num_images=num_images, width=width, height=height, image=img, mask=mask, strength=strength,
                        outpaint=outpaint, decoder=None if tiny is None else str(tiny), vae_tiling=vae_tiling,
                        progress=lambda p: p.stage == "unet" and p.step and progress.append(p))
    call = dict(num_inference_steps=steps, guidance_scale=guidance, strength=strength)
    ref_image, ref_mask = img.pil, None if mask is None else mask.pil
    if outpaint is not None:  # outpainting is inpainting of the grown canvas
        ref_image, ref_mask = picture.canvas(ref_image, ref_mask, outpaint)
    if kind == "inpaint":
        call.update(mask_image=ref_mask, width=res.settings["width"], height=res.settings["height"])
    ref_steps, ref_images = diffusers_run(kind, folder, diffusers_pipe, monkeypatch, name, seed=seed,
                                          num_images=num_images, tiny=tiny, image=ref_image,
                                          tiling=vae_tiling == "on", **call)
    assert [p.step for p in progress] == list(range(1, len(ref_steps) + 1))  # the steps diffusers takes
    assert progress[-1].total == len(ref_steps)
    ref = ref_steps[-1]
    assert res.latents.shape == ref.shape
    err = np.abs(res.latents - ref).max() / np.abs(ref).max()
    assert err <= tol, f"{kind} {name} strength {strength}: latents rel err {err:.2e}"
    assert res.images.shape == ref_images.shape
    for k in range(num_images):
        p = psnr(res.images[k], ref_images[k])
        print(f"{kind} {name} {compute} compute vs diffusers fp32: image {k} PSNR {p:.1f} dB")  # pytest -s
        assert p >= db, f"{kind} {name} image {k}: {p:.1f} dB"
    return res, ref_images


IMG2IMG = [  # model fixture, scheduler, strength, guidance, image, images per prompt
    ("sd1_tiny", "ddim", 0.6, 7.5, "chelsea.jpg", 1),
    ("sd1_tiny", "pndm", 0.5, 7.5, "coffee.webp", 1),  # PNDM's repeated timestep in the tail
    ("sd1_tiny", "euler", 0.8, 7.5, "astronaut.png", 1),
    ("sd1_tiny", "euler-a", 0.75, 7.5, "coffee.webp", 2),  # a batch: each image its own generator
    ("sd1_tiny", "dpm++2m", 1.0, 7.5, "chelsea.jpg", 1),  # strength 1: noise added at the first timestep
    ("sd1_tiny", "dpm++2m-karras", 0.7, 1.0, "chelsea.jpg", 1),  # no CFG
    ("sd1_tiny", "lcm", 0.9, 1.0, "astronaut.png", 1),
    ("sd1_tiny", "ddpm", 0.4, 7.5, "coffee.webp", 1),
    # sd2-tiny works in multiples of 32, and img2img takes the image's size: the 96x96 one
    ("sd2_tiny", "ddim", 0.5, 5.0, "astronaut.png", 1),
    ("sd2_tiny", "euler-a", 0.8, 7.5, "astronaut.png", 1),
    ("sd2_tiny", "dpm++2m", 1.0, 7.5, "astronaut.png", 2),
]


@pytest.mark.parametrize("fixture,name,strength,guidance,file,n", IMG2IMG,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in IMG2IMG])
def test_img2img_matches_diffusers(request, diffusers_pipe, monkeypatch, fixture, name, strength, guidance, file, n):
    res, _ = check("img2img", request.getfixturevalue(fixture), diffusers_pipe, monkeypatch, name,
                   img=image(file), strength=strength, guidance=guidance, num_images=n)
    assert res.settings["image"] == image(file).record() and res.settings["strength"] == strength


def test_img2img_in_vae_tiles_matches_diffusers_enable_tiling(sd1_tiny, diffusers_pipe, monkeypatch):
    """vae_tiling on: the input image is encoded and the result decoded in diffusers' tiles (the tiny
    VAE's sample_size, 64 pixels, on a larger image), as enable_tiling() does in diffusers' img2img."""
    img = image("chelsea.jpg")
    res, _ = check("img2img", sd1_tiny, diffusers_pipe, monkeypatch, "ddim", img=img, strength=0.6,
                   vae_tiling="on")
    assert res.settings["vae_tiling"] == "on" and max(res.images.shape[1:3]) > 64


INPAINT = [  # model fixture, scheduler, strength, mask mode, image, keyword arguments
    ("sd1_tiny", "ddim", 1.0, "L", "chelsea.jpg", {}),  # 4 channels: the known region put back
    ("sd1_tiny", "euler-a", 0.7, "RGB", "coffee.webp", dict(width=128, height=80)),  # resized: Lanczos
    ("sd2_tiny", "dpm++2m", 0.8, "1", "chelsea.jpg", dict(width=128, height=96)),
    ("sd1_inpaint_tiny", "pndm", 1.0, "L", "chelsea.jpg", {}),  # 9 channels: mask and masked image in
    ("sd1_inpaint_tiny", "euler-a", 0.6, "RGB", "coffee.webp", dict(width=112, height=80, num_images=2)),
    ("sd1_inpaint_tiny", "dpm++2m-karras", 0.8, "L", "astronaut.png", dict(guidance=1.0)),
]


@pytest.mark.parametrize("fixture,name,strength,mode,file,kw", INPAINT,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in INPAINT])
def test_inpainting_matches_diffusers(request, diffusers_pipe, monkeypatch, fixture, name, strength, mode, file, kw):
    img = image(file)
    mask = soft_mask(img.width, img.height, mode)
    res, _ = check("inpaint", request.getfixturevalue(fixture), diffusers_pipe, monkeypatch, name, img=img,
                   mask=mask, strength=strength, **kw)
    assert res.settings["mask"] == mask.record()


@pytest.mark.parametrize("fixture,name,outpaint,with_mask", [
    ("sd1_tiny", "euler", (32, 0, 16, 16), False),
    ("sd1_inpaint_tiny", "ddim", (0, 16, 0, 0), True),
])
def test_outpainting_is_inpainting_of_the_grown_canvas(request, diffusers_pipe, monkeypatch, fixture, name,
                                                      outpaint, with_mask):
    img = image("chelsea.jpg")
    mask = soft_mask(img.width, img.height) if with_mask else None
    res, _ = check("inpaint", request.getfixturevalue(fixture), diffusers_pipe, monkeypatch, name, img=img,
                   mask=mask, strength=1.0, outpaint=outpaint)
    left, top, right, bottom = outpaint
    assert (res.settings["width"], res.settings["height"]) == (img.width + left + right, img.height + top + bottom)
    assert res.settings["outpaint"] == outpaint


DRAFTS = [  # kind, model fixture, scheduler, strength, image, with a mask, keyword arguments
    ("img2img", "sd1_tiny", "euler-a", 0.7, "chelsea.jpg", False, dict(num_images=2)),
    ("inpaint", "sd1_tiny", "ddim", 0.8, "coffee.webp", True, {}),  # the known region from TAESD's latents
    ("inpaint", "sd1_inpaint_tiny", "dpm++2m", 1.0, "astronaut.png", True, {}),  # the masked image's too
]


@pytest.mark.parametrize("kind,fixture,name,strength,file,masked,kw", DRAFTS, ids=[f"{c[1]}-{c[2]}" for c in DRAFTS])
def test_a_draft_from_an_image_is_encoded_by_the_tiny_autoencoder(request, taesd_tiny, diffusers_pipe, monkeypatch,
                                                                  kind, fixture, name, strength, file, masked, kw):
    """decoder=<a tiny autoencoder>: the image (and a 9-channel UNet's masked image) is encoded by its
    encoder and the result decoded by its decoder, equal to diffusers' Img2Img / Inpaint pipeline with
    vae=AutoencoderTiny; the model's VAE is never loaded."""
    img = image(file)
    mask = soft_mask(img.width, img.height) if masked else None
    res, _ = check(kind, request.getfixturevalue(fixture), diffusers_pipe, monkeypatch, name, img=img, mask=mask,
                   strength=strength, steps=4, tiny=taesd_tiny, **kw)
    loads = {k for k in res.timings if k.startswith("load_")}
    assert loads == {"load_text_encoder", "load_tiny_autoencoder_encoder", "load_tiny_autoencoder", "load_unet"}
    assert res.settings["decoder"] == str(taesd_tiny)


WEBGPU = [  # kind, model fixture, scheduler, strength, image, with a mask, keyword arguments
    ("img2img", "sd2_tiny", "euler-a", 0.7, "astronaut.png", False, {}),
    ("inpaint", "sd1_tiny", "ddim", 0.8, "chelsea.jpg", True, dict(num_images=2)),
    ("inpaint", "sd1_inpaint_tiny", "dpm++2m", 1.0, "coffee.webp", True, dict(width=112, height=80)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("kind,fixture,name,strength,file,masked,kw", WEBGPU, ids=[f"{c[1]}-{c[2]}" for c in WEBGPU])
def test_webgpu_matches_diffusers(request, diffusers_pipe, monkeypatch, kind, fixture, name, strength, file, masked,
                                  kw):
    webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
    if not webgpu.available():
        pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)")
    img = image(file)
    mask = soft_mask(img.width, img.height) if masked else None
    res, _ = check(kind, request.getfixturevalue(fixture), diffusers_pipe, monkeypatch, name, img=img, mask=mask,
                   strength=strength, steps=4, backend=webgpu, **kw)
    assert res.settings["backend"] == "webgpu" and res.timings["vae_encoder"] > 0


@pytest.mark.gpu
def test_webgpu_draft_from_an_image(sd1_inpaint_tiny, taesd_tiny, diffusers_pipe, monkeypatch):
    """The tiny autoencoder's encoder and decoder on the GPU, a 9-channel inpainting draft."""
    webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
    if not webgpu.available():
        pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)")
    img = image("chelsea.jpg")
    res, _ = check("inpaint", sd1_inpaint_tiny, diffusers_pipe, monkeypatch, "euler", img=img,
                   mask=soft_mask(img.width, img.height), strength=0.9, steps=4, backend=webgpu, tiny=taesd_tiny)
    assert res.settings["backend"] == "webgpu" and "load_vae_encoder" not in res.timings


def test_outpaint_canvas():
    """The new area repeats the edge pixels outwards and is masked; inside, the mask given or none."""
    img = image("coffee.webp")
    a = np.asarray(img.pil)
    grown, mask = picture.canvas(img.pil, None, (16, 32, 0, 8))
    g, m = np.asarray(grown), np.asarray(mask)
    assert g.shape == (96 + 40, 144 + 16, 3) and m.shape == g.shape[:2] and mask.mode == "L"
    np.testing.assert_array_equal(g[32:128, 16:], a)
    np.testing.assert_array_equal(g[32:128, :16], np.repeat(a[:, :1], 16, axis=1))  # the left column, stretched
    np.testing.assert_array_equal(g[:32, 16:], np.repeat(a[:1], 32, axis=0))
    np.testing.assert_array_equal(g[:32, :16], np.broadcast_to(a[0, 0], (32, 16, 3)))  # the corner pixel
    assert (m[32:128, 16:] == 0).all() and (m[:32] == 255).all() and (m[:, :16] == 255).all() and (m[128:] == 255).all()
    inner = soft_mask(144, 96)
    _, mask = picture.canvas(img.pil, inner.pil, (16, 32, 0, 8))
    np.testing.assert_array_equal(np.asarray(mask)[32:128, 16:], np.asarray(inner.pil.convert("L")))


def test_preprocessing_equals_diffusers_image_processors():
    """image_array / mask_array against VaeImageProcessor and the inpainting pipeline's mask_processor
    (resize, grayscale, binarise), at the image's own size and resized."""
    from diffusers.image_processor import VaeImageProcessor

    images = VaeImageProcessor(vae_scale_factor=8)
    masks = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    img = image("chelsea.jpg")
    for w, h in ((144, 96), (96, 64), (200, 120)):
        np.testing.assert_array_equal(picture.image_array(img.pil, w, h), images.preprocess(img.pil, h, w).numpy())
        for mode in ("L", "RGB", "1"):
            m = soft_mask(144, 96, mode)
            got = picture.mask_array(m.pil, w, h)
            np.testing.assert_array_equal(got, masks.preprocess(m.pil, h, w).numpy())
            assert 0.1 < got.mean() < 0.5  # both kept and repainted pixels


def test_batch_images_equal_single_runs(sd1_inpaint_tiny):
    """Image k of a batch is the run with seed + k, from an image too (the noise contract)."""
    pipe = Pipeline(ModelFolder(sd1_inpaint_tiny), keep_loaded=True)
    img = image("astronaut.png")
    mask = soft_mask(96, 96)
    kw = dict(steps=4, image=img, mask=mask, strength=0.75, scheduler="euler-a")
    batch = pipe.generate(PROMPT, seed=8, num_images=2, **kw)
    single = pipe.generate(PROMPT, seed=9, **kw)
    assert np.abs(batch.latents[1] - single.latents[0]).max() <= 1e-5 * np.abs(single.latents).max()


def test_the_image_steers_the_result(sd1_tiny):
    """What makes the parity above mean something: the input image changes the result, and
    inpainting changes the masked region with the seed while it keeps the rest."""
    pipe = Pipeline(ModelFolder(sd1_tiny), keep_loaded=True)
    cat, coffee = image("chelsea.jpg"), image("coffee.webp")
    kw = dict(steps=10, seed=3, strength=0.2, scheduler="ddim")
    assert psnr(pipe.generate(PROMPT, image=cat, **kw).images[0], pipe.generate(PROMPT, image=coffee, **kw).images[0]) < 25
    mask = soft_mask(144, 96)
    repaint = picture.mask_array(mask.pil, 144, 96)[0, 0] == 1
    a, b = (pipe.generate(PROMPT, steps=10, seed=seed, image=cat, mask=mask, scheduler="ddim").images[0]
            for seed in (3, 4))
    diff = np.abs(a.astype(int) - b).mean(-1)
    assert diff[repaint].mean() > 4 * diff[~repaint].mean(), (diff[repaint].mean(), diff[~repaint].mean())
