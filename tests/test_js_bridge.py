"""backends/bridges/js.py (JsDeviceBridge) in CPython, over a stand-in for web/bridge/device.js that
keeps what the real one keeps (buffers, pipelines, bind groups by id) and refuses what the real one
could not do: use a bind group after it was dropped, bind a destroyed buffer, drop work it had not
been sent. The page's end-to-end test (test_page.py) runs the same class against the real device.js.

Claimed and tested: the JS bridge creates exactly the bind groups the counting bridge counts as
misses for the same run (one shared cache, bridges/groups.py), none from the second denoising step
on; a destroyed buffer's groups are dropped in JS and never dispatched again; a full cache sends the
recorded work before its groups go; and driven by the page's async driver (sdweb.browser.drive), a
run reads back only what the driver awaited ahead, once per UNet step, once per encoding of an input
image and once after the decode, so model code never needs to wait for the GPU inside a step (what
lets the page run WebGPU without JavaScript Promise Integration)."""

from __future__ import annotations

import asyncio
import gc
import json

import numpy as np

from sdweb import browser
from sdweb.backends import webgpu
from sdweb.backends.bridges.counting import ADAPTERS, CountingBridge
from sdweb.backends.bridges.js import JsDeviceBridge
from sdweb.model import ModelFolder
from sdweb.pipeline import Pipeline

RUN = dict(steps=3, guidance=7.5, width=64, height=64, scheduler="euler", seed=1)


class FakeDeviceJs:
    """device.js's calls over dicts; `log` records (call, args) in order."""

    def __init__(self):
        self.buffers: dict[int, int] = {}
        self.groups: dict[int, tuple] = {}
        self.pipelines: dict[str, int] = {}
        self.log: list[tuple] = []
        self.pending = 0

    def limits(self):
        return dict(ADAPTERS["desktop"])

    def create_buffer(self, nbytes):
        bid = len(self.log) + 1
        self.buffers[bid] = nbytes
        self.log.append(("create_buffer", bid))
        return bid

    def write_buffer(self, bid, offset, data):
        assert bid in self.buffers and offset + len(data) <= self.buffers[bid]
        self.submit()

    def read_buffer(self, bid, offset, nbytes):
        assert bid in self.buffers
        self.submit()
        return bytes(nbytes)

    def destroy_buffer(self, bid):
        assert not any(bid in g[1][0::3] for g in self.groups.values()), "a live group binds a destroyed buffer"
        del self.buffers[bid]

    def pipeline(self, key, wgsl, entry):
        return self.pipelines.setdefault(key, len(self.pipelines))

    def bind_group(self, pipeline, flat, uniform):
        assert all(b in self.buffers for b in flat[0::3])
        gid = len(self.log) + 1
        self.groups[gid] = (pipeline, list(flat), bytes(uniform))
        self.log.append(("bind_group", gid))
        return gid

    def drop_groups(self, ids):
        self.log.append(("drop_groups", list(ids), self.pending))
        for gid in ids:
            del self.groups[gid]

    def dispatch(self, pipeline, group, x, y, z):
        assert self.groups[group][0] == pipeline, "dispatch of a dropped or foreign bind group"
        self.pending += 1
        self.log.append(("dispatch", group))

    def submit(self):
        self.pending = 0
        self.log.append(("submit",))


def _run(folder, bridge, marks):
    gc.collect()
    with webgpu.using(bridge) as ctx:
        Pipeline(folder, webgpu, precision="fp16").generate(
            "a lighthouse", progress=lambda p: p.stage == "unet" and marks.append(ctx.dispatches), **RUN)
        gc.collect()


def test_same_groups_as_the_counting_bridge(sd1_tiny):
    folder = ModelFolder(sd1_tiny)
    js, marks = FakeDeviceJs(), []
    _run(folder, JsDeviceBridge(js), marks)
    counted, cmarks = CountingBridge("desktop"), []
    _run(folder, counted, cmarks)
    made = [e for e in js.log if e[0] == "bind_group"]
    assert len(made) == counted.bind_group_misses > 0
    assert marks == cmarks and sum(e[0] == "dispatch" for e in js.log) == counted.dispatches
    # from the second UNet step on, every dispatch finds its group
    second = [i for i, e in enumerate(js.log) if e[0] == "dispatch"][marks[1]]
    third = [i for i, e in enumerate(js.log) if e[0] == "dispatch"][marks[2] - 1]
    assert not any(e[0] == "bind_group" for e in js.log[second:third + 1])
    # the run's buffers are all destroyed or pooled; every group left binds a live buffer (checked
    # by destroy_buffer) and the dropped ones were never dispatched again (checked by dispatch)
    assert any(e[0] == "drop_groups" for e in js.log)


def test_a_full_cache_submits_before_dropping(sd1_tiny, monkeypatch):
    js = FakeDeviceJs()
    bridge = JsDeviceBridge(js)
    monkeypatch.setattr(bridge._groups, "max_groups", 40)
    _run(ModelFolder(sd1_tiny), bridge, [])
    resets = [e for e in js.log if e[0] == "drop_groups" and len(e[1]) == 40]
    assert resets and all(pending == 0 for _, _, pending in resets)



class AheadDeviceJs(FakeDeviceJs):
    """device.js as a browser without JSPI leaves it usable: read_buffer answers only the span the
    last read_ahead fetched; any other readback would need Python to wait in the middle of a step."""

    def __init__(self):
        super().__init__()
        self.ahead = None

    def read_ahead(self, bid, offset, nbytes):
        self.submit()
        self.ahead = (bid, offset, nbytes)
        self.log.append(("read_ahead", bid))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def flush(self):
        self.log.append(("flush",))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def read_buffer(self, bid, offset, nbytes):
        assert self.ahead == (bid, offset, nbytes), "a readback the driver did not fetch ahead"
        self.ahead = None
        self.log.append(("read_buffer", bid))
        return bytes(nbytes)


