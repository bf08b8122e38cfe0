"""The page, end to end in a real browser. (Its Python half in CPython: tests/test_browser_model.py;
the dev server without a browser: tests/test_serve.py; web/hub.js and web/store.js in Node: tests/js/.)

Browser tests drive Debian's chromium (headless, SwiftShader WebGPU) with Playwright against two real
HTTP servers on 127.0.0.1: scripts/serve.py's app (the page, vendored Pyodide, the sdweb wheel) and
tests/hub_server.py (a Hub serving the tiny test models, with a request log and fault injection).
They check that the page's image equals `sdweb generate` in CPython (PSNR >= 40 dB) for the same
model, seed, scheduler and settings; that Cancel stops a run between steps and the page works after;
that a reload reads the weights from IndexedDB without one request to the Hub; that a cut download
resumes with Range and a corrupted one is rejected; and that 404, gated (401/403), not-a-diffusers
and out-of-quota are each shown in words, with the page usable after. On the WebGPU path (the JS
device bridge on SwiftShader) the image equals the CLI's too, a device lost mid-run is explained and
the next run makes a new device, and a buffer over the adapter's limits is named. A screenshot of
the finished page goes to tests/artifacts/page.png.

They skip, saying why, when chromium, Playwright or the vendored Pyodide is missing
(scripts/test.sh installs and vendors all three).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from hub_server import DEFAULT_TOKEN, HubServer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "tests" / "artifacts"
TINY = 64  # image side for the tiny models: 8x8 latents


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# --- browser fixtures --------------------------------------------------------------------------------


def _browser_skip_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (scripts/test.sh installs Debian's chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install playwright)"
    problems = _load_script("vendor_pyodide").check()
    if problems and any("pyodide" in p for p in problems):
        return f"vendored Pyodide missing ({problems[0]}): run python scripts/vendor_pyodide.py"
    return None


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, test_models_dir):
    """scripts/serve.py's app under uvicorn on a free port, in a thread; yields its base URL. Its
    ./weights/ holds sd1-tiny as test/prefetched (what `sdweb download` would leave there)."""
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    import uvicorn

    vendor = _load_script("vendor_pyodide")
    vendor.build_sdweb_wheel()  # the page must run the sdweb of this checkout
    weights = tmp_path_factory.mktemp("weights")
    shutil.copytree(test_models_dir / "sd1-tiny", weights / "test" / "prefetched")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = _load_script("serve").make_app(weights, port=sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page_hub(tmp_path_factory, test_models_dir):
    """A local Hub holding the tiny models under several repo ids (one per fault scenario, so tests
    do not share cached files), a gated copy and a repo that is not a diffusers pipeline."""
    with HubServer(tmp_path_factory.mktemp("hub")) as hub:
        for name in ("sd1-tiny", "sd2-tiny", "nomid-tiny"):
            hub.add_repo(f"test/{name}", test_models_dir / name)
        hub.add_repo("test/cancel", test_models_dir / "sd1-tiny")
        hub.add_repo("test/resume", test_models_dir / "sd1-tiny")
        hub.add_repo("test/quota", test_models_dir / "sd1-tiny")
        hub.add_repo("test/gated", test_models_dir / "sd1-tiny", gated=True)
        hub.add_repo("test/tiny-turbo", test_models_dir / "sd1-tiny")  # a model sdweb.settings calls "turbo"
        d = hub.add_repo("test/clip-only")  # a transformers model: config.json + weights, no pipeline
        shutil.copy(test_models_dir / "sd1-tiny" / "text_encoder" / "config.json", d / "config.json")
        shutil.copy(test_models_dir / "sd1-tiny" / "text_encoder" / "model.safetensors", d / "model.safetensors")
        d = hub.add_repo("test/unet-only")  # a diffusers pipeline that is not SD text-to-image
        (d / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                                                        "scheduler": ["diffusers", "DDPMScheduler"]}))
        yield hub


@pytest.fixture(scope="module")
def chromium():
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """One tab of the app with helpers; `console` collects every console line and page error."""

    def __init__(self, context, base, hub, **params):
        self.context, self.base, self.hub = context, base, hub
        self.page = context.new_page()
        self.console = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.params = {k: v for k, v in dict({"endpoint": hub.url, "backend": "numpy"}, **params).items() if v != ""}
        self.open()

    def open(self):
        from urllib.parse import urlencode

        self.page.goto(f"{self.base}/?{urlencode(self.params)}")
        self.page.wait_for_function("document.getElementById('env').classList.contains('ready')", timeout=60_000)

    def reload(self):
        self.page.reload()
        self.page.wait_for_function("document.getElementById('env').classList.contains('ready')", timeout=60_000)

    def fill(self, **fields):
        for k, v in fields.items():
            self.page.fill(f"#{k.replace('_', '-')}", str(v))

    def generate(self, timeout=90_000, **fields) -> dict:
        """Fill the form, click Generate, wait for a new history entry or an error. Returns
        {"ok": True, "png": ndarray, "settings": {...}} or {"ok": False, "kind", "text"}."""
        defaults = dict(prompt="a red cube on a table", steps=4, guidance=7.5, seed=1234, width=TINY, height=TINY)
        self.fill(**dict(defaults, **fields))
        n = self.page.locator("#history figure").count()
        self.page.click("#generate")
        self.page.wait_for_function(
            f"document.querySelectorAll('#history figure').length > {n} || !document.getElementById('error').hidden",
            timeout=timeout)
        if not self.page.locator("#error").is_hidden():
            return {"ok": False, "kind": self.page.get_attribute("#error", "data-kind"),
                    "text": self.page.inner_text("#error")}
        src = self.page.get_attribute("#result", "src")
        assert src.startswith("data:image/png;base64,")
        import base64

        from PIL import Image

        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
        return {"ok": True, "png": img, "settings": json.loads(self.page.get_attribute("#result", "data-settings"))}

    def close(self):
        self.page.close()


@pytest.fixture(scope="module")
def shared_context(chromium):
    """One browser profile for the generate + reload tests (they share IndexedDB on purpose)."""
    ctx = chromium.new_context(viewport={"width": 1280, "height": 1000})
    yield ctx
    ctx.close()


@pytest.fixture()
def fresh_context(chromium):
    ctx = chromium.new_context(viewport={"width": 1280, "height": 1000})
    yield ctx
    ctx.close()


def cli_image(folder: Path, settings: dict, tmp_path: Path) -> np.ndarray:
    """`sdweb generate` in CPython with the settings the page reports for its image."""
    from PIL import Image

    out = tmp_path / f"cli-{settings['seed']}-{settings['scheduler']}.png"
    args = [sys.executable, "-m", "sdweb.cli", "generate", "--model", str(folder), "--prompt", settings["prompt"],
            "--negative-prompt", settings["negative_prompt"], "--steps", str(settings["steps"]),
            "--guidance", str(settings["guidance"]), "--seed", str(settings["seed"]),
            "--scheduler", settings["scheduler"], "--width", str(settings["width"]), "--height", str(settings["height"]),
            "--precision", settings["precision"], "--backend", "numpy", "--output", str(out), "--quiet"]
    if settings.get("variant"):
        args += ["--variant", settings["variant"]]
    if settings.get("vae_tiling"):
        args += ["--vae-tiling", settings["vae_tiling"]]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return np.asarray(Image.open(out).convert("RGB"))


# --- browser tests -----------------------------------------------------------------------------------


def test_page_image_equals_cli(shared_context, page_server, page_hub, tmp_path):
    p = Page(shared_context, page_server, page_hub, model="test/sd1-tiny")
    assert p.page.input_value("#model") == "test/sd1-tiny"
    assert p.page.input_value("#endpoint") == page_hub.url
    assert p.page.input_value("#backend") == "numpy"
    assert "NumPy inside WebAssembly" in p.page.inner_text("#notice")
    env = p.page.evaluate("self.crossOriginIsolated")
    assert env is True, "serve.py must make the page cross-origin isolated (COOP/COEP)"

    cases = [
        ("test/sd1-tiny", dict(scheduler="")),  # the model's own scheduler (PNDM)
        ("test/sd2-tiny", dict(scheduler="euler-a", negative_prompt="blurry", guidance=5, seed=77, width=128)),
        ("test/sd1-tiny", dict(scheduler="dpm++2m-karras", guidance=1, steps=3, prompt="")),
    ]
    for repo, fields in cases:
        p.page.fill("#model", repo)
        if "scheduler" in fields:
            p.page.select_option("#scheduler", fields.pop("scheduler"))
        r = p.generate(**fields)
        assert r["ok"], r
        s = r["settings"]
        assert s["model"] == repo and s["backend"] == "numpy"
        ref = cli_image(page_hub.repo_dir(repo), s, tmp_path)
        assert r["png"].shape == ref.shape == (s["height"], s["width"], 3)
        assert psnr(r["png"], ref) >= 40, f"{repo} {s['scheduler']}: PSNR {psnr(r['png'], ref):.1f} dB"
    # the page shows seed and timings, a download link and the session's history
    info = p.page.inner_text("#result-info")
    assert "seed 1234" in info and "denoise" in info
    assert p.page.get_attribute("#download-png", "href").startswith("data:image/png")
    assert p.page.locator("#history figure").count() == 3
    assert "test/sd2-tiny" in p.page.inner_text("#cache")
    # on NumPy the weights are read into Python: the worker's count of bytes handed over sees them
    io = p.page.workers[0].evaluate("self.sdweb.last.io")
    assert io["pythonBytes"] >= 0.9 * io["weightFileBytes"], io
    ARTIFACTS.mkdir(exist_ok=True)
    p.page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
    assert not [c for c in p.console if c.startswith("pageerror")], p.console
    p.close()


def test_empty_fields_are_filled_by_pythons_settings(shared_context, page_server, page_hub, tmp_path):
    """The page decides no default: empty fields go to Python (sdweb.settings), whose defaults the form
    shows and the run uses, the same as the CLI's."""
    from sdweb.settings import resolve

    p = Page(shared_context, page_server, page_hub, model="test/sd1-tiny")
    sd = resolve({"model": "test/sd1-tiny"})
    shown = lambda: (int(p.page.get_attribute("#steps", "placeholder")),  # noqa: E731
                     float(p.page.get_attribute("#guidance", "placeholder")))
    assert shown() == (sd.steps, sd.guidance)
    p.page.fill("#model", "test/tiny-turbo")
    p.page.dispatch_event("#model", "change")
    turbo = resolve({"model": "test/tiny-turbo"})
    assert (turbo.steps, turbo.guidance) != (sd.steps, sd.guidance)
    p.page.wait_for_function(f"document.getElementById('steps').placeholder === '{turbo.steps}'")
    assert shown() == (turbo.steps, turbo.guidance)
    r = p.generate(steps="", guidance="", seed="", width="", height="")
    assert r["ok"], r
    s = r["settings"]
    assert (s["steps"], s["guidance"]) == (turbo.steps, turbo.guidance) and 0 <= s["seed"] < 2**31
    ref = cli_image(page_hub.repo_dir("test/tiny-turbo"), s, tmp_path)
    assert ref.shape == r["png"].shape and psnr(r["png"], ref) >= 40
    p.close()


