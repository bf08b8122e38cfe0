"""Elementwise and layout ops over shaders/elementwise.wgsl (entries and uniforms listed there).

Shapes as in backends/numpy.py. Every op makes a new output tensor; inputs are never written."""

from __future__ import annotations

import math

import numpy as np

from ....errors import SdwebError
from .common import check_tensor, flat_groups

_SHADER = "elementwise"


def add(ctx, x, y):
    """x + y, same shapes."""
    check_tensor(x, "add", "x")
    check_tensor(y, "add", "y")
    if x.shape != y.shape:
        raise SdwebError(f"webgpu add: shapes {x.shape} and {y.shape} differ (same-shape add only)")
    out = ctx.empty(x.shape)
    ctx.run(_SHADER, "add", [x, y, out], [("u32", x.size)], flat_groups(ctx, x.size))
    return out


def mul(ctx, x, s: float, shift: float = 0.0):
    """x * s + shift, s and shift Python floats."""
    check_tensor(x, "mul")
    y = ctx.empty(x.shape)
    ctx.run(_SHADER, "mul", [x, y], [("u32", x.size), ("f32", float(s)), ("f32", float(shift))],
            flat_groups(ctx, x.size))
    return y


def tanh_clamp(ctx, x, bound: float):
    """bound * tanh(x / bound), bound a positive Python float."""
    check_tensor(x, "tanh_clamp")
    if not bound > 0:
        raise SdwebError(f"webgpu tanh_clamp: bound must be > 0, got {bound}")
    y = ctx.empty(x.shape)
    ctx.run(_SHADER, "tanh_clamp", [x, y], [("u32", x.size), ("f32", float(bound))], flat_groups(ctx, x.size))
    return y


def add_channel(ctx, x, v):
    """x: (N, C, H, W) + v: (N, C) broadcast over H, W."""
    check_tensor(x, "add_channel", "x", 4)
    check_tensor(v, "add_channel", "v", 2)
    N, C, H, W = x.shape
    if v.shape != (N, C):
        raise SdwebError(f"webgpu add_channel: v has shape {v.shape}, expected {(N, C)} for x {x.shape}")
    y = ctx.empty(x.shape)
    ctx.run(_SHADER, "add_channel", [x, v, y], [("u32", x.size), ("u32", H * W)], flat_groups(ctx, x.size))
    return y


def upsample_nearest2x(ctx, x):
    """(N, C, H, W) -> (N, C, 2H, 2W)."""
    check_tensor(x, "upsample_nearest2x", "x", 4)
    N, C, H, W = x.shape
    y = ctx.empty((N, C, 2 * H, 2 * W))
    ctx.run(_SHADER, "upsample2x", [x, y], [("u32", y.size), ("u32", H), ("u32", W)], flat_groups(ctx, y.size))
    return y


def pad2d(ctx, x, left: int, right: int, top: int, bottom: int):
    """(N, C, H, W) -> (N, C, top+H+bottom, left+W+right), zeros around."""
    check_tensor(x, "pad2d", "x", 4)
    if min(left, right, top, bottom) < 0:
        raise SdwebError(f"webgpu pad2d: paddings must be >= 0, got {(left, right, top, bottom)}")
    N, C, H, W = x.shape
    Ho, Wo = top + H + bottom, left + W + right
    y = ctx.empty((N, C, Ho, Wo))
    params = [("u32", y.size), ("u32", H), ("u32", W), ("u32", Ho), ("u32", Wo), ("u32", top), ("u32", left)]
    ctx.run(_SHADER, "pad2d", [x, y], params, flat_groups(ctx, y.size))
    return y


def _copy_rows(ctx, src, dst, rows, inner, dst_stride, dst_off, src_stride, src_off):
    n = rows * inner
    params = [("u32", n), ("u32", inner), ("u32", dst_stride), ("u32", dst_off),
              ("u32", src_stride), ("u32", src_off)]
    ctx.run(_SHADER, "copy_rows", [src, dst], params, flat_groups(ctx, n))


