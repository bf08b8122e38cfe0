// Getting a Hub repo's files into the store. This file does the HTTP; what to fetch is Python's
// decision (sdweb.layout, through the worker's `plan` callback): which files a model needs, which
// weight variant, which shards, and whether the repo is a model sdweb runs at all.
//
//   planModel(...)     -> {key, repo, variant, files: [{path, url, size, sha256, kind: "text"|"weights"}], notes}
//                         with every "text" file (model_index.json, configs, tokenizer, shard indexes)
//                         already in the store, so the settings can be checked before a weight comes
//   fetchModel(...)    downloads every planned file (resuming), reporting bytes, rate and ETA
//
// Files come from {endpoint}/{repo}/resolve/{revision}/{path}, as huggingface_hub fetches them, with
// `Authorization: Bearer` only when a token was typed and `auth` (store.js authFor) lets it go to the
// endpoint: https://huggingface.co, or an endpoint the user confirmed in the page. A model whose plan
// is complete in the store is used without touching the network. `fetch` and `storage`
// (navigator.storage) are the browser's unless handed others (the Node tests).

import { PRIVATE_WINDOW, StoreError, authHeaders, httpError, fmtBytes } from "./store.js";

const globalFetch = (...a) => globalThis.fetch(...a);

export function modelKey(endpoint, repo, revision, variant) {
  return `${endpoint}|${repo}|${revision}|${variant || "plain"}`;
}

export function fileUrl(endpoint, repo, revision, path) {
  return `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${path.split("/").map(encodeURIComponent).join("/")}`;
}

// The Hub's file listing with sizes and LFS sha256, when the endpoint has the API (huggingface.co
// does; a plain mirror or the dev server may not): path -> {size, sha256}, or null.
async function listing(fetch, endpoint, repo, revision, auth) {
  try {
    const u = `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`;
    const r = await fetch(u, { headers: authHeaders(u, auth) });
    if (!r.ok) return null;
    const j = await r.json();
    if (!Array.isArray(j.siblings)) return null;
    const m = new Map();
    for (const s of j.siblings) m.set(s.rfilename, { size: s.lfs ? s.lfs.size : s.size, sha256: s.lfs ? s.lfs.sha256 : null });
    return m;
  } catch (_) {
    return null;
  }
}

