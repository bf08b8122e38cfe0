// The workspace around a run: the gallery panel (every image kept in IndexedDB through gallery.js,
// with restore, reuse-seed, use-as-input, delete and clear), the grid of a batch, share links, the
// seed lock, PNGs dropped on the page, and the keys (Ctrl/Cmd+Enter generates, Escape cancels).
//
// It decides no setting either: a dropped PNG goes to Python (sdweb.infotext through the worker), and
// what it restores goes into the form as typed values, which Python checks on Generate. A setting's
// input has the setting's name with - for _ (sdweb.settings.FIELDS), and so does its URL parameter:
// a share link is the page's URL with the image's settings as those parameters (never the token).
//
// Hooks for image editing: `Workspace.useAsInput` (null until an editor module sets it to a function
// taking a gallery entry {png: Blob, settings, ...}); each gallery image offers "input" while it is set.
// `Workspace.restoreEditing(name, value)` takes the restored settings of a run from an image (EDITING).

import { Gallery } from "./gallery.js";
import { fmtBytes } from "./store.js";

const $ = (id) => document.getElementById(id);
const THUMB = 160;  // px, the longer side of a gallery thumbnail
const DEFAULT_ENDPOINT = "https://huggingface.co";
// What a share link and a restore carry, by setting name (the input ids use - for _).
const SHARED = ["model", "prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler", "width", "height", "variant",
  "decoder", "vae_tiling"];
// The settings of a run from an image: the editor's (its input files cannot travel in settings).
const EDITING = ["image", "mask", "strength", "outpaint"];

export class Workspace {
  static useAsInput = null;
  static restoreEditing = null;

