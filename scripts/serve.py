#!/usr/bin/env python3
"""The development server: the page, vendored Pyodide, the shaders, and ./weights/ in the Hub layout.

    python scripts/serve.py [--host 127.0.0.1] [--port 8000] [--weights ./weights]

Routes (a starlette app, served by uvicorn):

    /                                           web/index.html
    /<file>                                     web/<file> (static, with HTTP Range)
    /shaders/<file>.wgsl                        shaders/, for reading (the worker uses the copies in the wheel)
    /hub/{owner}/{name}/resolve/{rev}/{path}    weights/{owner}/{name}/{path}: a model prefetched with
                                                `sdweb download` in the Hub's URL layout, so the page
                                                reads it with `?endpoint=<this server>/hub` and downloads
                                                nothing twice (revision is ignored: a folder has one)
    /hub/api/local-models                       JSON {models: the pipelines' repo ids under weights/ (the
                                                picker's "prefetched" entries), tiny_autoencoders: the tiny
                                                autoencoders' (madebyollin/taesd: previews, Fast decode)}

A model folder under weights/ (or its owner folder) may be a link, e.g. to a model kept on another
disk; a link inside a model that leads out of that model's folder is not followed (404).

Every response carries Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy:
require-corp, which make the page cross-origin isolated: SharedArrayBuffer works, so Cancel reaches
the busy Pyodide worker between steps. The Hub itself answers fetch() with CORS, which COEP allows.

Binds to 127.0.0.1 unless --host says otherwise: the page has no authentication. For the same reason
it answers only requests addressed to it by a loopback name (127.0.0.1, localhost, [::1]) or the
--host it was started with, at its port; anything else gets 421. Without that check a web page
elsewhere could point its own host name at 127.0.0.1 (DNS rebinding) and read ./weights/ and the
model list. A path no file can have (a NUL or other control character: 400; a name over 255 bytes
or a path over 4096: 404) is answered before any route touches the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from sdweb import layout
from sdweb.errors import ModelError
from sdweb.layout import REPO_ID

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
SHADERS = ROOT / "shaders"

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows)
PATH_MAX = 4096  # bytes in a whole path (Linux)

ISOLATION_HEADERS = [
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class IsolationHeaders:
    """Adds the cross-origin isolation headers (and no-cache for the app's own code) to every response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        # Vendored Pyodide never changes under a name; the app's own files and the sdweb wheel do.
        cacheable = path.startswith("/vendor/pyodide/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"cache-control",) or cacheable]
                headers += ISOLATION_HEADERS
                if not cacheable:
                    headers.append((b"cache-control", b"no-cache"))
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host headers the server answers: the loopback names and `host` (what --host bound), at `port`."""
    names = {*LOOPBACK_NAMES, f"[{host}]" if ":" in host else host}
    return {f"{n}:{port}".lower() for n in names} | ({n.lower() for n in names} if port == 80 else set())


class RequestGuard:
    """Answers, before any route runs, a request with a Host header not in `hosts` (421) and a path
    no file can have (400 for a control character such as NUL, 404 for an over-long name or path)."""

    def __init__(self, app: ASGIApp, hosts: set[str]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        path = scope["path"]
        if host not in self.hosts:
            # 421 Misdirected Request (RFC 9110 15.5.20): the request named a server this is not.
            response = PlainTextResponse(f"this server answers only as {', '.join(sorted(self.hosts))}, not as "
                                         f"{host or 'no host'!r}; start scripts/serve.py with --host <that name> "
                                         "to use another name\n", status_code=421)
        elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            response = PlainTextResponse("bad path: it has a control character\n", status_code=400)
        elif len(path.encode("utf-8", "surrogatepass")) > PATH_MAX or \
                any(len(part.encode("utf-8", "surrogatepass")) > NAME_MAX for part in path.split("/")):
            response = PlainTextResponse(f"not found: a name over {NAME_MAX} bytes or a path over {PATH_MAX}\n",
                                         status_code=404)
        else:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)


class WasmStaticFiles(StaticFiles):
    """StaticFiles with the MIME types browsers insist on (streaming wasm compile, module workers)."""

    def file_response(self, full_path, stat_result, scope, status_code=200):
        response = super().file_response(full_path, stat_result, scope, status_code)
        name = str(full_path)
        if name.endswith(".wasm"):
            response.headers["content-type"] = "application/wasm"
        elif name.endswith((".mjs", ".js")):
            response.headers["content-type"] = "text/javascript; charset=utf-8"
        elif name.endswith(".wgsl"):
            response.headers["content-type"] = "text/plain; charset=utf-8"
        return response


# --- ./weights/ as a Hub ---------------------------------------------------------------------------

_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def _file_sha256(path: Path) -> str:
    """sha256 of a weights file, computed once per (path, size, mtime): the Hub's LFS ETag."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _sha_lock:
        if key in _sha_cache:
            return _sha_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    with _sha_lock:
        _sha_cache[key] = digest
    return digest


def _hub_error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"x-error-code": code, "x-error-message": message,
                                 "access-control-expose-headers": "x-error-code, x-error-message"})


