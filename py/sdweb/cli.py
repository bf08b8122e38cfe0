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
    p = _Parser(prog="sdweb", description="Stable Diffusion text-to-image, img2img and inpainting in NumPy (or WebGPU).")
    p.add_argument("--version", action="version", version=f"sdweb {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="make an image from a prompt (and an image to start from)")
    g.add_argument("--model", help="model folder, or Hub repo id found under ./weights/ (required unless "
                                    "--settings-from names one)")
    g.add_argument("--prompt", help="the prompt (required unless --settings-from)")
    # Defaults and limits are settings.py's: a flag left out is None, which means "the default".
    g.add_argument("--negative-prompt", default=None)
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
    g.add_argument("--compute", default=None,
                   help="activations' dtype on WebGPU: f32, f16 (needs shader-f16) or auto (default: f16 where the "
                        "adapter has it; the VAE follows its config's force_upcast)")
    g.add_argument("--vae-tiling", default=None,
                   help="auto (default: tiles only where one pass would not fit, e.g. a GPU's buffer limit), on "
                        "(diffusers' enable_tiling()), or off")
    g.add_argument("--image", default=None, metavar="FILE",
                   help="start from this image (img2img; PNG, JPEG, WebP ...); its size unless --width/--height")
    g.add_argument("--mask", default=None, metavar="FILE",
                   help="with --image: inpaint where this mask is white (grayscale, the image's size)")
    g.add_argument("--strength", type=float, default=None,
                   help="with --image: how much is redrawn, above 0 to 1 (default 0.8; 1.0 when inpainting)")
    g.add_argument("--outpaint", default=None, metavar="L,T,R,B",
                   help="with --image: grow the canvas by these pixels per side (multiples of 64 for SD) and paint them")
    _add_addon_arguments(g)
    g.add_argument("--output", "-o", default="out.png", help="image file (.png); several images get -0, -1, ...")
    g.add_argument("--save-intermediates", metavar="DIR", default=None,
                   help="write a preview PNG of each step's predicted image every --preview-every steps into DIR")
    g.add_argument("--preview", default=None, choices=settings.PREVIEWS[:2],
                   help="what draws the previews: taesd (the tiny autoencoder: the picture itself; default when "
                        "madebyollin/taesd is downloaded) or approx (a linear map of the latents)")
    g.add_argument("--preview-every", type=_int, default=None,
                   help="steps between previews (default: every step with taesd, else about ten a run)")
    g.add_argument("--decoder", default=None,
                   help="vae (default: the model's own), or taesd / a tiny autoencoder's folder or Hub repo id: a fast "
                        "draft decode")
    g.add_argument("--settings-from", metavar="FILE.png", default=None,
                   help="start from the settings a PNG carries (sdweb's, or AUTOMATIC1111's `parameters`); "
                        "flags given as well override them")
    g.add_argument("--profile", action="store_true",
                   help="WebGPU: time every GPU dispatch (timestamp-query) and print ms, GFLOP/s and %% of the measured "
                        "peak per op kind, per stage and per UNet step")
    g.add_argument("--autotune", action="store_true",
                   help="WebGPU: time the kernel configurations for this adapter again (otherwise the choices "
                        "remembered in $XDG_CACHE_HOME/sdweb/autotune.json are used, and new shapes tuned)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="check a model folder and summarise its components")
    i.add_argument("model")

    t = sub.add_parser("tokenize", help="show how a prompt is chunked and weighted (A1111's syntax)")
    t.add_argument("--model", required=True)
    t.add_argument("text")
    _add_addon_arguments(t, loras=False)

    from .download import add_arguments as add_download_arguments

    add_download_arguments(sub.add_parser("download", help="fetch a model from the Hugging Face Hub into ./weights/"))
    return p


def _add_addon_arguments(p, loras: bool = True):
    from .addons import DEFAULT_EMBEDDING_DIR, DEFAULT_LORA_DIR

    if loras:
        p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                       help="a LoRA file (.safetensors, .pt, .bin; kohya or diffusers/PEFT) fused at SCALE "
                            "(default 1); repeatable")
        p.add_argument("--lora-dir", default=None, metavar="DIR",
                       help=f"where <lora:NAME:SCALE> in the prompt finds NAME.safetensors (default ./{DEFAULT_LORA_DIR})")
    p.add_argument("--embedding", action="append", default=[], metavar="PATH",
                   help="a textual-inversion file; its trigger word is the file name (A1111) or the token it "
                        "stores (diffusers); repeatable")
    p.add_argument("--embedding-dir", default=None, metavar="DIR",
                   help=f"load every .safetensors/.pt/.bin embedding in DIR (default ./{DEFAULT_EMBEDDING_DIR}, "
                        "when it exists)")


def _addons(args):
    """The add-on flags -> (settings' loras, settings' embeddings, library). --embedding-dir adds
    every embedding file in the folder, sorted; the default folder may be missing, a named one not."""
    from .addons import ADDON_SUFFIXES, DEFAULT_EMBEDDING_DIR, DEFAULT_LORA_DIR, FolderLibrary

    lora_dir = getattr(args, "lora_dir", None)
    if lora_dir is not None and not Path(lora_dir).is_dir():
        raise ConfigError(f"--lora-dir {lora_dir}: no such folder")
    folder = Path(args.embedding_dir or DEFAULT_EMBEDDING_DIR)
    if args.embedding_dir is not None and not folder.is_dir():
        raise ConfigError(f"--embedding-dir {args.embedding_dir}: no such folder")
    found = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix in ADDON_SUFFIXES
                   and not p.name.startswith(".")) if folder.is_dir() else []
    return list(getattr(args, "lora", [])), list(args.embedding) + found, FolderLibrary(lora_dir or DEFAULT_LORA_DIR)


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


