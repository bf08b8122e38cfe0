"""A local Hugging Face Hub for tests: real HTTP on 127.0.0.1, in a background thread.

It serves a folder laid out `root/{owner}/{name}/{path}` the way huggingface.co serves a model repo,
so `huggingface_hub` (with HF_ENDPOINT pointing here), `sdweb download` and the page's browser store
all talk to it exactly as they would to the Hub:

    GET|HEAD /{owner}/{name}/resolve/{rev}/{path}     a file. Plain files: 200 (206 with Range), ETag =
                                                      the git blob id, X-Repo-Commit. LFS files (weights,
                                                      by suffix): 302 to /_lfs/{sha256} with
                                                      X-Linked-Etag: "<sha256>", X-Linked-Size, ETag,
                                                      X-Repo-Commit (the Hub's CDN redirect).
    GET|HEAD /_lfs/{sha256}?repo=..&path=..           the LFS bytes, Range too; ETag "<sha256>". Like the
                                                      Hub's signed CDN URLs it needs no token.
    GET /api/models/{owner}/{name}[/revision/{rev}]   model info JSON: sha, gated, cardData.license,
                                                      siblings (with size, blobId, lfs{sha256,size,
                                                      pointerSize} when ?blobs=true)
    GET /api/models/{owner}/{name}/tree/{rev}[/{dir}] tree listing (?recursive=true), as snapshot_download
                                                      reads it
    OPTIONS *                                         CORS preflight (204)

`{rev}` is `main` or the repo's current commit id (a sha1 over its file list, so it changes when the
files do); anything else is 404 RevisionNotFound. Range: `bytes=a-b`, `bytes=a-`, `bytes=-n` -> 206
with Content-Range; unsatisfiable -> 416 with `Content-Range: bytes */size`; anything else (several
ranges, junk) is ignored and the whole file is sent, as RFC 9110 allows.

Errors carry the Hub's headers, which `huggingface_hub` turns into its exception types:
unknown repo -> 404 `X-Error-Code: RepoNotFound`; unknown file -> 404 `EntryNotFound`; a gated repo's
files without `Authorization: Bearer <hub.token>` -> 401 `GatedRepo`, with another token -> 403
`GatedRepo` (its /api/ info stays public, as on the Hub).

Every response carries CORS headers (`Access-Control-Allow-Origin: *`, the Hub headers exposed) and
`Cache-Control: no-store`, so a browser never answers from its HTTP cache and the request log sees
every fetch a page makes.

Faults, settable per test (all apply to file bodies, on /resolve/ and /_lfs/ alike):
    hub.cut(repo, path, after=N)                  close the connection once the response has sent the
                                                  file's bytes up to offset N (once; times=None: every
                                                  response that crosses N; each_response=True: after N
                                                  bytes of every response, forcing many resumes)
    hub.corrupt(repo, path, offset=k)             flip byte k of the served content (every time;
                                                  times=1: once)
    hub.slow(rate, repo=None, path="*")           throttle file bodies to `rate` bytes/s (all files, or
                                                  one repo's files matching the glob)
    hub.tamper_listing(repo, edit)                serve the repo's /api/models info through
                                                  `edit(info)`, which changes the JSON dict in place
                                                  (siblings, sha, ...): a hostile or broken endpoint's
                                                  listing; the files themselves stay as they are
    hub.reset_faults()
Request log: `hub.log` is a list of `Request(method, path, range, status, sent, cut, auth)`, one
per request, appended when the request arrives (before it is answered, so a client holding its
answer always finds it there). `sent` counts body bytes handed to the socket so far (it grows while
a body is in flight); `cut` says the body stopped short (a cut fault, or the client went away);
`auth` is "none", "valid" or "invalid": the token itself is never recorded. `hub.requests(...)`
filters the log, `hub.clear_log()` empties it, `hub.bytes_sent(...)` sums `sent`.

    with HubServer(tmp_path / "hub") as hub:
        hub.add_repo("test/sd1-tiny", sd1_tiny)
        hub.add_repo("test/sd1-tiny-gated", sd1_tiny, gated=True)
        os.environ["HF_ENDPOINT"] = hub.url

The test fixture `hub` (tests/conftest.py) gives one per test with the tiny models already added.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

# Files the Hub keeps in Git LFS (diffusers repos' .gitattributes list these suffixes).
LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".onnx_data", ".msgpack", ".h5", ".pb")

CHUNK = 64 * 1024

DEFAULT_TOKEN = "hf_sdwebTestToken0123456789abcdefXYZ"

EXPOSED_HEADERS = ("Content-Range, Content-Length, Accept-Ranges, ETag, X-Linked-Etag, X-Linked-Size, "
                   "X-Repo-Commit, X-Error-Code, X-Error-Message, Location, Content-Disposition")
ALLOWED_HEADERS = ("Authorization, Range, If-Range, If-None-Match, Content-Type, Cache-Control, "
                   "User-Agent, X-Requested-With")

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Request:
    """One request as the server saw it; `sent` counts body bytes actually written."""

    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0
    cut: bool = False
    auth: str = "none"


@dataclass
class _FileInfo:
    size: int
    sha256: str
    blob_id: str  # git blob sha1: what the Hub reports as oid / ETag of a non-LFS file
    is_lfs: bool


class _Fault:
    def __init__(self, kind, repo, path, value, times, each_response=False):
        self.kind, self.repo, self.path, self.value = kind, repo, path, value
        self.times, self.each_response = times, each_response

    def matches(self, repo, path):
        return (self.times != 0 and (self.repo is None or repo == self.repo)
                and fnmatch.fnmatchcase(path, self.path))

    def use(self):
        if self.times is not None:
            self.times -= 1


class HubServer:
    """A Hub-compatible HTTP server over `root`; see the module docstring."""

    def __init__(self, root, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1", port: int = 0,
                 cdn_host: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        # cdn_host (e.g. "localhost") makes the LFS redirect cross-origin, as the real CDN is: then
        # huggingface_hub stops at the 302 and drops the Authorization header for the download.
        self.cdn_host = cdn_host
        self.gated: set[str] = set()
        self.licenses: dict[str, str] = {}
        self.log: list[Request] = []
        self._faults: list[_Fault] = []
        self._listing_edits: dict[str, object] = {}
        self._lock = threading.Lock()
        self._info_cache: dict[str, tuple[tuple[int, int], _FileInfo]] = {}
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- repos ------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, source=None, gated: bool = False, license: str | None = None) -> Path:
        """Copy folder `source` (or make an empty repo) to root/{repo_id}; returns that folder.

        Dot-files of the source (e.g. the test models' marker file) are copied too: the Hub serves
        whatever is committed.
        """
        owner, _, name = repo_id.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"repo id {repo_id!r} should be owner/name")
        dst = self.root / owner / name
        if source is not None:
            shutil.copytree(source, dst, dirs_exist_ok=True)
        else:
            dst.mkdir(parents=True, exist_ok=True)
        if gated:
            self.gated.add(repo_id)
        if license is not None:
            self.licenses[repo_id] = license
        return dst

    def resolve_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.url}/{repo_id}/resolve/{revision}/{path}"

    # --- faults -----------------------------------------------------------------------------------

    def cut(self, repo_id: str, path: str, after: int, times: int | None = 1, each_response: bool = False):
        """Close the connection mid-body (see module docstring). `path` may be a glob."""
        with self._lock:
            self._faults.append(_Fault("cut", repo_id, path, int(after), times, each_response))

    def corrupt(self, repo_id: str, path: str, offset: int = 0, times: int | None = None):
        """Serve the file with byte `offset` flipped (XOR 0xFF). `path` may be a glob."""
        with self._lock:
            self._faults.append(_Fault("corrupt", repo_id, path, int(offset), times))

    def slow(self, rate: float | None, repo_id: str | None = None, path: str = "*"):
        """Throttle file bodies to about `rate` bytes/second (None: full speed again); only those of
        `repo_id`'s files matching the glob `path` when a repo is given."""
        with self._lock:
            self._faults = [f for f in self._faults if f.kind != "slow"]
            if rate:
                self._faults.append(_Fault("slow", repo_id, path, float(rate), None))

    def tamper_listing(self, repo_id: str, edit):
        """Pass `repo_id`'s model info through `edit(info)` (changes the dict in place) before sending it."""
        with self._lock:
            self._listing_edits[repo_id] = edit

    def reset_faults(self):
        with self._lock:
            self._faults.clear()
            self._listing_edits.clear()

    # --- request log ------------------------------------------------------------------------------

    def requests(self, path_contains: str | None = None, method: str | None = None,
                 status: int | None = None) -> list[Request]:
        with self._lock:
            out = list(self.log)
        return [r for r in out if (path_contains is None or path_contains in r.path)
                and (method is None or r.method == method) and (status is None or r.status == status)]

    def clear_log(self):
        with self._lock:
            self.log.clear()

    def bytes_sent(self, path_contains: str | None = None) -> int:
        return sum(r.sent for r in self.requests(path_contains))

    # --- repo metadata ----------------------------------------------------------------------------

    def repo_dir(self, repo_id: str) -> Path | None:
        owner, _, name = repo_id.partition("/")
        d = self.root / owner / name
        return d if owner and name and d.is_dir() else None

    def file_info(self, path: Path) -> _FileInfo:
        st = path.stat()
        key = str(path)
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._info_cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(f"blob {st.st_size}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha256.update(block)
                sha1.update(block)
        info = _FileInfo(st.st_size, sha256.hexdigest(), sha1.hexdigest(), path.name.endswith(LFS_SUFFIXES))
        self._info_cache[key] = (stamp, info)
        return info

    def files(self, repo_id: str) -> dict[str, _FileInfo]:
        """Every file of the repo, by repo-relative path with forward slashes, sorted."""
        d = self.repo_dir(repo_id)
        out = {}
        for p in sorted(d.rglob("*")):
            if p.is_file():
                out[p.relative_to(d).as_posix()] = self.file_info(p)
        return out

    def commit(self, repo_id: str, files: dict[str, _FileInfo] | None = None) -> str:
        files = self.files(repo_id) if files is None else files
        h = hashlib.sha1(repo_id.encode())
        for path, info in files.items():
            h.update(f"{path}\0{info.blob_id}\0".encode())
        return h.hexdigest()

    def lfs_path(self, sha256: str) -> tuple[str, str, Path] | None:
        """(repo_id, path, file) of an LFS blob, searching every repo."""
        for owner in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for repo in sorted(p for p in owner.iterdir() if p.is_dir()):
                repo_id = f"{owner.name}/{repo.name}"
                for path, info in self.files(repo_id).items():
                    if info.is_lfs and info.sha256 == sha256:
                        return repo_id, path, repo / path
        return None


def _make_handler(hub: HubServer):
    class Handler(_HubHandler):
        pass

    Handler.hub = hub
    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sdweb-test-hub/1"
    timeout = 30  # an idle keep-alive connection ends after this
    hub: HubServer

    # --- plumbing ---------------------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # the request log replaces stderr chatter

    def _auth(self) -> str:
        h = self.headers.get("Authorization")
        if not h:
            return "none"
        return "valid" if h == f"Bearer {self.hub.token}" else "invalid"

    def _record(self, status) -> Request:
        """Log the request *before* answering it, so a client that has its answer always finds it in
        the log; `sent` and `cut` are updated as the body goes out (ahead of each write)."""
        req = Request(self.command, self.path, self.headers.get("Range"), status, 0, False, self._auth())
        with self.hub._lock:
            self.hub.log.append(req)
        return req

    def _cors(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
        self.send_header("Cache-Control", "no-store")

    def _send_head(self, status, headers: dict, length: int) -> Request:
        req = self._record(status)
        self.send_response(status)
        self._cors()
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        return req

    def _send_bytes(self, status, body: bytes, headers: dict):
        req = self._send_head(status, headers, len(body))
        if self.command != "HEAD":
            req.sent = len(body)
            self.wfile.write(body)

    def _json(self, obj, status=200, headers=None):
        body = json.dumps(obj).encode()
        self._send_bytes(status, body, dict({"Content-Type": "application/json; charset=utf-8"}, **(headers or {})))

    def _error(self, status, code, message, headers=None):
        h = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json; charset=utf-8"}
        h.update(headers or {})
        self._send_bytes(status, json.dumps({"error": message}).encode(), h)

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            self.close_connection = True

    # --- verbs ------------------------------------------------------------------------------------

    def do_OPTIONS(self):
        self._record(204)
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.send_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        if any(p in ("", ".", "..") for p in parts[:-1]) or not parts or ".." in parts:
            return self._error(400, "BadRequest", "bad path")
        if parts[0] == "_lfs" and len(parts) == 2:
            return self._lfs(parts[1], query.get("repo", [""])[0], query.get("path", [""])[0])
        if parts[0] == "api" and len(parts) >= 4 and parts[1] == "models":
            return self._api(f"{parts[2]}/{parts[3]}", parts[4:], query)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        return self._error(404, "NotFound", f"no route for {url.path}")

    # --- routes -----------------------------------------------------------------------------------

    def _check_rev(self, repo_id, rev, files):
        commit = self.hub.commit(repo_id, files)
        if rev not in ("main", commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", {"X-Repo-Commit": commit})
            return None
        return commit

    def _api(self, repo_id, rest, query):
        if self.hub.repo_dir(repo_id) is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        files = self.hub.files(repo_id)
        if not rest:
            rev = "main"
        elif rest[0] == "revision" and len(rest) == 2:
            rev = rest[1]
        elif rest[0] == "tree" and len(rest) >= 2:
            return self._tree(repo_id, rest[1], "/".join(rest[2:]), query, files)
        else:
            return self._error(404, "NotFound", "unknown api route")
        commit = self._check_rev(repo_id, rev, files)
        if commit is None:
            return
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path, info in files.items():
            s = {"rfilename": path}
            if blobs:
                s.update(size=info.size, blobId=info.blob_id)
                if info.is_lfs:
                    s["lfs"] = {"sha256": info.sha256, "size": info.size, "pointerSize": 134}
            siblings.append(s)
        gated = "manual" if repo_id in self.hub.gated else False
        card = {"license": self.hub.licenses[repo_id]} if repo_id in self.hub.licenses else {}
        info = {
            "_id": commit[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
            "sha": commit, "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
            "private": False, "gated": gated, "disabled": False, "library_name": "diffusers",
            "tags": ["diffusers", "safetensors", "text-to-image"], "pipeline_tag": "text-to-image",
            "cardData": card, "siblings": siblings,
        }
        with self.hub._lock:
            edit = self.hub._listing_edits.get(repo_id)
        if edit is not None:
            edit(info)
        self._json(info)

    def _tree(self, repo_id, rev, under, query, files):
        commit = self._check_rev(repo_id, rev, files)
        if commit is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            return self._error(404, "EntryNotFound", f"{under} does not exist on \"{rev}\"")
        entries, dirs = [], set()
        for path, info in files.items():
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):]
            segs = rel.split("/")
            for k in range(1, len(segs)):
                d = prefix + "/".join(segs[:k])
                if (recursive or k == 1) and d not in dirs:
                    dirs.add(d)
                    entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                    "path": d})
            if recursive or len(segs) == 1:
                e = {"type": "file", "oid": info.blob_id, "size": info.size, "path": path}
                if info.is_lfs:
                    e["lfs"] = {"oid": info.sha256, "size": info.size, "pointerSize": 134}
                entries.append(e)
        self._json(entries)

    def _resolve(self, repo_id, rev, path):
        d = self.hub.repo_dir(repo_id)
        if d is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        files = self.hub.files(repo_id)
        commit = self._check_rev(repo_id, rev, files)
        if commit is None:
            return
        if repo_id in self.hub.gated:
            auth = self._auth()
            if auth == "none":
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to "
                                   "it and be authenticated to access it. Please log in.", {"X-Repo-Commit": commit})
            if auth == "invalid":
                return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in "
                                   f"the authorized list. Visit https://huggingface.co/{repo_id} to ask for access.",
                                   {"X-Repo-Commit": commit})
        info = files.get(path)
        if info is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        if info.is_lfs:
            host = self.hub.cdn_host or self.headers.get("Host", "").rsplit(":", 1)[0] or "127.0.0.1"
            # The CDN URL names its blob by sha256; repo and path ride along (as the Hub's signed URLs
            # carry the file name) so faults set on a path still apply when two repos share a blob.
            location = (f"http://{host}:{self.hub.port}/_lfs/{info.sha256}"
                        f"?repo={quote(repo_id, safe='/')}&path={quote(path, safe='/')}")
            body = f"Found. Redirecting to {location}".encode()
            return self._send_bytes(302, body, {
                "Location": location, "X-Repo-Commit": commit, "ETag": f'"{info.sha256}"',
                "X-Linked-Etag": f'"{info.sha256}"', "X-Linked-Size": str(info.size),
                "Content-Type": "text/plain; charset=utf-8"})
        self._file(repo_id, path, d / path, info, {"ETag": f'"{info.blob_id}"', "X-Repo-Commit": commit})

    def _lfs(self, sha256, repo_id="", path=""):
        if not _SHA256.match(sha256):
            return self._error(404, "EntryNotFound", "Entry not found")
        d = self.hub.repo_dir(repo_id) if repo_id else None
        file = d / path if d is not None and path and ".." not in path.split("/") else None
        if file is None or not file.is_file() or self.hub.file_info(file).sha256 != sha256:
            found = self.hub.lfs_path(sha256)
            if found is None:
                return self._error(404, "EntryNotFound", "Entry not found")
            repo_id, path, file = found
        info = self.hub.file_info(file)
        # X-Repo-Commit too: huggingface_hub follows a same-host redirect on HEAD and reads it here.
        self._file(repo_id, path, file, info, {"ETag": f'"{sha256}"', "X-Repo-Commit": self.hub.commit(repo_id),
                                               "Content-Disposition": f'inline; filename="{Path(path).name}"'})

    # --- file bodies ------------------------------------------------------------------------------

    def _file(self, repo_id, path, file: Path, info: _FileInfo, headers: dict):
        size = info.size
        headers = dict(headers, **{"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
        start, end, status = 0, size - 1, 200
        m = _RANGE.match(self.headers.get("Range", "").strip())
        if m and (m.group(1) or m.group(2)):
            a, b = m.group(1), m.group(2)
            if a:
                start, end = int(a), (min(int(b), size - 1) if b else size - 1)
                if start >= size or (b and int(b) < start):
                    return self._send_bytes(416, b"", {"Content-Range": f"bytes */{size}"})
            else:  # suffix range: the last n bytes
                n = int(b)
                if n == 0:
                    return self._send_bytes(416, b"", {"Content-Range": f"bytes */{size}"})
                start, end = max(0, size - n), size - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        req = self._send_head(status, headers, length)
        if self.command == "HEAD":
            return

        with self.hub._lock:
            faults = [f for f in self.hub._faults if f.matches(repo_id, path)]
        cut_at = None  # absolute file offset at which this response stops
        for f in faults:
            if f.kind != "cut":
                continue
            at = start + f.value if f.each_response else f.value
            if start <= at < end + 1 and (cut_at is None or at < cut_at):
                cut_at = at
                with self.hub._lock:
                    f.use()
        flips = []
        for f in faults:
            if f.kind == "corrupt" and start <= f.value <= end:
                flips.append(f.value)
                with self.hub._lock:
                    f.use()

        stop = end + 1 if cut_at is None else cut_at
        rate = next((f.value for f in faults if f.kind == "slow"), None)
        chunk = CHUNK if not rate else max(1024, min(CHUNK, int(rate / 20)))
        pos = start
        try:
            with open(file, "rb") as fh:
                fh.seek(start)
                while pos < stop:
                    data = bytearray(fh.read(min(chunk, stop - pos)))
                    if not data:
                        break
                    for k in flips:
                        if pos <= k < pos + len(data):
                            data[k - pos] ^= 0xFF
                    req.sent += len(data)
                    if cut_at is not None and pos + len(data) >= cut_at:
                        req.cut = True
                    self.wfile.write(data)
                    pos += len(data)
                    if rate:
                        time.sleep(len(data) / rate)
            if cut_at is not None:
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client went away (a cancelled fetch)
            req.cut = True
