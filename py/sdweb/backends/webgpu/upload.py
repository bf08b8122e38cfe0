"""Weights onto the GPU: a held array or a lazy store's WeightRef -> GPUWeight, and the limit check
made before a component's first upload.

    weight(ctx, w, what=None) -> GPUWeight     w: an array as the store holds it (float32, float16,
                                               or bf16 bits as uint16), or a WeightRef
    fuse(ctx, weights) -> GPUWeight            several GPUWeights' rows in one (a fused projection)
    check_weights(ctx, store)                  GPULimitError naming the first tensor that cannot be bound

A held array is packed as the shaders read it (16-bit dtypes two per u32, little-endian, an odd
count padded with a zero half) and written with the bridge's write_buffer. A WeightRef's bytes go
from its byte source straight into the GPU buffer through the bridge's optional `upload_span` (in
the browser: IndexedDB -> GPU, never through the wasm heap); when the file's dtype is not the held
one they are converted there by shaders/convert.wgsl (ops/convert.py), bit for bit what the store's
host conversion gives.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import SdwebError
from ...weights import WeightRef
from .device import GPUWeight
from .ops import convert

_HELD = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}  # store precision -> GPUWeight dtype
_FROM_FILE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}  # safetensors dtypes the GPU can take as they are
CONVERT_PIECE = 1 << 24  # file bytes converted per dispatch: bounds the temporary buffer (16 MB)


def weight(ctx, w, what: str | None = None) -> GPUWeight:
    """A weight as held by the store, or a WeightRef -> a GPUWeight, uploaded now. `what` (the
    checkpoint name) is only used in the error when it does not fit the adapter."""
    if isinstance(w, WeightRef):
        return _from_ref(ctx, w, what or w.name)
    w = np.asarray(w)
    dtype = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.uint16): "bf16"}.get(w.dtype)
    if dtype is None:
        w, dtype = w.astype(np.float32), "f32"
    flat = np.ascontiguousarray(w).reshape(-1)
    if dtype != "f32" and flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, flat.dtype)])  # whole u32s
    data = flat.tobytes() or bytes(4)
    return GPUWeight(ctx, w.shape, dtype, data, what)


def _from_ref(ctx, ref, what: str) -> GPUWeight:
    """A WeightRef -> GPUWeight in the held dtype, its bytes uploaded from the source by the bridge."""
    src = _FROM_FILE.get(ref.dtype)
    if ref.source is None or src is None or ref.size == 0 or not hasattr(ctx.bridge, "upload_span"):
        # The host path: placeholders (zeros), integer and F64 tensors (none is a model weight: F64
        # would need a converter of its own for no checkpoint we know), empty tensors, and bridges
        # that cannot read a byte source themselves.
        return weight(ctx, ref.read(), what)
    dt = _HELD[ref.precision]
    n = ref.size
    nbytes = 4 * n if dt == "f32" else 4 * -(-n // 2)  # 16-bit: two per u32, an odd count padded
    w = GPUWeight(ctx, ref.shape, dt, None, what, nbytes)
    if src == dt:
        ctx.bridge.upload_span(w.buffer, ref.source, ref.offset, ref.nbytes)
    else:
        _upload_converted(ctx, w, ref, src)
    return w


def _upload_converted(ctx, w: GPUWeight, ref, src: str):
    """Fill `w` (held dtype w.dtype) from ref's bytes of file dtype `src`: a piece of at most
    CONVERT_PIECE bytes at a time goes into a scratch buffer and convert.wgsl writes it into `w`.
    Pieces hold an even number of elements, so each starts on a whole u32 of a 16-bit `w`."""
    isz = 4 if src == "f32" else 2
    per = max(2, (CONVERT_PIECE // isz) & ~1)
    n = ref.size
    tmp_bytes = -(-min(per, n) * isz // 4) * 4
    tmp = ctx.scratch(tmp_bytes, f"the conversion buffer of {ref.name}")
    try:
        for e0 in range(0, n, per):
            cnt = min(per, n - e0)
            # upload_span, like write_buffer, lands after the previous piece's recorded dispatch
            ctx.bridge.upload_span(tmp, ref.source, ref.offset + e0 * isz, cnt * isz)
            convert.convert(ctx, tmp, cnt, src, w, e0)
    finally:
        ctx.drop_scratch(tmp, tmp_bytes)


def fuse(ctx, weights) -> GPUWeight:
    """GPUWeights (rows_i, *rest) of one dtype -> one GPUWeight (sum rows_i, *rest) holding their rows
    in order, copied on the GPU (convert.wgsl `place`): a fused QKV projection is one GEMM."""
    weights = list(weights)
    dts = {w.dtype for w in weights}
    rest = {tuple(w.shape[1:]) for w in weights}
    if len(dts) != 1 or len(rest) != 1:
        raise SdwebError(f"fuse_weights: parts {[f'{w.shape}:{w.dtype}' for w in weights]} differ in dtype or "
                         "in their trailing shape")
    dt = dts.pop()
    shape = (sum(w.shape[0] for w in weights), *rest.pop())
    n = math.prod(shape)
    fused = GPUWeight(ctx, shape, dt, None, "a fused weight", 4 * n if dt == "f32" else 4 * -(-n // 2))
    first = 0
    for w in weights:
        convert.place(ctx, w, fused, first)
        first += w.size
        ctx.part_of_fused(w)
    return fused


def check_weights(ctx, store) -> None:
    """Raise GPULimitError naming the first tensor of a WeightStore that cannot be bound on this
    adapter, before any is uploaded ("unet conv_in.weight needs ... but ...")."""
    per = {"fp32": 4, "fp16": 2, "bf16": 2}[store.precision]
    for full in store.keys():
        if store.dtype(full) in ("F32", "F16", "BF16"):
            ctx.check_size(per * math.prod(store.shape(full)), f"{store.component} {full}")
