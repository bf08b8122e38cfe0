"""The page's image editor (web/editor.js) end to end in headless Chromium, against `sdweb generate`
in CPython: an image dropped onto the page and a mask painted with the mouse give the image the CLI
makes from the same file and the page's downloaded mask PNG (PSNR >= 40 dB); "Use as input" on a
result runs img2img from exactly that PNG; one outpainted side, resized, equals `--outpaint`; an image can be
pasted or picked too (a pasted JPEG decodes in Pyodide as in the CLI); the mask tools (invert, undo,
eraser, clear) do what they say; an inpainting model without a mask is explained, and with a painted
one equals the CLI too.

The browser fixtures and helpers are tests/test_page.py's (they skip, saying why, without chromium,
Playwright or the vendored Pyodide).
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_page import Page, chromium, fresh_context, page_server, psnr  # noqa: E402,F401 - fixtures used by name
from hub_server import HubServer  # noqa: E402

PHOTO = Path(__file__).resolve().parent / "data" / "images" / "astronaut.png"  # 96x96


@pytest.fixture(scope="module")
def editor_hub(tmp_path_factory, test_models_dir):
    with HubServer(tmp_path_factory.mktemp("hub")) as hub:
        hub.add_repo("test/sd1-tiny", test_models_dir / "sd1-tiny")
        hub.add_repo("test/sd1-inpaint-tiny", test_models_dir / "sd1-inpaint-tiny")
        hub.add_repo("madebyollin/taesd", test_models_dir / "taesd-tiny")  # the catalogue's tiny autoencoder
        yield hub


@pytest.fixture(scope="module")
def editor_context(chromium):  # noqa: F811 - the fixture imported above
    ctx = chromium.new_context(viewport={"width": 1280, "height": 1400}, accept_downloads=True)
    yield ctx
    ctx.close()


# A File made in the page from bytes, handed to an event as its DataTransfer (drop) or clipboard (paste).
FILE_EVENT = """([b64, name, kind, target]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: "image/png" }));
  const ev = kind === "drop" ? new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true })
    : new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true });
  document.querySelector(target).dispatchEvent(ev);
}"""


def give_file(p: Page, data: bytes, name: str, kind: str = "drop"):
    target = "#image" if kind == "drop" else "body"
    p.page.evaluate(FILE_EVENT, [base64.b64encode(data).decode(), name, kind, target])
    p.page.wait_for_function(f"document.getElementById('image-name').textContent.startsWith({name!r})")


def paint(p: Page, points):
    """A brush stroke with the mouse through `points`, in fractions of the editor's view."""
    box = p.page.locator("#mask").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    p.page.mouse.move(*xy[0])
    p.page.mouse.down()
    for x, y in xy[1:]:
        p.page.mouse.move(x, y, steps=4)
    p.page.mouse.up()


def mask_of(p: Page, tmp_path: Path) -> np.ndarray:
    """The editor's mask as "download mask" saves it: True where the model repaints."""
    from PIL import Image

    with p.page.expect_download() as dl:
        p.page.click("#mask-download")
    path = tmp_path / "tools-mask.png"
    dl.value.save_as(path)
    return np.asarray(Image.open(path).convert("L")) >= 128


