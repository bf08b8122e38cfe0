"""sdweb.clip.CLIPTextModel against transformers' CLIPTextModel (tiny random models, fp32).

Each model is saved with `safetensors.torch.save_file` in the spelling transformers 5 writes (no
`text_model.` prefix) and in the Hub's older spelling (`text_model.` prefix plus the I64
`text_model.embeddings.position_ids` buffer), then read back through sdweb's own reader.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig
from transformers import CLIPTextModel as RefCLIPTextModel

from sdweb.backends import numpy as B
from sdweb.clip import CLIPTextModel
from sdweb.errors import ConfigError, ModelError, WeightError
from sdweb.safetensors import SafetensorsFile
from sdweb.weights import WeightStore

VOCAB = 1000
LAYERS = 3


def make_ref(hidden_act: str, eos_token_id: int = VOCAB - 1, seed: int = 0):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act=hidden_act,
                         eos_token_id=eos_token_id, bos_token_id=VOCAB - 2, pad_token_id=VOCAB - 1)
    model = RefCLIPTextModel(cfg).eval()
    with torch.no_grad():
        # LayerNorms start at (1, 0): perturb them so a mix-up of weight and bias can show
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def save(model, path, hub_spelling: bool = False):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if hub_spelling:
        sd = {f"text_model.{k}": v for k, v in sd.items()}
        sd["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_file(sd, str(path))
    return path


def load(model, path, precision="fp32"):
    store = WeightStore([SafetensorsFile(str(path))], "text_encoder", precision)
    ours = CLIPTextModel(model.config.to_dict(), store.prefix(CLIPTextModel.weights_root(store)), B)
    store.finish()
    return ours


def ids_for(n: int, L: int = 77, seed: int = 1) -> np.ndarray:
    """BOS, random tokens, EOS, then EOS padding (the largest id, as real CLIP prompts)."""
    rng = np.random.default_rng(seed)
    ids = np.full((n, L), VOCAB - 1, dtype=np.int64)
    ids[:, 0] = VOCAB - 2
    for i in range(n):
        k = int(rng.integers(3, L - 1))
        ids[i, 1:k] = rng.integers(0, VOCAB - 2, size=k - 1)
    return ids


def assert_close(ours, ref):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    ours = B.numpy(ours)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), f"max abs error {err} vs max |ref| {np.abs(ref).max()}"


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("hub_spelling", [False, True])
def test_matches_transformers(tmp_path, hidden_act, hub_spelling):
    ref = make_ref(hidden_act)
    ours = load(ref, save(ref, tmp_path / "m.safetensors", hub_spelling))
    ids = ids_for(2)
    with torch.no_grad():
        out = ref(torch.from_numpy(ids), output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == LAYERS + 1  # embeddings, then each layer's output
    assert_close(ours(ids), out.last_hidden_state)
    for clip_skip in range(1, LAYERS + 1):
        # diffusers' encode_prompt: hidden_states[-(clip_skip + 1)], then final_layer_norm
        with torch.no_grad():
            want = ref.final_layer_norm(hs[-(clip_skip + 1)])
        assert_close(ours(ids, clip_skip=clip_skip), want)
    assert_close(ours.pooled(ids), out.pooler_output)


def test_short_prompt_and_batch_of_one(tmp_path):
    """L < 77 uses the first L positions; the causal mask keeps a prefix's outputs unchanged."""
    ref = make_ref("quick_gelu")
    ours = load(ref, save(ref, tmp_path / "m.safetensors"))
    ids = ids_for(1, L=77)[:, :9]
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).last_hidden_state
    assert_close(ours(ids), want)


@pytest.mark.parametrize("eos_token_id", [2, 7])
def test_pooled_eos_rule(tmp_path, eos_token_id):
    """eos_token_id == 2 (legacy configs, e.g. SD 2.1's): argmax of ids; else the first eos_token_id."""
    ref = make_ref("gelu", eos_token_id=eos_token_id)
    ours = load(ref, save(ref, tmp_path / "m.safetensors"))
    ids = ids_for(2)
    ids[0, 5] = 7
    ids[1, 9] = 7
    ids[1, 20] = 7
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).pooler_output
    assert_close(ours.pooled(ids), want)


