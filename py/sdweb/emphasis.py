"""Prompt weights applied to text-encoder output, as A1111's "Original" emphasis (modules/sd_emphasis.py),
and the rule for a prompt and a negative prompt of different chunk counts.

    z (..., 77, D) hidden states of one chunk, weights (77,) from prompt_syntax.Chunk.weights
      -> z * weights[:, None], rescaled so that the tensor's mean is what it was before weighting

    cond, uncond: lists of chunk states (a chunks and b chunks), empty(side): the encoded empty prompt
      -> both lists max(a, b) long, the shorter extended by the empty prompt's chunk

The pipeline applies the emphasis on the host (a weighted chunk's states are read back: 77 x D
floats per row) and concatenates the chunks on the backend.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

__all__ = ["apply_emphasis", "match_chunk_counts"]


def apply_emphasis(z: np.ndarray, weights) -> np.ndarray:
    """z (..., L, D) float, weights (L,) -> (..., L, D): `z * w[:, None] * (mean(z) / mean(z * w[:, None]))`,
    the mean over each chunk's whole (L, D) tensor.

    All-1.0 weights return z itself, unchanged: A1111's result there is z * 1.0 * (m / m), the same
    numbers, and a prompt without weights must give exactly the unweighted encoding.
    """
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 1 or z.shape[-2] != w.shape[0]:
        raise ConfigError(f"emphasis weights of shape {w.shape} do not fit hidden states of shape "
                          f"{z.shape} (expected ({z.shape[-2]},))")
    if np.all(w == 1.0):
        return z
    axes = (-2, -1)
    before = z.mean(axis=axes, keepdims=True, dtype=np.float64)
    weighted = z * w[:, None]
    after = weighted.mean(axis=axes, keepdims=True, dtype=np.float64)
    return (weighted * (before / after).astype(z.dtype)).astype(z.dtype, copy=False)


def match_chunk_counts(cond: list, uncond: list, empty) -> tuple[list, list]:
    """cond, uncond: one hidden-state tensor (N, 77, D) per chunk (any backend's); empty(side) -> the
    empty prompt encoded as `side` ("cond" or "uncond") is encoded, asked only for a side that is
    short -> (cond, uncond) as new lists of equal length, the shorter extended by copies of its
    empty chunk (A1111's pad_cond_uncond). The caller concatenates each along the sequence axis."""
    n = max(len(cond), len(uncond))
    out = []
    for side, chunks in (("cond", cond), ("uncond", uncond)):
        missing = n - len(chunks)
        out.append(list(chunks) + [empty(side)] * missing if missing else list(chunks))
    return out[0], out[1]
