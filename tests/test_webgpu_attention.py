"""shaders/attention.wgsl (through webgpu/ops/attention.py) against backends/numpy.py `attention` and a
float64 softmax written out here, on lavapipe or whatever adapter wgpu finds.

Shapes cover token counts that are not multiples of the 32-query / 32-key tiles, every head dim the
SD 1.x/2.x family, CLIP and the VAEs use (several chunks of the head dim, and z-split workgroups at
d = 512), causal masks, batch 2, and scores large enough that softmax without a running max would
overflow. Bound: max |gpu - ref| <= 1e-4 * max |ref| (f32 throughout).
"""

from __future__ import annotations

import numpy as np
import pytest

from sdweb.backends import numpy as nb
from sdweb.errors import SdwebError

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

from sdweb.backends.webgpu.ops import attention as gpu_attention  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    return webgpu.context()


def naive(q, k, v, heads, causal):
    """float64 softmax(q k^T / sqrt(d)) v per head, the whole score matrix at once."""
    N, Lq, D = q.shape
    Lk, d = k.shape[1], D // heads
    qh = q.astype(np.float64).reshape(N, Lq, heads, d).transpose(0, 2, 1, 3)
    kh = k.astype(np.float64).reshape(N, Lk, heads, d).transpose(0, 2, 1, 3)
    vh = v.astype(np.float64).reshape(N, Lk, heads, d).transpose(0, 2, 1, 3)
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d)  # (N, h, Lq, Lk)
    if causal:
        s = np.where(np.triu(np.ones((Lq, Lk), bool), k=1), -np.inf, s)
    s = np.exp(s - s.max(-1, keepdims=True))
    out = (s / s.sum(-1, keepdims=True)) @ vh  # (N, h, Lq, d)
    return out.transpose(0, 2, 1, 3).reshape(N, Lq, D)


def run(ctx, q, k, v, heads, causal=False):
    out = gpu_attention.attention(ctx, ctx.upload(q), ctx.upload(k), ctx.upload(v), heads, causal)
    return ctx.read(out)


def check(got, q, k, v, heads, causal):
    for ref in (nb.attention(q, k, v, heads, causal), naive(q, k, v, heads, causal)):
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 1e-4, f"max error {err:.2e} x max|ref|"


# (N, Lq, Lk, heads, d, causal): every d in use, Lq / Lk off the tiles, heads 1..8
CASES = [
    (2, 33, 77, 8, 4, False),     # tiny test models' head dims, cross-attention over 77 tokens
    (2, 77, 77, 2, 8, True),      # CLIP-style causal self-attention
    (2, 130, 33, 3, 16, False),   # tiny VAE (d = 16), more queries than keys
    (2, 70, 77, 5, 40, False),    # SD 1.x 64x64 level head dim, cross-attention
    (2, 77, 77, 2, 64, True),     # CLIP's head dim, causal, two chunks of d
    (2, 33, 130, 1, 80, False),   # SD 1.x 32x32 level, more keys than queries
    (1, 40, 45, 2, 160, True),    # SD 1.x 16x16 level: four chunks of d in one workgroup
    (2, 37, 33, 1, 512, False),   # VAE mid-block: d split over z workgroups
    (1, 35, 40, 1, 164, False),   # 7 chunks of 24 (the last partial) over 2 z groups of 4: one idle slot
]


@pytest.mark.parametrize("N,Lq,Lk,heads,d,causal", CASES)
def test_matches_reference(ctx, N, Lq, Lk, heads, d, causal):
    rng = np.random.default_rng(d * 1000 + Lq)
    q = rng.standard_normal((N, Lq, heads * d), dtype=np.float32)
    k = rng.standard_normal((N, Lk, heads * d), dtype=np.float32)
    v = rng.standard_normal((N, Lk, heads * d), dtype=np.float32)
    check(run(ctx, q, k, v, heads, causal), q, k, v, heads, causal)


def test_large_scores_are_stable(ctx):
    """Scores of several hundred: exp() overflows f32 unless the running max is subtracted, and the
    max moves between key tiles (the rescale path), including a causal row whose max arrives late."""
    rng = np.random.default_rng(1)
    N, L, heads, d = 1, 100, 2, 16
    q = rng.standard_normal((N, L, heads * d), dtype=np.float32) * 12
    k = rng.standard_normal((N, L, heads * d), dtype=np.float32) * 12
    k[:, 70] *= 3  # one dominant key in a late tile
    v = rng.standard_normal((N, L, heads * d), dtype=np.float32)
    for causal in (False, True):
        got = run(ctx, q, k, v, heads, causal)
        assert np.isfinite(got).all()
        check(got, q, k, v, heads, causal)


def test_column_views_of_a_fused_projection(ctx):
    """q, k, v as (tensor, col0) views into one (N, L, 3*h*d) tensor: row stride and element offset
    travel in the uniform, and the result equals attention on the three separate tensors."""
    rng = np.random.default_rng(2)
    N, L, heads, d = 2, 45, 2, 24
    D = heads * d
    qkv = rng.standard_normal((N, L, 3 * D), dtype=np.float32)
    t = ctx.upload(qkv)
    got = ctx.read(gpu_attention.attention(ctx, (t, 0), (t, D), (t, 2 * D), heads))
    q, k, v = (np.ascontiguousarray(qkv[..., i * D:(i + 1) * D]) for i in range(3))
    assert got.shape == (N, L, D)
    check(got, q, k, v, heads, False)


def test_no_score_matrix_is_allocated(ctx):
    """1,024 tokens: an (Lq, Lk) f32 score buffer would be 4 MB; the call allocates only its output."""
    rng = np.random.default_rng(3)
    N, L, heads, d = 1, 1024, 1, 40
    q, k, v = (rng.standard_normal((N, L, heads * d), dtype=np.float32) for _ in range(3))
    tq, tk, tv = ctx.upload(q), ctx.upload(k), ctx.upload(v)
    ctx.submit()
    ctx.reset_peak()
    before = ctx.peak_bytes
    out = gpu_attention.attention(ctx, tq, tk, tv, heads)
    got = ctx.read(out)
    grown = ctx.peak_bytes - before
    assert grown <= out.nbytes * 9 // 8, f"attention reserved {grown} bytes for a {out.nbytes}-byte output"
    assert grown < L * L * 4 // 16
    check(got, q, k, v, heads, False)


def test_bad_shapes_are_refused(ctx):
    x = ctx.upload(np.zeros((1, 4, 8), np.float32))
    y = ctx.upload(np.zeros((2, 4, 8), np.float32))
    z = ctx.upload(np.zeros((1, 5, 8), np.float32))
    with pytest.raises(SdwebError, match="divide the width 8"):
        gpu_attention.attention(ctx, x, x, x, 3)
    with pytest.raises(SdwebError, match="batch sizes differ"):
        gpu_attention.attention(ctx, x, y, y, 2)
    with pytest.raises(SdwebError, match="token counts differ"):
        gpu_attention.attention(ctx, x, x, z, 2)


def test_plan_covers_every_head_dim():
    """The chunking the host picks: d is padded by less than one chunk and every workgroup keeps at
    most 160 output columns in registers."""
    for d in list(range(1, 200)) + [256, 320, 512, 640]:
        dc, nch, nv, z = gpu_attention.plan(d)
        assert dc % 8 == 0 and dc <= 40
        assert (nch - 1) * dc < d <= nch * dc
        assert nv * dc <= 160 and (z - 1) * nv < nch <= z * nv
