"""Device bridges: the one narrow interface through which backends/webgpu/ reaches a GPU.

    wgpu.py      WgpuBridge: CPython, over the `wgpu` package (wgpu-py -> wgpu-native -> Vulkan /
                 Metal / D3D12; lavapipe on a CPU-only Linux box)
    js.py        JsDeviceBridge: Pyodide in the page's worker, over web/bridge/device.js (navigator.gpu)
    counting.py  CountingBridge: no device at all; counts bytes and dispatches, so the real backend
                 code path plans GPU memory for models too big to run here
    groups.py    the bind-group cache and uniform-arena bookkeeping all three share

The interface (every bridge; web/bridge/device.js implements the same under JsDeviceBridge):

    limits() -> dict                      adapter limits by their WebGPU (camelCase) names, plus
                                          "features": [..] (WebGPU's names: "shader-f16",
                                          "subgroups", "timestamp-query" where the device has them),
                                          "adapter": "<description>" and optionally "adapterType"
    create_buffer(nbytes) -> id           STORAGE | COPY_SRC | COPY_DST
    write_buffer(id, offset, data)        takes effect after every dispatch recorded so far
    upload_span(id, source, offset, nbytes)
                                          optional: write_buffer(id, 0, <the nbytes bytes of byte
                                          source `source` at `offset`>), zero-padded to a multiple
                                          of 4; the bridge reads the source itself (the JS bridge
                                          from IndexedDB, so weights skip the wasm heap)
    read_buffer(id, offset, nbytes)       -> bytes; submits pending work first, then waits
    destroy_buffer(id)
    pipeline(key, wgsl, entry) -> id      compiled once per key (the caller's cache key, a str)
    dispatch(pipeline, buffers, uniform, groups)
                                          recorded, not run: buffers = [(id, offset, nbytes), ..]
                                          bound at 1..n, `uniform` bytes at binding 0
    submit()                              sends every recorded dispatch to the GPU
    timestamps(on) -> bool                optional: time every dispatch from now on (each in a compute
                                          pass of its own, timestampWrites at its begin and end), or
                                          stop; False where the device lacks timestamp-query
    read_timestamps() -> [ms, ..]         optional: the GPU time of each dispatch timed since the last
                                          call, in dispatch order (submits pending work, then waits)

Recording: dispatches go into one open compute pass (WebGPU puts a barrier between dispatches of a
pass where one writes what a later one reads). Bind groups are cached by (pipeline, buffers, uniform
bytes) in a groups.BindGroupCache: the backend's pool hands out the same buffers in the same order on
every denoising step, so from the second step on a dispatch reuses an existing bind group.
"""
