#!/usr/bin/env python3
"""Speed of the page in a real browser: per-stage times and the worker's own time per UNet step.

    python scripts/bench_browser.py [--model PATH] [--size 64] [--steps 4] [--backends webgpu,numpy]
                                    [--runs 2] [--variant fp16|plain] [--guidance 7.5]

Starts the dev server (scripts/serve.py's app: the page, vendored Pyodide, the sdweb wheel of this
checkout) and a local Hub (tests/hub_server.py) serving the model folder (default: the tiny SD 1.x
test model; `--model weights/_bench/sd15-random` for the full-size random-weight SD 1.5 that
scripts/make_test_models.py makes), drives headless Chromium (Debian's, SwiftShader WebGPU here, the
flags of tests/test_page.py) with Playwright through the page as a person would (form, Generate),
and prints a markdown table from the worker's timings of each run (`self.sdweb.last` in the
worker; the same numbers travel in the page's result message):

    download     plan + fetch into IndexedDB (the first run of a profile; later runs find it stored)
    load         building the components: reading headers, uploading weights (sum of load_*; the
                 worker awaits each component's queued uploads before its stage runs)
    text enc.    the text encoder stage
    UNet step    the first step (it also compiles the pipelines) and the mean of the others
    GPU wait     per step after the first: time the worker awaited the GPU (the step's readback,
                 web/bridge/device.js `read_ahead`: its work finishing, then the copy back; `readWait`)
    worker       per step after the first: the rest of the step, i.e. Python (recording dispatches,
                 the scheduler, CFG, the preview) and the bridge calls: the Python overhead
    decode       the VAE stage
    into Python  weight-file bytes the worker handed Python (headers only on WebGPU); direct to GPU:
                 bytes upload_span copied store -> GPU; wasm heap: Pyodide's memory after the run

All runs share one browser profile, so only the first run of the first backend downloads. The
stage times are the page's own (Python's perf_counter in the worker, performance.now in JS).
SwiftShader emulates the GPU on the CPU: its GPU waits say nothing about a real GPU, but the
worker's time per step is what the page costs on top of any GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = "bench/model"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _default_model() -> Path:
    make = _load("make_test_models", ROOT / "scripts" / "make_test_models.py")
    models = ROOT / "tests" / ".models"
    make.build(models, quiet=True)
    return models / "sd1-tiny"


class DevServer:
    """scripts/serve.py's app under uvicorn on a free port of 127.0.0.1, in a thread."""

    def __init__(self, weights: Path):
        import uvicorn

        vendor = _load("vendor_pyodide", ROOT / "scripts" / "vendor_pyodide.py")
        problems = vendor.check()
        if problems and any("pyodide" in p for p in problems):
            sys.exit(f"bench_browser: vendored Pyodide missing ({problems[0]}): run python scripts/vendor_pyodide.py")
        vendor.build_sdweb_wheel()  # the page must run this checkout's sdweb
        app = _load("serve", ROOT / "scripts" / "serve.py").make_app(weights)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            sys.exit("bench_browser: the dev server did not start")
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


def add_model(hub, folder: Path) -> None:
    """The model folder as REPO on the Hub: hard links where the file system allows (SD 1.5 is 4 GB)."""
    dst = hub.add_repo(REPO)

    def link(src, d):
        try:
            os.link(src, d)
        except OSError:
            shutil.copy2(src, d)

    shutil.copytree(folder, dst, copy_function=link, dirs_exist_ok=True)


def run_once(page, settings: dict, timeout_s: float) -> dict:
    """Generate through the form; -> the worker's record of the run (self.sdweb.last) plus wall time."""
    for k, v in settings.items():
        page.fill(f"#{k}", str(v))
    n = page.locator("#history figure").count()
    t0 = time.perf_counter()
    page.click("#generate")
    page.wait_for_function(
        f"document.querySelectorAll('#history figure').length > {n} || !document.getElementById('error').hidden",
        timeout=timeout_s * 1000, polling=500)
    wall = time.perf_counter() - t0
    if not page.locator("#error").is_hidden():
        raise RuntimeError(f"the page reported an error: {page.inner_text('#error')}")
    last = page.workers[0].evaluate("self.sdweb.last")
    last["wall"] = wall
    return last


