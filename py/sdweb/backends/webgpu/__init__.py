"""The WebGPU backend: the op list of `backends/contract.py` (the reference: `backends/numpy.py`), run
as WGSL kernels from `shaders/`.

Tensors are GPU buffer handles (`GPUTensor`); ops record dispatches through a device bridge
(backends/bridges/: wgpu in CPython, the JS bridge in the browser, the counting bridge for plans) and
nothing comes back to the host until `numpy(t)` reads a tensor back. Each function here is one line:
the op's module in ops/ (named as its shader in shaders/) does the work on the process-wide context.

    device.py   Context (bridge, buffer pool, pipeline cache, dispatch batching, byte counts),
                GPUTensor, GPUWeight; context(), use_bridge(), using(), available()
    shaders.py  WGSL loading: #include, host constants, the weight dtype's W_TYPE / W_LOAD
    upload.py   weights onto the GPU (held arrays, or WeightRefs straight from the file) and the
                adapter-limit check made before a component is uploaded
    ops/        one module per op family: validate, pick the entry and constants, pack, dispatch
"""

from __future__ import annotations

import math

import numpy as np

from ...weights import Patched
from . import upload
from .device import ITEMSIZE, GPULimitError, GPUTensor, GPUWeight, available, context, use_bridge, using  # noqa: F401
from .ops import attention as _attention
from .ops import conv2d as _conv2d
from .ops import elementwise as _elementwise
from .ops import lora as _lora
from .ops import matmul as _matmul
from .ops import norm as _norm

name = "webgpu"
takes_weight_refs = True  # weight() takes a lazy store's WeightRef: its bytes go file -> GPU (upload.py)


# --- tensors --------------------------------------------------------------------------------------


def tensor(a) -> GPUTensor:
    """Host array -> backend tensor (of the compute dtype, set_compute). A GPUTensor passes through."""
    if isinstance(a, GPUTensor):
        return a
    return context().upload(a)


