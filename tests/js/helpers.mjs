// What the Node tests of web/hub.js and web/store.js share: a fresh fake IndexedDB per store, a Hub
// served through a `fetch` function (the Hub's URL layout, Range, HEAD, its error headers, faults and a
// request log), and the real Python planner (sdweb.browser.plan_json, one child process per test file),
// so hub.js is tested against the decisions the page really gets.

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { IDBFactory, IDBKeyRange } from "fake-indexeddb";
import { ChunkStore } from "../../web/store.js";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const ENDPOINT = "https://hub.test";

export const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

// Deterministic bytes (a xorshift stream): `n` of them for `seed`.
export function bytes(n, seed = 1) {
  const out = new Uint8Array(n);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = x & 255;
  }
  return out;
}

// A store over its own empty fake IndexedDB; `factory` shares one between stores (a reload).
export async function openStore({ chunkBytes = 1000, factory = new IDBFactory(), fetch } = {}) {
  const store = await ChunkStore.open({ chunkBytes, indexedDB: factory, IDBKeyRange, fetch });
  return { store, factory };
}

// A Hub holding repos {repo: {path: Uint8Array | string}}, at `endpoint` (default ENDPOINT).
// fetch(url, opts) answers like huggingface.co:
//   GET|HEAD {endpoint}/{repo}/resolve/{rev}/{path}   the file (206 for `Range: bytes=N-` or `bytes=N-M`,
//                                                     416 with `Content-Range: bytes */size` past its end); .safetensors
//                                                     files carry X-Linked-Size and X-Linked-Etag: "<sha256>"
//   GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true   the listing (unless `listing` is false)
//   404 with X-Error-Code RepoNotFound / EntryNotFound; a `gated` repo answers 401 without
//   `Authorization: Bearer <token>`, 403 with another token.
// Faults: cut(path, after) ends the next body of `path` with a network error after `after` bytes of the
// file; ignoreRange makes every answer a 200 with the whole file; corrupt(path) flips one byte served.
// `log`: {method, path, range, auth} per request ("path" is the repo path, or "listing").
export class FakeHub {
  constructor(repos, { listing = true, gated = [], token = "hf_right", endpoint = ENDPOINT } = {}) {
    this.endpoint = endpoint;
    this.repos = {};
    for (const [repo, files] of Object.entries(repos)) {
      this.repos[repo] = Object.fromEntries(Object.entries(files).map(([p, v]) =>
        [p, typeof v === "string" ? new TextEncoder().encode(v) : v]));
    }
    this.listing = listing;
    this.gated = new Set(gated);
    this.token = token;
    this.log = [];
    this.cuts = new Map();
    this.corrupted = new Set();
    this.ignoreRange = false;
    this.fetch = (url, opts = {}) => this.answer(String(url), opts);
  }

  cut(path, after) { this.cuts.set(path, after); }
  corrupt(path) { this.corrupted.add(path); }
  requests(method) { return this.log.filter((r) => !method || r.method === method); }

  async answer(url, opts) {
    const method = opts.method || "GET";
    const headers = new Headers(opts.headers || {});
    const auth = headers.get("authorization");
    const u = new URL(url);
    assert(u.origin === this.endpoint, `request to ${u.origin}`);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(u.pathname);
    const file = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(u.pathname);
    const repoId = api ? api[1] : file ? file[1] : null;
    const path = api ? "listing" : file ? file[3].split("/").map(decodeURIComponent).join("/") : u.pathname;
    this.log.push({ method, path, repo: repoId, range: headers.get("range"), auth });
    const repo = this.repos[repoId];
    if (!repo) return error(404, "RepoNotFound");
    if (api) {
      if (!this.listing) return error(404, "RepoNotFound");
      const siblings = Object.entries(repo).map(([p, data]) => p.endsWith(".safetensors")
        ? { rfilename: p, size: 134, lfs: { size: data.length, sha256: sha256(data) } } : { rfilename: p, size: data.length });
      return new Response(JSON.stringify({ siblings }), { headers: { "content-type": "application/json" } });
    }
    if (this.gated.has(repoId) && auth !== `Bearer ${this.token}`) return error(auth ? 403 : 401, "GatedRepo");
    let data = repo[path];
    if (!data) return error(404, "EntryNotFound");
    const h = { "content-length": String(data.length) };
    if (path.endsWith(".safetensors")) Object.assign(h, { "x-linked-size": String(data.length), "x-linked-etag": `"${sha256(data)}"` });
    if (method === "HEAD") return new Response(null, { status: 200, headers: h });
    if (this.corrupted.has(path)) {
      data = data.slice();
      data[data.length >> 1] ^= 0xff;
    }
    const range = /^bytes=(\d+)-(\d*)$/.exec(headers.get("range") || "");
    let start = 0, end = data.length, status = 200;
    if (range && !this.ignoreRange) {
      start = +range[1];
      if (start >= data.length) return new Response(null, { status: 416, headers: { "content-range": `bytes */${data.length}` } });
      if (range[2]) end = Math.min(end, +range[2] + 1);
      status = 206;
      Object.assign(h, { "content-range": `bytes ${start}-${end - 1}/${data.length}`, "content-length": String(end - start) });
    }
    const after = this.cuts.get(path);
    this.cuts.delete(path);
    const body = data.subarray(start, after == null ? end : Math.max(start, Math.min(end, after)));
    let at = 0;
    const stream = new ReadableStream({  // pieces of 700 bytes, then the end or a dropped connection
      pull(c) {
        if (at < body.length) {
          c.enqueue(body.slice(at, at + 700));
          at += 700;
        } else if (after != null) c.error(new TypeError("network error: connection reset"));
        else c.close();
      },
    });
    return new Response(stream, { status, headers: h });
  }
}

function error(status, code) {
  return new Response(JSON.stringify({ error: code }), { status, statusText: code, headers: { "x-error-code": code } });
}

function assert(ok, msg) {
  if (!ok) throw new Error(msg);
}

// sdweb.browser.plan_json in a Python child process, one JSON line in, one out: the `plan` callback
// hub.js gets in the worker. `close()` when done.
export function pythonPlanner() {
  const child = spawn(process.env.PYTHON || "python3", ["-c", [
    "import sys",
    "from sdweb.browser import plan_json",
    "for line in sys.stdin:",
    "    print(plan_json(line), flush=True)",
  ].join("\n")], { env: { ...process.env, PYTHONPATH: `${ROOT}py` }, stdio: ["pipe", "pipe", "inherit"] });
  const waiting = [];
  createInterface({ input: child.stdout }).on("line", (line) => waiting.shift()(JSON.parse(line)));
  const plan = (known) => {
    plan.calls += 1;
    return new Promise((resolve) => {
      waiting.push(resolve);
      child.stdin.write(JSON.stringify(known) + "\n");
    });
  };
  plan.calls = 0;
  plan.close = () => child.stdin.end();
  return plan;
}
