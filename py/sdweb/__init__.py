"""sdweb: Stable Diffusion text-to-image in Python/NumPy, built to run in Pyodide as well as CPython."""

__version__ = "0.1.0"
