// The page's thread: the form, progress, results, history and the stored-models panel. All the
// work (Python, downloads, storage writes) happens in worker.js, so this thread never blocks. It
// decides no setting: an empty field means "the default", and Python (sdweb.settings, through the
// worker) fills in and checks every one; the model picker is Python's catalogue (models.json). The
// workspace around a run (gallery, reuse, share links, seeds, dropped PNGs, keys) is workspace.js.

import { ChunkStore, HUB, authFor, fmtBytes } from "./store.js";
import { Workspace } from "./workspace.js";
import { registerOffline } from "./offline.js";
import { showPerf, tuningText } from "./perf.js";
import { Editor } from "./editor.js";
import { AddonPanels } from "./addon_panels.js";
import { TokenCount } from "./token_count.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  worker: null, ready: false, busy: false, runId: 0, cancelTimer: null, cancelFlag: null,
  env: {}, gpu: null, catalogue: null, backend: null, resolveId: 0, localModels: [], localTiny: [], started: 0,
  stageStart: {}, lastTimings: null, pending: null, results: 0, panels: null, tokens: null,
};
let workspace = null;

// --- environment -----------------------------------------------------------------------------------

// The form's settings as the worker hands them to Python (sdweb.settings.FIELDS; "" = the default).
function request() {
  const num = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };
  return {
    model: $("model").value.trim().replace(/^https?:\/\/huggingface\.co\//, "").replace(/\/+$/, ""),
    prompt: $("prompt").value, negative_prompt: $("negative-prompt").value, steps: num("steps"),
    guidance: num("guidance"), seed: num("seed"), scheduler: $("scheduler").value, width: num("width"),
    height: num("height"), num_images: num("num-images"), variant: $("variant").value, backend: $("backend").value,
    compute: $("compute").value, preview: $("preview-kind").value, decoder: $("decoder").value,
    vae_tiling: $("vae-tiling").value,
    ...state.editor.request(),
    ...(state.panels ? state.panels.request() : {}),
  };
}

// The Hub a model is fetched from: the endpoint field, else the dev server's copy of a model
// prefetched into ./weights/, else huggingface.co.
function endpointFor(model) {
  const typed = typedEndpoint();
  if (typed) return { endpoint: typed, local: false };
  if (state.localModels.includes(model)) return { endpoint: `${location.origin}/hub`, local: true };
  return { endpoint: HUB, local: false };
}

// What the token count asks the worker about: the form as it is now.
function countJob() {
  const req = request();
  const { endpoint, local } = endpointFor(req.model);
  return { request: req, endpoint, token: $("token").value.trim(), tokenEndpoint: local ? null : confirmedEndpoint(endpoint) };
}

// What the current model and backend mean, from Python: the defaults shown in the empty fields and
// the backend the notice explains. Only the fields that choose them are sent.
function askDefaults() {
  if (!state.ready || state.busy) return;
  const r = request();
  state.resolveId += 1;
  state.worker.postMessage({ type: "resolve", rid: state.resolveId,
    request: { model: r.model, variant: r.variant, backend: r.backend } });
}

function showDefaults(m) {
  if (m.error) return;  // e.g. a half-typed model id: Generate will say what is wrong
  const s = m.settings;
  if (!$("model").value.trim()) $("model").value = s.model;
  $("steps").placeholder = s.steps;
  $("guidance").placeholder = s.guidance;
  state.backend = s.backend;
  updateModelNote();
  showNotice();
}

