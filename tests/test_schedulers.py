"""sdweb.schedulers against diffusers 0.42.1's scheduler classes, run side by side.

Each case builds our scheduler with make_scheduler(name, config) and diffusers' with
Class.from_config(config, **forced_options(name)), compares timesteps and init_noise_sigma, then
runs a whole sampling loop on both with the same fake "UNet" (a fixed function of sample and t)
and the same noise draws (diffusers' randn_tensor is patched to read our generator's stream).
Every step's prediction of the clean latents (what previews show) is compared too: diffusers'
`pred_original_sample` of the step output, LCM's `denoised`, DPM-Solver's data prediction (its
`model_outputs[-1]`), and for PNDM, whose step returns none, what diffusers' DDIMScheduler of the
same config predicts from the same model output, timestep and sample.
"""

from __future__ import annotations

import inspect

import diffusers
import numpy as np
import pytest
import torch
from diffusers.schedulers import (
    scheduling_ddim,
    scheduling_ddpm,
    scheduling_dpmsolver_multistep,
    scheduling_euler_ancestral_discrete,
    scheduling_euler_discrete,
    scheduling_lcm,
    scheduling_pndm,
)

from sdweb.errors import ConfigError
from sdweb.schedulers import SCHEDULERS, forced_options, make_scheduler
from sdweb.schedulers.base import torch_linspace_f32

# name -> (diffusers class, the module whose randn_tensor the class calls)
REFERENCE = {
    "ddim": (diffusers.DDIMScheduler, scheduling_ddim),
    "pndm": (diffusers.PNDMScheduler, scheduling_pndm),
    "euler": (diffusers.EulerDiscreteScheduler, scheduling_euler_discrete),
    "euler-a": (diffusers.EulerAncestralDiscreteScheduler, scheduling_euler_ancestral_discrete),
    "dpm++2m": (diffusers.DPMSolverMultistepScheduler, scheduling_dpmsolver_multistep),
    "dpm++2m-karras": (diffusers.DPMSolverMultistepScheduler, scheduling_dpmsolver_multistep),
    "lcm": (diffusers.LCMScheduler, scheduling_lcm),
    "ddpm": (diffusers.DDPMScheduler, scheduling_ddpm),
}

# Verbatim from the Hub repos (tests/data/real-configs/*/scheduler/scheduler_config.json).
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21_BASE = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.10.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
CONFIGS = {
    "sd15": SD15,
    **{
        f"sd21v-{s}": dict(SD21_BASE, prediction_type="v_prediction", timestep_spacing=s)
        for s in ("leading", "trailing", "linspace")
    },
}
STEPS = (1, 2, 4, 20, 50)
SHAPE = (1, 4, 8, 6)
# diffusers' own np.array(tensor) calls warn under NumPy 2; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TOL = 1e-5  # of max|reference|
# x0 = (x - sqrt(1 - a) eps) / sqrt(a): at the first steps sqrt(a) is about 0.006 (t = 999 of a linear
# schedule), which magnifies float32 rounding ~150x, in diffusers as here; previews need far less.
X0_TOL = 1e-4
FIXED = np.random.default_rng(1234).standard_normal(SHAPE, dtype=np.float32)


def fake_unet(x: np.ndarray, t) -> np.ndarray:
    """A deterministic stand-in for the UNet: (1, 4, 8, 6) float32 -> same."""
    return (0.7 * x + np.float32(0.1 * np.sin(float(t) / 100)) + 0.3 * FIXED).astype(np.float32)


def reference_x0(name, sched, out, config, steps):
    """diffusers' x0 for the step that returned `out` -> a function of (model output, t, sample)."""
    if name == "lcm":
        return lambda *_: out.denoised
    if name.startswith("dpm++2m"):
        return lambda *_: sched.model_outputs[-1]
    if name == "pndm":
        ddim = diffusers.DDIMScheduler.from_config(config, clip_sample=False, thresholding=False)
        ddim.set_timesteps(steps)
        return lambda eps, t, x: ddim.step(eps, t, x).pred_original_sample
    return lambda *_: out.pred_original_sample


