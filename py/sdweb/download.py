"""`sdweb download REPO`: fetch the files a Stable Diffusion repo (or a tiny autoencoder's, such as
madebyollin/taesd) needs from the Hugging Face Hub.

    sdweb download stable-diffusion-v1-5/stable-diffusion-v1-5      -> ./weights/<owner>/<name>/
    sdweb download madebyollin/taesd                                 -> ./weights/madebyollin/taesd/
    sdweb download REPO --variant fp32 --dir DIR --revision REV --token TOKEN --quiet
    sdweb download --list                                            known-good models
    python scripts/fetch_weights.py REPO ...                         the same command

Only what sdweb reads is fetched, as layout.plan decides it from the repo listing
(`/api/models/{repo}/revision/{rev}?blobs=true`, which also gives every file's size, git blob id and,
for LFS files, sha256): model_index.json, the configs, the tokenizer tables, and for text_encoder,
unet and vae one set of .safetensors weights: the `.fp16` variant when the repo has it (default), the
plain files with `--variant fp32`; either falls back to the other when a component lacks it. Never
.bin / .ckpt (pickles), safety_checker, feature_extractor, onnx or flax files. model_index.json
comes first and is checked (an SD 1.x/2.x pipeline?) before any weight file is fetched; a repo
without one is a tiny autoencoder if its root config.json names AutoencoderTiny (checked alike),
and then only that config.json and its diffusers weight file are fetched.

Each file comes from the commit the listing resolved, so all files match. `huggingface_hub` does
the Hub's side: the listing, the per-file HEAD (auth headers, the Hub's redirect to its CDN, its
error codes: gated, not found, ...), HF_ENDPOINT and the stored token. The bytes are streamed here
(stdlib urllib, 1 MiB reads, a tqdm bar) into a partial file under `DIR/.sdweb-partial/`, and every
attempt asks for `Range: bytes=<what we have>-`: a dropped connection is resumed at once from the
last byte received, and a partial file left by an interrupted run (Ctrl-C, a crash, a full disk) is
resumed by the next run. (huggingface_hub's own `http_get` resumes only at 10 MB boundaries within
one call, and the installed 2.4 deletes its partial files on failure, so it cannot resume across runs.)
Once complete, the file is checked against the listing: its size, then its sha256 (LFS files) or
git blob id (the rest); huggingface_hub checks sizes but not hashes. A file that fails is deleted
and the run stops with an error; only a verified file is renamed to its final name, so a partial or
corrupt file never sits where `ModelFolder` looks. `DIR/.sdweb-download.json` records what was
verified (size, hash, mtime) so a rerun skips verified files without hashing gigabytes again.

The listing and the file headers come from the endpoint, which HF_ENDPOINT may point at a mirror or
at plain http, so none of it is trusted to name a file on disk: every listed path must be relative
and made of plain names, every digest hex of its kind's length (it becomes part of the partial
file's name), every size a non-negative integer, the commit a 40-digit hex id; anything else stops
the run with one line before a byte is fetched. Every path is resolved besides, and one that lands
outside DIR (through a link) is refused. Any file-system error is one line naming the file.

The token (--token, else HF_TOKEN, else the `hf auth login` token) is only ever put in the
Authorization header: it is not printed, logged or written anywhere, and is scrubbed from any
error text that passes through here.

`huggingface_hub` (and tqdm) are CLI-only dependencies (`pip install sdweb[cli]`), imported lazily:
the runtime package, which also runs in Pyodide, never needs them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import catalogue, layout
from .errors import Cancelled, SdwebError

DEFAULT_ENDPOINT = "https://huggingface.co"
PARTIAL_DIR = ".sdweb-partial"
RECORD = ".sdweb-download.json"

VARIANTS = ("fp16", "fp32")

CHUNK = 1 << 20  # bytes per read: also the most a dropped connection can lose of what was received
DOWNLOAD_TIMEOUT = float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or 30)  # seconds without data
RETRY_DELAYS = (1.0, 3.0, 10.0)  # waits before retrying a connection that delivered nothing

_GB = 1e9


class DownloadError(SdwebError):
    """A download failed: network, access, a missing repo or file, a corrupt file, the disk."""


# --- the plan: which files ------------------------------------------------------------------------


@dataclass
class RemoteFile:
    """One file of the repo listing. `sha256` for LFS files; `blob_id` = git blob sha1 (all files)."""

    path: str
    size: int | None
    sha256: str | None = None
    blob_id: str | None = None

    @property
    def digest(self) -> str | None:
        """What the finished file is checked against, as 'sha256:<hex>' or 'git-blob:<hex>'."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.blob_id:
            return f"git-blob:{self.blob_id}"
        return None


