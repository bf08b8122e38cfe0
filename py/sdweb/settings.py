"""One policy for a generation's settings: every default and every check, for the CLI, the page and
the library alike.

    resolve(request, model=None, webgpu=None) -> Settings        or a ConfigError naming its `field`

`request` maps FIELDS names to what a person asked for; absent, None or "" means "the default". The
CLI translates its flags into a request (cli.py), the page its form (web/app.js -> web/worker.js ->
browser.resolve_json), Pipeline.generate its keyword arguments; none of them decides a default or a
limit itself. Called without `model`, resolve checks everything it can before a model is read or a
weight is downloaded, and leaves what only the model can say (size, scheduler, sometimes precision)
None; called again with the model's ModelInfo, it fills those in and checks sizes against the model.
`webgpu` is whether a WebGPU adapter answers here: (ok, why) or a function returning it; None when
the caller does not know, and then "auto" stays "auto".

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
    preview_every     about ten previews a run: round(steps / 10) steps, at least 1; 1 to 1000
    vae_tiling        auto: the VAE decodes in one pass unless an activation would not fit the
                      backend (a GPU's buffer-binding limit), then image by image, then in tiles;
                      on: in diffusers' enable_tiling() tiles whenever the image is larger than
                      one; off: one pass (vae.py)
    loras             none. A list of LoRAs, each {"name", "scale"} (or the CLI's "NAME[:SCALE]"):
                      a file path or a stored name (addons.py finds it); scale a finite number,
                      default 1, for the UNet and the text encoder alike (A1111's <lora:...> tags in
                      the prompt add more, with their own scales)
    embeddings        none. A list of textual-inversion files by path or stored name

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
from .errors import ConfigError
from .layout import variant_of
from .schedulers import SCHEDULERS, scheduler_for
from .vae import TILINGS
from .weights import PRECISIONS

FIELDS = ("model", "prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler", "width", "height",
          "num_images", "clip_skip", "precision", "variant", "backend", "preview_every", "vae_tiling", "loras",
          "embeddings")
BACKENDS = ("numpy", "webgpu")
MAX_STEPS = 1000
MAX_SIDE = 2048  # pixels; beyond this a 64x64-trained UNet makes tiled nonsense and memory explodes
MAX_IMAGES = 16
MAX_PAGE_IMAGES = 8  # the page's batch: every image is held (and drawn) at once, in a 4 GiB wasm heap
MAX_SEED = 2**32 - 1
RANDOM_SEEDS = 2**31  # a random seed is drawn below this: short to read and to type back
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

    @classmethod
    def from_configs(cls, name: str, *, unet: dict, vae: dict, scheduler: dict, text_encoder: dict,
                     weight_bytes: int | None = None) -> "ModelInfo":
        f = 2 ** (len(vae.get("block_out_channels", [64])) - 1)
        unet_levels = len(unet.get("block_out_channels", [320, 640, 1280, 1280]))
        return cls(name=name, default_size=int(unet.get("sample_size") or 64) * f, size_multiple=f * 2 ** (unet_levels - 1),
                   vae_scale_factor=f, default_scheduler=scheduler_for(scheduler),
                   text_layers=int(text_encoder.get("num_hidden_layers", 12)), weight_bytes=weight_bytes)

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
    preview_every: int
    vae_tiling: str
    loras: tuple[tuple[str, float], ...]  # (name, scale)
    embeddings: tuple[str, ...]
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
                                    "height", "num_images", "clip_skip", "vae_tiling", "loras", "embeddings")}


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


def _backend(asked: str, webgpu) -> tuple[str, list[str]]:
    if asked not in ("auto",) + BACKENDS:
        raise ConfigError(f"unknown backend {asked!r}; use auto, numpy or webgpu", "backend")
    if asked == "numpy" or webgpu is None:
        return asked, []
    ok, why = webgpu() if callable(webgpu) else webgpu
    if ok:
        return "webgpu", []
    if asked == "auto":
        return "numpy", []
    return "numpy", [f"WebGPU is not available here ({why}); falling back to the NumPy backend"]


def resolve(request: Mapping, model: ModelInfo | None = None,
            webgpu: tuple[bool, str] | Callable[[], tuple[bool, str]] | None = None) -> Settings:
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

    sizes = {}
    for side in ("width", "height"):
        v = get(side)
        if v is None:
            sizes[side] = model.default_size if model else None
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
    backend, notes = _backend(get("backend") or "numpy", webgpu)
    precision = get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}", "precision")
    if precision is None:
        if variant != "fp16" or backend == "webgpu":
            precision = "fp16" if variant == "fp16" else "fp32"
        elif backend == "numpy" and model is not None and model.weight_bytes is not None:
            precision = "fp16" if model.weight_bytes > FP16_ABOVE else "fp32"

    preview = get("preview_every")
    preview = max(1, (steps + 5) // 10) if preview is None else \
        _whole("preview_every", preview, 1, MAX_STEPS, f"use 1 to {MAX_STEPS} (steps between previews)")

    vae_tiling = get("vae_tiling") or "auto"
    if vae_tiling not in TILINGS:
        raise ConfigError(f"unknown vae_tiling {vae_tiling!r}; use one of {', '.join(TILINGS)}", "vae_tiling")

    return Settings(model=name, prompt=_text("prompt", get("prompt") or ""),
                    negative_prompt=_text("negative_prompt", get("negative_prompt") or ""), steps=steps,
                    guidance=float(guidance), seed=seed, scheduler=scheduler, width=sizes["width"],
                    height=sizes["height"], num_images=num_images, clip_skip=clip_skip, precision=precision,
                    variant=variant, backend=backend, preview_every=preview, vae_tiling=vae_tiling,
                    loras=_loras(get("loras") or ()), embeddings=_names("embeddings", get("embeddings") or ()),
                    notes=tuple(notes))