def run_reference(name, config, steps, monkeypatch, seed=7):
    """diffusers' loop, as StableDiffusionPipeline runs it. Returns (timesteps, init sigma, final x,
    [x0 of each step])."""
    cls, module = REFERENCE[name]
    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)).to(dtype or torch.float32)

    if hasattr(module, "randn_tensor"):  # only the stochastic samplers draw
        monkeypatch.setattr(module, "randn_tensor", randn_tensor)
    sched = cls.from_config(config, **forced_options(name))
    sched.set_timesteps(steps)
    sigma0 = sched.init_noise_sigma
    x = torch.from_numpy(rng.standard_normal(SHAPE, dtype=np.float32)) * sigma0
    x0s = []
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        eps = torch.from_numpy(fake_unet(x_in.numpy(), t))
        out = sched.step(eps, t, x)
        x0s.append(reference_x0(name, sched, out, config, steps)(eps, t, x).numpy())
        x = out.prev_sample
    return sched.timesteps.numpy(), float(sigma0), x.numpy(), x0s


def run_ours(name, config, steps, seed=7):
    """The same loop on sdweb.schedulers; noise(shape) draws from the run's generator."""
    rng = np.random.default_rng(seed)

    def noise(shape):
        return rng.standard_normal(shape, dtype=np.float32)

    sched = make_scheduler(name, config)
    sched.set_timesteps(steps)
    sigma0 = sched.init_noise_sigma
    x = rng.standard_normal(SHAPE, dtype=np.float32) * np.float32(sigma0)
    x0s = []
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        assert x_in.dtype == np.float32
        x = sched.step(fake_unet(x_in, t), t, x, noise)
        assert x.dtype == np.float32 and x.shape == SHAPE
        x0 = sched.pred_original_sample
        assert x0.dtype == np.float32 and x0.shape == SHAPE
        x0s.append(x0)
    return sched.timesteps, sigma0, x, x0s


def compare(name, config, steps, monkeypatch, timesteps_rtol=0.0, tol=TOL):
    ref_ts, ref_sigma, ref_x, ref_x0s = run_reference(name, config, steps, monkeypatch)
    ts, sigma, x, x0s = run_ours(name, config, steps)
    assert isinstance(ts, np.ndarray)
    if name in ("euler", "euler-a"):
        assert ts.dtype == np.float32
    else:
        assert ts.dtype == np.int64
    if timesteps_rtol:
        np.testing.assert_allclose(ts, ref_ts, rtol=timesteps_rtol)
    else:
        np.testing.assert_array_equal(ts, ref_ts)
    assert isinstance(sigma, float)
    assert sigma == pytest.approx(ref_sigma, rel=1e-6)
    assert np.all(np.isfinite(ref_x)), "the reference run diverged; the case tests nothing"
    err = np.abs(x - ref_x).max() / np.abs(ref_x).max()
    assert err <= tol, f"{name} steps={steps}: max|ours - diffusers| = {err:.2e} x max|diffusers|"
    assert len(x0s) == len(ref_x0s) == len(ts)
    for i, (x0, ref_x0) in enumerate(zip(x0s, ref_x0s)):
        e = np.abs(x0 - ref_x0).max() / np.abs(ref_x0).max()
        assert e <= max(tol, X0_TOL), f"{name} steps={steps}: x0 of step {i}: max|ours - diffusers| = {e:.2e} x max|diffusers|"
    return err


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("name", SCHEDULERS)
def test_matches_diffusers_on_sd_configs(name, config_name, monkeypatch):
    for steps in STEPS:
        compare(name, CONFIGS[config_name], steps, monkeypatch)


