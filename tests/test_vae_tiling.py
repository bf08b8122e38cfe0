"""The VAE's tiling (vae.py: diffusers' enable_tiling() and enable_slicing(), chosen by `tiling`
auto | on | off): which plan each backend's limits lead to, that the activation sizes the plan is
made from are the ones the passes really make, that SD 1.5 decodes at 512 x 512 on an adapter with
WebGPU's default 128 MiB binding limit and at 1024 x 1024 on every adapter (the counting bridge:
the real backend code, no device), and that tiles on the GPU equal diffusers' tiles (lavapipe).
The NumPy tiles against diffusers: tests/test_vae.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdweb.backends import contract
from sdweb.backends import numpy as nb
from sdweb.errors import ConfigError
from sdweb.safetensors import SafetensorsFile
from sdweb.vae import AutoencoderKL
from sdweb.weights import WeightStore
from test_vae import config_of, load, make_ref, psnr, ref_tiled, save

SD15_VAE = Path(__file__).parent / "data" / "real-configs" / "stable-diffusion-v1-5" / "vae" / "config.json"


def placeholder_vae(config: dict, backend, encoder=True) -> AutoencoderKL:
    """A VAE of the config's shapes with zero weights (a store without files): for plans."""
    return AutoencoderKL(config, WeightStore([], "vae", "fp16", lazy=backend.takes_weight_refs).prefix(""),
                         backend, encoder)


def test_plans_follow_the_backends_limit(monkeypatch):
    cfg = json.loads(SD15_VAE.read_text())
    vae = placeholder_vae(cfg, nb)
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor) == (512, 64, 0.25)
    dec = vae.decoder.activation_shapes
    # SD's decoder at 512 x 512: 256 channels at full size, 256 MiB, is its largest activation
    assert max(4 * np.prod(s) for s in dec(1, 64, 64)) == 256 << 20

    def plan(tiling, n, h, decoding=True):
        return vae._plan(tiling, dec if decoding else vae.encoder.activation_shapes, n, h, h, decoding)

    monkeypatch.setattr(nb, "MAX_ACTIVATION_BYTES", 256 << 20)
    assert plan("auto", 1, 64) == (1, None)  # fits: one pass
    assert plan("auto", 2, 64) == (1, None)  # two images do not: one at a time (enable_slicing)
    assert plan("auto", 1, 128) == (1, (512, 64))  # 1024 x 1024: diffusers' 512-pixel tiles fit
    assert plan("on", 2, 64) == (1, None)  # diffusers leaves an image of one tile whole
    assert plan("on", 1, 65) == (1, (512, 64))
    assert plan("off", 4, 256) == (4, None)
    monkeypatch.setattr(nb, "MAX_ACTIVATION_BYTES", 64 << 20)
    assert plan("auto", 1, 64) == (1, (256, 32))  # halved until a tile fits
    assert plan("on", 1, 128) == (1, (256, 32))
    assert plan("auto", 1, 1024, decoding=False) == (1, (256, 32))  # encode: 128 channels at full size
    with pytest.raises(ConfigError, match="vae tiling 'yes' is not one of auto, on, off"):
        plan("yes", 1, 64)


def test_activation_shapes_are_the_largest_the_passes_make(tmp_path, monkeypatch):
    """The plan's sizes against every tensor the NumPy backend's ops return during real passes."""
    ref = make_ref("three_noattn")
    vae, _ = load(config_of(ref), save(ref, tmp_path / "vae.safetensors"))
    made = []
    for name in set(contract.OPS) - {"tensor", "numpy", "weight", "check_weights", "shape", "fits"}:
        op = getattr(nb, name)
        monkeypatch.setattr(nb, name, lambda *a, _op=op, **k: made.append(_op(*a, **k)) or made[-1])
    for n, h, w in ((2, 5, 7), (1, 4, 4)):
        made.clear()
        vae.decode(nb.tensor(np.zeros((n, 4, h, w), np.float32)), tiling="off")
        assert max(x.size for x in made) == max(np.prod(s) for s in vae.decoder.activation_shapes(n, h, w))
        made.clear()
        vae.encode(nb.tensor(np.zeros((n, 3, 4 * h, 4 * w), np.float32)), tiling="off")
        assert max(x.size for x in made) == max(np.prod(s) for s in vae.encoder.activation_shapes(n, 4 * h, 4 * w))


