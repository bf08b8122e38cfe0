"""Euler ancestral: diffusers' EulerAncestralDiscreteScheduler. Each step goes deterministically
down to sigma_down, then adds fresh noise of size sigma_up (one draw per step, the last included)."""

import numpy as np

from .base import as_f32, draw, f32
from .euler import SigmaScheduler


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    DIFFUSERS_CLASS = "EulerAncestralDiscreteScheduler"
    DEFAULTS = dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        prediction_type="epsilon",
        timestep_spacing="linspace",
        steps_offset=0,
        rescale_betas_zero_snr=False,
    )

    def __init__(self, config=None, **forced):
        super().__init__(config, **forced)
        # diffusers raises NotImplementedError for "sample" prediction here.
        self._option("prediction_type", ("epsilon", "v_prediction"))
        self._option("timestep_spacing", ("leading", "trailing", "linspace"))
        self._sigmas_train = self._train_sigmas()
        self.sigmas = np.concatenate([self._sigmas_train[::-1], [0.0]]).astype(f32)

    def set_timesteps(self, num_inference_steps):
        n = self._check_steps(num_inference_steps)
        self.num_inference_steps = n
        timesteps = self._float_timesteps(n)
        sigmas_train = self._sigmas_train
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas_train)), sigmas_train)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(f32)
        self.timesteps = timesteps
        self._step_index = None
        self.begin_index = None

    def step(self, model_output, t, sample, noise=None):
        """model_output, sample: (N, C, H, W) float32 at timestep t -> sample at the next sigma;
        draws noise(sample.shape) once."""
        model_output, sample = as_f32(model_output), as_f32(sample)
        if self._step_index is None:
            self._init_step_index(t)
        sigma = self.sigmas[self._step_index]
        if self.config["prediction_type"] == "epsilon":
            x0 = sample - sigma * model_output
        else:  # v_prediction
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        self.pred_original_sample = x0
        sigma_from = sigma
        sigma_to = self.sigmas[self._step_index + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - x0) / sigma
        dt = sigma_down - sigma
        prev_sample = sample + derivative * dt
        prev_sample = prev_sample + draw(noise, model_output.shape, self.DIFFUSERS_CLASS) * sigma_up
        self._step_index += 1
        return as_f32(prev_sample)
