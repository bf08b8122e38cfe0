"""Runs that start from an image, as diffusers 0.42.1's StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline run them; Pipeline.generate calls these at its stage boundaries.

    img2img      z0 = vae.encode(image).mean * scaling_factor; the schedule's tail at `strength`
                 (Scheduler.start_at); x = add_noise(z0, noise, first timestep)
    inpainting   mask: 1 where the model repaints; masked image = image * (mask < 0.5); the latent
                 mask is the mask at every f-th pixel (nearest downsampling, torch's interpolate)
      9-channel  the UNet gets [x, mask, vae.encode(masked image)] each step; at strength 1 the start
                 is noise * init_noise_sigma (z0 is not needed then)
      4-channel  after each step the known region is put back: x = (1 - m) * add_noise(z0, noise,
                 next timestep) + m * x (z0 itself after the last step)

`noise` is the run's first draw per image (the noise contract: `default_rng(seed + k)`'s first
standard_normal of the latents' shape), used wherever diffusers uses its first noise tensor.
Encodings take the posterior mean (diffusers' sample_mode="argmax"), so a run is repeatable.
"""

from __future__ import annotations

import numpy as np

from . import picture
from .vae import AutoencoderKL


class Edit:
    """The image side of a run: `Edit(settings, image, mask, masked_unet)` with the Pictures the
    settings' records came from; `masked_unet` for a 9-channel inpainting UNet (ModelInfo.inpainting)."""

    def __init__(self, settings, image, mask, masked_unet: bool):
        width, height = settings.width, settings.height
        pil, mask_pil = image.pil, None if mask is None else mask.pil
        if settings.outpaint is not None:
            pil, mask_pil = picture.canvas(pil, mask_pil, settings.outpaint)
        self.pixels = picture.image_array(pil, width, height)  # (1, 3, H, W) in [-1, 1]
        self.mask = None if mask_pil is None else picture.mask_array(mask_pil, width, height)  # (1, 1, H, W)
        self.strength = settings.strength
        self.vae_tiling = settings.vae_tiling
        self.masked_unet = masked_unet
        self.image_latents = self.masked_image_latents = self.latent_mask = None

    @property
    def inpaint(self) -> bool:
        return self.mask is not None

    def encode(self, vae, backend):
        """The latents the run needs, through the VAE's encoder (`vae`, built encoder-only); a
        generator that yields each encoding just before it is read back (Pipeline.stages' protocol)."""
        if not (self.masked_unet and self.strength == 1):  # a 9-channel start at strength 1 is pure noise
            self.image_latents = yield from _encode(vae, backend, self.pixels, self.vae_tiling)
        if self.inpaint:
            f = vae.scale_factor
            self.latent_mask = self.mask[:, :, ::f, ::f]
            if self.masked_unet:
                masked = self.pixels * (self.mask < np.float32(0.5))
                self.masked_image_latents = yield from _encode(vae, backend, masked, self.vae_tiling)

    def start(self, sched, steps: int, noise: np.ndarray):
        """(timesteps to run, start latents (N, C, h, w)) from the first draws `noise`."""
        timesteps = sched.start_at(steps, self.strength)
        if self.inpaint and self.strength == 1:
            return timesteps, noise * np.float32(sched.init_noise_sigma)
        return timesteps, sched.add_noise(self.image_latents, noise, timesteps[0])

    def unet_input(self, x: np.ndarray) -> np.ndarray:
        """The UNet's input from the scaled latents x (B, C, h, w): with the mask and the masked
        image's latents beside them for a 9-channel UNet, as is for any other."""
        if not self.masked_unet:
            return x
        n = x.shape[0]
        return np.concatenate([x, np.repeat(self.latent_mask, n, axis=0),
                               np.repeat(self.masked_image_latents, n, axis=0)], axis=1)

    def after_step(self, x: np.ndarray, i: int, timesteps, sched, noise: np.ndarray) -> np.ndarray:
        """4-channel inpainting: the known region back from the image latents, noised to the next
        timestep (the clean latents after the last step); anything else: x unchanged."""
        if not self.inpaint or self.masked_unet:
            return x
        known = self.image_latents
        if i < len(timesteps) - 1:
            known = sched.add_noise(known, noise, timesteps[i + 1])
        m = self.latent_mask
        return ((np.float32(1) - m) * known + m * x).astype(np.float32)


def _encode(vae, backend, pixels: np.ndarray, tiling: str):
    """(1, 3, H, W) in [-1, 1] -> the posterior mean x scaling_factor, (1, latent_channels, H/f, W/f),
    in tiles as `tiling` says (vae.py), yielding the moments (and any tile) before their readback. A
    tiny autoencoder (a draft's) encodes in one pass: it has no tiling, and its latents stand for the
    moments (they have latent_channels channels)."""
    x = backend.tensor(pixels)
    moments = (yield from vae.encode_stages(x, tiling)) if isinstance(vae, AutoencoderKL) else vae.encode(x)
    yield moments
    mean = backend.numpy(moments)[:, : vae.latent_channels]
    return mean * np.float32(vae.scaling_factor)
