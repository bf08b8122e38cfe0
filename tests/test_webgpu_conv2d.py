"""shaders/conv2d.wgsl (through webgpu/ops/conv2d.py, its tiles from ops/gemm.py) against
backends/numpy.py `conv2d`, on lavapipe or whatever adapter wgpu finds: 3x3 and 1x1 kernels, stride 1
and 2, padding 0 and 1, bias or none, the fused time-embedding add, residual and activation, every
tile configuration (8x8 per invocation in three tile shapes, 4x4, split-K), every weight dtype, f16
compute, odd sizes (5x7 images, 3 input channels so K % 4 != 0, 33 or 70 output channels, so tiles
are partly empty and span two images of a batch), and the ladder's older kernel.

Bound: max |gpu - ref| <= 1e-4 x max |ref| in f32 for every weight dtype (compared with the
reference given the same held bits); f16 compute as gpu_checks.py says.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdweb.backends import numpy as nb
from sdweb.errors import SdwebError

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

from sdweb.backends.webgpu.ops import conv2d as cv  # noqa: E402  (imports wgpu-dependent modules)
from sdweb.backends.webgpu.ops import gemm  # noqa: E402
from gpu_checks import as_computed, check, computing, held, tol  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    return webgpu.context()


def case(N, C, H, W, Co, k, dtype="f32", bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = held(rng.standard_normal((Co, C, k, k)) / np.sqrt(C * k * k), dtype)
    b = held(rng.standard_normal(Co), dtype) if bias else None
    return x, w, b


def run(ctx, x, w, b, stride, padding, residual=None, temb=None, act=None, config=None):
    t = lambda a: None if a is None else webgpu.tensor(a)  # noqa: E731
    return cv.conv2d(ctx, webgpu.tensor(x), webgpu.weight(w), None if b is None else webgpu.weight(b),
                     stride, padding, residual=t(residual), temb=t(temb), act=act, config=config)


# (N, Cin, H, W, Cout, k, stride, padding)
SHAPES = [
    (2, 3, 5, 7, 5, 3, 1, 1),     # conv_in-like: 3 channels (K = 27), odd image, batch in one pixel tile
    (1, 3, 5, 7, 70, 3, 2, 1),    # stride 2 with padding (the UNet's downsamplers), two channel tiles
    (1, 20, 11, 13, 9, 3, 2, 0),  # stride 2 without padding (the VAE's, after its own pad)
    (2, 7, 9, 6, 33, 1, 1, 0),    # 1x1 (shortcuts), K = 7
    (1, 9, 6, 5, 4, 1, 2, 0),     # 1x1 stride 2
    (2, 8, 40, 36, 3, 3, 1, 1),   # a wide image: many pixel tiles (3 outputs: the reference's taps-first path)
    (1, 13, 8, 8, 66, 3, 1, 0),   # valid conv (no padding), K = 117 crosses several K tiles
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv2d(ctx, shape):
    N, C, H, W, Co, k, stride, padding = shape
    x, w, b = case(N, C, H, W, Co, k, seed=sum(shape))
    check(run(ctx, x, w, b, stride, padding), nb.conv2d(x, w, b, stride, padding))


@pytest.mark.parametrize("t", ["f32", "f16"])
def test_every_configuration(ctx, t):
    """Each tile configuration on a conv with a time embedding and a residual: 40 output channels,
    2 x 6 x 7 pixels, K = 32 x 9 = 288 (split-K slices of 2 and 4)."""
    x, w, b = case(2, 32, 6, 7, 40, 3, seed=7)
    rng = np.random.default_rng(8)
    r = rng.standard_normal((2, 40, 6, 7)).astype(np.float32)
    e = rng.standard_normal((2, 40)).astype(np.float32)
    with computing(ctx, t):
        ref = nb.conv2d(as_computed(x, t), w, b, 1, 1, residual=as_computed(r, t), temb=as_computed(e, t))
        configs = gemm.candidates(ctx, 40, 84, 288, t)
        assert {c.split for c in configs} == {1, 2, 4}
        for c in configs:
            check(run(ctx, x, w, b, 1, 1, r, e, config=c), ref, tol(t))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("k, stride", [(3, 1), (1, 1), (3, 2)])
def test_weight_dtypes(ctx, dtype, k, stride):
    """Half-size weights and biases (odd element counts: 5 x 3 x 3 x 3) through W_LOAD, and whole
    words of them (W_LOAD4) where K % 4 == 0."""
    for C in (3, 4):
        x, w, b = case(2, C, 7, 5, 5, k, dtype, seed=k + C)
        check(run(ctx, x, w, b, stride, k // 2), nb.conv2d(x, w, b, stride, k // 2))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("t", ["f32", "f16"])
def test_epilogue(ctx, bias, t):
    """conv(x) + b + temb[n, co] + residual in one pass (a resnet's time embedding and skip), with and
    without bias, f16 weights."""
    x, w, b = case(2, 6, 5, 7, 70, 3, "f16", bias=bias, seed=1)
    rng = np.random.default_rng(2)
    r = rng.standard_normal((2, 70, 5, 7)).astype(np.float32)
    e = rng.standard_normal((2, 70)).astype(np.float32)
    with computing(ctx, t):
        xs, rs, es = (as_computed(a, t) for a in (x, r, e))
        check(run(ctx, x, w, b, 1, 1, residual=r), nb.conv2d(xs, w, b, 1, 1, residual=rs), tol(t))
        check(run(ctx, x, w, b, 1, 1, temb=e), nb.conv2d(xs, w, b, 1, 1, temb=es), tol(t))


@pytest.mark.parametrize("shape", [(2, 6, 5, 7, 70), (1, 5, 36, 40, 9)], ids=["tiles", "wide"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("t", ["f32", "f16"])
def test_fused_activation(ctx, t, act, residual, shape):
    """act(conv(x) + b [+ residual]) in the epilogue: the tiny autoencoder's conv + ReLU and
    ReLU(conv + skip). The reference against the activation's definition applied after an unfused
    conv (both of its conv paths: small images and wide rows), the kernel against the reference,
    in f32 and f16 compute, with the rule's tiles and split-K (the activation after the slices' sum)."""
    x, w, b = case(*shape, 3, seed=3)
    r = np.random.default_rng(4).standard_normal(nb.conv2d(x, w, b, 1, 1).shape).astype(np.float32) \
        if residual else None
    plain = nb.conv2d(x, w, b, 1, 1, r).astype(np.float64)
    want = np.maximum(plain, 0) if act == "relu" else plain / (1 + np.exp(-plain))
    ref = nb.conv2d(x, w, b, 1, 1, r, act=act)
    assert np.abs(ref - want).max() <= 1e-6 * np.abs(want).max()
    with computing(ctx, t):
        xs, rs = as_computed(x, t), None if r is None else as_computed(r, t)
        check(run(ctx, x, w, b, 1, 1, residual=r, act=act), nb.conv2d(xs, w, b, 1, 1, rs, act=act), tol(t))
        x, w, b = case(2, 32, 5, 7, 40, 3, seed=5)  # K = 288: room for split-K's slices
        split = next(c for c in gemm.candidates(ctx, 40, 70, 288, t) if c.split > 1)
        check(run(ctx, x, w, b, 1, 1, act=act, config=split), nb.conv2d(as_computed(x, t), w, b, 1, 1, act=act),
              tol(t))


def test_errors(ctx):
    x, w, b = case(1, 3, 5, 5, 4, 3)
    tx, tw, tb = webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b)
    with pytest.raises(SdwebError, match="channels"):
        cv.conv2d(ctx, webgpu.tensor(np.zeros((1, 2, 5, 5), np.float32)), tw, tb)
    with pytest.raises(SdwebError, match="does not fit"):
        cv.conv2d(ctx, webgpu.tensor(np.zeros((1, 3, 1, 1), np.float32)), tw, tb)
    with pytest.raises(SdwebError, match="residual"):
        cv.conv2d(ctx, tx, tw, tb, 1, 1, residual=webgpu.tensor(np.zeros((1, 4, 3, 3), np.float32)))
    with pytest.raises(SdwebError, match=r"temb \(1, 3\) must be \(N, Cout\)"):
        cv.conv2d(ctx, tx, tw, tb, 1, 1, temb=webgpu.tensor(np.zeros((1, 3), np.float32)))
    with pytest.raises(SdwebError, match="mixed dtypes"):
        cv.conv2d(ctx, tx, tw, webgpu.weight(b.astype(np.float16)))
    with pytest.raises(SdwebError, match="GPU tensor"):
        cv.conv2d(ctx, x, tw, tb)
    with pytest.raises(SdwebError, match="^conv2d: activation 'geglu' is not one of None, silu"):
        cv.conv2d(ctx, tx, tw, tb, act="geglu")


def test_backend_conv2d(ctx):
    """The models' entry point, webgpu.conv2d, runs this kernel."""
    x, w, b = case(2, 3, 5, 7, 6, 3, "f16", seed=5)
    check(webgpu.conv2d(webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b), 2, 1), nb.conv2d(x, w, b, 2, 1))


def test_ladder(ctx, kernel_ladder):
    """The kernel production ran before (scripts/ladder/conv2d.wgsl), 3x3 with a residual and 1x1
    stride 2, f16 weights."""
    x, w, b = case(2, 6, 5, 7, 70, 3, "f16", seed=3)
    r = np.random.default_rng(4).standard_normal((2, 70, 5, 7)).astype(np.float32)
    got = kernel_ladder.conv2d_v1(ctx, webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b), 1, 1, webgpu.tensor(r))
    check(got, nb.conv2d(x, w, b, 1, 1, residual=r))
    x, w, b = case(1, 9, 6, 5, 4, 1, seed=5)
    check(kernel_ladder.conv2d_v1(ctx, webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b), 2, 0),
          nb.conv2d(x, w, b, 2, 0))
