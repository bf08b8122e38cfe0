"""Input images and masks of the runs that start from an image (img2img, inpainting, outpainting).

    read(source, name, what="image"|"mask") -> Picture   a file (path or bytes) decoded by Pillow, checked
    canvas(image, mask, outpaint) -> (image, mask)        outpainting: the canvas grown by edge pixels,
                                                          the new area masked
    image_array(image, width, height) -> (1, 3, H, W)     float32 in [-1, 1]   } as diffusers'
    mask_array(mask, width, height) -> (1, 1, H, W)       float32 0 or 1      } VaeImageProcessor

The CLI reads files; the page hands the worker a file's own bytes (a dropped or picked file) or a PNG
it made (a result, the painted mask). Both come here, so the page and the CLI decode alike.

What diffusers does, and so sdweb: an image is resized to (width, height) with Lanczos (its
`VaeImageProcessor` default) and scaled to [-1, 1]; a mask is resized the same way in the mode it
has (Pillow itself uses nearest for 1-bit and palette images), then made grayscale and binarised at
0.5: white (>= 0.5) is repainted, black kept. EXIF orientation is applied first, as diffusers'
`load_image` does and as a browser shows the picture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np

from .errors import ConfigError

MAX_INPUT_SIDE = 8192  # pixels; refused before decoding: 4x the largest image sdweb makes
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
MASK_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")


@dataclasses.dataclass(frozen=True)
class Picture:
    """An input file as sdweb read it: its name, the sha256 of its bytes, its size after EXIF
    orientation, and the decoded Pillow image (`pil`)."""

    name: str
    sha256: str
    width: int
    height: int
    pil: object = dataclasses.field(repr=False, compare=False)

    def record(self) -> dict:
        """What the settings (and so a PNG's parameters) keep of it."""
        return {"name": self.name, "sha256": self.sha256, "width": self.width, "height": self.height}


def read(source, name: str | None = None, what: str = "image") -> Picture:
    """A Picture from a path or the file's bytes; `name` (default: the path's file name) is what the
    settings record. A ConfigError (field `what`) names the file and what is wrong: unreadable, not
    an image, damaged, far too large, or a pixel mode sdweb cannot use."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or f"<{what}>"
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise ConfigError(f"{what} {source} cannot be read ({e.strerror or e})", what) from None
        name = name or Path(source).name
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ConfigError(f"{what} {name} is not an image file Pillow can read (use PNG, JPEG or WebP)", what) \
            from None
    w, h = im.size
    if max(w, h) > MAX_INPUT_SIDE:
        raise ConfigError(f"{what} {name} is {w}x{h} pixels, far larger than sdweb can use (at most "
                          f"{MAX_INPUT_SIDE} a side; images are made at up to 2048): scale it down first", what)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ConfigError(f"{what} {name} is damaged and cannot be decoded ({e})", what) from None
    modes = IMAGE_MODES if what == "image" else MASK_MODES
    if im.mode not in modes:
        raise ConfigError(f"{what} {name} has pixel mode {im.mode}, which sdweb cannot use: save it as 8-bit "
                          + ("RGB" if what == "image" else "grayscale (white = repaint, black = keep)"), what)
    im = ImageOps.exif_transpose(im)
    if what == "image":
        im = im.convert("RGB")
    elif im.has_transparency_data and im.convert("RGBA").getchannel("A").getextrema()[0] < 255:
        raise ConfigError(f"mask {name} has transparent pixels, so what it marks is unclear: save it opaque, "
                          "white where the model repaints and black where it keeps the image", what)
    return Picture(name, hashlib.sha256(data).hexdigest(), im.width, im.height, im)


def canvas(image, mask, outpaint) -> tuple:
    """Outpainting: the RGB Pillow `image` grown by outpaint = (left, top, right, bottom) pixels,
    the new area filled by repeating the edge pixels outwards (a plausible start for the VAE, where
    black would pull the colours down), and a mask ("L") that is white there; inside, the given
    `mask` (made grayscale) or black."""
    from PIL import Image

    left, top, right, bottom = outpaint
    pixels = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
    marks = np.full(pixels.shape[:2], 255, np.uint8)
    inner = np.zeros((image.height, image.width), np.uint8) if mask is None else np.asarray(mask.convert("L"))
    marks[top:top + image.height, left:left + image.width] = inner
    return Image.fromarray(pixels), Image.fromarray(marks)


def _resized(im, width: int, height: int):
    from PIL import Image

    return im if im.size == (width, height) else im.resize((width, height), Image.Resampling.LANCZOS)


def image_array(image, width: int, height: int) -> np.ndarray:
    """RGB Pillow image -> (1, 3, height, width) float32 in [-1, 1] (VaeImageProcessor.preprocess)."""
    x = np.asarray(_resized(image, width, height), dtype=np.uint8).astype(np.float32) / np.float32(255)
    return (np.float32(2) * x - np.float32(1)).transpose(2, 0, 1)[None].copy()


def mask_array(mask, width: int, height: int) -> np.ndarray:
    """Pillow mask -> (1, 1, height, width) float32, 1 where the model repaints (the inpainting
    pipeline's mask_processor: resize, grayscale, binarise at 0.5)."""
    m = np.asarray(_resized(mask, width, height).convert("L"), dtype=np.uint8).astype(np.float32) / np.float32(255)
    return (m >= np.float32(0.5)).astype(np.float32)[None, None]
