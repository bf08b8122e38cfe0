"""Autotuning (backends/webgpu/tuning.py), GPU-time profiles (profile.py), measured peaks (peak.py)
and `sdweb generate --profile / --autotune`, on lavapipe or whatever adapter wgpu finds.

The claims: every candidate a shape is tuned over is timed and the fastest is what the op then
runs, with the same result as the rule's choice; choices and peaks are remembered per adapter in
$XDG_CACHE_HOME/sdweb/autotune.json (tests point it at a temporary folder: conftest.py) and reused,
and --autotune starts over; an emulated adapter's entry says so; the budget stops tuning (the rule
decides the rest); a profile's dispatches are exactly the ones recorded and their FLOPs the ops'
own; timing trials stay out of a running profile; peaks are positive numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdweb.backends import numpy as nb
from sdweb.cli import main

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

from sdweb.backends.webgpu import peak, profile, tuning  # noqa: E402
from sdweb.backends.webgpu.ops import gemm  # noqa: E402
from gpu_checks import check  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk"


@pytest.fixture
def ctx():
    ctx = webgpu.context()
    yield ctx
    ctx.set_tuning(None)


def linear_case(seed=0, M=70, K=64, N=48):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) / 8).astype(np.float32)
    return x, w


def test_a_shape_is_tuned_once_over_every_candidate(ctx):
    x, w = linear_case()
    told = []
    t = tuning.Tuning(ctx, budget_s=60, report=told.append)
    ctx.set_tuning(t)
    tx, tw = webgpu.tensor(x), webgpu.weight(w)
    got = webgpu.linear(tx, tw, act="silu")
    check(got, nb.linear(x, w, None, "silu"))
    (name, choice), = t.choices.items()
    assert name.startswith("linear|70,48,64,silu,false,false,f32")
    assert set(choice["ms"]) == {c.name for c in gemm.candidates(ctx, 70, 48, 64, "f32")}
    assert choice["name"] == min(choice["ms"], key=choice["ms"].get)
    assert told == [{"tuned": 1, "seconds": t.spent_s, "budget": 60, "op": "linear", "choice": choice["name"]}]
    assert t.peaks["f32_gflops"] > 0 and t.emulated == tuning.is_emulated(ctx)
    before = ctx.dispatches
    webgpu.linear(tx, tw, act="silu")  # remembered: no trials
    assert ctx.dispatches - before == 1 and t.tuned == 1
    assert ctx.plans[("linear", (70, 48, 64, "silu", False, False, "f32", "f32"))] == gemm.Gemm(*choice["config"])


def test_no_budget_leaves_the_rule(ctx):
    x, w = linear_case(1, M=33)
    t = tuning.Tuning(ctx, budget_s=0)
    ctx.set_tuning(t)
    before = ctx.dispatches
    check(webgpu.linear(webgpu.tensor(x), webgpu.weight(w)), nb.linear(x, w))
    assert ctx.dispatches - before == 1 and not t.choices and t.skipped == 1


def test_cache_file(tmp_path, ctx):
    path = tmp_path / "autotune.json"
    t = tuning.Tuning(ctx, {"version": 1, "peaks": {"f32_gflops": 1.0}, "choices": {
        "linear|1,2": {"config": [16, 16, 4, 4, 16, 1], "name": "v3 64x64", "rule": "v3 64x64", "ms": {}}}})
    tuning.save(path, t)
    other = json.loads(path.read_text())
    other["adapters"]["another GPU"] = {"version": 1, "choices": {}}
    path.write_text(json.dumps(other))
    tuning.save(path, t)  # other adapters' entries are kept
    data = json.loads(path.read_text())
    assert set(data["adapters"]) == {tuning.adapter_name(ctx), "another GPU"}
    entry = tuning.load(path, tuning.adapter_name(ctx))
    assert entry["choices"]["linear|1,2"]["config"] == [16, 16, 4, 4, 16, 1]
    assert entry["emulated"] == tuning.is_emulated(ctx)
    assert tuning.load(path, "no such GPU") is None
    path.write_text("{not json")
    assert tuning.load(path, tuning.adapter_name(ctx)) is None
    assert tuning.cache_path().parent.parent == __import__("pathlib").Path(__import__("os").environ["XDG_CACHE_HOME"])


def test_emulators_are_named():
    class Fake:
        def __init__(self, **limits):
            self.limits = limits
    assert tuning.is_emulated(Fake(adapter="llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"))
    assert tuning.is_emulated(Fake(adapter="google swiftshader", adapterType="cpu"))
    assert not tuning.is_emulated(Fake(adapter="NVIDIA GeForce RTX 4090 (Vulkan)", adapterType="DiscreteGPU"))


def test_profile_counts_and_flops(ctx):
    x, w = linear_case(2)
    prof = profile.Profiler(ctx)
    if not prof.start():
        pytest.skip("this adapter has no timestamp-query")
    try:
        prof.lap()
        tx = webgpu.tensor(x)
        y = webgpu.linear(tx, webgpu.weight(w), act="gelu")
        webgpu.group_norm(webgpu.tensor(np.ones((1, 4, 3, 3), np.float32)), 2, webgpu.weight(np.ones(4, np.float32)),
                          webgpu.weight(np.zeros(4, np.float32)), 1e-6)
        # a timing trial while the profile runs is left out of its lap
        profile.measure(ctx, lambda: webgpu.linear(tx, webgpu.weight(w)), reps=2)
        lap = prof.lap()
    finally:
        prof.stop()
    assert set(lap) == {"linear", "group_norm"}
    assert lap["linear"].count == 1 and lap["linear"].flop == 2 * 70 * 48 * 64 and lap["linear"].ms > 0
    assert lap["group_norm"].count == 2  # statistics and apply
    check(y, nb.linear(x, w, None, "gelu"))
    rows = profile.rows([lap], {"f32_gflops": 10.0, "copy_gbps": 1.0})
    assert rows[-1]["op"] == "total" and rows[-1]["dispatches"] == 3
    lin = next(r for r in rows if r["op"] == "linear")
    assert lin["percent_of_peak"] == pytest.approx(100 * lin["gflops"] / 10.0)


def test_peaks(ctx):
    p = peak.measure_peaks(ctx, target_s=0.002, max_s=0.5)
    assert p["f32_gflops"] > 0 and p["copy_gbps"] > 0
    assert (p["f16_gflops"] is not None) == ("shader-f16" in ctx.features)


@pytest.mark.slow
def test_cli_profile_and_autotune(sd1_tiny, tmp_path, capsys, user_cache, monkeypatch):
    """--profile prints GPU time per op kind for each stage; the first run tunes (and says so) and
    remembers; a second run reuses; --autotune starts over. (A 3 s budget, of which the peaks take some.)"""
    monkeypatch.setattr(tuning, "BUDGET_S", 3.0)
    cache = user_cache / "sdweb" / "autotune.json"
    cache.unlink(missing_ok=True)
    args = ["generate", "--prompt", PROMPT, "--steps", "2", "--seed", "5", "--model", str(sd1_tiny), "--width", "64",
            "--height", "64", "--backend", "webgpu", "-o", str(tmp_path / "a.png")]
    assert main(args + ["--profile"]) == 0
    err = capsys.readouterr().err
    assert "tuning kernels for this GPU" in err and "autotuning: " in err
    if "timestamp-query" in webgpu.context().features:
        for title in ("text encoder (f16 compute)", "UNet, per step", "VAE decode (f32 compute)", "% of peak"):
            assert title in err
        assert "conv2d" in err and "attention" in err
    name = tuning.adapter_name(webgpu.context())
    first = json.loads(cache.read_text())["adapters"][name]
    assert first["choices"] and first["peaks"]["f32_gflops"] > 0 and first["emulated"] == tuning.is_emulated(
        webgpu.context())
    assert main(args) == 0  # remembered shapes are not timed again (new ones may be: the budget left them)
    capsys.readouterr()
    second = json.loads(cache.read_text())["adapters"][name]
    assert second["peaks"] == first["peaks"]
    assert all(second["choices"][k] == v for k, v in first["choices"].items())
    assert main(args + ["--autotune"]) == 0
    assert "tuning kernels for this GPU" in capsys.readouterr().err
    third = json.loads(cache.read_text())["adapters"][name]
    assert third["peaks"] != first["peaks"]  # measured again
    assert any(third["choices"].get(k, v)["ms"] != v["ms"] for k, v in first["choices"].items())
