// Which files of a Hub repo the page needs, and getting them into the store.
//
//   planModel(...)     -> {key, repo, variant, files: [{path, url, size, sha256, kind: "text"|"weights"}]}
//   fetchModel(...)    downloads every planned file (resuming), reporting bytes, rate and ETA
//
// Files come from {endpoint}/{repo}/resolve/{revision}/{path}, as huggingface_hub fetches them, with
// `Authorization: Bearer` only when a token was typed. A model whose plan is complete in the store is
// used without touching the network. The weight-file choice (fp16 variant, plain, sharded) and the
// "is this an SD model" check are Python's (sdweb.browser), passed in as `candidates` and `checkIndex`.

import { StoreError, httpError, fmtBytes } from "./store.js";

export const CONFIG_FILES = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
  "unet/config.json", "vae/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt"];
export const OPTIONAL_FILES = ["tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"];
export const COMPONENTS = ["text_encoder", "unet", "vae"];

export const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*$/;

export function modelKey(endpoint, repo, revision, variant) {
  return `${endpoint}|${repo}|${revision}|${variant || "plain"}`;
}

export function fileUrl(endpoint, repo, revision, path) {
  return `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${path.split("/").map(encodeURIComponent).join("/")}`;
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// The Hub's file listing with sizes and LFS sha256, when the endpoint has the API (huggingface.co
// does; a plain mirror or the dev server may not): path -> {size, sha256}, or null.
async function listing(endpoint, repo, revision, token) {
  try {
    const r = await fetch(`${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`,
      { headers: authHeaders(token) });
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
async function probe(url, token) {
  let r;
  try {
    r = await fetch(url, { method: "HEAD", headers: authHeaders(token), cache: "no-store" });
  } catch (e) {
    throw new StoreError("network", `Could not reach the Hub at ${new URL(url).origin} (${e && e.message || e}).`);
  }
  if (r.status === 404) return null;
  if (!r.ok) throw httpError(r, url);
  const size = +(r.headers.get("x-linked-size") || r.headers.get("content-length"));
  const etag = (r.headers.get("x-linked-etag") || r.headers.get("etag") || "").replace(/^W\//, "").replace(/"/g, "");
  return { size: isFinite(size) ? size : null, sha256: /^[0-9a-f]{64}$/.test(etag) ? etag : null };
}

// Work out the files of `repo` to fetch. Downloads the small files (configs, tokenizer) on the way,
// since they decide the rest; returns a plan whose weights are not downloaded yet.
export async function planModel({ store, endpoint, repo, revision = "main", variant = "fp16", token, candidates,
  checkIndex, cancelled = () => false, onStatus = () => {} }) {
  const key = modelKey(endpoint, repo, revision, variant);
  const have = await store.model(key);
  if (have && have.complete) {
    const ok = await Promise.all(have.files.map((f) => store.file(f.url).then((r) => r && r.done)));
    if (ok.every(Boolean)) return have;
  }
  const url = (p) => fileUrl(endpoint, repo, revision, p);
  onStatus(`Looking up ${repo}…`);
  const list = await listing(endpoint, repo, revision, token);
  const files = [];

  const small = async (path, optional) => {
    if (cancelled()) throw new StoreError("cancelled", "Cancelled.");
    if (list && !list.has(path)) {
      if (optional) return null;
      throw notSd(repo, path);
    }
    try {
      await store.download(url(path), { token, cancelled, expect: list ? list.get(path) : {} });
    } catch (e) {
      if (e.kind === "notfound" && e.status === 404) {
        if (path === "model_index.json") {
          if (e.entry) {
            throw new StoreError("model", `${repo} has no model_index.json, so it is not a diffusers pipeline ` +
              `(sdweb runs Stable Diffusion 1.x/2.x repos in the diffusers layout).`);
          }
          if (e.code) throw e;  // the Hub said which: no such repo
          throw new StoreError("notfound", `${repo}: not found on ${new URL(endpoint).host} (HTTP 404), or it has ` +
            `no model_index.json, so it is not a diffusers model. Check the model id.`, { status: 404 });
        }
        if (optional) return null;
        throw notSd(repo, path);
      }
      throw e;
    }
    files.push({ path, url: url(path), kind: "text", size: await store.stored(url(path)) });
    return store.readText(url(path));
  };

  const index = await small("model_index.json", false);
  checkIndex(index);  // throws a StoreError("model") when this is not an SD 1.x/2.x pipeline
  onStatus(`Fetching the configs of ${repo}…`);
  for (const p of CONFIG_FILES.slice(1)) await small(p, false);
  for (const p of OPTIONAL_FILES) await small(p, true);

  onStatus(`Finding the weight files of ${repo}…`);
  for (const comp of COMPONENTS) {
    let found = null;
    for (const path of candidates(comp, variant)) {
      if (cancelled()) throw new StoreError("cancelled", "Cancelled.");
      let info;
      if (list) info = list.get(path) || null;
      else info = await probe(url(path), token);
      if (!info) continue;
      if (path.endsWith(".json")) {
        const text = await small(path, false);
        let wmap;
        try { wmap = JSON.parse(text).weight_map; } catch (_) { wmap = null; }
        if (!wmap || typeof wmap !== "object") throw new StoreError("model", `${repo}/${path} has no weight_map`);
        found = [];
        for (const shard of [...new Set(Object.values(wmap))].sort()) {
          const sp = `${comp}/${shard}`;
          const si = list ? list.get(sp) : await probe(url(sp), token);
          if (!si) throw new StoreError("model", `${repo}: ${path} lists the shard ${shard}, which the repo lacks`);
          found.push({ path: sp, url: url(sp), kind: "weights", size: si.size, sha256: si.sha256 });
        }
      } else {
        found = [{ path, url: url(path), kind: "weights", size: info.size, sha256: info.sha256 }];
      }
      break;
    }
    if (!found) {
      throw new StoreError("model", `${repo} has no .safetensors weights for its ${comp} (sdweb reads only ` +
        `.safetensors, not pickled .bin files): it cannot run here.`);
    }
    files.push(...found);
  }
  const rec = { key, endpoint, repo, revision, variant, files, complete: false, used: Date.now(),
    bytes: files.reduce((a, f) => a + (f.size || 0), 0) };
  await store.putModel(rec);
  return rec;
}

function notSd(repo, path) {
  return new StoreError("model", `${repo} is not a diffusers Stable Diffusion model: it has no ${path}.`);
}

// Download the plan's weights, reporting {file, fileLoaded, fileTotal, loaded, total, rate, eta}.
export async function fetchModel({ store, plan, token, cancelled = () => false, onProgress = () => {} }) {
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
  if (todo.length) {
    const need = total - already;
    if (navigator.storage && navigator.storage.estimate) {
      const est = await navigator.storage.estimate();
      const free = (est.quota || 0) - (est.usage || 0);
      onProgress({ phase: "estimate", need, free, total });
      if (est.quota && need > free) {
        throw new StoreError("quota", `${plan.repo} needs ${fmtBytes(need)} more storage but the browser allows this ` +
          `page only ${fmtBytes(free)}. Delete cached models below or free disk space, then Generate again.`);
      }
    }
    if (navigator.storage && navigator.storage.persist) navigator.storage.persist().catch(() => {});
  }
  const t0 = performance.now();
  let doneBytes = already;
  let last = 0;
  for (const f of todo) {
    const base = doneBytes - (await store.stored(f.url));
    const start = await store.stored(f.url);
    await store.download(f.url, {
      token, cancelled, expect: { size: f.size, sha256: f.sha256 },
      onProgress: (have, size) => {
        const now = performance.now();
        if (now - last < 100 && have !== size) return;
        last = now;
        const loaded = base + have;
        const rate = (loaded - already) / Math.max(1e-3, (now - t0) / 1000);
        onProgress({ phase: "download", file: f.path, fileLoaded: have, fileTotal: size, loaded, total,
          rate, eta: rate > 0 ? (total - loaded) / rate : null, resumedFrom: start });
      },
    });
    doneBytes = base + (await store.stored(f.url));
  }
  plan.complete = true;
  plan.used = Date.now();
  plan.bytes = total;
  await store.putModel(plan);
  onProgress({ phase: "done", loaded: total, total, downloaded: todo.length });
  return plan;
}