def test_the_async_driver_waits_only_at_readbacks(sd1_tiny):
    js, steps = AheadDeviceJs(), []
    with webgpu.using(JsDeviceBridge(js)) as ctx:
        pipe = Pipeline(ModelFolder(sd1_tiny), webgpu, precision="fp16")
        stages = pipe.stages("a lighthouse", progress=lambda p: p.stage == "unet" and steps.append(len(js.log)), **RUN)
        result = asyncio.run(browser.drive(stages, ctx.bridge))
    assert result.images.shape == (1, 64, 64, 3) and result.settings["steps"] == RUN["steps"]
    reads = [i for i, e in enumerate(js.log) if e[0] == "read_buffer"]
    assert len(reads) == RUN["steps"] + 1  # each UNet step's output, then the decoded image
    assert all(js.log[i - 1][0] == "read_ahead" for i in reads)
    # the step's readback ends it: between two progress reports there is exactly one
    for a, b in zip(steps, steps[1:]):
        assert sum(a <= i < b for i in reads) == 1
    # and each component, once built, waits for its weights (three: text encoder, UNet, VAE)
    assert sum(e[0] == "flush" for e in js.log) == 3


def test_a_run_from_an_image_reads_back_only_what_the_driver_awaited(sd1_inpaint_tiny):
    """Inpainting with a 9-channel UNet at strength < 1: the VAE's encoder runs twice (the image, the
    masked image) and each encoding is read back only after the driver fetched it ahead, as the steps
    and the decode are."""
    import io
    from pathlib import Path

    from PIL import Image

    from sdweb import picture

    photo = picture.read(Path(__file__).resolve().parent / "data" / "images" / "astronaut.png")
    buf = io.BytesIO()
    Image.fromarray(np.tri(96, 96, dtype=np.uint8) * 255).save(buf, format="PNG")
    mask = picture.read(buf.getvalue(), "mask.png", "mask")
    js = AheadDeviceJs()
    with webgpu.using(JsDeviceBridge(js)) as ctx:
        pipe = Pipeline(ModelFolder(sd1_inpaint_tiny), webgpu, precision="fp16")
        stages = pipe.stages("a lighthouse", image=photo, mask=mask, strength=0.5, steps=4, seed=3,
                             scheduler="ddim")
        result = asyncio.run(browser.drive(stages, ctx.bridge))
    assert result.images.shape == (1, 96, 96, 3) and result.settings["strength"] == 0.5
    reads = [i for i, e in enumerate(js.log) if e[0] == "read_buffer"]
    assert len(reads) == 2 + 2 + 1  # two encodings, the two steps strength 0.5 leaves, the decode
    assert all(js.log[i - 1][0] == "read_ahead" for i in reads)
    assert sum(e[0] == "flush" for e in js.log) == 4  # text encoder, the VAE's encoder, UNet, decoder


def test_the_async_driver_waits_for_prompt_readbacks_too(sd1_tiny, tmp_path):
    """A weighted prompt (emphasis is applied on the host) and a textual-inversion embedding (its
    vectors go into the token embeddings on the host) read back in the text encoder stage: the
    pipeline yields those tensors first, so a browser without JSPI can await them as well."""
    from safetensors.numpy import save_file

    hidden = json.loads((sd1_tiny / "text_encoder" / "config.json").read_text())["hidden_size"]
    save_file({"<cube>": np.full((2, hidden), 0.25, np.float32)}, str(tmp_path / "cube.safetensors"))
    js = AheadDeviceJs()
    with webgpu.using(JsDeviceBridge(js)) as ctx:
        pipe = Pipeline(ModelFolder(sd1_tiny), webgpu, precision="fp16")
        stages = pipe.stages("a (lighthouse:1.3) by a <cube>", embeddings=[str(tmp_path / "cube.safetensors")], **RUN)
        result = asyncio.run(browser.drive(stages, ctx.bridge))
    assert result.images.shape == (1, 64, 64, 3)
    reads = [i for i, e in enumerate(js.log) if e[0] == "read_buffer"]
    # the prompt chunk's token embeddings (the embedding goes in) and its output (the weights
    # apply), then each UNet step's output and the decoded image; every one fetched ahead
    assert len(reads) == 2 + RUN["steps"] + 1
    assert all(js.log[i - 1][0] == "read_ahead" for i in reads)


def test_the_async_driver_waits_for_vae_tiles_too(sd1_tiny):
    """Decoding in tiles reads back the latents and each tile's output (the blending is on the host):
    the VAE yields each of those first (vae.decode_stages), so a browser without JSPI awaits them."""
    js = AheadDeviceJs()
    with webgpu.using(JsDeviceBridge(js)) as ctx:
        pipe = Pipeline(ModelFolder(sd1_tiny), webgpu, precision="fp16")
        # 96 x 96: 12 x 12 latents, in tiles of the VAE's sample_size 64 (8 latents) every 6: 2 x 2 tiles
        stages = pipe.stages("a lighthouse", vae_tiling="on", **dict(RUN, width=96, height=96))
        result = asyncio.run(browser.drive(stages, ctx.bridge))
    assert result.images.shape == (1, 96, 96, 3)
    reads = [i for i, e in enumerate(js.log) if e[0] == "read_buffer"]
    assert len(reads) == RUN["steps"] + 1 + 4 + 1  # the steps, the latents, four tiles, the image
    assert all(js.log[i - 1][0] == "read_ahead" for i in reads)
