"""sdweb.weights: prefix views, shape checks, use-once, one error listing everything, held precision."""

from __future__ import annotations

import re

import numpy as np
import pytest
import safetensors.torch
import torch

from sdweb.errors import ConfigError, WeightError
from sdweb.safetensors import SafetensorsFile
from sdweb.weights import WeightStore, f32_to_bf16


def _bits16(t: torch.Tensor) -> np.ndarray:
    """A torch f16/bf16 tensor's bit patterns as uint16."""
    return t.view(torch.int16).numpy().view(np.uint16)


def _hard_f32(n=4096) -> torch.Tensor:
    """Random floats plus the cases rounding gets wrong: ties to even in both directions, overflow
    to inf, subnormals, signed zeros, infinities."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g) * torch.logspace(-8, 8, n)
    special = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80_7FFF, 0x3F80_8001,  # bf16 ties / near-ties
                        0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x80000001, 0x0000_8000,  # overflow, subnormals
                        0x3F802000, 0x3F806000], np.uint32).view(np.float32)            # f16 ties
    extra = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65520.0, 1e-8, 6e-8, 3e-5], np.float32)
    return torch.cat([x, torch.from_numpy(special), torch.from_numpy(extra)])


@pytest.fixture
def ckpt(tmp_path):
    """A small 'unet' file (real-looking names) with tensors stored in f32, f16, bf16 and i64."""
    g = torch.Generator().manual_seed(1)
    x = _hard_f32()
    ts = {
        "down_blocks.0.resnets.1.conv1.weight": torch.randn(320, 4, 3, 3, generator=g),
        "down_blocks.0.resnets.1.conv1.bias": torch.randn(320, generator=g),
        "down_blocks.0.resnets.1.norm1.weight": torch.randn(4, generator=g).half(),
        "down_blocks.0.resnets.1.norm1.bias": torch.randn(4, generator=g).bfloat16(),
        "conv_in.weight": torch.randn(8, 4, 3, 3, generator=g),
        "hard.f32": x,
        "hard.f16": x.half(),
        "hard.bf16": x.bfloat16(),
        "text_model.embeddings.position_ids": torch.arange(77).reshape(1, 77),
    }
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    safetensors.torch.save_file(ts, str(path))
    return path, ts


def _store(path, precision="fp32"):
    return WeightStore([SafetensorsFile(path)], "unet", precision)


def test_prefix_views_nest_and_get_returns_the_tensor(ckpt):
    path, ts = ckpt
    store = _store(path)
    view = store.prefix("down_blocks.0").prefix("resnets.1")
    assert "conv1.weight" in view and "conv2.weight" not in view
    assert sorted(view.keys()) == sorted(k[len("down_blocks.0.resnets.1."):] for k in ts if k.startswith("down_blocks.0.resnets.1."))
    assert view.shape("conv1.weight") == (320, 4, 3, 3) and view.shape("nope") is None
    w = view.get("conv1.weight", (320, 4, 3, 3))
    np.testing.assert_array_equal(w, ts["down_blocks.0.resnets.1.conv1.weight"].numpy())
    assert w.dtype == np.float32
    assert store.prefix("").get("conv_in.weight", [8, 4, 3, 3]).shape == (8, 4, 3, 3)


def test_fp32_f32_tensor_is_the_mmap_view(ckpt):
    path, ts = ckpt
    f = SafetensorsFile(path)
    store = WeightStore([f], "unet", "fp32")
    w = store.get("hard.f32", ts["hard.f32"].shape)
    assert not w.flags.owndata and not w.flags.writeable
    assert np.shares_memory(w, f.read("hard.f32"))


@pytest.mark.parametrize("source", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_precision_conversion_matches_torch(ckpt, source, precision):
    path, ts = ckpt
    t = ts[f"hard.{source}"]
    got = _store(path, precision).get(f"hard.{source}", t.shape)
    if precision == "fp32":
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, t.float().numpy())
    elif precision == "fp16":
        assert got.dtype == np.float16
        want = _bits16(t.half())
        nan = np.isnan(got)
        np.testing.assert_array_equal(nan, torch.isnan(t.half()).numpy())
        np.testing.assert_array_equal(got.view(np.uint16)[~nan], want[~nan])
    else:
        assert got.dtype == np.uint16
        want = _bits16(t.bfloat16())
        np.testing.assert_array_equal(got, want)


def test_bf16_rounding_matches_torch_including_nan():
    x = torch.cat([_hard_f32(), torch.tensor([float("nan")])])
    got = f32_to_bf16(x.numpy())
    want = _bits16(x.bfloat16())
    assert got[-1] & 0x7F80 == 0x7F80 and got[-1] & 0x7F  # still a NaN
    np.testing.assert_array_equal(got[:-1], want[:-1])
    assert f32_to_bf16(np.float32(1.00390625)).shape == ()  # 0-d in, 0-d out, tie rounds to even (1.0)
    assert int(f32_to_bf16(np.float32(1.00390625))) == 0x3F80


def test_integer_tensors_are_returned_as_stored(ckpt):
    path, _ = ckpt
    ids = _store(path, "bf16").get("text_model.embeddings.position_ids", (1, 77))
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids[0], np.arange(77))


def test_shape_mismatch_names_the_key_and_both_shapes(ckpt):
    path, ts = ckpt
    store = _store(path)
    view = store.prefix("down_blocks.0.resnets.1")
    w = view.get("conv1.weight", (320, 320, 3, 3))
    assert w.shape == (320, 320, 3, 3) and not w.any()  # placeholder so construction goes on
    for k in ts:
        if k != "down_blocks.0.resnets.1.conv1.weight":
            store.skip(k)
    with pytest.raises(WeightError) as e:
        store.finish()
    assert str(e.value) == "unet: down_blocks.0.resnets.1.conv1.weight has shape [320, 4, 3, 3] but the config needs [320, 320, 3, 3]"


def test_missing_and_unused_are_listed_in_one_error(ckpt):
    path, _ = ckpt
    store = _store(path, "fp16")
    view = store.prefix("mid_block.attentions.0")
    w = view.get("proj_in.weight", (16, 8))
    assert w.shape == (16, 8) and w.dtype == np.float16 and not w.any()
    store.get("conv_in.weight", (8, 4, 3, 3))
    store.get("down_blocks.0.resnets.1.conv1.bias", (321,))
    store.skip("text_model.embeddings.position_ids")
    store.skip("not.in.the.file")  # skipping an absent tensor is fine
    with pytest.raises(WeightError) as e:
        store.finish()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unet: ")
    assert "down_blocks.0.resnets.1.conv1.bias has shape [320] but the config needs [321]" in msg
    assert "missing 1 tensor(s) the config needs: mid_block.attentions.0.proj_in.weight" in msg
    unused = re.search(r"unused by the config: (.*)$", msg).group(1).split(", ")
    assert sorted(unused) == sorted([
        "down_blocks.0.resnets.1.conv1.weight", "down_blocks.0.resnets.1.norm1.weight",
        "down_blocks.0.resnets.1.norm1.bias", "hard.f32", "hard.f16", "hard.bf16",
    ])
    assert "position_ids" not in msg and "conv_in" not in msg
    assert store.missing == ["mid_block.attentions.0.proj_in.weight"]


def test_long_lists_are_capped(ckpt):
    path, ts = ckpt
    store = _store(path)
    for i in range(25):
        store.get(f"up_blocks.{i}.weight", (1,))
    for k in ts:
        store.skip(k)
    with pytest.raises(WeightError) as e:
        store.finish()
    msg = str(e.value)
    assert "missing 25 tensor(s)" in msg and "up_blocks.9.weight and 15 more" in msg
    assert "up_blocks.10.weight" not in msg


def test_each_tensor_is_used_exactly_once(ckpt):
    path, ts = ckpt
    store = _store(path)
    store.get("conv_in.weight", (8, 4, 3, 3))
    with pytest.raises(WeightError, match=r"unet: conv_in\.weight was asked for twice"):
        store.prefix("conv_in").get("weight", (8, 4, 3, 3))
    store.get("absent", (2,))
    with pytest.raises(WeightError, match="absent was asked for twice"):
        store.get("absent", (2,))
    store.skip("hard.f32")
    with pytest.raises(WeightError, match="hard.f32 was asked for twice"):
        store.get("hard.f32", ts["hard.f32"].shape)


def test_clean_load_finishes_and_counts_bytes(ckpt):
    path, ts = ckpt
    store = _store(path, "bf16")
    for k, t in ts.items():
        store.get(k, t.shape)
    store.finish()  # nothing to report
    ints = ts["text_model.embeddings.position_ids"].numel() * 8
    assert store.nbytes_held == sum(t.numel() for t in ts.values()) * 2 - ts["text_model.embeddings.position_ids"].numel() * 2 + ints


def test_summary_and_sharding(tmp_path):
    a = {"x.weight": torch.ones(3, 4), "x.bias": torch.ones(3).half()}
    b = {"y.weight": torch.ones(5, 2).bfloat16(), "y.ids": torch.arange(7)}
    safetensors.torch.save_file(a, str(tmp_path / "s1.safetensors"))
    safetensors.torch.save_file(b, str(tmp_path / "s2.safetensors"))
    files = [SafetensorsFile(tmp_path / "s1.safetensors"), SafetensorsFile(tmp_path / "s2.safetensors")]
    store = WeightStore(files, "text_encoder")
    assert sorted(store.keys()) == sorted([*a, *b])
    s = store.summary()
    assert s == {
        "tensors": 4,
        "parameters": 12 + 3 + 10 + 7,
        "dtypes": {"F32": 1, "F16": 1, "BF16": 1, "I64": 1},
        "file_bytes": sum((tmp_path / n).stat().st_size for n in ("s1.safetensors", "s2.safetensors")),
    }
    np.testing.assert_array_equal(store.get("y.weight", (5, 2)), np.ones((5, 2), np.float32))
    store.close()


def test_duplicate_across_shards(tmp_path):
    safetensors.torch.save_file({"x": torch.ones(1)}, str(tmp_path / "a.safetensors"))
    safetensors.torch.save_file({"x": torch.ones(1)}, str(tmp_path / "b.safetensors"))
    files = [SafetensorsFile(tmp_path / n) for n in ("a.safetensors", "b.safetensors")]
    with pytest.raises(WeightError, match=r"unet: tensor x is in both .*a\.safetensors and .*b\.safetensors"):
        WeightStore(files, "unet")


def test_bad_precision(ckpt):
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        _store(ckpt[0], "fp8")
