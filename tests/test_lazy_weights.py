"""Lazy weights: `WeightStore(..., lazy=True)` hands out WeightRef (where a tensor's bytes are) and
`webgpu.weight(ref)` has the device bridge copy them from the file straight into the GPU buffer
(`upload_span`), converting on the GPU (shaders/convert.wgsl) when the file's dtype is not the held
precision. This is how the browser keeps weight bytes out of the wasm heap.

The claims tested, on lavapipe through the CPython bridge: the conversion kernel rounds exactly as
torch does (IEEE f16 and bf16, round to nearest even; widening exact) over every 16-bit pattern and
hard f32 cases; lazy uploads leave the GPU holding byte for byte what the eager path uploads, for
every file dtype x held precision, tensors at odd byte offsets and of odd sizes, conversions split
into many pieces, files opened by path (mmap) or over a byte source; every tensor's bytes travel
through upload_span and nowhere else; a bridge without upload_span gets the same weights by the
host path; the store's shape, missing, unused and use-once checks are the eager store's; and whole
tiny-model pipelines on the lazy path match the NumPy backend (PSNR >= 40 dB)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from sdweb import browser, layout
from sdweb.backends import numpy as nb
from sdweb.errors import WeightError
from sdweb.pipeline import Pipeline
from sdweb.safetensors import SafetensorsFile
from sdweb.weights import WeightRef, WeightStore

webgpu = pytest.importorskip("sdweb.backends.webgpu", reason="the WebGPU backend needs the wgpu package")
if not webgpu.available():
    pytest.skip("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)", allow_module_level=True)

_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "U8": np.uint8}


def write_safetensors(path, tensors: dict) -> None:
    """A .safetensors file with tensors laid out in the given order, with no alignment padding, so a
    tensor after an odd-sized one starts at an odd offset (our reader and the format allow it; the
    `safetensors` package orders by dtype size and so never makes one). tensors: name -> (dtype,
    shape, raw little-endian bytes)."""
    header, blobs, pos = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


class MemSource:
    """A byte source over bytes (what the browser hands Python, minus the JS), logging its reads."""

    def __init__(self, data: bytes, name="mem"):
        self.data, self.size, self.name = data, len(data), name
        self.reads = []

    def read(self, offset, length):
        self.reads.append((offset, length))
        return self.data[offset:offset + length]


class SpyBridge:
    """The real bridge, with upload_span calls logged."""

    def __init__(self, real):
        self.real = real
        self.spans = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def upload_span(self, bid, source, offset, nbytes):
        self.spans.append((offset, nbytes))
        self.real.upload_span(bid, source, offset, nbytes)


class HostOnlyBridge:
    """The real bridge without upload_span: weights must take the host path."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        if name == "upload_span":
            raise AttributeError(name)
        return getattr(self.real, name)


@pytest.fixture
def spy(monkeypatch):
    """The backend's context with its bridge wrapped in a SpyBridge (pipelines stay compiled)."""
    ctx = webgpu.context()
    s = SpyBridge(ctx.bridge)
    monkeypatch.setattr(ctx, "bridge", s)
    return s


def gpu_bytes(w) -> bytes:
    ctx = webgpu.context()
    return bytes(ctx.bridge.read_buffer(w.buffer, 0, w.nbytes))


def _hard_f32() -> np.ndarray:
    """Random values over the whole f32 range plus the cases rounding gets wrong: ties to even both
    ways for f16 and bf16, just-under/over ties, overflow to inf, f16 subnormals and their ties,
    f32 subnormals, signed zeros, infinities and NaNs."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)  # every exponent
    x = rng.standard_normal(5000).astype(np.float32) * np.logspace(-9, 6, 5000, dtype=np.float32)
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F807FFF, 0x3F808001,  # bf16
                     0x3F801000, 0x3F803000, 0x3F800FFF, 0x3F801001,  # f16 normal ties
                     0x33800000, 0x33C00000, 0x34200000, 0x387FE000, 0x387FF000, 0x38000000,  # f16 subnormal edges
                     0x33000000, 0x33000001, 0x32FFFFFF,  # half the smallest f16 subnormal
                     0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000,  # 65504, just under/at the tie to inf
                     0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x80000001, 0x007FFFFF,
                     0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001],
                    np.uint32)
    return np.concatenate([wide, x.view(np.uint32), ties]).view(np.float32)


def _torch_ref(bits: np.ndarray, src: str, dst: str) -> np.ndarray:
    """torch's conversion of the source bit patterns -> destination bit patterns (uint16 / uint32)."""
    t = {"F32": lambda: torch.from_numpy(bits.view(np.float32).copy()),
         "F16": lambda: torch.from_numpy(bits.view(np.float16).copy()),
         "BF16": lambda: torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)}[src]()
    out = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dst]
    r = t.to(out)
    if dst == "fp32":
        return r.numpy().view(np.uint32)
    return r.view(torch.int16).numpy().view(np.uint16)


