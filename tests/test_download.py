"""`sdweb download` / scripts/fetch_weights.py against a local Hub (tests/hub_server.py, real HTTP).

What must hold: only the files the app needs are fetched, byte-identical to the repo; a dropped
connection resumes with Range where it stopped, within a run and across runs, without refetching;
a corrupt file is rejected and nothing bad is kept; 401/403/404, no network and a full disk each give
one clear line; the token is sent but never shown or stored; the folder works with `sdweb generate`.
The references are the source folders (byte comparison), the server's request log, and sha256 /
the LFS pointer files, never numbers the downloader itself produced.
"""

from __future__ import annotations

import errno
import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdweb import catalogue, layout
from sdweb import download as dl
from sdweb.errors import ModelError
from sdweb.cli import main
from sdweb.model import ModelFolder
from sdweb.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]

FP16_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "text_encoder/model.fp16.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
}
FP32_FILES = {p.replace(".fp16.", ".") for p in FP16_FILES}
UNET16 = "unet/diffusion_pytorch_model.fp16.safetensors"
VAE16 = "vae/diffusion_pytorch_model.fp16.safetensors"


@pytest.fixture(autouse=True)
def hub_env(monkeypatch, tmp_path):
    """No token, progress bars or cache from the machine leak into a test."""
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "SDWEB_WEIGHTS", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: os.environ.get("HF_TOKEN"))


def run(args, capfd):
    code = main(args)
    out, err = capfd.readouterr()
    return code, out, err


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("sdweb: error:")]
    assert len(lines) == 1, err
    return lines[0]


def content_gets(hub, name: str):
    """GETs that carried the bytes of file `name` (LFS files come from /_lfs/?...&path=name)."""
    return [r for r in hub.requests(method="GET") if r.path.endswith(f"path={name}") or r.path.endswith(f"/{name}")]


def fetched_names(hub) -> set[str]:
    """Repo paths whose bytes were fetched (GET /resolve/<rev>/<path> or /_lfs/<sha>?...&path=<path>)."""
    out = set()
    for r in hub.requests(method="GET"):
        if r.path.startswith("/_lfs/"):
            out.add(r.path.split("&path=", 1)[1])
        elif "/resolve/" in r.path:
            out.add(r.path.split("/resolve/", 1)[1].split("/", 1)[1])
    return out


def test_downloads_only_the_needed_files_byte_identical(hub, tmp_path, monkeypatch, capfd, sd1_tiny):
    repo = hub.repo_dir("test/sd1-tiny")
    junk = {
        "README.md": b"# card",
        "v1-5-pruned-emaonly.ckpt": b"pickle",
        "v1-5-pruned-emaonly.safetensors": (repo / UNET16).read_bytes()[:1000],
        "safety_checker/config.json": b"{}",
        "safety_checker/model.fp16.safetensors": b"x" * 100,
        "feature_extractor/preprocessor_config.json": b"{}",
        "unet/diffusion_pytorch_model.bin": b"pickle",
        "unet/diffusion_pytorch_model.fp16.bin": b"pickle",
        "unet/diffusion_pytorch_model.non_ema.safetensors": b"x" * 100,
        "unet/diffusion_flax_model.msgpack": b"flax",
        "text_encoder/pytorch_model.bin": b"pickle",
        "onnx/unet/model.onnx": b"onnx",
        "tokenizer/tokenizer.json": b"{}",
    }
    for name, data in junk.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    dest = tmp_path / "w"
    code, out, err = run(["download", "test/sd1-tiny", "--dir", str(dest)], capfd)
    assert code == 0, err
    assert files_in(dest) == FP16_FILES | {dl.RECORD}
    for name in FP16_FILES:
        assert filecmp.cmp(dest / name, sd1_tiny / name, shallow=False), name
    for r in hub.log:  # nothing else was even asked for
        assert not any(j in r.path for j in junk), r
    for name in FP16_FILES:  # each file's bytes crossed the wire exactly once
        assert sum(r.sent for r in content_gets(hub, name)) == (sd1_tiny / name).stat().st_size, name
    record = json.loads((dest / dl.RECORD).read_text())
    assert record["repo"] == "test/sd1-tiny" and set(record["files"]) == FP16_FILES

    hub.clear_log()
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    assert code == 0, err
    assert "12 of 12 files already here and verified" in err
    assert not [r for r in hub.requests(method="GET") if "resolve" in r.path or "_lfs" in r.path]