def make_app(weights_dir: Path | str | None = None, web_dir: Path | str = WEB, host: str = "127.0.0.1",
             port: int = 8000) -> Starlette:
    """The ASGI app. `weights_dir` defaults to ./weights (relative to the working directory); `host`
    and `port` are where it is served, for the Host check (see the module docstring)."""
    weights = Path(weights_dir if weights_dir is not None else "weights").resolve()

    def model_file(repo: str, path: str) -> tuple[Path | None, Path | None]:
        """(the model's folder, the file) under weights/, each None where there is none to serve. The
        folder may be a link; the file, links followed, must be inside the folder's real place."""
        repo_dir = weights / repo
        try:
            if not REPO_ID.match(repo) or not repo_dir.is_dir():
                return None, None
            f = (repo_dir / path).resolve()
            return repo_dir, f if repo_dir.resolve() in f.parents and f.is_file() else None
        except (OSError, RuntimeError):  # a link loop (RuntimeError from Path.resolve), a name too long
            return repo_dir, None

    async def hub_resolve(request: Request):
        p = request.path_params
        repo = f"{p['owner']}/{p['name']}"
        repo_dir, f = model_file(repo, p["path"])
        if repo_dir is None:
            return _hub_error(404, "RepoNotFound", f"{repo} is not under {weights}")
        if f is None:
            return _hub_error(404, "EntryNotFound", f"{p['path']} not found in {repo}")
        headers = {"access-control-expose-headers":
                   "content-range, content-length, etag, x-linked-etag, x-linked-size, accept-ranges"}
        if f.suffix == ".safetensors":
            digest = await run_in_threadpool(_file_sha256, f)
            headers["x-linked-etag"] = f'"{digest}"'
            headers["x-linked-size"] = str(f.stat().st_size)
        response = FileResponse(f, headers=headers)
        if f.suffix == ".safetensors":
            response.headers["etag"] = f'"{digest}"'
        return response

    def tiny_autoencoder(config: Path) -> bool:
        try:
            layout.check_autoencoder_config(config.read_text(encoding="utf-8"), "")
        except (OSError, ModelError):
            return False
        return not (config.parent / layout.INDEX).exists()

    async def local_models(request: Request):
        found, tiny = [], []
        if weights.is_dir():
            for index in sorted(weights.glob("*/*/model_index.json")):
                repo = f"{index.parent.parent.name}/{index.parent.name}"
                if REPO_ID.match(repo):  # what hub_resolve serves, and nothing it would refuse
                    found.append(repo)
            for config in sorted(weights.glob(f"*/*/{layout.AUTOENCODER_CONFIG}")):
                repo = f"{config.parent.parent.name}/{config.parent.name}"
                if REPO_ID.match(repo) and tiny_autoencoder(config):
                    tiny.append(repo)
        return JSONResponse({"models": found, "tiny_autoencoders": tiny})

    routes = [
        Route("/hub/api/local-models", local_models),
        Route("/hub/{owner}/{name}/resolve/{revision}/{path:path}", hub_resolve, methods=["GET", "HEAD"]),
        Mount("/shaders", app=WasmStaticFiles(directory=SHADERS, check_dir=False), name="shaders"),
        Mount("/", app=WasmStaticFiles(directory=web_dir, html=True), name="web"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(RequestGuard, hosts=allowed_hosts(host, port)),
                                                Middleware(IsolationHeaders)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Serve the sdweb page (and ./weights/ in the Hub layout).")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    ap.add_argument("--weights", default=os.environ.get("SDWEB_WEIGHTS", "weights"),
                    help="folder of prefetched models served at /hub (default ./weights)")
    args = ap.parse_args(argv)
    import uvicorn

    missing = [p for p in ("vendor/pyodide/pyodide.mjs", "vendor/wheels/manifest.json") if not (WEB / p).is_file()]
    if missing:
        print(f"serve: web/{missing[0]} is missing: run `python scripts/vendor_pyodide.py` (or scripts/start.sh)",
              file=sys.stderr)
        return 2
    print(f"sdweb: open http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/ in Chrome "
          f"(prefetched models from {Path(args.weights).resolve()} at /hub)", file=sys.stderr, flush=True)
    uvicorn.run(make_app(args.weights, host=args.host, port=args.port), host=args.host, port=args.port,
                log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
