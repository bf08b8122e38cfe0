"""The WebGPU backend: the functions of `backends/numpy.py`, run as WGSL kernels from `shaders/`.

Tensors are GPU buffer handles (`GPUTensor`); ops record dispatches through a device bridge
(`wgpu_bridge.py` in CPython, web/bridge/ in the browser) and nothing comes back to the host until
`numpy(t)` reads a tensor back. Op modules live in `gpu_ops/` (one per op family: validate, pick the
shader and its constants, pack the uniform, size the dispatch); this file holds the device context
they share and the backend functions the models call.

Context API (what gpu_ops/*.py use)
-----------------------------------
ctx = context()                  the process-wide context, made on first use from the bridge
                                 (`use_bridge(bridge)` installs another, e.g. the browser's)
ctx.empty(shape) -> GPUTensor    uninitialised f32 tensor, its buffer from the pool
ctx.upload(array, dtype="f32")   host array -> new tensor ("u32" for index tensors); ctx.read(t) back
ctx.view(t, shape, offset_elems) a tensor sharing t's buffer (the offset must meet
                                 limits["minStorageBufferOffsetAlignment"] to be bound)
ctx.run(shader, entry, buffers, params, groups, constants=None, w_dtype=None)
    shader     file stem in shaders/ ("matmul" -> shaders/matmul.wgsl)
    entry      the @compute entry point
    buffers    GPUTensor / GPUWeight objects bound at @binding(1..n) in order, each to exactly its
               own bytes (offset .offset, size .nbytes); @binding(0) is the uniform
    params     the uniform struct's fields in declaration order, [("u32"|"i32"|"f32", value), ..],
               packed little-endian and zero-padded to 16 bytes (scalars only: no vec/array fields)
    groups     (x, y, z) workgroup counts; each must be <= ctx.limits["maxComputeWorkgroupsPerDimension"]
               (65535 on every adapter): fold big 1-D grids with ctx.grid
    constants  {"NAME": "text"}: every whole-word NAME in the source is replaced by the text before
               compiling (tile sizes, fused activation ...). The whole file is compiled for any
               entry, so a file gives every constant a default on a line `// @defaults A=1 B=gelu`
               (the @defaults line itself is substituted too, harmlessly: it is a comment)
    w_dtype    "f32" | "f16" | "bf16" (None: "f32"): substitutes W_TYPE and W_LOAD(w, i) as
               docs/architecture.md describes; every GPUWeight in `buffers` must hold this dtype
    Pipelines are compiled once per (shader, entry, constants, w_dtype). Dispatches are recorded and
    submitted in batches of SUBMIT_EVERY; numpy() and host writes submit what is pending first.
    An entry point must statically use every binding it is given (layouts are "auto").
ctx.grid(n_groups) -> (x, y, 1)  a 1-D grid of n_groups workgroups folded into x and y; the shader
                                 reads its group as wid.x + wid.y * nwg.x (nwg = num_workgroups)
ctx.dummy(w_dtype) -> GPUWeight  a 16-byte placeholder to bind where an optional input is absent
ctx.limits                       the adapter's limits (WebGPU camelCase names) and "features" list
ctx.features                     set of feature names, e.g. {"shader-f16", ...}
ctx.bytes_in_use                 bytes of GPU buffers held by live tensors and weights
ctx.bytes_weights                the part of bytes_in_use held by weights (GPUWeight)
ctx.bytes_pooled                 bytes of idle buffers kept in the pool
ctx.bytes_reserved               bytes_in_use + bytes_pooled
ctx.peak_bytes                   the largest bytes_reserved seen (what the GPU actually held)
ctx.peak_weights                 bytes_weights at that peak (the rest of it is activations and pool)
ctx.reset_peak(), ctx.trim()     restart the peak count; free the pool's idle buffers
ctx.submit()                     send recorded work now
ctx.check_size(nbytes, what)     raise GPULimitError("<what> needs N MB but this adapter's
                                 maxStorageBufferBindingSize is M MB") when a buffer cannot be bound
ctx.dispatches                   dispatches recorded so far

Module level, besides numpy.py's functions: available() (an adapter can be had; the CLI falls back
to NumPy otherwise), context(), use_bridge(bridge), weight(array, name=None) (name: for the limit
error), check_weights(store) (every tensor of a WeightStore fits, checked before uploading),
softmax(x), shader_source(stem, constants, w_dtype) (the WGSL as compiled). Shaders are read from
shaders/ at the repository root (or sdweb/shaders/ in a wheel, or $SDWEB_SHADERS).

GPUTensor: .shape, .nbytes, .buffer (bridge buffer id), .offset (bytes), .dtype ("f32"; "u32" for
           index tensors); freed back to the pool when garbage-collected (or by .release()).
GPUWeight: .shape, .dtype ("f32"|"f16"|"bf16"), .buffer, .nbytes, .offset (0); made once per tensor
           by weight(array) from the store's held arrays (float32 / float16 / uint16 bf16 bits),
           16-bit ones packed two per u32, little-endian, an odd count padded with a zero half; or
           by weight(WeightRef) from a lazy store, the same bytes put there by the bridge's optional
           upload_span straight from the weight file (converted by shaders/convert.wgsl when the
           file's dtype is not the held one), so they never pass through Python.

Buffers come from a pool of size classes (8 per power of two, so at most 1/8 is wasted); a freed
tensor's buffer is reused by the next tensor of its class. Reuse is safe without waiting for the GPU:
every later use is a later dispatch in the same queue. The lowest free buffer id of a class is
taken first, so which buffer a tensor gets depends only on the set of free buffers, not on the
order Python freed them: every denoising step then binds the same buffers with the same uniforms,
and the bridge's bind-group cache serves the whole step.
"""

