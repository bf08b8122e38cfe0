"""shaders/matmul.wgsl (through webgpu/ops/matmul.py, its tiles from ops/gemm.py) against
backends/numpy.py `linear`, on lavapipe or whatever adapter wgpu finds: every tile configuration the
rule and the tuner choose from (8x8 per invocation in three tile shapes, 4x4, split-K), every fused
activation, the fused residual, tokens stored as an image (conv2d.wgsl's token entry), every weight
dtype, f16 compute, batched inputs, sizes that are not multiples of any tile (M = 77, K = 40, N = 33
...), K % 4 != 0, fused weights, and the benchmark ladder's older kernels (scripts/kernel_ladder.py).

Bound: max |gpu - ref| <= 1e-4 x max |ref| in f32 for every weight dtype (f16 and bf16 weights are
unpacked exactly, as numpy.py upcasts them); f16 compute as gpu_checks.py says.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdweb.backends import numpy as nb
from sdweb.errors import SdwebError

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

from sdweb.backends.webgpu.ops import gemm  # noqa: E402  (imports wgpu-dependent modules)
from sdweb.backends.webgpu.ops import matmul as mm  # noqa: E402
from gpu_checks import as_computed, check, computing, held, tol  # noqa: E402

ACTS = [None, "silu", "gelu", "quick_gelu", "geglu"]


@pytest.fixture(scope="module")
def ctx():
    return webgpu.context()


def case(M, K, N, act=None, dtype="f32", bias=True, seed=0):
    """(x, held w, held b or None) for a linear layer with N outputs (2N weight rows under geglu)."""
    rng = np.random.default_rng(seed)
    rows = 2 * N if act == "geglu" else N
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = held(rng.standard_normal((rows, K)) / np.sqrt(K), dtype)
    b = held(rng.standard_normal(rows), dtype) if bias else None
    return x, w, b


def run_linear(ctx, x, w, b, act=None, residual=None, config=None):
    return mm.linear(ctx, webgpu.tensor(x), webgpu.weight(w), None if b is None else webgpu.weight(b), act,
                     None if residual is None else webgpu.tensor(residual), config=config)


@pytest.mark.parametrize("t", ["f32", "f16"])
def test_every_configuration(ctx, t):
    """Each tile configuration of the rule and the tuner, on M = 130, N = 70 (straddling every tile),
    K = 300 (split-K slices of 2 and 4, the last one short), with geglu and a residual."""
    x, w, b = case(130, 300, 35, "geglu", seed=1)
    r = np.random.default_rng(2).standard_normal((130, 35)).astype(np.float32)
    with computing(ctx, t):
        ref = nb.linear(as_computed(x, t), w, b, "geglu") + as_computed(r, t)
        configs = gemm.candidates(ctx, 130, 70, 300, t)
        assert {c.split for c in configs} == {1, 2, 4} and {c.tm for c in configs} == {4, 8}
        for c in configs:
            check(run_linear(ctx, x, w, b, "geglu", r, c), ref, tol(t))


@pytest.mark.parametrize("act", ACTS)
def test_every_act(ctx, act):
    x, w, b = case(77, 68, 33, act, seed=3)
    check(run_linear(ctx, x, w, b, act), nb.linear(x, w, b, act))


@pytest.mark.parametrize("M, K, N", [(77, 40, 33), (1, 4, 1), (64, 16, 64), (3, 300, 5), (77, 7, 33), (5, 13, 3)])
def test_shapes(ctx, M, K, N):
    """CLIP's 77 tokens, degenerate and exact-tile sizes, a long K, and K % 4 != 0 (scalar loads)."""
    for act in (None, "geglu"):
        x, w, b = case(M, K, N, act, seed=M)
        check(run_linear(ctx, x, w, b, act), nb.linear(x, w, b, act))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("t", ["f32", "f16"])
def test_weight_dtypes(ctx, dtype, t):
    """Half-size weights read as whole words (two halves per u32; odd element counts pad the last),
    under f32 and f16 compute, against the reference given the same held bits."""
    for K in (40, 13):
        x, w, b = case(77, K, 33, "geglu", dtype, seed=K)
        with computing(ctx, t):
            check(run_linear(ctx, x, w, b, "geglu"), nb.linear(as_computed(x, t), w, b, "geglu"), tol(t))


@pytest.mark.parametrize("act", ACTS)
def test_batched_input_without_bias(ctx, act):
    """x (N, L, Din) and (N, a, L, Din): leading axes fold into M; no bias binding."""
    rng = np.random.default_rng(3)
    rows = 18 if act == "geglu" else 9
    w = (rng.standard_normal((rows, 24)) / 5).astype(np.float32)
    for shape in [(2, 19, 24), (2, 3, 5, 24)]:
        x = rng.standard_normal(shape).astype(np.float32)
        check(mm.linear(ctx, webgpu.tensor(x), webgpu.weight(w), None, act), nb.linear(x, w, None, act))


@pytest.mark.parametrize("act", ["silu", "gelu", "quick_gelu", "geglu"])
def test_activation_tails(ctx, act):
    """Large |pre-activations| (+-80 and beyond): exp's overflow side must give the limits (0, x),
    not NaN."""
    rows = 8 if act == "geglu" else 4
    x = np.array([[1.0], [-1.0], [30.0], [-30.0], [100.0], [-100.0], [0.0]], np.float32)
    w = np.linspace(-3, 3, rows, dtype=np.float32).reshape(rows, 1)
    got = mm.linear(ctx, webgpu.tensor(x), webgpu.weight(w), None, act)
    assert np.isfinite(webgpu.numpy(got)).all()
    with np.errstate(over="ignore"):  # the reference's exp overflows to inf, giving the same limits
        ref = nb.linear(x, w, None, act)
    check(got, ref)


