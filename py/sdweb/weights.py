"""WeightStore / WeightView: a component's tensors, found by diffusers key prefix, each used once.

A model takes a `WeightView` and asks for its tensors by their checkpoint names, relative to the
view's prefix, with the shape its config implies (candle's `vs.pp("down_blocks")` idiom):

    store = WeightStore([SafetensorsFile(path)], "unet", precision="fp16")
    view = store.prefix("down_blocks.0").prefix("resnets.1")
    w = view.get("conv1.weight", (320, 320, 3, 3))  # -> float16 array, full name down_blocks.0.resnets.1.conv1.weight
    unet = ...                                        # construction goes on even when tensors are missing
    store.finish()                                    # then ONE WeightError lists every problem

Held precision (what `get` returns; the backend upcasts to f32 per op):
    fp32 -> float32    (an F32 file tensor is returned as the file's read-only mmap view, no copy)
    fp16 -> float16
    bf16 -> uint16 bit patterns of bfloat16 (float32 rounded to nearest even, as torch does)
Integer tensors (e.g. text_model.embeddings.position_ids, I64) are returned as stored.

LoRA: `store.add_lora(patches)` (lora.LoraPatch, from lora_plan) makes `get` return a `Patched` for
each weight a LoRA changes: the held array or WeightRef and its patches. The backend's `weight()`
puts the base weight where ops read it and then fuses each patch with its `fuse_lora` op (on a
GPU, in the weight's buffer), so the merged weight is held in the store's precision like any other.

Lazy stores (`WeightStore(..., lazy=True)`, the browser's WebGPU path) return a `WeightRef` from
`get` instead of an array: where the tensor's bytes are (byte source, offset, size, file dtype), so
the backend can have them copied from the source straight into a GPU buffer without them ever
passing through Python (in Pyodide: the wasm heap). Names, shapes and the use-exactly-once rules are
checked exactly as for arrays; `ref.read()` gives what the eager `get` would have returned.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import ConfigError, WeightError
from .safetensors import SafetensorsFile

PRECISIONS = ("fp32", "fp16", "bf16")

# How many names of each kind finish() lists before "and N more".
_LIST_MAX = 10

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 array -> bfloat16 bit patterns (uint16), rounding to nearest even.

    Same as torch's `.bfloat16()`: NaN becomes the quiet NaN 0x7FC0, finite values too large round
    up to infinity.
    """
    x = np.asarray(x, dtype=np.float32)
    # Flat, so that 0-d inputs stay arrays (array arithmetic wraps silently; NaN patterns do wrap).
    bits = np.ascontiguousarray(x).reshape(-1).view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit rounds half-way cases to the even neighbour.
    out = ((bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) >> 16).astype(np.uint16)
    out[np.isnan(x).reshape(-1)] = 0x7FC0
    return out.reshape(x.shape)


