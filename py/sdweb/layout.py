"""Which files of a diffusers repository sdweb needs, and which weight files it reads: decided here.

Two kinds of repo: a Stable Diffusion pipeline (the layout below), and a tiny autoencoder saved as
one diffusers model at the repo root (madebyollin/taesd: `config.json` naming AutoencoderTiny and
`diffusion_pytorch_model[.<variant>].safetensors`, no model_index.json; Plan.kind "autoencoder"),
which draws previews and draft images from a pipeline's latents.

File names in, plan out; nothing here reads a disk or a network. Each caller answers the plan's two
questions about its own copy of a repo through a `Files` (does this path exist? what does this small
file say?): `model.ModelFolder` from a folder on disk, `browser.BrowserModel` from the page's store,
`sdweb download` from the Hub's file listing, and the page (web/hub.js, through the worker's
`browser.plan_json`) from the listing or from HEAD probes.

    model_index.json                       an SD 1.x/2.x text-to-image pipeline (check_model_index): its
                                           components decide, not its class name, so a
                                           StableDiffusionPipeline and a LatentConsistencyModelPipeline
                                           (an LCM UNet, told apart by its config) are both taken
    scheduler/scheduler_config.json        ┐
    {text_encoder,unet,vae}/config.json    │ REQUIRED_FILES
    tokenizer/vocab.json, merges.txt       ┘
    tokenizer/tokenizer_config.json, special_tokens_map.json     OPTIONAL_FILES
    <component>/<stem>[.<variant>].safetensors                   a component's weights: one file, or
    <component>/<stem>.safetensors.index[.<variant>].json        a sharded index and its shards

A component's weights (text_encoder, unet, vae) are the first of these that exists:
the requested variant (e.g. fp16), then the plain files, then the fp16 variant; within each, stem
`diffusion_pytorch_model` (diffusers) before `model` (transformers), a single file before a sharded
index. A shard is a plain file name beside its index, as the index's weight_map names it; where only
a listing is known (no file contents), the listed files named as diffusers and transformers name
shards, `<stem>[.<variant>]-00001-of-00002.safetensors`. Only .safetensors weights are read, never
pickled .bin/.ckpt files (loading those would mean unpickling).

A `Files` that cannot answer yet (the page, before a probe) raises `Unknown` with what it needs;
the caller looks those paths up and plans again. Planning is cheap and has no state, so a
question asked twice gets the same answer.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from .errors import ConfigError, ModelError

INDEX = "model_index.json"
REQUIRED_FILES = (INDEX, "scheduler/scheduler_config.json", "text_encoder/config.json", "unet/config.json",
                  "vae/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt")
OPTIONAL_FILES = ("tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json")
TEXT_FILES = REQUIRED_FILES + OPTIONAL_FILES
TOKENIZER_TABLES = ("vocab.json", "merges.txt")
WEIGHT_COMPONENTS = ("text_encoder", "unet", "vae")
PIPELINE_COMPONENTS = WEIGHT_COMPONENTS + ("tokenizer", "scheduler")
# Weight file stems: diffusers models (unet, vae), then transformers models (text_encoder).
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")

# A Hub repo id: owner/name, no path tricks.
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A variant is a file-name infix (fp16, non_ema, ...); "plain" and "fp32" name the plain files.
_VARIANT = re.compile(r"^[A-Za-z0-9_]+$")
PLAIN_NAMES = ("plain", "fp32")

_NOT_SD = "sdweb runs Stable Diffusion 1.x/2.x text-to-image models in the diffusers layout"

# A tiny autoencoder's repo: one diffusers model at the root. ROOT is its weights' component name.
AUTOENCODER_CONFIG = "config.json"
AUTOENCODER_CLASSES = ("AutoencoderTiny",)
ROOT = ""
_NOT_EITHER = (f"{_NOT_SD} (with model_index.json), and their tiny autoencoders (a diffusers AutoencoderTiny "
               "such as madebyollin/taesd: config.json and diffusion_pytorch_model.safetensors)")


def check_repo_id(repo) -> str:
    """`repo` if it is a Hub repo id (owner/name), else a ConfigError for the `model` setting."""
    if not isinstance(repo, str) or not REPO_ID.match(repo):
        raise ConfigError(f"{repo!r} is not a Hub repo id: use owner/name, e.g. "
                          "stable-diffusion-v1-5/stable-diffusion-v1-5", field="model")
    return repo


def variant_of(name) -> str | None:
    """A variant as a person names it -> the file infix to read: None, "", "plain" and "fp32" mean
    the plain files (which hold fp32 in SD repos); "fp16" and any other diffusers variant name
    (letters, digits, _) stay as they are."""
    if name is None or name == "" or name in PLAIN_NAMES:
        return None
    if not isinstance(name, str) or not _VARIANT.match(name):
        raise ConfigError(f"variant {name!r} is not a weight variant: use fp16, plain (the plain files) or "
                          "another diffusers variant name (letters, digits, _)", field="variant")
    return name


def variant_name(filename: str, variant: str | None) -> str:
    """diffusers' _add_variant: insert the variant before the last suffix.

    "model.safetensors" -> "model.fp16.safetensors";
    "model.safetensors.index.json" -> "model.safetensors.index.fp16.json".
    """
    if not variant:
        return filename
    head, _, last = filename.rpartition(".")
    return f"{head}.{variant}.{last}"


def config_file(component: str) -> str:
    """The repo path of a component's config: scheduler/scheduler_config.json,
    tokenizer/tokenizer_config.json, <component>/config.json for the models."""
    name = {"scheduler": "scheduler_config.json", "tokenizer": "tokenizer_config.json"}.get(component, "config.json")
    return f"{component}/{name}"


def kind_of(path: str) -> str:
    """"weights" for a .safetensors file (large: probed, downloaded last), "text" for the rest."""
    return "weights" if path.endswith(".safetensors") else "text"


def in_component(component: str, name: str) -> str:
    """The repo path of file `name` of `component` (ROOT: the repo's root)."""
    return f"{component}/{name}" if component else name


def _json_object(text, where: str, path: str) -> dict:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError as e:
        raise ModelError(f"{where}: {path} is not valid JSON ({e}), so this is not a diffusers model") from None


def check_autoencoder_config(text, where: str) -> dict:
    """A root config.json's text (or parsed dict) -> dict, or a ModelError saying why `where` is not a
    tiny autoencoder sdweb runs."""
    config = _json_object(text, where, AUTOENCODER_CONFIG)
    if not isinstance(config, dict):
        raise ModelError(f"{where}: config.json is not a JSON object, so this is not a diffusers model")
    if config.get("_class_name") not in AUTOENCODER_CLASSES:
        # a diffusers model names its class; a transformers model its architectures
        cls = config.get("_class_name") or (config.get("architectures") or [None])[0]
        raise ModelError(f"{where} has no model_index.json, so it is not a diffusers pipeline, and its config.json "
                         f"describes {'a ' + str(cls) if cls else 'no model class'}, not a tiny autoencoder: {_NOT_EITHER}")
    return config


def check_root(path: str, text, where: str) -> dict:
    """The file that says what a repo is (Plan.root: model_index.json or a tiny autoencoder's
    config.json), checked: its dict, or a ModelError."""
    return check_model_index(text, where) if path == INDEX else check_autoencoder_config(text, where)


def check_model_index(text, where: str) -> dict:
    """model_index.json's text (or parsed dict) -> dict, or a ModelError saying why `where` is not a
    model sdweb runs."""
    index = _json_object(text, where, INDEX)
    if not isinstance(index, dict):
        raise ModelError(f"{where}: model_index.json is not a JSON object, so this is not a diffusers model")
    missing = [c for c in PIPELINE_COMPONENTS if not isinstance(index.get(c), list)]
    if missing:
        raise ModelError(f"{where} is a {index.get('_class_name') or 'diffusers'} model without {', '.join(missing)}: "
                         f"{_NOT_SD} (StableDiffusionPipeline)")
    unet = index["unet"] + [None, None]
    if unet[1] not in (None, "UNet2DConditionModel"):
        raise ModelError(f"{where}: its UNet is a {unet[1]}, not a UNet2DConditionModel (SD 1.x/2.x); "
                         "SDXL, SD3 and other families are not supported")
    return index


# --- what a plan asks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """A question a Files could not answer yet: does `path` exist (read=False), or what does it say."""

    path: str
    read: bool = False

    @property
    def kind(self) -> str:
        return kind_of(self.path)


class Unknown(Exception):
    """Raised by a Files that has yet to look `needs` up; the caller does, then plans again."""

    def __init__(self, needs: list[Need]):
        super().__init__(", ".join(n.path for n in needs))
        self.needs = needs


class Files:
    """One copy of a repo as a plan sees it. `reads`: whether text() can answer (False for a bare
    listing: shards are then found by their names)."""

    reads = True

    def has(self, path: str) -> bool:
        raise NotImplementedError

    def text(self, path: str) -> str | None:
        """The file's text, None when it does not exist."""
        raise NotImplementedError

    def names(self, folder: str) -> list[str] | None:
        """The file names directly in `folder` (for messages and shard names); None when unknown."""
        return None


class Listed(Files):
    """A repo known by its complete file listing (the Hub's API), nothing read."""

    reads = False

    def __init__(self, paths):
        self.paths = set(paths)

    def has(self, path):
        return path in self.paths

    def names(self, folder):
        head = in_component(folder, "")
        return sorted(p[len(head):] for p in self.paths if p.startswith(head) and "/" not in p[len(head):])


class Known(Files):
    """What the page has found out so far: `listed` (the complete listing, or None when the endpoint
    has none and files are probed one by one), paths `present` / `absent`, and the `texts` it read.
    Anything else raises Unknown."""

    def __init__(self, listed=None, present=(), absent=(), texts=None):
        self.listed = None if listed is None else set(listed)
        self.present, self.absent, self.texts = set(present), set(absent), dict(texts or {})

    def _known(self, path) -> bool | None:
        if path in self.texts or path in self.present:
            return True
        if path in self.absent or (self.listed is not None and path not in self.listed):
            return False
        return True if self.listed is not None else None

    def has(self, path):
        found = self._known(path)
        if found is None:
            raise Unknown([Need(path)])
        return found

    def text(self, path):
        if path in self.texts:
            return self.texts[path]
        if self._known(path) is False:
            return None
        raise Unknown([Need(path, read=True)])

    def names(self, folder):
        return None if self.listed is None else Listed(self.listed).names(folder)


def _each(calls):
    """Run each call, gathering every Unknown, so one round of questions asks all it can."""
    out, needs = [], []
    for call in calls:
        try:
            out.append(call())
        except Unknown as u:
            needs += [n for n in u.needs if n not in needs]
    if needs:
        raise Unknown(needs)
    return out


# --- the plan -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """A component's weight files (repo paths, read in this order) and the index naming them."""

    component: str
    files: tuple[str, ...]
    variant: str | None
    index: str | None = None


@dataclass(frozen=True)
class Plan:
    """What to fetch from a repo, in order: `texts` (small files), then each component's weights.
    `kind`: "pipeline" or "autoencoder" (a tiny autoencoder's repo, its weights' component ROOT)."""

    texts: tuple[str, ...]
    weights: tuple[Weights, ...]
    notes: tuple[str, ...]
    kind: str = "pipeline"

    @property
    def root(self) -> str:
        """The file that says what the repo is, fetched first and checked (check_root) before any weights."""
        return INDEX if self.kind == "pipeline" else AUTOENCODER_CONFIG

    @property
    def files(self) -> list[str]:
        return list(self.texts) + [p for w in self.weights for p in ((w.index,) if w.index else ()) + w.files]


def variant_order(variant: str | None) -> list[str | None]:
    """The variants to try, best first: the requested one, then the plain files, then fp16."""
    out = []
    for v in (variant, None, "fp16"):
        if v not in out:
            out.append(v)
    return out


def choose_weights(files: Files, component: str, variant: str | None, where: str,
                   stems: tuple[str, ...] = WEIGHT_STEMS) -> Weights:
    """The weight files of `component` (see the module docstring for the order), or a ModelError."""
    looked = []
    for v in variant_order(variant):
        for stem in stems:
            single = in_component(component, variant_name(stem + ".safetensors", v))
            looked.append(single)
            if files.has(single):
                return Weights(component, (single,), v)
            index = in_component(component, variant_name(stem + ".safetensors.index.json", v))
            looked.append(index)
            if files.has(index):
                return Weights(component, tuple(shards(files, index, stem, v, where)), v, index)
    msg = (f"{where}: {component + '/' if component else 'the repo root'} has no .safetensors weights (looked for "
           f"{', '.join(os.path.basename(p) for p in looked)})")
    others = [n for n in files.names(component) or () if not n.endswith(".json")]
    if others:
        msg += f"; it holds {', '.join(others)}"
        if not any(n.endswith(".safetensors") for n in others):
            msg += ", but sdweb reads only .safetensors weights, never pickled .bin/.ckpt files"
    raise ModelError(msg)


_SHARD_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]+\.safetensors\Z")