def _nan16(bits: np.ndarray, kind: str) -> np.ndarray:
    """NaN mask of f16 (kind fp16) or bf16 bit patterns."""
    if kind == "fp16":
        return ((bits >> 10) & 0x1F == 0x1F) & (bits & 0x3FF != 0)
    return ((bits >> 7) & 0xFF == 0xFF) & (bits & 0x7F != 0)


CONVERSIONS = [("F32", "fp16"), ("F32", "bf16"), ("F16", "fp32"), ("F16", "bf16"), ("BF16", "fp32"), ("BF16", "fp16")]


@pytest.mark.parametrize("src,dst", CONVERSIONS, ids=[f"{s}-{d}" for s, d in CONVERSIONS])
def test_convert_kernel_rounds_like_torch(tmp_path, spy, monkeypatch, src, dst):
    if src == "F32":
        bits = _hard_f32().view(np.uint32)
    else:  # every 16-bit pattern, an odd count so the last u32 holds one element
        bits = np.arange(65535, dtype=np.uint16)
    raw = bits.tobytes()
    path = tmp_path / "w.safetensors"
    # a 3-byte tensor first: the weight starts at an odd offset in the file
    write_safetensors(path, {"pad": ("U8", (3,), b"\x01\x02\x03"), "w": (src, (bits.size,), raw)})
    monkeypatch.setattr(webgpu.upload, "CONVERT_PIECE", 1 << 16)  # several pieces per tensor
    f = SafetensorsFile(path)
    ref = WeightStore([f], "t", dst, lazy=True).get("w", (bits.size,))
    assert isinstance(ref, WeightRef) and ref.offset % 2 == 1
    w = webgpu.weight(ref)
    assert w.dtype == {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}[dst]
    got = np.frombuffer(gpu_bytes(w), np.uint32 if dst == "fp32" else np.uint16)[:bits.size]
    want = _torch_ref(bits, src, dst)
    nan_w = np.isnan(want.view(np.float32)) if dst == "fp32" else _nan16(want, dst)
    nan_g = np.isnan(got.view(np.float32)) if dst == "fp32" else _nan16(got, dst)
    np.testing.assert_array_equal(nan_g, nan_w)  # NaN payloads may differ (hardware quiets them)
    bad = np.flatnonzero((got != want) & ~nan_w)
    assert bad.size == 0, [(hex(bits[i]), hex(got[i]), hex(want[i])) for i in bad[:8]]
    # every byte went through upload_span, in pieces of at most CONVERT_PIECE
    assert sum(n for _, n in spy.spans) == len(raw) and len(spy.spans) > 1
    f.close()


