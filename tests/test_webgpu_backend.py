"""The WebGPU backend's infrastructure and small ops (norm.wgsl, elementwise.wgsl) against
backends/numpy.py, on lavapipe or whatever adapter wgpu finds.

Shapes are random-ish and deliberately not multiples of the workgroup sizes (256 flat, 16x16
transpose tiles, vec4s). The norms run with and without subgroups, in f32 and f16 compute. Bounds:
max |gpu - ref| <= 1e-4 * max |ref| whenever both sides use the same weights (f16 compute: as
gpu_checks.py says). f16 and bf16 weights are unpacked exactly in the shader
(as numpy.py upcasts them), so the same bound holds against the reference given the same held
weights; against the original f32 weights the bound is the weight rounding: 2^-11 relative for f16
(tested at 2e-3 x max|ref|) and 2^-8 for bf16 (tested at 1.6e-2 x max|ref|).
"""

from __future__ import annotations

import gc
import math
import re

import numpy as np
import pytest

from sdweb.backends import numpy as nb
from sdweb.errors import SdwebError
from gpu_checks import TOL, as_computed, check, computing, held, tol  # noqa: E402

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

from sdweb.backends.webgpu import shaders, upload  # noqa: E402
from sdweb.backends.webgpu.device import SUBMIT_EVERY, SUBMIT_FIRST, Context  # noqa: E402

ROUNDING = {"f32": TOL, "f16": 2e-3, "bf16": 1.6e-2}


@pytest.fixture(scope="module")
def ctx():
    return webgpu.context()


def rng(seed=0):
    return np.random.default_rng(seed)


# --- the fused activations -------------------------------------------------------------------------


def exact(op: str, x: np.ndarray) -> np.ndarray:
    """The activation in float64 from its definition (math.erf for GELU)."""
    x = x.astype(np.float64)
    if op == "relu":
        return np.maximum(x, 0)
    if op == "gelu":
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return x / (1 + np.exp(-(1.702 if op == "quick_gelu" else 1.0) * x))


def picked(columns: list[np.ndarray], K: int) -> tuple[np.ndarray, np.ndarray]:
    """x (n, K) holding `columns` first (zeros after) and a weight whose rows pick them out, so
    linear(x, w) is the columns themselves and its fused activation is applied to exactly them.
    K = 4 runs matmul_vec4, an odd K matmul_tiled."""
    x = np.zeros((columns[0].size, K), np.float32)
    w = np.zeros((len(columns), K), np.float32)
    for j, c in enumerate(columns):
        x[:, j], w[j, j] = c, 1.0
    return x, w


@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("op", ["silu", "gelu", "quick_gelu", "relu"])
def test_activations(op, K):
    """Every activation kernels fuse, through linear (both kernels), against numpy.py and the float64
    definition: |error| <= 1e-6 (1 + |x|) (measured 1e-7 on lavapipe; numpy.py's own error is the
    same), including exp's overflowing side."""
    v = (rng(K).standard_normal(4001) * 4).astype(np.float32)
    v[:6] = [-30.0, 30.0, -9.5, 0.0, -100.0, 100.0]  # exp's tails and GELU's saturation
    x, w = picked([v], K)
    got = webgpu.numpy(webgpu.linear(webgpu.tensor(x), webgpu.weight(w), None, op))[:, 0]
    with np.errstate(over="ignore"):  # the reference's exp overflows to inf, giving the same limits
        check(got, nb.linear(x, w, None, op)[:, 0])
    assert np.all(np.abs(got - exact(op, v)) <= 1e-6 * (1 + np.abs(v)))


@pytest.mark.parametrize("K", [3, 4])
def test_geglu(K):
    """value * gelu(gate) in the GEMM's epilogue, against the float64 definition."""
    a, g = (rng(K + i).standard_normal(3001).astype(np.float32) * 3 for i in range(2))
    x, w = picked([a, g], K)
    got = webgpu.numpy(webgpu.linear(webgpu.tensor(x), webgpu.weight(w), None, "geglu"))[:, 0]
    check(got, nb.linear(x, w, None, "geglu")[:, 0])
    assert np.all(np.abs(got - a * exact("gelu", g)) <= 1e-6 * (1 + np.abs(a * g)))


