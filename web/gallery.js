// Gallery, the images the page made, kept across reloads: each image's PNG (which carries its own
// settings, see sdweb.infotext), a small thumbnail, its settings and timings.
//
// IndexedDB "sdweb-gallery" (a database of its own: clearing it never touches the weights in
// "sdweb-weights", and the other way round):
//   images  {id (auto), created: ms since 1970, png: Blob, thumb: Blob or null (the PNG is small enough),
//            bytes: png + thumb sizes,
//            seed, settings: {settings.FIELDS of this image}, timings: {seconds per stage}, total, gpu}
//           index "created"
// IndexedDB is the browser's unless `open` is handed another (the Node tests' fake-indexeddb).

const DB_NAME = "sdweb-gallery";

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

export class Gallery {
  static async open({ indexedDB = globalThis.indexedDB } = {}) {
    const open = indexedDB.open(DB_NAME, 1);
    open.onupgradeneeded = () => {
      open.result.createObjectStore("images", { keyPath: "id", autoIncrement: true }).createIndex("created", "created");
    };
    return new Gallery(await req(open));
  }

  constructor(db) { this.db = db; }

  store(mode = "readonly") { return this.db.transaction("images", mode).objectStore("images"); }

  // Adds one image; returns the stored record (with its id).
  async add({ png, thumb = null, seed, settings, timings, total = null, gpu = null, created = Date.now() }) {
    const record = { created, png, thumb, bytes: png.size + (thumb ? thumb.size : 0), seed, settings, timings, total, gpu };
    record.id = await req(this.store("readwrite").add(record));
    return record;
  }

  // Every image, newest first.
  async list() {
    const all = await req(this.store().index("created").getAll());
    return all.reverse();
  }

  get(id) { return req(this.store().get(id)); }

  delete(id) { return req(this.store("readwrite").delete(id)); }

  clear() { return req(this.store("readwrite").clear()); }

  // {count, bytes}: what the gallery holds, for the storage panel.
  async usage() {
    const all = await req(this.store().getAll());
    return { count: all.length, bytes: all.reduce((a, r) => a + r.bytes, 0) };
  }
}
