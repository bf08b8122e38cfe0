#!/usr/bin/env python3
"""Regenerate docs/img/intermediates.png: the latents of one `sdweb generate` run, step by step.

    python3 scripts/make_docs_figure.py [--model tests/.models/sd2-tiny] [--out docs/img/intermediates.png]

1. Build the tiny test models if they are missing (scripts/make_test_models.py; idempotent).
2. Run the CLI exactly as a user would, into a temporary folder:
       sdweb generate --model M --prompt P --steps 20 --seed 3 --width 256 --height 256
                      --save-intermediates DIR --preview-every 4 -o DIR/final.png
   (`python -m sdweb.cli`, so the checkout's package is used). The CLI writes DIR/step-NNNN.png,
   a fixed linear latent -> RGB map of the latents after step NNNN (sdweb/preview.py, no VAE).
3. Paste, left to right: the starting noise (the noise contract's latents for this seed, shown with
   the same preview map), every preview the CLI wrote, and the decoded image; label each panel with
   its step and the noise level t its latents are at.

The default model is sd2-tiny (v-prediction): with random weights an epsilon-prediction UNet
(sd1-tiny) drives the latents to a standard deviation of about 15, where the preview map (made for
latents of std ~1) shows only saturated colour; see docs/UNDERSTANDING_DIFFUSION.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PANEL = 128  # pixels per panel side
GAP = 6
TITLE_H = 24
LABEL_H = 36
MAX_BYTES = 200_000


def ensure_model(model: Path):
    """Build the tiny test models when `model` is one of them and is not there yet."""
    if (model / "model_index.json").is_file():
        return
    if model.parent.name != ".models":
        sys.exit(f"make_docs_figure: {model} has no model_index.json; give a diffusers model folder")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_models.py"), str(model.parent),
                    "--only", model.name], check=True, cwd=ROOT)


def run_cli(model: Path, prompt: str, steps: int, seed: int, size: int, every: int, work: Path) -> Path:
    inter = work / "inter"
    final = work / "final.png"
    cmd = [sys.executable, "-m", "sdweb.cli", "generate", "--model", str(model), "--prompt", prompt,
           "--steps", str(steps), "--seed", str(seed), "--width", str(size), "--height", str(size),
           "--save-intermediates", str(inter), "--preview-every", str(every), "-o", str(final), "-q"]
    print("running:", " ".join(cmd[1:]), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return inter


def start_and_schedule(model: Path, seed: int, size: int, steps: int):
    """-> (the run's starting latents (noise contract) through the CLI's preview map, as a PIL image;
    the scheduler's timesteps, to label each panel with the noise level of its latents; the
    scheduler's name). Uses the same defaults the CLI picks for this model."""
    from PIL import Image

    from sdweb.model import resolve_model
    from sdweb.pipeline import Pipeline
    from sdweb.preview import latents_to_rgb
    from sdweb.schedulers import make_scheduler

    pipe = Pipeline(resolve_model(str(model)))
    name = pipe.info.default_scheduler
    sched = make_scheduler(name, pipe.scheduler_config)
    sched.set_timesteps(steps)
    x = pipe.first_noise(seed, 1, size, size)[0] * sched.init_noise_sigma
    start = Image.fromarray(latents_to_rgb(x[0], upscale=pipe.vae_scale_factor))
    return start, [float(t) for t in sched.timesteps], name


def compose(panels, title: str, out: Path):
    """panels: [(PIL image, line 1, line 2)] -> one labelled strip at `out`."""
    from PIL import Image, ImageDraw, ImageFont

    n = len(panels)
    W = n * PANEL + (n + 1) * GAP
    H = TITLE_H + PANEL + LABEL_H + GAP
    strip = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(strip)
    big, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    draw.text((GAP, 5), title, fill=(40, 40, 40), font=small)
    for i, (img, line1, line2) in enumerate(panels):
        x = GAP + i * (PANEL + GAP)
        # previews are blocky (one block per latent pixel): keep the blocks; smooth only the image
        resample = Image.LANCZOS if line1 == "decoded" else Image.NEAREST
        strip.paste(img.convert("RGB").resize((PANEL, PANEL), resample), (x, TITLE_H))
        cx = x + PANEL // 2
        draw.text((cx, TITLE_H + PANEL + 4), line1, fill=(0, 0, 0), font=big, anchor="mt")
        draw.text((cx, TITLE_H + PANEL + 20), line2, fill=(90, 90, 90), font=small, anchor="mt")
    out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out, format="PNG", optimize=True)
    if out.stat().st_size > MAX_BYTES:
        # the decoded panel is the only one that compresses badly; a palette keeps it readable
        strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    size = out.stat().st_size
    if size > MAX_BYTES:
        sys.exit(f"make_docs_figure: {out} is {size:,} bytes, over {MAX_BYTES:,}; use a smaller --size")
    return size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tests/.models/sd2-tiny")
    ap.add_argument("--prompt", default="a lighthouse at dusk")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="image width and height in pixels")
    ap.add_argument("--every", type=int, default=4, help="--preview-every for the CLI")
    ap.add_argument("--out", default="docs/img/intermediates.png")
    args = ap.parse_args(argv)

    from PIL import Image

    model = Path(args.model) if Path(args.model).is_absolute() else (ROOT / args.model).resolve()
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    ensure_model(model)
    start, timesteps, scheduler = start_and_schedule(model, args.seed, args.size, args.steps)

    def level(k):
        """Noise level (training timestep) of the latents after k UNet calls."""
        return f"t = {round(timesteps[k])}" if k < len(timesteps) else "t = 0"

    panels = [(start, "start", level(0))]
    with tempfile.TemporaryDirectory(prefix="sdweb-figure-") as tmp:
        work = Path(tmp)
        inter = run_cli(model, args.prompt, args.steps, args.seed, args.size, args.every, work)
        for path in sorted(inter.glob("step-*.png")):
            k = int(path.stem.split("-")[1])
            with Image.open(path) as im:
                panels.append((im.copy(), f"step {k}", level(k)))
        with Image.open(work / "final.png") as im:
            panels.append((im.copy(), "decoded", "VAE"))
    title = (f"{model.name} (random weights): \"{args.prompt}\", seed {args.seed}, {scheduler}, "
             f"{args.steps} steps = {len(timesteps)} UNet calls, {args.size}x{args.size} px; "
             "latents shown through the fixed latent-to-RGB preview map")
    size = compose(panels, title, out)
    print(f"wrote {out} ({size:,} bytes, {len(panels)} panels)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
