"""WgpuBridge: the device-bridge interface (bridges/__init__.py) over the `wgpu` package (wgpu-py ->
wgpu-native -> Vulkan / Metal / D3D12; lavapipe on a CPU-only Linux box), for CPython.

Bind groups come from the shared groups.BindGroupCache, so from the second denoising step on a
dispatch is three calls on an existing bind group. Each cached group's uniform lives in its own slot
of an append-only arena of uniform buffers (groups.UniformArena), written once, batched per submit.

With timestamps on (the optional `timestamps` / `read_timestamps`, where the adapter has
timestamp-query) every dispatch gets a compute pass of its own whose begin and end write timestamps
into a query set; batches of TIMESTAMP_BATCH dispatches are resolved into a buffer at the next submit.
"""

from __future__ import annotations

import numpy as np
import wgpu

from ...errors import SafetensorsError
from .groups import BindGroupCache, UniformArena

# Limits the backend reads; requested at the adapter's maximum when the device is created.
_LIMITS = ("maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupsPerDimension",
           "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX", "maxComputeWorkgroupSizeY",
           "maxComputeWorkgroupSizeZ", "maxComputeWorkgroupStorageSize", "maxStorageBuffersPerShaderStage",
           "minStorageBufferOffsetAlignment", "minUniformBufferOffsetAlignment")


# Optional features the backend uses where the adapter has them: wgpu-native's name -> WebGPU's.
# shader-f16: f16 compute; subgroups: reductions and shuffles; timestamp-query: --profile and tuning.
_FEATURES = {"shader-f16": "shader-f16", "subgroup": "subgroups", "subgroups": "subgroups",
             "timestamp-query": "timestamp-query"}


TIMESTAMP_BATCH = 1024  # dispatches timed per query set


def _kebab(name: str) -> str:
    return "".join("-" + c.lower() if c.isupper() else c for c in name)


_adapters: dict = {}


def adapter(power_preference: str = "high-performance"):
    """The wgpu adapter (asked for once), or None when there is none (no Vulkan/Metal/D3D12 driver)."""
    if power_preference not in _adapters:
        try:
            _adapters[power_preference] = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
        except Exception:  # wgpu raises RuntimeError or its own error types when no adapter exists
            _adapters[power_preference] = None
    return _adapters[power_preference]


