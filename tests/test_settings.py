"""sdweb.settings: one resolve() fills every default and checks every field, naming the bad one.

References: diffusers for what a model's own defaults are (its pipeline's default size and the
scheduler class it ships), NumPy for which seeds are valid, the catalogue (models.json) for the
known models' kinds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sdweb import catalogue, settings
from sdweb.errors import ConfigError
from sdweb.model import ModelFolder
from sdweb.schedulers import SCHEDULERS
from sdweb.settings import ModelInfo, resolve

REAL = Path(__file__).parent / "data" / "real-configs"
DIFFUSERS_NAME = {"DDIMScheduler": "ddim", "PNDMScheduler": "pndm", "EulerDiscreteScheduler": "euler",
                  "EulerAncestralDiscreteScheduler": "euler-a", "DPMSolverMultistepScheduler": "dpm++2m",
                  "LCMScheduler": "lcm", "DDPMScheduler": "ddpm"}


def real_info(model: str, weight_bytes=None) -> ModelInfo:
    cfg = {c: json.loads((REAL / model / c / name).read_text()) for c, name in (
        ("unet", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json"),
        ("text_encoder", "config.json"))}
    return ModelInfo.from_configs(model, weight_bytes=weight_bytes, **cfg)


def bad(request, field, *needles, model=None, **kw):
    with pytest.raises(ConfigError) as e:
        resolve(request, model, **kw)
    assert e.value.field == field, e.value
    for n in needles:
        assert n in str(e.value), (n, str(e.value))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fixture", ["sd1_tiny", "sd2_tiny", "nomid_tiny"])
def test_model_defaults_are_what_diffusers_uses(request, diffusers_pipe, fixture):
    folder = request.getfixturevalue(fixture)
    pipe = diffusers_pipe(folder)
    info = ModelInfo.of(ModelFolder(folder))
    assert info.vae_scale_factor == pipe.vae_scale_factor
    assert info.default_size == pipe.unet.config.sample_size * pipe.vae_scale_factor  # diffusers' default height
    assert info.default_scheduler == DIFFUSERS_NAME[type(pipe.scheduler).__name__]
    assert info.text_layers == pipe.text_encoder.config.num_hidden_layers
    s = resolve({"prompt": "x", "seed": 1}, info)
    assert (s.width, s.height, s.scheduler) == (info.default_size, info.default_size, info.default_scheduler)


def test_real_models():
    for model in ("stable-diffusion-v1-5", "stable-diffusion-2-1-base"):
        info = real_info(model)
        assert (info.default_size, info.size_multiple, info.default_scheduler) == (512, 64, "pndm"), model
    assert real_info("stable-diffusion-2-1-base").text_layers == 23
    bad({"width": 520}, "width", "width 520 is not allowed: use a multiple of 64 between 64 and 2048",
        "this model's default is 512", model=real_info("stable-diffusion-v1-5"))
    bad({"clip_skip": 12}, "clip_skip", "clip_skip 12 is out of range: use 0 to 11 (this text encoder has 12 layers)",
        model=real_info("stable-diffusion-v1-5"))
    assert resolve({"clip_skip": 11}, real_info("stable-diffusion-v1-5")).clip_skip == 11


def test_steps_and_guidance_by_model_kind():
    kinds = catalogue.kinds()
    for m in catalogue.models():
        s = resolve({"model": m["repo"]})
        assert (s.steps, s.guidance) == (kinds[m["kind"]]["steps"], kinds[m["kind"]]["guidance"]), m["repo"]
    assert catalogue.find("stabilityai/sd-turbo")["kind"] == "turbo"
    # the catalogue knows a model by its repo id or a folder named after it; any other by its own name
    assert settings.model_kind("weights/stabilityai/sd-turbo") == "turbo"
    assert settings.model_kind("someone/SDXS-Turbo-512") == "turbo"
    assert settings.model_kind("/home/turbo/models/my-sd15") == "sd"  # only the model's own name counts
    assert settings.model_kind("") == "sd"
    assert catalogue.find("SimianLuo/LCM_Dreamshaper_v7")["kind"] == "lcm"
    assert settings.model_kind("someone/dreamshaper-LCM") == "lcm"
    assert (resolve({"model": "x/my-lcm"}).steps, resolve({"model": "x/my-lcm"}).guidance) == (4, 8.5)
    assert (resolve({}).steps, resolve({}).guidance) == (kinds["sd"]["steps"], kinds["sd"]["guidance"])
    assert (resolve({"model": "a/turbo", "steps": 4, "guidance": 1.5}).steps,
            resolve({"model": "a/turbo", "guidance": 1.5}).guidance) == (4, 1.5)


def test_seed():
    assert resolve({"seed": 0}).seed == 0
    top = resolve({"seed": settings.MAX_SEED}).seed
    np.random.default_rng(top).standard_normal(1)  # NumPy takes the largest seed allowed
    with pytest.raises(ValueError):
        np.random.default_rng(-1)
    bad({"seed": -1}, "seed", "seed -1 is out of range: use 0 to 4294967295")
    bad({"seed": 2**32}, "seed", "seed 4294967296 is out of range")
    bad({"seed": 1.5}, "seed", "seed 1.5 is not a whole number")
    bad({"seed": "7"}, "seed", "not a whole number")
    drawn = {resolve({}).seed for _ in range(20)}
    assert len(drawn) > 1 and all(0 <= d < settings.RANDOM_SEEDS for d in drawn)


def test_every_field_is_checked_and_named():
    bad({"steps": 0}, "steps", "steps 0 is out of range: use 1 to 1000")
    bad({"steps": 1001}, "steps", "steps 1001")
    bad({"steps": True}, "steps", "not a whole number")
    bad({"guidance": -1.0}, "guidance", "guidance -1.0 is not allowed")
    bad({"guidance": float("nan")}, "guidance", "guidance nan")
    bad({"scheduler": "heun"}, "scheduler", "'heun'", ", ".join(SCHEDULERS))
    bad({"width": 4096}, "width", "width 4096 is out of range: use at most 2048 pixels")
    bad({"height": 0}, "height", "height 0 is out of range")
    bad({"num_images": 0}, "num_images", "num_images 0 is out of range: use 1 to 16")
    bad({"num_images": 1_000_000}, "num_images", "num_images 1000000")
    bad({"clip_skip": -1}, "clip_skip", "clip_skip -1")
    bad({"precision": "int8"}, "precision", "'int8'", "fp16")
    bad({"variant": "a/b"}, "variant", "variant 'a/b'")
    bad({"backend": "cuda"}, "backend", "'cuda'", "auto, numpy or webgpu")
    bad({"preview_every": 0}, "preview_every", "preview_every 0 is out of range: use 1 to 1000")
    bad({"preview_every": -2}, "preview_every", "preview_every -2")
    bad({"prompt": 3}, "prompt", "prompt should be text")
    bad({"vae_tiling": "yes"}, "vae_tiling", "'yes'", "auto, on, off")
    bad({"stpes": 3}, "stpes", "unknown setting 'stpes'")
    # "" and None mean the default, as an empty form field does
    assert resolve({"steps": "", "seed": None, "scheduler": ""}).scheduler is None


def test_loras_and_embeddings():
    """The CLI's NAME[:SCALE] strings and the page's {name, scale} objects give the same settings; a
    Windows path keeps its drive; a request of the settings resolves to them again."""
    s = resolve({"loras": ["a.safetensors:0.7", "b.safetensors", {"name": "c", "scale": -1}, ["d", 2],
                           "C:\\loras\\e.safetensors", "f:bright"], "embeddings": ["x.pt", "EasyNegative"]})
    assert s.loras == (("a.safetensors", 0.7), ("b.safetensors", 1.0), ("c", -1.0), ("d", 2.0),
                       ("C:\\loras\\e.safetensors", 1.0), ("f:bright", 1.0))
    assert s.embeddings == ("x.pt", "EasyNegative")
    assert s.as_request()["loras"][0] == {"name": "a.safetensors", "scale": 0.7}
    assert resolve(json.loads(json.dumps(s.as_request()))) == s
    assert resolve({}).loras == () and resolve({"loras": ""}).embeddings == ()
    bad({"loras": "a.safetensors"}, "loras", "should be a list")
    bad({"loras": [{"name": "a", "scale": float("inf")}]}, "loras", "the scale of a inf is not a finite number")
    bad({"loras": [{"name": " "}]}, "loras", "names no LoRA")
    bad({"loras": [{"file": "a"}]}, "loras", "is not a LoRA")
    bad({"embeddings": [""]}, "embeddings", "should be a list of file names")


def test_resolving_twice_changes_nothing():
    info = real_info("stable-diffusion-v1-5", weight_bytes=2_132_605_510)
    first = resolve({"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "variant": "fp16", "backend": "auto"},
                    webgpu=(False, "no adapter"))
    assert first.width is None and first.scheduler is None and first.precision is None and first.backend == "numpy"
    full = resolve(first.as_request(), info)
    assert full == dataclasses.replace(first, width=512, height=512, scheduler="pndm", precision="fp16")
    assert resolve(full.as_request(), info) == full


def test_precision_follows_the_files_backend_and_size():
    small, big = real_info("stable-diffusion-v1-5", 100 << 20), real_info("stable-diffusion-v1-5", 2_000_000_000)
    assert resolve({"variant": "fp16"}, small).precision == "fp32"  # tiny: upcast once, faster on NumPy
    assert resolve({"variant": "fp16"}, big).precision == "fp16"
    assert resolve({"variant": "fp16", "backend": "webgpu"}, small).precision == "fp16"
    assert resolve({"backend": "webgpu"}, big).precision == "fp32"  # the plain files
    assert resolve({"variant": "fp16", "precision": "bf16"}, big).precision == "bf16"
    assert resolve({"variant": "fp16"}).precision is None  # not known before the weights' size is


def test_backend_choice():
    assert resolve({}).backend == "numpy"
    assert resolve({"backend": "auto"}).backend == "auto"  # not decided without knowing the host
    assert resolve({"backend": "auto"}, webgpu=(True, "")).backend == "webgpu"
    s = resolve({"backend": "auto"}, webgpu=(False, "no adapter"))
    assert s.backend == "numpy" and s.notes == ()
    s = resolve({"backend": "webgpu"}, webgpu=lambda: (False, "the `wgpu` package is missing"))
    assert s.backend == "numpy" and s.notes == ("WebGPU is not available here (the `wgpu` package is missing); "
                                                "falling back to the NumPy backend",)
    asked = []
    resolve({"backend": "numpy"}, webgpu=lambda: asked.append(1) or (True, ""))
    assert not asked  # the host is only probed when WebGPU may be used


def test_preview_cadence():
    assert [resolve({"steps": n, "preview": "approx"}).preview_every for n in (1, 4, 5, 14, 15, 25, 50, 1000)] == \
        [1, 1, 1, 1, 2, 3, 5, 100]
    assert resolve({"steps": 50, "preview_every": 7}).preview_every == 7
    assert resolve({"steps": 50, "preview": "taesd"}).preview_every == 1  # every step: cheap enough
    assert resolve({"steps": 50, "preview": "taesd", "preview_every": 4}).preview_every == 4


def test_preview_and_decoder():
    """The preview is TAESD's where a tiny autoencoder is at hand, else the linear map; left open
    while the caller does not know (and the cadence with it, so a second resolve can still choose)."""
    s = resolve({"steps": 20})
    assert (s.preview, s.preview_every, s.decoder, s.tiny_autoencoder) == (None, None, "vae", None)
    assert resolve(s.as_request(), taesd=True).preview == "taesd"
    s = resolve({"steps": 20}, taesd=False)
    assert (s.preview, s.preview_every, s.tiny_autoencoder) == ("approx", 2, None)
    s = resolve({"steps": 20}, taesd=True)
    assert (s.preview, s.preview_every, s.tiny_autoencoder) == ("taesd", 1, "taesd")
    # a tiny autoencoder as the decoder is at hand for previews too, whatever the caller knows of TAESD
    s = resolve({"decoder": "me/my-tiny-ae"})
    assert (s.preview, s.decoder, s.tiny_autoencoder) == ("taesd", "me/my-tiny-ae", "me/my-tiny-ae")
    s = resolve({"decoder": "taesd", "preview": "approx", "steps": 20}, taesd=True)
    assert (s.preview, s.preview_every, s.tiny_autoencoder) == ("approx", 2, "taesd")
    assert resolve({"preview": "none"}, taesd=True).tiny_autoencoder is None
    assert resolve({"decoder": " "}).decoder == "vae"
    bad({"preview": "vae"}, "preview", "unknown preview 'vae'", "taesd", "approx", "none")
    bad({"decoder": 3}, "decoder", "decoder should be text")
    for s in (resolve({"decoder": "taesd"}), resolve({"preview": "approx", "steps": 9}, taesd=True)):
        assert resolve(s.as_request()) == s


def test_compute_dtype():
    """auto is f16 on a WebGPU adapter with shader-f16, f32 elsewhere; f16 needs both; the VAE
    computes in f32 when its config says force_upcast (diffusers' default, and SD 1.5's VAE's)."""
    f16 = (True, "", ("shader-f16", "subgroups"))
    assert resolve({}).compute == "f32"  # NumPy
    assert resolve({"backend": "webgpu"}, webgpu=f16).compute == "f16"
    assert resolve({"backend": "webgpu", "compute": "f32"}, webgpu=f16).compute == "f32"
    assert resolve({"backend": "auto"}, webgpu=(True, "", ())).compute == "f32"  # no shader-f16 (SwiftShader)
    assert resolve({"backend": "auto"}).compute == "auto"  # not decided before the adapter is known
    assert resolve({"backend": "webgpu"}, webgpu=(True, "")).compute == "auto"  # features unknown
    bad({"compute": "f16"}, "compute", "compute f16 needs the WebGPU backend")
    bad({"backend": "auto", "compute": "f16"}, "compute", "needs the WebGPU backend", webgpu=(False, "no adapter"))
    bad({"backend": "webgpu", "compute": "f16"}, "compute", "shader-f16", webgpu=(True, "", ()))
    bad({"compute": "bf16"}, "compute", "unknown compute dtype 'bf16'", "auto, f32 or f16")
    assert settings.stage_compute("f16", "unet") == settings.stage_compute("f16", "text_encoder") == "f16"
    assert settings.stage_compute("f16", "vae", {}) == "f32"  # force_upcast defaults to true
    assert settings.stage_compute("f16", "vae", {"force_upcast": False}) == "f16"


def test_vae_tiling():
    assert resolve({}).vae_tiling == "auto"
    assert [resolve({"vae_tiling": t}).vae_tiling for t in ("auto", "on", "off", "")] == ["auto", "on", "off", "auto"]
    assert resolve({"vae_tiling": "on"}).run_args()["vae_tiling"] == "on"  # Pipeline.generate takes it


# --- runs from an image --------------------------------------------------------------------------------

PHOTO = {"name": "cat.jpg", "sha256": "ab" * 32, "width": 451, "height": 300}


def test_strength_defaults_and_range_are_diffusers():
    """diffusers' __call__ defaults: 0.8 in StableDiffusionImg2ImgPipeline, 1.0 in the inpainting one;
    strength in (0, 1], and its get_timesteps must leave a step to run."""
    import inspect

    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    info = real_info("stable-diffusion-v1-5")
    default = {c: inspect.signature(c.__call__).parameters["strength"].default
               for c in (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline)}
    assert resolve({"image": PHOTO}, info).strength == default[StableDiffusionImg2ImgPipeline] == 0.8
    mask = dict(PHOTO, name="mask.png")
    assert resolve({"image": PHOTO, "mask": mask}, info).strength == default[StableDiffusionInpaintPipeline] == 1.0
    assert resolve({"image": PHOTO, "outpaint": [64, 0, 0, 0]}, info).strength == 1.0
    assert resolve({"image": PHOTO, "strength": 0.3, "steps": 4}, info).strength == 0.3
    assert resolve({}, info).strength is None
    bad({"image": PHOTO, "strength": 0}, "strength", "strength 0 is not allowed: use a number above 0 and at most 1")
    bad({"image": PHOTO, "strength": 1.5}, "strength", "strength 1.5")
    bad({"image": PHOTO, "strength": "high"}, "strength", "strength high")
    bad({"image": PHOTO, "strength": 0.1, "steps": 5}, "strength", "strength 0.1 with 5 steps runs no step")
    bad({"strength": 0.5}, "strength", "strength applies to a run from an image")


def test_size_comes_from_the_image():
    sd15 = real_info("stable-diffusion-v1-5")
    s = resolve({"image": PHOTO}, sd15)
    assert (s.width, s.height) == (448, 256)  # rounded down to the model's multiple of 64
    assert s.notes == ("the image is 451x300 pixels; it is resized to 448x256 with Lanczos, as diffusers does",)
    s = resolve({"image": PHOTO, "width": 512, "height": 512}, sd15)
    assert (s.width, s.height) == (512, 512) and "resized to 512x512 with Lanczos" in s.notes[0]
    exact = dict(PHOTO, width=640, height=384)
    assert resolve({"image": exact}, sd15).notes == ()
    s = resolve({"image": exact, "outpaint": "64, 0, 128, 64"}, sd15)
    assert (s.width, s.height, s.outpaint) == (832, 448, (64, 0, 128, 64)) and s.notes == ()
    assert resolve({"image": PHOTO}).width is None  # not known before the model is
    bad({"image": dict(PHOTO, width=3000, height=2000)}, "image",
        "image cat.jpg is 3000x2000 pixels, over the 2048-pixel limit a side: give a width and height", model=sd15)
    assert resolve({"image": dict(PHOTO, width=3000, height=2000), "width": 768, "height": 512}, sd15).width == 768
    bad({"image": dict(PHOTO, width=40, height=300)}, "image", "40x300 pixels: too small", model=sd15)


def test_mask_outpaint_and_inpainting_models():
    sd15 = real_info("stable-diffusion-v1-5")
    inpainting = dataclasses.replace(sd15, name="stable-diffusion-v1-5/stable-diffusion-inpainting", in_channels=9)
    assert inpainting.inpainting and not sd15.inpainting
    mask = dict(PHOTO, name="mask.png", sha256="cd" * 32)
    bad({"mask": mask}, "mask", "mask applies to a run from an image: give the image too")
    bad({"outpaint": "0,64,0,0"}, "outpaint", "outpaint applies to a run from an image")
    bad({"image": PHOTO, "mask": dict(mask, width=450)}, "mask",
        "mask mask.png is 450x300 pixels but image cat.jpg is 451x300: a mask must be the image's size")
    bad({"image": PHOTO}, "mask", "stable-diffusion-v1-5/stable-diffusion-inpainting is an inpainting model",
        "give it an image and a mask", model=inpainting)
    bad({}, "mask", "is an inpainting model", model=inpainting)
    assert resolve({"image": PHOTO, "mask": mask}, inpainting).strength == 1.0
    assert resolve({"image": PHOTO, "outpaint": [0, 0, 64, 0]}, inpainting).outpaint == (0, 0, 64, 0)
    bad({"image": PHOTO, "outpaint": "0,0,32,0"}, "outpaint", "multiple of 64", model=sd15)
    bad({"image": PHOTO, "outpaint": "0,0,0,0"}, "outpaint", "adds nothing")
    bad({"image": PHOTO, "outpaint": "a,b"}, "outpaint", "not four whole numbers")
    bad({"image": PHOTO, "outpaint": [1, 2, 3]}, "outpaint", "not four numbers")
    bad({"image": PHOTO, "outpaint": [-64, 0, 0, 0]}, "outpaint", "out of range")
    bad({"image": {"name": "x"}}, "image", "should be an input file's record")
    configs = {c: json.loads((REAL / "stable-diffusion-v1-5" / c / n).read_text()) for c, n in (
        ("unet", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json"),
        ("text_encoder", "config.json"))}
    assert ModelInfo.from_configs("x", **dict(configs, unet=dict(configs["unet"], in_channels=9))).inpainting
    with pytest.raises(settings.ModelError, match="x/pix2pix: its UNet takes 8 input channels, which is neither"):
        ModelInfo.from_configs("x/pix2pix", **dict(configs, unet=dict(configs["unet"], in_channels=8)))


def test_a_run_from_an_image_resolves_twice_alike():
    sd15 = real_info("stable-diffusion-v1-5")
    mask = dict(PHOTO, name="mask.png")
    first = resolve({"image": PHOTO, "mask": mask, "outpaint": "0,0,64,0", "steps": 10})
    full = resolve(json.loads(json.dumps(first.as_request())), sd15)  # through JSON, as the page sends it
    assert resolve(json.loads(json.dumps(full.as_request())), sd15) == full
    assert full.image == PHOTO and full.mask == mask and full.outpaint == (0, 0, 64, 0)