from __future__ import annotations

import heapq
import math
import os
import re
import struct
import weakref
from pathlib import Path

import numpy as np

from ..errors import SdwebError
from ..weights import WeightRef

name = "webgpu"
takes_weight_refs = True  # weight() accepts a lazy store's WeightRef (see pipeline.Pipeline.load)

SUBMIT_EVERY = 128  # dispatches per submit: large enough to amortise a submit, small enough to overlap

_W_LOAD = {
    "f32": "{w}[{i}]",
    "f16": "unpack2x16float({w}[({i}) >> 1u])[({i}) & 1u]",
    "bf16": "bitcast<f32>((({w}[({i}) >> 1u] >> ((({i}) & 1u) * 16u)) & 0xffffu) << 16u)",
}
_W_TYPE = {"f32": "f32", "f16": "u32", "bf16": "u32"}


class GPULimitError(SdwebError):
    """A buffer is larger than the adapter allows (maxStorageBufferBindingSize / maxBufferSize)."""


def _mb(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.0f} MB"
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


# --- shader sources -------------------------------------------------------------------------------


def _shader_dirs():
    env = os.environ.get("SDWEB_SHADERS")
    here = Path(__file__).resolve()
    return [Path(env)] if env else [here.parents[1] / "shaders", here.parents[3] / "shaders"]


_SOURCES: dict[str, str] = {}


def load_shader(stem: str) -> str:
    """The text of shaders/<stem>.wgsl (SDWEB_SHADERS names another folder), read once."""
    if stem not in _SOURCES:
        for d in _shader_dirs():
            p = d / f"{stem}.wgsl"
            if p.is_file():
                _SOURCES[stem] = p.read_text()
                break
        else:
            raise SdwebError(f"shader {stem}.wgsl not found in {', '.join(map(str, _shader_dirs()))}")
    return _SOURCES[stem]


def shader_defaults(src: str) -> dict[str, str]:
    """Constants' default values from `// @defaults NAME=value NAME=value` lines of a shader: the
    whole file is compiled for each entry, so every constant needs a value."""
    out = {}
    for m in re.finditer(r"^//\s*@defaults\s+(.*)$", src, re.M):
        out.update(kv.split("=", 1) for kv in m.group(1).split())
    return out


def _expand_w_load(src: str, dtype: str) -> str:
    """Replace each W_LOAD(w, i) (i may hold parentheses and commas) by the dtype's load."""
    out, pos = [], 0
    while (k := src.find("W_LOAD(", pos)) >= 0:
        depth, j, comma = 1, k + 7, -1
        while depth:
            c = src[j]
            depth += (c == "(") - (c == ")")
            if c == "," and depth == 1 and comma < 0:
                comma = j
            j += 1
        w, i = src[k + 7:comma].strip(), src[comma + 1:j - 1].strip()
        out += [src[pos:k], "(" + _W_LOAD[dtype].format(w=w, i=i) + ")"]
        pos = j
    return "".join(out) + src[pos:]


