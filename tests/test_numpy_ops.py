"""backends/numpy.py's fast paths against torch (the models' parity tests check them in use; these
reach every path and edge on purpose): conv2d by 1x1 GEMM, taps first (few outputs), Winograd
F(4x4, 3x3) and F(2x2, 3x3) (odd sizes, several chunks, batches) and im2col (strides, no padding); upsample_conv2d
(nearest 2x + 3x3 conv as four 2x2 convs, directly and by Winograd F(2x2, 2x2)); linear's GEGLU in row chunks; attention; group norm; the
held-precision upcasts; each with the work split over threads as well as inline.

Bound: max |ours - torch| <= 1e-5 x max |torch| (float32 rounding; the models' bound is 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdweb.backends import numpy as nb
from sdweb.weights import f32_to_bf16

TOL = 1e-5


@pytest.fixture(params=[1, 3], ids=["inline", "3 threads"], autouse=True)
def threads(request, monkeypatch):
    """Every test twice: all parts inline, and shared over three threads (uneven splits)."""
    monkeypatch.setattr(nb, "_THREADS", request.param)
    return request.param


def close(got, want):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    assert got.shape == want.shape and got.dtype == np.float32, (got.shape, want.shape, got.dtype)
    assert got.flags.c_contiguous
    err, scale = np.abs(got - want).max(), np.abs(want).max()
    assert err <= TOL * scale, f"max error {err:.3g} > {TOL} x {scale:.3g}"


def data(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# (N, Cin, H, W, Cout, k, stride, padding): which path each takes is asserted below
CONVS = [
    (2, 6, 9, 13, 5, 1, 1, 0),     # 1x1
    (2, 6, 9, 13, 3, 3, 1, 1),     # few outputs: taps first
    (1, 4, 11, 7, 2, 5, 1, 2),     # few outputs, 5x5
    (2, 5, 33, 31, 24, 3, 1, 1),   # Winograd F(4x4): sides not multiples of 4, a batch
    (1, 8, 64, 40, 16, 3, 1, 1),   # Winograd F(4x4) over several chunks (the chunk is made small below)
    (1, 8, 46, 43, 16, 3, 1, 1),   # Winograd F(4x4): several chunks, sides 2 and 3 past a multiple of 4
    (2, 5, 15, 17, 24, 3, 1, 1),   # Winograd F(2x2): odd sides, a batch, too few 4x4 tiles for F(4x4)
    (1, 8, 30, 34, 16, 3, 1, 1),   # Winograd F(2x2) over several chunks
    (2, 7, 8, 8, 20, 3, 1, 1),     # too few tiles for Winograd: im2col
    (1, 6, 17, 15, 12, 3, 2, 1),   # stride 2: im2col
    (1, 6, 16, 16, 12, 3, 2, 0),   # stride 2, no padding (the VAE's downsampler)
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "x".join(map(str, c)))
def test_conv2d(case, monkeypatch):
    N, Ci, H, W, Co, k, stride, padding = case
    monkeypatch.setattr(nb, "_WINOGRAD_CHUNK", 64 * 16 * 8 * 3)  # a few tile rows per chunk
    x, w, b, res = data(N, Ci, H, W), data(Co, Ci, k, k, seed=1) / k, data(Co, seed=2), None
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding)
    res, temb = data(*want.shape, seed=3), data(N, Co, seed=4)
    close(nb.conv2d(x, w, b, stride, padding, res), want + torch.from_numpy(res))
    close(nb.conv2d(x, w, b, stride, padding, res, temb), want + torch.from_numpy(res + temb[:, :, None, None]))
    close(nb.conv2d(x, w, b, stride, padding, temb=temb), want + torch.from_numpy(temb[:, :, None, None]))
    close(nb.conv2d(x, w, None, stride, padding), F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None,
                                                            stride, padding))


def test_conv2d_paths_are_taken(monkeypatch):
    """Each CONVS case reaches the path its comment names."""
    taken = []
    for name, mark in (("_conv_taps_first", "t"), ("_conv3x3_winograd4", "4"), ("_conv3x3_winograd", "2")):
        fn = getattr(nb, name)
        monkeypatch.setattr(nb, name, lambda *a, _f=fn, _m=mark: taken.append(_m) or _f(*a))
    for N, Ci, H, W, Co, k, stride, padding in CONVS:
        taken.append("|")
        nb.conv2d(data(N, Ci, H, W), data(Co, Ci, k, k), None, stride, padding)
    assert "".join(taken) == "||t|t|4|4|4|2|2|||"  # 1x1, taps first x2, F(4x4) x3, F(2x2) x2, im2col x3


def test_conv2d_without_kept_scratch(monkeypatch):
    """Under Pyodide no scratch is kept (each temporary is a fresh array): the same results; and in
    CPython the kept buffers serve calls of different sizes (larger, then smaller)."""
    x, w, b = data(1, 6, 48, 44), data(10, 6, 3, 3, seed=1) / 3, data(10, seed=2)
    small = data(1, 6, 24, 26, seed=3)  # F(4x4), then F(2x2) in the same buffers
    kept = [nb.conv2d(x, w, b, padding=1), nb.conv2d(small, w, b, padding=1)]
    monkeypatch.setattr(nb, "_KEEP_SCRATCH", False)
    for got, inp in zip(kept, (x, small)):
        np.testing.assert_array_equal(nb.conv2d(inp, w, b, padding=1), got)
        close(got, F.conv2d(torch.from_numpy(inp), torch.from_numpy(w), torch.from_numpy(b), padding=1))


@pytest.mark.parametrize("N, C, H, W", [(2, 320, 24, 20), (1, 64, 40, 36)])
def test_conv2d_winograd_rounding_over_many_channels(N, C, H, W):
    """The Winograd paths' rounding where it is largest, over hundreds of channels, against an f64 conv:
    F(2x2, 3x3) within 2e-6 x max|y| (measured 6e-7), F(4x4, 3x3) within 4e-5 (measured 1.1e-5 over
    320 channels; its transforms' 4, 5, 8 and 1/24 cost ~20x F(2x2)'s rounding)."""
    x = data(N, C, H, W)
    w, b = data(C, C, 3, 3, seed=1) / np.float32(3 * np.sqrt(C)), data(C, seed=2)
    want = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                    padding=1).numpy()
    scale = np.abs(want).max()
    for fn, bound in ((nb._conv3x3_winograd, 2e-6), (nb._conv3x3_winograd4, 4e-5)):
        got = fn(x, w, b[:, None])
        assert got.shape == want.shape and got.dtype == np.float32
        err = np.abs(got - want).max()
        assert err <= bound * scale, f"{fn.__name__}: max error {err:.3g} > {bound} x {scale:.3g}"


UPSAMPLES = [  # (N, Cin, H, W): the first three directly, the last two by Winograd F(2x2, 2x2) (enough tiles)
    (1, 3, 1, 1), (2, 5, 7, 4), (1, 16, 12, 9), (1, 4, 33, 31), (2, 3, 24, 22)]


@pytest.mark.parametrize("shape", UPSAMPLES, ids=lambda s: "x".join(map(str, s)))
def test_upsample_conv2d(shape, monkeypatch):
    monkeypatch.setattr(nb, "_WINOGRAD_CHUNK", 36 * 4 * 6 * 18 * 3)  # a few tile rows per chunk
    taken = []
    for name in ("_upsample_phases", "_upsample_winograd"):
        fn = getattr(nb, name)
        monkeypatch.setattr(nb, name, lambda *a, _f=fn, _n=name: taken.append(_n) or _f(*a))
    x = data(*shape)
    w, b = data(6, shape[1], 3, 3, seed=1) / 3, data(6, seed=2)
    up = F.interpolate(torch.from_numpy(x), scale_factor=2.0, mode="nearest")
    close(nb.upsample_conv2d(x, w, b), F.conv2d(up, torch.from_numpy(w), torch.from_numpy(b), padding=1))
    close(nb.upsample_conv2d(x, w), F.conv2d(up, torch.from_numpy(w), padding=1))
    winograd = UPSAMPLES.index(shape) >= 3
    assert taken == ["_upsample_winograd" if winograd else "_upsample_phases"] * 2


@pytest.mark.parametrize("act", [None, "silu", "gelu", "quick_gelu", "geglu"])
def test_linear(act):
    x, w, b = data(3, 700, 16), data(2 * 3000, 16, seed=1) / 4, data(2 * 3000, seed=2)  # GEGLU: 3 row chunks
    y = F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b))
    if act == "geglu":
        a, g = y.chunk(2, dim=-1)
        want = a * F.gelu(g)
    else:
        want = {None: y, "silu": F.silu(y), "gelu": F.gelu(y), "quick_gelu": y * torch.sigmoid(1.702 * y)}[act]
    close(nb.linear(x, w, b, act), want)


@pytest.mark.parametrize("causal", [False, True])
def test_attention(causal):
    q, k, v = data(2, 300, 48), data(2, 300, 48, seed=1), data(2, 300, 48, seed=2)
    q[0, :5] *= 40  # scores beyond exp's range in some rows: the max is subtracted there
    heads = lambda t: torch.from_numpy(t).reshape(2, 300, 3, 16).transpose(1, 2)  # noqa: E731
    want = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=causal)
    close(nb.attention(q, k, v, 3, causal), want.transpose(1, 2).reshape(2, 300, 48))


@pytest.mark.parametrize("act", [None, "silu"])
def test_group_norm(act):
    x, w, b = data(2, 12, 40, 50) * 3 + 1, data(12, seed=1), data(12, seed=2)
    want = F.group_norm(torch.from_numpy(x), 4, torch.from_numpy(w), torch.from_numpy(b), 1e-6)
    close(nb.group_norm(x, 4, w, b, 1e-6, act), F.silu(want) if act else want)


@pytest.mark.parametrize("shape", [(2, 40, 30, 50), (1, 36, 4, 5)], ids=["16-channel blocks", "one block"])
def test_group_norm_to_tokens(shape):
    """tokens=True: the (N, H*W, C) layout written transposed block by block (C not a multiple of 16)."""
    N, C, H, W = shape
    x, w, b = data(*shape) * 3 + 1, data(C, seed=1), data(C, seed=2)
    want = F.group_norm(torch.from_numpy(x), 4, torch.from_numpy(w), torch.from_numpy(b), 1e-6)
    close(nb.group_norm(x, 4, w, b, 1e-6, tokens=True), want.reshape(N, C, H * W).transpose(1, 2).contiguous())


@pytest.mark.parametrize("shape", [(2, 40, 300), (1, 7, 5), (3, 300, 33)])
def test_layout_transposes(shape):
    """nchw_to_nlc / nlc_to_nchw by blocks: edges of partial blocks both ways."""
    x = data(*shape)
    N, A, B = shape
    np.testing.assert_array_equal(nb.nchw_to_nlc(x.reshape(N, A, B, 1)), x.transpose(0, 2, 1))
    got = nb.nlc_to_nchw(x, A, 1)  # x as (N, L = A tokens, C = B channels)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, x.transpose(0, 2, 1).reshape(N, B, A, 1))


def test_layer_norm():
    x, w, b = data(3, 500, 96) * 2, data(96, seed=1), data(96, seed=2)
    close(nb.layer_norm(x, w, b, 1e-5), F.layer_norm(torch.from_numpy(x), (96,), torch.from_numpy(w),
                                                      torch.from_numpy(b), 1e-5))


def test_held_weights_upcast_exactly():
    w = data(700, 3000)  # several parts
    half, bf = w.astype(np.float16), f32_to_bf16(w)
    np.testing.assert_array_equal(nb._f32(half), half.astype(np.float32))
    np.testing.assert_array_equal(nb._f32(bf), torch.from_numpy(w).bfloat16().float().numpy())
    assert nb._f32(w) is w
