"""What the adapter can do at best, measured by shaders/peak.wgsl's microkernels: the f32 and f16
multiply-add throughput and the copy bandwidth that "% of peak" is against (scripts/bench_gpu.py,
profile.py's tables, tuning.py's budget estimates).

    measure_peaks(ctx, target_s=0.02, max_s=2.0) -> {"f32_gflops", "f16_gflops" (None without
        shader-f16), "copy_gbps", "timer": "timestamp-query" | "wall clock"}

Each microkernel runs at doubling sizes until one call takes target_s (so a fast GPU is measured on
a big enough grid and an emulator on a small one), or the measurement would pass max_s; the
figure is from the last size (profile.measure: timestamps where the adapter has them).
"""

from __future__ import annotations

from .profile import measure

FMA_ACCS = 8  # independent vec4 chains per invocation (peak.wgsl ACCS)
FMA_ITERS = 256


def _grow(ctx, step, target_s: float, max_s: float):
    """Run step(scale) at scale 1, 2, 4 ... until a call takes target_s; -> (seconds, scale)."""
    scale, spent = 1, 0.0
    while True:
        t = step(scale)
        spent += 5 * t  # a warm-up and three timed calls, and a margin
        if t >= target_s or spent + 10 * t > max_s or scale >= 1 << 16:
            return t, scale
        scale *= 2


def fma_gflops(ctx, t_dtype: str, target_s: float = 0.02, max_s: float = 2.0) -> float:
    y = {}

    def step(scale):
        groups = 16 * scale
        y["t"] = ctx.empty((groups * 256,), "f32")
        run = lambda: ctx.run("peak", "peak_fma", [y["t"]], [("u32", FMA_ITERS), ("f32", 0.999)],  # noqa: E731
                              ctx.grid(groups), {"ACCS": f"{FMA_ACCS}u"}, t_dtype=t_dtype, op="peak")
        return measure(ctx, run)

    t, scale = _grow(ctx, step, target_s, max_s)
    flop = 16 * scale * 256 * FMA_ITERS * FMA_ACCS * 8
    return flop / t / 1e9


def copy_gbps(ctx, target_s: float = 0.02, max_s: float = 2.0) -> float:
    bufs = {}

    def step(scale):
        n = 65536 * scale  # vec4s: 1 MiB per scale step
        bufs["src"], bufs["dst"] = ctx.empty((4 * n,), "f32"), ctx.empty((4 * n,), "f32")
        run = lambda: ctx.run("peak", "peak_copy", [bufs["src"], bufs["dst"]], [("u32", n)],  # noqa: E731
                              ctx.grid(-(-n // 256)), op="peak")
        return measure(ctx, run)

    t, scale = _grow(ctx, step, target_s, max(max_s, 0.0))
    return 32 * 65536 * scale / t / 1e9


def measure_peaks(ctx, target_s: float = 0.02, max_s: float = 2.0) -> dict:
    has_ts = callable(getattr(ctx.bridge, "timestamps", None)) and "timestamp-query" in ctx.features
    return {"f32_gflops": fma_gflops(ctx, "f32", target_s, max_s),
            "f16_gflops": fma_gflops(ctx, "f16", target_s, max_s) if "shader-f16" in ctx.features else None,
            "copy_gbps": copy_gbps(ctx, target_s, max_s),
            "timer": "timestamp-query" if has_ts else "wall clock"}
