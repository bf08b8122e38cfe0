"""Textual-inversion files (sdweb.textual_inversion): every layout the tools write, written here with
torch / safetensors as they write them, and parity with diffusers' load_textual_inversion on the tiny
models: our vectors in our chunker's slots give transformers' CLIP the same hidden states as
diffusers' added tokens do."""

from __future__ import annotations

import numpy as np
import pytest

from sdweb.errors import EmbeddingError
from sdweb.prompt_syntax import PromptChunker
from sdweb.textual_inversion import read_embedding
from sdweb.tokenizer import CLIPTokenizer

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def vectors(n, dim=32, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def a1111_pt(path, vec):
    """What A1111's Embedding.save writes (modules/textual_inversion/textual_inversion.py)."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "ignored-name",
                "step": 1200, "sd_checkpoint": "abc123", "sd_checkpoint_name": "model"}, path)


@pytest.mark.parametrize("n", [1, 4])
def test_a1111_pt(tmp_path, n):
    vec = vectors(n).requires_grad_()  # A1111 saves the vector it trained
    a1111_pt(tmp_path / "My Style.pt", vec)
    emb = read_embedding(tmp_path / "My Style.pt", dim=32)
    assert emb.trigger == "My Style"  # the file stem, as A1111 names it
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (n, 32)
    np.testing.assert_array_equal(emb.vectors, vec.detach().numpy())


def test_a1111_pt_from_torch_1_11(tmp_path):
    vec = vectors(2)
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vec)}), "name": "x"},
               tmp_path / "old.pt")
    np.testing.assert_array_equal(read_embedding(tmp_path / "old.pt").vectors, vec.numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a1111_safetensors(tmp_path, dtype):
    vec = vectors(3).to(dtype)
    safetensors_torch.save_file({"emb_params": vec}, tmp_path / "bad-hands.safetensors")
    emb = read_embedding(tmp_path / "bad-hands.safetensors", dim=32)
    assert emb.trigger == "bad-hands"
    np.testing.assert_array_equal(emb.vectors, vec.float().numpy())


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("shape", [(32,), (1, 32), (3, 32)])
def test_diffusers_learned_embeds(tmp_path, fmt, shape):
    vec = vectors(1 if len(shape) == 1 else shape[0]).reshape(shape)
    path = tmp_path / f"learned_embeds.{fmt}"
    if fmt == "safetensors":
        safetensors_torch.save_file({"<cat-toy>": vec}, path)
    else:
        torch.save({"<cat-toy>": vec}, path)
    emb = read_embedding(path, dim=32)
    assert emb.trigger == "<cat-toy>"
    np.testing.assert_array_equal(emb.vectors, vec.reshape(-1, 32).numpy())
    # bytes in (the browser's stored files), named by the caller
    same = read_embedding(path.read_bytes(), "learned_embeds." + fmt, trigger="override")
    assert same.trigger == "override" and np.array_equal(same.vectors, emb.vectors)


@pytest.mark.parametrize("data, match", [
    ({"emb_params": torch.zeros(2, 24)}, "width 24, but this model's text encoder has hidden_size 32"),
    ({"emb_params": torch.zeros(2, 3, 32)}, r"shape \(2, 3, 32\)"),
    ({"emb_params": torch.zeros(76, 32)}, "1 to 75 vectors"),
    ({"emb_params": torch.tensor([[0.0] * 31 + [float("nan")]])}, "vector 0 has non-finite"),
    ({"emb_params": torch.zeros(2, 32, dtype=torch.int32)}, "not a float tensor"),
    ({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 32)}, "SDXL"),
    ({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, "unknown embedding layout"),
])
def test_bad_safetensors_embeddings(tmp_path, data, match):
    safetensors_torch.save_file(data, tmp_path / "e.safetensors")
    with pytest.raises(EmbeddingError, match=match) as e:
        read_embedding(tmp_path / "e.safetensors", dim=32)
    assert str(e.value).startswith(str(tmp_path / "e.safetensors") + ": ") and "\n" not in str(e.value)


def test_bad_pickled_embeddings(tmp_path):
    torch.save({"string_to_param": {"*": vectors(1), "x": vectors(1)}}, tmp_path / "two.pt")
    with pytest.raises(EmbeddingError, match="2 entries"):
        read_embedding(tmp_path / "two.pt")
    torch.save([vectors(1)], tmp_path / "list.pt")
    with pytest.raises(EmbeddingError, match="holds a list"):
        read_embedding(tmp_path / "list.pt")
    (tmp_path / "x.pt").write_bytes(b"GIF89a" + bytes(20))
    with pytest.raises(EmbeddingError, match="neither a .safetensors file nor a torch.save"):
        read_embedding(tmp_path / "x.pt")


@pytest.mark.parametrize("model", ["sd1_tiny", "sd2_tiny"])
def test_same_hidden_states_as_diffusers_load_textual_inversion(request, tmp_path, model):
    """A diffusers multi-vector concept and an A1111 single-vector .pt in one prompt: diffusers adds
    tokens `<cat-toy>`, `<cat-toy>_1`, ... to its tokenizer and rows to the text encoder; we put our
    vectors at our chunker's slots. transformers' CLIPTextModel encodes both."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    folder = request.getfixturevalue(model)
    dim = CLIPTextModel.from_pretrained(folder / "text_encoder").config.hidden_size
    safetensors_torch.save_file({"<cat-toy>": vectors(3, dim, seed=1) * 0.05}, tmp_path / "learned_embeds.safetensors")
    a1111_pt(tmp_path / "emb-one.pt", vectors(1, dim, seed=2) * 0.05)
    prompt = "a photo of <cat-toy> next to emb-one, at dusk"

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"))
    pipe.load_textual_inversion(str(tmp_path / "emb-one.pt"), token="emb-one")
    expanded = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    ref_ids = pipe.tokenizer(expanded, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = pipe.text_encoder(ref_ids)[0][0].numpy()

    embs = [read_embedding(tmp_path / "learned_embeds.safetensors", dim=dim),
            read_embedding(tmp_path / "emb-one.pt", dim=dim)]
    chunker = PromptChunker(CLIPTokenizer.from_folder(folder / "tokenizer"))
    for e in embs:
        chunker.add_embedding(e.trigger, len(e.vectors))
    (chunk,) = chunker.chunk(prompt).chunks
    assert len(chunk.embeddings) == 4

    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    table = te.get_input_embeddings().weight.detach()
    rows = {e.trigger: e for e in embs}
    extra = [torch.from_numpy(rows[t].vectors[i]) for _, t, i in chunk.embeddings]
    te.set_input_embeddings(torch.nn.Embedding.from_pretrained(torch.cat([table, torch.stack(extra)])))
    ids = list(chunk.ids)
    for j, (pos, _, _) in enumerate(chunk.embeddings):
        ids[pos] = table.shape[0] + j
    with torch.no_grad():
        ours = te(torch.tensor([ids]))[0][0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert np.abs(ours - ref).max() < 1e-5 < np.abs(ref).max()
    # and the vectors matter: without them the states differ
    with torch.no_grad():
        assert not np.allclose(te(torch.tensor([chunk.ids]))[0][0].numpy(), ref, atol=1e-3)
