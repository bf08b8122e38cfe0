"""LoRA files (sdweb.lora) against diffusers' load_lora_weights + fuse_lora on the tiny models.

LoRAs are made here with peft on the tiny models' own diffusers UNet and transformers text encoder
(random A and B, alpha != rank, a rank pattern and an alpha pattern, LoCon 3x3 convs), saved by
diffusers' save_lora_weights (PEFT keys + adapter metadata), and converted to kohya names by the
test; diffusers loads both spellings and its fused weights are the reference."""

from __future__ import annotations

import numpy as np
import pytest

from sdweb.errors import LoraError
from sdweb.lora import lora_delta, lora_plan, merge_lora, read_lora
from sdweb.safetensors import SafetensorsFile

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv", "linear_1", "linear_2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
COMPONENT_FILES = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors"}


def load_pipe(folder):
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_lora(folder, out_dir, seed):
    """A random LoRA for the model in `folder` -> (PEFT .safetensors path, kohya tensors, {module: alpha})."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe = load_pipe(folder)
    unet_cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=UNET_TARGETS,
                          rank_pattern={"ff.net.2": 2}, alpha_pattern={"to_k": 3})
    text_cfg = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, target_modules=TEXT_TARGETS)
    pipe.unet.add_adapter(unet_cfg)
    inject_adapter_in_model(text_cfg, pipe.text_encoder)
    layers = {"unet": get_peft_model_state_dict(pipe.unet), "text_encoder": get_peft_model_state_dict(pipe.text_encoder)}
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
        unet_lora_adapter_metadata=unet_cfg.to_dict(), text_encoder_lora_adapter_metadata=text_cfg.to_dict())

    # kohya names, with each module's alpha as peft itself holds it
    kohya, alphas = {}, {}
    for comp, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for module_name, module in model.named_modules():
            if not hasattr(module, "lora_A") or "default" not in module.lora_A:
                continue
            name = module_name.removeprefix("text_model.")
            flat = ("lora_unet_" if comp == "unet" else "lora_te_text_model_") + name.replace(".", "_")
            kohya[flat + ".lora_down.weight"] = module.lora_A["default"].weight.detach().clone()
            kohya[flat + ".lora_up.weight"] = module.lora_B["default"].weight.detach().clone()
            kohya[flat + ".alpha"] = torch.tensor(float(module.lora_alpha["default"]))
            alphas[(comp, name)] = module.lora_alpha["default"]
    assert sorted(set(alphas.values())) == [3, 8]  # the patterns took effect
    return out_dir / "pytorch_lora_weights.safetensors", kohya


def diffusers_fused(folder, loras):
    """[(path, scale)] -> {component: {name without text_model.: float32 array}} after diffusers'
    load_lora_weights and fuse_lora (several LoRAs: set_adapters with their scales, then fuse)."""
    pipe = load_pipe(folder)
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        pipe.load_lora_weights(str(path), adapter_name=name)
    if len(loras) == 1:
        pipe.fuse_lora(lora_scale=loras[0][1], adapter_names=names)
    else:
        pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
        pipe.fuse_lora(adapter_names=names)
    pipe.unload_lora_weights()
    return {comp: {k.removeprefix("text_model."): v.detach().numpy() for k, v in getattr(pipe, comp).state_dict().items()}
            for comp in COMPONENT_FILES}


def read_model(folder):
    """{component: {name: array}} from the model's own safetensors files, names as stored."""
    out = {}
    for comp, rel in COMPONENT_FILES.items():
        with SafetensorsFile(folder / rel) as f:
            out[comp] = {k: np.array(f.read(k)) for k in f.keys()}
    return out


def ours_fused(folder, loras):
    """[(LoraFile, scale)] -> merged weights, by our plan and NumPy merge, names without text_model."""
    model = read_model(folder)
    shapes = {comp: {k: v.shape for k, v in t.items()} for comp, t in model.items()}
    merged = dict(model)
    n = 0
    for lora, scale in loras:
        plan = lora_plan(lora, shapes, unet_scale=scale, text_encoder_scale=scale)
        n += len(plan)
        for comp in merged:
            merged[comp] = merge_lora(merged[comp], [p for p in plan if p.component == comp])
    return {comp: {k.removeprefix("text_model."): v for k, v in t.items()} for comp, t in merged.items()}, n


def assert_fused_equal(ours, ref, base=None, n_patched=None):
    for comp in COMPONENT_FILES:
        for k, r in ref[comp].items():
            o = ours[comp][k]
            assert o.shape == r.shape, (comp, k)
            err = np.abs(o - r).max() if o.size else 0.0
            assert err <= 1e-6 * max(1.0, np.abs(r).max()), (comp, k, err)
    if base is not None:  # the comparison is not vacuous: that many weights really moved
        changed = sum(not np.array_equal(ref[c][k], base[c][k].reshape(ref[c][k].shape))
                      for c in COMPONENT_FILES for k in ref[c] if ref[c][k].dtype.kind == "f")
        assert changed == n_patched > 20


