"""ModelFolder: a diffusers Hub repository laid out on disk, as `sdweb download` (or git) leaves it.

    model_index.json                 {"unet": ["diffusers", "UNet2DConditionModel"], ...}
    unet/config.json                 diffusion_pytorch_model.safetensors  (.fp16.safetensors variant)
    vae/config.json                  diffusion_pytorch_model.safetensors
    text_encoder/config.json         model.safetensors                    (transformers' file name)
    tokenizer/                       vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json

Large components may be sharded: `<name>.safetensors.index.json` maps each tensor to a shard file
(`<name>.safetensors.index.fp16.json` for the fp16 variant, as diffusers names it). Only
.safetensors weights are read; pickled .bin files are not (loading them would mean unpickling).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import ModelError
from .weights import WeightStore, open_store

# Weight file stems: diffusers models (unet, vae) and transformers models (text_encoder).
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")

# A Hub repo id: owner/name, no path tricks.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

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


def _variant_name(filename: str, variant: str | None) -> str:
    """diffusers' _add_variant: insert the variant before the last suffix.

    "model.safetensors" -> "model.fp16.safetensors";
    "model.safetensors.index.json" -> "model.safetensors.index.fp16.json".
    """
    if not variant:
        return filename
    head, _, last = filename.rpartition(".")
    return f"{head}.{variant}.{last}"


class ModelFolder:
    """A diffusers model folder. `.index` is model_index.json; components are its subfolders."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise ModelError(f"{self.path}: no such model folder ({_DOWNLOAD_HINT})")
        if not self.path.is_dir():
            raise ModelError(f"{self.path} is a file, not a diffusers model folder ({_DOWNLOAD_HINT})")
        index_path = self.path / "model_index.json"
        if not index_path.is_file():
            raise ModelError(f"{self.path} is not a diffusers model folder: model_index.json not found ({_DOWNLOAD_HINT})")
        self.index = _read_json(index_path, "every diffusers model folder has one")

    def __repr__(self):
        return f"ModelFolder({str(self.path)!r})"

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
        """The component's config: <c>/config.json, scheduler/scheduler_config.json, tokenizer/tokenizer_config.json."""
        filename = {"scheduler": "scheduler_config.json", "tokenizer": "tokenizer_config.json"}.get(component, "config.json")
        d = self._component_dir(component)
        return _read_json(d / filename, f"the {component} needs its {filename}")

    @property
    def tokenizer_dir(self) -> Path:
        """tokenizer/, checked to hold the BPE tables (vocab.json, merges.txt)."""
        d = self._component_dir("tokenizer")
        for f in ("vocab.json", "merges.txt"):
            if not (d / f).is_file():
                raise ModelError(f"{d / f} not found: the tokenizer needs vocab.json and merges.txt")
        return d

    # --- weights ----------------------------------------------------------------------------------

    def weight_files(self, component: str, variant: str | None = None) -> list[Path]:
        """The .safetensors file(s) holding `component`'s weights, chosen in this order:

        variant=None:  plain file, plain sharded index, then the fp16 file, fp16 sharded index;
        variant=V:     the V file, V sharded index, then as for variant=None.
        Each step tries the stems diffusion_pytorch_model and model.
        """
        d = self._component_dir(component)
        variants = []
        for v in (variant, None, "fp16"):
            if v not in variants:
                variants.append(v)
        looked = []
        for v in variants:
            for stem in WEIGHT_STEMS:
                single = _variant_name(f"{stem}.safetensors", v)
                looked.append(single)
                if (d / single).is_file():
                    return [d / single]
                index = _variant_name(f"{stem}.safetensors.index.json", v)
                looked.append(index)
                if (d / index).is_file():
                    return self._shards(d / index)
        bins = sorted(p.name for p in d.glob("*.bin"))
        if bins:
            raise ModelError(f"{component}: found {', '.join(bins)} in {d} but only .safetensors weights are supported (looked for {', '.join(looked)})")
        raise ModelError(f"{component}: no weights in {d} (looked for {', '.join(looked)})")

    def _shards(self, index: Path) -> list[Path]:
        data = _read_json(index, "the sharded weights need their index")
        wmap = data.get("weight_map")
        if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
            raise ModelError(f"{index}: weight_map should be a non-empty object of tensor name -> shard file")
        out = []
        for name in sorted(set(wmap.values())):
            # A shard is a file beside the index; anything else (../, absolute) is refused.
            if os.path.basename(name) != name or name in (".", ".."):
                raise ModelError(f"{index}: shard {name!r} should be a plain file name beside the index")
            p = index.parent / name
            if not p.is_file():
                raise ModelError(f"{p} not found: {index.name} lists it as a shard")
            out.append(p)
        return out

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
    if _REPO_ID.match(s):
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