def _mixed_file(path):
    """Odd sizes at odd offsets in every float dtype, an empty tensor, an integer one."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(105) * 4).astype(np.float32)
    y = (rng.standard_normal(64) * 1e-3).astype(np.float32)
    bf = (torch.from_numpy(x).bfloat16().view(torch.int16).numpy()).tobytes()
    tensors = {
        "odd": ("U8", (5,), bytes(range(5))),
        "a.f32": ("F32", (3, 5, 7), x.tobytes()),
        "a.f16": ("F16", (3, 5, 7), x.astype(np.float16).tobytes()),
        "b.f16": ("F16", (8, 8), y.astype(np.float16).tobytes()),
        "a.bf16": ("BF16", (105,), bf),
        "b.f32": ("F32", (64,), y.tobytes()),
        "empty": ("F32", (0, 4), b""),
        "ids": ("I64", (1, 7), np.arange(7, dtype=np.int64).tobytes()),
    }
    write_safetensors(path, tensors)
    return {k: v[1] for k, v in tensors.items() if k != "odd"}


@pytest.mark.parametrize("opened", ["path", "source"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_lazy_uploads_equal_eager_ones(tmp_path, spy, monkeypatch, opened, precision):
    path = tmp_path / "m.safetensors"
    shapes = _mixed_file(path)
    monkeypatch.setattr(webgpu.upload, "CONVERT_PIECE", 64)  # a conversion in many pieces, the last one odd
    src = MemSource(path.read_bytes())
    f = SafetensorsFile(path) if opened == "path" else SafetensorsFile(src)
    eager = WeightStore([f], "t", precision)
    lazy = WeightStore([f], "t", precision, lazy=True)
    header_reads = list(src.reads)
    eager.skip("odd"), lazy.skip("odd")
    spans = 0
    for name, shape in shapes.items():
        a = webgpu.weight(eager.get(name, shape))
        del spy.spans[:]
        src.reads.clear()
        ref = lazy.get(name, shape)
        assert isinstance(ref, WeightRef) and ref.shape == shape
        w = webgpu.weight(ref)
        assert (w.shape, w.dtype, w.nbytes) == (a.shape, a.dtype, a.nbytes), name
        assert gpu_bytes(w) == gpu_bytes(a), name
        if name in ("empty", "ids"):
            assert spy.spans == []  # the host path: nothing to gain for these
            continue
        assert sum(n for _, n in spy.spans) == ref.nbytes and spy.spans[0][0] == ref.offset
        if opened == "source":  # the source was read for this tensor's span and nothing else
            assert sorted(src.reads) == sorted(spy.spans)
        spans += 1
    assert spans == 5
    if opened == "source":  # opening read the header only
        assert header_reads and all(o + n <= f.data_start for o, n in header_reads)
    assert lazy.nbytes_held == eager.nbytes_held
    eager.finish(), lazy.finish()


def test_a_bridge_without_upload_span_gets_the_same_weights_by_the_host_path(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    shapes = _mixed_file(path)
    f = SafetensorsFile(path)
    direct = [webgpu.weight(WeightStore([f], "t", "fp16", lazy=True).get(n, s)) for n, s in shapes.items()]
    ctx = webgpu.context()
    monkeypatch.setattr(ctx, "bridge", HostOnlyBridge(ctx.bridge))
    host = [webgpu.weight(WeightStore([f], "t", "fp16", lazy=True).get(n, s)) for n, s in shapes.items()]
    assert [gpu_bytes(w) for w in host] == [gpu_bytes(w) for w in direct]


def test_lazy_store_checks_like_the_eager_one(tmp_path):
    path = tmp_path / "m.safetensors"
    shapes = _mixed_file(path)
    messages = []
    for lazy in (False, True):
        s = WeightStore([SafetensorsFile(path)], "unet", "fp16", lazy=lazy)
        s.get("a.f32", (105,))  # wrong shape
        s.get("nope.weight", (2, 3))  # missing
        p = s.get("b.f16", shapes["b.f16"])
        with pytest.raises(WeightError, match="b.f16 was asked for twice"):
            s.get("b.f16", shapes["b.f16"])
        assert isinstance(p, WeightRef) == lazy
        with pytest.raises(WeightError) as e:
            s.finish()
        messages.append((str(e.value), s.nbytes_held))
    assert messages[0] == messages[1]
    assert "a.f32 has shape [3, 5, 7] but the config needs [105]" in messages[0][0]
    # placeholders are refs too, and upload as zeros
    s = WeightStore([SafetensorsFile(path)], "unet", "bf16", lazy=True)
    ph = s.get("nope", (3, 3))
    assert ph.source is None and not ph.read().any() and ph.read().dtype == np.uint16
    assert gpu_bytes(webgpu.weight(ph)) == bytes(20)


CASES = [  # fixture, variant, held precision: each file dtype converted on the GPU once
    ("sd1_tiny", "fp16", "fp32", "euler"),  # F16 files held fp32
    ("sd2_tiny", None, "fp16", "ddim"),  # F32 files held fp16
    ("nomid_tiny", None, "bf16", "dpm++2m"),  # F32 files held bf16
    ("sd1_tiny", "fp16", "fp16", "euler-a"),  # F16 files held fp16: straight copies
]


@pytest.mark.parametrize("fixture,variant,precision,scheduler", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_pipelines_on_the_lazy_path_match_numpy(request, spy, fixture, variant, precision, scheduler):
    folder = request.getfixturevalue(fixture)
    texts = {p: (folder / p).read_text() for p in layout.TEXT_FILES if (folder / p).is_file()}
    sources = {p.relative_to(folder).as_posix(): MemSource(p.read_bytes(), p.name) for p in folder.rglob("*.safetensors")}
    args = dict(steps=2, seed=7, width=64, height=64, scheduler=scheduler)
    model = browser.BrowserModel(fixture, texts, sources, lazy=True)
    pipe = Pipeline(model, webgpu, precision=precision, variant=variant)
    got = pipe.generate("a red cube", **args)
    ref = Pipeline(browser.BrowserModel(fixture, texts, sources), nb, precision=precision,
                   variant=variant).generate("a red cube", **args)
    mse = np.mean((got.images.astype(np.float64) - ref.images.astype(np.float64)) ** 2)
    assert mse == 0 or 10 * np.log10(255.0**2 / mse) >= 40
    # every tensor the model uses came through upload_span, each as its own span of the file (the
    # tensors are smaller than CONVERT_PIECE), and together they are every weight byte the model holds
    spans = {}
    for c in layout.WEIGHT_COMPONENTS:
        for p in model.weight_files(c, variant):
            f = SafetensorsFile(sources[p])
            for n in f.keys():
                _, _, begin, end = f._entry(n)
                spans[(f.data_start + begin, end - begin)] = f.info(n)[0]
    assert set(spy.spans) <= set(spans) and len(set(spy.spans)) == len(spy.spans)
    file_item = {"F32": 4, "F16": 2, "BF16": 2}[spans[spy.spans[0]]]
    held_item = {"fp32": 4, "fp16": 2, "bf16": 2}[precision]
    assert sum(n for _, n in spy.spans) * held_item == sum(pipe.weight_bytes.values()) * file_item
