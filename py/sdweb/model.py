"""ModelFolder: a diffusers Hub repository laid out on disk, as `sdweb download` (or git) leaves it;
AutoencoderFolder: a tiny autoencoder's (madebyollin/taesd: config.json and its weights at the root).

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

from . import catalogue, layout
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
        head = layout.in_component(folder, "")
        return sorted(here | {p[len(head):] for p in self.extra if p.startswith(head) and "/" not in p[len(head):]})


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
        if text is None and AutoencoderFolder.holds_one(self.files):
            raise ModelError(f"{self.path} is a tiny autoencoder, not a Stable Diffusion model: use it with "
                             "--decoder (which the TAESD previews then use too)")
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


class AutoencoderFolder:
    """A tiny autoencoder saved as one diffusers model at a folder's root (madebyollin/taesd's Hub
    layout, what `sdweb download madebyollin/taesd` leaves): config.json naming AutoencoderTiny, and
    diffusion_pytorch_model[.<variant>].safetensors (layout.plan_autoencoder's choice)."""

    COMPONENT = "autoencoder"  # how weight errors name this model's tensors' store

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ModelError(f"{self.path}: no such tiny autoencoder folder (download one with "
                             f"`sdweb download {catalogue.tiny_autoencoder()['repo']}`)")
        self.files = FolderFiles(self.path)
        text = self.files.text(layout.AUTOENCODER_CONFIG)
        if text is None:
            raise ModelError(f"{self.path} is not a tiny autoencoder folder: config.json not found")
        self._config = layout.check_autoencoder_config(text, self.name)

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"

    @staticmethod
    def holds_one(files: layout.Files) -> bool:
        """Whether `files` hold a tiny autoencoder's config.json at their root."""
        try:
            layout.check_autoencoder_config(files.text(layout.AUTOENCODER_CONFIG) or "{}", "")
        except ModelError:
            return False
        return True

    @property
    def name(self) -> str:
        return str(self.path)

    def config(self) -> dict:
        return dict(self._config)

    def weight_files(self, variant: str | None = None) -> list:
        """The weight file(s), as layout.plan_autoencoder picks them."""
        return [self.path / p for p in layout.plan_autoencoder(self.files, variant, self.name).weights[0].files]

    def weights(self, precision: str = "fp32", variant: str | None = None, lazy: bool = False) -> WeightStore:
        return open_store([(p, None) for p in self.weight_files(variant)], self.COMPONENT, precision, lazy)


def find_repo(arg) -> Path | None:
    """A folder for a --model / --decoder argument: an existing path as is, else a Hub repo id
    `owner/name` looked up as $SDWEB_WEIGHTS/owner/name (when set), then ./weights/owner/name, where
    `sdweb download` puts it. None when the argument is a repo id not downloaded; a ModelError when
    it is neither a path nor a repo id."""
    p = Path(arg).expanduser()
    if p.exists():
        return p
    s = str(arg)
    if not layout.REPO_ID.match(s):
        raise ModelError(f"{s}: no such model folder, and not a Hub repo id like owner/name ({_DOWNLOAD_HINT})")
    for t in repo_folders(s):
        if t.is_dir():
            return t
    return None


def repo_folders(repo: str) -> list[Path]:
    """Where a downloaded Hub repo is looked for, in order."""
    roots = [Path(os.environ["SDWEB_WEIGHTS"])] if os.environ.get("SDWEB_WEIGHTS") else []
    return [r / repo for r in roots + [Path("weights")]]


def resolve_model(arg) -> ModelFolder:
    """A --model argument -> ModelFolder (find_repo: a folder, or a downloaded Hub repo id)."""
    p = find_repo(arg)
    if p is None:
        tried = ", ".join(str(t) for t in repo_folders(str(arg)))
        raise ModelError(f"model {arg} not found (looked in {tried}): run `sdweb download {arg}` first")
    return ModelFolder(p)


def resolve_autoencoder(arg) -> AutoencoderFolder:
    """A --decoder / --preview tiny autoencoder -> AutoencoderFolder: "taesd" names the catalogue's
    (madebyollin/taesd); else a folder or a downloaded Hub repo id, as find_repo looks them up."""
    repo = catalogue.tiny_autoencoder()["repo"] if arg == "taesd" else str(arg)
    p = find_repo(repo)
    if p is None:
        tried = ", ".join(str(t) for t in repo_folders(repo))
        raise ModelError(f"tiny autoencoder {repo} not found (looked in {tried}): run `sdweb download {repo}` first")
    return AutoencoderFolder(p)