def select_files(repo_id: str, files: list[RemoteFile], variant: str = "fp16") \
        -> tuple[list[RemoteFile], list[str], str]:
    """(the files to fetch, notes for the user, the plan's root file: checked before any weights) from
    a repo listing (layout.plan over its names); a ModelError when the repo cannot run here."""
    if variant not in VARIANTS:
        raise DownloadError(f"--variant {variant}: use one of {', '.join(VARIANTS)}")
    by_name = {f.path: f for f in files}
    plan = layout.plan(layout.Listed(by_name), layout.variant_of(variant), repo_id)
    return [by_name[p] for p in plan.files], list(plan.notes), plan.root


# --- small helpers --------------------------------------------------------------------------------


def _human(n: int | None) -> str:
    if n is None:
        return "unknown"
    if n >= _GB:
        return f"{n / _GB:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{n} B"


def _hash_file(path: Path, digest: str) -> str:
    """'sha256:<hex>' or 'git-blob:<hex>' of the file, matching the kind of `digest`."""
    kind = digest.split(":", 1)[0]
    if kind == "sha256":
        h = hashlib.sha256()
    else:
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return f"{kind}:{h.hexdigest()}"


# --- what a listing may name ----------------------------------------------------------------------

HEX_DIGITS = {"sha256": 64, "git-blob": 40, "commit": 40}  # sha256; git's sha1 for blobs and commits
NAME_MAX = 255  # bytes in one file name on common file systems


def hex_problem(value, kind: str) -> str | None:
    """Why `value` is not a `kind` id (see HEX_DIGITS) in lowercase hex, or None when it is one."""
    n = HEX_DIGITS[kind]
    if isinstance(value, str) and re.fullmatch(rf"[0-9a-f]{{{n}}}", value):
        return None
    return f"{value!r}: {kind} ids are {n} lowercase hex digits"


def path_problem(path) -> str | None:
    """Why `path` cannot name a file of a download folder, or None when it can: a relative path with
    '/' between plain names (not '', '.' or '..'; no backslash, no control character such as NUL;
    at most NAME_MAX bytes of UTF-8 each)."""
    if not isinstance(path, str) or not path:
        return f"{path!r}: a file name is a non-empty string"
    what = f"{path!r}: a file name is a relative path of plain names"
    if path.startswith("/"):
        return f"{what}, not an absolute path"
    if "\\" in path:
        return f"{what}, with no backslash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return f"{what}, with no control character"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"{what}, with no {part!r} between its slashes"
        try:
            if len(part.encode("utf-8")) > NAME_MAX:
                return f"{what}, each at most {NAME_MAX} bytes"
        except UnicodeEncodeError:
            return f"{what} in UTF-8"
    return None


def size_problem(size) -> str | None:
    """Why `size` is not a byte count (a non-negative int), or None when it is one."""
    if type(size) is int and size >= 0:
        return None
    return f"{size!r}: a size is a whole number of bytes, 0 or more"


def partial_path(dest: Path, remote: RemoteFile) -> Path:
    """Where `remote` is assembled before it is verified. Keyed by its hash, so a partial file of
    another revision of the same path is never resumed; the key is the hash's first 16 hex digits,
    never anything that could be a path of its own."""
    problem = path_problem(remote.path)
    key = "unknown"
    if remote.digest:
        kind, value = remote.digest.split(":", 1)
        problem = problem or hex_problem(value, kind)
        key = value[:16]
    if problem:
        raise DownloadError(f"no partial file for {remote.path!r}: {problem}")
    return Path(dest) / PARTIAL_DIR / f"{remote.path}.{key}"


def default_dir(repo_id: str) -> Path:
    """$SDWEB_WEIGHTS/<repo> when set, else ./weights/<repo>: where `--model owner/name` looks."""
    base = os.environ.get("SDWEB_WEIGHTS") or "weights"
    return Path(base) / repo_id