def test_reload_reads_weights_from_storage(shared_context, page_server, page_hub):
    p = Page(shared_context, page_server, page_hub, model="test/sd1-tiny")
    first = p.generate(seed=99)  # stored already when the test above ran; downloads it otherwise
    assert first["ok"], first
    page_hub.clear_log()
    p.reload()
    again = p.generate(seed=99)
    assert again["ok"], again
    assert page_hub.requests() == [], [r.path for r in page_hub.requests()]
    np.testing.assert_array_equal(first["png"], again["png"])
    assert "from storage" in p.page.inner_text('#progress .stage[data-stage="download"]')
    p.close()


def test_cancel_then_generate_again(fresh_context, page_server, page_hub):
    p = Page(fresh_context, page_server, page_hub, model="test/cancel")
    p.fill(prompt="slow", steps=200, guidance=7.5, seed=3, width=TINY, height=TINY)
    p.page.click("#generate")
    p.page.wait_for_function(
        "/step ([3-9]|\\d\\d+)\\//.test(document.querySelector('#progress [data-stage=unet] .detail').textContent)",
        timeout=60_000)
    p.page.click("#cancel")
    p.page.wait_for_function("document.getElementById('status').textContent.startsWith('Cancelled')", timeout=10_000)
    status = p.page.inner_text("#status")
    assert "restarted" not in status, "the worker should stop between steps, not be killed"
    assert p.page.is_enabled("#generate") and not p.page.is_enabled("#cancel")
    steps_done = int(p.page.inner_text('#progress [data-stage="unet"] .detail').split()[1].split("/")[0])
    assert steps_done < 100
    r = p.generate(steps=2)
    assert r["ok"], r
    p.close()


