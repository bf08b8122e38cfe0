"""LoRA files -> low-rank updates of the model's weights, and the NumPy reference merge.

    read_lora(file) ──► LoraFile: its modules (up, down, alpha) in the file's own naming
    lora_plan(lora, model_tensors, unet_scale, text_encoder_scale) ──► [LoraPatch]: per target weight
        key (our tensor name), up (out, r), down (r, in * kh * kw), scale, shape
    merge: W[key] += lora_delta(patch) = (scale * up @ down).reshape(shape)   (a device GEMM on the GPU)

The merged weights equal diffusers' `load_lora_weights` + `fuse_lora(lora_scale=s)`:
W + s * (alpha / r) * up @ down, with rsLoRA's alpha / sqrt(r) where the file says so. Several
LoRAs merge one after the other (their deltas add).

File formats (read from .safetensors or torch .pt/.bin through the restricted unpickler):

    kohya / A1111   lora_unet_<module with '_' for '.'>.lora_down.weight / .lora_up.weight / .alpha
                    lora_te_<...> (or lora_te1_) for the text encoder; LoCon conv layers: down
                    (r, in, kh, kw), up (out, r, 1, 1). No alpha: alpha = r.
    diffusers/PEFT  unet.<module>.lora_A.weight / lora_B.weight, text_encoder.<module>...; alpha from
                    `<module>.alpha` keys, else the safetensors metadata `lora_adapter_metadata`
                    (lora_alpha, alpha_pattern, use_rslora, as diffusers saves it), else alpha = r.
                    Older diffusers files: `...processor.to_q_lora.down.weight` (attention
                    processors), `....lora_linear_layer.down.weight`, `....lora.down.weight`;
                    keys without a unet./text_encoder. prefix belong to the UNet.

Module names are diffusers' checkpoint keys without `.weight` (`down_blocks.0.attentions.0.proj_in`).
Kohya's flattened names are resolved against the model's real tensor names (so `proj_in` is found
whether the model has it as a 1x1 conv, SD 1.x, or a linear layer, SD 2.x: a conv-shaped LoRA on a
linear weight and a linear-shaped one on a 1x1 conv both fit). The text encoder's tensors may sit
under `text_model.` or not (transformers < 5 / >= 5), in the model and in the file alike.

Refused, with one line naming the file and the first bad key: a key of no known form (LoHa, LoKr,
DoRA, full diffs ...), a module the model does not have, shapes that do not fit (a LoRA for another
base model), non-finite values, an up without its down or the reverse.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np

from .addon_files import read_addon
from .errors import LoraError

__all__ = ["LoraModule", "LoraFile", "LoraPatch", "read_lora", "lora_plan", "lora_delta", "merge_lora"]

COMPONENTS = ("unet", "text_encoder")
_TEXT_ROOT = "text_model."

# kohya: lora_{unet,te,te1,te2}_<flat module>.<part>
_KOHYA = re.compile(r"^lora_(unet|te1|te2|te)_([^.]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_KOHYA_ANY = re.compile(r"^lora_(unet|te1|te2|te)_[^.]+\.(.+)$")
_PREFIX = r"^(?:(unet|text_encoder|text_encoder_2)\.)?"
_PEFT = re.compile(_PREFIX + r"(.+)\.(lora_A|lora_B)\.weight$")
_OLD_PROCESSOR = re.compile(_PREFIX + r"(.+?)(\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_OLD_LAYER = re.compile(_PREFIX + r"(.+)\.(?:lora_linear_layer|lora)\.(down|up)\.weight$")
_ALPHA = re.compile(_PREFIX + r"(.+)\.alpha$")

_KOHYA_PART = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
_PEFT_PART = {"lora_A": "down", "lora_B": "up", "down": "down", "up": "up"}
_UNET_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_TEXT_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclasses.dataclass
class LoraModule:
    """One low-rank pair as the file names it. module: dotted (diffusers/PEFT) or flattened (kohya)."""

    component: str  # "unet" or "text_encoder"
    module: str
    kohya: bool
    keys: dict = dataclasses.field(default_factory=dict)  # "up" / "down" / "alpha" -> its key in the file
    up: np.ndarray | None = None  # (out, r) or (out, r, 1, 1), float32
    down: np.ndarray | None = None  # (r, in) or (r, in, kh, kw), float32
    alpha: float | None = None  # None: alpha = r unless the metadata says otherwise

    @property
    def key(self) -> str:
        """The module's first key in the file, for messages."""
        return next(iter(self.keys.values()))


