"""The Python half of the page: a model folder over the browser's weight store, and one generation.

The page's Web Worker (web/worker.js) downloads a model's files into IndexedDB, then hands this module

    texts    {path: str}           the small files: model_index.json, configs, tokenizer tables
    sources  {path: byte source}   each .safetensors file: `size`, `head` (its first bytes, up to the
                                   end of its header) and `read(offset, length)`, which returns
                                   bytes, a Uint8Array, or a JS Promise of one (awaited with
                                   pyodide's `run_sync`, which needs JavaScript Promise Integration;
                                   without it the worker hands over sources that answer at once)

and `BrowserModel` makes them look like `model.ModelFolder`: the small files are written to a real
folder (Pyodide's in-memory file system, a temp dir in CPython) so the tokenizer and configs load as
from disk, and the weights are read a tensor at a time through the byte sources, so a component
never has to sit in memory twice. On the WebGPU backend the stores are lazy (`WeightStore(...,
lazy=True)`): Python reads only each file's header, and the device bridge copies every tensor's
bytes from the source it names by `key` straight into its GPU buffer, so no weight byte enters the
wasm heap.

A tiny autoencoder (madebyollin/taesd: previews every step, the Fast decode) comes the same way,
as its own repo in the same store: `BrowserAutoencoder` over its config.json and weight source.

The worker decides nothing itself; it calls, in order: `catalogue_json` (the model picker, on
start), `inputs_json` (a run from an image: the page's input files read as the CLI reads them, for
their records in the settings), `resolve_json` (settings.resolve on the form: before anything is
fetched, and again with the model's configs before its weights are; it also says which tiny
autoencoder the run needs), `plan_json` (layout.plan over what web/hub.js has found of a repo, round
by round), `needed_json` (which stored LoRAs and embeddings the run names: the settings' and the
prompt's `<lora:...>` tags) and `worker_generate` (one run: 1 to MAX_PAGE_IMAGES images, with those
files as a `StoredLibrary`); as the prompt is typed, `count_json` (the chunker's token count);
`png_settings_json` reads the settings of a PNG dropped on the page. Nothing here imports `js` at
module level: the module runs (and is tested) in CPython as well.

Waiting for the GPU: `worker_generate` is an async function that drives `Pipeline.stages` (`drive`):
once a component is built it awaits the JS bridge's `flush` (the weight uploads device.js queued),
and at each readback (after a UNet step, after an input image's encoding, after the decode, and
where a prompt chunk's embedding vectors or weights are applied on the host) its `read_ahead`, which
lets the work finish and copies the tensor to the host; the pipeline's own synchronous readback then
finds the bytes there. Model code never reads back within a step, so Python waits only at those
points and needs no JavaScript Promise Integration (JSPI): the WebGPU backend runs wherever WebGPU
does. With JSPI, a byte source may also return a Promise (the NumPy backend's tensor reads from
IndexedDB).
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from . import addons, catalogue, layout, picture
from .backends.bridges.js import JsDeviceBridge, settle
from .backends.webgpu.device import GPUTensor
from .clip import DEFAULTS as CLIP_DEFAULTS
from .errors import ConfigError, ModelError, SdwebError
from .infotext import image_settings, png_text, read_png
from .model import AutoencoderFolder, FolderFiles, ModelFolder
from .pipeline import run as run_stages
from .settings import MAX_PAGE_IMAGES, TAESD, ModelInfo, resolve
from .tokenizer import CLIPTokenizer
from .weights import WeightStore, open_store


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
        if layout.INDEX not in texts:
            raise ModelError(f"{repo} has no model_index.json: not a diffusers model")
        layout.check_model_index(texts[layout.INDEX], repo)
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
        self.files = FolderFiles(self.path, self.sources)

    def __repr__(self):
        return f"BrowserModel({self.repo!r})"

    @property
    def name(self) -> str:
        return self.repo

    def weight_files(self, component: str, variant: str | None = None) -> list[str]:
        """The repo paths of `component`'s weights among the sources (layout.choose_weights)."""
        self._component_dir(component)
        return list(layout.choose_weights(self.files, component, variant, self.repo).files)

    def weight_bytes(self, variant: str | None = None) -> int:
        return sum(int(self.sources[p].size) for c in layout.WEIGHT_COMPONENTS for p in self.weight_files(c, variant))

    def weights(self, component: str, precision: str = "fp32", variant: str | None = None,
                lazy: bool = False) -> WeightStore:
        sources = [(ByteSource(self.sources[p]), f"{self.repo}/{p}") for p in self.weight_files(component, variant)]
        return open_store(sources, component, precision, lazy=self.lazy or lazy)