function showNotice() {
  const n = $("notice");
  const want = $("backend").value;
  const gpu = state.gpu;
  let html = "";
  if (state.backend === "numpy") {
    const why = want === "numpy" ? "you chose the NumPy backend" : `WebGPU is not available here: ${escapeHtml(gpu.why)}`;
    html = `<b>Running on NumPy inside WebAssembly</b> (${why}). That works everywhere but is slow, about 1 GFLOP/s: ` +
      `tiny and distilled models take seconds to minutes, while Stable Diffusion 1.5 at 512×512 takes minutes per ` +
      `step and needs the fp16 weights (the wasm heap is capped at 4 GiB).` +
      (gpu && gpu.ok ? ` A WebGPU adapter is present (${escapeHtml(gpu.adapter)}).` : "");
  }
  else if (state.backend === "webgpu" && /swiftshader|llvmpipe|lavapipe|software/i.test(gpu.adapter)) {
    html = `<b>Running on WebGPU, on a software adapter</b> (${escapeHtml(gpu.adapter)}): the GPU work is emulated ` +
      "on the CPU, so only tiny models finish in reasonable time. A browser with hardware WebGPU is many times faster.";
  }
  n.innerHTML = html;
  n.hidden = !html;
}

function setEnv(text, cls) {
  $("env-text").textContent = text;
  $("env").className = `env ${cls || ""}`;
}

// --- worker ----------------------------------------------------------------------------------------

function startWorker() {
  if (state.worker) state.worker.terminate();
  state.ready = false;
  setEnv("Loading Python…", "busy");
  const w = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  state.cancelFlag = new Int32Array(self.crossOriginIsolated ? new SharedArrayBuffer(4) : new ArrayBuffer(4));
  w.onmessage = (ev) => onWorkerMessage(ev.data);
  w.onerror = (ev) => {
    console.error(ev);
    fail({ kind: "internal", message: `The worker crashed (${ev.message || "unknown error"}); it was restarted.` });
    startWorker();
  };
  const r = request();
  w.postMessage({ type: "init", cancel: self.crossOriginIsolated ? state.cancelFlag : null,
    chunk: Number(params.get("chunk")) || null, gpuMaxBinding: Number(params.get("gpu-max-binding")) || null,
    request: { model: r.model, variant: r.variant, backend: r.backend } });
  state.worker = w;
}

function onWorkerMessage(m) {
  if (m.id !== undefined && m.id !== state.runId) return;  // a message from a cancelled run
  switch (m.type) {
    case "status":
      $("status").textContent = m.text;
      if (!state.ready && !m.id) setEnv(m.text.replace(/…$/, "") + "…", "busy");
      break;
    case "ready":
      state.ready = true;
      state.env = m;
      state.gpu = m.gpu;
      if (!state.catalogue) showCatalogue(m.catalogue);
      $("num-images").max = m.maxImages;
      showDefaults(m.resolved);
      state.tokens.now();
      setEnv(`Ready · Python ${m.pyodide} · NumPy ${m.numpy} · ${m.seconds.toFixed(1)} s to start`, "ready");
      if (!state.busy) $("status").textContent = "";
      if (state.pending) { const p = state.pending; state.pending = null; send(p); }
      break;
    case "resolved":
      if (m.rid === state.resolveId) showDefaults(m);
      break;
    case "counted": state.tokens.show(m); break;
    case "fatal":
      state.fatal = true;  // the next Generate starts a new worker
      setEnv("Python failed to start", "bad");
      fail({ kind: "fatal", message: m.message });
      break;
    case "plan":
      stage("download", 0, "checking…");
      break;
    case "download": onDownload(m); break;
    case "progress": onProgress(m); break;
    case "result": onResult(m); break;
    case "cancelled":
      finish();
      $("status").textContent = "Cancelled. Nothing was lost: downloaded files are kept.";
      break;
    case "error": fail(m); break;
    case "png-settings": workspace.onPngSettings(m); break;
  }
}

// --- progress --------------------------------------------------------------------------------------

const STAGES = ["download", "load", "text_encoder", "unet", "vae"];

function resetProgress() {
  for (const el of document.querySelectorAll("#progress .stage")) {
    el.classList.remove("active", "done");
    el.querySelector("progress").value = 0;
    el.querySelector(".detail").textContent = "";
  }
}