@dataclasses.dataclass
class LoraFile:
    name: str  # for messages
    stem: str  # the file name without its extension: the NAME in <lora:NAME:SCALE>
    modules: list[LoraModule]
    metadata: dict  # per component: {"lora_alpha", "alpha_pattern", "use_rslora"} from diffusers' metadata


@dataclasses.dataclass
class LoraPatch:
    """W[key] += (scale * up @ down).reshape(shape) for the weight `key` of `component`."""

    component: str
    key: str  # our tensor name, e.g. "down_blocks.0.attentions.0.proj_in.weight"
    up: np.ndarray  # (out, r) float32
    down: np.ndarray  # (r, in * kh * kw) float32
    scale: float  # user scale * alpha / r (alpha / sqrt(r) for rsLoRA)
    shape: tuple  # the target weight's shape: (out, in) or (out, in, kh, kw)


def _parse_key(key: str):
    """A file key -> (component, module, kohya?, part) or None."""
    m = _KOHYA.match(key)
    if m:
        comp = "unet" if m.group(1) == "unet" else "text_encoder_2" if m.group(1) == "te2" else "text_encoder"
        return comp, m.group(2), True, _KOHYA_PART[m.group(3)]
    m = _PEFT.match(key)
    if m:
        return m.group(1) or "unet", m.group(2), False, _PEFT_PART[m.group(3)]
    m = _OLD_PROCESSOR.match(key)
    if m:
        comp = m.group(1) or "unet"
        proj = (_TEXT_PROJ if comp.startswith("text_encoder") else _UNET_PROJ)[m.group(4)]
        return comp, f"{m.group(2)}.{proj}", False, m.group(5)
    m = _OLD_LAYER.match(key)
    if m:
        return m.group(1) or "unet", m.group(2), False, m.group(3)
    m = _ALPHA.match(key)
    if m:
        return m.group(1) or "unet", m.group(2), False, "alpha"
    return None


def _unknown_key(name: str, key: str):
    m = _KOHYA_ANY.match(key)
    kind = f"'.{m.group(2)}' (a LyCORIS/DoRA variant, not a plain LoRA)" if m else "no known form"
    raise LoraError(f"{name}: key {key!r} has {kind}: expected kohya lora_unet_*/lora_te_* .lora_down/.lora_up/"
                    ".alpha or diffusers/PEFT unet.*/text_encoder.* .lora_A/.lora_B")


def _metadata(f) -> dict:
    raw = f.metadata.get("lora_adapter_metadata")
    if raw is None:
        return {}
    try:
        md = json.loads(raw)
    except ValueError as e:
        raise LoraError(f"{f.name}: metadata lora_adapter_metadata is not valid JSON ({e})") from None
    if not isinstance(md, dict):
        raise LoraError(f"{f.name}: metadata lora_adapter_metadata is not a JSON object")
    out = {}
    for comp in COMPONENTS:
        if md.get(f"{comp}.use_dora"):
            raise LoraError(f"{f.name}: metadata says {comp} is a DoRA adapter, which is not supported (plain LoRA only)")
        alpha, pattern = md.get(f"{comp}.lora_alpha"), md.get(f"{comp}.alpha_pattern") or {}
        if (alpha is not None and not isinstance(alpha, (int, float))) or not isinstance(pattern, dict):
            raise LoraError(f"{f.name}: metadata {comp}.lora_alpha / alpha_pattern are not numbers")
        out[comp] = {"lora_alpha": alpha, "alpha_pattern": pattern, "use_rslora": bool(md.get(f"{comp}.use_rslora"))}
    return out


