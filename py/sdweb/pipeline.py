"""Text-to-image, as diffusers' StableDiffusionPipeline.__call__ does it, stage by stage; from an
image (img2img, inpainting, outpainting) as its Img2Img and Inpaint pipelines do (editing.py).

    prompt ──A1111 chunks──► ids (N, 77) per chunk ──text encoder──► context (2N, 77 k, D)   [uncond; cond]
    [image ──vae.encode──► mean * scaling_factor: the image latents (editing.Edit)]
    seed ──PCG64──► latents (N, C, h, w) * init_noise_sigma   [from an image: noised image latents]
    for t in timesteps: eps = unet([x, x], t, context); eps = u + g (c - u); x = scheduler.step(eps, t, x)
    latents / scaling_factor ──vae.decode──► image (N, 3, H, W) ──► uint8 (N, H, W, 3)

With a tiny autoencoder (`tiny_autoencoder`, madebyollin/taesd): previews of each step's predicted
clean latents x0 (preview.py), and, with decoder != "vae", a draft: the final decode (as diffusers'
StableDiffusionPipeline with vae=AutoencoderTiny: latents / its scaling_factor, 1.0) and, from an
image, its encoding (the Img2Img and Inpaint pipelines with vae=AutoencoderTiny: latents times 1.0).

Prompts follow A1111's syntax (prompt_syntax: weights, BREAK, 75-token chunks, embedding slots,
`<lora:...>` tags); each chunk is encoded on its own and weighted (emphasis). Add-ons (addons.py)
are found before anything is loaded: textual-inversion vectors go into the text encoder's input,
LoRAs are fused into the weights as they are loaded (WeightStore.add_lora, the backend's fuse_lora).
An LCM-distilled UNet (time_cond_proj_dim) gets the guidance scale as an embedding and no
unconditional pass, as LatentConsistencyModelPipeline (and StableDiffusionPipeline) run it.

Stages load one component, use it and let it go (unless `keep_loaded`), so peak memory holds one
big component at a time. The noise contract: image k of a run with seed S starts from
`default_rng(S + k).standard_normal((1, C, h, w), float32) * init_noise_sigma` (C the latent
channels; from an image, that draw is the noise added to the image latents), and stochastic
samplers draw their later noise from the same generators, in step order.

`Pipeline.stages` is the run as a generator that stops at each readback (after every UNet step,
after each encoding of an input image, after each of the VAE's tiles or slices where it splits its
work, and after the decode) and yields the backend tensor about to be read, so a driver can wait for
the GPU there with `await` (the page's worker, with or without JavaScript Promise Integration:
sdweb.browser.drive); the model code in between never reads back. It also yields None once each
component is built, where the driver may wait for its weights to reach the GPU. `Pipeline.generate`
runs it to the end, each readback blocking (stages.run).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Generator

import numpy as np

from . import preview as previews
from .addons import FolderLibrary, prepare
from . import autoencoder_tiny
from .autoencoder_tiny import AutoencoderTiny
from .backends import numpy as numpy_backend
from .clip import DEFAULTS as CLIP_DEFAULTS
from .clip import CLIPTextModel
from .editing import Edit
from .emphasis import apply_emphasis, match_chunk_counts
from .errors import Cancelled, ConfigError
from .schedulers import make_scheduler
from .settings import ModelInfo, resolve, stage_compute
from .stages import run
from .tokenizer import CLIPTokenizer
from .unet import UNet2DConditionModel, guidance_embedding
from .vae import AutoencoderKL

@dataclasses.dataclass
class Progress:
    """What the progress callback receives. `stage` is one of load, text_encoder, vae_encoder (a run
    from an image encoding it, by the tiny autoencoder's encoder for a draft), unet, vae (the decode,
    by the tiny autoencoder too); `step`/`total` count within the stage; `component` the one a load
    stage loads. After each UNet step, `timestep`, `latents`: the latents after that step, and
    `pred_original_sample`: the step's prediction of the clean latents x0, both host float32
    ndarrays (N, C, h, w) (the scheduler runs on the host, so on any backend this costs no readback;
    the callback must not modify them); every `preview_every` steps and after the last, `preview`:
    uint8 (N, H, W, 3) images of x0 (TAESD's decode at the image's size, preview.approx's at the
    latents')."""

    stage: str
    step: int
    total: int
    elapsed: float
    timestep: float | None = None
    latents: np.ndarray | None = None
    component: str | None = None
    pred_original_sample: np.ndarray | None = None
    preview: np.ndarray | None = None


@dataclasses.dataclass
class Result:
    images: np.ndarray  # (N, H, W, 3) uint8
    latents: np.ndarray  # (N, C, h, w) final latents, before the VAE's scaling
    seeds: list[int]
    timings: dict[str, float]  # seconds per stage: load_*, text_encoder, vae_encoder, unet, preview, vae
    settings: dict


TINY = "tiny_autoencoder"  # the component name of the tiny autoencoder (loads, progress, timings)
TINY_ENCODER = "tiny_autoencoder_encoder"  # its encoder half, for a draft from an image


class Pipeline:
    """A model folder + a backend, and optionally a tiny autoencoder (model.AutoencoderFolder or the
    browser's) for previews and draft decodes. Components are loaded when a stage needs them.
    `library` finds the add-on files the settings and prompts name (addons.py; default:
    addons.FolderLibrary(), the paths given and ./loras); a host may replace it between runs."""

    def __init__(self, folder, backend=numpy_backend, precision: str = "fp32", variant: str | None = None,
                 keep_loaded: bool = False, library=None, tiny_autoencoder=None, compute: str = "auto"):
        """compute: the activations' dtype, auto | f32 | f16 (settings.py: auto is f16 where the
        backend can compute in it)."""
        features = ("shader-f16",) if "f16" in backend.compute_dtypes() else ()
        checked = resolve({"precision": precision, "variant": variant, "compute": compute, "backend": backend.name},
                          webgpu=(True, "", features))
        self.folder, self.backend, self.precision = folder, backend, checked.precision
        self.variant, self.keep_loaded, self.compute = checked.variant, keep_loaded, checked.compute
        # Defaults and limits (size, scheduler, clip_skip) are settings.py's, from these configs.
        self.info = ModelInfo.of(folder)
        self.unet_config = folder.config("unet")
        self.vae_config = folder.config("vae")
        self.scheduler_config = folder.config("scheduler")
        self.tokenizer = CLIPTokenizer.from_folder(folder.tokenizer_dir)
        self.library = FolderLibrary() if library is None else library
        self._loaded: dict[str, object] = {}
        self._lora_keys: dict[str, tuple] = {}  # component -> the LoRAs fused into the loaded one
        self.weight_bytes: dict[str, int] = {}
        self.vae_scale_factor = self.info.vae_scale_factor
        self.tiny_autoencoder = tiny_autoencoder

    # -- components --

    def load(self, component: str, addons=None):
        """The component's model, built now or kept from before; with `addons` (addons.AddOns) the
        UNet and text encoder have its LoRAs fused, and one kept with other LoRAs is built again."""
        key = addons.key(component) if addons is not None and component in ("unet", "text_encoder") else ()
        if component in self._loaded and self._lora_keys.get(component) == key:
            return self._loaded[component]
        self._loaded.pop(component, None)
        # A GPU backend takes WeightRefs and uploads each tensor's bytes straight from the file.
        lazy = self.backend.takes_weight_refs
        tiny = component in (TINY, TINY_ENCODER)
        files = "vae" if component == "vae_encoder" else component  # the VAE's two halves, loaded apart
        # the tiny autoencoder: one weight file (fp32 in madebyollin/taesd, no variants), held in the run's precision
        store = (self.tiny_autoencoder.weights(self.precision, lazy=lazy) if tiny
                 else self.folder.weights(files, self.precision, self.variant, lazy=lazy))
        try:
            if key:
                store.add_lora(addons.patches(component, self._tensor_shapes))
            self.backend.check_weights(store)  # a GPU names a tensor too big to bind, before uploading
            config = self.tiny_autoencoder.config() if tiny else self.folder.config(files)
            if component == "text_encoder":
                model = CLIPTextModel(config, store.prefix(CLIPTextModel.weights_root(store)), self.backend)
            elif component == "unet":
                model = UNet2DConditionModel(config, store.prefix(""), self.backend)
            elif component == "vae":
                model = AutoencoderKL(config, store.prefix(""), self.backend, encoder=False)
            elif component == "vae_encoder":
                model = AutoencoderKL(config, store.prefix(""), self.backend, decoder=False)
            elif component == TINY:
                # previews and drafts decode with one half, a draft's input image is encoded with the
                # other (TINY_ENCODER): each stays on disk until a run needs it
                model = AutoencoderTiny(config, store.prefix(""), self.backend, encoder=False)
            elif component == TINY_ENCODER:
                model = AutoencoderTiny(config, store.prefix(""), self.backend, decoder=False)
            else:
                raise ValueError(component)
            store.finish()
            self.weight_bytes[component] = store.nbytes_held
        except BaseException:
            store.close()
            raise
        self._loaded[component], self._lora_keys[component] = model, key
        return model

    def check_tiny_autoencoder(self, field: str) -> None:
        """ConfigError naming `field` when the tiny autoencoder's latents are not this model's (channels
        or scale factor: e.g. a TAE of another model family), before anything is loaded."""
        channels, factor = autoencoder_tiny.latent_shape(self.tiny_autoencoder.config())
        if (channels, factor) != (self.info.latent_channels, self.info.vae_scale_factor):
            raise ConfigError(f"{field}: the tiny autoencoder {self.tiny_autoencoder.name} works on {channels}-channel "
                              f"latents at 1/{factor} of the image, and {self.folder.name} makes "
                              f"{self.info.latent_channels}-channel latents at 1/{self.info.vae_scale_factor}: "
                              "use a tiny autoencoder made for this model (madebyollin/taesd for SD 1.x/2.x)", field)

    def use_tiny_autoencoder(self, tiny):
        """Previews and drafts from now on by `tiny` (a tiny autoencoder's folder), forgetting one loaded."""
        self.tiny_autoencoder = tiny
        self._loaded.pop(TINY, None)
        self._loaded.pop(TINY_ENCODER, None)

    def _vae_compute(self, tiny: bool) -> str:
        """The dtype a VAE computes in (settings.stage_compute): the model's VAE, or the tiny
        autoencoder, each by its own config's force_upcast (TAESD's says false, as it runs in f16)."""
        return stage_compute(self.compute, "vae", self.tiny_autoencoder.config() if tiny else self.vae_config)

    def release(self, component: str):
        if not self.keep_loaded:
            self._loaded.pop(component, None)

    def _tensor_shapes(self) -> dict:
        """{"unet": {name: shape}, "text_encoder": {...}} from the weight files' headers: what LoRAs
        are planned against (nothing is read but the headers)."""
        out = {}
        for component in ("unet", "text_encoder"):
            store = self.folder.weights(component, self.precision, self.variant, lazy=True)
            try:
                out[component] = {name: store.shape(name) for name in store.keys()}
            finally:
                store.close()
        return out

    def prepare_addons(self, prompt: str, negative_prompt: str, loras=(), embeddings=()):
        """addons.prepare for this model: embeddings read and checked against the text encoder's
        width, both prompts chunked, LoRAs found (a ConfigError names what is missing)."""
        hidden = int(self.folder.config("text_encoder").get("hidden_size", CLIP_DEFAULTS["hidden_size"]))
        return prepare(self.library, self.tokenizer, hidden, prompt, negative_prompt, loras=loras,
                       embeddings=embeddings)

    # -- stages --

    def encode_prompt(self, addons, num_images: int, cfg: bool, clip_skip: int = 0):
        """-> context (2N or N, 77 k, D) backend tensor: `encode_prompt_stages` run to the end."""
        return run(self.encode_prompt_stages(addons, num_images, cfg, clip_skip))

    def encode_prompt_stages(self, addons, num_images: int, cfg: bool, clip_skip: int = 0):
        """-> context (2N or N, 77 k, D) backend tensor, [uncond x N; cond x N] as diffusers orders it.
        A generator, as `stages` is: it yields each tensor it reads back (a chunk's token embeddings
        where an embedding's vectors go in, a chunk's output where weights apply) just before it
        reads it, and returns the context.

        The chunks of addons.prompt (and addons.negative) are encoded one at a time with their
        embedding vectors, weighted (emphasis.apply_emphasis, on the host, only where a weight is
        not 1) and joined along the sequence axis; a side with fewer chunks is extended with the
        empty prompt's chunk (emphasis.match_chunk_counts). A prompt of at most 75 tokens without
        weights, BREAK or embeddings is one chunk: exactly the single 77-token encoding."""
        te = self.load("text_encoder", addons)
        backend = self.backend

        def encode(chunk, skip):
            ids = np.asarray([chunk.ids] * num_images, dtype=np.int64)
            tokens = None
            if chunk.embeddings:
                tokens = te.embed_tokens(ids)
                yield tokens
                tokens = te.replace_rows(tokens, [(pos, addons.vectors[trigger][i])
                                                  for pos, trigger, i in chunk.embeddings])
            z = te(ids, skip, tokens=tokens)
            if any(w != 1.0 for w in chunk.weights):
                yield z
                z = backend.tensor(apply_emphasis(backend.numpy(z), chunk.weights))
            return z  # (N, 77, D)

        def encode_all(chunks, skip):
            out = []
            for c in chunks:
                out.append((yield from encode(c, skip)))
            return out

        def join(chunks):
            return chunks[0] if len(chunks) == 1 else backend.concat(chunks, axis=1)

        cond = yield from encode_all(addons.prompt.chunks, clip_skip)
        if not cfg:
            return join(cond)
        # diffusers applies clip_skip to the prompt only, never to the negative prompt
        uncond = yield from encode_all(addons.negative.chunks, 0)
        empty = {}
        for side, have, other in (("cond", cond, uncond), ("uncond", uncond, cond)):
            if len(have) < len(other):  # encoded here, where this generator can yield for its readbacks
                empty[side] = yield from encode(addons.empty, clip_skip if side == "cond" else 0)
        cond, uncond = match_chunk_counts(cond, uncond, lambda side: empty[side])
        return backend.concat([join(uncond), join(cond)], axis=0)

    def first_noise(self, seed: int, num_images: int, height: int, width: int):
        """The noise contract: one PCG64 generator per image, seeded seed + k, and their first draws
        (N, C, h, w), C the latent channels (an inpainting UNet takes more, its noise has these)."""
        C = self.info.latent_channels
        f = self.vae_scale_factor
        gens = [np.random.default_rng(seed + k) for k in range(num_images)]
        shape = (1, C, height // f, width // f)
        return np.concatenate([g.standard_normal(shape, dtype=np.float32) for g in gens]), gens

    def generate(self, *args, **kwargs) -> Result:
        """One run with `stages`' arguments, to the end: each readback waits where it stands."""
        return run(self.stages(*args, **kwargs))

    def stages(self, *args, **kwargs) -> Generator[object, None, Result]:
        """The run, yielding each backend tensor just before it is read back (and None after each
        component is built); returns the Result. Arguments: `_stages`'. Each stage computes in its
        dtype (settings.stage_compute); the backend's compute dtype is what it was before afterwards,
        whatever happens (a driver closing the generator included)."""
        previous = self.backend.set_compute("f32")
        try:
            return (yield from self._stages(*args, **kwargs))
        finally:
            self.backend.set_compute(previous)

    def _stages(self, prompt: str, negative_prompt: str = "", *, steps: int | None = None,
                guidance: float | None = None, seed: int | None = None, scheduler: str | None = None,
                width: int | None = None, height: int | None = None, num_images: int = 1, clip_skip: int = 0,
                decoder: str | None = None, preview: str | None = None, preview_every: int | None = None,
                vae_tiling: str | None = None, loras=(), embeddings=(), image=None, mask=None,
                strength: float | None = None, outpaint=None, progress: Callable[[Progress], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> Generator[object, None, Result]:
        """None -> the default (settings.resolve: by model kind, random seed, the model's own
        scheduler and size, previews by the tiny autoencoder when the pipeline has one); ConfigError
        naming the first bad setting, before anything is loaded. A decoder other than "vae", or
        "taesd" previews, need the pipeline's tiny autoencoder (whichever the caller resolved the
        decoder's name to). loras: [(name or path, scale)] or settings' {name, scale}; embeddings:
        [name or path] (found by self.library). `image` and `mask` are picture.Pictures
        (picture.read): with an image the run is img2img, with a mask too (or `outpaint`)
        inpainting; a draft (decoder != "vae") encodes them with the tiny autoencoder's encoder."""
        s = resolve(dict(model=self.folder.name, prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                         guidance=guidance, seed=seed, scheduler=scheduler, width=width, height=height,
                         num_images=num_images, clip_skip=clip_skip, precision=self.precision,
                         variant=self.variant, backend=self.backend.name, decoder=decoder, preview=preview,
                         preview_every=preview_every, vae_tiling=vae_tiling, loras=list(loras),
                         embeddings=list(embeddings), image=image, mask=mask, strength=strength, outpaint=outpaint,
                         compute=self.compute),
                    self.info, taesd=self.tiny_autoencoder is not None)
        if s.tiny_autoencoder and self.tiny_autoencoder is None:
            field = "decoder" if s.decoder != "vae" else "preview"
            raise ConfigError(f"{field} {getattr(s, field)!r} needs a tiny autoencoder, and this pipeline has none "
                              "(Pipeline(..., tiny_autoencoder=model.resolve_autoencoder('taesd')))", field)
        if s.tiny_autoencoder:
            self.check_tiny_autoencoder("decoder" if s.decoder != "vae" else "preview")
        decoder, preview, preview_every, vae_tiling = s.decoder, s.preview, s.preview_every, s.vae_tiling
        steps, guidance, seed, scheduler = s.steps, s.guidance, s.seed, s.scheduler
        width, height, num_images, clip_skip = s.width, s.height, s.num_images, s.clip_skip
        prompt, negative_prompt = s.prompt, s.negative_prompt
        addons = self.prepare_addons(prompt, negative_prompt, s.loras, s.embeddings)
        loras, embeddings = s.as_request()["loras"], list(s.embeddings)
        # a run from an image records its input files (names, sha256), strength and outpaint
        from_image = {} if s.image is None else {k: getattr(s, k) for k in ("image", "mask", "strength", "outpaint")}
        edit = None if s.image is None else Edit(s, image, mask, self.info.inpainting)
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
            model = self.load(component, addons)
            yield None  # built; a GPU bridge may still be taking its weights: a place to wait for them
            timings[f"load_{component}"] = timings.get(f"load_{component}", 0.0) + time.perf_counter() - s
            return model

        # An LCM UNet takes the guidance scale as an input (diffusers' get_guidance_scale_embedding
        # of guidance - 1) and makes no unconditional pass (do_classifier_free_guidance is
        # guidance_scale > 1 and time_cond_proj_dim is None).
        cond_dim = self.unet_config.get("time_cond_proj_dim")
        cfg = guidance > 1.0 and cond_dim is None
        timestep_cond = None if cond_dim is None else guidance_embedding(np.full(num_images, guidance - 1.0), cond_dim)

        # 1. text encoder
        yield from timed_load("text_encoder")
        report("text_encoder", 0, 1)
        s = time.perf_counter()
        backend.set_compute(stage_compute(self.compute, "text_encoder"))
        context = yield from self.encode_prompt_stages(addons, num_images, cfg, clip_skip)
        timings["text_encoder"] = time.perf_counter() - s
        self.release("text_encoder")
        report("text_encoder", 1, 1)

        # 2. the input image's latents, for a run from an image: a draft's through the tiny
        # autoencoder's encoder, as diffusers' Img2Img and Inpaint pipelines with vae=AutoencoderTiny
        # encode it (its latents times its scaling_factor, 1.0)
        if edit is not None:
            encoder = "vae_encoder" if decoder == "vae" else TINY_ENCODER
            vae = yield from timed_load(encoder)
            report("vae_encoder", 0, 1)
            backend.set_compute(self._vae_compute(tiny=decoder != "vae"))
            s = time.perf_counter()
            yield from edit.encode(vae, backend)
            timings["vae_encoder"] = time.perf_counter() - s
            self.release(encoder)
            del vae
            report("vae_encoder", 1, 1)

        # 3. scheduler and noise
        sched = make_scheduler(scheduler, self.scheduler_config)
        sched.set_timesteps(steps)
        first, gens = self.first_noise(seed, num_images, height, width)
        if edit is None:
            timesteps, x = sched.timesteps, first * np.float32(sched.init_noise_sigma)
        else:  # the schedule's tail at the strength, from the noised image latents
            timesteps, x = edit.start(sched, steps, first)

        def noise(shape):
            per = (1,) + tuple(shape[1:])
            return np.concatenate([g.standard_normal(per, dtype=np.float32) for g in gens])

        # 4. denoising loop, previews of each step's x0 (the tiny autoencoder is loaded first: it
        # stays beside the UNet)
        tiny = (yield from timed_load(TINY)) if preview == "taesd" else None
        timings["preview"] = 0.0
        unet = yield from timed_load("unet")
        backend.set_compute(stage_compute(self.compute, "unet"))
        s = time.perf_counter()
        report("unet", 0, len(timesteps))
        for i, t in enumerate(timesteps):
            xin = sched.scale_model_input(x, t)
            xin = np.concatenate([xin, xin]) if cfg else xin
            if edit is not None:
                xin = edit.unet_input(xin)
            out = unet(backend.tensor(xin), t, context, timestep_cond)
            yield out  # the step's end: its only readback
            eps = backend.numpy(out)
            del out  # its buffer back to the pool now, as the next step's first tensor wants one
            if cfg:
                uncond, cond = np.split(eps, 2)
                eps = uncond + np.float32(guidance) * (cond - uncond)
            x = sched.step(eps, t, x, noise)
            clean = sched.pred_original_sample
            if edit is not None:
                x = edit.after_step(x, i, timesteps, sched, first)
            shown = None
            if preview != "none" and ((i + 1) % preview_every == 0 or i + 1 == len(timesteps)):
                p0 = time.perf_counter()
                if preview == "taesd":
                    backend.set_compute(self._vae_compute(tiny=True))
                    decoded = previews.decode_tiny(tiny, clean, backend)
                    yield decoded  # a preview's readback
                    shown = to_uint8(backend.numpy(decoded))
                    del decoded
                    backend.set_compute(stage_compute(self.compute, "unet"))
                else:
                    shown = previews.approx(clean)
                timings["preview"] += time.perf_counter() - p0
            report("unet", i + 1, len(timesteps), timestep=float(t), latents=x, pred_original_sample=clean,
                   preview=shown)
        timings["unet"] = time.perf_counter() - s - timings["preview"]
        unet.forget_context()  # a UNet kept loaded would hold this run's context and K|V into the next
        self.release("unet")
        del unet, context  # the last references: on a GPU the UNet's weights must go before the VAE's activations come

        # 5. VAE decode, or a draft by the tiny autoencoder (loaded already for TAESD previews)
        if decoder == "vae":
            vae = yield from timed_load("vae")
        else:
            vae = tiny or (yield from timed_load(TINY))
        report("vae", 0, 1)
        backend.set_compute(self._vae_compute(tiny=decoder != "vae"))
        s = time.perf_counter()
        if decoder == "vae":
            z = x / np.float32(vae.scaling_factor)
            shift = vae.config.get("shift_factor")
            if shift:
                z = z + np.float32(shift)
            decoded = yield from vae.decode_stages(backend.tensor(z), tiling=vae_tiling)
        else:
            decoded = previews.decode_tiny(vae, x, backend)
        yield decoded
        images = backend.numpy(decoded)
        del decoded
        timings["vae"] = time.perf_counter() - s
        self.release("vae")
        self.release(TINY)
        del vae, tiny
        report("vae", 1, 1)
        timings["total"] = time.perf_counter() - t0

        return Result(images=to_uint8(images), latents=x, seeds=[seed + k for k in range(num_images)],
                      timings=timings,
                      settings=dict(prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                                    guidance=guidance, seed=seed, scheduler=scheduler, width=width,
                                    height=height, num_images=num_images, clip_skip=clip_skip,
                                    precision=self.precision, variant=self.variant, backend=backend.name,
                                    decoder=decoder, vae_tiling=vae_tiling, loras=loras, embeddings=embeddings,
                                    compute=self.compute, **from_image))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in about [-1, 1] -> (N, H, W, 3) uint8 = round(clip(x / 2 + 0.5, 0, 1) * 255)."""
    x = np.clip(images / np.float32(2) + np.float32(0.5), 0, 1)
    return np.round(x.transpose(0, 2, 3, 1) * np.float32(255)).astype(np.uint8)
