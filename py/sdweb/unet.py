"""UNet2DConditionModel for the Stable Diffusion 1.x / 2.x family (diffusers' unet_2d_condition.py,
unet_2d_blocks.py, transformer_2d.py, attention.py) over the backend; its resnets, downsamplers and
upsamplers are resnet.py's, shared with the VAE.

    eps = unet(x (N, in_channels, h, w), t (float or (N,)), context (N, L, cross_attention_dim),
               timestep_cond=None (N, time_cond_proj_dim): an LCM UNet's guidance embedding)
        -> (N, out_channels, h, w)

Every number comes from unet/config.json with diffusers' defaults for absent keys, including the
historical `attention_head_dim`, which in SD 1.x/2.x configs means the number of heads: heads of a
block = num_attention_heads or attention_head_dim, head dim = channels // heads. Covers SD 1.x
(int heads, conv proj_in/out), SD 2.x / SD-Turbo (per-block heads, linear projections) and BK-SDM
(no mid block, fewer blocks or layers) and LCM-distilled UNets (time_cond_proj_dim: the guidance
scale enters as an embedding added to the timestep's, `guidance_embedding`). Attribute paths are the
checkpoint's key paths.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ModelError
from .nn import Conv2d, GroupNorm, LayerNorm, Linear
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D

# diffusers' UNet2DConditionModel.__init__ defaults for keys a config.json may leave out.
DEFAULTS = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "encoder_hid_dim": None,
    "resnet_out_scale_factor": 1.0,
    "attention_type": "default",
    "upcast_attention": False,
}

# Config values this implementation does not cover: (key, the value(s) we support).
_SUPPORTED = {
    "act_fn": ("silu",),
    "only_cross_attention": (False,),
    "dual_cross_attention": (False,),
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "num_class_embeds": (None,),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "encoder_hid_dim": (None,),
    "attention_type": ("default",),
    "center_input_sample": (False,),
    # diffusers' UNet2DConditionModel raises on num_attention_heads (its configs name the head count
    # attention_head_dim for compatibility), so a real config never sets it.
    "num_attention_heads": (None,),
    "resnet_out_scale_factor": (1.0, 1),
}


def unet_config(raw: dict) -> dict:
    """config.json -> a complete config (defaults filled, per-block lists expanded, checked)."""
    cfg = {**DEFAULTS, **{k: v for k, v in raw.items() if not k.startswith("_")}}
    for key, allowed in _SUPPORTED.items():
        if cfg[key] not in allowed:
            raise ModelError(f"unet/config.json: {key}={cfg[key]!r} is not supported "
                             f"(supported: {', '.join(map(repr, allowed))}); this is not an SD 1.x/2.x UNet")
    n = len(cfg["down_block_types"])
    if len(cfg["up_block_types"]) != n or len(cfg["block_out_channels"]) != n:
        raise ModelError("unet/config.json: down_block_types, up_block_types and block_out_channels "
                         f"must have the same length, got {n}, {len(cfg['up_block_types'])}, "
                         f"{len(cfg['block_out_channels'])}")
    known = {"CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}
    for t in cfg["down_block_types"] + cfg["up_block_types"]:
        if t not in known:
            raise ModelError(f"unet/config.json: block type {t!r} is not supported (supported: "
                             f"{', '.join(sorted(known))})")
    if cfg["mid_block_type"] not in ("UNetMidBlock2DCrossAttn", None):
        raise ModelError(f"unet/config.json: mid_block_type={cfg['mid_block_type']!r} is not supported "
                         "(supported: 'UNetMidBlock2DCrossAttn' or null)")
    # diffusers' historical naming: attention_head_dim holds the number of heads of each block
    # (`num_attention_heads = num_attention_heads or attention_head_dim`); head dim = channels // heads.
    cfg["heads"] = _per_block(cfg["attention_head_dim"], n, "attention_head_dim")
    cfg["layers"] = _per_block(cfg["layers_per_block"], n, "layers_per_block")
    cfg["transformer_layers"] = _per_block(cfg["transformer_layers_per_block"], n,
                                           "transformer_layers_per_block")
    cfg["cross_dims"] = _per_block(cfg["cross_attention_dim"], n, "cross_attention_dim")
    return cfg


def _per_block(v, n: int, key: str) -> list:
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ModelError(f"unet/config.json: {key} has {len(v)} entries but there are {n} blocks")
        return list(v)
    return [v] * n


def timestep_embedding(t: np.ndarray, dim: int, flip_sin_to_cos: bool, shift: float) -> np.ndarray:
    """diffusers' get_timestep_embedding: t (N,) -> (N, dim) sinusoidal features, in f32."""
    half = dim // 2
    exponent = -math.log(10000) * np.arange(half, dtype=np.float32) / np.float32(half - shift)
    freqs = np.exp(exponent.astype(np.float32))
    args = t.astype(np.float32)[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def guidance_embedding(w: np.ndarray, dim: int) -> np.ndarray:
    """diffusers' get_guidance_scale_embedding (LatentConsistencyModelPipeline): w (N,), the guidance
    scale minus 1 -> (N, dim) sinusoidal features of 1000 w, in f32."""
    w = np.asarray(w, dtype=np.float32).reshape(-1) * np.float32(1000.0)
    half = dim // 2
    step = np.log(np.float32(10000.0)) / np.float32(half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -step)
    args = w[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


# --- blocks ---------------------------------------------------------------------------------------


class TimestepEmbedding:
    """linear_1 -> SiLU -> linear_2: (N, C0) -> (N, temb); `act` fuses an activation after linear_2.
    With cond_dim (an LCM UNet's time_cond_proj_dim), `condition` (N, cond_dim) goes through
    cond_proj (no bias) and is added to the input first."""

    def __init__(self, cin, temb, w, backend, cond_dim=None):
        self.backend = backend
        self.cond_proj = None if cond_dim is None else Linear(cond_dim, cin, w.prefix("cond_proj"), backend,
                                                               bias=False)
        self.linear_1 = Linear(cin, temb, w.prefix("linear_1"), backend)
        self.linear_2 = Linear(temb, temb, w.prefix("linear_2"), backend)

    def __call__(self, x, act=None, condition=None):
        if condition is not None:
            x = self.backend.add(x, self.cond_proj(condition))
        return self.linear_2(self.linear_1(x, act="silu"), act=act)


class CrossAttention:
    """diffusers Attention with heads of size dim_head: x (N, L, C), context (N, Lc, Cc) -> (N, L, C),
    plus `residual` (the block's input) added by to_out.0. to_q/to_k/to_v have no bias; to_out.0
    does. The projections run fused: self-attention's q, k and v as one GEMM over to_qkv (the rows of
    to_q, to_k and to_v), cross-attention's k and v as one over to_kv, whose result is kept for as
    long as the same context comes back (every denoising step of a run), and attention reads q, k
    and v as column ranges of those results."""

    def __init__(self, dim, context_dim, heads, w, backend, cross: bool):
        self.backend, self.heads, self.dim, self.cross = backend, heads, dim, cross

        def proj(name, din):
            return backend.weight(w.get(f"{name}.weight", (dim, din)))

        if cross:
            self.to_q = proj("to_q", dim)
            self.to_kv = backend.fuse_weights([proj("to_k", context_dim), proj("to_v", context_dim)])
        else:
            self.to_qkv = backend.fuse_weights([proj("to_q", dim), proj("to_k", dim), proj("to_v", dim)])
        self.to_out = [Linear(dim, dim, w.prefix("to_out.0"), backend)]
        self._kv = None  # (context, its k|v projection (N, Lc, 2C))

    def __call__(self, x, context=None, residual=None):
        backend, C = self.backend, self.dim
        if not self.cross:
            qkv = backend.linear(x, self.to_qkv)  # (N, L, 3C)
            q, k, v = (qkv, 0), (qkv, C), (qkv, 2 * C)
        else:
            if self._kv is None or self._kv[0] is not context:
                self._kv = (context, backend.linear(context, self.to_kv))  # (N, Lc, 2C)
            q, k, v = backend.linear(x, self.to_q), (self._kv[1], 0), (self._kv[1], C)
        h = backend.attention(q, k, v, self.heads)  # (N, L, C)
        return self.to_out[0](h, residual=residual)

    def forget_context(self):
        """Let go of the kept context and its K|V projection (UNet2DConditionModel.forget_context)."""
        self._kv = None


class FeedForward:
    """GEGLU feed-forward: net.0.proj (C -> 2*4C), a * gelu(gate), net.2 (4C -> C) plus `residual`."""

    def __init__(self, dim, w, backend):
        inner = 4 * dim
        self.proj = Linear(dim, 2 * inner, w.prefix("net.0.proj"), backend)
        self.out = Linear(inner, dim, w.prefix("net.2"), backend)

    def __call__(self, x, residual=None):
        return self.out(self.proj(x, act="geglu"), residual=residual)


class BasicTransformerBlock:
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each with a residual (added by
    the sublayer's last linear): x (N, L, C), context (N, Lc, Cc) -> (N, L, C)."""

    def __init__(self, dim, context_dim, heads, w, backend):
        self.norm1 = LayerNorm(dim, w.prefix("norm1"), backend)
        self.attn1 = CrossAttention(dim, dim, heads, w.prefix("attn1"), backend, cross=False)
        self.norm2 = LayerNorm(dim, w.prefix("norm2"), backend)
        self.attn2 = CrossAttention(dim, context_dim, heads, w.prefix("attn2"), backend, cross=True)
        self.norm3 = LayerNorm(dim, w.prefix("norm3"), backend)
        self.ff = FeedForward(dim, w.prefix("ff"), backend)

    def __call__(self, x, context):
        x = self.attn1(self.norm1(x), residual=x)
        x = self.attn2(self.norm2(x), context, residual=x)
        return self.ff(self.norm3(x), residual=x)


class Transformer2DModel:
    """Spatial transformer: (N, C, H, W), context -> (N, C, H, W).
    group norm (eps 1e-6), stored as tokens (N, H*W, C) -> proj_in -> transformer_blocks -> proj_out,
    stored back as an image plus the input. proj_in/proj_out are 1x1 convs, or linears when
    use_linear_projection: on tokens both are the same linear map, so the transformer has no
    transpose of its own (group_norm writes tokens, proj_out writes the image)."""

    def __init__(self, channels, context_dim, heads, depth, groups, linear_proj, w, backend):
        self.backend = backend
        conv = not linear_proj
        self.norm = GroupNorm(groups, channels, w.prefix("norm"), backend, 1e-6)
        self.proj_in = Linear(channels, channels, w.prefix("proj_in"), backend, conv1x1=conv)
        self.proj_out = Linear(channels, channels, w.prefix("proj_out"), backend, conv1x1=conv)
        self.transformer_blocks = [
            BasicTransformerBlock(channels, context_dim, heads, w.prefix(f"transformer_blocks.{i}"), backend)
            for i in range(depth)]

    def __call__(self, x, context):
        _, _, H, W = self.backend.shape(x)
        h = self.proj_in(self.norm(x, tokens=True))  # (N, H*W, C)
        for block in self.transformer_blocks:
            h = block(h, context)
        return self.proj_out(h, residual=x, image=(H, W))  # (N, C, H, W)


class DownBlock:
    """CrossAttnDownBlock2D / DownBlock2D: `layers` x (resnet [-> transformer]), then downsample.
    Returns the output and the skip tensors the up path will concatenate."""

    def __init__(self, cin, cout, temb, layers, attn, heads, depth, context_dim, add_down, cfg, w, backend):
        g, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.resnets = [ResnetBlock2D(cin if i == 0 else cout, cout, g, eps, w.prefix(f"resnets.{i}"), backend, temb)
                        for i in range(layers)]
        self.attentions = [Transformer2DModel(cout, context_dim, heads, depth, g,
                                              cfg["use_linear_projection"], w.prefix(f"attentions.{i}"), backend)
                           for i in range(layers)] if attn else []
        self.downsamplers = [Downsample2D(cout, cfg["downsample_padding"],
                                          w.prefix("downsamplers.0"), backend)] if add_down else []

    def __call__(self, x, temb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions:
                x = self.attentions[i](x, context)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class UpBlock:
    """CrossAttnUpBlock2D / UpBlock2D: `layers` x (concat skip -> resnet [-> transformer]), then
    upsample. Resnet j takes prev (j == 0) or cout channels plus the skip's channels."""

    def __init__(self, cin, cout, prev, temb, layers, attn, heads, depth, context_dim, add_up, cfg, w, backend):
        g, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.backend = backend
        self.resnets = []
        for j in range(layers):
            skip = cin if j == layers - 1 else cout
            rin = prev if j == 0 else cout
            self.resnets.append(ResnetBlock2D(rin + skip, cout, g, eps, w.prefix(f"resnets.{j}"), backend, temb))
        self.attentions = [Transformer2DModel(cout, context_dim, heads, depth, g,
                                              cfg["use_linear_projection"], w.prefix(f"attentions.{j}"), backend)
                           for j in range(layers)] if attn else []
        self.upsamplers = [Upsample2D(cout, w.prefix("upsamplers.0"), backend)] if add_up else []

    def __call__(self, x, skips, temb, context):
        for j, resnet in enumerate(self.resnets):
            x = resnet(self.backend.concat([x, skips.pop()], axis=1), temb)
            if self.attentions:
                x = self.attentions[j](x, context)
        for up in self.upsamplers:
            x = up(x)
        return x


class MidBlock:
    """UNetMidBlock2DCrossAttn: resnets.0 -> attentions.0 -> resnets.1 at the deepest width."""

    def __init__(self, channels, temb, heads, depth, context_dim, cfg, w, backend):
        g, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        scale = cfg["mid_block_scale_factor"]
        self.resnets = [ResnetBlock2D(channels, channels, g, eps, w.prefix(f"resnets.{i}"), backend, temb, scale)
                        for i in range(2)]
        self.attentions = [Transformer2DModel(channels, context_dim, heads, depth, g,
                                              cfg["use_linear_projection"], w.prefix("attentions.0"), backend)]

    def __call__(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


# --- the model ------------------------------------------------------------------------------------


class UNet2DConditionModel:
    def __init__(self, config: dict, w, backend):
        cfg = self.config = unet_config(config)
        self.backend = backend
        ch = cfg["block_out_channels"]
        n = len(ch)
        temb = ch[0] * 4 if cfg["time_embedding_dim"] is None else cfg["time_embedding_dim"]
        g, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        kin, kout = cfg["conv_in_kernel"], cfg["conv_out_kernel"]

        self.conv_in = Conv2d(cfg["in_channels"], ch[0], kin, w.prefix("conv_in"), backend, padding=(kin - 1) // 2)
        self.time_embedding = TimestepEmbedding(ch[0], temb, w.prefix("time_embedding"), backend,
                                                cfg["time_cond_proj_dim"])

        self.down_blocks = []
        cout = ch[0]
        for i, kind in enumerate(cfg["down_block_types"]):
            cin, cout = cout, ch[i]
            self.down_blocks.append(DownBlock(
                cin, cout, temb, cfg["layers"][i], kind == "CrossAttnDownBlock2D", cfg["heads"][i],
                cfg["transformer_layers"][i], cfg["cross_dims"][i], i < n - 1, cfg,
                w.prefix(f"down_blocks.{i}"), backend))

        self.mid_block = None
        if cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn":
            self.mid_block = MidBlock(ch[-1], temb, cfg["heads"][-1], cfg["transformer_layers"][-1],
                                      cfg["cross_dims"][-1], cfg, w.prefix("mid_block"), backend)

        rch = ch[::-1]
        rheads, rlayers = cfg["heads"][::-1], cfg["layers"][::-1]
        rdepth, rcross = cfg["transformer_layers"][::-1], cfg["cross_dims"][::-1]
        self.up_blocks = []
        prev = rch[0]
        for i, kind in enumerate(cfg["up_block_types"]):
            cout, cin = rch[i], rch[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock(
                cin, cout, prev, temb, rlayers[i] + 1, kind == "CrossAttnUpBlock2D", rheads[i],
                rdepth[i], rcross[i], i < n - 1, cfg, w.prefix(f"up_blocks.{i}"), backend))
            prev = cout

        self.conv_norm_out = GroupNorm(g, ch[0], w.prefix("conv_norm_out"), backend, eps)
        self.conv_out = Conv2d(ch[0], cfg["out_channels"], kout, w.prefix("conv_out"), backend,
                               padding=(kout - 1) // 2)

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    def forget_context(self):
        """Drop what the cross-attentions keep between calls (the context and its K|V projections):
        the pipeline calls it when a run's denoising ends, so a UNet kept loaded holds no activation
        between runs and a GPU's buffer pool is the same at the start of every run."""
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            for transformer in getattr(block, "attentions", ()):
                for b in transformer.transformer_blocks:
                    b.attn2.forget_context()

    @property
    def time_cond_proj_dim(self) -> int | None:
        """The width of the guidance embedding an LCM UNet takes (None: an ordinary UNet)."""
        return self.config["time_cond_proj_dim"]

    def time_embed(self, t, batch: int, timestep_cond=None):
        """t: scalar or (N,) -> SiLU(time_embedding(t, timestep_cond)) (N, temb); every resnet applies
        SiLU to temb first, so it is applied once here. timestep_cond: (N, time_cond_proj_dim) host
        array or None (diffusers, too, leaves cond_proj out when it is not given)."""
        cfg = self.config
        t = np.broadcast_to(np.asarray(t, dtype=np.float32).reshape(-1), (batch,))
        emb = timestep_embedding(t, cfg["block_out_channels"][0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        cond = None
        if timestep_cond is not None:
            if self.time_embedding.cond_proj is None:
                raise ModelError("unet: a guidance embedding was given to a UNet without time_cond_proj_dim")
            cond = self.backend.tensor(timestep_cond)
        return self.time_embedding(self.backend.tensor(emb), act="silu", condition=cond)

    def __call__(self, x, t, context, timestep_cond=None):
        """x: (N, in_channels, h, w), t: scalar or (N,), context: (N, L, cross_attention_dim),
        timestep_cond: None or (N, time_cond_proj_dim) (guidance_embedding, for an LCM UNet)."""
        backend = self.backend
        N = backend.shape(x)[0]
        # 1. time
        temb = self.time_embed(t, N, timestep_cond)
        # 2. pre-process
        x = self.conv_in(x)
        # 3. down
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb, context)
            skips.extend(s)
        # 4. mid
        if self.mid_block is not None:
            x = self.mid_block(x, temb, context)
        # 5. up
        for block in self.up_blocks:
            n = len(block.resnets)
            x = block(x, skips[-n:], temb, context)
            del skips[-n:]
        # 6. post-process
        return self.conv_out(self.conv_norm_out(x, act="silu"))
