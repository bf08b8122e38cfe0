// The Web Worker: Pyodide + sdweb, the weight store, the Hub downloads. The page's thread only draws.
//
// It decides nothing: the form goes to Python as it is (sdweb.browser.resolve_json -> settings.resolve),
// and so do the questions of which files to fetch (plan_json -> sdweb.layout, asked by hub.js).
//
// Messages in:   {type: "init", cancel: Int32Array (on a SharedArrayBuffer when the page is
//                 cross-origin isolated), chunk (store chunk bytes; ?chunk= on the page, for tests),
//                 gpuMaxBinding (cap the device's buffer limits: ?gpu-max-binding=, simulates a small GPU),
//                 request (the form's settings, resolved once Python is up for `ready`)}
//                {type: "resolve", rid, request}   the form's defaults and backend, for the page to show
//                {type: "count", rid, request, endpoint, token, tokenEndpoint}   the live token count of the prompts
//                {type: "generate", id, request (settings.FIELDS as typed), inputs (null, or a run from an
//                 image's files: {image, image_name, mask?, mask_name?}, bytes as Uint8Array), endpoint,
//                 revision, token, tokenEndpoint (the endpoint the user confirmed for the token in the
//                 page, or null), tiny {typed (the endpoint field), local (the dev server's prefetched
//                 tiny autoencoders)}: where a tiny autoencoder the run needs comes from (taesd.js
//                 tinyEndpoint)}
//                {type: "cancel"}   (the shared flag is what a busy Python loop sees; this message
//                                    covers the download phase where the page is not isolated)
//                {type: "png-settings", rid, bytes}   the settings a PNG dropped on the page carries
// Messages out:  status {text}, ready {...environment, gpu {ok, adapter, why}, catalogue, maxImages, resolved},
//                resolved {rid, settings, notes | error, message, field}, counted {rid, prompt,
//                negative_prompt: {chunks, tokens, count} | error, message}, plan {...}, download {...},
//                progress {stage, step, total, elapsed, component?, timestep?, preview?, preview_kind?},
//                result {...},
//                error {kind, message, field?}, cancelled {}, fatal {message},
//                png-settings {rid, request, notes, source | error, message}
// A result carries images [{png, seed, settings}] (image k: seed + k; its PNG holds its settings) and
// timings (seconds: Python's load_*, text_encoder, unet, vae, total, png, plus
// download and per-UNet-step unet_step_first, unet_step, unet_step_gpu_wait, unet_step_python),
// profile {steps: [{ms, gpuWaitMs}]}, io {pythonBytes, pythonReads (weight-file bytes handed to
// Python), directBytes, directUploads (copied store -> GPU by the bridge), weightFileBytes,
// wasmHeap, wasmHeapBefore} and, on WebGPU, gpu {adapter, dispatches, submits, reads, readWait,
// storeReadWait}.
// The token is only ever put in an Authorization header, for https://huggingface.co or tokenEndpoint
// (store.js authFor): never in a URL, a message back, or the log.

import { loadPyodide } from "./vendor/pyodide/pyodide.mjs";
import { ChunkStore, StoreError, authFor } from "./store.js";
import { planModel, fetchModel, modelKey } from "./hub.js";
import { DeviceBridge } from "./bridge/device.js";
import { fetchTiny, isStored, tinyEndpoint as tinyAt } from "./taesd.js";
import { AddonStore } from "./addons.js";

const base = new URL("./", import.meta.url);
let py = null, browser = null, store = null, manifest = null, catalogue = null, addons = null;
let gpu = null, gpuGeneration = 0, gpuCap = {}, gpuFacts = { ok: false, why: "not detected yet" };
// For the console and tests (Playwright's worker.evaluate): the live objects.
// `last`: the last finished run's {timings, profile, io, gpu} (scripts/bench_browser.py reads it).
self.sdweb = { get gpu() { return gpu; }, get store() { return store; }, get py() { return py; }, last: null };
let cancelFlag = null, localCancel = false, busy = false, pngQueue = [];
const jspi = typeof WebAssembly.Suspending === "function";