# Options the SD configs do not exercise: (name, config, steps).
VARIANTS = [
    # class defaults (each class has its own: spacing, betas, clip_sample ...)
    *[(n, {}, (1, 4, 20)) for n in SCHEDULERS if n != "pndm"],
    ("pndm", {}, (4, 20)),  # PNDM's default is the PRK warm-up, which needs 4 steps
    ("pndm", dict(SD15, skip_prk_steps=False), (4, 5, 20, 50)),
    ("pndm", dict(SD15, skip_prk_steps=False, prediction_type="v_prediction", timestep_spacing="trailing"), (4, 20)),
    ("pndm", dict(SD15, set_alpha_to_one=True, beta_schedule="squaredcos_cap_v2"), (3, 20)),
    ("ddim", dict(SD15, clip_sample=True, prediction_type="sample"), (4, 20)),
    ("ddim", dict(SD15, thresholding=True, sample_max_value=1.5, prediction_type="sample"), (4, 20)),
    ("ddim", dict(SD21_BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                  prediction_type="v_prediction", set_alpha_to_one=True), (1, 4, 20)),
    ("ddim", dict(beta_schedule="linear", trained_betas=np.linspace(1e-4, 0.03, 1000).tolist()), (7,)),
    # a key listed in _use_default_values takes the class default; unknown keys are ignored
    ("euler", dict(SD15, _use_default_values=["timestep_spacing"], timestep_spacing="leading", foo=1), (4,)),
    ("euler", dict(SD15, use_karras_sigmas=True), (1, 4, 20, 50)),
    ("euler", dict(SD15, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0), (4, 20)),
    ("euler", dict(SD15, use_exponential_sigmas=True, timestep_spacing="trailing"), (4, 20)),
    ("euler", dict(SD15, final_sigmas_type="sigma_min", timestep_spacing="leading"), (4, 20)),
    ("euler", dict(SD21_BASE, timestep_type="continuous", prediction_type="v_prediction"), (4, 20)),
    ("euler", dict(SD15, interpolation_type="log_linear"), (4, 20)),
    ("euler", dict(SD15, prediction_type="sample"), (4, 20)),
    # Zero terminal SNR puts sigma_max at 4096: the first Euler step cancels two terms of size ~4096
    # down to ~5, so float32 rounding (torch's float32 sqrt is not correctly rounded: its
    # sigma_max is 4096.0, the true float32 one 4095.9998) is amplified ~1000x, in diffusers too.
    ("euler", dict(SD21_BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                   prediction_type="v_prediction"), (4, 20), 1e-4),
    ("euler-a", dict(SD21_BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                     prediction_type="v_prediction"), (4, 20)),
    ("dpm++2m", dict(SD15, solver_type="heun"), (4, 20)),
    ("dpm++2m", dict(SD15, lower_order_final=False), (4, 20)),
    ("dpm++2m", dict(SD15, euler_at_final=True, final_sigmas_type="sigma_min"), (4, 20)),
    ("dpm++2m", dict(SD15, final_sigmas_type="sigma_min"), (4, 20)),
    ("dpm++2m", dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1), (4, 20)),
    ("dpm++2m", dict(SD15, use_exponential_sigmas=True), (4, 20)),
    ("dpm++2m", dict(SD15, use_lu_lambdas=True), (4, 20)),
    ("dpm++2m", dict(SD15, prediction_type="sample", thresholding=True, sample_max_value=1.5), (4, 20)),
    ("dpm++2m", dict(SD21_BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                     prediction_type="v_prediction"), (4, 20)),
    # the name decides Karras, whatever the config says; sigma_min/max are read from an Euler config
    ("dpm++2m", dict(SD15, use_karras_sigmas=True, solver_order=3), (20,)),
    ("dpm++2m-karras", dict(SD15, _class_name="EulerDiscreteScheduler", sigma_min=0.1, sigma_max=10.0), (4, 20)),
    ("lcm", dict(SD15, original_inference_steps=25, timestep_scaling=5.0, set_alpha_to_one=False), (1, 4, 8, 25)),
    ("lcm", dict(SD21_BASE, clip_sample=True, prediction_type="sample"), (4,)),
    ("lcm", dict(SD21_BASE, prediction_type="v_prediction", thresholding=True), (4,)),
    ("ddpm", dict(SD15, variance_type="fixed_small_log"), (4, 20)),
    ("ddpm", dict(SD15, variance_type="fixed_large", timestep_spacing="trailing"), (4, 20)),
    ("ddpm", dict(beta_schedule="sigmoid", prediction_type="v_prediction"), (4, 20)),
    ("ddpm", dict(beta_schedule="laplace"), (4, 20)),
    ("ddpm", dict(SD15, clip_sample=True, clip_sample_range=0.8), (4, 20)),
    ("ddpm", dict(SD15, thresholding=True, sample_max_value=1.2, prediction_type="sample"), (4, 20)),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=[f"{v[0]}-{i}" for i, v in enumerate(VARIANTS)])
def test_matches_diffusers_on_variants(variant, monkeypatch):
    name, config, steps, tol = (*variant, TOL)[:4]
    # Karras / continuous timesteps go through logs of float32 sigmas, so they agree to rounding.
    rtol = 1e-6 if name == "euler" else 0.0
    for n in steps:
        compare(name, config, n, monkeypatch, timesteps_rtol=rtol, tol=tol)