def read_lora(source, filename: str | None = None) -> LoraFile:
    """A LoRA file (path, bytes or byte source; see addon_files) -> LoraFile. Checks every key's form
    and value (finite floats, scalar alphas, each up with its down); shapes are checked by lora_plan."""
    f = read_addon(source, filename, error=LoraError)
    tensors = f.data
    if not isinstance(tensors, dict) or not tensors:
        raise LoraError(f"{f.name}: holds a {type(tensors).__name__ if tensors else 'nothing'}, "
                        "not a LoRA's dict of tensors")
    modules: dict[tuple[str, str, bool], LoraModule] = {}
    for key, value in tensors.items():
        parsed = _parse_key(key) if isinstance(key, str) else None
        if parsed is None:
            _unknown_key(f.name, str(key))
        comp, module, kohya, part = parsed
        if comp == "text_encoder_2":
            raise LoraError(f"{f.name}: key {key!r} is for a second text encoder (an SDXL LoRA): "
                            "SD 1.x/2.x models have one")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in ("fiu" if part == "alpha" else "f"):
            raise LoraError(f"{f.name}: key {key!r} is not a float tensor")
        if not np.isfinite(value).all():
            raise LoraError(f"{f.name}: key {key!r} has non-finite values (NaN or infinity)")
        mod = modules.setdefault((comp, module, kohya), LoraModule(comp, module, kohya))
        mod.keys[part] = key
        if part == "alpha":
            if value.size != 1 or mod.alpha is not None:
                raise LoraError(f"{f.name}: key {key!r}: alpha must be one number per module, got shape {value.shape}")
            mod.alpha = float(value.reshape(-1)[0])
        elif getattr(mod, part) is not None:
            raise LoraError(f"{f.name}: key {key!r} repeats the {part} weight of {module!r}")
        else:
            if value.ndim not in (2, 4) or value.shape[0] == 0 or value.shape[1] == 0:
                raise LoraError(f"{f.name}: key {key!r} has shape {value.shape}: a LoRA {part} weight is 2-D or 4-D")
            setattr(mod, part, np.asarray(value, dtype=np.float32))
    for mod in modules.values():
        if mod.up is None or mod.down is None:
            missing = "up" if mod.up is None else "down"
            key = mod.keys.get("down" if missing == "up" else "up", mod.key)
            raise LoraError(f"{f.name}: key {key!r} has no matching {missing} weight for module {mod.module!r}")
    return LoraFile(f.name, f.stem, list(modules.values()), _metadata(f))


class _Targets:
    """One component's weights: dotted module -> (our tensor name, shape), and kohya's flat names."""

    def __init__(self, tensors: dict, strip_root: bool):
        self.by_module, self.by_flat = {}, {}
        for name, shape in tensors.items():
            if not name.endswith(".weight"):
                continue
            module = name[: -len(".weight")]
            if strip_root and module.startswith(_TEXT_ROOT):
                module = module[len(_TEXT_ROOT):]
            self.by_module[module] = (name, tuple(shape))
            flat = module.replace(".", "_")
            self.by_flat[flat] = None if flat in self.by_flat else module  # None: ambiguous

    def find(self, mod: LoraModule):
        name = mod.module
        if mod.component == "text_encoder":
            root = _TEXT_ROOT.replace(".", "_") if mod.kohya else _TEXT_ROOT
            name = name[len(root):] if name.startswith(root) else name
        if mod.kohya:
            name = self.by_flat.get(name)
        return self.by_module.get(name) if name is not None else None


