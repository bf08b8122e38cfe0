"""sdweb.autoencoder_tiny.AutoencoderTiny (TAESD) against diffusers' AutoencoderTiny, fp32.

Random-weight models (with perturbed biases, so a skipped bias or ReLU shows) saved with
`safetensors.torch.save_file` and read back through sdweb's reader, compared on decode and encode;
the tiny test model in the madebyollin/taesd layout; and, where the real trained TAESD is at hand
(`SDWEB_TAESD_DIR`: a folder with its config.json and diffusion_pytorch_model.safetensors), a real
photo's round trip (tests/data/images/).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny as RefAutoencoderTiny
from safetensors.torch import save_file

from sdweb.autoencoder_tiny import AutoencoderTiny
from sdweb.backends import numpy as B
from sdweb.errors import ModelError, WeightError
from sdweb.safetensors import SafetensorsFile
from sdweb.weights import WeightStore
from test_vae import assert_close, config_of  # noqa: E402  (the VAE's parity helpers: same bound)

IMAGES = Path(__file__).parent / "data" / "images"

CONFIGS = {
    # TAESD's shape at 8 channels: 4 stages (f = 8), blocks per stage as the real model's
    "taesd": dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                  num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1)),
    # 3 stages (f = 4), a stage without blocks, other channel and latent counts
    "three": dict(encoder_block_out_channels=(12,) * 3, decoder_block_out_channels=(6,) * 3,
                  num_encoder_blocks=(2, 0, 1), num_decoder_blocks=(1, 2, 0), latent_channels=3,
                  scaling_factor=0.5),
}


def make_ref(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = RefAutoencoderTiny(**CONFIGS[name]).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):  # torch's init leaves them small: make each count
                p.add_(0.1 * torch.randn_like(p))
    return model


def save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def load(config, path, precision="fp32", **kw):
    store = WeightStore([SafetensorsFile(str(path))], "taesd", precision)
    ae = AutoencoderTiny(config, store.prefix(""), B, **kw)
    store.finish()
    return ae, store


def inputs(model, N=2, h=3, w=5, seed=1):
    """Latents (N, C, h, w) of about the spread a UNet's x0 has (tails past the tanh clamp) and
    images (N, 3, h f, w f) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    f = 2 ** (len(model.config.decoder_block_out_channels) - 1)
    z = rng.standard_normal((N, model.config.latent_channels, h, w), dtype=np.float32) * 2
    x = rng.uniform(-1, 1, (N, 3, h * f, w * f)).astype(np.float32)
    return z, x


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_and_encode_match_diffusers(tmp_path, name):
    ref = make_ref(name)
    ae, _ = load(config_of(ref), save(ref, tmp_path / "taesd.safetensors"))
    z, x = inputs(ref)
    with torch.no_grad():
        want_img = ref.decode(torch.from_numpy(z)).sample
        want_lat = ref.encode(torch.from_numpy(x)).latents
    assert_close(ae.decode(B.tensor(z)), want_img)
    assert_close(ae.encode(B.tensor(x)), want_lat)
    assert ae.scale_factor == 2 ** (len(ref.config.decoder_block_out_channels) - 1)
    assert ae.scaling_factor == ref.config.scaling_factor


def test_tiny_model_folder(taesd_tiny):
    """The test model in madebyollin/taesd's layout against diffusers' from_pretrained of the folder."""
    from sdweb.model import AutoencoderFolder

    ref = RefAutoencoderTiny.from_pretrained(taesd_tiny).eval()
    folder = AutoencoderFolder(taesd_tiny)
    store = folder.weights("fp32")
    ae = AutoencoderTiny(folder.config(), store.prefix(""), B)
    store.finish()
    z, x = inputs(ref, N=1, h=4, w=4)
    with torch.no_grad():
        assert_close(ae.decode(B.tensor(z)), ref.decode(torch.from_numpy(z)).sample)
        assert_close(ae.encode(B.tensor(x)), ref.encode(torch.from_numpy(x)).latents)