def cli(folder: Path, s: dict, out: Path, image: Path, mask: Path | None = None, tiny: Path | None = None) -> np.ndarray:
    """`sdweb generate` from `image` (and `mask`) with the settings the page reports for its image (a
    Fast decode's by the tiny autoencoder in folder `tiny`)."""
    from PIL import Image

    args = [sys.executable, "-m", "sdweb.cli", "generate", "--model", str(folder), "--prompt", s["prompt"],
            "--negative-prompt", s["negative_prompt"], "--steps", str(s["steps"]), "--guidance", str(s["guidance"]),
            "--seed", str(s["seed"]), "--scheduler", s["scheduler"], "--width", str(s["width"]),
            "--height", str(s["height"]), "--precision", s["precision"], "--backend", "numpy", "--image", str(image),
            "--strength", str(s["strength"]), "--output", str(out), "--quiet"]
    if mask is not None:
        args += ["--mask", str(mask)]
    if s.get("outpaint"):
        args += ["--outpaint", ",".join(map(str, s["outpaint"]))]
    if s.get("decoder", "vae") != "vae":
        args += ["--decoder", str(tiny)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return np.asarray(Image.open(out).convert("RGB"))


def test_editing_on_the_page_equals_the_cli(editor_context, page_server, editor_hub, tmp_path):
    p = Page(editor_context, page_server, editor_hub, model="test/sd1-tiny")
    folder = editor_hub.repo_dir("test/sd1-tiny")
    photo = PHOTO.read_bytes()

    # 1. drop an image, paint a mask with the mouse, generate: inpainting
    give_file(p, photo, "astronaut.png")
    assert p.page.inner_text("#image-name") == "astronaut.png · 96×96"
    paint(p, [(0.2, 0.3), (0.5, 0.35), (0.7, 0.6), (0.4, 0.8)])
    p.page.select_option("#scheduler", "ddim")
    r = p.generate(width="", height="", steps=5, seed=31)
    assert r["ok"], r
    s = r["settings"]
    assert s["image"] == {"name": "astronaut.png", "sha256": hashlib.sha256(photo).hexdigest(), "width": 96,
                          "height": 96}
    assert s["mask"]["name"] == "mask.png" and s["strength"] == 1.0 and (s["width"], s["height"]) == (96, 96)
    assert "from astronaut.png (96×96) with a mask" in p.page.inner_text("#result-info")
    with p.page.expect_download() as dl:
        p.page.click("#mask-download")
    mask = tmp_path / "mask.png"
    dl.value.save_as(mask)
    assert hashlib.sha256(mask.read_bytes()).hexdigest() == s["mask"]["sha256"]  # the PNG the run used
    marked = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(mask).convert("L")) >= 128
    assert 0.05 < marked.mean() < 0.6, marked.mean()  # the stroke is in it, and only the stroke
    ref = cli(folder, s, tmp_path / "inpaint.png", PHOTO, mask)
    assert psnr(r["png"], ref) >= 40, f"inpainting: PSNR {psnr(r['png'], ref):.1f} dB"

    # 2. "Use as input" on that result, strength 0.6: img2img from exactly its PNG
    first = r["bytes"]
    p.page.click("#use-as-input")
    p.page.wait_for_function("document.getElementById('image-name').textContent.startsWith('sdweb-31.png')")
    p.page.fill("#strength", "0.6")
    p.page.dispatch_event("#strength", "input")
    r = p.generate(width="", height="", steps=5, seed=32)
    assert r["ok"], r
    s = r["settings"]
    assert s["image"]["sha256"] == hashlib.sha256(first).hexdigest() and s.get("mask") is None and s["strength"] == 0.6
    (tmp_path / "first.png").write_bytes(first)
    ref = cli(folder, s, tmp_path / "img2img.png", tmp_path / "first.png")
    assert psnr(r["png"], ref) >= 40, f"img2img: PSNR {psnr(r['png'], ref):.1f} dB"

    # 3. outpaint one side of the photo (picked with the file chooser this time)
    p.page.set_input_files("#image-file", str(PHOTO))
    p.page.wait_for_function("document.getElementById('image-name').textContent.startsWith('astronaut.png')")
    p.page.click("#outpaint-right")
    assert "right 64" in p.page.inner_text("#outpaint-value")
    r = p.generate(width=128, height=96, steps=4, seed=33)  # the 160x96 canvas resized: Lanczos, as the CLI
    assert r["ok"], r
    s = r["settings"]
    assert s["outpaint"] == [0, 0, 64, 0] and (s["width"], s["height"]) == (128, 96) and s.get("mask") is None
    assert "from astronaut.png (160×96 resized to 128×96), outpainted 0,0,64,0" in p.page.inner_text("#result-info")
    ref = cli(folder, s, tmp_path / "outpaint.png", PHOTO)
    assert r["png"].shape == ref.shape == (96, 128, 3)
    assert psnr(r["png"], ref) >= 40, f"outpainting: PSNR {psnr(r['png'], ref):.1f} dB"

    # the gallery keeps each result, each with its own "input"; restoring the img2img one's settings
    # brings its strength back into the editor and names the image it was made from
    gallery = p.page.locator("#gallery figure")
    assert gallery.count() == 3 and p.page.locator("#gallery [data-action='input']").count() == 3
    img2img = gallery.filter(has_text="32 ·")
    img2img.locator("[data-action='restore']").click()
    assert p.page.inner_text("#strength-value") == "0.60"
    assert "made from the image sdweb-31.png (96×96)" in p.page.inner_text("#editor-note")
    img2img.locator("[data-action='input']").click()
    p.page.wait_for_function("document.getElementById('image-name').textContent.startsWith('sdweb-32.png')")
    assert not [c for c in p.console if c.startswith("pageerror")], p.console
    p.close()


