// web/store.js (ChunkStore) under Node: fake-indexeddb for IndexedDB, a fake Hub for fetch. The
// references are the source bytes themselves and node:crypto's sha256.

import { test } from "node:test";
import assert from "node:assert/strict";
import { ENDPOINT, FakeHub, bytes, openStore, sha256 } from "./helpers.mjs";
import { CHUNK, StoreError, httpError } from "../../web/store.js";

const url = (path, repo = "o/n") => `${ENDPOINT}/${repo}/resolve/main/${path}`;
const W = "unet/diffusion_pytorch_model.safetensors";

async function chunkRows(store, key) {
  return new Promise((ok, no) => {
    const r = store.db.transaction("chunks").objectStore("chunks").getAll(store.keyRange.bound([key, 0], [key, Infinity]));
    r.onsuccess = () => ok(r.result);
    r.onerror = () => no(r.error);
  });
}

test("a file is stored in chunks and read back byte for byte, across chunk boundaries", async () => {
  const data = bytes(10 * 1000 + 123, 7);
  const hub = new FakeHub({ "o/n": { [W]: data } });
  const { store } = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  const progress = [];
  const rec = await store.download(url(W), { expect: { size: data.length, sha256: sha256(data) },
    onProgress: (have, size) => progress.push([have, size]) });
  assert.equal(rec.done, true);
  assert.equal(rec.verified, true);
  assert.equal(rec.size, data.length);
  const rows = await chunkRows(store, url(W));
  assert.deepEqual(rows.map((r) => r.data.byteLength), [...Array(10).fill(1000), 123]);
  assert.deepEqual(progress.at(-1), [data.length, data.length]);
  assert.deepEqual(await store.read(url(W), 0, data.length), data);
  for (const [o, n] of [[0, 0], [999, 2], [1000, 1000], [1500, 3000], [9999, 124], [10122, 1], [17, 9000]]) {
    assert.deepEqual(await store.read(url(W), o, n), data.subarray(o, o + n), `read(${o}, ${n})`);
  }
  await assert.rejects(store.read(url(W), data.length - 1, 2), (e) => e instanceof StoreError && e.kind === "storage");
  // a read longer than the in-memory chunk cache still holds its own chunks
  store.cacheMax = 2000;
  store.cache.clear();
  store.cacheBytes = 0;
  assert.deepEqual(await store.read(url(W), 100, 9000), data.subarray(100, 9100));
  assert.equal(CHUNK, 4 << 20);
});

test("a cut connection resumes with Range from the last whole chunk, in the same download", async () => {
  const data = bytes(5000, 3);
  const hub = new FakeHub({ "o/n": { [W]: data } });
  hub.cut(W, 2600);
  const { store } = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  await store.download(url(W), { expect: { size: data.length, sha256: sha256(data) } });
  assert.deepEqual(hub.requests("GET").map((r) => r.range), [null, "bytes=2000-"]);
  assert.deepEqual(await store.read(url(W), 0, data.length), data);
});

test("a partial file left by a closed page is resumed by the next store over the same database", async () => {
  const data = bytes(4500, 4);
  const hub = new FakeHub({ "o/n": { [W]: data } });
  hub.cut(W, 3100);
  const first = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  await assert.rejects(first.store.download(url(W), { retries: 0 }), (e) => e.kind === "network" && /Generate again/.test(e.message));
  assert.equal(await first.store.stored(url(W)), 3000);
  const again = await openStore({ chunkBytes: 1000, factory: first.factory, fetch: hub.fetch });
  await again.store.download(url(W), { expect: { sha256: sha256(data) } });
  assert.deepEqual(hub.requests("GET").map((r) => r.range), [null, "bytes=3000-"]);
  assert.deepEqual(await again.store.read(url(W), 0, data.length), data);
  // a server that ignores Range gets the whole file taken afresh, not appended
  const other = "vae/diffusion_pytorch_model.safetensors";
  hub.repos["o/n"][other] = bytes(2500, 5);
  hub.cut(other, 1200);
  await assert.rejects(again.store.download(url(other), { retries: 0 }));
  hub.ignoreRange = true;
  await again.store.download(url(other), { expect: { sha256: sha256(hub.repos["o/n"][other]) } });
  assert.deepEqual(await again.store.read(url(other), 0, 2500), hub.repos["o/n"][other]);
});