class BrowserAutoencoder(AutoencoderFolder):
    """An AutoencoderFolder whose config.json lives in `folder` (default: a new temp dir) and whose
    weights come from byte sources, as BrowserModel's: `texts` {"config.json": text}, `sources`
    {repo path: byte source}."""

    def __init__(self, repo: str, texts: dict, sources: dict, folder=None, lazy: bool = False):
        self.repo, self.lazy, self.sources = repo, lazy, dict(sources)
        config = texts.get(layout.AUTOENCODER_CONFIG)
        if config is None:
            raise ModelError(f"{repo} has no config.json: not a tiny autoencoder")
        layout.check_autoencoder_config(config, repo)
        root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="sdweb-tiny-"))
        (root / layout.AUTOENCODER_CONFIG).write_text(config, encoding="utf-8")
        super().__init__(root)
        self.files = FolderFiles(self.path, self.sources)

    @property
    def name(self) -> str:
        return self.repo

    def weight_files(self, variant: str | None = None) -> list[str]:
        return list(layout.plan_autoencoder(self.files, variant, self.repo).weights[0].files)

    def weights(self, precision: str = "fp32", variant: str | None = None, lazy: bool = False) -> WeightStore:
        sources = [(ByteSource(self.sources[p]), f"{self.repo}/{p}") for p in self.weight_files(variant)]
        return open_store(sources, self.COMPONENT, precision, lazy=self.lazy or lazy)


class ByteSource:
    """Adapts a JS byte source (or any object with `size` and `read`) to what SafetensorsFile wants:
    `read(offset, length) -> bytes`: from the source's `head` (the bytes the worker read up front:
    the file's header) when the span lies within it, else from `read`, awaiting a returned Promise
    with `run_sync`. `key` (None when the source has none) is the name the JS device bridge reads
    the same bytes by (upload_span)."""

    def __init__(self, source):
        self._src = source
        self.size = int(source.size)
        self.name = str(getattr(source, "name", "<browser store>"))
        key = getattr(source, "key", None)
        self.key = None if key is None else str(key)
        head = getattr(source, "head", None)
        self._head = b"" if head is None else head.to_bytes() if hasattr(head, "to_bytes") else bytes(head)
        self.reads = 0
        self.bytes_read = 0

    def read(self, offset: int, length: int) -> bytes:
        if offset + length <= len(self._head):
            return self._head[offset:offset + length]
        r = settle(self._src.read(offset, length), f"{length} bytes of {self.name} from the browser's storage")
        if hasattr(r, "to_bytes"):  # a JsProxy of a Uint8Array
            r = r.to_bytes()
        self.reads += 1
        self.bytes_read += len(r)
        return r


class StoredLibrary:
    """The page's add-on files (addons.py's library): what its LoRA and embeddings panels stored in
    IndexedDB, handed over by the worker as [{kind: "lora" | "embedding", name, fileName, version,
    bytes}] (a JS array, or a list of dicts in CPython)."""

    def __init__(self, files=()):
        files = files.to_py() if hasattr(files, "to_py") else list(files or ())
        self.files = {}
        for f in files:
            data = f["bytes"]
            data = data.to_bytes() if hasattr(data, "to_bytes") else bytes(data)
            self.files[(f["kind"], f["name"])] = addons.Found(data, str(f["fileName"]), f.get("version"))

    def find(self, kind: str, name: str) -> addons.Found:
        found = self.files.get((kind, name))
        if found is None:
            what, panel, field = (("LoRA", "LoRAs", "loras") if kind == "lora"
                                  else ("embedding", "Embeddings", "embeddings"))
            raise ConfigError(f"{what} {name!r} is not stored in this browser: add its file in the {panel} panel", field)
        return found


