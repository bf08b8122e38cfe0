"""What every scheduler shares: config resolution, beta schedules, alphas_cumprod, timestep spacing.

Numerics follow diffusers 0.42.1 on torch: its betas, alphas_cumprod and sigmas are float32 tensors
and the per-step coefficients are float32 0-d tensors, so here they are float32 arrays and
np.float32 scalars (NumPy >= 2 keeps `np.float32 op python float` in float32, as torch does). Where
diffusers goes through float64 NumPy (np.interp, Karras sigmas) so do we, then cast where it casts.
Latent-shaped arrays are (N, C, H, W) float32 throughout.
"""

import math

import numpy as np

from ..errors import ConfigError

f32 = np.float32


class Scheduler:
    """Base of the samplers: `set_timesteps(n)`, `.timesteps`, `.init_noise_sigma`,
    `scale_model_input(x, t)`, `step(model_output, t, x, noise) -> x_prev`, `.order`, and after each
    step `.pred_original_sample`: the step's prediction of the clean latents x0, (N, C, H, W) float32
    (diffusers' `pred_original_sample` of the step's output, where the class returns one; previews
    decode it); for runs that start from an image, `start_at(steps, strength)` and
    `add_noise(x0, noise, t)`.

    Subclasses set `DEFAULTS` (the keyword defaults of the matching diffusers class's `__init__`,
    which is what `from_config` falls back to) and `DIFFUSERS_CLASS` (for messages).
    """

    DEFAULTS: dict = {}
    DIFFUSERS_CLASS = ""
    order = 1

    def __init__(self, config=None, **forced):
        self.config, self.extra_config = resolve_config(self.DEFAULTS, config, forced)
        self.num_inference_steps = None
        self.timesteps = None
        self.pred_original_sample = None
        self.begin_index = None
        self._step_index = None

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def start_at(self, steps, strength):
        """diffusers' get_timesteps: the tail of the schedule that a run from an image at `strength`
        takes (the last strength_steps(steps, strength) steps), with the scheduler told where it
        begins. Call after set_timesteps(steps)."""
        t_start = max(steps - strength_steps(steps, strength), 0)
        self.set_begin_index(t_start * self.order)
        return self.timesteps[t_start * self.order :]

    def set_begin_index(self, begin_index):
        """The step index of a run's first timestep (diffusers' set_begin_index). Only the samplers
        that count their steps (sigma-based, LCM) read it: they start counting there instead of
        looking the first timestep up, and add_noise takes its noise level from it."""
        self.begin_index = int(begin_index)

    def add_noise(self, original_samples, noise, t):
        """The forward process: x0 (N, C, H, W) noised to the level of timestep t with `noise` (same
        shape), float32. img2img starts from it; 4-channel inpainting puts the known region back with it."""
        raise NotImplementedError(f"{self.DIFFUSERS_CLASS} has no add_noise")

    def _index_for_timestep(self, t):
        """The index of timestep t in the schedule: the second one where t repeats (so a run starting
        mid-schedule does not skip a sigma), as diffusers' index_for_timestep."""
        (indices,) = np.nonzero(self.timesteps == t)
        if len(indices) == 0:
            raise ValueError(f"timestep {t!r} is not in this scheduler's timesteps")
        return int(indices[1] if len(indices) > 1 else indices[0])

    def _init_step_index(self, t):
        self._step_index = self.begin_index if self.begin_index is not None else self._index_for_timestep(t)

    def _noise_index(self, t):
        """The step index whose noise level add_noise uses (diffusers' rule): looked up without a
        begin index; the current step once stepping has started (inpainting's blend after a step);
        else the begin index (img2img's start)."""
        if self.begin_index is None:
            return self._index_for_timestep(t)
        return self._step_index if self._step_index is not None else self.begin_index

    def scale_model_input(self, sample, t):
        """sample: (N, C, H, W) -> the UNet's input at timestep t (unchanged unless sigma-based)."""
        return sample

    def _option(self, key, allowed):
        """config[key], checked against the values this port implements."""
        value = self.config[key]
        if value not in allowed:
            raise ConfigError(
                f"{self.DIFFUSERS_CLASS} {key}={value!r} is not supported; use one of "
                + ", ".join(repr(a) for a in allowed)
            )
        return value

    def _check_steps(self, num_inference_steps):
        n = num_inference_steps
        t = self.config["num_train_timesteps"]
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= t:
            raise ConfigError(f"steps={n!r} is out of range; use an integer from 1 to num_train_timesteps={t}")
        return int(n)


def strength_steps(steps, strength) -> int:
    """How many of `steps` a run from an image at `strength` in (0, 1] takes: diffusers' init_timestep,
    min(int(steps * strength), steps) in Python floats (so 3 x 0.7 gives 2)."""
    return min(int(steps * strength), steps)


def add_noise_alpha(alphas_cumprod, original_samples, noise, t):
    """sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, float32: the add_noise of the alpha-based
    schedulers (DDIM, DDPM, PNDM, LCM), at an integer timestep."""
    alpha_prod = alphas_cumprod[int(t)]
    return as_f32(alpha_prod**0.5 * as_f32(original_samples) + (1 - alpha_prod) ** 0.5 * as_f32(noise))