// HEAD a file: {size, sha256} if it exists, null on 404; a StoreError for auth and other failures.
async function probe(fetch, url, auth) {
  let r;
  try {
    r = await fetch(url, { method: "HEAD", headers: authHeaders(url, auth), cache: "no-store" });
  } catch (e) {
    throw new StoreError("network", `Could not reach the Hub at ${new URL(url).origin} (${e && e.message || e}).`);
  }
  if (r.status === 404) return null;
  if (!r.ok) throw httpError(r, url, auth);
  const size = +(r.headers.get("x-linked-size") || r.headers.get("content-length"));
  const etag = (r.headers.get("x-linked-etag") || r.headers.get("etag") || "").replace(/^W\//, "").replace(/"/g, "");
  return { size: isFinite(size) ? size : null, sha256: /^[0-9a-f]{64}$/.test(etag) ? etag : null };
}

// Work out the files of `repo` to fetch: ask `plan` (Python: sdweb.browser.plan_json) what it needs
// to know, look that up, and ask again until it answers with the files. `plan(known)` takes {repo,
// variant, listed: [path] | null, present: [path], absent: [path], texts: {path: text}} and returns
// {need: [{path, kind, read}]}, {files: [{path, kind}], notes} or {error, message, field}.
export async function planModel({ store, endpoint, repo, revision = "main", variant = null, auth = null, plan,
  fetch = globalFetch, cancelled = () => false, onStatus = () => {} }) {
  const key = modelKey(endpoint, repo, revision, variant);
  const have = await store.model(key);
  if (have && have.complete) {
    const ok = await Promise.all(have.files.map((f) => store.file(f.url).then((r) => r && r.done)));
    if (ok.every(Boolean)) return have;
  }
  const url = (p) => fileUrl(endpoint, repo, revision, p);
  onStatus(`Looking up ${repo}…`);
  const list = await listing(fetch, endpoint, repo, revision, auth);
  const known = { repo, variant, listed: list ? [...list.keys()] : null, present: [], absent: [], texts: {} };
  const found = new Map(list || []);  // path -> {size, sha256}

  // A small file goes into the store as soon as it is asked about: it is needed anyway.
  const text = async (path, read) => {
    try {
      await store.download(url(path), { auth, cancelled, expect: found.get(path) || {} });
    } catch (e) {
      // no such file (the Hub says EntryNotFound, a plain server just 404): Python says what that means
      if (e.kind === "notfound" && e.status === 404 && !e.code) return known.absent.push(path);
      throw e;
    }
    if (!known.present.includes(path)) known.present.push(path);
    if (read) known.texts[path] = await store.readText(url(path));
  };
  const weights = async (path) => {
    const info = list ? list.get(path) || null : await probe(fetch, url(path), auth);
    if (!info) return known.absent.push(path);
    found.set(path, info);
    known.present.push(path);
  };

  for (;;) {
    if (cancelled()) throw new StoreError("cancelled", "Cancelled.");
    const step = await plan(known);
    if (step.error) {
      throw new StoreError(step.error === "ConfigError" ? "input" : "model", step.message, { field: step.field });
    }
    if (step.files) {
      onStatus(`Fetching the configs of ${repo}…`);
      const files = [];
      for (const f of step.files) {
        if (f.kind === "text") {
          await text(f.path, false);
          files.push({ path: f.path, url: url(f.path), kind: "text", size: await store.stored(url(f.path)) });
        } else {
          const info = found.get(f.path) || {};
          files.push({ path: f.path, url: url(f.path), kind: "weights", size: info.size, sha256: info.sha256 });
        }
      }
      const rec = { key, endpoint, repo, revision, variant, files, notes: step.notes, complete: false, used: Date.now(),
        bytes: files.reduce((a, f) => a + (f.size || 0), 0) };
      await store.putModel(rec);
      return rec;
    }
    onStatus(`Finding the files of ${repo}…`);
    for (const n of step.need) {
      if (cancelled()) throw new StoreError("cancelled", "Cancelled.");
      await (n.kind === "text" ? text(n.path, n.read) : weights(n.path));
    }
  }
}

// Download the plan's weights, reporting {phase: "download", file, fileLoaded, fileTotal, loaded, total,
// rate, eta} and, while a whole file's sha256 is checked, {phase: "verify", file, hashed, fileTotal}.
export async function fetchModel({ store, plan, auth = null, cancelled = () => false, onProgress = () => {},
  storage = globalThis.navigator && globalThis.navigator.storage }) {
  const todo = [];
  let total = 0, already = 0;
  for (const f of plan.files) {
    const have = await store.stored(f.url);
    const rec = await store.file(f.url);
    total += f.size || 0;
    if (rec && rec.done) { already += f.size || rec.size; continue; }
    already += have;
    todo.push(f);
  }
  if (todo.length && storage) {
    const need = total - already;
    if (storage.estimate) {
      const est = await storage.estimate();
      const free = (est.quota || 0) - (est.usage || 0);
      onProgress({ phase: "estimate", need, free, total });
      if (est.quota && need > free) {
        throw new StoreError("quota", `${plan.repo} needs ${fmtBytes(need)} more storage but the browser allows this ` +
          `page only ${fmtBytes(free)}. Delete cached models below or free disk space, then Generate again. ${PRIVATE_WINDOW}`);
      }
    }
    if (storage.persist) storage.persist().catch(() => {});
  }
  const t0 = performance.now();
  let doneBytes = already;
  let last = 0;
  for (const f of todo) {
    const base = doneBytes - (await store.stored(f.url));
    const start = await store.stored(f.url);
    await store.download(f.url, {
      auth, cancelled, expect: { size: f.size, sha256: f.sha256 },
      onProgress: (have, size) => {
        const now = performance.now();
        if (now - last < 100 && have !== size) return;
        last = now;
        const loaded = base + have;
        const rate = (loaded - already) / Math.max(1e-3, (now - t0) / 1000);
        onProgress({ phase: "download", file: f.path, fileLoaded: have, fileTotal: size, loaded, total,
          rate, eta: rate > 0 ? (total - loaded) / rate : null, resumedFrom: start });
      },
      onVerify: (hashed, size) => onProgress({ phase: "verify", file: f.path, hashed, fileTotal: size }),
    });
    doneBytes = base + (await store.stored(f.url));
  }
  plan.complete = true;
  plan.used = Date.now();
  plan.bytes = total;
  try {
    await store.putModel(plan);
  } catch (e) {
    // with nothing new stored, only the model's last-used time was to change: a full disk must not
    // keep a stored model from running
    if (todo.length || e.kind !== "quota") throw e;
  }
  onProgress({ phase: "done", loaded: total, total, downloaded: todo.length });
  return plan;
}
