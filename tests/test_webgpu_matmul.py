"""shaders/matmul.wgsl (through webgpu/ops/matmul.py) against backends/numpy.py `linear`, on lavapipe
or whatever adapter wgpu finds: both kernels production picks and every rung of the benchmark's kernel
ladder (scripts/matmul_ladder.py, which includes the production shader), every fused activation, every
weight dtype, batched inputs, and sizes that are not multiples of any tile (M = 77, K = 40, N = 33 ...).

Bound: max |gpu - ref| <= 1e-4 x max |ref| for every dtype. f16 and bf16 weights are unpacked exactly in
the shader, as numpy.py upcasts them, so given the same held weights both sides multiply the same f32
numbers and differ only by f32 summation order (measured ~3e-7 relative here).
"""

from __future__ import annotations

import numpy as np
import pytest

from sdweb.backends import numpy as nb
from sdweb.errors import SdwebError

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

from sdweb.backends.webgpu.ops import matmul as mm  # noqa: E402  (imports wgpu-dependent modules)
from gpu_checks import TOL, check, held  # noqa: E402

ACTS = [None, "silu", "gelu", "quick_gelu", "geglu"]
LADDER = range(5)  # scripts/matmul_ladder.py VERSIONS: 2 and 3 are production's kernels


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


def run_linear(ctx, x, w, b, act, ladder=None, version=None):
    """Production's linear, or with `ladder` the ladder's rung `version`."""
    args = (ctx, webgpu.tensor(x), webgpu.weight(w), None if b is None else webgpu.weight(b), act)
    return mm.linear(*args) if ladder is None else ladder.linear(*args, version=version)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("version", LADDER)
def test_ladder_every_act(ctx, matmul_ladder, version, act):
    """Each kernel of the ladder, with bias and each fused activation. M = 130, N = 70 straddle
    the 16, 64 and 128 tiles (and geglu's 32/64-column ones); K = 68 leaves a 4-wide last K tile."""
    x, w, b = case(130, 68, 70, act)
    check(run_linear(ctx, x, w, b, act, matmul_ladder, version), nb.linear(x, w, b, act))


@pytest.mark.parametrize("M, K, N", [(77, 40, 33), (1, 4, 1), (64, 16, 64), (3, 300, 5)])
def test_default_shapes(ctx, M, K, N):
    """The default kernel on CLIP's 77 tokens, degenerate and exact-tile sizes, and a long K."""
    for act in (None, "geglu"):
        x, w, b = case(M, K, N, act, seed=M)
        check(run_linear(ctx, x, w, b, act), nb.linear(x, w, b, act))


@pytest.mark.parametrize("version", [0, 1, 2, None])
def test_odd_inner_size(ctx, matmul_ladder, version):
    """K not a multiple of 4: the scalar kernels; production falls back to matmul_tiled."""
    assert mm.pick(7) == mm.TILED and mm.pick(8) == mm.VEC4
    for M, K, N in [(77, 7, 33), (5, 13, 3)]:
        x, w, b = case(M, K, N, "gelu", seed=K)
        ladder = None if version is None else matmul_ladder
        check(run_linear(ctx, x, w, b, "gelu", ladder, version), nb.linear(x, w, b, "gelu"))


def test_vec4_needs_k_multiple_of_4(ctx, matmul_ladder):
    x, w, b = case(8, 7, 8)
    for version in (3, 4):
        with pytest.raises(SdwebError, match="K % 4"):
            run_linear(ctx, x, w, b, None, matmul_ladder, version)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("version", LADDER)
def test_weight_dtypes(ctx, matmul_ladder, version, dtype):
    """Half-size weights through W_LOAD in every kernel, against the reference given the same held
    bits (odd element counts exercise the zero half padding the last u32)."""
    x, w, b = case(77, 40, 33, None, dtype)
    check(run_linear(ctx, x, w, b, None, matmul_ladder, version), nb.linear(x, w, b))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_weight_dtypes_geglu(ctx, dtype):
    x, w, b = case(70, 36, 45, "geglu", dtype)
    check(run_linear(ctx, x, w, b, "geglu"), nb.linear(x, w, b, "geglu"))


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


def test_errors(ctx, matmul_ladder):
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
    with pytest.raises(SdwebError, match="version 7"):
        matmul_ladder.linear(ctx, tx, tw, tb, version=7)


def test_backend_linear(ctx):
    """The models' entry point, webgpu.linear, runs this kernel (production's choice)."""
    x, w, b = case(2 * 7, 40, 24, "geglu", "bf16")
    x = x.reshape(2, 7, 40)
    check(webgpu.linear(webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b), "geglu"), nb.linear(x, w, b, "geglu"))
