#!/usr/bin/env python3
"""Kernel benchmark: the WGSL kernels (WebGPU backend) against backends/numpy.py at SD 1.5's shapes,
as a markdown table.

    python scripts/bench_kernels.py [--small] [--repeats N] [--only SUBSTR] [--json FILE]

Rows are the cases in CASES (add a row: append a Case; `make` returns the GPU and NumPy closures):
  matmul ladder   linear (2*4096, 320) x (320 -> 1280), the 64x64 level's feed-forward size with CFG,
                  through each kernel version of shaders/matmul.wgsl (v0 naive ... v4 8x8 vec4)
  linear          the default kernel on the UNet's other linear shapes (fused GEGLU, attention
                  projections, cross-attention over 77 tokens) and with f16 weights
  conv2d          3x3 convs of the UNet's three resolutions with CFG (320 @ 64x64, 640 @ 32x32,
                  1280 @ 16x16, batch 2), a 1x1 shortcut and conv_in
  attention       shaders/attention.wgsl at SD 1.5's three levels with CFG (8 heads of 40 / 80 / 160;
                  self-attention and cross-attention over 77 tokens), SD 2.x's heads of 64, CLIP's
                  causal self-attention and the VAE mid-block's single head of 512
--small shrinks the token / pixel counts (channel counts stay SD's) so the whole table runs in a couple
of minutes on lavapipe (CPU Vulkan); the table's shape column says what ran.

FLOPs are 2 * multiply-adds. GPU time: one warm-up call (compiles, and its output is checked against
NumPy's: the `err` column, max |gpu - numpy| / max |numpy|), then `repeats` calls recorded back to back
and one 4-byte readback after the last, divided by `repeats` (dispatch and submit included, uploads
not). NumPy time: the median of `repeats` calls on the same arrays.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "py"))

from sdweb.backends import numpy as nb  # noqa: E402
from sdweb.weights import f32_to_bf16  # noqa: E402


@dataclass
class Case:
    op: str                       # table group: "matmul ladder", "linear", "conv2d" ...
    name: str
    shape: Callable[[bool], str]  # small -> the shape description
    flop: Callable[[bool], float]
    make: Callable                # (ctx, small) -> (gpu(): GPUTensor, numpy(): ndarray)


def _held(a: np.ndarray, dtype: str) -> np.ndarray:
    return {"f32": a, "f16": a.astype(np.float16), "bf16": f32_to_bf16(a)}[dtype]


# --- linear ---------------------------------------------------------------------------------------


def _linear_case(op, name, M, Din, Dout, act=None, dtype="f32", version=None, M_small=None):
    """y = linear(x (M, Din), w (Dout, Din), b) [act]; M_small replaces M under --small."""

    def m(small):
        return M_small if small and M_small else M

    def make(ctx, small):
        from sdweb.backends import webgpu
        from sdweb.backends.gpu_ops import matmul

        rng = np.random.default_rng(0)
        x = rng.standard_normal((m(small), Din), dtype=np.float32)
        w = _held((rng.standard_normal((Dout, Din), dtype=np.float32) / math.sqrt(Din)), dtype)
        b = _held(rng.standard_normal(Dout, dtype=np.float32), dtype)
        tx, tw, tb = ctx.upload(x), webgpu.weight(w), webgpu.weight(b)
        return (lambda: matmul.linear(ctx, tx, tw, tb, act, version)), (lambda: nb.linear(x, w, b, act))

    out = f" -> {Dout // 2} geglu" if act == "geglu" else (f" {act}" if act else "")
    return Case(op, name, lambda s: f"({m(s)}, {Din}) x ({Dout}, {Din}) {dtype}{out}",
                lambda s: 2.0 * m(s) * Din * Dout, make)


# --- conv2d ---------------------------------------------------------------------------------------


def _conv_case(name, N, Cin, HW, Cout, k, stride=1, dtype="f32", residual=False, small=None):
    """conv2d of (N, Cin, HW, HW) by (Cout, Cin, k, k), padding k // 2; small = (N, HW) for --small."""

    def dims(s):
        return small if s and small else (N, HW)

    def out_hw(s):
        return (dims(s)[1] + 2 * (k // 2) - k) // stride + 1

    def make(ctx, s):
        from sdweb.backends import webgpu
        from sdweb.backends.gpu_ops import conv2d

        n, hw = dims(s)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, Cin, hw, hw), dtype=np.float32)
        w = _held(rng.standard_normal((Cout, Cin, k, k), dtype=np.float32) / math.sqrt(Cin * k * k), dtype)
        b = _held(rng.standard_normal(Cout, dtype=np.float32), dtype)
        ho = out_hw(s)
        r = rng.standard_normal((n, Cout, ho, ho), dtype=np.float32) if residual else None
        tx, tw, tb = ctx.upload(x), webgpu.weight(w), webgpu.weight(b)
        tr = ctx.upload(r) if residual else None

        def ref():
            y = nb.conv2d(x, w, b, stride, k // 2)
            return y + r if residual else y

        return (lambda: conv2d.conv2d(ctx, tx, tw, tb, stride, k // 2, residual=tr)), ref

    def shape(s):
        n, hw = dims(s)
        extra = (f" s{stride}" if stride > 1 else "") + (" +res" if residual else "") + f" {dtype}"
        return f"({n}, {Cin}, {hw}, {hw}) * {k}x{k} -> {Cout}{extra}"

    return Case("conv2d", name, shape, lambda s: 2.0 * dims(s)[0] * out_hw(s) ** 2 * Cout * Cin * k * k, make)


# --- attention ------------------------------------------------------------------------------------


def _attention_case(name, N, Lq, Lk, heads, d, causal=False, small=None):
    """attention(q (N, Lq, h*d), k/v (N, Lk, h*d)); small = (Lq, Lk) for --small. FLOPs count q k^T
    and p v only (4 * N * h * Lq * Lk * d), not the softmax's exps."""

    def dims(s):
        return small if s and small else (Lq, Lk)

    def make(ctx, s):
        from sdweb.backends.gpu_ops import attention

        lq, lk = dims(s)
        rng = np.random.default_rng(0)
        q = rng.standard_normal((N, lq, heads * d), dtype=np.float32)
        k = rng.standard_normal((N, lk, heads * d), dtype=np.float32)
        v = rng.standard_normal((N, lk, heads * d), dtype=np.float32)
        tq, tk, tv = ctx.upload(q), ctx.upload(k), ctx.upload(v)
        return (lambda: attention.attention(ctx, tq, tk, tv, heads, causal)), (lambda: nb.attention(q, k, v, heads, causal))

    def shape(s):
        lq, lk = dims(s)
        return f"N={N} Lq={lq} Lk={lk} {heads}x{d}" + (" causal" if causal else "")

    return Case("attention", name, shape, lambda s: 4.0 * N * heads * dims(s)[0] * dims(s)[1] * d, make)


# --- the rows -------------------------------------------------------------------------------------

CASES: list[Case] = [
    *(_linear_case("matmul ladder", f"v{v}", 8192, 320, 1280, version=v, M_small=1024) for v in range(5)),
    _linear_case("linear", "ff geglu (fused)", 8192, 320, 2560, act="geglu", M_small=1024),
    _linear_case("linear", "ff out", 8192, 1280, 320, M_small=1024),
    _linear_case("linear", "attn to_q", 8192, 320, 320, M_small=1024),
    _linear_case("linear", "attn to_q f16 w", 8192, 320, 320, dtype="f16", M_small=1024),
    _linear_case("linear", "cross to_k (77 tok)", 154, 768, 320),
    _linear_case("linear", "attn 16x16 to_q", 512, 1280, 1280, M_small=128),
    _conv_case("3x3 320 @64", 2, 320, 64, 320, 3, small=(1, 16)),
    _conv_case("3x3 320 @64 f16 w", 2, 320, 64, 320, 3, dtype="f16", small=(1, 16)),
    _conv_case("3x3 640 @32 +res", 2, 640, 32, 640, 3, residual=True, small=(1, 8)),
    _conv_case("3x3 1280 @16", 2, 1280, 16, 1280, 3, small=(1, 8)),
    _conv_case("3x3 s2 640 @32", 2, 640, 32, 640, 3, stride=2, small=(1, 8)),
    _conv_case("1x1 640->1280 @16", 2, 640, 16, 1280, 1, small=(1, 8)),
    _conv_case("conv_in 4->320 @64", 2, 4, 64, 320, 3, small=(1, 32)),
    _attention_case("self @64", 2, 4096, 4096, 8, 40, small=(1024, 1024)),
    _attention_case("cross @64 (77 tok)", 2, 4096, 77, 8, 40, small=(1024, 77)),
    _attention_case("self @32", 2, 1024, 1024, 8, 80, small=(256, 256)),
    _attention_case("self @16", 2, 256, 256, 8, 160),
    _attention_case("sd2 self @64", 2, 4096, 4096, 5, 64, small=(1024, 1024)),
    _attention_case("clip causal", 2, 77, 77, 12, 64, causal=True),
    _attention_case("vae mid @64", 1, 4096, 4096, 1, 512, small=(1024, 1024)),
]
# UNet-step rows: append Cases here.


def time_case(ctx, case: Case, small: bool, repeats: int) -> dict:
    gpu, ref = case.make(ctx, small)
    flop = case.flop(small)
    got = ctx.read(gpu())  # warm-up: compiles the pipeline
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = gpu()
    ctx.read(ctx.view(out, (1,)))  # waits for every recorded dispatch
    t_gpu = (time.perf_counter() - t0) / repeats
    times, want = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        want = ref()
        times.append(time.perf_counter() - t0)
    t_np = statistics.median(times)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    return dict(op=case.op, name=case.name, shape=case.shape(small), gflop=flop / 1e9,
                gpu_ms=t_gpu * 1e3, gpu_gflops=flop / t_gpu / 1e9, numpy_ms=t_np * 1e3,
                numpy_gflops=flop / t_np / 1e9, speedup=t_np / t_gpu, max_rel_err=err)


def markdown(rows: list[dict]) -> str:
    head = ("| op | case | shape | GFLOP | GPU ms | GPU GFLOP/s | NumPy ms | NumPy GFLOP/s | GPU / NumPy "
            "| err |\n|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['op']} | {r['name']} | {r['shape']} | {r['gflop']:.2f} | {r['gpu_ms']:.1f} | "
                     f"{r['gpu_gflops']:.1f} | {r['numpy_ms']:.1f} | {r['numpy_gflops']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['max_rel_err']:.1e} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="shrunk token / pixel counts, for lavapipe")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 5; 2 with --small)")
    ap.add_argument("--only", help="run only rows whose op or name contains this")
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args(argv)
    repeats = a.repeats or (2 if a.small else 5)

    from sdweb.backends import webgpu
    if not webgpu.available():
        sys.exit("no WebGPU adapter found (install mesa-vulkan-drivers for lavapipe)")
    ctx = webgpu.context()
    adapter = ctx.limits.get("adapter", "?")
    print(f"adapter: {adapter}; repeats {repeats}{'; --small shapes' if a.small else ''}", flush=True)
    rows = []
    for case in CASES:
        if a.only and a.only not in case.op and a.only not in case.name:
            continue
        rows.append(time_case(ctx, case, a.small, repeats))
        r = rows[-1]
        print(f"  {r['op']} {r['name']}: {r['gpu_gflops']:.1f} GFLOP/s (NumPy {r['numpy_gflops']:.1f}), "
              f"err {r['max_rel_err']:.1e}", file=sys.stderr, flush=True)
    print(markdown(rows))
    ladder = [r for r in rows if r["op"] == "matmul ladder"]
    if ladder:
        base = ladder[0]["gpu_gflops"]
        print("\nmatmul ladder relative to " + ladder[0]["name"] + ": "
              + ", ".join(f"{r['name']} {r['gpu_gflops'] / base:.1f}x" for r in ladder))
    if a.json:
        Path(a.json).write_text(json.dumps({"adapter": adapter, "small": a.small, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