const post = (type, data = {}, transfer = []) => self.postMessage({ type, ...data }, transfer);
const cancelled = () => localCancel || (cancelFlag !== null && Atomics.load(cancelFlag, 0) === 1);

async function boot(msg) {
  cancelFlag = msg.cancel || null;
  if (msg.gpuMaxBinding) gpuCap = { maxStorageBufferBindingSize: msg.gpuMaxBinding, maxBufferSize: msg.gpuMaxBinding };
  const t0 = performance.now();
  post("status", { text: "Loading Python (Pyodide 0.27.7)…" });
  py = await loadPyodide({ indexURL: new URL("vendor/pyodide/", base).href, stdout: (s) => console.log(s),
    stderr: (s) => console.warn(s) });
  post("status", { text: "Loading NumPy and Pillow…" });
  await py.loadPackage(["numpy", "pillow", "micropip"], { messageCallback: () => {} });
  manifest = await (await fetch(new URL("vendor/wheels/manifest.json", base), { cache: "no-store" })).json();
  post("status", { text: "Installing sdweb…" });
  const micropip = py.pyimport("micropip");
  await micropip.install(new URL(`vendor/wheels/${manifest.sdweb}`, base).href, { deps: false });
  micropip.destroy();
  browser = py.pyimport("sdweb.browser");
  store = await ChunkStore.open({ chunkBytes: msg.chunk || undefined });
  addons = await AddonStore.open();
  gpuFacts = await detectGpu();
  catalogue = JSON.parse(browser.catalogue_json());
  post("ready", { seconds: (performance.now() - t0) / 1000, jspi, isolated: self.crossOriginIsolated,
    pyodide: py.version, numpy: py.runPython("import numpy; numpy.__version__"), gpu: gpuFacts,
    catalogue, maxImages: browser.MAX_PAGE_IMAGES,
    resolved: resolveSettings({ request: msg.request }) });
  pngSettings();
}

// Whether the WebGPU backend can run here: an adapter answers. A fact for Python's settings, which
// choose the backend. (JavaScript Promise Integration is not needed: Python awaits the GPU between
// steps, see `generate`.)
async function detectGpu() {
  if (!(self.navigator && navigator.gpu)) return { ok: false, why: "this browser has no WebGPU (navigator.gpu is missing)" };
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { ok: false, why: "no WebGPU adapter is available (GPU blocklisted or disabled)" };
    const info = adapter.info || {};
    return { ok: true, why: "", adapter: [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "WebGPU adapter" };
  } catch (e) {
    return { ok: false, why: `WebGPU failed to start (${e.message || e})` };
  }
}

// settings.resolve on the form, through sdweb.browser.resolve_json: {settings, notes} or {error,
// message, field}. With `texts` (the model's small files), the model's own defaults and limits too.
function resolveSettings(job, texts) {
  const pyTexts = texts ? py.toPy(texts) : null;
  try {
    return JSON.parse(browser.resolve_json(JSON.stringify({ ...job, webgpu: [gpuFacts.ok, gpuFacts.why] }), pyTexts));
  } finally {
    if (pyTexts) pyTexts.destroy();
  }
}

// One round of sdweb.layout's plan (hub.js asks until it has the files).
const planFiles = (known) => JSON.parse(browser.plan_json(JSON.stringify(known)));

// Planning fetches a model's small files; a run and the token count may both want them, so one
// plan runs at a time (two downloads of one file into the store would interleave its chunks).
let planning = Promise.resolve();
function planOnce(args) {
  const run = planning.then(() => planModel({ store, plan: planFiles, ...args }));
  planning = run.catch(() => {});
  return run;
}

