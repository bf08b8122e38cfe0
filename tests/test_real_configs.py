"""The real checkpoints' configs and tensor names load unmodified.

No weights are available offline, so each model is built over a *virtual* safetensors file: a real
header listing every tensor the checkpoint has (name, dtype, shape), and zeros for the data. The
tensor lists come from SD 1.5's reconstructed index (legacy VAE names, `text_model.` prefix,
position_ids) and, for the other models, from diffusers/transformers instantiated on the meta
device — an independent statement of which tensors a config implies. Our model must take every
tensor exactly once with the shape its config implies.
"""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from sdweb.backends import numpy as B
from sdweb.clip import CLIPTextModel
from sdweb.safetensors import SafetensorsFile
from sdweb.unet import UNet2DConditionModel
from sdweb.vae import AutoencoderKL
from sdweb.weights import WeightStore

REAL = Path(__file__).parent / "data" / "real-configs"
ITEMSIZE = {"F16": 2, "F32": 4, "I64": 8}


class ZeroSource:
    """A byte source (size + read) for a safetensors file whose data are all zeros."""

    def __init__(self, tensors: dict[str, tuple[str, list[int]]]):
        header, offset = {}, 0
        for name, (dtype, shape) in tensors.items():
            n = int(np.prod(shape)) * ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header).encode()
        self.head = struct.pack("<Q", len(raw)) + raw
        self.size = len(self.head) + offset

    def read(self, offset: int, length: int) -> bytes:
        if offset < len(self.head):
            return self.head[offset:offset + length]
        return bytes(length)


def config(model: str, component: str) -> dict:
    return json.loads((REAL / model / component / "config.json").read_text())


def sd15_index(name: str) -> dict:
    data = json.loads((REAL / "stable-diffusion-v1-5" / "_tensor_index" / f"{name}.json").read_text())
    return {n: ("I64" if d == "I64" else "F16", shape) for n, d, shape in data["tensors"]}


def meta_state_dict(make) -> dict:
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        module = make()
    return {k: ("F16", list(v.shape)) for k, v in module.state_dict().items()}


def build(cls, cfg, tensors, component, root=None, **kw):
    store = WeightStore([SafetensorsFile(ZeroSource(tensors), f"{component}.safetensors")], component, "fp16")
    prefix = root(store) if root else ""
    model = cls(cfg, store.prefix(prefix), B, **kw)
    store.finish()  # every tensor used once, every shape as the config implies
    return model, store


def test_sd15_all_components_from_the_real_tensor_lists():
    unet, s = build(UNet2DConditionModel, config("stable-diffusion-v1-5", "unet"), sd15_index("unet"), "unet")
    assert s.summary()["parameters"] == 859_520_964
    assert unet.config["heads"] == [8, 8, 8, 8]
    te, _ = build(CLIPTextModel, config("stable-diffusion-v1-5", "text_encoder"), sd15_index("text_encoder"),
                  "text_encoder", root=CLIPTextModel.weights_root)
    assert te.config["hidden_act"] == "quick_gelu"
    for names in ("vae_legacy_names", "vae_new_names"):
        vae, _ = build(AutoencoderKL, config("stable-diffusion-v1-5", "vae"), sd15_index(names), "vae")
        assert vae.scaling_factor == 0.18215 and vae.scale_factor == 8  # absent from the config


@pytest.mark.parametrize("model", ["stable-diffusion-2-1-base", "sd-turbo", "bk-sdm-base", "bk-sdm-small",
                                   "bk-sdm-tiny"])
def test_unet_configs(model):
    diffusers = pytest.importorskip("diffusers")
    cfg = config(model, "unet")
    tensors = meta_state_dict(lambda: diffusers.UNet2DConditionModel.from_config(cfg))
    unet, store = build(UNet2DConditionModel, cfg, tensors, "unet")
    assert store.summary()["tensors"] == len(tensors)
    if model.startswith("bk-sdm-small") or model == "bk-sdm-tiny":
        assert unet.mid_block is None
    if model in ("stable-diffusion-2-1-base", "sd-turbo"):
        assert unet.config["heads"] == [5, 10, 20, 20] and unet.config["use_linear_projection"]


def test_sd21_base_text_encoder_and_legacy_vae():
    transformers = pytest.importorskip("transformers")
    diffusers = pytest.importorskip("diffusers")
    te_cfg = config("stable-diffusion-2-1-base", "text_encoder")
    te_tensors = meta_state_dict(lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**te_cfg)))
    te, _ = build(CLIPTextModel, te_cfg, te_tensors, "text_encoder", root=CLIPTextModel.weights_root)
    assert te.config["hidden_act"] == "gelu" and len(te.layers) == 23

    vae_cfg = config("stable-diffusion-2-1-base", "vae")
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    tensors = {}
    for k, v in meta_state_dict(lambda: diffusers.AutoencoderKL.from_config(vae_cfg)).items():
        for new, old in legacy.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        tensors[k] = v
    assert any(".query." in k for k in tensors)
    build(AutoencoderKL, vae_cfg, tensors, "vae")


def test_taesd_config():
    """madebyollin/taesd's config.json (its repo root) and the tensors diffusers' AutoencoderTiny makes
    of it: both halves, every tensor once (35 convs' worth: 1.2 M parameters per half)."""
    from sdweb.autoencoder_tiny import AutoencoderTiny

    diffusers = pytest.importorskip("diffusers")
    cfg = json.loads((REAL / "taesd" / "config.json").read_text())
    tensors = meta_state_dict(lambda: diffusers.AutoencoderTiny.from_config(cfg))
    ae, store = build(AutoencoderTiny, cfg, tensors, "taesd")
    assert store.summary()["tensors"] == len(tensors)
    assert ae.scale_factor == 8 and ae.scaling_factor == 1.0 and ae.latent_channels == 4
    halves = {h: sum(int(np.prod(s)) for k, (_, s) in tensors.items() if k.startswith(h)) for h in ("encoder", "decoder")}
    assert all(1.1e6 < n < 1.3e6 for n in halves.values()), halves