def shader_source(stem: str, constants: dict | None = None, w_dtype: str | None = None) -> str:
    """The WGSL sent to the compiler: constants (over the file's @defaults) substituted as whole
    words, then W_TYPE / W_LOAD for the weight dtype."""
    src = load_shader(stem)
    values = {**shader_defaults(src), **(constants or {})}
    if values:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, values)) + r")\b")
        src = pattern.sub(lambda m: str(values[m.group(1)]), src)
    dt = w_dtype or "f32"
    src = re.sub(r"\bW_TYPE\b", _W_TYPE[dt], src)
    return _expand_w_load(src, dt)


# --- tensors and the pool -------------------------------------------------------------------------


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


class GPUTensor:
    """An f32 (or u32 index) tensor in a GPU buffer: `shape`, bytes [offset, offset + nbytes)."""

    __slots__ = ("shape", "nbytes", "offset", "dtype", "_buf")

    def __init__(self, shape, buf: _Buffer, offset: int = 0, dtype: str = "f32"):
        self.shape = tuple(int(s) for s in shape)
        self.nbytes = 4 * math.prod(self.shape)
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
        self.max_groups = int(self.limits.get("maxComputeWorkgroupsPerDimension", 65535))
        self.max_binding = int(self.limits.get("maxStorageBufferBindingSize", 1 << 27))
        self.max_buffer = int(self.limits.get("maxBufferSize", 1 << 28))
        self.offset_align = int(self.limits.get("minStorageBufferOffsetAlignment", 256))
        self._pipelines: dict[tuple, int] = {}
        self._free: dict[int, list[int]] = {}  # size class -> heap of idle buffer ids
        self._graveyard: list[int] = []  # buffers to destroy after the next submit
        self._stage_ended = False
        self._pending = 0
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

    def check_size(self, nbytes: int, what: str):
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

    def _drop_weight(self, bid: int, nbytes: int):
        self.bytes_in_use -= nbytes
        self.bytes_weights -= nbytes
        self._graveyard.append(bid)  # a recorded dispatch may still read it
        self._stage_ended = True  # a model was dropped: trim the pool at the next allocation miss

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

    # -- tensors --

    def empty(self, shape, dtype: str = "f32") -> GPUTensor:
        shape = tuple(int(s) for s in shape)
        return GPUTensor(shape, self._alloc(4 * math.prod(shape), f"activation {shape}"), 0, dtype)

    def upload(self, a: np.ndarray, dtype: str = "f32") -> GPUTensor:
        """Host array -> new tensor (f32, or u32 for index tensors)."""
        a = np.ascontiguousarray(a, dtype=np.float32 if dtype == "f32" else np.uint32)
        t = self.empty(a.shape, dtype)
        if a.size:
            self.bridge.write_buffer(t.buffer, t.offset, a.tobytes())
        return t

    def view(self, t: GPUTensor, shape, offset_elems: int = 0) -> GPUTensor:
        """A tensor sharing t's buffer (no copy); the caller checks the offset's alignment."""
        return GPUTensor(shape, t._buf, t.offset + 4 * offset_elems, t.dtype)

    def read(self, t) -> np.ndarray:
        """The readback: submits pending work, waits, copies t's bytes to the host."""
        data = self.bridge.read_buffer(t.buffer, t.offset, t.nbytes) if t.nbytes else b""
        self._pending = 0  # read_buffer submitted them
        self._bury()
        return np.frombuffer(data, np.float32 if t.dtype == "f32" else np.uint32).reshape(t.shape).copy()

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

    def pipeline(self, shader: str, entry: str, constants: dict | None = None, w_dtype: str | None = None) -> int:
        key = (shader, entry, tuple(sorted((constants or {}).items())), w_dtype or "f32")
        pid = self._pipelines.get(key)
        if pid is None:
            src = shader_source(shader, constants, w_dtype)
            pid = self._pipelines[key] = self.bridge.pipeline(repr(key), src, entry)
        return pid

    def run(self, shader: str, entry: str, buffers, params, groups, constants=None, w_dtype=None):
        pid = self.pipeline(shader, entry, constants, w_dtype)
        dt = w_dtype or "f32"
        for b in buffers:
            if isinstance(b, GPUWeight) and b.dtype != dt:
                raise SdwebError(f"{shader}.{entry}: a {b.dtype} weight bound where {dt} weights were "
                                 f"compiled for (pass w_dtype={b.dtype!r})")
        if any(g > self.max_groups for g in groups):
            raise SdwebError(f"{shader}.{entry}: dispatch {tuple(groups)} exceeds "
                             f"maxComputeWorkgroupsPerDimension {self.max_groups}; fold it (ctx.grid)")
        if min(groups) <= 0 or any(b.nbytes == 0 for b in buffers):
            return  # nothing to do (an empty tensor)
        uniform = b"".join(struct.pack("<" + {"u32": "I", "i32": "i", "f32": "f"}[t], v) for t, v in params)
        uniform += bytes(-len(uniform) % 16 if uniform else 16)  # padded to 16 bytes, never empty
        self.bridge.dispatch(pid, [(b.buffer, b.offset, b.nbytes) for b in buffers], uniform, tuple(groups))
        self.dispatches += 1
        self._pending += 1
        if self._pending >= SUBMIT_EVERY:
            self.submit()

    def submit(self):
        self.bridge.submit()
        self._pending = 0
        self._bury()

    def _bury(self):
        while self._graveyard:
            self.bridge.destroy_buffer(self._graveyard.pop())


