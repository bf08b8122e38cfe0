"""The Python half of the page: a model folder over the browser's weight store, and one generation.

The page's Web Worker (web/worker.js) downloads a model's files into IndexedDB, then hands this module

    texts    {path: str}           the small files: model_index.json, configs, tokenizer tables
    sources  {path: byte source}   each .safetensors file (and none of its bytes yet): `size` and
                                   `read(offset, length)`, which returns bytes, a Uint8Array, or a
                                   JS Promise of one (then it is awaited with pyodide's `run_sync`,
                                   which needs JSPI; the worker falls back to synchronous reads
                                   where the browser lacks it)

and `BrowserModel` makes them look like `model.ModelFolder`: the small files are written to a real
folder (Pyodide's in-memory file system, a temp dir in CPython) so the tokenizer and configs load as
from disk, and the weights are read a tensor at a time through the byte sources, so a component
never has to sit in memory twice. On the WebGPU backend the stores are lazy (`WeightStore(...,
lazy=True)`): Python reads only each file's header, and the device bridge copies every tensor's
bytes from the source it names by `key` straight into its GPU buffer, so no weight byte enters the
wasm heap. Nothing here imports `js` at module level: the module runs (and is
tested) in CPython as well.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .backends.bridges.js import JsDeviceBridge, settle
from .errors import ModelError
from .model import WEIGHT_STEMS, ModelFolder, _variant_name
from .weights import WeightStore, open_store

# The files the page fetches besides the weights; `optional` ones may be absent from a repo.
CONFIG_FILES = ("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                "unet/config.json", "vae/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt")
OPTIONAL_FILES = ("tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json")
COMPONENTS = ("text_encoder", "unet", "vae")
SD_PIPELINES = ("StableDiffusionPipeline",)


def weight_candidates(component: str, variant: str | None) -> list[str]:
    """Paths to look for a component's weights, best first: the variant's single file and sharded
    index for each stem, then the plain ones (as ModelFolder.weight_files orders them)."""
    out = []
    for v in (variant, None):
        for stem in WEIGHT_STEMS:
            for name in (_variant_name(f"{stem}.safetensors", v), _variant_name(f"{stem}.safetensors.index.json", v)):
                p = f"{component}/{name}"
                if p not in out:
                    out.append(p)
    return out


def check_model_index(text: str, repo: str) -> dict:
    """model_index.json's text -> dict, or a ModelError saying why this is not an SD model we run."""
    try:
        index = json.loads(text)
    except ValueError:
        raise ModelError(f"{repo}: model_index.json is not valid JSON, so this is not a diffusers model") from None
    if not isinstance(index, dict):
        raise ModelError(f"{repo}: model_index.json is not a JSON object, so this is not a diffusers model")
    cls = index.get("_class_name")
    missing = [c for c in COMPONENTS + ("tokenizer", "scheduler") if not isinstance(index.get(c), list)]
    if missing:
        raise ModelError(f"{repo} is a {cls or 'diffusers'} model without {', '.join(missing)}: "
                         "sdweb runs Stable Diffusion 1.x/2.x text-to-image models (StableDiffusionPipeline)")
    unet = index.get("unet") or [None, None]
    if unet[1] not in (None, "UNet2DConditionModel"):
        raise ModelError(f"{repo}: its UNet is a {unet[1]}, not a UNet2DConditionModel (SD 1.x/2.x); "
                         "SDXL, SD3 and other families are not supported")
    return index


