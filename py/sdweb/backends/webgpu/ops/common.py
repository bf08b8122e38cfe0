"""Helpers shared by the op modules."""

from __future__ import annotations

from ....errors import SdwebError
from ...contract import check_act
from ..device import GPUTensor

WG = 256  # invocations per workgroup of the flat (one element per invocation) kernels (include/grid.wgsl)
# The fused activation -> shaders/include/activations.wgsl's ACT code.
ACT_CODES = {None: 0, "silu": 1, "gelu": 2, "quick_gelu": 3, "geglu": 4, "relu": 5}


class Span:
    """A bridge buffer range to bind as raw words (what ctx.run needs of a tensor): .buffer, .offset,
    .nbytes. For kernels that read or write a buffer outside the tensor/weight typing: convert.py's
    scratch buffer, lora.py's weight updated in place."""

    __slots__ = ("buffer", "offset", "nbytes")

    def __init__(self, buffer: int, offset: int, nbytes: int):
        self.buffer, self.offset, self.nbytes = buffer, offset, nbytes


# A held weight dtype -> the constant convert.wgsl (SRC, DST) and lora.wgsl (W_KIND) switch on.
DTYPE_KINDS = {"f32": "0", "f16": "1", "bf16": "2"}


def act_constant(op: str, act, geglu: bool = False) -> str:
    """The ACT constant for `act`, after the contract's check of what `op` fuses."""
    check_act(op, act, geglu)
    return f"{ACT_CODES[act]}u"


def check_tensor(x, op: str, what: str = "x", ndim: int | None = None):
    """x must be a GPUTensor (with ndim axes, when given)."""
    if not isinstance(x, GPUTensor):
        raise SdwebError(f"webgpu {op}: {what} must be a GPU tensor (webgpu.tensor(array)), "
                         f"got {type(x).__name__}")
    if ndim is not None and len(x.shape) != ndim:
        raise SdwebError(f"webgpu {op}: {what} must have {ndim} axes, got shape {x.shape}")


def w_dtype(op: str, *ws) -> str:
    """The common dtype of the weights ws (a GPUTensor counts as f32)."""
    dts = {getattr(w, "dtype", "f32") for w in ws}
    if len(dts) != 1:
        raise SdwebError(f"webgpu {op}: weights of mixed dtypes {sorted(dts)}; upload them in one precision")
    return dts.pop()


def flat_groups(ctx, n: int):
    """The folded 1-D grid covering n elements at WG per workgroup."""
    return ctx.grid(-(-n // WG))
