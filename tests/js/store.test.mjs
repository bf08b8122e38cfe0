// web/store.js (ChunkStore) under Node: fake-indexeddb for IndexedDB, a fake Hub for fetch. The
// references are the source bytes themselves and node:crypto's sha256.

import { test } from "node:test";
import assert from "node:assert/strict";
import { ENDPOINT, FakeHub, bytes, openStore, sha256 } from "./helpers.mjs";
import { CHUNK, HUB, StoreError, authFor, httpError } from "../../web/store.js";

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
  await store.download(u, { auth: authFor(hub.token, ENDPOINT) });
  assert.deepEqual(hub.log.map((r) => r.auth), [null, `Bearer ${hub.token}`]);
});

test("the token goes to https://huggingface.co, or to an endpoint the user confirmed, and nowhere else", async () => {
  const data = { [W]: bytes(10) };
  // an endpoint nobody confirmed: the token stays home, and a 401 says why instead of asking for it again
  const other = new FakeHub({ "o/gated": data }, { gated: ["o/gated"] });
  const { store } = await openStore({ fetch: other.fetch });
  await assert.rejects(store.download(url(W, "o/gated"), { auth: authFor(other.token) }),
    (e) => e.kind === "auth" && e.field === "endpoint-token" && e.message.includes(`sent only to ${HUB}`) &&
      e.message.includes("hub.test asks for a token"));
  assert.deepEqual(other.log.map((r) => r.auth), [null]);
  // the Hub itself gets it without being confirmed
  const hub = new FakeHub({ "o/gated": data }, { gated: ["o/gated"], endpoint: HUB });
  const { store: s2 } = await openStore({ fetch: hub.fetch });
  await s2.download(`${HUB}/o/gated/resolve/main/${W}`, { auth: authFor(hub.token) });
  assert.deepEqual(hub.log.map((r) => r.auth), [`Bearer ${hub.token}`]);
  // confirming one endpoint confirms its origin only
  assert.deepEqual(authFor("t", "https://mirror.example/hf/").origins, [HUB, "https://mirror.example"]);
  await assert.rejects(s2.download(`${HUB}/o/gated/resolve/main/x.safetensors`, { auth: authFor(null) }),
    (e) => e.kind === "auth" && /needs a Hugging Face token/.test(e.message));
});

// --- a copy cut short in verification, 416, and chunks checked on read ---------------------------

// A download whose sha256 check is stopped (as Cancel, or a closed page, stops it) after `batches`
// saved states; the store is left as the closed page left it.
async function killedWhileVerifying(hub, data, batches = 1) {
  const first = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  let seen = 0;
  await assert.rejects(first.store.download(url(W), { expect: { size: data.length, sha256: sha256(data) },
    onVerify: (hashed) => { if (hashed > 0) seen++; }, cancelled: () => seen >= batches }),
  (e) => e.kind === "cancelled");
  return first;
}

test("a copy whose verification was cut short resumes it, without asking the server again", async () => {
  const data = bytes(20 * 1000 + 7, 11);  // 21 chunks: three batches of sha256
  const hub = new FakeHub({ "o/n": { [W]: data } });
  const { factory } = await killedWhileVerifying(hub, data);
  const gets = hub.requests("GET").length;
  const again = await openStore({ chunkBytes: 1000, factory, fetch: hub.fetch });
  const rec0 = await again.store.file(url(W));
  assert.deepEqual([rec0.have, rec0.done, rec0.hashed], [data.length, false, 8000]);
  const verified = [];
  const rec = await again.store.download(url(W), { expect: { size: data.length, sha256: sha256(data) },
    onVerify: (hashed) => verified.push(hashed) });
  assert.deepEqual([rec.done, rec.verified], [true, true]);
  assert.deepEqual(verified, [8000, 16000, data.length]);  // from where it stopped
  assert.equal(hub.requests("GET").length, gets, "a whole copy needs nothing from the server");
  assert.deepEqual(await again.store.read(url(W), 0, data.length), data);
  // the saved state is the hash's: a copy damaged in the part not yet hashed still fails
  const bad = await killedWhileVerifying(new FakeHub({ "o/n": { [W]: data } }), data);
  await damageChunk(bad.store, url(W), 15, (d) => { d[3] ^= 1; });
  const reopened = await openStore({ chunkBytes: 1000, factory: bad.factory, fetch: hub.fetch });
  await assert.rejects(reopened.store.download(url(W), { expect: { sha256: sha256(data) } }), (e) => e.kind === "corrupt");
  assert.equal(await reopened.store.file(url(W)), undefined);
});

