"""A device bridge with no device: buffers are byte counters, dispatches are counted, reads are zeros.

`CountingBridge` implements the device-bridge interface of bridges/__init__.py (the one
`wgpu.WgpuBridge` and the browser's `js.JsDeviceBridge` implement), so the real backend code path,
`backends/webgpu/` with its ops, runs over it unchanged: every op validates its inputs, picks
its shader and constants (the WGSL text is still generated), packs its uniform and records its
dispatch; the pool, the pipeline cache and the byte accounting run as they would on a GPU. Nothing
is computed: a buffer holds no memory, a dispatch does nothing, `read_buffer` returns zeros. What it
is for:

  * exact GPU memory planning for models too big to run here (SD 1.5 at 512x512 on a CPU-only box):
    `ctx.peak_bytes` of a run over this bridge is the peak the same run has on a real adapter, since
    the allocations depend only on shapes, never on values (the pipeline reads back the UNet's output
    every step and the image at the end, and neither read steers an allocation);
  * host-overhead measurement: the wall time of a UNet step over this bridge is the Python cost of
    the backend (op validation, uniform packing, pool, pipeline and bind-group cache look-ups), which
    a real run pays on top of the GPU's time (wgpu-py's own per-call cost, a few microseconds per
    dispatch, is not in it);
  * limit checks without the adapter: `limits` is a chosen adapter's (ADAPTERS), so "does this model
    fit a 128 MiB binding limit" is answered by running it (the backend raises GPULimitError naming
    the buffer), and the bridge itself raises BridgeError on what a real device would reject
    (a binding past a buffer's end or larger than maxStorageBufferBindingSize, a misaligned binding
    offset, too many storage buffers, a grid over maxComputeWorkgroupsPerDimension, a destroyed buffer).

    bridge = CountingBridge("desktop")            # or "swiftshader", "webgpu-default", or a limits dict
    with counting(bridge) as ctx:                 # installs it as the backend's device, restores after
        Pipeline(folder, webgpu, precision="fp16").generate(...)
        ctx.peak_bytes, bridge.peak_bytes, bridge.dispatches, bridge.counts_by_entry()

Counters (all reset by `reset_counts()` except the live buffers and the peak's base):
    bytes_live, peak_bytes     bytes of buffers created and not destroyed (each at least 16 bytes, as
                               WgpuBridge makes them), and the most seen: the device-side truth, which
                               exceeds the context's `peak_bytes` by buffers the context has let go
                               but whose destruction waits for the next submit
    buffers_live, buffers_created, bytes_created
    writes, bytes_written, reads, bytes_read   host <-> device traffic
    dispatches, workgroups     dispatches recorded and workgroups they launch
    dispatch_counts            {pipeline key: dispatches}; counts_by_entry() sums them per
                               "shader.entry" (the key's first field is the shader file's stem)
    pipelines                  {pipeline key: entry} compiled (cache misses of the backend)
    submits                    command buffers the real bridge would submit
    bind_group_misses          bind groups the real bridges would have to create: the same cache
                               (groups.BindGroupCache), emptied of a buffer's groups when it is
                               destroyed and reset when full, as theirs is
    uniform_arena_bytes        the uniform arena WgpuBridge would hold for those groups
                               (groups.UniformArena, in blocks of 256 KiB)
"""

from __future__ import annotations

import ast
import contextlib
from collections import Counter

from ...errors import SdwebError
from ..webgpu.device import using
from .groups import BindGroupCache, UniformArena

# Adapter limit sets by WebGPU (camelCase) names, the ones the backend reads.
_COMMON = {
    "maxComputeWorkgroupsPerDimension": 65535,
    "maxComputeInvocationsPerWorkgroup": 256,
    "maxComputeWorkgroupSizeX": 256,
    "maxComputeWorkgroupSizeY": 256,
    "maxComputeWorkgroupSizeZ": 64,
    "maxComputeWorkgroupStorageSize": 16384,
    "minStorageBufferOffsetAlignment": 256,
    "minUniformBufferOffsetAlignment": 256,
}
ADAPTERS = {
    # what Chrome / Dawn reports on a discrete desktop GPU (D3D12, Vulkan, Metal)
    "desktop": {**_COMMON, "maxStorageBufferBindingSize": 2**31 - 4, "maxBufferSize": 2**31,
                "maxComputeInvocationsPerWorkgroup": 1024, "maxComputeWorkgroupSizeX": 1024,
                "maxComputeWorkgroupSizeY": 1024, "maxComputeWorkgroupStorageSize": 32768,
                "maxStorageBuffersPerShaderStage": 10, "features": ["shader-f16"],
                "adapter": "counting bridge (desktop limits)"},
    # a software adapter (SwiftShader in Chrome without a GPU): 1 GiB buffers, no shader-f16
    "swiftshader": {**_COMMON, "maxStorageBufferBindingSize": 2**30, "maxBufferSize": 2**30,
                    "maxStorageBuffersPerShaderStage": 8, "features": [],
                    "adapter": "counting bridge (SwiftShader-like limits)"},
    # the WebGPU spec's defaults: what requestDevice() gives when no limit is asked for
    "webgpu-default": {**_COMMON, "maxStorageBufferBindingSize": 2**27, "maxBufferSize": 2**28,
                       "maxStorageBuffersPerShaderStage": 8, "features": [],
                       "adapter": "counting bridge (WebGPU default limits)"},
}