def shards(files: Files, index: str, stem: str, variant: str | None, where: str) -> list[str]:
    """The shard files of a sharded index, sorted: the plain names beside it that its weight_map
    names, or, for a Files that reads nothing, the listed names diffusers gives shards."""
    folder = index.rpartition("/")[0]
    if not files.reads:
        tag = re.escape(stem + (f".{variant}" if variant else ""))
        pattern = re.compile(rf"^{tag}-\d{{5}}-of-\d{{5}}\.safetensors$")
        found = sorted(in_component(folder, n) for n in files.names(folder) or () if pattern.match(n))
        if not found:
            raise ModelError(f"{where}/{index} is there but no shard files named {stem}"
                             f"{'.' + variant if variant else ''}-NNNNN-of-NNNNN.safetensors beside it")
        return found
    text = files.text(index)
    try:
        wmap = json.loads(text).get("weight_map")
    except (ValueError, AttributeError) as e:
        raise ModelError(f"{where}/{index} is not a JSON object ({e})") from None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
        raise ModelError(f"{where}/{index}: weight_map should be a non-empty object of tensor name -> shard file")
    out = []
    for name in sorted(set(wmap.values())):
        # A shard is a .safetensors file beside the index; anything else (../, absolute, a backslash or
        # control character, another kind of file) is refused before it is looked up or fetched.
        if not _SHARD_NAME.match(name):
            raise ModelError(f"{where}/{index}: shard {name!r} should be a plain .safetensors file name beside the index")
        out.append(in_component(folder, name))

    def present(p):
        if not files.has(p):
            raise ModelError(f"{where}/{p} not found: {os.path.basename(index)} lists it as a shard")
        return p

    return _each([lambda p=p: present(p) for p in out])