def numpy(x) -> np.ndarray:
    """Backend tensor -> host f32 array: the readback (submits pending work and waits for it)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    return context().read(x)


def weight(w) -> GPUWeight:
    """A weight as held by the store (f32, f16, or bf16 as uint16), or a lazy store's WeightRef ->
    a GPUWeight, uploaded now (upload.py); a Patched one with its LoRA patches fused on the GPU."""
    if isinstance(w, Patched):
        out = upload.weight(context(), w.base)
        for p in w.patches:
            out = fuse_lora(out, p.up, p.down, p.scale)
        return out
    return upload.weight(context(), w)


def fuse_lora(weight, up, down, scale: float) -> GPUWeight:
    """weight (O, ...) += scale * up (O, r) @ down (r, K) in its own buffer and held dtype (ops/lora.py)."""
    return _lora.fuse_lora(context(), weight, up, down, scale)


def check_weights(store) -> None:
    """GPULimitError naming the first tensor of a WeightStore that cannot be bound on this adapter."""
    upload.check_weights(context(), store)


def fuse_weights(weights) -> GPUWeight:
    """GPUWeights of one dtype, (rows_i, *rest) -> one GPUWeight of their rows (a fused projection),
    copied on the GPU (upload.py)."""
    return upload.fuse(context(), weights)


def compute_dtypes() -> tuple:
    """("f32", "f16") where the adapter has shader-f16, else ("f32",)."""
    return ("f32", "f16") if "shader-f16" in context().features else ("f32",)


def set_compute(dtype: str) -> str:
    """Tensors made from now on (tensor, embedding) hold `dtype`; -> the previous dtype."""
    return context().set_compute(dtype)


def shape(x) -> tuple:
    return tuple(x.shape)


# The largest activation a pass may make before the VAE splits its work into tiles, besides the
# adapter's own limits. A GPU's memory size is not exposed, and a pass's peak (live tensors plus the
# pool's idle buffers) is about 6.5x its largest activation: SD's 512 x 512 decode, whose largest is
# 256 MiB, peaks at 1.7 GB, below the UNet step's; 1024 x 1024 in one pass would peak at 6 GB.
MAX_ACTIVATION_BYTES = 256 << 20


def fits(shape) -> bool:
    """Whether an activation of `shape` in the compute dtype (set_compute) can be bound on this
    adapter, within MAX_ACTIVATION_BYTES."""
    ctx = context()
    nbytes = ITEMSIZE[ctx.compute] * math.prod(shape)
    return nbytes <= MAX_ACTIVATION_BYTES and ctx.fits(nbytes)


# --- linear algebra (ops/matmul.py, ops/conv2d.py, ops/attention.py) -------------------------------


def linear(x, weight, bias=None, act: str | None = None, residual=None, image=None):
    """x: (..., Din), weight: (Dout, Din[, 1, 1]), bias: (Dout,) -> (..., Dout), optional fused
    activation, then + residual; image=(H, W): tokens in, (N, Dout, H, W) out."""
    return _matmul.linear(context(), x, weight, bias, act, residual, image)


def conv2d(x, weight, bias=None, stride: int = 1, padding: int = 0, residual=None, temb=None,
           act: str | None = None):
    """x: (N, Cin, H, W), weight: (Cout, Cin, k, k) -> (N, Cout, Ho, Wo), plus temb (N, Cout) and
    `residual` when given, optional fused activation."""
    return _conv2d.conv2d(context(), x, weight, bias, stride, padding, residual, temb, act)


def upsample_conv2d(x, weight, bias=None):
    """x: (N, Cin, H, W), weight: (Cout, Cin, 3, 3) -> (N, Cout, 2H, 2W): the nearest-2x kernel
    (ops/elementwise.py), then conv2d with padding 1."""
    return _conv2d.conv2d(context(), _elementwise.upsample_nearest2x(context(), x), weight, bias, 1, 1, None)


def attention(q, k, v, heads: int, causal: bool = False):
    """q: (N, Lq, h*d), k/v: (N, Lk, h*d) -> (N, Lq, h*d)."""
    return _attention.attention(context(), q, k, v, heads, causal)


# --- normalisation (ops/norm.py) ------------------------------------------------------------------


def group_norm(x, groups: int, weight, bias, eps: float, act: str | None = None, tokens: bool = False):
    """x: (N, C, *spatial) -> same shape (tokens=True: (N, H*W, C)); optional fused activation."""
    return _norm.group_norm(context(), x, groups, weight, bias, eps, act, tokens)


def layer_norm(x, weight, bias, eps: float):
    """x: (..., D) normalised over D."""
    return _norm.layer_norm(context(), x, weight, bias, eps)


# --- elementwise and layout (ops/elementwise.py) --------------------------------------------------


def add(x, y):
    """Same-shape add."""
    return _elementwise.add(context(), x, y)


def mul(x, s: float, shift: float = 0.0):
    """x * s + shift, s and shift Python floats."""
    return _elementwise.mul(context(), x, s, shift)


def tanh_clamp(x, bound: float):
    """bound * tanh(x / bound)."""
    return _elementwise.tanh_clamp(context(), x, bound)


def pad2d(x, left: int, right: int, top: int, bottom: int):
    """x: (N, C, H, W) -> (N, C, top+H+bottom, left+W+right), zeros around."""
    return _elementwise.pad2d(context(), x, left, right, top, bottom)


def concat(xs, axis: int = 1):
    """Concat along `axis` (channels for UNet skips, batch for CFG contexts)."""
    return _elementwise.concat(context(), xs, axis)


def nchw_to_nlc(x):
    """(N, C, H, W) -> (N, H*W, C)."""
    return _elementwise.nchw_to_nlc(context(), x)


def nlc_to_nchw(x, H: int, W: int):
    """(N, H*W, C) -> (N, C, H, W)."""
    return _elementwise.nlc_to_nchw(context(), x, H, W)


def embedding(ids: np.ndarray, table):
    """ids: (N, L) int (host) -> (N, L, D) rows of table (V, D)."""
    return _elementwise.embedding(context(), ids, table)


def slice_tokens(x, index: np.ndarray):
    """x: (N, L, D), index: (N,) (host) -> (N, D): one token per row."""
    return _elementwise.slice_tokens(context(), x, index)