# --- elementwise ----------------------------------------------------------------------------------

SHAPES = [(1,), (3, 257), (2, 5, 7, 11), (1, 4, 97, 131)]


@pytest.mark.parametrize("shape", SHAPES)
def test_add_mul(shape):
    a, b = (rng(2).standard_normal((2,) + shape).astype(np.float32))
    ta, tb = webgpu.tensor(a), webgpu.tensor(b)
    check(webgpu.add(ta, tb), nb.add(a, b))
    check(webgpu.mul(ta, 0.18215), nb.mul(a, 0.18215))
    check(webgpu.mul(ta, 2.0, -1.0), nb.mul(a, 2.0, -1.0))  # [0, 1] -> [-1, 1]
    np.testing.assert_array_equal(nb.mul(a, 2.0, -1.0), a * np.float32(2) - np.float32(1))
    with pytest.raises(SdwebError, match="shapes"):
        webgpu.add(ta, webgpu.tensor(np.zeros((7,) + shape, np.float32)))


@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_add_mul_tanh_clamp_in_f16(shape):
    """f16 compute: the same kernels on f16 tensors (arithmetic in f32, stored rounded), against the
    reference given the f16-rounded inputs."""
    a, b = (rng(7).standard_normal((2,) + shape) * 3).astype(np.float32)
    a16, b16 = as_computed(a, "f16"), as_computed(b, "f16")
    with computing(webgpu.context(), "f16"):
        ta, tb = webgpu.tensor(a), webgpu.tensor(b)
        check(webgpu.add(ta, tb), nb.add(a16, b16), tol("f16"))
        check(webgpu.mul(ta, 2.0, -1.0), nb.mul(a16, 2.0, -1.0), tol("f16"))
        got = webgpu.tanh_clamp(ta, 3.0)
        assert got.dtype == "f16"
        check(got, nb.tanh_clamp(a16, 3.0), tol("f16"))


@pytest.mark.parametrize("bound", [3.0, 0.5])
def test_tanh_clamp(bound):
    """bound * tanh(x / bound) (TAESD's latent clamp) against numpy.py and the float64 definition,
    tails included (tanh saturates to exactly 1 in f32 beyond |x / bound| = 9.1)."""
    x = (rng(6).standard_normal((2, 4, 33, 9)) * 4).astype(np.float32)
    x.flat[:7] = [0.0, -1e-4, 1e-4, 30.0, -30.0, 1e30, -1e30]
    ref = nb.tanh_clamp(x, bound)
    want = bound * np.tanh(x.astype(np.float64) / bound)
    assert np.abs(ref - want).max() <= 1e-6 * bound
    got = webgpu.numpy(webgpu.tanh_clamp(webgpu.tensor(x), bound))
    check(got, ref)
    assert np.abs(got - want).max() <= 1e-6 * bound


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 3, 7), (2, 33, 19, 17)])
def test_upsample_pad(shape):
    x = rng(3).standard_normal(shape).astype(np.float32)
    t = webgpu.tensor(x)
    w = rng(6).standard_normal((5, shape[1], 3, 3)).astype(np.float32)
    b = rng(7).standard_normal(5).astype(np.float32)
    check(webgpu.upsample_conv2d(t, webgpu.weight(w), webgpu.weight(b)), nb.upsample_conv2d(x, w, b))
    check(webgpu.pad2d(t, 0, 1, 0, 1), nb.pad2d(x, 0, 1, 0, 1))
    check(webgpu.pad2d(t, 2, 0, 3, 1), nb.pad2d(x, 2, 0, 3, 1))


