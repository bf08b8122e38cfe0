// The LoRA and embeddings panels, and the catalogue's presets (a model with settings and LoRAs from
// the Hub). Files are added from this computer or from the Hub (repo id + file name) and kept in
// IndexedDB (addons.js); each can be switched off, a LoRA has its scale. What they hold goes into the
// form's request as the settings `loras` [{name, scale}] and `embeddings` [name] (sdweb.settings), so
// a result's PNG records them; the files themselves reach Python through the worker.
//
// A Hub file is downloaded like a model's files: into the ChunkStore (resumed, checked against the
// Hub's sha256), under its resolve URL; the panel's record points at it.

import { AddonStore, stem } from "./addons.js";
import { fileUrl } from "./hub.js";
import { ChunkStore, fmtBytes } from "./store.js";

const $ = (id) => document.getElementById(id);
const KINDS = { lora: "LoRA", embedding: "embedding" };
const FILES = /\.(safetensors|pt|bin)$/i;

export class AddonPanels {
  // endpoint(): the Hub to fetch from; auth(): who may get the HF token (store.js authFor: the Hub, or
  // the endpoint the user confirmed in the page); onChange(): the lists changed
  constructor({ endpoint, auth, onChange = () => {} }) {
    this.endpoint = endpoint;
    this.auth = auth;
    this.onChange = onChange;
    this.records = { lora: [], embedding: [] };
    this.ready = Promise.all([AddonStore.open(), ChunkStore.open()]).then(([a, c]) => {
      this.store = a;
      this.chunks = c;
    });
    for (const section of document.querySelectorAll(".addons section[data-kind]")) this.build(section.dataset.kind, section);
    this.ready.then(() => this.refresh()).catch((e) => this.status("lora", `Storage is unavailable: ${e.message || e}`));
  }

  // The settings the panels hold: the enabled LoRAs with their scales, the enabled embeddings.
  request() {
    const on = (kind) => this.records[kind].filter((r) => r.enabled);
    return { loras: on("lora").map((r) => ({ name: r.name, scale: r.scale })), embeddings: on("embedding").map((r) => r.name) };
  }

  // A panel's list, its "add" row (a local file; a Hub repo id + file name) and its status line, with
  // ids <kind>-list, -file, -repo, -path, -hub-add, -status.
  build(kind, section) {
    const example = kind === "lora" ? "pytorch_lora_weights.safetensors" : "learned_embeds.safetensors";
    section.insertAdjacentHTML("beforeend", `
      <div id="${kind}-list" class="addon-list"></div>
      <div class="addon-add">
        <label class="button small">Add a file… <input id="${kind}-file" type="file" accept=".safetensors,.pt,.bin" multiple hidden></label>
        <input id="${kind}-repo" placeholder="owner/name on the Hub" spellcheck="false">
        <input id="${kind}-path" placeholder="${example}" spellcheck="false">
        <button type="button" id="${kind}-hub-add" class="small">Add from the Hub</button>
      </div>
      <p id="${kind}-status" class="hint" aria-live="polite"></p>`);
    $(`${kind}-file`).addEventListener("change", (e) => this.addFiles(kind, [...e.target.files]).finally(() => { e.target.value = ""; }));
    $(`${kind}-hub-add`).onclick = () => this.addFromHub(kind, $(`${kind}-repo`).value.trim(), $(`${kind}-path`).value.trim());
  }

  status(kind, text) { $(`${kind}-status`).textContent = text; }

  async refresh() {
    await this.ready;
    for (const kind of Object.keys(KINDS)) {
      this.records[kind] = await this.store.list(kind);
      this.render(kind);
    }
    this.onChange();
  }

  render(kind) {
    const list = $(`${kind}-list`);
    list.innerHTML = "";
    for (const rec of this.records[kind]) {
      const row = document.createElement("div");
      row.className = "addon";
      row.dataset.name = rec.name;
      const on = document.createElement("input");
      on.type = "checkbox";
      on.checked = rec.enabled;
      on.title = "use it in the next run";
      on.onchange = () => this.update(rec, { enabled: on.checked });
      const label = document.createElement("span");
      label.className = "addon-name";
      label.textContent = rec.name;
      label.title = `${rec.fileName} · ${fmtBytes(rec.size)}` + (rec.repo ? ` · ${rec.repo}` : " · from this computer");
      row.append(on, label);
      if (kind === "lora") {
        const slider = document.createElement("input");
        slider.type = "range";
        slider.min = "-1"; slider.max = "2"; slider.step = "0.05";
        slider.value = String(rec.scale);
        const value = document.createElement("input");
        value.type = "number";
        value.className = "scale";
        value.step = "0.05";
        value.value = String(rec.scale);
        value.title = `scale (<lora:${rec.name}:SCALE> in the prompt adds it too)`;
        slider.oninput = () => { value.value = slider.value; };
        slider.onchange = () => this.update(rec, { scale: Number(slider.value) });
        value.onchange = () => {
          const v = Number(value.value);
          if (value.value.trim() === "" || !isFinite(v)) { value.value = String(rec.scale); return; }
          slider.value = String(v);
          this.update(rec, { scale: v });
        };
        row.append(slider, value);
      } else {
        const hint = document.createElement("span");
        hint.className = "hint";
        hint.textContent = `${fmtBytes(rec.size)}`;
        row.append(hint);
      }
      const del = document.createElement("button");
      del.className = "small";
      del.type = "button";
      del.textContent = "delete";
      del.onclick = () => this.remove(rec);
      row.append(del);
      list.append(row);
    }
    if (!this.records[kind].length) {
      list.innerHTML = `<p class="hint">None stored. Add a .safetensors, .pt or .bin file.</p>`;
    }
  }

