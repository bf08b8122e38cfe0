#!/usr/bin/env python3
"""GPU benchmark: what this adapter can do at best, and how close sdweb's kernels come to it on
SD 1.5's shapes; then one UNet step with CFG and one VAE decode at 512x512. The one command to run
on a machine with a GPU:

    python scripts/bench_gpu.py [--quick] [--json FILE] [--only SUBSTR] [--no-tune] [--no-check]

It needs the repository, numpy and wgpu only: no model files (weights are random, made per tensor
name: speed does not depend on their values), no network, no torch.

1. Peaks (backends/webgpu/peak.py, shaders/peak.wgsl): f32 and f16 multiply-add throughput and
   copy bandwidth, from microkernels sized to take ~20 ms each on this adapter.
2. Kernels: each production kernel on the shapes SD 1.5 runs at 512x512 with CFG (batch 2,
   64x64 latents): the linear layers (fused GEGLU, fused QKV, cross-attention's K|V over 77
   tokens, proj_out into an image), the convs of every level (with the time embedding and the skip
   fused; the 8x8 level's split-K), attention at every level and the VAE's, group and layer norm.
   For each: its time with the rule's configuration (ops/gemm.py, ops/attention.py), GFLOP/s (GB/s
   for the norms, by the bytes they bind) and % of the measured peak of its compute dtype; with
   tuning, the fastest of the candidates autotuning chooses from and its %; the kernel production
   ran before (scripts/kernel_ladder.py) for comparison; and the error against NumPy.
3. Whole networks: one UNet forward with CFG (SD 1.5, 64x64 latents, fp16 weights) in f32 and f16
   compute, and one VAE decode to 512x512 (f32 compute, as SD 1.5's VAE's force_upcast asks), GPU
   time (timestamps where the adapter has them) and dispatches.

--quick shrinks the token and pixel counts (and the deepest levels' channels: about 0.2 GFLOP a kernel) and
runs SD 1.5 with a quarter of its channels at 16x16 latents and its VAE, a quarter wide, to 128x128,
so the whole run takes minutes on a CPU emulator (lavapipe); the tables say what ran. Times come
from timestamp queries where the adapter has them (else wall clock around a wait for the GPU), the
median of 3 after a warm-up call (--quick: 2, the candidates 1, the networks 1).

On an emulated adapter (lavapipe, SwiftShader) the figures are a CPU's and rank kernels as a CPU
would: they show the code runs and is correct there, not how fast a GPU runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))
sys.path.insert(0, str(ROOT / "scripts"))

import kernel_ladder  # noqa: E402  (beside this script)
from bench_kernels import SD15_UNET, SMALL_UNET, RandomWeights  # noqa: E402
from sdweb.backends import numpy as nb  # noqa: E402

SD15_VAE = ROOT / "tests" / "data" / "real-configs" / "stable-diffusion-v1-5" / "vae" / "config.json"
SMALL_VAE = dict(block_out_channels=[32, 64, 128, 128])  # --quick: a quarter of SD 1.5's VAE widths


@dataclass
class Kernel:
    family: str                       # "linear", "conv2d", "attention", "norm"
    name: str
    shape: Callable[[bool], str]      # quick -> what runs
    make: Callable                    # (ctx, quick, t, config) -> (run() -> GPUTensor, flop, bytes, ref() -> ndarray)
    candidates: Callable | None = None  # (ctx, quick, t) -> configurations autotuning picks from
    ladder: Callable | None = None    # (ctx, quick) -> run() of the kernel production ran before (f32)


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- linear ---------------------------------------------------------------------------------------


def linear(name, M, Din, Dout, act=None, residual=False, image=None, M_quick=None, dims_quick=None):
    def m(q):
        return M_quick if q and M_quick else M

    def dims(q):
        return dims_quick if q and dims_quick else (Din, Dout)

    def make(ctx, q, t, config):
        from sdweb.backends import webgpu
        from sdweb.backends.webgpu.ops import matmul

        rng = _rng(1)
        Din, Dout = dims(q)
        x = rng.standard_normal((m(q), Din), dtype=np.float32)
        w = (rng.standard_normal((Dout, Din), dtype=np.float32) / math.sqrt(Din)).astype(np.float16)
        b = rng.standard_normal(Dout, dtype=np.float32).astype(np.float16)
        N = Dout // 2 if act == "geglu" else Dout
        img = None
        if image:
            side = int(math.isqrt(m(q) // 2))
            img, x = (side, side), x.reshape(2, side * side, Din)
        r = None
        if residual:
            r = rng.standard_normal((2, N, *img) if img else (m(q), N), dtype=np.float32)
        tx, tw, tb = ctx.upload(x), webgpu.weight(w), webgpu.weight(b)
        tr = ctx.upload(r) if r is not None else None

        def run():
            return matmul.linear(ctx, tx, tw, tb, act, tr, img, config)

        def ref():
            return nb.linear(x.astype(np.float16).astype(np.float32) if t == "f16" else x, w, b, act, r, img)

        return run, 2.0 * m(q) * Din * Dout, None, ref

    def candidates(ctx, q, t):
        from sdweb.backends.webgpu.ops import gemm

        Din, Dout = dims(q)
        if image:
            return gemm.candidates(ctx, Dout, m(q), Din, t)
        return gemm.candidates(ctx, m(q), Dout, Din, t)

    def ladder(ctx, q):
        from sdweb.backends import webgpu

        rng = _rng(1)
        Din, Dout = dims(q)
        tx = ctx.upload(rng.standard_normal((m(q), Din), dtype=np.float32), "f32")
        tw = webgpu.weight((rng.standard_normal((Dout, Din), dtype=np.float32) / math.sqrt(Din)).astype(np.float16))
        return lambda: kernel_ladder.linear(ctx, tx, tw, None, act, 3 if Din % 4 == 0 else 2)

    extra = (f" {act}" if act else "") + (" +res" if residual else "") + (" -> image" if image else "")
    return Kernel("linear", name, lambda q: f"({m(q)}, {dims(q)[0]}) x ({dims(q)[1]}, {dims(q)[0]}){extra}", make,
                  candidates, None if image else ladder)


# --- conv2d ---------------------------------------------------------------------------------------


def conv(name, N, Cin, HW, Cout, k, stride=1, temb=False, residual=False, HW_quick=None, C_quick=None):
    pad = k // 2

    def chans(q):
        return C_quick if q and C_quick else (Cin, Cout)

    def hw(q):
        return HW_quick if q and HW_quick else HW

    def out_hw(q):
        return (hw(q) + 2 * pad - k) // stride + 1

    def make(ctx, q, t, config):
        from sdweb.backends import webgpu
        from sdweb.backends.webgpu.ops import conv2d

        rng = _rng(2)
        Cin, Cout = chans(q)
        x = rng.standard_normal((N, Cin, hw(q), hw(q)), dtype=np.float32)
        w = (rng.standard_normal((Cout, Cin, k, k), dtype=np.float32) / math.sqrt(Cin * k * k)).astype(np.float16)
        b = rng.standard_normal(Cout, dtype=np.float32).astype(np.float16)
        r = rng.standard_normal((N, Cout, out_hw(q), out_hw(q)), dtype=np.float32) if residual else None
        e = rng.standard_normal((N, Cout), dtype=np.float32) if temb else None
        tx, tw, tb = ctx.upload(x), webgpu.weight(w), webgpu.weight(b)
        tr, te = (ctx.upload(a) if a is not None else None for a in (r, e))

        def run():
            return conv2d.conv2d(ctx, tx, tw, tb, stride, pad, tr, te, config)

        def ref():
            xs = x.astype(np.float16).astype(np.float32) if t == "f16" else x
            return nb.conv2d(xs, w, b, stride, pad, r, e)

        return run, 2.0 * N * out_hw(q) ** 2 * Cout * Cin * k * k, None, ref

    def candidates(ctx, q, t):
        from sdweb.backends.webgpu.ops import gemm

        Cin, Cout = chans(q)
        return gemm.candidates(ctx, Cout, N * out_hw(q) ** 2, Cin * k * k, t)

    def ladder(ctx, q):
        from sdweb.backends import webgpu

        rng = _rng(2)
        Cin, Cout = chans(q)
        tx = ctx.upload(rng.standard_normal((N, Cin, hw(q), hw(q)), dtype=np.float32), "f32")
        tw = webgpu.weight((rng.standard_normal((Cout, Cin, k, k), dtype=np.float32) / 10).astype(np.float16))
        return lambda: kernel_ladder.conv2d_v1(ctx, tx, tw, None, stride, pad)

    extra = (f" s{stride}" if stride > 1 else "") + (" +temb" if temb else "") + (" +res" if residual else "")
    return Kernel("conv2d", name, lambda q: f"({N}, {chans(q)[0]}, {hw(q)}, {hw(q)}) * {k}x{k} -> {chans(q)[1]}{extra}",
                  make, candidates, ladder)


# --- attention ------------------------------------------------------------------------------------


def attention(name, N, Lq, Lk, heads, d, causal=False, quick=None, fused=False):
    def dims(q):
        return quick if q and quick else (Lq, Lk)

    def make(ctx, q, t, config):
        from sdweb.backends.webgpu.ops import attention as att

        lq, lk = dims(q)
        rng = _rng(3)
        D = heads * d
        if fused:  # self-attention reading the thirds of one fused QKV projection
            qkv = rng.standard_normal((N, lq, 3 * D), dtype=np.float32)
            t_qkv = ctx.upload(qkv)
            args = ((t_qkv, 0), (t_qkv, D), (t_qkv, 2 * D))
            host = [qkv[..., i * D:(i + 1) * D] for i in range(3)]
        else:
            host = [rng.standard_normal((N, L, D), dtype=np.float32) for L in (lq, lk, lk)]
            args = [ctx.upload(a) for a in host]

        def run():
            return att.attention(ctx, *args, heads, causal, config)

        def ref():
            hs = [a.astype(np.float16).astype(np.float32) for a in host] if t == "f16" else host
            return nb.attention(*hs, heads, causal)

        return run, 4.0 * N * heads * lq * lk * d, None, ref

    def candidates(ctx, q, t):
        from sdweb.backends.webgpu.ops import attention as att

        return att.candidates(ctx, d, t)

    def ladder(ctx, q):
        lq, lk = dims(q)
        rng = _rng(3)
        tq, tk, tv = (ctx.upload(rng.standard_normal((N, L, heads * d), dtype=np.float32), "f32") for L in (lq, lk, lk))
        return lambda: kernel_ladder.attention_v1(ctx, tq, tk, tv, heads, causal)

    def shape(q):
        lq, lk = dims(q)
        return f"N={N} Lq={lq} Lk={lk} {heads}x{d}" + (" causal" if causal else "") + (" (fused qkv)" if fused else "")

    return Kernel("attention", name, shape, make, candidates, ladder)


# --- norms (memory-bound: GB/s by the bytes they bind) ----------------------------------------------


def group_norm(name, N, C, HW, groups=32, tokens=False, HW_quick=None):
    def hw(q):
        return HW_quick if q and HW_quick else HW

    def make(ctx, q, t, config):
        from sdweb.backends import webgpu

        rng = _rng(4)
        x = rng.standard_normal((N, C, hw(q), hw(q)), dtype=np.float32)
        g = (1 + 0.1 * rng.standard_normal(C, dtype=np.float32)).astype(np.float16)
        b = (0.1 * rng.standard_normal(C, dtype=np.float32)).astype(np.float16)
        tx, tg, tb = ctx.upload(x), webgpu.weight(g), webgpu.weight(b)
        nbytes = (3 if not tokens else 3) * x.size * (2 if t == "f16" else 4)  # stats read, apply read + write

        def run():
            return webgpu.group_norm(tx, groups, tg, tb, 1e-5, "silu", tokens)

        def ref():
            return nb.group_norm(x.astype(np.float16).astype(np.float32) if t == "f16" else x, groups, g, b, 1e-5,
                                 "silu", tokens)

        return run, 0.0, nbytes, ref

    def ladder(ctx, q):
        from sdweb.backends import webgpu

        rng = _rng(4)
        tx = ctx.upload(rng.standard_normal((N, C, hw(q), hw(q)), dtype=np.float32), "f32")
        g = webgpu.weight(np.ones(C, np.float16))
        return lambda: kernel_ladder.group_norm_v1(ctx, tx, groups, g, g, 1e-5, "silu")

    return Kernel("norm", name, lambda q: f"({N}, {C}, {hw(q)}, {hw(q)}) / {groups} silu" + (" -> tokens" if tokens else ""),
                  make, None, None if tokens else ladder)


def layer_norm(name, M, D, M_quick=None):
    def m(q):
        return M_quick if q and M_quick else M

    def make(ctx, q, t, config):
        from sdweb.backends import webgpu

        rng = _rng(5)
        x = rng.standard_normal((m(q), D), dtype=np.float32)
        g = np.ones(D, np.float16)
        tx, tg = ctx.upload(x), webgpu.weight(g)

        def run():
            return webgpu.layer_norm(tx, tg, tg, 1e-5)

        def ref():
            return nb.layer_norm(x.astype(np.float16).astype(np.float32) if t == "f16" else x, g, g, 1e-5)

        return run, 0.0, 2 * x.size * (2 if t == "f16" else 4), ref

    return Kernel("norm", name, lambda q: f"({m(q)}, {D})", make)


KERNELS = [
    linear("ff net.0.proj geglu @64", 8192, 320, 2560, "geglu", M_quick=128),
    linear("ff net.2 +res @64", 8192, 1280, 320, residual=True, M_quick=128),
    linear("attn1 to_qkv @64", 8192, 320, 960, M_quick=128),
    linear("attn to_out +res @64", 8192, 320, 320, residual=True, M_quick=128),
    linear("attn2 to_kv (77 tok)", 154, 768, 640),
    linear("ff geglu @16", 512, 1280, 10240, "geglu", M_quick=64, dims_quick=(320, 2560)),
    linear("attn1 to_qkv @8", 128, 1280, 3840, dims_quick=(320, 960)),
    linear("proj_out -> image +res @64", 8192, 320, 320, residual=True, image=True, M_quick=128),
    conv("3x3 320 @64 +temb", 2, 320, 64, 320, 3, temb=True, HW_quick=8),
    conv("3x3 320 @64 +res", 2, 320, 64, 320, 3, residual=True, HW_quick=8),
    conv("3x3 640 @32", 2, 640, 32, 640, 3, HW_quick=4),
    conv("3x3 1280 @16", 2, 1280, 16, 1280, 3, HW_quick=8, C_quick=(320, 320)),
    conv("3x3 1280 @8 (split-K)", 2, 1280, 8, 1280, 3, HW_quick=4, C_quick=(320, 320)),
    conv("3x3 2560->1280 @8", 2, 2560, 8, 1280, 3, HW_quick=4, C_quick=(640, 320)),
    conv("3x3 s2 640 @32", 2, 640, 32, 640, 3, stride=2, HW_quick=8),
    conv("1x1 640->1280 @16", 2, 640, 16, 1280, 1, HW_quick=8),
    conv("conv_in 4->320 @64", 2, 4, 64, 320, 3, HW_quick=32),
    conv("vae 3x3 512 @64", 1, 512, 64, 512, 3, HW_quick=8),
    conv("vae 3x3 256 @256", 1, 256, 256, 256, 3, HW_quick=16),
    attention("self @64 (fused qkv)", 2, 4096, 4096, 8, 40, quick=(256, 256), fused=True),
    attention("cross @64 (77 tok)", 2, 4096, 77, 8, 40, quick=(1024, 77)),
    attention("self @32", 2, 1024, 1024, 8, 80, quick=(128, 128)),
    attention("self @16", 2, 256, 256, 8, 160, quick=(128, 128)),
    attention("clip causal", 2, 77, 77, 12, 64, causal=True),
    attention("vae mid @64", 1, 4096, 4096, 1, 512, quick=(256, 256)),
    group_norm("group norm 320 @64", 2, 320, 64, HW_quick=16),
    group_norm("group norm 320 @64 -> tokens", 2, 320, 64, tokens=True, HW_quick=16),
    group_norm("vae group norm 128 @512", 1, 128, 512, HW_quick=64),
    layer_norm("layer norm @64", 8192, 320, M_quick=1024),
]


def _percent(family, t, flop, nbytes, seconds, peaks):
    if seconds <= 0:
        return None, None
    if family == "norm":
        rate = nbytes / seconds / 1e9
        return rate, 100 * rate / peaks["copy_gbps"]
    rate = flop / seconds / 1e9
    peak = peaks.get(f"{t}_gflops") or peaks["f32_gflops"]
    return rate, 100 * rate / peak


def bench_kernel(ctx, k: Kernel, quick: bool, t: str, peaks: dict, tune: bool, check: bool) -> dict:
    from sdweb.backends.webgpu.profile import measure

    reps = 2 if quick else 3
    run, flop, nbytes, ref = k.make(ctx, quick, t, None)
    secs = measure(ctx, run, reps)
    rate, pct = _percent(k.family, t, flop, nbytes, secs, peaks)
    row = dict(family=k.family, name=k.name, shape=k.shape(quick), compute=t, gflop=flop / 1e9, ms=secs * 1e3,
               rate=rate, unit="GB/s" if k.family == "norm" else "GFLOP/s", percent_of_peak=pct)
    if check:
        got, want = ctx.read(run()), ref()
        row["max_rel_err"] = float(np.abs(got - want).max() / np.abs(want).max())
    if tune and k.candidates is not None:
        times = {}
        for c in k.candidates(ctx, quick, t):
            run_c = k.make(ctx, quick, t, c)[0]
            times[c.name] = measure(ctx, run_c, reps - 1)
        best = min(times, key=times.get)
        row.update(best=best, best_ms=times[best] * 1e3,
                   best_percent_of_peak=_percent(k.family, t, flop, nbytes, times[best], peaks)[1],
                   candidates_ms={n: v * 1e3 for n, v in times.items()})
    if k.ladder is not None and t == "f32":
        secs_old = measure(ctx, k.ladder(ctx, quick), reps)
        row["previous_ms"] = secs_old * 1e3
    return row


# --- whole networks -------------------------------------------------------------------------------


def unet_step(ctx, quick: bool, t: str) -> dict:
    """One SD 1.5 UNet forward with CFG (batch 2), fp16 weights, compute dtype t."""
    from sdweb.backends import webgpu
    from sdweb.backends.webgpu.profile import measure
    from sdweb.unet import UNet2DConditionModel

    config = json.loads(SD15_UNET.read_text()) | (SMALL_UNET if quick else {})
    hw = 16 if quick else 64
    previous = ctx.set_compute(t)
    try:
        model = UNet2DConditionModel(config, RandomWeights("unet", "fp16").prefix(""), webgpu)
        rng = _rng(6)
        x = ctx.upload(np.concatenate([rng.standard_normal((1, 4, hw, hw), dtype=np.float32)] * 2))
        c = ctx.upload(rng.standard_normal((2, 77, config["cross_attention_dim"]), dtype=np.float32))
        model(x, 500.0, c)  # the first call also projects the context for every cross-attention (kept)
        before = ctx.dispatches
        model(x, 500.0, c)
        dispatches = ctx.dispatches - before
        secs = measure(ctx, lambda: model(x, 500.0, c), 1 if quick else 3)
        del model
    finally:
        ctx.set_compute(previous)
    what = "SD 1.5 with 1/4 channels, 16x16 latents" if quick else "SD 1.5, 64x64 latents (512x512)"
    return dict(name=f"UNet step, CFG ({what}), fp16 weights", compute=t, ms=secs * 1e3, dispatches=dispatches)


def vae_decode(ctx, quick: bool, t: str) -> dict:
    from sdweb.backends import webgpu
    from sdweb.backends.webgpu.profile import measure
    from sdweb.vae import AutoencoderKL

    config = json.loads(SD15_VAE.read_text()) | (SMALL_VAE if quick else {})
    hw = 16 if quick else 64
    previous = ctx.set_compute(t)
    try:
        vae = AutoencoderKL(config, RandomWeights("vae", "fp16").prefix(""), webgpu, encoder=False)
        z = ctx.upload(_rng(7).standard_normal((1, 4, hw, hw), dtype=np.float32))
        before = ctx.dispatches
        vae.decode(z)
        dispatches = ctx.dispatches - before
        secs = measure(ctx, lambda: vae.decode(z), 1)
        del vae
    finally:
        ctx.set_compute(previous)
    what = "SD 1.5's VAE a quarter wide, to 128x128" if quick else "SD 1.5's VAE, to 512x512"
    return dict(name=f"VAE decode ({what}), fp16 weights", compute=t, ms=secs * 1e3, dispatches=dispatches)


# --- report ---------------------------------------------------------------------------------------


def _f(v, spec):
    return "" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    p = result["peaks"]
    out = [f"adapter: {result['adapter']}" + (" — EMULATED (a CPU: figures rank kernels as a CPU would, not a GPU)"
                                               if result["emulated"] else ""),
           f"timer: {p['timer']}; {'--quick shapes' if result['quick'] else 'SD 1.5 shapes, 512x512 with CFG'}", "",
           "| peak | measured |", "|---|--:|",
           f"| f32 FMA | {p['f32_gflops']:.1f} GFLOP/s |",
           f"| f16 FMA | {_f(p['f16_gflops'], '.1f') or 'no shader-f16'}{' GFLOP/s' if p['f16_gflops'] else ''} |",
           f"| copy | {p['copy_gbps']:.1f} GB/s |", "",
           "| kernel | shape | compute | ms | GFLOP/s or GB/s | % of peak | tuned best (ms, %) | previous kernel ms | err |",
           "|---|---|---|--:|--:|--:|---|--:|--:|"]
    for r in result["kernels"]:
        best = f"{r['best']} ({r['best_ms']:.3f}, {_f(r['best_percent_of_peak'], '.1f')})" if "best" in r else ""
        out.append(f"| {r['name']} | {r['shape']} | {r['compute']} | {r['ms']:.3f} | {_f(r['rate'], '.1f')} {r['unit']} | "
                   f"{_f(r['percent_of_peak'], '.1f')} | {best} | {_f(r.get('previous_ms'), '.3f')} | "
                   f"{_f(r.get('max_rel_err'), '.1e')} |")
    out += ["", "| network | compute | GPU ms | dispatches |", "|---|---|--:|--:|"]
    for r in result["networks"]:
        out.append(f"| {r['name']} | {r['compute']} | {r['ms']:.1f} | {r['dispatches']} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes: a few minutes on a CPU emulator")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--only", help="only the kernels whose name contains this (the networks still run)")
    ap.add_argument("--no-tune", dest="tune", action="store_false", help="skip timing every candidate configuration")
    ap.add_argument("--no-check", dest="check", action="store_false", help="skip the comparison with NumPy")
    ap.add_argument("--no-networks", dest="networks", action="store_false", help="skip the UNet step and VAE decode")
    a = ap.parse_args(argv)

    from sdweb.backends import webgpu
    from sdweb.backends.webgpu import peak, tuning

    if not webgpu.available():
        sys.exit("no WebGPU adapter found (a GPU driver for Vulkan, Metal or D3D12; mesa-vulkan-drivers for lavapipe)")
    ctx = webgpu.context()
    computes = ["f32"] + (["f16"] if "shader-f16" in ctx.features else [])
    result = dict(adapter=tuning.adapter_name(ctx), emulated=tuning.is_emulated(ctx), quick=a.quick,
                  features=sorted(ctx.features), computes=computes)
    print(f"adapter: {result['adapter']}{' (emulated)' if result['emulated'] else ''}; features "
          f"{', '.join(result['features']) or 'none'}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    result["peaks"] = peaks = peak.measure_peaks(ctx)
    print(f"  peaks: {peaks}", file=sys.stderr, flush=True)
    result["kernels"] = []
    for k in KERNELS:
        if a.only and a.only not in k.name:
            continue
        for t in computes:
            r = bench_kernel(ctx, k, a.quick, t, peaks, a.tune, a.check)
            result["kernels"].append(r)
            print(f"  {k.name} [{t}]: {r['ms']:.3f} ms, {_f(r['rate'], '.1f')} {r['unit']}, "
                  f"{_f(r['percent_of_peak'], '.1f')}% of peak" + (f", best {r['best']}" if "best" in r else ""),
                  file=sys.stderr, flush=True)
    result["networks"] = []
    if a.networks:
        for t in computes:
            result["networks"].append(unet_step(ctx, a.quick, t))
            print(f"  {result['networks'][-1]}", file=sys.stderr, flush=True)
        result["networks"].append(vae_decode(ctx, a.quick, "f32"))
        print(f"  {result['networks'][-1]}", file=sys.stderr, flush=True)
    result["seconds"] = time.perf_counter() - t0
    print(markdown(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
