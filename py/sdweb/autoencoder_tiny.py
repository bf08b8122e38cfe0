"""AutoencoderTiny: madebyollin's TAESD, diffusers' tiny distilled VAE (models/autoencoders/
autoencoder_tiny.py; EncoderTiny and DecoderTiny in vae.py; AutoencoderTinyBlock in
unets/unet_2d_blocks.py) over the backend. About 1.2 M parameters per half, all 3x3 convs and ReLUs.

    decode: z (N, latent_channels, h, w) -> tanh(z / 3) * 3 -> conv + ReLU -> per stage: blocks,
            then (but the last) nearest 2x and a bias-free conv; the last stage ends in conv_out
            -> (N, out_channels, h*f, w*f) in [0, 1] -> * 2 - 1
    encode: x (N, in_channels, H, W) in [-1, 1] -> (x + 1) / 2 -> conv -> blocks -> per further
            stage: a bias-free stride-2 conv, blocks -> conv -> (N, latent_channels, H/f, W/f)
    AutoencoderTinyBlock: x -> ReLU(conv(ReLU(conv(ReLU(conv(x))))) + x)

Every stage has the same channel count: diffusers chains each stage's output into the next one's
convs without a change of channels (so its blocks' 1x1 skip convs, made only when a block changes
channels, never exist), and a config that differs would fail in its forward pass.

Each half is one torch.nn.Sequential in diffusers, so the checkpoint names layers by their position:
`decoder.layers.0` (conv), `.1` (ReLU, no weights), `.2.conv.0` (a block's first conv), `.5` (an
Upsample), ... Here `layers` keeps those positions: entry i is the module at `layers.i`, with None
for the weightless ReLUs, which are fused into the conv before them.

The latents are the UNet's own (TAESD was distilled on SD latents times the SD VAE's
scaling_factor): this model's scaling_factor is 1.0, and diffusers' StableDiffusionPipeline with
`vae=AutoencoderTiny` divides by it (decode) or multiplies by it (img2img's encode) like any VAE's.
`latent_magnitude` and `latent_shift` map latents to bytes in diffusers' `forward` round trip only:
nothing here needs them.
"""

from __future__ import annotations

from .errors import ModelError
from .nn import Conv2d

# diffusers' AutoencoderTiny.__init__ defaults, for keys a config.json leaves out.
DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "encoder_block_out_channels": [64, 64, 64, 64],
    "decoder_block_out_channels": [64, 64, 64, 64],
    "act_fn": "relu",
    "upsample_fn": "nearest",
    "latent_channels": 4,
    "upsampling_scaling_factor": 2,
    "num_encoder_blocks": [1, 3, 3, 3],
    "num_decoder_blocks": [3, 3, 3, 1],
    "scaling_factor": 1.0,
}

CLAMP = 3.0  # DecoderTiny.forward: torch.tanh(x / 3) * 3


def latent_shape(config: dict) -> tuple[int, int]:
    """A tiny autoencoder's config -> (latent channels, scale factor): the latents it works on.
    diffusers registers block_out_channels = decoder_block_out_channels: the pipeline's vae_scale_factor."""
    cfg = {k: config.get(k, v) for k, v in DEFAULTS.items()}
    return int(cfg["latent_channels"]), 2 ** (len(cfg["decoder_block_out_channels"]) - 1)


class AutoencoderTinyBlock:
    """(N, C, H, W) -> same: three 3x3 convs with ReLUs between (conv.1, conv.3), plus x, then ReLU."""

    def __init__(self, channels: int, w, backend):
        self.conv = [Conv2d(channels, channels, 3, w.prefix(f"conv.{i}"), backend, padding=1) if i % 2 == 0 else None
                     for i in range(5)]

    def __call__(self, x):
        h = self.conv[0](x, act="relu")
        h = self.conv[2](h, act="relu")
        return self.conv[4](h, residual=x, act="relu")  # `fuse`: ReLU(conv(h) + x)


class EncoderTiny:
    """x (N, in_channels, H, W) in [-1, 1] -> latents (N, latent_channels, H / f, W / f)."""

    def __init__(self, cfg: dict, w, backend):
        self.backend = backend
        chans, counts = cfg["encoder_block_out_channels"], cfg["num_encoder_blocks"]
        self.layers = []
        for i, (c, n) in enumerate(zip(chans, counts)):
            at = w.prefix(f"layers.{len(self.layers)}")
            if i == 0:
                self.layers.append(Conv2d(cfg["in_channels"], c, 3, at, backend, padding=1))
            else:
                self.layers.append(Conv2d(c, c, 3, at, backend, stride=2, padding=1, bias=False))
            for _ in range(n):
                self.layers.append(AutoencoderTinyBlock(c, w.prefix(f"layers.{len(self.layers)}"), backend))
        self.layers.append(Conv2d(chans[-1], cfg["latent_channels"], 3, w.prefix(f"layers.{len(self.layers)}"),
                                  backend, padding=1))

    def __call__(self, x):
        x = self.backend.mul(x, 0.5, 0.5)  # [-1, 1] -> [0, 1], TAESD's own image range
        for layer in self.layers:
            x = layer(x)
        return x