def test_a_tiny_autoencoder(hub, tmp_path, monkeypatch, capfd, taesd_tiny):
    """madebyollin/taesd's layout: its config.json and diffusers weight file, nothing else (not its
    pickles, not the original halves); a root config.json of another class stops before any weights."""
    repo = hub.add_repo("madebyollin/taesd", taesd_tiny, license="mit")
    for name in ("diffusion_pytorch_model.bin", "taesd_decoder.pth", "taesd_encoder.safetensors", "README.md"):
        (repo / name).write_bytes(b"other")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["download", "madebyollin/taesd"], capfd)
    assert code == 0, err
    dest = tmp_path / "weights" / "madebyollin" / "taesd"
    want = {"config.json", "diffusion_pytorch_model.safetensors"}
    assert files_in(dest) == want | {dl.RECORD}
    for name in want:
        assert filecmp.cmp(dest / name, taesd_tiny / name, shallow=False), name
    assert "note: no fp16 weights in the repo; taking diffusion_pytorch_model.safetensors" in err
    assert "--preview taesd" in err and "--decoder taesd" in err

    other = hub.add_repo("o/unet-only")
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (other / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 100)
    hub.clear_log()
    code, _, err = run(["download", "o/unet-only", "--dir", str(tmp_path / "u")], capfd)
    assert code == 2
    assert "o/unet-only has no model_index.json, so it is not a diffusers pipeline, and its config.json describes " \
        "a UNet2DConditionModel, not a tiny autoencoder" in error_line(err)
    assert fetched_names(hub) == {"config.json"}


def test_fp32_variant_and_fallback_to_plain_files(hub, tmp_path, monkeypatch, capfd, sd1_tiny, sd2_tiny):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code, _, err = run(["download", "test/sd1-tiny", "--variant", "fp32", "--dir", str(tmp_path / "a"), "-q"], capfd)
    assert code == 0, err
    assert files_in(tmp_path / "a") == FP32_FILES | {dl.RECORD}
    assert filecmp.cmp(tmp_path / "a" / "unet/diffusion_pytorch_model.safetensors",
                       sd1_tiny / "unet/diffusion_pytorch_model.safetensors", shallow=False)
    # sd2-tiny has no .fp16 files: the default takes the plain ones and says so.
    code, _, err = run(["download", "test/sd2-tiny", "--dir", str(tmp_path / "b"), "-q"], capfd)
    assert code == 0, err
    assert files_in(tmp_path / "b") == FP32_FILES | {dl.RECORD}
    assert "unet: no fp16 weights in the repo; taking diffusion_pytorch_model.safetensors" in err
    for name in FP32_FILES:
        assert filecmp.cmp(tmp_path / "b" / name, sd2_tiny / name, shallow=False), name


