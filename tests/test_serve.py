"""scripts/serve.py, the development server, through starlette's test client (no browser)."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_serve_app_headers_range_and_hub_layout(tmp_path, sd1_tiny):
    from starlette.testclient import TestClient

    serve = _load_script("serve")
    shutil.copytree(sd1_tiny, tmp_path / "test" / "sd1-tiny")
    client = TestClient(serve.make_app(tmp_path))
    r = client.get("/")
    assert r.status_code == 200 and 'id="generate"' in r.text
    assert r.headers["cross-origin-opener-policy"] == "same-origin"
    assert r.headers["cross-origin-embedder-policy"] == "require-corp"
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    f = "unet/diffusion_pytorch_model.safetensors"
    data = (sd1_tiny / f).read_bytes()
    r = client.get(f"/hub/test/sd1-tiny/resolve/main/{f}", headers={"Range": "bytes=8-99"})
    assert r.status_code == 206 and r.content == data[8:100]
    assert r.headers["content-range"] == f"bytes 8-99/{len(data)}"
    assert r.headers["x-linked-etag"].strip('"') == hashlib.sha256(data).hexdigest()
    r = client.get("/hub/test/nope/resolve/main/model_index.json")
    assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
    r = client.get("/hub/test/sd1-tiny/resolve/main/missing.json")
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
    assert client.get("/hub/test/sd1-tiny/resolve/main/../../../etc/passwd").status_code == 404
    assert client.get("/hub/api/local-models").json() == {"models": ["test/sd1-tiny"]}
