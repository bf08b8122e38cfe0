// The tiny autoencoder in the page (madebyollin/taesd, about 10 MB): previews that show the picture
// itself at every step, and the "Fast decode" draft. Its two settings (sdweb.settings `preview`,
// `decoder`) are form fields like any other: Python decides what they mean, whether the run needs a
// tiny autoencoder and which one (sdweb.browser.resolve_json's `tiny`). This module, the worker's,
// only says where it comes from and fetches that repo into the same store as the models (hub.js:
// the same Range resume, sha256 check, progress and Stored models row) on first use.
//
//   tinyEndpoint(typed, catalogue, localTiny, origin)   where the catalogue's tiny autoencoder comes from
//   isStored(store, endpoint, repo)                     complete in the store: previews by it by default
//   fetchTiny({store, endpoint, repo, auth, plan, cancelled, onStatus, onProgress, fetch?}) -> its plan

import { planModel, fetchModel, modelKey } from "./hub.js";

const DEFAULT_ENDPOINT = "https://huggingface.co";
const REVISION = "main";

// The typed Hub endpoint; else the dev server's /hub when `sdweb download` put the catalogue's tiny
// autoencoder in ./weights/ (localTiny: the server's list); else the Hub.
export function tinyEndpoint(typed, catalogue, localTiny, origin) {
  if (typed) return typed;
  const tiny = catalogue && catalogue.tiny_autoencoders.find((m) => m.default);
  return tiny && localTiny.includes(tiny.repo) ? `${origin}/hub` : DEFAULT_ENDPOINT;
}

// Whether `repo` (a tiny autoencoder: no variants) is complete in the store.
export async function isStored(store, endpoint, repo) {
  const rec = await store.model(modelKey(endpoint, repo, REVISION, null));
  return Boolean(rec && rec.complete);
}

// `repo` into the store (read from it once there): its plan {key, files: [{path, url, size, kind}]}.
// Progress comes as the model's does, its files named `<repo>/<path>`; `auth` (store.js authFor) is
// the model's. `fetch`: the browser's unless given.
export async function fetchTiny({ store, endpoint, repo, auth, plan, cancelled, onStatus, onProgress, fetch }) {
  const planned = await planModel({ store, endpoint, repo, revision: REVISION, variant: null, auth, plan, cancelled,
    onStatus, fetch });
  return fetchModel({ store, plan: planned, auth, cancelled,
    onProgress: (p) => onProgress(p.file ? { ...p, file: `${repo}/${p.file}` } : p) });
}
