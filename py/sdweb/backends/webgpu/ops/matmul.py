"""Linear layers on the GPU: shaders/matmul.wgsl (reference: backends/numpy.py `linear`).

One GEMM, Y (M, N) = X (M, K) . W^T + bias with a fused activation, serves every linear layer: the
batch and token axes of x fold into M, so W is read once per tile of 64 tokens. Of the kernel
ladder scripts/bench_kernels.py times (scripts/matmul_ladder.py), production runs two rungs:
matmul_vec4 (vec4 loads, 4x4 outputs per invocation) where K % 4 == 0, else matmul_tiled (the same
tiling with scalar loads). Both handle any M and N.
"""

from __future__ import annotations

import math

from ....errors import SdwebError
from .common import act_constant, check_tensor, w_dtype

# A kernel: (shader, entry, outputs per invocation along rows and along columns); workgroups are 16x16.
TILED = ("matmul", "matmul_tiled", 4)
VEC4 = ("matmul", "matmul_vec4", 4)


def pick(K: int) -> tuple:
    """The kernel production runs for an inner size K."""
    return VEC4 if K % 4 == 0 else TILED


def linear(ctx, x, weight, bias=None, act: str | None = None, kernel: tuple | None = None):
    """x: (..., Din) f32, weight: (Dout, Din) (f32 | f16 | bf16), bias: (Dout,) -> (..., Dout), with an
    optional fused activation: silu, gelu (erf), quick_gelu, or geglu, which halves the width:
    (..., 2F) -> (..., F) = first half * gelu(second half), computed in the GEMM's epilogue so the
    2F-wide product is never stored. `kernel` overrides pick(Din) (the benchmark's ladder)."""
    check_tensor(x, "linear")
    act_code = act_constant("linear", act, geglu=True)
    Dout, Din = weight.shape
    if x.shape[-1] != Din:
        raise SdwebError(f"linear input {tuple(x.shape)} does not match weight (Dout, Din) = {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (Dout,):
        raise SdwebError(f"linear bias {tuple(bias.shape)} does not match weight rows ({Dout},)")
    if act == "geglu" and Dout % 2:
        raise SdwebError(f"geglu needs an even number of weight rows, got {Dout}")
    shader, entry, per = kernel or pick(Din)
    if entry == "matmul_vec4" and Din % 4:
        raise SdwebError(f"linear: {entry} needs K % 4 == 0 (vec4 rows), got K={Din}")
    N = Dout // 2 if act == "geglu" else Dout
    M = math.prod(x.shape[:-1])
    y = ctx.empty((*x.shape[:-1], N))
    tm = tn = 16 * per
    if act == "geglu" and per > 1:
        tn //= 2  # value and gate columns share the tile
    dt = w_dtype("linear", weight, *([] if bias is None else [bias]))
    vec = max(per, 4)  # VEC_TM/TN only shape matmul_vec4; the other entries compile with any
    ctx.run(
        shader, entry,
        [x, weight, bias if bias is not None else ctx.dummy(dt), y],
        [("u32", M), ("u32", N), ("u32", Din)],
        (math.ceil(N / tn), math.ceil(M / tm), 1),
        constants={"ACT": act_code, "HAS_BIAS": str(bias is not None).lower(),
                   "VEC_TM": f"{vec}u", "VEC_TN": f"{vec}u"},
        w_dtype=dt,
    )
    return y