def test_resumes_a_cut_connection_where_it_stopped(hub, tmp_path, monkeypatch, capfd, sd1_tiny):
    size = (sd1_tiny / UNET16).stat().st_size
    hub.cut("test/sd1-tiny", UNET16, after=1_000_000)
    # And a flaky one: every response for the text encoder dies after 300 kB, three times over.
    hub.cut("test/sd1-tiny", "text_encoder/model.fp16.safetensors", after=300_000, times=3, each_response=True)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    dest = tmp_path / "w"
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    assert code == 0, err
    gets = content_gets(hub, UNET16)
    assert [(r.range, r.status, r.sent, r.cut) for r in gets] == [
        ("bytes=0-", 206, 1_000_000, True),
        ("bytes=1000000-", 206, size - 1_000_000, False),
    ]
    te = content_gets(hub, "text_encoder/model.fp16.safetensors")
    assert [r.range for r in te] == ["bytes=0-", "bytes=300000-", "bytes=600000-", "bytes=900000-"]
    assert sum(r.sent for r in te) == (sd1_tiny / "text_encoder/model.fp16.safetensors").stat().st_size
    assert "connection lost at 1.0 MB" in err
    for name in FP16_FILES:
        assert filecmp.cmp(dest / name, sd1_tiny / name, shallow=False), name
    assert not (dest / dl.PARTIAL_DIR).exists()


def test_an_interrupted_run_is_resumed_by_the_next(hub, tmp_path, monkeypatch, capfd, sd1_tiny):
    """Ctrl-C in the middle of the UNet (through scripts/fetch_weights.py, a real process), then a
    second run: it asks for exactly the bytes the first one did not keep."""
    size = (sd1_tiny / UNET16).stat().st_size
    hub.slow(400_000, "test/sd1-tiny", UNET16)
    dest = tmp_path / "w"
    env = dict(os.environ, HF_ENDPOINT=hub.url, PYTHONPATH=str(ROOT / "py"))
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "fetch_weights.py"), "test/sd1-tiny",
                             "--dir", str(dest), "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial_dir = dest / dl.PARTIAL_DIR / "unet"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = list(partial_dir.glob("*")) if partial_dir.is_dir() else []
        if parts and parts[0].stat().st_size > 200_000:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "download interrupted" in err and "a rerun resumes from it" in err
    assert not (dest / UNET16).exists()
    (part,) = partial_dir.glob("*")
    kept = part.stat().st_size
    assert 200_000 < kept < size
    assert part.read_bytes() == (sd1_tiny / UNET16).read_bytes()[:kept]

    hub.slow(None)
    hub.clear_log()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    assert code == 0, err
    gets = content_gets(hub, UNET16)
    assert [(r.range, r.sent) for r in gets] == [(f"bytes={kept}-", size - kept)]
    assert filecmp.cmp(dest / UNET16, sd1_tiny / UNET16, shallow=False)
    assert not (dest / dl.PARTIAL_DIR).exists()


@pytest.mark.parametrize("name, kind", [(VAE16, "sha256"), ("tokenizer/merges.txt", "git-blob")])
def test_a_corrupt_file_is_rejected_and_nothing_bad_kept(hub, tmp_path, monkeypatch, capfd, sd1_tiny, name, kind):
    hub.corrupt("test/sd1-tiny", name, offset=1234)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    dest = tmp_path / "w"
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    line = error_line(err)
    assert code == 2 and f"{name} is corrupt: its {kind} is" in line and "deleted" in line, line
    assert not (dest / name).exists()
    assert not (dest / dl.PARTIAL_DIR).exists()  # no partial copy either
    for f in files_in(dest) - {dl.RECORD}:  # whatever was kept is right
        assert filecmp.cmp(dest / f, sd1_tiny / f, shallow=False), f

    kept = files_in(dest) - {dl.RECORD}
    hub.reset_faults()
    hub.clear_log()
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    assert code == 0, err
    assert fetched_names(hub) == FP16_FILES - kept and name in FP16_FILES - kept  # the good ones stay
    for f in FP16_FILES:
        assert filecmp.cmp(dest / f, sd1_tiny / f, shallow=False), f