def png_bytes(image: np.ndarray, text: dict | None = None, compress_level: int = 6) -> bytes:
    """uint8 (H, W, 3) -> PNG file bytes, with `text` as tEXt chunks (the CLI writes `parameters`).
    Previews, made every step, take compress_level 1: a few times faster, a little larger."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


class Session:
    """What the worker keeps between runs: the open model (tokenizer, configs) and its pipeline."""

    def __init__(self):
        self.key = self.tiny_key = None
        self.pipe = None

    def pipeline(self, key, repo, texts, sources, backend, precision, variant, keep_loaded=False, library=None,
                 tiny=None):
        """The session's pipeline for `key` (made anew when it changes); `tiny`: (key, repo, texts,
        sources) of the tiny autoencoder the run needs, or None."""
        from .pipeline import Pipeline

        lazy = getattr(backend, "name", "") == "webgpu"
        if self.key != key or self.pipe is None:
            self.pipe = None
            model = BrowserModel(repo, texts, sources, lazy=lazy)
            self.pipe = Pipeline(model, backend, precision=precision, variant=variant, keep_loaded=keep_loaded)
            self.key, self.tiny_key = key, None
        if tiny is not None and tiny[0] != self.tiny_key:
            self.pipe.use_tiny_autoencoder(BrowserAutoencoder(*tiny[1:], lazy=lazy))
            self.tiny_key = tiny[0]
        self.pipe.library = StoredLibrary() if library is None else library
        return self.pipe


def generate(pipe, request: dict, *, image=None, mask=None, progress=None, cancel=None) -> dict:
    """The images of `request` (settings.FIELDS; absent -> the default; precision, variant and
    backend are the pipeline's; add-on files come from pipe.library; previews by TAESD when the
    pipeline has a tiny autoencoder) and the input Pictures `image` and `mask` of a run from an image
    (whose records they replace) -> {images: [{png: bytes, seed, settings}], seed, timings,
    settings}: image k has seed + k, and its PNG carries its own settings (infotext.png_text).

    `progress(event: dict)` gets {stage, step, total, elapsed, component?, timestep?} and, when the
    pipeline makes one (every step with TAESD, else every `preview_every` steps), `preview`: PNG
    bytes of the first image's (pipeline.Progress.preview) and `preview_kind` (taesd | approx);
    `cancel()` returning true stops the run between steps with errors.Cancelled.
    """
    return run_stages(generation(pipe, request, image=image, mask=mask, progress=progress, cancel=cancel))


def generation(pipe, request: dict, *, image=None, mask=None, progress=None, cancel=None):
    """`generate` as a generator, as Pipeline.stages is the pipeline's run: it yields what stages
    yields (each tensor about to be read back, None once a component is built) and returns
    generate's dict."""
    s = resolve(dict(request, model=pipe.folder.name, precision=pipe.precision, variant=pipe.variant,
                     backend=pipe.backend.name, image=image, mask=mask), pipe.info,
                taesd=pipe.tiny_autoencoder is not None)

    def on_progress(p):
        if progress is None:
            return
        ev = {"stage": p.stage, "step": p.step, "total": p.total, "elapsed": p.elapsed}
        if p.component:
            ev["component"] = p.component
        if p.timestep is not None:
            ev["timestep"] = p.timestep
        if p.preview is not None:
            ev["preview"] = png_bytes(p.preview[0], compress_level=1)
            ev["preview_kind"] = s.preview
        progress(ev)

    t0 = time.perf_counter()
    result = yield from pipe.stages(**s.run_args(), image=image, mask=mask, progress=on_progress, cancel=cancel)
    run = dict(s.as_request(), **result.settings, model=pipe.folder.name)
    images = []
    for k, image in enumerate(result.images):
        own = image_settings(run, k)
        images.append({"png": png_bytes(image, png_text(own)), "seed": own["seed"], "settings": own})
    timings = dict(result.timings, png=time.perf_counter() - t0 - result.timings["total"])
    return {"images": images, "seed": result.seeds[0], "timings": timings, "settings": run}


