"""The matmul kernel ladder (gpu.cpp style), for scripts/bench_kernels.py and the kernel tests: each
rung a linear layer through production's host code (webgpu/ops/matmul.py `linear`), the kernel
picked by version number instead of by production's rule.

    linear(ctx, x, weight, bias=None, act=None, version=3)

  0 naive, 1 16x16 shared-memory tiles (both in matmul_ladder.wgsl beside this file, which includes
  shaders/matmul.wgsl), 2 production's matmul_tiled (64x64 tiles, 4x4 per invocation), 3 production's
  matmul_vec4 (2 with vec4 loads; production's choice where K % 4 == 0), 4 matmul_vec4 with 8x8 per
  invocation (128x128 tiles). 3 and 4 need K % 4 == 0.
"""

from __future__ import annotations

from pathlib import Path

from sdweb.backends.webgpu.ops import matmul
from sdweb.errors import SdwebError

SHADER = Path(__file__).resolve().with_name("matmul_ladder.wgsl")
VERSIONS = {
    0: (SHADER, "matmul_v0", 1),
    1: (SHADER, "matmul_v1", 1),
    2: matmul.TILED,
    3: matmul.VEC4,
    4: ("matmul", "matmul_vec4", 8),
}


def linear(ctx, x, weight, bias=None, act: str | None = None, version: int = 3):
    if version not in VERSIONS:
        raise SdwebError(f"matmul version {version} does not exist; use one of {tuple(VERSIONS)}")
    return matmul.linear(ctx, x, weight, bias, act, kernel=VERSIONS[version])