def test_gated_repo_needs_a_token_which_is_never_shown(hub, tmp_path, monkeypatch, capfd, sd1_tiny):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    dest = tmp_path / "w"
    code, _, err = run(["download", "test/sd1-tiny-gated", "--dir", str(dest), "-q"], capfd)
    line = error_line(err)
    assert code == 2
    for needle in ("test/sd1-tiny-gated is gated or private", "HTTP 401", "accept its licence",
                   f"{hub.url}/test/sd1-tiny-gated", "HF_TOKEN=<token>", "--token <token>"):
        assert needle in line, (needle, line)
    assert not any(p.suffix == ".safetensors" for p in dest.rglob("*"))

    wrong = "hf_notTheRightToken123"
    code, out, err = run(["download", "test/sd1-tiny-gated", "--dir", str(dest), "-q", "--token", wrong], capfd)
    assert code == 2 and "refused the token given (HTTP 403)" in error_line(err)
    assert wrong not in out + err

    # The right token through HF_TOKEN; the LFS bytes come from another origin (like the Hub's CDN),
    # which must not be handed the token.
    hub.cdn_host = "localhost"
    monkeypatch.setenv("HF_TOKEN", hub.token)
    hub.clear_log()
    code, out, err = run(["download", "test/sd1-tiny-gated", "--dir", str(dest)], capfd)
    assert code == 0, err
    for name in FP16_FILES:
        assert filecmp.cmp(dest / name, sd1_tiny / name, shallow=False), name
    assert hub.token not in out + err
    for p in dest.rglob("*"):
        if p.is_file():
            assert hub.token.encode() not in p.read_bytes(), p
    resolves = [r for r in hub.log if "/resolve/" in r.path]
    assert resolves and all(r.auth == "valid" for r in resolves)
    lfs = [r for r in hub.log if r.path.startswith("/_lfs/")]
    assert lfs and all(r.auth == "none" for r in lfs)


def test_missing_repo_says_404(hub, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code, _, err = run(["download", "test/no-such-model", "--dir", str(tmp_path / "w")], capfd)
    line = error_line(err)
    assert code == 2 and "repo test/no-such-model not found" in line and "HTTP 404" in line
    assert not (tmp_path / "w").exists()


def test_not_a_diffusers_repo(hub, tmp_path, monkeypatch, capfd, sd1_tiny):
    repo = hub.add_repo("test/only-bin", sd1_tiny)
    for p in (repo / "unet").glob("*.safetensors"):
        p.rename(p.with_suffix(".bin"))
    hub.add_repo("test/empty")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code, _, err = run(["download", "test/only-bin", "--dir", str(tmp_path / "a")], capfd)
    assert code == 2 and "unet/ has no .safetensors weights" in error_line(err) and ".bin" in error_line(err)
    code, _, err = run(["download", "test/empty", "--dir", str(tmp_path / "b")], capfd)
    assert code == 2 and "test/empty has no model_index.json, so it is not a diffusers pipeline" in error_line(err)
    code, _, err = run(["download", "not-a-repo-id"], capfd)
    assert code == 2 and "is not a Hub repo id" in error_line(err)


def test_no_network(tmp_path, monkeypatch, capfd):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(tmp_path / "w")], capfd)
    line = error_line(err)
    assert code == 2 and f"cannot reach http://127.0.0.1:{port} (connection refused)" in line, line
    assert "HF_ENDPOINT" in line


def test_disk_full_before_and_during(hub, tmp_path, monkeypatch, capfd, sd1_tiny):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    real_usage = dl.shutil.disk_usage
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1_000_000))
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(tmp_path / "w")], capfd)
    line = error_line(err)
    assert code == 2 and "not enough disk space" in line and "7.6 MB more but 1.0 MB is free" in line, line
    assert not hub.requests(path_contains="/resolve/", method="GET")
    monkeypatch.undo()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)

    def full_disk(self, url, headers, auth, part, size, label):
        if label == UNET16:  # the disk fills up 4096 bytes into the UNet
            part.write_bytes((sd1_tiny / UNET16).read_bytes()[:4096])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_stream(self, url, headers, auth, part, size, label)

    real_stream = dl._Downloader.stream
    monkeypatch.setattr(dl._Downloader, "stream", full_disk)
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(tmp_path / "w"), "-q"], capfd)
    line = error_line(err)
    assert code == 2 and "no space left on the disk" in line and UNET16 in line, line
    assert "the partial file is kept and a rerun resumes from it (4.1 kB so far)" in line
    assert not (tmp_path / "w" / UNET16).exists()


