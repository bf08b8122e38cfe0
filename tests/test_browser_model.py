"""The page's Python half (sdweb.browser) in CPython: BrowserModel over byte sources, and the JSON
entry points the worker calls (plan_json, resolve_json, catalogue_json). The same code runs in
Pyodide; tests/test_page.py drives it there, through the real page.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from sdweb import browser, catalogue, layout
from sdweb.errors import ModelError
from sdweb.model import FolderFiles, ModelFolder
from sdweb.pipeline import Pipeline

TINY = 64  # image side for the tiny models: 8x8 latents


class _Source:
    """A byte source over a file, counting reads: what the worker hands Python, minus the JS."""

    def __init__(self, path: Path):
        self.data = path.read_bytes()
        self.size = len(self.data)
        self.reads = 0

    def read(self, offset, length):
        self.reads += 1
        return self.data[offset:offset + length]


def _browser_inputs(folder: Path):
    texts = {p: (folder / p).read_text() for p in layout.TEXT_FILES if (folder / p).is_file()}
    sources = {p.relative_to(folder).as_posix(): _Source(p) for p in folder.rglob("*.safetensors")}
    return texts, sources


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_browser_model_generates_what_model_folder_does(sd1_tiny, variant):
    from PIL import Image

    texts, sources = _browser_inputs(sd1_tiny)
    model = browser.BrowserModel("test/sd1-tiny", texts, sources)
    assert model.weight_files("unet", variant) == [
        "unet/diffusion_pytorch_model.fp16.safetensors" if variant else "unet/diffusion_pytorch_model.safetensors"]
    pipe = Pipeline(model, precision="fp32", variant=variant)
    events = []
    out = browser.generate(pipe, dict(prompt="a red cube", steps=4, seed=5, width=TINY, height=TINY,
                                      scheduler="euler-a", guidance=7.5, preview_every=2), progress=events.append)
    ref = Pipeline(ModelFolder(sd1_tiny), precision="fp32", variant=variant).generate(
        "a red cube", steps=4, seed=5, width=TINY, height=TINY, scheduler="euler-a", guidance=7.5)
    [image] = out["images"]
    got = np.asarray(Image.open(io.BytesIO(image["png"])).convert("RGB"))
    np.testing.assert_array_equal(got, ref.images[0])
    params = json.loads(Image.open(io.BytesIO(image["png"])).text["sdweb"])
    assert params == image["settings"]
    assert params["seed"] == 5 and params["model"] == "test/sd1-tiny" and params["variant"] == variant
    # weights came through the byte sources, tensor by tensor, never as one whole-file read
    used = [s for p, s in sources.items() if (".fp16." in p) == bool(variant)]
    assert all(s.reads > 1 for s in used) and not any(s.reads for p, s in sources.items() if s not in used)
    stages = [e["stage"] for e in events]
    assert stages.index("text_encoder") < stages.index("unet") < stages.index("vae")
    previews = [e for e in events if "preview" in e]
    assert [e["step"] for e in previews] == [2, 4]  # and the last step's, shown while the VAE decodes
    assert all(e["preview"].startswith(b"\x89PNG") and e["preview_kind"] == "approx" for e in previews)


def test_a_tiny_autoencoder_from_the_store(sd1_tiny, taesd_tiny):
    """The worker's way with TAESD: its files beside the model's, under "<its repo>/", taken apart by
    worker_generate into a BrowserAutoencoder; previews every step are its decodes, and the Fast
    decode's image is the CLI's draft (the pipeline over the folders)."""
    from PIL import Image

    from sdweb.model import AutoencoderFolder

    texts, sources = _browser_inputs(sd1_tiny)
    tiny_sources = {"diffusion_pytorch_model.safetensors": _Source(taesd_tiny / "diffusion_pytorch_model.safetensors")}
    tiny_texts = {"config.json": (taesd_tiny / "config.json").read_text()}
    session = browser.Session()
    pipe = session.pipeline("k", "test/sd1-tiny", texts, sources, browser._backend("numpy"), "fp32", None,
                            tiny=("t1", "madebyollin/taesd", tiny_texts, tiny_sources))
    assert isinstance(pipe.tiny_autoencoder, browser.BrowserAutoencoder)
    assert pipe.tiny_autoencoder.weight_files() == ["diffusion_pytorch_model.safetensors"]
    events = []
    request = dict(prompt="a red cube", steps=3, seed=5, width=TINY, height=TINY, scheduler="ddim", decoder="taesd")
    out = browser.generate(pipe, request, progress=events.append)
    ref = Pipeline(ModelFolder(sd1_tiny), tiny_autoencoder=AutoencoderFolder(taesd_tiny)).generate(
        "a red cube", steps=3, seed=5, width=TINY, height=TINY, scheduler="ddim", decoder="taesd")
    png = out["images"][0]["png"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), ref.images[0])
    previews = [e for e in events if "preview" in e]
    assert [e["step"] for e in previews] == [1, 2, 3] and {e["preview_kind"] for e in previews} == {"taesd"}
    assert Image.open(io.BytesIO(previews[0]["preview"])).size == (TINY, TINY)
    assert out["settings"]["decoder"] == "taesd" and tiny_sources["diffusion_pytorch_model.safetensors"].reads > 1
    # the same tiny autoencoder again: kept; another: swapped in, the model kept
    assert session.pipeline("k", "test/sd1-tiny", texts, sources, browser._backend("numpy"), "fp32", None,
                            tiny=("t1", "x", {}, {})) is pipe
    with pytest.raises(ModelError, match="x/y has no config.json: not a tiny autoencoder"):
        session.pipeline("k", "test/sd1-tiny", texts, sources, browser._backend("numpy"), "fp32", None,
                         tiny=("t2", "x/y", {}, {}))


def test_resolve_json_names_the_tiny_autoencoder_to_fetch():
    def resolve(request, **job):
        return json.loads(browser.resolve_json(json.dumps(dict(job, request=request)), None))

    form = {"model": "test/sd1-tiny", "steps": 10}
    r = resolve(form, taesd=False)
    assert (r["settings"]["preview"], r["settings"]["preview_every"], r["tiny"]) == ("approx", 1, None)
    r = resolve(form, taesd=True)  # stored: previews by it, every step
    assert (r["settings"]["preview"], r["settings"]["preview_every"], r["tiny"]) == ("taesd", 1, "madebyollin/taesd")
    r = resolve(dict(form, decoder="taesd"), taesd=False)  # the Fast decode: fetched on first use
    assert (r["settings"]["preview"], r["tiny"]) == ("taesd", "madebyollin/taesd")
    r = resolve(dict(form, preview="approx", decoder="me/tiny"), taesd=True)
    assert r["tiny"] == "me/tiny"
    r = resolve(dict(form, decoder="/home/me/taesd"), taesd=True)
    assert r["error"] == "ConfigError" and r["field"] == "decoder" and "Hub repo id" in r["message"]


def test_a_lazy_model_reads_only_the_heads_the_worker_handed_over(sd1_tiny):
    """On WebGPU a store is lazy: opening it reads each file's 8-byte length and JSON header and
    nothing else, so with those bytes handed over as the source's `head` no read reaches the
    source (which, without JSPI, could not be waited for)."""
    texts, sources = _browser_inputs(sd1_tiny)
    for s in sources.values():
        s.head = s.data[:8 + int.from_bytes(s.data[:8], "little")]
    model = browser.BrowserModel("test/sd1-tiny", texts, sources, lazy=True)
    for component in layout.WEIGHT_COMPONENTS:
        store = model.weights(component, "fp16", "fp16")
        name = store.keys()[0]
        ref = store.prefix("").get(name, store.shape(name))
        assert ref.nbytes > 0 and ref.source.key is None  # a place in the file, not its bytes
        store.close()
    assert not any(s.reads for s in sources.values())
    # without a head the same reads go to the source
    for s in sources.values():
        del s.head
    model.weights("unet", "fp16", "fp16").close()
    assert sources["unet/diffusion_pytorch_model.fp16.safetensors"].reads == 2


def test_browser_model_refuses_what_is_not_sd(sd1_tiny):
    texts, sources = _browser_inputs(sd1_tiny)
    with pytest.raises(ModelError, match="model_index.json"):
        browser.BrowserModel("x/y", {k: v for k, v in texts.items() if k != "model_index.json"}, sources)
    index = json.loads(texts["model_index.json"])
    index["unet"] = ["diffusers", "UNet2DModel"]
    with pytest.raises(ModelError, match="UNet2DModel"):
        browser.BrowserModel("x/y", dict(texts, **{"model_index.json": json.dumps(index)}), sources)
    model = browser.BrowserModel("x/y", texts, {p: s for p, s in sources.items() if not p.startswith("vae/")})
    with pytest.raises(ModelError, match=r"x/y: vae/ has no \.safetensors weights"):
        model.weight_files("vae")


def plan_like_the_page(folder: Path, repo: str, variant, listed: bool):
    """Call plan_json round by round, answering its questions from `folder` as web/hub.js does."""
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    known = {"repo": repo, "variant": variant, "listed": sorted(on_disk) if listed else None,
             "present": [], "absent": [], "texts": {}}
    for _ in range(20):
        step = json.loads(browser.plan_json(json.dumps(known)))
        if "need" not in step:
            return step
        for n in step["need"]:
            assert n["kind"] == layout.kind_of(n["path"])
            if n["path"] not in on_disk:
                known["absent"].append(n["path"])
            elif n["read"]:
                known["texts"][n["path"]] = (folder / n["path"]).read_text()
            else:
                known["present"].append(n["path"])
    raise AssertionError("planning does not converge")


@pytest.mark.parametrize("listed", [True, False])
def test_plan_json_plans_what_the_folder_reads(sd1_tiny, sd2_tiny, listed):
    for folder, variant in ((sd1_tiny, "fp16"), (sd2_tiny, "fp16"), (sd1_tiny, "plain")):
        step = plan_like_the_page(folder, "test/x", variant, listed)
        want = layout.plan(FolderFiles(folder), layout.variant_of(variant), "test/x")
        assert [f["path"] for f in step["files"]] == want.files
        assert {f["kind"] for f in step["files"] if f["path"].endswith(".safetensors")} == {"weights"}
        assert step["notes"] == list(want.notes)
        assert (step["notes"] != []) == (folder == sd2_tiny)  # sd2-tiny has no .fp16 files


def test_plan_json_explains_a_repo_that_cannot_run(tmp_path, sd1_tiny):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"]}))
    step = plan_like_the_page(tmp_path, "test/clip-only", "fp16", listed=False)
    assert step["error"] == "ModelError" and step["message"].startswith(
        "test/clip-only has no model_index.json, so it is not a diffusers pipeline, and its config.json describes a "
        "CLIPTextModel, not a tiny autoencoder")
    step = json.loads(browser.plan_json(json.dumps({"repo": "x/y", "variant": "../", "listed": []})))
    assert step["error"] == "ConfigError" and step["field"] == "variant"


def test_resolve_json_checks_the_form_before_and_after_the_configs(sd1_tiny):
    def resolve(request, texts=None, **job):
        return json.loads(browser.resolve_json(json.dumps(dict(job, request=request)), texts))

    form = {"model": "test/sd1-tiny", "prompt": "a cube", "steps": 4, "seed": 9, "variant": "fp16", "backend": "auto"}
    r = resolve(dict(form, model=""), webgpu=[True, ""])  # nothing typed: the catalogue's default model
    assert r["settings"]["model"] == next(m["repo"] for m in catalogue.models() if m.get("default"))
    r = resolve(dict(form, model="not a repo id"), webgpu=[True, ""])
    assert r["error"] == "ConfigError" and r["field"] == "model" and "owner/name" in r["message"]
    r = resolve(dict(form, steps=0), webgpu=[True, ""])
    assert r["field"] == "steps"
    r = resolve(form, webgpu=[False, "no navigator.gpu"])
    s = r["settings"]
    assert s["backend"] == "numpy" and s["precision"] is None and s["width"] is None and r["notes"] == []
    texts, _ = _browser_inputs(sd1_tiny)
    info = ModelFolder(sd1_tiny)
    r = resolve(s, texts, weight_bytes=info.weight_bytes("fp16"))
    want = Pipeline(info).info
    assert (r["settings"]["width"], r["settings"]["scheduler"]) == (want.default_size, want.default_scheduler)
    assert r["settings"]["precision"] == "fp32"  # a tiny model on NumPy: upcast once
    r = resolve(dict(s, width=100), texts, weight_bytes=1)
    assert r["field"] == "width" and f"multiple of {want.size_multiple}" in r["message"]
    r = resolve(dict(s, backend="webgpu"), webgpu=[False, "this browser lacks JSPI"])
    assert r["notes"] == ["WebGPU is not available here (this browser lacks JSPI); falling back to the NumPy backend"]
    r = resolve(s, dict(texts, **{"unet/config.json": "{"}))
    assert r["error"] == "ModelError" and "test/sd1-tiny/unet/config.json is not valid JSON" in r["message"]


def test_catalogue_json_is_the_catalogue():
    assert json.loads(browser.catalogue_json()) == catalogue.load()
    assert sum(bool(m.get("default")) for m in catalogue.models()) == 1
    # presets name known models and settings resolve() takes
    for p in catalogue.presets():
        assert catalogue.find(p["model"]) is not None, p["label"]
        from sdweb.settings import resolve

        resolve(dict(p["settings"], model=p["model"], loras=[{"name": lo["name"], "scale": lo["scale"]}
                                                             for lo in p["loras"]]))

def test_resolve_json_holds_the_page_to_its_batch_limit():
    from sdweb.settings import MAX_PAGE_IMAGES

    ok = json.loads(browser.resolve_json(json.dumps({"request": {"num_images": MAX_PAGE_IMAGES}})))
    assert ok["settings"]["num_images"] == MAX_PAGE_IMAGES
    r = json.loads(browser.resolve_json(json.dumps({"request": {"num_images": MAX_PAGE_IMAGES + 1}})))
    assert r["error"] == "ConfigError" and r["field"] == "num_images" and f"1 to {MAX_PAGE_IMAGES}" in r["message"]


def test_a_batch_gives_each_image_its_seed_and_settings(sd1_tiny):
    """Image k of a batch is the image its own settings (seed + k, one image) make alone, and its PNG says so."""
    from PIL import Image

    texts, sources = _browser_inputs(sd1_tiny)
    pipe = Pipeline(browser.BrowserModel("test/sd1-tiny", texts, sources), keep_loaded=True)
    out = browser.generate(pipe, dict(prompt="a red cube", steps=2, seed=40, width=TINY, height=TINY, num_images=3))
    assert [i["seed"] for i in out["images"]] == [40, 41, 42]
    third = out["images"][2]
    assert json.loads(Image.open(io.BytesIO(third["png"])).text["sdweb"]) == third["settings"]
    assert third["settings"]["num_images"] == 1
    alone = browser.generate(pipe, third["settings"])["images"][0]
    a, b = (np.asarray(Image.open(io.BytesIO(x["png"])).convert("RGB"), dtype=np.float64) for x in (third, alone))
    assert np.abs(a - b).max() <= 1  # batched and single matmuls may round differently in the last bit


def test_png_settings_json_reads_what_the_page_writes_and_names_a_bad_file(sd1_tiny):
    texts, sources = _browser_inputs(sd1_tiny)
    pipe = Pipeline(browser.BrowserModel("test/sd1-tiny", texts, sources))
    image = browser.generate(pipe, dict(prompt="a red cube", negative_prompt="fog", steps=1, seed=9, width=TINY,
                                        height=TINY, scheduler="dpm++2m-karras"))["images"][0]
    r = json.loads(browser.png_settings_json(image["png"]))
    assert r["source"] == "sdweb" and r["notes"] == []
    assert r["request"] == {k: v for k, v in image["settings"].items()
                            if k not in ("backend", "preview_every", "preview") and v is not None}
    r = json.loads(browser.png_settings_json(b"GIF89a not a png"))
    assert r["error"] == "ConfigError" and "not a PNG" in r["message"]


def test_a_run_from_an_image_reads_its_inputs_as_the_cli_does(sd1_tiny):
    """The page hands Python the input files' bytes; inputs_json gives the records the settings carry
    (the same as reading the files from disk), and generate makes what Pipeline.generate makes."""
    from PIL import Image

    from sdweb import picture

    photo = Path(__file__).resolve().parent / "data" / "images" / "chelsea.jpg"
    mask = np.zeros((96, 144), np.uint8)
    mask[10:60, 70:140] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    inputs = {"image": photo.read_bytes(), "image_name": "chelsea.jpg", "mask": buf.getvalue(), "mask_name": "mask.png"}
    records = json.loads(browser.inputs_json(inputs))
    assert records["image"] == picture.read(photo).record()
    assert records["mask"]["name"] == "mask.png" and records["mask"]["width"] == 144
    assert json.loads(browser.inputs_json({"image": photo.read_bytes()}))["mask"] is None
    bad = json.loads(browser.inputs_json({"image": b"GIF89a-not-really", "image_name": "x.gif"}))
    assert bad["error"] == "ConfigError" and bad["field"] == "image" and "x.gif" in bad["message"]

    texts, sources = _browser_inputs(sd1_tiny)
    pipe = Pipeline(browser.BrowserModel("test/sd1-tiny", texts, sources))
    r = json.loads(browser.resolve_json(json.dumps({"request": dict(records, model="test/sd1-tiny", prompt="a cat",
                                                                    steps=3, seed=2)}),
                                        texts))
    image, mask = browser.read_inputs(inputs)
    out = browser.generate(pipe, r["settings"], image=image, mask=mask)
    want = Pipeline(ModelFolder(sd1_tiny)).generate("a cat", steps=3, seed=2, image=picture.read(photo),
                                                     mask=picture.read(buf.getvalue(), "mask.png", "mask"))
    png = out["images"][0]["png"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), want.images[0])
    assert out["settings"]["image"] == records["image"] and out["settings"]["strength"] == 1.0
    assert json.loads(Image.open(io.BytesIO(png)).text["sdweb"])["mask"] == records["mask"]


def test_needed_and_stored_add_ons(sd1_tiny, tmp_path):
    """needed_json names the LoRAs (the panel's and the prompt's tags) and embeddings a run asks for;
    a StoredLibrary of those files gives worker_generate's pipeline what a FolderLibrary of the same
    files gives the CLI's, and names a missing one in words."""
    import torch

    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=torch.Generator().manual_seed(1)) * 0.05}},
               tmp_path / "emb-one.pt")
    settings = {"prompt": "a cat by emb-one <lora:style:0.5> <lora:style:0.2>", "loras": [{"name": "other", "scale": 1}],
                "embeddings": ["emb-one"]}
    assert json.loads(browser.needed_json(json.dumps(settings))) == {"lora": ["other", "style"], "embedding": ["emb-one"]}
    r = json.loads(browser.needed_json(json.dumps({"prompt": "<hypernet:x:1>"})))
    assert r["error"] == "ConfigError" and r["field"] == "prompt" and "<hypernet:x:1>" in r["message"]

    texts, sources = _browser_inputs(sd1_tiny)
    pipe = Pipeline(browser.BrowserModel("test/sd1-tiny", texts, sources))
    emb = {"kind": "embedding", "name": "emb-one", "fileName": "emb-one.pt", "version": 1,
           "bytes": (tmp_path / "emb-one.pt").read_bytes()}
    pipe.library = browser.StoredLibrary([emb])
    run = dict(prompt="a cat by emb-one", steps=2, seed=3, width=TINY, height=TINY, embeddings=["emb-one"])
    got = pipe.generate(**run).images[0]
    want = Pipeline(ModelFolder(sd1_tiny)).generate(**dict(run, embeddings=[str(tmp_path / "emb-one.pt")])).images[0]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(Exception, match="LoRA 'style' is not stored in this browser: add its file in the LoRAs panel"):
        pipe.generate(**dict(run, prompt="a cat <lora:style:1>"))


