"""Latent consistency models (Luo et al. 2023): diffusers' LCMScheduler. Each step predicts the
clean latent through the consistency boundary condition, then re-noises it to the next timestep
with fresh noise (every step but the last)."""

import numpy as np

from ..errors import ConfigError
from .base import Scheduler, add_noise_alpha, as_f32, draw, f32, make_alphas_cumprod
from .ddim import clip_x0, predict_x0_eps


class LCMScheduler(Scheduler):
    DIFFUSERS_CLASS = "LCMScheduler"
    DEFAULTS = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        trained_betas=None,
        original_inference_steps=50,
        clip_sample=False,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        thresholding=False,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
        timestep_spacing="leading",
        timestep_scaling=10.0,
        rescale_betas_zero_snr=False,
    )
    sigma_data = 0.5

    def __init__(self, config=None, **forced):
        super().__init__(config, **forced)
        c = self.config
        self._option("prediction_type", ("epsilon", "sample", "v_prediction"))
        self.alphas_cumprod = make_alphas_cumprod(c, self.DIFFUSERS_CLASS)
        self.final_alpha_cumprod = f32(1.0) if c["set_alpha_to_one"] else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps):
        n = self._check_steps(num_inference_steps)
        c = self.config
        T = c["num_train_timesteps"]
        original_steps = c["original_inference_steps"]
        if not 1 <= original_steps <= T:
            raise ConfigError(f"LCMScheduler original_inference_steps={original_steps} is out of range; use 1 to {T}")
        if n > original_steps:
            raise ConfigError(
                f"steps={n} is more than LCM's original_inference_steps={original_steps}; use at most {original_steps}"
            )
        # The distillation schedule (every k-th training timestep), from which n are picked evenly.
        k = T // original_steps
        origin = (np.asarray(list(range(1, original_steps + 1))) * k - 1)[::-1].copy()
        indices = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        self.num_inference_steps = n
        self.timesteps = origin[indices].astype(np.int64)
        self._step_index = None
        self.begin_index = None

    def add_noise(self, original_samples, noise, t):
        return add_noise_alpha(self.alphas_cumprod, original_samples, noise, t)

    def step(self, model_output, t, sample, noise=None):
        """model_output, sample: (N, C, H, W) float32 at timestep t -> sample at the next timestep
        (the denoised latent on the last step); draws noise(sample.shape) on all other steps."""
        model_output, sample = as_f32(model_output), as_f32(sample)
        if self._step_index is None:
            self._init_step_index(t)
        t = int(t)
        prev_index = self._step_index + 1
        prev_t = int(self.timesteps[prev_index]) if prev_index < len(self.timesteps) else t
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        # Consistency-model boundary condition; diffusers computes it in float32 from an int timestep.
        scaled_t = f32(t) * f32(self.config["timestep_scaling"])
        c_skip = f32(self.sigma_data**2) / (scaled_t**2 + f32(self.sigma_data**2))
        c_out = scaled_t / (scaled_t**2 + f32(self.sigma_data**2)) ** 0.5
        x0, _ = predict_x0_eps(self.config["prediction_type"], model_output, sample, alpha_prod_t)
        x0 = clip_x0(x0, self.config)
        # diffusers returns this as the step output's `denoised` (LCM's x0; it has no pred_original_sample)
        denoised = self.pred_original_sample = c_out * x0 + c_skip * sample
        if self._step_index != self.num_inference_steps - 1:
            z = draw(noise, model_output.shape, self.DIFFUSERS_CLASS)
            prev_sample = np.sqrt(alpha_prod_t_prev) * denoised + np.sqrt(beta_prod_t_prev) * z
        else:
            prev_sample = denoised
        self._step_index += 1
        return as_f32(prev_sample)
