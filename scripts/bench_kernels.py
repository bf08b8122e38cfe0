#!/usr/bin/env python3
"""Kernel benchmark: the WGSL kernels (WebGPU backend) against backends/numpy.py at SD 1.5's shapes,
as a markdown table.

    python scripts/bench_kernels.py [--small] [--repeats N] [--only SUBSTR] [--json FILE]
    python scripts/bench_kernels.py --memory [--model DIR] [--json FILE]

Rows are the cases in CASES (add a row: append a Case; `make` returns the GPU and NumPy closures):
  matmul ladder   linear (2*4096, 320) x (320 -> 1280), the 64x64 level's feed-forward size with CFG,
                  through each rung of the kernel ladder (kernel_ladder.py and ladder/ beside this
                  script: v0 naive ... v4 8x8 vec4, the kernels production ran before ops/gemm.py)
  linear          the default kernel on the UNet's other linear shapes (fused GEGLU, attention
                  projections, cross-attention over 77 tokens) and with f16 weights
  conv2d          3x3 convs of the UNet's three resolutions with CFG (320 @ 64x64, 640 @ 32x32,
                  1280 @ 16x16, batch 2), a 1x1 shortcut and conv_in
  attention       shaders/attention.wgsl at SD 1.5's three levels with CFG (8 heads of 40 / 80 / 160;
                  self-attention and cross-attention over 77 tokens), SD 2.x's heads of 64, CLIP's
                  causal self-attention and the VAE mid-block's single head of 512
  unet step (CFG) one UNet forward of SD 1.5 at 64x64 latents, batch 2 (a 512x512 image with CFG), with
                  f32 and f16 weights; random weights (RandomWeights), FLOPs counted as NumPy runs it
--small shrinks the token / pixel counts (channel counts stay SD's; the UNet rows run SD 1.5 with a
quarter of its channels at 32x32 latents) so the whole table runs in a few minutes on lavapipe (CPU
Vulkan); the table's shape column says what ran.

--memory times nothing on a GPU: it runs SD 1.5 (random weights, weights/_bench/sd15-random, built by
make_test_models.py --full-size when missing) through sdweb.pipeline at 512x512, CFG 7.5, 2 DDIM steps,
with weights in fp32 / fp16 / bf16 and f32 or f16 compute (activations' dtype; the VAE in f32, as SD
1.5's force_upcast asks), on the WebGPU backend over backends/bridges/counting.py (no device: buffers are
byte counts), and prints the peak GPU bytes per stage (weights vs activations), the dispatches,
pipelines and host (Python) time of a UNet step, and whether the fp16 run fits other adapters' limits.

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
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))

import kernel_ladder  # noqa: E402  (beside this script)
from sdweb.backends import numpy as nb  # noqa: E402
from sdweb.errors import SdwebError  # noqa: E402
from sdweb.weights import WeightStore, f32_to_bf16  # noqa: E402


@dataclass
class Case:
    op: str                       # table group: "matmul ladder", "linear", "conv2d" ...
    name: str
    shape: Callable[[bool], str]  # small -> the shape description
    flop: Callable[[bool], float]
    make: Callable                # (ctx, small) -> (gpu(): GPUTensor, numpy(): ndarray)
    max_repeats: int | None = None  # cap on the timed calls (a full-size UNet step in NumPy takes long)


def _held(a: np.ndarray, dtype: str) -> np.ndarray:
    return {"f32": a, "f16": a.astype(np.float16), "bf16": f32_to_bf16(a)}[dtype]


# --- linear ---------------------------------------------------------------------------------------


def _linear_case(op, name, M, Din, Dout, act=None, dtype="f32", version=None, M_small=None):
    """y = linear(x (M, Din), w (Dout, Din), b) [act], by production's kernel or the ladder's rung
    `version`; M_small replaces M under --small."""

    def m(small):
        return M_small if small and M_small else M

    def make(ctx, small):
        from sdweb.backends import webgpu
        from sdweb.backends.webgpu.ops import matmul

        rng = np.random.default_rng(0)
        x = rng.standard_normal((m(small), Din), dtype=np.float32)
        w = _held((rng.standard_normal((Dout, Din), dtype=np.float32) / math.sqrt(Din)), dtype)
        b = _held(rng.standard_normal(Dout, dtype=np.float32), dtype)
        tx, tw, tb = ctx.upload(x), webgpu.weight(w), webgpu.weight(b)
        if version is None:
            return (lambda: matmul.linear(ctx, tx, tw, tb, act)), (lambda: nb.linear(x, w, b, act))
        return (lambda: kernel_ladder.linear(ctx, tx, tw, tb, act, version)), (lambda: nb.linear(x, w, b, act))

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
        from sdweb.backends.webgpu.ops import conv2d

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
        from sdweb.backends.webgpu.ops import attention

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


# --- UNet step with CFG ---------------------------------------------------------------------------

SD15_UNET = ROOT / "tests" / "data" / "real-configs" / "stable-diffusion-v1-5" / "unet" / "config.json"
# --small: SD 1.5's UNet with a quarter of its channels (2 heads, so the head dims stay SD's 40 / 80 /
# 160) at 32x32 latents: about 1/60 of a full step's work, seconds on lavapipe.
SMALL_UNET = dict(block_out_channels=[80, 160, 320, 320], attention_head_dim=2, norm_num_groups=16)
_PRECISION = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}


class RandomWeights(WeightStore):
    """A WeightStore without files whose get() makes each tensor up from a generator seeded by its
    name: normal / sqrt(fan-in) for matrices and kernels, 1 + 0.1 normal for norm scales, 0.02 normal
    for other vectors, in the held precision. Stores sharing `cache` get the same arrays, made once."""

    def __init__(self, component: str, precision: str = "fp32", cache: dict | None = None):
        super().__init__([], component, precision)
        self.cache = {} if cache is None else cache

    def get(self, name: str, shape) -> np.ndarray:
        shape = tuple(int(d) for d in shape)
        self._take(name)
        a = self.cache.pop(name, None)  # the second store takes what the first one made
        if a is None:
            a = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(shape, dtype=np.float32)
            if len(shape) > 1:
                a /= np.float32(math.sqrt(math.prod(shape[1:])))
            elif "norm" in name and name.endswith("weight"):
                a = 1 + a * np.float32(0.1)
            else:
                a *= np.float32(0.02)
            a = _held(a, {v: k for k, v in _PRECISION.items()}[self.precision])
            self.cache[name] = a
        self.nbytes_held += a.nbytes
        return a


class FlopCounter:
    """The NumPy backend, counting the FLOPs (2 per multiply-add) of linear, conv2d and attention."""

    def __init__(self):
        self.flop = 0

    def __getattr__(self, name):
        return getattr(nb, name)

    def linear(self, x, weight, bias=None, act=None):
        self.flop += 2 * (x.size // x.shape[-1]) * weight.shape[0] * weight.shape[1]
        return nb.linear(x, weight, bias, act)

    def conv2d(self, x, weight, bias=None, stride=1, padding=0, residual=None):
        y = nb.conv2d(x, weight, bias, stride, padding, residual)
        self.flop += 2 * y.size * math.prod(weight.shape[1:])
        return y

    def attention(self, q, k, v, heads, causal=False):
        self.flop += 4 * q.shape[0] * q.shape[1] * k.shape[1] * q.shape[2]
        return nb.attention(q, k, v, heads, causal)


def _unet_case(name, dtype="f32"):
    """One UNet forward with CFG: latents (2, 4, h, w) (the same image twice), timestep 500, a
    (2, 77, 768) context. SD 1.5 at 64x64 latents (a 512x512 image), or under --small SMALL_UNET at
    32x32. Random weights (RandomWeights), the same on both backends. FLOPs are counted as the NumPy
    reference runs (linear, conv2d, attention)."""
    counted = {}

    def make(ctx, small):
        from sdweb.backends import webgpu
        from sdweb.unet import UNet2DConditionModel

        config = json.loads(SD15_UNET.read_text()) | (SMALL_UNET if small else {})
        cache, counter = {}, FlopCounter()
        ref_model = UNet2DConditionModel(config, RandomWeights("unet", _PRECISION[dtype], cache).prefix(""), counter)
        gpu_model = UNet2DConditionModel(config, RandomWeights("unet", _PRECISION[dtype], cache).prefix(""), webgpu)
        hw = 32 if small else 64
        rng = np.random.default_rng(0)
        x = np.concatenate([rng.standard_normal((1, 4, hw, hw), dtype=np.float32)] * 2)
        c = rng.standard_normal((2, 77, config["cross_attention_dim"]), dtype=np.float32)
        tx, tc = ctx.upload(x), ctx.upload(c)

        def ref():
            before = counter.flop
            y = ref_model(x, 500.0, c)
            counted["flop"] = counter.flop - before
            return y

        ref()  # NumPy's warm-up (first-touch page faults of its big temporaries), as the GPU side has one
        return (lambda: gpu_model(tx, 500.0, tc)), ref

    def shape(small):
        hw = 32 if small else 64
        return f"{'SD 1.5 with 1/4 channels' if small else 'SD 1.5'}, x (2, 4, {hw}, {hw}), ctx (2, 77, 768), {dtype} w"

    return Case("unet step (CFG)", name, shape, lambda small: counted["flop"], make, max_repeats=2)


CASES += [_unet_case("unet f32 w", "f32"), _unet_case("unet f16 w", "f16")]


def time_case(ctx, case: Case, small: bool, repeats: int) -> dict:
    repeats = min(repeats, case.max_repeats or repeats)
    gpu, ref = case.make(ctx, small)
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
    flop = case.flop(small)  # after the calls: a UNet case counts its FLOPs as its reference runs
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


# --- GPU memory plan (--memory) -------------------------------------------------------------------

MODEL = ROOT / "weights" / "_bench" / "sd15-random"  # shared with scripts/bench_cpu.py
TARGET_BYTES = 3.5e9  # SD 1.5 at 512x512, CFG, f16 weights must peak under 3.5 GB (a 4 GB GPU's share)
PROMPT = "a photograph of an astronaut riding a horse"


def ensure_model(path: Path) -> Path:
    """The random-weight full-size SD 1.5 folder, built by make_test_models.py when missing (its
    default place is rebuilt when make_test_models.py has changed; a no-op when up to date)."""
    if path == MODEL or not (path / "model_index.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_models.py"), "--full-size", "sd15",
                        str(path)], check=True)
    return path


def memory_run(model: Path, precision: str, adapter="desktop", size: int = 512, steps: int = 2,
               compute: str = "auto") -> dict:
    """One text-to-image run of `model` (CFG 7.5, DDIM, `steps` steps) through sdweb.pipeline on the
    WebGPU backend over a CountingBridge with `adapter`'s limits: per stage its weights, peak and the
    weights' part of that peak; the whole run's peak (the context's and the bridge's); per UNet step
    the dispatches, bind-group misses, submits, host time and dispatches by shader entry."""
    from sdweb.backends import webgpu
    from sdweb.backends.bridges.counting import CountingBridge, counting
    from sdweb.model import ModelFolder
    from sdweb.pipeline import Pipeline

    bridge = CountingBridge(adapter)
    stages, steps_ = {}, []
    cur, last = [None], {}

    def close():
        if cur[0]:
            stages[cur[0]].update(peak=ctx.peak_bytes, peak_weights=ctx.peak_weights)

    def progress(p):
        t = time.perf_counter()
        if p.stage == "load":
            close()
            cur[0] = p.component
            stages[p.component] = {}
            ctx.reset_peak()
        elif p.step == 0:
            stages[cur[0]]["weights"] = ctx.bytes_weights
        if p.stage == "unet":
            now = dict(dispatches=ctx.dispatches, misses=bridge.bind_group_misses, submits=bridge.submits,
                       entries=bridge.counts_by_entry(), pipelines=Counter(bridge.dispatch_counts))
            if p.step > 0:
                steps_.append({"host_s": t - last["t"], **{k: now[k] - last[k] for k in now}})
            last.update(now)
        last["t"] = time.perf_counter()  # the callback's own time is not the step's

    with counting(bridge) as ctx:
        pipe = Pipeline(ModelFolder(model), webgpu, precision=precision, compute=compute)
        try:
            pipe.generate(PROMPT, steps=steps, guidance=7.5, scheduler="ddim", width=size, height=size,
                          seed=0, progress=progress)
        except SdwebError as e:  # GPULimitError: the model does not fit these limits
            return dict(precision=precision, compute=pipe.compute, adapter=adapter, error=str(e))
        close()
        return dict(precision=precision, compute=pipe.compute, adapter=adapter, stages=stages, steps=steps_,
                    peak=max(st["peak"] for st in stages.values()), bridge_peak=bridge.peak_bytes,
                    pipelines=len(bridge.pipelines), limits=bridge.limits())


def _mib(n):
    return f"{n / 2**20:,.1f}"


def memory_markdown(runs: list[dict], limit_runs: list[dict]) -> str:
    out = ["GPU memory per stage (MiB); activations = the stage's peak minus the weights held at that "
           "moment (live activations and the pool's idle buffers):", "",
           "| precision | stage | weights | activations at peak | stage peak |", "|---|---|--:|--:|--:|"]
    names = {"text_encoder": "text encoder", "unet": "UNet (2 steps)", "vae": "VAE decode"}
    for r in runs:
        for stage, st in r["stages"].items():
            out.append(f"| {r['precision']}, {r['compute']} compute | {names[stage]} | {_mib(st['weights'])} | "
                       f"{_mib(st['peak'] - st['peak_weights'])} | {_mib(st['peak'])} |")
        cmp = "<" if r["peak"] < TARGET_BYTES else ">"
        out.append(f"| {r['precision']}, {r['compute']} compute | **run peak** | | | **{_mib(r['peak'])}** = {r['peak'] / 1e9:.2f} GB "
                   f"({cmp} 3.5 GB) |")
    out += ["", "UNet step with CFG (batch 2, 64x64 latents): counts of the last step (the first compiles and "
            "fills the pool); host time = wall time over the counting bridge, i.e. the backend's Python cost a "
            "real run adds to the GPU's time (later steps: their median):", "",
            "| precision | dispatches / step | pipelines (run / step) | bind-group misses / step | "
            "submits / step | host ms / step (first, later) | host us / dispatch |",
            "|---|--:|--:|--:|--:|--:|--:|"]
    for r in runs:
        s0, s1 = r["steps"][0], r["steps"][-1]
        later = statistics.median(st["host_s"] for st in r["steps"][1:]) if len(r["steps"]) > 1 else s0["host_s"]
        out.append(f"| {r['precision']}, {r['compute']} | {s1['dispatches']} | {r['pipelines']} / {len(s1['pipelines'])} | "
                   f"{s1['misses']} | {s1['submits']} | {s0['host_s'] * 1e3:.0f}, {later * 1e3:.0f} | "
                   f"{later / s1['dispatches'] * 1e6:.1f} |")
    if limit_runs:
        out += ["", f"{limit_runs[0]['precision']} run on other adapters' limits:", "",
                "| adapter limits | maxStorageBufferBindingSize | maxBufferSize | result |", "|---|--:|--:|---|"]
        from sdweb.backends.bridges.counting import ADAPTERS
        for r in limit_runs:
            lim = ADAPTERS[r["adapter"]]
            res = f"runs, peak {_mib(r['peak'])} MiB" if "error" not in r else f"fails: {r['error']}"
            out.append(f"| {r['adapter']} | {_mib(lim['maxStorageBufferBindingSize'])} MiB | "
                       f"{_mib(lim['maxBufferSize'])} MiB | {res} |")
    r = next((r for r in runs if r["precision"] == "fp16" and r["compute"] == "f16"), runs[0])
    entries = r["steps"][-1]["entries"]
    out += ["", f"Dispatches per UNet step by shader entry ({r['precision']}, {r['compute']} compute):", "",
            "| shader.entry | dispatches |", "|---|--:|"]
    out += [f"| {k} | {n} |" for k, n in sorted(entries.items(), key=lambda kv: -kv[1]) if n]
    return "\n".join(out)


def memory_main(a) -> list[dict]:
    model = ensure_model(Path(a.model))
    runs = []
    for precision, compute in (("fp32", "f32"), ("fp16", "f32"), ("fp16", "f16"), ("bf16", "f16")):
        runs.append(memory_run(model, precision, steps=a.steps, compute=compute))
        r = runs[-1]
        if "error" in r:
            sys.exit(f"{precision}: {r['error']}")
        print(f"  {precision}, {compute} compute: peak {r['peak'] / 2**20:.0f} MiB, "
              f"{r['steps'][-1]['dispatches']} dispatches / UNet step, "
              f"{r['steps'][-1]['host_s'] * 1e3:.0f} ms host / step", file=sys.stderr, flush=True)
    limit_runs = [memory_run(model, "fp16", adapter) for adapter in ("swiftshader", "webgpu-default")]
    print(f"SD 1.5 (random weights) 512x512, CFG 7.5, {a.steps} DDIM steps, sdweb.pipeline on the WebGPU backend "
          "over the counting bridge (desktop limits)\n")
    print(memory_markdown(runs, limit_runs))
    return runs + limit_runs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="shrunk token / pixel counts, for lavapipe")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 5; 2 with --small)")
    ap.add_argument("--only", help="run only rows whose op or name contains this")
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--memory", action="store_true",
                    help="instead of timing kernels: SD 1.5's GPU memory plan over the counting bridge "
                         "(no adapter needed)")
    ap.add_argument("--model", default=str(MODEL),
                    help="with --memory: the full-size SD 1.5 folder (built when missing)")
    ap.add_argument("--steps", type=int, default=2,
                    help="with --memory: denoising steps (host time: the median of the steps after the first)")
    a = ap.parse_args(argv)
    if a.memory:
        runs = memory_main(a)
        if a.json:
            Path(a.json).write_text(json.dumps(runs, indent=1, default=dict))
        return
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