class BridgeError(SdwebError):
    """What a real device would reject: a validation error of the WebGPU API."""


class CountingBridge:
    """The device-bridge interface over byte counters. `adapter` is a name in ADAPTERS or a dict of
    limits (missing keys take the "desktop" values)."""

    def __init__(self, adapter: str | dict = "desktop"):
        if isinstance(adapter, str):
            if adapter not in ADAPTERS:
                raise SdwebError(f"unknown adapter {adapter!r}; use one of {', '.join(ADAPTERS)} or a limits dict")
            lim = ADAPTERS[adapter]
        else:
            lim = {**ADAPTERS["desktop"], "adapter": "counting bridge (custom limits)", **adapter}
        self._limits = dict(lim)
        self._max_binding = int(lim["maxStorageBufferBindingSize"])
        self._max_buffer = int(lim["maxBufferSize"])
        self._max_groups = int(lim["maxComputeWorkgroupsPerDimension"])
        self._max_storage = int(lim["maxStorageBuffersPerShaderStage"])
        self._align = int(lim["minStorageBufferOffsetAlignment"])
        self._sizes: dict[int, int] = {}  # live buffer id -> bytes
        self._next_id = 1
        self.bytes_live = 0
        self.peak_bytes = 0
        self.pipelines: dict[str, str] = {}  # key -> entry
        self._pipeline_ids: dict[str, int] = {}  # key -> id
        self._pipeline_keys: list[str] = []  # id -> key
        self._groups = BindGroupCache()
        self._arena = UniformArena(int(lim["minUniformBufferOffsetAlignment"]))
        self._pending = False
        self.reset_counts()

    def reset_counts(self) -> None:
        """Zero the traffic and dispatch counters; the peak restarts from the bytes live now."""
        self.peak_bytes = self.bytes_live
        self.buffers_created = self.bytes_created = 0
        self.writes = self.bytes_written = self.reads = self.bytes_read = 0
        self.dispatches = self.workgroups = self.submits = self.bind_group_misses = 0
        self.dispatch_counts: Counter = Counter()

    # -- interface --

    def limits(self) -> dict:
        return dict(self._limits)

    def create_buffer(self, nbytes: int) -> int:
        if nbytes > self._max_buffer:
            raise BridgeError(f"create_buffer of {nbytes} bytes exceeds maxBufferSize {self._max_buffer}")
        size = max(16, int(nbytes))
        bid = self._next_id
        self._next_id += 1
        self._sizes[bid] = size
        self.bytes_live += size
        self.peak_bytes = max(self.peak_bytes, self.bytes_live)
        self.buffers_created += 1
        self.bytes_created += size
        return bid

    def write_buffer(self, bid: int, offset: int, data) -> None:
        self._write(bid, offset, memoryview(data).nbytes)

    def upload_span(self, bid: int, source, offset: int, nbytes: int) -> None:
        """The file-to-buffer copy the real bridges make; nothing is read, the size is what counts."""
        self._write(bid, 0, nbytes + -nbytes % 4)  # padded to whole u32s, as WgpuBridge does

    def _write(self, bid: int, offset: int, n: int) -> None:
        self._check_range("write_buffer", bid, offset, n)
        if offset % 4 or n % 4:
            raise BridgeError(f"write_buffer to buffer {bid}: offset {offset} and size {n} must be multiples of 4")
        if self._pending:
            self.submit()  # WgpuBridge submits recorded work before a queue write
        self.writes += 1
        self.bytes_written += n

    def read_buffer(self, bid: int, offset: int, nbytes: int) -> bytes:
        self._check_range("read_buffer", bid, offset, nbytes)
        self.submit()
        self.reads += 1
        self.bytes_read += nbytes
        return bytes(nbytes)

    def destroy_buffer(self, bid: int) -> None:
        size = self._sizes.pop(bid, None)
        if size is not None:
            self.bytes_live -= size
            self._groups.drop_buffer(bid)

    def pipeline(self, key: str, wgsl: str, entry: str) -> int:
        pid = self._pipeline_ids.get(key)
        if pid is None:
            if f"fn {entry}(" not in wgsl.replace(f"fn {entry} (", f"fn {entry}("):
                raise BridgeError(f"pipeline {key}: the shader has no entry point {entry!r}")
            pid = self._pipeline_ids[key] = len(self._pipeline_keys)
            self.pipelines[key] = entry
            self._pipeline_keys.append(key)
        return pid

    def dispatch(self, pipeline_id: int, buffers, uniform: bytes, groups) -> None:
        if not 0 <= pipeline_id < len(self._pipeline_keys):
            raise BridgeError(f"dispatch of unknown pipeline {pipeline_id}")
        key = self._pipeline_keys[pipeline_id]
        if len(buffers) > self._max_storage:
            raise BridgeError(f"{key}: {len(buffers)} storage buffers bound, over "
                              f"maxStorageBuffersPerShaderStage {self._max_storage}")
        if not uniform or len(uniform) % 16:
            raise BridgeError(f"{key}: uniform of {len(uniform)} bytes (want a non-zero multiple of 16)")
        for i, (bid, off, n) in enumerate(buffers):
            self._check_range(f"{key} binding {i + 1}", bid, off, n)
            if off % self._align:
                raise BridgeError(f"{key} binding {i + 1}: offset {off} is not a multiple of "
                                  f"minStorageBufferOffsetAlignment {self._align}")
            if n > self._max_binding or n % 4 or n == 0:
                raise BridgeError(f"{key} binding {i + 1}: size {n} must be a non-zero multiple of 4 "
                                  f"<= maxStorageBufferBindingSize {self._max_binding}")
        x, y, z = groups
        if max(x, y, z) > self._max_groups or min(x, y, z) < 1:
            raise BridgeError(f"{key}: dispatch {tuple(groups)} outside 1..maxComputeWorkgroupsPerDimension "
                              f"{self._max_groups}")
        group = self._groups.key(pipeline_id, buffers, uniform)
        if self._groups.get(group) is None:
            if self._groups.full:  # as the real bridges: send the work that uses the groups, start over
                self.submit()
                self._groups.clear()
                self._arena.reset()
            self._groups.add(group, True)
            self._arena.slot(len(uniform))  # WgpuBridge's slot for the group's uniform
            self.bind_group_misses += 1
        self.dispatch_counts[key] += 1
        self.dispatches += 1
        self.workgroups += x * y * z
        self._pending = True

    def submit(self) -> None:
        if self._pending:
            self.submits += 1
            self._pending = False

    # -- reports --

    @property
    def buffers_live(self) -> int:
        return len(self._sizes)

    @property
    def uniform_arena_bytes(self) -> int:
        return self._arena.nbytes

    def counts_by_entry(self) -> Counter:
        """Dispatches per "shader.entry" (summed over constants and weight dtypes)."""
        out: Counter = Counter()
        for key, n in self.dispatch_counts.items():
            out[self._entry_name(key)] += n
        return out

    def _entry_name(self, key: str) -> str:
        entry = self.pipelines[key]
        try:  # webgpu.Context's keys are repr((shader, entry, constants, w_dtype))
            parsed = ast.literal_eval(key)
            return f"{parsed[0]}.{entry}"
        except (ValueError, SyntaxError, TypeError, IndexError):
            return entry

    # -- internals --

    def _check_range(self, what: str, bid: int, offset: int, nbytes: int):
        size = self._sizes.get(bid)
        if size is None:
            raise BridgeError(f"{what}: buffer {bid} does not exist (destroyed or never created)")
        if offset < 0 or nbytes < 0 or offset + nbytes > size:
            raise BridgeError(f"{what}: bytes {offset}..{offset + nbytes} of buffer {bid} are past its "
                              f"{size} bytes")


@contextlib.contextmanager
def counting(bridge: CountingBridge | str | dict = "desktop"):
    """Install a CountingBridge (or a new one over these limits) as the WebGPU backend's device for
    the `with` block; yields the backend's Context and restores the previous device afterwards."""
    with using(bridge if isinstance(bridge, CountingBridge) else CountingBridge(bridge)) as ctx:
        yield ctx
