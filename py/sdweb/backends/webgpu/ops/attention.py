"""Fused multi-head attention on the GPU (shaders/attention.wgsl; reference: backends/numpy.py `attention`).

    attention(ctx, q, k, v, heads, causal=False) -> out
    q: (N, Lq, h*d), k/v: (N, Lk, h*d) -> out (N, Lq, h*d); per head softmax(q k^T / sqrt(d)) v

Flash-style: one dispatch, online softmax over tiles of 32 keys, 32 queries of one (n, head) per
workgroup; no score buffer exists, so memory is the output's O(N * Lq * h*d) at any Lq, Lk. The head
dim is staged through shared memory in chunks of D_CHUNK, so every d works (SD's 40 / 64 / 80 / 160,
CLIP's 64, the VAE's 512, the test models' 4 / 8 / 16); each workgroup keeps at most _MAX_COLS output
columns in registers and larger d spreads over the grid's z (recomputing the scores per slice).

q, k and v may each also be given as (tensor, col0) with tensor (N, L, S), S >= col0 + h*d: columns
col0 .. col0 + h*d of a wider tensor, e.g. the q / k / v thirds of a fused QKV projection. Their
element offset and row stride go in the uniform, so no view needs an aligned binding offset.
"""

from __future__ import annotations

import math

from ....errors import SdwebError
from .common import check_tensor

BQ = 32  # queries per workgroup (shaders/attention.wgsl BQ)
_CHUNKS = (40, 32, 24, 16, 8)  # D_CHUNK candidates: multiples of 8 whose tiles fit 16 KiB of shared memory
_MAX_COLS = 160  # output columns one workgroup accumulates in registers (80 floats per thread)


def plan(d: int) -> tuple[int, int, int, int]:
    """Head dim d -> (D_CHUNK, nch, V_CHUNKS, z groups): the chunk that pads d least, counting each
    chunk's barriers as 2 more columns (so d = 136 takes 6 x 24, not 17 x 8; 512 takes 16 x 32), the
    chunk count, and the chunks per workgroup, balanced over the fewest z groups."""
    dc = min(_CHUNKS, key=lambda c: (-(-d // c) * (c + 2), -c))
    nch = -(-d // dc)
    z = -(-nch // max(1, _MAX_COLS // dc))
    nv = -(-nch // z)
    return dc, nch, nv, -(-nch // nv)


def _operand(x, what: str):
    """x or (x, col0) -> (tensor, col0)."""
    t, col0 = x if isinstance(x, tuple) else (x, 0)
    check_tensor(t, "attention", what, ndim=3)
    if not 0 <= col0 < t.shape[2]:
        raise SdwebError(f"attention {what} column offset {col0} is outside its shape {t.shape}")
    return t, col0


def attention(ctx, q, k, v, heads: int, causal: bool = False):
    """q: (N, Lq, h*d), k/v: (N, Lk, h*d) (or (tensor, col0) views) -> new (N, Lq, h*d) tensor.
    h*d is the narrowest operand's width past its col0 (a plain tensor must be exactly that wide)."""
    ops = [_operand(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v"))]
    width = min(t.shape[2] - c for t, c in ops)
    for (t, _), x, name in zip(ops, (q, k, v), "qkv"):
        if not isinstance(x, tuple) and t.shape[2] != width:
            raise SdwebError(f"attention {name} has width {t.shape[2]} where the others give heads*d = {width}")
    (qt, qc), (kt, kc), (vt, vc) = ops
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

    out = ctx.empty((n, lq, width))
    dc, nch, nvc, z = plan(d)
    params = [("u32", n), ("u32", heads), ("u32", lq), ("u32", lk), ("u32", d), ("u32", nch),
              ("u32", int(bool(causal))), ("f32", math.log2(math.e) / math.sqrt(d)),  # exp2 folds in log2(e)
              ("u32", qt.shape[2]), ("u32", kt.shape[2]), ("u32", vt.shape[2]), ("u32", width),
              ("u32", qc), ("u32", kc), ("u32", vc), ("u32", 0)]
    groups = (-(-lq // BQ), n * heads, z)
    ctx.run("attention", "main", [qt, kt, vt, out], params, groups,
            constants={"D_CHUNK": f"{dc}u", "V_CHUNKS": f"{nvc}u"})
    return out
