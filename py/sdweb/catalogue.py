"""The known-good models: models.json, shipped inside the package (and so inside the page's wheel).

    {"kinds": {"sd": {"steps": 50, "guidance": 7.5}, "turbo": {...}, "lcm": {...}},
     "models": [{"repo", "label", "kind", "default"?, "inpainting"?, "sizes": {"fp16"|"fp32": {component: bytes}
                 | null}, "licence", "access", "note"}, ...],
     "tiny_autoencoders": [{"repo", "label", "default"?, "sizes", "licence", "access", "note"}, ...],
     "presets": [{"label", "model", "settings": {settings.FIELDS name: value}, "loras": [{"name", "repo",
                  "file", "scale"}], "note"}, ...]}

One file that `sdweb download --list`, the settings' defaults (settings.model_kind), the page's
model picker (sent by the worker when Python is ready) and the tiny autoencoder "taesd" names
(previews, the draft decoder) all read. A preset is a model with settings
and LoRAs from the Hub (repo + file, stored under `name`, the NAME of `<lora:NAME>`): the page's
preset picker fills the form with it and fetches its LoRAs into the LoRA panel.
"""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.cache
def load() -> dict:
    return json.loads(resources.files("sdweb").joinpath("models.json").read_text(encoding="utf-8"))


def models() -> list[dict]:
    return load()["models"]


def kinds() -> dict:
    return load()["kinds"]


def tiny_autoencoders() -> list[dict]:
    return load()["tiny_autoencoders"]


def tiny_autoencoder() -> dict:
    """The tiny autoencoder "taesd" names: the default entry (madebyollin/taesd)."""
    return next(m for m in tiny_autoencoders() if m.get("default"))


def presets() -> list[dict]:
    return load()["presets"]


def find(name: str) -> dict | None:
    """The entry of a model named by its repo id, or by a folder whose path ends in that repo id
    (./weights/<owner>/<name>, where `sdweb download` puts it); None for any other."""
    name = str(name).replace("\\", "/").rstrip("/")
    for m in models():
        if name == m["repo"] or name.endswith("/" + m["repo"]):
            return m
    return None


def weight_bytes(model: dict, variant: str) -> int | None:
    """Bytes of a model's weight files for "fp16" or "fp32" (the plain files); None if not known."""
    sizes = model["sizes"].get(variant)
    return None if sizes is None else sum(sizes.values())