def _existing_parent(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _network_reason(e: BaseException) -> str | None:
    """A short reason when `e` is a network failure (connection refused, DNS, timeout, reset), else None.

    Walks the cause chain and goes by class names too, so it works whether huggingface_hub sits on
    requests, httpx or httpx2.
    """
    for x in _chain(e):
        if isinstance(x, ConnectionRefusedError):
            return "connection refused"
        if isinstance(x, socket.gaierror):
            return "host name not resolved"
        if isinstance(x, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return "connection dropped"
        if isinstance(x, TimeoutError):
            return "timed out"
    for x in _chain(e):
        names = {k.__name__ for k in type(x).__mro__}
        if names & {"ConnectError", "ConnectionError", "NewConnectionError", "MaxRetryError"}:
            return "cannot connect"
        if names & {"TimeoutException", "Timeout", "ReadTimeout", "ConnectTimeout", "PoolTimeout"}:
            return "timed out"
        if names & {"RemoteProtocolError", "ReadError", "ProtocolError", "ChunkedEncodingError", "NetworkError"}:
            return "connection dropped"
        if "OfflineModeIsEnabled" in names:
            return "HF_HUB_OFFLINE is set"
    return None


def _content_range_start(value: str | None) -> int | None:
    """'bytes 100-199/1000' -> 100."""
    m = re.match(r"^\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*$", value or "")
    return int(m.group(1)) if m else None


class _Downloader:
    def __init__(self, repo_id, dest, variant, revision, token, endpoint, quiet, out):
        self.repo_id, self.dest, self.variant, self.revision = repo_id, Path(dest), variant, revision
        self.token, self.endpoint, self.quiet, self.out = token, endpoint.rstrip("/"), quiet, out

    # --- messages ---------------------------------------------------------------------------------

    def say(self, msg: str):
        print(self._scrub(msg), file=self.out, flush=True)

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "<token>") if self.token else text

    def fail(self, msg: str):
        raise DownloadError(self._scrub(msg)) from None

    def explain(self, e: BaseException, path: str | None = None, partial: Path | None = None):
        """Turn a huggingface_hub / urllib / network / OS error into one DownloadError line."""
        from huggingface_hub import utils as hfe

        kept = self._kept(partial)
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        code = response.headers.get("X-Error-Code") if response is not None else None
        if isinstance(e, urllib.error.HTTPError):
            status, code = e.code, e.headers.get("X-Error-Code")
        if code is None:
            for cls, c in ((hfe.GatedRepoError, "GatedRepo"), (hfe.RevisionNotFoundError, "RevisionNotFound"),
                           (hfe.EntryNotFoundError, "EntryNotFound"), (hfe.RepositoryNotFoundError, "RepoNotFound")):
                if isinstance(e, cls):
                    code = c
                    break
        if status is not None or code is not None:
            self.fail_http(status, code, path, kept)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            self.disk_error(e, path, kept)
        reason = _network_reason(e)
        what = f"{self.repo_id}/{path}" if path else self.repo_id
        if reason is not None:
            if path is None:
                self.fail(f"cannot reach {self.endpoint} ({reason}): check your network connection"
                          + (" and HF_ENDPOINT" if self.endpoint != DEFAULT_ENDPOINT else "")
                          + "; nothing was downloaded")
            self.fail(f"network problem while downloading {what} from {self.endpoint} ({reason})"
                      f"{kept or '; run again'}")
        if isinstance(e, OSError) and e.filename:
            self.disk_error(e)
        text = str(e).splitlines()[0] if str(e) else ""
        self.fail(f"downloading {what} failed: {type(e).__name__}: {text}{kept}")

    def disk_error(self, e: OSError, file=None, kept: str = ""):
        """One line for a file-system error, naming `file` (else the error's own file name)."""
        file = file or e.filename or self.dest
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            self.fail(f"no space left on the disk of {self.dest} while writing {file}: free some space "
                      f"(see `sdweb download --list` for sizes) or use --dir on another disk{kept}")
        self.fail(f"{file}: {e.strerror or e}{kept}")

    def fail_http(self, status: int | None, code: str | None, path: str | None, kept: str = ""):
        """One line for an HTTP error answer, from its status and the Hub's X-Error-Code."""
        repo, ep = self.repo_id, self.endpoint
        what = f"{repo}/{path}" if path else repo
        page = f"{ep}/{repo}"
        if code == "RevisionNotFound":
            self.fail(f"{repo} has no revision {self.revision!r} (HTTP {status}): use a branch, tag or commit of the repo")
        if code == "EntryNotFound" or (status == 404 and path and code != "RepoNotFound"):
            self.fail(f"{what} not found on {ep} (HTTP {status or 404}): the repo listing named it, so the repo "
                      "may have changed since; run again")
        if code == "GatedRepo" or (status in (401, 403) and code != "RepoNotFound"):
            if status == 403:
                self.fail(f"{repo} refused the token given (HTTP 403): the repo is gated or private; accept its "
                          f"licence at {page} while logged in as the token's owner (some repos need the authors' "
                          f"approval), or check the token at {ep}/settings/tokens")
            tried = "the token given was not accepted" if self.token else "no token was given"
            self.fail(f"{repo} is gated or private and needs a Hugging Face token (HTTP {status}, {tried}): accept "
                      f"its licence at {page} while logged in, create a read token at {ep}/settings/tokens, then "
                      "run again with HF_TOKEN=<token> in the environment or --token <token>")
        if code == "RepoNotFound" or status == 404:
            if status == 401:
                self.fail(f"{repo} not found, or private (HTTP 401): check the repo id (owner/name, as in the URL "
                          "of its Hub page); for a private repo pass a token with HF_TOKEN=<token> or --token <token>")
            self.fail(f"repo {repo} not found on {ep} (HTTP {status or 404}): check the id (owner/name, as in "
                      "the URL of its Hub page)")
        if status is not None and status >= 500:
            self.fail(f"{ep} answered HTTP {status} for {what}: the Hub is having trouble, try again later{kept}")
        self.fail(f"{ep} answered HTTP {status} for {what}{kept}")

    @staticmethod
    def _kept(partial: Path | None) -> str:
        if partial is not None and partial.exists() and partial.stat().st_size:
            return f"; the partial file is kept and a rerun resumes from it ({_human(partial.stat().st_size)} so far)"
        return ""

    # --- steps ------------------------------------------------------------------------------------

    def listing(self) -> tuple[str, list[RemoteFile], object]:
        from huggingface_hub import HfApi

        try:
            info = HfApi(endpoint=self.endpoint).model_info(
                self.repo_id, revision=self.revision, files_metadata=True, token=self.token or False)
        except (KeyError, TypeError, AttributeError) as e:  # huggingface_hub could not parse the JSON
            self.untrusted(f"is malformed ({type(e).__name__}: {e})")
        except Exception as e:  # noqa: BLE001 - every failure becomes one explained line
            self.explain(e)
        files = [self.remote_file(s) for s in info.siblings or []]
        if info.sha is not None and hex_problem(info.sha, "commit"):
            self.untrusted(f"gives the commit {hex_problem(info.sha, 'commit')}")
        return info.sha or self.revision, files, info

    def remote_file(self, sibling) -> RemoteFile:
        """One listing entry as a RemoteFile, every field checked (see the module docstring)."""
        path = sibling.rfilename
        if path_problem(path):
            self.untrusted(f"names the file {path_problem(path)}")
        lfs = sibling.lfs
        fields = [("size", sibling.size, "size"), ("blobId", sibling.blob_id, "git-blob")]
        if lfs is not None:  # an LFS entry carries both
            fields += [("lfs.size", lfs.size, "size"), ("lfs.sha256", lfs.sha256, "sha256")]
        for name, value, kind in fields:
            if value is None and not name.startswith("lfs."):
                continue  # a listing without metadata: the file's own headers give size and hash
            problem = size_problem(value) if kind == "size" else hex_problem(value, kind)
            if problem:
                self.untrusted(f"gives {path} the {name} {problem}")
        return RemoteFile(path, lfs.size if lfs is not None else sibling.size,
                          lfs.sha256 if lfs is not None else None, sibling.blob_id)

    def untrusted(self, what: str):
        """Stop on a listing field a Hub never sends: `what` names the field and what would be right."""
        self.fail(f"{self.endpoint}'s listing of {self.repo_id} {what}; a Hugging Face Hub never sends that, so "
                  "the endpoint is broken or not to be trusted (nothing was downloaded)")

    def inside(self, path: Path) -> Path:
        """`path`, once resolved (links followed) it is in the destination folder; else the run stops."""
        root = self.dest.resolve()
        real = path.resolve()
        if real != root and root not in real.parents:
            self.fail(f"{path} leads to {real}, outside {self.dest}: a link there points out of the folder and "
                      "sdweb download writes only inside it; remove the link or choose another --dir")
        return path

    def partial(self, remote: RemoteFile) -> Path:
        return self.inside(partial_path(self.dest, remote))

    def final(self, remote: RemoteFile) -> Path:
        return self.inside(self.dest / remote.path)

    def fetch(self, commit: str, remote: RemoteFile, index: int, count: int):
        """Download one file: HEAD through huggingface_hub (auth, the CDN redirect, Hub errors), then
        stream the bytes into the partial file, resuming with Range; verify; rename into place."""
        from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        from . import __version__

        final = self.final(remote)
        part = self.partial(remote)
        part.parent.mkdir(parents=True, exist_ok=True)
        # Partial files of other revisions of this path are stale: drop them.
        same_path = re.compile(re.escape(Path(remote.path).name) + r"\.([0-9a-f]{16}|unknown)$")
        for stale in part.parent.iterdir():
            if stale != part and same_path.match(stale.name):
                stale.unlink(missing_ok=True)
        url = hf_hub_url(self.repo_id, remote.path, revision=commit, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token or False, library_name="sdweb",
                                        library_version=__version__)
        except Exception as e:  # noqa: BLE001
            self.explain(e, remote.path)
        if meta.size is not None and size_problem(meta.size):
            self.fail(f"{self.endpoint} answers {self.repo_id}/{remote.path} with the size {size_problem(meta.size)}")
        size = remote.size if remote.size is not None else meta.size
        etag = (meta.etag or "").lower()
        etag_is_sha256 = hex_problem(etag, "sha256") is None  # else a git blob id, or nothing we can use
        if remote.sha256 and etag_is_sha256 and etag != remote.sha256:
            self.fail(f"{self.repo_id}/{remote.path}: the Hub's listing says sha256 {remote.sha256} but the file "
                      f"answers {etag}: the repo changed during the download, run again")
        if remote.sha256 is None and etag_is_sha256:
            remote.sha256 = etag  # a listing without LFS metadata: take the hash from the file's headers
        if size is not None and meta.size is not None and size != meta.size:
            self.fail(f"{self.repo_id}/{remote.path}: the listing says {size} bytes but the file answers "
                      f"{meta.size}: the repo changed during the download, run again")
        if size is None:
            self.fail(f"{self.repo_id}/{remote.path}: the Hub gives no size for it, so it cannot be verified")

        headers = build_hf_headers(token=self.token or False, library_name="sdweb", library_version=__version__)
        auth = headers.pop("authorization", None) or headers.pop("Authorization", None)
        location = meta.location or url
        if urlsplit(location)[:2] != urlsplit(url)[:2]:
            auth = None  # a CDN's signed URL: the token stays with the Hub
        headers["Accept-Encoding"] = "identity"

        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        resumed = f", resuming at {_human(have)}" if have else ""
        self.say(f"[{index}/{count}] {remote.path} ({_human(size)}{resumed})")
        try:
            self.stream(location, headers, auth, part, size, remote.path)
        except KeyboardInterrupt:
            raise Cancelled(f"download interrupted: {remote.path} is kept as a partial file "
                            f"({_human(part.stat().st_size if part.exists() else 0)}) and a rerun resumes "
                            "from it") from None
        except DownloadError:
            raise
        except urllib.error.HTTPError as e:
            if urlsplit(location)[:2] != urlsplit(url)[:2]:
                # The CDN, not the Hub: typically a signed link that expired during a long retry.
                self.fail(f"{urlsplit(location).netloc} answered HTTP {e.code} for {self.repo_id}/{remote.path} "
                          f"(the Hub's download link){self._kept(part)}; run again for a fresh link")
            self.explain(e, remote.path, part)
        except Exception as e:  # noqa: BLE001
            self.explain(e, remote.path, part)

        got = part.stat().st_size
        if got != size:
            part.unlink()
            self.fail(f"{self.repo_id}/{remote.path}: got {got} bytes, the Hub says {size}; the file was deleted, "
                      "run again")
        if remote.digest:
            actual = _hash_file(part, remote.digest)
            if actual != remote.digest:
                part.unlink()
                kind, value = actual.split(":")
                self.fail(f"{self.repo_id}/{remote.path} is corrupt: its {kind} is {value} but the Hub says "
                          f"{remote.digest.split(':')[1]}; the file was deleted (nothing bad is kept): run again "
                          "to download it afresh")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)

    def stream(self, url: str, headers: dict, auth: str | None, part: Path, size: int, label: str):
        """Append bytes [have, size) of `url` to `part`, one GET with `Range: bytes=have-` per attempt.

        A dropped connection that delivered something is retried at once from the new end of the
        file; one that delivered nothing is retried after RETRY_DELAYS, then given up (the partial
        file stays for the next run). `auth` is sent only to `url` itself, never along a redirect.
        """
        bar = self._bar(size, part.stat().st_size if part.exists() else 0, label)
        failures = 0
        restarted = False
        try:
            with open(part, "r+b" if part.exists() else "wb") as f:
                f.seek(0, os.SEEK_END)
                while f.tell() < size:
                    have = f.tell()
                    req = urllib.request.Request(url, headers=dict(headers, Range=f"bytes={have}-"))
                    if auth:
                        req.add_unredirected_header("Authorization", auth)
                    got_any = False
                    try:
                        with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT) as r:
                            if r.status == 200 and have:
                                # The server ignored Range: start over rather than append a second copy.
                                f.seek(0)
                                f.truncate()
                                if bar is not None:
                                    bar.reset(total=size)
                            elif r.status == 206:
                                start = _content_range_start(r.headers.get("Content-Range"))
                                if start != have:
                                    self.fail(f"{self.repo_id}/{label}: asked for bytes from {have}, the server "
                                              f"sent {r.headers.get('Content-Range')!r}")
                            while True:
                                block = r.read(CHUNK)
                                if not block:
                                    break
                                if f.tell() + len(block) > size:
                                    self.fail(f"{self.repo_id}/{label}: the server sent more than the "
                                              f"{size} bytes the Hub announced")
                                f.write(block)
                                got_any = True
                                if bar is not None:
                                    bar.update(len(block))
                        f.flush()
                        if f.tell() < size:
                            raise ConnectionResetError("the response ended early")
                    except urllib.error.HTTPError as e:
                        if e.code == 416 and have and not restarted:
                            # The server does not recognise our partial file's length: start afresh.
                            f.seek(0)
                            f.truncate()
                            restarted = True
                            continue
                        raise
                    except (OSError, http.client.HTTPException) as e:
                        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        f.flush()
                        if got_any:
                            failures = 0
                        elif failures >= len(RETRY_DELAYS):
                            raise
                        else:
                            time.sleep(RETRY_DELAYS[failures])
                            failures += 1
                        print(f"  {label}: connection lost at {_human(f.tell())} of {_human(size)} "
                              f"({type(e).__name__}); resuming from there", file=self.out, flush=True)
        finally:
            if bar is not None:
                bar.close()

    def _bar(self, total: int, initial: int, label: str):
        if self.quiet or total < (1 << 20):  # small files finish before a bar could say anything
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                    file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.25)

    # --- the record of verified files -------------------------------------------------------------

    def read_record(self) -> dict:
        try:
            data = json.loads((self.dest / RECORD).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else {"files": {}}
        except (OSError, ValueError):
            return {"files": {}}

    def write_record(self, record: dict):
        """Write the record to a temporary file, then rename it over the old one: a full disk or a
        crash leaves the previous record whole."""
        path = self.inside(self.dest / RECORD)
        tmp = path.with_name(f".{RECORD}.tmp")
        try:
            tmp.unlink(missing_ok=True)  # so that "x" makes a new file, never writes through a link left there
            with tmp.open("x", encoding="utf-8") as f:
                f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self.disk_error(e, path, "; the previous record is kept")

    def is_done(self, remote: RemoteFile, record: dict) -> bool:
        """Whether the final file is there and verified: by the record (same size, mtime and digest)
        or, failing that, by hashing it now."""
        final = self.final(remote)
        if not final.is_file():
            return False
        st = final.stat()
        if remote.size is not None and st.st_size != remote.size:
            return False
        entry = record["files"].get(remote.path)
        if entry and remote.digest and entry.get("digest") == remote.digest and entry.get("size") == st.st_size \
                and entry.get("mtime_ns") == st.st_mtime_ns:
            return True
        return remote.digest is not None and _hash_file(final, remote.digest) == remote.digest

    def note_done(self, remote: RemoteFile, record: dict):
        st = self.final(remote).stat()
        record["files"][remote.path] = {"size": st.st_size, "digest": remote.digest, "mtime_ns": st.st_mtime_ns}

    # --- the whole run ----------------------------------------------------------------------------

    def run(self) -> Path:
        commit, files, info = self.listing()
        plan, notes, plan_root = select_files(self.repo_id, files, self.variant)
        total = sum(f.size or 0 for f in plan)
        self.say(f"{self.repo_id} @ {commit[:12]}: {len(plan)} files, {_human(total)} "
                 f"({self.variant} weights) -> {self.dest}")
        gated = getattr(info, "gated", None)
        if gated and not self.token:
            self.say(f"note: {self.repo_id} is gated ({gated}); a token is probably needed (HF_TOKEN or --token)")
        for n in notes:
            self.say(f"note: {n}")

        try:
            self.dest.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.fail(f"--dir {self.dest}: cannot create it ({e.strerror or e})")
        record = self.read_record()
        todo = []
        for f in plan:
            if self.is_done(f, record):
                self.note_done(f, record)
            else:
                todo.append(f)
        if len(todo) < len(plan):
            self.say(f"{len(plan) - len(todo)} of {len(plan)} files already here and verified")

        need = sum(max(0, (f.size or 0) - (self.partial(f).stat().st_size if self.partial(f).exists() else 0))
                   for f in todo)
        free = shutil.disk_usage(_existing_parent(self.dest)).free
        if need > free:
            self.fail(f"not enough disk space in {self.dest}: the download needs {_human(need)} more but "
                      f"{_human(free)} is free; free some space or use --dir on another disk (nothing was downloaded)")

        record.update(repo=self.repo_id, revision=self.revision, commit=commit, variant=self.variant,
                      endpoint=self.endpoint)
        t0 = time.perf_counter()
        try:
            checked = False
            for k, f in enumerate(todo, 1):
                if not checked and layout.kind_of(f.path) == "weights":
                    # The plan puts its root file (model_index.json, or a tiny autoencoder's config.json)
                    # first: refuse another model family before its weights.
                    layout.check_root(plan_root, (self.dest / plan_root).read_text(encoding="utf-8"), self.repo_id)
                    checked = True
                self.fetch(commit, f, k, len(todo))
                self.note_done(f, record)
                self.write_record(record)
        finally:
            self.tidy_partials()
        # Only the chosen files are listed: a file left from another variant is not "verified".
        record["files"] = {f.path: record["files"][f.path] for f in plan}
        self.write_record(record)
        self.check_folder(plan_root)
        fetched = sum(f.size or 0 for f in todo)
        dt = time.perf_counter() - t0
        rate = f" in {dt:.1f}s ({_human(int(fetched / dt))}/s)" if todo and dt > 0 else ""
        self.say(f"done: {self.dest} ({len(plan)} files, {_human(total)}; fetched {_human(fetched)}{rate})")
        return self.dest

    def tidy_partials(self):
        """Remove the empty folders of .sdweb-partial/ (all of it when no partial file is left)."""
        root = self.dest / PARTIAL_DIR
        if not root.is_dir():
            return
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
        if not any(root.iterdir()):
            root.rmdir()

    def check_folder(self, root: str):
        """The folder as `sdweb generate` will see it: ModelFolder finds configs, tokenizer, weights
        (a tiny autoencoder's: AutoencoderFolder its config and weights)."""
        from .model import AutoencoderFolder, ModelFolder

        try:
            if root != layout.INDEX:
                AutoencoderFolder(self.dest).weight_files()
                return
            folder = ModelFolder(self.dest)
            folder.tokenizer_dir
            for c in layout.WEIGHT_COMPONENTS:
                folder.weight_files(c)
                folder.config(c)
            folder.config("scheduler")
        except SdwebError as e:
            self.fail(f"downloaded {self.repo_id} but the folder is not usable: {e}")


def download(repo_id: str, dest=None, *, variant: str = "fp16", revision: str = "main", token: str | None = None,
             endpoint: str | None = None, quiet: bool = False, out=None) -> Path:
    """Fetch `repo_id`'s needed files into `dest` (default: default_dir(repo_id)); returns the folder.

    endpoint: default $HF_ENDPOINT, else https://huggingface.co. token: default $HF_TOKEN, else the
    stored `hf auth login` token, else none. Messages go to `out` (default stderr); progress bars to
    stderr unless `quiet`. Raises DownloadError (one line), Cancelled on Ctrl-C.
    """
    layout.check_repo_id(repo_id)
    if variant not in VARIANTS:
        raise DownloadError(f"--variant {variant}: use one of {', '.join(VARIANTS)}")
    try:
        from huggingface_hub import get_token
    except ImportError:
        raise DownloadError("sdweb download needs the huggingface_hub package: pip install 'sdweb[cli]' "
                            "(or pip install huggingface_hub tqdm)") from None
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    if token is None:
        token = get_token()
    d = _Downloader(repo_id, Path(dest) if dest else default_dir(repo_id), variant, revision, token or None,
                    endpoint, quiet, out or sys.stderr)
    try:
        return d.run()
    except OSError as e:  # whatever the steps did not explain themselves: a folder in the way, a full disk
        d.disk_error(e)


# --- the command ----------------------------------------------------------------------------------


def add_arguments(p):
    """The `download` subcommand's arguments (shared by `sdweb download` and scripts/fetch_weights.py)."""
    p.add_argument("repo", nargs="?", help="Hub repo id owner/name, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5")
    p.add_argument("--list", action="store_true", help="list known-good models with sizes, licences and gating")
    p.add_argument("--variant", default="fp16", choices=VARIANTS,
                   help="weight files: fp16 (the .fp16 variant, half the size; default) or fp32 (the plain files)")
    p.add_argument("--dir", default=None, help="destination folder (default: $SDWEB_WEIGHTS/<repo>, else "
                                               "./weights/<repo>, where `generate --model <repo>` looks)")
    p.add_argument("--revision", default="main", help="branch, tag or commit (default main)")
    p.add_argument("--token", default=None, help="Hugging Face token for gated/private repos (default: $HF_TOKEN, "
                                                 "else your `hf auth login` token); prefer HF_TOKEN: a command-line "
                                                 "argument is visible to other users of the machine")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def list_models(out=None) -> str:
    """Print (and return) the known-good models table (catalogue: models.json)."""
    models = catalogue.models()
    rows = [("repo", "what", "fp16", "fp32", "licence; access")]
    rows += [(m["repo"], m["label"], _human(catalogue.weight_bytes(m, "fp16")),
              _human(catalogue.weight_bytes(m, "fp32")), f"{m['licence']}; {m['access']}") for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines += ["", "Sizes: the weight files sdweb fetches (text encoder + UNet + VAE) per variant, from the repos' "
                  "Git LFS pointers; 'unknown' where not known here. Configs and tokenizer add ~1.5 MB."]
    lines += [f"  {m['repo']}: {m['note']}" for m in models if m["note"]]
    lines += ["", "Tiny autoencoders (previews, --decoder taesd, the page's Fast decode):"]
    lines += [f"  {m['repo']}  {m['label']}; {m['licence']}; {m['note']}" for m in catalogue.tiny_autoencoders()]
    lines += ["Any other SD 1.x/2.x repo in the diffusers layout with .safetensors weights works too. Gated repos: "
              "accept the licence on the repo's Hub page, then pass a token (HF_TOKEN or --token)."]
    text = "\n".join(lines)
    print(text, file=out or sys.stdout)
    return text


def cmd_download(args) -> int:
    if args.list:
        list_models()
        return 0
    if not args.repo:
        raise DownloadError("download needs a repo id (owner/name), or --list for known-good models")
    dest = download(args.repo, args.dir, variant=args.variant, revision=args.revision, token=args.token,
                    quiet=args.quiet)
    hint = args.repo if not args.dir else args.dir
    from .model import AutoencoderFolder, FolderFiles

    if AutoencoderFolder.holds_one(FolderFiles(dest)):
        if hint == catalogue.tiny_autoencoder()["repo"]:
            hint = "taesd"
        print(f"use it with: sdweb generate --model MODEL --prompt \"...\" --preview {hint} --save-intermediates DIR, "
              f"or --decoder {hint} for a fast draft image", file=sys.stderr)
    else:
        print(f"use it with: sdweb generate --model {hint} --prompt \"...\"", file=sys.stderr)
    return 0
