"""The kernel ladders (gpu.cpp style, llm.c's dev/ kernels): the versions production no longer runs,
for scripts/bench_kernels.py, scripts/bench_gpu.py and the kernel tests, each driven like its
production op so the two can be timed and checked side by side. Their WGSL lives in scripts/ladder/;
production's is shaders/ (the top rung of every ladder: ops/matmul.py, ops/conv2d.py,
ops/attention.py, ops/norm.py). All take and give f32 activations.

    linear(ctx, x, weight, bias=None, act=None, version=3)     the matmul ladder (ladder/matmul.wgsl):
        0 naive, 1 16x16 shared-memory tiles, 2 64x64 tiles with 4x4 per invocation and scalar
        loads, 3 the same with vec4 loads (production's kernel before the GEMM core), 4 version 3
        with 8x8 per invocation; 3 and 4 need K % 4 == 0. Production (include/gemm.wgsl) is the
        next rung: ops/matmul.linear, its rule or a given ops/gemm.py configuration.
    conv2d_v1(ctx, x, weight, bias=None, stride=1, padding=0, residual=None)
        ladder/conv2d.wgsl: 4x4 per invocation in 64x64 tiles, four scalar weight loads per vec4
    attention_v1(ctx, q, k, v, heads, causal=False)
        ladder/attention.wgsl: 32 queries x 32 keys per workgroup, the head dim in chunks
    group_norm_v1(ctx, x, groups, weight, bias, eps, act=None)
        ladder/group_norm.wgsl: three dispatches (chunk statistics, merge, apply)
"""

from __future__ import annotations

import math
from pathlib import Path

from sdweb.backends.webgpu.ops.common import act_constant, flat_groups, w_dtype
from sdweb.errors import SdwebError

LADDER = Path(__file__).resolve().with_name("ladder")
MATMUL = LADDER / "matmul.wgsl"
# version -> (entry, outputs per invocation along rows and columns); workgroups are 16x16
VERSIONS = {0: ("matmul_v0", 1), 1: ("matmul_v1", 1), 2: ("matmul_tiled", 4), 3: ("matmul_vec4", 4),
            4: ("matmul_vec4", 8)}


def linear(ctx, x, weight, bias=None, act: str | None = None, version: int = 3):
    """x: (..., Din) f32, weight: (Dout, Din) -> (..., Dout) [act], by the ladder's rung `version`."""
    if version not in VERSIONS:
        raise SdwebError(f"matmul version {version} does not exist; use one of {tuple(VERSIONS)}")
    entry, per = VERSIONS[version]
    act_code = act_constant("linear", act, geglu=True)
    Dout, Din = weight.shape
    if x.shape[-1] != Din:
        raise SdwebError(f"linear input {tuple(x.shape)} does not match weight (Dout, Din) = {tuple(weight.shape)}")
    if entry == "matmul_vec4" and Din % 4:
        raise SdwebError(f"linear: {entry} needs K % 4 == 0 (vec4 rows), got K={Din}")
    N = Dout // 2 if act == "geglu" else Dout
    M = math.prod(x.shape[:-1])
    y = ctx.empty((*x.shape[:-1], N), "f32")
    tm = tn = 16 * per
    if act == "geglu" and per > 1:
        tn //= 2  # value and gate columns share the tile
    dt = w_dtype("linear", weight, *([] if bias is None else [bias]))
    vec = max(per, 4)  # VEC_TM/TN only shape matmul_vec4; the other entries compile with any
    ctx.run(MATMUL, entry, [x, weight, bias if bias is not None else ctx.dummy(dt), y],
            [("u32", M), ("u32", N), ("u32", Din)], (math.ceil(N / tn), math.ceil(M / tm), 1),
            constants={"ACT": act_code, "HAS_BIAS": str(bias is not None).lower(),
                       "VEC_TM": f"{vec}u", "VEC_TN": f"{vec}u"},
            w_dtype=dt, op="linear", flop=2 * M * Dout * Din)
    return y