@pytest.fixture(scope="module", params=["sd1_tiny", "sd2_tiny"])
def made(request, tmp_path_factory):
    folder = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp(f"lora-{request.param}")
    peft_path, kohya = make_lora(folder, out, seed=0)
    kohya_path = out / "kohya_style.safetensors"
    safetensors_torch.save_file(kohya, kohya_path)
    base = {c: {k.removeprefix("text_model."): v for k, v in t.items()} for c, t in read_model(folder).items()}
    return {"folder": folder, "out": out, "peft": peft_path, "kohya": kohya_path, "kohya_tensors": kohya,
            "base": base, "reference": diffusers_fused(folder, [(peft_path, 0.7)])}


def test_peft_file_equals_diffusers_fuse(made):
    lora = read_lora(made["peft"])
    assert lora.stem == "pytorch_lora_weights"
    ours, n = ours_fused(made["folder"], [(lora, 0.7)])
    assert_fused_equal(ours, made["reference"], made["base"], n)


def test_kohya_file_equals_diffusers_fuse(made, tmp_path):
    """Our kohya reading of the LoRA equals diffusers' fusion of its PEFT twin, and diffusers reads a
    kohya file to the same weights as we do. (diffusers 0.42.1 drops a kohya attention layer's own
    alpha where alphas differ between modules, as the to_k alpha pattern makes them: its alpha
    names keep `.processor.to_k_lora.down.weight`, which peft never matches. So the second
    check uses a copy whose alphas agree within each component.)"""
    ours, n = ours_fused(made["folder"], [(read_lora(made["kohya"]), 0.7)])
    assert_fused_equal(ours, made["reference"], made["base"], n)

    uniform = {k: torch.tensor(8.0) if k.startswith("lora_unet_") and k.endswith(".alpha") else v
               for k, v in made["kohya_tensors"].items()}
    safetensors_torch.save_file(uniform, tmp_path / "uniform.safetensors")
    ours, n = ours_fused(made["folder"], [(read_lora(tmp_path / "uniform.safetensors"), 0.7)])
    assert_fused_equal(ours, diffusers_fused(made["folder"], [(tmp_path / "uniform.safetensors", 0.7)]), made["base"], n)


def test_conv_shaped_and_linear_shaped_proj_in_both_fit(made, tmp_path):
    """SD 1.x's proj_in/proj_out are 1x1 convs, SD 2.x's linear: a LoRA of either shape fits both."""
    swapped = {}
    for k, v in made["kohya_tensors"].items():
        if ("_proj_in." in k or "_proj_out." in k) and v.ndim > 0:
            v = v.reshape(v.shape[:2]) if v.ndim == 4 else v.reshape(*v.shape, 1, 1)
        swapped[k] = v
    safetensors_torch.save_file(swapped, tmp_path / "swapped.safetensors")
    ours, n = ours_fused(made["folder"], [(read_lora(tmp_path / "swapped.safetensors"), 0.7)])
    assert_fused_equal(ours, made["reference"], made["base"], n)


def test_bin_file_and_bytes(made, tmp_path):
    """A torch.save'd PEFT state dict (no metadata: alpha = rank, as diffusers takes it), read through
    the restricted unpickler, from a path and from bytes."""
    with SafetensorsFile(made["peft"]) as f:
        tensors = {k: torch.from_numpy(np.array(f.read(k))) for k in f.keys()}
    torch.save(tensors, tmp_path / "pytorch_lora_weights.bin")
    reference = diffusers_fused(made["folder"], [(tmp_path / "pytorch_lora_weights.bin", 0.5)])
    lora = read_lora((tmp_path / "pytorch_lora_weights.bin").read_bytes(), "pytorch_lora_weights.bin")
    ours, n = ours_fused(made["folder"], [(lora, 0.5)])
    assert_fused_equal(ours, reference, made["base"], n)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # diffusers' second adapter
def test_two_loras_at_once(made):
    second, _ = make_lora(made["folder"], made["out"] / "second", seed=1)
    reference = diffusers_fused(made["folder"], [(made["peft"], 0.7), (second, -0.4)])
    ours, _ = ours_fused(made["folder"], [(read_lora(made["kohya"]), 0.7), (read_lora(second), -0.4)])
    assert_fused_equal(ours, reference)