test("a whole copy stored as not verified (an older page's, no saved hash) is verified, not asked for with Range", async () => {
  const data = bytes(3000, 12);
  const hub = new FakeHub({ "o/n": { [W]: data } });
  const { store, factory } = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  await store.download(url(W), { expect: { sha256: sha256(data) } });
  // what a worker killed while hashing left before: every byte stored, done false, no hash state
  const stuck = { ...(await store.file(url(W))), done: false, verified: false };
  await putFile(store, stuck);
  hub.log.length = 0;
  const again = await openStore({ chunkBytes: 1000, factory, fetch: hub.fetch });
  const rec = await again.store.download(url(W), { expect: { sha256: sha256(data) } });
  assert.deepEqual([rec.done, rec.verified], [true, true]);
  assert.deepEqual(hub.log, []);
  // the same without a known size (a server that sent none): the Range for the rest gets a 416
  // naming the size, which is the copy's: it is verified too
  await putFile(again.store, { ...stuck, size: null });
  const third = await openStore({ chunkBytes: 1000, factory, fetch: hub.fetch });
  const rec3 = await third.store.download(url(W), { expect: { sha256: sha256(data) } });
  assert.deepEqual([rec3.done, rec3.verified, rec3.size], [true, true, 3000]);
  assert.deepEqual(hub.requests("GET").map((r) => r.range), ["bytes=3000-"]);
});

test("a 416 for a copy the server's file no longer fits starts the download afresh", async () => {
  const data = bytes(4000, 13);
  const hub = new FakeHub({ "o/n": { [W]: data } });
  hub.cut(W, 3500);
  const { store } = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  await assert.rejects(store.download(url(W), { retries: 0 }), (e) => e.kind === "network");
  assert.equal(await store.stored(url(W)), 3000);
  const shorter = bytes(2500, 14);  // the file was replaced by a shorter one
  hub.repos["o/n"][W] = shorter;
  await store.download(url(W), { expect: { sha256: sha256(shorter) } });
  assert.deepEqual(hub.requests("GET").map((r) => r.range), [null, "bytes=3000-", null]);
  assert.deepEqual(await store.read(url(W), 0, shorter.length), shorter);
});

async function putFile(store, rec) {
  const tx = store.db.transaction("files", "readwrite");
  tx.objectStore("files").put(rec);
  await new Promise((ok, no) => { tx.oncomplete = ok; tx.onerror = () => no(tx.error); });
}

// Change chunk i of `key` as stored: edit(Uint8Array) changes it in place, or returns a replacement
// (null deletes the row).
async function damageChunk(store, key, i, edit) {
  const [row] = (await chunkRows(store, key)).filter((r) => r.i === i);
  const d = new Uint8Array(row.data);
  const out = edit(d);
  const tx = store.db.transaction("chunks", "readwrite");
  if (out === null) tx.objectStore("chunks").delete([key, i]);
  else tx.objectStore("chunks").put({ ...row, data: (out || d).slice().buffer });
  await new Promise((ok, no) => { tx.oncomplete = ok; tx.onerror = () => no(tx.error); });
  store.cache.clear();
  store.cacheBytes = 0;
}

test("every chunk read back is checked: a short, damaged or missing one is fetched again, not used", async () => {
  const data = bytes(9 * 1000 + 400, 15);
  const hub = new FakeHub({ "o/n": { [W]: data } });
  const { store } = await openStore({ chunkBytes: 1000, fetch: hub.fetch });
  await store.download(url(W), { expect: { sha256: sha256(data) } });
  store.setAuth(authFor(hub.token));
  await damageChunk(store, url(W), 2, (d) => d.subarray(0, 600));  // short
  await damageChunk(store, url(W), 5, (d) => { d[100] ^= 0x40; });  // one bit flipped
  await damageChunk(store, url(W), 7, () => null);  // gone
  await damageChunk(store, url(W), 9, (d) => d.subarray(0, 399));  // the short last chunk, one byte shorter
  hub.log.length = 0;
  assert.deepEqual(await store.read(url(W), 0, data.length), data);
  assert.deepEqual(hub.requests("GET").map((r) => r.range), ["bytes=2000-2999", "bytes=5000-5999", "bytes=7000-7999", "bytes=9000-9399"]);
  assert.equal(store.stats.refetched, 4);
  // stored anew: the next reads need nothing from the server
  store.cache.clear();
  store.cacheBytes = 0;
  hub.log.length = 0;
  assert.deepEqual(await store.read(url(W), 1500, 7000), data.subarray(1500, 8500));
  assert.deepEqual(hub.log, []);
  assert.equal(await store.hash(url(W)), sha256(data));
  // a damaged chunk the server cannot replace with the same bytes (its file changed): the copy is
  // deleted, never used
  hub.repos["o/n"][W] = bytes(data.length, 16);
  await damageChunk(store, url(W), 4, (d) => { d[0] ^= 1; });
  await assert.rejects(store.read(url(W), 4000, 10), (e) => e.kind === "corrupt" && /Chunk 4 of .* is damaged/.test(e.message));
  assert.equal(await store.file(url(W)), undefined);
});

