"""What the service worker caches and what `npm run build` writes, without a browser (the page's own
offline and static-host runs are in tests/test_page.py)."""

import json
import re
import subprocess
from pathlib import Path

from conftest import ROOT, load_script

WEB = ROOT / "web"


def _page_files() -> set[str]:
    """web/'s files as git tracks them (vendor/ is gitignored), relative to web/."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "web"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return {str(Path(f).relative_to("web")) for f in out}


def test_the_service_worker_caches_every_file_of_the_page():
    """A module missing from sw.js's SHELL would break the page offline; one listed that does not exist
    would fail the install."""
    shell = re.search(r"const SHELL = \[(.*?)\];", (WEB / "sw.js").read_text(), re.S).group(1)
    listed = set(re.findall(r'"([^"]+)"', shell))
    assert listed - {"./", "vendor/wheels/manifest.json"} == _page_files() - {"sw.js"}


def test_the_vendor_manifest_names_every_vendored_file_the_page_loads():
    vendor = load_script("vendor_pyodide")
    vendor.build_sdweb_wheel()
    m = json.loads((WEB / "vendor" / "wheels" / "manifest.json").read_text())
    assert m["pyodide"] == vendor.PYODIDE_VERSION and len(m["sha256"]) == 64
    assert m["files"] == vendor.vendored_files(m["sdweb"])
    on_disk = {str(p.relative_to(WEB)) for p in (WEB / "vendor").rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"vendor/pyodide/package.json", "vendor/wheels/manifest.json",
                                         "vendor/hash-wasm/LICENSE"}


def test_build_writes_the_page_as_static_files(tmp_path):
    out = load_script("build").build(tmp_path / "dist")
    built = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert built == {str(p.relative_to(WEB)) for p in WEB.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert (out / "index.html").read_bytes() == (WEB / "index.html").read_bytes()
    assert not (tmp_path / "dist.part").exists()
