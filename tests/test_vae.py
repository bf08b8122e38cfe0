"""sdweb.vae.AutoencoderKL against diffusers' AutoencoderKL (tiny random models, fp32).

Each model is saved with `safetensors.torch.save_file` as diffusers writes it today (attention
`to_q/to_k/to_v/to_out.0`) and, where it has a mid-block attention, with the legacy names
`query/key/value/proj_attn` that SD 1.5's and 2.1's default VAE files use; then read back through
sdweb's own reader and compared on decode and encode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from safetensors.torch import save_file

from sdweb.backends import numpy as B
from sdweb.errors import ModelError, WeightError
from sdweb.safetensors import SafetensorsFile
from sdweb.vae import AutoencoderKL
from sdweb.weights import WeightStore

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

CONFIGS = {
    # two blocks, mid attention, 4x latent downscale
    "two": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
    # three blocks (channel change and no change), two resnets per down block, no mid attention
    "three_noattn": dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
                         mid_block_add_attention=False),
    # one block: no up/down samplers at all
    "one": dict(block_out_channels=(16,), layers_per_block=1, norm_num_groups=4, latent_channels=2),
}


def make_ref(name: str, seed: int = 0):
    kw = dict(CONFIGS[name])
    n = len(kw["block_out_channels"])
    torch.manual_seed(seed)
    model = RefAutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n, **kw).eval()
    with torch.no_grad():
        # norms start at (1, 0): perturb them so a mix-up of weight and bias or of norms can show
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.2 * torch.randn_like(p))
    return model


def config_of(model) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()}


def save(model, path, legacy: bool = False):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if legacy:
        for k in list(sd):
            for new, old in LEGACY.items():
                if f".attentions.0.{new}." in k:
                    sd[k.replace(f".{new}.", f".{old}.")] = sd.pop(k)
    save_file(sd, str(path))
    return path


def load(config, path, precision="fp32", **kw):
    store = WeightStore([SafetensorsFile(str(path))], "vae", precision)
    vae = AutoencoderKL(config, store.prefix(""), B, **kw)
    store.finish()
    return vae, store


def assert_close(ours, ref):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    ours = B.numpy(ours)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), f"max abs error {err} vs max |ref| {np.abs(ref).max()}"


def inputs(model, N=2, size=16, seed=1):
    rng = np.random.default_rng(seed)
    f = 2 ** (len(model.config.block_out_channels) - 1)
    z = rng.standard_normal((N, model.config.latent_channels, size // f, size // f), dtype=np.float32)
    x = rng.uniform(-1, 1, (N, 3, size, size)).astype(np.float32)
    return z, x


@pytest.mark.parametrize("name, legacy",
                         [("two", False), ("two", True), ("three_noattn", False), ("one", False)])
def test_decode_and_encode_match_diffusers(tmp_path, name, legacy):
    ref = make_ref(name)
    vae, _ = load(config_of(ref), save(ref, tmp_path / "vae.safetensors", legacy))
    z, x = inputs(ref)
    with torch.no_grad():
        want_img = ref.decode(torch.from_numpy(z)).sample
        dist = ref.encode(torch.from_numpy(x)).latent_dist
    assert_close(vae.decode(B.tensor(z)), want_img)
    moments = vae.encode(B.tensor(x))
    assert_close(moments, dist.parameters)
    assert_close(B.numpy(moments)[:, : ref.config.latent_channels], dist.mean)


def test_odd_latent_size_and_batch_of_one(tmp_path):
    """A 5x7 latent (a 40x56 image at f=8 is the real case): nothing assumes square or even sizes."""
    ref = make_ref("two")
    vae, _ = load(config_of(ref), save(ref, tmp_path / "vae.safetensors"))
    z = np.random.default_rng(3).standard_normal((1, 4, 5, 7), dtype=np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample
    assert_close(vae.decode(B.tensor(z)), want)


def test_scale_factors_and_config_defaults(tmp_path):
    ref = make_ref("two")
    path = save(ref, tmp_path / "vae.safetensors")
    cfg = config_of(ref)
    cfg.pop("scaling_factor")  # as SD 1.5's vae/config.json
    vae, _ = load(cfg, path)
    assert vae.scale_factor == 2 and vae.scaling_factor == 0.18215
    vae, _ = load(dict(cfg, scaling_factor=0.13025), path)
    assert vae.scaling_factor == 0.13025
    three = make_ref("three_noattn")
    assert load(config_of(three), save(three, tmp_path / "b.safetensors"))[0].scale_factor == 4


@pytest.mark.parametrize("without", ["encoder", "decoder"])
def test_one_half_leaves_the_other_unread(tmp_path, without):
    """encoder=False (text-to-image) or decoder=False (encoding an input image): the other half's
    tensors are skipped on purpose, and what is built computes what the whole model does."""
    ref = make_ref("two")
    path = save(ref, tmp_path / "vae.safetensors")
    full, full_store = load(config_of(ref), path)
    half, half_store = load(config_of(ref), path, **{without: False})  # finish() passes: skipped on purpose
    assert half_store.nbytes_held < full_store.nbytes_held
    z, x = inputs(ref)
    run, missing = ("decode", "encode") if without == "encoder" else ("encode", "decode")
    arg = {"decode": z, "encode": x}
    np.testing.assert_array_equal(B.numpy(getattr(half, run)(B.tensor(arg[run]))),
                                  B.numpy(getattr(full, run)(B.tensor(arg[run]))))
    with pytest.raises(ModelError, match=f"{without}=False"):
        getattr(half, missing)(B.tensor(arg[missing]))


def test_wrong_shape_is_named(tmp_path):
    ref = make_ref("two")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    sd["decoder.up_blocks.0.resnets.1.conv2.weight"] = torch.zeros(32, 32, 1, 1)
    save_file(sd, str(tmp_path / "vae.safetensors"))
    name = r"decoder\.up_blocks\.0\.resnets\.1\.conv2\.weight"
    shapes = r" has shape \[32, 32, 1, 1\] but the config needs \[32, 32, 3, 3\]"
    with pytest.raises(WeightError, match=name + shapes):
        load(config_of(ref), tmp_path / "vae.safetensors")


def test_config_disagreeing_with_file_lists_missing_and_unused(tmp_path):
    """A file with mid attention read with mid_block_add_attention=false: its attention is unused;
    a config with more layers than the file: the extra resnets are missing."""
    ref = make_ref("two")
    path = save(ref, tmp_path / "vae.safetensors")
    with pytest.raises(WeightError, match=r"unused.*decoder\.mid_block\.attentions\.0\.to_q\.weight"):
        load(dict(config_of(ref), mid_block_add_attention=False), path)
    with pytest.raises(WeightError, match=r"missing.*encoder\.down_blocks\.0\.resnets\.1\.norm1\.weight"):
        load(dict(config_of(ref), layers_per_block=2), path)


def test_unsupported_config_is_named():
    with pytest.raises(ModelError, match="up_block_types"):
        AutoencoderKL({"block_out_channels": [8], "up_block_types": ["AttnUpDecoderBlock2D"]}, None, B)
    with pytest.raises(ModelError, match="norm_num_groups"):
        AutoencoderKL({"block_out_channels": [8, 12], "norm_num_groups": 8,
                       "down_block_types": ["DownEncoderBlock2D"] * 2,
                       "up_block_types": ["UpDecoderBlock2D"] * 2}, None, B)


def psnr(a, b) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((np.clip(a, -1, 1) - np.clip(b, -1, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


@pytest.mark.parametrize("precision, min_db", [("fp16", 50.0), ("bf16", 35.0)])
def test_half_precision_weights(tmp_path, precision, min_db):
    """Weights held in fp16/bf16 (f32 arithmetic) decode close to the fp32 reference."""
    ref = make_ref("two")
    vae, _ = load(config_of(ref), save(ref, tmp_path / "vae.safetensors"), precision)
    z, _ = inputs(ref)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy()
    got = B.numpy(vae.decode(B.tensor(z)))
    rel = np.abs(got - want).max() / np.abs(want).max()
    db = psnr(got, want)
    print(f"VAE decode, {precision} weights: PSNR {db:.1f} dB, max abs error / max|ref| = {rel:.2e}")
    assert db > min_db


@pytest.mark.parametrize("fixture, variant", [("sd1_tiny", None), ("sd1_tiny", "fp16"), ("sd2_tiny", None),
                                              ("nomid_tiny", None)])
def test_tiny_model_folders(request, diffusers_pipe, fixture, variant):
    """The test models in the Hub layout (legacy and new attention names, with and without
    scaling_factor) against the VAE of diffusers' pipeline loaded from the same folder."""
    from sdweb.model import ModelFolder

    folder = request.getfixturevalue(fixture)
    ref = diffusers_pipe(folder, variant).vae
    model = ModelFolder(folder)
    store = model.weights("vae", "fp32", variant)
    vae = AutoencoderKL(model.config("vae"), store.prefix(""), B)
    store.finish()
    assert vae.scaling_factor == ref.config.scaling_factor
    assert vae.scale_factor == 2 ** (len(ref.config.block_out_channels) - 1)
    z, x = inputs(ref, N=1, size=4 * vae.scale_factor)
    with torch.no_grad():
        want_img = ref.decode(torch.from_numpy(z)).sample
        want_moments = ref.encode(torch.from_numpy(x)).latent_dist.parameters
    assert_close(vae.decode(B.tensor(z)), want_img)
    assert_close(vae.encode(B.tensor(x)), want_moments)


