"""Textual-inversion embedding files -> (trigger word, vectors (n, D) float32).

The layouts the tools write (told apart by content; the extension is not trusted):

    A1111 .pt / .bin    torch.save({"string_to_param": {"*": (n, D)}, "string_to_token": {"*": 265},
                        "name": ..., "step": ...}); files from torch 1.11 pickle string_to_param as a
                        torch.nn.ParameterDict                                  trigger: file stem
    A1111 .safetensors  {"emb_params": (n, D)}                                  trigger: file stem
    diffusers           learned_embeds.safetensors / .bin: {token: (D,) or (n, D)}  trigger: token

(A1111 takes the trigger from the file name for its own layouts, as here; diffusers' concepts
carry their token.) `trigger=` overrides either.

    emb = read_embedding("embeddings/EasyNegative.safetensors", dim=768)
    chunker.add_embedding(emb.trigger, len(emb.vectors))      # prompt_syntax.PromptChunker

The text encoder then puts `emb.vectors[i]` at each (position, trigger, i) slot of a chunk in place
of the token embedding (see prompt_syntax). `dim` is the text encoder's hidden_size: an embedding
made for another model family (SD 2.x's 1024 on SD 1.x's 768) is refused, as is an SDXL one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .addon_files import read_addon
from .errors import EmbeddingError
from .prompt_syntax import CHUNK_TOKENS

__all__ = ["Embedding", "read_embedding"]


@dataclasses.dataclass(frozen=True)
class Embedding:
    trigger: str
    vectors: np.ndarray  # (n, D) float32, 1 <= n <= 75


def _layout(data, stem: str, name: str):
    """The file's data -> (trigger, tensor, where in the file it was)."""
    if not isinstance(data, dict) or not data:
        raise EmbeddingError(f"{name}: holds a {type(data).__name__}, not an embedding's dict of tensors")
    if "clip_l" in data or "clip_g" in data:
        raise EmbeddingError(f"{name}: an SDXL embedding (clip_l/clip_g): this model's text encoder is SD 1.x/2.x")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = params.get("_parameters", params) if isinstance(params, dict) else params
        if not isinstance(params, dict) or len(params) != 1:
            count = len(params) if isinstance(params, dict) else type(params).__name__
            raise EmbeddingError(f"{name}: string_to_param holds {count} entries: an A1111 embedding has exactly one")
        key = next(iter(params))
        return stem, params[key], f"string_to_param[{key!r}]"
    if "emb_params" in data:
        return stem, data["emb_params"], "emb_params"
    if len(data) == 1:
        token, tensor = next(iter(data.items()))
        if isinstance(token, str) and token.strip():
            return token, tensor, repr(token)
    keys = ", ".join(repr(k) for k in list(data)[:5])
    raise EmbeddingError(f"{name}: unknown embedding layout (keys {keys}): expected A1111's string_to_param "
                         "or emb_params, or diffusers' single {token: tensor}")


def read_embedding(source, filename: str | None = None, *, dim: int | None = None,
                   trigger: str | None = None) -> Embedding:
    """A textual-inversion file -> Embedding(trigger, vectors (n, D) float32).

    source: a path, bytes or a byte source (see addon_files); filename names it (its stem is A1111's
    trigger word). dim: the text encoder's hidden_size, checked when given.
    """
    f = read_addon(source, filename, error=EmbeddingError)
    found, tensor, where = _layout(f.data, f.stem, f.name)
    if not isinstance(tensor, np.ndarray) or tensor.dtype.kind != "f":
        what = f"{tensor.dtype} tensor" if isinstance(tensor, np.ndarray) else type(tensor).__name__
        raise EmbeddingError(f"{f.name}: {where} is a {what}, not a float tensor of vectors")
    vectors = tensor.reshape(1, -1) if tensor.ndim == 1 else tensor
    if vectors.ndim != 2 or not 1 <= vectors.shape[0] <= CHUNK_TOKENS or vectors.shape[1] == 0:
        raise EmbeddingError(f"{f.name}: {where} has shape {tensor.shape}: expected (vectors, width) with "
                             f"1 to {CHUNK_TOKENS} vectors, or one vector (width,)")
    if dim is not None and vectors.shape[1] != dim:
        raise EmbeddingError(f"{f.name}: {where} has vectors of width {vectors.shape[1]}, but this model's text "
                             f"encoder has hidden_size {dim} (an embedding for another model family?)")
    bad = ~np.isfinite(vectors)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise EmbeddingError(f"{f.name}: {where} vector {row} has non-finite values (NaN or infinity)")
    trigger = found if trigger is None else trigger
    if not trigger.strip():
        raise EmbeddingError(f"{f.name}: trigger word {trigger!r} is empty")
    return Embedding(trigger, np.ascontiguousarray(vectors, dtype=np.float32))
