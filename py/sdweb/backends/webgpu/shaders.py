"""WGSL as the compiler gets it: a file from shaders/ with its `#include`s expanded, its `#if` blocks
chosen, the host constants substituted and the activation and weight types written out.

    source(shader, constants=None, w_dtype=None, t_dtype=None, subgroups=False) -> str

`shader` is a file stem ("matmul" -> shaders/matmul.wgsl) or a Path to a .wgsl file elsewhere (the
kernel benchmark's ladder, scripts/kernel_ladder.wgsl). The steps, in order:

1. Includes. A line `#include "include/activations.wgsl"` is replaced by that file's text; the path is
   relative to the shaders folder, whoever includes it. A file is included once per source (a second
   `#include` of it is dropped), so two pieces may include a third. The shared pieces live in
   shaders/include/ and ship in the wheel beside the op files.
2. Constants. Compile-time choices (tile sizes, the fused activation ...) are whole words the host
   replaces by text. The whole file is compiled for any entry point, so the files give every
   constant a default on a line `// @defaults NAME=value NAME=value` (the line, a comment, is
   substituted too, harmlessly); the caller's `constants` override them. Three are always set:
     T          the activation type, f32 or f16 (`t_dtype`): what activations are stored and
                multiplied in (f16 needs the adapter's shader-f16; `enable f16;` is prepended)
     F16        true when T is f16
     SUBGROUPS  true when the kernel may use subgroup operations (`enable subgroups;` is prepended)
3. Conditionals. Lines `#if NAME`, `#else`, `#endif` (nestable) keep or drop the lines between them
   by the constant NAME (true | false): code that needs an extension must not even be parsed where
   the extension is off, so a plain `if` on a constant would not do.
4. Types. A weight binding is declared `array<W_TYPE>` and read with `W_LOAD(w, i)` (element i, as
   f32), or declared `array<W_TYPE4>` and read with `W_LOAD4(w, i)` (elements 4i .. 4i+3, as a
   vec4 of f32 or, for f16 weights under f16 compute, of f16; the caller converts to vec4<T>):
     f32:  W_TYPE = f32, W_LOAD(w, i) = w[i]
           W_TYPE4 = vec4<f32>, W_LOAD4(w, i) = w[i]
     f16:  W_TYPE = u32, W_LOAD(w, i) = unpack2x16float(w[(i) >> 1u])[(i) & 1u]
           W_TYPE4 = vec2<u32>, W_LOAD4(w, i) = two whole words unpacked (unpack2x16float)
           (under T = f16: W_TYPE = f16, W_TYPE4 = vec4<f16>, read as they are)
     bf16: W_TYPE = u32, W_LOAD(w, i) = bitcast<f32>(((w[(i) >> 1u] >> (((i) & 1u) * 16u)) & 0xffffu) << 16u)
           W_TYPE4 = vec2<u32>, W_LOAD4(w, i) = each half shifted into an f32's top bits
   (16-bit weights are two halves per u32, little-endian: element 2k in the low 16 bits).

Shaders are read from shaders/ at the repository root, or sdweb/shaders/ in a wheel (the same files:
py/sdweb/shaders is a link to the top-level folder), or $SDWEB_SHADERS.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...errors import SdwebError

_W_LOADS = {
    "f32": "{w}[{i}]",
    "f16": "unpack2x16float({w}[({i}) >> 1u])[({i}) & 1u]",
    "f16/f16": "f32({w}[{i}])",
    "bf16": "bitcast<f32>((({w}[({i}) >> 1u] >> ((({i}) & 1u) * 16u)) & 0xffffu) << 16u)",
}
_W_LOADS4 = {
    "f32": "{w}[{i}]",
    "f16": "vec4<f32>(unpack2x16float({w}[{i}].x), unpack2x16float({w}[{i}].y))",
    "f16/f16": "{w}[{i}]",
    "bf16": ("vec4<f32>(bitcast<f32>({w}[{i}].x << 16u), bitcast<f32>({w}[{i}].x & 0xffff0000u), "
             "bitcast<f32>({w}[{i}].y << 16u), bitcast<f32>({w}[{i}].y & 0xffff0000u))"),
}
_W_TYPES = {"f32": "f32", "f16": "u32", "f16/f16": "f16", "bf16": "u32"}
_W_TYPES4 = {"f32": "vec4<f32>", "f16": "vec2<u32>", "f16/f16": "vec4<f16>", "bf16": "vec2<u32>"}
T_DTYPES = ("f32", "f16")

_INCLUDE = re.compile(r'^#include\s+"([^"]+)"\s*$', re.M)
_COND = re.compile(r"^\s*#(if\s+(\w+)|else|endif)\s*$")


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


def conditionals(src: str, values: dict) -> str:
    """Keep the lines of `#if NAME` blocks whose NAME is true (their `#else` part otherwise); the
    directive lines themselves become empty, so line numbers in compiler messages stay right."""
    out, stack = [], []  # stack: (this block's condition, whether the enclosing code is kept)
    for n, line in enumerate(src.split("\n"), 1):
        m = _COND.match(line)
        kept = all(cond for cond, _ in stack)
        if m is None:
            out.append(line if kept else "")
            continue
        if m.group(2):
            value = str(values.get(m.group(2), ""))
            if value not in ("true", "false"):
                raise SdwebError(f"shader line {n}: #if {m.group(2)} needs a constant that is true or false, "
                                 f"got {value!r}")
            stack.append((value == "true", kept))
        elif not stack:
            raise SdwebError(f"shader line {n}: #{m.group(1)} without #if")
        elif m.group(1) == "else":
            stack[-1] = (not stack[-1][0], stack[-1][1])
        else:
            stack.pop()
        out.append("")
    if stack:
        raise SdwebError("shader: #if without #endif")
    return "\n".join(out)


def _expand_macro(src: str, name: str, template: str) -> str:
    """Replace each NAME(w, i) (i may hold parentheses and commas) by the template."""
    out, pos, call = [], 0, name + "("
    while (k := src.find(call, pos)) >= 0:
        depth, j, comma = 1, k + len(call), -1
        while depth:
            c = src[j]
            depth += (c == "(") - (c == ")")
            if c == "," and depth == 1 and comma < 0:
                comma = j
            j += 1
        w, i = src[k + len(call):comma].strip(), src[comma + 1:j - 1].strip()
        out += [src[pos:k], "(" + template.format(w=w, i=i) + ")"]
        pos = j
    return "".join(out) + src[pos:]


def expand_w_load(src: str, dtype: str, t_dtype: str = "f32") -> str:
    """Replace each W_LOAD(w, i) and W_LOAD4(w, i) by the weight dtype's load."""
    key = "f16/f16" if dtype == "f16" and t_dtype == "f16" else dtype
    src = _expand_macro(src, "W_LOAD4", _W_LOADS4[key])
    return _expand_macro(src, "W_LOAD", _W_LOADS[key])


def source(shader, constants: dict | None = None, w_dtype: str | None = None, t_dtype: str | None = None,
           subgroups: bool = False) -> str:
    """The WGSL sent to the compiler (see the module docstring for the steps)."""
    t = t_dtype or "f32"
    if t not in T_DTYPES:
        raise SdwebError(f"activation type {t!r}: use one of {', '.join(T_DTYPES)}")
    src = load(shader)
    values = {**defaults(src), **(constants or {}), "T": t, "F16": str(t == "f16").lower(),
              "SUBGROUPS": str(bool(subgroups)).lower()}
    src = conditionals(src, values)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, values)) + r")\b")
    src = pattern.sub(lambda m: str(values[m.group(1)]), src)
    dt = w_dtype or "f32"
    key = "f16/f16" if dt == "f16" and t == "f16" else dt
    src = re.sub(r"\bW_TYPE4\b", _W_TYPES4[key], src)
    src = re.sub(r"\bW_TYPE\b", _W_TYPES[key], src)
    src = expand_w_load(src, dt, t)
    enables = (["enable f16;"] if t == "f16" else []) + (["enable subgroups;"] if subgroups else [])
    return "".join(e + "\n" for e in enables) + src
