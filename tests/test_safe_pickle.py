"""The restricted torch-file reader (sdweb.safe_pickle) against torch.load, and against files that would
run code. Every file here is written by torch.save (or pickle, for the hostile ones)."""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from sdweb import safe_pickle
from sdweb.errors import TorchFileError

torch = pytest.importorskip("torch")


def as_numpy(x):
    """torch.load's result in the form safe_pickle returns (bf16 -> float32, OrderedDict -> dict)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if isinstance(x, dict):
        return {k: as_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(as_numpy(v) for v in x)
    return x


def assert_same(ours, ref, path="obj"):
    if isinstance(ref, np.ndarray):
        assert isinstance(ours, np.ndarray), path
        assert ours.dtype == ref.dtype and ours.shape == ref.shape, (path, ours.dtype, ref.dtype, ours.shape, ref.shape)
        assert ours.flags.c_contiguous and ours.flags.writeable, path
        np.testing.assert_array_equal(ours, ref, err_msg=path)
    elif isinstance(ref, dict):
        assert isinstance(ours, dict) and list(ours) == list(ref), path
        for k in ref:
            assert_same(ours[k], ref[k], f"{path}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), path
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert type(ours) is type(ref) and ours == ref, path


def sample():
    """Tensors of every storage dtype, views into shared storages, parameters, a module's state dict,
    and the plain values an embedding file carries."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    layer = torch.nn.Linear(3, 2)
    return {
        "f32": base,
        "transposed": base.t(),
        "slice": base[1:5:2, 1:],
        "row": base[2],
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "f16": torch.randn(3, 4, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.arange(-3, 5),
        "i32": torch.arange(4, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "param": torch.nn.Parameter(torch.ones(2, 3)),
        "grad": torch.ones(3, requires_grad=True),
        "state_dict": layer.state_dict(),
        "ordered": collections.OrderedDict(b=1, a=[1, 2.5, "x", None, True]),
        "nested": [(1, base[0]), {"k": b"bytes"}],
        "name": "emb", "step": 7, "none": None,
    }


@pytest.mark.parametrize("zip_format", [True, False])
def test_equal_to_torch_load(tmp_path, zip_format):
    path = tmp_path / "sample.pt"
    torch.save(sample(), path, _use_new_zipfile_serialization=zip_format)
    with open(path, "rb") as f:
        assert (f.read(4) == b"PK\x03\x04") == zip_format
    ours = safe_pickle.load(path)
    assert_same(ours, as_numpy(torch.load(path, weights_only=True)))
    assert_same(safe_pickle.load(path.read_bytes(), name="sample.pt"), ours)  # bytes in, same out


def test_shared_storage_is_read_once_per_tensor(tmp_path):
    base = torch.arange(12.0)
    torch.save({"a": base[:6].view(2, 3), "b": base[6:], "c": base}, tmp_path / "v.pt")
    out = safe_pickle.load(tmp_path / "v.pt")
    np.testing.assert_array_equal(out["a"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(out["b"], np.arange(6.0, 12.0))
    assert not np.shares_memory(out["a"], out["c"])  # arrays own their memory


def test_old_a1111_parameter_dict(tmp_path):
    """torch 1.11-era A1111 embeddings pickle string_to_param as an nn.ParameterDict (torch.load with
    weights_only=True refuses it; the trusted reference here is a full torch.load of our own file)."""
    vec = torch.randn(2, 8)
    data = {"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vec)}), "name": "old"}
    torch.save(data, tmp_path / "old.pt")
    ours = safe_pickle.load(tmp_path / "old.pt")
    assert isinstance(ours["string_to_param"], safe_pickle.TorchModule)
    ref = torch.load(tmp_path / "old.pt", weights_only=False)["string_to_param"]["*"]
    np.testing.assert_array_equal(ours["string_to_param"]["_parameters"]["*"], ref.detach().numpy())


def test_big_endian_file(tmp_path):
    """A file written on a big-endian machine: byteorder 'big' and swapped storage bytes."""
    t = torch.randn(3, 2)
    torch.save({"t": t, "i": torch.arange(3)}, tmp_path / "le.pt")
    with zipfile.ZipFile(tmp_path / "le.pt") as src, zipfile.ZipFile(tmp_path / "be.pt", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                dtype = np.float32 if info.filename.endswith("/0") else np.int64
                data = np.frombuffer(data, dtype).byteswap().tobytes()
            dst.writestr(info, data)
    ours = safe_pickle.load(tmp_path / "be.pt")
    assert_same(ours, as_numpy(torch.load(tmp_path / "be.pt", weights_only=True)))
    np.testing.assert_array_equal(ours["t"], t.numpy())


class RunsCode:
    """Unpickling this calls os.system: the attack a .pt file can carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evals:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("attack", [RunsCode, Evals])
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_code_in_the_file_never_runs(tmp_path, attack, how):
    marker = tmp_path / "pwned"
    payload = {"x": attack(marker), "weight": torch.ones(2)}
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(TorchFileError) as e:
        safe_pickle.load(path)
    msg = str(e.value)
    assert "\n" not in msg and "evil.pt" in msg and "refused global" in msg
    assert ("system" in msg) if attack is RunsCode else ("eval" in msg)
    assert not marker.exists()
    # the marker really would appear under torch.load without weights_only: the test can fail
    if how == "torch.save" and attack is RunsCode:
        torch.load(path, weights_only=False)
        assert marker.exists()


def zip_with_pickle(tmp_path, pkl: bytes, storages=None) -> bytes:
    """A torch-style archive holding `pkl` as archive/data.pkl (and raw storages)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return buf.getvalue()


def rebuild_pickle(size, stride, offset=0, numel=4, key="0"):
    """data.pkl text for one tensor, written opcode by opcode (protocol 2, as torch writes it)."""
    def num(x):  # BININT1, or LONG1 for the huge ones
        if x < 256:
            return b"K" + bytes([x])
        raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw

    def tup(xs):
        return b"(" + b"".join(num(x) for x in xs) + b"t"
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
            + b"X" + len(key).to_bytes(4, "little") + key.encode() + b"X\x03\x00\x00\x00cpuK" + bytes([numel])
            + b"tQK" + bytes([offset]) + tup(size) + tup(stride)
            + b"\x89ccollections\nOrderedDict\n)RtR.")


def test_handmade_tensor_pickle_reads(tmp_path):
    storage = {"0": np.arange(4, dtype="<f4").tobytes()}
    np.testing.assert_array_equal(safe_pickle.load(zip_with_pickle(tmp_path, rebuild_pickle((2, 2), (2, 1)), storage)),
                                  [[0, 1], [2, 3]])
    # torch ignores the stride of a size-1 dimension, however large; so do we
    huge = rebuild_pickle((1, 4), (2**70, 1))
    np.testing.assert_array_equal(safe_pickle.load(zip_with_pickle(tmp_path, huge, storage)), [[0, 1, 2, 3]])


@pytest.mark.parametrize("pkl, storages, match", [
    (rebuild_pickle((3, 2), (2, 1)), {"0": bytes(16)}, "runs past its storage"),
    (rebuild_pickle((2, 2), (2, 1), offset=1), {"0": bytes(16)}, "runs past its storage"),
    (rebuild_pickle((4, 4), (0, 1)), {"0": bytes(16)}, "broadcast"),
    (rebuild_pickle((2, 2), (2**70, 1)), {"0": bytes(16)}, "runs past its storage"),
    (rebuild_pickle((0, 2**70), (1, 1)), {"0": bytes(16)}, "cannot be built"),
    (rebuild_pickle((2, 2), (2, 1)), {"0": bytes(8)}, "fewer than its 4 elements"),
    (rebuild_pickle((2, 2), (2, 1)), {}, "missing from the archive"),
    (b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.", {}, "refused global builtins.eval"),
    (b"\x80\x02ctorch\nFloatStorage\n)R.", {}, "not a readable tensor pickle"),  # a dtype tag is not callable
    (b"\x80\x02ctorch\nFloatStorage\n.", {}, "bare storage"),
    (b"\x80\x02X\x01\x00\x00\x00aQ.", {}, "refused persistent id"),
    (b"\x80\x02ctorch.nn.modules.linear\nLinear\n)\x81.", {}, "refused global torch.nn.modules.linear.Linear"),
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R.", {}, "latin1"),
    (b"\x80\x02]\x94(K\x01", {}, "not a readable tensor pickle"),  # truncated
])
def test_bad_files_are_refused_in_one_line(tmp_path, pkl, storages, match):
    with pytest.raises(TorchFileError, match=match) as e:
        safe_pickle.load(zip_with_pickle(tmp_path, pkl, storages), name="bad.pt")
    assert str(e.value).startswith("bad.pt: ") and "\n" not in str(e.value)


def test_not_a_torch_file(tmp_path):
    with pytest.raises(TorchFileError, match="not a PyTorch file"):
        safe_pickle.load(b"GIF89a....", name="x.pt")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model/constants.pkl", b"")
    with pytest.raises(TorchFileError, match="TorchScript"):
        safe_pickle.load(buf.getvalue(), name="x.pt")
    with pytest.raises(TorchFileError, match="cannot open"):
        safe_pickle.load(tmp_path / "missing.pt")
