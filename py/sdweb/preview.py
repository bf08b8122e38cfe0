"""Previews of an image while it forms, drawn from the step's predicted clean latents x0
(Scheduler.pred_original_sample), in one of two ways (settings' `preview`):

    approx   a fixed linear map from the 4 latent channels to RGB, no network run, at the latents' size
             (1/8 of the image's). The factors are the least-squares fit of SD 1.x/2.x VAE decodes to
             their latents that ComfyUI and the web UIs use for live previews: enough to watch an
             image form, not to judge it.
    taesd    the tiny autoencoder's decode (autoencoder_tiny.AutoencoderTiny, madebyollin/taesd), at the
             image's size: the picture itself, at under a tenth of a UNet step's cost.

`decode_tiny` (the pipeline reads its tensor back and converts it to uint8 (N, H, W, 3)) is also the
draft decoder (settings' `decoder`): the same decode of the final latents; `approx` gives uint8
(N, h, w, 3).
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


def decode_tiny(tiny, latents: np.ndarray, backend):
    """The UNet's latents (N, C, h, w) -> images (N, 3, H, W) in about [-1, 1], a backend tensor (the
    caller reads it back), through the tiny autoencoder `tiny` (an AutoencoderTiny). Divided by its
    scaling_factor first, as diffusers' pipelines do for any VAE: TAESD's is 1.0, since it was
    distilled on the SD VAE's scaled latents."""
    z = np.asarray(latents, dtype=np.float32) / np.float32(tiny.scaling_factor)
    return tiny.decode(backend.tensor(z))


def approx(x0: np.ndarray) -> np.ndarray:
    """The linear map's previews of x0 (N, 4, h, w): uint8 (N, h, w, 3)."""
    return np.stack([latents_to_rgb(x) for x in x0])