# --- the worker's entry points (Pyodide; JSON in, JSON out, so they run and are tested in CPython) ----

_SESSION = Session()
KEEP_LOADED_BYTES = 512 << 20  # models smaller than this keep their components between runs


def _error(e: SdwebError) -> dict:
    return {"error": type(e).__name__, "message": str(e), "field": getattr(e, "field", None)}


def catalogue_json() -> str:
    """models.json, for the page's model picker."""
    return json.dumps(catalogue.load())


def png_settings_json(data) -> str:
    """A PNG dropped on the page (its bytes) -> {"request": {settings.FIELDS found}, "notes": [...],
    "source": "sdweb" | "parameters"} (infotext.read_png) or {"error", "message", "field"}."""
    try:
        r = read_png(data.to_bytes() if hasattr(data, "to_bytes") else data)
        return json.dumps({"request": r.request, "notes": list(r.notes), "source": r.source})
    except SdwebError as e:
        return json.dumps(_error(e))


def read_inputs(inputs) -> tuple:
    """The page's input files -> (image, mask) Pictures (None where absent), read by picture.read as
    the CLI reads files. inputs: {image, image_name, mask, mask_name} with the files' bytes (a
    Uint8Array from JS: a dropped or picked file as it is, a result's PNG, the painted mask's PNG), or
    None for text-to-image."""
    if inputs is None:
        return None, None
    inputs = inputs.to_py(depth=1) if hasattr(inputs, "to_py") else dict(inputs)

    def read(what):
        data = inputs.get(what)
        if data is None:
            return None
        data = data.to_bytes() if hasattr(data, "to_bytes") else bytes(data)
        return picture.read(data, str(inputs.get(f"{what}_name") or f"{what}.png"), what)

    return read("image"), read("mask")


def inputs_json(inputs) -> str:
    """read_inputs for the settings: -> {"image": record | null, "mask": record | null} (what the
    form's request carries into resolve_json), or {"error", "message", "field"}."""
    try:
        image, mask = read_inputs(inputs)
        return json.dumps({"image": image and image.record(), "mask": mask and mask.record()})
    except SdwebError as e:
        return json.dumps(_error(e))


def plan_json(job_json: str) -> str:
    """One round of planning a repo's files for web/hub.js (layout.plan over what the page knows).

    job: {repo, variant, listed: [path] or null (no listing: files are probed), present: [path],
    absent: [path], texts: {path: text}} -> {"need": [{path, kind, read}]} (look these up, then ask
    again), {"files": [{path, kind}], "notes": [...]}, or {"error", "message"}.
    """
    try:
        job = json.loads(job_json)
        known = layout.Known(job.get("listed"), job.get("present", ()), job.get("absent", ()), job.get("texts"))
        p = layout.plan(known, layout.variant_of(job.get("variant")), job["repo"])
        return json.dumps({"files": [{"path": f, "kind": layout.kind_of(f)} for f in p.files], "notes": list(p.notes)})
    except layout.Unknown as u:
        return json.dumps({"need": [{"path": n.path, "kind": n.kind, "read": n.read} for n in u.needs]})
    except SdwebError as e:
        return json.dumps(_error(e))