# --- tiling: diffusers' enable_tiling() / enable_slicing() ----------------------------------------


def ref_tiled(ref, tile_sample: int):
    """diffusers' model with tiling on and tiles of tile_sample pixels (its own attributes)."""
    ref.enable_tiling()
    ref.tile_sample_min_size = tile_sample
    ref.tile_latent_min_size = tile_sample // 2 ** (len(ref.config.block_out_channels) - 1)
    return ref


@pytest.mark.parametrize("name", ["two", "three_noattn"])
def test_tiled_decode_and_encode_match_diffusers(tmp_path, name):
    """Tiles of 16 px over a 40 x 56 image (so tiles of every kind: whole, cut by the edge, and
    the narrow last row and column that lie wholly inside their neighbours' overlap), two images."""
    ref = ref_tiled(make_ref(name), 16)
    vae, _ = load(config_of(ref), save(ref, tmp_path / "vae.safetensors"))
    vae.tile_sample_min_size, vae.tile_latent_min_size = ref.tile_sample_min_size, ref.tile_latent_min_size
    f = vae.scale_factor
    rng = np.random.default_rng(5)
    z = rng.standard_normal((2, ref.config.latent_channels, 40 // f, 56 // f), dtype=np.float32)
    x = rng.uniform(-1, 1, (2, 3, 40, 56)).astype(np.float32)
    with torch.no_grad():
        want_img = ref.decode(torch.from_numpy(z)).sample.numpy()
        want_moments = ref.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()
        whole = ref.disable_tiling() or ref.decode(torch.from_numpy(z)).sample.numpy()
    assert psnr(whole, want_img) < 60  # the tiles show: a test that one pass would pass is no test
    got_img = B.numpy(vae.decode(B.tensor(z), tiling="on"))
    got_moments = B.numpy(vae.encode(B.tensor(x), tiling="on"))
    print(f"tiled {name}: decode PSNR {psnr(got_img, want_img):.1f} dB, "
          f"encode max err {np.abs(got_moments - want_moments).max():.1e}")
    assert psnr(got_img, want_img) >= 40
    assert_close(got_img, want_img)
    assert_close(got_moments, want_moments)
