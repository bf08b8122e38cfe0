// web/hub.js under Node: planning and fetching a repo from a fake Hub, with the real Python planner
// (sdweb.browser.plan_json) deciding, as in the worker. hub.js must ask only what the plan needs,
// reach the same plan with the Hub's listing or by HEAD probes, and turn each failure into words.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { ENDPOINT, FakeHub, ROOT, bytes, openStore, pythonPlanner, sha256 } from "./helpers.mjs";
import { fetchModel, modelKey, planModel } from "../../web/hub.js";
import { StoreError, authFor } from "../../web/store.js";

const plan = pythonPlanner();
after(() => plan.close());

const REAL = `${ROOT}tests/data/real-configs/stable-diffusion-v1-5/`;
const CONFIGS = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "unet/config.json",
  "vae/config.json"];

// An SD 1.5-shaped repo: the real configs, small stand-ins for the rest, junk sdweb must not fetch.
function sdRepo({ fp16 = true, shardedUnet = false } = {}) {
  const files = Object.fromEntries(CONFIGS.map((p) => [p, readFileSync(REAL + p, "utf8")]));
  Object.assign(files, {
    "tokenizer/vocab.json": "{}", "tokenizer/merges.txt": "#version: 0.2\n", "tokenizer/tokenizer_config.json": "{}",
    "README.md": "# card", "v1-5-pruned.ckpt": bytes(64), "safety_checker/model.safetensors": bytes(300, 9),
    "unet/diffusion_pytorch_model.bin": bytes(50),
    "text_encoder/model.safetensors": bytes(2000, 1), "unet/diffusion_pytorch_model.safetensors": bytes(5000, 2),
    "vae/diffusion_pytorch_model.safetensors": bytes(1500, 3),
  });
  if (fp16) {
    files["text_encoder/model.fp16.safetensors"] = bytes(1000, 4);
    files["vae/diffusion_pytorch_model.fp16.safetensors"] = bytes(750, 5);
  }
  if (shardedUnet) {
    const shard = (i) => `diffusion_pytorch_model.fp16-0000${i}-of-00002.safetensors`;
    files[`unet/${shard(1)}`] = bytes(1300, 6);
    files[`unet/${shard(2)}`] = bytes(1200, 7);
    files["unet/diffusion_pytorch_model.safetensors.index.fp16.json"] = JSON.stringify(
      { metadata: {}, weight_map: { "conv_in.weight": shard(1), "conv_out.weight": shard(2), "conv_in.bias": shard(1) } });
  }
  return files;
}

const TEXTS = [...CONFIGS, "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json"];

async function planned(hub, repo, opts = {}) {
  const { store } = opts.store ? opts : await openStore({ fetch: hub.fetch });
  const p = await planModel({ store, endpoint: ENDPOINT, repo, variant: "fp16", plan, fetch: hub.fetch, ...opts });
  return { store, p };
}

