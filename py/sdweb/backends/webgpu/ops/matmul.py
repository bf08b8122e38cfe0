"""Linear layers on the GPU: shaders/matmul.wgsl (reference: backends/numpy.py `linear`).

One GEMM, Y (M, N) = act(X (M, K) . W^T + bias) + residual, serves every linear layer: the batch and
token axes of x fold into M, so W is read once per tile of tokens. The tile shape is ops/gemm.py's
(the rule, or the autotuned choice for this shape on this adapter); with split-K a second dispatch
(`reduce`) adds the slices and applies the epilogue. A linear whose output is an image, (N, H*W, K)
tokens -> (N, Dout, H, W) (the transformer's proj_out), is conv2d.wgsl's token entry: its epilogue
stores NCHW and adds an NCHW residual, so no transpose kernel runs.
"""

from __future__ import annotations

import math

from ....errors import SdwebError
from . import gemm
from .common import act_constant, check_same_dtype, check_tensor, w_dtype


def weight_matrix(weight, what: str = "linear") -> tuple[int, int]:
    """(Dout, Din) of a linear weight (Dout, Din) or a 1x1 conv's (Dout, Din, 1, 1)."""
    shape = tuple(weight.shape)
    if len(shape) == 4 and shape[2:] == (1, 1):
        return shape[0], shape[1]
    if len(shape) != 2:
        raise SdwebError(f"{what}: weight {shape} is neither (Dout, Din) nor a 1x1 conv's (Dout, Din, 1, 1)")
    return shape


def linear(ctx, x, weight, bias=None, act: str | None = None, residual=None, image=None, config=None):
    """x: (..., Din) (f32 | f16), weight: (Dout, Din) or (Dout, Din, 1, 1) (f32 | f16 | bf16), bias:
    (Dout,) -> (..., Dout), with an optional fused activation: silu, gelu (erf), quick_gelu, or
    geglu, which halves the width: (..., 2F) -> (..., F) = first half * gelu(second half), computed in
    the GEMM's epilogue so the 2F-wide product is never stored; then + residual (the output's shape).
    image=(H, W): x is (N, H*W, Din) and the result (N, Dout, H, W) (residual likewise).
    `config` overrides the tile choice (an ops/gemm.py Gemm: the benchmark, the tuner, tests)."""
    check_tensor(x, "linear")
    act_code = act_constant("linear", act, geglu=True)
    Dout, Din = weight_matrix(weight)
    if x.shape[-1] != Din:
        raise SdwebError(f"linear input {tuple(x.shape)} does not match weight (Dout, Din) = {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (Dout,):
        raise SdwebError(f"linear bias {tuple(bias.shape)} does not match weight rows ({Dout},)")
    if act == "geglu" and Dout % 2:
        raise SdwebError(f"geglu needs an even number of weight rows, got {Dout}")
    if image is not None:
        if act is not None:
            raise SdwebError("linear: an activation cannot be fused with image=(H, W)")
        from .conv2d import tokens_to_image

        return tokens_to_image(ctx, x, weight, bias, residual, image, config)
    N = Dout // 2 if act == "geglu" else Dout
    M = math.prod(x.shape[:-1])
    out_shape = (*x.shape[:-1], N)
    if residual is not None:
        check_tensor(residual, "linear", "residual")
        if tuple(residual.shape) != out_shape:
            raise SdwebError(f"linear residual {tuple(residual.shape)} does not match the output {out_shape}")
        check_same_dtype("linear", x, residual)
    dt = w_dtype("linear", weight, *([] if bias is None else [bias]))
    t = x.dtype
    c = config or gemm.choose(ctx, "linear", (M, Dout, Din, act, bias is not None, residual is not None, t, dt),
                              M, Dout, Din, t, lambda c: linear(ctx, x, weight, bias, act, residual, None, c))
    y = ctx.empty(out_shape, t)
    consts = {"ACT": act_code, "HAS_BIAS": str(bias is not None).lower(), "HAS_RES": str(residual is not None).lower(),
              "VEC_K": str(Din % 4 == 0).lower(), **c.constants()}
    ks = c.k_split(Din)
    params = [("u32", M), ("u32", N), ("u32", Din), ("u32", ks), ("u32", c.slices(Din))]
    cols = c.bn // 2 if act == "geglu" else c.bn
    groups = (math.ceil(N / cols), math.ceil(M / c.bm), c.slices(Din))
    flop = 2 * M * Dout * Din
    dummy = ctx.dummy(dt)
    b = bias if bias is not None else dummy
    r = residual if residual is not None else dummy
    if c.split == 1:
        ctx.run("matmul", "main", [x, weight, b, r, y], params, groups, consts, dt, t, op="linear", flop=flop)
        return y
    part = ctx.empty((groups[2], M, Dout), "f32")
    ctx.run("matmul", "main", [x, weight, part], params, groups, consts, dt, t, op="linear", flop=flop)
    ctx.run("matmul", "reduce", [part, b, r, y], params, ctx.grid(-(-M * N // 256)), consts, dt, t, op="linear")
    return y
