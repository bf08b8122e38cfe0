"""Prompt weights applied to text-encoder output, as A1111's "Original" emphasis (modules/sd_emphasis.py),
and the rule for a prompt and a negative prompt of different chunk counts. The NumPy reference; a
GPU backend mirrors these two functions.

    z (..., 77, D) hidden states of one chunk, weights (77,) from prompt_syntax.Chunk.weights
      -> z * weights[:, None], rescaled so that the tensor's mean is what it was before weighting

    cond (N, 77 * a, D), uncond (N, 77 * b, D), empty (77, D) the encoded empty prompt
      -> both with 77 * max(a, b) positions, the shorter extended by copies of `empty`
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

__all__ = ["apply_emphasis", "match_chunk_counts"]

CHUNK_LENGTH = 77  # bos + 75 prompt tokens + eos


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


def match_chunk_counts(cond: np.ndarray, uncond: np.ndarray, empty: np.ndarray):
    """cond (N, 77 * a, D), uncond (N, 77 * b, D), empty (77, D) or (1, 77, D) -> (cond, uncond), each
    (N, 77 * max(a, b), D): the one with fewer chunks gets copies of the encoded empty prompt appended
    (A1111's pad_cond_uncond). Equal counts come back untouched."""
    empty = np.asarray(empty).reshape(CHUNK_LENGTH, -1)
    for name, z in (("cond", cond), ("uncond", uncond)):
        if z.ndim != 3 or z.shape[1] % CHUNK_LENGTH or z.shape[2] != empty.shape[1]:
            raise ConfigError(f"{name} has shape {z.shape}: expected (N, 77 * chunks, {empty.shape[1]})")
    n = max(cond.shape[1], uncond.shape[1])

    def extend(z):
        missing = (n - z.shape[1]) // CHUNK_LENGTH
        if not missing:
            return z
        pad = np.broadcast_to(empty.astype(z.dtype, copy=False), (z.shape[0], CHUNK_LENGTH, z.shape[2]))
        return np.concatenate([z] + [pad] * missing, axis=1)

    return extend(cond), extend(uncond)
