"""Cheap latent previews: a fixed linear map from the 4 latent channels to RGB, no VAE run.

The factors are the least-squares fit of SD 1.x/2.x VAE decodes to their latents that ComfyUI and
the web UIs use for live previews; good enough to watch an image form, not to judge it.
"""

from __future__ import annotations

import numpy as np

# (4 latent channels, 3 RGB) for the SD 1.x / 2.x VAE
LATENT_RGB_FACTORS = np.array([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
], dtype=np.float32)


def latents_to_rgb(latents: np.ndarray, upscale: int = 1) -> np.ndarray:
    """latents (C, h, w) -> uint8 (h*upscale, w*upscale, 3). Models with C != 4 get a grey map of
    their mean channel."""
    lat = np.asarray(latents, dtype=np.float32)
    if lat.shape[0] == 4:
        rgb = np.einsum("chw,cr->hwr", lat, LATENT_RGB_FACTORS)
    else:
        rgb = np.repeat(lat.mean(axis=0)[..., None] * 0.5, 3, axis=2)
    img = np.round(np.clip((rgb + 1) / 2, 0, 1) * 255).astype(np.uint8)
    if upscale > 1:
        img = img.repeat(upscale, axis=0).repeat(upscale, axis=1)
    return img
