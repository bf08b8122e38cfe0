"""backends/contract.py is the op list: the NumPy and the WebGPU backend each define exactly its ops,
with its parameters; the models use every one of them (text-to-image all but the few the contract
names, and those through the model code it names); and every WGSL file a shader includes ships in
the wheel. None of this needs a GPU: the WebGPU module imports without one."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from sdweb.autoencoder_tiny import AutoencoderTiny
from sdweb.backends import contract
from sdweb.backends import numpy as nb
from sdweb.backends import webgpu
from sdweb.clip import CLIPTextModel
from sdweb.errors import SdwebError
from sdweb.lora import LoraPatch
from sdweb.model import AutoencoderFolder, ModelFolder
from sdweb.pipeline import Pipeline
from sdweb.unet import UNet2DConditionModel
from sdweb.vae import AutoencoderKL
from sdweb.weights import Patched

ROOT = Path(__file__).resolve().parents[1]


def public_functions(module) -> set[str]:
    """The public functions a module defines itself (imported helpers are not its ops)."""
    return {k for k, v in vars(module).items()
            if inspect.isfunction(v) and v.__module__ == module.__name__ and not k.startswith("_")}


def parameters(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("backend", [nb, webgpu], ids=["numpy", "webgpu"])
def test_backend_defines_exactly_the_contract(backend):
    assert public_functions(backend) == set(contract.OPS)
    for op in contract.OPS:
        assert parameters(getattr(backend, op)) == parameters(getattr(contract.Backend, op)), op
    assert backend.name in ("numpy", "webgpu") and isinstance(backend.takes_weight_refs, bool)


def test_model_code_calls_only_contract_ops():
    """No model module calls a backend function the contract does not list."""
    called = set()
    for name in ("nn", "resnet", "clip", "unet", "vae", "autoencoder_tiny", "pipeline", "preview"):
        src = (ROOT / "py" / "sdweb" / f"{name}.py").read_text()
        called |= set(re.findall(r"\bbackend\.([a-z_0-9]+)\(", src))
    assert {"linear", "conv2d", "attention", "numpy"} <= called <= set(contract.OPS), called - set(contract.OPS)


def test_a_bad_activation_is_one_clear_error():
    x, w = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(SdwebError, match=r"^linear: activation 'tanh' is not one of None, silu, gelu, "
                                         r"quick_gelu, relu, geglu$"):
        nb.linear(x, w, None, "tanh")
    with pytest.raises(SdwebError, match=r"^group_norm: activation 'geglu' is not one of None, silu"):
        nb.group_norm(np.ones((1, 4, 2, 2), np.float32), 2, w[0], w[0], 1e-6, "geglu")


class Recorder:
    """A backend that is `backend`, noting the name of every op taken from it."""

    def __init__(self, backend):
        self._backend, self.used = backend, set()

    def __getattr__(self, name):
        self.used.add(name)
        return getattr(self._backend, name)


def test_models_use_every_op(sd1_tiny, taesd_tiny, monkeypatch):
    folder = ModelFolder(sd1_tiny)
    rec = Recorder(nb)
    Pipeline(folder, rec).generate("a lighthouse", steps=1, width=64, height=64, seed=0)
    used = rec.used & set(contract.OPS)
    assert used == set(contract.OPS) - set(contract.NOT_IN_TEXT_TO_IMAGE)

    # the others, each through the model code NOT_IN_TEXT_TO_IMAGE names
    rng = np.random.default_rng(0)
    paths = {}
    rec = Recorder(nb)
    vae = AutoencoderKL(folder.config("vae"), folder.weights("vae").prefix(""), rec)
    vae.encode(rng.standard_normal((1, 3, 16, 16), dtype=np.float32))
    paths["pad2d"] = rec.used
    rec = Recorder(nb)
    store = folder.weights("text_encoder")
    CLIPTextModel(folder.config("text_encoder"), store.prefix(CLIPTextModel.weights_root(store)), rec).pooled(
        np.array([[49406, 320, 49407]]))
    paths["slice_tokens"] = rec.used
    rec = Recorder(nb)
    config = dict(folder.config("unet"), mid_block_scale_factor=1.41)
    unet = UNet2DConditionModel(config, folder.weights("unet").prefix(""), rec)
    unet(rng.standard_normal((1, 4, 8, 8), dtype=np.float32), 10.0,
         rng.standard_normal((1, 77, config["cross_attention_dim"]), dtype=np.float32))
    paths["mul"] = rec.used
    rec = Recorder(nb)
    tiny = AutoencoderFolder(taesd_tiny)
    AutoencoderTiny(tiny.config(), tiny.weights().prefix(""), rec).decode(rng.standard_normal((1, 4, 2, 2), np.float32))
    paths["tanh_clamp"] = rec.used
    # a weight a LoRA patches: weight() of a weights.Patched fuses it with the backend's fuse_lora
    store = folder.weights("unet")
    w = store.get("conv_in.weight", store.shape("conv_in.weight"))
    up, down = rng.standard_normal((w.shape[0], 2), dtype=np.float32), rng.standard_normal((2, w[0].size), dtype=np.float32)
    fused = []
    monkeypatch.setattr(nb, "fuse_lora", lambda *args: fused.append("fuse_lora") or args[0])
    nb.weight(Patched(w, (LoraPatch("unet", "conv_in.weight", up, down, 0.5, w.shape),)))
    paths["fuse_lora"] = set(fused)
    assert set(paths) == set(contract.NOT_IN_TEXT_TO_IMAGE)
    for op, seen in paths.items():
        assert op in seen, f"{op} is not used by {contract.NOT_IN_TEXT_TO_IMAGE[op]}"


def test_shader_includes_ship_in_the_wheel():
    """Every file under shaders/ (the op files and what they include) matches the wheel's
    package-data, and every #include names a file there."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sdweb"]
    shaders = ROOT / "shaders"
    files = {p.relative_to(shaders).as_posix() for p in shaders.rglob("*.wgsl")}
    assert "include/activations.wgsl" in files
    for rel in files:
        assert any(PurePosixPath("shaders", rel).match(pat) for pat in patterns), f"shaders/{rel} is not in the wheel"
        for inc in re.findall(r'^#include\s+"([^"]+)"', (shaders / rel).read_text(), re.M):
            assert inc in files, f"{rel} includes {inc}, which is not in shaders/"
