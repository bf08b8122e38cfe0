#!/usr/bin/env python3
"""Tiny random-weight Stable Diffusion models in the Hugging Face Hub layout, for tests and benchmarks.

    python scripts/make_test_models.py OUT_DIR [--only NAME ...]      -> OUT_DIR/<name>/ for each tiny model
    python scripts/make_test_models.py --full-size sd15 OUT [--fp16]  -> OUT/: SD 1.5 shapes, random weights

Every pipeline folder is what `StableDiffusionPipeline.from_pretrained(folder)` loads: `model_index.json`,
`text_encoder/`, `tokenizer/`, `unet/`, `vae/`, `scheduler/`. The three tiny models differ on purpose
in the ways real checkpoints differ (real configs: tests/data/real-configs/; what the real weight
files hold: tests/data/real-configs/TENSOR_NAMES.md):

  sd1-tiny    SD 1.x: quick_gelu CLIP whose file names tensors `text_model.*` and carries
              `text_model.embeddings.position_ids` (I64 [1, 77]), as the Hub's SD 1.5 does; UNet with an
              integer `attention_head_dim` (= heads, diffusers' historical meaning) and conv proj_in/out;
              VAE file with the legacy attention names `query/key/value/proj_attn`, no `scaling_factor`
              in its config (0.18215 applies); PNDM config of SD 1.5 verbatim; `.fp16` variants too,
              whose VAE uses the new names `to_q/to_k/to_v/to_out.0` (as SD 1.5's fp16 VAE does).
  sd2-tiny    SD 2.x: gelu CLIP saved by today's transformers (no `text_model.` prefix, no position_ids);
              per-block `attention_head_dim` list, linear proj_in/out, a per-block
              `transformer_layers_per_block` list; v_prediction; tokenizer that pads with `!`;
              legacy VAE names; a non-default `scaling_factor`.
  nomid-tiny  BK-SDM-tiny style: UNet with `mid_block_type: null` and cross-attention in every block;
              quick_gelu CLIP saved with the `text_model.` prefix but without position_ids (what
              transformers 4.31-4.x wrote); VAE with the new names and the full config today's
              diffusers writes.
  sd1-inpaint-tiny  an inpainting model as stable-diffusion-inpainting ships: sd1-tiny's layout with a
              9-channel UNet (`in_channels: 9`: latents, mask, masked image latents) and
              `_class_name: StableDiffusionInpaintPipeline` in model_index.json.
  lcm-tiny    a latent consistency model (LCM Dreamshaper style): `LatentConsistencyModelPipeline`
              in model_index.json, an LCMScheduler config, a UNet with `time_cond_proj_dim` (the
              guidance scale enters as an embedding through time_embedding.cond_proj).

and one tiny autoencoder in the layout of madebyollin/taesd (what `AutoencoderTiny.from_pretrained(folder)`
loads: `config.json` and `diffusion_pytorch_model.safetensors` at the root, no model_index.json):

  taesd-tiny  TAESD's real config (tests/data/real-configs/taesd/config.json) with 8 channels and fewer
              blocks per stage; four stages, so its latents are 1/8 of the image as the SD models' are.

Random weights give degenerate images, so after init each model is calibrated: the UNet's `conv_out`
is scaled to unit output std and the VAE decoder's `conv_out` to an image std of about 0.35 around 0,
which keeps the decoded image off the clip limits (the tiny autoencoder's last decoder conv likewise,
and its encoder's to unit-std latents). Each tiny model is then loaded back from disk with diffusers
and its image checked (most pixels strictly inside (0, 255), std > 10 grey levels, changes with seed
and prompt; the inpainting model through StableDiffusionInpaintPipeline, with a mask over half of a
synthetic image; for the autoencoder, with the latents).

Idempotent: a model whose folder holds a stamp file naming this script's version (the sha256 of
this file) and every file it lists, with the listed sizes, is skipped. A model is written into a
temporary folder that is renamed into place, under a lock on OUT_DIR/.lock, so an interrupted or
concurrent run never leaves a half-written model behind.

Only the stdlib is imported at module level, so `is_complete()` is cheap; torch, diffusers and
transformers are imported when a model is built.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repo's copies of the shared data (tests/data), else the shared folder beside the checkout.
_DATA, _SHARED = ROOT / "tests" / "data", ROOT.parent / "shared" / "data"
CONFIGS = _DATA / "real-configs" if (_DATA / "real-configs").is_dir() else _SHARED / "model-configs"
CLIP_TOKENIZER = _DATA / "clip-tokenizer" if (_DATA / "clip-tokenizer").is_dir() else _SHARED / "clip-tokenizer"

STAMP = ".sdweb-test-model.json"
# Rebuild whenever this file changes: its hash is the version the stamp records.
VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]

TINY = ("sd1-tiny", "sd2-tiny", "nomid-tiny", "sd1-inpaint-tiny", "lcm-tiny")
TINY_AUTOENCODERS = ("taesd-tiny",)
# The image check: two prompts (and seeds 0, 1), a few PNDM steps at the usual guidance.
CHECK_PROMPTS = ("a photo of a cat", "a red car on a beach")
CHECK_STEPS = 4
CHECK_GUIDANCE = 7.5
VAE_IMAGE_STD = 0.35  # decoder output std before clipping to [-1, 1]: ~45 grey levels, few clipped
TINY_LATENT_STD = 4.0  # about the spread of the tiny UNets' final latents


def _real(path: str) -> dict:
    return json.loads((CONFIGS / path).read_text())


# --------------------------------------------------------------------------------------------
# Model specifications. Config dicts are written to disk as they are (same key sets as the real
# files they imitate), and the models are instantiated from the same dicts.
# --------------------------------------------------------------------------------------------


def _model_index(diffusers_version: str, class_name: str = "StableDiffusionPipeline") -> dict:
    return {
        "_class_name": class_name,
        "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _tiny_specs() -> dict[str, dict]:
    sd15_te = _real("stable-diffusion-v1-5/text_encoder/config.json")
    sd15_unet = _real("stable-diffusion-v1-5/unet/config.json")
    sd15_vae = _real("stable-diffusion-v1-5/vae/config.json")
    sd15_sched = _real("stable-diffusion-v1-5/scheduler/scheduler_config.json")
    sd21_te = _real("stable-diffusion-2-1-base/text_encoder/config.json")
    sd21_unet = _real("stable-diffusion-2-1-base/unet/config.json")
    sd21_vae = _real("stable-diffusion-2-1-base/vae/config.json")
    sd21_sched = _real("stable-diffusion-2-1-base/scheduler/scheduler_config.json")
    bk_tiny_unet = _real("bk-sdm-tiny/unet/config.json")

    specs = {}

    specs["sd1-tiny"] = dict(
        seed=1001,
        model_index=_model_index("0.6.0"),
        text_encoder=dict(sd15_te, _name_or_path="sdweb/sd1-tiny", hidden_size=32, intermediate_size=64,
                          num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
        text_encoder_style="prefixed+position_ids",
        tokenizer="stable-diffusion-v1-5",
        # _diffusers_version >= 0.9: for older UNet configs StableDiffusionPipeline raises a
        # sample_size below 64 to 64 (a fix for early SD 1.x uploads), which would make 512² images.
        unet=dict(sd15_unet, _diffusers_version="0.10.0", attention_head_dim=8, block_out_channels=[32, 64],
                  cross_attention_dim=32,
                  down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
                  layers_per_block=2, norm_num_groups=8, sample_size=8),
        # 4 blocks of 2 resnets, widths changing where SD 1.5's do (128, 256, 512, 512): the tensor
        # names, conv_shortcuts included, are exactly those of the real files.
        vae=dict(sd15_vae, block_out_channels=[8, 16, 32, 32], norm_num_groups=4, sample_size=64),
        vae_names="legacy",
        vae_config="as-written",
        scheduler=sd15_sched,
        fp16_variant=True,
    )

    sd2_sched = dict(sd21_sched, prediction_type="v_prediction")
    specs["sd2-tiny"] = dict(
        seed=2002,
        model_index=_model_index("0.10.0.dev0"),
        text_encoder=dict(sd21_te, _name_or_path="sdweb/sd2-tiny", hidden_size=24, intermediate_size=64,
                          num_attention_heads=4, num_hidden_layers=3, projection_dim=16),
        text_encoder_style="transformers-save_pretrained",
        tokenizer="stable-diffusion-2-1-base",
        unet=dict(sd21_unet, attention_head_dim=[2, 4, 4], block_out_channels=[16, 32, 32],
                  cross_attention_dim=24,
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                  layers_per_block=2, transformer_layers_per_block=[1, 2, 1], norm_num_groups=8,
                  sample_size=8),
        vae=dict(sd21_vae, block_out_channels=[8, 16, 24, 24], layers_per_block=2, norm_num_groups=4,
                 sample_size=64, scaling_factor=0.5),
        vae_names="legacy",
        vae_config="as-written",
        scheduler=sd2_sched,
        fp16_variant=False,
    )

    specs["sd1-inpaint-tiny"] = dict(
        specs["sd1-tiny"],
        seed=4004,
        model_index=_model_index("0.6.0", "StableDiffusionInpaintPipeline"),
        text_encoder=dict(specs["sd1-tiny"]["text_encoder"], _name_or_path="sdweb/sd1-inpaint-tiny"),
        unet=dict(specs["sd1-tiny"]["unet"], in_channels=9),
        fp16_variant=False,
    )

    specs["nomid-tiny"] = dict(
        seed=3003,
        model_index=_model_index("0.15.0"),
        text_encoder=dict(sd15_te, _name_or_path="sdweb/nomid-tiny", hidden_size=16, intermediate_size=64,
                          num_attention_heads=2, num_hidden_layers=2, projection_dim=16),
        text_encoder_style="prefixed",
        tokenizer="stable-diffusion-v1-5",
        unet=dict(bk_tiny_unet, attention_head_dim=8, block_out_channels=[32, 48, 48], cross_attention_dim=16,
                  norm_num_groups=8, sample_size=8),
        vae=dict(block_out_channels=[8, 16, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=1,
                 norm_num_groups=4, sample_size=64),
        vae_names="new",
        vae_config="diffusers-save_config",
        scheduler=sd15_sched,
        fp16_variant=False,
    )

    # diffusers' LCMScheduler defaults, written out as diffusers saves a scheduler config
    lcm_sched = dict(_class_name="LCMScheduler", _diffusers_version="0.22.0", beta_end=0.012,
                     beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False, clip_sample_range=1.0,
                     dynamic_thresholding_ratio=0.995, num_train_timesteps=1000, original_inference_steps=50,
                     prediction_type="epsilon", rescale_betas_zero_snr=False, sample_max_value=1.0,
                     set_alpha_to_one=True, steps_offset=0, thresholding=False, timestep_scaling=10.0,
                     timestep_spacing="leading", trained_betas=None)
    specs["lcm-tiny"] = dict(
        specs["nomid-tiny"],  # its prefixed CLIP file, SD 1.x tokenizer and small VAE as diffusers saves it
        seed=4004,
        model_index=dict(_model_index("0.22.0"), _class_name="LatentConsistencyModelPipeline",
                         scheduler=["diffusers", "LCMScheduler"]),
        text_encoder=dict(sd15_te, _name_or_path="sdweb/lcm-tiny", hidden_size=32, intermediate_size=64,
                          num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
        unet=dict(sd15_unet, _diffusers_version="0.22.0", attention_head_dim=8, block_out_channels=[32, 64],
                  cross_attention_dim=32, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=2, norm_num_groups=8,
                  sample_size=8, time_cond_proj_dim=32),
        scheduler=lcm_sched,
    )
    return specs


def _tiny_autoencoder_specs() -> dict[str, dict]:
    real = _real("taesd/config.json")
    return {"taesd-tiny": dict(
        seed=4004,
        config=dict(real, encoder_block_out_channels=[8] * 4, decoder_block_out_channels=[8] * 4,
                    num_encoder_blocks=[1, 2, 1, 1], num_decoder_blocks=[1, 1, 2, 1]),
    )}


def _full_spec(arch: str) -> dict:
    if arch != "sd15":
        raise ValueError(f"unknown full-size architecture {arch!r}; expected 'sd15'")
    real = "stable-diffusion-v1-5"
    return dict(
        seed=1500,
        model_index=_model_index("0.6.0"),
        text_encoder=_real(f"{real}/text_encoder/config.json"),
        text_encoder_style="prefixed+position_ids",
        tokenizer=real,
        unet=_real(f"{real}/unet/config.json"),
        vae=_real(f"{real}/vae/config.json"),
        vae_names="legacy",
        vae_config="as-written",
        scheduler=_real(f"{real}/scheduler/scheduler_config.json"),
    )


# --------------------------------------------------------------------------------------------
# Stamps, locking and atomic placement
# --------------------------------------------------------------------------------------------


def _stamp_id(spec: dict) -> dict:
    return {"version": VERSION, "fp16_variant": bool(spec.get("fp16_variant"))}


def is_complete(folder: str | os.PathLike, expect: dict | None = None) -> bool:
    """True if `folder` holds a model written by this version of the script, every file intact."""
    folder = Path(folder)
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("version") != VERSION:
        return False
    if expect is not None and any(stamp.get(k) != v for k, v in expect.items()):
        return False
    files = stamp.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


@contextlib.contextmanager
def _locked(out_dir: Path):
    """Exclusive lock on out_dir/.lock: concurrent test sessions build each model once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock, the temp-dir-and-rename still keeps folders whole
        yield
        return
    with open(out_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _place(tmp: Path, final: Path) -> None:
    """Rename tmp onto final; an older final folder is moved aside first, then deleted."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)


def _write_stamp(folder: Path, spec: dict, summary: dict) -> None:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != STAMP:
            files[p.relative_to(folder).as_posix()] = p.stat().st_size
    stamp = dict(_stamp_id(spec), files=files, summary=summary)
    (folder / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

_LEGACY_VAE = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
_VAE_ATTN = re.compile(r"^((?:encoder|decoder)\.mid_block\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$")


def legacy_vae_name(name: str) -> str:
    """`decoder.mid_block.attentions.0.to_q.weight` -> `decoder.mid_block.attentions.0.query.weight`."""
    m = _VAE_ATTN.match(name)
    return f"{m[1]}.{_LEGACY_VAE[m[2]]}.{m[3]}" if m else name


def _save(tensors: dict, path: Path, dtype=None) -> None:
    from safetensors.torch import save_file

    out = {}
    for k, v in tensors.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"format": "pt"})


def _write_text_encoder(folder: Path, model, spec: dict, fp16: bool) -> None:
    """text_encoder/: config.json + model.safetensors (+ model.fp16.safetensors)."""
    import torch

    d = folder / "text_encoder"
    style = spec["text_encoder_style"]
    if style == "transformers-save_pretrained":
        assert not fp16, "no .fp16 variant for a text encoder saved by save_pretrained"
        model.save_pretrained(d)
        return
    _write_json(d / "config.json", spec["text_encoder"])
    # transformers >= 5 keeps the state dict without the `text_model.` prefix; the Hub's files have it.
    tensors = {f"text_model.{k}": v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    if style == "prefixed+position_ids":
        n = spec["text_encoder"]["max_position_embeddings"]
        tensors["text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    else:
        assert style == "prefixed", style
    _save(tensors, d / "model.safetensors")
    if fp16:
        _save(tensors, d / "model.fp16.safetensors", torch.float16)


def _write_unet(folder: Path, model, spec: dict, fp16: bool) -> None:
    import torch

    d = folder / "unet"
    _write_json(d / "config.json", spec["unet"])
    tensors = model.state_dict()
    _save(tensors, d / "diffusion_pytorch_model.safetensors")
    if fp16:
        _save(tensors, d / "diffusion_pytorch_model.fp16.safetensors", torch.float16)


def _write_vae(folder: Path, model, spec: dict, fp16: bool) -> None:
    import torch

    d = folder / "vae"
    if spec["vae_config"] == "diffusers-save_config":
        model.save_config(d)
    else:
        _write_json(d / "config.json", spec["vae"])
    tensors = model.state_dict()
    named = {legacy_vae_name(k): v for k, v in tensors.items()} if spec["vae_names"] == "legacy" else tensors
    _save(named, d / "diffusion_pytorch_model.safetensors")
    if fp16:
        # SD 1.5's fp16 VAE (added later than its fp32 file) uses the new names.
        _save(tensors, d / "diffusion_pytorch_model.fp16.safetensors", torch.float16)


def _write_small_parts(folder: Path, spec: dict) -> None:
    _write_json(folder / "model_index.json", spec["model_index"])
    _write_json(folder / "scheduler" / "scheduler_config.json", spec["scheduler"])
    tok = folder / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(CLIP_TOKENIZER / name, tok / name)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        shutil.copyfile(CONFIGS / spec["tokenizer"] / "tokenizer" / name, tok / name)


def _clip_config(cfg: dict):
    from transformers import CLIPTextConfig

    return CLIPTextConfig.from_dict(copy.deepcopy(cfg))


@contextlib.contextmanager
def _quiet():
    """diffusers/transformers chatter (progress bars, torchvision notes) would drown the summary."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = (dlog.get_verbosity(), tlog.get_verbosity())
    bars = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bars[0]:
            dlog.enable_progress_bar()
        if bars[1]:
            tlog.enable_progress_bar()


def make_tiny_modules(name: str) -> dict:
    """The calibrated torch modules of tiny model `name`, in memory: {text_encoder, unet, vae}.

    Deterministic (seeded), so the tests can compare what diffusers loads from disk with these.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    spec = _tiny_specs()[name]
    torch.manual_seed(spec["seed"])
    text_encoder = CLIPTextModel(_clip_config(spec["text_encoder"])).eval()
    unet = UNet2DConditionModel.from_config(copy.deepcopy(spec["unet"])).eval()
    vae = AutoencoderKL.from_config(copy.deepcopy(spec["vae"])).eval()

    with torch.no_grad():
        # A freshly initialised final_layer_norm (weight 1, bias 0) makes every prompt embedding's mean
        # exactly 0, where real CLIP's is not: A1111's emphasis rescales a weighted chunk to its
        # unweighted mean, which needs one well away from 0.
        getattr(text_encoder, "text_model", text_encoder).final_layer_norm.bias.normal_(0.3, 0.5)

        # Probe prompts: <|startoftext|>, 7 random tokens, then <|endoftext|> to the end.
        ids = torch.full((3, 77), 49407)
        ids[:, 0] = 49406
        ids[:, 1:8] = torch.randint(0, 49406, (3, 7))
        text = text_encoder(ids).last_hidden_state

        # UNet: unit-std output (eps or v) for unit-std latents, so sampling neither dies nor explodes;
        # an LCM UNet with the guidance embedding of guidance 7.5 (LatentConsistencyModelPipeline's w).
        s = unet.config.sample_size
        x = torch.randn(len(ids), unet.config.in_channels, s, s)
        cond = None
        if unet.config.time_cond_proj_dim is not None:
            from diffusers import LatentConsistencyModelPipeline

            # default init leaves the guidance embedding a small part of the timestep's: make it matter
            unet.time_embedding.cond_proj.weight.mul_(8)
            w = torch.full((len(ids),), CHECK_GUIDANCE - 1)
            cond = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, unet.config.time_cond_proj_dim)
        std = unet(x, torch.tensor(500), encoder_hidden_states=text, timestep_cond=cond).sample.std()
        unet.conv_out.weight.div_(std)
        unet.conv_out.bias.div_(std)

        # VAE decoder: image std VAE_IMAGE_STD around 0 per channel, so few pixels hit the clip limits.
        z = torch.randn(2, vae.config.latent_channels, s, s) / vae.config.scaling_factor
        vae.decoder.conv_out.weight.mul_(VAE_IMAGE_STD / vae.decode(z).sample.std())
        vae.decoder.conv_out.bias.sub_(vae.decode(z).sample.mean(dim=(0, 2, 3)))

        # VAE encoder: moments (mean, logvar) of unit std, so encode -> sample stays sane too.
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        std = vae.encoder(torch.randn(1, vae.config.in_channels, s * f, s * f)).std()
        vae.encoder.conv_out.weight.div_(std)
        vae.encoder.conv_out.bias.div_(std)
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae}


def make_tiny_autoencoder(name: str):
    """The calibrated diffusers AutoencoderTiny of tiny autoencoder `name`, in memory (seeded)."""
    import torch
    from diffusers import AutoencoderTiny

    spec = _tiny_autoencoder_specs()[name]
    torch.manual_seed(spec["seed"])
    ae = AutoencoderTiny.from_config(copy.deepcopy(spec["config"])).eval()
    with torch.no_grad():
        # decoder: image std VAE_IMAGE_STD around 0 per channel for latents of the spread the tiny
        # UNets end with (std 2 to 6: nothing trained them to the VAE's scaling). The image is
        # 2 conv_out - 1, so the conv's bias moves it by twice as much.
        z = torch.randn(2, ae.config.latent_channels, 8, 8) * TINY_LATENT_STD
        conv_out = ae.decoder.layers[-1]
        image = ae.decode(z).sample
        conv_out.weight.mul_(VAE_IMAGE_STD / (image - image.mean(dim=(0, 2, 3), keepdim=True)).std())
        conv_out.bias.sub_(ae.decode(z).sample.mean(dim=(0, 2, 3)) / 2)
        # encoder: unit-std latents for images in [-1, 1]
        f = 2 ** (len(ae.config.encoder_block_out_channels) - 1)
        last = ae.encoder.layers[-1]
        std = ae.encode(torch.rand(1, ae.config.in_channels, 8 * f, 8 * f) * 2 - 1).latents.std()
        last.weight.div_(std)
        last.bias.div_(std)
    return ae


def check_autoencoder(folder: Path, name: str | None = None) -> dict:
    """Load `folder` with diffusers and check its decodes are informative; raises if they are not."""
    import numpy as np
    import torch
    from diffusers import AutoencoderTiny

    ae = AutoencoderTiny.from_pretrained(folder, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, ae.config.latent_channels, 8, 8, generator=g) * TINY_LATENT_STD
    with torch.no_grad():
        images = ae.decode(z).sample.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).numpy()
    a, b = images.astype(np.int16)
    stats = {"size": list(a.shape[1:]), "inside": float(((a > 0) & (a < 255)).mean()), "std": float(a.std()),
             "mean": float(a.mean()), "latent_diff": float(np.abs(a - b).mean())}
    if stats["inside"] < 0.9 or stats["std"] <= 10 or stats["latent_diff"] <= 1:
        raise RuntimeError(f"{name or folder.name}: degenerate decodes: {stats}")
    return stats


def _build_tiny_autoencoder(name: str, folder: Path) -> dict:
    ae = make_tiny_autoencoder(name)
    _write_json(folder / "config.json", _tiny_autoencoder_specs()[name]["config"])
    _save(ae.state_dict(), folder / "diffusion_pytorch_model.safetensors")
    return {"params": {"autoencoder": sum(p.numel() for p in ae.parameters())}}


def _build_tiny(name: str, spec: dict, folder: Path) -> dict:
    """Instantiate, calibrate and write one tiny model into `folder`; returns summary numbers."""
    modules = make_tiny_modules(name)
    fp16 = spec["fp16_variant"]
    _write_small_parts(folder, spec)
    _write_text_encoder(folder, modules["text_encoder"], spec, fp16)
    _write_unet(folder, modules["unet"], spec, fp16)
    _write_vae(folder, modules["vae"], spec, fp16)
    return {"params": {c: sum(p.numel() for p in m.parameters()) for c, m in modules.items()}}


def generate_image(pipe, prompt: str = CHECK_PROMPTS[0], seed: int = 0, **inputs):
    """Generate with diffusers (PNDM steps, guidance 7.5); returns the uint8 image (H, W, 3).
    `inputs`: an inpainting pipeline's image and mask_image."""
    import numpy as np
    import torch

    with torch.no_grad():
        x = pipe(prompt, num_inference_steps=CHECK_STEPS, guidance_scale=CHECK_GUIDANCE,
                 generator=torch.Generator().manual_seed(seed), output_type="np", **inputs).images[0]
    # diffusers' "np" output is clip(x / 2 + 0.5, 0, 1); the product's image contract rounds it.
    return np.round(x * 255).astype(np.uint8)


def check_image(folder: Path, name: str | None = None) -> dict:
    """Load `folder` with diffusers (the pipeline class its model_index.json names) and check the image
    is informative; raises if it is not."""
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionInpaintPipeline
    from PIL import Image

    pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    inputs = {}
    if isinstance(pipe, StableDiffusionInpaintPipeline):
        vae = json.loads((folder / "vae" / "config.json").read_text())
        size = json.loads((folder / "unet" / "config.json").read_text())["sample_size"] * 2 ** (
            len(vae["block_out_channels"]) - 1)  # the pipeline's default size
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        rgb = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), 255 - ramp[None, :].repeat(size, 0)], -1)
        mask = np.zeros((size, size), np.uint8)
        mask[:, size // 2:] = 255  # repaint the right half
        inputs = dict(image=Image.fromarray(rgb.astype(np.uint8)), mask_image=Image.fromarray(mask))
    pipe.set_progress_bar_config(disable=True)
    a = generate_image(pipe, CHECK_PROMPTS[0], 0, **inputs)
    b = generate_image(pipe, CHECK_PROMPTS[1], 0, **inputs)
    c = generate_image(pipe, CHECK_PROMPTS[0], 1, **inputs)
    stats = {
        "size": list(a.shape),
        "inside": float(((a > 0) & (a < 255)).mean()),
        "std": float(a.std()),
        "mean": float(a.mean()),
        "prompt_diff": float(np.abs(a.astype(np.int16) - b).mean()),
        "seed_diff": float(np.abs(a.astype(np.int16) - c).mean()),
    }
    bad = []
    if stats["inside"] < 0.9:
        bad.append(f"only {stats['inside']:.1%} of pixels inside (0, 255), want >= 90%")
    if stats["std"] <= 10:
        bad.append(f"pixel std {stats['std']:.1f}, want > 10")
    if stats["prompt_diff"] <= 1 or stats["seed_diff"] <= 1:
        bad.append(f"image barely changes (prompt {stats['prompt_diff']:.2f}, seed {stats['seed_diff']:.2f})")
    if bad:
        raise RuntimeError(f"{name or folder.name}: degenerate image: " + "; ".join(bad))
    return stats


def _sizes(folder: Path) -> dict:
    if (folder / "model_index.json").is_file():
        return {c: sum(p.stat().st_size for p in (folder / c).glob("*.safetensors"))
                for c in ("text_encoder", "unet", "vae")}
    return {"autoencoder": sum(p.stat().st_size for p in folder.glob("*.safetensors"))}


_SHORT = {"text_encoder": "te", "unet": "unet", "vae": "vae", "autoencoder": "autoencoder"}


def _fmt_summary(name: str, summary: dict) -> str:
    p = summary["params"]
    sz = summary["bytes"]
    line = (f"{name}: params {' '.join(f'{_SHORT[c]} {n:,}' for c, n in p.items())}; "
            f"files {' '.join(f'{_SHORT[c]} {n / 1e6:.1f} MB' for c, n in sz.items())}")
    im = summary.get("image")
    if im:
        diffs = " ".join(f"d({k[:-5]}) {v:.1f}" for k, v in im.items() if k.endswith("_diff"))
        line += (f"; image {im['size'][0]}x{im['size'][1]} inside {im['inside']:.1%} std {im['std']:.1f} "
                 f"mean {im['mean']:.1f} {diffs}")
    return line + f"; {summary['seconds']:.1f} s"


def build(out_dir: str | os.PathLike, names=None, *, quiet: bool = False) -> dict[str, Path]:
    """Make the tiny models `names` (default: all) under out_dir, skipping complete ones.

    Returns {name: folder}. Safe to call from several processes at once.
    """
    out_dir = Path(out_dir)
    names = list(TINY + TINY_AUTOENCODERS if names is None else names)
    for n in names:
        if n not in TINY + TINY_AUTOENCODERS:
            raise ValueError(f"unknown test model {n!r}; expected one of {', '.join(TINY + TINY_AUTOENCODERS)}")
    result = {n: out_dir / n for n in names}
    if all(is_complete(result[n]) for n in names):
        if not quiet:
            print(f"{', '.join(names)}: up to date in {out_dir}")
        return result
    import torch

    specs = dict(_tiny_specs(), **_tiny_autoencoder_specs())
    threads = torch.get_num_threads()
    # Ops this small gain nothing from threads, and lose a lot when other processes share the cores.
    torch.set_num_threads(1)
    with _locked(out_dir), contextlib.ExitStack() as restore:
        restore.callback(torch.set_num_threads, threads)
        for stale in out_dir.glob(".*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in out_dir.glob(".*.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for n in names:
            spec = specs[n]
            if is_complete(result[n], _stamp_id(spec)):
                if not quiet:
                    print(f"{n}: up to date")
                continue
            t0 = time.time()
            tmp = out_dir / f".{n}.tmp-{os.getpid()}"
            tmp.mkdir()
            try:
                with _quiet():
                    if n in TINY_AUTOENCODERS:
                        summary = _build_tiny_autoencoder(n, tmp)
                        summary["image"] = check_autoencoder(tmp, n)
                    else:
                        summary = _build_tiny(n, spec, tmp)
                        summary["image"] = check_image(tmp, n)
                summary["bytes"] = _sizes(tmp)
                summary["seconds"] = time.time() - t0
                _write_stamp(tmp, spec, summary)
                _place(tmp, result[n])
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if not quiet:
                print(_fmt_summary(n, summary), flush=True)
    return result


# --------------------------------------------------------------------------------------------
# Full-size random models (benchmarks)
# --------------------------------------------------------------------------------------------


def _fast_random_init(module, generator) -> None:
    """Fill every parameter in place: 1-D weights 1, biases 0, the rest N(0, 1/fan_in).

    Variance-preserving, so activations stay O(1) (no inf, no denormals that would skew timings),
    and far cheaper than torch's default init for a billion parameters.
    """
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in ** -0.5, generator=generator)


def _empty(factory):
    """Build a module on the meta device (no init cost), then give it uninitialised CPU storage."""
    import torch

    with torch.device("meta"):
        m = factory()
    return m.to_empty(device="cpu").eval()


def build_full(arch: str, out: str | os.PathLike, *, fp16: bool = False, quiet: bool = False) -> Path:
    """Write the full-size `arch` (only 'sd15') with random weights to `out`; component by component."""
    import gc

    import torch

    out = Path(out)
    spec = _full_spec(arch)
    spec["fp16_variant"] = fp16
    if is_complete(out, _stamp_id(spec)):
        if not quiet:
            print(f"{out}: up to date")
        return out
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent):
        t0 = time.time()
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            g = torch.Generator().manual_seed(spec["seed"])
            params = {}
            _write_small_parts(tmp, spec)
            with _quiet():
                for comp, factory, writer in (
                    ("text_encoder", lambda: CLIPTextModel(_clip_config(spec["text_encoder"])), _write_text_encoder),
                    ("unet", lambda: UNet2DConditionModel.from_config(copy.deepcopy(spec["unet"])), _write_unet),
                    ("vae", lambda: AutoencoderKL.from_config(copy.deepcopy(spec["vae"])), _write_vae),
                ):
                    m = _empty(factory)
                    _fast_random_init(m, g)
                    params[comp] = sum(p.numel() for p in m.parameters())
                    writer(tmp, m, spec, fp16)
                    del m
                    gc.collect()
                    if not quiet:
                        print(f"  {comp}: {params[comp]:,} params written ({time.time() - t0:.0f} s)", flush=True)
            summary = {"params": params, "bytes": _sizes(tmp), "seconds": time.time() - t0}
            _write_stamp(tmp, spec, summary)
            _place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if not quiet:
        print(_fmt_summary(f"{arch} -> {out}", summary), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", help="folder for the tiny models (one subfolder each)")
    ap.add_argument("--only", action="append", choices=TINY + TINY_AUTOENCODERS, metavar="NAME",
                    help=f"build only this tiny model (repeatable): {', '.join(TINY + TINY_AUTOENCODERS)}")
    ap.add_argument("--full-size", nargs=2, metavar=("ARCH", "OUT"),
                    help="write the full-size architecture ARCH (sd15) with random weights to OUT")
    ap.add_argument("--fp16", action="store_true", help="with --full-size: also write the .fp16 variant files")
    args = ap.parse_args(argv)
    if args.out_dir is None and args.full_size is None:
        ap.error("give OUT_DIR and/or --full-size sd15 OUT")
    if args.only and args.out_dir is None:
        ap.error("--only needs OUT_DIR")
    if args.fp16 and args.full_size is None:
        ap.error("--fp16 applies to --full-size only (sd1-tiny always has .fp16 variants)")
    if args.full_size is not None and args.full_size[0] != "sd15":
        ap.error(f"--full-size: unknown architecture {args.full_size[0]!r}; expected sd15")
    if args.out_dir is not None:
        build(args.out_dir, args.only)
    if args.full_size is not None:
        build_full(args.full_size[0], args.full_size[1], fp16=args.fp16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
