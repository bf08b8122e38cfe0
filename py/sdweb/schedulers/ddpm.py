"""DDPM (Ho et al. 2020) ancestral sampling: diffusers' DDPMScheduler. Steps from t to the next
scheduled timestep through the posterior q(x_prev | x_t, x0), adding noise except at t = 0."""

import numpy as np

from ..errors import ConfigError
from .base import BETA_SCHEDULES, Scheduler, add_noise_alpha, as_f32, draw, f32, make_alphas_cumprod, spaced_timesteps
from .ddim import clip_x0, predict_x0_eps


class DDPMScheduler(Scheduler):
    DIFFUSERS_CLASS = "DDPMScheduler"
    DEFAULTS = dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        variance_type="fixed_small",
        clip_sample=True,
        prediction_type="epsilon",
        thresholding=False,
        dynamic_thresholding_ratio=0.995,
        clip_sample_range=1.0,
        sample_max_value=1.0,
        timestep_spacing="leading",
        steps_offset=0,
        rescale_betas_zero_snr=False,
    )

    def __init__(self, config=None, **forced):
        super().__init__(config, **forced)
        c = self.config
        self._option("prediction_type", ("epsilon", "sample", "v_prediction"))
        self._option("timestep_spacing", ("leading", "trailing", "linspace"))
        # fixed_large_log is left out: diffusers takes the square root of a log variance with it.
        self._option("variance_type", ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"))
        schedules = BETA_SCHEDULES + ("laplace", "sigmoid")
        self.alphas_cumprod = make_alphas_cumprod(c, self.DIFFUSERS_CLASS, schedules)

    def set_timesteps(self, num_inference_steps):
        n = self._check_steps(num_inference_steps)
        c = self.config
        self.num_inference_steps = n
        self.timesteps = spaced_timesteps(c["timestep_spacing"], c["num_train_timesteps"], n, c["steps_offset"])

    def add_noise(self, original_samples, noise, t):
        return add_noise_alpha(self.alphas_cumprod, original_samples, noise, t)

    def _previous_timestep(self, t):
        index = int(np.nonzero(self.timesteps == t)[0][0])
        return -1 if index == len(self.timesteps) - 1 else int(self.timesteps[index + 1])

    def _variance(self, t, prev_t, predicted_variance):
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else f32(1.0)
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        # The posterior variance beta~_t, kept positive so its log exists.
        variance = max((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, f32(1e-20))
        kind = self.config["variance_type"]
        if kind == "fixed_small":
            return variance
        if kind == "fixed_small_log":
            return np.exp(0.5 * np.log(variance))
        if kind == "fixed_large":
            return current_beta_t
        if kind == "learned":
            return predicted_variance
        frac = (predicted_variance + 1) / 2  # learned_range
        return frac * np.log(current_beta_t) + (1 - frac) * np.log(variance)

    def step(self, model_output, t, sample, noise=None):
        """model_output: (N, C, H, W), or (N, 2C, H, W) with a learned variance; sample:
        (N, C, H, W) float32 at timestep t -> sample at the next timestep; draws noise(sample.shape)
        unless t = 0."""
        model_output, sample = as_f32(model_output), as_f32(sample)
        t = int(t)
        prev_t = self._previous_timestep(t)
        kind = self.config["variance_type"]
        channels = sample.shape[1]
        if model_output.shape[1] == channels * 2 and kind in ("learned", "learned_range"):
            model_output, predicted_variance = model_output[:, :channels], model_output[:, channels:]
        elif kind in ("learned", "learned_range"):
            raise ConfigError(f"DDPMScheduler variance_type={kind!r} needs a UNet with {channels * 2} output channels")
        else:
            predicted_variance = None
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else f32(1.0)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t
        x0, _ = predict_x0_eps(self.config["prediction_type"], model_output, sample, alpha_prod_t)
        x0 = self.pred_original_sample = clip_x0(x0, self.config)
        # Mean of q(x_prev | x_t, x0): formula (7) of the DDPM paper.
        x0_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        prev_sample = x0_coeff * x0 + sample_coeff * sample
        if t > 0:
            z = draw(noise, model_output.shape, self.DIFFUSERS_CLASS)
            v = self._variance(t, prev_t, predicted_variance)
            if kind == "fixed_small_log":
                prev_sample = prev_sample + v * z
            elif kind == "learned_range":
                prev_sample = prev_sample + np.exp(0.5 * v) * z
            else:
                prev_sample = prev_sample + (v**0.5) * z
        return as_f32(prev_sample)
