"""ModelFolder: a diffusers Hub repository laid out on disk, as `sdweb download` (or git) leaves it.

    model_index.json                 {"unet": ["diffusers", "UNet2DConditionModel"], ...}
    unet/config.json                 diffusion_pytorch_model.safetensors  (.fp16.safetensors variant)
    vae/config.json                  diffusion_pytorch_model.safetensors
    text_encoder/config.json         model.safetensors                    (transformers' file name)
    tokenizer/                       vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json

Which files those are, which weight file of a component is read (variant, sharded index) and
whether model_index.json describes a model sdweb runs are layout.py's decisions; this module answers
its questions from the disk (FolderFiles) and opens what it chose.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import layout
from .errors import ModelError
from .weights import WeightStore, open_store

_DOWNLOAD_HINT = "download one with `sdweb download REPO`"


def _read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path} not found: {what}") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ModelError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} should hold a JSON object, not a {type(data).__name__}")
    return data


class FolderFiles(layout.Files):
    """A folder's files as layout's plans ask about them, plus `extra` repo paths held elsewhere (the
    browser's weight files)."""

    def __init__(self, root: Path, extra=()):
        self.root, self.extra = Path(root), set(extra)

    def has(self, path):
        return path in self.extra or (self.root / path).is_file()

    def text(self, path):
        try:
            return (self.root / path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ModelError(f"{self.root / path}: cannot read ({e.strerror or e})") from None

    def names(self, folder):
        d = self.root / folder
        here = {p.name for p in d.iterdir() if p.is_file()} if d.is_dir() else set()
        return sorted(here | {p[len(folder) + 1:] for p in self.extra if p.startswith(folder + "/")})


class ModelFolder:
    """A diffusers model folder. `.index` is model_index.json; components are its subfolders."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise ModelError(f"{self.path}: no such model folder ({_DOWNLOAD_HINT})")
        if not self.path.is_dir():
            raise ModelError(f"{self.path} is a file, not a diffusers model folder ({_DOWNLOAD_HINT})")
        self.files = FolderFiles(self.path)
        text = self.files.text(layout.INDEX)
        if text is None:
            raise ModelError(f"{self.path} is not a diffusers model folder: model_index.json not found ({_DOWNLOAD_HINT})")
        self.index = layout.check_model_index(text, self.name)

    def __repr__(self):
        return f"ModelFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        """How messages, the settings (catalogue lookup) and a PNG's parameters name this model."""
        return str(self.path)

    def components_present(self) -> list[str]:
        """Components model_index.json names (with a class, not [null, null]) whose folder exists."""
        out = []
        for name, value in self.index.items():
            if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[1] is None:
                continue
            if (self.path / name).is_dir():
                out.append(name)
        return out

    def _component_dir(self, component: str) -> Path:
        d = self.path / component
        if not d.is_dir():
            listed = [k for k in self.index if not k.startswith("_")]
            raise ModelError(f"{self.path} has no {component}/ folder (model_index.json lists: {', '.join(listed)})")
        return d

    # --- configs ----------------------------------------------------------------------------------

    def config(self, component: str) -> dict:
        """The component's config (layout.config_file: <c>/config.json, scheduler/scheduler_config.json,
        tokenizer/tokenizer_config.json)."""
        self._component_dir(component)
        path = layout.config_file(component)
        return _read_json(self.path / path, f"the {component} needs its {os.path.basename(path)}")

    @property
    def tokenizer_dir(self) -> Path:
        """tokenizer/, checked to hold the BPE tables (vocab.json, merges.txt)."""
        d = self._component_dir("tokenizer")
        for f in layout.TOKENIZER_TABLES:
            if not (d / f).is_file():
                raise ModelError(f"{d / f} not found: the tokenizer needs {' and '.join(layout.TOKENIZER_TABLES)}")
        return d

    # --- weights ----------------------------------------------------------------------------------

    def weight_files(self, component: str, variant: str | None = None) -> list[Path]:
        """The .safetensors file(s) holding `component`'s weights, as layout.choose_weights picks them
        (the variant, else the plain files, else fp16; single file before sharded index)."""
        self._component_dir(component)
        return [self.path / p for p in layout.choose_weights(self.files, component, variant, self.name).files]

    def weight_bytes(self, variant: str | None = None) -> int:
        """Bytes of the weight files of text_encoder, unet and vae that `variant` reads."""
        return sum(p.stat().st_size for c in layout.WEIGHT_COMPONENTS for p in self.weight_files(c, variant))

    def weights(self, component: str, precision: str = "fp32", variant: str | None = None,
                lazy: bool = False) -> WeightStore:
        """A WeightStore over `component`'s weight file(s) (see weight_files for the choice)."""
        return open_store([(p, None) for p in self.weight_files(component, variant)], component, precision, lazy)


def resolve_model(arg) -> ModelFolder:
    """A --model argument -> ModelFolder.

    An existing folder is used as is. Otherwise a Hub repo id `owner/name` is looked up as
    $SDWEB_WEIGHTS/owner/name (when set), then ./weights/owner/name.
    """
    p = Path(arg).expanduser()
    if p.exists():
        return ModelFolder(p)
    s = str(arg)
    if layout.REPO_ID.match(s):
        roots = []
        if os.environ.get("SDWEB_WEIGHTS"):
            roots.append(Path(os.environ["SDWEB_WEIGHTS"]))
        roots.append(Path("weights"))
        tried = [r / s for r in roots]
        for t in tried:
            if t.is_dir():
                return ModelFolder(t)
        raise ModelError(f"model {s} not found (looked in {', '.join(str(t) for t in tried)}): run `sdweb download {s}` first")
    raise ModelError(f"{s}: no such model folder, and not a Hub repo id like owner/name ({_DOWNLOAD_HINT})")