_ctx: Context | None = None
_bridge_factory = None


def use_bridge(bridge) -> Context:
    """Make `bridge` (an object with the device-bridge interface) the backend's device."""
    global _ctx
    _ctx = Context(bridge)
    return _ctx


def context() -> Context:
    """The process-wide device context, created on first use over wgpu_bridge.WgpuBridge."""
    global _ctx
    if _ctx is None:
        from .wgpu_bridge import WgpuBridge
        _ctx = Context(WgpuBridge())
    return _ctx


def available() -> bool:
    """True when a WebGPU adapter can be had (the `wgpu` package is installed and finds one)."""
    if _ctx is not None:
        return True
    try:
        from . import wgpu_bridge
    except Exception:  # the wgpu package missing or its native library failing to load
        return False
    return wgpu_bridge.adapter() is not None


from . import gpu_ops  # noqa: E402  (the op modules import GPUTensor etc. from this module)

# --- tensors --------------------------------------------------------------------------------------


def tensor(a) -> GPUTensor:
    """Host array -> backend tensor (f32). A GPUTensor passes through."""
    if isinstance(a, GPUTensor):
        return a
    return context().upload(a)


def numpy(x) -> np.ndarray:
    """Backend tensor -> host f32 array: the readback (submits pending work and waits for it)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    return context().read(x)


def weight(w, name: str | None = None) -> GPUWeight:
    """A weight as held by the store (f32, f16, or bf16 as uint16) -> a GPUWeight, uploaded now.
    `name` (the checkpoint name) is only used in the error when it does not fit the adapter.

    `w` may also be a WeightRef (a lazy store's `get`): then, where the bridge has `upload_span`,
    its bytes go from its byte source straight into the GPU buffer (in the browser: IndexedDB ->
    GPU, never through the wasm heap) and, when the file's dtype is not the held one, are converted
    there by shaders/convert.wgsl, bit for bit what the store's host conversion gives."""
    if isinstance(w, WeightRef):
        return _weight_from_ref(context(), w, name or w.name)
    w = np.asarray(w)
    dtype = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.uint16): "bf16"}.get(w.dtype)
    if dtype is None:
        w, dtype = w.astype(np.float32), "f32"
    flat = np.ascontiguousarray(w).reshape(-1)
    if dtype != "f32" and flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, flat.dtype)])  # whole u32s
    data = flat.tobytes() or bytes(4)
    return GPUWeight(context(), w.shape, dtype, data, name)


_HELD = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}  # store precision -> GPUWeight dtype
_FROM_FILE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}  # safetensors dtypes the GPU can take as they are
_CONVERT_KIND = {"f32": "0", "f16": "1", "bf16": "2"}  # convert.wgsl's SRC / DST
CONVERT_PIECE = 1 << 24  # file bytes converted per dispatch: bounds the temporary buffer (16 MB)