def resolve_json(job_json: str, texts=None) -> str:
    """The page's form -> checked settings (settings.resolve), before anything is fetched and again
    once the model's small files are in the store, before its weights are.

    job: {request: {settings.FIELDS}, webgpu: [ok, why] (an adapter answers and Python can wait for
    it), taesd: whether the catalogue's tiny autoencoder is in the store, weight_bytes (of the
    planned weight files, once known)}; texts: the model's small files by repo path (a JS object or
    dict), or None before they are fetched. -> {"settings": {...}, "notes": [...], "tiny": the Hub
    repo id of the tiny autoencoder the run needs (its previews or decoder; fetched on first use) or
    null} or {"error", "message", "field"}.
    """
    try:
        job = json.loads(job_json)
        request = job["request"]
        repo = request.get("model") or None  # none typed: the catalogue's default model
        if repo is not None:
            layout.check_repo_id(repo)
        model = None
        if texts is not None:
            texts = texts.to_py() if hasattr(texts, "to_py") else dict(texts)
            model = ModelInfo.from_configs(repo, weight_bytes=job.get("weight_bytes"), **{
                c: _config(texts, repo, c) for c in ("unet", "vae", "scheduler", "text_encoder")})
        webgpu = job.get("webgpu")
        s = resolve(request, model, webgpu=None if webgpu is None else tuple(webgpu), taesd=job.get("taesd"))
        if s.num_images > MAX_PAGE_IMAGES:
            raise ConfigError(f"num_images {s.num_images} is too many for the page: use 1 to {MAX_PAGE_IMAGES} "
                              "(every image of a batch is held in memory at once)", "num_images")
        tiny = s.tiny_autoencoder
        if tiny == TAESD:
            tiny = catalogue.tiny_autoencoder()["repo"]
        elif tiny is not None and not layout.REPO_ID.match(tiny):  # the page reads the Hub, never a folder
            raise ConfigError(f"decoder {tiny!r}: the page reads tiny autoencoders from the Hub: use taesd or a "
                              "Hub repo id (owner/name)", "decoder")
        return json.dumps({"settings": s.as_request(), "notes": list(s.notes), "tiny": tiny})
    except SdwebError as e:
        return json.dumps(_error(e))


def needed_json(settings_json: str) -> str:
    """Which stored add-on files a run of these settings (as resolve_json returned them) asks for:
    {"lora": [name], "embedding": [name]} (the LoRA panel's and the prompt's <lora:...> tags), or
    {"error", "message", "field"}."""
    try:
        s = resolve(json.loads(settings_json))
        return json.dumps(addons.needed(s.prompt, s.loras, s.embeddings))
    except SdwebError as e:
        return json.dumps(_error(e))


_TOKENIZERS: dict = {}  # model key -> (CLIPTokenizer, hidden_size): the tables take a while to parse in Pyodide


def count_json(job_json: str, texts=None, files=None) -> str:
    """The live token count under the prompt boxes: job {key (the model's store key), prompt,
    negative_prompt, embeddings: [name]}, texts: the model's small files by repo path (needed the
    first time a key is seen), files: the embeddings as StoredLibrary takes them -> {"prompt":
    {"chunks", "tokens" (in the last chunk), "count" (A1111's total)}, "negative_prompt": {...}} or
    {"error", "message", "field"}."""
    try:
        job = json.loads(job_json)
        if job["key"] not in _TOKENIZERS:
            texts = texts.to_py() if hasattr(texts, "to_py") else dict(texts or {})
            found = {p.rpartition("/")[2]: t for p, t in texts.items() if p.startswith("tokenizer/")}
            hidden = json.loads(texts["text_encoder/config.json"]).get("hidden_size", CLIP_DEFAULTS["hidden_size"])
            _TOKENIZERS[job["key"]] = CLIPTokenizer.from_files(found, f"{job['key']} tokenizer"), int(hidden)
        tok, hidden = _TOKENIZERS[job["key"]]
        chunker, _ = addons.embedding_chunker(StoredLibrary(files), tok, hidden, job.get("embeddings") or ())
        out = {}
        for field in ("prompt", "negative_prompt"):
            c = addons.parsed(field, chunker.chunk, job.get(field) or "")
            out[field] = {"chunks": len(c.chunks), "tokens": c.chunks[-1].n_tokens, "count": c.token_count}
        return json.dumps(out)
    except SdwebError as e:
        return json.dumps(_error(e))
    except (KeyError, ValueError) as e:
        return json.dumps({"error": "ModelError", "message": f"the model's tokenizer files are incomplete ({e})",
                           "field": None})