// The small files by repo path (configs, tokenizer tables) of a plan, from the store.
async function planTexts(plan) {
  const texts = {};
  for (const f of plan.files) {
    if (f.kind === "text") texts[f.path] = await store.readText(f.url);
  }
  return texts;
}

// The live token count (sdweb.browser.count_json: the prompt chunker with the enabled embeddings).
// The model's tokenizer is fetched with its small files the first time (planned as a run plans),
// then Python keeps it by the model's key.
const counted = new Set();
async function countTokens(msg) {
  const { rid, request, endpoint, revision = "main" } = msg;
  const auth = authFor(msg.token, msg.tokenEndpoint);
  const first = resolveSettings({ request: { model: request.model, variant: request.variant } });
  if (first.error) return post("counted", { rid, ...first });
  const repo = first.settings.model, variant = first.settings.variant;
  const key = modelKey(endpoint, repo, revision, variant);
  try {
    let pyTexts = null;
    if (!counted.has(key)) {
      const plan = await planOnce({ endpoint, repo, revision, variant, auth, cancelled: () => false });
      pyTexts = py.toPy(await planTexts(plan));
    }
    if (busy) return;  // a run started meanwhile: Python is its; the page asks again after it
    const files = await addons.files({ embedding: request.embeddings || [] }, store);
    const job = { key, prompt: request.prompt, negative_prompt: request.negative_prompt, embeddings: request.embeddings };
    let r;
    try {
      r = JSON.parse(browser.count_json(JSON.stringify(job), pyTexts, files));
    } finally {
      if (pyTexts) pyTexts.destroy();
    }
    if (!r.error) counted.add(key);
    post("counted", { rid, ...r });
  } catch (e) {
    post("counted", { rid, error: e.kind || "internal", message: String(e && e.message || e) });
  }
}

// A Python answer with {error, message, field} -> an error message for the page.
function pyError(id, r) {
  const kind = r.error === "ConfigError" ? "input" : r.error === "ModelError" ? "model" : "python";
  return post("error", { id, kind, pyError: r.error, message: r.message, field: r.field });
}

// The last line of a Python traceback, without the exception's class: what a person should read.
function pyMessage(e) {
  const lines = String(e && e.message || e).trim().split("\n");
  return lines[lines.length - 1].replace(/^[\w.]+(Error|Exception): /, "");
}

// The WebGPU device: made once, again after a loss. The WGSL files travel inside the sdweb wheel
// (sdweb/shaders/, the same files as the repository's shaders/).
async function ensureGpu() {
  if (gpu && !gpu.lost) return gpu;
  if (gpu) { try { gpu.destroy(); } catch (_) { /* already gone */ } }
  gpu = null;
  try {
    gpu = await DeviceBridge.create(gpuCap);
  } catch (e) {
    throw new StoreError("nowebgpu", `${e.message || e} Choose the NumPy backend (slower) instead.`);
  }
  gpuGeneration += 1;
  return gpu;
}

