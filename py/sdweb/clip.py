"""CLIP text encoder: transformers' CLIPTextModel (models/clip/modeling_clip.py) over the backend.

    ids (N, L) -> token_embedding + position_embedding -> num_hidden_layers x CLIPEncoderLayer
               -> final_layer_norm -> (N, L, D)

Each CLIPEncoderLayer is pre-norm: x += self_attn(layer_norm1(x)) with a causal mask;
x += mlp(layer_norm2(x)), mlp = fc2(act(fc1(.))), act = config's hidden_act (quick_gelu in SD 1.x,
gelu in SD 2.x). Attribute paths are the checkpoint's key paths below the weights root (see
`CLIPTextModel.weights_root`).
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, ModelError
from .nn import LayerNorm, Linear

# transformers' CLIPTextConfig defaults, for keys a config.json leaves out.
DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}

_ACTS = ("quick_gelu", "gelu")  # transformers' ACT2FN names we have ops for


class CLIPAttention:
    """Multi-head causal self-attention: x (N, L, D) -> (N, L, D)."""

    def __init__(self, dim: int, heads: int, w, backend):
        self.backend, self.heads = backend, heads
        self.q_proj = Linear(dim, dim, w.prefix("q_proj"), backend)
        self.k_proj = Linear(dim, dim, w.prefix("k_proj"), backend)
        self.v_proj = Linear(dim, dim, w.prefix("v_proj"), backend)
        self.out_proj = Linear(dim, dim, w.prefix("out_proj"), backend)

    def __call__(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (N, L, h*d) each
        return self.out_proj(self.backend.attention(q, k, v, self.heads, causal=True))


class CLIPMLP:
    """fc2(act(fc1(x))): (N, L, D) -> (N, L, F) -> (N, L, D)."""

    def __init__(self, dim: int, inner: int, act: str, w, backend):
        self.act = act
        self.fc1 = Linear(dim, inner, w.prefix("fc1"), backend)
        self.fc2 = Linear(inner, dim, w.prefix("fc2"), backend)

    def __call__(self, x):
        return self.fc2(self.fc1(x, act=self.act))


class CLIPEncoderLayer:
    """Pre-norm transformer layer: (N, L, D) -> (N, L, D)."""

    def __init__(self, cfg: dict, w, backend):
        D, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.backend = backend
        self.layer_norm1 = LayerNorm(D, w.prefix("layer_norm1"), backend, eps)
        self.self_attn = CLIPAttention(D, cfg["num_attention_heads"], w.prefix("self_attn"), backend)
        self.layer_norm2 = LayerNorm(D, w.prefix("layer_norm2"), backend, eps)
        self.mlp = CLIPMLP(D, cfg["intermediate_size"], cfg["hidden_act"], w.prefix("mlp"), backend)

    def __call__(self, x):
        x = self.backend.add(x, self.self_attn(self.layer_norm1(x)))
        return self.backend.add(x, self.mlp(self.layer_norm2(x)))


class CLIPTextModel:
    """`CLIPTextModel(config, w, backend)`: config is text_encoder/config.json, w the view at the
    weights root (`store.prefix(CLIPTextModel.weights_root(store))`).

    `model(ids, clip_skip=0, embeds=None)`: ids (N, L) int, L <= max_position_embeddings -> (N, L, D),
    the prompt embeddings diffusers' StableDiffusionPipeline.encode_prompt makes: final_layer_norm of
    the last layer's output, or with clip_skip=k of the output k layers before the last
    (hidden_states[-(k+1)]). `embeds`: [(position, vector (D,))], textual-inversion vectors that take
    the place of the token embedding at those positions of every row (transformers' inputs_embeds
    with those rows replaced; prompt_syntax.Chunk.embeddings says where). `tokens`: the (N, L, D)
    token embeddings already made by the caller (`embed_tokens`, then `replace_rows`), which is how
    the pipeline puts the vectors in while yielding before the host readback that takes.
    """

    def __init__(self, config: dict, w, backend):
        cfg = {k: config.get(k, v) for k, v in DEFAULTS.items()}
        if cfg["hidden_act"] not in _ACTS:
            raise ModelError(f"text_encoder config hidden_act {cfg['hidden_act']!r} is not supported "
                             f"(expected one of {', '.join(_ACTS)})")
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ModelError(f"text_encoder config hidden_size {cfg['hidden_size']} is not a multiple "
                             f"of num_attention_heads {cfg['num_attention_heads']}")
        self.config, self.backend = cfg, backend
        D = cfg["hidden_size"]
        emb = w.prefix("embeddings")
        # (V, D) and (P, D) tables stay in the held precision: the token table is 152 MB in f32.
        self.token_embedding = backend.weight(emb.get("token_embedding.weight", (cfg["vocab_size"], D)))
        self.position_embedding = backend.weight(
            emb.get("position_embedding.weight", (cfg["max_position_embeddings"], D)))
        # transformers < 4.31 saved the arange(P) buffer (I64); positions are always 0..L-1 here.
        w.skip("embeddings.position_ids")
        self.layers = [CLIPEncoderLayer(cfg, w.prefix(f"encoder.layers.{i}"), backend)
                       for i in range(cfg["num_hidden_layers"])]
        self.final_layer_norm = LayerNorm(D, w.prefix("final_layer_norm"), backend, cfg["layer_norm_eps"])

    @staticmethod
    def weights_root(store) -> str:
        """The prefix the text model's tensors live under: "text_model" in Hub files (saved by
        transformers < 5), "" in files transformers >= 5 saves. `store`: a WeightStore (or any
        container of the file's tensor names)."""
        return "text_model" if "text_model.final_layer_norm.weight" in store else ""

    def _check(self, ids: np.ndarray, clip_skip: int) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ModelError(f"text encoder input ids must have shape (N, L), got {ids.shape}")
        N, L = ids.shape
        P, V, n = self.config["max_position_embeddings"], self.config["vocab_size"], len(self.layers)
        if L > P:
            raise ModelError(f"prompt is {L} tokens, over the text encoder's max_position_embeddings {P}")
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ModelError(f"token ids must be in [0, {V}), got range [{ids.min()}, {ids.max()}]")
        if not 0 <= clip_skip <= n:  # clip_skip == n: the embeddings alone, as diffusers allows
            raise ConfigError(f"clip_skip {clip_skip} is out of range for a {n}-layer text encoder "
                              f"(expected 0..{n})")
        return ids

    def embed_tokens(self, ids: np.ndarray):
        """ids (N, L) -> the token embeddings (N, L, D), before positions are added."""
        return self.backend.embedding(np.asarray(ids), self.token_embedding)

    def _hidden(self, ids: np.ndarray, clip_skip: int, embeds=None, tokens=None):
        """ids (N, L) -> (N, L, D): the residual stream after num_hidden_layers - clip_skip layers.
        `tokens`: the token embeddings when the caller made them (embed_tokens, replace_rows)."""
        ids = self._check(ids, clip_skip)
        N, L = ids.shape
        backend = self.backend
        pos = np.broadcast_to(np.arange(L), (N, L))
        if tokens is None:
            tokens = self.embed_tokens(ids)  # (N, L, D)
        if embeds:
            tokens = self.replace_rows(tokens, embeds)
        x = backend.add(tokens, backend.embedding(pos, self.position_embedding))  # (N, L, D)
        for layer in self.layers[: len(self.layers) - clip_skip]:  # the skipped layers' outputs are never used
            x = layer(x)
        return x  # (N, L, D)

    def replace_rows(self, tokens, embeds):
        """(N, L, D) token embeddings with the rows at `embeds`' positions replaced by their vectors.
        Done on the host: a prompt chunk's (N, 77, D) floats are a small read back and upload, and
        only chunks with an embedding in them pay it (the pipeline yields `tokens` first, so a
        driver without JSPI can wait for that readback)."""
        t = self.backend.numpy(tokens).copy()
        N, L, D = t.shape
        for position, vector in embeds:
            vector = np.asarray(vector, dtype=np.float32)
            if not 0 <= position < L or vector.shape != (D,):
                raise ModelError(f"text encoder: an embedding vector of shape {vector.shape} at position {position} "
                                 f"does not fit token embeddings of shape {(N, L, D)}")
            t[:, position] = vector
        return self.backend.tensor(t)

    def __call__(self, ids: np.ndarray, clip_skip: int = 0, embeds=None, tokens=None):
        return self.final_layer_norm(self._hidden(ids, clip_skip, embeds, tokens))

    def pooled(self, ids: np.ndarray, last_hidden_state=None):
        """(N, D): the final-layer-normed state at each row's EOS token, transformers' pooler_output.
        Configs with the legacy eos_token_id == 2 take the position of the largest id (EOS is the
        largest id in CLIP's vocabulary); others the first position of eos_token_id."""
        ids = np.asarray(ids)
        h = self(ids) if last_hidden_state is None else last_hidden_state
        eos = self.config["eos_token_id"]
        index = ids.argmax(axis=-1) if eos == 2 else (ids == eos).argmax(axis=-1)
        return self.backend.slice_tokens(h, index)