function stage(name, fraction, detail) {
  const idx = STAGES.indexOf(name);
  for (const el of document.querySelectorAll("#progress .stage")) {
    const i = STAGES.indexOf(el.dataset.stage);
    if (i < idx && !el.classList.contains("done") && el.dataset.stage !== "load") {
      el.classList.add("done"); el.querySelector("progress").value = 1;
    }
    el.classList.toggle("active", i === idx);
  }
  const el = document.querySelector(`#progress .stage[data-stage="${name}"]`);
  if (fraction != null) el.querySelector("progress").value = Math.max(0, Math.min(1, fraction));
  if (detail != null) el.querySelector(".detail").textContent = detail;
  if (fraction >= 1) el.classList.add("done");
}

const fmtTime = (s) => {
  if (s == null || !isFinite(s)) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
};

function onDownload(m) {
  if (m.phase === "estimate") {
    $("status").textContent = `Downloading ${fmtBytes(m.need)} (${fmtBytes(m.free)} of browser storage free)…`;
  } else if (m.phase === "download") {
    const f = m.total ? m.loaded / m.total : 0;
    stage("download", f, `${fmtBytes(m.loaded)} / ${fmtBytes(m.total)} · ${fmtBytes(m.rate)}/s` +
      (m.eta != null ? ` · ${fmtTime(m.eta)} left` : ""));
    const fileEta = m.rate > 0 ? (m.fileTotal - m.fileLoaded) / m.rate : null;
    $("status").textContent = `Downloading ${m.file}: ${fmtBytes(m.fileLoaded)} / ${fmtBytes(m.fileTotal)}` +
      (fileEta != null ? ` · ${fmtTime(fileEta)} left` : "") + "…";
  } else if (m.phase === "verify") {
    $("status").textContent = `Checking ${m.file} (sha256): ${Math.floor(100 * m.hashed / Math.max(1, m.fileTotal))} %…`;
  } else if (m.phase === "done") {
    stage("download", 1, m.downloaded ? `${fmtBytes(m.total)} stored` : `${fmtBytes(m.total)} from storage`);
  }
}

function onProgress(m) {
  const now = performance.now();
  if (m.stage === "load") {
    stage("load", 0.5, `${m.component.replace("_", " ")}…`);
    state.stageStart.load = now;
    $("status").textContent = `Loading the ${m.component.replace("_", " ")} weights…`;
    return;
  }
  if (m.stage === "tuning") {
    $("status").textContent = tuningText(m);
    return;
  }
  if (m.stage === "text_encoder") {
    stage("text_encoder", m.step / m.total, m.step ? "done" : "encoding the prompt");
    if (m.step === m.total) markLoaded();
    $("status").textContent = "Encoding the prompt…";
  } else if (m.stage === "vae_encoder") {
    $("status").textContent = "Encoding the input image…";
  } else if (m.stage === "unet") {
    markLoaded();
    if (m.step === 0) state.stageStart.unet = now;
    const per = m.step ? (now - state.stageStart.unet) / 1000 / m.step : null;
    const eta = per != null ? per * (m.total - m.step) : null;
    stage("unet", m.step / m.total, `step ${m.step}/${m.total}` + (per ? ` · ${fmtTime(per)}/step` : "") +
      (eta ? ` · ${fmtTime(eta)} left` : ""));
    $("status").textContent = m.step < m.total ? `Denoising, step ${m.step + 1} of ${m.total}…` : "Denoising done.";
    if (m.preview) showPreview(m.preview, m.preview_kind);
  } else if (m.stage === "vae") {
    markLoaded();
    stage("vae", m.step / m.total, m.step ? "done" : "decoding the image");
    $("status").textContent = "Decoding the image…";
  }
}

function markLoaded() {
  const el = document.querySelector('#progress .stage[data-stage="load"]');
  el.querySelector("progress").value = 1;
  el.classList.add("done");
  const d = el.querySelector(".detail");
  d.textContent = d.textContent.replace("…", "");
}

// A preview of the image the step predicts: TAESD's decode ("taesd") or the latents' colours ("approx").
function showPreview(png, kind) {
  const url = URL.createObjectURL(new Blob([png], { type: "image/png" }));
  const img = $("preview");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = url;
  img.dataset.kind = kind;
  img.alt = kind === "taesd" ? "live preview: the predicted image, decoded by TAESD" : "live preview: the latents' approximate colours";
  img.hidden = false;
  $("result").hidden = true;
  $("placeholder").hidden = true;
}