class WgpuBridge:
    """A device on the best adapter, with the adapter's maximum limits and its optional features
    (shader-f16, subgroups, timestamp-query) where offered; limits()["features"] spells them as
    WebGPU does."""

    def __init__(self, adapter_=None):
        self.adapter = adapter_ or adapter()
        if self.adapter is None:
            raise RuntimeError("no WebGPU adapter found")
        lim = self.adapter.limits
        required = {_kebab(k): lim[_kebab(k)] for k in _LIMITS if _kebab(k) in lim}
        features = [f for f in _FEATURES if f in self.adapter.features]
        self.device = self.adapter.request_device_sync(required_features=features, required_limits=required)
        self.queue = self.device.queue
        self._limits = {k: int(self.device.limits[_kebab(k)]) for k in _LIMITS if _kebab(k) in self.device.limits}
        self._limits["features"] = sorted({_FEATURES[f] for f in self.device.features if f in _FEATURES})
        info = self.adapter.info
        self._limits["adapter"] = f"{info.get('device', '?')} ({info.get('backend_type', '?')})"
        self._limits["adapterType"] = str(info.get("adapter_type", ""))
        self._buffers: dict[int, object] = {}
        self._next_id = 1
        self._pipelines: dict[str, tuple] = {}  # key -> (id, pipeline, bind group layout)
        self._pipeline_ids: list[tuple] = []  # id -> the same tuple
        self._groups = BindGroupCache()
        self._arena = UniformArena(self._limits.get("minUniformBufferOffsetAlignment", 256))
        self._blocks: list = []  # per arena block: [uniform buffer, host copy, bytes written to the GPU]
        self._encoder = None
        self._pass = None
        self._current = None  # the pipeline set on the open pass
        self._timing = False
        self._ts = None  # the query set being filled: [query set, resolve buffer, dispatches timed]
        self._ts_done: list = []  # [(query set, resolve buffer, dispatches)] resolved, not yet read
        self.dispatches = 0  # recorded since the device was made (for tests and benchmarks)
        self.submits = 0

    # -- interface --

    def limits(self) -> dict:
        return dict(self._limits)

    def create_buffer(self, nbytes: int) -> int:
        u = wgpu.BufferUsage
        buf = self.device.create_buffer(size=max(16, nbytes), usage=u.STORAGE | u.COPY_SRC | u.COPY_DST)
        bid = self._next_id
        self._next_id += 1
        self._buffers[bid] = buf
        return bid

    def write_buffer(self, bid: int, offset: int, data) -> None:
        if self._encoder is not None:
            self.submit()  # a queue write runs before unsubmitted work: send that work first
        self.queue.write_buffer(self._buffers[bid], offset, data)

    def upload_span(self, bid: int, source, offset: int, nbytes: int) -> None:
        # CPython has no separate heap to keep the bytes out of: read them here (a memoryview of
        # the mmap for a file opened by path) and write them as write_buffer does.
        data = source.read(offset, nbytes)
        got = memoryview(data).nbytes
        if got != nbytes:
            raise SafetensorsError(f"{getattr(source, 'name', 'byte source')}: short read of {nbytes} bytes at "
                                   f"offset {offset}, got {got} (file changed or truncated?)")
        if nbytes % 4:
            data = bytes(data) + bytes(-nbytes % 4)  # queue writes come in whole u32s
        self.write_buffer(bid, 0, data)

    def read_buffer(self, bid: int, offset: int, nbytes: int) -> bytes:
        self.submit()
        return bytes(self.queue.read_buffer(self._buffers[bid], offset, nbytes))

    def destroy_buffer(self, bid: int) -> None:
        buf = self._buffers.pop(bid, None)
        if buf is not None:
            self._groups.drop_buffer(bid)
            buf.destroy()

    def pipeline(self, key: str, wgsl: str, entry: str) -> int:
        hit = self._pipelines.get(key)
        if hit is None:
            # wgpu-native's WGSL front end (naga) has subgroup operations without the standard's
            # `enable subgroups;` and refuses the directive, which Chrome requires
            wgsl = wgsl.replace("enable subgroups;\n", "")
            module = self.device.create_shader_module(code=wgsl, label=key)
            pipe = self.device.create_compute_pipeline(layout="auto", label=key,
                                                       compute={"module": module, "entry_point": entry})
            hit = self._pipelines[key] = (len(self._pipeline_ids), pipe, pipe.get_bind_group_layout(0))
            self._pipeline_ids.append(hit)
        return hit[0]

    def dispatch(self, pipeline_id: int, buffers, uniform: bytes, groups) -> None:
        key = self._groups.key(pipeline_id, buffers, uniform)
        group = self._groups.get(key)
        if group is None:
            if self._groups.full:
                self._reset_groups()
            group = self._groups.add(key, self._bind_group(key))
        if self._timing:
            self._timed_dispatch(pipeline_id, group, groups)
            return
        if self._pass is None:
            self._encoder = self.device.create_command_encoder()
            self._pass = self._encoder.begin_compute_pass()
            self._current = None
        if pipeline_id != self._current:
            self._pass.set_pipeline(self._pipeline_ids[pipeline_id][1])
            self._current = pipeline_id
        self._pass.set_bind_group(0, group)
        self._pass.dispatch_workgroups(*groups)
        self.dispatches += 1

    def submit(self) -> None:
        for block in self._blocks:  # uniforms of the groups made since the last submit
            arena, data, written = block
            if written < len(data):
                self.queue.write_buffer(arena, written, data, written, len(data) - written)
                block[2] = len(data)
        if self._encoder is None:
            return
        if self._pass is not None:
            self._pass.end()
        if self._ts is not None and self._ts[2]:
            self._resolve_timestamps()
        self.queue.submit([self._encoder.finish()])
        self._encoder = self._pass = None
        self.submits += 1

    # -- timestamps (optional interface) --

    def timestamps(self, on: bool) -> bool:
        """Time every dispatch from now on (or stop); -> whether this device can (timestamp-query)."""
        if on and "timestamp-query" not in self._limits["features"]:
            return False
        self.submit()  # the open pass (untimed) ends here
        self._timing = bool(on)
        return True

    def read_timestamps(self) -> list[float]:
        """Milliseconds each dispatch timed since the last call took on the GPU, in dispatch order
        (submits pending work first, then waits for it)."""
        self.submit()
        out = []
        for qs, buf, n in self._ts_done:
            t = np.frombuffer(self.queue.read_buffer(buf, 0, 16 * n), np.uint64).astype(np.float64)
            out.extend(((t[1::2] - t[0::2]) * 1e-6).tolist())  # nanoseconds -> ms
            buf.destroy()
            qs.destroy()
        self._ts_done.clear()
        return out

    def _timed_dispatch(self, pipeline_id: int, group, groups) -> None:
        if self._encoder is None:
            self._encoder = self.device.create_command_encoder()
        if self._ts is None:
            u = wgpu.BufferUsage
            self._ts = [self.device.create_query_set(type="timestamp", count=2 * TIMESTAMP_BATCH),
                        self.device.create_buffer(size=16 * TIMESTAMP_BATCH, usage=u.QUERY_RESOLVE | u.COPY_SRC), 0]
        qs, _, n = self._ts
        p = self._encoder.begin_compute_pass(timestamp_writes={
            "query_set": qs, "beginning_of_pass_write_index": 2 * n, "end_of_pass_write_index": 2 * n + 1})
        p.set_pipeline(self._pipeline_ids[pipeline_id][1])
        p.set_bind_group(0, group)
        p.dispatch_workgroups(*groups)
        p.end()
        self._ts[2] += 1
        self.dispatches += 1
        if self._ts[2] == TIMESTAMP_BATCH:
            self._resolve_timestamps()

    def _resolve_timestamps(self) -> None:
        qs, buf, n = self._ts
        self._encoder.resolve_query_set(qs, 0, 2 * n, buf, 0)
        self._ts_done.append((qs, buf, n))
        self._ts = None

    # -- bind groups and their uniforms --

    def _bind_group(self, key):
        pipeline_id, buffers, uniform = key
        arena, offset = self._uniform_slot(uniform)
        entries = [{"binding": 0, "resource": {"buffer": arena, "offset": offset, "size": len(uniform)}}]
        for i, (bid, off, nbytes) in enumerate(buffers):
            entries.append({"binding": i + 1,
                            "resource": {"buffer": self._buffers[bid], "offset": off, "size": nbytes}})
        return self.device.create_bind_group(layout=self._pipeline_ids[pipeline_id][2], entries=entries)

    def _reset_groups(self):
        self.submit()  # recorded work reads the slots about to be reused; queue order protects it after this
        self._groups.clear()
        self._arena.reset()
        for block in self._blocks:
            block[1].clear()
            block[2] = 0

    def _uniform_slot(self, uniform: bytes):
        """(arena buffer, offset) of a fresh slot holding `uniform`, written at the next submit."""
        block, offset = self._arena.slot(len(uniform))
        if block == len(self._blocks):
            u = wgpu.BufferUsage
            buf = self.device.create_buffer(size=UniformArena.BLOCK_BYTES, usage=u.UNIFORM | u.COPY_DST)
            self._blocks.append([buf, bytearray(), 0])
        arena, data, _ = self._blocks[block]
        data.extend(bytes(offset - len(data)))
        data.extend(uniform)
        return arena, offset
