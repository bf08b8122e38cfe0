"""The tiny test models (scripts/make_test_models.py): layout, tensor names, loading, image quality.

References: diffusers / transformers loading the files from disk, the `safetensors` package reading
the headers, the real Hub configs and reconstructed SD 1.5 tensor lists in tests/data/real-configs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

CONFIGS = Path(__file__).resolve().parent / "data" / "real-configs"  # copies of the real Hub files
SD15 = CONFIGS / "stable-diffusion-v1-5"
NAMES = ("sd1-tiny", "sd2-tiny", "nomid-tiny")
PROMPT, OTHER_PROMPT = "a photo of a cat", "a red car on a beach"


@pytest.fixture(scope="module")
def models(test_models_dir):
    return {n: test_models_dir / n for n in NAMES}


def header(path):
    """{name: (dtype, shape)} read by the safetensors package; dtypes as in the header: F32, F16, I64."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        out = {}
        for k in f.keys():
            s = f.get_slice(k)
            out[k] = (s.get_dtype(), list(s.get_shape()))
        return out


def real_names(index_file):
    return {t[0] for t in json.loads((SD15 / "_tensor_index" / index_file).read_text())["tensors"]}


def read_json(path):
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", NAMES)
def test_layout(models, name):
    folder = models[name]
    index = read_json(folder / "model_index.json")
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    for rel in ("scheduler/scheduler_config.json", "text_encoder/config.json", "unet/config.json",
                "vae/config.json", "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json"):
        assert (folder / rel).is_file(), rel
    fp16 = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.fp16.safetensors"))
    if name == "sd1-tiny":
        assert fp16 == ["text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                        "vae/diffusion_pytorch_model.fp16.safetensors"]
    else:
        assert fp16 == []
    assert not list(folder.parent.glob(".*.tmp-*")), "temporary build folder left behind"


def test_inpainting_model_layout(sd1_inpaint_tiny, sd1_tiny):
    """As stable-diffusion-inpainting ships: StableDiffusionInpaintPipeline, a UNet taking 9 channels
    (latents, mask, masked image latents) and giving 4, and diffusers loads it as that pipeline."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    index = read_json(sd1_inpaint_tiny / "model_index.json")
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    assert {k: v for k, v in index.items() if not k.startswith("_")} == \
        {k: v for k, v in read_json(sd1_tiny / "model_index.json").items() if not k.startswith("_")}
    unet = read_json(sd1_inpaint_tiny / "unet/config.json")
    assert (unet["in_channels"], unet["out_channels"]) == (9, 4)
    assert header(sd1_inpaint_tiny / "unet/diffusion_pytorch_model.safetensors")["conv_in.weight"][1][1] == 9
    _, info = UNet2DConditionModel.from_pretrained(sd1_inpaint_tiny, subfolder="unet", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    pipe = StableDiffusionInpaintPipeline.from_pretrained(sd1_inpaint_tiny, dtype=torch.float32)
    assert pipe.unet.config.in_channels == 9


def test_total_size(models):
    total = sum(p.stat().st_size for f in models.values() for p in f.rglob("*") if p.is_file())
    assert total < 40e6, f"test models take {total / 1e6:.1f} MB"


def test_configs_imitate_the_real_files(models):
    sd1, sd2, nomid = (models[n] for n in NAMES)
    # SD 1.5's scheduler verbatim; its VAE config has no scaling_factor (0.18215 is diffusers' default).
    assert read_json(sd1 / "scheduler/scheduler_config.json") == read_json(SD15 / "scheduler/scheduler_config.json")
    assert "scaling_factor" not in read_json(sd1 / "vae/config.json")
    assert set(read_json(sd1 / "vae/config.json")) == set(read_json(SD15 / "vae/config.json"))
    assert set(read_json(sd1 / "text_encoder/config.json")) == set(read_json(SD15 / "text_encoder/config.json"))
    unet1 = read_json(sd1 / "unet/config.json")
    assert isinstance(unet1["attention_head_dim"], int) and "use_linear_projection" not in unet1
    assert read_json(sd1 / "text_encoder/config.json")["hidden_act"] == "quick_gelu"

    unet2 = read_json(sd2 / "unet/config.json")
    assert isinstance(unet2["attention_head_dim"], list) and unet2["use_linear_projection"] is True
    assert unet2["cross_attention_dim"] == read_json(sd2 / "text_encoder/config.json")["hidden_size"]
    assert read_json(sd2 / "text_encoder/config.json")["hidden_act"] == "gelu"
    assert read_json(sd2 / "scheduler/scheduler_config.json")["prediction_type"] == "v_prediction"
    assert read_json(sd2 / "vae/config.json")["scaling_factor"] != 0.18215
    real21 = CONFIGS / "stable-diffusion-2-1-base/tokenizer"
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        assert read_json(sd2 / "tokenizer" / f) == read_json(real21 / f)

    unet3 = read_json(nomid / "unet/config.json")
    assert "mid_block_type" in unet3 and unet3["mid_block_type"] is None
    assert set(unet3) == set(read_json(CONFIGS / "bk-sdm-tiny/unet/config.json"))


# ------------------------------------------------------------------------------- tensor names


def test_text_encoder_names(models):
    real = real_names("text_encoder.json")
    sd1 = header(models["sd1-tiny"] / "text_encoder/model.safetensors")
    assert all(k.startswith("text_model.") for k in sd1)
    assert sd1["text_model.embeddings.position_ids"] == ("I64", [1, 77])
    assert set(sd1) <= real  # fewer layers, same names
    assert {k for k in real if ".layers." not in k} <= set(sd1)
    sd1_16 = header(models["sd1-tiny"] / "text_encoder/model.fp16.safetensors")
    assert set(sd1_16) == set(sd1)
    assert {d for k, (d, _) in sd1_16.items() if k != "text_model.embeddings.position_ids"} == {"F16"}
    assert sd1_16["text_model.embeddings.position_ids"] == ("I64", [1, 77])
    assert {d for d, _ in sd1.values()} == {"F32", "I64"}

    sd2 = header(models["sd2-tiny"] / "text_encoder/model.safetensors")
    assert not any(k.startswith("text_model.") or "position_ids" in k for k in sd2)
    assert {"text_model." + k for k in sd2} <= real

    nomid = header(models["nomid-tiny"] / "text_encoder/model.safetensors")
    assert all(k.startswith("text_model.") for k in nomid) and "text_model.embeddings.position_ids" not in nomid
    for h in (sd1, sd2, nomid):
        (shape,) = [s for k, (_, s) in h.items() if k.endswith("token_embedding.weight")]
        assert shape[0] == 49408  # the real tokenizer's vocabulary


def test_position_ids_values(models):
    from safetensors.numpy import load_file

    ids = load_file(str(models["sd1-tiny"] / "text_encoder/model.safetensors"))["text_model.embeddings.position_ids"]
    np.testing.assert_array_equal(ids, np.arange(77)[None])


def test_vae_names(models):
    legacy, new = real_names("vae_legacy_names.json"), real_names("vae_new_names.json")
    assert legacy != new
    # Same block structure as SD 1.5's VAE, so exactly the real files' names.
    assert set(header(models["sd1-tiny"] / "vae/diffusion_pytorch_model.safetensors")) == legacy
    assert set(header(models["sd1-tiny"] / "vae/diffusion_pytorch_model.fp16.safetensors")) == new
    assert set(header(models["sd2-tiny"] / "vae/diffusion_pytorch_model.safetensors")) == legacy
    nomid = header(models["nomid-tiny"] / "vae/diffusion_pytorch_model.safetensors")
    assert {k for k in nomid if "attentions" in k} == {k for k in new if "attentions" in k}
    sd1 = header(models["sd1-tiny"] / "vae/diffusion_pytorch_model.safetensors")
    assert sd1["decoder.mid_block.attentions.0.query.weight"] == ("F32", [32, 32])  # Linear, as real
    assert sd1["decoder.mid_block.attentions.0.proj_attn.bias"] == ("F32", [32])


def test_unet_names(models):
    real = real_names("unet.json")
    sd1 = header(models["sd1-tiny"] / "unet/diffusion_pytorch_model.safetensors")
    assert set(sd1) <= real  # a subset of SD 1.5's blocks, named as in the real file
    assert set(header(models["sd1-tiny"] / "unet/diffusion_pytorch_model.fp16.safetensors")) == set(sd1)
    assert sd1["down_blocks.0.attentions.0.proj_in.weight"][1] == [32, 32, 1, 1]  # conv proj_in (SD 1.x)
    sd2 = header(models["sd2-tiny"] / "unet/diffusion_pytorch_model.safetensors")
    assert sd2["down_blocks.0.attentions.0.proj_in.weight"][1] == [16, 16]  # linear proj_in (SD 2.x)
    assert "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight" in sd2  # 2 layers there
    nomid = header(models["nomid-tiny"] / "unet/diffusion_pytorch_model.safetensors")
    assert not any(k.startswith("mid_block.") for k in nomid)
    assert any(k.startswith("mid_block.") for k in sd1) and any(k.startswith("mid_block.") for k in sd2)


# ------------------------------------------------------------------------------------ loading


@pytest.fixture(scope="module")
def in_memory(make_test_models):
    """The calibrated modules as built before saving (same seeds), per model, built lazily."""
    import torch

    torch.set_num_threads(1)
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = make_test_models.make_tiny_modules(name)
        return cache[name]

    return get


def assert_close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_files_load_as_the_models_built(models, in_memory, name):
    """diffusers / transformers load every file with no missing or unexpected tensor (legacy VAE
    names and prefixed CLIP names included) and compute what the in-memory models compute."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder, ref = models[name], in_memory(name)
    te, info = CLIPTextModel.from_pretrained(folder / "text_encoder", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    unet, info = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    vae, info = AutoencoderKL.from_pretrained(folder, subfolder="vae", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info

    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    s = unet.config.sample_size
    x = torch.randn(2, 4, s, s, generator=g)
    with torch.no_grad():
        text = te(ids).last_hidden_state
        assert_close(text, ref["text_encoder"](ids).last_hidden_state)
        assert_close(unet(x, 321, text).sample, ref["unet"](x, 321, text).sample)
        assert_close(vae.decode(x).sample, ref["vae"].decode(x).sample)
        img = torch.rand(1, 3, 8 * s, 8 * s, generator=g) * 2 - 1
        assert_close(vae.encode(img).latent_dist.mean, ref["vae"].encode(img).latent_dist.mean)


def test_fp16_variant(sd1_tiny):
    """Each .fp16 file holds the fp32 weights rounded to fp16 (the VAE under its new names)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    for load, kw in ((CLIPTextModel.from_pretrained, dict(pretrained_model_name_or_path=sd1_tiny / "text_encoder")),
                     (UNet2DConditionModel.from_pretrained, dict(pretrained_model_name_or_path=sd1_tiny, subfolder="unet")),
                     (AutoencoderKL.from_pretrained, dict(pretrained_model_name_or_path=sd1_tiny, subfolder="vae"))):
        full = load(**kw).state_dict()
        half, info = load(**kw, variant="fp16", dtype=torch.float16, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        half = half.state_dict()
        assert set(half) == set(full)
        for k, v in full.items():
            assert torch.equal(half[k], v.half() if v.is_floating_point() else v), k


def generate(pipe, prompt=PROMPT, seed=0):
    import torch

    with torch.no_grad():
        x = pipe(prompt, num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator().manual_seed(seed),
                 output_type="np").images[0]
    return np.round(x * 255).astype(np.uint8)


@pytest.mark.parametrize("name", NAMES)
def test_image_is_informative(models, diffusers_pipe, name):
    pipe = diffusers_pipe(models[name])
    a = generate(pipe)
    assert a.shape == (64, 64, 3)
    inside = ((a > 0) & (a < 255)).mean()
    assert inside > 0.9, f"{name}: {inside:.1%} of pixels strictly inside (0, 255)"
    assert a.std() > 10, f"{name}: pixel std {a.std():.1f}"
    assert 60 < a.mean() < 195, f"{name}: mean {a.mean():.1f}"
    for b in (generate(pipe, OTHER_PROMPT), generate(pipe, seed=1)):
        assert np.abs(a.astype(int) - b).mean() > 2, f"{name}: image barely changes with prompt/seed"
    np.testing.assert_array_equal(a, generate(pipe))  # and is reproducible


def test_lcm_tiny(lcm_tiny):
    """lcm-tiny: what diffusers' LatentConsistencyModelPipeline loads (its class in model_index.json, an
    LCMScheduler, a UNet with time_cond_proj_dim and its time_embedding.cond_proj), and an image that
    changes with the guidance scale, an input of the UNet."""
    import torch
    from diffusers import DiffusionPipeline, LatentConsistencyModelPipeline, LCMScheduler

    folder = lcm_tiny
    assert read_json(folder / "model_index.json")["_class_name"] == "LatentConsistencyModelPipeline"
    pipe = DiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert isinstance(pipe, LatentConsistencyModelPipeline) and isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.unet.config.time_cond_proj_dim == 32 and pipe.unet.time_embedding.cond_proj is not None
    pipe.set_progress_bar_config(disable=True)

    def image(guidance):
        with torch.no_grad():
            x = pipe(PROMPT, num_inference_steps=4, guidance_scale=guidance, generator=torch.Generator().manual_seed(0),
                     output_type="np").images[0]
        return np.round(x * 255).astype(np.uint8)

    a = image(8.5)
    assert ((a > 0) & (a < 255)).mean() > 0.9 and a.std() > 10
    assert np.abs(a.astype(int) - image(1.0)).mean() > 2


def test_fp16_variant_pipeline(sd1_tiny, diffusers_pipe):
    a, b = generate(diffusers_pipe(sd1_tiny)), generate(diffusers_pipe(sd1_tiny, variant="fp16"))
    assert np.abs(a.astype(int) - b).mean() < 1  # fp16-rounded weights, fp32 compute


def test_tokenizers(models, diffusers_pipe):
    """The real CLIP tables; SD 2.x pads with '!' (id 0) as transformers reads its files."""
    sd1, sd2 = diffusers_pipe(models["sd1-tiny"]).tokenizer, diffusers_pipe(models["sd2-tiny"]).tokenizer
    cat = [49406, 320, 1125, 539, 320, 2368, 49407]
    for tok, pad in ((sd1, 49407), (sd2, 0)):
        ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length).input_ids
        assert ids == cat + [pad] * 70


def test_pipeline_components(models, diffusers_pipe):
    from diffusers import PNDMScheduler

    for name in NAMES:
        pipe = diffusers_pipe(models[name])
        assert isinstance(pipe.scheduler, PNDMScheduler)
        assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 8
    assert diffusers_pipe(models["nomid-tiny"]).unet.mid_block is None
    assert diffusers_pipe(models["sd1-tiny"]).vae.config.scaling_factor == 0.18215
    assert diffusers_pipe(models["sd2-tiny"]).scheduler.config.prediction_type == "v_prediction"


# ------------------------------------------------------------------------- script behaviour


def test_rebuild_skips_complete_models(make_test_models, test_models_dir):
    stamps = {n: (test_models_dir / n / make_test_models.STAMP).stat().st_mtime_ns for n in NAMES}
    make_test_models.build(test_models_dir, quiet=True)
    assert {n: (test_models_dir / n / make_test_models.STAMP).stat().st_mtime_ns for n in NAMES} == stamps


def test_is_complete_detects_damage(make_test_models, models, tmp_path):
    copy = tmp_path / "sd2-tiny"
    shutil.copytree(models["sd2-tiny"], copy)
    assert make_test_models.is_complete(copy)
    weights = copy / "unet/diffusion_pytorch_model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1)
    assert not make_test_models.is_complete(copy)
    shutil.copyfile(models["sd2-tiny"] / "unet/diffusion_pytorch_model.safetensors", weights)
    stamp = json.loads((copy / make_test_models.STAMP).read_text())
    stamp["version"] = "0" * 16
    (copy / make_test_models.STAMP).write_text(json.dumps(stamp))
    assert not make_test_models.is_complete(copy)


def test_failed_build_leaves_nothing(make_test_models, tmp_path, monkeypatch):
    def fail(folder, name):
        assert (folder / "unet/diffusion_pytorch_model.safetensors").is_file()  # got this far
        raise RuntimeError("interrupted")

    monkeypatch.setattr(make_test_models, "check_image", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        make_test_models.build(tmp_path, ["nomid-tiny"], quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_full_size_writer(make_test_models, diffusers_pipe, tmp_path, monkeypatch):
    """--full-size's path (meta-device build, fast init, Hub naming), run on sd1-tiny's shapes."""
    import torch
    from diffusers import AutoencoderKL

    spec = make_test_models._tiny_specs()["sd1-tiny"]
    monkeypatch.setattr(make_test_models, "_full_spec", lambda arch: dict(spec, seed=5))
    out = make_test_models.build_full("sd15", tmp_path / "full", fp16=True, quiet=True)
    assert make_test_models.is_complete(out)
    te = header(out / "text_encoder/model.safetensors")
    assert te["text_model.embeddings.position_ids"] == ("I64", [1, 77])
    assert set(header(out / "vae/diffusion_pytorch_model.safetensors")) == real_names("vae_legacy_names.json")
    assert set(header(out / "vae/diffusion_pytorch_model.fp16.safetensors")) == real_names("vae_new_names.json")
    _, info = AutoencoderKL.from_pretrained(out, subfolder="vae", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    img = generate(diffusers_pipe(out))
    assert np.isfinite(img).all() and img.std() > 0
    with torch.no_grad():
        w = diffusers_pipe(out).unet.conv_in.weight
    assert abs(w.std().item() - (4 * 9) ** -0.5) < 0.05  # N(0, 1/fan_in)


def test_cli_rejects_bad_arguments(make_test_models, capsys):
    for argv in ([], ["--fp16"], ["--only", "sd1-tiny"], ["out", "--only", "sd3-tiny"], ["--full-size", "sdxl", "out"]):
        with pytest.raises(SystemExit) as e:
            make_test_models.main(argv)
        assert e.value.code == 2, argv


def test_tiny_autoencoder(test_models_dir, make_test_models, diffusers_pipe):
    """taesd-tiny: madebyollin/taesd's layout and config keys; diffusers loads every tensor and
    computes what the in-memory model computes; as the VAE of sd1-tiny's pipeline its images are
    informative."""
    import torch
    from diffusers import AutoencoderTiny

    folder = test_models_dir / "taesd-tiny"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        ["config.json", "diffusion_pytorch_model.safetensors"]
    config = read_json(folder / "config.json")
    assert set(config) == set(read_json(CONFIGS / "taesd/config.json"))
    assert config["_class_name"] == "AutoencoderTiny" and config["scaling_factor"] == 1.0
    ae, info = AutoencoderTiny.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ref = make_test_models.make_tiny_autoencoder("taesd-tiny")
    g = torch.Generator().manual_seed(3)
    z, img = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        assert_close(ae.decode(z).sample, ref.decode(z).sample)
        assert_close(ae.encode(img).latents, ref.encode(img).latents)
    pipe = diffusers_pipe(test_models_dir / "sd1-tiny")
    pipe.vae = ae
    a = generate(pipe)
    assert ((a > 0) & (a < 255)).mean() > 0.9 and a.std() > 10
    assert np.abs(a.astype(int) - generate(pipe, seed=1)).mean() > 2
