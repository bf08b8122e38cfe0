// The page's add-on files: textual-inversion embeddings and LoRAs, stored in IndexedDB ("sdweb-addons")
// by the panels (addon_panels.js) and read by the worker for a run. No DOM here: the worker imports it.
//
//   files  {id: "<kind>:<name>", kind: "lora" | "embedding", name, fileName, size, enabled, scale,
//           added (ms), source: "file" | "hub", bytes (ArrayBuffer, a local file's), url (a Hub file's:
//           its bytes are in the ChunkStore under that resolve URL, downloaded and verified like a
//           model's), repo, path}
//
// `name` is what the settings and `<lora:NAME>` call the file: a local file's stem; a Hub file's
// repo name, or the name a catalogue preset gives it. An embedding's trigger word is its file stem
// (A1111) or the token it stores (diffusers): Python reads that from the bytes.

const DB_NAME = "sdweb-addons";

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

export const stem = (fileName) => fileName.replace(/^.*[\\/]/, "").replace(/\.[^.]*$/, "");

export class AddonStore {
  static async open({ indexedDB = globalThis.indexedDB } = {}) {
    const open = indexedDB.open(DB_NAME, 1);
    open.onupgradeneeded = () => open.result.createObjectStore("files", { keyPath: "id" });
    return new AddonStore(await req(open));
  }

  constructor(db) { this.db = db; }

  async list(kind) {
    const all = await req(this.db.transaction("files").objectStore("files").getAll());
    return all.filter((r) => !kind || r.kind === kind).sort((a, b) => a.added - b.added);
  }

  get(kind, name) { return req(this.db.transaction("files").objectStore("files").get(`${kind}:${name}`)); }

  async put(rec) {
    rec.id = `${rec.kind}:${rec.name}`;
    const tx = this.db.transaction("files", "readwrite");
    tx.objectStore("files").put(rec);
    await new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onerror = () => reject(tx.error); });
    return rec;
  }

  async delete(id) {
    const tx = this.db.transaction("files", "readwrite");
    tx.objectStore("files").delete(id);
    await new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onerror = () => reject(tx.error); });
  }

  // A record's file bytes (a Hub file's from the ChunkStore `chunks`).
  async bytes(rec, chunks) {
    return rec.source === "hub" ? chunks.read(rec.url, 0, rec.size) : new Uint8Array(rec.bytes);
  }

  // The files Python asked for (sdweb.browser.needed_json: {lora: [name], embedding: [name]}), as
  // sdweb.browser.StoredLibrary takes them. A name not stored is left out: Python says so in words.
  async files(names, chunks) {
    const out = [];
    for (const kind of ["lora", "embedding"]) {
      for (const name of names[kind] || []) {
        const rec = await this.get(kind, name);
        if (!rec) continue;
        out.push({ kind, name, fileName: rec.fileName, version: rec.added, bytes: await this.bytes(rec, chunks) });
      }
    }
    return out;
  }
}
