"""The files add-ons come in (LoRAs, textual-inversion embeddings): .safetensors or a torch.save pickle,
told apart by their first bytes, never by their extension.

`read_addon(source, filename=None)` -> AddonFile(name, format, tensors or object, metadata)
    source    a path, bytes, or a byte source (`size`, `read(offset, length)`, as the browser's store
              hands out); `filename` names it in messages and gives its stem (default: the path, or
              the byte source's `name`)
    .safetensors  -> format "safetensors", `.data` {tensor name: array}, `.metadata` the header's
                     `__metadata__`
    .pt / .bin    -> format "torch", `.data` whatever the pickle holds (safe_pickle.load: plain
                     containers, tensors as arrays), `.metadata` {}
Float tensors come back as float32 (F16/BF16/F64 widened or narrowed exactly as numpy casts);
integer tensors as stored.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from . import safe_pickle
from .errors import SdwebError
from .safetensors import SafetensorsFile
from .weights import bf16_to_f32

__all__ = ["AddonFile", "read_addon", "to_float32"]


@dataclasses.dataclass
class AddonFile:
    name: str  # for messages: the path or file name as the caller gave it
    stem: str  # the base name without its extension (A1111's embedding trigger word, LoRA name)
    format: str  # "safetensors" or "torch"
    data: object
    metadata: dict


class _BytesSource:
    """bytes as a byte source for SafetensorsFile."""

    def __init__(self, data, name):
        self._data, self.size, self.name = memoryview(data), len(data), name

    def read(self, offset, length):
        return self._data[offset:offset + length]


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """A safetensors tensor as read (dtype: its safetensors dtype name) -> float32 when it is a float."""
    if dtype == "BF16":
        return bf16_to_f32(a)
    if dtype in ("F16", "F32", "F64"):
        return a.astype(np.float32)
    return a


def _head(source, n: int) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                return f.read(n)
        except OSError:
            return b""  # the reader that opens it next reports the OSError in full
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:n])
    return bytes(source.read(0, min(n, int(source.size))))


def read_addon(source, filename: str | None = None, error=SdwebError) -> AddonFile:
    """See the module docstring. A file that is neither format raises `error` naming it."""
    if filename is None:
        filename = (os.fspath(source) if isinstance(source, (str, os.PathLike))
                    else str(getattr(source, "name", "<bytes>")))
    stem = os.path.splitext(os.path.basename(filename))[0]
    head = _head(source, 9)
    if head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        src = _BytesSource(source, filename) if isinstance(source, (bytes, bytearray, memoryview)) else source
        f = SafetensorsFile(src, name=filename)
        try:
            tensors = {k: to_float32(f.read(k), f.info(k)[0]) for k in f.keys()}
            return AddonFile(filename, stem, "safetensors", tensors, dict(f.metadata))
        finally:
            f.close()
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or a legacy pickle
        return AddonFile(filename, stem, "torch", safe_pickle.load(source, filename), {})
    raise error(f"{filename}: neither a .safetensors file nor a torch.save (.pt/.bin) file "
                f"(it starts with {head[:8]!r})")