async function generate(msg) {
  const { id, endpoint, revision = "main", request, inputs = null } = msg;
  const auth = authFor(msg.token, msg.tokenEndpoint);
  const tinyEndpoint = tinyAt(msg.tiny.typed, catalogue, msg.tiny.local, self.location.origin);
  localCancel = false;
  busy = true;
  try {
    // A run from an image: Python reads its files as the CLI does, and the settings carry their records.
    const records = inputs ? JSON.parse(browser.inputs_json(inputs)) : {};
    if (records.error) return pyError(id, records);
    // Python checks the form before anything is fetched (previews by TAESD when it is stored) ...
    const taesd = catalogue.tiny_autoencoders.find((m) => m.default).repo;
    const first = resolveSettings({ request: { ...request, ...records }, taesd: await isStored(store, tinyEndpoint, taesd) });
    if (first.error) return pyError(id, first);
    for (const text of first.notes) post("status", { id, text });
    const repo = first.settings.model;
    const variant = first.settings.variant;
    const tDownload = performance.now();
    const plan = await planOnce({ endpoint, repo, revision, variant, auth, cancelled,
      onStatus: (text) => post("status", { id, text }) });
    post("plan", { id, files: plan.files.map((f) => ({ path: f.path, size: f.size })), bytes: plan.bytes });
    // ... and again with the model's configs (sizes, scheduler, precision by the weights' size) before
    // a weight is downloaded.
    const texts = await planTexts(plan);
    const planned = plan.files.reduce((a, f) => a + (f.kind === "weights" ? f.size || 0 : 0), 0);
    const checked = resolveSettings({ request: first.settings, weight_bytes: planned }, texts);
    if (checked.error) return pyError(id, checked);
    // notes only the model could give, e.g. that the input image is resized to the model's sizes
    for (const text of checked.notes) if (!first.notes.includes(text)) post("status", { id, text });
    const settings = checked.settings;
    // the stored LoRAs and embeddings the run names (the panels' and the prompt's <lora:...> tags)
    const needed = JSON.parse(browser.needed_json(JSON.stringify(settings)));
    if (needed.error) return pyError(id, needed);
    const files = await addons.files(needed, store);
    await fetchModel({ store, plan, auth, cancelled, onProgress: (p) => post("download", { id, ...p }) });
    store.setAuth(auth);  // a damaged chunk found while reading is fetched again with it
    if (cancelled()) return post("cancelled", { id });
    // the tiny autoencoder the previews or the Fast decode need, on first use (then from the store)
    const tiny = checked.tiny && { repo: checked.tiny, plan: await fetchTiny({ store, endpoint: tinyEndpoint,
      repo: checked.tiny, auth, plan: planFiles, cancelled, onStatus: (text) => post("status", { id, text }),
      onProgress: (p) => post("download", { id, ...p }) }) };
    if (cancelled()) return post("cancelled", { id });
    if (tiny) {
      for (const f of tiny.plan.files) {
        if (f.kind === "text") texts[`${tiny.repo}/${f.path}`] = await store.readText(f.url);
      }
    }
    const downloadSeconds = (performance.now() - tDownload) / 1000;

    // The Python side: small files as text, weights as byte sources over the store. Every byte a
    // source hands Python is counted (io.pythonBytes); on WebGPU Python reads only the headers (each
    // source's `head`, read here) and the bridge copies the tensors from `direct` (the same store,
    // by the source's key) to the GPU.
    const backend = settings.backend;
    const sources = new Map();
    const direct = new Map();
    const io = { pythonReads: 0, pythonBytes: 0 };
    let weightBytes = 0;
    // the model's weight files by their paths, the tiny autoencoder's by "<its repo>/<path>"
    const addSources = async (files, from, prefix = "") => {
      for (const f of files) {
        if (f.kind !== "weights") continue;
        const rec = await store.file(f.url);
        weightBytes += rec.size;
        const fromStore = (o, n) => store.read(f.url, o, n);
        let forPython = fromStore;
        if (!jspi && backend === "numpy") {
          // Without JSPI Python cannot wait for IndexedDB, and on NumPy it reads every tensor: the
          // file goes into JS memory first (not the wasm heap; Python copies one tensor at a time).
          const all = await store.read(f.url, 0, rec.size);
          forPython = (o, n) => all.subarray(o, o + n);
        }
        const read = (o, n) => { io.pythonReads++; io.pythonBytes += n; return forPython(o, n); };
        const head = await safetensorsHead(store, f.url, rec.size);
        io.pythonBytes += head.length;
        const key = prefix + f.path;
        sources.set(key, { size: rec.size, name: `${from}/${f.path}`, key, read, head });
        direct.set(key, fromStore);
      }
    };
    await addSources(plan.files, repo);
    if (tiny) await addSources(tiny.plan.files, tiny.repo, `${tiny.repo}/`);
    let bridge = null;
    if (backend === "webgpu") {
      post("status", { id, text: "Starting the GPU…" });
      bridge = await ensureGpu();
      bridge.setSources(direct);
    }
    const span0 = bridge ? { n: bridge.spanUploads, bytes: bridge.spanBytes, wait: bridge.spanWait, read: bridge.readWait } : null;
    const heap0 = py._module.HEAP8.length;
    const job = { key: modelKey(endpoint, repo, revision, variant), settings, device: backend === "webgpu" ? gpuGeneration : 0,
      tiny: tiny ? { key: tiny.plan.key, repo: tiny.repo } : null };
    post("status", { id, text: backend === "numpy" ? `Running ${repo} on NumPy (wasm)…`
      : `Running ${repo} on WebGPU (${gpu.description})…` });
    // Per UNet step: wall time between progress reports and the part of it spent awaiting the GPU
    // (the readback's mapAsync); the rest is the worker's own time: Python, the bridge calls, the
    // scheduler, previews.
    const steps = [];
    let mark = null;
    const onProgress = (ev) => {
      const e = ev.toJs ? ev.toJs({ dict_converter: Object.fromEntries }) : ev;
      if (e.stage === "unet") {
        const now = { t: performance.now(), wait: bridge ? bridge.readWait : 0 };
        if (e.step > 0 && mark) steps.push({ ms: now.t - mark.t, gpuWaitMs: now.wait - mark.wait });
        mark = now;
      }
      const transfer = e.preview ? [e.preview.buffer] : [];
      post("progress", { id, ...e }, transfer);
    };
    // An async Python function: it awaits the GPU at each readback (read_ahead), so it runs with or
    // without JSPI; with JSPI a read outside the headers (the NumPy backend's tensors) may await
    // IndexedDB too.
    const fn = browser.worker_generate;
    const pyTexts = py.toPy(texts);
    let r;
    try {
      r = await fn(JSON.stringify(job), pyTexts, sources, onProgress, () => cancelled(), bridge, files, inputs);
    } finally {
      fn.destroy();
      pyTexts.destroy();
    }
    const out = r.toJs ? r.toJs({ dict_converter: Object.fromEntries }) : r;
    if (r.destroy) r.destroy();
    if (out.cancelled) return post("cancelled", { id });
    if (bridge && out.error && !bridge.lost) {
      // a lost device often shows first as a failed call; its `lost` promise settles just after
      await Promise.race([bridge.lostPromise, new Promise((r) => setTimeout(r, 500))]);
    }
    if (bridge && bridge.lost) {
      return post("error", { id, kind: "lost", message: `The GPU device was lost during the run (${bridge.lost}). ` +
        "A new one is made on the next Generate; if it happens again, try a smaller size or model, close other " +
        "GPU-heavy tabs, or use the NumPy backend." });
    }
    if (bridge && bridge.failed) {
      // a queued weight upload failed (a store read): the run stopped there; the next run starts a fresh device
      const e = bridge.failed;
      gpu.lost = gpu.lost || "an upload failed";
      if (e instanceof StoreError) return post("error", { id, kind: e.kind, message: e.message, status: e.status, field: e.field });
      return post("error", { id, kind: "internal", message: String(e && e.message || e) });
    }
    if (out.error) {
      if (out.traceback) console.error(out.traceback);
      if (out.error === "MemoryError") return post("error", { id, kind: "memory", message: out.message });
      if (out.error === "GPULimitError") return post("error", { id, kind: "limits", message: out.message });
      return pyError(id, out);
    }
    out.settings.endpoint = endpoint;
    for (const image of out.images) image.settings.endpoint = endpoint;
    io.wasmHeapBefore = heap0;
    io.wasmHeap = py._module.HEAP8.length;
    io.weightFileBytes = weightBytes;
    if (bridge) {
      io.directUploads = bridge.spanUploads - span0.n;
      io.directBytes = bridge.spanBytes - span0.bytes;
      out.gpu = { adapter: bridge.description, dispatches: bridge.dispatches, submits: bridge.submits,
        reads: bridge.reads, readWait: (bridge.readWait - span0.read) / 1000, storeReadWait: (bridge.spanWait - span0.wait) / 1000 };
      console.debug(`sdweb gpu: ${JSON.stringify(out.gpu)}`);
    }
    out.io = io;
    out.profile = { steps };
    Object.assign(out.timings, { download: downloadSeconds }, stepSummary(steps));
    self.sdweb.last = { timings: out.timings, profile: out.profile, io, gpu: out.gpu || null, settings: out.settings };
    post("result", { id, ...out, storeStats: { ...store.stats } }, out.images.map((i) => i.png.buffer));
  } catch (e) {
    if (e instanceof StoreError) {
      if (e.kind === "cancelled") return post("cancelled", { id });
      return post("error", { id, kind: e.kind, message: e.message, status: e.status, field: e.field });
    }
    console.error(e);
    post("error", { id, kind: "internal", message: String(e && e.message || e) });
  } finally {
    busy = false;
    pngSettings();
  }
}

