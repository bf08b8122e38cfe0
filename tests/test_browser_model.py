"""The page's Python half (sdweb.browser) in CPython: BrowserModel over byte sources. The same code
runs in Pyodide; tests/test_page.py drives it there, through the real page.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

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
    from sdweb import browser

    texts = {p: (folder / p).read_text() for p in browser.CONFIG_FILES + browser.OPTIONAL_FILES if (folder / p).is_file()}
    sources = {p.relative_to(folder).as_posix(): _Source(p) for p in folder.rglob("*.safetensors")}
    return texts, sources


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_browser_model_generates_what_model_folder_does(sd1_tiny, variant):
    from sdweb import browser
    from sdweb.model import ModelFolder
    from sdweb.pipeline import Pipeline
    from PIL import Image

    texts, sources = _browser_inputs(sd1_tiny)
    model = browser.BrowserModel("test/sd1-tiny", texts, sources)
    assert model.weight_files("unet", variant) == [
        "unet/diffusion_pytorch_model.fp16.safetensors" if variant else "unet/diffusion_pytorch_model.safetensors"]
    pipe = Pipeline(model, precision="fp32", variant=variant)
    events = []
    out = browser.generate(pipe, dict(prompt="a red cube", steps=4, seed=5, width=TINY, height=TINY,
                                      scheduler="euler-a", guidance=7.5), progress=events.append, preview_every=2)
    ref = Pipeline(ModelFolder(sd1_tiny), precision="fp32", variant=variant).generate(
        "a red cube", steps=4, seed=5, width=TINY, height=TINY, scheduler="euler-a", guidance=7.5)
    got = np.asarray(Image.open(io.BytesIO(out["png"])).convert("RGB"))
    np.testing.assert_array_equal(got, ref.images[0])
    assert json.loads(Image.open(io.BytesIO(out["png"])).text["parameters"])["seed"] == 5
    # weights came through the byte sources, tensor by tensor, never as one whole-file read
    used = [s for p, s in sources.items() if (".fp16." in p) == bool(variant)]
    assert all(s.reads > 1 for s in used) and not any(s.reads for p, s in sources.items() if s not in used)
    stages = [e["stage"] for e in events]
    assert stages.index("text_encoder") < stages.index("unet") < stages.index("vae")
    previews = [e for e in events if "preview" in e]
    assert previews and all(e["preview"].startswith(b"\x89PNG") for e in previews)


def test_browser_model_refuses_what_is_not_sd(sd1_tiny):
    from sdweb import browser
    from sdweb.errors import ModelError

    texts, sources = _browser_inputs(sd1_tiny)
    with pytest.raises(ModelError, match="model_index.json"):
        browser.BrowserModel("x/y", {k: v for k, v in texts.items() if k != "model_index.json"}, sources)
    index = json.loads(texts["model_index.json"])
    del index["unet"]
    with pytest.raises(ModelError, match="without unet"):
        browser.check_model_index(json.dumps(index), "x/y")
    index = json.loads(texts["model_index.json"])
    index["unet"] = ["diffusers", "UNet2DModel"]
    with pytest.raises(ModelError, match="UNet2DModel"):
        browser.check_model_index(json.dumps(index), "x/y")
    with pytest.raises(ModelError, match="not valid JSON"):
        browser.check_model_index("{", "x/y")
    model = browser.BrowserModel("x/y", texts, {p: s for p, s in sources.items() if not p.startswith("vae/")})
    with pytest.raises(ModelError, match="no vae weights"):
        model.weight_files("vae")


def test_weight_candidates_prefer_the_variant():
    from sdweb import browser

    c = browser.weight_candidates("unet", "fp16")
    assert c[:2] == ["unet/diffusion_pytorch_model.fp16.safetensors",
                     "unet/diffusion_pytorch_model.safetensors.index.fp16.json"]
    assert c.index("unet/diffusion_pytorch_model.fp16.safetensors") < c.index("unet/diffusion_pytorch_model.safetensors")
    assert browser.weight_candidates("vae", None)[0] == "vae/diffusion_pytorch_model.safetensors"
