"""GPU time per op kind, from timestamp queries: `sdweb generate --profile`, the page's Performance
panel, and the timing that autotuning (tuning.py) and the peak microkernels (peak.py) rely on.

    prof = Profiler(ctx)          prof.available: the bridge can time dispatches (timestamp-query)
    prof.start() ... prof.lap()   -> {op kind: OpTime(count, ms, flop, bytes)} of the dispatches
                                  recorded since the last lap (waits for them); prof.stop()
    table(laps, peaks)            the laps as text: per op kind ms per lap, GFLOP/s, % of peak
    rows(laps, peaks)             the same as dicts (the page's panel, JSON)
    RunProfile(ctx)               a pipeline run's laps by stage, fed by its progress reports
    measure(ctx, run, reps)       seconds one call of run() keeps the GPU busy

While a Profiler runs, the context labels every dispatch with its op kind (ops pass op= and flop=
to ctx.run: "linear", "conv2d", "attention", "group_norm" ...; a split-K reduce counts to its op) and
the bridge times each in a compute pass of its own (bridges/wgpu.py, web/bridge/device.js), which
adds a pass boundary per dispatch: a profiled step runs a little slower than an unprofiled one.

% of peak: ops that multiply (linear, conv2d, attention) against the measured FMA peak of the
compute dtype, the rest (norms, copies) against the measured copy bandwidth, by the bytes they move
(peak.py measures both; an op's bytes are its bindings' sizes unless it says otherwise, as a gather
of a few table rows does).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

COMPUTE_OPS = ("linear", "conv2d", "attention")


@dataclasses.dataclass
class OpTime:
    count: int = 0
    ms: float = 0.0
    flop: float = 0.0
    bytes: float = 0.0


class Profiler:
    def __init__(self, ctx):
        self.ctx = ctx
        self.available = callable(getattr(ctx.bridge, "timestamps", None))
        self._labels: list[tuple] = []
        self._carry: dict[str, OpTime] = {}  # a lap taken early (measure), given to the next one

    def start(self) -> bool:
        """Label and time every dispatch from now on; -> False when the adapter cannot time them."""
        if not self.available or not self.ctx.bridge.timestamps(True):
            self.available = False
            return False
        self._labels.clear()
        self.ctx.profiler = self
        return True

    def stop(self):
        if self.ctx.profiler is self:
            self.ctx.profiler = None
            self.ctx.bridge.timestamps(False)

    def dispatched(self, op: str, flop: float, nbytes: int):
        self._labels.append((op, flop, nbytes))

    def lap(self) -> dict[str, OpTime]:
        """The dispatches recorded since the last lap, summed per op kind (waits for the GPU)."""
        ms = self.ctx.bridge.read_timestamps()
        if len(ms) != len(self._labels):
            raise RuntimeError(f"profiler: {len(ms)} timestamps for {len(self._labels)} dispatches")
        out, self._carry = self._carry, {}
        for (op, flop, nbytes), t in zip(self._labels, ms):
            o = out.setdefault(op, OpTime())
            o.count += 1
            o.ms += t
            o.flop += flop
            o.bytes += nbytes
        self._labels.clear()
        return out


def _percent(op: str, o: OpTime, peaks: dict | None, compute: str) -> float | None:
    if not peaks or o.ms <= 0:
        return None
    if op in COMPUTE_OPS:
        peak = peaks.get(f"{compute}_gflops") or peaks.get("f32_gflops")
        return 100 * o.flop / (o.ms * 1e6) / peak if peak else None
    bw = peaks.get("copy_gbps")
    return 100 * o.bytes / (o.ms * 1e6) / bw if bw else None


def rows(laps: list[dict], peaks: dict | None = None, compute: str = "f32") -> list[dict]:
    """Per op kind over the laps: dispatches and ms per lap (the mean), GFLOP/s, GB/s bound and % of
    peak, slowest first; a last row "total"."""
    n = max(1, len(laps))
    kinds: dict[str, OpTime] = {}
    for lap in laps:
        for op, o in lap.items():
            k = kinds.setdefault(op, OpTime())
            k.count += o.count
            k.ms += o.ms
            k.flop += o.flop
            k.bytes += o.bytes
    out = []
    for op, o in sorted(kinds.items(), key=lambda kv: -kv[1].ms):
        out.append({"op": op, "dispatches": o.count / n, "ms": o.ms / n,
                    "gflops": o.flop / (o.ms * 1e6) if o.ms and o.flop else None,
                    "gbps": o.bytes / (o.ms * 1e6) if o.ms else None,
                    "percent_of_peak": _percent(op, o, peaks, compute)})
    total = sum(o.ms for o in kinds.values()) / n
    out.append({"op": "total", "dispatches": sum(o.count for o in kinds.values()) / n, "ms": total,
                "gflops": sum(o.flop for o in kinds.values()) / n / (total * 1e6) if total else None,
                "gbps": None, "percent_of_peak": None})
    return out


def table(laps: list[dict], peaks: dict | None = None, compute: str = "f32", title: str = "") -> str:
    """rows() as a text table."""
    lines = [title] if title else []
    lines.append(f"{'op':<12} {'dispatches':>10} {'ms':>9} {'GFLOP/s':>9} {'GB/s':>8} {'% of peak':>9}")
    for r in rows(laps, peaks, compute):
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        lines.append(f"{r['op']:<12} {r['dispatches']:>10.0f} {r['ms']:>9.2f} {fmt(r['gflops'], '9.1f'):>9} "
                     f"{fmt(r['gbps'], '8.1f'):>8} {fmt(r['percent_of_peak'], '8.1f'):>9}")
    return "\n".join(lines)


def measure(ctx, run, reps: int = 3) -> float:
    """Seconds one call of run() keeps the GPU busy: the median over `reps` calls of its dispatches'
    timestamp durations where the adapter has timestamp-query, else the wall time of `reps` calls
    between two waits for the GPU, divided by reps (a warm-up call first either way: it compiles).
    Under a running Profiler (--profile) these calls are left out of its laps."""
    outer = ctx.profiler
    carry = outer.lap() if outer is not None else None  # what the run recorded so far, kept aside
    prof = outer or Profiler(ctx)
    if outer is not None or prof.start():
        try:
            run()
            prof.lap()
            times = []
            for _ in range(reps):
                run()
                times.append(sum(o.ms for o in prof.lap().values()) / 1e3)
            return statistics.median(times)
        finally:
            if outer is None:
                prof.stop()
            else:
                outer._carry = carry
    run()
    ctx.finish()
    t0 = time.perf_counter()
    for _ in range(reps):
        run()
    ctx.finish()
    return (time.perf_counter() - t0) / reps


class RunProfile:
    """A pipeline run's GPU time by stage: start() before the run, pass every progress report to
    progress(p), stop() after. Laps: the text encoder, each UNet step, the VAE decode; what the
    stages' loading records (weight conversions) is left out."""

    STAGES = ("text_encoder", "unet", "vae")

    def __init__(self, ctx):
        self.profiler = Profiler(ctx)
        self.laps: dict[str, list] = {s: [] for s in self.STAGES}

    def start(self) -> bool:
        return self.profiler.start()

    def stop(self):
        self.profiler.stop()

    def progress(self, p):
        """A pipeline.Progress: at a stage's step 0 the lap is its loading (dropped), after it a step."""
        if p.stage in self.laps and self.profiler.ctx.profiler is self.profiler:
            lap = self.profiler.lap()
            if p.step > 0:
                self.laps[p.stage].append(lap)

    def report(self, peaks: dict | None, computes: dict) -> dict:
        """{stage: rows} with the UNet's as the mean of the steps after the first (the first also
        projects the prompt for every cross-attention, and may include autotuning's trials), and
        "unet_steps_ms": every step's total."""
        out = {}
        for stage, laps in self.laps.items():
            if not laps:
                continue
            use = laps[1:] if stage == "unet" and len(laps) > 1 else laps
            out[stage] = rows(use, peaks, computes.get(stage, "f32"))
        out["unet_steps_ms"] = [sum(o.ms for o in lap.values()) for lap in self.laps["unet"]]
        return out

    def text(self, peaks: dict | None, computes: dict) -> str:
        titles = {"text_encoder": "text encoder", "unet": "UNet, per step (mean of the steps after the first)",
                  "vae": "VAE decode"}
        parts = []
        for stage, laps in self.laps.items():
            if laps:
                use = laps[1:] if stage == "unet" and len(laps) > 1 else laps
                parts.append(table(use, peaks, computes.get(stage, "f32"),
                                   f"{titles[stage]} ({computes.get(stage, 'f32')} compute)"))
        steps = [sum(o.ms for o in lap.values()) for lap in self.laps["unet"]]
        if steps:
            parts.append("UNet steps, ms: " + ", ".join(f"{t:.1f}" for t in steps))
        if peaks:
            f16 = f", f16 {peaks['f16_gflops']:.1f}" if peaks.get("f16_gflops") else ""
            parts.append(f"% of peak against the measured FMA peak (f32 {peaks['f32_gflops']:.1f}{f16} GFLOP/s) for "
                         f"linear/conv2d/attention, the copy bandwidth ({peaks['copy_gbps']:.1f} GB/s) for the rest")
        return "\n\n".join(parts)
