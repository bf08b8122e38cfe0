"""One policy for a generation's settings: every default and every check, for the CLI, the page and
the library alike.

    resolve(request, model=None, webgpu=None, taesd=None) -> Settings   or a ConfigError naming its `field`

`request` maps FIELDS names to what a person asked for; absent, None or "" means "the default". The
CLI translates its flags into a request (cli.py), the page its form (web/app.js -> web/worker.js ->
browser.resolve_json), Pipeline.generate its keyword arguments; none of them decides a default or a
limit itself. Called without `model`, resolve checks everything it can before a model is read or a
weight is downloaded, and leaves what only the model can say (size, scheduler, sometimes precision)
None; called again with the model's ModelInfo, it fills those in and checks sizes against the model.
`webgpu` is whether a WebGPU adapter answers here: (ok, why) or (ok, why, features) (the adapter's
WebGPU feature names, e.g. "shader-f16"), or a function returning it; None when the caller does not
know, and then "auto" stays "auto" (the backend's, and the compute dtype's when features are unknown).
`taesd` is whether the tiny autoencoder "taesd" names (the catalogue's) is at hand (downloaded, or
stored in the page); None when the caller does not know, and then an empty preview stays None.

Defaults and limits:
    model             the catalogue's default model (models.json "default": SD 1.5)
    steps             the model kind's (models.json "kinds": sd 50 as diffusers, turbo 1); 1 to 1000
    guidance          the model kind's (sd 7.5, turbo 0); any finite number >= 0 (<= 1 turns
                      classifier-free guidance off, which halves the UNet's work)
    seed              random below 2**31; 0 to 2**32 - 1 (what NumPy's default_rng takes)
    scheduler         the model's own (its scheduler_config.json); one of schedulers.SCHEDULERS
    width, height     the model's (UNet sample_size x VAE scale factor: 512 for SD 1.5); a multiple
                      of ModelInfo.size_multiple (64 for SD) up to 2048
    num_images        1; 1 to 16 (the page: 1 to MAX_PAGE_IMAGES, 8, checked by browser.resolve_json)
    clip_skip         0; 0 to the text encoder's layer count - 1
    variant           the plain files, falling back to fp16 (layout.variant_order); "plain"/"fp32"
                      name the plain files
    backend           numpy. "auto" is WebGPU when an adapter answers, else NumPy; WebGPU asked for
                      where there is none falls back to NumPy, with a note
    precision         weights held as fp16 when reading the fp16 variant on WebGPU, or on NumPy when
                      those weights exceed 256 MB (NumPy upcasts per layer: slower, half the memory);
                      else fp32
    compute           the activations' dtype, auto | f32 | f16: auto is f16 on a WebGPU adapter with
                      shader-f16, else f32; f16 needs that feature, and NumPy computes in f32 only.
                      Per stage (stage_compute): the text encoder and the UNet compute in it, the VAE
                      in f32 when its config says force_upcast (diffusers' default, as SD 1.5's VAE
                      overflows f16)
    decoder           "vae": the model's own VAE decodes the image; "taesd" (the catalogue's tiny
                      autoencoder, madebyollin/taesd) or a tiny autoencoder's folder or Hub repo id
                      decodes a draft instead (141 GFLOP at 512x512 against the SD VAE decoder's
                      2.5 TFLOP)
    preview           what a preview of the step's predicted clean latents x0 is drawn with: "taesd"
                      (the run's tiny autoencoder: the decoder's when it is one, else the catalogue's),
                      "approx" (a linear map of the latent channels, preview.py), or "none" (no
                      previews: the CLI without --save-intermediates); by default "taesd" when a
                      tiny autoencoder is at hand, else "approx"
    preview_every     every step with "taesd" previews (each costs under a tenth of a UNet step),
                      else about ten a run: round(steps / 10) steps, at least 1; 1 to 1000; None
                      while the preview is not yet known (resolved without `taesd`)
    vae_tiling        auto: the VAE decodes (and encodes an input image) in one pass unless an
                      activation would not fit the backend (a GPU's buffer-binding limit), then
                      image by image, then in tiles;
                      on: in diffusers' enable_tiling() tiles whenever the image is larger than
                      one; off: one pass (vae.py)
    loras             none. A list of LoRAs, each {"name", "scale"} (or the CLI's "NAME[:SCALE]"):
                      a file path or a stored name (addons.py finds it); scale a finite number,
                      default 1, for the UNet and the text encoder alike (A1111's <lora:...> tags in
                      the prompt add more, with their own scales)
    embeddings        none. A list of textual-inversion files by path or stored name
    image, mask       none (text-to-image); else an input file's record (picture.Picture.record():
                      name, sha256, width, height). A mask needs an image and the image's size; an
                      inpainting model (a 9-channel UNet: latents, mask, masked image) needs a mask
    strength          with an image: 0.8, or 1.0 when inpainting (diffusers' defaults); above 0 and at
                      most 1, with at least one step to run (steps x strength >= 1)
    outpaint          none; else left, top, right, bottom pixels to grow the canvas by (a list or
                      "L,T,R,B"), each a multiple of the model's size multiple: inpainting of the new area
    width, height     with an image and not given: the image's (grown by outpaint), rounded down to the
                      size multiple; an image of another size is resized with Lanczos (a note says so)

The model kind: a model the catalogue (models.json) lists has its kind there; any other is "turbo"
when its own name (a repo id's or a folder's last part) contains "turbo", "lcm" when it contains
"lcm" (a latent-consistency distillation: 4 steps, its guidance a UNet input), else "sd".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from . import catalogue
from .errors import ConfigError, ModelError
from .layout import variant_of
from .schedulers import SCHEDULERS, scheduler_for
from .schedulers.base import strength_steps
from .vae import TILINGS
from .weights import PRECISIONS

FIELDS = ("model", "prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler", "width", "height",
          "num_images", "clip_skip", "precision", "variant", "backend", "preview_every", "preview", "decoder",
          "vae_tiling", "loras", "embeddings", "image", "mask", "strength", "outpaint", "compute")
BACKENDS = ("numpy", "webgpu")
COMPUTE = ("auto", "f32", "f16")
PREVIEWS = ("taesd", "approx", "none")
VAE, TAESD = "vae", "taesd"  # decoder: the model's own VAE; the catalogue's tiny autoencoder
MAX_STEPS = 1000
MAX_SIDE = 2048  # pixels; beyond this a 64x64-trained UNet makes tiled nonsense and memory explodes
MAX_IMAGES = 16
MAX_PAGE_IMAGES = 8  # the page's batch: every image is held (and drawn) at once, in a 4 GiB wasm heap
MAX_SEED = 2**32 - 1
RANDOM_SEEDS = 2**31  # a random seed is drawn below this: short to read and to type back
STRENGTH = {"img2img": 0.8, "inpaint": 1.0}  # diffusers' defaults per mode
FP16_ABOVE = 256 << 20  # bytes of fp16 weights above which NumPy holds them as fp16


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the settings need to know of a model, from its configs."""

    name: str  # repo id or folder: the catalogue lookup, the model kind
    default_size: int
    size_multiple: int  # latents must halve cleanly at every UNet downsample
    vae_scale_factor: int
    default_scheduler: str
    text_layers: int
    weight_bytes: int | None = None  # of the weight files to be read (the precision default)
    in_channels: int = 4  # the UNet's: latent_channels, or 2 * latent_channels + 1 for inpainting models
    latent_channels: int = 4

    @property
    def inpainting(self) -> bool:
        """A UNet that takes the mask and the masked image's latents beside its latents (9 channels)."""
        return self.in_channels == 2 * self.latent_channels + 1

    @classmethod
    def from_configs(cls, name: str, *, unet: dict, vae: dict, scheduler: dict, text_encoder: dict,
                     weight_bytes: int | None = None) -> "ModelInfo":
        f = 2 ** (len(vae.get("block_out_channels", [64])) - 1)
        unet_levels = len(unet.get("block_out_channels", [320, 640, 1280, 1280]))
        latent, taken = int(vae.get("latent_channels", 4)), int(unet.get("in_channels", 4))
        if taken not in (latent, 2 * latent + 1):
            raise ModelError(f"{name}: its UNet takes {taken} input channels, which is neither the latents' {latent} "
                             f"(text-to-image, img2img) nor {2 * latent + 1} (inpainting: latents, mask, masked image)")
        return cls(name=name, default_size=int(unet.get("sample_size") or 64) * f, size_multiple=f * 2 ** (unet_levels - 1),
                   vae_scale_factor=f, default_scheduler=scheduler_for(scheduler),
                   text_layers=int(text_encoder.get("num_hidden_layers", 12)), weight_bytes=weight_bytes,
                   in_channels=taken, latent_channels=latent)

    @classmethod
    def of(cls, folder, weight_bytes: int | None = None) -> "ModelInfo":
        """From a ModelFolder (or BrowserModel): its four configs."""
        return cls.from_configs(folder.name, unet=folder.config("unet"), vae=folder.config("vae"),
                                scheduler=folder.config("scheduler"), text_encoder=folder.config("text_encoder"),
                                weight_bytes=weight_bytes)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Checked settings. Before the model is known, scheduler/width/height (and precision, when it
    depends on the weights' size) are None and backend may still be "auto"."""

    model: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    seed: int
    scheduler: str | None
    width: int | None
    height: int | None
    num_images: int
    clip_skip: int
    precision: str | None
    variant: str | None
    backend: str
    preview_every: int | None
    preview: str | None
    decoder: str
    vae_tiling: str
    loras: tuple[tuple[str, float], ...]  # (name, scale)
    embeddings: tuple[str, ...]
    image: dict | None = None
    mask: dict | None = None
    strength: float | None = None
    outpaint: tuple[int, int, int, int] | None = None
    compute: str = "auto"
    notes: tuple[str, ...] = ()

    def as_request(self) -> dict:
        """The settings as a request (plain JSON types): resolving it again gives the same settings."""
        out = {k: getattr(self, k) for k in FIELDS}
        out["loras"] = [{"name": name, "scale": scale} for name, scale in self.loras]
        out["embeddings"] = list(self.embeddings)
        return out

    def run_args(self) -> dict:
        """Pipeline.generate's keyword arguments."""
        out = self.as_request()
        return {k: out[k] for k in ("prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler", "width",
                                    "height", "num_images", "clip_skip", "decoder", "preview", "preview_every",
                                    "vae_tiling", "loras", "embeddings", "strength", "outpaint")}

    @property
    def tiny_autoencoder(self) -> str | None:
        """The tiny autoencoder this run reads ("taesd", or the folder / repo id the decoder names), or
        None when it needs none."""
        if self.decoder != VAE:
            return self.decoder
        return TAESD if self.preview == TAESD else None


def model_kind(name: str) -> str:
    """"sd" or "turbo" (models.json "kinds"): the catalogue's for a model it lists, else by name."""
    entry = catalogue.find(name)
    if entry is not None:
        return entry["kind"]
    last = str(name).replace("\\", "/").rstrip("/").rpartition("/")[2].lower()
    return "turbo" if "turbo" in last else "lcm" if "lcm" in last else "sd"


def _whole(field: str, value, lo: int, hi: int | None, rule: str) -> int:
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise ConfigError(f"{field} {value!r} is not a whole number: {rule}", field)
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{field} {v} is out of range: {rule}", field)
    return v


def _text(field: str, value) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{field} should be text, not {type(value).__name__}", field)
    return value


def _number(field: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ConfigError(f"{field}: {what} {value!r} is not a finite number", field)
    return float(value)


def _loras(value) -> tuple[tuple[str, float], ...]:
    """[{"name", "scale"?}, "NAME[:SCALE]", [name, scale], ...] -> ((name, scale), ...). A string's
    scale is what follows its last ':' when that is a number, so a Windows path keeps its drive."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"loras should be a list of {{name, scale}}, not {type(value).__name__}", "loras")
    out = []
    for item in value:
        if isinstance(item, str):
            head, sep, tail = item.rpartition(":")
            try:
                name, scale = (head, float(tail)) if sep else (item, 1.0)
            except ValueError:
                name, scale = item, 1.0
        elif isinstance(item, dict) and set(item) <= {"name", "scale"}:
            name, scale = item.get("name"), item.get("scale", 1.0)
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            name, scale = item
        else:
            raise ConfigError(f"loras: {item!r} is not a LoRA: use {{\"name\": ..., \"scale\": ...}} or NAME[:SCALE]",
                              "loras")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"loras: {item!r} names no LoRA file (expected PATH or NAME, then :SCALE)", "loras")
        out.append((name, _number("loras", scale, f"the scale of {name}")))
    return tuple(out)


def _names(field: str, value) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{field} should be a list of file names, got {value!r}", field)
    return tuple(value)


def _backend(asked: str, webgpu) -> tuple[str, list[str], tuple | None]:
    """-> (backend, notes, the adapter's features or None when unknown)."""
    if asked not in ("auto",) + BACKENDS:
        raise ConfigError(f"unknown backend {asked!r}; use auto, numpy or webgpu", "backend")
    if asked == "numpy" or webgpu is None:
        return asked, [], None
    ok, why, *features = webgpu() if callable(webgpu) else webgpu
    if ok:
        return "webgpu", [], tuple(features[0]) if features else None
    if asked == "auto":
        return "numpy", [], None
    return "numpy", [f"WebGPU is not available here ({why}); falling back to the NumPy backend"], None


def _compute(asked: str, backend: str, features) -> str:
    if asked not in COMPUTE:
        raise ConfigError(f"unknown compute dtype {asked!r}; use auto, f32 or f16", "compute")
    if backend == "numpy":
        if asked == "f16":
            raise ConfigError("compute f16 needs the WebGPU backend (NumPy computes in f32); use f32 or auto", "compute")
        return "f32"
    if backend != "webgpu" or features is None:
        return asked  # decided once the adapter is known
    if "shader-f16" not in features:
        if asked == "f16":
            raise ConfigError("compute f16 needs a GPU with the shader-f16 feature, which this WebGPU adapter "
                              "lacks; use f32 or auto", "compute")
        return "f32"
    return "f16" if asked == "auto" else asked


def stage_compute(compute: str, stage: str, vae_config: dict | None = None) -> str:
    """The activation dtype a stage ("text_encoder", "unet", "vae") computes in, given the resolved
    compute: the VAE computes in f32 when its config's force_upcast (default true) says so."""
    if stage == "vae" and (vae_config or {}).get("force_upcast", True):
        return "f32"
    return compute


def resolve(request: Mapping, model: ModelInfo | None = None,
            webgpu: tuple[bool, str] | Callable[[], tuple[bool, str]] | None = None,
            taesd: bool | None = None) -> Settings:
    """The checked settings of `request` (see the module docstring), or a ConfigError naming the field."""
    extra = sorted(set(request) - set(FIELDS))
    if extra:
        raise ConfigError(f"unknown setting {extra[0]!r}; the settings are {', '.join(FIELDS)}", extra[0])

    def get(k):
        v = request.get(k)
        return None if v is None or v == "" else v

    name = get("model")
    if name is None:
        name = model.name if model else next(m["repo"] for m in catalogue.models() if m.get("default"))
    name = _text("model", name)
    kind = catalogue.kinds()[model_kind(name)]

    steps = _whole("steps", get("steps") if get("steps") is not None else kind["steps"], 1, MAX_STEPS,
                   f"use 1 to {MAX_STEPS}")
    guidance = get("guidance")
    guidance = kind["guidance"] if guidance is None else guidance
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.number)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ConfigError(f"guidance {guidance} is not allowed: use a number >= 0 (1 or less turns classifier-free "
                          "guidance off; 7.5 is usual)", "guidance")
    seed = get("seed")
    seed = int(np.random.default_rng().integers(0, RANDOM_SEEDS)) if seed is None else \
        _whole("seed", seed, 0, MAX_SEED, f"use 0 to {MAX_SEED}")

    scheduler = get("scheduler") or (model.default_scheduler if model else None)
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)}", "scheduler")

    image, mask, strength, outpaint = _editing(get, model, name, steps)
    canvas = None  # the input image's size, grown by outpaint
    if image is not None:
        left, top, right, bottom = outpaint or (0, 0, 0, 0)
        canvas = (image["width"] + left + right, image["height"] + top + bottom)
    sizes = {}
    for side in ("width", "height"):
        v = get(side)
        if v is None:
            if model is None:
                sizes[side] = None
            else:
                sizes[side] = model.default_size if canvas is None else _from_image(side, canvas, image, model)
            continue
        if model is None:
            sizes[side] = _whole(side, v, 1, MAX_SIDE, f"use at most {MAX_SIDE} pixels")
            continue
        m = model.size_multiple
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer)) or v != int(v) or not m <= v <= MAX_SIDE \
                or int(v) % m:
            raise ConfigError(f"{side} {v} is not allowed: use a multiple of {m} between {m} and {MAX_SIDE} "
                              f"(this model's default is {model.default_size})", side)
        sizes[side] = int(v)

    num_images = get("num_images")
    num_images = _whole("num_images", 1 if num_images is None else num_images, 1, MAX_IMAGES, f"use 1 to {MAX_IMAGES}")
    clip_skip = get("clip_skip")
    clip_skip = 0 if clip_skip is None else clip_skip
    if model is None:
        clip_skip = _whole("clip_skip", clip_skip, 0, None, "use 0 or more (text encoder layers to skip)")
    else:
        clip_skip = _whole("clip_skip", clip_skip, 0, model.text_layers - 1,
                           f"use 0 to {model.text_layers - 1} (this text encoder has {model.text_layers} layers)")

    variant = variant_of(get("variant"))
    backend, notes, features = _backend(get("backend") or "numpy", webgpu)
    compute = _compute(get("compute") or "auto", backend, features)
    if canvas is not None and None not in sizes.values() and canvas != (sizes["width"], sizes["height"]):
        grown = " grown by outpaint" if outpaint else ""
        notes.append(f"the image{grown} is {canvas[0]}x{canvas[1]} pixels; it is resized to {sizes['width']}x"
                     f"{sizes['height']} with Lanczos, as diffusers does")
    precision = get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}", "precision")
    if precision is None:
        if variant != "fp16" or backend == "webgpu":
            precision = "fp16" if variant == "fp16" else "fp32"
        elif backend == "numpy" and model is not None and model.weight_bytes is not None:
            precision = "fp16" if model.weight_bytes > FP16_ABOVE else "fp32"

    decoder = _text("decoder", get("decoder") or VAE).strip() or VAE
    preview = get("preview")
    if preview is not None and preview not in PREVIEWS:
        raise ConfigError(f"unknown preview {preview!r}; use taesd (the tiny autoencoder), approx (a linear map "
                          "of the latents) or none", "preview")
    if preview is None and (decoder != VAE or taesd is not None):
        preview = TAESD if decoder != VAE or taesd else "approx"
    every = get("preview_every")
    if every is not None:
        every = _whole("preview_every", every, 1, MAX_STEPS, f"use 1 to {MAX_STEPS} (steps between previews)")
    elif preview is not None:
        every = 1 if preview == TAESD else max(1, (steps + 5) // 10)

    vae_tiling = get("vae_tiling") or "auto"
    if vae_tiling not in TILINGS:
        raise ConfigError(f"unknown vae_tiling {vae_tiling!r}; use one of {', '.join(TILINGS)}", "vae_tiling")

    return Settings(model=name, prompt=_text("prompt", get("prompt") or ""),
                    negative_prompt=_text("negative_prompt", get("negative_prompt") or ""), steps=steps,
                    guidance=float(guidance), seed=seed, scheduler=scheduler, width=sizes["width"],
                    height=sizes["height"], num_images=num_images, clip_skip=clip_skip, precision=precision,
                    variant=variant, backend=backend, preview_every=every, preview=preview, decoder=decoder,
                    vae_tiling=vae_tiling,
                    loras=_loras(get("loras") or ()), embeddings=_names("embeddings", get("embeddings") or ()),
                    image=image, mask=mask, strength=strength, outpaint=outpaint, compute=compute, notes=tuple(notes))


# --- runs from an image ------------------------------------------------------------------------------

RECORD = ("name", "sha256", "width", "height")


def _record(field: str, value) -> dict | None:
    """An input file's record (picture.Picture.record(), or the dict it gave) -> a checked dict."""
    if value is None:
        return None
    if hasattr(value, "record"):
        value = value.record()
    ok = isinstance(value, Mapping) and set(value) == set(RECORD) and all(isinstance(value[k], str) for k in RECORD[:2])
    if not ok or any(isinstance(value[k], bool) or not isinstance(value[k], int) or value[k] < 1 for k in RECORD[2:]):
        raise ConfigError(f"{field} should be an input file's record ({', '.join(RECORD)}), not {value!r}", field)
    return {k: value[k] for k in RECORD}


def _outpaint(value, model: ModelInfo | None) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    rule = "give left,top,right,bottom pixels to add, e.g. 0,0,128,0"
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
        try:
            value = [int(v) for v in value]
        except ValueError:
            raise ConfigError(f"outpaint {','.join(value)!r} is not four whole numbers: {rule}", "outpaint") from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ConfigError(f"outpaint {value!r} is not four numbers: {rule}", "outpaint")
    sides = tuple(_whole("outpaint", v, 0, MAX_SIDE, f"{rule}, each 0 to {MAX_SIDE}") for v in value)
    if not any(sides):
        raise ConfigError(f"outpaint {','.join(map(str, sides))} adds nothing: {rule}", "outpaint")
    if model is not None and any(v % model.size_multiple for v in sides):
        raise ConfigError(f"outpaint {','.join(map(str, sides))} is not allowed: each side must be a multiple of "
                          f"{model.size_multiple} pixels for this model", "outpaint")
    return sides


def _editing(get, model: ModelInfo | None, name: str, steps: int):
    """(image, mask, strength, outpaint) of a request, checked against each other and the model."""
    image, mask = _record("image", get("image")), _record("mask", get("mask"))
    outpaint = _outpaint(get("outpaint"), model)
    for field, value in (("mask", mask), ("outpaint", outpaint), ("strength", get("strength"))):
        if value is not None and image is None:
            raise ConfigError(f"{field} applies to a run from an image: give the image too", field)
    if mask is not None and (mask["width"], mask["height"]) != (image["width"], image["height"]):
        raise ConfigError(f"mask {mask['name']} is {mask['width']}x{mask['height']} pixels but image {image['name']} "
                          f"is {image['width']}x{image['height']}: a mask must be the image's size", "mask")
    inpaint = mask is not None or outpaint is not None
    if model is not None and model.inpainting and not inpaint:
        raise ConfigError(f"{name} is an inpainting model (its UNet takes {model.in_channels} channels: latents, mask "
                          "and masked image): give it an image and a mask, white where it should paint (or outpaint "
                          "the image)", "mask")
    if image is None:
        return None, None, None, None
    strength = get("strength")
    strength = STRENGTH["inpaint" if inpaint else "img2img"] if strength is None else strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.number)) or not 0 < strength <= 1:
        raise ConfigError(f"strength {strength} is not allowed: use a number above 0 and at most 1 (the share of the "
                          "steps that run; 1 starts from noise)", "strength")
    if strength_steps(steps, strength) < 1:
        raise ConfigError(f"strength {strength} with {steps} steps runs no step (int(steps x strength) must be at "
                          "least 1): raise the steps or the strength", "strength")
    return image, mask, float(strength), outpaint


def _from_image(side: str, canvas: tuple[int, int], image: dict, model: ModelInfo) -> int:
    """width or height from the image's canvas, rounded down to the model's size multiple."""
    m = model.size_multiple
    v = canvas[0 if side == "width" else 1] // m * m
    if v < m:
        raise ConfigError(f"image {image['name']} is {canvas[0]}x{canvas[1]} pixels: too small for this model, "
                          f"which works in multiples of {m}", "image")
    if v > MAX_SIDE:
        raise ConfigError(f"image {image['name']} is {canvas[0]}x{canvas[1]} pixels, over the {MAX_SIDE}-pixel limit "
                          f"a side: give a width and height (multiples of {m}) to scale it down", "image")
    return v