def test_old_diffusers_attention_processor_keys(made, tmp_path):
    """diffusers 0.2x saved UNet attention LoRAs as `unet....attn1.processor.to_q_lora.down.weight`
    without alphas; `save_attn_procs` wrote the same keys without the `unet.` prefix (today's
    diffusers no longer reads those; we take them as the UNet's, as it once did)."""
    old = {}
    for k, v in made["kohya_tensors"].items():
        name, part = k.split(".", 1)
        for proj, new in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out_0", "to_out")):
            if name.startswith("lora_unet_") and name.endswith(f"_{proj}") and part != "alpha":
                module = name[len("lora_unet_"):-len(proj) - 1]
                module = module.replace("_", ".").replace("down.blocks", "down_blocks").replace("up.blocks", "up_blocks")
                module = module.replace("mid.block", "mid_block").replace("transformer.blocks", "transformer_blocks")
                old[f"{module}.processor.{new}_lora.{part.replace('lora_', '')}"] = v
    assert len(old) > 10
    safetensors_torch.save_file({"unet." + k: v for k, v in old.items()}, tmp_path / "old.safetensors")
    safetensors_torch.save_file(old, tmp_path / "attn_procs.safetensors")
    reference = diffusers_fused(made["folder"], [(tmp_path / "old.safetensors", 0.6)])
    for name in ("old", "attn_procs"):
        ours, n = ours_fused(made["folder"], [(read_lora(tmp_path / f"{name}.safetensors"), 0.6)])
        assert_fused_equal(ours, reference, made["base"], n)


def test_delta_is_scale_up_down():
    from sdweb.lora import LoraPatch

    rng = np.random.default_rng(0)
    up, down = rng.standard_normal((6, 2), dtype=np.float32), rng.standard_normal((2, 4 * 9), dtype=np.float32)
    d = lora_delta(LoraPatch("unet", "x.weight", up, down, 0.25, (6, 4, 3, 3)))
    np.testing.assert_allclose(d, np.einsum("or,rikl->oikl", up, down.reshape(2, 4, 3, 3)) * 0.25, rtol=1e-6)


def bad(made, tmp_path, edit):
    """The kohya file with one edit -> the error message read_lora + lora_plan give."""
    tensors = dict(made["kohya_tensors"])
    edit(tensors)
    path = tmp_path / "bad_lora.safetensors"
    safetensors_torch.save_file(tensors, path)
    shapes = {c: {k: v.shape for k, v in t.items()} for c, t in read_model(made["folder"]).items()}
    with pytest.raises(LoraError) as e:
        lora_plan(read_lora(path), shapes)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg


def first_key(tensors, part, comp="lora_unet_"):
    return next(k for k in tensors if k.startswith(comp) and k.endswith(part))


def test_errors_name_the_file_and_the_first_bad_key(made, tmp_path):
    def unknown_module(t):
        t["lora_unet_nowhere_block_0.lora_down.weight"] = torch.zeros(4, 8)
        t["lora_unet_nowhere_block_0.lora_up.weight"] = torch.zeros(8, 4)
    assert "'lora_unet_nowhere_block_0.lora_down.weight' matches no unet module" in bad(made, tmp_path, unknown_module)

    key = first_key(made["kohya_tensors"], "attn2_to_k.lora_down.weight")

    def wrong_width(t):
        t[key] = torch.zeros(t[key].shape[0], 768)  # a LoRA for a model with 768-wide text states
    msg = bad(made, tmp_path, wrong_width)
    assert f"key {key!r}" in msg and "does not fit" in msg and "attn2.to_k.weight" in msg

    def nan(t):
        k = first_key(t, ".lora_up.weight", "lora_te_")
        t[k] = t[k].clone()
        t[k][0, 0] = float("nan")
    assert "non-finite" in bad(made, tmp_path, nan)

    up = first_key(made["kohya_tensors"], ".lora_up.weight")

    def no_up(t):
        del t[up]
    assert f"{up.replace('lora_up', 'lora_down')!r} has no matching up weight" in bad(made, tmp_path, no_up)

    def loha(t):
        t["lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a"] = torch.zeros(4, 4)
    msg = bad(made, tmp_path, loha)
    assert "hada_w1_a" in msg and "LyCORIS" in msg

    def sdxl(t):
        t["lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"] = torch.tensor(1.0)
    assert "SDXL" in bad(made, tmp_path, sdxl)

    def vector_alpha(t):
        k = first_key(t, ".alpha")
        t[k] = torch.ones(2)
    assert "alpha must be one number" in bad(made, tmp_path, vector_alpha)


def test_not_a_lora_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(LoraError, match="neither a .safetensors file nor a torch.save"):
        read_lora(tmp_path / "x.safetensors")
    safetensors_torch.save_file({"model.weight": torch.zeros(2, 2)}, tmp_path / "y.safetensors")
    with pytest.raises(LoraError, match="'model.weight' has no known form"):
        read_lora(tmp_path / "y.safetensors")