@pytest.mark.parametrize("axis", [0, 1, 3, -1])
def test_concat(axis):
    r = rng(5)
    shapes = [[2, 3, 5, 7], [2, 3, 5, 7], [2, 3, 5, 7]]
    for k, s in enumerate(shapes):
        s[axis] += k * 2  # different sizes along the axis
    xs = [r.standard_normal(s).astype(np.float32) for s in shapes]
    check(webgpu.concat([webgpu.tensor(x) for x in xs], axis=axis), nb.concat(xs, axis=axis))


@pytest.mark.parametrize("N,C,H,W", [(1, 1, 1, 1), (2, 5, 3, 7), (1, 33, 17, 19), (2, 320, 8, 8)])
def test_transposes(N, C, H, W):
    x = rng(7).standard_normal((N, C, H, W)).astype(np.float32)
    t = webgpu.nchw_to_nlc(webgpu.tensor(x))
    check(t, nb.nchw_to_nlc(x))
    check(webgpu.nlc_to_nchw(t, H, W), x)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_embedding_and_slice_tokens(dtype):
    r = rng(8)
    V, D = 37, 13  # V*D odd: the 16-bit table is padded to whole u32s
    table = r.standard_normal((V, D)).astype(np.float32)
    ids = r.integers(0, V, (2, 9))
    ids[0, 0], ids[1, -1] = 0, V - 1
    w = held(table, dtype)
    got = webgpu.embedding(ids, webgpu.weight(w))
    check(got, nb.embedding(ids, w))
    check(got, table[ids], ROUNDING[dtype])
    index = np.array([8, 3])
    check(webgpu.slice_tokens(got, index), nb.slice_tokens(nb.embedding(ids, w), index))
    with pytest.raises(SdwebError, match=r"ids must be in \[0, 37\)"):
        webgpu.embedding(np.array([[V]]), webgpu.weight(w))


# --- normalisation --------------------------------------------------------------------------------


GN_CASES = [
    ((1, 4, 3, 5), 2, None),
    ((2, 12, 9, 13), 3, "silu"),  # S = 117: the scalar apply
    ((1, 8, 70, 70), 4, "silu"),  # rows of 9,800: 39 per invocation of the statistics
    ((2, 6, 77), 3, None),  # (N, C, L)
    ((1, 6, 5, 7), 2, "gelu"),  # every activation fuses the same way (include/activations.wgsl)
    ((1, 6, 5, 7), 3, "quick_gelu"),
]


def gn_case(shape, dtype, seed=9):
    r = rng(seed)
    x = (r.standard_normal(shape) * 2 + 3).astype(np.float32)
    C = shape[1]
    weight = (1 + 0.5 * r.standard_normal(C)).astype(np.float32)
    bias = r.standard_normal(C).astype(np.float32)
    return x, weight, bias, held(weight, dtype), held(bias, dtype)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape,groups,act", GN_CASES)
def test_group_norm(dtype, shape, groups, act):
    x, weight, bias, w, b = gn_case(shape, dtype)
    got = webgpu.group_norm(webgpu.tensor(x), groups, webgpu.weight(w), webgpu.weight(b), 1e-6, act)
    check(got, nb.group_norm(x, groups, w, b, 1e-6, act))
    check(got, nb.group_norm(x, groups, weight, bias, 1e-6, act), ROUNDING[dtype])