def _misfit(up, down, shape) -> str | None:
    """Which of up (out, r[, 1, 1]) and down (r, in[, kh, kw]) does not fit a weight of `shape`
    (linear (out, in) or conv (out, in, kh, kw)): "up", "down", or None when up @ down makes it."""
    if up.shape[0] != shape[0] or up.shape[2:] not in ((), (1, 1)):
        return "up"
    if up.shape[1] != down.shape[0]:
        return "down"
    if len(shape) == 2:
        fits = down.shape[1:] in ((shape[1],), (shape[1], 1, 1))
    else:
        fits = len(shape) == 4 and (down.shape[1:] == shape[1:] or (shape[2:] == (1, 1) and down.shape[1:] == (shape[1],)))
    return None if fits else "down"


def _alpha(lora: LoraFile, mod: LoraModule, rank: int) -> tuple[float, bool]:
    """(alpha, rsLoRA?) for a module: its alpha key, else diffusers' metadata, else the rank."""
    md = lora.metadata.get(mod.component, {})
    if mod.alpha is not None:
        return mod.alpha, md.get("use_rslora", False)
    pattern = md.get("alpha_pattern", {})
    # PEFT matches a pattern key against the module name's tail (peft.utils.other.get_pattern_key)
    for k, v in pattern.items():
        if mod.module == k or mod.module.endswith("." + k):
            return float(v), md.get("use_rslora", False)
    if md.get("lora_alpha") is not None:
        return float(md["lora_alpha"]), md.get("use_rslora", False)
    return float(rank), False


def lora_plan(lora: LoraFile, model_tensors: dict, *, unet_scale: float = 1.0,
              text_encoder_scale: float = 1.0) -> list[LoraPatch]:
    """LoraFile + the model's tensors -> one LoraPatch per target weight.

    model_tensors: {"unet": {name: shape}, "text_encoder": {name: shape}}, the names as in the
    model's safetensors files (the text encoder's with or without `text_model.`). Scales: the user's
    multiplier per component (A1111's <lora:NAME:TE:UNET>; diffusers' fuse_lora(lora_scale) is both).
    """
    scales = {"unet": unet_scale, "text_encoder": text_encoder_scale}
    targets = {}
    plan, seen = [], {}
    for mod in lora.modules:
        comp = mod.component
        if comp not in targets:
            if comp not in model_tensors:
                raise LoraError(f"{lora.name}: key {mod.key!r} is for the {comp}, which this model does not have")
            targets[comp] = _Targets(model_tensors[comp], strip_root=comp == "text_encoder")
        hit = targets[comp].find(mod)
        if hit is None:
            raise LoraError(f"{lora.name}: key {mod.key!r} matches no {comp} module of this model "
                            "(a LoRA for another base model?)")
        key, shape = hit
        if key in seen:
            raise LoraError(f"{lora.name}: key {mod.key!r} targets {comp} {key}, as {seen[key]!r} does already")
        seen[key] = mod.key
        misfit = _misfit(mod.up, mod.down, shape)
        if misfit:
            raise LoraError(f"{lora.name}: key {mod.keys[misfit]!r}: up {mod.up.shape} @ down {mod.down.shape} does "
                            f"not fit {comp} {key} {shape} (a LoRA for another base model?)")
        rank = mod.down.shape[0]
        alpha, rslora = _alpha(lora, mod, rank)
        scale = scales[comp] * alpha / (math.sqrt(rank) if rslora else rank)
        plan.append(LoraPatch(comp, key, np.ascontiguousarray(mod.up.reshape(mod.up.shape[0], rank)),
                              np.ascontiguousarray(mod.down.reshape(rank, -1)), scale, shape))
    return plan


def lora_delta(patch: LoraPatch) -> np.ndarray:
    """The update of one weight: (scale * up @ down) reshaped to the weight's shape, float32."""
    return ((patch.up @ patch.down) * np.float32(patch.scale)).reshape(patch.shape)


def merge_lora(tensors: dict, patches) -> dict:
    """The NumPy reference merge: {name: array} and patches (of one component) -> a new dict with every
    patched weight replaced by float32 W + delta; other arrays are passed through."""
    out = dict(tensors)
    for p in patches:
        out[p.key] = out[p.key].astype(np.float32) + lora_delta(p)
    return out
