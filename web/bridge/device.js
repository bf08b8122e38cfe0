// The browser's device bridge: the interface of py/sdweb/backends/bridges/__init__.py over
// navigator.gpu, for sdweb.backends.webgpu running in Pyodide in this worker. The CPython twin is
// py/sdweb/backends/bridges/wgpu.py; both compile the same shaders/*.wgsl.
//
// Python reaches it through sdweb.backends.bridges.js.JsDeviceBridge, which keeps the bind-group
// cache on the Python side, so a recorded dispatch costs one call with five numbers:
//
//   limits()                              -> {maxStorageBufferBindingSize, ..., features: [..], adapter}
//   create_buffer(nbytes) -> id            STORAGE | COPY_SRC | COPY_DST
//   write_buffer(id, offset, data)         data: a PyProxy of bytes (read in place) or a typed array;
//                                          takes effect after every dispatch recorded so far
//   upload_span(id, key, offset, nbytes)   write_buffer(id, 0, <nbytes bytes at offset of the weight
//                                          source `key`>), zero-padded to a multiple of 4, queued: the
//                                          bytes come from the reader setSources() gave for `key` (the
//                                          worker's IndexedDB store) when the worker next waits, so
//                                          weights go store -> GPU in JS, never through the wasm heap,
//                                          and Python goes on building the model meanwhile. Any offset
//                                          and size: the span is read into its own array.
//   setSources(map)                        Map key -> async (offset, nbytes) => Uint8Array
//   flush()                                -> Promise: every queued call done (the worker awaits it
//                                          once a component is built: its weights are on the GPU)
//   read_ahead(id, offset, nbytes)         -> Promise: submits pending work, waits for the GPU and
//                                          keeps the bytes for the read_buffer that follows (the
//                                          worker awaits this at each of the pipeline's readbacks)
//   read_buffer(id, offset, nbytes)        -> Uint8Array when read_ahead fetched exactly that span,
//                                          else Promise<Uint8Array> (awaitable only with JSPI)
//   destroy_buffer(id)
//   pipeline(key, wgsl, entry) -> id       compiled once per key
//   bind_group(pipeline, buffers, uniform) -> id     buffers: flat [id, offset, nbytes, ...]
//   drop_groups(ids)                       forget bind groups (their buffers are being destroyed)
//   dispatch(pipeline, group, x, y, z)     recorded into the open compute pass
//   submit()
//   lost / error / failed                  why the device died, its first uncaptured error, or the
//                                          first queued upload that failed (e.g. a StoreError)
//   lostPromise                            settles when the device is lost
//   memory()                               {buffers, bytes, groups}: what the bridge holds now
//
// Order: every call takes effect after every call before it. While queued uploads wait for the
// store, a submit, a write, a destroy or a read joins the queue behind them (write_buffer copies its
// data first); otherwise it runs at once. So Python never waits inside a step, with or without
// JavaScript Promise Integration: it waits where it reads back (read_ahead), when the queue drains.
//
// Counters (for the page's timings and scripts/bench_browser.py): dispatches, submits, reads,
// readWait (ms from a readback's request to its bytes: the queued uploads, the GPU finishing its
// work and the copy back; the only place the worker waits for the GPU), spanUploads, spanBytes
// (weight bytes uploaded by upload_span), spanWait (ms reading them from the store).

export const LIMITS = ["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupsPerDimension",
  "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX", "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ", "maxComputeWorkgroupStorageSize", "maxStorageBuffersPerShaderStage",
  "minStorageBufferOffsetAlignment", "minUniformBufferOffsetAlignment"];

export class GpuError extends Error {
  constructor(kind, message) { super(message); this.kind = kind; }
}