def test_defaults_are_diffusers_defaults():
    """Missing config keys must take the defaults of the diffusers class the name maps to."""
    for name in SCHEDULERS:
        ours = type(make_scheduler(name, {})).DEFAULTS
        params = inspect.signature(REFERENCE[name][0].__init__).parameters
        theirs = {k: p.default for k, p in params.items() if k != "self"}
        assert ours == theirs, name


def test_sd15_pndm_schedule():
    """The PLMS schedule repeats its first timestep (the second-order warm-up)."""
    sched = make_scheduler("pndm", SD15)
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1]


def test_betas_match_torch_linspace():
    for start, end, n in [(0.00085**0.5, 0.012**0.5, 1000), (0.0001, 0.02, 1000), (-6, 6, 1000), (0.1, 0.3, 7)]:
        ref = torch.linspace(start, end, n, dtype=torch.float32).numpy()
        np.testing.assert_allclose(torch_linspace_f32(start, end, n), ref, rtol=2e-7, atol=0)


def test_unknown_name():
    with pytest.raises(ConfigError) as info:
        make_scheduler("k_lms", SD15)
    message = str(info.value)
    assert "'k_lms'" in message
    for name in SCHEDULERS:
        assert name in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "name, config, steps",
    [
        ("euler-a", dict(prediction_type="sample"), 4),
        ("euler", dict(use_beta_sigmas=True), 4),
        ("ddim", dict(timestep_spacing="even"), 4),
        ("ddim", dict(beta_schedule="sigmoid"), 4),
        ("pndm", dict(SD15, skip_prk_steps=False), 3),
        ("lcm", dict(SD15), 51),
        ("ddim", dict(SD15), 0),
        ("ddim", dict(SD15), 1001),
    ],
)
def test_unsupported_settings_raise_config_error(name, config, steps):
    with pytest.raises(ConfigError):
        make_scheduler(name, config).set_timesteps(steps)


def test_noise_is_drawn_like_diffusers():
    """Stochastic samplers draw one latent-shaped normal per step, except DDPM at t = 0 and LCM on its
    last step; the others never draw (the parity runs check the values)."""
    cases = [("euler-a", SD15, 5), ("ddpm", SD15, 5), ("ddpm", {}, 4), ("lcm", SD15, 4), ("ddim", SD15, 0),
             ("pndm", SD15, 0), ("euler", SD15, 0), ("dpm++2m", SD15, 0)]
    for name, config, draws in cases:
        sched = make_scheduler(name, config)
        sched.set_timesteps(5)
        count = []
        x = FIXED.copy()
        for t in sched.timesteps:
            x = sched.step(fake_unet(sched.scale_model_input(x, t), t), t, x,
                           lambda shape: count.append(shape) or np.zeros(shape, np.float32))
        assert len(count) == draws, name
        assert all(tuple(s) == SHAPE for s in count)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_ddpm_learned_variance(variance_type, monkeypatch):
    """A UNet with 2C output channels: the second half is the (log-)variance DDPM samples with."""
    config = dict(SD15, variance_type=variance_type)
    extra = np.abs(np.tanh(FIXED[:, ::-1])).astype(np.float32)  # in [0, 1): valid either way

    def unet(x, t):
        return np.concatenate([fake_unet(x, t), extra], axis=1)

    rng = np.random.default_rng(3)
    def randn_tensor(shape, **_):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", randn_tensor)
    ref = diffusers.DDPMScheduler.from_config(config)
    ref.set_timesteps(10)
    x_ref = torch.from_numpy(FIXED.copy())
    for t in ref.timesteps:
        x_ref = ref.step(torch.from_numpy(unet(x_ref.numpy(), t)), t, x_ref).prev_sample

    rng2 = np.random.default_rng(3)
    ours = make_scheduler("ddpm", config)
    ours.set_timesteps(10)
    x = FIXED.copy()
    for t in ours.timesteps:
        x = ours.step(unet(x, t), t, x, lambda shape: rng2.standard_normal(shape, dtype=np.float32))
    x_ref = x_ref.numpy()
    assert np.abs(x - x_ref).max() <= TOL * np.abs(x_ref).max()


# --- runs that start from an image: get_timesteps, add_noise, and inpainting's blend ------------------

IMAGE = np.random.default_rng(99).standard_normal(SHAPE, dtype=np.float32)  # stands in for image latents
MASK = (np.arange(SHAPE[3]) < 3).astype(np.float32)[None, None, None, :]  # repaint the left half