def conv2d_v1(ctx, x, weight, bias=None, stride: int = 1, padding: int = 0, residual=None):
    """x: (N, Cin, H, W) f32, weight: (Cout, Cin, kh, kw) -> (N, Cout, Ho, Wo) [+ residual]."""
    N, C, H, W = x.shape
    Co, _, kh, kw = weight.shape
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    dt = w_dtype("conv2d", weight, *([] if bias is None else [bias]))
    y = ctx.empty((N, Co, Ho, Wo), "f32")
    cols = N * Ho * Wo
    ctx.run(LADDER / "conv2d.wgsl", "conv2d",
            [x, weight, bias if bias is not None else ctx.dummy(dt), residual if residual is not None else ctx.dummy(dt), y],
            [("u32", v) for v in (C, H, W, Co, Ho, Wo, stride, padding, cols)],
            (math.ceil(cols / 64), math.ceil(Co / 64), 1),
            constants={"KH": f"{kh}u", "KW": f"{kw}u", "HAS_BIAS": str(bias is not None).lower(),
                       "HAS_RES": str(residual is not None).lower()},
            w_dtype=dt, op="conv2d", flop=2 * cols * Co * C * kh * kw)
    return y


_CHUNKS = (40, 32, 24, 16, 8)  # D_CHUNK candidates: multiples of 8 whose tiles fit 16 KiB of shared memory
_MAX_COLS = 160  # output columns one workgroup accumulates in registers (80 floats per thread)


def attention_plan(d: int) -> tuple[int, int, int, int]:
    """Head dim d -> (D_CHUNK, nch, V_CHUNKS, z groups): the chunk that pads d least, counting each
    chunk's barriers as 2 more columns, the chunk count, and the chunks per workgroup, balanced over
    the fewest z groups."""
    dc = min(_CHUNKS, key=lambda c: (-(-d // c) * (c + 2), -c))
    nch = -(-d // dc)
    z = -(-nch // max(1, _MAX_COLS // dc))
    nv = -(-nch // z)
    return dc, nch, nv, -(-nch // nv)


def attention_v1(ctx, q, k, v, heads: int, causal: bool = False):
    """q: (N, Lq, h*d), k/v: (N, Lk, h*d) f32 tensors -> (N, Lq, h*d)."""
    n, lq, width = q.shape
    lk, d = k.shape[1], width // heads
    out = ctx.empty((n, lq, width), "f32")
    dc, nch, nvc, z = attention_plan(d)
    params = [("u32", n), ("u32", heads), ("u32", lq), ("u32", lk), ("u32", d), ("u32", nch),
              ("u32", int(bool(causal))), ("f32", math.log2(math.e) / math.sqrt(d)),
              ("u32", width), ("u32", width), ("u32", width), ("u32", width),
              ("u32", 0), ("u32", 0), ("u32", 0), ("u32", 0)]
    ctx.run(LADDER / "attention.wgsl", "main", [q, k, v, out], params, (-(-lq // 32), n * heads, z),
            constants={"D_CHUNK": f"{dc}u", "V_CHUNKS": f"{nvc}u"}, op="attention",
            flop=4 * n * heads * lq * lk * d)
    return out


CHUNK = 4096  # elements per group-norm statistics workgroup: 16 per invocation


def group_norm_v1(ctx, x, groups: int, weight, bias, eps: float, act: str | None = None):
    """x: (N, C, *spatial) f32 -> same shape; three dispatches."""
    act_code = act_constant("group_norm", act)
    N, C = x.shape[:2]
    dt = w_dtype("group_norm", weight, bias)
    S = math.prod(x.shape[2:])
    rows, length = N * groups, (C // groups) * S
    chunks = -(-length // CHUNK)
    shader = LADDER / "group_norm.wgsl"
    part = ctx.empty((rows, chunks, 2), "f32")
    ctx.run(shader, "gn_partial", [x, part], [("u32", length), ("u32", CHUNK), ("u32", chunks)],
            (chunks, rows, 1), op="group_norm")
    stats = ctx.empty((rows, 2), "f32")
    ctx.run(shader, "gn_stats", [part, stats], [("u32", rows), ("u32", length), ("u32", CHUNK), ("u32", chunks),
                                                ("f32", eps)], (-(-rows // 64), 1, 1), op="group_norm")
    y = ctx.empty(x.shape, "f32")
    ctx.run(shader, "gn_apply", [x, stats, weight, bias, y], [("u32", x.size), ("u32", S), ("u32", C), ("u32", C // groups)],
            flat_groups(ctx, x.size), {"ACT": act_code}, dt, op="group_norm")
    return y