def test_list_of_known_models(capfd):
    code, out, _ = run(["download", "--list"], capfd)
    assert code == 0
    for repo in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1-base",
                 "stabilityai/sd-turbo", "nota-ai/bk-sdm-small", "nota-ai/bk-sdm-tiny",
                 "stable-diffusion-v1-5/stable-diffusion-inpainting", "stabilityai/stable-diffusion-2-inpainting"):
        assert repo in out
    assert "unknown" in out
    # the catalogue's sizes (checked against the repo's LFS pointers in test_layout.py) as the table shows them
    sd15 = catalogue.find("stable-diffusion-v1-5/stable-diffusion-v1-5")
    for variant in ("fp16", "fp32"):
        assert f"{catalogue.weight_bytes(sd15, variant) / 1e9:.2f} GB" in out


def test_generate_runs_on_the_downloaded_model(hub, tmp_path, monkeypatch, capfd, sd1_tiny):
    """Default destination ($SDWEB_WEIGHTS/<repo>), then `generate --model <repo>` finds it and makes
    the same image as the source folder's fp16 files."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("SDWEB_WEIGHTS", str(tmp_path / "weights"))
    code, _, err = run(["download", "test/sd1-tiny", "-q"], capfd)
    assert code == 0, err
    assert (tmp_path / "weights" / "test" / "sd1-tiny" / UNET16).is_file()
    assert "use it with: sdweb generate --model test/sd1-tiny" in err
    out = tmp_path / "fox.png"
    code, _, err = run(["generate", "--model", "test/sd1-tiny", "--prompt", "a red fox in snow", "--steps", "2",
                        "--seed", "4", "--width", "64", "--height", "48", "--scheduler", "ddim", "-q",
                        "--output", str(out)], capfd)
    assert code == 0, err
    want = Pipeline(ModelFolder(sd1_tiny), variant="fp16").generate(
        "a red fox in snow", steps=2, seed=4, width=64, height=48, scheduler="ddim")
    assert np.array_equal(np.asarray(Image.open(out)), want.images[0])


def test_an_inpainting_repo_downloads_and_inpaints(hub, tmp_path, monkeypatch, capfd, sd1_inpaint_tiny):
    """A StableDiffusionInpaintPipeline repo (9-channel UNet) is fetched like any other, and the
    folder runs with an image and a mask, as the source folder does."""
    from sdweb import picture

    hub.add_repo("test/sd1-inpaint-tiny", sd1_inpaint_tiny)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("SDWEB_WEIGHTS", str(tmp_path / "weights"))
    code, _, err = run(["download", "test/sd1-inpaint-tiny", "-q"], capfd)
    assert code == 0, err
    assert files_in(tmp_path / "weights" / "test" / "sd1-inpaint-tiny") >= FP32_FILES
    photo = ROOT / "tests" / "data" / "images" / "astronaut.png"
    mask = tmp_path / "mask.png"
    Image.fromarray(np.tri(96, 96, dtype=np.uint8) * 255).save(mask)
    out = tmp_path / "inpainted.png"
    code, _, err = run(["generate", "--model", "test/sd1-inpaint-tiny", "--prompt", "a red fox", "--steps", "2",
                        "--seed", "4", "--image", str(photo), "--mask", str(mask), "-q", "--output", str(out)], capfd)
    assert code == 0, err
    want = Pipeline(ModelFolder(sd1_inpaint_tiny)).generate(
        "a red fox", steps=2, seed=4, image=picture.read(photo), mask=picture.read(mask, what="mask"))
    assert np.array_equal(np.asarray(Image.open(out)), want.images[0])


def test_select_files_sharded_and_variants():
    def listing(*names):
        return [dl.RemoteFile(n, 10) for n in layout.REQUIRED_FILES + names]

    files, notes, root = dl.select_files("o/n", listing(
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors"))
    names = [f.path for f in files]
    assert names[len(layout.REQUIRED_FILES):] == [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    assert notes == ["vae: no fp16 weights in the repo; taking diffusion_pytorch_model.safetensors"]
    assert root == "model_index.json"
    with pytest.raises(ModelError, match="o/n lacks scheduler/scheduler_config.json, .*: sdweb runs Stable Diffusion"):
        dl.select_files("o/n", [dl.RemoteFile("model_index.json", 1)])


# --- the test Hub itself: what the browser tests rely on too ---------------------------------------


def fetch(url, method="GET", **headers):
    req = urllib.request.Request(url, method=method, headers=headers)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_hub_server_speaks_the_hub_protocol(hub, sd1_tiny):
    data = (sd1_tiny / "tokenizer/merges.txt").read_bytes()
    url = hub.resolve_url("test/sd1-tiny", "tokenizer/merges.txt")
    status, h, body = fetch(url, Range="bytes=10-19")
    assert (status, body, h["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    assert fetch(url, Range="bytes=-5")[2] == data[-5:]
    assert fetch(url, Range=f"bytes={len(data) - 3}-")[2] == data[-3:]
    status, h, _ = fetch(url, Range=f"bytes={len(data)}-")
    assert status == 416 and h["Content-Range"] == f"bytes */{len(data)}"
    status, h, body = fetch(url)
    assert status == 200 and body == data and h["Access-Control-Allow-Origin"] == "*"
    assert h["X-Repo-Commit"] and h["Cache-Control"] == "no-store" and "Content-Range" in h["Access-Control-Expose-Headers"]

    import hashlib

    weights = (sd1_tiny / UNET16).read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    status, h, _ = fetch(hub.resolve_url("test/sd1-tiny", UNET16), method="HEAD")
    assert status == 302 and h["X-Linked-Etag"] == f'"{sha}"' and h["X-Linked-Size"] == str(len(weights))
    assert h["Location"].startswith(f"{hub.url}/_lfs/{sha}")
    status, h, body = fetch(h["Location"], Range="bytes=100-")
    assert status == 206 and body == weights[100:] and h["ETag"] == f'"{sha}"'

    status, h, _ = fetch(hub.url + "/test/sd1-tiny/resolve/main/x", method="OPTIONS",
                         **{"Access-Control-Request-Headers": "authorization,range"})
    assert status == 204 and "Authorization" in h["Access-Control-Allow-Headers"]
    assert fetch(hub.resolve_url("test/nope", "a"))[1]["X-Error-Code"] == "RepoNotFound"
    assert fetch(hub.resolve_url("test/sd1-tiny", "nope.json"))[1]["X-Error-Code"] == "EntryNotFound"
    gated = hub.resolve_url("test/sd1-tiny-gated", "model_index.json")
    assert fetch(gated)[0] == 401 and fetch(gated, Authorization="Bearer nope")[0] == 403
    assert fetch(gated, Authorization=f"Bearer {hub.token}")[0] == 200
    assert fetch(hub.resolve_url("test/sd1-tiny", "model_index.json", revision="v9"))[1]["X-Error-Code"] == \
        "RevisionNotFound"
    assert [r.auth for r in hub.requests("test/sd1-tiny-gated")] == ["none", "invalid", "valid"]


def test_hub_server_works_with_huggingface_hub(hub, tmp_path, sd1_tiny):
    """snapshot_download (the /api/ listing, the tree, HEAD metadata, the LFS redirect) end to end."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi(endpoint=hub.url).model_info("test/sd1-tiny", files_metadata=True)
    unet = next(s for s in info.siblings if s.rfilename == UNET16)
    assert unet.lfs.size == (sd1_tiny / UNET16).stat().st_size
    path = snapshot_download("test/sd1-tiny", endpoint=hub.url, local_dir=tmp_path / "snap",
                             allow_patterns=["*.json", "unet/*"])
    assert filecmp.cmp(Path(path) / UNET16, sd1_tiny / UNET16, shallow=False)


