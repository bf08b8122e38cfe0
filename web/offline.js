// Installs sw.js, which keeps the page, Pyodide and the sdweb wheel for use without a network. Its
// URL carries the vendored versions (vendor/wheels/manifest.json), so a new sdweb wheel (or Pyodide)
// installs a new service worker with a cache of its own, and the old one is dropped.

export async function registerOffline() {
  if (!("serviceWorker" in navigator)) return null;  // e.g. a plain-http page on another machine
  try {
    const manifest = await (await fetch(new URL("vendor/wheels/manifest.json", import.meta.url), { cache: "no-store" })).json();
    const version = `${manifest.pyodide}-${manifest.sha256.slice(0, 16)}`;
    return await navigator.serviceWorker.register(new URL(`sw.js?v=${version}`, import.meta.url));
  } catch (e) {
    console.warn(`sdweb: offline use is not available (${e.message || e})`);
    return null;
  }
}