class BrowserModel(ModelFolder):
    """A ModelFolder whose small files live in `folder` and whose weights come from byte sources.

    BrowserModel(repo, texts, sources, folder=None, lazy=False): `repo` names the model in messages;
    `folder` (default: a new temp dir) receives `texts`; `sources` maps repo paths such as
    `unet/diffusion_pytorch_model.fp16.safetensors` to byte sources; `lazy` makes `weights()` return
    lazy stores (WeightRef instead of arrays: for the WebGPU backend only).
    """

    def __init__(self, repo: str, texts: dict, sources: dict, folder=None, lazy: bool = False):
        self.repo = repo
        self.lazy = lazy
        if "model_index.json" not in texts:
            raise ModelError(f"{repo} has no model_index.json: not a diffusers model")
        check_model_index(texts["model_index.json"], repo)
        root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="sdweb-model-"))
        for rel, text in texts.items():
            p = (root / rel).resolve()
            if root.resolve() not in p.parents:
                raise ModelError(f"{repo}: file path {rel!r} leaves the model folder")
            p.parent.mkdir(parents=True, exist_ok=True)
            data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
            p.write_bytes(data)
        self.sources = dict(sources)
        super().__init__(root)

    def __repr__(self):
        return f"BrowserModel({self.repo!r})"

    def weight_files(self, component: str, variant: str | None = None) -> list[str]:
        """The repo paths of `component`'s weights among the sources, in ModelFolder's order."""
        self._component_dir(component)
        looked = []
        for p in weight_candidates(component, variant) + weight_candidates(component, "fp16"):
            if p in looked:
                continue
            looked.append(p)
            if p.endswith(".json"):
                if (self.path / p).is_file():
                    return self._shard_paths(component, p)
            elif p in self.sources:
                return [p]
        raise ModelError(f"{self.repo}: no {component} weights were downloaded (looked for "
                         f"{', '.join(os.path.basename(p) for p in looked)})")

    def _shard_paths(self, component: str, index: str) -> list[str]:
        try:
            wmap = json.loads((self.path / index).read_text(encoding="utf-8")).get("weight_map")
        except ValueError as e:
            raise ModelError(f"{self.repo}/{index} is not valid JSON ({e})") from None
        if not isinstance(wmap, dict) or not wmap:
            raise ModelError(f"{self.repo}/{index}: weight_map should be a non-empty object of tensor name -> shard file")
        out = []
        for name in sorted(set(wmap.values())):
            if not isinstance(name, str) or os.path.basename(name) != name or name in (".", ".."):
                raise ModelError(f"{self.repo}/{index}: shard {name!r} should be a plain file name beside the index")
            p = f"{component}/{name}"
            if p not in self.sources:
                raise ModelError(f"{self.repo}/{p} was not downloaded: {os.path.basename(index)} lists it as a shard")
            out.append(p)
        return out

    def weights(self, component: str, precision: str = "fp32", variant: str | None = None,
                lazy: bool = False) -> WeightStore:
        sources = [(ByteSource(self.sources[p]), f"{self.repo}/{p}") for p in self.weight_files(component, variant)]
        return open_store(sources, component, precision, lazy=self.lazy or lazy)


class ByteSource:
    """Adapts a JS byte source (or any object with `size` and `read`) to what SafetensorsFile wants:
    `read(offset, length) -> bytes`, awaiting a returned Promise with `run_sync`. `key` (None when
    the source has none) is the name the JS device bridge reads the same bytes by (upload_span)."""

    def __init__(self, source):
        self._src = source
        self.size = int(source.size)
        self.name = str(getattr(source, "name", "<browser store>"))
        key = getattr(source, "key", None)
        self.key = None if key is None else str(key)
        self.reads = 0
        self.bytes_read = 0

    def read(self, offset: int, length: int) -> bytes:
        r = settle(self._src.read(offset, length))
        if hasattr(r, "to_bytes"):  # a JsProxy of a Uint8Array
            r = r.to_bytes()
        self.reads += 1
        self.bytes_read += len(r)
        return r