# --- a hostile or broken endpoint -------------------------------------------------------------------


def snapshot(folder: Path, skip: set[Path]) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`, except the trees in `skip`."""
    out = {}
    for p in folder.rglob("*"):
        if any(p == s or s in p.parents for s in skip):
            continue
        out[p.relative_to(folder).as_posix()] = None if p.is_dir() else p.read_bytes()
    return out


def sibling(info: dict, path: str) -> dict:
    return next(s for s in info["siblings"] if s["rfilename"] == path)


def set_field(path, *keys, value):
    """An edit for hub.tamper_listing: sibling `path`'s field (keys, e.g. "lfs", "sha256") = value."""
    def edit(info):
        d = sibling(info, path)
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


def add_sibling(name):
    def edit(info):
        info["siblings"].append({"rfilename": name, "size": 2, "blobId": "0" * 40})
    return edit


MERGES = "tokenizer/merges.txt"
HOSTILE_LISTINGS = {
    # A digest that climbs out of .sdweb-partial/: the partial file's name ends in its first 16
    # characters, so this one was DIR/../vic: appended to, then deleted as a failed download.
    "blobId-climbs-out": (set_field(MERGES, "blobId", value="/../../../../vic" + "0" * 24),
                          "blobId '/../../../../vic"),
    # ... and this one made the stale-partial cleanup delete DIR/../<unet file name>.<16 hex>.
    "sha256-climbs-out": (set_field(UNET16, "lfs", "sha256", value="/../../../../../" + "0" * 48),
                          "lfs.sha256 '/../../../../../"),
    "sha256-too-short": (set_field(UNET16, "lfs", "sha256", value="ab" * 31), "64 lowercase hex digits"),
    "blobId-not-hex": (set_field(MERGES, "blobId", value="g" * 40), "40 lowercase hex digits"),
    "path-dotdot": (add_sibling("../outside.json"), "'../outside.json'"),
    "path-absolute": (add_sibling("/etc/outside.json"), "'/etc/outside.json'"),
    "path-backslash": (add_sibling("unet\\..\\..\\outside.json"), "backslash"),
    "path-nul": (add_sibling("unet/a\x00b.json"), "control character"),
    "path-empty-component": (add_sibling("unet//config.json"), "'unet//config.json'"),
    "path-dot": (add_sibling("./model_index.json"), "'./model_index.json'"),
    "path-too-long": (add_sibling("unet/" + "a" * 300), "255 bytes"),
    "size-negative": (set_field(UNET16, "lfs", "size", value=-1), "lfs.size -1"),
    "size-text": (set_field(MERGES, "size", value="12"), "size '12'"),
    "size-fraction": (set_field(MERGES, "size", value=1.5), "size 1.5"),
    "commit-not-hex": (lambda info: info.update(sha="../../x"), "commit '../../x'"),
    "lfs-without-sha256": (lambda info: sibling(info, UNET16)["lfs"].pop("sha256"), "malformed"),
}


@pytest.mark.parametrize("case", HOSTILE_LISTINGS)
def test_a_hostile_listing_touches_nothing(hub, tmp_path, monkeypatch, capfd, case):
    """Every listing field is untrusted (HF_ENDPOINT may be a mirror, or plain http): a bad path,
    digest, size or commit stops the run with one line before anything is fetched or written."""
    edit, needle = HOSTILE_LISTINGS[case]
    (tmp_path / "vic").write_bytes(b"precious")
    (tmp_path / "diffusion_pytorch_model.fp16.safetensors.0123456789abcdef").write_bytes(b"precious")
    dest = tmp_path / "w"
    before = snapshot(tmp_path, {dest, tmp_path / "hf-home"})
    hub.tamper_listing("test/sd1-tiny", edit)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    line = error_line(err)
    assert code == 2 and needle in line and "nothing was downloaded" in line, line
    assert hub.url in line and "not to be trusted" in line, line
    assert snapshot(tmp_path, {dest, tmp_path / "hf-home"}) == before
    assert not dest.exists()
    assert not hub.requests(path_contains="/resolve/") and not hub.requests(path_contains="/_lfs/")


def test_a_partial_file_is_named_by_hex_digits_only():
    """partial_path is where a digest becomes part of a file name: it takes a hex digest or nothing."""
    dest = Path("/d")
    good = dl.RemoteFile(UNET16, 1, sha256="0123456789abcdef" * 4)
    assert dl.partial_path(dest, good) == dest / dl.PARTIAL_DIR / f"{UNET16}.0123456789abcdef"
    assert dl.partial_path(dest, dl.RemoteFile(MERGES, 1)) == dest / dl.PARTIAL_DIR / f"{MERGES}.unknown"
    for bad in (dl.RemoteFile(UNET16, 1, sha256="/../../../../../" + "0" * 48),
                dl.RemoteFile(MERGES, 1, blob_id="/../../../../vic" + "0" * 24),
                dl.RemoteFile("../" + MERGES, 1, blob_id="0" * 40)):
        with pytest.raises(dl.DownloadError, match="no partial file for"):
            dl.partial_path(dest, bad)


def test_a_link_out_of_the_folder_is_not_written_through(hub, tmp_path, monkeypatch, capfd):
    """Paths are resolved: a link inside the destination that points out of it stops the run."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "w"
    dest.mkdir()
    (dest / "unet").symlink_to(elsewhere)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    line = error_line(err)
    assert code == 2 and f"{dest / 'unet'}" in line and f"outside {dest}" in line, line
    assert not any(elsewhere.iterdir())
    assert not fetched_names(hub) & {"unet/config.json", UNET16}


def test_a_full_disk_while_writing_the_record_keeps_the_old_one(hub, tmp_path, monkeypatch, capfd, sd1_tiny):
    """ENOSPC half-way through .sdweb-download.json: one line naming it; the previous record stays
    whole (the new one is written to a temporary file and renamed over it), no temporary file left."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    dest = tmp_path / "w"
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    assert code == 0, err
    record = (dest / dl.RECORD).read_bytes()
    (dest / VAE16).unlink()  # so the next run fetches it and writes the record again

    real_open = __import__("io").open

    class FullDisk:
        """A text file on a disk that fills up after a few bytes (the real error has no file name)."""

        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if dl.RECORD in str(file) and ("w" in mode or "x" in mode) else f

    monkeypatch.setattr("io.open", open_on_a_full_disk)
    monkeypatch.setattr("builtins.open", open_on_a_full_disk)
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    monkeypatch.undo()
    line = error_line(err)
    assert code == 2 and "no space left on the disk" in line and str(dest / dl.RECORD) in line, line
    assert "the previous record is kept" in line, line
    assert (dest / dl.RECORD).read_bytes() == record
    assert {p.name for p in dest.iterdir() if dl.RECORD in p.name} == {dl.RECORD}
    assert filecmp.cmp(dest / VAE16, sd1_tiny / VAE16, shallow=False)


def test_a_file_in_the_way_is_one_line(hub, tmp_path, monkeypatch, capfd):
    """Any file-system error becomes one line naming the file, not a traceback."""
    dest = tmp_path / "w"
    dest.mkdir()
    (dest / "vae").write_bytes(b"not a folder")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code, _, err = run(["download", "test/sd1-tiny", "--dir", str(dest), "-q"], capfd)
    line = error_line(err)
    assert code == 2 and f"{dest / 'vae'}" in line and "File exists" in line, line
    assert "Traceback" not in err
