"""The NumPy backend: the readable reference for every op the models use.

Model code is written once against the op list of `backends/contract.py`; this module and
`backends/webgpu/` implement exactly it, the WebGPU one with WGSL kernels from `shaders/` (one .wgsl
per op family, named in each section below; its host code is backends/webgpu/ops/<family>.py).
Tensors here are plain float32 ndarrays.

Weights arrive from the store in the precision they are held in (float32, float16, or bfloat16 kept
as uint16 bit patterns) and are upcast to float32 per op, so memory holds the small copy and the
arithmetic is always f32.

Shape legend: N batch, C channels, H/W height/width, L tokens, D features, h heads, d head dim.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import SdwebError
from ..weights import Patched, f32_to_bf16
from .contract import check_act

name = "numpy"
takes_weight_refs = False  # weights arrive as arrays: the pipeline opens eager stores


# --- tensors --------------------------------------------------------------------------------------


def tensor(a) -> np.ndarray:
    """Host array -> backend tensor (f32)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def numpy(x) -> np.ndarray:
    """Backend tensor -> host f32 array (a readback on the GPU)."""
    return np.asarray(x, dtype=np.float32)


def weight(w: np.ndarray):
    """A weight as held by the store (f32, f16, or bf16 as uint16) -> what ops accept as a weight;
    a Patched one with its LoRA patches fused."""
    if isinstance(w, Patched):
        out = w.base
        for p in w.patches:
            out = fuse_lora(out, p.up, p.down, p.scale)
        return out
    return w


def fuse_lora(weight, up, down, scale: float):
    """weight (O, ...) held f32 | f16 | bf16 bits + scale * up (O, r) @ down (r, K), in f32, rounded
    once to the held dtype -> a new array (shaders/lora.wgsl)."""
    delta = np.matmul(up, down) * np.float32(scale)  # (O, K), as lora.lora_delta computes it
    w = _f32(weight).reshape(delta.shape) + delta
    if weight.dtype == np.float16:
        with np.errstate(over="ignore"):  # beyond f16's range: inf, as the store's own conversion
            w = w.astype(np.float16)
    elif weight.dtype == np.uint16:
        w = f32_to_bf16(w)
    return w.reshape(weight.shape)


def check_weights(store) -> None:
    """Nothing to check: host memory has no per-array limit (running out of it raises MemoryError)."""


def fuse_weights(weights):
    """Held weights of one dtype -> their concatenation along axis 0 (a fused projection)."""
    return np.concatenate(weights)


def compute_dtypes() -> tuple:
    """NumPy computes in float32 only: the reference."""
    return ("f32",)


def set_compute(dtype: str) -> str:
    if dtype != "f32":
        raise SdwebError(f"the NumPy backend computes in f32 only, not {dtype!r}")
    return "f32"