test("a corrupted download fails its sha256 and nothing of it is kept", async () => {
  const data = bytes(3000, 9);
  const hub = new FakeHub({ "o/n": { [W]: data } });
  hub.corrupt(W);
  const { store } = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  await assert.rejects(store.download(url(W), { expect: { size: data.length, sha256: sha256(data) } }),
    (e) => e.kind === "corrupt" && /arrived corrupted/.test(e.message));
  assert.equal(await store.file(url(W)), undefined);
  assert.deepEqual(await chunkRows(store, url(W)), []);
  hub.corrupted.clear();
  await store.download(url(W), { expect: { size: data.length, sha256: sha256(data) } });
  assert.equal(await store.hash(url(W)), sha256(data));
  // a size the listing disagrees with is refused before anything is stored
  const other = "vae/diffusion_pytorch_model.safetensors";
  hub.repos["o/n"][other] = bytes(100, 1);
  await assert.rejects(store.download(url(other), { expect: { size: 99 } }), (e) => e.kind === "corrupt");
});

test("deleting a model keeps the files another stored model uses", async () => {
  const shared = "tokenizer/vocab.json";
  const hub = new FakeHub({ "o/a": { [W]: bytes(1500, 1), [shared]: "{}" }, "o/b": { [shared]: "{}" } });
  const { store } = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  const files = (repo, paths) => paths.map((p) => ({ path: p, url: url(p, repo) }));
  await store.download(url(W, "o/a"));
  await store.download(url(shared, "o/a"));
  // two models listing the same file (same URL), as two variants of one repo do
  await store.putModel({ key: "a", repo: "o/a", files: files("o/a", [W, shared]) });
  await store.putModel({ key: "a2", repo: "o/a", files: files("o/a", [shared]) });
  await store.read(url(W, "o/a"), 0, 10);  // in the in-memory cache too
  await store.deleteModel("a");
  assert.deepEqual((await store.models()).map((m) => m.key), ["a2"]);
  assert.equal(await store.file(url(W, "o/a")), undefined);
  assert.deepEqual(await chunkRows(store, url(W, "o/a")), []);
  assert.ok(![...store.cache.keys()].some((k) => k.startsWith(url(W, "o/a"))));
  assert.equal((await store.file(url(shared, "o/a"))).done, true);
  assert.equal(await store.readText(url(shared, "o/a")), "{}");
});

test("HTTP failures become errors a person can act on", async () => {
  const resp = (status, code) => new Response(null, { status, headers: code ? { "x-error-code": code } : {} });
  const u = url(W, "o/gated");
  assert.equal(httpError(resp(401, "GatedRepo"), u).kind, "auth");
  assert.match(httpError(resp(403, "GatedRepo"), u).message, /refused the token/);
  assert.equal(httpError(resp(401, "RepoNotFound"), u).kind, "notfound");
  const missing = httpError(resp(404, "EntryNotFound"), u);
  assert.equal(missing.kind, "notfound");
  assert.equal(missing.entry, true);
  assert.equal(httpError(resp(404, "RepoNotFound"), u).code, "RepoNotFound");
  assert.equal(httpError(resp(503), u).kind, "network");
  assert.equal(httpError(resp(418), u).kind, "http");
  const hub = new FakeHub({ "o/gated": { [W]: bytes(10) } }, { gated: ["o/gated"] });
  const { store } = await openStore({ fetch: hub.fetch });
  await assert.rejects(store.download(u), (e) => e.kind === "auth" && e.status === 401);
  await store.download(u, { token: hub.token });
  assert.deepEqual(hub.log.map((r) => r.auth), [null, `Bearer ${hub.token}`]);
});
