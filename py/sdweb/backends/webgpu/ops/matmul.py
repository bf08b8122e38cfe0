"""Linear layers and batched matmul on the GPU: shaders/matmul.wgsl (reference: backends/numpy.py
`linear`).

One GEMM kernel, Y (M, N) = X (M, K) . W^T + bias with a fused activation, serves every linear layer:
the batch and token axes of x fold into M, so W is read once per tile of 64 (or 128) tokens. The shader
keeps a ladder of versions (gpu.cpp style) for scripts/bench_kernels.py:
  0 naive, 1 16x16 shared-memory tiles, 2 64x64 tiles with 4x4 register blocking,
  3 version 2 with vec4 loads and accumulators, 4 version 3 with 8x8 outputs per invocation
  (128x128 tiles); 3 and 4 need K % 4 == 0.
The default is version DEFAULT where K % 4 == 0 and 2 otherwise; every version handles any M and N.
"""

from __future__ import annotations

import math

from ....errors import SdwebError
from .common import check_tensor, w_dtype

VERSIONS = (0, 1, 2, 3, 4)
DEFAULT = 3
ACTS = {None: 0, "silu": 1, "gelu": 2, "quick_gelu": 3, "geglu": 4}
# version -> (entry point, outputs per invocation along rows and along columns); workgroups are 16x16
_KERNELS = {0: ("matmul_v0", 1), 1: ("matmul_v1", 1), 2: ("matmul_v2", 4), 3: ("matmul_vec4", 4),
            4: ("matmul_vec4", 8)}


def pick_version(K: int) -> int:
    """The fastest version that handles an inner size K."""
    return DEFAULT if K % 4 == 0 else 2


def _gemm(ctx, op, x, w, bias, y, M: int, N: int, K: int, batch: int, strides, act, w_kn: bool, version):
    """Record Y = X . W^T (+ bias) (+ act) for `batch` matrices; strides = per-batch element strides
    of (x, w, y), 0 for an operand shared by the batch."""
    v = pick_version(K) if version is None else version
    if v not in VERSIONS:
        raise SdwebError(f"{op}: matmul version {v} does not exist; use one of {VERSIONS}")
    if v >= 3 and K % 4:
        raise SdwebError(f"{op}: matmul version {v} needs K % 4 == 0 (vec4 rows), got K={K}; use version 2")
    entry, per = _KERNELS[v]
    tm = tn = 16 * per
    if act == "geglu" and v >= 2:
        tn //= 2  # value and gate columns share the tile
    dt = w_dtype(op, w, *([] if bias is None else [bias]))
    vec = max(per, 4)  # VEC_TM/TN only shape matmul_vec4; versions 0-2 all compile with 4
    ctx.run(
        "matmul", entry,
        [x, w, bias if bias is not None else ctx.dummy(dt), y],
        [("u32", M), ("u32", N), ("u32", K), *(("u32", s) for s in strides)],
        (math.ceil(N / tn), math.ceil(M / tm), batch),
        constants={"ACT": f"{ACTS[act]}u", "HAS_BIAS": str(bias is not None).lower(),
                   "W_KN": str(w_kn).lower(), "VEC_TM": f"{vec}u", "VEC_TN": f"{vec}u"},
        w_dtype=dt,
    )


def linear(ctx, x, w, b=None, act: str | None = None, version: int | None = None):
    """x: (..., Din) f32, w: (Dout, Din) weight (f32 | f16 | bf16), b: (Dout,) -> (..., Dout), with an
    optional fused activation: silu, gelu (erf), quick_gelu, or geglu, which halves the width:
    (..., 2F) -> (..., F) = first half * gelu(second half), computed in the GEMM's epilogue so the
    2F-wide product is never stored. `version` picks a kernel of the ladder (benchmarks)."""
    check_tensor(x, "linear")
    if act not in ACTS:
        raise SdwebError(f"linear activation {act!r} is not one of {', '.join(map(str, ACTS))}")
    Dout, Din = w.shape
    if x.shape[-1] != Din:
        raise SdwebError(f"linear input {tuple(x.shape)} does not match weight (Dout, Din) = {tuple(w.shape)}")
    if b is not None and tuple(b.shape) != (Dout,):
        raise SdwebError(f"linear bias {tuple(b.shape)} does not match weight rows ({Dout},)")
    if act == "geglu" and Dout % 2:
        raise SdwebError(f"geglu needs an even number of weight rows, got {Dout}")
    N = Dout // 2 if act == "geglu" else Dout
    M = math.prod(x.shape[:-1])
    y = ctx.empty((*x.shape[:-1], N))
    _gemm(ctx, "linear", x, w, b, y, M, N, Din, 1, (0, 0, 0), act, False, version)
    return y


def matmul(ctx, a, b, version: int | None = None):
    """a: (..., M, K) f32, b: (..., K, N) f32 (or (K, N), shared by the batch) -> (..., M, N)."""
    check_tensor(a, "matmul", "a")
    check_tensor(b, "matmul", "b")
    *batch_a, M, K = a.shape
    *batch_b, Kb, N = b.shape
    if Kb != K or (batch_b and batch_b != batch_a):
        raise SdwebError(f"matmul shapes {tuple(a.shape)} @ {tuple(b.shape)} do not agree; "
                         f"want (..., M, K) @ (..., K, N) or (K, N)")
    batch = math.prod(batch_a)
    y = ctx.empty((*batch_a, M, N))
    _gemm(ctx, "matmul", a, b, None, y, M, N, K, batch, (M * K, K * N if batch_b else 0, M * N), None, True,
          version)
    return y