def bf16_to_f32(u: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly (bf16 is the top half of an f32)."""
    return (u.astype(np.uint32) << 16).view(np.float32)


def _to_held(a: np.ndarray, dtype: str, precision: str) -> np.ndarray:
    """A tensor as read from the file (dtype: its safetensors dtype) -> the held precision.

    Values beyond float16's range become +-inf, as torch's `.half()` makes them.
    """
    if dtype not in _FLOAT_DTYPES:
        return a
    with np.errstate(over="ignore"):
        return _convert(a, dtype, precision)


def _convert(a, dtype, precision):
    if precision == "fp32":
        if dtype == "F32":
            return a
        if dtype == "BF16":
            return bf16_to_f32(a)
        return a.astype(np.float32)
    if precision == "fp16":
        if dtype == "F16":
            return a
        if dtype == "BF16":
            return bf16_to_f32(a).astype(np.float16)
        return a.astype(np.float16)
    # bf16
    if dtype == "BF16":
        return a
    return f32_to_bf16(a.astype(np.float32))  # F16 -> F32 is exact, so only one rounding


def _held_dtype(precision: str) -> np.dtype:
    """The numpy dtype `get` returns for a float tensor held at `precision`."""
    return np.dtype({"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}[precision])


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _capped(items: list[str]) -> str:
    head = ", ".join(items[:_LIST_MAX])
    return head if len(items) <= _LIST_MAX else f"{head} and {len(items) - _LIST_MAX} more"


def open_store(sources, component: str, precision: str = "fp32", lazy: bool = False) -> "WeightStore":
    """A WeightStore over `sources`, each (path or byte source, name or None) as SafetensorsFile
    takes them; if any file or the store fails, the files already opened are closed again."""
    files = []
    try:
        for source, name in sources:
            files.append(SafetensorsFile(source, name))
        return WeightStore(files, component, precision, lazy=lazy)
    except BaseException:
        for f in files:
            f.close()
        raise


class WeightStore:
    """The tensors of one component (unet, vae, text_encoder), from one file or several shards.

    WeightStore(files, component, precision="fp32"): `files` are open SafetensorsFile objects;
    `component` names the store in messages; `precision` is fp32 | fp16 | bf16 (see module doc).
    """

    def __init__(self, files, component: str, precision: str = "fp32", lazy: bool = False):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.files = list(files)
        self.component = component
        self.precision = precision
        self.lazy = lazy  # get() returns WeightRef instead of arrays
        self._where = {}  # full tensor name -> the SafetensorsFile holding it
        for f in self.files:
            for name in f.keys():
                if name in self._where:
                    raise WeightError(f"{component}: tensor {name} is in both {self._where[name].name} and {f.name}")
                self._where[name] = f
        self._used = set()  # names fetched by get() (present or not) or marked by skip()
        self.missing = []  # full names asked for but absent
        self.mismatched = []  # (full name, file shape, config shape)
        self.nbytes_held = 0  # bytes of the arrays get() has returned
        self.lora: dict[str, list] = {}  # full name -> the LoRA patches get() hands out with it

    # --- lookup -----------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def prefix(self, prefix: str) -> WeightView:
        return WeightView(self, prefix)

    def shape(self, name: str) -> tuple | None:
        """The stored shape of a full name, or None if the files lack it."""
        f = self._where.get(name)
        return None if f is None else f.info(name)[1]

    def dtype(self, name: str) -> str | None:
        """The stored safetensors dtype of a full name ("F32", "BF16", ...), or None if absent."""
        f = self._where.get(name)
        return None if f is None else f.info(name)[0]

    # --- use --------------------------------------------------------------------------------------

    def _take(self, name: str):
        if name in self._used:
            raise WeightError(f"{self.component}: {name} was asked for twice (model bug: each tensor is used once)")
        self._used.add(name)

    def add_lora(self, patches) -> None:
        """Fuse `patches` (lora.LoraPatch of this component: .key our tensor name, .shape its shape)
        into their weights when they are fetched; several patches of one weight add up, in order.
        Call before the model is built."""
        for p in patches:
            shape = self.shape(p.key)
            if shape is None or tuple(shape) != tuple(p.shape):
                raise WeightError(f"{self.component}: a LoRA patch targets {p.key} {_fmt_shape(p.shape)}, which the "
                                  f"weight files hold as {'nothing' if shape is None else _fmt_shape(shape)}")
            self.lora.setdefault(p.key, []).append(p)

    def get(self, name: str, shape):
        """The tensor `name` (full name) with shape `shape`, in the held precision (a WeightRef to
        it in a lazy store; a Patched around either when a LoRA changes it).

        A missing or wrongly shaped tensor is recorded for finish() and a zero placeholder of the
        expected shape comes back, so a model builds to the end and every problem is reported at once.
        """
        shape = tuple(int(d) for d in shape)
        self._take(name)
        f = self._where.get(name)
        if f is None:
            self.missing.append(name)
            return self._placeholder(name, shape)
        dtype, stored, _ = f.info(name)
        if stored != shape:
            self.mismatched.append((name, stored, shape))
            return self._placeholder(name, shape)
        if self.lazy:
            a = WeightRef(name, shape, dtype, self.precision, f)
            self.nbytes_held += a.nbytes_held
        else:
            a = _to_held(f.read(name), dtype, self.precision)
            self.nbytes_held += a.nbytes
        return Patched(a, tuple(self.lora[name])) if name in self.lora else a

    def _placeholder(self, name, shape):
        if self.lazy:
            ref = WeightRef(name, shape, None, self.precision, None)
            self.nbytes_held += ref.nbytes_held
            return ref
        a = np.zeros(shape, _held_dtype(self.precision))
        self.nbytes_held += a.nbytes
        return a

    def skip(self, name: str):
        """Mark the full name `name` as deliberately unused; fine if the files lack it."""
        self._used.add(name)

    def unused(self) -> list[str]:
        return [n for n in self._where if n not in self._used]

    def finish(self):
        """Raise one WeightError listing missing, unused and wrongly shaped tensors, if any."""
        parts = []
        if self.mismatched:
            parts += [f"{n} has shape {_fmt_shape(s)} but the config needs {_fmt_shape(c)}" for n, s, c in self.mismatched[:_LIST_MAX]]
            if len(self.mismatched) > _LIST_MAX:
                parts[-1] += f" and {len(self.mismatched) - _LIST_MAX} more wrongly shaped"
        if self.missing:
            parts.append(f"missing {len(self.missing)} tensor(s) the config needs: {_capped(self.missing)}")
        unused = self.unused()
        if unused:
            parts.append(f"{len(unused)} tensor(s) in the file(s) unused by the config: {_capped(unused)}")
        if parts:
            raise WeightError(f"{self.component}: " + "; ".join(parts))

    # --- reporting --------------------------------------------------------------------------------

    def summary(self) -> dict:
        """{"tensors", "parameters", "dtypes": {dtype: tensor count}, "file_bytes"} from the headers."""
        params = 0
        dtypes = {}
        for name, f in self._where.items():
            dtype, shape, _ = f.info(name)
            n = 1
            for d in shape:
                n *= d
            params += n
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
        return {
            "tensors": len(self._where),
            "parameters": params,
            "dtypes": dtypes,
            "file_bytes": sum(f.size for f in self.files),
        }

    def close(self):
        for f in self.files:
            f.close()

    def __repr__(self):
        return f"WeightStore({self.component!r}, {len(self._where)} tensors, {self.precision})"


class WeightView:
    """A WeightStore seen under a dotted prefix; names passed in are relative to it."""

    def __init__(self, store: WeightStore, prefix: str = ""):
        self.store = store
        self.prefix_name = prefix.strip(".")

    def full(self, name: str) -> str:
        """Relative name -> full checkpoint name."""
        return f"{self.prefix_name}.{name}" if self.prefix_name else name

    def prefix(self, prefix: str) -> WeightView:
        return WeightView(self.store, self.full(prefix.strip(".")) if prefix else self.prefix_name)

    def __contains__(self, name) -> bool:
        return self.full(name) in self.store

    def keys(self) -> list[str]:
        """Relative names of the stored tensors under this prefix."""
        if not self.prefix_name:
            return self.store.keys()
        p = self.prefix_name + "."
        return [n[len(p):] for n in self.store.keys() if n.startswith(p)]

    def shape(self, name: str) -> tuple | None:
        return self.store.shape(self.full(name))

    def get(self, name: str, shape):
        return self.store.get(self.full(name), shape)

    def skip(self, name: str):
        self.store.skip(self.full(name))

    def __repr__(self):
        return f"WeightView({self.store.component}:{self.prefix_name or '<root>'})"


class WeightRef:
    """A tensor's place in its file, not its bytes: what a lazy store's `get` returns.

    .name       full checkpoint name
    .shape      the shape the config asked for (checked against the file's)
    .dtype      the file's safetensors dtype ("F32", "F16", "BF16", "I64", ...); None for a
                placeholder (missing or wrongly shaped tensor: read() gives zeros)
    .precision  the held precision (fp32 | fp16 | bf16) the store was asked for
    .source     the file's byte source: `size`, `read(offset, length)`, and in the browser `key`
                (the name the JS device bridge knows it by); None for a placeholder
    .offset     absolute byte offset of the tensor in the source (any alignment)
    .nbytes     the tensor's bytes in the file
    .nbytes_held  bytes once held (what the eager store counts)
    .read()     the held array: exactly what the eager `get` returns
    """

    __slots__ = ("name", "shape", "dtype", "precision", "source", "offset", "nbytes", "_file")

    def __init__(self, name: str, shape: tuple, dtype: str | None, precision: str, file):
        self.name, self.shape, self.dtype, self.precision, self._file = name, shape, dtype, precision, file
        self.source, self.offset, self.nbytes = file.span(name) if file is not None else (None, 0, 0)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes_held(self) -> int:
        if self.dtype is not None and self.dtype not in _FLOAT_DTYPES:
            return self.nbytes  # integer tensors are held as stored
        return self.size * _held_dtype(self.precision).itemsize

    def read(self) -> np.ndarray:
        if self._file is None:
            return np.zeros(self.shape, _held_dtype(self.precision))
        return _to_held(self._file.read(self.name), self.dtype, self.precision)

    def __repr__(self):
        return f"WeightRef({self.name}, {_fmt_shape(self.shape)}, {self.dtype} -> {self.precision})"


@dataclasses.dataclass(frozen=True)
class Patched:
    """A weight with LoRA patches to fuse into it, what `get` returns for a weight a LoRA changes.

    .base     the held array or WeightRef, as `get` would have returned it
    .patches  lora.LoraPatch objects (.up (O, r), .down (r, K), .scale), fused in this order

    A backend's `weight(patched)` is `weight(base)` followed by `fuse_lora(w, up, down, scale)` per
    patch (backends/contract.py)."""

    base: object
    patches: tuple
