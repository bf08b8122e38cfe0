"""Our own .safetensors reader: the header up front, each tensor read lazily when asked for.

File layout (https://huggingface.co/docs/safetensors):

    [8 bytes]  N, little-endian u64: the header's length
    [N bytes]  JSON object {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                            "__metadata__": {str: str}}   (may be padded with trailing spaces)
    [rest]     tensor bytes, little-endian, C order; offsets count from the first byte after the header

The source is either a filesystem path (read through mmap, so an F32 tensor comes back as a
zero-copy read-only view; plain file reads where mmap is missing, as it may be in Pyodide) or a
*byte source*: any object with `size: int` and `read(offset, length) -> bytes` (the browser hands in
one backed by IndexedDB / HTTP range requests). Only the header is read on open.

Every size in a file is untrusted: each is checked against the file's real size before anything is
allocated or read, and every problem raises a one-line `SafetensorsError` naming the file (and the
tensor where there is one).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import SafetensorsError

try:
    import mmap as _mmap
except ImportError:  # some wasm builds of CPython ship without mmap
    _mmap = None

# The reference implementation's limit; a real header (SD 1.5's UNet: 686 tensors) is ~100 KB.
MAX_HEADER_BYTES = 100_000_000

# safetensors dtype -> numpy dtype (explicitly little-endian, as the format is). BF16 has no numpy
# dtype: it comes back as its uint16 bit patterns (the top half of the float32 with the same value).
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# Largest dimension an array can have on this host (2**31 - 1 on wasm32).
_MAX_DIM = int(np.iinfo(np.intp).max)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x, limit: int = 80) -> str:
    """repr(x), cut short: header values are untrusted and may be huge."""
    r = repr(x)
    return r if len(r) <= limit else r[:limit] + "..."


def _pairs_no_duplicates(pairs):
    """json object_pairs_hook: a repeated key is ambiguous (which tensor is meant?), so refuse it."""
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {_short(k)}")
        d[k] = v
    return d


class _FileSource:
    """Plain positional reads from an open file: the fallback where mmap is unavailable."""

    def __init__(self, f, size: int):
        self._f = f
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        self._f.seek(offset)
        return self._f.read(length)

    def close(self):
        self._f.close()


class _MmapSource:
    """A byte source over a file's mmap (what span() hands out for a file opened by path)."""

    def __init__(self, mm, name: str):
        self._mm, self.name, self.size = mm, name, len(mm)

    def read(self, offset: int, length: int):
        return memoryview(self._mm)[offset:offset + length]