// The PNGs dropped on the page, read by Python (sdweb.infotext through browser.png_settings_json) once
// it is up and not in a run (a run may be suspended awaiting the GPU: Python must not be re-entered).
function pngSettings(msg) {
  if (msg) pngQueue.push(msg);
  if (!browser || busy) return;
  for (const m of pngQueue.splice(0)) {
    post("png-settings", { rid: m.rid, ...JSON.parse(browser.png_settings_json(new Uint8Array(m.bytes))) });
  }
}

// The first bytes of a .safetensors file up to the end of its JSON header (8-byte length + header),
// or just the 8 bytes when the length is not plausible (Python's reader then says what is wrong):
// all Python reads of a file on WebGPU, handed over with the source so no read has to wait.
async function safetensorsHead(store, url, size) {
  if (size < 8) return new Uint8Array(0);
  const first = await store.read(url, 0, 8);
  const n = Number(new DataView(first.buffer, first.byteOffset, 8).getBigUint64(0, true));
  return n > 0 && n <= HEAD_MAX && 8 + n <= size ? store.read(url, 0, 8 + n) : first;
}
const HEAD_MAX = 100_000_000;  // the longest header sdweb.safetensors reads (MAX_HEADER_BYTES)

// Seconds per UNet step (the first, which also compiles the pipelines, apart) and how much of a
// step after the first was spent awaiting the GPU vs in the worker itself.
function stepSummary(steps) {
  if (!steps.length) return {};
  const rest = steps.length > 1 ? steps.slice(1) : steps;
  const mean = (f) => rest.reduce((a, s) => a + f(s), 0) / rest.length / 1000;
  return { unet_step_first: steps[0].ms / 1000, unet_step: mean((s) => s.ms),
    unet_step_gpu_wait: mean((s) => s.gpuWaitMs), unet_step_python: mean((s) => s.ms - s.gpuWaitMs) };
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  if (msg.type === "init") {
    try {
      await boot(msg);
    } catch (e) {
      console.error(e);
      post("fatal", { message: `Python failed to start: ${pyMessage(e)}. Reload the page to try again; ` +
        "if it keeps failing, run scripts/start.sh again (it re-vendors Pyodide and rebuilds the sdweb wheel)." });
    }
  } else if (msg.type === "resolve") {
    // during a run Python is busy (and may be suspended waiting for the GPU): the page asks again later
    if (browser && !busy) post("resolved", { rid: msg.rid, ...resolveSettings({ request: msg.request }) });
  } else if (msg.type === "count") {
    if (browser && !busy) await countTokens(msg);
  } else if (msg.type === "generate") {
    if (busy) return post("error", { id: msg.id, kind: "busy", message: "A generation is already running." });
    await generate(msg);
  } else if (msg.type === "cancel") {
    localCancel = true;
  } else if (msg.type === "png-settings") {
    pngSettings(msg);
  }
};