def concat(ctx, xs, axis: int = 1):
    """Concatenate along `axis`; the other axes must agree."""
    xs = list(xs)
    for i, x in enumerate(xs):
        check_tensor(x, "concat", f"xs[{i}]")
    nd = len(xs[0].shape)
    axis = axis % nd
    for x in xs[1:]:
        if len(x.shape) != nd or x.shape[:axis] != xs[0].shape[:axis] or x.shape[axis + 1:] != xs[0].shape[axis + 1:]:
            raise SdwebError(f"webgpu concat: shapes {[x.shape for x in xs]} differ off axis {axis}")
    out_shape = xs[0].shape[:axis] + (sum(x.shape[axis] for x in xs),) + xs[0].shape[axis + 1:]
    y = ctx.empty(out_shape)
    rows = math.prod(out_shape[:axis])  # each input is (rows, inner_i); the output (rows, sum inner_i)
    stride = math.prod(out_shape[axis:])
    off = 0
    for x in xs:
        inner = math.prod(x.shape[axis:])
        _copy_rows(ctx, x, y, rows, inner, stride, off, inner, 0)
        off += inner
    return y


def _transpose(ctx, x, batch: int, r: int, c: int, out_shape):
    """x viewed as (batch, r, c) -> (batch, c, r), returned with out_shape."""
    y = ctx.empty(out_shape)
    groups = (-(-c // 16), -(-r // 16), batch)
    ctx.run(_SHADER, "transpose_tiles", [x, y], [("u32", batch), ("u32", r), ("u32", c)], groups)
    return y


def nchw_to_nlc(ctx, x):
    """(N, C, H, W) -> (N, H*W, C)."""
    check_tensor(x, "nchw_to_nlc", "x", 4)
    N, C, H, W = x.shape
    return _transpose(ctx, x, N, C, H * W, (N, H * W, C))


def nlc_to_nchw(ctx, x, H: int, W: int):
    """(N, H*W, C) -> (N, C, H, W)."""
    check_tensor(x, "nlc_to_nchw", "x", 3)
    N, L, C = x.shape
    if L != H * W:
        raise SdwebError(f"webgpu nlc_to_nchw: {L} tokens do not make a {H}x{W} image")
    return _transpose(ctx, x, N, L, C, (N, C, H, W))


def _gather(ctx, rows: np.ndarray, table, D: int, w_dtype: str):
    """y (len(rows), D) = table viewed as (V, D), rows picked by the host index array `rows`."""
    ids = ctx.upload(np.asarray(rows, dtype=np.uint32).reshape(-1), dtype="u32")
    y = ctx.empty((ids.size, D))
    ctx.run(_SHADER, "gather", [ids, table, y], [("u32", y.size), ("u32", D)], flat_groups(ctx, y.size),
            w_dtype=w_dtype)
    return y


def embedding(ctx, ids, table):
    """ids: (N, L) int host array -> (N, L, D) rows of table (V, D), a GPUWeight (any dtype)."""
    ids = np.asarray(ids)
    V, D = table.shape
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise SdwebError(f"webgpu embedding: ids must be in [0, {V}), got range [{ids.min()}, {ids.max()}]")
    y = _gather(ctx, ids, table, D, getattr(table, "dtype", "f32"))
    return ctx.view(y, ids.shape + (D,))


def slice_tokens(ctx, x, index):
    """x: (N, L, D), index: (N,) host ints -> (N, D): token index[n] of row n."""
    check_tensor(x, "slice_tokens", "x", 3)
    N, L, D = x.shape
    index = np.asarray(index).reshape(-1)
    if index.shape != (N,) or (N and (index.min() < 0 or index.max() >= L)):
        raise SdwebError(f"webgpu slice_tokens: index must be {N} ints in [0, {L}), got {index.tolist()}")
    return _gather(ctx, np.arange(N) * L + index, x, D, "f32")
