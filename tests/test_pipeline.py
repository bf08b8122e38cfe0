"""End-to-end parity with diffusers' StableDiffusionPipeline on the tiny test models, fp32.

Every scheduler at guidance 1 and 7.5, with a negative prompt, at a non-square size. diffusers is
handed the noise contract's latents, and its stochastic schedulers the same generator's later draws
(their module's `randn_tensor` is patched), so both sides see identical noise. With a tiny
autoencoder (the draft decoder, previews) the reference is the same pipeline with
vae=AutoencoderTiny, as diffusers documents it for TAESD.
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


def run_diffusers(pipe, monkeypatch, name, *, steps, guidance, seed, width, height, negative, vae=None):
    cls = getattr(diffusers, DIFFUSERS_CLASS[name])
    if vae is not None:
        pipe.vae = vae
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
          negative=NEGATIVE, tiny=None, **kw):
    """Our final latents and image against diffusers', and the latents each Progress after a UNet step
    carries (a host float32 array, Progress's contract) against diffusers' after the same step. With
    `tiny` (a tiny autoencoder's folder) and kw (decoder=, preview=), ours has it and diffusers' has
    it as its vae."""
    from sdweb.model import AutoencoderFolder

    ours = Pipeline(ModelFolder(folder), keep_loaded=True, tiny_autoencoder=tiny and AutoencoderFolder(tiny))
    m = ours.info.size_multiple
    width = width or 4 * m
    height = height or 3 * m  # non-square
    progress = []
    events = []
    res = ours.generate(PROMPT, negative, steps=steps, guidance=guidance, seed=seed, scheduler=name,
                        width=width, height=height, progress=events.append, **kw)
    progress = [p.latents.copy() for p in events if p.stage == "unet" and p.step]
    vae = tiny and diffusers.AutoencoderTiny.from_pretrained(tiny)
    ref_steps, ref_image = run_diffusers(diffusers_pipe(folder), monkeypatch, name, steps=steps,
                                         guidance=guidance, seed=seed, width=width, height=height,
                                         negative=negative, vae=vae)
    assert len(progress) == len(ref_steps)
    for got, ref in zip(progress + [res.latents], ref_steps + ref_steps[-1:]):
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == ref.shape
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 1e-4, f"{name} g={guidance}: latents rel err {err:.2e}"
    assert res.images.shape == ref_image.shape
    p = psnr(res.images[0], ref_image[0])
    assert p >= 40, f"{name} g={guidance}: PSNR {p:.1f} dB"
    return res, events


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


@pytest.mark.parametrize("name", ["euler-a", "dpm++2m"])
def test_draft_decode_by_a_tiny_autoencoder(sd1_tiny, taesd_tiny, diffusers_pipe, monkeypatch, name):
    """decoder="taesd": the image of diffusers' pipeline with vae=AutoencoderTiny (>= 40 dB, and an
    image that is not flat or clipped); the previews, every step, are diffusers' AutoencoderTiny
    decode of each step's x0."""
    res, events = check(sd1_tiny, diffusers_pipe, monkeypatch, name, 7.5, tiny=taesd_tiny, decoder="taesd")
    img = res.images[0].astype(np.float64)
    assert img.std() > 10 and np.mean((img > 0) & (img < 255)) > 0.9
    assert res.settings["decoder"] == "taesd"
    steps = [p for p in events if p.stage == "unet" and p.step]
    assert all(p.preview is not None for p in steps)  # TAESD previews come every step
    assert [p.component for p in events if p.stage == "load"] == ["text_encoder", "tiny_autoencoder", "unet"]
    ref = diffusers.AutoencoderTiny.from_pretrained(taesd_tiny)
    for p in steps:
        with torch.no_grad():
            want = ref.decode(torch.from_numpy(p.pred_original_sample)).sample.numpy()
        want = np.round(np.clip(want / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1) * 255).astype(np.uint8)
        assert p.preview.shape == want.shape == res.images.shape
        assert psnr(p.preview, want) >= 40


def test_previews_of_x0(sd1_tiny, taesd_tiny):
    """Without a tiny autoencoder the previews are the linear map of each step's x0 (at the latents'
    size) about ten a run and after the last step; with one they are its decodes, every step; "none"
    makes none."""
    from sdweb.model import AutoencoderFolder
    from sdweb.preview import latents_to_rgb

    def run(steps, **kw):
        events = []
        pipe = Pipeline(ModelFolder(sd1_tiny), **kw)
        pipe.generate(PROMPT, steps=steps, seed=3, width=64, height=64, scheduler="ddim", progress=events.append)
        return [p for p in events if p.stage == "unet" and p.step]

    steps = run(15)  # every 2 steps
    shown = [p.step for p in steps if p.preview is not None]
    assert shown == [2, 4, 6, 8, 10, 12, 14, 15]
    for p in steps:
        if p.preview is not None:
            np.testing.assert_array_equal(p.preview[0], latents_to_rgb(p.pred_original_sample[0]))
    # the last step's x0 is nearly where it ends (DDIM keeps sqrt(1 - alphas_cumprod[0]) = 0.03 of eps)
    assert np.abs(steps[-1].pred_original_sample - steps[-1].latents).max() < 1e-2 * np.abs(steps[-1].latents).max()
    steps = run(3, tiny_autoencoder=AutoencoderFolder(taesd_tiny))
    assert all(p.preview is not None and p.preview.shape == (1, 64, 64, 3) for p in steps)
    events = []
    Pipeline(ModelFolder(sd1_tiny)).generate(PROMPT, steps=2, seed=3, width=64, height=64, preview="none",
                                             progress=events.append)
    assert not any(p.preview is not None for p in events)


def test_a_tiny_autoencoder_must_be_given(sd1_tiny):
    from sdweb.errors import ConfigError

    with pytest.raises(ConfigError, match="decoder 'taesd' needs a tiny autoencoder, and this pipeline has none"):
        Pipeline(ModelFolder(sd1_tiny)).generate(PROMPT, steps=1, decoder="taesd")
    with pytest.raises(ConfigError, match="preview 'taesd' needs a tiny autoencoder"):
        Pipeline(ModelFolder(sd1_tiny)).generate(PROMPT, steps=1, preview="taesd")


def test_a_tiny_autoencoder_of_other_latents_is_refused(sd1_tiny, taesd_tiny, tmp_path):
    """A TAE made for 16-channel latents (or another scale factor) is named before anything loads,
    instead of failing inside a conv."""
    import json
    import shutil

    from sdweb.errors import ConfigError
    from sdweb.model import AutoencoderFolder

    for change, said in (({"latent_channels": 16}, "16-channel latents at 1/8 of the image"),
                         ({"decoder_block_out_channels": [64] * 3, "num_decoder_blocks": [1] * 3}, "4-channel latents at 1/4 of the image")):
        other = tmp_path / f"tae-{len(said)}"
        shutil.copytree(taesd_tiny, other)
        config = json.loads((other / "config.json").read_text())
        (other / "config.json").write_text(json.dumps({**config, **change}))
        pipe = Pipeline(ModelFolder(sd1_tiny), tiny_autoencoder=AutoencoderFolder(other))
        for kw, field in (({"decoder": "taesd"}, "decoder"), ({"preview": "taesd"}, "preview")):
            with pytest.raises(ConfigError, match=f"^{field}: the tiny autoencoder .* works on {said}, and .* makes "
                                                  "4-channel latents at 1/8") as e:
                pipe.generate(PROMPT, steps=1, width=64, height=64, **kw)
            assert e.value.field == field
    # the test models' own TAE passes the check
    Pipeline(ModelFolder(sd1_tiny), tiny_autoencoder=AutoencoderFolder(taesd_tiny)).generate(
        PROMPT, steps=1, width=64, height=64, decoder="taesd")


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
