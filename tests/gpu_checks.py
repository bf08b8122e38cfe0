"""Shared by the WebGPU kernel tests: weights as the store holds them, the parity check against the
NumPy reference (max error <= tol x max|reference|), and f16 compute.

f16 compute: the kernels read f16 activations and multiply in f16 (GEMM sums of a K tile, q . k four
at a time), keeping f32 for the rest (sums across K tiles, softmax, norm statistics, epilogues).
Against the reference given the same f16-rounded inputs the error is then a few f16 roundings of the
result: F16_TOL = 4e-3 x max|ref| (2^-11 = 4.9e-4 is one rounding; measured 4e-4 .. 1.5e-3)."""

import contextlib

import numpy as np

from sdweb.backends import webgpu
from sdweb.weights import f32_to_bf16

TOL = 1e-4
F16_TOL = 4e-3


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


def as_computed(a: np.ndarray, t: str) -> np.ndarray:
    """An activation as a `t` tensor holds it (f16-rounded for f16), in f32: the reference's input."""
    return a.astype(np.float16).astype(np.float32) if t == "f16" else a


def tol(t: str) -> float:
    return F16_TOL if t == "f16" else TOL


@contextlib.contextmanager
def computing(ctx, t: str = "f32", subgroups: bool | None = None):
    """Tensors made in the block hold `t`; subgroups on or off (None: the adapter's)."""
    saved = ctx.compute, ctx.subgroups
    ctx.set_compute(t)
    if subgroups is not None:
        ctx.subgroups = subgroups and "subgroups" in ctx.features
    try:
        yield ctx
    finally:
        ctx.compute, ctx.subgroups = saved
