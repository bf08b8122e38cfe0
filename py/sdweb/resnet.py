"""The blocks the UNet and the VAE share: diffusers' ResnetBlock2D, Downsample2D and Upsample2D
(models/resnet.py, downsampling.py, upsampling.py), written once as candle does. Attribute paths are
the checkpoint's key paths below each block's prefix (`resnets.0.norm1.weight`, `upsamplers.0.conv.bias`).

    ResnetBlock2D(cin, cout, groups, eps, w, backend, temb_channels=None, output_scale_factor=1.0)
        x (N, cin, H, W) [, temb (N, temb_channels)] -> (N, cout, H, W)
    Downsample2D(channels, padding, w, backend)   x (N, C, H, W) -> (N, C, H/2, W/2)
    Upsample2D(channels, w, backend)              x (N, C, H, W) -> (N, C, 2H, 2W)
"""

from __future__ import annotations

from .nn import Conv2d, GroupNorm, Linear


class ResnetBlock2D:
    """norm1 + SiLU -> conv1 [-> + time_emb_proj(temb)] -> norm2 + SiLU -> conv2, plus the input (through
    a 1x1 conv_shortcut when the channel count changes), divided by output_scale_factor.

    The UNet's resnets take a time embedding (temb_channels); the VAE's do not (temb_channels=None,
    no time_emb_proj). The projected time embedding goes into conv1 and the skip into conv2: the
    backend adds both in the convs' epilogues, so neither sum costs a pass of its own. Dropout is 0
    at inference."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float, w, backend, temb_channels: int | None = None,
                 output_scale_factor: float = 1.0):
        self.backend, self.output_scale_factor = backend, output_scale_factor
        self.norm1 = GroupNorm(groups, cin, w.prefix("norm1"), backend, eps)
        self.conv1 = Conv2d(cin, cout, 3, w.prefix("conv1"), backend, padding=1)
        self.time_emb_proj = (Linear(temb_channels, cout, w.prefix("time_emb_proj"), backend)
                              if temb_channels is not None else None)
        self.norm2 = GroupNorm(groups, cout, w.prefix("norm2"), backend, eps)
        self.conv2 = Conv2d(cout, cout, 3, w.prefix("conv2"), backend, padding=1)
        self.conv_shortcut = Conv2d(cin, cout, 1, w.prefix("conv_shortcut"), backend) if cin != cout else None

    def __call__(self, x, temb=None):
        """temb: SiLU(the time embedding) (N, temb_channels); the UNet applies that SiLU once for
        every resnet, where diffusers applies it in each."""
        t = self.time_emb_proj(temb) if self.time_emb_proj is not None else None  # (N, cout)
        h = self.conv1(self.norm1(x, act="silu"), temb=t)
        skip = self.conv_shortcut(x) if self.conv_shortcut else x
        y = self.conv2(self.norm2(h, act="silu"), residual=skip)
        if self.output_scale_factor != 1:
            y = self.backend.mul(y, 1.0 / self.output_scale_factor)
        return y


class Downsample2D:
    """A 3x3 conv with stride 2. With padding 0 (the VAE's) the input is first zero-padded on the
    right and bottom only, as diffusers does; otherwise the conv pads `padding` on every side (the
    UNet's downsample_padding, 1 in SD): (N, C, H, W) -> (N, C, H/2, W/2) for even H, W."""

    def __init__(self, channels: int, padding: int, w, backend):
        self.backend, self.padding = backend, padding
        self.conv = Conv2d(channels, channels, 3, w.prefix("conv"), backend, stride=2, padding=padding)

    def __call__(self, x):
        if self.padding == 0:
            x = self.backend.pad2d(x, 0, 1, 0, 1)
        return self.conv(x)


class Upsample2D:
    """Nearest 2x then a 3x3 conv: (N, C, H, W) -> (N, C, 2H, 2W), one op (backend.upsample_conv2d),
    so a backend can run the conv on the small image."""

    def __init__(self, channels: int, w, backend):
        self.backend = backend
        self.conv = Conv2d(channels, channels, 3, w.prefix("conv"), backend, padding=1)

    def __call__(self, x):
        return self.backend.upsample_conv2d(x, self.conv.weight, self.conv.bias)