def test_download_resumes_after_a_cut_and_rejects_corruption(fresh_context, page_server, page_hub):
    repo = "test/resume"
    unet = "unet/diffusion_pytorch_model.fp16.safetensors"
    vae = "vae/diffusion_pytorch_model.fp16.safetensors"
    unet_size = (page_hub.repo_dir(repo) / unet).stat().st_size
    chunk = 65536
    page_hub.cut(repo, unet, after=5 * chunk + 1000)
    page_hub.corrupt(repo, vae, offset=3000, times=1)
    # Bytes that reach the browser just before a connection breaks may never reach the page's
    # reader; at a throttled rate most of the body has been read (and stored) by the cut.
    page_hub.slow(4_000_000)
    p = Page(fresh_context, page_server, page_hub, model=repo, chunk=chunk)

    try:
        r = p.generate()
    finally:
        page_hub.reset_faults()
    assert not r["ok"] and r["kind"] == "corrupt", r
    assert "vae" in r["text"] and "Generate again" in r["text"]
    # the unet was cut after 5 chunks + 1000 bytes and resumed from the last whole chunk stored (the
    # browser may drop bytes still in flight when the connection breaks, so not always chunk 5)
    unet_gets = [q for q in page_hub.requests(f"repo={repo}&path={unet}") if q.method == "GET"]
    assert [q.cut for q in unet_gets] == [True, False], unet_gets
    assert unet_gets[1].range, "the second request should resume with a Range"
    resumed_at = int(unet_gets[1].range.removeprefix("bytes=").removesuffix("-"))
    assert resumed_at % chunk == 0 and 0 < resumed_at <= 5 * chunk, unet_gets[1].range
    assert unet_gets[0].sent == 5 * chunk + 1000
    assert unet_gets[1].sent == unet_size - resumed_at

    page_hub.clear_log()
    r = p.generate()  # the corrupted vae was deleted, not kept: it is fetched again, and verifies
    assert r["ok"], r
    fetched = {q.path.split("path=")[-1] for q in page_hub.requests(f"repo={repo}&") if q.method == "GET"}
    assert fetched == {vae}, fetched
    # what IndexedDB holds is byte-identical to the source, for the resumed file and the refetched one
    for path in (unet, vae):
        want = hashlib.sha256((page_hub.repo_dir(repo) / path).read_bytes()).hexdigest()
        assert p.page.evaluate(STORED_SHA256, f"/{repo}/resolve/main/{path}") == want, path
    p.close()


