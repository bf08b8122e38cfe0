// The service worker: the page opens without a network once it has been opened with one.
//
// Registered by offline.js as sw.js?v=<Pyodide version>-<sdweb wheel sha256> (from
// vendor/wheels/manifest.json), so a new wheel is a new service worker, with its own cache,
// "sdweb-<v>"; it caches on install, before it takes over:
//   SHELL                      the page's own files (tests/test_offline.py checks the list is web/'s files)
//   manifest.json's `files`    Pyodide's runtime, its numpy/pillow/micropip wheels and the sdweb wheel
// and on activation deletes every other "sdweb-" cache.
//
// What it answers (same origin only, GET only):
//   vendor/pyodide/...   from the cache first: those files never change under a version
//   the rest of the app  from the network first (so an update shows at once), the cache when offline;
//                        a page navigation falls back to the cached index.html
// What it never touches: other origins (the Hub, its CDN: weights go to IndexedDB through the
// worker's own code, with Range and sha256), the dev server's /hub/ (prefetched weights), sw.js itself.
//
// Cross-origin isolation: every response it serves carries COOP same-origin, COEP require-corp and
// CORP same-origin, as scripts/serve.py sends them. A static host that sends none (dist/ on any
// file server) is thus isolated from the second visit on, once this worker controls the page (the
// first visit runs without isolation: Cancel then restarts Python rather than stopping between steps).

const VERSION = new URL(self.location.href).searchParams.get("v") || "dev";
const CACHE = `sdweb-${VERSION}`;
const SCOPE = new URL("./", self.location.href);
const SHELL = [
  "./", "index.html", "app.js", "editor.js", "workspace.js", "gallery.js", "offline.js", "worker.js", "store.js",
  "hub.js", "taesd.js", "addons.js", "addon_panels.js", "token_count.js", "bridge/device.js", "style.css",
  "manifest.webmanifest", "icon-192.png", "icon-512.png",
  "vendor/wheels/manifest.json",
];
const ISOLATION = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin" };

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const manifest = await (await fetch(new URL("vendor/wheels/manifest.json", SCOPE), { cache: "no-store" })).json();
    const cache = await caches.open(CACHE);
    // "reload": past the HTTP cache, so the copies kept are the server's current ones
    await cache.addAll([...SHELL, ...manifest.files].map((p) => new Request(new URL(p, SCOPE), { cache: "reload" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("sdweb-") && name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== SCOPE.origin || !url.href.startsWith(SCOPE.href)) return;
  const path = url.pathname.slice(SCOPE.pathname.length);
  if (path.startsWith("hub/") || path === "sw.js" || req.headers.has("range")) return;
  event.respondWith(answer(req, path).then(isolated));
});

async function answer(req, path) {
  const cache = await caches.open(CACHE);
  if (path.startsWith("vendor/pyodide/")) {
    const hit = await cache.match(req, { ignoreSearch: true });
    if (hit) return hit;
  }
  try {
    const res = await fetch(req);
    if (res.ok && res.type === "basic") {
      const key = req.mode === "navigate" ? new URL("index.html", SCOPE).href : req;
      await cache.put(key, res.clone());
    }
    return res;
  } catch (offline) {
    const hit = await cache.match(req.mode === "navigate" ? new URL("index.html", SCOPE).href : req, { ignoreSearch: true });
    if (hit) return hit;
    throw offline;
  }
}

function isolated(res) {
  if (res.type === "opaque" || res.status === 0) return res;
  const headers = new Headers(res.headers);
  for (const [k, v] of Object.entries(ISOLATION)) headers.set(k, v);
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
}