def test_every_tensor_used_once_and_position_ids_skipped(tmp_path):
    ref = make_ref("quick_gelu")
    path = save(ref, tmp_path / "m.safetensors", hub_spelling=True)
    store = WeightStore([SafetensorsFile(str(path))], "text_encoder", "fp32")
    assert CLIPTextModel.weights_root(store) == "text_model"
    CLIPTextModel(ref.config.to_dict(), store.prefix("text_model"), B)
    assert store.unused() == []
    assert not store.missing and not store.mismatched
    store.finish()


def test_wrong_shape_is_named(tmp_path):
    ref = make_ref("quick_gelu")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    sd["encoder.layers.1.mlp.fc1.weight"] = torch.zeros(47, 32)
    save_file(sd, str(tmp_path / "m.safetensors"))
    store = WeightStore([SafetensorsFile(str(tmp_path / "m.safetensors"))], "text_encoder", "fp32")
    CLIPTextModel(ref.config.to_dict(), store.prefix(""), B)
    with pytest.raises(WeightError, match=r"encoder\.layers\.1\.mlp\.fc1\.weight has shape \[47, 32\]"):
        store.finish()


def test_config_with_more_layers_than_file_lists_missing(tmp_path):
    ref = make_ref("quick_gelu")
    path = save(ref, tmp_path / "m.safetensors")
    store = WeightStore([SafetensorsFile(str(path))], "text_encoder", "fp32")
    CLIPTextModel(dict(ref.config.to_dict(), num_hidden_layers=LAYERS + 1), store.prefix(""), B)
    with pytest.raises(WeightError, match=rf"encoder\.layers\.{LAYERS}\.self_attn\.q_proj\.weight"):
        store.finish()


def test_bad_inputs(tmp_path):
    ref = make_ref("quick_gelu")
    ours = load(ref, save(ref, tmp_path / "m.safetensors"))
    with pytest.raises(ModelError, match="max_position_embeddings"):
        ours(np.zeros((1, 78), np.int64))
    with pytest.raises(ConfigError, match="clip_skip"):
        ours(ids_for(1), clip_skip=LAYERS + 1)
    with pytest.raises(ModelError, match="token ids"):
        ours(np.full((1, 4), VOCAB, np.int64))
    with pytest.raises(ModelError, match="hidden_act"):
        CLIPTextModel({"hidden_act": "relu"}, None, B)


@pytest.mark.parametrize("precision, bound", [("fp16", 5e-3), ("bf16", 4e-2)])
def test_half_precision_weights(tmp_path, precision, bound):
    """Weights held in fp16/bf16 (f32 arithmetic) stay close to the fp32 reference."""
    ref = make_ref("gelu")
    path = save(ref, tmp_path / "m.safetensors")
    ours = load(ref, path, precision)
    ids = ids_for(2)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).last_hidden_state.numpy()
    got = B.numpy(ours(ids))
    rel = np.abs(got - want).max() / np.abs(want).max()
    print(f"CLIP {precision} weights: max abs error / max|ref| = {rel:.2e}")
    assert rel < bound


@pytest.mark.parametrize("fixture, variant", [("sd1_tiny", None), ("sd1_tiny", "fp16"), ("sd2_tiny", None),
                                              ("nomid_tiny", None)])
def test_tiny_model_folders(request, diffusers_pipe, fixture, variant):
    """The test models in the Hub layout (each text encoder file spelled as a different real one
    is) against the text encoder and tokenizer of diffusers' pipeline loaded from the same folder."""
    from sdweb.model import ModelFolder

    folder = request.getfixturevalue(fixture)
    pipe = diffusers_pipe(folder, variant)
    model = ModelFolder(folder)
    store = model.weights("text_encoder", "fp32", variant)
    if variant:
        assert store.files[0].name.endswith(f".{variant}.safetensors")
    ours = CLIPTextModel(model.config("text_encoder"), store.prefix(CLIPTextModel.weights_root(store)), B)
    store.finish()
    ref, tok = pipe.text_encoder, pipe.tokenizer
    ids = tok(["a photograph of an astronaut riding a horse", ""], padding="max_length",
              max_length=tok.model_max_length, truncation=True, return_tensors="np").input_ids
    with torch.no_grad():
        out = ref(torch.from_numpy(ids), output_hidden_states=True)
        skip1 = ref.final_layer_norm(out.hidden_states[-2])
    assert_close(ours(ids), out.last_hidden_state)
    assert_close(ours(ids, clip_skip=1), skip1)
    assert_close(ours.pooled(ids), out.pooler_output)