# sha256 of a file's stored chunks, read straight from the store's IndexedDB (web/store.js layout)
STORED_SHA256 = """async (suffix) => {
  const db = await new Promise((ok, no) => { const r = indexedDB.open("sdweb-weights"); r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error); });
  const all = (store, q) => new Promise((ok, no) => { const r = db.transaction(store).objectStore(store).getAll(q); r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error); });
  const file = (await all("files")).find((f) => f.key.endsWith(suffix) && f.done);
  if (!file) return null;
  const chunks = (await all("chunks", IDBKeyRange.bound([file.key, 0], [file.key, Infinity]))).sort((a, b) => a.i - b.i);
  const bytes = new Uint8Array(file.size);
  let at = 0;
  for (const c of chunks) { bytes.set(new Uint8Array(c.data), at); at += c.data.byteLength; }
  if (at !== file.size) return `size ${at} != ${file.size}`;
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}"""


def test_errors_are_explained_and_the_page_recovers(fresh_context, page_server, page_hub):
    p = Page(fresh_context, page_server, page_hub, model="test/sd1-tiny")

    p.page.fill("#model", "test/no-such-model")
    r = p.generate()
    assert not r["ok"] and r["kind"] == "notfound" and "test/no-such-model" in r["text"], r

    p.page.fill("#model", "test/clip-only")
    r = p.generate()
    assert not r["ok"] and r["kind"] == "model" and "not a diffusers" in r["text"], r

    p.page.fill("#model", "test/unet-only")
    r = p.generate()
    assert not r["ok"] and r["kind"] == "model" and "Stable Diffusion" in r["text"], r

    p.page.fill("#model", "not a repo id")
    r = p.generate()
    assert not r["ok"] and r["kind"] == "input" and "owner/name" in r["text"], r

    p.page.fill("#model", "test/sd1-tiny")
    r = p.generate(width=100)
    assert not r["ok"] and r["kind"] == "input" and "width" in r["text"], r

    # gated: no token -> asked for one (and the token field gets the focus); a wrong one -> 403
    p.page.fill("#model", "test/gated")
    r = p.generate()
    assert not r["ok"] and r["kind"] == "auth" and "token" in r["text"], r
    assert p.page.evaluate("document.activeElement.id") == "token"
    p.page.fill("#token", "hf_wrongWrongWrong")
    r = p.generate()
    assert not r["ok"] and r["kind"] == "auth" and "refused" in r["text"], r
    p.page.fill("#token", DEFAULT_TOKEN)
    r = p.generate(width=TINY)
    assert r["ok"], r
    gated = page_hub.requests("/test/gated/resolve/")
    assert {q.auth for q in gated} == {"none", "invalid", "valid"}
    # the token travels in a header only: never in a URL, never in the console
    assert not any(DEFAULT_TOKEN in q.path for q in page_hub.requests())
    assert not any(DEFAULT_TOKEN in c for c in p.console)
    p.close()