def test_one_half_only(tmp_path):
    """Previews and draft decodes build the decoder alone: the encoder's tensors stay unread (and
    the other way round for an image going in)."""
    ref = make_ref("three")
    path = save(ref, tmp_path / "taesd.safetensors")
    full, full_store = load(config_of(ref), path)
    dec, dec_store = load(config_of(ref), path, encoder=False)  # finish() passes: skipped on purpose
    enc, _ = load(config_of(ref), path, decoder=False)
    assert dec_store.nbytes_held < full_store.nbytes_held
    z, x = inputs(ref)
    np.testing.assert_array_equal(B.numpy(dec.decode(B.tensor(z))), B.numpy(full.decode(B.tensor(z))))
    np.testing.assert_array_equal(B.numpy(enc.encode(B.tensor(x))), B.numpy(full.encode(B.tensor(x))))
    with pytest.raises(ModelError, match="encoder=False"):
        dec.encode(B.tensor(x))
    with pytest.raises(ModelError, match="decoder=False"):
        enc.decode(B.tensor(z))


def test_half_precision_weights(tmp_path):
    ref = make_ref("taesd")
    ae, _ = load(config_of(ref), save(ref, tmp_path / "taesd.safetensors"), "fp16")
    z, _ = inputs(ref)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy()
    err = np.abs(B.numpy(ae.decode(B.tensor(z))) - want).max() / np.abs(want).max()
    assert 0 < err < 5e-3


def test_mismatched_file_is_named(tmp_path):
    ref = make_ref("three")
    path = save(ref, tmp_path / "taesd.safetensors")
    # a block more in the first stage moves every later position: the store names what is off
    with pytest.raises(WeightError, match=r"missing.*decoder\.layers\.3\.conv\.0\.weight.*unused.*decoder\.layers\.4\.weight"):
        load(dict(config_of(ref), num_decoder_blocks=[2, 2, 0]), path)
    with pytest.raises(WeightError, match=r"decoder\.layers\.0\.weight has shape \[6, 3, 3, 3\] but the config "
                                          r"needs \[6, 4, 3, 3\]"):
        load(dict(config_of(ref), latent_channels=4), path)


@pytest.mark.parametrize("change, message", [
    (dict(act_fn="silu"), "act_fn 'silu' is not supported"),
    (dict(upsample_fn="bilinear"), "upsample_fn 'bilinear' is not supported"),
    (dict(encoder_block_out_channels=[8, 16, 16, 16]), r"encoder_block_out_channels \[8, 16, 16, 16\] should all be "
                                                              "equal"),
    (dict(num_decoder_blocks=[1, 1]), r"decoder_block_out_channels \[8, 8, 8, 8\] and num_decoder_blocks \[1, 1\]"),
])
def test_unsupported_config_is_named(change, message):
    config = dict(config_of(make_ref("taesd")), **change)
    with pytest.raises(ModelError, match=message):
        AutoencoderTiny(config, None, B)


# --- the real trained TAESD -------------------------------------------------------------------------

TAESD_DIR = os.environ.get("SDWEB_TAESD_DIR")
real = pytest.mark.skipif(not TAESD_DIR, reason="SDWEB_TAESD_DIR (a folder with madebyollin/taesd's "
                                                "config.json and diffusion_pytorch_model.safetensors) is not set")


def photo(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(IMAGES / name).convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def round_trip(image: np.ndarray, encode, decode) -> np.ndarray:
    """uint8 (H, W, 3) -> [-1, 1] -> encode -> decode -> uint8, as the pipelines convert images."""
    from sdweb.pipeline import to_uint8

    x = (image.astype(np.float32) / np.float32(127.5) - 1).transpose(2, 0, 1)[None]
    return to_uint8(np.asarray(decode(encode(x)), dtype=np.float32))[0]


@pytest.mark.slow
@real
def test_real_taesd_round_trip_of_a_photo():
    """A photo survives encode -> decode through the trained TAESD (>= 24 dB: the random-weight
    model of the same shape gives about 5 dB), and sdweb's round trip equals diffusers' (>= 40 dB)."""
    from sdweb.model import AutoencoderFolder

    folder = AutoencoderFolder(TAESD_DIR)
    store = folder.weights("fp32")
    ae = AutoencoderTiny(folder.config(), store.prefix(""), B)
    store.finish()
    ref = RefAutoencoderTiny.from_pretrained(TAESD_DIR).eval()
    image = photo("chelsea-256x168.png")
    ours = round_trip(image, lambda x: ae.encode(B.tensor(x)), lambda z: B.numpy(ae.decode(z)))
    with torch.no_grad():
        theirs = round_trip(image, lambda x: ref.encode(torch.from_numpy(x)).latents,
                            lambda z: ref.decode(z).sample.numpy())
    assert psnr(ours, image) >= 24, f"round trip PSNR {psnr(ours, image):.1f} dB"
    assert psnr(ours, theirs) >= 40, f"sdweb vs diffusers PSNR {psnr(ours, theirs):.1f} dB"
