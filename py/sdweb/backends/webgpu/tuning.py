"""Autotuning per adapter: the fastest of the correct kernel configurations for each shape a model
runs, timed on this adapter the first time the shape comes, and remembered.

    t = Tuning(ctx, entry=None, budget_s=4.0)  entry: the adapter's remembered entry (to_entry()) or None
    ctx.set_tuning(t)                        ops/gemm.py and ops/attention.py now ask it
    t.to_entry() -> dict                     JSON-able: adapter, emulated, peaks, chosen configurations
    start(ctx, redo=False, report=None) -> t  the CLI's: the remembered entry from the cache file (none
                                             with redo), a new Tuning installed on ctx
    finish(ctx)                              the CLI's: save the entry back
    load(path, adapter) / save(path, t)      the cache: one JSON file, an entry per adapter
    cache_path()                             $XDG_CACHE_HOME/sdweb/autotune.json (~/.cache/...)

How: an op that needs a configuration for a shape (its key: the op's sizes, flags and dtypes) asks
`gemm(...)` or `attention(...)` with a `trial` closure that runs the op itself with a given
configuration on its real inputs. An unseen shape, while budget is left, gets every candidate of
ops/gemm.py `candidates` (or attention.py's) timed by profile.measure (timestamp queries where the
adapter has them) and the fastest recorded; the op then runs with it, so the result is the same as
with any other (all candidates are correct by construction; tests/test_webgpu_*.py check each).
Shapes left when the budget is spent take the rule's choice and are tuned on a later run.

The first tuning measures the adapter's peaks (peak.py) too: the tables' "% of peak", and the
estimate that skips a shape whose trials alone would overrun the budget (an emulator's VAE).

Defaults never come from here: the rule (ops/gemm.py, attention.py `pick`) follows the anchors.
An emulated adapter (lavapipe, SwiftShader: a CPU) is tuned like any other, for itself, and its
entry says `emulated`: its rankings are a CPU's, not a GPU's.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from . import peak
from .ops import attention as attention_op
from .ops import gemm as gemm_op
from .profile import measure

VERSION = 1
BUDGET_S = 4.0  # seconds of timing per run: "a few seconds" on first use
EMULATORS = re.compile(r"llvmpipe|lavapipe|swiftshader|software|softpipe|warp", re.I)


def adapter_name(ctx) -> str:
    return str(ctx.limits.get("adapter", "unknown adapter"))


def is_emulated(ctx) -> bool:
    """The adapter is a CPU emulation of a GPU (its timings rank kernels as a CPU would)."""
    return str(ctx.limits.get("adapterType", "")).lower() == "cpu" or bool(EMULATORS.search(adapter_name(ctx)))


class Tuning:
    def __init__(self, ctx, entry: dict | None = None, budget_s: float | None = None, report=None):
        """entry: what this adapter's tuning remembered (None: start over); budget_s: seconds of
        timing this run may spend (BUDGET_S); report(dict): told of each shape tuned ({"tuned",
        "seconds", "budget", "op", "choice"}), for progress."""
        entry = entry or {}
        self.adapter, self.emulated = adapter_name(ctx), is_emulated(ctx)
        self.peaks = entry.get("peaks")
        self.choices: dict[str, dict] = {k: dict(v) for k, v in entry.get("choices", {}).items()}
        self.budget_s, self.spent_s, self.report = BUDGET_S if budget_s is None else budget_s, 0.0, report
        self.tuned = 0  # shapes tuned this run
        self.skipped = 0  # shapes left to the rule this run (over budget)

    # -- what ops ask --

    def gemm(self, ctx, op: str, key: tuple, rows_p: int, rows_q: int, K: int, t_dtype: str, trial=None):
        name = f"{op}|{_key(key)}"
        hit = self.choices.get(name)
        if hit is not None:
            return gemm_op.Gemm(*hit["config"])
        rule = gemm_op.pick(ctx, rows_p, rows_q, K, t_dtype)
        cands = gemm_op.candidates(ctx, rows_p, rows_q, K, t_dtype)
        best = self._tune(ctx, name, op, trial, cands, rule, 2.0 * rows_p * rows_q * K)
        return best

    def attention(self, ctx, key: tuple, d: int, t_dtype: str, trial=None):
        name = f"attention|{_key(key)}"
        hit = self.choices.get(name)
        if hit is not None:
            return attention_op.Attn(*hit["config"])
        rule = attention_op.pick(ctx, d, t_dtype)
        n, lq, lk, heads = key[:4]
        return self._tune(ctx, name, "attention", trial, attention_op.candidates(ctx, d, t_dtype), rule,
                          4.0 * n * heads * lq * lk * d)

    # -- timing --

    def _tune(self, ctx, name, op, trial, cands, rule, flop):
        if trial is None or len(cands) < 2 or self.spent_s >= self.budget_s:
            self.skipped += trial is not None
            return rule
        t0 = time.perf_counter()
        if self.peaks is None:
            self.peaks = peak.measure_peaks(ctx, max_s=max(0.2, (self.budget_s - self.spent_s) / 4))
        rate = 1e9 * max(self.peaks.get("f32_gflops") or 1.0, 1e-3)
        if 3 * len(cands) * flop / rate > self.budget_s - self.spent_s - (time.perf_counter() - t0):
            self.spent_s += time.perf_counter() - t0
            self.skipped += 1
            return rule  # its trials alone would overrun what is left: a later run may have the time
        times = {}
        for c in cands:
            times[c] = measure(ctx, lambda c=c: trial(c), reps=2)
        best = min(cands, key=lambda c: (times[c], c != rule))
        self.choices[name] = {"config": list(best), "name": best.name, "rule": rule.name,
                              "ms": {c.name: round(t * 1e3, 4) for c, t in times.items()}}
        self.spent_s += time.perf_counter() - t0
        self.tuned += 1
        if self.report is not None:
            self.report({"tuned": self.tuned, "seconds": self.spent_s, "budget": self.budget_s, "op": op,
                         "choice": best.name})
        return best

    # -- remembering --

    def to_entry(self) -> dict:
        return {"version": VERSION, "adapter": self.adapter, "emulated": self.emulated, "peaks": self.peaks,
                "choices": self.choices}

    def summary(self) -> str:
        """One line: what was chosen, and whether an emulator chose it."""
        changed = sum(1 for c in self.choices.values() if c["name"] != c["rule"])
        where = (f"on an emulated adapter ({self.adapter}: CPU timings, not a GPU's)" if self.emulated
                 else f"on {self.adapter}")
        return (f"{len(self.choices)} kernel shapes tuned {where}; {changed} differ from the default rule"
                + (f"; {self.skipped} left for a later run (budget)" if self.skipped else ""))


def _key(key: tuple) -> str:
    return ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in key)


# --- the CLI's cache file -------------------------------------------------------------------------


def start(ctx, redo: bool = False, report=None, path: Path | None = None) -> Tuning:
    """Install on ctx a Tuning that starts from the cache file's entry for this adapter (or from
    nothing with redo: `sdweb generate --autotune`)."""
    entry = None if redo else load(path or cache_path(), adapter_name(ctx))
    t = Tuning(ctx, entry, report=report)
    ctx.set_tuning(t)
    return t


def finish(ctx, path: Path | None = None) -> None:
    """Save the installed Tuning's entry into the cache file."""
    if ctx.tuning is not None:
        save(path or cache_path(), ctx.tuning)


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sdweb" / "autotune.json"


def load(path: Path, adapter: str) -> dict | None:
    """The remembered entry of `adapter` in the cache file, or None (no file, another version, a
    file that does not parse: tuning starts over)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    entry = data.get("adapters", {}).get(adapter) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) and entry.get("version") == VERSION else None


def save(path: Path, tuning: Tuning) -> None:
    """Write the tuning's entry into the cache file (other adapters' entries kept), atomically."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data.setdefault("adapters", {})[tuning.adapter] = tuning.to_entry()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