def _f32(w: np.ndarray, scratch: str | None = None) -> np.ndarray:
    """Upcast a held weight to float32. bf16 is the top half of an f32, stored as uint16. With
    `scratch`, the f32 copy goes in that scratch buffer (an op's weight, used only within the op: a
    UNet step upcasts 3.4 GB, which as fresh arrays are fresh pages for the kernel to zero)."""
    if w.dtype == np.float32:
        return w
    out = np.empty(w.shape, np.float32) if scratch is None else _scratch(scratch, w.shape)
    src, dst = w.reshape(-1), out.reshape(-1)
    if w.dtype == np.uint16:
        u = dst.view(np.uint32)

        def part(sl):
            u[sl] = src[sl]
            u[sl] <<= 16  # in place: one pass fewer than `w.astype(np.uint32) << 16`
    else:
        def part(sl):
            dst[sl] = src[sl]
    _each(part, _split(src.size, 1 + src.size // _BLOCK // 16))  # ~4 MB parts: small ones inline
    return out


def shape(x) -> tuple:
    return tuple(x.shape)


# The largest activation a pass may make before the VAE splits its work into tiles: 1 GiB in CPython
# (SD's decoder at 1024 x 1024 makes 1 GiB activations and peaks near 4 GB), 256 MiB under Pyodide,
# whose wasm heap holds 4 GiB in all (SD's decoder then takes 1024 x 1024 in 512 x 512 tiles).
MAX_ACTIVATION_BYTES = (256 << 20) if sys.platform == "emscripten" else (1 << 30)


def fits(shape) -> bool:
    """Whether an f32 activation of `shape` is within MAX_ACTIVATION_BYTES."""
    return 4 * math.prod(shape) <= MAX_ACTIVATION_BYTES


# --- blocking -------------------------------------------------------------------------------------

# Elementwise chains (an activation after a matmul, a norm's affine, softmax) run block by block over
# ~_BLOCK floats (256 KB), so each op's temporaries stay in L2 and a 20-op chain such as GELU costs a
# few passes over memory instead of twenty; NumPy ufuncs run on one core, so memory passes are what
# they cost. Measured on 2 cores: GELU over (8192, 1280) 115 ms whole-array -> 22 ms blocked.
_BLOCK = 1 << 16


def _row_blocks(rows: int, cols: int) -> list[slice]:
    """Slices of about _BLOCK elements' worth of whole rows (at least one row each)."""
    step = max(1, _BLOCK // cols)
    return [slice(r, r + step) for r in range(0, rows, step)]


def _blocks(rows: int, cols: int):
    """(row slice, column slice) pairs covering a (rows, cols) array in blocks of about _BLOCK
    elements: whole rows when they are short, pieces of one row when a row is long."""
    if cols >= _BLOCK:
        for r in range(rows):
            for c in range(0, cols, _BLOCK):
                yield slice(r, r + 1), slice(c, c + _BLOCK)
    else:
        step = _BLOCK // cols
        for r in range(0, rows, step):
            yield slice(r, r + step), slice(None)


# --- threads --------------------------------------------------------------------------------------

# NumPy's BLAS runs on every core, its ufuncs on one. The elementwise passes between the GEMMs
# (Winograd transforms, norms, activations, weight upcasts) are shared out over threads here: ufunc
# loops release the GIL, so each thread's passes run at once. Pyodide has no threads: there every
# part runs inline, in order.
if sys.platform == "emscripten":
    _THREADS = 1
else:
    _THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
_pool = None


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default an array over 128 KB (a threshold glibc raises as it goes, up to 32 MB) is a fresh
    mmap and goes back on free, so the next one is fresh pages again, each zeroed by the kernel on
    first touch: a UNet step made ~17,000 such faults. Arrays up to 32 MB now come from the heap,
    and up to 512 MB of free heap is kept (a UNet step: 1,100 faults, 7.60 -> 7.25 s on 2 cores).
    Only where glibc is the C library (mallopt exists); Pyodide's malloc never returns memory."""
    if sys.platform != "linux":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 512 << 20)


_keep_freed_memory()


def _each(fn, parts) -> None:
    """fn(part) for every part of the list `parts`, shared out over the threads in runs of
    consecutive parts; each fn(part) writes only its own part of any output."""
    global _pool
    n, t = len(parts), min(_THREADS, len(parts))
    if t <= 1:
        for part in parts:
            fn(part)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(_THREADS - 1, thread_name_prefix="sdweb-numpy")

    def run(k):
        for part in parts[k * n // t:(k + 1) * n // t]:
            fn(part)

    futures = [_pool.submit(run, k) for k in range(1, t)]
    try:
        run(0)
    finally:
        for f in futures:  # every thread done (and its error raised) before the caller goes on
            f.result()


def _split(n: int, parts: int = 0) -> list[slice]:
    """range(n) as about `parts` (default: one per thread) consecutive slices."""
    parts = max(1, min(n, parts or _THREADS))
    return [slice(k * n // parts, (k + 1) * n // parts) for k in range(parts)]


# --- scratch --------------------------------------------------------------------------------------

# The large temporaries of a conv (Winograd's transformed weights: 105 MB for a 1280-channel 3x3
# kernel, 210 MB with 2560 inputs; its transformed input and products) live in buffers kept per
# thread and reused: a fresh array that size is fresh pages from the kernel, each zeroed on first
# touch, every call (measured: ~5 % of a UNet step's CPU time went to zeroing pages).
# Not under Pyodide: wasm memory has no pages to zero, and a kept buffer there would be heap that
# activations could not reuse (its 4 GiB hold SD 1.5's fp16 UNet with ~1 GiB to spare).
_scratch_buffers = threading.local()
_KEEP_SCRATCH = sys.platform != "emscripten"


def _scratch(role: str, shape) -> np.ndarray:
    """An uninitialised f32 array of `shape` in the buffer kept for `role` (grown when too small).
    Valid until the next _scratch(role) in the same thread."""
    if not _KEEP_SCRATCH:
        return np.empty(shape, np.float32)
    n = math.prod(shape)
    buffers = _scratch_buffers.__dict__
    buf = buffers.get(role)
    if buf is None or buf.size < n:
        buffers[role] = None  # the old buffer goes before the larger one is made
        buffers[role] = buf = np.empty(n, np.float32)
    return buf[:n].reshape(shape)


# --- linear algebra  (shaders/matmul.wgsl) --------------------------------------------------------


def linear(x, weight, bias=None, act: str | None = None, residual=None, image=None):
    """x: (..., Din), weight: (Dout, Din) or (Dout, Din, 1, 1), bias: (Dout,) -> (..., Dout), then
    optional fused activation (silu, gelu, quick_gelu, or geglu, which halves the width: (..., 2F) ->
    (..., F)), then + residual. image=(H, W): x (N, H*W, Din) -> (N, Dout, H, W) (residual alike)."""
    y = _linear(x, weight.reshape(weight.shape[0], -1), bias, act)
    if image is not None:
        y = nlc_to_nchw(y, *image)
    return _add_into(y, None, residual)


def _linear(x, weight, bias, act):
    check_act("linear", act, geglu=True)
    w = _f32(weight, "weight")
    Dout, Din = w.shape
    x2 = x.reshape(-1, Din)
    bias = None if bias is None else _f32(bias)
    if act != "geglu":
        y = np.matmul(x2, w.T)  # one GEMM over every token of every image
        if bias is not None or act:
            _each(lambda r: _epilogue(y[r], bias, act, y[r]), _row_blocks(*y.shape))
        return y.reshape(*x.shape[:-1], Dout)
    # GEGLU keeps half the GEMM's width: the GEMM goes in row chunks through one ~16 MB buffer, so
    # the full-width product (84 MB for SD's first level) is never made
    out = np.empty((x2.shape[0], Dout // 2), np.float32)
    rows = max(1, (4 << 20) // Dout)
    buf = np.empty((min(rows, x2.shape[0]), Dout), np.float32)
    for r0 in range(0, x2.shape[0], rows):
        y = buf[:min(rows, x2.shape[0] - r0)]
        np.matmul(x2[r0:r0 + rows], w.T, out=y)
        o = out[r0:r0 + rows]
        _each(lambda r: _epilogue(y[r], bias, act, o[r]), _row_blocks(*y.shape))
    return out.reshape(*x.shape[:-1], Dout // 2)


def _epilogue(y, bias, act, out):
    """Bias and activation on a block of a linear's rows (in cache): y -> out (geglu: half as wide),
    in place when out is y."""
    if bias is not None:
        y += bias
    if act == "geglu":
        _geglu(y, out)
    elif act:
        _KERNELS[act](y, out=out)


def conv2d(x, weight, bias=None, stride: int = 1, padding: int = 0, residual=None, temb=None,
           act: str | None = None):
    """x: (N, Cin, H, W), weight: (Cout, Cin, kh, kw), bias: (Cout,) -> (N, Cout, Ho, Wo), plus temb
    (N, Cout) per image and channel, plus `residual` (a tensor of the output's shape: a resnet's
    skip), when given, then the optional fused activation (the tiny autoencoder's ReLUs). Implicit
    GEMM on the GPU
    (shaders/conv2d.wgsl). Here, by shape:
      1x1: one (Cout, Cin) @ (Cin, H*W) matmul per image;
      stride 1 with a few outputs (conv_out): every tap's product in one GEMM, then shifted sums
        (_conv_taps_first);
      3x3, stride 1, padding 1 (nearly every conv of a UNet or VAE), unless the image is tiny:
        Winograd F(4x4, 3x3) on large images, 36 GEMMs over 4x4 tiles of the whole batch with 4x
        fewer flops (_conv3x3_winograd4), else F(2x2, 3x3), 16 GEMMs over 2x2 tiles with 2.25x fewer
        (_conv3x3_winograd); both add temb and the residual as they write the output;
      otherwise (small images, strides): im2col in (Cin*kh*kw, pixels) order, so one matmul per
        image writes NCHW directly, in row chunks that bound the column matrix (~64 MB)."""
    check_act("conv2d", act)
    y = _conv2d(x, _f32(weight, "weight"), None if bias is None else _f32(bias)[:, None], stride, padding, temb,
                residual)
    if act:
        rows = y.reshape(-1, y.shape[2] * y.shape[3])
        _each(lambda rc: _KERNELS[act](rows[rc], out=rows[rc]), list(_blocks(*rows.shape)))
    return y


def _conv2d(x, w, bias, stride, padding, temb=None, residual=None):
    """The conv by shape (see conv2d), + temb (N, Cout) + residual: the Winograd paths add both as
    they write their output, the others in one threaded pass after it."""
    N, C, H, W = x.shape
    Co, Ci, kh, kw = w.shape
    if kh == 3 and kw == 3 and stride == 1 and padding == 1 and Co * 9 > _FEW_OUTPUTS:
        if N * ((H + 3) // 4) * ((W + 3) // 4) >= _WINOGRAD4_TILES:
            return _conv3x3_winograd4(x, w, bias, temb, residual)
        if N * ((H + 1) // 2) * ((W + 1) // 2) >= _WINOGRAD_TILES:
            return _conv3x3_winograd(x, w, bias, temb, residual)
    return _add_into(_conv2d_gemm(x, w, bias, stride, padding), temb, residual)


def _add_into(y, temb, residual):
    """y (N, C, ...) += temb (N, C) per image and channel, += residual (y's shape); in place, block
    by block over the threads."""
    if temb is None and residual is None:
        return y
    N, C = y.shape[:2]
    rows = y.reshape(N * C, -1)
    t = None if temb is None else temb.reshape(N * C, 1)
    res = None if residual is None else residual.reshape(N * C, -1)

    def add(block):
        r, c = block
        if t is not None:
            rows[r, c] += t[r]
        if res is not None:
            rows[r, c] += res[r, c]

    _each(add, list(_blocks(*rows.shape)))
    return y


def _conv2d_gemm(x, w, bias, stride, padding):
    """The convs that Winograd does not take: 1x1, few outputs, strides, small images."""
    N, C, H, W = x.shape
    Co, Ci, kh, kw = w.shape
    if kh == 1 and kw == 1 and stride == 1 and padding == 0:
        y = np.matmul(w.reshape(Co, Ci), x.reshape(N, C, H * W))  # (N, Co, H*W)
        if bias is not None:
            y += bias
        return y.reshape(N, Co, H, W)
    if stride == 1 and Co * kh * kw <= _FEW_OUTPUTS:
        return _conv_taps_first(x, w, bias, padding)
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    y = np.empty((N, Co, Ho, Wo), np.float32)
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    wm = w.reshape(Co, Ci * kh * kw)
    y2 = y.reshape(N, Co, Ho * Wo)
    rows = max(1, min(Ho, (1 << 24) // (Ci * kh * kw * Wo)))
    for n in range(N):
        for r0 in range(0, Ho, rows):
            r = min(rows, Ho - r0)
            cols = np.empty((Ci, kh, kw, r, Wo), np.float32)
            for ky in range(kh):
                for kx in range(kw):
                    y0 = ky + r0 * stride
                    cols[:, ky, kx] = x[n, :, y0:y0 + (r - 1) * stride + 1:stride,
                                        kx:kx + (Wo - 1) * stride + 1:stride]
            out = y2[n, :, r0 * Wo:(r0 + r) * Wo]
            np.matmul(wm, cols.reshape(-1, r * Wo), out=out)
            if bias is not None:
                out += bias
    return y


# A conv with at most this many (output channel, tap) pairs (a VAE's or UNet's conv_out: 3 or 4
# channels) is one GEMM of every tap's product over the image, read once, then the taps' planes
# summed shifted: the planes are few, and neither im2col's copies nor Winograd's transforms pay.
_FEW_OUTPUTS = 64


def _conv_taps_first(x, w, bias, padding):
    """Stride-1 conv with few outputs: (kh*kw*Cout, Cin) @ (Cin, pixels) over the zero-padded image
    flattened to (Cin, Hp*Wp), then tap (ky, kx)'s planes shifted by ky*Wp + kx and summed; each
    output row carries kw-1 junk columns (the wrap into the next row) that are dropped."""
    N, Ci, H, W = x.shape
    Co, _, kh, kw = w.shape
    Hp, Wp = H + 2 * padding, W + 2 * padding
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    taps = w.transpose(2, 3, 0, 1).reshape(kh * kw * Co, Ci)
    xp = np.zeros((N, Ci, Hp * Wp + kw - 1), np.float32)  # + kw-1: the last row's junk columns
    xp[:, :, :Hp * Wp].reshape(N, Ci, Hp, Wp)[:, :, padding:padding + H, padding:padding + W] = x
    y = np.empty((N, Co, Ho, Wo), np.float32)
    for n in range(N):
        z = np.matmul(taps, xp[n]).reshape(kh * kw, Co, -1)
        acc = z[0, :, :Ho * Wp].copy()
        for t in range(1, kh * kw):
            s = (t // kw) * Wp + t % kw
            acc += z[t, :, s:s + Ho * Wp]
        if bias is not None:
            acc += bias
        y[n] = acc.reshape(Co, Ho, Wp)[:, :, :Wo]
    return y


# Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015):
# a 2x2 block of outputs from its 4x4 input tile d as Y = A^T [(G g G^T) * (B^T d B)] A, 16
# multiplies per (input, output) channel pair where the direct conv needs 36. The 16 elementwise
# products over channels are 16 GEMMs (Cout, Cin) @ (Cin, tiles), 2.25x fewer flops than im2col;
# B^T, A^T hold only 0 and +-1 (additions), G halves: the error stays at f32 rounding (~1e-6).
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_WINOGRAD_GG = np.kron(_WINOGRAD_G, _WINOGRAD_G)  # (16, 9): G g G^T of every kernel as one matmul
# Below this many 2x2 tiles (all images) a conv's GEMMs are too narrow for the weight transform to
# pay. Measured on one core: at SD's 16x16 latent level with CFG (128 tiles) Winograd takes 0.70x
# im2col's time (1280 channels), at 8x8 (32 tiles) the same; likewise for the upsamplers.
_WINOGRAD_TILES = 128
# Bytes of the transformed input and of the 16 products per chunk of tile rows: large enough for
# wide GEMMs, small enough that the transforms run in cache.
_WINOGRAD_CHUNK = 16 << 20


def _conv3x3_winograd(x, w, bias, temb=None, residual=None):
    """3x3 conv, stride 1, padding 1, by Winograd F(2x2, 3x3) in chunks of tile rows, + temb (N, Cout)
    + residual.

    B^T d B goes columns first: the zero-padded input's even and odd columns are split into two
    arrays as they are copied from x (the padded image itself is never made), so every column
    window is a contiguous slice; then rows, tile row t reading rows 2t .. 2t+3. A^T M A leaves the
    four outputs of a tile in two row buffers, each copied into y as whole rows (adding the residual
    as they go; temb and the bias are added to the products, where A^T M A takes them to every output)."""
    N, Ci, H, W = x.shape
    Co = w.shape[0]
    Th, Tw = (H + 1) // 2, (W + 1) // 2  # 2x2 output tiles; an odd side computes one row or column more
    U, y, rows, v_buf, m_buf = _winograd_buffers(x, w, _WINOGRAD_GG, 2)
    residual, late = (residual, None) if y.shape[2:] == (H, W) else (None, residual)  # late: after the crop
    for r0 in range(0, Th, rows):
        r = min(rows, Th - r0)
        P = N * r * Tw  # tiles in this chunk, in (image, tile row, tile column) order
        V = v_buf[:16 * Ci * P].reshape(4, 4, Ci, N, r, Tw)
        M = m_buf[:16 * Co * P].reshape(4, 4, Co, N, r, Tw)
        # padded rows 2 r0 .. 2 r0 + 2r + 1 are x's rows one less; those outside x are zeros
        lo, hi = max(0, 1 - 2 * r0), min(2 * r + 2, H + 1 - 2 * r0)
        xr = slice(2 * r0 + lo - 1, 2 * r0 + hi - 1)

        def transform_in(cs):
            """B^T d B for the input channels cs."""
            c = len(range(Ci)[cs])
            # padded column 2j is x's 2j - 1, padded column 2j + 1 is x's 2j
            even = np.zeros((N, c, 2 * r + 2, Tw + 1), np.float32)
            odd = np.zeros((N, c, 2 * r + 2, Tw + 1), np.float32)
            even[:, :, lo:hi, 1:1 + W // 2] = x[:, cs, xr, 1::2]
            odd[:, :, lo:hi, :Tw] = x[:, cs, xr, 0::2]
            e0, e1, e2, e3 = even[..., :Tw], odd[..., :Tw], even[..., 1:], odd[..., 1:]
            for l, t in enumerate((e0 - e2, e1 + e2, e2 - e1, e1 - e3)):  # (N, c, 2r + 2, Tw)
                d = [t[:, :, i:i + 2 * r - 1:2] for i in range(4)]
                v = V[:, l, cs].transpose(0, 2, 1, 3, 4)  # (4, N, c, r, Tw): written in the input's order
                np.subtract(d[0], d[2], out=v[0])
                np.add(d[1], d[2], out=v[1])
                np.subtract(d[2], d[1], out=v[2])
                np.subtract(d[1], d[3], out=v[3])

        def transform_out(cs):
            """A^T M A for the output channels cs: columns first (A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]),
            then rows into two buffers of interleaved columns, then whole rows into y."""
            c = len(range(Co)[cs])
            m = M[:, :, cs].transpose(0, 1, 3, 2, 4, 5)  # (4, 4, N, c, r, Tw)
            if bias is not None:  # A^T's column 1 is all ones: a bias added there reaches all four outputs
                m[1, 1] += bias[cs, :, None]
            if temb is not None:
                m[1, 1] += temb[:, cs, None, None]
            cols = []
            for k in range(4):
                c0 = m[k, 0] + m[k, 1]
                c0 += m[k, 2]
                c1 = m[k, 1] - m[k, 2]
                c1 -= m[k, 3]
                cols.append((c0, c1))
            pair = np.empty((2, N, c, r, Tw, 2), np.float32)  # (output row parity, ..., column parity)
            for j in range(2):
                a = cols[0][j] + cols[1][j]
                a += cols[2][j]
                pair[0, ..., j] = a
                b = cols[1][j] - cols[2][j]
                b -= cols[3][j]
                pair[1, ..., j] = b
            _store_tile_rows(pair.reshape(2, N, c, r, 2 * Tw), y, residual, cs, r0)

        _each(transform_in, _split(Ci))
        np.matmul(U, V.reshape(16, Ci, P), out=M.reshape(16, Co, P))
        _each(transform_out, _split(Co))
    return _add_into(_crop(y, H, W), None, late)


def _winograd_buffers(x, w, gg, m: int):
    """For a Winograd F(m x m, 3x3) conv of x with the kernels w: the transformed weights U (a, Cout,
    Cin) = gg (a, 9) @ each kernel, a = (m + 2)^2 products; the output y (N, Cout, m Th, m Tw) for
    Th x Tw tiles; how many tile rows a chunk takes (its transformed input and products within
    _WINOGRAD_CHUNK bytes each); and the scratch those two go in."""
    N, Ci, H, W = x.shape
    Co, a = w.shape[0], (m + 2) ** 2
    Th, Tw = -(-H // m), -(-W // m)
    U = _transformed_weights(gg, w)
    y = np.empty((N, Co, m * Th, m * Tw), np.float32)
    rows = max(1, min(Th, _WINOGRAD_CHUNK // (4 * a * max(Ci, Co) * N * Tw)))
    return U, y, rows, _scratch("V", (a * Ci * N * rows * Tw,)), _scratch("M", (a * Co * N * rows * Tw,))


def _transformed_weights(gg, w):
    """gg (a, 9) applied to every 3x3 kernel of w (Cout, Cin, 3, 3) -> (a, Cout, Cin), in the "U"
    scratch: the Winograd convs' and the upsampling convs' weights for their a GEMMs."""
    Co, Ci = w.shape[:2]
    U = _scratch("U", (len(gg), Co, Ci))
    np.matmul(gg, w.reshape(Co * Ci, 9).T, out=U.reshape(len(gg), Co * Ci))
    return U


def _store_tile_rows(rows, y, residual, cs, r0):
    """rows (t, N, c, r, W): output row i of each of r tile rows (t output rows high) from tile row r0,
    for the channels cs -> y (N, C, H, W), + residual where given (of y's shape)."""
    t, N, c, r, W = rows.shape
    yc = y[:, cs].reshape(N, c, -1, t, W)[:, :, r0:r0 + r]
    rc = None if residual is None else residual[:, cs].reshape(N, c, -1, t, W)[:, :, r0:r0 + r]
    for i in range(t):
        if rc is None:
            yc[:, :, :, i] = rows[i]
        else:
            np.add(rows[i], rc[:, :, :, i], out=yc[:, :, :, i])


def _crop(y, H: int, W: int):
    """y (N, C, >= H, >= W) -> its top-left (H, W), contiguous (tiles past an odd side dropped)."""
    return y if y.shape[2:] == (H, W) else np.ascontiguousarray(y[:, :, :H, :W])


# Winograd F(4x4, 3x3) (the same paper; points 0, 1, -1, 2, -2, inf): a 4x4 block of outputs from its
# 6x6 input tile, 36 multiplies per channel pair where the direct conv needs 144: 1.78x fewer flops
# than F(2x2, 3x3), and the transformed input and products are 2.25 floats per pixel instead of 4,
# which is what the large images are bound by (their transforms run at memory speed). The price is
# rounding: B^T and A^T hold 4, 5 and 8, G sixths and 24ths, so the error is ~1e-5 x max|y| where
# F(2x2, 3x3) keeps ~5e-7 (measured over 320 channels). Used where there are enough tiles for the
# 36 GEMMs to be wide and for the 2.25x larger transformed weights to pay.
_WINOGRAD4_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
_WINOGRAD4_GG = np.kron(_WINOGRAD4_G, _WINOGRAD4_G).astype(np.float32)  # (36, 9)
# 4x4 tiles (all images) from which F(4x4, 3x3) beats F(2x2, 3x3). Measured on 2 cores (ms, F(4x4) vs
# F(2x2)): 1280 channels at 16x16, batch 2 (32 tiles) 77 vs 51; 640 at 32x32 (128) 35 vs 40;
# 320 at 64x64 (512) 41 vs 46; 128 at 512x512 (16384) 233 vs 284.
_WINOGRAD4_TILES = 128


def _winograd4_bt(d, out, tmp):
    """B^T of F(4, 3) along one axis: d[0..5] -> out[0..5], arrays of one shape (tmp: two more).
    B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]"""
    d0, d1, d2, d3, d4, d5 = d
    u, v = tmp
    np.subtract(d4, d2, out=u)
    np.subtract(d0, d2, out=out[0])
    out[0] *= 4
    out[0] += u  # 4 d0 - 5 d2 + d4
    np.subtract(d3, d1, out=v)
    v *= 2
    np.add(u, v, out=out[3])  # -2 d1 - d2 + 2 d3 + d4
    np.subtract(u, v, out=out[4])  # 2 d1 - d2 - 2 d3 + d4
    np.add(d1, d2, out=u)
    u *= 4
    np.add(d3, d4, out=out[1])
    out[1] -= u  # -4 d1 - 4 d2 + d3 + d4
    np.subtract(d1, d2, out=u)
    u *= 4
    np.subtract(d4, d3, out=out[2])
    out[2] += u  # 4 d1 - 4 d2 - d3 + d4
    np.subtract(d1, d3, out=out[5])
    out[5] *= 4
    out[5] += d5
    out[5] -= d3  # 4 d1 - 5 d3 + d5


def _winograd4_at(m, out, tmp):
    """A^T of F(4, 3) along one axis: m[0..5] -> out[0..3] (tmp: two arrays of their shape).
    A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]"""
    m0, m1, m2, m3, m4, m5 = m
    p, q = tmp
    np.add(m1, m2, out=p)
    np.add(m3, m4, out=q)
    np.add(m0, p, out=out[0])
    out[0] += q  # m0 + m1 + m2 + m3 + m4
    q *= 4
    np.add(p, q, out=out[2])  # m1 + m2 + 4 (m3 + m4)
    np.subtract(m1, m2, out=p)
    np.subtract(m3, m4, out=q)
    q *= 2
    np.add(p, q, out=out[1])  # m1 - m2 + 2 (m3 - m4)
    q *= 4
    np.add(p, q, out=out[3])
    out[3] += m5  # m1 - m2 + 8 (m3 - m4) + m5


def _conv3x3_winograd4(x, w, bias, temb=None, residual=None):
    """3x3 conv, stride 1, padding 1, by Winograd F(4x4, 3x3) in chunks of tile rows, + temb (N, Cout)
    + residual.

    As _conv3x3_winograd: B^T d B columns first, from the zero-padded input's columns split by
    residue mod 4 as they are copied from x (tile t reads padded columns 4t .. 4t + 5: parts 0..3 at
    t and parts 0, 1 at t + 1, all contiguous slices), then rows, tile row s reading rows 4s .. 4s + 5;
    A^T M A columns then rows into a buffer of whole output rows, copied into y adding the residual
    (temb and the bias go in with the products, as there)."""
    N, Ci, H, W = x.shape
    Co = w.shape[0]
    Th, Tw = (H + 3) // 4, (W + 3) // 4  # 4x4 output tiles; sides not a multiple of 4 compute a few more
    U, y, rows, v_buf, m_buf = _winograd_buffers(x, w, _WINOGRAD4_GG, 4)
    residual, late = (residual, None) if y.shape[2:] == (H, W) else (None, residual)  # late: after the crop
    for r0 in range(0, Th, rows):
        r = min(rows, Th - r0)
        P = N * r * Tw  # tiles in this chunk, in (image, tile row, tile column) order
        V = v_buf[:36 * Ci * P].reshape(6, 6, Ci, N, r, Tw)
        M = m_buf[:36 * Co * P].reshape(6, 6, Co, N, r, Tw)
        R = 4 * r + 2  # padded rows 4 r0 .. 4 r0 + 4r + 1, x's rows one less; those outside x are zeros
        lo, hi = max(0, 1 - 4 * r0), min(R, H + 1 - 4 * r0)
        xr = slice(4 * r0 + lo - 1, 4 * r0 + hi - 1)

        def transform_in(cs):
            """B^T d B for the input channels cs."""
            c = len(range(Ci)[cs])
            parts = np.zeros((4, N, c, R, Tw + 1), np.float32)  # part k, column t: padded column 4t + k
            for k in range(4):  # = x's column 4t + k - 1, for t from t0 to t1
                t0, t1 = int(k == 0), min(Tw, (W - k) // 4)
                if t1 >= t0:
                    c0 = 4 * t0 + k - 1
                    parts[k, :, :, lo:hi, t0:t1 + 1] = x[:, cs, xr, c0:c0 + 4 * (t1 - t0) + 1:4]
            cols = np.empty((6, N, c, R, Tw), np.float32)
            _winograd4_bt([parts[0, ..., :Tw], parts[1, ..., :Tw], parts[2, ..., :Tw], parts[3, ..., :Tw],
                           parts[0, ..., 1:], parts[1, ..., 1:]], cols, np.empty((2, N, c, R, Tw), np.float32))
            tmp = np.empty((2, N, c, r, Tw), np.float32)
            for l in range(6):  # rows: written in the input's order
                _winograd4_bt([cols[l, :, :, i:i + 4 * r - 3:4] for i in range(6)],
                              V[:, l, cs].transpose(0, 2, 1, 3, 4), tmp)

        def transform_out(cs):
            """A^T M A for the output channels cs, into y as whole rows."""
            c = len(range(Co)[cs])
            m = M[:, :, cs].transpose(0, 1, 3, 2, 4, 5)  # (6, 6, N, c, r, Tw)
            if bias is not None:  # A^T's column 1 is all ones: a bias added there reaches all 16 outputs
                m[1, 1] += bias[cs, :, None]
            if temb is not None:
                m[1, 1] += temb[:, cs, None, None]
            cols = np.empty((6, 4, N, c, r, Tw), np.float32)
            tmp = np.empty((2, N, c, r, Tw), np.float32)
            for k in range(6):
                _winograd4_at(m[k], cols[k], tmp)
            out = np.empty((4, N, c, r, Tw, 4), np.float32)  # (row in the tile, ..., column in the tile)
            for j in range(4):
                _winograd4_at(cols[:, j], out[..., j], tmp)
            _store_tile_rows(out.reshape(4, N, c, r, 4 * Tw), y, residual, cs, r0)

        _each(transform_in, _split(Ci))
        np.matmul(U, V.reshape(36, Ci, P), out=M.reshape(36, Co, P))
        _each(transform_out, _split(Co))
    return _add_into(_crop(y, H, W), None, late)


# Nearest 2x then a 3x3 conv (padding 1) is four 2x2 convs of the small image, one per output
# phase (a, b) = (row, column) parity: output row 2i + a sees upsampled rows 2i + a - 1 .. 2i + a + 1,
# which are small rows (i - 1, i, i) for a = 0 and (i, i, i + 1) for a = 1, so the 3x3 taps of the
# rows read twice are summed. _UPSAMPLE_R[a] maps the three kernel rows (or columns) to the two
# small-image rows (columns) u = 0, 1 at offset a + u of the zero-padded small image.
_UPSAMPLE_R = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def _upsample_groups():
    """The 16 (phase, tap) pairs (a, b, u, v) grouped by the shift (a + u, b + v) of the padded
    small image they read, (1, 1) (read by all four phases) first; each group is one GEMM with its
    phases' kernels stacked."""
    groups = {}
    for a, b, u, v in np.ndindex(2, 2, 2, 2):
        groups.setdefault((a + u, b + v), []).append((a, b, u, v))
    return sorted(groups.items(), key=lambda kv: (kv[0] != (1, 1), kv[0]))


_UPSAMPLE_GROUPS = _upsample_groups()
# (16, 9): every phase kernel R[a] g R[b]^T of a 3x3 kernel g, in _UPSAMPLE_GROUPS' order, as one matmul
_UPSAMPLE_KK = np.stack([np.kron(_UPSAMPLE_R[a][u], _UPSAMPLE_R[b][v])
                         for _, taps in _UPSAMPLE_GROUPS for a, b, u, v in taps])


def upsample_conv2d(x, weight, bias=None):
    """x: (N, Cin, H, W), weight: (Cout, Cin, 3, 3), bias: (Cout,) -> (N, Cout, 2H, 2W): nearest 2x
    upsampling then a 3x3 conv with padding 1 (diffusers' Upsample2D). Here the conv runs on the
    small image as four 2x2 convs (above), so the upsampled image is never made: by Winograd
    F(2x2, 2x2) (9 multiplies per small pixel, _upsample_winograd) where there are enough tiles to
    pay for its weight transform, else directly (16, _upsample_phases) instead of the 36 of a 3x3
    conv of the upsampled image."""
    N, Ci, H, W = x.shape
    w = _f32(weight, "weight")
    if w.shape != (w.shape[0], Ci, 3, 3):
        raise SdwebError(f"upsample_conv2d: weight {w.shape} should be ({w.shape[0]}, {Ci}, 3, 3)")
    bias = None if bias is None else _f32(bias)
    if N * ((H + 1) // 2) * ((W + 1) // 2) >= _WINOGRAD_TILES:
        return _upsample_winograd(x, w, bias)
    return _upsample_phases(x, w, bias)


def _upsample_phases(x, w, bias):
    """The four phases' 2x2 convs by shift and accumulate per shift of the zero-padded small image
    flattened to (Cin, Hp*Wp), each output row with two junk columns, dropped when the four phases
    are interleaved into the output."""
    N, Ci, H, W = x.shape
    Co = w.shape[0]
    taps = _transformed_weights(_UPSAMPLE_KK, w)
    Hp, Wp = H + 2, W + 2
    xp = np.zeros((N, Ci, Hp * Wp + 2), np.float32)  # + 2: the last row's junk columns
    xp[:, :, :Hp * Wp].reshape(N, Ci, Hp, Wp)[:, :, 1:H + 1, 1:W + 1] = x
    y = np.empty((N, Co, 2 * H, 2 * W), np.float32)
    bias = None if bias is None else bias[:, None, None]
    rows = max(1, min(H, (1 << 21) // (Co * Wp)))  # small-image rows per chunk: ~8 MB of accumulators
    acc = np.empty((4, Co, rows * Wp), np.float32)
    tmp = np.empty((2 * Co, rows * Wp), np.float32)
    for n in range(N):
        for r0 in range(0, H, rows):
            r = min(rows, H - r0)
            L = r * Wp
            a4 = acc[:, :, :L]
            first = 0
            for (sy, sx), phases in _UPSAMPLE_GROUPS:
                k = len(phases)
                s = (r0 + sy) * Wp + sx
                wk = taps[first:first + k].reshape(k * Co, Ci)
                xs = xp[n, :, s:s + L]
                if k == 4:  # the shift every phase reads starts the four accumulators
                    np.matmul(wk, xs, out=a4.reshape(4 * Co, L))
                else:
                    t = tmp[:k * Co, :L]
                    np.matmul(wk, xs, out=t)
                    for i, (a, b, _, _) in enumerate(phases):
                        a4[2 * a + b] += t[i * Co:(i + 1) * Co]
                first += k
            for a, b in np.ndindex(2, 2):
                src = a4[2 * a + b].reshape(Co, r, Wp)[:, :, :W]
                out = y[n, :, 2 * r0 + a:2 * (r0 + r):2, b::2]
                if bias is None:
                    out[...] = src
                else:
                    np.add(src, bias, out=out)
    return y


# Each phase's 2x2 conv by Winograd F(2x2, 2x2): a 2x2 block of a phase's outputs from a 3x3 tile
# of the padded small image, 9 multiplies instead of 16. In 1-D y0 = d0 g0 + d1 g1, y1 = d1 g0 + d2 g1
# come from (d0 - d1) g0, d1 (g0 + g1), (d2 - d1) g1: B^T = [[1, -1, 0], [0, 1, 0], [0, -1, 1]],
# G = [[1, 0], [1, 1], [0, 1]], A^T = [[1, 1, 0], [0, 1, 1]], additions only. B^T's rows read, for
# phase a, minus the row difference at padded row 2s + a, the row 2s + a + 1 and the difference
# there: every phase's B^T d B is one of four images (the padded image, its row differences, its
# column differences, both) read at one of four (row, column) parities and shifted by 0 or 1 tile,
# so all of them are contiguous slices of 16 parity parts (one junk column per grid row), and those
# of the 36 (phase, k, l) that read the same slice are one GEMM. The minus is folded into U.
_F22_G = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
_F22_SIGN = np.array([-1, 1, 1], np.float32)


def _f22_rows(a, k):
    """(difference image?, parity, tile shift) of the rows phase a's B^T row k reads."""
    o = a + (k > 0)
    return int(k != 1), o % 2, o // 2


def _f22_groups():
    """The 36 (a, b, k, l) grouped by the slice they read: [((rows), (columns)), [(a, b, k, l), ..]]."""
    groups = {}
    for a, b, k, l in np.ndindex(2, 2, 3, 3):
        groups.setdefault((_f22_rows(a, k), _f22_rows(b, l)), []).append((a, b, k, l))
    return list(groups.items())


_F22_GROUPS = _f22_groups()
_F22_INDEX = {t: i for i, t in enumerate(t for _, ts in _F22_GROUPS for t in ts)}  # GEMM output row block
# (36, 9): every U = G (R[a] g R[b]^T) G^T entry (signed) from the 3x3 kernel g, in _F22_INDEX order
_F22_UU = np.stack([np.kron(_F22_SIGN[k] * (_F22_G @ _UPSAMPLE_R[a])[k], _F22_SIGN[l] * (_F22_G @ _UPSAMPLE_R[b])[l])
                    for (a, b, k, l) in sorted(_F22_INDEX, key=_F22_INDEX.get)])


def _upsample_winograd(x, w, bias):
    """The four phases' 2x2 convs by Winograd F(2x2, 2x2), per image in chunks of tile rows."""
    N, Ci, H, W = x.shape
    Co = w.shape[0]
    Ts, Tt = (H + 1) // 2, (W + 1) // 2  # 2x2 tiles of each phase's (H, W) outputs
    G = Tt + 1  # grid columns per tile row; the last is junk (its tile wraps into the next row)
    U = _transformed_weights(_F22_UU, w)
    y = np.empty((N, Co, 4 * Ts, 4 * Tt), np.float32)
    y6 = y.reshape(N, Co, Ts, 4, Tt, 4)  # output (4s + 2 di + a, 4t + 2 dj + b): tile, pixel, phase
    rows = max(1, min(Ts, _WINOGRAD_CHUNK // (36 * 4 * max(Ci, Co) * G)))
    parts = np.zeros((2, 2, 2, 2, Ci, (rows + 1) * G + 1), np.float32)  # [row diff, col diff, pr, pc]
    m_buf = _scratch("M", (36, Co, rows * G))
    for n in range(N):
        for r0 in range(0, Ts, rows):
            r = min(rows, Ts - r0)
            L = r * G

            def transform_in(cs):
                """The 16 parts for input channels cs, from the padded image's four parity parts."""
                c = len(range(Ci)[cs])
                par = np.zeros((2, 2, c, r + 2, G + 1), np.float32)  # padded (2S + p, 2T + q) = x (2S + p - 1, 2T + q - 1)
                for p, q in np.ndindex(2, 2):
                    ys, xs = 2 * (r0 + np.arange(r + 2)) + p - 1, 2 * np.arange(G + 1) + q - 1
                    S, T = np.nonzero((ys >= 0) & (ys < H))[0], np.nonzero((xs >= 0) & (xs < W))[0]
                    if len(S) and len(T):
                        par[p, q, :, S[0]:S[-1] + 1, T[0]:T[-1] + 1] = \
                            x[n, cs, ys[S[0]]:ys[S[-1]] + 1:2, xs[T[0]]:xs[T[-1]] + 1:2]
                cd = np.empty((2, 2, c, r + 2, G), np.float32)  # column differences at even, odd columns
                for p in range(2):
                    np.subtract(par[p, 1, :, :, :G], par[p, 0, :, :, :G], out=cd[p, 0])
                    np.subtract(par[p, 0, :, :, 1:], par[p, 1, :, :, :G], out=cd[p, 1])
                out = parts[:, :, :, :, cs, :(r + 1) * G].reshape(2, 2, 2, 2, c, r + 1, G)
                for p, q in np.ndindex(2, 2):
                    out[0, 0, p, q] = par[p, q, :, :r + 1, :G]
                    out[0, 1, p, q] = cd[p, q, :, :r + 1]
                for q in range(2):  # row differences at even, odd rows
                    np.subtract(par[1, q, :, :r + 1, :G], par[0, q, :, :r + 1, :G], out=out[1, 0, 0, q])
                    np.subtract(par[0, q, :, 1:, :G], par[1, q, :, :r + 1, :G], out=out[1, 0, 1, q])
                    np.subtract(cd[1, q, :, :r + 1], cd[0, q, :, :r + 1], out=out[1, 1, 0, q])
                    np.subtract(cd[0, q, :, 1:], cd[1, q, :, :r + 1], out=out[1, 1, 1, q])

            def transform_out(cs):
                """A^T M A per phase for output channels cs, into y as whole rows."""
                c = len(range(Co)[cs])
                rowbuf = np.empty((4, c, r, Tt, 4), np.float32)  # [2 di + a, ..., 2 dj + b]
                for a, b in np.ndindex(2, 2):
                    m = [[M[_F22_INDEX[a, b, k, l], cs].reshape(c, r, G)[:, :, :Tt] for l in range(3)]
                         for k in range(3)]
                    if bias is not None:  # A^T's column 1 is all ones: there a bias reaches all four outputs
                        m[1][1] += bias[cs, None, None]
                    cols = [(m[k][0] + m[k][1], m[k][1] + m[k][2]) for k in range(3)]
                    for di, dj in np.ndindex(2, 2):
                        np.add(cols[di][dj], cols[di + 1][dj], out=rowbuf[2 * di + a, ..., 2 * dj + b])
                y6[n, cs, r0:r0 + r] = rowbuf.transpose(1, 2, 0, 3, 4)

            _each(transform_in, _split(Ci))
            M = m_buf[:, :, :L]
            first = 0
            for ((dr, pr, sr), (dc, pc, sc)), phases in _F22_GROUPS:
                k, s = len(phases), sr * G + sc
                np.matmul(U[first:first + k].reshape(k * Co, Ci), parts[dr, dc, pr, pc, :, s:s + L],
                          out=M[first:first + k].reshape(k * Co, L))
                first += k
            _each(transform_out, _split(Co))
    if y.shape[2:] != (2 * H, 2 * W):
        y = np.ascontiguousarray(y[:, :, :2 * H, :2 * W])
    return y


def pad2d(x, left: int, right: int, top: int, bottom: int):
    """x: (N, C, H, W) -> (N, C, top+H+bottom, left+W+right), zeros around (torch F.pad order).
    For diffusers' Downsample2D(padding=0), which pads only right and bottom before a stride-2 conv."""
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


# --- normalisation  (shaders/norm.wgsl) -----------------------------------------------------------


def group_norm(x, groups: int, weight, bias, eps: float, act: str | None = None, tokens: bool = False):
    """x: (N, C, *spatial) -> same shape, or with tokens=True (N, C, H, W) -> (N, H*W, C); optional
    fused activation after the affine.
    Two-pass statistics in f32 (mean, then the sum of squared deviations accumulated per block in
    f64), then (x - mean) * (weight * rstd) + bias [-> act] per block: 3 passes over memory in all."""
    check_act("group_norm", act)
    N, C = x.shape[:2]
    cg = C // groups
    xg = x.reshape(N * groups, -1)  # (N*G, C/G * spatial): one row per group of one image
    R, n = xg.shape
    mean = np.empty(R, np.float32)
    ss = np.zeros(R, np.float64)

    def stats(rows):
        xr, mr, sr = xg[rows], mean[rows], ss[rows]
        mr[:] = xr.mean(axis=1)  # pairwise summation: accurate in f32
        for r, c in _blocks(*xr.shape):
            d = xr[r, c] - mr[r, None]
            sr[r] += np.square(d, out=d).sum(axis=1)

    _each(stats, _split(R))
    rstd = (1.0 / np.sqrt(ss / n + eps)).astype(np.float32)
    # per (image, channel) rows: mean and rstd of the channel's group
    scale = (rstd.reshape(N, groups, 1) * _f32(weight).reshape(1, groups, cg)).reshape(N * C, 1)
    shift = np.broadcast_to(_f32(bias), (N, C)).reshape(N * C, 1)
    mean_c = np.repeat(mean, cg).reshape(N * C, 1)
    xc = x.reshape(N * C, -1)
    L = xc.shape[1]

    def normalise(block, yb):
        r, c = block
        np.subtract(xc[r, c], mean_c[r], out=yb)
        yb *= scale[r]
        yb += shift[r]
        if act:
            _KERNELS[act](yb, out=yb)

    if not tokens:
        y = np.empty(x.shape, np.float32)
        yc = y.reshape(N * C, -1)
        _each(lambda b: normalise(b, yc[b]), list(_blocks(*xc.shape)))
        return y
    # tokens: each block is 16 or more channels of one image (about _BLOCK floats), normalised in a
    # buffer and written transposed: whole 64-byte lines of the (N, H*W, C) output, as _transposed
    y = np.empty((N, L, C), np.float32)
    step = max(16, _BLOCK // L // 16 * 16)

    def normalise_tokens(block):
        n, c0 = block
        c1 = min(C, c0 + step)
        yb = np.empty((c1 - c0, L), np.float32)
        normalise((slice(n * C + c0, n * C + c1), slice(None)), yb)
        y[n, :, c0:c1] = yb.T

    _each(normalise_tokens, [(n, c0) for n in range(N) for c0 in range(0, C, step)])
    return y


def layer_norm(x, weight, bias, eps: float):
    """x: (..., D) normalised over D, then * weight + bias; two-pass mean/variance per block of
    rows, in cache. The row sums are a matrix-vector product and a row-wise dot product (NumPy's
    reductions along a short last axis are ~4x slower: (8192, 320) 3.7 -> 1.2 ms)."""
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    y = np.empty(x2.shape, np.float32)
    weight, bias = _f32(weight), _f32(bias)
    mean_of = np.full(D, 1.0 / D, np.float32)

    def normalise(r):
        yb = y[r]
        np.subtract(x2[r], (x2[r] @ mean_of)[:, None], out=yb)
        var = np.vecdot(yb, yb)
        var *= np.float32(1.0 / D)
        var += np.float32(eps)
        yb *= (1.0 / np.sqrt(var))[:, None]
        yb *= weight
        yb += bias

    _each(normalise, _row_blocks(*x2.shape))
    return y.reshape(x.shape)


# --- attention  (shaders/attention.wgsl) ----------------------------------------------------------

_SCORES = 1 << 20  # score floats per block (4 MB): (heads per block) x (query rows) x Lk


def attention(q, k, v, heads: int, causal: bool = False):
    """q: (N, Lq, h*d), k/v: (N, Lk, h*d) -> (N, Lq, h*d); softmax(q k^T / sqrt(d)) v per head. Each of
    q, k, v may be (x, col0): columns col0 .. col0 + h*d of a wider x, h*d the narrowest width past
    its col0 (a fused projection's output).

    The GPU kernel is flash-style (online softmax over key tiles); here queries (and heads, when Lk
    is short) are taken in blocks of about _SCORES scores, so the (Lq, Lk) matrix of a 64x64 latent
    never exists whole and each block's softmax runs in cache. The 1/sqrt(d) scale is folded into q;
    v gets a column of ones, so the second matmul also yields each row's sum of exp(scores), and the
    softmax's division is done on the (rows, d) output instead of the (rows, Lk) scores."""
    views = [x if isinstance(x, tuple) else (x, 0) for x in (q, k, v)]
    width = min(x.shape[2] - c for x, c in views)
    q, k, v = (x[..., c:c + width] for x, c in views)
    N, Lq, D = q.shape
    Lk = k.shape[1]
    d = D // heads
    qh = (q * np.float32(1.0 / math.sqrt(d))).reshape(N, Lq, heads, d).transpose(0, 2, 1, 3)  # (N, h, Lq, d)
    kh = k.reshape(N, Lk, heads, d).transpose(0, 2, 3, 1)  # (N, h, d, Lk)
    v1 = np.ones((N, heads, Lk, d + 1), dtype=np.float32)  # (N, h, Lk, d + 1): [v | 1]
    v1[..., :d] = v.reshape(N, Lk, heads, d).transpose(0, 2, 1, 3)
    out = np.empty((N, Lq, heads, d), dtype=np.float32)
    bq = max(1, min(Lq, _SCORES // Lk))  # query rows per block
    hb = max(1, min(heads, _SCORES // (bq * Lk)))  # heads per block
    if causal:
        mask = np.triu(np.full((Lq, Lk), -np.inf, np.float32), k=1)  # key j > query i is hidden
    for n in range(N):
        for h0 in range(0, heads, hb):
            hs = slice(h0, h0 + hb)
            for s in range(0, Lq, bq):
                qs = slice(s, s + bq)
                for shift in (False, True):
                    scores = np.matmul(qh[n, hs, qs], kh[n, hs])  # (hb, bq, Lk)
                    if causal:
                        scores += mask[qs]
                    _each(lambda rows: _exp_rows(rows, shift), _split_rows(scores.reshape(-1, Lk)))
                    with np.errstate(over="ignore", invalid="ignore"):  # an overflow sends the block round again
                        o = np.matmul(scores, v1[n, hs])  # (hb, bq, d + 1): [exp(scores) v | row sums]
                    # softmax is shift-invariant: the row max need only be subtracted (and the block
                    # redone) where exp overflowed, or where every score of a row may be below -60
                    # (row sum < Lk e^-60), whose exps would lose precision or vanish
                    if shift or (np.isfinite(o).all() and o[..., d].min() >= _EXP_FLOOR * Lk):
                        break
                np.divide(o[..., :d], o[..., d:], out=out[n, qs, hs].transpose(1, 0, 2))
    return out.reshape(N, Lq, D)


def _split_rows(a):
    """A 2-D array as one run of rows per thread."""
    return [a[r] for r in _split(a.shape[0])]


_EXP_FLOOR = math.exp(-60)


def _exp_rows(scores, shift: bool):
    """exp of a block of attention scores in place, each row's max subtracted first if `shift`."""
    if shift:
        scores -= scores.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):  # unshifted, an overflow to inf sends the block round again
        np.exp(scores, out=scores)


# --- fused activations  (shaders/include/activations.wgsl) ----------------------------------------


# The activations linear, conv2d and group_norm fuse: kernels `_name(x, out)` (x and out may be the same
# array) applied block by block while the rows are in cache. exp overflows to inf on the saturating
# side (x / inf = -0), which NumPy, unlike WGSL, defines.


def _silu(x, out):
    t = np.negative(x)
    np.exp(t, out=t)
    t += 1
    return np.divide(x, t, out=out)


def _quick_gelu(x, out):
    t = np.multiply(x, np.float32(-1.702))
    np.exp(t, out=t)
    t += 1
    return np.divide(x, t, out=out)


# GELU(x) = x * Phi(x) = max(x, 0) - |x| * Phi(-|x|), and Phi(-|x|) = erfc(|x| / sqrt 2) / 2 by
# Abramowitz & Stegun 7.1.26: erfc(z) = (a1 t + ... + a5 t^5) exp(-z^2), t = 1 / (1 + p z), error
# <= 1.5e-7 for z >= 0, so GELU's error is <= 1e-7 * |x| (measured max 5e-7 against f64 torch over
# N(0, 3^2)). No SciPy (Pyodide), ~20 ufunc passes, exp saturating to 0 for large |x| (no clipping).
_GELU_P = np.float32(0.3275911 / math.sqrt(2.0))
_GELU_A = [np.float32(a / 2) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)]


def _gelu(x, out):
    ax = np.abs(x)
    t = np.multiply(ax, _GELU_P)
    t += 1
    np.reciprocal(t, out=t)
    h = np.multiply(t, _GELU_A[4])
    for a in _GELU_A[3::-1]:  # Horner: h = (a1 + t (a2 + ... + t a5)) t / 2
        h += a
        h *= t
    e = np.square(ax)
    e *= np.float32(-0.5)
    np.exp(e, out=e)
    h *= e  # Phi(-|x|)
    h *= ax
    np.maximum(x, 0, out=out)
    out -= h
    return out


def _relu(x, out):
    return np.maximum(x, 0, out=out)


def _geglu(x, out):
    """x: (rows, 2F) -> out (rows, F) = x[:, :F] * gelu(x[:, F:])."""
    F = out.shape[-1]
    _gelu(x[:, F:], out=out)
    out *= x[:, :F]
    return out


_KERNELS = {"silu": _silu, "gelu": _gelu, "quick_gelu": _quick_gelu, "relu": _relu}


# --- elementwise and layout  (shaders/elementwise.wgsl) -------------------------------------------


def add(x, y):
    """Same-shape add (a residual)."""
    return x + y


def mul(x, s: float, shift: float = 0.0):
    """x * s + shift, s and shift Python floats."""
    y = x * np.float32(s)
    if shift:
        y += np.float32(shift)
    return y


def tanh_clamp(x, bound: float):
    """bound * tanh(x / bound): a smooth clamp into (-bound, bound) (TAESD's decoder input)."""
    y = x / np.float32(bound)
    np.tanh(y, out=y)
    y *= np.float32(bound)
    return y


def concat(xs, axis: int = 1):
    """Concatenate along `axis` (channels for UNet skips, batch for CFG's two prompts)."""
    return np.concatenate(xs, axis=axis)


def nchw_to_nlc(x):
    """(N, C, H, W) -> (N, H*W, C)."""
    N, C, H, W = x.shape
    return _transposed(x.reshape(N, C, H * W))


def nlc_to_nchw(x, H: int, W: int):
    """(N, H*W, C) -> (N, C, H, W)."""
    N, L, C = x.shape
    return _transposed(x).reshape(N, C, H, W)


# A transposing copy goes in blocks of 16 source rows x 256 columns (16 KB), each a small transpose in
# cache that writes whole 64-byte lines; NumPy's own copy walks the source a row length apart per
# element. (2, 320, 4096): 6.1 -> 1.7 ms on 2 cores; (1, 128, 512 * 512): 106 -> 31 ms.
_TRANSPOSE_BLOCK = (16, 256)


def _transposed(x):
    """(N, A, B) -> a new contiguous (N, B, A)."""
    N, A, B = x.shape
    y = np.empty((N, B, A), np.float32)
    ba, bb = _TRANSPOSE_BLOCK

    def part(block):
        n, a, b = block
        y[n, b:b + bb, a:a + ba] = x[n, a:a + ba, b:b + bb].T

    _each(part, [(n, a, b) for n in range(N) for a in range(0, A, ba) for b in range(0, B, bb)])
    return y


def embedding(ids: np.ndarray, table):
    """ids: (N, L) int -> (N, L, D) rows of table (V, D)."""
    return _f32(table[ids])


def slice_tokens(x, index: np.ndarray):
    """x: (N, L, D), index: (N,) -> (N, D): one token per row (CLIP's pooled EOS token)."""
    return x[np.arange(x.shape[0]), index]
