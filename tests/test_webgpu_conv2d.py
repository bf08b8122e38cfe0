"""shaders/conv2d.wgsl (through webgpu/ops/conv2d.py) against backends/numpy.py `conv2d`, on lavapipe or
whatever adapter wgpu finds: 3x3 and 1x1 kernels, stride 1 and 2, padding 0 and 1, bias or none, the
fused residual add and activation, every weight dtype, odd sizes (5x7 images, 3 input channels, 33 or 70 output
channels, so tiles of 64 channels x 64 pixels are partly empty and span two images of a batch).

Bound: max |gpu - ref| <= 1e-4 x max |ref| for every dtype: f16 / bf16 weights are compared with the
reference given the same held bits, which both sides upcast exactly to f32.
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
from gpu_checks import TOL, check, held  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    return webgpu.context()


def case(N, C, H, W, Co, k, dtype="f32", bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = held(rng.standard_normal((Co, C, k, k)) / np.sqrt(C * k * k), dtype)
    b = held(rng.standard_normal(Co), dtype) if bias else None
    return x, w, b


def run(ctx, x, w, b, stride, padding, residual=None, act=None):
    return cv.conv2d(ctx, webgpu.tensor(x), webgpu.weight(w), None if b is None else webgpu.weight(b),
                     stride, padding, residual=None if residual is None else webgpu.tensor(residual), act=act)


# (N, Cin, H, W, Cout, k, stride, padding)
SHAPES = [
    (2, 3, 5, 7, 5, 3, 1, 1),     # conv_in-like: 3 channels, odd image, batch in one pixel tile
    (1, 3, 5, 7, 70, 3, 2, 1),    # stride 2 with padding (the UNet's downsamplers), two channel tiles
    (1, 20, 11, 13, 9, 3, 2, 0),  # stride 2 without padding (the VAE's, after its own pad)
    (2, 7, 9, 6, 33, 1, 1, 0),    # 1x1 (shortcuts, conv_out of attention proj_in/out)
    (1, 9, 6, 5, 4, 1, 2, 0),     # 1x1 stride 2
    (2, 5, 40, 36, 3, 3, 1, 1),   # a wide image: many pixel tiles (3 outputs: the reference's taps-first path)
    (1, 13, 8, 8, 66, 3, 1, 0),   # valid conv (no padding), K = 117 crosses eight K tiles
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv2d(ctx, shape):
    N, C, H, W, Co, k, stride, padding = shape
    x, w, b = case(N, C, H, W, Co, k, seed=sum(shape))
    check(run(ctx, x, w, b, stride, padding), nb.conv2d(x, w, b, stride, padding))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("k, stride", [(3, 1), (1, 1), (3, 2)])
def test_weight_dtypes(ctx, dtype, k, stride):
    """Half-size weights and biases (odd element counts: 5 x 3 x 3 x 3) through W_LOAD."""
    x, w, b = case(2, 3, 7, 5, 5, k, dtype, seed=k)
    check(run(ctx, x, w, b, stride, k // 2), nb.conv2d(x, w, b, stride, k // 2))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_residual(ctx, bias, dtype):
    """conv(x) + b + residual in one pass (the resnet's skip), with and without bias."""
    x, w, b = case(2, 6, 5, 7, 70, 3, dtype, bias=bias, seed=1)
    ref = nb.conv2d(x, w, b, 1, 1)
    r = np.random.default_rng(2).standard_normal(ref.shape).astype(np.float32)
    check(run(ctx, x, w, b, 1, 1, residual=r), ref + r)


@pytest.mark.parametrize("shape", [(2, 6, 5, 7, 70), (1, 5, 36, 40, 9)], ids=["tiles", "wide"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", ["relu", "silu"])
def test_fused_activation(ctx, act, residual, shape):
    """act(conv(x) + b [+ residual]) in the epilogue: the tiny autoencoder's conv + ReLU and
    ReLU(conv + skip). The reference against the activation's definition applied after an unfused
    conv (both of its conv paths: small images and wide rows), the kernel against the reference."""
    x, w, b = case(*shape, 3, seed=3)
    r = np.random.default_rng(4).standard_normal(nb.conv2d(x, w, b, 1, 1).shape).astype(np.float32) \
        if residual else None
    plain = nb.conv2d(x, w, b, 1, 1, r).astype(np.float64)
    want = np.maximum(plain, 0) if act == "relu" else plain / (1 + np.exp(-plain))
    ref = nb.conv2d(x, w, b, 1, 1, r, act)
    assert np.abs(ref - want).max() <= 1e-6 * np.abs(want).max()
    check(run(ctx, x, w, b, 1, 1, residual=r, act=act), ref)


def test_no_bias(ctx):
    x, w, _ = case(1, 4, 6, 6, 8, 3, bias=False)
    check(run(ctx, x, w, None, 1, 1), nb.conv2d(x, w, None, 1, 1))


def test_errors(ctx):
    x, w, b = case(1, 3, 5, 5, 4, 3)
    tx, tw, tb = webgpu.tensor(x), webgpu.weight(w), webgpu.weight(b)
    with pytest.raises(SdwebError, match="channels"):
        cv.conv2d(ctx, webgpu.tensor(np.zeros((1, 2, 5, 5), np.float32)), tw, tb)
    with pytest.raises(SdwebError, match="does not fit"):
        cv.conv2d(ctx, webgpu.tensor(np.zeros((1, 3, 1, 1), np.float32)), tw, tb)
    with pytest.raises(SdwebError, match="residual"):
        cv.conv2d(ctx, tx, tw, tb, 1, 1, residual=webgpu.tensor(np.zeros((1, 4, 3, 3), np.float32)))
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
