"""sdweb.safetensors against files written by the real `safetensors` package, and against bad files."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdweb.safetensors as st_mod
from sdweb.errors import SafetensorsError
from sdweb.safetensors import SafetensorsFile


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "f64": rng.standard_normal((3, 2)),
        "f32": rng.standard_normal((4, 5, 3)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "i64": np.arange(77, dtype=np.int64).reshape(1, 77),
        "i32": rng.integers(-(2**31), 2**31 - 1, (5, 2), dtype=np.int32),
        "i16": rng.integers(-(2**15), 2**15 - 1, (3,), dtype=np.int16),
        "i8": rng.integers(-128, 127, (9,), dtype=np.int8),
        "u8": rng.integers(0, 255, (2, 3), dtype=np.uint8),
        "bool": rng.integers(0, 2, (4,)).astype(bool),
        "empty": np.zeros((0, 3), np.float32),
        "empty_f16": np.zeros((2, 0), np.float16),
        "scalar": np.array(2.5, np.float32),
    }


@pytest.fixture
def np_file(tmp_path):
    path = tmp_path / "numpy.safetensors"
    safetensors.numpy.save_file(_tensors(), str(path), metadata={"format": "np", "note": "hé"})
    return path


class Source:
    """A byte source (the browser's contract) over bytes, counting what is read."""

    def __init__(self, data: bytes, name="mem.safetensors"):
        self.data = data
        self.size = len(data)
        self.name = name
        self.reads = []

    def read(self, offset, length):
        self.reads.append((offset, length))
        return self.data[offset:offset + length]


def _check_same(f: SafetensorsFile, ref: dict):
    assert sorted(f.keys()) == sorted(ref)
    for k, want in ref.items():
        got = f.read(k)
        assert got.dtype == want.dtype, k
        assert got.shape == want.shape, k
        np.testing.assert_array_equal(got, want, err_msg=k)
        dtype, shape, nbytes = f.info(k)
        assert shape == want.shape and nbytes == want.nbytes


def test_numpy_file_reads_back_identically(np_file):
    ref = safetensors.numpy.load_file(str(np_file))
    with SafetensorsFile(np_file) as f:
        _check_same(f, ref)
        assert f.metadata == {"format": "np", "note": "hé"}
        assert f.info("i64") == ("I64", (1, 77), 77 * 8)
        assert f.info("scalar") == ("F32", (), 4)
        assert f.info("bool")[0] == "BOOL"
        assert f.size == os.path.getsize(np_file)
        assert "f32" in f and "nope" not in f


def test_bf16_from_torch_file(tmp_path):
    path = tmp_path / "torch.safetensors"
    g = torch.Generator().manual_seed(0)
    ts = {
        "w": torch.randn(8, 3, generator=g).bfloat16(),
        "h": torch.randn(5, generator=g).half(),
        "x": torch.randn(2, 2, generator=g),
    }
    safetensors.torch.save_file(ts, str(path), metadata={"format": "pt"})
    with SafetensorsFile(path) as f:
        assert f.metadata == {"format": "pt"}
        assert f.info("w") == ("BF16", (8, 3), 48)
        w = f.read("w")
        assert w.dtype == np.uint16
        as_f32 = (w.astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(as_f32, ts["w"].float().numpy())
        np.testing.assert_array_equal(f.read("h"), ts["h"].numpy())
        np.testing.assert_array_equal(f.read("x"), ts["x"].numpy())


def test_mmap_read_is_a_read_only_view_that_outlives_close(np_file):
    f = SafetensorsFile(np_file)
    assert f._mm is not None, "CPython should read a path through mmap"
    a = f.read("f32")
    assert not a.flags.owndata and not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1.0
    f.close()  # the mapping stays alive while `a` views it
    np.testing.assert_array_equal(a, safetensors.numpy.load_file(str(np_file))["f32"])
    with pytest.raises(SafetensorsError, match="closed"):
        f.read("f32")


def test_plain_reads_when_mmap_is_missing(np_file, monkeypatch):
    monkeypatch.setattr(st_mod, "_mmap", None)
    ref = safetensors.numpy.load_file(str(np_file))
    with SafetensorsFile(np_file) as f:
        assert f._mm is None
        _check_same(f, ref)


def test_byte_source_reads_only_the_header_until_asked(np_file):
    data = np_file.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    src = Source(data)
    f = SafetensorsFile(src)
    assert f.name == "mem.safetensors"
    assert sum(length for _, length in src.reads) == 8 + n
    assert all(off + length <= 8 + n for off, length in src.reads)
    f.keys(), f.info("f32"), f.metadata
    assert sum(length for _, length in src.reads) == 8 + n
    src.reads.clear()
    f.read("f32")
    assert src.reads == [(8 + n + json.loads(data[8:8 + n])["f32"]["data_offsets"][0], 4 * 5 * 3 * 4)]
    _check_same(f, safetensors.numpy.load_file(str(np_file)))


def test_byte_source_short_read(np_file):
    class Short(Source):
        def read(self, offset, length):
            return super().read(offset, length)[:-1]

    src = Short(np_file.read_bytes(), name="short.safetensors")
    with pytest.raises(SafetensorsError, match=r"short\.safetensors.*short read"):
        SafetensorsFile(src)


def test_missing_file_and_missing_tensor(tmp_path, np_file):
    with pytest.raises(SafetensorsError, match="nothere.safetensors"):
        SafetensorsFile(tmp_path / "nothere.safetensors")
    with SafetensorsFile(np_file, name="x.safetensors") as f:
        with pytest.raises(SafetensorsError, match=r"x\.safetensors.*'nope'"):
            f.read("nope")


# --- hand-made bad files ---------------------------------------------------------------------------


def _raw(header, data=b"", n=None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if n is None else n) + h + data


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD = {
    # id: (file bytes, tensor named in the message or None, words in the message)
    "short": (b"\x01\x00\x00", None, "shorter than the 8-byte"),
    "header_past_end": (_raw({"a": _t()}, b"\0" * 8, n=500), None, "runs past the end"),
    "header_over_limit": (_raw({"a": _t()}, b"\0" * 8, n=2**62), None, "over the 100000000-byte limit"),
    "header_just_over_limit": (_raw(b"{}", n=100_000_001), None, "limit"),
    "bad_json": (_raw(b'{"a": '), None, "not valid JSON"),
    "not_utf8": (_raw(b'{"\xff": 1}'), None, "not valid JSON"),
    "deep_json": (_raw(b"[" * 100_000 + b"]" * 100_000), None, "not valid JSON"),
    "not_object": (_raw([1, 2]), None, "list"),
    "duplicate_key": (_raw(b'{"a": ' + json.dumps(_t()).encode() + b', "a": ' + json.dumps(_t()).encode() + b"}", b"\0" * 8), None, "duplicate key 'a'"),
    "metadata_not_str": (_raw({"__metadata__": {"k": 1}}), None, "__metadata__"),
    "entry_not_object": (_raw({"a": [1]}), "a", "should be an object"),
    "no_dtype": (_raw({"a": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "a", "no 'dtype'"),
    "no_offsets": (_raw({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "a", "no 'data_offsets'"),
    "dtype_not_str": (_raw({"a": _t(dtype=5)}, b"\0" * 8), "a", "dtype 5"),
    "unknown_dtype": (_raw({"a": _t(dtype="F8_E4M3", offsets=(0, 2))}, b"\0" * 2), "a", "unsupported dtype 'F8_E4M3'"),
    "negative_shape": (_raw({"a": _t(shape=(-2,))}, b"\0" * 8), "a", "shape [-2]"),
    "float_shape": (_raw({"a": _t(shape=(2.0,))}, b"\0" * 8), "a", "shape [2.0]"),
    "bool_shape": (_raw({"a": _t(shape=(True,), offsets=(0, 4))}, b"\0" * 4), "a", "shape [True]"),
    "shape_not_list": (_raw({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, b"\0" * 8), "a", "shape 2"),
    "huge_empty_shape": (_raw({"a": _t(shape=(2**62, 2**62, 0), offsets=(0, 0))}), "a", "too large"),
    "offsets_three": (_raw({"a": _t(offsets=(0, 4, 8))}, b"\0" * 8), "a", "two integers"),
    "offsets_float": (_raw({"a": _t(offsets=(0, 8.0))}, b"\0" * 8), "a", "two integers"),
    "begin_after_end": (_raw({"a": _t(shape=(0,), offsets=(8, 0))}, b"\0" * 8), "a", "begin <= end"),
    "negative_begin": (_raw({"a": _t(offsets=(-8, 0))}, b"\0" * 8), "a", "begin <= end"),
    "past_data": (_raw({"a": _t(offsets=(4, 12))}, b"\0" * 8), "a", "run past the end of the data"),
    "overlap": (_raw({"a": _t(offsets=(0, 8)), "b": _t(offsets=(4, 12))}, b"\0" * 12), "b", "overlap tensor 'a'"),
    "size_mismatch": (_raw({"a": _t(dtype="F16", shape=(3,), offsets=(0, 8))}, b"\0" * 8), "a", "needs 6 bytes"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("how", ["path", "source"])
def test_rejects(case, how, tmp_path):
    data, tensor, words = BAD[case]
    name = f"bad-{case}.safetensors"
    if how == "path":
        path = tmp_path / name
        path.write_bytes(data)
        source = path
    else:
        source = Source(data, name=name)
    with pytest.raises(SafetensorsError) as e:
        SafetensorsFile(source)
    msg = str(e.value)
    assert "\n" not in msg
    assert name in msg
    assert words in msg
    if tensor is not None:
        assert f"tensor {tensor!r}" in msg


def test_tolerated_oddities(tmp_path):
    """Gaps between tensors, empty tensors inside others' spans, trailing header spaces: all fine."""
    header = {"a": _t(offsets=(8, 16)), "z": _t(shape=(0, 5), offsets=(12, 12)), "__metadata__": {}}
    h = json.dumps(header).encode() + b"    "
    data = b"\0" * 8 + np.array([1.5, -2], np.float32).tobytes()
    with SafetensorsFile(Source(_raw(h, data))) as f:
        np.testing.assert_array_equal(f.read("a"), [1.5, -2])
        assert f.read("z").shape == (0, 5)
        assert f.metadata == {}


# --- fuzzing -----------------------------------------------------------------------------------------


def _valid_bytes() -> bytes:
    ts = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.arange(4, dtype=np.float16),
        "c": np.arange(3, dtype=np.int64),
        "e": np.zeros((0,), np.float32),
    }
    return safetensors.numpy.save(ts, metadata={"format": "pt"})


VALID = _valid_bytes()
HEADER_END = 8 + struct.unpack("<Q", VALID[:8])[0]

_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, len(VALID) - 1)),
    st.tuples(st.just("bytes"), st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8)),
    # Mutations inside the JSON, where they change meaning rather than just data.
    st.tuples(st.just("header"), st.lists(st.tuples(st.integers(8, HEADER_END - 1), st.sampled_from(b'0123456789-.,:[]{}"e ')), min_size=1, max_size=4)),
    st.tuples(st.just("length"), st.one_of(st.integers(0, 2**64 - 1), st.just(2**62), st.integers(0, HEADER_END + 16))),
    # A field of one entry replaced by an arbitrary JSON value: wrong types, sizes, offsets, dtypes.
    st.tuples(
        st.just("field"),
        st.tuples(
            st.sampled_from(["a", "b", "c", "e", "__metadata__"]),
            st.sampled_from(["dtype", "shape", "data_offsets", "format"]),
            st.recursive(
                st.one_of(
                    st.none(), st.booleans(), st.floats(), st.text(max_size=4),
                    st.integers(-4, 64), st.integers(-(2**70), 2**70), st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL"]),
                ),
                lambda inner: st.lists(inner, max_size=4),
                max_leaves=6,
            ),
        ),
    ),
)


def _apply(m) -> bytes:
    kind, arg = m
    b = bytearray(VALID)
    if kind == "truncate":
        return bytes(b[:arg])
    if kind == "field":
        tensor, field, value = arg
        header = json.loads(VALID[8:HEADER_END])
        header[tensor][field] = value
        h = json.dumps(header).encode()
        return struct.pack("<Q", len(h)) + h + VALID[HEADER_END:]
    if kind == "length":
        b[:8] = struct.pack("<Q", arg)
        return bytes(b)
    for pos, val in arg:
        b[pos] = val
    return bytes(b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=_mutation, via_path=st.booleans())
def test_fuzz_loads_or_raises_safetensors_error(m, via_path):
    data = _apply(m)
    tracemalloc.start()
    try:
        if via_path:
            fd, path = tempfile.mkstemp(suffix=".safetensors")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            source = path
        else:
            source = Source(data)
        try:
            with SafetensorsFile(source) as f:
                for k in f.keys():
                    a = f.read(k)
                    assert a.nbytes == f.info(k)[2]
        except SafetensorsError as e:
            assert "\n" not in str(e)
        finally:
            if via_path:
                os.unlink(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes allocated for a {len(data)}-byte file"
