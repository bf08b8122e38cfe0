"""DDIM (Song et al. 2020) with eta = 0: diffusers' DDIMScheduler, deterministic."""

import numpy as np

from .base import (
    Scheduler,
    add_noise_alpha,
    as_f32,
    f32,
    make_alphas_cumprod,
    spaced_timesteps,
    threshold_sample,
)


def predict_x0_eps(prediction_type, model_output, sample, alpha_prod_t):
    """(x0, eps) from the model output; alpha_prod_t a float32 scalar. Shared by DDIM, DDPM, LCM."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        x0 = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        eps = model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - alpha_prod_t ** (0.5) * x0) / beta_prod_t ** (0.5)
    elif prediction_type == "v_prediction":
        x0 = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
        eps = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
    else:  # checked at construction
        raise AssertionError(prediction_type)
    return x0, eps


def clip_x0(x0, config):
    """Thresholding or clipping of the predicted x0, as DDIM/DDPM/LCM configure it."""
    if config["thresholding"]:
        return threshold_sample(x0, config["dynamic_thresholding_ratio"], config["sample_max_value"])
    if config["clip_sample"]:
        r = config["clip_sample_range"]
        return np.clip(x0, -r, r).astype(f32)
    return x0


class DDIMScheduler(Scheduler):
    DIFFUSERS_CLASS = "DDIMScheduler"
    DEFAULTS = dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        thresholding=False,
        dynamic_thresholding_ratio=0.995,
        clip_sample_range=1.0,
        sample_max_value=1.0,
        timestep_spacing="leading",
        rescale_betas_zero_snr=False,
    )

    def __init__(self, config=None, **forced):
        super().__init__(config, **forced)
        c = self.config
        self._option("prediction_type", ("epsilon", "sample", "v_prediction"))
        self._option("timestep_spacing", ("leading", "trailing", "linspace"))
        self.alphas_cumprod = make_alphas_cumprod(c, self.DIFFUSERS_CLASS)
        self.final_alpha_cumprod = f32(1.0) if c["set_alpha_to_one"] else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps):
        n = self._check_steps(num_inference_steps)
        c = self.config
        self.num_inference_steps = n
        self.timesteps = spaced_timesteps(c["timestep_spacing"], c["num_train_timesteps"], n, c["steps_offset"])

    def add_noise(self, original_samples, noise, t):
        return add_noise_alpha(self.alphas_cumprod, original_samples, noise, t)

    def step(self, model_output, t, sample, noise=None):
        """model_output, sample: (N, C, H, W) float32 at timestep t -> sample at the next timestep."""
        model_output, sample = as_f32(model_output), as_f32(sample)
        t = int(t)
        prev_t = t - self.config["num_train_timesteps"] // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0, eps = predict_x0_eps(self.config["prediction_type"], model_output, sample, alpha_prod_t)
        x0 = self.pred_original_sample = clip_x0(x0, self.config)
        # eta = 0: no noise term, and the direction keeps the whole 1 - alpha_prev.
        direction = (1 - alpha_prod_t_prev) ** (0.5) * eps
        return as_f32(alpha_prod_t_prev ** (0.5) * x0 + direction)
