"""scripts/serve.py, the development server, through starlette's TestClient (the ASGI app in process).

What must hold: it answers only requests addressed to it (a loopback name or its --host, at its
port), so a page elsewhere cannot read ./weights/ through DNS rebinding; a path no file can have
(a NUL, an over-long name) is a 400/404, never a 500; a model folder under ./weights/ that is a link
(a model kept on another disk) is served, while a link inside a model that leads out of it is not.
The references are the files on disk (bytes, sha256 by hashlib) and the status codes HTTP defines.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest
from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
WEIGHT = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def serve():
    spec = importlib.util.spec_from_file_location("serve", ROOT / "scripts" / "serve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_model(folder: Path) -> Path:
    """A model folder as far as the server cares: a model_index.json and a weights file."""
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / WEIGHT).write_bytes(bytes(range(256)) * 40)
    return folder


@pytest.fixture
def weights(tmp_path) -> Path:
    make_model(tmp_path / "weights" / "test" / "real")
    return tmp_path / "weights"


ALLOWED = ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LocalHost:8000"]
REFUSED = ["evil.example:8000", "evil.example", "127.0.0.1:8001", "127.0.0.1", "localhost", "[::1]",
           "localhost.evil.example:8000", "127.0.0.1:8000.evil.example", "0.0.0.0:8000", ""]


def test_only_requests_addressed_to_it_are_answered(serve, weights):
    client = TestClient(serve.make_app(weights, port=8000), base_url="http://127.0.0.1:8000")
    for host in ALLOWED:
        r = client.get("/hub/api/local-models", headers={"Host": host})
        assert r.status_code == 200 and r.json()["models"] == ["test/real"], host
    for host in REFUSED:
        for url in ("/hub/api/local-models", f"/hub/test/real/resolve/main/{WEIGHT}", "/"):
            r = client.get(url, headers={"Host": host})
            assert r.status_code == 421, (host, url, r.status_code)
            assert "127.0.0.1:8000" in r.text and "--host" in r.text and len(r.text.splitlines()) == 1
            assert "test/real" not in r.text and b"\x00\x01\x02" not in r.content

    # The name it was started with, at its port, and nothing more; port 80 may go unsaid.
    client = TestClient(serve.make_app(weights, host="sdweb.lan", port=8000), base_url="http://sdweb.lan:8000")
    assert client.get("/hub/api/local-models").status_code == 200
    assert client.get("/hub/api/local-models", headers={"Host": "sdweb.lan:8001"}).status_code == 421
    assert client.get("/hub/api/local-models", headers={"Host": "other.lan:8000"}).status_code == 421
    client = TestClient(serve.make_app(weights, host="::", port=80), base_url="http://localhost")
    for host in ("localhost", "localhost:80", "[::]:80", "[::1]"):
        assert client.get("/hub/api/local-models", headers={"Host": host}).status_code == 200, host
    assert client.get("/hub/api/local-models", headers={"Host": "evil.example"}).status_code == 421


BAD_PATHS = {
    "/%00": 400,
    "/app.js%00": 400,
    "/hub/te%00st/real/resolve/main/model_index.json": 400,
    "/hub/test/real/resolve/main/model_index.json%00": 400,
    "/hub/test/real/resolve/main/unet/a%00b.safetensors": 400,
    "/hub/test/real/resolve/main/%0a": 400,
    "/" + "a" * 300: 404,
    "/shaders/" + "a" * 300: 404,
    "/hub/test/real/resolve/main/" + "a" * 300: 404,
    "/hub/test/real/resolve/main/unet/" + "é" * 128: 404,  # 256 bytes of UTF-8
    "/hub/test/" + "b" * 300 + "/resolve/main/model_index.json": 404,
    "/hub/test/real/resolve/main/" + "a/" * 2100 + "x": 404,
}


@pytest.mark.parametrize("url", BAD_PATHS)
def test_a_path_no_file_can_have_is_400_or_404(serve, weights, url):
    client = TestClient(serve.make_app(weights, port=8000), base_url="http://127.0.0.1:8000")
    r = client.get(url)  # a 500 would raise here: TestClient re-raises the server's exception
    assert r.status_code == BAD_PATHS[url], r.text
    assert "Traceback" not in r.text and len(r.text.splitlines()) <= 1
    assert client.get("/hub/test/real/resolve/main/model_index.json").status_code == 200


def test_a_linked_model_folder_is_served_but_no_link_out_of_a_model(serve, weights, tmp_path):
    other_disk = tmp_path / "other-disk"
    linked = make_model(other_disk / "sd")
    (weights / "test" / "linked").symlink_to(linked)  # people keep models on another disk
    make_model(other_disk / "owners" / "far-model")
    (weights / "far").symlink_to(other_disk / "owners")  # an owner folder that is a link works too
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "hf_secret"}')
    (linked / "secret.json").symlink_to(secret)  # out of the model: refused
    (linked / "other.json").symlink_to(weights / "test" / "real" / "model_index.json")  # another model: refused
    (linked / "alias.json").symlink_to("model_index.json")  # inside the model: served
    (linked / "loop.json").symlink_to("loop.json")
    make_model(weights / "test" / "not an id")  # no Hub repo id: neither listed nor served

    client = TestClient(serve.make_app(weights, port=8000), base_url="http://127.0.0.1:8000")
    assert client.get("/hub/api/local-models").json() == {"models": ["far/far-model", "test/linked", "test/real"],
                                                          "tiny_autoencoders": []}
    data = (linked / WEIGHT).read_bytes()
    r = client.get(f"/hub/test/linked/resolve/main/{WEIGHT}", headers={"Range": "bytes=8-99"})
    assert r.status_code == 206 and r.content == data[8:100]
    assert r.headers["x-linked-etag"].strip('"') == hashlib.sha256(data).hexdigest()
    r = client.get("/hub/test/linked/resolve/main/alias.json")
    assert r.status_code == 200 and r.content == (linked / "model_index.json").read_bytes()
    r = client.get("/hub/far/far-model/resolve/main/model_index.json")
    assert r.status_code == 200 and r.content == (linked / "model_index.json").read_bytes()
    # (%2e%2e: a client would fold a literal ../ into the URL before sending it)
    for name in ("secret.json", "other.json", "loop.json", "%2e%2e/real/model_index.json",
                 "%2e%2e/%2e%2e/%2e%2e/secret.json"):
        r = client.get(f"/hub/test/linked/resolve/main/{name}")
        assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound", (name, r.status_code)
        assert "hf_secret" not in r.text
    # Each names a real file, through an owner/name that is not a Hub repo id (the second one outside
    # weights/: the model folder's own link is followed, so its name must not climb).
    for repo, name in (("test/%2e%2e", "test/real/model_index.json"), ("%2e%2e/other-disk", "sd/model_index.json"),
                       ("test/%2e", "real/model_index.json"), ("test/not%20an%20id", "model_index.json")):
        r = client.get(f"/hub/{repo}/resolve/main/{name}")
        assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound", (repo, r.status_code)


def test_prefetched_tiny_autoencoders_are_listed_apart(serve, tmp_path, sd1_tiny, taesd_tiny):
    """madebyollin/taesd in weights/ (`sdweb download` leaves it there) is served like a model and
    listed as a tiny autoencoder, not in the model picker; another root config.json is neither."""
    shutil.copytree(sd1_tiny, tmp_path / "test" / "sd1-tiny")
    shutil.copytree(taesd_tiny, tmp_path / "madebyollin" / "taesd")
    (tmp_path / "o" / "unet").mkdir(parents=True)
    (tmp_path / "o" / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    client = TestClient(serve.make_app(tmp_path), base_url="http://127.0.0.1:8000")
    assert client.get("/hub/api/local-models").json() == {"models": ["test/sd1-tiny"],
                                                          "tiny_autoencoders": ["madebyollin/taesd"]}
    r = client.get("/hub/madebyollin/taesd/resolve/main/diffusion_pytorch_model.safetensors")
    assert r.status_code == 200 and r.content == (taesd_tiny / "diffusion_pytorch_model.safetensors").read_bytes()


def test_serve_app_headers_range_and_hub_layout(serve, tmp_path, sd1_tiny):
    shutil.copytree(sd1_tiny, tmp_path / "test" / "sd1-tiny")
    client = TestClient(serve.make_app(tmp_path), base_url="http://127.0.0.1:8000")
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
    assert client.get("/hub/api/local-models").json() == {"models": ["test/sd1-tiny"], "tiny_autoencoders": []}
