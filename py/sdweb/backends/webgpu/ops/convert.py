"""Weight dtype conversion on the GPU: shaders/convert.wgsl (reference: weights.py `_to_held`, the
store's host conversion). upload.py calls it for weights whose file dtype is not the held one.

    convert(ctx, src_buffer, n, src, dst, first) records: elements first .. first + n of the GPUWeight
    `dst` (dtype f32 | f16 | bf16) = the n elements of dtype `src` at the start of bridge buffer
    `src_buffer` (16-bit ones two per u32), converted bit for bit as the host would
"""

from __future__ import annotations

from .common import DTYPE_KINDS, WG, Span


def convert(ctx, src_buffer: int, n: int, src: str, dst, first: int):
    """`first` must be even for a 16-bit `dst` (each piece starts on a whole u32)."""
    isz = 4 if src == "f32" else 2
    words = n if dst.dtype == "f32" else -(-n // 2)
    out_word = first if dst.dtype == "f32" else first // 2
    ctx.run("convert", "convert", [Span(src_buffer, 0, -(-n * isz // 4) * 4), Span(dst.buffer, 0, dst.nbytes)],
            [("u32", n), ("u32", out_word)], ctx.grid(-(-words // WG)),
            {"SRC": DTYPE_KINDS[src], "DST": DTYPE_KINDS[dst.dtype]})
