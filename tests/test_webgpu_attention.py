"""shaders/attention.wgsl (through webgpu/ops/attention.py) against backends/numpy.py `attention` and a
float64 softmax written out here, on lavapipe or whatever adapter wgpu finds.

Shapes cover token counts that are not multiples of the query and key steps, every head dim the SD
1.x/2.x family, CLIP and the VAEs use (40 to 160, 512 split over z workgroups, and the test models'
4 to 16), a head dim that is not a multiple of 4 (scalar loads), causal masks, batch 2, scores large
enough that softmax without a running max would overflow, every configuration the tuner picks from,
f16 compute, and the ladder's older kernel. Bound: max |gpu - ref| <= 1e-4 * max |ref| in f32; f16
compute as gpu_checks.py says.
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
from gpu_checks import as_computed, computing, tol  # noqa: E402


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


def run(ctx, q, k, v, heads, causal=False, config=None):
    out = gpu_attention.attention(ctx, ctx.upload(q), ctx.upload(k), ctx.upload(v), heads, causal, config)
    return ctx.read(out)


def check(got, q, k, v, heads, causal, t="f32"):
    q, k, v = (as_computed(a, t) for a in (q, k, v))
    for ref in (nb.attention(q, k, v, heads, causal), naive(q, k, v, heads, causal)):
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= tol(t), f"max error {err:.2e} x max|ref|"


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
    (1, 35, 40, 1, 164, False),   # 41 vec4s over 3 z slices of 14: the last slice partial
    (1, 35, 40, 2, 6, True),      # d % 4 != 0: scalar loads and stores
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
    """The head dim as vec4s: padded by less than one vec4, each invocation accumulating at most
    MAX_OUT4 of them, over the fewest z slices."""
    for d in list(range(1, 200)) + [256, 320, 512, 640]:
        d4, od4, z = gpu_attention.plan(d)
        assert d4 * 4 - 4 < d <= d4 * 4
        assert od4 <= gpu_attention.MAX_OUT4 and (z - 1) * od4 < d4 <= z * od4
        assert z == -(-d4 // gpu_attention.MAX_OUT4)


@pytest.mark.parametrize("t", ["f32", "f16"])
def test_every_configuration(ctx, t):
    """64 or 128 queries per workgroup, 8, 16 or 32 keys per step, at SD's 80-wide and CLIP's causal
    64-wide heads, with the token counts off every step."""
    for N, Lq, Lk, heads, d, causal in [(2, 70, 77, 2, 80, False), (1, 77, 77, 2, 64, True)]:
        rng = np.random.default_rng(d)
        q, k, v = (rng.standard_normal((N, L, heads * d), dtype=np.float32) for L in (Lq, Lk, Lk))
        with computing(ctx, t):
            configs = gpu_attention.candidates(ctx, d, t)
            assert len(configs) == 6
            for c in configs:
                check(run(ctx, q, k, v, heads, causal, c), q, k, v, heads, causal, t)


@pytest.mark.parametrize("N,Lq,Lk,heads,d,causal", [CASES[0], CASES[3], CASES[6], CASES[7], CASES[9]])
def test_f16_compute(ctx, N, Lq, Lk, heads, d, causal):
    rng = np.random.default_rng(d + 5)
    q, k, v = (rng.standard_normal((N, L, heads * d), dtype=np.float32) for L in (Lq, Lk, Lk))
    with computing(ctx, "f16"):
        check(run(ctx, q, k, v, heads, causal), q, k, v, heads, causal, "f16")


def test_rule(ctx):
    """ONNX Runtime's 64 queries and 16 keys per step, fewer keys where the rows would not fit 16 KiB
    of workgroup storage (the VAE's single head of 512 in f32)."""
    assert gpu_attention.pick(ctx, 40, "f32") == gpu_attention.Attn(64, 16)
    small = type(ctx)(ctx.bridge)
    small.limits = dict(ctx.limits, maxComputeWorkgroupStorageSize=16384)
    assert gpu_attention.pick(small, 512, "f32").kstep == 4
    assert gpu_attention.pick(small, 512, "f16").kstep == 8


def test_ladder(ctx, kernel_ladder):
    """The kernel production ran before (scripts/ladder/attention.wgsl), at SD's 40 and CLIP's causal 64."""
    for N, Lq, Lk, heads, d, causal in [CASES[3], CASES[4]]:
        rng = np.random.default_rng(d + 9)
        q, k, v = (rng.standard_normal((N, L, heads * d), dtype=np.float32) for L in (Lq, Lk, Lk))
        got = ctx.read(kernel_ladder.attention_v1(ctx, ctx.upload(q), ctx.upload(k), ctx.upload(v), heads, causal))
        check(got, q, k, v, heads, causal)
