"""Fused multi-head attention on the GPU (shaders/attention.wgsl; reference: backends/numpy.py `attention`).

    attention(ctx, q, k, v, heads, causal=False) -> out
    q: (N, Lq, h*d), k/v: (N, Lk, h*d) -> out (N, Lq, h*d); per head softmax(q k^T / sqrt(d)) v

Flash-style, one dispatch, ONNX Runtime Web's layout: one query per invocation (WG per workgroup)
with its Q row in registers, keys KSTEP at a time through workgroup memory, online softmax per
invocation; no score buffer exists, so memory is the output's at any Lq, Lk. Every head dim works
(SD's 40 / 64 / 80 / 160, CLIP's 64, the VAE's 512, the test models' 4 / 8 / 16); an invocation keeps
at most MAX_OUT4 vec4s of output, and a larger d spreads over the grid's z (each z slice recomputes
the scores).

q, k and v may each also be given as (tensor, col0): columns col0 .. col0 + h*d of a wider tensor,
e.g. the thirds of a fused QKV projection. Element offsets and row strides go in the uniform, so no
view needs an aligned binding offset.

Configuration (`Attn`): WG and KSTEP. The default is ONNX Runtime's (64 queries, 16 keys per step),
with KSTEP halved until the step's K and V rows fit the adapter's workgroup storage; autotuning
(tuning.py) may pick another of `candidates` per shape and adapter.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ....errors import SdwebError
from .common import check_same_dtype, check_tensor

MAX_OUT4 = 20  # output vec4s one invocation accumulates (80 floats: d = 80 in one slice, 160 in two)


class Attn(NamedTuple):
    wg: int
    kstep: int

    @property
    def name(self) -> str:
        return f"{self.wg}q x {self.kstep}k"


def plan(d: int) -> tuple[int, int, int]:
    """Head dim d -> (D4, OD4, z): vec4s per head row, per workgroup's output slice, and slices."""
    d4 = -(-d // 4)
    z = -(-d4 // MAX_OUT4)
    od4 = -(-d4 // z)
    return d4, od4, -(-d4 // od4)


def _fits(ctx, d: int, kstep: int, t_dtype: str) -> bool:
    d4, od4, _ = plan(d)
    vec = 8 if t_dtype == "f16" else 16
    return kstep * (d4 + od4) * vec <= int(ctx.limits.get("maxComputeWorkgroupStorageSize", 16384))


def candidates(ctx, d: int, t_dtype: str) -> list[Attn]:
    return [Attn(wg, ks) for wg in (64, 128) for ks in (8, 16, 32) if _fits(ctx, d, ks, t_dtype)]


def pick(ctx, d: int, t_dtype: str) -> Attn:
    kstep = 16
    while kstep > 1 and not _fits(ctx, d, kstep, t_dtype):
        kstep //= 2
    return Attn(64, kstep)


def _operand(x, what: str):
    """x or (x, col0) -> (tensor, col0)."""
    t, col0 = x if isinstance(x, tuple) else (x, 0)
    check_tensor(t, "attention", what, ndim=3)
    if not 0 <= col0 < t.shape[2]:
        raise SdwebError(f"attention {what} column offset {col0} is outside its shape {t.shape}")
    return t, col0


def attention(ctx, q, k, v, heads: int, causal: bool = False, config: Attn | None = None):
    """q: (N, Lq, h*d), k/v: (N, Lk, h*d) (or (tensor, col0) views) -> new (N, Lq, h*d) tensor.
    h*d is the narrowest operand's width past its col0 (a plain tensor must be exactly that wide).
    `config` overrides the choice (the benchmark, the tuner, tests)."""
    ops = [_operand(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v"))]
    width = min(t.shape[2] - c for t, c in ops)
    for (t, _), x, name in zip(ops, (q, k, v), "qkv"):
        if not isinstance(x, tuple) and t.shape[2] != width:
            raise SdwebError(f"attention {name} has width {t.shape[2]} where the others give heads*d = {width}")
    (qt, qc), (kt, kc), (vt, vc) = ops
    check_same_dtype("attention", qt, kt, vt)
    n, lq, lk = qt.shape[0], qt.shape[1], kt.shape[1]
    if heads < 1 or width % heads:
        raise SdwebError(f"attention heads={heads} must be >= 1 and divide the width {width}")
    d = width // heads
    if kt.shape[0] != n or vt.shape[0] != n:
        raise SdwebError(f"attention batch sizes differ: q {qt.shape}, k {kt.shape}, v {vt.shape} (want one N)")
    if vt.shape[1] != lk:
        raise SdwebError(f"attention k and v token counts differ: k {kt.shape}, v {vt.shape}")
    if lk < 1:
        raise SdwebError(f"attention needs at least one key token, got k of shape {kt.shape}")

    t = qt.dtype
    out = ctx.empty((n, lq, width), t)
    d4, od4, z = plan(d)
    c = config or _choose(ctx, (n, lq, lk, heads, d, bool(causal), t), d, t,
                          lambda c: attention(ctx, q, k, v, heads, causal, c))
    vec = all(x % 4 == 0 for x in (d, qt.shape[2], kt.shape[2], vt.shape[2], qc, kc, vc))
    params = [("u32", heads), ("u32", lq), ("u32", lk), ("u32", d), ("u32", int(bool(causal))),
              ("f32", math.log2(math.e) / math.sqrt(d)),  # exp2 folds in log2(e)
              ("u32", qt.shape[2]), ("u32", kt.shape[2]), ("u32", vt.shape[2]), ("u32", width),
              ("u32", qc), ("u32", kc), ("u32", vc), ("u32", 0)]
    groups = (-(-lq // c.wg), n * heads, z)
    ctx.run("attention", "main", [qt, kt, vt, out], params, groups,
            constants={"D4": f"{d4}u", "OD4": f"{od4}u", "KSTEP": f"{c.kstep}u", "WG": f"{c.wg}u",
                       "VEC": str(vec).lower()},
            t_dtype=t, op="attention", flop=4 * n * heads * lq * lk * d)
    return out


def _choose(ctx, key: tuple, d: int, t_dtype: str, trial) -> Attn:
    """The autotuned configuration for this shape when there is one (tuning.py, which may time
    `trial(config)`), else `pick`'s; remembered per key in ctx.plans."""
    c = ctx.plans.get(("attention", key))
    if c is None:
        c = ctx.tuning.attention(ctx, key, d, t_dtype, trial) if ctx.tuning is not None else pick(ctx, d, t_dtype)
        ctx.plans[("attention", key)] = c
    return c
