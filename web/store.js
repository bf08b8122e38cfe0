// ChunkStore, the browser's file store: Hub files streamed into IndexedDB in fixed-size chunks, resumed with
// HTTP Range after a drop or a reload, verified (size; sha256 where the Hub gives it), and read back
// by byte range, so the safetensors reader fetches a header and then one tensor at a time and a
// 1.7 GB UNet never exists as one ArrayBuffer.
//
// IndexedDB "sdweb-weights":
//   files   {key: url, size, have, sha256, etag, chunk, done, verified, updated, hashed, hashState}
//           `have` bytes are stored, always a whole number of chunks until the file is done;
//           `hashed` of them went through the sha256 whose state `hashState` is (hash-wasm's save()),
//           so a verification cut short by a closed page or a Cancel resumes where it stopped
//   chunks  {key: url, i: chunk index, data: ArrayBuffer, xxh: xxhash64 of data (hex)}   primary key [key, i]
//   models  {key, endpoint, repo, revision, variant, files: [{path, url, size, kind}], bytes, complete, used}
// A file's key is its resolve URL (never with a token in it). Every chunk read back is checked
// (its length, and its xxhash64 against the one taken as it arrived): a short or damaged chunk is
// fetched again from the Hub with a Range request, never used. Used by the worker (downloads,
// reads) and by the page (cache panel: list, delete). (Python's weights.WeightStore is another
// thing: a component's tensors, read through the byte sources the worker makes over this store.)
// IndexedDB, IDBKeyRange and fetch are the browser's unless `open` is handed others (the Node tests'
// fake-indexeddb and fake Hub). The hashes are hash-wasm's (WebAssembly), vendored by
// scripts/vendor_pyodide.py into web/vendor/hash-wasm/.
//
// The Hugging Face token: `auth` is {token, origins} (authFor); it goes into an Authorization header
// for a URL of one of `origins` and nowhere else: https://huggingface.co, plus the endpoint the user
// confirmed in the page (a URL parameter never confirms one).

import { createSHA256, createXXHash64 } from "./vendor/hash-wasm/index.esm.min.js";

export const CHUNK = 4 << 20;  // bytes per stored chunk
const DB_NAME = "sdweb-weights";
const CACHE_CHUNKS = 16;  // recently read chunks kept in memory (64 MB of 4 MB chunks; tensors are read in file order)
const VERIFY_BATCH = 8;  // chunks read per transaction while verifying; the sha256 state is saved after each batch
export const HUB = "https://huggingface.co";

// What the token may be sent to: https://huggingface.co, and `confirmed` (an endpoint URL the user
// confirmed in the page) when given. -> {token, origins}
export function authFor(token, confirmed = null) {
  const origins = [HUB];
  if (confirmed) origins.push(new URL(confirmed).origin);
  return { token: token || null, origins };
}

const tokenGoesTo = (url, auth) => !!(auth && auth.token && auth.origins.includes(new URL(url).origin));

// The Authorization header for a request to `url`: only when `auth` allows its origin.
export function authHeaders(url, auth) {
  return tokenGoesTo(url, auth) ? { Authorization: `Bearer ${auth.token}` } : {};
}

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

export const PRIVATE_WINDOW = "A private (incognito) window keeps only a little and forgets it when the window closes, " +
  "whatever the storage estimate says: open sdweb in a normal window for models of more than a few hundred MB.";