@pytest.mark.parametrize("subgroups", [True, False])
@pytest.mark.parametrize("t", ["f32", "f16"])
def test_norms_subgroups_and_f16(t, subgroups):
    """The statistics' sums through subgroups (where the adapter has them) and through workgroup
    memory alone, in f32 and f16 compute; group norm stored as tokens (the transformer's input,
    (N, H*W, C) through a 16x16 tile) and as an image, layer norm on rows of 1280."""
    ctx = webgpu.context()
    with computing(ctx, t, subgroups):
        assert ctx.subgroups == (subgroups and "subgroups" in ctx.features)
        for (shape, groups, act), tokens in zip(GN_CASES[:3], (True, False, True)):
            x, _, _, w, b = gn_case(shape, "f16", seed=shape[1])
            got = webgpu.group_norm(webgpu.tensor(x), groups, webgpu.weight(w), webgpu.weight(b), 1e-6, act, tokens)
            check(got, nb.group_norm(as_computed(x, t), groups, w, b, 1e-6, act, tokens), tol(t))
        x = (rng(12).standard_normal((3, 5, 1280)) + 1).astype(np.float32)
        g, b = (1 + rng(13).standard_normal(1280)).astype(np.float32), rng(14).standard_normal(1280).astype(np.float32)
        got = webgpu.layer_norm(webgpu.tensor(x), webgpu.weight(g), webgpu.weight(b), 1e-5)
        check(got, nb.layer_norm(as_computed(x, t), g, b, 1e-5), tol(t))


def test_group_norm_large_mean():
    """One-pass statistics shifted by the row's first element: a mean of 500 with a spread of 0.01
    would lose the variance to cancellation in a plain one-pass sum of squares. Against float64 (the
    f32 reference itself is off by 1.4e-3 x max here)."""
    x = (500 + 0.01 * rng(10).standard_normal((1, 4, 50, 90))).astype(np.float32)
    gamma, beta = np.ones(4, np.float32), np.zeros(4, np.float32)
    got = webgpu.group_norm(webgpu.tensor(x), 2, webgpu.weight(gamma), webgpu.weight(beta), 1e-6)
    x64 = x.astype(np.float64).reshape(2, -1)
    exact = ((x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-6)).reshape(x.shape)
    check(got, exact, 3e-4)  # f32 rounding of x - 500 itself is ~3e-5 of 0.01


def test_group_norm_ladder(kernel_ladder):
    """The three-dispatch group norm production ran before (scripts/ladder/group_norm.wgsl)."""
    ctx = webgpu.context()
    x, _, _, w, b = gn_case((1, 8, 70, 70), "f16")
    got = kernel_ladder.group_norm_v1(ctx, webgpu.tensor(x), 4, webgpu.weight(w), webgpu.weight(b), 1e-6, "silu")
    check(got, nb.group_norm(x, 4, w, b, 1e-6, "silu"))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 77, 32), (3, 5, 1280), (300, 129)])
def test_layer_norm(dtype, shape):
    r = rng(11)
    x = (r.standard_normal(shape) + 1).astype(np.float32)
    D = shape[-1]
    gamma = (1 + 0.5 * r.standard_normal(D)).astype(np.float32)
    beta = r.standard_normal(D).astype(np.float32)
    g, b = held(gamma, dtype), held(beta, dtype)
    got = webgpu.layer_norm(webgpu.tensor(x), webgpu.weight(g), webgpu.weight(b), 1e-5)
    check(got, nb.layer_norm(x, g, b, 1e-5))
    check(got, nb.layer_norm(x, gamma, beta, 1e-5), ROUNDING[dtype])


def test_mixed_weight_dtypes_are_refused():
    x = webgpu.tensor(np.ones((2, 4), np.float32))
    with pytest.raises(SdwebError, match="mixed dtypes"):
        webgpu.layer_norm(x, webgpu.weight(np.ones(4, np.float32)), webgpu.weight(np.ones(4, np.float16)), 1e-5)


# --- infrastructure -------------------------------------------------------------------------------


def test_w_load_substitution():
    src = "let a = W_LOAD(w, (i + f(j, k)) * 2u); let t: array<W_TYPE>;"
    assert shaders.expand_w_load(src, "f32") == "let a = (w[(i + f(j, k)) * 2u]); let t: array<W_TYPE>;"
    bf16 = shaders.source("elementwise", w_dtype="bf16")
    assert "array<u32>" in bf16 and "W_LOAD(" not in bf16 and "<< 16u" in bf16
    f16 = shaders.source("elementwise", w_dtype="f16")
    assert "unpack2x16float(gtable[(gids[r] * pgt.d + j) >> 1u])" in f16


