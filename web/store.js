// ChunkStore, the browser's file store: Hub files streamed into IndexedDB in fixed-size chunks, resumed with
// HTTP Range after a drop or a reload, verified (size; sha256 where the Hub gives it), and read back
// by byte range, so the safetensors reader fetches a header and then one tensor at a time and a
// 1.7 GB UNet never exists as one ArrayBuffer.
//
// IndexedDB "sdweb-weights":
//   files   {key: url, size, have, sha256, etag, chunk, done, verified, updated}
//           `have` bytes are stored, always a whole number of chunks until the file is done
//   chunks  {key: url, i: chunk index, data: ArrayBuffer}          primary key [key, i]
//   models  {key, endpoint, repo, revision, variant, files: [{path, url, size, kind}], bytes, complete, used}
// A file's key is its resolve URL (never with a token in it). Used by the worker (downloads, reads)
// and by the page (cache panel: list, delete). (Python's weights.WeightStore is another thing: a
// component's tensors, read through the byte sources the worker makes over this store.)
// IndexedDB, IDBKeyRange and fetch are the browser's unless `open` is handed others (the Node tests'
// fake-indexeddb and fake Hub).

import { Sha256 } from "./sha256.js";

export const CHUNK = 4 << 20;  // bytes per stored chunk
const DB_NAME = "sdweb-weights";
const CACHE_CHUNKS = 16;  // recently read chunks kept in memory (64 MB of 4 MB chunks; tensors are read in file order)

export class StoreError extends Error {
  // kind: quota | auth | notfound | network | http | corrupt | cancelled | storage
  constructor(kind, message, extra = {}) {
    super(message);
    this.kind = kind;
    Object.assign(this, extra);
  }
}

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new DOMException("transaction aborted", "AbortError"));
  });
}

function storageError(e, what) {
  if (e instanceof StoreError) return e;
  if (e && (e.name === "QuotaExceededError" || /quota/i.test(String(e.message)))) {
    return new StoreError("quota", `Out of storage space while saving ${what}. Free some space (delete a ` +
      `cached model below, or clear site data), then Generate again.`);
  }
  return new StoreError("storage", `The browser's storage (IndexedDB) failed while saving ${what}: ${e && e.message || e}`);
}

