"""The WebGPU backend's device context: a device bridge, the buffer pool, the pipeline cache, dispatch
batching and byte counts. The op modules (webgpu/ops/*.py) work through it; nothing here knows an op.

Context API (what ops/*.py use)
-------------------------------
ctx = context()                  the process-wide context, made on first use over bridges/wgpu.py
                                 (`use_bridge(bridge)` installs another, e.g. the browser's;
                                 `with using(bridge_or_context) as ctx:` installs one for a block)
ctx.compute                      the activation dtype new tensors get: "f32" (the default) or "f16"
                                 (needs the adapter's shader-f16); ops give their output the dtype
                                 of their input, so one setting decides a whole stage
ctx.empty(shape, dtype=None)     uninitialised tensor (dtype: ctx.compute), its buffer from the pool
ctx.upload(array, dtype=None)    host array -> new tensor of dtype (ctx.compute; "u32" for index
                                 tensors); ctx.read(t) -> a host float32 (or uint32) array
ctx.view(t, shape, offset_elems) a tensor sharing t's buffer (the offset must meet
                                 limits["minStorageBufferOffsetAlignment"] to be bound)
ctx.run(shader, entry, buffers, params, groups, constants=None, w_dtype=None, t_dtype=None)
    shader     file stem in shaders/ ("matmul" -> shaders/matmul.wgsl), or a Path to a .wgsl file
               elsewhere (the benchmark's kernel ladder); see shaders.py for includes and constants
    entry      the @compute entry point
    buffers    GPUTensor / GPUWeight objects bound at @binding(1..n) in order, each to exactly its
               own bytes (offset .offset, size .nbytes); @binding(0) is the uniform
    params     the uniform struct's fields in declaration order, [("u32"|"i32"|"f32", value), ..],
               packed little-endian and zero-padded to 16 bytes (scalars only: no vec/array fields)
    groups     (x, y, z) workgroup counts; each must be <= ctx.limits["maxComputeWorkgroupsPerDimension"]
               (65535 on every adapter): fold big 1-D grids with ctx.grid
    constants  {"NAME": "text"}: host constants substituted before compiling (shaders.py)
    w_dtype    "f32" | "f16" | "bf16" (None: "f32"): the weight dtype the shader is compiled for;
               every GPUWeight in `buffers` must hold this dtype
    t_dtype    "f32" | "f16" (None: "f32"): the activation type T the shader is compiled for; every
               f32/f16 GPUTensor in `buffers` must hold it
    The shader is compiled with SUBGROUPS = ctx.subgroups (shaders.py).
    op, flop, nbytes: what a running profile.Profiler files the dispatch under: its op kind, its
               FLOPs, and the bytes it moves (default: its bindings' sizes)
    Pipelines are compiled once per (shader, entry, constants, w_dtype, t_dtype, subgroups). Dispatches are recorded and
    submitted in batches of SUBMIT_EVERY, the first batch after a readback already at SUBMIT_FIRST
    (the GPU, idle while the host read its last result, starts on the next step while Python still
    records it); reads and host writes submit what is pending first.
    An entry point must statically use every binding it is given (layouts are "auto").
ctx.grid(n_groups) -> (x, y, 1)  a 1-D grid of n_groups workgroups folded into x and y; the shader
                                 reads its group with shaders/include/grid.wgsl
ctx.dummy(w_dtype) -> GPUWeight  a 16-byte placeholder to bind where an optional input is absent
ctx.limits                       the adapter's limits (WebGPU camelCase names) and "features" list
ctx.features                     set of feature names (WebGPU's), e.g. {"shader-f16", "subgroups"}
ctx.set_tuning(t)                the autotuned kernel choices to use (tuning.py), None for the rules
ctx.subgroups                    whether kernels use subgroup operations: the adapter has "subgroups"
                                 (a test or benchmark may turn it off to run the fallbacks)
ctx.bytes_in_use                 bytes of GPU buffers held by live tensors and weights
ctx.bytes_weights                the part of bytes_in_use held by weights (GPUWeight)
ctx.bytes_pooled                 bytes of idle buffers kept in the pool
ctx.bytes_reserved               bytes_in_use + bytes_pooled
ctx.peak_bytes                   the largest bytes_reserved seen (what the GPU actually held)
ctx.peak_weights                 bytes_weights at that peak (the rest of it is activations and pool)
ctx.reset_peak(), ctx.trim()     restart the peak count; free the pool's idle buffers
ctx.part_of_fused(w)             GPUWeight w was copied into a fused weight: its drop leaves the pool
ctx.submit()                     send recorded work now
ctx.finish()                     send it and wait until the GPU has run it
ctx.fits(nbytes)                 whether a buffer of nbytes can be made and bound here
ctx.check_size(nbytes, what)     raise GPULimitError("<what> needs N MB but this adapter's
                                 maxStorageBufferBindingSize is M MB") when a buffer cannot be bound
ctx.dispatches                   dispatches recorded so far

GPUTensor: .shape, .nbytes (bytes bound: the elements' bytes rounded up to whole u32s), .buffer
           (bridge buffer id), .offset (bytes), .dtype ("f32" | "f16"; "u32" for index tensors);
           freed back to the pool when garbage-collected (or by .release()).
GPUWeight: .shape, .dtype ("f32"|"f16"|"bf16"), .buffer, .nbytes, .offset (0); one buffer of its
           own, made by upload.py (16-bit dtypes packed two per u32, little-endian).

Buffers come from a pool of size classes (8 per power of two, so at most 1/8 is wasted); a freed
tensor's buffer is reused by the next tensor of its class. Reuse is safe without waiting for the GPU:
every later use is a later dispatch in the same queue. The lowest free buffer id of a class is
taken first, so which buffer a tensor gets depends only on the set of free buffers, not on the
order Python freed them: every denoising step then binds the same buffers with the same uniforms,
and the bridge's bind-group cache (bridges/groups.py) serves the whole step.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import struct
import weakref

import numpy as np

from ...errors import SdwebError
from . import shaders

SUBMIT_EVERY = 128  # dispatches per submit: large enough to amortise a submit, small enough to overlap
SUBMIT_FIRST = 16  # dispatches after a readback before the first submit: the GPU's idle gap between steps


class GPULimitError(SdwebError):
    """A buffer is larger than the adapter allows (maxStorageBufferBindingSize / maxBufferSize)."""


def _mb(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.0f} MB"
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def _size_class(nbytes: int) -> int:
    """nbytes rounded up to one of 8 sizes per power of two (>= 256 bytes)."""
    n = max(256, nbytes)
    step = 1 << max(8, n.bit_length() - 4)  # 8 steps between 2^k and 2^(k+1)
    return -(-n // step) * step


class _Buffer:
    """A pooled GPU buffer; returned to the pool when no tensor refers to it any more."""

    __slots__ = ("id", "size", "finalizer", "__weakref__")

    def __init__(self, ctx, bid: int, size: int):
        self.id, self.size = bid, size
        self.finalizer = weakref.finalize(self, ctx._release, bid, size)


ITEMSIZE = {"f32": 4, "f16": 2, "u32": 4}  # bytes per element of a GPUTensor dtype
_HOST = {"f32": np.float32, "f16": np.float16, "u32": np.uint32}


def tensor_bytes(shape, dtype: str) -> int:
    """Bytes a tensor binds: its elements' bytes rounded up to whole u32s (WebGPU binds multiples of 4)."""
    return -(-ITEMSIZE[dtype] * math.prod(shape) // 4) * 4


class GPUTensor:
    """An f32 or f16 (or u32 index) tensor in a GPU buffer: `shape`, bytes [offset, offset + nbytes)."""

    __slots__ = ("shape", "nbytes", "offset", "dtype", "_buf")

    def __init__(self, shape, buf: _Buffer, offset: int = 0, dtype: str = "f32"):
        self.shape = tuple(int(s) for s in shape)
        self.nbytes = tensor_bytes(self.shape, dtype)
        self.offset, self.dtype, self._buf = offset, dtype, buf

    @property
    def buffer(self) -> int:
        return self._buf.id

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def release(self) -> None:
        """Give the buffer back now (every tensor sharing it must be dead too)."""
        self._buf.finalizer()

    def __repr__(self):
        return f"GPUTensor{self.shape}"


class GPUWeight:
    """A weight uploaded once: `shape`, `dtype` f32 | f16 | bf16, its own buffer."""

    __slots__ = ("shape", "dtype", "buffer", "nbytes", "offset", "_finalizer", "__weakref__")

    def __init__(self, ctx, shape, dtype: str, data: bytes | None, what: str | None = None, nbytes: int = 0):
        """`data`: the buffer's bytes; None leaves the new buffer of `nbytes` for the caller to fill."""
        self.shape, self.dtype, self.offset = tuple(int(s) for s in shape), dtype, 0
        self.nbytes = len(data) if data is not None else nbytes
        ctx.check_size(self.nbytes, what or f"a {self.shape} {dtype} weight")
        if ctx._stage_ended:  # a model was dropped: destroy its weights and the idle pool before loading this one
            ctx.trim()
        elif ctx._graveyard:  # the parts of a fused weight (part_of_fused): destroyed before this one comes
            ctx.submit()
        self.buffer = ctx.bridge.create_buffer(self.nbytes)
        if data is not None:
            ctx.bridge.write_buffer(self.buffer, 0, data)
        ctx.bytes_weights += self.nbytes
        ctx._account(self.nbytes, +1)
        self._finalizer = weakref.finalize(self, ctx._drop_weight, self.buffer, self.nbytes)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __repr__(self):
        return f"GPUWeight{self.shape}:{self.dtype}"


class Context:
    """The device context: bridge, pipeline cache, buffer pool, dispatch batching, byte counts."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.limits = bridge.limits()
        self.features = set(self.limits.get("features", ()))
        self.subgroups = "subgroups" in self.features
        self.compute = "f32"
        self.tuning = None  # tuning.Tuning: the autotuned kernel choices for this adapter, when loaded
        self.plans: dict = {}  # the ops' kernel choices by (op, shape key), as made (ops/gemm.py, attention.py)
        self.profiler = None  # profile.Profiler while --profile records timestamps
        self.max_groups = int(self.limits.get("maxComputeWorkgroupsPerDimension", 65535))
        self.max_binding = int(self.limits.get("maxStorageBufferBindingSize", 1 << 27))
        self.max_buffer = int(self.limits.get("maxBufferSize", 1 << 28))
        self.offset_align = int(self.limits.get("minStorageBufferOffsetAlignment", 256))
        self._fits = min(self.max_binding, self.max_buffer)  # any buffer up to this size is allowed
        self._pipelines: dict[tuple, int] = {}
        self._free: dict[int, list[int]] = {}  # size class -> heap of idle buffer ids
        self._graveyard: list[int] = []  # buffers to destroy after the next submit
        self._stage_ended = False
        self._pending = 0
        self._submit_at = SUBMIT_FIRST
        self._dummies: dict[str, GPUWeight] = {}
        self.bytes_in_use = 0
        self.bytes_pooled = 0
        self.bytes_weights = 0
        self.peak_bytes = 0
        self.peak_weights = 0
        self.dispatches = 0

    # -- memory --

    @property
    def bytes_reserved(self) -> int:
        return self.bytes_in_use + self.bytes_pooled

    def _account(self, nbytes: int, sign: int):
        self.bytes_in_use += sign * nbytes
        if self.bytes_reserved > self.peak_bytes:
            self.peak_bytes, self.peak_weights = self.bytes_reserved, self.bytes_weights

    def reset_peak(self):
        self.peak_bytes, self.peak_weights = self.bytes_reserved, self.bytes_weights

    def fits(self, nbytes: int) -> bool:
        """Whether a buffer of nbytes can be made and bound on this adapter."""
        return nbytes <= self.max_binding and nbytes <= self.max_buffer

    def check_size(self, nbytes: int, what: str):
        if nbytes <= self._fits:
            return
        for limit, lname in ((self.max_binding, "maxStorageBufferBindingSize"), (self.max_buffer, "maxBufferSize")):
            if nbytes > limit:
                raise GPULimitError(f"{what} needs {_mb(nbytes)} but this adapter's {lname} is {_mb(limit)}")

    def _alloc(self, nbytes: int, what: str) -> _Buffer:
        self.check_size(nbytes, what)
        size = _size_class(nbytes)
        if size > self.max_binding or size > self.max_buffer:
            size = -(-nbytes // 16) * 16  # the class would not fit: exact size
        free = self._free.get(size)
        if free:
            bid = heapq.heappop(free)
            self.bytes_pooled -= size
        else:
            if self._stage_ended:  # the last stage's idle buffers are of no use to this one
                self.trim()
            bid = self.bridge.create_buffer(size)
        self._account(size, +1)
        return _Buffer(self, bid, size)

    def _release(self, bid: int, size: int):
        self.bytes_in_use -= size
        self.bytes_pooled += size
        heapq.heappush(self._free.setdefault(size, []), bid)

    def _drop_weight(self, bid: int, nbytes: int, ends_stage: bool = True):
        self.bytes_in_use -= nbytes
        self.bytes_weights -= nbytes
        self._graveyard.append(bid)  # a recorded dispatch may still read it
        if ends_stage:  # a model was dropped: trim the pool at the next allocation miss
            self._stage_ended = True

    def part_of_fused(self, w: GPUWeight):
        """Weight `w` has been copied into a fused weight: when it goes, its buffer goes, but the pool
        stays (a part going away is not a model going away; else a pipeline that keeps its
        components would find its pool trimmed mid-load in the first run only, and grow it in the
        second)."""
        w._finalizer.detach()
        w._finalizer = weakref.finalize(w, self._drop_weight, w.buffer, w.nbytes, False)

    def trim(self):
        """Destroy the pool's idle buffers. Done by itself at the first allocation miss or weight upload
        after a model is dropped (the pipeline drops each component after its stage), so one stage's
        leftovers, and the dropped weights themselves, do not add to the next stage's peak."""
        self._stage_ended = False
        for size, ids in self._free.items():
            self._graveyard.extend(ids)
            self.bytes_pooled -= size * len(ids)
        self._free.clear()
        self.submit()

    def scratch(self, nbytes: int, what: str) -> int:
        """A bridge buffer outside the pool, counted as in use until `drop_scratch` (upload.py's
        conversion buffer)."""
        self.check_size(nbytes, what)
        bid = self.bridge.create_buffer(nbytes)
        self._account(nbytes, +1)
        return bid

    def drop_scratch(self, bid: int, nbytes: int):
        """Send recorded work, then destroy a scratch buffer at once: loading is not a hot path, and
        many tensors' temporaries must never wait in the graveyard together."""
        self._graveyard.append(bid)
        self.submit()
        self._account(nbytes, -1)

    # -- tensors --

    def set_tuning(self, tuning) -> None:
        """Let `tuning` (tuning.Tuning, or None for the rules alone) choose kernel configurations from
        now on; the choices made so far are forgotten."""
        self.tuning = tuning
        self.plans.clear()

    def set_compute(self, dtype: str) -> str:
        """Make `dtype` ("f32" | "f16") the activation dtype of new tensors; -> the previous one."""
        if dtype not in ("f32", "f16"):
            raise SdwebError(f"compute dtype {dtype!r}: use f32 or f16")
        if dtype == "f16" and "shader-f16" not in self.features:
            raise SdwebError(f"f16 compute needs the adapter's shader-f16 feature, which "
                             f"{self.limits.get('adapter', 'this adapter')} lacks; use f32")
        previous, self.compute = self.compute, dtype
        return previous

    def empty(self, shape, dtype: str | None = None) -> GPUTensor:
        shape = tuple(int(s) for s in shape)
        dt = dtype or self.compute
        return GPUTensor(shape, self._alloc(tensor_bytes(shape, dt), f"activation {shape}"), 0, dt)

    def upload(self, a: np.ndarray, dtype: str | None = None) -> GPUTensor:
        """Host array -> new tensor of dtype (ctx.compute by default; "u32" for index tensors)."""
        dt = dtype or self.compute
        a = np.ascontiguousarray(a, dtype=_HOST[dt])
        t = self.empty(a.shape, dt)
        if a.size:
            data = a.tobytes()
            self.bridge.write_buffer(t.buffer, t.offset, data + bytes(-len(data) % 4))
        return t

    def view(self, t: GPUTensor, shape, offset_elems: int = 0) -> GPUTensor:
        """A tensor sharing t's buffer (no copy); the caller checks the offset's alignment."""
        return GPUTensor(shape, t._buf, t.offset + ITEMSIZE[t.dtype] * offset_elems, t.dtype)

    def read(self, t) -> np.ndarray:
        """The readback: submits pending work, waits, copies t's bytes to the host (f16 widened to
        float32)."""
        data = self.bridge.read_buffer(t.buffer, t.offset, t.nbytes) if t.nbytes else b""
        self._pending = 0  # read_buffer submitted them
        self._submit_at = SUBMIT_FIRST
        self._bury()
        a = np.frombuffer(data, _HOST[t.dtype], count=t.size).reshape(t.shape)
        return a.astype(np.float32) if t.dtype == "f16" else a.copy()

    def dummy(self, w_dtype: str | None = None) -> GPUWeight:
        dt = w_dtype or "f32"
        if dt not in self._dummies:
            self._dummies[dt] = GPUWeight(self, (4,), dt, bytes(16))
        return self._dummies[dt]

    # -- dispatch --

    def grid(self, n_groups: int) -> tuple[int, int, int]:
        n = max(1, int(n_groups))
        x = min(n, self.max_groups)
        return x, -(-n // x), 1

    def pipeline(self, shader, entry: str, constants: dict | None = None, w_dtype: str | None = None,
                 t_dtype: str | None = None) -> int:
        key = (str(shader), entry, tuple(sorted((constants or {}).items())), w_dtype or "f32", t_dtype or "f32",
               self.subgroups)
        pid = self._pipelines.get(key)
        if pid is None:
            src = shaders.source(shader, constants, w_dtype, t_dtype, self.subgroups)
            pid = self._pipelines[key] = self.bridge.pipeline(repr(key), src, entry)
        return pid

    def run(self, shader, entry: str, buffers, params, groups, constants=None, w_dtype=None, t_dtype=None,
            op: str | None = None, flop: int = 0, nbytes: int | None = None):
        pid = self.pipeline(shader, entry, constants, w_dtype, t_dtype)
        dt, tt = w_dtype or "f32", t_dtype or "f32"
        for t in buffers:
            if isinstance(t, GPUWeight) and t.dtype != dt:
                raise SdwebError(f"{shader}.{entry}: a {t.dtype} weight bound where {dt} weights were "
                                 f"compiled for (pass w_dtype={t.dtype!r})")
            if isinstance(t, GPUTensor) and t.dtype == "f16" != tt:  # (f32 scratch, e.g. split-K sums, binds anywhere)
                raise SdwebError(f"{shader}.{entry}: an f16 tensor bound where {tt} activations were "
                                 f"compiled for (pass t_dtype='f16')")
        if any(g > self.max_groups for g in groups):
            raise SdwebError(f"{shader}.{entry}: dispatch {tuple(groups)} exceeds "
                             f"maxComputeWorkgroupsPerDimension {self.max_groups}; fold it (ctx.grid)")
        if min(groups) <= 0 or any(t.nbytes == 0 for t in buffers):
            return  # nothing to do (an empty tensor)
        uniform = b"".join(struct.pack("<" + {"u32": "I", "i32": "i", "f32": "f"}[kind], v) for kind, v in params)
        uniform += bytes(-len(uniform) % 16 if uniform else 16)  # padded to 16 bytes, never empty
        self.bridge.dispatch(pid, [(t.buffer, t.offset, t.nbytes) for t in buffers], uniform, tuple(groups))
        if self.profiler is not None:
            moved = sum(t.nbytes for t in buffers) if nbytes is None else nbytes
            self.profiler.dispatched(op or f"{shader}.{entry}", flop, moved)
        self.dispatches += 1
        self._pending += 1
        if self._pending >= self._submit_at:
            self.submit()

    def submit(self):
        self.bridge.submit()
        self._pending = 0
        self._submit_at = SUBMIT_EVERY
        self._bury()

    def finish(self):
        """Wait until the GPU has run everything recorded so far (a 4-byte readback)."""
        d = self.dummy("f32")
        self.bridge.read_buffer(d.buffer, 0, 4)
        self._pending = 0
        self._bury()

    def _bury(self):
        while self._graveyard:
            self.bridge.destroy_buffer(self._graveyard.pop())


# --- the process-wide context ---------------------------------------------------------------------

_ctx: Context | None = None


def use_bridge(bridge) -> Context:
    """Make `bridge` (an object with the device-bridge interface, bridges/__init__.py) the backend's
    device, in a new context."""
    global _ctx
    _ctx = Context(bridge)
    return _ctx


@contextlib.contextmanager
def using(target):
    """Make `target` (a Context, or a bridge to make one over) the backend's device for the `with`
    block; yields the context and restores the previous one afterwards."""
    global _ctx
    saved = _ctx
    _ctx = target if isinstance(target, Context) else Context(target)
    try:
        yield _ctx
    finally:
        _ctx = saved


def context() -> Context:
    """The process-wide device context, created on first use over bridges/wgpu.py's WgpuBridge."""
    global _ctx
    if _ctx is None:
        from ..bridges.wgpu import WgpuBridge  # the wgpu package is optional: imported only when needed

        _ctx = Context(WgpuBridge())
    return _ctx


def available() -> bool:
    """True when a WebGPU adapter can be had (the `wgpu` package is installed and finds one)."""
    if _ctx is not None:
        return True
    try:
        from ..bridges import wgpu as wgpu_bridge
    except Exception:  # the wgpu package missing or its native library failing to load
        return False
    return wgpu_bridge.adapter() is not None