// --- generate / cancel -----------------------------------------------------------------------------

async function generate() {
  if (state.busy) return;
  clearError();
  const req = request();
  const typed = typedEndpoint();
  const { endpoint, local } = endpointFor(req.model);
  try { new URL(endpoint); } catch (_) {
    fail({ kind: "input", message: `"${endpoint}" is not a URL.`, field: "endpoint" });
    return;
  }
  state.busy = true;
  state.runId += 1;
  state.started = performance.now();
  state.stageStart = {};
  resetProgress();
  $("generate").disabled = true;
  $("cancel").disabled = false;
  setEnv(state.ready ? "Working…" : "Loading Python…", "busy");
  $("status").textContent = local ? `Using the copy of ${req.model} in ./weights/…` : `Starting ${req.model || "the default model"}…`;
  Atomics.store(state.cancelFlag, 0, 0);
  const inputs = await state.editor.inputs();  // the input image's bytes and the painted mask's PNG
  // The token goes to https://huggingface.co, or to the endpoint the box under it was ticked for (by
  // the user: no URL parameter ticks it); store.js authFor/authHeaders hold it to that.
  const msg = { type: "generate", id: state.runId, request: req, inputs, endpoint, token: $("token").value.trim(),
    tokenEndpoint: local ? null : confirmedEndpoint(endpoint), tiny: { typed, local: state.localTiny },
    profile: $("profile").checked, autotune: $("autotune").checked };
  $("autotune").checked = false;  // once: the new choices are remembered
  if (state.fatal) { state.fatal = false; startWorker(); }
  if (state.ready) send(msg);
  else state.pending = msg;
}

function send(msg) { state.worker.postMessage(msg); }

function cancel() {
  if (!state.busy) return;
  $("cancel").disabled = true;
  $("status").textContent = "Cancelling…";
  Atomics.store(state.cancelFlag, 0, 1);
  if (state.pending) { state.pending = null; finish(); $("status").textContent = "Cancelled."; return; }
  state.worker.postMessage({ type: "cancel" });
  // The flag is seen between steps. A step can take minutes on NumPy, and without cross-origin
  // isolation the flag is not shared at all: after a short wait, stop the worker outright (the
  // weights are in IndexedDB, so only Python's start-up is lost).
  const id = state.runId;
  state.cancelTimer = setTimeout(() => {
    if (state.busy && state.runId === id) {
      state.runId += 1;  // ignore anything the old worker still says
      startWorker();
      finish();
      $("status").textContent = "Cancelled (Python was restarted to stop at once; downloaded files are kept).";
    }
  }, 5000);
}

function finish() {
  state.busy = false;
  clearTimeout(state.cancelTimer);
  $("generate").disabled = false;
  $("cancel").disabled = true;
  for (const el of document.querySelectorAll("#progress .stage.active")) el.classList.remove("active");
  if (state.ready) setEnv(`Ready · Python ${state.env.pyodide} · NumPy ${state.env.numpy}`, "ready");
  askDefaults();
  if (state.ready) state.tokens.now();
  refreshCache();
}

async function onResult(m) {
  stage("vae", 1, "done");
  const load = Object.entries(m.timings).filter(([k]) => k.startsWith("load_")).reduce((a, [, v]) => a + v, 0);
  document.querySelector('#progress [data-stage="load"] .detail').textContent = fmtTime(load);
  finish();
  const total = (performance.now() - state.started) / 1000;
  // every image of the run goes into the gallery (IndexedDB) and the run's grid; the first is shown
  const entries = await workspace.addRun(m.images, { timings: m.timings, total, gpu: m.gpu || null });
  await showImage(entries[0]);
  state.results += 1;
  $("result").dataset.run = state.results;
  $("status").textContent = "Done.";
  state.lastTimings = m.timings;
  showPerf(m.perf || null);
}