  // app: {generate(), cancel(), showImage(entry), refreshStorage(), askDefaults(), updateModelNote(),
  //       busy() -> bool, readPng(ArrayBuffer, rid), restoreAddons(setting, value): the LoRA and
  //       embeddings panels take the settings `loras` / `embeddings`}
  constructor(app) {
    this.app = app;
    this.gallery = null;
    this.opening = Gallery.open().then((g) => { this.gallery = g; return this.render(); })
      .catch((e) => { $("gallery").textContent = `The gallery is unavailable: ${e.message || e}`; });
    this.current = null;
    this.pngId = 0;
    this.lockSeed(Boolean($("seed").value.trim()));
    $("seed-lock").onclick = () => this.lockSeed(!this.locked, true);
    $("seed").addEventListener("input", () => this.lockSeed(Boolean($("seed").value.trim())));
    $("share").onclick = () => this.share();
    $("gallery-clear").onclick = () => this.clear();
    document.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); app.generate(); }
      else if (e.key === "Escape" && app.busy()) { e.preventDefault(); app.cancel(); }
    });
    document.addEventListener("dragover", (e) => {
      if ([...e.dataTransfer.types].includes("Files")) { e.preventDefault(); document.body.classList.add("dropping"); }
    });
    document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dropping"); });
    document.addEventListener("drop", (e) => {
      document.body.classList.remove("dropping");
      const file = [...(e.dataTransfer.files || [])][0];
      if (!file) return;
      e.preventDefault();
      this.readPng(file);
    });
  }

  // --- seeds: an empty field is a new random seed per Generate; the lock keeps one --------------------

  lockSeed(on, fromButton = false) {
    if (fromButton && on && !$("seed").value.trim() && this.current) $("seed").value = this.current.seed;
    if (fromButton && !on) $("seed").value = "";
    this.locked = on;
    const b = $("seed-lock");
    b.textContent = on ? "locked" : "random";
    b.classList.toggle("on", on);
    b.setAttribute("aria-pressed", String(on));
    b.title = on ? "this seed is used on every Generate; click for a new random seed each time"
      : "a new random seed on every Generate (the result shows it); click to keep the last one";
  }

  // --- results and the gallery ------------------------------------------------------------------------

  // The images of one run ([{png: Uint8Array, seed, settings}]) -> gallery entries, stored, and the run's grid.
  async addRun(images, { timings, total, gpu }) {
    await this.opening;
    const entries = [];
    for (const image of images) {
      const png = new Blob([image.png], { type: "image/png" });
      const e = { png, thumb: await thumbnail(png), seed: image.seed, settings: image.settings, timings, total, gpu };
      entries.push(this.gallery ? await this.gallery.add(e).catch(() => e) : e);
    }
    this.renderBatch(entries);
    await this.render();
    this.app.refreshStorage();
    return entries;
  }

  shown(e) {
    this.current = e;
    $("share").hidden = false;
    $("share-link").hidden = true;
    for (const fig of document.querySelectorAll("#gallery figure, #batch figure")) {
      fig.classList.toggle("current", Number(fig.dataset.id) === e.id && e.id !== undefined);
    }
  }

  renderBatch(entries) {
    const grid = $("batch");
    grid.innerHTML = "";
    grid.hidden = entries.length < 2;
    if (entries.length < 2) return;
    for (const e of entries) {
      const fig = figure(e, `seed ${e.seed}`);
      fig.onclick = () => this.app.showImage(e);
      grid.append(fig);
    }
  }

  async render() {
    if (!this.gallery) return;
    const all = await this.gallery.list();
    const g = $("gallery");
    g.innerHTML = "";
    $("gallery-clear").disabled = !all.length;
    $("gallery-count").textContent = all.length ? `${all.length} image${all.length === 1 ? "" : "s"}, ${fmtBytes(
      all.reduce((a, r) => a + r.bytes, 0))} in this browser` : "";
    if (!all.length) {
      g.innerHTML = '<p class="hint">Images you make are kept here, with their settings, across reloads. ' +
        "Drop a PNG from sdweb or AUTOMATIC1111 anywhere on the page to load its settings.</p>";
    }
    for (const e of all) {
      const fig = figure(e, `${e.seed} · ${e.settings.prompt || "(no prompt)"}`);
      fig.querySelector("img").onclick = () => this.app.showImage(e);
      const actions = document.createElement("div");
      actions.className = "actions";
      actions.append(
        button("restore", "put all of this image's settings into the form (Generate makes it again)", () => this.restore(e)),
        button("seed", "use only this image's seed", () => this.reuseSeed(e)));
      if (Workspace.useAsInput) actions.append(button("input", "start from this image (image editing)", () => Workspace.useAsInput(e)));
      actions.append(button("×", "delete this image from the gallery", async () => {
        await this.gallery.delete(e.id);
        await this.render();
        this.app.refreshStorage();
      }, "delete"));
      fig.append(actions);
      g.append(fig);
    }
    if (this.current) this.shown(this.current);
  }

  async clear() {
    const n = (await this.gallery.usage()).count;
    if (!n || !confirm(`Delete all ${n} images from the gallery? Stored models are kept.`)) return;
    await this.gallery.clear();
    await this.render();
    this.app.refreshStorage();
  }

  async usage() {
    await this.opening;
    return this.gallery ? this.gallery.usage() : { count: 0, bytes: 0 };
  }

  // --- reuse --------------------------------------------------------------------------------------------

  restore(e) {
    this.fill(e.settings, { endpoint: true });
    $("status").textContent = `Settings of seed ${e.seed} restored: Generate makes the same image.`;
  }

  reuseSeed(e) {
    $("seed").value = e.seed;
    this.lockSeed(true);
    $("status").textContent = `Seed ${e.seed} locked; the other settings are as they were.`;
  }

  // Settings (by setting name) into the form; a restored seed is locked. Names the page has no input
  // for are returned, so the caller can say they were left out.
  fill(settings, { endpoint = false } = {}) {
    const modelChanged = settings.model && settings.model !== $("model").value.trim();
    const skipped = [];
    for (const [k, v] of Object.entries(settings)) {
      if (v === null || v === undefined) continue;
      if (k === "variant") $("variant").value = v === "fp16" ? "fp16" : "plain";
      else if (k === "endpoint") {
        if (endpoint) $("endpoint").value = v === DEFAULT_ENDPOINT || v === `${location.origin}/hub` ? "" : v;
      } else if (k === "num_images") $("num-images").value = v > 1 ? v : "";
      else if (EDITING.includes(k) && Workspace.restoreEditing) Workspace.restoreEditing(k, v);
      else if (k === "loras" || k === "embeddings") this.app.restoreAddons(k, v);
      else if ($(k.replace(/_/g, "-")) && !["backend", "token"].includes(k)) $(k.replace(/_/g, "-")).value = v;
      else if (!["backend", "precision", "preview_every"].includes(k) && !(k === "clip_skip" && !v)) skipped.push(`${k} ${v}`);
    }
    this.lockSeed(Boolean($("seed").value.trim()));
    if (modelChanged) this.app.updateModelNote();
    this.app.askDefaults();
    return skipped;
  }

  // --- PNGs dropped on the page ---------------------------------------------------------------------------

  async readPng(file) {
    this.pngId += 1;
    this.pngName = file.name;
    $("status").textContent = `Reading the settings in ${file.name}…`;
    this.app.readPng(await file.arrayBuffer(), this.pngId);
  }

  onPngSettings(m) {
    if (m.rid !== this.pngId) return;
    if (m.error) {
      $("status").textContent = `${this.pngName}: ${m.message}`;
      return;
    }
    const skipped = this.fill(m.request);
    const from = m.source === "sdweb" ? "sdweb's settings" : "its parameters (AUTOMATIC1111's format)";
    const notes = [...m.notes, ...skipped.map((s) => `${s} is not a setting the page has: left out`)];
    $("status").textContent = `Settings restored from ${this.pngName}, ${from}.` + (notes.length ? ` Note: ${notes.join("; ")}.` : "");
  }

  // --- share links ------------------------------------------------------------------------------------------

  // The page's URL with the shown image's settings as parameters: opening it elsewhere and pressing
  // Generate makes the same image (the model comes from the Hub, or the same mirror). Never the token.
  link(settings) {
    const url = new URL(location.pathname, location.origin);
    for (const k of SHARED) {
      const v = settings[k];
      if (v === null || v === undefined || v === "") continue;
      url.searchParams.set(k.replace(/_/g, "-"), k === "variant" ? (v === "fp16" ? "fp16" : "plain") : v);
    }
    const ep = settings.endpoint;
    if (ep && ep !== DEFAULT_ENDPOINT && ep !== `${location.origin}/hub`) url.searchParams.set("endpoint", ep);
    return url.href;
  }

  async share() {
    if (!this.current) return;
    const href = this.link(this.current.settings);
    const box = $("share-link");
    box.value = href;
    box.hidden = false;
    box.select();
    try {
      await navigator.clipboard.writeText(href);
      $("status").textContent = "Link copied: it opens this page with this image's settings (never your token).";
    } catch (_) {
      $("status").textContent = "Copy the link above: it opens this page with this image's settings (never your token).";
    }
  }
}

