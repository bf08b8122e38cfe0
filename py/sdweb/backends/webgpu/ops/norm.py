"""Normalisation ops over shaders/norm.wgsl (entries, uniforms and dispatches listed there)."""

from __future__ import annotations

import math

from ....errors import SdwebError
from .common import act_constant, check_tensor, flat_groups, w_dtype

_SHADER = "norm"
CHUNK = 4096  # elements per group-norm statistics workgroup: 16 per invocation


def group_norm(ctx, x, groups: int, weight, bias, eps: float, act: str | None = None):
    """x: (N, C, *spatial) -> same shape; weight/bias (C,) of any dtype; optional fused activation.
    Three dispatches: per-chunk statistics, their merge per (image, group), the normalisation."""
    check_tensor(x, "group_norm")
    act_code = act_constant("group_norm", act)
    N, C = x.shape[:2]
    if C % groups:
        raise SdwebError(f"webgpu group_norm: {C} channels do not split into {groups} groups")
    if weight.shape != (C,) or bias.shape != (C,):
        raise SdwebError(f"webgpu group_norm: weight/bias have shapes {weight.shape}/{bias.shape}, expected ({C},)")
    dt = w_dtype("group_norm", weight, bias)
    S = math.prod(x.shape[2:])
    rows, length = N * groups, (C // groups) * S
    chunks = -(-length // CHUNK)
    if rows > ctx.max_groups:
        raise SdwebError(f"webgpu group_norm: {rows} (image, group) rows exceed {ctx.max_groups}")
    part = ctx.empty((rows, chunks, 2))
    ctx.run(_SHADER, "gn_partial", [x, part], [("u32", length), ("u32", CHUNK), ("u32", chunks)],
            ctx.grid(1) if rows == 0 else (chunks, rows, 1))
    stats = ctx.empty((rows, 2))
    ctx.run(_SHADER, "gn_stats", [part, stats],
            [("u32", rows), ("u32", length), ("u32", CHUNK), ("u32", chunks), ("f32", eps)],
            (-(-rows // 64), 1, 1))
    y = ctx.empty(x.shape)
    ctx.run(_SHADER, "gn_apply", [x, stats, weight, bias, y],
            [("u32", x.size), ("u32", S), ("u32", C), ("u32", C // groups)],
            flat_groups(ctx, x.size), {"ACT": act_code}, dt)
    return y


def layer_norm(ctx, x, weight, bias, eps: float):
    """x: (..., D) normalised over D; weight/bias (D,) weights of any dtype."""
    check_tensor(x, "layer_norm")
    D = x.shape[-1]
    if weight.shape != (D,) or bias.shape != (D,):
        raise SdwebError(f"webgpu layer_norm: weight/bias have shapes {weight.shape}/{bias.shape}, expected ({D},)")
    dt = w_dtype("layer_norm", weight, bias)
    rows = x.size // D if D else 0
    y = ctx.empty(x.shape)
    ctx.run(_SHADER, "layer_norm", [x, weight, bias, y], [("u32", rows), ("u32", D), ("f32", eps)],
            ctx.grid(rows), w_dtype=dt)
    return y
