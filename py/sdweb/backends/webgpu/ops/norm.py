"""Normalisation ops over shaders/norm.wgsl (entries, uniforms and dispatches listed there)."""

from __future__ import annotations

import math

from ....errors import SdwebError
from .common import act_constant, check_tensor, flat_groups, w_dtype

_SHADER = "norm"


def group_norm(ctx, x, groups: int, weight, bias, eps: float, act: str | None = None, tokens: bool = False):
    """x: (N, C, *spatial) -> same shape, or with tokens=True (N, H*W, C) (the transformer's input);
    weight/bias (C,) of any dtype; optional fused activation. Two dispatches: one-pass statistics
    per (image, group), then the normalisation."""
    check_tensor(x, "group_norm")
    act_code = act_constant("group_norm", act)
    N, C = x.shape[:2]
    if C % groups:
        raise SdwebError(f"webgpu group_norm: {C} channels do not split into {groups} groups")
    if weight.shape != (C,) or bias.shape != (C,):
        raise SdwebError(f"webgpu group_norm: weight/bias have shapes {weight.shape}/{bias.shape}, expected ({C},)")
    if tokens and len(x.shape) != 4:
        raise SdwebError(f"webgpu group_norm: tokens=True wants an (N, C, H, W) image, got {x.shape}")
    dt = w_dtype("group_norm", weight, bias)
    t = x.dtype
    S = math.prod(x.shape[2:])
    rows, length = N * groups, (C // groups) * S
    stats = ctx.empty((rows, 2), "f32")
    ctx.run(_SHADER, "gn_stats", [x, stats], [("u32", rows), ("u32", length), ("f32", eps)], ctx.grid(rows),
            {"VEC": str(length % 4 == 0).lower()}, dt, t, op="group_norm")
    if tokens:
        y = ctx.empty((N, S, C), t)
        ctx.run(_SHADER, "gn_apply_tokens", [x, stats, weight, bias, y], [("u32", S), ("u32", C), ("u32", C // groups)],
                (-(-S // 16), -(-C // 16), N), {"ACT": act_code}, dt, t, op="group_norm")
        return y
    y = ctx.empty(x.shape, t)
    vec = S % 4 == 0
    n = x.size // 4 if vec else x.size
    ctx.run(_SHADER, "gn_apply", [x, stats, weight, bias, y], [("u32", n), ("u32", S), ("u32", C), ("u32", C // groups)],
            flat_groups(ctx, n), {"ACT": act_code, "VEC": str(vec).lower()}, dt, t, op="group_norm")
    return y


def layer_norm(ctx, x, weight, bias, eps: float):
    """x: (..., D) normalised over D; weight/bias (D,) weights of any dtype."""
    check_tensor(x, "layer_norm")
    D = x.shape[-1]
    if weight.shape != (D,) or bias.shape != (D,):
        raise SdwebError(f"webgpu layer_norm: weight/bias have shapes {weight.shape}/{bias.shape}, expected ({D},)")
    dt = w_dtype("layer_norm", weight, bias)
    rows = x.size // D if D else 0
    y = ctx.empty(x.shape, x.dtype)
    ctx.run(_SHADER, "layer_norm", [x, weight, bias, y], [("u32", rows), ("u32", D), ("f32", eps)],
            ctx.grid(rows), w_dtype=dt, t_dtype=x.dtype, op="layer_norm")
    return y
