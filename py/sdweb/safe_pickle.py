"""Read PyTorch .pt / .bin files (what `torch.save` writes) without running any code from them.

A torch file is a pickle, and unpickling can call any function the file names (`os.system` through
`__reduce__`). `load` unpickles with a `pickle.Unpickler` whose `find_class` knows only the names a
file of tensors needs, each bound to a small function of ours:

    torch._utils._rebuild_tensor_v2 / _rebuild_tensor   (storage, offset, size, stride, ...) -> tensor
    torch._utils._rebuild_parameter[_with_state]         (tensor, requires_grad, hooks[, state]) -> tensor
    torch.FloatStorage, HalfStorage, ... BoolStorage     dtype tags inside a storage reference
    collections.OrderedDict -> dict,  torch.Size -> tuple,  builtins.set,  _codecs.encode (latin-1 bytes)
    torch.nn.modules.container.ParameterDict            -> TorchModule, a dict of the module's attributes
                                                          (old A1111 embeddings pickle one)

Any other name is refused with a TorchFileError naming the file and the name, before anything is
called. Storages are never objects of the file's choosing: `persistent_load` maps a storage
reference to bytes we read ourselves, and every offset, size and stride is checked against them.

Formats:
- zip (torch >= 1.6): `<root>/data.pkl`, `<root>/data/<key>` raw storages, `<root>/byteorder`.
- legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles in a row (magic
  number, protocol 1001, system info, the object, the storage keys), then each storage as an 8-byte
  element count and its bytes.

`load(source, name=None)` -> the file's object, rebuilt from plain Python values: dict, list, tuple,
set, str, bytes, int, float, bool, None, TorchModule, and NumPy arrays for tensors (C-contiguous,
native byte order, own memory; BFloat16 tensors come back as float32, exactly). `source` is a path,
bytes, or a byte source (`size` and `read(offset, length)`, as safetensors.SafetensorsFile takes).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np

from .errors import TorchFileError
from .weights import bf16_to_f32

__all__ = ["load", "TorchModule"]

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001

# Storage class name -> element dtype ("bf16": uint16 bit patterns, widened to float32).
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class TorchModule(dict):
    """A pickled torch.nn container, as a dict of its attributes (`_parameters`, `_buffers`, ...)."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"module state must be a dict, not {type(state).__name__}")
        self.update(state)


class _StorageType(tuple):
    """What `torch.FloatStorage` & co. resolve to: (class name,). A tag, never called."""

    __slots__ = ()


class _StorageRef(tuple):
    """(key, storage class name, element count): a storage the file refers to, read by the loader."""

    __slots__ = ()


class _TensorRef(tuple):
    """(storage ref, offset, size, stride): a tensor to cut from its storage once storages are read."""

    __slots__ = ()


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _StorageRef):
        raise TypeError("a tensor's storage must be a storage reference")
    if not _is_index(storage_offset):
        raise TypeError(f"storage offset {storage_offset!r} must be an integer >= 0")
    for what, v in (("size", size), ("stride", stride)):
        if not isinstance(v, tuple) or not all(_is_index(x) for x in v):
            raise TypeError(f"tensor {what} {v!r} must be a tuple of integers >= 0")
    if len(size) != len(stride):
        raise TypeError(f"tensor size {size} and stride {stride} differ in length")
    numel = 1
    for n in size:
        numel *= n
    # a stride along a dimension of size 1 (or of an empty tensor) is never used: zero it, so no
    # stride, however large, reaches the array code
    stride = tuple(s if n > 1 and numel else 0 for n, s in zip(size, stride))
    if numel:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage[2]:
            raise TypeError(f"tensor of size {size}, stride {stride} at offset {storage_offset} runs past "
                            f"its storage of {storage[2]} elements")
        if numel > max(storage[2], 1):
            raise TypeError(f"tensor of size {size} has more elements than its storage ({storage[2]}): "
                            "a broadcast view, which tensor files do not need")
    return _TensorRef((storage, storage_offset, size, stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(requires_grad, bool):
        raise TypeError(f"requires_grad {requires_grad!r} must be a bool")
    if backward_hooks or metadata:
        raise TypeError("tensor carries backward hooks or Python attributes")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, _TensorRef):
        raise TypeError("a parameter must wrap a tensor")
    if not isinstance(requires_grad, bool) or backward_hooks or state:
        raise TypeError("parameter carries hooks or Python attributes")
    return data


class _OrderedDict(dict):
    """collections.OrderedDict while unpickling. A module's state_dict carries a `_metadata`
    attribute (layer versions), set by BUILD; it is dropped, and the dict comes back plain."""

    def __init__(self, *args):
        if len(args) > 1:
            raise TypeError("OrderedDict takes at most one argument")
        super().__init__(*args)

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"OrderedDict state must be a dict, not {type(state).__name__}")