def test_slices_and_tiles_on_numpy_equal_diffusers(tmp_path, monkeypatch):
    """auto with a budget the batch exceeds: image by image, the one-pass numbers; with a budget a
    whole image exceeds: tiles, diffusers' tiled numbers at the tile size the halving reached."""
    ref = make_ref("two")
    vae, _ = load(config_of(ref), save(ref, tmp_path / "vae.safetensors"))
    z = np.random.default_rng(2).standard_normal((2, 4, 24, 20), dtype=np.float32)
    whole = nb.numpy(vae.decode(nb.tensor(z), tiling="off"))
    biggest = max(4 * np.prod(s) for s in vae.decoder.activation_shapes(1, 24, 20))
    monkeypatch.setattr(nb, "MAX_ACTIVATION_BYTES", biggest)
    sliced = nb.numpy(vae.decode(nb.tensor(z)))
    np.testing.assert_allclose(sliced, whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    monkeypatch.setattr(nb, "MAX_ACTIVATION_BYTES", biggest // 4)
    assert vae._plan("auto", vae.decoder.activation_shapes, 2, 24, 20, True) == (1, (16, 8))
    with torch.no_grad():
        want = ref_tiled(ref, 16).decode(torch.from_numpy(z)).sample.numpy()
    got = nb.numpy(vae.decode(nb.tensor(z)))
    assert psnr(got, want) >= 40 and np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


# --- the WebGPU backend: the counting bridge (SD 1.5's shapes) and lavapipe -----------------------

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")


def counted_decode(adapter, size, tiling="auto", encode=False):
    """SD 1.5's VAE (zero weights) over the counting bridge: -> (output shape, GPU peak bytes)."""
    from sdweb.backends.bridges.counting import CountingBridge, counting

    with counting(CountingBridge(adapter)) as ctx:
        vae = placeholder_vae(json.loads(SD15_VAE.read_text()), webgpu, encoder=encode)
        if encode:
            out = vae.encode(webgpu.tensor(np.zeros((1, 3, size, size), np.float32)), tiling=tiling)
        else:
            out = vae.decode(webgpu.tensor(np.zeros((1, 4, size // 8, size // 8), np.float32)), tiling=tiling)
        return webgpu.shape(out), ctx.peak_bytes


def test_sd15_fits_webgpu_default_limits():
    with pytest.raises(webgpu.GPULimitError, match=r"activation \(1, 256, 512, 512\) needs 256 MB but this "
                                                   r"adapter's maxStorageBufferBindingSize is 128 MB"):
        counted_decode("webgpu-default", 512, tiling="off")
    one_pass = counted_decode("desktop", 512)
    assert one_pass[0] == (1, 3, 512, 512)
    for adapter in ("webgpu-default", "swiftshader", "desktop"):
        for size in (512, 1024):
            shape, peak = counted_decode(adapter, size)
            assert shape == (1, 3, size, size)
            # never more GPU memory than the one-pass 512 x 512 decode (+10%: tiles' own shapes)
            assert peak <= 1.1 * one_pass[1], (adapter, size, peak / 2**20)
        assert counted_decode(adapter, 1024, encode=True)[0] == (1, 8, 128, 128)


def test_tiles_on_webgpu_equal_diffusers(tmp_path):
    if not webgpu.available():
        pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)")
    ref = ref_tiled(make_ref("two"), 16)
    path = save(ref, tmp_path / "vae.safetensors")
    store = WeightStore([SafetensorsFile(str(path))], "vae", "fp32")
    vae = AutoencoderKL(config_of(ref), store.prefix(""), webgpu)
    store.finish()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 16, 8
    rng = np.random.default_rng(5)
    z = rng.standard_normal((1, 4, 20, 28), dtype=np.float32)
    x = rng.uniform(-1, 1, (1, 3, 40, 56)).astype(np.float32)
    with torch.no_grad():
        want_img = ref.decode(torch.from_numpy(z)).sample.numpy()
        want_moments = ref.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()
    got_img = webgpu.numpy(vae.decode(webgpu.tensor(z), tiling="on"))
    got_moments = webgpu.numpy(vae.encode(webgpu.tensor(x), tiling="on"))
    print(f"WebGPU tiles: decode PSNR {psnr(got_img, want_img):.1f} dB")
    assert psnr(got_img, want_img) >= 40
    assert np.abs(got_img - want_img).max() <= 1e-4 * np.abs(want_img).max()
    assert np.abs(got_moments - want_moments).max() <= 1e-4 * np.abs(want_moments).max()