function storageError(e, what) {
  if (e instanceof StoreError) return e;
  if (e && (e.name === "QuotaExceededError" || /quota/i.test(String(e.message)))) {
    return new StoreError("quota", `Out of storage space while saving ${what}: the browser refused to store more. ` +
      `${PRIVATE_WINDOW} In a normal window, free some space (delete a cached model below, or clear site data), ` +
      "then Generate again; what was downloaded is kept.");
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
    this.stats = { reads: 0, chunkLoads: 0, bytesRead: 0, refetched: 0 };
    this.auth = null;  // for refetching a bad chunk: the run's {token, origins} (setAuth)
    this.xxh = null;  // hash-wasm's xxhash64, made on first use
  }

  // The token policy of the run whose files are being read (a damaged chunk is fetched again with it).
  setAuth(auth) { this.auth = auth; }

  // xxhash64 of a chunk, hex: the cheap per-chunk check.
  async _sum(bytes) {
    this.xxh = this.xxh || await createXXHash64();
    return this.xxh.init().update(bytes).digest("hex");
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
    const xxh = await this._sum(bytes);  // before the transaction: IndexedDB commits one left idle
    const tx = this.db.transaction(["files", "chunks"], "readwrite");
    tx.objectStore("chunks").put({ key: rec.key, i, xxh, data: bytes.buffer.byteLength === bytes.length ? bytes.buffer : bytes.slice().buffer });
    tx.objectStore("files").put(rec);
    try { await done(tx); } catch (e) { throw storageError(e, rec.key.split("/").pop()); }
  }

  async _putRec(rec) {
    const tx = this.db.transaction("files", "readwrite");
    tx.objectStore("files").put(rec);
    try { await done(tx); } catch (e) { throw storageError(e, rec.key.split("/").pop()); }
  }

  // Download `url` into the store unless it is there already; resume a partial copy with Range.
  //   opts: auth ({token, origins}: authFor), expect {size, sha256} (from a listing),
  //         onProgress(have, size), onVerify(hashed, size), cancelled() -> bool,
  //         retries (network drops survived per file, default 4)
  // A copy whose bytes are all stored goes straight to verification (resuming a cut-short one).
  // Resolves to the done file record. Rejects with a StoreError.
  async download(url, opts = {}) {
    const { auth = null, expect = {}, onProgress = () => {}, onVerify = () => {}, cancelled = () => false,
      retries = 4 } = opts;
    let rec = await this.file(url);
    if (rec && rec.done) { this.recs.set(url, rec); return rec; }
    const job = { url, auth, expect, onProgress, onVerify, cancelled };
    let drops = 0;
    for (;;) {
      try {
        rec = rec && rec.size != null && rec.have === rec.size ? await this._verify(job, rec) : await this._fetchInto(job, rec);
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

  async _fetchInto(job, rec) {
    const { url, auth, expect, onProgress, cancelled } = job;
    const headers = authHeaders(url, auth);
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
    if (resp.status === 416 && resume) {
      // Nothing is left after `have`: the copy is whole if the server's size is `have` (a page closed
      // while it was being verified, before the size was known); otherwise the file changed: start over.
      const total = /^bytes \*\/(\d+)$/.exec(resp.headers.get("content-range") || "");
      if (total && +total[1] === rec.have && (rec.size == null || rec.size === rec.have)) {
        rec.size = rec.have;
        await this._putRec(rec);
        return this._verify(job, rec);
      }
      await this.deleteFile(url);
      return this._fetchInto(job, null);
    }
    if (!resp.ok) throw httpError(resp, url, auth);
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
        return this._fetchInto(job, null);
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
    if (size == null) {
      rec.size = size = rec.have;
      await this._putRec(rec);
    }
    if (rec.have !== size) {
      // the body ended early without an error: treat as a drop, keep the whole chunks
      throw new StoreError("network", `The download of ${baseName(url)} ended after ${fmtBytes(rec.have)} of ` +
        `${fmtBytes(size)}. Generate again to resume it.`);
    }
    onProgress(rec.have, size);
    return this._verify(job, rec);
  }

  // A whole copy -> the done record: its sha256 checked where one is known (the hash resumes from
  // the state saved with the record), then marked done. A mismatch deletes the copy.
  async _verify(job, rec) {
    const { url, expect, onVerify, cancelled } = job;
    rec.sha256 = rec.sha256 || expect.sha256 || null;
    if (rec.sha256) {
      let got;
      try {
        got = await this._sha256(rec, { resume: true, cancelled, onVerify });
      } catch (e) {
        if (e.kind === "corrupt") await this.deleteFile(url);
        throw e;
      }
      if (got !== rec.sha256) {
        await this.deleteFile(url);
        throw new StoreError("corrupt", `${baseName(url)} arrived corrupted (sha256 ${got.slice(0, 12)}... instead ` +
          `of ${rec.sha256.slice(0, 12)}...). It was deleted; Generate again to download it afresh.`);
      }
      rec.verified = true;
    }
    rec.done = true;
    rec.updated = Date.now();
    delete rec.hashState;
    delete rec.hashed;
    await this._putRec(rec);
    return rec;
  }

  // sha256 (hex) of a whole stored copy, reading its chunks in order. With `resume`, from where an
  // earlier pass stopped: the hasher's state goes into the record after every VERIFY_BATCH chunks.
  async _sha256(rec, { resume = false, cancelled = () => false, onVerify = () => {} } = {}) {
    const h = await createSHA256();
    let at = 0;
    h.init();
    if (resume && rec.hashed && rec.hashState) {
      try {
        h.load(rec.hashState);
        at = rec.hashed;
      } catch (_) {
        h.init();  // a state an older hash-wasm saved: hash from the start
      }
    }
    const n = Math.ceil(rec.size / rec.chunk);
    onVerify(at, rec.size);
    for (let i = at / rec.chunk; i < n; i += VERIFY_BATCH) {
      if (cancelled()) throw new StoreError("cancelled", "Cancelled while checking a download; the check resumes next time.");
      const last = Math.min(n, i + VERIFY_BATCH) - 1;
      const rows = await req(this.db.transaction("chunks").objectStore("chunks").getAll(this.keyRange.bound([rec.key, i], [rec.key, last])));
      for (let j = i; j <= last; j++) {
        const row = rows[j - i];
        if (!row || row.i !== j) {
          throw new StoreError("corrupt", `chunk ${j} of ${baseName(rec.key)} is missing from the browser's storage. ` +
            "The file was deleted; Generate again to download it afresh.");
        }
        h.update(new Uint8Array(row.data));
        at += row.data.byteLength;
      }
      if (resume) {
        rec.hashed = at;
        rec.hashState = h.save();
        await this._putRec(rec);
      }
      onVerify(at, rec.size);
    }
    return h.digest("hex");
  }

  // sha256 of a stored file, from its first byte: what tests and the console compare with the source.
  async hash(url) {
    return this._sha256(await this.file(url));
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
      const byIndex = new Map(rows.map((row) => [row.i, row]));
      for (const i of missing) {
        const data = await this._checked(rec, i, byIndex.get(i));
        have.set(i, data);
        this._remember(`${url}#${i}`, data);
      }
    }
    let pos = 0;
    for (let i = first; i <= last; i++) {
      const key = `${url}#${i}`;
      const c = have.get(i);
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

  // Chunk i of a done file, checked: its length, and the xxhash64 it had when it arrived (chunks
  // stored before there were sums: the length only). A short, damaged or missing chunk is fetched
  // again with a Range request and stored anew, never used.
  async _checked(rec, i, row) {
    const want = Math.min(rec.chunk, rec.size - i * rec.chunk);
    if (row && row.data.byteLength === want) {
      const data = new Uint8Array(row.data);
      if (row.xxh == null || await this._sum(data) === row.xxh) return data;
    }
    return this._refetch(rec, i, want, row ? row.xxh : null);
  }

  async _refetch(rec, i, want, xxh) {
    const url = rec.key, file = baseName(url), start = i * rec.chunk;
    const headers = { ...authHeaders(url, this.auth), Range: `bytes=${start}-${start + want - 1}` };
    let resp, data;
    try {
      resp = await this.fetch(url, { headers, cache: "no-store" });
      if (resp.status === 206) data = new Uint8Array(await resp.arrayBuffer());
    } catch (e) {
      throw new StoreError("network", `Chunk ${i} of ${file} is damaged in the browser's storage, and ${hostOf(url)} ` +
        `could not be reached to fetch it again (${e && e.message || e}). Check the connection and Generate again.`);
    }
    if (!resp.ok) throw httpError(resp, url, this.auth);
    const range = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(resp.headers.get("content-range") || "");
    const etag = cleanEtag(resp.headers.get("x-linked-etag") || resp.headers.get("etag"));
    const same = data && range && +range[1] === start && data.length === want && (range[2] === "*" || +range[2] === rec.size) &&
      !(rec.etag && etag && rec.etag !== etag);
    if (!data && resp.body) resp.body.cancel().catch(() => {});  // a 200: the whole file, which is not wanted
    if (!same || (xxh != null && await this._sum(data) !== xxh)) {
      await this.deleteFile(url);
      throw new StoreError("corrupt", `Chunk ${i} of ${file} is damaged in the browser's storage and could not be ` +
        `replaced by the same bytes from ${hostOf(url)}. The file was deleted; Generate again to download it afresh.`);
    }
    await this._putChunk(rec, i, data);
    this.stats.refetched++;
    return data;
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
// `auth`: the request's token policy; a 401/403 from an endpoint the token was kept from says so.
export function httpError(resp, url, auth = null) {
  const code = resp.headers.get("x-error-code") || "";
  const file = baseName(url);
  const repo = (url.split("/resolve/")[0].match(/[^/]+\/[^/]+$/) || [""])[0];
  if ((resp.status === 401 || resp.status === 403) && auth && auth.token && !tokenGoesTo(url, auth)) {
    return new StoreError("auth", `${hostOf(url)} asks for a token, but your Hugging Face token is sent only to ` +
      `${HUB} and to a Hub endpoint you confirm yourself. If you trust ${hostOf(url)} with it, tick "Send my token ` +
      `to this endpoint" under Advanced and Generate again.`, { status: resp.status, repo, field: "endpoint-token" });
  }
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