export class DeviceBridge {
  // The adapter's best device: its maximum limits (CLIP's token embedding alone is over the
  // 128 MiB default binding size) and shader-f16 when offered.
  //   cap: {limitName: bytes} reports limits below the device's (the page's ?gpu-max-binding= knob
  //        simulates a small GPU: a device cannot be asked for less than the defaults, so the cap
  //        is what limits() tells the backend, which checks every buffer against it)
  static async create(cap = {}) {
    if (!navigator.gpu) throw new GpuError("nowebgpu", "This browser has no WebGPU (navigator.gpu is missing).");
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) throw new GpuError("nowebgpu", "No WebGPU adapter is available (the GPU may be blocklisted or WebGPU disabled).");
    const requiredLimits = {};
    for (const k of LIMITS) if (adapter.limits[k] !== undefined) requiredLimits[k] = adapter.limits[k];
    const requiredFeatures = adapter.features.has("shader-f16") ? ["shader-f16"] : [];
    const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
    return new DeviceBridge(adapter, device, cap);
  }

  constructor(adapter, device, cap = {}) {
    this.cap = cap;
    this.adapter = adapter;
    this.device = device;
    this.queue = device.queue;
    this.buffers = new Map();
    this.nextBuffer = 1;
    this.pipelines = [];
    this.pipelineByKey = new Map();
    this.groups = new Map();
    this.nextGroup = 1;
    this.encoder = null;
    this.pass = null;
    this.current = -1;
    this.dispatches = 0;
    this.submits = 0;
    this.reads = 0;
    this.readWait = 0;  // ms spent waiting for readbacks (GPU work finishing + the copy)
    this.sources = new Map();
    this.spanUploads = 0;
    this.spanBytes = 0;
    this.spanWait = 0;
    this.lost = null;
    this.error = null;
    this.failed = null;
    this.queued = 0;  // calls waiting in `tail`
    this.tail = Promise.resolve();
    this.ahead = null;  // {id, offset, nbytes, bytes} fetched by read_ahead
    this.bytes = 0;  // bytes of live buffers
    this.lostPromise = device.lost.then((info) => { this.lost = `${info.reason || "unknown"}: ${info.message || "no message"}`; });
    device.onuncapturederror = (ev) => { if (!this.error) this.error = ev.error.message || String(ev.error); };
    const info = adapter.info || {};
    this.description = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "WebGPU adapter";
  }

  _alive() {
    if (this.lost) throw new GpuError("lost", `The GPU device was lost (${this.lost}).`);
  }

  // Run `op` after everything queued before it: now when nothing is, else at the end of the queue.
  // A failed op is remembered in `failed`, and nothing queued after it runs.
  _inOrder(op) {
    if (!this.queued && !this.failed) return op();
    this.queued++;
    const run = this.tail.then(() => { if (!this.failed) return op(); });
    this.tail = run.catch((e) => { this.failed = this.failed || e; }).finally(() => { this.queued--; });
    return run;
  }

  memory() {
    return { buffers: this.buffers.size, bytes: this.bytes, groups: this.groups.size };
  }

  limits() {
    const out = {};
    for (const k of LIMITS) if (this.device.limits[k] !== undefined) out[k] = Number(this.device.limits[k]);
    for (const [k, v] of Object.entries(this.cap)) if (out[k] !== undefined && v) out[k] = Math.min(out[k], v);
    out.features = [...this.device.features].sort();
    out.adapter = this.description;
    return out;
  }

  create_buffer(nbytes) {
    this._alive();
    const buf = this.device.createBuffer({ size: Math.max(16, Math.ceil(nbytes / 4) * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    const id = this.nextBuffer++;
    this.buffers.set(id, buf);
    this.bytes += buf.size;
    return id;
  }

  write_buffer(id, offset, data) {
    this._alive();
    if (this.encoder) this.submit();  // a queue write runs before unsubmitted work: send that first
    const buf = this.buffers.get(id);
    let bytes;
    if (data && typeof data.getBuffer === "function") {  // a PyProxy of bytes: read in place unless queued
      const view = data.getBuffer("u8");
      try {
        if (!this.queued) return writePadded(this.queue, buf, offset, view.data);
        bytes = view.data.slice();
      } finally {
        view.release();
      }
    } else {
      bytes = data instanceof Uint8Array ? data : new Uint8Array(data.buffer || data);
      if (this.queued) bytes = bytes.slice();
    }
    this._inOrder(() => writePadded(this.queue, buf, offset, bytes));
  }

  setSources(map) {
    this.sources = map;
  }

  upload_span(id, key, offset, nbytes) {
    this._alive();
    const read = this.sources.get(key);
    if (!read) throw new GpuError("gpu", `upload_span: no weight source named ${key}`);
    if (this.encoder) this.submit();  // as write_buffer: after every dispatch recorded so far
    const buf = this.buffers.get(id);
    this.queued++;  // always queued: the read from the store is a Promise
    const run = this.tail.then(async () => {
      if (this.failed) return;
      const t0 = performance.now();
      const bytes = await read(offset, nbytes);
      this.spanWait += performance.now() - t0;
      this._alive();
      if (bytes.length !== nbytes) throw new GpuError("gpu", `upload_span: ${key} gave ${bytes.length} bytes at ${offset}, not ${nbytes}`);
      writePadded(this.queue, buf, 0, bytes);
      this.spanUploads++;
      this.spanBytes += nbytes;
    });
    this.tail = run.catch((e) => { this.failed = this.failed || e; }).finally(() => { this.queued--; });
  }

  flush() {
    return Promise.resolve(this._inOrder(() => {})).then(() => { if (this.failed) throw this.failed; });
  }

  read_ahead(id, offset, nbytes) {
    this._alive();
    this.submit();
    const t0 = performance.now();
    return Promise.resolve(this._inOrder(() => this._read(id, offset, nbytes))).then((bytes) => {
      if (this.failed) throw this.failed;
      this.readWait += performance.now() - t0;
      this.ahead = { id, offset, nbytes, bytes };
    });
  }

  read_buffer(id, offset, nbytes) {
    const a = this.ahead;
    this.ahead = null;
    if (a && a.id === id && a.offset === offset && a.nbytes === nbytes) return a.bytes;
    return this.read_ahead(id, offset, nbytes).then(() => this.read_buffer(id, offset, nbytes));
  }

  async _read(id, offset, nbytes) {
    this._alive();
    const size = Math.ceil(nbytes / 4) * 4;
    const staging = this.device.createBuffer({ size: Math.max(4, size), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = this.device.createCommandEncoder();
    const start = offset - (offset % 4);
    enc.copyBufferToBuffer(this.buffers.get(id), start, staging, 0, Math.max(4, Math.ceil((nbytes + offset - start) / 4) * 4));
    this.queue.submit([enc.finish()]);
    try {
      await staging.mapAsync(GPUMapMode.READ);
      this.reads++;
    } catch (e) {
      this._alive();
      throw new GpuError("gpu", `Reading a result back from the GPU failed: ${this.error || e.message || e}`);
    }
    const out = new Uint8Array(staging.getMappedRange()).slice(offset - start, offset - start + nbytes);
    staging.unmap();
    staging.destroy();
    if (this.error) throw new GpuError("gpu", `WebGPU reported an error: ${this.error}`);
    return out;
  }

  destroy_buffer(id) {
    const buf = this.buffers.get(id);
    if (!buf) return;
    this.buffers.delete(id);
    this.bytes -= buf.size;
    this._inOrder(() => buf.destroy());  // a queued submit may still use it
  }

  pipeline(key, wgsl, entry) {
    this._alive();
    let id = this.pipelineByKey.get(key);
    if (id === undefined) {
      const module = this.device.createShaderModule({ code: wgsl, label: key });
      const pipe = this.device.createComputePipeline({ layout: "auto", label: key, compute: { module, entryPoint: entry } });
      id = this.pipelines.length;
      this.pipelines.push({ pipe, layout: pipe.getBindGroupLayout(0) });
      this.pipelineByKey.set(key, id);
    }
    return id;
  }

  bind_group(pipelineId, buffers, uniform) {
    this._alive();
    const flat = toArray(buffers);
    const bytes = toBytes(uniform);
    const ubuf = this.device.createBuffer({ size: Math.max(16, Math.ceil(bytes.length / 16) * 16),
      usage: GPUBufferUsage.UNIFORM, mappedAtCreation: true });
    new Uint8Array(ubuf.getMappedRange()).set(bytes);
    ubuf.unmap();
    const entries = [{ binding: 0, resource: { buffer: ubuf, offset: 0, size: Math.max(16, bytes.length) } }];
    for (let i = 0; i < flat.length; i += 3) {
      entries.push({ binding: i / 3 + 1, resource: { buffer: this.buffers.get(flat[i]), offset: flat[i + 1], size: flat[i + 2] } });
    }
    const group = this.device.createBindGroup({ layout: this.pipelines[pipelineId].layout, entries });
    const id = this.nextGroup++;
    this.groups.set(id, { group, ubuf });
    return id;
  }

  drop_groups(ids) {
    for (const id of toArray(ids)) {
      const g = this.groups.get(id);
      if (g) { this.groups.delete(id); this._inOrder(() => g.ubuf.destroy()); }
    }
  }

  dispatch(pipelineId, groupId, x, y, z) {
    if (!this.pass) {
      this._alive();
      this.encoder = this.device.createCommandEncoder();
      this.pass = this.encoder.beginComputePass();
      this.current = -1;
    }
    if (pipelineId !== this.current) {
      this.pass.setPipeline(this.pipelines[pipelineId].pipe);
      this.current = pipelineId;
    }
    this.pass.setBindGroup(0, this.groups.get(groupId).group);
    this.pass.dispatchWorkgroups(x, y, z);
    this.dispatches++;
  }

  submit() {
    if (!this.encoder) return;
    this.pass.end();
    const commands = this.encoder.finish();
    this.encoder = this.pass = null;
    this.submits++;
    this._inOrder(() => this.queue.submit([commands]));
  }

  destroy() {
    for (const b of this.buffers.values()) b.destroy();
    for (const g of this.groups.values()) g.ubuf.destroy();
    this.buffers.clear();
    this.groups.clear();
    this.device.destroy();
  }
}

// queue.writeBuffer wants a multiple of 4 bytes; pad a ragged tail with zeros.
function writePadded(queue, buf, offset, bytes) {
  if (bytes.length % 4 === 0) {
    queue.writeBuffer(buf, offset, bytes);
  } else {
    const padded = new Uint8Array(Math.ceil(bytes.length / 4) * 4);
    padded.set(bytes);
    queue.writeBuffer(buf, offset, padded);
  }
}

function toArray(x) {
  if (Array.isArray(x)) return x;
  if (x && typeof x.toJs === "function") return x.toJs();
  return Array.from(x);
}

function toBytes(x) {
  if (x instanceof Uint8Array) return x;
  if (x && typeof x.getBuffer === "function") {
    const v = x.getBuffer("u8");
    try { return v.data.slice(); } finally { v.release(); }
  }
  if (x && typeof x.toJs === "function") return x.toJs();
  return new Uint8Array(x);
}