def _notes(weights, variant: str | None) -> tuple[str, ...]:
    """What a person should know of the weights chosen: where the asked-for variant was missing."""
    return tuple(f"{w.component + ': ' if w.component else ''}no {variant or 'plain'} weights in the repo; taking "
                 f"{os.path.basename(w.index or w.files[0])}" for w in weights if w.variant != variant)


def plan(files: Files, variant: str | None, where: str) -> Plan:
    """Every file sdweb needs from a repo, or a ModelError saying why the repo cannot run here.
    `where` names the repo in messages (a repo id, a folder). A repo without model_index.json is
    planned as a tiny autoencoder (plan_autoencoder)."""
    if files.reads:
        index = files.text(INDEX)
        if index is None:
            return plan_autoencoder(files, variant, where)
        check_model_index(index, where)
    elif not files.has(INDEX):
        return plan_autoencoder(files, variant, where)

    def texts():
        present = [p for p, found in zip(TEXT_FILES[1:], _each([lambda p=p: files.has(p) for p in TEXT_FILES[1:]]))
                   if found]
        missing = [p for p in REQUIRED_FILES if p not in present and p != INDEX]
        if missing:
            raise ModelError(f"{where} lacks {', '.join(missing)}: {_NOT_SD}, with text_encoder, tokenizer "
                             "(vocab.json + merges.txt), unet, vae and scheduler")
        return (INDEX,) + tuple(present)

    # one round asks about the small files and each component's first candidate together
    found = _each([texts] + [lambda c=c: choose_weights(files, c, variant, where) for c in WEIGHT_COMPONENTS])
    weights = tuple(found[1:])
    return Plan(found[0], weights, _notes(weights, variant))


def plan_autoencoder(files: Files, variant: str | None, where: str) -> Plan:
    """A tiny autoencoder's repo: config.json (an AutoencoderTiny) and diffusers' weight file(s) at
    the root, or a ModelError. Called by `plan` for a repo without model_index.json."""
    if files.reads:
        text = files.text(AUTOENCODER_CONFIG)
        if text is None:
            raise ModelError(f"{where} has no model_index.json, so it is not a diffusers pipeline, and no "
                             f"config.json either: {_NOT_EITHER}")
        check_autoencoder_config(text, where)
    elif not files.has(AUTOENCODER_CONFIG):
        raise ModelError(f"{where} has no model_index.json, so it is not a diffusers pipeline, and no config.json "
                         f"either: {_NOT_EITHER}")
    try:
        weights = (choose_weights(files, ROOT, variant, where, stems=WEIGHT_STEMS[:1]),)
    except ModelError as e:
        raise ModelError(f"{where} has no model_index.json, so it is not a diffusers pipeline; as a tiny "
                         f"autoencoder, {str(e).removeprefix(where + ': ')}") from None
    return Plan((AUTOENCODER_CONFIG,), weights, _notes(weights, variant), kind="autoencoder")
