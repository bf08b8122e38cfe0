"""The GEMM configurations of shaders/include/gemm.wgsl, shared by matmul.py and conv2d.py, and the
rule that picks one for a shape.

    C[p, q] = sum_k P[p, k] Q[q, k], P: `rows_p` rows, Q: `rows_q` rows, K inner

A configuration (Gemm) is the workgroup (wgx, wgy invocations), the outputs per invocation (tm along
P, tn along Q), the K step bk and the split-K factor: a tile is (wgy tm) x (wgx tn) of C.

Defaults follow the anchors, not emulator timings (lavapipe and SwiftShader rank kernels as a CPU
would): gpu.cpp's matmul ladder and ONNX Runtime Web's packed matmul, whose large-shape kernel gives
every invocation 8x8 outputs ("v4": 128x128 tiles of 256 invocations, or 64x128 / 128x64 where that
pads a side less), and whose smaller 4x4 register tiles ("v3": 64x64) and split-K keep a GPU busy
where the big tiles are too few. The rule, `pick`:

  v4 when its tiles number at least MIN_TILES (about two per compute unit of a desktop GPU, which
     runs 32 to 80 of them; WebGPU does not say how many an adapter has), the 8x8 shape that pads
     the output least;
  else v3 when its tiles number at least MIN_TILES;
  else v3 with K split over S slices so that S x tiles reaches MIN_TILES, each slice at least
     four K steps (the 8x8-latent convs of SD, cross-attention's K/V over 77 tokens); a second
     dispatch adds the slices. Not for a GEMM under SPLIT_MIN_FLOP (a time embedding's projection):
     there a second dispatch costs more than the idle units.

Autotuning (tuning.py) may replace the rule's choice per shape and adapter by the fastest of
`candidates`, all of them correct by construction (every tile shape handles every edge).

bk is the largest of 16 and 8 whose two tiles fit the adapter's workgroup storage
(maxComputeWorkgroupStorageSize) with their padding.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from ....errors import SdwebError

MIN_TILES = 128  # workgroups that keep a desktop GPU's compute units busy (about 2 per unit)
MIN_SLICE_STEPS = 4  # K steps per split-K slice at least
SPLIT_MIN_FLOP = 1e8  # GEMMs smaller than this take the 64x64 tiles unsplit (~10 us of a desktop GPU)


class Gemm(NamedTuple):
    wgx: int
    wgy: int
    tm: int
    tn: int
    bk: int
    split: int = 1

    @property
    def bm(self) -> int:
        return self.wgy * self.tm

    @property
    def bn(self) -> int:
        return self.wgx * self.tn

    @property
    def name(self) -> str:
        kind = "v4" if self.tm == 8 else "v3"
        return f"{kind} {self.bm}x{self.bn}" + (f" split {self.split}" if self.split > 1 else "")

    def constants(self) -> dict:
        return _constants(self)

    def tiles(self, rows_p: int, rows_q: int) -> int:
        return -(-rows_p // self.bm) * -(-rows_q // self.bn)

    def k_split(self, K: int) -> int:
        """K per slice: a multiple of bk."""
        return -(-K // (self.split * self.bk)) * self.bk

    def slices(self, K: int) -> int:
        """Slices that hold any K (a split may leave the last empty)."""
        return -(-K // self.k_split(K))


@functools.lru_cache(maxsize=None)
def _constants(c: Gemm) -> dict:
    """The shader constants of a configuration (asked for on every dispatch: made once)."""
    return {"WGX": f"{c.wgx}u", "WGY": f"{c.wgy}u", "TM": f"{c.tm}u", "TN": f"{c.tn}u", "BK": f"{c.bk}u",
            "SPLIT": str(c.split > 1).lower()}


V4_SHAPES = ((16, 16), (16, 8), (8, 16))  # (wgx, wgy) with 8x8 per invocation
V3_SHAPE = (16, 16)  # with 4x4 per invocation


def _bk(ctx, wgx: int, wgy: int, tm: int, tn: int, t_dtype: str) -> int:
    vec = 8 if t_dtype == "f16" else 16
    limit = int(ctx.limits.get("maxComputeWorkgroupStorageSize", 16384))
    for bk in (16, 8):
        if (wgy * tm + wgx * tn) * (bk // 4 + 1) * vec <= limit:
            return bk
    raise SdwebError(f"gemm: a {wgy * tm}x{wgx * tn} tile does not fit {limit} bytes of workgroup storage")


def config(ctx, wgx: int, wgy: int, tm: int, tn: int, t_dtype: str, split: int = 1) -> Gemm:
    return Gemm(wgx, wgy, tm, tn, _bk(ctx, wgx, wgy, tm, tn, t_dtype), split)


def _waste(c: Gemm, rows_p: int, rows_q: int) -> int:
    return -(-rows_p // c.bm) * c.bm * -(-rows_q // c.bn) * c.bn


def candidates(ctx, rows_p: int, rows_q: int, K: int, t_dtype: str) -> list[Gemm]:
    """Every configuration worth timing for this shape (the rule's choice among them)."""
    out = [config(ctx, wgx, wgy, 8, 8, t_dtype) for wgx, wgy in V4_SHAPES]
    v3 = config(ctx, *V3_SHAPE, 4, 4, t_dtype)
    out.append(v3)
    for s in (2, 4, 8):
        c = v3._replace(split=s)
        if K >= s * MIN_SLICE_STEPS * c.bk and c.slices(K) == s:
            out.append(c)
    return out


def pick(ctx, rows_p: int, rows_q: int, K: int, t_dtype: str) -> Gemm:
    """The rule (module docstring)."""
    v4 = min((config(ctx, wgx, wgy, 8, 8, t_dtype) for wgx, wgy in V4_SHAPES),
             key=lambda c: (_waste(c, rows_p, rows_q), -c.bm * c.bn))
    if v4.tiles(rows_p, rows_q) >= MIN_TILES:
        return v4
    v3 = config(ctx, *V3_SHAPE, 4, 4, t_dtype)
    tiles = v3.tiles(rows_p, rows_q)
    if tiles >= MIN_TILES or 2 * rows_p * rows_q * K < SPLIT_MIN_FLOP:
        return v3
    s = min(math.ceil(MIN_TILES / tiles), K // (MIN_SLICE_STEPS * v3.bk))
    while s > 1 and v3._replace(split=s).slices(K) != s:
        s -= 1
    return v3._replace(split=max(1, s))


def choose(ctx, op: str, key: tuple, rows_p: int, rows_q: int, K: int, t_dtype: str, trial=None) -> Gemm:
    """The configuration an op runs: the autotuned one for (op, key) on this adapter when there is
    one (tuning.py, which may time `trial(config)`, the op run with a configuration), else the
    rule's; remembered per key in ctx.plans (a step asks thousands of times)."""
    c = ctx.plans.get((op, key))
    if c is None:
        if ctx.tuning is not None:
            c = ctx.tuning.gemm(ctx, op, key, rows_p, rows_q, K, t_dtype, trial)
        else:
            c = pick(ctx, rows_p, rows_q, K, t_dtype)
        ctx.plans[(op, key)] = c
    return c