def test_out_of_quota_is_explained(fresh_context, page_server, page_hub):
    p = Page(fresh_context, page_server, page_hub, model="test/quota")
    cdp = fresh_context.new_cdp_session(p.page)
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": page_server, "quotaSize": 3_000_000})
    r = p.generate()
    assert not r["ok"] and r["kind"] == "quota" and "storage" in r["text"], r
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": page_server})  # back to the real quota
    r = p.generate()
    assert r["ok"], r
    # the stored-models panel deletes a model: the next run downloads it again
    row = p.page.locator("#cache tr", has_text="test/quota")
    row.locator("button").click()
    p.page.wait_for_function("!document.getElementById('cache').textContent.includes('test/quota')")
    page_hub.clear_log()
    r = p.generate()
    assert r["ok"], r
    assert [q for q in page_hub.requests("repo=test/quota&path=unet/") if q.method == "GET"]
    p.close()


def test_prefetched_model_is_read_from_the_dev_server(fresh_context, page_server, page_hub):
    """A model in ./weights/ (as `sdweb download` leaves it) is used without touching the Hub."""
    page_hub.clear_log()
    p = Page(fresh_context, page_server, page_hub, model="test/prefetched", endpoint="")
    p.page.wait_for_function("document.getElementById('model-note').textContent.includes('./weights/')")
    r = p.generate()
    assert r["ok"], r
    assert r["settings"]["endpoint"] == f"{page_server}/hub"
    assert page_hub.requests() == []
    p.close()


# --- the WebGPU path (SwiftShader here: slow, so tiny shapes and few steps) ----------------------------

@pytest.fixture(scope="module")
def gpu_context(chromium):
    ctx = chromium.new_context(viewport={"width": 1280, "height": 1000})
    yield ctx
    ctx.close()