def fmt_s(x) -> str:
    if x is None:
        return "–"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_mb(n) -> str:
    return "–" if n is None else f"{n / 1e6:.1f} MB"


def table(rows: list[tuple[str, int, dict]]) -> str:
    head = ["backend", "held", "run", "download", "load", "text enc.", "UNet step 1", "UNet step (mean 2..)",
            "GPU wait / step", "worker / step", "decode", "total (page)", "into Python", "direct to GPU", "wasm heap"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for backend, i, r in rows:
        t, io = r["timings"], r["io"]
        load = sum(v for k, v in t.items() if k.startswith("load_"))
        out.append("| " + " | ".join([
            backend, r["settings"].get("precision", "?"), str(i), fmt_s(t.get("download")), fmt_s(load), fmt_s(t.get("text_encoder")),
            fmt_s(t.get("unet_step_first")), fmt_s(t.get("unet_step")), fmt_s(t.get("unet_step_gpu_wait")),
            fmt_s(t.get("unet_step_python")), fmt_s(t.get("vae")), fmt_s(r["wall"]),
            fmt_mb(io.get("pythonBytes")), fmt_mb(io.get("directBytes")), fmt_mb(io.get("wasmHeap")),
        ]) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a diffusers model folder (default: the tiny SD 1.x test model)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default 64; SwiftShader is slow)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--scheduler", default="euler")
    ap.add_argument("--backends", default="webgpu,numpy", help="comma-separated: webgpu, numpy")
    ap.add_argument("--runs", type=int, default=2, help="runs per backend (the first also loads, or downloads)")
    ap.add_argument("--variant", default="fp16", choices=["fp16", "plain"],
                    help="weight files to fetch (fp16 falls back to plain ones; on WebGPU fp16 is held fp16)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    args = ap.parse_args(argv)

    if not Path(CHROMIUM).exists():
        sys.exit(f"bench_browser: {CHROMIUM} not found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tests"))
    from hub_server import HubServer

    model = (args.model or _default_model()).resolve()
    if not (model / "model_index.json").is_file():
        sys.exit(f"bench_browser: {model} is not a diffusers model folder (no model_index.json)")
    settings = {"prompt": "a lighthouse on a cliff at dusk", "steps": args.steps, "guidance": args.guidance,
                "seed": 1, "width": args.size, "height": args.size}
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="sdweb-bench-"))
    dev = DevServer(tmp / "weights")
    try:
        with HubServer(tmp / "hub") as hub, sync_playwright() as p:
            add_model(hub, model)
            # A profile on disk: an in-memory (incognito) one holds IndexedDB in RAM, with a quota
            # far below a 4 GB model.
            ctx = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000})
            for backend in args.backends.split(","):
                page = ctx.new_page()
                page.goto(f"{dev.url}/?endpoint={hub.url}&backend={backend}&model={REPO}&variant={args.variant}"
                          f"&scheduler={args.scheduler}")
                page.wait_for_function("document.getElementById('env').classList.contains('ready')", timeout=120_000)
                for i in range(1, args.runs + 1):
                    r = run_once(page, settings, args.timeout)
                    rows.append((backend, i, r))
                    print(f"bench_browser: {backend} run {i}: {fmt_s(r['wall'])}", file=sys.stderr, flush=True)
                page.close()
            adapter = next((r["gpu"]["adapter"] for b, _, r in rows if r.get("gpu")), None)
            ctx.close()
    finally:
        dev.close()
        shutil.rmtree(tmp, ignore_errors=True)

    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip() or "Chromium"
    print(f"Model {model.name} (variant {args.variant}), "
          f"{args.size}x{args.size}, {args.steps} steps, guidance {args.guidance}, {args.scheduler}; "
          f"{version} headless" + (f", WebGPU adapter: {adapter}" if adapter else "") + ".\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
