"""sdweb.model: diffusers folder layout, variant and shard choice, resolving --model arguments."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch

from sdweb.errors import ModelError
from sdweb.model import ModelFolder, resolve_model
from sdweb.weights import WeightStore

# SD 1.5's model_index.json (verbatim content): safety_checker is [null, null] in the real file.
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _weights(path, tensors):
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.fixture
def folder(tmp_path):
    """A small SD-like folder: unet with plain + fp16 files, text_encoder (transformers' name), vae
    .bin only, tokenizer and scheduler files, no safety_checker / feature_extractor folders."""
    root = tmp_path / "tiny-sd"
    _json(root / "model_index.json", MODEL_INDEX)
    _json(root / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", "in_channels": 4})
    _weights(root / "unet" / "diffusion_pytorch_model.safetensors", {"conv_in.weight": torch.ones(8, 4, 3, 3)})
    _weights(root / "unet" / "diffusion_pytorch_model.fp16.safetensors", {"conv_in.weight": torch.ones(8, 4, 3, 3).half()})
    _json(root / "text_encoder" / "config.json", {"hidden_size": 32})
    _weights(root / "text_encoder" / "model.safetensors", {"text_model.embeddings.position_ids": torch.arange(77).reshape(1, 77)})
    _json(root / "vae" / "config.json", {"latent_channels": 4})
    (root / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"PK\x03\x04 pickle")
    _json(root / "scheduler" / "scheduler_config.json", {"_class_name": "PNDMScheduler", "skip_prk_steps": True})
    _json(root / "tokenizer" / "tokenizer_config.json", {"model_max_length": 77})
    _json(root / "tokenizer" / "vocab.json", {"a</w>": 0})
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    return root


def test_reads_index_and_configs(folder):
    m = ModelFolder(folder)
    assert m.index == MODEL_INDEX
    assert m.config("unet") == {"_class_name": "UNet2DConditionModel", "in_channels": 4}
    assert m.config("scheduler")["skip_prk_steps"] is True
    assert m.config("tokenizer") == {"model_max_length": 77}
    assert m.tokenizer_dir == folder / "tokenizer"
    assert m.components_present() == ["scheduler", "text_encoder", "tokenizer", "unet", "vae"]


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelError) as e:
        ModelFolder(tmp_path)
    assert str(e.value) == f"{tmp_path} is not a diffusers model folder: model_index.json not found (download one with `sdweb download REPO`)"
    with pytest.raises(ModelError, match=r"no such model folder.*sdweb download"):
        ModelFolder(tmp_path / "absent")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file, not a diffusers model folder"):
        ModelFolder(tmp_path / "f.txt")
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"model_index\.json is not valid JSON"):
        ModelFolder(tmp_path)


def test_missing_component_and_config(folder):
    m = ModelFolder(folder)
    with pytest.raises(ModelError, match=r"has no safety_checker/ folder \(model_index\.json lists: feature_extractor, safety_checker"):
        m.config("safety_checker")
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(ModelError, match=r"unet/config\.json not found"):
        m.config("unet")
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelError, match=r"scheduler/scheduler_config\.json not found"):
        m.config("scheduler")
    (folder / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(ModelError, match=r"tokenizer/merges\.txt not found"):
        m.tokenizer_dir
    with pytest.raises(ModelError, match="no feature_extractor/ folder"):
        m.weight_files("feature_extractor")


def test_variant_choice(folder):
    m = ModelFolder(folder)
    unet = folder / "unet"
    assert m.weight_files("unet") == [unet / "diffusion_pytorch_model.safetensors"]
    assert m.weight_files("unet", variant="fp16") == [unet / "diffusion_pytorch_model.fp16.safetensors"]
    assert m.weight_files("text_encoder") == [folder / "text_encoder" / "model.safetensors"]
    assert m.weight_files("text_encoder", variant="fp16") == [folder / "text_encoder" / "model.safetensors"]  # falls back
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    assert m.weight_files("unet") == [unet / "diffusion_pytorch_model.fp16.safetensors"]  # fp16-only repos
    assert m.weight_files("unet", variant="non_ema") == [unet / "diffusion_pytorch_model.fp16.safetensors"]


def test_weights_store(folder):
    m = ModelFolder(folder)
    store = m.weights("unet", "fp16", variant="fp16")
    assert isinstance(store, WeightStore) and store.component == "unet" and store.precision == "fp16"
    w = store.get("conv_in.weight", (8, 4, 3, 3))
    assert w.dtype == np.float16 and (w == 1).all()
    store.finish()
    store.close()


def test_bin_only_component(folder):
    with pytest.raises(ModelError) as e:
        ModelFolder(folder).weight_files("vae")
    msg = str(e.value)
    assert msg.startswith(f"{folder}: vae/ has no .safetensors weights (looked for ")
    assert "it holds diffusion_pytorch_model.bin, but sdweb reads only .safetensors weights" in msg
    assert "diffusion_pytorch_model.safetensors, diffusion_pytorch_model.safetensors.index.json" in msg
    assert "diffusion_pytorch_model.fp16.safetensors" in msg
    (folder / "vae" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(ModelError) as e:
        ModelFolder(folder).weights("vae")
    assert "vae/ has no .safetensors weights (looked for diffusion_pytorch_model.safetensors" in str(e.value)
    assert "it holds" not in str(e.value)  # config.json alone: nothing else to name


def test_bad_shard_indexes(folder):
    m = ModelFolder(folder)
    te = folder / "text_encoder"
    (te / "model.safetensors").unlink()
    index = te / "model.safetensors.index.json"
    _json(index, {"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    with pytest.raises(ModelError, match=r"model-00001-of-00002\.safetensors not found: model\.safetensors\.index\.json lists it"):
        m.weight_files("text_encoder")
    _json(index, {"weight_map": {"a": "../unet/diffusion_pytorch_model.safetensors"}})
    with pytest.raises(ModelError, match="should be a plain .safetensors file name"):
        m.weight_files("text_encoder")
    _json(index, {"metadata": {}})
    with pytest.raises(ModelError, match="weight_map should be"):
        m.weight_files("text_encoder")


@pytest.fixture(scope="module")
def diffusers_vae(tmp_path_factory):
    """A tiny AutoencoderKL saved by diffusers itself: plain, fp16 variant, and both sharded."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        latent_channels=4, norm_num_groups=4, layers_per_block=1)
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    base = tmp_path_factory.mktemp("diffusers")
    # save_pretrained removes other weight files in its folder, so each goes to its own, merged later
    vae.save_pretrained(str(base / "single"))
    vae.save_pretrained(str(base / "sharded"), max_shard_size="20KB")
    vae.half().save_pretrained(str(base / "sharded16"), max_shard_size="10KB", variant="fp16")
    return state, {label: base / label for label in ("single", "sharded", "sharded16")}


def _merge(dst, *srcs):
    _json(dst / "model_index.json", MODEL_INDEX)
    (dst / "vae").mkdir()
    for src in srcs:
        for p in src.iterdir():
            shutil.copy(p, dst / "vae" / p.name)
    return ModelFolder(dst)


def test_diffusers_saved_sharded_and_variants(tmp_path, diffusers_vae):
    state, saved = diffusers_vae
    m = _merge(tmp_path, saved["sharded"], saved["sharded16"])
    plain = m.weight_files("vae")
    assert [p.name for p in plain] == [f"diffusion_pytorch_model-0000{i}-of-0000{len(plain)}.safetensors" for i in range(1, len(plain) + 1)]
    assert len(plain) > 1
    fp16 = m.weight_files("vae", variant="fp16")
    assert len(fp16) > 1 and all(p.name.startswith("diffusion_pytorch_model.fp16-") for p in fp16)
    for variant, precision, tol in [(None, "fp32", 0), ("fp16", "fp16", 0), ("fp16", "fp32", 1e-3)]:
        store = m.weights("vae", precision, variant=variant)
        assert store.summary()["dtypes"] == {"F32" if variant is None else "F16": len(state)}
        for k, t in state.items():
            got = store.get(k, t.shape)
            want = t.numpy() if variant is None else t.half().numpy()
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=0, err_msg=k)
        store.finish()
        store.close()


