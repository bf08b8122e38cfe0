"""A LoRA fused into a weight on the GPU: shaders/lora.wgsl (reference: backends/numpy.py `fuse_lora`).

    fuse_lora(ctx, weight, up, down, scale) -> weight
        weight  a GPUWeight (O, ...) held f32 | f16 | bf16, updated in its own buffer
        up      (O, r) and down (r, K) float32 host arrays, K = the weight's size / O

Only up and down are uploaded (r (O + K) floats); the product is formed and added on the device, so
the full weight never travels (in the browser: never through the wasm heap).
"""

from __future__ import annotations

import math

import numpy as np

from ....errors import SdwebError
from .common import DTYPE_KINDS, WG, Span


def fuse_lora(ctx, weight, up, down, scale: float):
    O = weight.shape[0] if weight.shape else 0
    n = math.prod(weight.shape)
    up, down = np.asarray(up, np.float32), np.asarray(down, np.float32)
    if not O or up.ndim != 2 or down.ndim != 2 or up.shape[0] != O or up.shape[1] != down.shape[0] \
            or down.shape[1] * O != n:
        raise SdwebError(f"webgpu fuse_lora: up {up.shape} @ down {down.shape} does not fit a weight of shape "
                         f"{weight.shape} (expected up (O, r), down (r, size / O))")
    u, d = ctx.upload(up), ctx.upload(down)
    words = n if weight.dtype == "f32" else -(-n // 2)
    ctx.run("lora", "fuse_lora", [u, d, Span(weight.buffer, weight.offset, weight.nbytes)],
            [("u32", n), ("u32", down.shape[1]), ("u32", up.shape[1]), ("f32", float(scale))],
            ctx.grid(-(-words // WG)), {"W_KIND": DTYPE_KINDS[weight.dtype]})
    return weight
