"""Euler (Karras et al. 2022, Algorithm 2 without churn): diffusers' EulerDiscreteScheduler.

Works in sigma space: x is scaled by 1 / sqrt(sigma^2 + 1) before the UNet, and the timesteps the
UNet sees are float32 (fractional under Karras sigmas).
"""

import numpy as np

from ..errors import ConfigError
from .base import (
    Scheduler,
    as_f32,
    exponential_sigmas,
    f32,
    karras_sigmas,
    make_alphas_cumprod,
    sigma_to_t,
    torch_linspace_f32,
)


class SigmaScheduler(Scheduler):
    """Shared by Euler and Euler ancestral: the training sigmas, the step index, input scaling."""

    def _train_sigmas(self):
        """(num_train_timesteps,) float32 sqrt((1 - alpha_bar) / alpha_bar), ascending in t."""
        alphas_cumprod = make_alphas_cumprod(self.config, self.DIFFUSERS_CLASS)
        if self.config["rescale_betas_zero_snr"]:
            # A zero terminal SNR would make sigma infinite; diffusers substitutes a tiny alpha_bar.
            alphas_cumprod[-1] = 2**-24
        self.alphas_cumprod = alphas_cumprod
        return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5

    def _float_timesteps(self, n):
        """(n,) float32 descending timesteps for this config's timestep_spacing."""
        c = self.config
        T = c["num_train_timesteps"]
        spacing = c["timestep_spacing"]
        if spacing == "linspace":
            return np.linspace(0, T - 1, n, dtype=f32)[::-1].copy()
        if spacing == "leading":
            return (np.arange(0, n) * (T // n)).round()[::-1].astype(f32) + f32(c["steps_offset"])
        return np.arange(T, 0, -T / n).round().astype(f32) - f32(1)

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = self.sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(max_sigma)
        return float((max_sigma**2 + 1) ** 0.5)

    def scale_model_input(self, sample, t):
        """sample: (N, C, H, W) -> sample / sqrt(sigma^2 + 1), the UNet's input."""
        if self._step_index is None:
            self._init_step_index(t)
        sigma = self.sigmas[self._step_index]
        return as_f32(as_f32(sample) / ((sigma**2 + 1) ** 0.5))

    def add_noise(self, original_samples, noise, t):
        """x0 + noise * sigma, at the sigma of the step add_noise's index rule picks."""
        sigma = self.sigmas[self._noise_index(t)]
        return as_f32(as_f32(original_samples) + as_f32(noise) * sigma)


class EulerDiscreteScheduler(SigmaScheduler):
    DIFFUSERS_CLASS = "EulerDiscreteScheduler"
    DEFAULTS = dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        sigma_min=None,
        sigma_max=None,
        timestep_spacing="linspace",
        timestep_type="discrete",
        steps_offset=0,
        rescale_betas_zero_snr=False,
        final_sigmas_type="zero",
    )

    def __init__(self, config=None, **forced):
        super().__init__(config, **forced)
        c = self.config
        self._option("prediction_type", ("epsilon", "v_prediction", "sample", "original_sample"))
        self._option("timestep_spacing", ("leading", "trailing", "linspace"))
        self._option("interpolation_type", ("linear", "log_linear"))
        self._option("timestep_type", ("discrete", "continuous"))
        self._option("final_sigmas_type", ("zero", "sigma_min"))
        if c["use_beta_sigmas"]:
            raise ConfigError(
                "EulerDiscreteScheduler use_beta_sigmas=true is not supported (it needs scipy); set it false"
            )
        if sum(bool(c[k]) for k in ("use_karras_sigmas", "use_exponential_sigmas")) > 1:
            raise ConfigError("use_karras_sigmas and use_exponential_sigmas are both set; set at most one")
        self._sigmas_train = self._train_sigmas()
        self.sigmas = np.concatenate([self._sigmas_train[::-1], np.zeros(1, f32)])

    def set_timesteps(self, num_inference_steps):
        n = self._check_steps(num_inference_steps)
        c = self.config
        self.num_inference_steps = n
        timesteps = self._float_timesteps(n)
        sigmas_train = self._sigmas_train
        log_sigmas = np.log(sigmas_train)
        if c["interpolation_type"] == "linear":
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas_train)), sigmas_train)
        else:  # log_linear: n + 1 sigmas log-uniform from the largest to the smallest training sigma
            sigmas = np.exp(torch_linspace_f32(np.log(sigmas_train[-1]), np.log(sigmas_train[0]), n + 1))
        if c["use_karras_sigmas"] or c["use_exponential_sigmas"]:
            lo = c["sigma_min"] if c["sigma_min"] is not None else float(sigmas[-1])
            hi = c["sigma_max"] if c["sigma_max"] is not None else float(sigmas[0])
            convert = karras_sigmas if c["use_karras_sigmas"] else exponential_sigmas
            sigmas = convert(lo, hi, n)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
        if c["final_sigmas_type"] == "sigma_min":
            sigma_last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        else:
            sigma_last = 0
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(f32)
        if c["timestep_type"] == "continuous" and c["prediction_type"] == "v_prediction":
            with np.errstate(divide="ignore"):
                self.timesteps = (0.25 * np.log(self.sigmas[:-1])).astype(f32)
        else:
            self.timesteps = np.asarray(timesteps).astype(f32)
        self._step_index = None
        self.begin_index = None

    def step(self, model_output, t, sample, noise=None):
        """model_output, sample: (N, C, H, W) float32 at timestep t -> sample at the next sigma."""
        model_output, sample = as_f32(model_output), as_f32(sample)
        if self._step_index is None:
            self._init_step_index(t)
        sigma = self.sigmas[self._step_index]
        # s_churn = 0: gamma = 0 and sigma_hat = sigma, so no noise is drawn.
        sigma_hat = sigma * f32(1.0)
        kind = self.config["prediction_type"]
        if kind in ("sample", "original_sample"):
            x0 = model_output
        elif kind == "epsilon":
            x0 = sample - sigma_hat * model_output
        else:  # v_prediction
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        self.pred_original_sample = x0
        derivative = (sample - x0) / sigma_hat
        dt = self.sigmas[self._step_index + 1] - sigma_hat
        self._step_index += 1
        return as_f32(sample + derivative * dt)