@pytest.mark.parametrize("t", ["f32", "f16"])
@pytest.mark.parametrize("conv1x1", [False, True])
def test_tokens_to_image_with_residual(ctx, t, conv1x1):
    """image=(H, W): (N, H*W, Din) tokens -> (N, Dout, H, W) plus an NCHW residual in one dispatch
    (a spatial transformer's proj_out), with a linear's weight or a 1x1 conv's."""
    rng = np.random.default_rng(4)
    N, H, W, Din, Dout = 2, 5, 7, 12, 10
    x = rng.standard_normal((N, H * W, Din)).astype(np.float32)
    w = (rng.standard_normal((Dout, Din) + ((1, 1) if conv1x1 else ())) / 4).astype(np.float32)
    b = rng.standard_normal(Dout).astype(np.float32)
    r = rng.standard_normal((N, Dout, H, W)).astype(np.float32)
    with computing(ctx, t):
        args = (webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b))
        before = ctx.dispatches
        got = webgpu.linear(*args, residual=webgpu.tensor(r), image=(H, W))
        assert ctx.dispatches - before == 1
        ref = nb.linear(as_computed(x, t), w, b, residual=as_computed(r, t), image=(H, W))
        assert ref.shape == (N, Dout, H, W)
        check(got, ref, tol(t))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_fused_weights(ctx, dtype):
    """fuse_weights: the parts' rows in one weight, copied on the GPU whatever the parts' sizes (odd
    element counts start 16-bit parts inside a word); one GEMM gives the three projections."""
    rng = np.random.default_rng(5)
    parts = [held(rng.standard_normal((rows, 5)), dtype) for rows in (3, 4, 5)]
    fused = webgpu.fuse_weights([webgpu.weight(p) for p in parts])
    assert fused.shape == (12, 5) and fused.dtype == dtype
    x = rng.standard_normal((6, 5)).astype(np.float32)
    ref = nb.linear(x, nb.fuse_weights(parts))
    check(webgpu.linear(webgpu.tensor(x), fused), ref)
    np.testing.assert_array_equal(ref, np.concatenate([nb.linear(x, p) for p in parts], axis=1))
    with pytest.raises(SdwebError, match="differ"):
        webgpu.fuse_weights([webgpu.weight(parts[0]), webgpu.weight(rng.standard_normal((2, 4)).astype(np.float32))])


def test_rule(ctx):
    """The rule (ops/gemm.py): 8x8 per invocation where its tiles fill a GPU, in the shape that pads
    least; 4x4 where they do not; split-K only for GEMMs too big to leave units idle."""
    assert gemm.pick(ctx, 8192, 1280, 320, "f32").tm == 8  # SD's 64x64-level feed-forward
    assert gemm.pick(ctx, 320, 8192, 2880, "f32").bm == 64  # conv, 320 channels: 64-row tiles pad none
    assert gemm.pick(ctx, 2048, 640, 5760, "f32") == gemm.config(ctx, 16, 16, 4, 4, "f32")  # 32x32 level
    split = gemm.pick(ctx, 1280, 128, 11520, "f32")  # an 8x8-latent conv: 40 tiles of 64x64
    assert split.split == 4 and split.tiles(1280, 128) * split.split >= gemm.MIN_TILES
    assert gemm.pick(ctx, 2, 1280, 1280, "f32").split == 1  # a time embedding's projection


def test_errors(ctx):
    x, w, b = case(4, 8, 6)
    tx, tw, tb = webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b)
    with pytest.raises(SdwebError, match="does not match weight"):
        mm.linear(ctx, webgpu.tensor(np.zeros((4, 9), np.float32)), tw)
    with pytest.raises(SdwebError, match="bias"):
        mm.linear(ctx, tx, tw, webgpu.weight(np.zeros(5, np.float32)))
    with pytest.raises(SdwebError, match="activation"):
        mm.linear(ctx, tx, tw, tb, "tanh")
    with pytest.raises(SdwebError, match="mixed dtypes"):
        mm.linear(ctx, tx, tw, webgpu.weight(b.astype(np.float16)))
    with pytest.raises(SdwebError, match="residual"):
        mm.linear(ctx, tx, tw, tb, residual=webgpu.tensor(np.zeros((4, 5), np.float32)))
    with computing(ctx, "f16"):
        half = webgpu.tensor(np.zeros((4, 6), np.float32))
    with pytest.raises(SdwebError, match="f16 tensor"):
        mm.linear(ctx, tx, tw, tb, residual=half)


# --- the ladder (scripts/kernel_ladder.py): the kernels production ran before ------------------------

@pytest.mark.parametrize("act", [None, "geglu"])
@pytest.mark.parametrize("version", range(5))
def test_ladder(ctx, kernel_ladder, version, act):
    """Each older rung with bias and a fused activation, f16 weights: M = 130, N = 70 straddle the 16,
    64 and 128 tiles; K = 68 leaves a 4-wide last K tile."""
    x, w, b = case(130, 68, 35 if act else 70, act, "f16" if version % 2 else "f32")
    check(kernel_ladder.linear(ctx, webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b), act, version),
          nb.linear(x, w, b, act))
    if version >= 3:
        x, w, b = case(8, 7, 8)
        with pytest.raises(SdwebError, match="K % 4"):
            kernel_ladder.linear(ctx, webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b), None, version)
