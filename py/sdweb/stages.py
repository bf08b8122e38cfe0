"""Runs as generators that stop before each readback.

Model code that must read a backend tensor back in the middle of its work (Pipeline.stages, the
prompt encoder, the VAE's tiles) is written as a generator: it yields the tensor just before it reads
it, so a driver can wait for the GPU there (the page's worker awaits it: sdweb.browser.drive), and
returns its result. `run` is the driver where a readback can simply block.
"""

from __future__ import annotations

from typing import Generator, TypeVar

T = TypeVar("T")


def run(stages: Generator[object, None, T]) -> T:
    """Drive a stages generator to its return value, each readback blocking where it stands (CPython,
    or the page's worker with JavaScript Promise Integration)."""
    while True:
        try:
            next(stages)
        except StopIteration as done:
            return done.value