def _webgpu_available() -> tuple[bool, str, tuple]:
    """Whether the WebGPU backend has an adapter here, and its features (imported only when asked for)."""
    try:
        from .backends import webgpu
    except ImportError:
        return False, "the `wgpu` package is missing", ()
    if not webgpu.available():
        return False, "no adapter was found", ()
    return True, "", tuple(webgpu.context().features)


def _request(args, loras, embeddings, image=None, mask=None) -> dict:
    """The generate flags as a settings request (settings.FIELDS), over the settings of
    --settings-from's PNG where a flag is left out (loras, embeddings: the add-on flags', _addons);
    `image` and `mask` are the Pictures read from --image and --mask (a PNG names the files it was
    made from, but only these flags give them)."""
    flags = dict(model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                 guidance=args.guidance, seed=args.seed, scheduler=args.scheduler, width=args.width,
                 height=args.height, num_images=args.num_images, clip_skip=args.clip_skip, precision=args.precision,
                 variant=args.variant, backend=args.backend, preview_every=args.preview_every,
                 # previews are made only to be written: none without --save-intermediates
                 preview=args.preview or (None if args.save_intermediates else "none"), decoder=args.decoder,
                 vae_tiling=args.vae_tiling, loras=loras or None, embeddings=embeddings or None,
                 strength=args.strength, outpaint=args.outpaint, compute=args.compute)
    request = {}
    if args.settings_from is not None:
        from .infotext import read_png

        path = Path(args.settings_from)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"--settings-from {path}: {e.strerror or e}") from None
        try:
            restored = read_png(data)
        except ConfigError as e:
            raise ConfigError(f"--settings-from {path}: {e}", e.field) from None
        for note in restored.notes:
            print(f"sdweb: {path}: {note}", file=sys.stderr)
        request = dict(restored.request)
        made_from = request.pop("image", None)
        request.pop("mask", None)
        if made_from and image is None:
            raise ConfigError(f"--settings-from {path}: it was made from the image {made_from.get('name')} (sha256 "
                              f"{str(made_from.get('sha256'))[:16]}...): give that file with --image (and its mask "
                              "with --mask)", "image")
    request.update({k: v for k, v in flags.items() if v is not None})
    request.update(image=image, mask=mask)
    if not request.get("model"):
        raise ConfigError("--model is required (or --settings-from a PNG that names a model)", "model")
    if request.get("prompt") is None:
        raise ConfigError("--prompt is required (or --settings-from a PNG that carries one)", "prompt")
    return request


def cmd_generate(args) -> int:
    from . import picture
    from .infotext import image_settings, png_text
    from .model import find_repo, resolve_autoencoder, resolve_model
    from .pipeline import Pipeline
    from .settings import ModelInfo, resolve

    # Everything that can be checked is, before a model file is read or anything allocated.
    if args.preview and not args.save_intermediates:
        raise ConfigError(f"--preview {args.preview}: previews are written by --save-intermediates DIR; give one")
    image = picture.read(args.image, what="image") if args.image else None
    mask = picture.read(args.mask, what="mask") if args.mask else None
    loras, embeddings, library = _addons(args)
    s = resolve(_request(args, loras, embeddings, image, mask))
    outputs = _output_paths(args.output, s.num_images)
    inter = Path(args.save_intermediates) if args.save_intermediates else None
    if inter is not None:
        if inter.exists() and not inter.is_dir():
            raise ConfigError(f"--save-intermediates {inter} exists and is not a folder")
        _check_writable_dir(inter if inter.is_dir() else (inter.parent if str(inter.parent) else Path(".")),
                            f"--save-intermediates {inter}")
    folder = resolve_model(s.model)
    info = ModelInfo.of(folder, weight_bytes=folder.weight_bytes(s.variant))
    s = resolve(s.as_request(), info, webgpu=_webgpu_available,
                taesd=find_repo(catalogue.tiny_autoencoder()["repo"]) is not None)
    tiny = resolve_autoencoder(s.tiny_autoencoder) if s.tiny_autoencoder else None
    for note in s.notes:
        print(f"sdweb: {note}", file=sys.stderr)
    if s.backend == "webgpu":
        from .backends import webgpu as backend
    else:
        from .backends import numpy as backend
    pipe = Pipeline(folder, backend, precision=s.precision, variant=s.variant, library=library,
                    tiny_autoencoder=tiny, compute=s.compute)
    if inter is not None:
        inter.mkdir(exist_ok=True)

    bar = _Bar(args.quiet)
    gpu = _GpuExtras(backend, args, bar) if s.backend == "webgpu" else None
    ran = {"steps": s.steps}  # UNet steps taken: fewer from an image, at strength < 1

    def progress(p):
        if gpu is not None:
            gpu.progress(p)
        bar(p)
        if p.stage == "unet":
            ran["steps"] = p.total
        if inter is not None and p.preview is not None:
            n, h = p.preview.shape[:2]
            up = s.height // h  # the linear map's previews are at the latents' size
            for k in range(n):
                name = f"step-{p.step:04d}.png" if n == 1 else f"step-{p.step:04d}-{k}.png"
                _save_image(p.preview[k].repeat(up, axis=0).repeat(up, axis=1), inter / name)

    try:
        result = pipe.generate(**s.run_args(), image=image, mask=mask, progress=progress)
    finally:
        if gpu is not None:
            gpu.close()
    bar.close()
    for k, path in enumerate(outputs):
        # the model as it was named (a repo id stays a repo id, which other machines can resolve)
        _save_image(result.images[k], path, png_text(image_settings(dict(result.settings, model=s.model), k)))
        print(f"wrote {path} (seed {result.seeds[k]})", file=sys.stderr)
    t = result.timings
    parts = [f"{k} {v:.2f}s" for k, v in t.items() if k != "total"]
    print(f"timings: {', '.join(parts)}; total {t['total']:.2f}s "
          f"({t['unet'] / ran['steps']:.2f}s per step)", file=sys.stderr)
    if gpu is not None:
        gpu.print_report(pipe)
    return 0