def test_paste_and_inpainting_models_are_explained(editor_context, page_server, editor_hub, tmp_path):
    p = Page(editor_context, page_server, editor_hub, model="test/sd1-tiny")
    # picking a catalogued inpainting model says what it needs, before anything is fetched
    p.page.fill("#model", "stable-diffusion-v1-5/stable-diffusion-inpainting")
    p.page.dispatch_event("#model", "change")
    assert "inpainting model" in p.page.inner_text("#editor-note")
    # any model whose UNet takes a mask: Python says so once its configs are read
    p.page.fill("#model", "test/sd1-inpaint-tiny")
    cat = PHOTO.with_name("chelsea.jpg")  # a JPEG, decoded by Pyodide's Pillow as by the CLI's
    give_file(p, cat.read_bytes(), "cat.jpg", kind="paste")
    r = p.generate(width="", height="", steps=2)
    assert not r["ok"] and r["kind"] == "input", r
    assert "is an inpainting model" in r["text"] and "mask" in r["text"], r
    paint(p, [(0.1, 0.1), (0.9, 0.9)])
    # the mask tools, read back through "download mask" (white = repaint)
    stroke = mask_of(p, tmp_path)
    assert 0.03 < stroke.mean() < 0.5
    p.page.click("#mask-invert")
    np.testing.assert_array_equal(mask_of(p, tmp_path), ~stroke)
    p.page.click("#mask-undo")
    np.testing.assert_array_equal(mask_of(p, tmp_path), stroke)
    p.page.click("#tool-eraser")
    paint(p, [(0.1, 0.1), (0.5, 0.5)])  # rubs out the stroke's first half
    erased = mask_of(p, tmp_path)
    assert not (erased & ~stroke).any() and 0.3 * stroke.sum() < erased.sum() < 0.8 * stroke.sum()
    p.page.click("#mask-clear")
    assert not mask_of(p, tmp_path).any()
    p.page.click("#mask-undo")
    np.testing.assert_array_equal(mask_of(p, tmp_path), erased)
    p.page.click("#tool-brush")
    r = p.generate(width="", height="", steps=3, seed=5)
    assert r["ok"], r
    s = r["settings"]
    assert s["image"]["name"] == "cat.jpg" and s.get("mask") and (s["width"], s["height"]) == (144, 96)
    with p.page.expect_download() as dl:
        p.page.click("#mask-download")
    dl.value.save_as(tmp_path / "mask.png")
    ref = cli(editor_hub.repo_dir("test/sd1-inpaint-tiny"), s, tmp_path / "cat.png", cat, tmp_path / "mask.png")
    assert psnr(r["png"], ref) >= 40, f"9-channel inpainting: PSNR {psnr(r['png'], ref):.1f} dB"
    # a file the browser cannot show is refused in words
    give_bad = "([b64]) => document.getElementById('image').dispatchEvent(new DragEvent('drop', {bubbles: true, " \
        "cancelable: true, dataTransfer: (() => { const d = new DataTransfer(); d.items.add(new File([atob(b64)], " \
        "'notes.txt', {type: 'text/plain'})); return d; })()}))"
    p.page.evaluate(give_bad, [base64.b64encode(b"not an image").decode()])
    p.page.wait_for_function("document.getElementById('editor-note').textContent.includes('notes.txt')")
    p.close()


def test_a_fast_decode_draft_from_an_image(fresh_context, page_server, editor_hub, tmp_path):  # noqa: F811
    """Fast decode from an image: TAESD (fetched on first use) encodes the image and decodes the
    result, as `sdweb generate --image --decoder` does."""
    p = Page(fresh_context, page_server, editor_hub, model="test/sd1-tiny")
    give_file(p, PHOTO.read_bytes(), "astronaut.png")
    p.page.select_option("#scheduler", "euler")
    p.page.select_option("#decoder", "taesd")
    r = p.generate(width="", height="", steps=4, seed=5)
    assert r["ok"], r
    s = r["settings"]
    assert s["decoder"] == "taesd" and s.get("mask") is None and s["strength"] == 0.8
    timings = p.page.workers[0].evaluate("self.sdweb.last.timings")
    assert "load_tiny_autoencoder_encoder" in timings and "load_vae_encoder" not in timings
    ref = cli(editor_hub.repo_dir("test/sd1-tiny"), s, tmp_path / "cli.png", PHOTO,
              tiny=editor_hub.repo_dir("madebyollin/taesd"))
    assert psnr(r["png"], ref) >= 40, f"PSNR {psnr(r['png'], ref):.1f} dB"
    p.close()
