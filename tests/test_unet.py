"""UNet2DConditionModel parity against diffusers on tiny random models of each config family."""

import functools
import pathlib
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402

from sdweb.backends import numpy as B  # noqa: E402
from sdweb.errors import ModelError, WeightError  # noqa: E402
from sdweb.safetensors import SafetensorsFile  # noqa: E402
from sdweb.unet import UNet2DConditionModel  # noqa: E402
from sdweb.weights import WeightStore  # noqa: E402

# Each config is a family the real checkpoints use (comments name the real model it mirrors).
CONFIGS = {
    # SD 1.x: integer attention_head_dim (= heads), conv projections, UpBlock2D first.
    "sd1": dict(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=2,
                attention_head_dim=4, cross_attention_dim=24, norm_num_groups=8),
    # SD 2.x: per-block head list, linear projections, three blocks, two transformer layers.
    "sd2": dict(block_out_channels=[32, 64, 64],
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                layers_per_block=1, attention_head_dim=[2, 4, 4], cross_attention_dim=16,
                use_linear_projection=True, transformer_layers_per_block=[1, 2, 1], norm_num_groups=8),
    # BK-SDM small/tiny: no mid block, attention in every block.
    "nomid": dict(block_out_channels=[32, 48], down_block_types=["CrossAttnDownBlock2D"] * 2,
                  up_block_types=["CrossAttnUpBlock2D"] * 2, layers_per_block=1, mid_block_type=None,
                  attention_head_dim=8, cross_attention_dim=16, norm_num_groups=16),
    # the rest of the resnet and downsampler options: outputs scaled by mid_block_scale_factor, and
    # downsample_padding 0 (a right/bottom pad before the stride-2 conv, as in the VAE).
    "scaled": dict(block_out_channels=[16, 32], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
                   attention_head_dim=2, cross_attention_dim=8, norm_num_groups=4, mid_block_scale_factor=1.41,
                   downsample_padding=0),
    # freq_shift 1 and sin before cos (the other time-embedding conventions).
    "heads": dict(block_out_channels=[16, 32], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
                  attention_head_dim=2, cross_attention_dim=8, norm_num_groups=4, freq_shift=1,
                  flip_sin_to_cos=False),
}


@functools.cache
def _build(name):
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="sdweb-unet-"))
    torch.manual_seed(0)
    cfg = dict(CONFIGS[name], sample_size=8, in_channels=4, out_channels=4)
    ref = diffusers.UNet2DConditionModel(**cfg).eval()
    with torch.no_grad():  # random init leaves conv_out at zero-ish scale; make every tensor matter
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, dict(ref.config), path


def build(_tmp_path, name):
    return _build(name)


def load(config, path, precision="fp32"):
    store = WeightStore([SafetensorsFile(str(path))], "unet", precision)
    model = UNet2DConditionModel(config, store.prefix(""), B)
    store.finish()
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("t", [1.0, 501.0, 999.0])
def test_unet_matches_diffusers(tmp_path, name, t):
    ref, config, path = build(tmp_path, name)
    model = load(config, path)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 16, 8), dtype=np.float32)  # non-square on purpose
    ctx = rng.standard_normal((2, 7, config["cross_attention_dim"]), dtype=np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.tensor(t), torch.from_numpy(ctx)).sample.numpy()
    got = model(x, t, ctx)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_unet_half_precision_close(tmp_path):
    ref, config, path = build(tmp_path, "sd1")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    ctx = rng.standard_normal((1, 7, 24), dtype=np.float32)
    want = load(config, path)(x, 10.0, ctx)
    for precision in ("fp16", "bf16"):
        got = load(config, path, precision)(x, 10.0, ctx)
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert 0 < rel < (2e-2 if precision == "bf16" else 3e-3), (precision, rel)


def test_unet_wrong_shape_is_named(tmp_path):
    _, config, path = build(tmp_path, "sd1")
    bad = dict(config, cross_attention_dim=32)
    with pytest.raises(WeightError, match=r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k\.weight"):
        load(bad, path)


def test_unet_unsupported_config(tmp_path):
    _, config, path = build(tmp_path, "sd1")
    with pytest.raises(ModelError, match="addition_embed_type"):
        load(dict(config, addition_embed_type="text_time"), path)