class _Span:
    """A bridge buffer range to bind (what ctx.run needs of a tensor): .buffer, .offset, .nbytes."""

    __slots__ = ("buffer", "offset", "nbytes")

    def __init__(self, buffer: int, offset: int, nbytes: int):
        self.buffer, self.offset, self.nbytes = buffer, offset, nbytes


def _weight_from_ref(ctx, ref, what: str) -> GPUWeight:
    """A WeightRef -> GPUWeight in the held dtype, its bytes uploaded from the source by the bridge."""
    src = _FROM_FILE.get(ref.dtype)
    if ref.source is None or src is None or ref.size == 0 or not hasattr(ctx.bridge, "upload_span"):
        # The host path: placeholders (zeros), integer and F64 tensors (none is a model weight: F64
        # would need a converter of its own for no checkpoint we know), empty tensors, and bridges
        # that cannot read a byte source themselves.
        return weight(ref.read(), what)
    dt = _HELD[ref.precision]
    n = ref.size
    nbytes = 4 * n if dt == "f32" else 4 * -(-n // 2)  # 16-bit: two per u32, an odd count padded
    w = GPUWeight(ctx, ref.shape, dt, None, what, nbytes)
    if src == dt:
        ctx.bridge.upload_span(w.buffer, ref.source, ref.offset, ref.nbytes)
    else:
        _upload_converted(ctx, w, ref, src)
    return w


def _upload_converted(ctx, w: GPUWeight, ref, src: str):
    """Fill `w` (held dtype w.dtype) from ref's bytes of file dtype `src`: a piece of at most
    CONVERT_PIECE bytes at a time goes into a temporary buffer and convert.wgsl writes it into `w`.
    Pieces hold an even number of elements, so each starts on a whole u32 of a 16-bit `w`."""
    isz = 4 if src == "f32" else 2
    per = max(2, (CONVERT_PIECE // isz) & ~1)
    n = ref.size
    tmp_bytes = -(-min(per, n) * isz // 4) * 4
    ctx.check_size(tmp_bytes, f"the conversion buffer of {ref.name}")
    tmp = ctx.bridge.create_buffer(tmp_bytes)
    ctx._account(tmp_bytes, +1)
    consts = {"SRC": _CONVERT_KIND[src], "DST": _CONVERT_KIND[w.dtype]}
    out = _Span(w.buffer, 0, w.nbytes)
    try:
        for e0 in range(0, n, per):
            cnt = min(per, n - e0)
            # upload_span, like write_buffer, lands after the previous piece's recorded dispatch
            ctx.bridge.upload_span(tmp, ref.source, ref.offset + e0 * isz, cnt * isz)
            words = cnt if w.dtype == "f32" else -(-cnt // 2)
            first = e0 if w.dtype == "f32" else e0 // 2
            ctx.run("convert", "convert", [_Span(tmp, 0, -(-cnt * isz // 4) * 4), out],
                    [("u32", cnt), ("u32", first)], ctx.grid(-(-words // 256)), consts)
    finally:
        # Send the conversions now and destroy the buffer at once, so the temporaries of many
        # tensors never wait in the graveyard together (loading is not a hot path).
        ctx._graveyard.append(tmp)
        ctx.submit()
        ctx._account(tmp_bytes, -1)


def check_weights(store) -> None:
    """Raise GPULimitError naming the first tensor of a WeightStore that cannot be bound on this
    adapter, before any is uploaded ("unet conv_in.weight needs ... but ...")."""
    ctx = context()
    per = {"fp32": 4, "fp16": 2, "bf16": 2}[store.precision]
    for full in store.keys():
        if store.dtype(full) in ("F32", "F16", "BF16"):
            nbytes = per * math.prod(store.shape(full))
            ctx.check_size(nbytes, f"{store.component} {full}")


def shape(x) -> tuple:
    return tuple(x.shape)


def reshape(x: GPUTensor, shape) -> GPUTensor:
    shape = tuple(shape)
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape = tuple(x.size // known if s == -1 else s for s in shape)
    if math.prod(shape) != x.size:
        raise SdwebError(f"cannot reshape {x.shape} to {shape}")
    return GPUTensor(shape, x._buf, x.offset, x.dtype)


# --- linear algebra (gpu_ops/matmul.py, gpu_ops/conv2d.py) ----------------------------------------


def linear(x, w, b=None, act: str | None = None):
    """x: (..., Din), w: (Dout, Din), b: (Dout,) -> (..., Dout), optional fused activation."""
    from .gpu_ops import matmul
    return matmul.linear(context(), x, w, b, act)


def conv2d(x, w, b=None, stride: int = 1, padding: int = 0, residual=None):
    """x: (N, Cin, H, W), w: (Cout, Cin, kh, kw) -> (N, Cout, Ho, Wo), plus `residual` when given."""
    from .gpu_ops import conv2d as conv
    return conv.conv2d(context(), x, w, b, stride, padding, residual)


def attention(q, k, v, heads: int, causal: bool = False):
    """q: (N, Lq, h*d), k/v: (N, Lk, h*d) -> (N, Lq, h*d)."""
    from .gpu_ops import attention as attn
    return attn.attention(context(), q, k, v, heads, causal)


# --- normalisation (gpu_ops/norm.py) --------------------------------------------------------------


def group_norm(x, groups: int, gamma, beta, eps: float, silu: bool = False):
    """x: (N, C, *spatial) -> same shape; optional fused SiLU after the affine."""
    return gpu_ops.norm.group_norm(context(), x, groups, gamma, beta, eps, silu)


def layer_norm(x, gamma, beta, eps: float):
    """x: (..., D) normalised over D."""
    return gpu_ops.norm.layer_norm(context(), x, gamma, beta, eps)


def softmax(x):
    """Softmax over the last axis (not used by the models: attention is fused)."""
    return gpu_ops.norm.softmax(context(), x)


# --- elementwise and layout (gpu_ops/elementwise.py) ----------------------------------------------

_ew = gpu_ops.elementwise


def silu(x):
    return _ew.unary(context(), x, "silu")


def gelu(x):
    """Exact (erf) GELU, as numpy.py's (A&S 7.1.26, error <= 1e-7 |x|)."""
    return _ew.unary(context(), x, "gelu")


def quick_gelu(x):
    """x * sigmoid(1.702 x)."""
    return _ew.unary(context(), x, "quick_gelu")


def geglu(x):
    """x: (..., 2F) -> (..., F): first half * gelu(second half)."""
    return _ew.geglu(context(), x)


def add(a, b):
    """Same-shape add."""
    return _ew.add(context(), a, b)


def mul(a, s: float):
    """Scale by a Python float."""
    return _ew.mul(context(), a, s)


def add_channel(x, v):
    """x: (N, C, H, W) + v: (N, C) broadcast over H, W."""
    return _ew.add_channel(context(), x, v)


def upsample_nearest2x(x):
    """x: (N, C, H, W) -> (N, C, 2H, 2W)."""
    return _ew.upsample_nearest2x(context(), x)


def pad2d(x, left: int, right: int, top: int, bottom: int):
    """x: (N, C, H, W) -> (N, C, top+H+bottom, left+W+right), zeros around."""
    return _ew.pad2d(context(), x, left, right, top, bottom)


def concat(xs, axis: int = 1):
    """Concat along `axis` (channels for UNet skips, batch for CFG contexts)."""
    return _ew.concat(context(), xs, axis)


def nchw_to_nlc(x):
    """(N, C, H, W) -> (N, H*W, C)."""
    return _ew.nchw_to_nlc(context(), x)


def nlc_to_nchw(x, H: int, W: int):
    """(N, H*W, C) -> (N, C, H, W)."""
    return _ew.nlc_to_nchw(context(), x, H, W)


def embedding(ids: np.ndarray, table):
    """ids: (N, L) int (host) -> (N, L, D) rows of table (V, D)."""
    return _ew.embedding(context(), ids, table)


def slice_tokens(x, index: np.ndarray):
    """x: (N, L, D), index: (N,) (host) -> (N, D): one token per row."""
    return _ew.slice_tokens(context(), x, index)


def split_batch(x, parts: int):
    """(parts*N, ...) -> list of parts tensors (N, ...)."""
    return _ew.split_batch(context(), x, parts)
