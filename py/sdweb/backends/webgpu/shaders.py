"""WGSL as the compiler gets it: a file from shaders/ with its `#include`s expanded, the host constants
substituted and the weight dtype's W_TYPE / W_LOAD written out.

    source(shader, constants=None, w_dtype=None) -> str

`shader` is a file stem ("matmul" -> shaders/matmul.wgsl) or a Path to a .wgsl file elsewhere (the
kernel benchmark's ladder, scripts/matmul_ladder.wgsl). The steps, in order:

1. Includes. A line `#include "include/activations.wgsl"` is replaced by that file's text; the path is
   relative to the shaders folder, whoever includes it. A file is included once per source (a second
   `#include` of it is dropped), so two pieces may include a third. The shared pieces live in
   shaders/include/ and ship in the wheel beside the op files.
2. Constants. Compile-time choices (tile sizes, the fused activation ...) are whole words the host
   replaces by text. The whole file is compiled for any entry point, so the files give every
   constant a default on a line `// @defaults NAME=value NAME=value` (the line, a comment, is
   substituted too, harmlessly); the caller's `constants` override them.
3. Weight dtype. A weight binding is declared `array<W_TYPE>` and read with `W_LOAD(w, i)` (element i):
     f32:  W_TYPE = f32, W_LOAD(w, i) = w[i]
     f16:  W_TYPE = u32, W_LOAD(w, i) = unpack2x16float(w[(i) >> 1u])[(i) & 1u]
     bf16: W_TYPE = u32, W_LOAD(w, i) = bitcast<f32>(((w[(i) >> 1u] >> (((i) & 1u) * 16u)) & 0xffffu) << 16u)
   (two halves per u32, little-endian: element 2k in the low 16 bits).

Shaders are read from shaders/ at the repository root, or sdweb/shaders/ in a wheel (the same files:
py/sdweb/shaders is a link to the top-level folder), or $SDWEB_SHADERS.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...errors import SdwebError

W_LOADS = {
    "f32": "{w}[{i}]",
    "f16": "unpack2x16float({w}[({i}) >> 1u])[({i}) & 1u]",
    "bf16": "bitcast<f32>((({w}[({i}) >> 1u] >> ((({i}) & 1u) * 16u)) & 0xffffu) << 16u)",
}
W_TYPES = {"f32": "f32", "f16": "u32", "bf16": "u32"}

_INCLUDE = re.compile(r'^#include\s+"([^"]+)"\s*$', re.M)


def shader_dirs() -> list[Path]:
    env = os.environ.get("SDWEB_SHADERS")
    here = Path(__file__).resolve()  # py/sdweb/backends/webgpu/shaders.py
    return [Path(env)] if env else [here.parents[2] / "shaders", here.parents[4] / "shaders"]


_TEXTS: dict[str, str] = {}


def _read(path: Path, what: str) -> str:
    key = str(path)
    if key not in _TEXTS:
        if not path.is_file():
            raise SdwebError(f"{what} not found at {path}")
        _TEXTS[key] = path.read_text()
    return _TEXTS[key]


def _find(rel: str) -> Path:
    """shaders/<rel> in the first shader folder that has it."""
    for d in shader_dirs():
        if (d / rel).is_file():
            return d / rel
    raise SdwebError(f"shader {rel} not found in {', '.join(map(str, shader_dirs()))}")


def load(shader) -> str:
    """The text of `shader` (a stem in shaders/ or a Path), includes expanded, nothing substituted."""
    path = shader if isinstance(shader, Path) else _find(f"{shader}.wgsl")
    seen: set[str] = set()

    def expand(text: str) -> str:
        def one(m):
            rel = m.group(1)
            if rel in seen:
                return f"// #include \"{rel}\": already included above"
            seen.add(rel)
            return f"// --- {rel} ---\n" + expand(_read(_find(rel), f"included shader {rel}")) + f"\n// --- end {rel} ---"

        return _INCLUDE.sub(one, text)

    return expand(_read(path, f"shader {path.name}"))


def defaults(src: str) -> dict[str, str]:
    """Constants' default values from the `// @defaults NAME=value ...` lines of a source."""
    out = {}
    for m in re.finditer(r"^//\s*@defaults\s+(.*)$", src, re.M):
        out.update(kv.split("=", 1) for kv in m.group(1).split())
    return out


def expand_w_load(src: str, dtype: str) -> str:
    """Replace each W_LOAD(w, i) (i may hold parentheses and commas) by the dtype's load."""
    out, pos = [], 0
    while (k := src.find("W_LOAD(", pos)) >= 0:
        depth, j, comma = 1, k + 7, -1
        while depth:
            c = src[j]
            depth += (c == "(") - (c == ")")
            if c == "," and depth == 1 and comma < 0:
                comma = j
            j += 1
        w, i = src[k + 7:comma].strip(), src[comma + 1:j - 1].strip()
        out += [src[pos:k], "(" + W_LOADS[dtype].format(w=w, i=i) + ")"]
        pos = j
    return "".join(out) + src[pos:]


def source(shader, constants: dict | None = None, w_dtype: str | None = None) -> str:
    """The WGSL sent to the compiler: includes expanded, constants (over the @defaults) substituted as
    whole words, then W_TYPE / W_LOAD for the weight dtype."""
    src = load(shader)
    values = {**defaults(src), **(constants or {})}
    if values:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, values)) + r")\b")
        src = pattern.sub(lambda m: str(values[m.group(1)]), src)
    dt = w_dtype or "f32"
    src = re.sub(r"\bW_TYPE\b", W_TYPES[dt], src)
    return expand_w_load(src, dt)