def test_webgpu_image_equals_cli_and_survives_device_loss(gpu_context, page_server, page_hub, tmp_path):
    p = Page(gpu_context, page_server, page_hub, model="test/sd1-tiny", backend="webgpu")
    p.page.wait_for_function("document.getElementById('notice').textContent.includes('WebGPU')")
    p.page.select_option("#scheduler", "euler")
    r = p.generate(steps=2, seed=21, timeout=180_000)
    assert r["ok"], r
    s = r["settings"]
    assert s["backend"] == "webgpu" and s["precision"] == "fp16"
    ref = cli_image(page_hub.repo_dir("test/sd1-tiny"), s, tmp_path)  # NumPy in CPython, same held precision
    assert psnr(r["png"], ref) >= 40, f"PSNR {psnr(r['png'], ref):.1f} dB"
    assert "swiftshader" in p.page.inner_text("#result-info").lower()
    # weight bytes went IndexedDB -> GPU in JS (upload_span), not through the wasm heap: Python was
    # handed each file's 8-byte length and JSON header, and nothing else
    last = p.page.workers[0].evaluate("self.sdweb.last")
    io, files = last["io"], [f for f in page_hub.repo_dir("test/sd1-tiny").rglob("*.fp16.safetensors")]
    headers = sum(8 + int.from_bytes(f.read_bytes()[:8], "little") for f in files)
    assert io["weightFileBytes"] == sum(f.stat().st_size for f in files)
    assert io["pythonBytes"] <= headers < 0.05 * io["weightFileBytes"], io
    assert io["directBytes"] >= 0.9 * (io["weightFileBytes"] - headers), io
    assert last["timings"]["unet_step_gpu_wait"] + last["timings"]["unet_step_python"] == pytest.approx(
        last["timings"]["unet_step"])

    # the device is lost mid-run: the page says so, and the next Generate makes a new device
    p.fill(steps=6, seed=22)
    p.page.click("#generate")
    p.page.wait_for_function(
        "/step [1-9]\\//.test(document.querySelector('#progress [data-stage=unet] .detail').textContent)",
        timeout=180_000)
    p.page.workers[0].evaluate("self.sdweb.gpu.device.destroy()")
    p.page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    assert p.page.get_attribute("#error", "data-kind") == "lost", p.page.inner_text("#error")
    r = p.generate(steps=1, seed=23, timeout=180_000)
    assert r["ok"], r
    p.close()


def test_webgpu_limits_too_small_are_named(gpu_context, page_server, page_hub):
    # a 1 MB binding limit: the tiny text encoder's token embedding (49408 x 32 fp16 = 3.2 MB) does not
    # fit, which the backend finds before uploading (or compiling) anything
    p = Page(gpu_context, page_server, page_hub, model="test/sd1-tiny", backend="webgpu",
             **{"gpu-max-binding": 1_000_000})
    r = p.generate(steps=1, timeout=180_000)
    assert not r["ok"] and r["kind"] == "limits", r
    assert "token_embedding" in r["text"] and "maxStorageBufferBindingSize" in r["text"], r
    p.close()


def test_webgpu_vae_tiles_within_small_limits(gpu_context, page_server, page_hub, tmp_path):
    # a 3.5 MB binding limit holds nomid-tiny's weights (the largest, its fp32 token embedding, is
    # 49408 x 16 x 4 = 3.2 MB) but not its decoder's full-size activation at 256 x 256 (16 channels x
    # 256^2 x 4 bytes = 4.2 MB): one pass fails; auto decodes in tiles of the VAE's sample_size (64
    # pixels), as the CLI's --vae-tiling on does on NumPy
    p = Page(gpu_context, page_server, page_hub, model="test/nomid-tiny", backend="webgpu",
             **{"gpu-max-binding": 3_500_000, "vae-tiling": "off"})
    r = p.generate(steps=1, guidance=1, width=256, height=256, timeout=180_000)
    assert not r["ok"] and r["kind"] == "limits", r
    assert "activation" in r["text"] and "maxStorageBufferBindingSize" in r["text"], r
    p.page.select_option("#vae-tiling", "auto")
    r = p.generate(steps=1, guidance=1, width=256, height=256, timeout=300_000)
    assert r["ok"], r
    s = r["settings"]
    assert s["vae_tiling"] == "auto" and s["backend"] == "webgpu"
    ref = cli_image(page_hub.repo_dir("test/nomid-tiny"), dict(s, vae_tiling="on"), tmp_path)
    assert psnr(r["png"], ref) >= 40, f"PSNR {psnr(r['png'], ref):.1f} dB"
    p.close()