def test_count_json_is_the_chunkers_count(sd1_tiny, tmp_path):
    import torch

    torch.save({"string_to_param": {"*": torch.zeros(3, 32)}}, tmp_path / "emb-three.pt")
    texts, _ = _browser_inputs(sd1_tiny)
    files = [{"kind": "embedding", "name": "emb-three", "fileName": "emb-three.pt", "version": 1,
              "bytes": (tmp_path / "emb-three.pt").read_bytes()}]
    job = {"key": "test|sd1|count", "prompt": "cat " * 80 + "emb-three", "negative_prompt": "", "embeddings": ["emb-three"]}
    r = json.loads(browser.count_json(json.dumps(job), texts, files))
    assert r == {"prompt": {"chunks": 2, "tokens": 8, "count": 83}, "negative_prompt": {"chunks": 1, "tokens": 0, "count": 0}}
    # the tokenizer is kept by the model's key: no texts needed the second time
    r = json.loads(browser.count_json(json.dumps(dict(job, prompt="a (b:1.2) BREAK c")), None, files))
    assert r["prompt"] == {"chunks": 2, "tokens": 1, "count": 76}
    r = json.loads(browser.count_json(json.dumps(dict(job, prompt="(a:1.2.3)")), None, files))
    assert r["error"] == "ConfigError" and r["field"] == "prompt" and "'1.2.3'" in r["message"]