def png_bytes(image: np.ndarray, text: dict | None = None) -> bytes:
    """uint8 (H, W, 3) -> PNG file bytes, with `text` as tEXt chunks (the CLI writes `parameters`)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


class Session:
    """What the worker keeps between runs: the open model (tokenizer, configs) and its pipeline."""

    def __init__(self):
        self.key = None
        self.pipe = None

    def pipeline(self, key, repo, texts, sources, backend, precision, variant, keep_loaded=False):
        from .pipeline import Pipeline

        if self.key != key or self.pipe is None:
            self.pipe = None
            model = BrowserModel(repo, texts, sources, lazy=getattr(backend, "name", "") == "webgpu")
            self.pipe = Pipeline(model, backend, precision=precision, variant=variant, keep_loaded=keep_loaded)
            self.key = key
        return self.pipe


def generate(pipe, settings: dict, *, progress=None, cancel=None, preview_every: int = 0) -> dict:
    """One image with `settings` (prompt, negative_prompt, steps, guidance, seed, scheduler, width,
    height; None/absent -> the model's default) -> {png: bytes, seed, timings, settings}.

    `progress(event: dict)` gets {stage, step, total, elapsed, component?, timestep?} and, every
    `preview_every` UNet steps, `preview` (PNG bytes of the latents through preview.latents_to_rgb);
    `cancel()` returning true stops the run between steps with errors.Cancelled.
    """
    from .preview import latents_to_rgb

    turbo = "turbo" in str(getattr(pipe.folder, "repo", "")).lower()
    steps = settings.get("steps") or (1 if turbo else 50)
    guidance = settings.get("guidance")
    guidance = (0.0 if turbo else 7.5) if guidance is None else float(guidance)
    seed = settings.get("seed")
    seed = int(np.random.default_rng().integers(0, 2**31 - 1)) if seed is None else int(seed)
    scheduler = settings.get("scheduler") or pipe.default_scheduler
    width = int(settings.get("width") or pipe.default_size)
    height = int(settings.get("height") or pipe.default_size)
    def on_progress(p):
        if progress is None:
            return
        ev = {"stage": p.stage, "step": p.step, "total": p.total, "elapsed": p.elapsed}
        if p.component:
            ev["component"] = p.component
        if p.timestep is not None:
            ev["timestep"] = p.timestep
        if (p.stage == "unet" and p.step and preview_every and p.latents is not None
                and (p.step % preview_every == 0) and p.step != p.total):
            ev["preview"] = png_bytes(latents_to_rgb(p.latents[0]))
        progress(ev)

    t0 = time.perf_counter()
    result = pipe.generate(settings.get("prompt") or "", settings.get("negative_prompt") or "", steps=int(steps),
                           guidance=guidance, seed=seed, scheduler=scheduler, width=width, height=height,
                           progress=on_progress, cancel=cancel)
    s = dict(result.settings, seed=result.seeds[0], model=getattr(pipe.folder, "repo", str(pipe.folder.path)))
    png = png_bytes(result.images[0], {"parameters": json.dumps(s)})
    timings = dict(result.timings, png=time.perf_counter() - t0 - result.timings["total"])
    return {"png": png, "seed": result.seeds[0], "timings": timings, "settings": s,
            "truncated_tokens": result.truncated_tokens}


# --- the worker's entry point (Pyodide only) ----------------------------------------------------------

_SESSION = Session()
KEEP_LOADED_BYTES = 512 << 20  # models smaller than this keep their components between runs


def _to_js(x):
    from js import Object
    from pyodide.ffi import to_js

    return to_js(x, dict_converter=Object.fromEntries)


def worker_generate(job_json: str, texts, sources, post, cancel, bridge=None):
    """Called by web/worker.js (through callPromising, so byte-source reads may await IndexedDB).

    job_json: {key, repo, variant, precision, backend, preview_every, settings}; texts: JS object
    path -> text; sources: JS Map path -> {size, name, read(offset, length)}; post(event): progress
    sink; cancel() -> bool. Returns a JS object: {png, seed, timings, settings} or {error, message}
    or {cancelled: true}. Never raises: the page must stay usable whatever happens here.
    """
    from .errors import Cancelled, SdwebError

    try:
        job = json.loads(job_json)
        texts_py = texts.to_py() if hasattr(texts, "to_py") else dict(texts)
        sources_py = sources.to_py(depth=1) if hasattr(sources, "to_py") else dict(sources)
        backend = _backend(job.get("backend", "numpy"), bridge, int(job.get("device") or 0))
        size = sum(int(s.size) for s in sources_py.values())
        pipe = _SESSION.pipeline((job["key"], job.get("variant"), job.get("precision"), getattr(backend, "name", ""),
                                  job.get("device")),
                                 job["repo"], texts_py, sources_py, backend, job.get("precision") or "fp32",
                                 job.get("variant"), keep_loaded=size < KEEP_LOADED_BYTES)
        out = generate(pipe, job.get("settings") or {}, progress=lambda ev: post(_to_js(ev)),
                       cancel=lambda: bool(cancel()), preview_every=int(job.get("preview_every") or 0))
        out["settings"]["variant"] = job.get("variant")
        return _to_js(out)
    except Cancelled:
        return _to_js({"cancelled": True})
    except SdwebError as e:
        return _to_js({"error": type(e).__name__, "message": str(e)})
    except MemoryError:
        _SESSION.pipe = None
        return _to_js({"error": "MemoryError", "message": "Python ran out of memory (the wasm heap is capped "
                       "at 4 GiB): choose a smaller model or size, or the WebGPU backend"})
    except Exception as e:  # noqa: BLE001 - shown to the user, with the traceback in the console
        import traceback

        _SESSION.pipe = None
        return _to_js({"error": "internal", "message": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()})


_DEVICE: dict = {}  # the device generation the webgpu backend's context was made for


def _backend(name: str, bridge=None, device: int = 0):
    from .backends import numpy as numpy_backend

    if name == "numpy":
        return numpy_backend
    if name == "webgpu":
        from .backends import webgpu

        if bridge is None:
            raise ModelError("the WebGPU backend needs the browser's device bridge")
        if _DEVICE.get("generation") != device:  # a new GPU device: new context, pipelines, buffers
            webgpu.use_bridge(JsDeviceBridge(bridge))
            _DEVICE["generation"] = device
        return webgpu
    from .errors import ConfigError

    raise ConfigError(f"unknown backend {name!r}; use numpy or webgpu")
