"""AutoencoderKL: diffusers' SD VAE (models/autoencoders/autoencoder_kl.py, vae.py) over the backend.

    decode: z (N, latent_channels, h, w) -> post_quant_conv -> decoder.conv_in -> mid_block
            -> up_blocks (layers_per_block + 1 resnets, then nearest 2x + conv except the last)
            -> conv_norm_out + SiLU -> conv_out -> (N, out_channels, h*f, w*f)
    encode: x (N, in_channels, H, W) -> encoder.conv_in -> down_blocks (layers_per_block resnets,
            then a stride-2 conv except the last) -> mid_block -> conv_norm_out + SiLU -> conv_out
            -> quant_conv -> moments (N, 2*latent_channels, H/f, W/f) = [mean, logvar]

f = vae.scale_factor = 2 ** (len(block_out_channels) - 1). Every group norm in the VAE has eps 1e-6
(diffusers hard-codes it). Attribute paths are the checkpoint's key paths.
"""

from __future__ import annotations

from .errors import ModelError
from .nn import Conv2d, GroupNorm, Linear
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D

# diffusers' AutoencoderKL.__init__ defaults, for keys a config.json leaves out.
DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

EPS = 1e-6


class Attention:
    """The mid-block's single-head spatial self-attention with its own group norm and a residual:
    x (N, C, H, W) -> x + to_out(attn(to_q(gn(x)), to_k(gn(x)), to_v(gn(x)))), head dim C.

    Checkpoints spell the projections `to_q/to_k/to_v/to_out.0` (diffusers >= 0.14) or, in the
    files SD 1.5 and 2.1 ship as their default, `query/key/value/proj_attn`; both are Linear (C, C).
    """

    LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def __init__(self, channels: int, groups: int, w, backend):
        self.backend = backend
        self.group_norm = GroupNorm(groups, channels, w.prefix("group_norm"), backend, EPS)
        legacy = "to_q.weight" not in w and "query.weight" in w
        names = {new: (old if legacy else new) for new, old in self.LEGACY.items()}
        self.to_q = Linear(channels, channels, w.prefix(names["to_q"]), backend)
        self.to_k = Linear(channels, channels, w.prefix(names["to_k"]), backend)
        self.to_v = Linear(channels, channels, w.prefix(names["to_v"]), backend)
        self.to_out = [Linear(channels, channels, w.prefix(names["to_out.0"]), backend)]

    def __call__(self, x):
        backend = self.backend
        _, _, H, W = backend.shape(x)
        h = backend.nchw_to_nlc(self.group_norm(x))  # (N, H*W, C)
        h = backend.attention(self.to_q(h), self.to_k(h), self.to_v(h), heads=1)
        h = backend.nlc_to_nchw(self.to_out[0](h), H, W)  # (N, C, H, W)
        return backend.add(h, x)  # rescale_output_factor is 1 in the VAE


class UNetMidBlock2D:
    """resnets.0 -> attentions.0 (unless mid_block_add_attention is false) -> resnets.1, at C channels."""

    def __init__(self, channels: int, groups: int, add_attention: bool, w, backend):
        self.resnets = [ResnetBlock2D(channels, channels, groups, EPS, w.prefix(f"resnets.{i}"), backend)
                        for i in range(2)]
        self.attentions = [Attention(channels, groups, w.prefix("attentions.0"), backend)] if add_attention else []

    def __call__(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class DownEncoderBlock2D:
    """layers resnets, then a Downsample2D unless last: (N, cin, H, W) -> (N, cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, add_downsample: bool, w, backend):
        self.resnets = [ResnetBlock2D(cin if i == 0 else cout, cout, groups, EPS, w.prefix(f"resnets.{i}"), backend)
                        for i in range(layers)]
        # padding 0: pad right and bottom, then the stride-2 conv (diffusers' DownEncoderBlock2D)
        self.downsamplers = [Downsample2D(cout, 0, w.prefix("downsamplers.0"), backend)] if add_downsample else []

    def __call__(self, x):
        for layer in self.resnets + self.downsamplers:
            x = layer(x)
        return x


class UpDecoderBlock2D:
    """layers resnets, then an Upsample2D unless last: (N, cin, H, W) -> (N, cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, add_upsample: bool, w, backend):
        self.resnets = [ResnetBlock2D(cin if i == 0 else cout, cout, groups, EPS, w.prefix(f"resnets.{i}"), backend)
                        for i in range(layers)]
        self.upsamplers = [Upsample2D(cout, w.prefix("upsamplers.0"), backend)] if add_upsample else []

    def __call__(self, x):
        for layer in self.resnets + self.upsamplers:
            x = layer(x)
        return x


class Encoder:
    """x (N, in_channels, H, W) -> (N, 2*latent_channels, H/f, W/f)."""

    def __init__(self, cfg: dict, w, backend):
        chans, groups, n = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["layers_per_block"]
        self.conv_in = Conv2d(cfg["in_channels"], chans[0], 3, w.prefix("conv_in"), backend, padding=1)
        self.down_blocks = [
            DownEncoderBlock2D(chans[max(i - 1, 0)], c, n, groups, i < len(chans) - 1,
                               w.prefix(f"down_blocks.{i}"), backend)
            for i, c in enumerate(chans)]
        self.mid_block = UNetMidBlock2D(chans[-1], groups, cfg["mid_block_add_attention"],
                                        w.prefix("mid_block"), backend)
        self.conv_norm_out = GroupNorm(groups, chans[-1], w.prefix("conv_norm_out"), backend, EPS)
        self.conv_out = Conv2d(chans[-1], 2 * cfg["latent_channels"], 3, w.prefix("conv_out"), backend, padding=1)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_norm_out(x, act="silu"))