test("with the Hub's listing: the planner's files, only the small ones fetched, the weights after", async () => {
  const hub = new FakeHub({ "o/sd": sdRepo() });
  const { store, p } = await planned(hub, "o/sd");
  assert.deepEqual(p.files.map((f) => [f.path, f.kind]), [
    ...TEXTS.map((t) => [t, "text"]),
    ["text_encoder/model.fp16.safetensors", "weights"],
    ["unet/diffusion_pytorch_model.safetensors", "weights"],  // no fp16 unet: the plain one
    ["vae/diffusion_pytorch_model.fp16.safetensors", "weights"],
  ]);
  assert.deepEqual(p.notes, ["unet: no fp16 weights in the repo; taking diffusion_pytorch_model.safetensors"]);
  const repo = hub.repos["o/sd"];
  for (const f of p.files.filter((x) => x.kind === "weights")) {
    assert.deepEqual([f.size, f.sha256], [repo[f.path].length, sha256(repo[f.path])], f.path);
  }
  // every small file is in the store already; no weight byte has come, nothing was probed
  assert.deepEqual(hub.requests("GET").map((r) => r.path).sort(), ["listing", ...TEXTS].sort());
  assert.equal(hub.requests("HEAD").length, 0);
  for (const t of TEXTS) assert.equal(await store.readText(p.files.find((f) => f.path === t).url), new TextDecoder().decode(repo[t]));

  const events = [];
  await fetchModel({ store, plan: p, onProgress: (e) => events.push(e), storage: null });
  for (const f of p.files) assert.deepEqual(await store.read(f.url, 0, repo[f.path].length), repo[f.path], f.path);
  assert.deepEqual(events.at(-1), { phase: "done", loaded: p.bytes, total: p.bytes, downloaded: 3 });
  assert.ok(events.some((e) => e.phase === "download" && e.file === "unet/diffusion_pytorch_model.safetensors"));
  // planned and stored: the next plan is the stored one, without a request
  const n = hub.log.length;
  const again = await planModel({ store, endpoint: ENDPOINT, repo: "o/sd", variant: "fp16", plan, fetch: hub.fetch });
  assert.equal(hub.log.length, n);
  assert.equal(again.key, modelKey(ENDPOINT, "o/sd", "main", "fp16"));
  assert.equal(again.complete, true);
});

test("without a listing, HEAD probes reach the same plan, shards included", async () => {
  const repos = { "o/sd": sdRepo({ shardedUnet: true }) };
  const listed = await planned(new FakeHub(repos), "o/sd");
  const hub = new FakeHub(repos, { listing: false });
  const { store, p } = await planned(hub, "o/sd");
  const strip = (files) => files.map(({ path, kind, size, sha256: sha }) => ({ path, kind, size: kind === "weights" ? size : null, sha }));
  assert.deepEqual(strip(p.files), strip(listed.p.files));
  const unet = p.files.filter((f) => f.path.startsWith("unet/")).map((f) => f.path);
  assert.deepEqual(unet, ["unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors"]);
  assert.deepEqual(p.notes, []);
  // HEAD only for weight files, each once; the index was read, its shards probed
  const heads = hub.requests("HEAD").map((r) => r.path);
  assert.ok(heads.every((h) => h.endsWith(".safetensors")) && new Set(heads).size === heads.length, heads);
  assert.ok(heads.includes("unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors"));
  assert.ok(!heads.includes("unet/diffusion_pytorch_model.safetensors"), "probed past the file it took");
  assert.ok(plan.calls > 3);
  await fetchModel({ store, plan: p, storage: null });
  for (const f of p.files) assert.equal(await store.stored(f.url), hub.repos["o/sd"][f.path].length, f.path);
});

test("what cannot run is named: no such repo, not a pipeline, not SD, a bad variant", async () => {
  const clipOnly = { "config.json": "{}", "model.safetensors": bytes(10) };
  const ddpm = { "model_index.json": JSON.stringify({ _class_name: "DDPMPipeline", unet: ["diffusers", "UNet2DModel"],
    scheduler: ["diffusers", "DDPMScheduler"] }) };
  for (const listing of [true, false]) {
    const hub = new FakeHub({ "o/clip": clipOnly, "o/ddpm": ddpm, "o/sd": sdRepo() }, { listing });
    await assert.rejects(planned(hub, "o/nope"), (e) => e.kind === "notfound" && /o\/nope was not found/.test(e.message));
    await assert.rejects(planned(hub, "o/clip"),
      (e) => e.kind === "model" && /o\/clip has no model_index.json, so it is not a diffusers pipeline/.test(e.message));
    await assert.rejects(planned(hub, "o/ddpm"),
      (e) => e.kind === "model" && /DDPMPipeline model without text_encoder.*Stable Diffusion/.test(e.message));
    await assert.rejects(planned(hub, "o/sd", { variant: "../x" }), (e) => e.kind === "input" && e.field === "variant");
  }
});