// A gallery entry ({png: Blob, seed, settings, timings, total, gpu}) as the big image, with its info.
async function showImage(e) {
  const img = $("result");
  img.src = await dataUrl(e.png);
  img.hidden = false;
  img.dataset.settings = JSON.stringify(e.settings);
  img.classList.toggle("small", Math.max(e.settings.width, e.settings.height) < 256);
  $("preview").hidden = true;
  $("placeholder").hidden = true;
  showInfo(e);
}

function showInfo(e) {
  const t = e.timings, s = e.settings;
  const steps = s.steps;
  const load = Object.entries(t).filter(([k]) => k.startsWith("load_")).reduce((a, [, v]) => a + v, 0);
  $("result-info").innerHTML =
    `<b>seed ${e.seed}</b> · ${escapeHtml(s.model)} · ${s.width}×${s.height} · ${steps} steps · ${escapeHtml(s.scheduler)} · ` +
    `guidance ${s.guidance} · ${escapeHtml(s.backend)} ${escapeHtml(s.precision)}` +
    (s.image ? ` · from ${escapeHtml(s.image.name)} (${inputSize(s)})${s.mask ? " with a mask" : ""}` +
      `${s.outpaint ? `, outpainted ${s.outpaint.join(",")}` : ""}, strength ${s.strength}` : "") +
    (e.gpu ? ` · ${escapeHtml(e.gpu.adapter)}` : "") +
    (s.loras && s.loras.length ? ` · LoRA ${s.loras.map((l) => `${escapeHtml(l.name)} ${l.scale}`).join(", ")}` : "") +
    (s.embeddings && s.embeddings.length ? ` · embeddings ${s.embeddings.map(escapeHtml).join(", ")}` : "") + "<br>" +
    `total ${fmtTime(e.total)} · load ${fmtTime(load)} · text encoder ${fmtTime(t.text_encoder)} · ` +
    `denoise ${fmtTime(t.unet)} (${fmtTime(t.unet / Math.max(1, steps))}/step) · decode ${fmtTime(t.vae)}`;
  const a = $("download-png");
  if (a.href.startsWith("blob:")) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(e.png);
  a.download = `sdweb-${e.seed}.png`;
  a.hidden = false;
  workspace.shown(e);
  $("use-as-input").hidden = false;
  $("use-as-input").onclick = () => useAsInput(e);
}

// The input image's size as the run took it: grown by outpainting, and resized (Lanczos) to the
// run's size where that differs (sdweb.settings says so in a note too).
function inputSize(s) {
  const [l, t, r, b] = s.outpaint || [0, 0, 0, 0];
  const w = s.image.width + l + r, h = s.image.height + t + b;
  return w === s.width && h === s.height ? `${w}×${h}` : `${w}×${h} resized to ${s.width}×${s.height}`;
}

// A gallery entry (the result shown, or any image in the gallery) becomes the input image: its PNG
// bytes, exactly as downloaded.
function useAsInput(e) {
  state.editor.setFile(e.png, `sdweb-${e.seed}.png`);
  $("editor").scrollIntoView({ block: "nearest" });
}

// --- errors ----------------------------------------------------------------------------------------

const TITLES = {
  auth: "This model needs a Hugging Face token", notfound: "Model not found", model: "Not a model sdweb can run",
  quota: "Out of storage space", network: "Download failed", corrupt: "A download was corrupted", http: "Download failed",
  memory: "Out of memory", python: "The model could not run", limits: "This GPU's limits are too small for this model",
  lost: "The GPU device was lost", nowebgpu: "WebGPU is not available", input: "Check the settings", storage: "Browser storage failed",
  internal: "Something went wrong", fatal: "Python could not start", busy: "Busy",
};

