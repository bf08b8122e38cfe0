"""AutoencoderKL: diffusers' SD VAE (models/autoencoders/autoencoder_kl.py, vae.py) over the backend.

    decode: z (N, latent_channels, h, w) -> post_quant_conv -> decoder.conv_in -> mid_block
            -> up_blocks (layers_per_block + 1 resnets, then nearest 2x + conv except the last)
            -> conv_norm_out + SiLU -> conv_out -> (N, out_channels, h*f, w*f)
    encode: x (N, in_channels, H, W) -> encoder.conv_in -> down_blocks (layers_per_block resnets,
            then a stride-2 conv except the last) -> mid_block -> conv_norm_out + SiLU -> conv_out
            -> quant_conv -> moments (N, 2*latent_channels, H/f, W/f) = [mean, logvar]

f = vae.scale_factor = 2 ** (len(block_out_channels) - 1). Every group norm in the VAE has eps 1e-6
(diffusers hard-codes it). Attribute paths are the checkpoint's key paths.

Tiling (`tiling="auto" | "on" | "off"` of decode and encode) is diffusers' `vae.enable_tiling()`:
the latents (or the image) are cut into overlapping square tiles, each decoded (encoded) alone, and
the seams blended linearly over a quarter of a tile (`tiled_decode`, `tiled_encode`, `blend_v`,
`blend_h`, with diffusers' tile_sample_min_size = the config's sample_size, tile_latent_min_size
= that / f, tile_overlap_factor 0.25). It bounds the largest activation by the tile's size, so a
GPU whose buffer-binding limit a whole image would exceed still decodes it: "auto" decodes in one
pass when every activation fits the backend (`backend.fits`), else image by image (diffusers'
enable_slicing, the same numbers), else in tiles; "on" tiles whatever diffusers' enable_tiling()
would tile; both halve the tile until its activations fit. "off" is one pass, always.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, ModelError
from .nn import Conv2d, GroupNorm, Linear
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .stages import run

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
    "sample_size": 32,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

EPS = 1e-6
TILINGS = ("auto", "on", "off")


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
        self.channels = chans

    def activation_shapes(self, n: int, H: int, W: int) -> list[tuple]:
        """The largest activation of each level when encoding n images of H x W: a level's widest
        channel count at its size, one row and column more where a Downsample2D pads before its
        stride-2 conv."""
        shapes = []
        for i, c in enumerate(self.channels):
            s = 2**i
            pad = int(i < len(self.channels) - 1)
            shapes.append((n, max(self.channels[max(i - 1, 0)], c), -(-H // s) + pad, -(-W // s) + pad))
        return shapes

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
        self.channels = rev

    def activation_shapes(self, n: int, h: int, w: int) -> list[tuple]:
        """The largest activation of each level when decoding n latents of h x w: a level's widest
        channel count (its input comes upsampled from the level before, with that level's channels)
        at its size."""
        return [(n, max(self.channels[max(i - 1, 0)], c), h * 2**i, w * 2**i) for i, c in enumerate(self.channels)]

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
        self.backend = backend
        # diffusers' tile sizes (set them smaller, as on diffusers' model, for smaller tiles)
        sample = cfg["sample_size"]
        self.tile_sample_min_size = int(sample[0] if isinstance(sample, (list, tuple)) else sample)
        self.tile_latent_min_size = int(self.tile_sample_min_size / self.scale_factor)
        self.tile_overlap_factor = 0.25

    def decode(self, z, tiling: str = "auto"):
        """z (N, latent_channels, h, w) -> image (N, out_channels, h*f, w*f), roughly in [-1, 1]; in
        tiles as `tiling` says (the module docstring): `decode_stages` run to the end."""
        return run(self.decode_stages(z, tiling))

    def decode_stages(self, z, tiling: str = "auto"):
        """`decode` as a generator (stages.py): where the work is split, it yields each backend tensor
        it is about to read back (the latents, each slice's or tile's output)."""
        if self.decoder is None:
            raise ModelError("this AutoencoderKL was built with decoder=False and cannot decode")
        n, _, h, w = self.backend.shape(z)
        per_pass, tile = self._plan(tiling, self.decoder.activation_shapes, n, h, w, decoding=True)
        tile = tile and tile[::-1]  # latent tiles in, sample tiles out
        return (yield from self._run(z, per_pass, tile, self._decode))

    def encode(self, x, tiling: str = "auto"):
        """x (N, in_channels, H, W) in [-1, 1], H and W multiples of f -> moments
        (N, 2*latent_channels, H/f, W/f): mean then logvar; in tiles as `tiling` says:
        `encode_stages` run to the end."""
        return run(self.encode_stages(x, tiling))

    def encode_stages(self, x, tiling: str = "auto"):
        """`encode` as a generator, as `decode_stages`."""
        if self.encoder is None:
            raise ModelError("this AutoencoderKL was built with encoder=False and cannot encode")
        n, _, H, W = self.backend.shape(x)
        per_pass, tile = self._plan(tiling, self.encoder.activation_shapes, n, H, W, decoding=False)
        return (yield from self._run(x, per_pass, tile, self._encode))

    def _decode(self, z):
        if self.post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _encode(self, x):
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv else h

    # -- tiling: diffusers' AutoencoderKL.enable_tiling() and enable_slicing() --

    def _plan(self, tiling: str, shapes, n: int, h: int, w: int, decoding: bool):
        """How to run a pass over n inputs of h x w (latents when decoding, pixels when encoding):
        -> (inputs per pass: n or 1, None or the tile sizes (tile_sample_min_size,
        tile_latent_min_size)). `shapes(n, h, w)` lists the pass's largest activations."""
        if tiling not in TILINGS:
            raise ConfigError(f"vae tiling {tiling!r} is not one of {', '.join(TILINGS)}", "vae_tiling")
        if tiling == "off":
            return n, None

        def fits(k, a, b):
            return all(self.backend.fits(s) for s in shapes(k, a, b))

        ts, tl = self.tile_sample_min_size, self.tile_latent_min_size
        if tiling == "auto" or max(h, w) <= (tl if decoding else ts):  # diffusers keeps a one-tile image whole
            if fits(n, h, w):
                return n, None
            if fits(1, h, w):
                return 1, None
        # smaller tiles until one fits (at 2 latents a side the backend's own limit error is the answer)
        while tl > 2 and not fits(1, min(tl if decoding else ts, h), min(tl if decoding else ts, w)):
            ts, tl = ts // 2, tl // 2
        return 1, (ts, tl)

    def _run(self, x, per_pass: int, tile, whole):
        """x through `whole` (a backend pass) in passes of per_pass inputs, or one input at a time in
        tiles when `tile` (tile_in, tile_out) is given. A generator (stages.py)."""
        backend = self.backend
        n = backend.shape(x)[0]
        if tile is None and per_pass == n:
            return whole(x)
        yield x
        xs = backend.numpy(x)
        if tile is None:
            return backend.concat([whole(backend.tensor(xs[k:k + 1])) for k in range(n)], axis=0)
        out = []
        for k in range(n):
            out.append((yield from self._tiled(xs[k:k + 1], *tile, whole)))
        return backend.tensor(np.concatenate(out))

    def tiled_decode(self, z: np.ndarray, tile_sample_min_size: int, tile_latent_min_size: int) -> np.ndarray:
        """diffusers' tiled_decode: latent tiles of tile_latent_min_size a side every (1 - overlap)
        of a tile, decoded alone, blended over a quarter of a decoded tile and cropped. Host arrays."""
        return run(self._tiled(z, tile_latent_min_size, tile_sample_min_size, self._decode))

    def tiled_encode(self, x: np.ndarray, tile_sample_min_size: int, tile_latent_min_size: int) -> np.ndarray:
        """diffusers' _tiled_encode: image tiles of tile_sample_min_size a side, encoded alone,
        blended over a quarter of a latent tile and cropped. Host arrays."""
        return run(self._tiled(x, tile_sample_min_size, tile_latent_min_size, self._encode))

    def _tiled(self, x: np.ndarray, tile_in: int, tile_out: int, whole):
        """Tiles of tile_in a side of x (a host array), each through `whole` (a backend pass) to tile_out
        a side, blended: -> a host array. A generator (stages.py): yields each tile's output before
        reading it back."""
        overlap_size = int(tile_in * (1 - self.tile_overlap_factor))
        blend_extent = int(tile_out * self.tile_overlap_factor)
        backend = self.backend
        rows = []
        for i in range(0, x.shape[2], overlap_size):
            row = []
            for j in range(0, x.shape[3], overlap_size):
                t = whole(backend.tensor(x[:, :, i:i + tile_in, j:j + tile_in]))
                yield t
                row.append(backend.numpy(t))
                del t
            rows.append(row)
        return self._blend_tiles(rows, blend_extent, tile_out - blend_extent)

    @classmethod
    def _blend_tiles(cls, rows: list[list[np.ndarray]], blend_extent: int, row_limit: int) -> np.ndarray:
        """Each tile blended in place with the one above and the one to its left (as those were
        blended themselves: diffusers' order), cropped to row_limit, and the rows joined."""
        out = []
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                if i > 0:
                    cls.blend_v(rows[i - 1][j], tile, blend_extent)
                if j > 0:
                    cls.blend_h(row[j - 1], tile, blend_extent)
            out.append(np.concatenate([tile[:, :, :row_limit, :row_limit] for tile in row], axis=3))
        return np.concatenate(out, axis=2)

    @staticmethod
    def blend_v(a: np.ndarray, b: np.ndarray, blend_extent: int) -> np.ndarray:
        """b's first rows fade in from a's last ones, linearly over blend_extent rows (in place)."""
        e = min(a.shape[2], b.shape[2], blend_extent)
        if e:
            t = np.arange(e) / e
            b[:, :, :e] = a[:, :, -e:] * (1 - t).astype(np.float32)[:, None] + \
                b[:, :, :e] * t.astype(np.float32)[:, None]
        return b

    @staticmethod
    def blend_h(a: np.ndarray, b: np.ndarray, blend_extent: int) -> np.ndarray:
        """b's first columns fade in from a's last ones, linearly over blend_extent columns (in place)."""
        e = min(a.shape[3], b.shape[3], blend_extent)
        if e:
            t = np.arange(e) / e
            b[..., :e] = a[..., -e:] * (1 - t).astype(np.float32) + b[..., :e] * t.astype(np.float32)
        return b

def _skip(w, *parts):
    """Mark every tensor under these prefixes as unused on purpose: they stay on disk."""
    for part in (w.prefix(p) for p in parts):
        for name in part.keys():
            part.skip(name)