test("a gated repo asks for a token, which travels in a header only, to an endpoint the user confirmed", async () => {
  const hub = new FakeHub({ "o/gated": sdRepo({ fp16: false }) }, { gated: ["o/gated"], listing: false });
  const confirmed = (token) => authFor(token, ENDPOINT);
  await assert.rejects(planned(hub, "o/gated"), (e) => e.kind === "auth" && /needs a Hugging Face token/.test(e.message));
  await assert.rejects(planned(hub, "o/gated", { auth: confirmed("hf_wrong") }), (e) => e.kind === "auth" && /refused the token/.test(e.message));
  // a token typed for an endpoint the page was merely sent to (?endpoint=) stays home
  hub.log.length = 0;
  await assert.rejects(planned(hub, "o/gated", { auth: authFor(hub.token) }),
    (e) => e.kind === "auth" && e.field === "endpoint-token" && /sent only to https:\/\/huggingface.co/.test(e.message));
  assert.ok(hub.log.length && hub.log.every((r) => r.auth === null));
  hub.log.length = 0;
  const { store, p } = await planned(hub, "o/gated", { auth: confirmed(hub.token) });
  await fetchModel({ store, plan: p, auth: confirmed(hub.token), storage: null });
  assert.ok(hub.log.length > 10 && hub.log.every((r) => r.auth === `Bearer ${hub.token}`));
  assert.equal(p.notes.length, 3);  // no fp16 files at all: the plain ones, each said
  assert.ok(!p.files.some((f) => f.url.includes(hub.token)));
});

test("a download that will not fit the browser's quota is refused before it starts", async () => {
  const hub = new FakeHub({ "o/sd": sdRepo() });
  const { store, p } = await planned(hub, "o/sd");
  const gets = hub.requests("GET").length;
  const storage = { estimate: async () => ({ quota: 2000, usage: 1000 }), persist: async () => true };
  await assert.rejects(fetchModel({ store, plan: p, storage }),
    (e) => e.kind === "quota" && /needs 6.8 KB more storage/.test(e.message) && /private \(incognito\) window/.test(e.message));
  assert.equal(hub.requests("GET").length, gets);
  const events = [];
  await fetchModel({ store, plan: p, storage: { estimate: async () => ({ quota: 1e9, usage: 0 }) }, onProgress: (e) => events.push(e) });
  assert.deepEqual(events[0], { phase: "estimate", need: 6750, free: 1e9, total: p.bytes });
  // a model already stored still runs when the browser will store nothing more (not even its last use)
  store.putModel = async () => { throw new StoreError("quota", "Out of storage space while saving the model list"); };
  assert.equal((await fetchModel({ store, plan: p, storage: null })).complete, true);
});

test("shard names from an index are held to the layout's rule before anything is asked for", async () => {
  for (const bad of ["../text_encoder/model.safetensors", "/etc/passwd", "sub/x.safetensors", "..", "diffusion_pytorch_model.fp16-00002-of-00002.bin",
    "a\\..\\b.safetensors"]) {
    for (const listing of [true, false]) {
      const repo = sdRepo({ shardedUnet: true });
      repo["unet/diffusion_pytorch_model.safetensors.index.fp16.json"] = JSON.stringify(
        { weight_map: { "conv_in.weight": "diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "conv_out.weight": bad } });
      const hub = new FakeHub({ "o/sd": repo }, { listing });
      await assert.rejects(planned(hub, "o/sd"), (e) => e.kind === "model" &&
        e.message.includes(`shard ${JSON.stringify(bad).replace(/^"|"$/g, "'")}`) && /plain \.safetensors file name/.test(e.message), bad);
      const asked = hub.log.map((r) => r.path);
      assert.ok(!asked.some((a) => a === `unet/${bad}` || a.includes("..") || a.includes("passwd")), `${bad}: ${asked}`);
    }
  }
});
