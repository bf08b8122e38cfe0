"""Text-to-image, as diffusers' StableDiffusionPipeline.__call__ does it, stage by stage.

    prompt ──tokenizer──► ids (N, 77) ──text encoder──► context (2N, 77, D)   [uncond; cond]
    seed ──PCG64──► latents (N, C, h, w) * init_noise_sigma
    for t in timesteps: eps = unet([x, x], t, context); eps = u + g (c - u); x = scheduler.step(eps, t, x)
    latents / scaling_factor ──vae.decode──► image (N, 3, H, W) ──► uint8 (N, H, W, 3)

Stages load one component, use it and let it go (unless `keep_loaded`), so peak memory holds one
big component at a time. The noise contract (DESIGN.md): image k of a run with seed S starts from
`default_rng(S + k).standard_normal((1, C, h, w), float32) * init_noise_sigma`, and stochastic
samplers draw their later noise from the same generators, in step order.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from .backends import numpy as numpy_backend
from .clip import CLIPTextModel
from .errors import Cancelled
from .schedulers import make_scheduler
from .settings import ModelInfo, resolve
from .tokenizer import CLIPTokenizer
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL

@dataclasses.dataclass
class Progress:
    """What the progress callback receives. `stage` is one of load, text_encoder, unet, vae;
    `step`/`total` count within the stage; `component` the one a load stage loads. After each UNet
    step, `timestep` and `latents`: the latents after that step, a host float32 ndarray
    (N, C, h, w) (the scheduler runs on the host, so on any backend this costs no readback; the
    callback must not modify it)."""

    stage: str
    step: int
    total: int
    elapsed: float
    timestep: float | None = None
    latents: np.ndarray | None = None
    component: str | None = None


@dataclasses.dataclass
class Result:
    images: np.ndarray  # (N, H, W, 3) uint8
    latents: np.ndarray  # (N, C, h, w) final latents, before the VAE's scaling
    seeds: list[int]
    timings: dict[str, float]  # seconds per stage: load_*, text_encoder, unet, vae
    settings: dict
    truncated_tokens: int = 0


class Pipeline:
    """A model folder + a backend. Components are loaded when a stage needs them."""

    def __init__(self, folder, backend=numpy_backend, precision: str = "fp32", variant: str | None = None,
                 keep_loaded: bool = False):
        checked = resolve({"precision": precision, "variant": variant})
        self.folder, self.backend, self.precision = folder, backend, checked.precision
        self.variant, self.keep_loaded = checked.variant, keep_loaded
        # Defaults and limits (size, scheduler, clip_skip) are settings.py's, from these configs.
        self.info = ModelInfo.of(folder)
        self.unet_config = folder.config("unet")
        self.vae_config = folder.config("vae")
        self.scheduler_config = folder.config("scheduler")
        self.tokenizer = CLIPTokenizer.from_folder(folder.tokenizer_dir)
        self._loaded: dict[str, object] = {}
        self.weight_bytes: dict[str, int] = {}
        self.vae_scale_factor = self.info.vae_scale_factor

    # -- components --

    def load(self, component: str):
        if component in self._loaded:
            return self._loaded[component]
        # A GPU backend takes WeightRefs and uploads each tensor's bytes straight from the file.
        store = self.folder.weights(component, self.precision, self.variant, lazy=self.backend.takes_weight_refs)
        try:
            self.backend.check_weights(store)  # a GPU names a tensor too big to bind, before uploading
            config = self.folder.config(component)
            if component == "text_encoder":
                model = CLIPTextModel(config, store.prefix(CLIPTextModel.weights_root(store)), self.backend)
            elif component == "unet":
                model = UNet2DConditionModel(config, store.prefix(""), self.backend)
            elif component == "vae":
                model = AutoencoderKL(config, store.prefix(""), self.backend, encoder=False)
            else:
                raise ValueError(component)
            store.finish()
            self.weight_bytes[component] = store.nbytes_held
        except BaseException:
            store.close()
            raise
        self._loaded[component] = model
        return model

    def release(self, component: str):
        if not self.keep_loaded:
            self._loaded.pop(component, None)

    # -- stages --

    def encode_prompt(self, prompt: str, negative_prompt: str, num_images: int, cfg: bool,
                      clip_skip: int = 0):
        """-> context (2N or N, 77, D) backend tensor, [uncond x N; cond x N] as diffusers orders it,
        and how many prompt tokens were dropped by truncation."""
        te = self.load("text_encoder")
        ids, dropped = self.tokenizer.encode(prompt, return_truncated=True)
        cond = te(np.asarray([ids] * num_images, dtype=np.int64), clip_skip)
        if not cfg:
            return cond, dropped
        neg = self.tokenizer.encode(negative_prompt or "")
        # diffusers applies clip_skip to the prompt only, never to the negative prompt
        uncond = te(np.asarray([neg] * num_images, dtype=np.int64))
        return self.backend.concat([uncond, cond], axis=0), dropped

    def initial_latents(self, seed: int, num_images: int, height: int, width: int, init_noise_sigma: float):
        """The noise contract: one PCG64 generator per image, seeded seed + k."""
        C = int(self.unet_config.get("in_channels", 4))
        f = self.vae_scale_factor
        gens = [np.random.default_rng(seed + k) for k in range(num_images)]
        shape = (1, C, height // f, width // f)
        x = np.concatenate([g.standard_normal(shape, dtype=np.float32) for g in gens])
        return x * np.float32(init_noise_sigma), gens

    def generate(self, prompt: str, negative_prompt: str = "", *, steps: int | None = None,
                 guidance: float | None = None, seed: int | None = None, scheduler: str | None = None,
                 width: int | None = None, height: int | None = None, num_images: int = 1, clip_skip: int = 0,
                 vae_tiling: str | None = None, progress: Callable[[Progress], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> Result:
        """None -> the default (settings.resolve: by model kind, random seed, the model's own
        scheduler and size); ConfigError naming the first bad setting, before anything is loaded."""
        s = resolve(dict(model=self.folder.name, prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                         guidance=guidance, seed=seed, scheduler=scheduler, width=width, height=height,
                         num_images=num_images, clip_skip=clip_skip, precision=self.precision,
                         variant=self.variant, backend=self.backend.name, vae_tiling=vae_tiling), self.info)
        steps, guidance, seed, scheduler = s.steps, s.guidance, s.seed, s.scheduler
        width, height, num_images, clip_skip = s.width, s.height, s.num_images, s.clip_skip
        prompt, negative_prompt, vae_tiling = s.prompt, s.negative_prompt, s.vae_tiling
        backend = self.backend
        t0 = time.perf_counter()
        timings: dict[str, float] = {}

        def report(stage, step, total, **kw):
            if cancel is not None and cancel():
                raise Cancelled(f"generation cancelled during {stage}")
            if progress is not None:
                progress(Progress(stage, step, total, time.perf_counter() - t0, **kw))

        def timed_load(component):
            report("load", 0, 1, component=component)
            s = time.perf_counter()
            model = self.load(component)
            timings[f"load_{component}"] = timings.get(f"load_{component}", 0.0) + time.perf_counter() - s
            return model

        cfg = guidance > 1.0  # diffusers: do_classifier_free_guidance = guidance_scale > 1

        # 1. text encoder
        timed_load("text_encoder")
        report("text_encoder", 0, 1)
        s = time.perf_counter()
        context, dropped = self.encode_prompt(prompt, negative_prompt, num_images, cfg, clip_skip)
        timings["text_encoder"] = time.perf_counter() - s
        self.release("text_encoder")
        report("text_encoder", 1, 1)

        # 2. scheduler and noise
        sched = make_scheduler(scheduler, self.scheduler_config)
        sched.set_timesteps(steps)
        x0, gens = self.initial_latents(seed, num_images, height, width, sched.init_noise_sigma)

        def noise(shape):
            per = (1,) + tuple(shape[1:])
            return np.concatenate([g.standard_normal(per, dtype=np.float32) for g in gens])

        # 3. denoising loop
        unet = timed_load("unet")
        s = time.perf_counter()
        x = x0
        timesteps = sched.timesteps
        report("unet", 0, len(timesteps))
        for i, t in enumerate(timesteps):
            xin = sched.scale_model_input(x, t)
            xin = np.concatenate([xin, xin]) if cfg else xin
            eps = backend.numpy(unet(backend.tensor(xin), t, context))
            if cfg:
                uncond, cond = np.split(eps, 2)
                eps = uncond + np.float32(guidance) * (cond - uncond)
            x = sched.step(eps, t, x, noise)
            report("unet", i + 1, len(timesteps), timestep=float(t), latents=x)
        timings["unet"] = time.perf_counter() - s
        self.release("unet")
        del unet, context  # the last references: on a GPU the UNet's weights must go before the VAE's activations come

        # 4. VAE decode
        vae = timed_load("vae")
        report("vae", 0, 1)
        s = time.perf_counter()
        z = x / np.float32(vae.scaling_factor)
        shift = vae.config.get("shift_factor")
        if shift:
            z = z + np.float32(shift)
        images = backend.numpy(vae.decode(backend.tensor(z), tiling=vae_tiling))
        timings["vae"] = time.perf_counter() - s
        self.release("vae")
        report("vae", 1, 1)
        timings["total"] = time.perf_counter() - t0

        return Result(images=to_uint8(images), latents=x, seeds=[seed + k for k in range(num_images)],
                      timings=timings, truncated_tokens=dropped,
                      settings=dict(prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                                    guidance=guidance, seed=seed, scheduler=scheduler, width=width,
                                    height=height, num_images=num_images, clip_skip=clip_skip,
                                    precision=self.precision, variant=self.variant, backend=backend.name,
                                    vae_tiling=vae_tiling))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in about [-1, 1] -> (N, H, W, 3) uint8 = round(clip(x / 2 + 0.5, 0, 1) * 255)."""
    x = np.clip(images / np.float32(2) + np.float32(0.5), 0, 1)
    return np.round(x.transpose(0, 2, 3, 1) * np.float32(255)).astype(np.uint8)
