"""Shared by the WebGPU kernel tests: weights as the store holds them, and the parity check against
the NumPy reference (max error <= tol x max|reference|)."""

import numpy as np

from sdweb.backends import webgpu
from sdweb.weights import f32_to_bf16

TOL = 1e-4


def held(a: np.ndarray, dtype: str) -> np.ndarray:
    """An f32 array as the weight store holds it in `dtype` (bf16 as uint16 bits)."""
    a = a.astype(np.float32)
    return {"f32": lambda: a, "f16": lambda: a.astype(np.float16), "bf16": lambda: f32_to_bf16(a)}[dtype]()


def check(got, ref, tol=TOL):
    got = webgpu.numpy(got) if not isinstance(got, np.ndarray) else got
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = float(np.abs(got - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    assert err <= tol * max(scale, 1e-30), f"max error {err:.3g} > {tol:g} x max|ref| {scale:.3g}"
