"""End-to-end parity with diffusers' StableDiffusionPipeline on the tiny test models, fp32.

Every scheduler at guidance 1 and 7.5, with a negative prompt, at a non-square size. diffusers is
handed the noise contract's latents, and its stochastic schedulers the same generator's later draws
(their module's `randn_tensor` is patched), so both sides see identical noise.
"""

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdweb.model import ModelFolder  # noqa: E402
from sdweb.pipeline import Pipeline  # noqa: E402
from sdweb.schedulers import SCHEDULERS, forced_options  # noqa: E402

DIFFUSERS_CLASS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "dpm++2m-karras": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
    "ddpm": "DDPMScheduler",
}
STOCHASTIC_MODULES = ("scheduling_euler_ancestral_discrete", "scheduling_ddpm", "scheduling_lcm")

PROMPT = "a watercolor lighthouse on a cliff at dusk, gulls, soft light"
NEGATIVE = "blurry, low quality"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_diffusers(pipe, monkeypatch, name, *, steps, guidance, seed, width, height, negative):
    cls = getattr(diffusers, DIFFUSERS_CLASS[name])
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **forced_options(name))
    C = pipe.unet.config.in_channels
    f = pipe.vae_scale_factor
    rng = np.random.default_rng(seed)  # the noise contract, image 0
    latents = torch.from_numpy(rng.standard_normal((1, C, height // f, width // f), dtype=np.float32))

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    for mod in STOCHASTIC_MODULES:
        monkeypatch.setattr(importlib.import_module(f"diffusers.schedulers.{mod}"), "randn_tensor", randn_tensor)
    per_step = []

    def on_step_end(_pipe, i, t, kw):
        per_step.append(kw["latents"].clone().numpy())
        return kw

    out = pipe(PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
               height=height, width=width, latents=latents, output_type="np",
               callback_on_step_end=on_step_end)
    image = (out.images * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil
    return per_step, image


def check(folder, diffusers_pipe, monkeypatch, name, guidance, *, steps=4, seed=11, width=None, height=None,
          negative=NEGATIVE):
    """Our final latents and image against diffusers', and the latents each Progress after a UNet step
    carries (a host float32 array, Progress's contract) against diffusers' after the same step."""
    ours = Pipeline(ModelFolder(folder), keep_loaded=True)
    m = ours.info.size_multiple
    width = width or 4 * m
    height = height or 3 * m  # non-square
    progress = []
    res = ours.generate(PROMPT, negative, steps=steps, guidance=guidance, seed=seed, scheduler=name,
                        width=width, height=height,
                        progress=lambda p: p.stage == "unet" and p.step and progress.append(p.latents.copy()))
    ref_steps, ref_image = run_diffusers(diffusers_pipe(folder), monkeypatch, name, steps=steps,
                                         guidance=guidance, seed=seed, width=width, height=height,
                                         negative=negative)
    assert len(progress) == len(ref_steps)
    for got, ref in zip(progress + [res.latents], ref_steps + ref_steps[-1:]):
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == ref.shape
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 1e-4, f"{name} g={guidance}: latents rel err {err:.2e}"
    assert res.images.shape == ref_image.shape
    p = psnr(res.images[0], ref_image[0])
    assert p >= 40, f"{name} g={guidance}: PSNR {p:.1f} dB"
    return res


@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_sd1_every_scheduler(sd1_tiny, diffusers_pipe, monkeypatch, name, guidance):
    check(sd1_tiny, diffusers_pipe, monkeypatch, name, guidance)


@pytest.mark.parametrize("name", ["euler-a", "dpm++2m-karras", "ddim"])
def test_sd2_v_prediction(sd2_tiny, diffusers_pipe, monkeypatch, name):
    check(sd2_tiny, diffusers_pipe, monkeypatch, name, 7.5)


@pytest.mark.parametrize("name", ["pndm", "lcm"])
def test_nomid(nomid_tiny, diffusers_pipe, monkeypatch, name):
    check(nomid_tiny, diffusers_pipe, monkeypatch, name, 7.5)


def test_no_negative_prompt_and_many_steps(sd1_tiny, diffusers_pipe, monkeypatch):
    check(sd1_tiny, diffusers_pipe, monkeypatch, "pndm", 7.5, steps=20, negative=None)


def test_image_is_informative(sd1_tiny):
    """A flat or clipped image would make the PSNR checks above meaningless."""
    res = Pipeline(ModelFolder(sd1_tiny)).generate(PROMPT, steps=4, seed=1)
    img = res.images[0].astype(np.float64)
    inside = np.mean((img > 0) & (img < 255))
    assert img.std() > 10 and inside > 0.9, (img.std(), inside)
    other = Pipeline(ModelFolder(sd1_tiny)).generate(PROMPT, steps=4, seed=2).images[0]
    assert psnr(res.images[0], other) < 30, "the seed must change the image"


def test_batch_of_images_follows_the_noise_contract(sd1_tiny):
    """Image k of a batch equals a single run with seed S + k."""
    pipe = Pipeline(ModelFolder(sd1_tiny), keep_loaded=True)
    batch = pipe.generate(PROMPT, steps=3, seed=5, num_images=2, scheduler="euler-a")
    single = pipe.generate(PROMPT, steps=3, seed=6, scheduler="euler-a")
    assert batch.seeds == [5, 6]
    assert np.abs(batch.latents[1] - single.latents[0]).max() <= 1e-5 * np.abs(single.latents).max()


def test_precision_psnr(sd1_tiny):
    pipe32 = Pipeline(ModelFolder(sd1_tiny))
    ref = pipe32.generate(PROMPT, steps=4, seed=3).images[0]
    for precision, floor in (("fp16", 35), ("bf16", 25)):
        img = Pipeline(ModelFolder(sd1_tiny), precision=precision).generate(PROMPT, steps=4, seed=3).images[0]
        assert floor <= psnr(ref, img) < float("inf"), precision


def test_cancel_and_progress(sd1_tiny):
    from sdweb.errors import Cancelled

    events = []
    pipe = Pipeline(ModelFolder(sd1_tiny))
    with pytest.raises(Cancelled):
        pipe.generate(PROMPT, steps=5, progress=events.append,
                      cancel=lambda: sum(e.stage == "unet" and e.step > 0 for e in events) >= 2)
    steps = [e for e in events if e.stage == "unet" and e.step]
    assert [e.step for e in steps] == [1, 2]
    assert steps[0].latents.shape[0] == 1 and steps[0].timestep is not None