class Decoder:
    """z (N, latent_channels, h, w) -> (N, out_channels, h*f, w*f)."""

    def __init__(self, cfg: dict, w, backend):
        chans, groups, n = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["layers_per_block"]
        rev = chans[::-1]
        self.conv_in = Conv2d(cfg["latent_channels"], rev[0], 3, w.prefix("conv_in"), backend, padding=1)
        self.mid_block = UNetMidBlock2D(rev[0], groups, cfg["mid_block_add_attention"],
                                        w.prefix("mid_block"), backend)
        self.up_blocks = [
            UpDecoderBlock2D(rev[max(i - 1, 0)], c, n + 1, groups, i < len(rev) - 1,
                             w.prefix(f"up_blocks.{i}"), backend)
            for i, c in enumerate(rev)]
        self.conv_norm_out = GroupNorm(groups, chans[0], w.prefix("conv_norm_out"), backend, EPS)
        self.conv_out = Conv2d(chans[0], cfg["out_channels"], 3, w.prefix("conv_out"), backend, padding=1)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(x, act="silu"))


class AutoencoderKL:
    """`AutoencoderKL(config, w, backend, encoder=True, decoder=True)`: config is vae/config.json, w
    the view at the file's root. With encoder=False the encoder and quant_conv tensors are marked
    unused on purpose and never read (decode-only, as text-to-image needs); with decoder=False the
    decoder and post_quant_conv ones (encode-only: a run from an image encodes it before the UNet
    loads and decodes after it is gone, so the two halves need not be held together).

    `decode(z)` takes latents already divided by `scaling_factor` (what the pipeline does before
    calling diffusers' `vae.decode`); `encode(x)` returns the moments [mean, logvar] along channels
    (diffusers' `latent_dist.parameters`; `latent_dist.mean` is the first latent_channels).
    """

    def __init__(self, config: dict, w, backend, encoder: bool = True, decoder: bool = True):
        cfg = {k: config.get(k, v) for k, v in DEFAULTS.items()}
        nblocks = len(cfg["block_out_channels"])
        for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = list(cfg[key])
            if types != [kind] * nblocks:
                raise ModelError(f"vae config {key} {types} is not supported "
                                 f"(expected {nblocks} x {kind}, one per block_out_channels entry)")
        if cfg["act_fn"] not in ("silu", "swish"):
            raise ModelError(f"vae config act_fn {cfg['act_fn']!r} is not supported (expected 'silu')")
        bad = [c for c in cfg["block_out_channels"] if c % cfg["norm_num_groups"]]
        if bad:
            raise ModelError(f"vae config block_out_channels {bad} are not multiples of "
                             f"norm_num_groups {cfg['norm_num_groups']}")
        self.config = cfg
        self.scale_factor = 2 ** (nblocks - 1)
        self.scaling_factor = float(cfg["scaling_factor"])
        self.latent_channels = lc = cfg["latent_channels"]
        self.encoder = self.quant_conv = self.decoder = self.post_quant_conv = None
        if encoder:
            self.encoder = Encoder(cfg, w.prefix("encoder"), backend)
            if cfg["use_quant_conv"]:
                self.quant_conv = Conv2d(2 * lc, 2 * lc, 1, w.prefix("quant_conv"), backend)
        else:
            # text-to-image never encodes: leave the encoder's ~34M SD parameters on disk
            _skip(w, "encoder", "quant_conv")
        if decoder:
            self.decoder = Decoder(cfg, w.prefix("decoder"), backend)
            if cfg["use_post_quant_conv"]:
                self.post_quant_conv = Conv2d(lc, lc, 1, w.prefix("post_quant_conv"), backend)
        else:
            _skip(w, "decoder", "post_quant_conv")

    def decode(self, z):
        """z (N, latent_channels, h, w) -> image (N, out_channels, h*f, w*f), roughly in [-1, 1]."""
        if self.decoder is None:
            raise ModelError("this AutoencoderKL was built with decoder=False and cannot decode")
        if self.post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode(self, x):
        """x (N, in_channels, H, W) in [-1, 1], H and W multiples of f -> moments
        (N, 2*latent_channels, H/f, W/f): mean then logvar."""
        if self.encoder is None:
            raise ModelError("this AutoencoderKL was built with encoder=False and cannot encode")
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv else h


def _skip(w, *parts):
    """Mark every tensor under these prefixes as unused on purpose: they stay on disk."""
    for part in (w.prefix(p) for p in parts):
        for name in part.keys():
            part.skip(name)
