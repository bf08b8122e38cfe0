"""2-D convolution on the GPU: shaders/conv2d.wgsl, an implicit GEMM (reference: backends/numpy.py
`conv2d`).

Rows of the GEMM are output channels (the weight (Co, Cin*kh*kw) as it is stored), columns are every
output pixel of the batch, and the image patch each column needs is read from X while a tile is
loaded, so no im2col buffer exists and Y comes out NCHW. Bias, a residual (the resnet's skip) and the
activation (the tiny autoencoder's ReLUs) are applied in the epilogue.
"""

from __future__ import annotations

import math

from ....errors import SdwebError
from .common import act_constant, check_tensor, w_dtype


def conv2d(ctx, x, weight, bias=None, stride: int = 1, padding: int = 0, residual=None, act=None):
    """x: (N, Cin, H, W) f32, weight: (Cout, Cin, kh, kw) (f32 | f16 | bf16), bias: (Cout,)
    -> (N, Cout, Ho, Wo) with Ho = (H + 2 padding - kh) // stride + 1 (Wo alike), zero padding;
    plus `residual` (a tensor of the output's shape) when given, then act."""
    act_code = act_constant("conv2d", act)
    check_tensor(x, "conv2d", ndim=4)
    if residual is not None:
        check_tensor(residual, "conv2d", "residual")
    N, C, H, W = x.shape
    Co, Ci, kh, kw = weight.shape
    if Ci != C:
        raise SdwebError(f"conv2d input {tuple(x.shape)} has {C} channels but weight {tuple(weight.shape)} wants {Ci}")
    if stride < 1 or padding < 0:
        raise SdwebError(f"conv2d stride {stride} / padding {padding}: want stride >= 1, padding >= 0")
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    if Ho < 1 or Wo < 1:
        raise SdwebError(f"conv2d {kh}x{kw} kernel does not fit a {H}x{W} image padded by {padding}")
    if bias is not None and tuple(bias.shape) != (Co,):
        raise SdwebError(f"conv2d bias {tuple(bias.shape)} does not match weight channels ({Co},)")
    if residual is not None and tuple(residual.shape) != (N, Co, Ho, Wo):
        raise SdwebError(f"conv2d residual {tuple(residual.shape)} does not match the output {(N, Co, Ho, Wo)}")
    dt = w_dtype("conv2d", weight, *([] if bias is None else [bias]))
    y = ctx.empty((N, Co, Ho, Wo))
    cols = N * Ho * Wo
    ctx.run(
        "conv2d", "conv2d",
        [x, weight, bias if bias is not None else ctx.dummy(dt), residual if residual is not None else ctx.dummy(dt), y],
        [("u32", v) for v in (C, H, W, Co, Ho, Wo, stride, padding, cols)],
        (math.ceil(cols / 64), math.ceil(Co / 64), 1),
        constants={"KH": f"{kh}u", "KW": f"{kw}u", "HAS_BIAS": str(bias is not None).lower(),
                   "HAS_RES": str(residual is not None).lower(), "ACT": act_code},
        w_dtype=dt,
    )
    return y
