"""fuse_lora on the GPU (shaders/lora.wgsl, ops/lora.py) against its NumPy reference (backends/numpy.py
`fuse_lora`), for weights held f32, f16 and bf16, linear and conv shapes, odd sizes, on lavapipe.

Both sides add the same f32 product to the same held weight and round once; only the order of the
rank-r sum differs (a loop on the GPU, BLAS on the host), so f32 results agree to ~1e-7 relative and
16-bit ones bit for bit except where the two sums fall on either side of a rounding boundary: there
they are one unit in the last place apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdweb.backends import numpy as nb
from sdweb.lora import LoraPatch
from sdweb.weights import Patched
from gpu_checks import held  # noqa: E402

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)


def held_bits(w) -> np.ndarray:
    """A GPUWeight's bytes as the store would hold them: float32, or the 16-bit patterns as uint16."""
    data = webgpu.context().bridge.read_buffer(w.buffer, 0, w.nbytes)
    n = int(np.prod(w.shape))
    if w.dtype == "f32":
        return np.frombuffer(data, np.float32)[:n].reshape(w.shape)
    return np.frombuffer(data, np.uint16)[:n].reshape(w.shape)


def as_bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16) if a.dtype == np.float16 else a


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape, rank", [((37, 53), 4), ((64, 32, 3, 3), 8), ((3, 5, 1, 1), 1), ((320, 321), 16)])
def test_fuse_lora_equals_numpy(dtype, shape, rank):
    rng = np.random.default_rng([len(dtype), *shape, rank])
    w = held(rng.standard_normal(shape, dtype=np.float32), dtype)
    up = rng.standard_normal((shape[0], rank), dtype=np.float32) * 0.3
    down = rng.standard_normal((rank, int(np.prod(shape[1:]))), dtype=np.float32) * 0.3
    want = as_bits(nb.fuse_lora(w, up, down, -0.7))
    got = held_bits(webgpu.fuse_lora(webgpu.weight(w), up, down, -0.7))
    assert got.shape == want.shape and got.dtype == want.dtype
    if dtype == "f32":
        assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    else:
        off = np.abs(got.astype(np.int32) - want.astype(np.int32))
        assert off.max() <= 1 and (off == 0).mean() > 0.99, (off.max(), (off == 0).mean())
    # the weight really moved: the update is no rounding error
    assert not np.array_equal(got, as_bits(w))


def test_patched_weights_fuse_in_order():
    """weight() of a weights.Patched uploads the base and fuses each patch, as the NumPy backend does."""
    rng = np.random.default_rng(1)
    w = held(rng.standard_normal((24, 40), dtype=np.float32), "f16")
    patches = tuple(LoraPatch("unet", "x.weight", rng.standard_normal((24, r), dtype=np.float32),
                              rng.standard_normal((r, 40), dtype=np.float32), s, (24, 40))
                    for r, s in ((2, 0.5), (3, -1.25)))
    want = as_bits(nb.weight(Patched(w, patches)))
    off = np.abs(held_bits(webgpu.weight(Patched(w, patches))).astype(np.int32) - want.astype(np.int32))
    assert off.max() <= 1 and (off == 0).mean() > 0.99


def test_misfit_is_refused():
    w = webgpu.weight(np.zeros((4, 6), np.float32))
    with pytest.raises(Exception, match=r"up \(4, 2\) @ down \(2, 5\) does not fit a weight of shape \(4, 6\)"):
        webgpu.fuse_lora(w, np.zeros((4, 2), np.float32), np.zeros((2, 5), np.float32), 1.0)
