"""sdweb: Stable Diffusion text-to-image in Python/NumPy, built to run in Pyodide as well as CPython."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# NumPy's OpenBLAS keeps its worker threads spinning for ~2^28 cycles (~0.1 s) after each GEMM, on
# the cores that the NumPy backend's own threads need for the elementwise work between GEMMs: on 2
# cores that cost ~7 % of a UNet step (8.78 -> 8.25 s). 2^4 cycles: they sleep at once. OpenBLAS reads
# this when NumPy is first imported, so it has effect only if sdweb is imported first (the CLI, the
# benchmarks); a value the user set wins.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
