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

from . import __version__
from .errors import Cancelled, ConfigError, SdwebError
from .schedulers import SCHEDULERS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXIT_ERROR = 2
EXIT_CANCELLED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, without the usage block."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sdweb", description="Stable Diffusion text-to-image in NumPy (or WebGPU).")
    p.add_argument("--version", action="version", version=f"sdweb {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="make an image from a prompt")
    g.add_argument("--model", required=True, help="model folder, or Hub repo id found under ./weights/")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default 50, 1 for turbo)")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default 7.5; <= 1 skips the unconditional pass)")
    g.add_argument("--seed", type=_positive_int, default=None, help="noise seed (default: random)")
    g.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULERS)} (default: the model's)")
    g.add_argument("--width", type=_positive_int, default=None)
    g.add_argument("--height", type=_positive_int, default=None)
    g.add_argument("--num-images", type=_positive_int, default=1)
    g.add_argument("--clip-skip", type=_positive_int, default=0)
    g.add_argument("--precision", default="fp32", help="weights held as fp32|fp16|bf16; arithmetic is f32")
    g.add_argument("--variant", default=None, help="weight file variant to read, e.g. fp16 (default: plain, "
                                                   "else fp16)")
    g.add_argument("--backend", default="numpy", help="numpy|webgpu")
    g.add_argument("--output", "-o", default="out.png", help="image file (.png); several images get -0, -1, ...")
    g.add_argument("--save-intermediates", metavar="DIR", default=None,
                   help="write a preview PNG of the latents every --preview-every steps into DIR")
    g.add_argument("--preview-every", type=_positive_int, default=5)
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


def _backend(name: str):
    from .backends import numpy as numpy_backend

    if name == "numpy":
        return numpy_backend
    if name == "webgpu":
        try:
            from .backends import webgpu
        except ImportError:
            webgpu = None
        if webgpu is None or not getattr(webgpu, "available", lambda: False)():
            print("sdweb: WebGPU is not available here (no adapter or the `wgpu` package is missing); "
                  "falling back to the NumPy backend", file=sys.stderr)
            return numpy_backend
        return webgpu
    raise ConfigError(f"unknown backend {name!r}; use numpy or webgpu")


def cmd_generate(args) -> int:
    from .model import resolve_model
    from .pipeline import Pipeline
    from .preview import latents_to_rgb

    backend = _backend(args.backend)
    outputs = _output_paths(args.output, args.num_images)
    inter = Path(args.save_intermediates) if args.save_intermediates else None
    if inter is not None:
        if inter.exists() and not inter.is_dir():
            raise ConfigError(f"--save-intermediates {inter} exists and is not a folder")
        _check_writable_dir(inter if inter.is_dir() else (inter.parent if str(inter.parent) else Path(".")),
                            f"--save-intermediates {inter}")
    folder = resolve_model(args.model)
    pipe = Pipeline(folder, backend, precision=args.precision, variant=args.variant)
    turbo = "turbo" in str(folder.path).lower()
    steps = args.steps if args.steps is not None else (1 if turbo else 50)
    guidance = args.guidance if args.guidance is not None else (0.0 if turbo else 7.5)
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(0, 2**31 - 1))
    scheduler = args.scheduler or pipe.default_scheduler
    width = args.width if args.width is not None else pipe.default_size
    height = args.height if args.height is not None else pipe.default_size
    pipe.check(width=width, height=height, steps=steps, guidance=guidance, scheduler=scheduler,
               num_images=args.num_images, clip_skip=args.clip_skip)
    if inter is not None:
        inter.mkdir(exist_ok=True)

    bar = _Bar(args.quiet)
    f = pipe.vae_scale_factor

    def progress(p):
        bar(p)
        if inter is not None and p.stage == "unet" and p.step and (
                p.step % args.preview_every == 0 or p.step == p.total):
            lat = p.latents
            for k in range(lat.shape[0]):
                name = f"step-{p.step:04d}.png" if lat.shape[0] == 1 else f"step-{p.step:04d}-{k}.png"
                _save_image(latents_to_rgb(lat[k], upscale=f), inter / name)

    result = pipe.generate(args.prompt, args.negative_prompt, steps=steps, guidance=guidance, seed=seed,
                           scheduler=scheduler, width=width, height=height, num_images=args.num_images,
                           clip_skip=args.clip_skip, progress=progress)
    bar.close()
    for k, path in enumerate(outputs):
        settings = dict(result.settings, seed=result.seeds[k], model=str(folder.path))
        _save_image(result.images[k], path, {"parameters": json.dumps(settings)})
        print(f"wrote {path} (seed {result.seeds[k]})", file=sys.stderr)
    if result.truncated_tokens:
        print(f"note: the prompt was cut to 75 tokens; {result.truncated_tokens} tokens were dropped",
              file=sys.stderr)
    t = result.timings
    parts = [f"{k} {v:.2f}s" for k, v in t.items() if k != "total"]
    print(f"timings: {', '.join(parts)}; total {t['total']:.2f}s "
          f"({t['unet'] / steps:.2f}s per step)", file=sys.stderr)
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
    print(f"  default size {pipe.default_size}x{pipe.default_size}, sizes in multiples of {pipe.size_multiple}")
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