export const fmtBytes = (n) => {
  if (n == null || !isFinite(n)) return "?";
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${u[i]}`;
};

export class ChunkStore {
  // chunkBytes: chunk size for new downloads (default CHUNK; tests use small ones to exercise resume)
  static async open({ chunkBytes = CHUNK, indexedDB = globalThis.indexedDB, IDBKeyRange = globalThis.IDBKeyRange,
    fetch = (...a) => globalThis.fetch(...a) } = {}) {
    const open = indexedDB.open(DB_NAME, 1);
    open.onupgradeneeded = () => {
      const db = open.result;
      db.createObjectStore("files", { keyPath: "key" });
      db.createObjectStore("chunks", { keyPath: ["key", "i"] });
      db.createObjectStore("models", { keyPath: "key" });
    };
    let db;
    try {
      db = await req(open);
    } catch (e) {
      throw new StoreError("storage", `Cannot open the browser's storage (IndexedDB): ${e && e.message || e}. ` +
        "Private windows and some privacy settings disable it.");
    }
    return new ChunkStore(db, chunkBytes, IDBKeyRange, fetch);
  }

  constructor(db, chunkBytes, keyRange, fetch) {
    this.db = db;
    this.chunk = chunkBytes;
    this.keyRange = keyRange;
    this.fetch = fetch;
    this.cache = new Map();  // "url#i" -> Uint8Array, in use order
    this.cacheBytes = 0;
    this.cacheMax = CACHE_CHUNKS * chunkBytes;
    this.recs = new Map();  // url -> done file record
    this.stats = { reads: 0, chunkLoads: 0, bytesRead: 0 };
  }

  async _get(store, key) {
    return req(this.db.transaction(store).objectStore(store).get(key));
  }

  file(url) { return this._get("files", url); }
  model(key) { return this._get("models", key); }

  async putModel(rec) {
    const tx = this.db.transaction("models", "readwrite");
    tx.objectStore("models").put(rec);
    try { await done(tx); } catch (e) { throw storageError(e, "the model list"); }
  }

  async models() {
    return req(this.db.transaction("models").objectStore("models").getAll());
  }

  // Delete a file's record and chunks (and drop it from the in-memory caches).
  async deleteFile(url) {
    const tx = this.db.transaction(["files", "chunks"], "readwrite");
    tx.objectStore("files").delete(url);
    tx.objectStore("chunks").delete(this.keyRange.bound([url, 0], [url, Infinity]));
    await done(tx);
    this.recs.delete(url);
    for (const k of [...this.cache.keys()]) {
      if (k.startsWith(url + "#")) { this.cacheBytes -= this.cache.get(k).length; this.cache.delete(k); }
    }
  }

  // Delete a model and every file no other stored model uses.
  async deleteModel(key) {
    const all = await this.models();
    const victim = all.find((m) => m.key === key);
    if (!victim) return;
    const keep = new Set(all.filter((m) => m.key !== key).flatMap((m) => m.files.map((f) => f.url)));
    for (const f of victim.files) if (!keep.has(f.url)) await this.deleteFile(f.url);
    const tx = this.db.transaction("models", "readwrite");
    tx.objectStore("models").delete(key);
    await done(tx);
  }

  // Bytes of `url` already stored (for the overall progress of a resumed download).
  async stored(url) {
    const r = await this.file(url);
    return r ? (r.done ? r.size : r.have) : 0;
  }

  async _putChunk(rec, i, bytes) {
    const tx = this.db.transaction(["files", "chunks"], "readwrite");
    tx.objectStore("chunks").put({ key: rec.key, i, data: bytes.buffer.byteLength === bytes.length ? bytes.buffer : bytes.slice().buffer });
    tx.objectStore("files").put(rec);
    try { await done(tx); } catch (e) { throw storageError(e, rec.key.split("/").pop()); }
  }

  async _putRec(rec) {
    const tx = this.db.transaction("files", "readwrite");
    tx.objectStore("files").put(rec);
    try { await done(tx); } catch (e) { throw storageError(e, rec.key.split("/").pop()); }
  }

  // Download `url` into the store unless it is there already; resume a partial copy with Range.
  //   opts: token, expect {size, sha256} (from a listing), onProgress(have, size), cancelled() -> bool,
  //         retries (network drops survived per file, default 4)
  // Resolves to the done file record. Rejects with a StoreError.
  async download(url, opts = {}) {
    const { token, expect = {}, onProgress = () => {}, cancelled = () => false, retries = 4 } = opts;
    let rec = await this.file(url);
    if (rec && rec.done) { this.recs.set(url, rec); return rec; }
    let drops = 0;
    for (;;) {
      try {
        rec = await this._fetchInto(url, rec, token, expect, onProgress, cancelled);
        this.recs.set(url, rec);
        return rec;
      } catch (e) {
        if (!(e instanceof StoreError) || e.kind !== "network" || drops >= retries) throw e;
        drops++;
        // a dropped connection: wait a little, then continue from the last stored chunk
        await new Promise((r) => setTimeout(r, 250 * 2 ** drops));
        rec = await this.file(url);
      }
    }
  }

  async _fetchInto(url, rec, token, expect, onProgress, cancelled) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    const resume = rec && rec.have > 0;
    if (resume) headers.Range = `bytes=${rec.have}-`;
    const ctl = new AbortController();
    let resp;
    try {
      resp = await this.fetch(url, { headers, signal: ctl.signal, cache: "no-store" });
    } catch (e) {
      throw new StoreError("network", `Could not reach ${hostOf(url)} to download ${baseName(url)} ` +
        `(${e && e.message || e}). Check the connection and Generate again; what was downloaded is kept.`);
    }
    if (!resp.ok) throw httpError(resp, url);
    const etag = cleanEtag(resp.headers.get("x-linked-etag") || resp.headers.get("etag"));
    let start = 0, size = null;
    if (resp.status === 206) {
      const m = /bytes (\d+)-(\d+)\/(\d+|\*)/.exec(resp.headers.get("content-range") || "");
      if (!m) throw new StoreError("http", `${baseName(url)}: the server sent a partial response without a usable Content-Range`);
      start = +m[1];
      if (m[3] !== "*") size = +m[3];
    } else {
      const len = resp.headers.get("content-length");
      if (len != null && !resp.headers.get("content-encoding")) size = +len;
    }
    const linked = resp.headers.get("x-linked-size");
    if (size == null && linked) size = +linked;
    if (size == null && expect.size != null) size = expect.size;
    // Continue a partial copy only if the server resumed exactly where it stopped and the file is
    // the same; a 200 means it ignored the Range (take the whole body); anything else: start over.
    let fresh = !resume;
    if (resume) {
      const changed = (rec.etag && etag && rec.etag !== etag) || (rec.size != null && size != null && rec.size !== size);
      if (resp.status === 200) fresh = true;
      else if (start !== rec.have || changed) {
        ctl.abort();
        await this.deleteFile(url);
        return this._fetchInto(url, null, token, expect, onProgress, cancelled);
      }
    } else if (start !== 0) {
      ctl.abort();
      throw new StoreError("http", `${baseName(url)}: the server answered a plain request with bytes from ${start}`);
    }
    if (fresh) {
      if (rec) await this.deleteFile(url);
      rec = { key: url, size, have: 0, chunk: this.chunk, etag, sha256: null, done: false, verified: false };
    }
    rec.size = size;
    rec.etag = etag || rec.etag;
    rec.sha256 = expect.sha256 || (/^[0-9a-f]{64}$/.test(rec.etag || "") ? rec.etag : null);
    rec.updated = Date.now();
    if (expect.size != null && size != null && expect.size !== size) {
      ctl.abort();
      throw new StoreError("corrupt", `${baseName(url)} is ${size} bytes on the server but its listing says ${expect.size}`);
    }
    await this._putRec(rec);

    const reader = resp.body.getReader();
    const buf = new Uint8Array(rec.chunk);
    let fill = 0;
    let idx = rec.have / rec.chunk;
    onProgress(rec.have, size);
    try {
      for (;;) {
        if (cancelled()) { ctl.abort(); throw new StoreError("cancelled", "Download cancelled; what was downloaded is kept."); }
        let r;
        try {
          r = await reader.read();
        } catch (e) {
          throw new StoreError("network", `The download of ${baseName(url)} was cut off after ` +
            `${fmtBytes(rec.have + fill)} (${e && e.message || e}). Generate again to resume it.`);
        }
        if (r.done) break;
        let v = r.value;
        while (v.length) {
          const take = Math.min(v.length, buf.length - fill);
          buf.set(v.subarray(0, take), fill);
          fill += take;
          v = v.subarray(take);
          if (size != null && rec.have + fill > size) {
            ctl.abort();
            await this.deleteFile(url);
            throw new StoreError("corrupt", `${baseName(url)}: the server sent more than the announced ${size} bytes; nothing was kept`);
          }
          if (fill === buf.length) {
            rec.have += fill;
            await this._putChunk(rec, idx++, buf.slice());
            fill = 0;
          }
        }
        onProgress(rec.have + fill, size);
      }
    } finally {
      try { reader.releaseLock(); } catch (_) { /* already released */ }
    }
    if (fill) {
      rec.have += fill;
      await this._putChunk(rec, idx++, buf.slice(0, fill));
    }
    if (size == null) rec.size = size = rec.have;
    if (rec.have !== size) {
      // the body ended early without an error: treat as a drop, keep the whole chunks
      throw new StoreError("network", `The download of ${baseName(url)} ended after ${fmtBytes(rec.have)} of ` +
        `${fmtBytes(size)}. Generate again to resume it.`);
    }
    if (rec.sha256) {
      const got = await this.hash(url, rec);
      if (got !== rec.sha256) {
        await this.deleteFile(url);
        throw new StoreError("corrupt", `${baseName(url)} arrived corrupted (sha256 ${got.slice(0, 12)}... instead ` +
          `of ${rec.sha256.slice(0, 12)}...). It was deleted; Generate again to download it afresh.`);
      }
      rec.verified = true;
    }
    rec.done = true;
    rec.updated = Date.now();
    await this._putRec(rec);
    onProgress(rec.have, size);
    return rec;
  }

  // sha256 of a stored file, reading its chunks in order.
  async hash(url, rec) {
    rec = rec || await this.file(url);
    const h = new Sha256();
    const n = Math.ceil(rec.have / rec.chunk);
    for (let i = 0; i < n; i += 8) {
      const range = this.keyRange.bound([url, i], [url, Math.min(n, i + 8) - 1]);
      const rows = await req(this.db.transaction("chunks").objectStore("chunks").getAll(range));
      for (const row of rows) h.update(new Uint8Array(row.data));
    }
    return h.hex();
  }

  async _rec(url) {
    let rec = this.recs.get(url);
    if (!rec) {
      rec = await this.file(url);
      if (!rec || !rec.done) throw new StoreError("storage", `${baseName(url)} is not in the browser's storage`);
      this.recs.set(url, rec);
    }
    return rec;
  }

  // `length` bytes of `url` from `offset`, gathered from the stored chunks.
  async read(url, offset, length) {
    const rec = await this._rec(url);
    if (offset < 0 || length < 0 || offset + length > rec.size) {
      throw new StoreError("storage", `read of ${length} bytes at ${offset} is outside ${baseName(url)} (${rec.size} bytes)`);
    }
    const out = new Uint8Array(length);
    if (!length) return out;
    const first = Math.floor(offset / rec.chunk), last = Math.floor((offset + length - 1) / rec.chunk);
    // This read's chunks are held here, not only in the cache: a read longer than the cache (an f32
    // SD 1.5 conv weight is 59 MB, CLIP's token embedding 152 MB) evicts its own first chunks.
    const have = new Map();
    const missing = [];
    for (let i = first; i <= last; i++) {
      const c = this.cache.get(`${url}#${i}`);
      if (c) have.set(i, c); else missing.push(i);
    }
    if (missing.length) {
      const lo = missing[0], hi = missing[missing.length - 1];
      const rows = await req(this.db.transaction("chunks").objectStore("chunks").getAll(this.keyRange.bound([url, lo], [url, hi])));
      this.stats.chunkLoads += rows.length;
      for (const row of rows) {
        const data = new Uint8Array(row.data);
        have.set(row.i, data);
        this._remember(`${url}#${row.i}`, data);
      }
    }
    let pos = 0;
    for (let i = first; i <= last; i++) {
      const key = `${url}#${i}`;
      const c = have.get(i);
      if (!c) throw new StoreError("storage", `chunk ${i} of ${baseName(url)} is missing from the browser's storage; delete the model and download it again`);
      if (this.cache.delete(key)) this.cache.set(key, c);  // most recently used last
      const from = i === first ? offset - i * rec.chunk : 0;
      const to = Math.min(c.length, offset + length - i * rec.chunk);
      out.set(c.subarray(from, to), pos);
      pos += to - from;
    }
    this.stats.reads++;
    this.stats.bytesRead += length;
    return out;
  }

  _remember(key, data) {
    if (this.cache.has(key)) return;
    this.cache.set(key, data);
    this.cacheBytes += data.length;
    for (const [k, v] of this.cache) {
      if (this.cacheBytes <= this.cacheMax) break;
      this.cache.delete(k);
      this.cacheBytes -= v.length;
    }
  }

  async readText(url) {
    const rec = await this._rec(url);
    return new TextDecoder().decode(await this.read(url, 0, rec.size));
  }
}

