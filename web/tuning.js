// The page's memory of autotuning: one entry per GPU adapter (sdweb.backends.webgpu.tuning's
// to_entry(): the kernel configurations timed fastest on it and its measured peaks) in IndexedDB,
// read before a WebGPU run and written after it by worker.js. The CLI keeps the same entries in
// $XDG_CACHE_HOME/sdweb/autotune.json.

const DB = "sdweb-tuning";
const STORE = "adapters";

function open(indexedDB) {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function run(db, mode, fn) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const req = fn(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}

// The remembered entry of `adapter`, or null (none yet, or IndexedDB unavailable: tuning starts over).
export async function loadTuning(adapter, indexedDB = globalThis.indexedDB) {
  try {
    const db = await open(indexedDB);
    try { return (await run(db, "readonly", (s) => s.get(adapter))) || null; } finally { db.close(); }
  } catch (_) {
    return null;
  }
}

export async function saveTuning(adapter, entry, indexedDB = globalThis.indexedDB) {
  try {
    const db = await open(indexedDB);
    try { await run(db, "readwrite", (s) => s.put(entry, adapter)); } finally { db.close(); }
  } catch (e) {
    console.warn(`sdweb: the autotuning results could not be stored (${e && e.message || e})`);
  }
}
