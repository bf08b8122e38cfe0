"""PNDM (Liu et al. 2022): diffusers' PNDMScheduler, PLMS steps and, unless skip_prk_steps, the
Runge-Kutta (PRK) warm-up before them.

With skip_prk_steps (SD 1.x / 2.x configs) the schedule repeats one timestep: the first PLMS step
is an Euler step whose model output is averaged with the next one (a second-order start), so the
UNet sees e.g. 901, 801, 801, 701, ... for 10 leading steps.
"""

import numpy as np

from ..errors import ConfigError
from .base import Scheduler, add_noise_alpha, as_f32, f32, make_alphas_cumprod, spaced_timesteps
from .ddim import predict_x0_eps


class PNDMScheduler(Scheduler):
    DIFFUSERS_CLASS = "PNDMScheduler"
    DEFAULTS = dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        skip_prk_steps=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=0,
    )
    pndm_order = 4

    def __init__(self, config=None, **forced):
        super().__init__(config, **forced)
        c = self.config
        self._option("prediction_type", ("epsilon", "v_prediction"))
        self._option("timestep_spacing", ("leading", "trailing", "linspace"))
        self.alphas_cumprod = make_alphas_cumprod(c, self.DIFFUSERS_CLASS)
        self.final_alpha_cumprod = f32(1.0) if c["set_alpha_to_one"] else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps):
        n = self._check_steps(num_inference_steps)
        c = self.config
        T = c["num_train_timesteps"]
        if not c["skip_prk_steps"] and n < self.pndm_order:
            raise ConfigError(
                f"steps={n} is too few for PNDM with skip_prk_steps=false; use at least {self.pndm_order}"
            )
        self.num_inference_steps = n
        ts = spaced_timesteps(c["timestep_spacing"], T, n, c["steps_offset"])[::-1]  # ascending, as diffusers
        if c["skip_prk_steps"]:
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
        else:
            # Each of the last 4 timesteps gives a full and a half step; PRK evaluates the model at
            # t, t - d/2, t - d/2, t - d for each of its 3 steps.
            prk = np.array(ts[-self.pndm_order :]).repeat(2) + np.tile(np.array([0, T // n // 2]), self.pndm_order)
            self.prk_timesteps = (prk[:-1].repeat(2)[1:-1])[::-1].copy()
            self.plms_timesteps = ts[:-3][::-1].copy()
        self.timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.ets = []
        self.counter = 0
        self.cur_model_output = 0
        self.cur_sample = None

    def add_noise(self, original_samples, noise, t):
        return add_noise_alpha(self.alphas_cumprod, original_samples, noise, t)

    def step(self, model_output, t, sample, noise=None):
        """model_output, sample: (N, C, H, W) float32 at timestep t -> sample at the next timestep."""
        model_output, sample = as_f32(model_output), as_f32(sample)
        # diffusers' PNDM step returns no x0: this is the one the model's output at t implies for the
        # sample it was given (DDIM's pred_original_sample at t), before the multistep combination
        self.pred_original_sample, _ = predict_x0_eps(self.config["prediction_type"], model_output, sample,
                                                      self.alphas_cumprod[int(t)])
        if self.counter < len(self.prk_timesteps) and not self.config["skip_prk_steps"]:
            return self._step_prk(model_output, int(t), sample)
        return self._step_plms(model_output, int(t), sample)

    def _step_prk(self, model_output, t, sample):
        T, n = self.config["num_train_timesteps"], self.num_inference_steps
        diff_to_prev = 0 if self.counter % 2 else T // n // 2
        prev_t = t - diff_to_prev
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        phase = self.counter % 4
        if phase == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif phase in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._get_prev_sample(cur_sample, t, prev_t, model_output)
        self.counter += 1
        return prev_sample

    def _step_plms(self, model_output, t, sample):
        prev_t = t - self.config["num_train_timesteps"] // self.num_inference_steps
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            # Second call of the skip-PRK start: step again from the first sample with the mean of
            # both model outputs.
            prev_t = t
            t = t + self.config["num_train_timesteps"] // self.num_inference_steps
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev_sample = self._get_prev_sample(sample, t, prev_t, model_output)
        self.counter += 1
        return prev_sample

    def _get_prev_sample(self, sample, t, prev_t, model_output):
        """x_{t-delta} from x_t (formula 9 of the PNDM paper)."""
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** (0.5)
        denom = alpha_prod_t * beta_prod_t_prev ** (0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** (0.5)
        return as_f32(sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom)