export function baseName(url) { return decodeURIComponent(url.split("?")[0].split("/resolve/").pop().replace(/^[^/]+\//, "")); }
function hostOf(url) { try { return new URL(url).host; } catch (_) { return url; } }
function cleanEtag(e) { return e ? e.replace(/^W\//, "").replace(/"/g, "") : null; }

// A failed HTTP response -> StoreError with words for a person.
export function httpError(resp, url) {
  const code = resp.headers.get("x-error-code") || "";
  const file = baseName(url);
  const repo = (url.split("/resolve/")[0].match(/[^/]+\/[^/]+$/) || [""])[0];
  if (resp.status === 401 || resp.status === 403) {
    if (code === "RepoNotFound" || code === "RepositoryNotFound") {
      return new StoreError("notfound", `The model ${repo} was not found on the Hub (or it is private: then paste a token with access).`, { status: resp.status, repo });
    }
    return new StoreError("auth", `${repo} needs a Hugging Face token (it is gated or private). Accept its licence on its ` +
      `Hub page, create a read token at https://huggingface.co/settings/tokens, paste it in "HF token" and Generate again.` +
      (resp.status === 403 ? " (The Hub refused the token you gave: check that it has read access and that you accepted the licence.)" : ""),
    { status: resp.status, repo });
  }
  if (resp.status === 404) {
    if (code === "EntryNotFound") return new StoreError("notfound", `${repo} has no file ${file}.`, { status: 404, file, repo, entry: true });
    if (code === "RepoNotFound" || code === "RepositoryNotFound") {
      return new StoreError("notfound", `The model ${repo} was not found (HTTP 404). Check the model id (owner/name).`, { status: 404, repo, code });
    }
    return new StoreError("notfound", `Not found: ${repo}/${file} (HTTP 404). Check the model id.`, { status: 404, file, repo, code });
  }
  if (resp.status === 416) return new StoreError("network", `${file}: the server refused to resume (HTTP 416)`, { status: 416 });
  if (resp.status >= 500 || resp.status === 429) {
    return new StoreError("network", `The Hub answered HTTP ${resp.status} for ${file}; try again in a minute.`, { status: resp.status });
  }
  return new StoreError("http", `Downloading ${file} failed: HTTP ${resp.status} ${resp.statusText}`, { status: resp.status });
}