class _GpuExtras:
    """On WebGPU: autotuning (remembered per adapter in the cache file) and, with --profile, the GPU
    time per op kind (backends/webgpu/tuning.py, profile.py)."""

    def __init__(self, backend, args, bar):
        from .backends.webgpu import profile, tuning

        self.ctx, self.bar, self.quiet = backend.context(), bar, args.quiet
        self.told = False
        self.tuning = tuning.start(self.ctx, redo=args.autotune, report=self._tuned)
        self.run = None
        if args.profile:
            self.run = profile.RunProfile(self.ctx)
            if not self.run.start():
                print(f"sdweb: --profile: this adapter ({self.ctx.limits.get('adapter', '?')}) has no timestamp-query "
                      "feature, so GPU time per dispatch cannot be measured", file=sys.stderr)
                self.run = None

    def _tuned(self, r):
        if not self.told and not self.quiet:
            self.bar.close()
            print("tuning kernels for this GPU (first use of these shapes; remembered for next time) ...",
                  file=sys.stderr, flush=True)
            self.told = True

    def progress(self, p):
        if self.run is not None:
            self.run.progress(p)

    def close(self):
        from .backends.webgpu import tuning

        if self.run is not None:
            self.run.stop()
        tuning.finish(self.ctx)
        self.ctx.set_tuning(None)

    def print_report(self, pipe):
        from .backends.webgpu import peak
        from .settings import stage_compute

        if self.tuning.tuned and not self.quiet:
            print(f"autotuning: {self.tuning.summary()}", file=sys.stderr)
        if self.run is None:
            return
        peaks = self.tuning.peaks or peak.measure_peaks(self.ctx)
        computes = {st: stage_compute(pipe.compute, st, pipe.vae_config) for st in ("text_encoder", "unet", "vae")}
        print(f"GPU time per op kind ({self.ctx.limits.get('adapter', '?')}, timestamp-query):\n", file=sys.stderr)
        print(self.run.text(peaks, computes), file=sys.stderr)


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
    """Each chunk the prompt becomes (prompt_syntax: A1111's rules): its 77 ids, then its tokens with
    their weights, `(token:weight)` where the weight is not 1 and `trigger#i` for an embedding's
    vector i; then the LoRA tags the prompt names, with their scales."""
    from .addons import embedding_chunker
    from .clip import DEFAULTS as CLIP_DEFAULTS
    from .model import resolve_model
    from .tokenizer import CLIPTokenizer

    _, embeddings, library = _addons(args)
    folder = resolve_model(args.model)
    tok = CLIPTokenizer.from_folder(folder.tokenizer_dir)
    hidden = int(folder.config("text_encoder").get("hidden_size", CLIP_DEFAULTS["hidden_size"]))
    chunked = embedding_chunker(library, tok, hidden, embeddings)[0].chunk(args.text)
    n = len(chunked.chunks)
    for k, chunk in enumerate(chunked.chunks):
        slots = {pos: f"{trigger}#{i}" for pos, trigger, i in chunk.embeddings}
        words = []
        for pos in range(1, chunk.n_tokens + 1):
            word = slots.get(pos) or tok.decoder[chunk.ids[pos]]
            w = chunk.weights[pos]
            words.append(word if w == 1.0 else f"({word}:{w:.4g})")
        print(f"chunk {k + 1} of {n}: {chunk.n_tokens} of 75 tokens")
        print(json.dumps(chunk.ids))
        print(" ".join(words))
    for t in chunked.loras:
        print(f"LoRA {t.name}: text encoder scale {t.text_encoder_scale:g}, UNet scale {t.unet_scale:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
