"""2-D convolution on the GPU: shaders/conv2d.wgsl, an implicit GEMM (reference: backends/numpy.py
`conv2d`).

Rows of the GEMM are output channels (the weight (Co, Cin*kh*kw) as it is stored, loaded as vec4
along K), columns are every output pixel of the batch, and the image patch each column needs is
read from X while a tile is loaded, so no im2col buffer exists and Y comes out NCHW. Bias, the
resnet's time embedding (a per-image channel add) and a residual (the resnet's skip) are added in
the epilogue, and the activation (the tiny autoencoder's ReLUs) applied there. The tile shape is
ops/gemm.py's (the rule, or the autotuned choice); with split-K a second dispatch adds the slices
and applies the epilogue.

The same kernel with TOKENS is a linear layer whose output is an image (`tokens_to_image`: the
transformer's proj_out, (N, H*W, C) tokens -> NCHW plus the block's input), so the transformer
needs no transpose kernel on its way out.
"""

from __future__ import annotations

import math

from ....errors import SdwebError
from . import gemm
from .common import act_constant, check_same_dtype, check_tensor, w_dtype


def _epilogue_inputs(ctx, name, y_shape, x, bias, residual, temb, weight):
    for t, what in ((residual, "residual"), (temb, "temb")):
        if t is not None:
            check_tensor(t, name, what)
            check_same_dtype(name, x, t)
    N, Co = y_shape[:2]
    if bias is not None and tuple(bias.shape) != (Co,):
        raise SdwebError(f"{name} bias {tuple(bias.shape)} does not match weight channels ({Co},)")
    if residual is not None and tuple(residual.shape) != y_shape:
        raise SdwebError(f"{name} residual {tuple(residual.shape)} does not match the output {y_shape}")
    if temb is not None and tuple(temb.shape) != (N, Co):
        raise SdwebError(f"{name} temb {tuple(temb.shape)} must be (N, Cout) = {(N, Co)}")
    return w_dtype(name, weight, *([] if bias is None else [bias]))


def _run(ctx, name, x, weight, bias, residual, temb, y, dims, kh, kw, tokens, config, flop, act=None):
    """Record the conv2d.wgsl dispatch(es): dims = (C, H, W, Co, Ho, Wo, stride, pad)."""
    C, H, W, Co, Ho, Wo, stride, pad = dims
    N = y.shape[0]
    K, cols = C * kh * kw, N * Ho * Wo
    dt = w_dtype(name, weight, *([] if bias is None else [bias]))
    t = x.dtype
    key = (N, C, H, W, Co, kh, kw, stride, pad, tokens, bias is not None, temb is not None, residual is not None, t, dt)
    c = config or gemm.choose(ctx, name, key, Co, cols, K, t, lambda c: _run(
        ctx, name, x, weight, bias, residual, temb, ctx.empty(y.shape, t), dims, kh, kw, tokens, c, flop, act))
    if c.wgy % c.tn:
        raise SdwebError(f"conv2d tile {c}: wgy must be a multiple of tn")
    consts = {"KH": f"{kh}u", "KW": f"{kw}u", "TOKENS": str(tokens).lower(),
              "HAS_BIAS": str(bias is not None).lower(), "HAS_TEMB": str(temb is not None).lower(),
              "HAS_RES": str(residual is not None).lower(), "VEC_K": str(K % 4 == 0).lower(),
              "ACT": act_constant(name, act), **c.constants()}
    params = [("u32", v) for v in (C, H, W, Co, Ho, Wo, stride, pad, cols, K, c.k_split(K), c.slices(K))]
    groups = (math.ceil(cols / c.bn), math.ceil(Co / c.bm), c.slices(K))
    dummy = ctx.dummy(dt)
    ends = [bias if bias is not None else dummy, temb if temb is not None else dummy,
            residual if residual is not None else dummy, y]
    if c.split == 1:
        ctx.run("conv2d", "main", [x, weight, *ends], params, groups, consts, dt, t, op=name, flop=flop)
        return y
    part = ctx.empty((groups[2], Co, cols), "f32")
    ctx.run("conv2d", "main", [x, weight, part], params, groups, consts, dt, t, op=name, flop=flop)
    ctx.run("conv2d", "reduce", [part, *ends], params, ctx.grid(-(-Co * cols // 256)), consts, dt, t, op=name)
    return y


def conv2d(ctx, x, weight, bias=None, stride: int = 1, padding: int = 0, residual=None, temb=None, act=None,
           config=None):
    """x: (N, Cin, H, W) (f32 | f16), weight: (Cout, Cin, kh, kw) (f32 | f16 | bf16), bias: (Cout,)
    -> (N, Cout, Ho, Wo) with Ho = (H + 2 padding - kh) // stride + 1 (Wo alike), zero padding;
    plus temb (N, Cout) per image and channel, plus `residual` (the output's shape), when given,
    then act. `config` overrides the tile choice (an ops/gemm.py Gemm)."""
    act_constant("conv2d", act)  # a bad act is named before anything else
    check_tensor(x, "conv2d", ndim=4)
    N, C, H, W = x.shape
    Co, Ci, kh, kw = weight.shape
    if Ci != C:
        raise SdwebError(f"conv2d input {tuple(x.shape)} has {C} channels but weight {tuple(weight.shape)} wants {Ci}")
    if stride < 1 or padding < 0:
        raise SdwebError(f"conv2d stride {stride} / padding {padding}: want stride >= 1, padding >= 0")
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    if Ho < 1 or Wo < 1:
        raise SdwebError(f"conv2d {kh}x{kw} kernel does not fit a {H}x{W} image padded by {padding}")
    y_shape = (N, Co, Ho, Wo)
    _epilogue_inputs(ctx, "conv2d", y_shape, x, bias, residual, temb, weight)
    y = ctx.empty(y_shape, x.dtype)
    flop = 2 * N * Ho * Wo * Co * C * kh * kw
    return _run(ctx, "conv2d", x, weight, bias, residual, temb, y, (C, H, W, Co, Ho, Wo, stride, padding),
                kh, kw, False, config, flop, act)


def tokens_to_image(ctx, x, weight, bias, residual, image, config=None):
    """linear(x (N, H*W, Din), weight (Dout, Din[, 1, 1]), bias) stored as (N, Dout, H, W), plus
    `residual` of that shape: a 1x1 conv over tokens (matmul.linear's image=(H, W))."""
    check_tensor(x, "linear", ndim=3)
    H, W = (int(v) for v in image)
    N, L, Din = x.shape
    if L != H * W:
        raise SdwebError(f"linear: {L} tokens do not make a {H}x{W} image")
    Co = weight.shape[0]
    y_shape = (N, Co, H, W)
    _epilogue_inputs(ctx, "linear", y_shape, x, bias, residual, None, weight)
    y = ctx.empty(y_shape, x.dtype)
    return _run(ctx, "linear", x, weight, bias, residual, None, y, (Din, H, W, Co, H, W, 1, 0), 1, 1, True,
                config, 2 * N * L * Co * Din)
