"""A run's add-ons: the textual-inversion embeddings and LoRAs its settings and prompt name, found in
a library, read, and checked against the model before its weights are loaded.

    addons = prepare(library, tokenizer, hidden_size, prompt, negative_prompt,
                     loras=[(name, scale)], embeddings=[name])
    addons.prompt, addons.negative      prompt_syntax.ChunkedPrompt of each (embedding slots reserved)
    addons.empty                        the empty prompt's Chunk (a short side's padding)
    addons.vectors                      {trigger: (n, D) float32}: what fills those slots
    addons.key(component)               what the component's LoRAs are (a loaded component whose key
                                        differs is built again)
    addons.patches(component, shapes)   [lora.LoraPatch] for "unet" / "text_encoder", read and planned
                                        on first use against {component: {tensor name: shape}}

Before a run, `needed(prompt, loras, embeddings)` names the files it will ask for (a host that must
fetch them, the page, hands over just those), and `embedding_chunker` gives the chunker alone (the
page's live token count, `sdweb tokenize`).

A LoRA comes from the settings (`--lora PATH[:SCALE]`, the page's LoRA panel: one scale for the UNet
and the text encoder) or from a `<lora:NAME:TE[:UNET]>` tag in the prompt (taken out of the text);
several add up in that order. A tag in the negative prompt is refused: A1111 reads tags from the
prompt only and would leave it there as words.

The library says where a name's file is; each host has its own:

    library.find(kind, name) -> Found(source, filename, version)     kind: "lora" | "embedding"
        source    a path, bytes or byte source (addon_files.read_addon takes each)
        filename  the name in messages (its stem is A1111's embedding trigger word)
        version   anything that changes when the file does (a kept component is rebuilt then)

    FolderLibrary(lora_dir)   the CLI: a name that is a file is that file; a LoRA name is otherwise
                              NAME.safetensors / .pt / .bin in lora_dir (--lora-dir, default ./loras)
    browser.StoredLibrary     the page: the files its panels stored in IndexedDB, by name
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import ConfigError
from .lora import lora_plan, read_lora
from .prompt_syntax import ChunkedPrompt, PromptChunker, extract_lora_tags
from .textual_inversion import read_embedding

__all__ = ["Found", "FolderLibrary", "AddOns", "prepare", "embedding_chunker", "needed", "parsed",
           "ADDON_SUFFIXES", "DEFAULT_LORA_DIR", "DEFAULT_EMBEDDING_DIR"]

ADDON_SUFFIXES = (".safetensors", ".pt", ".bin")  # what a LoRA or embedding file is called
DEFAULT_LORA_DIR = "loras"
DEFAULT_EMBEDDING_DIR = "embeddings"
KINDS = ("lora", "embedding")


@dataclasses.dataclass(frozen=True)
class Found:
    source: object
    filename: str
    version: object = None


class FolderLibrary:
    """The CLI's add-ons on disk. `find("lora", name)`: `name` itself when it is a file, else
    lora_dir/NAME + one of ADDON_SUFFIXES (A1111 finds `<lora:NAME>` by the file's stem);
    `find("embedding", name)`: the file `name`."""

    def __init__(self, lora_dir=DEFAULT_LORA_DIR):
        self.lora_dir = Path(lora_dir)

    def find(self, kind: str, name: str) -> Found:
        path = Path(name).expanduser()
        if not path.is_file() and kind == "lora" and os.sep not in name and "/" not in name:
            path = next((p for p in (self.lora_dir / f"{name}{s}" for s in ADDON_SUFFIXES) if p.is_file()), path)
        if not path.is_file():
            if kind == "lora":
                raise ConfigError(f"LoRA {name!r} not found: neither a file nor {name}"
                                  f"{'/'.join(ADDON_SUFFIXES)} in {self.lora_dir} (--lora-dir)", "loras")
            raise ConfigError(f"embedding {name!r} not found: no such file", "embeddings")
        st = path.stat()
        return Found(path, str(path), (str(path.resolve()), st.st_size, st.st_mtime_ns))


@dataclasses.dataclass(frozen=True)
class _Lora:
    name: str
    text_encoder_scale: float
    unet_scale: float
    found: Found


class AddOns:
    """What prepare() found for one run (see the module docstring)."""

    def __init__(self, prompt: ChunkedPrompt, negative: ChunkedPrompt, empty, vectors: dict, loras: list[_Lora]):
        self.prompt, self.negative, self.empty, self.vectors, self.loras = prompt, negative, empty, vectors, loras
        self._patches = None

    def key(self, component: str) -> tuple:
        scale = "unet_scale" if component == "unet" else "text_encoder_scale"
        return tuple((lo.name, lo.found.version, getattr(lo, scale)) for lo in self.loras)

    def patches(self, component: str, shapes) -> list:
        """The LoRA patches of `component`; `shapes()` -> {"unet": {name: shape}, "text_encoder": {...}},
        the model's tensors as its weight files name them (asked once, when there is a LoRA)."""
        if self._patches is None:
            self._patches = {"unet": [], "text_encoder": []}
            tensors = shapes() if self.loras else {}
            for lo in self.loras:
                lora = read_lora(lo.found.source, lo.found.filename)
                for p in lora_plan(lora, tensors, unet_scale=lo.unet_scale, text_encoder_scale=lo.text_encoder_scale):
                    self._patches[p.component].append(p)
        return self._patches.get(component, [])


def parsed(field: str, parse, text):
    """parse(text), a ConfigError it raises naming `field` (the page then points at that box)."""
    try:
        return parse(text)
    except ConfigError as e:
        if e.field is None:
            raise ConfigError(str(e), field) from None
        raise


def needed(prompt: str, loras=(), embeddings=()) -> dict:
    """{"lora": [name], "embedding": [name]}: what a run of these settings asks its library for (the
    settings' LoRAs and the prompt's tags, each name once), so a host can hand over just those."""
    _, tags = parsed("prompt", extract_lora_tags, prompt)
    names = [name for name, _ in loras] + [t.name for t in tags]
    return {"lora": list(dict.fromkeys(names)), "embedding": list(dict.fromkeys(embeddings))}


def embedding_chunker(library, tokenizer, hidden_size: int, embeddings=()):
    """Find and read the embeddings (checked against the text encoder's width) -> (a PromptChunker
    with each trigger word registered, {trigger: vectors (n, D)})."""
    chunker = PromptChunker(tokenizer)
    vectors, origin = {}, {}
    for name in embeddings:
        found = library.find("embedding", name)
        emb = read_embedding(found.source, found.filename, dim=hidden_size)
        if emb.trigger in origin:
            raise ConfigError(f"embeddings {origin[emb.trigger]} and {found.filename} have the same trigger word "
                              f"{emb.trigger!r}: rename one file", "embeddings")
        chunker.add_embedding(emb.trigger, len(emb.vectors))
        vectors[emb.trigger], origin[emb.trigger] = emb.vectors, found.filename
    return chunker, vectors


def prepare(library, tokenizer, hidden_size: int, prompt: str, negative_prompt: str, *, loras=(),
            embeddings=()) -> AddOns:
    """Read the embeddings, chunk both prompts with their trigger words reserved, and find every
    LoRA (the settings' and the prompt's tags). LoRA files are read later, by AddOns.patches.
    Missing files and bad tags raise ConfigError."""
    chunker, vectors = embedding_chunker(library, tokenizer, hidden_size, embeddings)
    chunked = parsed("prompt", chunker.chunk, prompt)
    negative = parsed("negative_prompt", chunker.chunk, negative_prompt)
    if negative.loras:
        raise ConfigError(f"negative prompt: <lora:{negative.loras[0].name}:...> tags belong in the prompt",
                          "negative_prompt")
    found = [_Lora(name, scale, scale, library.find("lora", name)) for name, scale in loras]
    found += [_Lora(t.name, t.text_encoder_scale, t.unet_scale, library.find("lora", t.name)) for t in chunked.loras]
    return AddOns(chunked, negative, chunker.chunk("").chunks[0], vectors, found)