function fail(m) {
  finish();
  const box = $("error");
  const msg = m.message;
  box.innerHTML = `<strong>${TITLES[m.kind] || "Error"}</strong>${escapeHtml(msg)}`;
  box.hidden = false;
  box.dataset.kind = m.kind;
  $("status").textContent = "";
  // a setting's name (sdweb.settings.FIELDS) is its input's id with - for _
  let field = (m.field && m.field.replace(/_/g, "-")) || (m.kind === "auth" ? "token" : null) ||
    (m.kind === "notfound" || m.kind === "model" ? "model" : null);
  if (field === "endpoint-token") $("form").querySelector("details").open = true;
  if (field && $(field) && $(field).closest("[hidden]")) field = "image";  // the editor's tools show once there is an image
  if (field && $(field)) {
    const el = $(field);
    el.classList.remove("attention"); void el.offsetWidth; el.classList.add("attention");
    el.focus();
  }
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  for (const el of document.querySelectorAll(".attention")) el.classList.remove("attention");
}

// --- stored models ---------------------------------------------------------------------------------

let storePromise = null;
async function refreshCache() {
  try {
    storePromise = storePromise || ChunkStore.open();
    const store = await storePromise;
    const models = (await store.models()).sort((a, b) => b.used - a.used);
    const tb = $("cache").querySelector("tbody");
    tb.innerHTML = "";
    for (const m of models) {
      const tr = document.createElement("tr");
      const host = (() => { try { return new URL(m.endpoint).host; } catch (_) { return m.endpoint; } })();
      tr.innerHTML = `<td>${escapeHtml(m.repo)}</td><td class="hint">${escapeHtml(host)} · ${escapeHtml(m.variant || "plain")}` +
        `${m.complete ? "" : " · incomplete"}</td><td class="num">${fmtBytes(m.bytes)}</td><td class="num"></td>`;
      const del = document.createElement("button");
      del.className = "small";
      del.textContent = "delete";
      del.disabled = state.busy;
      del.onclick = async () => { del.disabled = true; await store.deleteModel(m.key); refreshCache(); };
      tr.lastChild.append(del);
      tb.append(tr);
    }
    if (!models.length) tb.innerHTML = `<tr><td class="hint">No models stored yet: the first Generate downloads one.</td></tr>`;
    if (navigator.storage && navigator.storage.estimate) {
      const est = await navigator.storage.estimate();
      const weights = models.reduce((a, m) => a + m.bytes, 0);
      const g = await workspace.usage();
      $("storage").textContent = `Models ${fmtBytes(weights)} · gallery ${g.count} image${g.count === 1 ? "" : "s"}, ` +
        `${fmtBytes(g.bytes)} · this site uses ${fmtBytes(est.usage)} of ${fmtBytes(est.quota)} the browser allows it.`;
    }
  } catch (e) {
    $("storage").textContent = `Browser storage is unavailable: ${e.message || e}`;
  }
}

// --- helpers and start-up --------------------------------------------------------------------------

function escapeHtml(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function dataUrl(bytes) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(new Blob([bytes], { type: "image/png" }));
  });
}

function showCatalogue(catalogue) {
  state.catalogue = catalogue;
  const dl = $("model-list");
  for (const m of catalogue.models) {
    const o = document.createElement("option");
    o.value = m.repo; o.label = m.label;
    dl.append(o);
  }
  for (const repo of state.localModels) addLocalModel(repo);
  state.panels.showPresets(catalogue.presets || []);
}

function addLocalModel(repo) {
  if (state.catalogue && state.catalogue.models.some((m) => m.repo === repo)) return;
  const o = document.createElement("option");
  o.value = repo; o.label = "prefetched in ./weights/";
  $("model-list").append(o);
}

// A Hub endpoint other than huggingface.co gets the token only once the user ticks the box under it,
// and only while the field still names the endpoint it was ticked for; typing in the field unticks it.
function confirmedEndpoint(endpoint) {
  const box = $("endpoint-token");
  return box.checked && box.dataset.endpoint === endpoint ? endpoint : null;
}

const typedEndpoint = () => $("endpoint").value.trim().replace(/\/+$/, "");

function updateEndpointToken() {
  const typed = typedEndpoint();
  let other = false;
  try { other = !!typed && new URL(typed).origin !== HUB; } catch (_) { other = !!typed; }
  $("endpoint-token").checked = false;
  $("endpoint-token-row").hidden = !other;
}