def resolve_config(defaults, config, forced=None):
    """What `DiffusersClass.from_config(config, **forced)` passes to `__init__`.

    Keys the class knows are taken from `config`, except those listed in `_use_default_values`
    (diffusers drops them so the class default applies); missing keys take `defaults`; `forced`
    overrides both. Returns (init_config, extra): `extra` holds the keys the class does not know,
    which diffusers still registers on `scheduler.config` (DPMSolverMultistepScheduler's Karras
    sigmas read `config.sigma_min` / `sigma_max` through that).
    """
    config = dict(config or {})
    use_defaults = set(config.pop("_use_default_values", None) or ())
    init = dict(defaults)
    extra = {}
    for key, value in config.items():
        if key in use_defaults or key.startswith("_"):
            continue
        if key in defaults:
            init[key] = value
        else:
            extra[key] = value
    init.update(forced or {})
    return init, extra


# -- betas ----------------------------------------------------------------------------------------


def torch_linspace_f32(start, end, steps):
    """torch.linspace(start, end, steps, dtype=torch.float32) bit for bit: its CPU kernel takes a
    float32 step and forms start + step*i (first half) / end - step*(steps-1-i) (second half) with a
    fused multiply-add, which float64 arithmetic rounded once to float32 reproduces."""
    if steps == 1:
        return np.array([start], dtype=f32)
    s, e = float(f32(start)), float(f32(end))
    step = float((f32(e) - f32(s)) / f32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    first = i < steps // 2
    return np.where(first, s + step * i, e - step * (steps - 1 - i)).astype(f32)


def betas_for_alpha_bar(num_diffusion_timesteps, alpha_transform_type="cosine", max_beta=0.999):
    """diffusers.schedulers.betas_for_alpha_bar: float64 Python arithmetic, stored as float32."""
    if alpha_transform_type == "cosine":

        def alpha_bar_fn(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    elif alpha_transform_type == "laplace":

        def alpha_bar_fn(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

    else:
        raise ConfigError(f"alpha_transform_type={alpha_transform_type!r} is not supported; use 'cosine' or 'laplace'")
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta))
    return np.array(betas, dtype=f32)


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def make_betas(config, class_name, schedules=BETA_SCHEDULES):
    """(num_train_timesteps,) float32 betas from trained_betas / beta_schedule / beta_start / beta_end."""
    n = config["num_train_timesteps"]
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float64).astype(f32)
    schedule = config["beta_schedule"]
    if schedule not in schedules:
        raise ConfigError(
            f"{class_name} beta_schedule={schedule!r} is not supported; use one of " + ", ".join(map(repr, schedules))
        )
    start, end = config["beta_start"], config["beta_end"]
    if schedule == "linear":
        return torch_linspace_f32(start, end, n)
    if schedule == "scaled_linear":
        return torch_linspace_f32(start**0.5, end**0.5, n) ** 2
    if schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n)
    if schedule == "laplace":
        return betas_for_alpha_bar(n, "laplace")
    # sigmoid (DDPM only)
    x = torch_linspace_f32(-6, 6, n)
    return (f32(1) / (f32(1) + np.exp(-x))) * (end - start) + start


def cumprod(x):
    """torch.cumprod of a float32 vector: it accumulates in float64 and stores float32."""
    return np.cumprod(x.astype(np.float64)).astype(f32)


def rescale_zero_terminal_snr(betas):
    """Betas rescaled to zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32 as diffusers."""
    alphas = f32(1.0) - betas
    alphas_bar_sqrt = np.sqrt(cumprod(alphas))
    a0, aT = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = alphas_bar_sqrt - aT
    alphas_bar_sqrt = alphas_bar_sqrt * (a0 / (a0 - aT))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return f32(1) - alphas


def make_alphas_cumprod(config, class_name, schedules=BETA_SCHEDULES):
    """(num_train_timesteps,) float32 cumulative products of 1 - beta."""
    betas = make_betas(config, class_name, schedules)
    if config.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    return cumprod(f32(1.0) - betas)


# -- timesteps ------------------------------------------------------------------------------------

SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(spacing, num_train_timesteps, n, steps_offset):
    """Descending int64 timesteps as DDIM / DDPM / PNDM space them (PNDM reverses them)."""
    T = num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    raise ConfigError(f"timestep_spacing={spacing!r} is not supported; use one of " + ", ".join(map(repr, SPACINGS)))


def sigma_to_t(sigma, log_sigmas):
    """Fractional training timestep whose log-sigma interpolates to `sigma` (diffusers' _sigma_to_t)."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def karras_sigmas(sigma_min, sigma_max, n, rho=7.0):
    """Karras et al. (2022) noise levels, float64, descending."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min, sigma_max, n):
    """Log-uniform noise levels, float64, descending."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def threshold_sample(sample, ratio, max_value):
    """Dynamic thresholding (Imagen): clamp x0 per sample to its `ratio` quantile of |x0|, then rescale.
    sample: (N, C, H, W) float32 -> same."""
    n = sample.shape[0]
    flat = sample.reshape(n, -1)
    s = np.quantile(np.abs(flat), ratio, axis=1).astype(f32)
    s = np.minimum(np.maximum(s, f32(1)), f32(max_value))[:, None]
    return (np.clip(flat, -s, s) / s).reshape(sample.shape).astype(f32)


def as_f32(x):
    return np.asarray(x, dtype=f32)


def draw(noise, shape, class_name):
    """noise(shape): float32 standard normals from the run's generator."""
    if noise is None:
        raise ValueError(f"{class_name}.step needs noise(shape) to draw from the run's generator")
    return as_f32(noise(shape))