class Upsample:
    """torch.nn.Upsample(scale_factor=2, mode="nearest") (no weights) and the 3x3 conv after it,
    `conv` (the next layer), as one op (backend.upsample_conv2d), so a backend can convolve the small
    image: DecoderTiny skips that conv's own slot."""

    def __init__(self, conv, backend):
        self.conv, self.backend = conv, backend

    def __call__(self, x):
        return self.backend.upsample_conv2d(x, self.conv.weight, self.conv.bias)


class DecoderTiny:
    """latents (N, latent_channels, h, w) -> image (N, out_channels, h * f, w * f), about [-1, 1]."""

    def __init__(self, cfg: dict, w, backend):
        self.backend = backend
        chans, counts = cfg["decoder_block_out_channels"], cfg["num_decoder_blocks"]
        # layers.0 conv, layers.1 its ReLU
        self.layers = [Conv2d(cfg["latent_channels"], chans[0], 3, w.prefix("layers.0"), backend, padding=1), None]
        last = len(chans) - 1
        for i, (c, n) in enumerate(zip(chans, counts)):
            for _ in range(n):
                self.layers.append(AutoencoderTinyBlock(c, w.prefix(f"layers.{len(self.layers)}"), backend))
            at = len(self.layers) + (i < last)  # the conv's slot: after the Upsample's
            conv = Conv2d(c, cfg["out_channels"] if i == last else c, 3, w.prefix(f"layers.{at}"), backend,
                          padding=1, bias=i == last)
            if i < last:
                self.layers.append(Upsample(conv, backend))
            self.layers.append(conv)

    def __call__(self, z):
        x = self.backend.tanh_clamp(z, CLAMP)
        x = self.layers[0](x, act="relu")  # layers.1 is its ReLU
        upsampled = False
        for layer in self.layers[2:]:
            if not upsampled:  # the conv after an Upsample ran inside it
                x = layer(x)
            upsampled = isinstance(layer, Upsample)
        return self.backend.mul(x, 2.0, -1.0)  # [0, 1] -> [-1, 1], diffusers' image range


class AutoencoderTiny:
    """`AutoencoderTiny(config, w, backend, encoder=True, decoder=True)`: config is the model's
    config.json, w the view at the weight file's root (tensors `encoder.layers.*`, `decoder.layers.*`).
    A half left out is marked unused on purpose and never read (previews and draft decodes need only
    the decoder).

    `decode(z)` takes latents already divided by `scaling_factor` (1.0 for TAESD), as the pipeline
    hands any VAE; `encode(x)` returns the latents themselves (diffusers' `AutoencoderTinyOutput.latents`:
    a tiny autoencoder has no distribution to sample).
    """

    def __init__(self, config: dict, w, backend, encoder: bool = True, decoder: bool = True):
        cfg = {k: config.get(k, v) for k, v in DEFAULTS.items()}
        for key in ("encoder", "decoder"):
            chans, counts = cfg[f"{key}_block_out_channels"], cfg[f"num_{key}_blocks"]
            if len(chans) != len(counts) or not chans:
                raise ModelError(f"tiny autoencoder config: {key}_block_out_channels {list(chans)} and "
                                 f"num_{key}_blocks {list(counts)} should be lists of the same (non-zero) length")
            if len(set(chans)) != 1:
                raise ModelError(f"tiny autoencoder config: {key}_block_out_channels {list(chans)} should all be "
                                 "equal (AutoencoderTiny passes each stage's channels to the next unchanged)")
        for key, want in (("act_fn", "relu"), ("upsample_fn", "nearest"), ("upsampling_scaling_factor", 2)):
            if cfg[key] != want:
                raise ModelError(f"tiny autoencoder config {key} {cfg[key]!r} is not supported (expected {want!r})")
        self.config = cfg
        self.latent_channels, self.scale_factor = latent_shape(cfg)
        self.scaling_factor = float(cfg["scaling_factor"])
        self.encoder = EncoderTiny(cfg, w.prefix("encoder"), backend) if encoder else _skip(w.prefix("encoder"))
        self.decoder = DecoderTiny(cfg, w.prefix("decoder"), backend) if decoder else _skip(w.prefix("decoder"))

    def decode(self, z):
        """z (N, latent_channels, h, w) -> image (N, out_channels, h*f, w*f), roughly in [-1, 1]."""
        if self.decoder is None:
            raise ModelError("this AutoencoderTiny was built with decoder=False and cannot decode")
        return self.decoder(z)

    def encode(self, x):
        """x (N, in_channels, H, W) in [-1, 1], H and W multiples of f -> latents (N, latent_channels, H/f, W/f)."""
        if self.encoder is None:
            raise ModelError("this AutoencoderTiny was built with encoder=False and cannot encode")
        return self.encoder(x)


def _skip(view):
    """Mark every tensor under `view` as deliberately unused; -> None (the half not built)."""
    for name in view.keys():
        view.skip(name)
    return None