def test_single_file_preferred_over_shards(tmp_path, diffusers_vae):
    _, saved = diffusers_vae
    m = _merge(tmp_path, saved["single"], saved["sharded16"])
    assert m.weight_files("vae") == [tmp_path / "vae" / "diffusion_pytorch_model.safetensors"]


def test_resolve_model(folder, tmp_path, monkeypatch):
    assert resolve_model(str(folder)).path == folder
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDWEB_WEIGHTS", raising=False)
    local = tmp_path / "weights" / "someone" / "tiny-sd"
    shutil.copytree(folder, local)
    assert resolve_model("someone/tiny-sd").path.resolve() == local.resolve()
    # $SDWEB_WEIGHTS comes first
    other = tmp_path / "elsewhere"
    shutil.copytree(folder, other / "someone" / "tiny-sd")
    monkeypatch.setenv("SDWEB_WEIGHTS", str(other))
    assert resolve_model("someone/tiny-sd").path == other / "someone" / "tiny-sd"
    with pytest.raises(ModelError) as e:
        resolve_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert "model stable-diffusion-v1-5/stable-diffusion-v1-5 not found" in str(e.value)
    assert str(e.value).endswith("run `sdweb download stable-diffusion-v1-5/stable-diffusion-v1-5` first")
    with pytest.raises(ModelError, match="no such model folder, and not a Hub repo id"):
        resolve_model("./no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="model_index.json not found"):
        resolve_model("empty")


def test_resolve_autoencoder(taesd_tiny, tmp_path, monkeypatch):
    """"taesd" is the catalogue's tiny autoencoder, looked up where `sdweb download` puts it; a folder
    or another repo id works too; a tiny autoencoder given as --model is named for what it is."""
    from sdweb.model import AutoencoderFolder, resolve_autoencoder

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDWEB_WEIGHTS", raising=False)
    with pytest.raises(ModelError, match=r"tiny autoencoder madebyollin/taesd not found \(looked in "
                                         r"weights/madebyollin/taesd\): run `sdweb download madebyollin/taesd` first"):
        resolve_autoencoder("taesd")
    local = tmp_path / "weights" / "madebyollin" / "taesd"
    shutil.copytree(taesd_tiny, local)
    found = resolve_autoencoder("taesd")
    assert isinstance(found, AutoencoderFolder) and found.path.resolve() == local.resolve()
    assert found.weight_files() == [found.path / "diffusion_pytorch_model.safetensors"]
    assert found.config()["_class_name"] == "AutoencoderTiny"
    assert resolve_autoencoder(str(taesd_tiny)).path == taesd_tiny
    assert resolve_autoencoder("madebyollin/taesd").path.resolve() == local.resolve()
    with pytest.raises(ModelError, match="is a tiny autoencoder, not a Stable Diffusion model: use it with --decoder"):
        resolve_model(str(taesd_tiny))
    with pytest.raises(ModelError, match="is not a tiny autoencoder folder: config.json not found"):
        resolve_autoencoder(str(tmp_path))