function updateModelNote() {
  const repo = $("model").value.trim();
  const note = $("model-note");
  const known = state.catalogue && state.catalogue.models.find((m) => m.repo === repo);
  if (state.localModels.includes(repo) && !$("endpoint").value.trim()) note.textContent = "Prefetched: read from ./weights/ on this server.";
  else if (known) note.textContent = known.label;
  else note.textContent = "Any Hub repo id in the diffusers layout (owner/name).";
  // an inpainting model redraws only what a mask marks: say what it needs before Generate does
  const needs = known && known.inpainting && !(state.editor.hasImage && (state.editor.painted || state.editor.request().outpaint));
  state.editor.note(needs ? `${known.label}: an inpainting model. Start from an image (drop one above) and paint ` +
    "over what it should redraw, or outpaint a side." : "", "model");
}

async function loadLocalModels() {
  try {
    const r = await fetch("hub/api/local-models");
    if (!r.ok) return;
    const local = await r.json();
    state.localModels = local.models || [];
    state.localTiny = local.tiny_autoencoders || [];
    if (state.catalogue) for (const repo of state.localModels) addLocalModel(repo);
    updateModelNote();
  } catch (_) { /* served without the dev server's /hub: nothing prefetched */ }
}

function init() {
  // URL parameters preset the form: ?model= ?endpoint= ?backend= (and any other field by its id)
  for (const id of ["prompt", "negative-prompt", "steps", "guidance", "seed", "scheduler", "width", "height", "num-images", "variant",
    "compute", "decoder", "preview-kind", "vae-tiling"]) {
    if (params.has(id)) $(id).value = params.get(id);
  }
  if (params.has("model")) $("model").value = params.get("model");
  if (params.has("endpoint")) $("endpoint").value = params.get("endpoint");
  if (params.has("backend")) $("backend").value = ["webgpu", "numpy"].includes(params.get("backend")) ? params.get("backend") : "auto";
  if (params.has("profile")) $("profile").checked = params.get("profile") !== "0";
  if (params.has("endpoint") || params.has("backend")) $("form").querySelector("details").open = true;

  state.editor = new Editor({ onChange: updateModelNote });
  Workspace.useAsInput = useAsInput;  // each gallery image offers "input"
  Workspace.restoreEditing = (name, value) => state.editor.restore(name, value);
  $("generate").onclick = generate;
  $("cancel").onclick = cancel;
  // a new model brings its own defaults: the fields it sets go back to empty (= the model's)
  $("model").addEventListener("change", () => {
    for (const id of ["steps", "guidance", "width", "height"]) $(id).value = "";
    updateModelNote();
    askDefaults();
  });
  $("endpoint").addEventListener("input", () => { updateModelNote(); updateEndpointToken(); });
  $("endpoint-token").addEventListener("change", () => { $("endpoint-token").dataset.endpoint = typedEndpoint(); });
  $("backend").addEventListener("change", askDefaults);
  $("variant").addEventListener("change", askDefaults);
  workspace = new Workspace({
    generate, cancel, showImage, refreshStorage: refreshCache, askDefaults, updateModelNote,
    busy: () => state.busy,
    readPng: (bytes, rid) => state.worker.postMessage({ type: "png-settings", rid, bytes }, [bytes]),
    restoreAddons: (setting, value) => state.panels.restore(setting === "loras" ? "lora" : "embedding", value),
  });
  state.tokens = new TokenCount({ send: (m) => { if (state.ready && !state.busy) send(m); }, job: countJob });
  state.panels = new AddonPanels({ endpoint: () => endpointFor("").endpoint,
    auth: () => authFor($("token").value.trim(), confirmedEndpoint(endpointFor("").endpoint)),
    onChange: () => { if (state.ready) state.tokens.soon(); } });
  $("model").addEventListener("change", () => state.tokens.soon());
  updateModelNote();
  updateEndpointToken();
  startWorker();
  loadLocalModels();
  refreshCache();
  registerOffline();
}

init();