def _config(texts: dict, repo: str, component: str) -> dict:
    path = layout.config_file(component)
    try:
        config = json.loads(texts[path])
    except KeyError:
        raise ModelError(f"{repo}/{path} was not downloaded") from None
    except ValueError as e:
        raise ModelError(f"{repo}/{path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{repo}/{path} should hold a JSON object")
    return config


def _to_js(x):
    from js import Object
    from pyodide.ffi import to_js

    return to_js(x, dict_converter=Object.fromEntries)


async def drive(stages, bridge=None):
    """Run Pipeline.stages (or `generation`) to its return value, awaiting `bridge.read_ahead` (the
    JS bridge's, a Promise) for every GPU tensor it is about to read back, so that the synchronous
    readback that follows finds the bytes on the host, and `bridge.flush` once a component is built
    (None), so its weight uploads count as loading it. Host arrays (the NumPy backend) pass."""
    while True:
        try:
            t = next(stages)
        except StopIteration as done:
            return done.value
        if bridge is None:
            continue
        if t is None:
            await bridge.flush()
        elif isinstance(t, GPUTensor) and t.nbytes:
            await bridge.read_ahead(t.buffer, t.offset, t.nbytes)


async def worker_generate(job_json: str, texts, sources, post, cancel, bridge=None, files=None, inputs=None):
    """Called by web/worker.js, which awaits it (a Promise in JS): `drive` waits for the GPU at each
    readback, and only there.

    job_json: {key, device, settings, tiny: {key, repo} or absent} with settings as resolve_json
    returned them; texts: JS object path -> text; sources: JS Map path -> {size, name, key, head,
    read(offset, length)}, the tiny autoencoder's files among them under "<tiny repo>/<path>";
    post(event): progress sink; cancel() -> bool; files: the stored LoRAs and embeddings needed_json
    named, as StoredLibrary takes them; inputs: a run from an image's files (read_inputs). Returns a
    JS object: generate's {images, seed, timings, settings} or {error, message, field} or
    {cancelled: true}. Never raises: the page must stay usable whatever happens here.
    """
    from .errors import Cancelled

    try:
        job = json.loads(job_json)
        s = resolve(job["settings"])
        texts_py = texts.to_py() if hasattr(texts, "to_py") else dict(texts)
        sources_py = sources.to_py(depth=1) if hasattr(sources, "to_py") else dict(sources)
        backend = _backend(s.backend, bridge, int(job.get("device") or 0))
        tiny = job.get("tiny")
        if tiny:
            head = tiny["repo"] + "/"
            tiny = (tiny["key"], tiny["repo"], {p[len(head):]: t for p, t in texts_py.items() if p.startswith(head)},
                    {p[len(head):]: src for p, src in sources_py.items() if p.startswith(head)})
            texts_py = {p: t for p, t in texts_py.items() if not p.startswith(head)}
            sources_py = {p: src for p, src in sources_py.items() if not p.startswith(head)}
        size = sum(int(src.size) for src in sources_py.values())
        pipe = _SESSION.pipeline((job["key"], s.variant, s.precision, backend.name, job.get("device")),
                                 s.model, texts_py, sources_py, backend, s.precision, s.variant,
                                 keep_loaded=size < KEEP_LOADED_BYTES, library=StoredLibrary(files),
                                 tiny=tiny or None)
        image, mask = read_inputs(inputs)
        stages = generation(pipe, s.as_request(), image=image, mask=mask, progress=lambda ev: post(_to_js(ev)),
                            cancel=lambda: bool(cancel()))
        out = await drive(stages, backend.context().bridge if backend.name == "webgpu" else None)
        return _to_js(out)
    except Cancelled:
        return _to_js({"cancelled": True})
    except SdwebError as e:
        return _to_js(_error(e))
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
    raise ValueError(f"backend {name!r}: settings.resolve lets only numpy and webgpu through")
