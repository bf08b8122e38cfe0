// web/taesd.js under Node: the tiny autoencoder fetched into the same store as the models, with the
// real Python planner (sdweb.browser.plan_json) choosing its files as it does in the worker: its
// config.json and diffusers weight file, nothing else of the repo; on first use, then from the store.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { ENDPOINT, FakeHub, ROOT, bytes, openStore, pythonPlanner } from "./helpers.mjs";
import { fetchTiny, isStored, tinyEndpoint } from "../../web/taesd.js";

const plan = pythonPlanner();
after(() => plan.close());

const REPO = "madebyollin/taesd";
const taesd = () => ({
  "config.json": readFileSync(`${ROOT}tests/data/real-configs/taesd/config.json`, "utf8"),
  "diffusion_pytorch_model.safetensors": bytes(3000, 2), "diffusion_pytorch_model.bin": bytes(50),
  "taesd_decoder.safetensors": bytes(400, 3), "taesd_encoder.pth": bytes(60), "README.md": "# TAESD",
});

test("fetched on first use into the store, with the models' progress; from the store after", async () => {
  const hub = new FakeHub({ [REPO]: taesd() });
  const { store } = await openStore({ fetch: hub.fetch });
  assert.equal(await isStored(store, ENDPOINT, REPO), false);
  const events = [];
  const p = await fetchTiny({ store, endpoint: ENDPOINT, repo: REPO, plan, onStatus: () => {},
    onProgress: (e) => events.push(e), fetch: hub.fetch });
  assert.deepEqual(p.files.map((f) => [f.path, f.kind]), [["config.json", "text"],
    ["diffusion_pytorch_model.safetensors", "weights"]]);
  assert.equal(p.complete, true);
  const repo = hub.repos[REPO];
  for (const f of p.files) assert.deepEqual(await store.read(f.url, 0, repo[f.path].length), repo[f.path], f.path);
  assert.ok(events.some((e) => e.phase === "download" && e.file === `${REPO}/diffusion_pytorch_model.safetensors`));
  assert.deepEqual(events.at(-1), { phase: "done", loaded: p.bytes, total: p.bytes, downloaded: 1 });
  const fetched = hub.requests("GET").map((r) => r.path);
  for (const junk of ["diffusion_pytorch_model.bin", "taesd_decoder.safetensors", "taesd_encoder.pth", "README.md"]) {
    assert.ok(!fetched.includes(junk), junk);
  }
  assert.equal(await isStored(store, ENDPOINT, REPO), true);
  assert.equal(await isStored(store, "https://elsewhere.test", REPO), false);
  const n = hub.log.length;
  const again = await fetchTiny({ store, endpoint: ENDPOINT, repo: REPO, plan, onStatus: () => {},
    onProgress: () => {}, fetch: hub.fetch });
  assert.equal(hub.log.length, n);
  assert.equal(again.key, p.key);
});

test("where the page finds it: the typed endpoint, the dev server's ./weights, else the Hub", () => {
  const catalogue = { tiny_autoencoders: [{ repo: REPO, default: true }] };
  const origin = "http://127.0.0.1:8000";
  assert.equal(tinyEndpoint("https://mirror.test", catalogue, [REPO], origin), "https://mirror.test");
  assert.equal(tinyEndpoint("", catalogue, [REPO], origin), `${origin}/hub`);
  assert.equal(tinyEndpoint("", catalogue, [], origin), "https://huggingface.co");
});
