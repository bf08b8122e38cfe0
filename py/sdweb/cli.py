"""`sdweb` command line: generate, info, tokenize, download.

Every failure is one line on stderr (`sdweb: error: ...`) naming the bad thing, a non-zero exit, and
nothing written: outputs go to a temporary file in the destination folder and are renamed into place
only when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__, catalogue, settings
from .errors import Cancelled, ConfigError, SdwebError
from .schedulers import SCHEDULERS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXIT_ERROR = 2
EXIT_CANCELLED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, without the usage block."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int(s: str) -> int:
    """An integer; its range is settings.resolve's to check."""
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {s!r}") from None


def _by_kind(key: str) -> str:
    """A default per model kind as help text: "sd 25, turbo 1"."""
    return ", ".join(f"{k} {v[key]}" for k, v in catalogue.kinds().items())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sdweb", description="Stable Diffusion text-to-image in NumPy (or WebGPU).")
    p.add_argument("--version", action="version", version=f"sdweb {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="make an image from a prompt")
    g.add_argument("--model", required=True, help="model folder, or Hub repo id found under ./weights/")
    g.add_argument("--prompt", required=True)
    # Defaults and limits are settings.py's: a flag left out is None, which means "the default".
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--steps", type=_int, default=None,
                   help=f"denoising steps, 1 to {settings.MAX_STEPS} (default by model kind: {_by_kind('steps')})")
    g.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale >= 0 (default by model kind: {_by_kind('guidance')}; "
                        "<= 1 skips the unconditional pass)")
    g.add_argument("--seed", type=_int, default=None, help=f"noise seed, 0 to {settings.MAX_SEED} (default: random)")
    g.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULERS)} (default: the model's)")
    g.add_argument("--width", type=_int, default=None, help="pixels (default: the model's size)")
    g.add_argument("--height", type=_int, default=None, help="pixels (default: the model's size)")
    g.add_argument("--num-images", type=_int, default=None, help=f"1 to {settings.MAX_IMAGES} (default 1)")
    g.add_argument("--clip-skip", type=_int, default=None, help="text encoder layers to skip (default 0)")
    g.add_argument("--precision", default=None,
                   help=f"weights held as {'|'.join(settings.PRECISIONS)}; arithmetic is f32 (default fp32; fp16 "
                        "for fp16 files over 256 MB)")
    g.add_argument("--variant", default=None, help="weight file variant to read, e.g. fp16 (default: plain, "
                                                   "else fp16)")
    g.add_argument("--backend", default=None, help=f"{', '.join(settings.BACKENDS)} or auto (default numpy)")
    g.add_argument("--vae-tiling", default=None,
                   help="auto (default: tiles only where one pass would not fit, e.g. a GPU's buffer limit), on "
                        "(diffusers' enable_tiling()), or off")
    g.add_argument("--output", "-o", default="out.png", help="image file (.png); several images get -0, -1, ...")
    g.add_argument("--save-intermediates", metavar="DIR", default=None,
                   help="write a preview PNG of the latents every --preview-every steps into DIR")
    g.add_argument("--preview-every", type=_int, default=None, help="steps between previews (default: about ten a run)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="check a model folder and summarise its components")
    i.add_argument("model")

    t = sub.add_parser("tokenize", help="show how a prompt is tokenized")
    t.add_argument("--model", required=True)
    t.add_argument("text")

    from .download import add_arguments as add_download_arguments

    add_download_arguments(sub.add_parser("download", help="fetch a model from the Hugging Face Hub into ./weights/"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"generate": cmd_generate, "info": cmd_info, "tokenize": cmd_tokenize,
                "download": cmd_download}[args.command](args)
    except Cancelled as e:
        print(f"sdweb: {e}", file=sys.stderr)
        return EXIT_CANCELLED
    except SdwebError as e:
        print(f"sdweb: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("sdweb: interrupted; nothing written", file=sys.stderr)
        return EXIT_CANCELLED


# --- generate -------------------------------------------------------------------------------------


def _output_paths(output: str, n: int) -> list[Path]:
    """Check the destination before any work: suffix, folder exists and is writable."""
    out = Path(output)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"--output {output}: use a file name ending in {', '.join(IMAGE_SUFFIXES)}")
    if out.is_dir():
        raise ConfigError(f"--output {output} is a folder: give a file name such as {out / 'out.png'}")
    _check_writable_dir(out.parent if str(out.parent) else Path("."), f"--output {output}")
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(n)]


def _check_writable_dir(folder: Path, what: str):
    if not folder.is_dir():
        raise ConfigError(f"{what}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: folder {folder} is not writable")


def _save_image(arr: np.ndarray, path: Path, text: dict | None = None):
    """Write atomically: a temp file beside the target, renamed into place when complete."""
    from PIL import Image, PngImagePlugin

    img = Image.fromarray(arr)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    os.close(fd)
    try:
        if path.suffix.lower() == ".png":
            info = PngImagePlugin.PngInfo()
            for k, v in (text or {}).items():
                info.add_text(k, v)
            img.save(tmp, format="PNG", pnginfo=info)
        else:
            img.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Bar:
    """Progress on stderr: tqdm when installed, else one line per stage."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.stage = quiet, None, None
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.tqdm = tqdm

    def __call__(self, p):
        if self.quiet:
            return
        if p.stage == "load":
            self.close()
            print(f"loading {p.component} ...", file=sys.stderr, flush=True)
            return
        if p.stage != self.stage:
            self.close()
            self.stage = p.stage
            if p.stage == "unet" and self.tqdm is not None:
                self.bar = self.tqdm(total=p.total, desc="denoising", unit="step", file=sys.stderr)
            else:
                print(f"{p.stage} ...", file=sys.stderr, flush=True)
        if self.bar is not None and p.step:
            self.bar.update(1)
            self.bar.set_postfix(t=f"{p.timestep:.0f}")
        elif p.stage == "unet" and p.step and self.tqdm is None:
            print(f"  step {p.step}/{p.total}  t={p.timestep:.0f}  {p.elapsed:.1f}s", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _webgpu_available() -> tuple[bool, str]:
    """Whether the WebGPU backend has an adapter here (imported only when asked for)."""
    try:
        from .backends import webgpu
    except ImportError:
        return False, "the `wgpu` package is missing"
    return (True, "") if webgpu.available() else (False, "no adapter was found")


def _request(args) -> dict:
    """The generate flags as a settings request (settings.FIELDS)."""
    return dict(model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                guidance=args.guidance, seed=args.seed, scheduler=args.scheduler, width=args.width,
                height=args.height, num_images=args.num_images, clip_skip=args.clip_skip, precision=args.precision,
                variant=args.variant, backend=args.backend, preview_every=args.preview_every,
                vae_tiling=args.vae_tiling)


def cmd_generate(args) -> int:
    from .model import resolve_model
    from .pipeline import Pipeline
    from .preview import latents_to_rgb
    from .settings import ModelInfo, resolve

    # Everything that can be checked is, before a model file is read or anything allocated.
    s = resolve(_request(args))
    outputs = _output_paths(args.output, s.num_images)
    inter = Path(args.save_intermediates) if args.save_intermediates else None
    if inter is not None:
        if inter.exists() and not inter.is_dir():
            raise ConfigError(f"--save-intermediates {inter} exists and is not a folder")
        _check_writable_dir(inter if inter.is_dir() else (inter.parent if str(inter.parent) else Path(".")),
                            f"--save-intermediates {inter}")
    folder = resolve_model(args.model)
    info = ModelInfo.of(folder, weight_bytes=folder.weight_bytes(s.variant))
    s = resolve(s.as_request(), info, webgpu=_webgpu_available)
    for note in s.notes:
        print(f"sdweb: {note}", file=sys.stderr)
    if s.backend == "webgpu":
        from .backends import webgpu as backend
    else:
        from .backends import numpy as backend
    pipe = Pipeline(folder, backend, precision=s.precision, variant=s.variant)
    if inter is not None:
        inter.mkdir(exist_ok=True)

    bar = _Bar(args.quiet)
    f = pipe.vae_scale_factor

    def progress(p):
        bar(p)
        if inter is not None and p.stage == "unet" and p.step and (
                p.step % s.preview_every == 0 or p.step == p.total):
            lat = p.latents
            for k in range(lat.shape[0]):
                name = f"step-{p.step:04d}.png" if lat.shape[0] == 1 else f"step-{p.step:04d}-{k}.png"
                _save_image(latents_to_rgb(lat[k], upscale=f), inter / name)

    result = pipe.generate(**s.run_args(), progress=progress)
    bar.close()
    for k, path in enumerate(outputs):
        params = dict(result.settings, seed=result.seeds[k], model=folder.name)
        _save_image(result.images[k], path, {"parameters": json.dumps(params)})
        print(f"wrote {path} (seed {result.seeds[k]})", file=sys.stderr)
    if result.truncated_tokens:
        print(f"note: the prompt was cut to 75 tokens; {result.truncated_tokens} tokens were dropped",
              file=sys.stderr)
    t = result.timings
    parts = [f"{k} {v:.2f}s" for k, v in t.items() if k != "total"]
    print(f"timings: {', '.join(parts)}; total {t['total']:.2f}s "
          f"({t['unet'] / s.steps:.2f}s per step)", file=sys.stderr)
    return 0


# --- info -----------------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from .model import resolve_model
    from .pipeline import Pipeline

    folder = resolve_model(args.model)
    print(f"model {folder.path}")
    print(f"  pipeline {folder.index.get('_class_name', '?')}; scheduler "
          f"{folder.config('scheduler').get('_class_name', '?')}")
    pipe = Pipeline(folder, keep_loaded=False)
    for component in ("text_encoder", "unet", "vae"):
        store = folder.weights(component, "fp32")
        s = store.summary()
        store.close()
        t0 = time.perf_counter()
        # Build the model with weights held as their file dtype: fp32 and fp16 files are then
        # memory-mapped views, so validating SD 1.5 reads little beyond the headers.
        dtypes = s["dtypes"]
        pipe.precision = "fp16" if set(dtypes) <= {"F16", "I64"} else "fp32"
        pipe.load(component)
        pipe.release(component)
        files = ", ".join(p.name for p in folder.weight_files(component))
        dt = ", ".join(f"{k} x{v}" for k, v in sorted(dtypes.items()))
        print(f"  {component}: {s['tensors']} tensors, {s['parameters']:,} parameters ({dt}) in {files}; "
              f"all shapes validated against config.json ({time.perf_counter() - t0:.1f}s)")
    print(f"  tokenizer: {len(pipe.tokenizer.encoder)} tokens, pad {pipe.tokenizer.pad_token_id}, "
          f"max length {pipe.tokenizer.model_max_length}")
    info = pipe.info
    print(f"  default size {info.default_size}x{info.default_size}, sizes in multiples of {info.size_multiple}; "
          f"scheduler {info.default_scheduler}")
    return 0


# --- download -------------------------------------------------------------------------------------


def cmd_download(args) -> int:
    from .download import cmd_download as run

    return run(args)


# --- tokenize -------------------------------------------------------------------------------------


def cmd_tokenize(args) -> int:
    import warnings

    from .model import resolve_model
    from .tokenizer import CLIPTokenizer

    folder = resolve_model(args.model)
    tok = CLIPTokenizer.from_folder(folder.tokenizer_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, dropped = tok.encode(args.text, return_truncated=True)
    print(json.dumps(ids))
    tokens = tok.tokenize(args.text)
    room = tok.model_max_length - 2
    print(" ".join(tokens))
    used = min(len(tokens), room)
    msg = f"{used} of {room} prompt slots used"
    if dropped:
        msg += f"; {dropped} tokens dropped by truncation"
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