def test_includes_and_constants(tmp_path, monkeypatch):
    """Each shared piece is included once, from the shaders folder, and its constants take the
    caller's values over the @defaults (the ones of an included file too)."""
    norm = shaders.source("norm", {"ACT": "2u"})
    assert not re.search(r"^\s*#include", norm, re.M)
    assert norm.count("fn flat_index(") == norm.count("fn gelu(") == 1
    assert "const ACT_KIND: u32 = 2u;" in norm
    assert "const ACT_KIND: u32 = 0u;" in shaders.source("matmul")  # activations.wgsl's default
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "x.wgsl").write_text("// @defaults N=3u\nconst X: u32 = N;\n")
    (tmp_path / "b.wgsl").write_text('#include "include/x.wgsl"\nfn b() {}\n')
    (tmp_path / "a.wgsl").write_text('#include "include/x.wgsl"\n#include "b.wgsl"\nfn a() {}\n')
    (tmp_path / "bad.wgsl").write_text('#include "include/missing.wgsl"\n')
    monkeypatch.setenv("SDWEB_SHADERS", str(tmp_path))
    a = shaders.source("a", {"N": "5u"})
    assert a.count("const X: u32 = 5u;") == 1 and "fn b() {}" in a and "fn a() {}" in a
    with pytest.raises(SdwebError, match="shader include/missing.wgsl not found"):
        shaders.source("bad")


def test_pool_reuses_buffers_and_counts_bytes(ctx):
    gc.collect()
    webgpu.numpy(webgpu.tensor(np.zeros(1, np.float32)))  # settle pending work
    before = ctx.bytes_in_use
    t = ctx.empty((3, 1000))
    bid, size = t.buffer, t._buf.size
    assert size >= 12000 and ctx.bytes_in_use == before + size
    del t
    assert ctx.bytes_in_use == before
    u = ctx.empty((3, 999))  # same size class: the same buffer comes back
    assert u.buffer == bid
    views = [ctx.view(u, (999,), k * 999) for k in range(3)]  # views keep the buffer alive
    del u
    assert ctx.bytes_in_use == before + size
    del views
    assert ctx.bytes_in_use == before
    assert ctx.peak_bytes >= ctx.bytes_reserved >= before + size


def test_weights_count_and_free(ctx):
    gc.collect()
    before = ctx.bytes_in_use
    w = webgpu.weight(np.ones((3, 5), np.float16))  # 15 halves -> 8 u32s
    assert (w.dtype, w.shape, w.nbytes) == ("f16", (3, 5), 32)
    assert ctx.bytes_in_use == before + 32
    del w
    gc.collect()
    assert ctx.bytes_in_use == before


def test_pool_is_trimmed_after_a_model_is_dropped(ctx):
    gc.collect()
    w = webgpu.weight(np.ones(8, np.float32))
    t = ctx.empty((5, 4099))
    del t
    assert ctx.bytes_pooled > 0
    del w  # as the pipeline drops a component after its stage
    gc.collect()
    big = ctx.empty((3, 1_000_003))  # larger than any pooled buffer: a miss, the idle buffers go first
    assert ctx.bytes_pooled == 0 and big.nbytes == 12_000_036


def test_dispatches_are_batched_and_pipelines_cached(ctx):
    x = webgpu.tensor(np.ones((4, 300), np.float32))
    webgpu.numpy(webgpu.add(x, x))  # add compiled, and nothing pending
    n_pipelines, submits, dispatches = len(ctx._pipelines), ctx.bridge.submits, ctx.dispatches
    y = x
    for _ in range(300):
        y = webgpu.add(y, x)
    check(y, np.full((4, 300), 301, np.float32))
    assert ctx.dispatches - dispatches == 300
    # after a readback the first submit comes at SUBMIT_FIRST dispatches, then one every SUBMIT_EVERY
    assert ctx.bridge.submits - submits <= 2 + (300 - SUBMIT_FIRST) // SUBMIT_EVERY + 1
    assert len(ctx._pipelines) == n_pipelines  # add was compiled before


