"""DPM-Solver++(2M) (Lu et al. 2022): diffusers' DPMSolverMultistepScheduler with
algorithm_type="dpmsolver++" and solver_order=2; "dpm++2m-karras" adds use_karras_sigmas=True.

The model output is turned into an x0 prediction; each step is exact in lambda = log(alpha/sigma)
for a linear-in-lambda x0, using the previous step's x0 for the slope (first order on the first
step, and on the last when it lands on sigma = 0).
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
    threshold_sample,
)


class DPMSolverMultistepScheduler(Scheduler):
    DIFFUSERS_CLASS = "DPMSolverMultistepScheduler"
    DEFAULTS = dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        solver_order=2,
        prediction_type="epsilon",
        thresholding=False,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        euler_at_final=False,
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        use_lu_lambdas=False,
        use_flow_sigmas=False,
        flow_shift=1.0,
        final_sigmas_type="zero",
        lambda_min_clipped=-float("inf"),
        variance_type=None,
        timestep_spacing="linspace",
        steps_offset=0,
        rescale_betas_zero_snr=False,
        use_dynamic_shifting=False,
        time_shift_type="exponential",
    )

    def __init__(self, config=None, **forced):
        super().__init__(config, **forced)
        c = self.config
        self._option("algorithm_type", ("dpmsolver++",))
        self._option("solver_order", (2,))
        self._option("prediction_type", ("epsilon", "sample", "v_prediction"))
        self._option("timestep_spacing", ("leading", "trailing", "linspace"))
        self._option("final_sigmas_type", ("zero", "sigma_min"))
        # diffusers maps the solver types of its other multistep solvers onto midpoint.
        if c["solver_type"] in ("logrho", "bh1", "bh2"):
            c["solver_type"] = "midpoint"
        self._option("solver_type", ("midpoint", "heun"))
        for key in ("use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting"):
            if c[key]:
                raise ConfigError(f"DPMSolverMultistepScheduler {key}=true is not supported; set it false")
        if sum(bool(c[k]) for k in ("use_karras_sigmas", "use_exponential_sigmas")) > 1:
            raise ConfigError("use_karras_sigmas and use_exponential_sigmas are both set; set at most one")
        alphas_cumprod = make_alphas_cumprod(c, self.DIFFUSERS_CLASS)
        if c["rescale_betas_zero_snr"]:
            alphas_cumprod[-1] = 2**-24
        self.alphas_cumprod = alphas_cumprod
        with np.errstate(divide="ignore"):
            self.lambda_t = np.log(np.sqrt(alphas_cumprod)) - np.log(np.sqrt(1 - alphas_cumprod))

    def set_timesteps(self, num_inference_steps):
        n = self._check_steps(num_inference_steps)
        c = self.config
        T = c["num_train_timesteps"]
        # Timesteps whose lambda is below lambda_min_clipped are left out (for cosine schedules).
        clipped_idx = int(np.searchsorted(self.lambda_t[::-1], c["lambda_min_clipped"]))
        last_timestep = T - clipped_idx
        spacing = c["timestep_spacing"]
        if spacing == "linspace":
            timesteps = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            step_ratio = last_timestep // (n + 1)
            timesteps = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].astype(np.int64) + c["steps_offset"]
        else:
            timesteps = np.arange(last_timestep, 0, -T / n).round().astype(np.int64) - 1
        sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        log_sigmas = np.log(sigmas)
        if c["use_karras_sigmas"] or c["use_exponential_sigmas"]:
            # sigma_min / sigma_max are not DPMSolverMultistepScheduler arguments, but diffusers
            # reads them from its config, where from_config leaves any keys the class ignored.
            lo = self.extra_config.get("sigma_min")
            hi = self.extra_config.get("sigma_max")
            lo = lo if lo is not None else float(sigmas[0])
            hi = hi if hi is not None else float(sigmas[-1])
            convert = karras_sigmas if c["use_karras_sigmas"] else exponential_sigmas
            sigmas = convert(lo, hi, n)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            if c["use_karras_sigmas"] and c["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif c["use_lu_lambdas"]:
            # diffusers spaces log-sigma (not lambda) uniformly here, from largest to smallest.
            lambda_max, lambda_min = float(log_sigmas[-1]), float(log_sigmas[0])
            lambdas = lambda_max + np.linspace(0, 1, n) * (lambda_min - lambda_max)
            sigmas = np.exp(lambdas)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            if c["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        if c["final_sigmas_type"] == "sigma_min":
            sigma_last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        else:
            sigma_last = 0
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(f32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * 2
        self.lower_order_nums = 0
        self._step_index = None
        self.begin_index = None

    @staticmethod
    def _alpha_sigma(sigma):
        """(alpha_t, sigma_t) of the VP process at EDM noise level sigma (float32 scalars)."""
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _lambda(self, alpha, sigma):
        with np.errstate(divide="ignore"):
            return np.log(alpha) - np.log(sigma)

    def _convert_model_output(self, model_output, sample):
        """The x0 prediction: (N, C, H, W) float32."""
        c = self.config
        kind = c["prediction_type"]
        if kind == "sample":
            x0 = model_output
        else:
            alpha_t, sigma_t = self._alpha_sigma(self.sigmas[self._step_index])
            if kind == "epsilon":
                if c["variance_type"] in ("learned", "learned_range"):
                    model_output = model_output[:, :3]
                x0 = (sample - sigma_t * model_output) / alpha_t
            else:  # v_prediction
                x0 = alpha_t * sample - sigma_t * model_output
        if c["thresholding"]:
            x0 = threshold_sample(x0, c["dynamic_thresholding_ratio"], c["sample_max_value"])
        return x0

    def _index_for_timestep(self, t):
        (indices,) = np.nonzero(self.timesteps == t)
        if len(indices) == 0:  # diffusers takes the last step for a timestep it does not have
            return len(self.timesteps) - 1
        return int(indices[1] if len(indices) > 1 else indices[0])

    def add_noise(self, original_samples, noise, t):
        """alpha_t x0 + sigma_t noise at the sigma of the step add_noise's index rule picks."""
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[self._noise_index(t)])
        return as_f32(alpha_t * as_f32(original_samples) + sigma_t * as_f32(noise))

    def step(self, model_output, t, sample, noise=None):
        """model_output, sample: (N, C, H, W) float32 at timestep t -> sample at the next timestep."""
        model_output, sample = as_f32(model_output), as_f32(sample)
        c = self.config
        if self._step_index is None:
            self._init_step_index(t)
        i, count = self._step_index, len(self.timesteps)
        lower_order_final = i == count - 1 and (
            c["euler_at_final"] or (c["lower_order_final"] and count < 15) or c["final_sigmas_type"] == "zero"
        )
        # diffusers' step output has no x0; its data prediction is what it keeps as model_outputs[-1]
        x0 = self.pred_original_sample = self._convert_model_output(model_output, sample)
        self.model_outputs = [self.model_outputs[1], x0]
        if self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self._first_order(x0, sample)
        else:
            prev_sample = self._second_order(self.model_outputs, sample)
        if self.lower_order_nums < 2:
            self.lower_order_nums += 1
        self._step_index += 1
        return as_f32(prev_sample)

    def _first_order(self, x0, sample):
        i = self._step_index
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
        alpha_s, sigma_s = self._alpha_sigma(self.sigmas[i])
        h = self._lambda(alpha_t, sigma_t) - self._lambda(alpha_s, sigma_s)
        return (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - 1.0)) * x0

    def _second_order(self, model_outputs, sample):
        i = self._step_index
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
        alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
        lambda_t = self._lambda(alpha_t, sigma_t)
        lambda_s0 = self._lambda(alpha_s0, sigma_s0)
        lambda_s1 = self._lambda(alpha_s1, sigma_s1)
        m0, m1 = model_outputs[-1], model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        if self.config["solver_type"] == "midpoint":
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (np.exp(-h) - 1.0)) * D0
                - 0.5 * (alpha_t * (np.exp(-h) - 1.0)) * D1
            )
        return (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (np.exp(-h) - 1.0)) * D0
            + (alpha_t * ((np.exp(-h) - 1.0) / h + 1.0)) * D1
        )
