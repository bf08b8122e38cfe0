// web/gallery.js under Node, on fake-indexeddb: images kept across a reopen (a reload), newest first,
// deleted one at a time or all at once, the bytes they use counted, and the weights' database untouched.

import { test } from "node:test";
import assert from "node:assert/strict";
import { IDBFactory } from "fake-indexeddb";
import { Gallery } from "../../web/gallery.js";
import { openStore } from "./helpers.mjs";

const image = (seed, created) => ({
  png: new Blob([new Uint8Array(100 + seed)], { type: "image/png" }), thumb: new Blob([new Uint8Array(10)]),
  seed, settings: { prompt: `p${seed}`, seed }, timings: { unet: 1.5 }, total: 2, created });

test("images persist across a reopen, newest first, with their settings, and delete / clear", async () => {
  const factory = new IDBFactory();
  const g = await Gallery.open({ indexedDB: factory });
  const a = await g.add(image(1, 1000));
  const b = await g.add(image(2, 3000));
  await g.add(image(3, 2000));
  const again = await Gallery.open({ indexedDB: factory });  // the page reloaded
  const all = await again.list();
  assert.deepEqual(all.map((r) => r.seed), [2, 3, 1]);
  assert.deepEqual(all[0].settings, { prompt: "p2", seed: 2 });
  assert.equal(all[0].id, b.id);
  assert.equal(all[0].png.size, 102);
  assert.deepEqual(await again.usage(), { count: 3, bytes: 101 + 10 + 102 + 10 + 103 + 10 });
  await again.delete(a.id);
  assert.deepEqual((await again.list()).map((r) => r.seed), [2, 3]);
  assert.equal(await again.get(a.id), undefined);
  await again.clear();
  assert.deepEqual(await again.list(), []);
  assert.deepEqual(await again.usage(), { count: 0, bytes: 0 });
});

test("the gallery is its own database: clearing it leaves the weight store alone", async () => {
  const factory = new IDBFactory();
  const { store } = await openStore({ factory });
  await new Promise((ok, no) => {
    const r = store.db.transaction("models", "readwrite").objectStore("models").put({ key: "m", repo: "o/n" });
    r.onsuccess = ok; r.onerror = () => no(r.error);
  });
  const g = await Gallery.open({ indexedDB: factory });
  await g.add(image(1, 1));
  await g.clear();
  assert.deepEqual((await store.models()).map((m) => m.repo), ["o/n"]);
});