def _size(dims=()):
    if not isinstance(dims, (tuple, list)) or not all(_is_index(d) for d in dims):
        raise TypeError(f"torch.Size {dims!r} must hold integers >= 0")
    return tuple(dims)


def _encode(text, encoding="latin1"):
    """How protocol-2 pickles spell bytes: _codecs.encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TypeError("_codecs.encode is allowed only for str with the latin1 encoding")
    return text.encode("latin-1")


def _set(items=()):
    if not isinstance(items, (list, tuple)):
        raise TypeError("set() takes a list")
    return set(items)


_ALLOWED = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "collections.OrderedDict": _OrderedDict,
    "torch.Size": _size,
    "_codecs.encode": _encode,
    "builtins.set": _set,
    "torch.nn.modules.container.ParameterDict": TorchModule,
    **{f"torch.{name}": _StorageType((name,)) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, fail):
        super().__init__(file, encoding="utf-8")
        self._fail = fail
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        module = "builtins" if module == "__builtin__" else module  # protocol 2's spelling
        found = _ALLOWED.get(f"{module}.{name}")
        if found is None:
            self._fail(f"refused global {module}.{name}: only tensors and plain containers are read from "
                       "torch files (torch.load without weights_only would call it)")
        return found

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy adds view_metadata (None unless a view)
        if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[3], str) or not _is_index(pid[4]) or (len(pid) == 6 and pid[5] is not None)):
            self._fail(f"refused persistent id {str(pid)[:80]}: expected ('storage', <dtype>Storage, key, location, numel)")
        key, numel = pid[2], pid[4]
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef((key, pid[1][0], numel))
        elif ref[1:] != (pid[1][0], numel):
            self._fail(f"storage {key!r} is described twice, differently")
        return ref


def _unpickle(file, fail, storages=None):
    """One pickle from `file` through the restricted unpickler -> (object, its storage refs)."""
    u = _Unpickler(file, fail)
    if storages is not None:
        u.storages = storages
    try:
        return u.load(), u.storages
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, OverflowError, RecursionError, MemoryError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        fail(f"not a readable tensor pickle ({msg})")


def _widen(raw, kind: str, byteorder: str, numel: int, fail, key: str):
    """Raw storage bytes -> 1-D array of numel elements, native byte order (bf16 -> float32)."""
    dtype = np.dtype("u2" if kind == "bf16" else kind).newbyteorder("<" if byteorder == "little" else ">")
    if len(raw) < numel * dtype.itemsize:
        fail(f"storage {key!r} holds {len(raw)} bytes, fewer than its {numel} elements of {dtype.itemsize} bytes")
    arr = np.frombuffer(raw, dtype=dtype, count=numel)
    if kind == "bf16":
        return bf16_to_f32(arr)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _materialize(obj, arrays: dict, fail, depth: int = 0):
    """Replace tensor refs by arrays cut from their storages; everything else is plain data already."""
    if depth > 200:
        fail("nesting deeper than 200 levels")
    t = type(obj)
    if t is _TensorRef:
        if id(obj) not in arrays:
            (key, _, _), offset, size, stride = obj
            storage = arrays["storage:" + key]
            view = np.lib.stride_tricks.as_strided(
                storage[offset:], shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False)
            arrays[id(obj)] = np.array(view, order="C")  # a copy: own memory, not the file's
        return arrays[id(obj)]
    if t in (_StorageRef, _StorageType):
        fail("holds a bare storage object where tensors and plain values are expected")
    if t is dict or t is _OrderedDict or t is TorchModule:
        out = TorchModule() if t is TorchModule else {}
        for k, v in obj.items():
            if type(k) in (_TensorRef, _StorageRef, _StorageType):
                fail("uses a tensor as a dictionary key")
            out[k] = _materialize(v, arrays, fail, depth + 1)
        return out
    if t is list or t is tuple:
        return t(_materialize(v, arrays, fail, depth + 1) for v in obj)
    if t is set and any(type(v) in (_TensorRef, _StorageRef, _StorageType) for v in obj):
        fail("holds a tensor inside a set")
    return obj


def _read_source(source, name):
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as e:
            raise TorchFileError(f"{name}: cannot open ({e.strerror or e})") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read") and hasattr(source, "size"):
        data = bytes(source.read(0, int(source.size)))
        if len(data) != int(source.size):
            raise TorchFileError(f"{name}: short read: got {len(data)} of {int(source.size)} bytes")
        return data
    raise TypeError(f"safe_pickle.load needs a path, bytes or a byte source, not {type(source).__name__}")


def load(source, name: str | None = None):
    """A torch.save file -> its object with tensors as NumPy arrays; see the module docstring."""
    if name is None:
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else str(getattr(source, "name", "<bytes>"))

    def fail(msg):
        raise TorchFileError(f"{name}: {msg}")

    data = _read_source(source, name)
    if data[:4] == _ZIP_MAGIC:
        return _load_zip(data, fail)
    if data[:1] == b"\x80":
        return _load_legacy(data, fail)
    fail("not a PyTorch file (neither torch.save's zip format nor a legacy pickle)")


def _load_zip(data: bytes, fail):
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        fail(f"not a valid zip archive ({e})")
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        what = "a TorchScript archive" if any(n.endswith("constants.pkl") for n in names) else "a zip file"
        fail(f"is {what} without exactly one <root>/data.pkl: not a torch.save file of tensors")
    root = pickles[0][: -len("data.pkl")]

    def entry(path):
        try:
            info = zf.getinfo(path)
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            fail(f"archive entry {path} is compressed: torch.save stores every entry uncompressed")
        return zf.read(info)

    byteorder = (entry(root + "byteorder") or b"little").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
        fail(f"byteorder {byteorder!r} should be 'little' or 'big'")
    obj, storages = _unpickle(io.BytesIO(entry(pickles[0])), fail)
    arrays = {}
    for key, kind, numel in storages.values():
        raw = entry(f"{root}data/{key}")
        if raw is None:
            fail(f"storage {key!r} is missing from the archive ({root}data/{key})")
        arrays["storage:" + key] = _widen(raw, _STORAGE_DTYPES[kind], byteorder, numel, fail, key)
    return _finish(obj, arrays, fail)


def _finish(obj, arrays, fail):
    """_materialize, with what NumPy may still refuse (a shape too large for this host) as a TorchFileError."""
    try:
        return _materialize(obj, arrays, fail)
    except (ValueError, OverflowError, MemoryError) as e:
        fail(f"a tensor cannot be built ({str(e).splitlines()[0][:160]})")


def _load_legacy(data: bytes, fail):
    f = io.BytesIO(data)
    magic, _ = _unpickle(f, fail)
    if magic != _LEGACY_MAGIC:
        fail("starts with a pickle that is not torch's magic number: not a legacy torch.save file")
    protocol, _ = _unpickle(f, fail)
    if protocol != _LEGACY_PROTOCOL:
        fail(f"legacy protocol version {protocol!r}, expected {_LEGACY_PROTOCOL}")
    sys_info, _ = _unpickle(f, fail)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    obj, storages = _unpickle(f, fail)
    keys, _ = _unpickle(f, fail, storages={})
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        fail("the list of storage keys does not match the storages the object uses")
    arrays = {}
    for key in keys:
        _, kind, numel = storages[key]
        dtype = _STORAGE_DTYPES[kind]
        itemsize = 2 if dtype == "bf16" else np.dtype(dtype).itemsize
        head = f.read(8)
        if len(head) != 8:
            fail(f"storage {key!r}: file ends before its element count")
        count = int.from_bytes(head, "little" if little else "big")
        if count != numel:
            fail(f"storage {key!r} says {count} elements where the object expects {numel}")
        arrays["storage:" + key] = _widen(f.read(count * itemsize), dtype, "little" if little else "big",
                                          numel, fail, key)
    return _finish(obj, arrays, fail)
