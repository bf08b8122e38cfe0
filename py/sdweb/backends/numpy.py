"""The NumPy backend: the readable reference for every op the models use.

Model code (clip.py, unet.py, vae.py) is written once against this interface; `backends/webgpu.py`
implements the same names with WGSL kernels from `shaders/` (one .wgsl per op family, named in each
docstring below). Tensors here are plain float32 ndarrays.

Weights arrive from the store in the precision they are held in (float32, float16, or bfloat16 kept
as uint16 bit patterns) and are upcast to float32 per op, so memory holds the small copy and the
arithmetic is always f32.

Shape legend: N batch, C channels, H/W height/width, L tokens, D features, h heads, d head dim.
"""

from __future__ import annotations

import math

import numpy as np

name = "numpy"


# --- tensors --------------------------------------------------------------------------------------


def tensor(a) -> np.ndarray:
    """Host array -> backend tensor (f32)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def numpy(x) -> np.ndarray:
    """Backend tensor -> host f32 array (a readback on the GPU)."""
    return np.asarray(x, dtype=np.float32)


def weight(w: np.ndarray):
    """A weight as held by the store (f32, f16, or bf16 as uint16) -> what ops accept as a weight."""
    return w


def f32(w: np.ndarray) -> np.ndarray:
    """Upcast a held weight to float32. bf16 is the top half of an f32, stored as uint16."""
    if w.dtype == np.float32:
        return w
    if w.dtype == np.uint16:
        return (w.astype(np.uint32) << 16).view(np.float32)
    return w.astype(np.float32)


def shape(x) -> tuple:
    return tuple(x.shape)


def reshape(x, shape):
    return x.reshape(shape)


# --- linear algebra  (shaders/matmul.wgsl) --------------------------------------------------------


def linear(x, w, b=None, act: str | None = None):
    """x: (..., Din), w: (Dout, Din), b: (Dout,) -> (..., Dout), then optional fused activation."""
    y = x @ f32(w).T
    if b is not None:
        y += f32(b)
    return _ACTS[act](y) if act else y


def conv2d(x, w, b=None, stride: int = 1, padding: int = 0):
    """x: (N, Cin, H, W), w: (Cout, Cin, kh, kw) -> (N, Cout, Ho, Wo). Implicit GEMM on the GPU
    (shaders/conv2d.wgsl); here an im2col view and one matmul per image."""
    w = f32(w)
    N, C, H, W = x.shape
    Co, Ci, kh, kw = w.shape
    if kh == 1 and kw == 1 and stride == 1 and padding == 0:
        # (Co, Ci) @ (N, Ci, H*W) -> (N, Co, H*W)
        y = np.matmul(w.reshape(Co, Ci), x.reshape(N, C, H * W)).reshape(N, Co, H, W)
    else:
        if padding:
            x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        Ho = (x.shape[2] - kh) // stride + 1
        Wo = (x.shape[3] - kw) // stride + 1
        # cols: (N, Ho, Wo, C, kh, kw) as a strided view, copied once into the GEMM operand
        win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
        win = win[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, kh, kw)
        cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(N, Ho * Wo, C * kh * kw)
        y = np.matmul(cols, w.reshape(Co, -1).T)  # (N, Ho*Wo, Co)
        y = y.transpose(0, 2, 1).reshape(N, Co, Ho, Wo)
    y = np.ascontiguousarray(y)
    if b is not None:
        y += f32(b)[None, :, None, None]
    return y


def pad2d(x, left: int, right: int, top: int, bottom: int):
    """x: (N, C, H, W) -> (N, C, top+H+bottom, left+W+right), zeros around (torch F.pad order).
    For diffusers' Downsample2D(padding=0), which pads only right and bottom before a stride-2 conv."""
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


# --- normalisation  (shaders/norm.wgsl) -----------------------------------------------------------