class SafetensorsFile:
    """One .safetensors file, opened lazily.

    SafetensorsFile(source, name=None): `source` is a path or a byte source (see module doc); `name`
    is what messages call the file (default: the path, or the byte source's `name` attribute).

    .metadata            the `__metadata__` dict (str -> str), {} if absent
    .keys()              tensor names, in header order
    .info(name)          (dtype, shape, nbytes), e.g. ("F32", (320, 4, 3, 3), 46080)
    .read(name)          numpy array: F32 float32, F16 float16, BF16 uint16 bit patterns, I64 int64 ...
    .span(name)          (byte source, absolute offset, nbytes) of a tensor's data, unread
    .size                the file's size in bytes
    """

    def __init__(self, source, name: str | None = None):
        self._mm = None  # mmap over the whole file, when reading a path through mmap
        self._src = None  # object with .read(offset, length), otherwise
        if isinstance(source, (str, os.PathLike)):
            self.name = name if name is not None else os.fspath(source)
            self._open_path(source)
        elif hasattr(source, "read") and hasattr(source, "size"):
            self.name = name if name is not None else str(getattr(source, "name", "<byte source>"))
            self._src = source
            self.size = int(source.size)
        else:
            raise TypeError(f"SafetensorsFile needs a path or an object with .size and .read(offset, length), not {type(source).__name__}")
        try:
            self._parse_header()
        except BaseException:
            self.close()
            raise

    # --- opening ----------------------------------------------------------------------------------

    def _open_path(self, path):
        try:
            f = open(path, "rb")
        except OSError as e:
            raise SafetensorsError(f"{self.name}: cannot open ({e.strerror or e})") from None
        self.size = os.fstat(f.fileno()).st_size
        # mmap refuses empty files, and a file this short is rejected by the header check anyway.
        if _mmap is not None and self.size >= 8:
            try:
                self._mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            except (OSError, ValueError):
                self._mm = None
        if self._mm is not None:
            f.close()  # the mapping stays valid without the file object
        else:
            self._src = _FileSource(f, self.size)

    def _bytes(self, offset: int, length: int, what: str):
        """`length` bytes at `offset`; the caller has checked that the range is inside the file."""
        if self._mm is not None:
            return self._mm[offset:offset + length]
        data = self._src.read(offset, length)
        got = memoryview(data).nbytes
        if got != length:
            raise SafetensorsError(f"{self.name}: short read of {what}: asked for {length} bytes at offset {offset}, got {got}")
        return data

    def _fail(self, msg: str, tensor: str | None = None):
        where = f"{self.name}: tensor {_short(tensor, 200)}" if tensor is not None else self.name
        raise SafetensorsError(f"{where}: {msg}")

    def _parse_header(self):
        if self.size < 8:
            self._fail(f"file is {self.size} bytes, shorter than the 8-byte header length (not a .safetensors file?)")
        n = int.from_bytes(self._bytes(0, 8, "the header length"), "little")
        if n > MAX_HEADER_BYTES:
            self._fail(f"header length {n} is over the {MAX_HEADER_BYTES}-byte limit (not a .safetensors file?)")
        if n > self.size - 8:
            self._fail(f"header length {n} runs past the end of the file ({self.size} bytes; truncated download?)")
        raw = bytes(self._bytes(8, n, "the header"))
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs_no_duplicates)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            self._fail(f"header is not valid JSON ({str(e).splitlines()[0][:120]})")
        if not isinstance(header, dict):
            self._fail(f"header is a JSON {type(header).__name__}, should be an object of tensors")

        self.data_start = 8 + n
        data_len = self.size - self.data_start

        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            self._fail("__metadata__ should be an object of strings")
        self.metadata = meta

        self._tensors = {}  # name -> (dtype str, shape tuple, begin, end)
        for tname, entry in header.items():
            self._tensors[tname] = self._check_entry(tname, entry, data_len)

        # Overlapping tensors would alias each other's bytes. Empty tensors read nothing, so they
        # cannot overlap anything; gaps between tensors are harmless and tolerated.
        spans = sorted((b, e, t) for t, (_, _, b, e) in self._tensors.items() if e > b)
        for (b0, e0, t0), (b1, e1, t1) in zip(spans, spans[1:]):
            if b1 < e0:
                self._fail(f"data_offsets [{b1}, {e1}] overlap tensor {_short(t0, 200)} at [{b0}, {e0}]", t1)

    def _check_entry(self, tname, entry, data_len):
        if not isinstance(entry, dict):
            self._fail(f"header entry is a JSON {type(entry).__name__}, should be an object with dtype, shape, data_offsets", tname)
        for key in ("dtype", "shape", "data_offsets"):
            if key not in entry:
                self._fail(f"header entry has no {key!r}", tname)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            self._fail(f"dtype {_short(dtype)} should be a string such as \"F32\"", tname)
        if dtype not in DTYPES:
            self._fail(f"unsupported dtype {_short(dtype)} (supported: {', '.join(DTYPES)})", tname)
        if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in shape):
            self._fail(f"shape {_short(shape)} should be a list of non-negative integers (each at most {_MAX_DIM})", tname)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            self._fail(f"data_offsets {_short(offsets)} should be two integers [begin, end]", tname)
        begin, end = offsets
        if begin < 0 or begin > end:
            self._fail(f"data_offsets [{begin}, {end}] should satisfy 0 <= begin <= end", tname)
        if end > data_len:
            self._fail(f"data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes; truncated download?)", tname)
        numel = 1
        nonzero = DTYPES[dtype].itemsize  # numpy refuses a shape whose nonzero dims overflow intp, even when empty
        for d in shape:
            numel *= d
            nonzero *= d or 1
        if nonzero > _MAX_DIM:
            self._fail(f"shape {shape} is too large to address on this host", tname)
        nbytes = numel * DTYPES[dtype].itemsize
        if nbytes != end - begin:
            self._fail(f"{dtype} shape {shape} needs {nbytes} bytes but data_offsets [{begin}, {end}] hold {end - begin}", tname)
        return dtype, tuple(shape), begin, end

    # --- reading ----------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, tname) -> bool:
        return tname in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def __iter__(self):
        return iter(self._tensors)

    def _entry(self, tname):
        try:
            return self._tensors[tname]
        except KeyError:
            raise SafetensorsError(f"{self.name}: no tensor named {_short(tname, 200)}") from None

    def info(self, tname: str) -> tuple[str, tuple, int]:
        """-> (dtype, shape, nbytes) without reading any tensor data."""
        dtype, shape, begin, end = self._entry(tname)
        return dtype, shape, end - begin

    def span(self, tname: str):
        """-> (byte source, absolute offset, nbytes) of a tensor's data, without reading it: what a
        GPU upload straight from storage needs (the browser's device bridge copies that span)."""
        _, _, begin, end = self._entry(tname)
        if self._src is not None:
            src = self._src
        elif self._mm is not None:
            src = _MmapSource(self._mm, self.name)
        else:
            raise SafetensorsError(f"{self.name}: file is closed (reading tensor {_short(tname, 200)})")
        return src, self.data_start + begin, end - begin

    def read(self, tname: str) -> np.ndarray:
        """The tensor as a numpy array of its stored dtype (BF16 as uint16), read-only.

        Over mmap this is a view of the file, not a copy: the pages are read when touched.
        """
        if self._mm is None and self._src is None:
            raise SafetensorsError(f"{self.name}: file is closed (reading tensor {tname!r})")
        dtype, shape, begin, end = self._entry(tname)
        dt = DTYPES[dtype]
        if end == begin:
            return np.zeros(shape, dt)
        if self._mm is not None:
            a = np.frombuffer(self._mm, dtype=dt, count=(end - begin) // dt.itemsize, offset=self.data_start + begin)
        else:
            a = np.frombuffer(self._bytes(self.data_start + begin, end - begin, f"tensor {tname!r}"), dtype=dt)
        a = a.reshape(shape)
        a.flags.writeable = False  # a bytearray from a byte source would otherwise be writable
        return a

    # --- lifetime ---------------------------------------------------------------------------------

    def close(self):
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                # Arrays returned by read() still view the mapping; it is unmapped when the last
                # of them is freed.
                pass
            self._mm = None
        if self._src is not None:
            if isinstance(self._src, _FileSource):
                self._src.close()
            self._src = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SafetensorsFile({self.name!r}, {len(self._tensors)} tensors, {self.size} bytes)"