def run_reference_from_image(name, config, steps, strength, blend, monkeypatch, seed=7):
    """diffusers' img2img loop (blend=False) or its 4-channel inpainting loop (blend=True, the known
    region put back each step with add_noise at the next timestep), its own get_timesteps choosing
    the timesteps. Returns (timesteps, final x)."""
    from types import SimpleNamespace

    cls, module = REFERENCE[name]
    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    if hasattr(module, "randn_tensor"):
        monkeypatch.setattr(module, "randn_tensor", randn_tensor)
    sched = cls.from_config(config, **forced_options(name))
    sched.set_timesteps(steps)
    get_timesteps = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps
    timesteps, _ = get_timesteps(SimpleNamespace(scheduler=sched), steps, strength, "cpu")
    image = torch.from_numpy(IMAGE)
    noise = randn_tensor(SHAPE)
    x = sched.add_noise(image, noise, timesteps[:1]) if strength < 1 or not blend else noise * sched.init_noise_sigma
    mask = torch.from_numpy(MASK)
    for i, t in enumerate(timesteps):
        x = sched.step(torch.from_numpy(fake_unet(sched.scale_model_input(x, t).numpy(), t)), t, x).prev_sample
        if blend:
            known = image if i == len(timesteps) - 1 else sched.add_noise(image, noise, torch.tensor([timesteps[i + 1]]))
            x = (1 - mask) * known + mask * x
    return timesteps.numpy(), x.numpy()


def run_ours_from_image(name, config, steps, strength, blend, seed=7):
    rng = np.random.default_rng(seed)

    def draw(shape):
        return rng.standard_normal(shape, dtype=np.float32)

    sched = make_scheduler(name, config)
    sched.set_timesteps(steps)
    timesteps = sched.start_at(steps, strength)
    noise = draw(SHAPE)
    x = sched.add_noise(IMAGE, noise, timesteps[0]) if strength < 1 or not blend else \
        noise * np.float32(sched.init_noise_sigma)
    assert x.dtype == np.float32
    for i, t in enumerate(timesteps):
        x = sched.step(fake_unet(sched.scale_model_input(x, t), t), t, x, draw)
        if blend:
            known = IMAGE if i == len(timesteps) - 1 else sched.add_noise(IMAGE, noise, timesteps[i + 1])
            x = (1 - MASK) * known + MASK * x
    return timesteps, x


@pytest.mark.parametrize("blend", [False, True], ids=["img2img", "inpaint4"])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_runs_from_an_image_match_diffusers(name, blend, monkeypatch):
    config = CONFIGS["sd15"] if name != "euler" else dict(SD15, use_karras_sigmas=True)
    for steps, strength in ((10, 0.5), (4, 0.75), (20, 0.3), (3, 0.7), (4, 1.0), (5, 0.99)):
        ref_ts, ref_x = run_reference_from_image(name, config, steps, strength, blend, monkeypatch)
        ts, x = run_ours_from_image(name, config, steps, strength, blend)
        np.testing.assert_allclose(ts, ref_ts, rtol=1e-6)
        assert np.all(np.isfinite(ref_x))
        err = np.abs(x - ref_x).max() / np.abs(ref_x).max()
        assert err <= TOL, f"{name} steps={steps} strength={strength}: rel err {err:.2e}"


def test_start_at_takes_the_schedules_tail():
    """int(steps x strength) of the steps run, the last ones. PNDM's schedule has one timestep more
    than its steps (the repeated one), so its tail has one more too, as in diffusers."""
    from sdweb.schedulers.base import strength_steps

    assert [strength_steps(s, k) for s, k in ((10, 0.8), (3, 0.7), (4, 1.0), (50, 0.01), (5, 0.1))] == [8, 2, 4, 0, 0]
    sched = make_scheduler("pndm", SD15)
    sched.set_timesteps(10)
    assert sched.start_at(10, 0.3).tolist() == [301, 201, 101, 1]
    assert sched.start_at(10, 1.0).tolist() == sched.timesteps.tolist()
    euler = make_scheduler("euler", SD15)
    euler.set_timesteps(10)
    tail = euler.start_at(10, 0.5)
    assert len(tail) == 5 and euler.begin_index == 5
    euler.set_timesteps(10)
    assert euler.begin_index is None  # a new schedule forgets where the last run began