class _Limited:
    """The real bridge with some limits lowered."""

    def __init__(self, bridge, **limits):
        self._bridge, self._limits = bridge, limits

    def limits(self):
        return {**self._bridge.limits(), **self._limits}

    def __getattr__(self, name):
        return getattr(self._bridge, name)


def test_big_grids_fold_into_y(ctx):
    small = Context(_Limited(ctx.bridge, maxComputeWorkgroupsPerDimension=20))
    x = rng(13).standard_normal((20, 333)).astype(np.float32)  # 27 workgroups of 256 -> (20, 2, 1)
    assert small.grid(27) == (20, 2, 1)
    from sdweb.backends.webgpu.ops import elementwise, norm
    check(elementwise.add(small, small.upload(x), small.upload(x)), 2 * x)
    g = np.ones(20, np.float32)
    y = norm.layer_norm(small, small.upload(x.T.copy()), webgpu.weight(g), webgpu.weight(g * 0), 1e-5)
    check(y, nb.layer_norm(x.T.copy(), g, g * 0, 1e-5))  # 333 rows -> (20, 17, 1)
    with pytest.raises(SdwebError, match="maxComputeWorkgroupsPerDimension 20"):
        small.run("elementwise", "add", [], [], (21, 1, 1))


def test_limit_errors_name_the_buffer(ctx):
    small = Context(_Limited(ctx.bridge, maxStorageBufferBindingSize=128 << 20))
    with pytest.raises(webgpu.GPULimitError) as e:
        small.check_size(49408 * 768 * 4, "text_encoder token_embedding.weight")
    assert str(e.value) == ("text_encoder token_embedding.weight needs 145 MB but this adapter's "
                            "maxStorageBufferBindingSize is 128 MB")
    with pytest.raises(webgpu.GPULimitError, match=r"activation \(2, 128, 512, 512\) needs 256 MB"):
        small.empty((2, 128, 512, 512))

    class Store:  # what check_weights reads of a WeightStore
        component, precision = "text_encoder", "fp32"

        def keys(self):
            return ["text_model.embeddings.position_ids", "text_model.embeddings.token_embedding.weight"]

        def dtype(self, name):
            return "I64" if name.endswith("ids") else "F32"

        def shape(self, name):
            return (1, 77) if name.endswith("ids") else (49408, 768)

    with webgpu.using(_Limited(ctx.bridge, maxBufferSize=1000)) as tiny:
        with pytest.raises(webgpu.GPULimitError, match=r"^a \(30, 30\) f16 weight needs 1.8 KB but this "
                                                       r"adapter's maxBufferSize is 1000 bytes$"):
            webgpu.weight(np.ones((30, 30), np.float16))
        with pytest.raises(webgpu.GPULimitError, match=r"^conv_in.weight needs"):
            upload.weight(tiny, np.ones((20, 20), np.float32), "conv_in.weight")
    with webgpu.using(small):
        with pytest.raises(webgpu.GPULimitError, match="text_encoder text_model.embeddings.token_embedding"
                                                       ".weight needs 145 MB but"):
            webgpu.check_weights(Store())
        Store.precision = "fp16"  # 72 MB fits
        webgpu.check_weights(Store())


def test_readback_and_errors():
    x = rng(14).standard_normal((2, 3)).astype(np.float32)
    t = webgpu.tensor(x)
    assert webgpu.tensor(t) is t and webgpu.shape(t) == (2, 3)
    np.testing.assert_array_equal(webgpu.numpy(t), x)
    with pytest.raises(SdwebError, match="must be a GPU tensor"):
        webgpu.add(x, t)
    with pytest.raises(SdwebError, match="do not split into 4 groups"):
        g = webgpu.weight(np.ones(3, np.float32))
        webgpu.group_norm(webgpu.tensor(np.ones((1, 3, 2, 2), np.float32)), 4, g, g, 1e-6)