  async update(rec, change) {
    Object.assign(rec, change);
    await this.store.put(rec);
    this.onChange();
  }

  async remove(rec) {
    await this.store.delete(rec.id);
    if (rec.source === "hub") await this.chunks.deleteFile(rec.url);
    await this.refresh();
  }

  async addFiles(kind, files) {
    await this.ready;
    for (const f of files) {
      if (!FILES.test(f.name)) {
        this.status(kind, `${f.name} is not a .safetensors, .pt or .bin file.`);
        continue;
      }
      const rec = { kind, name: stem(f.name), fileName: f.name, size: f.size, enabled: true, scale: 1.0,
        added: Date.now(), source: "file", bytes: await f.arrayBuffer() };
      await this.store.put(rec);
      this.status(kind, `Stored ${f.name} as ${rec.name}.`);
    }
    await this.refresh();
  }

  // Download `path` of Hub repo `repo` and store it as `name` (default: the repo's name).
  async addFromHub(kind, repo, path, { name = null, scale = 1.0 } = {}) {
    await this.ready;
    if (!/^[\w.-]+\/[\w.-]+$/.test(repo) || !FILES.test(path)) {
      this.status(kind, "Give a Hub repo id (owner/name) and the file's path in it, ending .safetensors, .pt or .bin.");
      return null;
    }
    const url = fileUrl(this.endpoint(), repo, "main", path);
    name = name || repo.split("/")[1];
    this.status(kind, `Downloading ${repo}/${path}…`);
    try {
      const rec = await this.chunks.download(url, { auth: this.auth(), onProgress: (have, size) =>
        this.status(kind, `Downloading ${repo}/${path}: ${fmtBytes(have)} of ${fmtBytes(size)}…`) });
      const stored = { kind, name, fileName: path.split("/").pop(), size: rec.size, enabled: true, scale,
        added: Date.now(), source: "hub", url, repo, path };
      await this.store.put(stored);
      this.status(kind, `Stored ${repo}/${path} as ${name}.`);
      await this.refresh();
      return stored;
    } catch (e) {
      this.status(kind, e.message || String(e));
      return null;
    }
  }

  // Restored settings (a gallery image's, a dropped PNG's): exactly these stored files enabled, at
  // these scales (value: [{name, scale}] for LoRAs, [name] for embeddings); a name not stored here
  // is said in the panel's status line.
  async restore(kind, value) {
    await this.ready;
    const want = new Map((value || []).map((v) => (typeof v === "string" ? [v, null] : [v.name, v.scale])));
    for (const rec of await this.store.list(kind)) {
      const change = { enabled: want.has(rec.name) };
      if (want.get(rec.name) != null) change.scale = want.get(rec.name);
      Object.assign(rec, change);
      await this.store.put(rec);
      want.delete(rec.name);
    }
    if (want.size) this.status(kind, `Not stored in this browser: ${[...want.keys()].join(", ")} (add the files to use them).`);
    await this.refresh();
  }

  // A catalogue preset: its model and settings into the form, its LoRAs stored (fetched from the Hub
  // when missing) and enabled at their scales.
  async applyPreset(preset) {
    $("model").value = preset.model;
    $("model").dispatchEvent(new Event("change"));
    for (const [field, value] of Object.entries(preset.settings || {})) {
      const el = $(field.replace(/_/g, "-"));
      if (el) el.value = String(value);
    }
    await this.ready;
    for (const l of preset.loras || []) {
      const have = await this.store.get("lora", l.name);
      if (have) await this.update(have, { enabled: true, scale: l.scale });
      else await this.addFromHub("lora", l.repo, l.file, { name: l.name, scale: l.scale });
    }
    await this.refresh();
  }

  showPresets(presets) {
    const sel = $("preset");
    for (const [i, p] of presets.entries()) {
      const o = document.createElement("option");
      o.value = String(i);
      o.textContent = p.label;
      o.title = p.note || "";
      sel.append(o);
    }
    sel.onchange = () => {
      const p = presets[Number(sel.value)];
      if (sel.value !== "" && p) this.applyPreset(p).finally(() => { sel.value = ""; });
    };
  }
}