def group_norm(x, groups: int, gamma, beta, eps: float, silu: bool = False):
    """x: (N, C, *spatial) -> same shape; optional fused SiLU after the affine."""
    N, C = x.shape[:2]
    g = x.reshape(N, groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = np.square(g - mean).mean(axis=2, keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    bshape = (1, C) + (1,) * (x.ndim - 2)
    y = y * f32(gamma).reshape(bshape) + f32(beta).reshape(bshape)
    return silu_(y) if silu else y


def layer_norm(x, gamma, beta, eps: float):
    """x: (..., D) normalised over D."""
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * f32(gamma) + f32(beta)


# --- attention  (shaders/attention.wgsl) ----------------------------------------------------------

_ATTN_CHUNK = 1024  # query rows per block: bounds the score matrix at heads * 1024 * Lk floats


def attention(q, k, v, heads: int, causal: bool = False):
    """q: (N, Lq, h*d), k/v: (N, Lk, h*d) -> (N, Lq, h*d); softmax(q k^T / sqrt(d)) v per head.

    The GPU kernel is flash-style (online softmax over key tiles); here queries are taken in blocks so
    the (Lq, Lk) score matrix of a 64x64 latent never exists whole."""
    N, Lq, D = q.shape
    Lk = k.shape[1]
    d = D // heads
    scale = 1.0 / math.sqrt(d)
    qh = q.reshape(N, Lq, heads, d).transpose(0, 2, 1, 3)  # (N, h, Lq, d)
    kh = k.reshape(N, Lk, heads, d).transpose(0, 2, 3, 1)  # (N, h, d, Lk)
    vh = v.reshape(N, Lk, heads, d).transpose(0, 2, 1, 3)  # (N, h, Lk, d)
    out = np.empty((N, heads, Lq, d), dtype=np.float32)
    for s in range(0, Lq, _ATTN_CHUNK):
        e = min(s + _ATTN_CHUNK, Lq)
        scores = np.matmul(qh[:, :, s:e], kh)
        scores *= scale
        if causal:
            rows = np.arange(s, e)[:, None]
            scores[..., np.arange(Lk)[None, :] > rows] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out[:, :, s:e] = np.matmul(scores, vh)
    return out.transpose(0, 2, 1, 3).reshape(N, Lq, D)


# --- elementwise  (shaders/elementwise.wgsl) ------------------------------------------------------


def silu_(x):
    return x / (1.0 + np.exp(-x))


def gelu(x):
    """Exact (erf) GELU, as torch.nn.functional.gelu's default."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def quick_gelu(x):
    return x * (1.0 / (1.0 + np.exp(-1.702 * x)))


def geglu(x):
    """x: (..., 2F) -> (..., F): first half * gelu(second half), diffusers' GEGLU."""
    a, gate = np.split(x, 2, axis=-1)
    return a * gelu(gate)


silu = silu_
_ACTS = {"silu": silu_, "gelu": gelu, "quick_gelu": quick_gelu, "geglu": geglu}


def add(a, b):
    """Same-shape add (a residual)."""
    return a + b


def mul(a, s: float):
    """Scale by a Python float."""
    return a * np.float32(s)


def add_channel(x, v):
    """x: (N, C, H, W) + v: (N, C) broadcast over H, W (the resnet's time embedding)."""
    return x + v[:, :, None, None]


def upsample_nearest2x(x):
    """x: (N, C, H, W) -> (N, C, 2H, 2W)."""
    return x.repeat(2, axis=2).repeat(2, axis=3)


def concat(xs, axis: int = 1):
    """Channel concat of (N, Ci, H, W) tensors (UNet skip connections)."""
    return np.concatenate(xs, axis=axis)


def nchw_to_nlc(x):
    """(N, C, H, W) -> (N, H*W, C)."""
    N, C, H, W = x.shape
    return np.ascontiguousarray(x.reshape(N, C, H * W).transpose(0, 2, 1))


def nlc_to_nchw(x, H: int, W: int):
    """(N, H*W, C) -> (N, C, H, W)."""
    N, L, C = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1).reshape(N, C, H, W))


def embedding(ids: np.ndarray, table):
    """ids: (N, L) int -> (N, L, D) rows of table (V, D)."""
    return f32(table[ids])


def slice_tokens(x, index: np.ndarray):
    """x: (N, L, D), index: (N,) -> (N, D): one token per row (CLIP's pooled EOS token)."""
    return x[np.arange(x.shape[0]), index]


def split_batch(x, parts: int):
    """(parts*N, ...) -> list of parts tensors (N, ...), e.g. CFG's uncond/cond halves."""
    return np.split(x, parts, axis=0)


# --- erf ------------------------------------------------------------------------------------------


def _erf(x):
    """float32 erf without SciPy (not in Pyodide by default): Abramowitz-Stegun 7.1.26 is too coarse
    for 1e-4 parity, so use the f32 rational approximation that XLA/Eigen use (max error ~1e-7)."""
    x = np.clip(x, -4.0, 4.0).astype(np.float32)
    x2 = x * x
    a = np.float32(-2.72614225801306e-10)
    a = a * x2 + np.float32(2.77068142495902e-08)
    a = a * x2 + np.float32(-2.10102402082508e-06)
    a = a * x2 + np.float32(-5.69250639462346e-05)
    a = a * x2 + np.float32(-7.34990630326855e-04)
    a = a * x2 + np.float32(-2.95459980854025e-03)
    a = a * x2 + np.float32(-1.60960333262415e-02)
    a = a * x
    b = np.float32(-1.45660718464996e-05)
    b = b * x2 + np.float32(-2.13374055278905e-04)
    b = b * x2 + np.float32(-1.68282697438203e-03)
    b = b * x2 + np.float32(-7.37332916720468e-03)
    b = b * x2 + np.float32(-1.42647390514189e-02)
    return a / b
