"""backends/bridges/counting.py: the device bridge without a device, used to plan GPU memory and
measure host overhead of the real backend code path for models too big to run here.

The claims tested: a run over it allocates exactly what the same run allocates over the real bridge
(lavapipe; skipped without an adapter), checked step by step; its plan depends on shapes only (seed
and prompt change nothing) and is the same run after run; the weight bytes it counts are what the
checkpoint holds (read with the `safetensors` package); one stage's weights and pool are gone before
the next stage's weights arrive; limits too small for a model give the backend's one-line error; the
bridge rejects what a real device would."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest

from sdweb.backends import webgpu
from sdweb.errors import SdwebError
from sdweb.backends.bridges.counting import ADAPTERS, BridgeError, CountingBridge, counting
from sdweb.model import ModelFolder
from sdweb.pipeline import Pipeline

PROMPT = "a lighthouse on a cliff at dusk"
RUN = dict(steps=2, guidance=7.5, width=64, height=64, scheduler="euler", num_images=2)


def trace(folder, ctx, precision="fp16", prompt=PROMPT, seed=3):
    """Run the pipeline on the context in use; -> the context's byte counts and dispatch count
    at every progress report, and the final peak."""
    gc.collect()
    rows = []

    def progress(p):
        rows.append((p.stage, p.step, p.component, ctx.bytes_in_use, ctx.bytes_pooled, ctx.bytes_weights,
                     ctx.peak_bytes, ctx.dispatches))

    Pipeline(ModelFolder(folder), webgpu, precision=precision).generate(prompt, seed=seed, progress=progress, **RUN)
    gc.collect()
    return rows, ctx.peak_bytes


def test_same_accounting_as_the_real_bridge(sd1_tiny):
    if not webgpu.available():
        pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)")
    real = webgpu.context().bridge
    with webgpu.using(real) as ctx:
        before = real.dispatches
        want, want_peak = trace(sd1_tiny, ctx)
        real_dispatches = real.dispatches - before
    bridge = CountingBridge(real.limits())  # the same limits: alignment decides views vs copies
    with counting(bridge) as ctx:
        got, got_peak = trace(sd1_tiny, ctx)
    assert got == want
    assert got_peak == want_peak > 0
    assert bridge.dispatches == real_dispatches == want[-1][-1]
    # Nothing waits in the graveyard at a peak; the bridge makes a buffer at least 16 bytes (as
    # WgpuBridge does) where the context counts a tiny weight's own bytes.
    assert 0 <= bridge.peak_bytes - got_peak < 256


@pytest.mark.parametrize("adapter", ["desktop", "webgpu-default"])
def test_plan_depends_on_shapes_only(sd2_tiny, adapter):
    runs = []
    for prompt, seed in ((PROMPT, 3), ("a red car", 99), (PROMPT, 3)):
        bridge = CountingBridge(adapter)
        with counting(bridge) as ctx:
            rows, peak = trace(sd2_tiny, ctx, "bf16", prompt, seed)
        runs.append((rows, peak, bridge.peak_bytes, dict(bridge.dispatch_counts), bridge.bytes_created,
                     bridge.bind_group_misses, bridge.submits))
    assert runs[0] == runs[1] == runs[2]
    assert sum(runs[0][3].values()) == runs[0][0][-1][-1]  # per-pipeline counts add up to the total


def test_second_step_reuses_buffers_and_bind_groups(sd1_tiny):
    """The pool hands the second UNet step the first step's buffers, so the real bridge's bind-group
    cache would serve it whole (webgpu/device.py's claim). The first step also projects the context
    for every cross-attention (unet.CrossAttention keeps it): the second does not."""
    bridge = CountingBridge()
    marks, entries = [], []
    with counting(bridge) as ctx:
        Pipeline(ModelFolder(sd1_tiny), webgpu).generate(
            PROMPT, **RUN, progress=lambda p: p.stage == "unet" and (marks.append(
                (bridge.bind_group_misses, bridge.buffers_created, ctx.dispatches)), entries.append(
                bridge.counts_by_entry())))
    (m0, b0, d0), (m1, b1, d1), (m2, b2, d2) = marks
    assert d1 - d0 > d2 - d1 > 100
    assert m1 - m0 > 0 and m2 - m1 == 0
    assert b2 - b1 == 0
    step = entries[2] - entries[1]
    # what fusion left: no residual add, time-embedding add or transpose of its own; group norm in two
    assert not {"elementwise.add", "elementwise.add_channel", "elementwise.transpose_tiles"} & set(step)
    assert step["norm.gn_stats"] == step["norm.gn_apply"] + step["norm.gn_apply_tokens"]
    assert step["norm.gn_apply_tokens"] == step["attention.main"] // 2  # one per transformer, two attentions each
    assert (d1 - d0) - (d2 - d1) == step["attention.main"] // 2  # the context's K|V projections, kept


def test_weight_bytes_are_the_checkpoints(sd1_tiny):
    from safetensors import safe_open

    path = sd1_tiny / "unet" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(path), "np") as f:
        sizes = [math.prod(f.get_slice(k).get_shape()) for k in f.keys()]
    # held bytes per tensor: f32, or two halves per u32 (an odd count padded by one half)
    for precision, held in (("fp32", [4 * n for n in sizes]), ("fp16", [2 * (n + n % 2) for n in sizes])):
        with counting() as ctx:
            unet = Pipeline(ModelFolder(sd1_tiny), webgpu, precision=precision).load("unet")
            assert ctx.bytes_weights == sum(held)
            # the file's f32 bytes go to the device as they are (fp16 is made there by convert.wgsl)
            assert ctx.bridge.bytes_written == 4 * sum(sizes)
            assert ctx.bridge.bytes_live == sum(max(16, n) for n in held)  # buffers of >= 16 bytes, as WgpuBridge's
            del unet


def test_stages_do_not_overlap_on_the_device(sd1_tiny):
    """When a stage starts, the device holds its weights, the backend's 16-byte placeholders and, for
    the UNet, the prompt's context: nothing of the stage before, neither weights nor idle pool buffers."""
    alone = {}
    for component in ("unet", "vae"):  # each component loaded by itself
        with counting() as ctx:
            model = Pipeline(ModelFolder(sd1_tiny), webgpu, precision="fp16").load(component)
            alone[component] = (ctx.bytes_weights, ctx.bridge.bytes_live)
            del model
    seen = {}

    def progress(p):
        if p.stage in ("unet", "vae") and p.step == 0:
            dummies = 16 * len(ctx._dummies)
            seen[p.stage] = (ctx.bytes_weights - dummies, ctx.bridge.bytes_live - dummies, ctx.bytes_pooled,
                             ctx.bytes_in_use - ctx.bytes_weights)

    with counting() as ctx:
        Pipeline(ModelFolder(sd1_tiny), webgpu, precision="fp16").generate(PROMPT, progress=progress, **RUN)
    # the context (2 images x [uncond, cond], 77 tokens, cross_attention_dim 32) in f16 (the desktop
    # adapter has shader-f16) is 19,712 bytes, in a pool buffer of 20,480 (size classes step by 2 KiB
    # between 16 and 32 KiB)
    assert 2 * 4 * 77 * 32 == 19712
    w, live = alone["unet"]
    assert seen["unet"] == (w, live + 20480, 0, 20480)
    assert seen["vae"] == alone["vae"] + (0, 0)


def test_too_small_limits_name_the_tensor(sd1_tiny):
    with counting({"maxStorageBufferBindingSize": 1 << 16}):
        with pytest.raises(webgpu.GPULimitError, match=r"text_encoder .*token_embedding.* maxStorageBufferBindingSize"):
            Pipeline(ModelFolder(sd1_tiny), webgpu).generate(PROMPT, **RUN)


def test_adapter_limits_reach_the_backend():
    with counting("webgpu-default") as ctx:
        assert ctx.max_binding == 1 << 27 and ctx.offset_align == 256 and "shader-f16" not in ctx.features
    with counting({"minStorageBufferOffsetAlignment": 32}) as ctx:
        assert ctx.offset_align == 32 and ctx.max_binding == ADAPTERS["desktop"]["maxStorageBufferBindingSize"]
    with pytest.raises(SdwebError, match="unknown adapter"):
        CountingBridge("gtx")


def test_reads_zeros_and_counts_traffic():
    with counting() as ctx:
        x = webgpu.tensor(np.ones((3, 5), np.float32))
        y = webgpu.numpy(webgpu.add(x, x))
        assert y.shape == (3, 5) and not y.any()
        b = ctx.bridge
        assert (b.writes, b.bytes_written, b.reads, b.bytes_read) == (1, 60, 1, 60)
        assert b.counts_by_entry() == {"elementwise.add": 1} and b.submits == 1


def test_rejects_what_a_device_would():
    b = CountingBridge("webgpu-default")
    buf = b.create_buffer(1024)
    pid = b.pipeline("k", "@compute @workgroup_size(1) fn main() {}", "main")
    u = bytes(16)
    b.dispatch(pid, [(buf, 256, 512)], u, (1, 1, 1))
    for buffers, groups, match in (
        ([(buf, 512, 1024)], (1, 1, 1), "past its 1024 bytes"),
        ([(buf, 32, 64)], (1, 1, 1), "minStorageBufferOffsetAlignment"),
        ([(buf, 0, 64)] * 9, (1, 1, 1), "maxStorageBuffersPerShaderStage"),
        ([(buf, 0, 64)], (65536, 1, 1), "maxComputeWorkgroupsPerDimension"),
        ([(99, 0, 64)], (1, 1, 1), "does not exist"),
    ):
        with pytest.raises(BridgeError, match=match):
            b.dispatch(pid, buffers, u, groups)
    with pytest.raises(BridgeError, match="no entry point"):
        b.pipeline("k2", "fn other() {}", "main")
    with pytest.raises(BridgeError, match="maxBufferSize"):
        b.create_buffer((1 << 28) + 1)
    b.destroy_buffer(buf)
    assert b.bytes_live == 0 and b.peak_bytes == 1024
    with pytest.raises(BridgeError, match="does not exist"):
        b.read_buffer(buf, 0, 4)