// A gallery or batch tile: the thumbnail and a caption.
function figure(e, caption) {
  const fig = document.createElement("figure");
  if (e.id !== undefined) fig.dataset.id = e.id;
  const img = document.createElement("img");
  img.src = URL.createObjectURL(e.thumb || e.png);
  img.onload = () => URL.revokeObjectURL(img.src);
  img.alt = e.settings.prompt;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  const s = e.settings;
  fig.title = `${s.prompt}\nseed ${e.seed} · ${s.model} · ${s.width}×${s.height} · ${s.steps} steps · ${s.scheduler} · guidance ${s.guidance}`;
  fig.append(img, cap);
  return fig;
}

function button(text, title, onclick, cls = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `small ${cls}`;
  b.textContent = text;
  b.title = title;
  b.dataset.action = cls || text;
  b.onclick = (ev) => { ev.stopPropagation(); onclick(); };
  return b;
}

// A PNG Blob -> a small WebP thumbnail, or null when the PNG is that small already.
async function thumbnail(png) {
  const bitmap = await createImageBitmap(png);
  const scale = Math.min(1, THUMB / Math.max(bitmap.width, bitmap.height));
  if (scale === 1) { bitmap.close(); return null; }
  const canvas = new OffscreenCanvas(Math.round(bitmap.width * scale), Math.round(bitmap.height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return canvas.convertToBlob({ type: "image/webp", quality: 0.85 });
}
