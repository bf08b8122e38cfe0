#!/usr/bin/env python3
"""What a live preview costs against the UNet step it shows: TAESD's decode of one image's predicted
clean latents, and the linear map, beside one denoising step with classifier-free guidance.

    python scripts/bench_preview.py [--model DIR] [--taesd DIR] [--size 512] [--repeats 3]
                                    [--backend numpy|webgpu] [--json FILE]
    python scripts/bench_preview.py --count [--model DIR] [--size 512]

The UNet is SD 1.5's architecture with random weights (speed does not depend on the values), the
folder scripts/bench_cpu.py uses (weights/_bench/sd15-random, made by `scripts/make_test_models.py
--full-size sd15` when missing; `--model` names another). TAESD is madebyollin/taesd's architecture
(its real config, tests/data/real-configs/taesd/config.json) with random weights unless `--taesd`
names a downloaded copy (weights/madebyollin/taesd after `sdweb download madebyollin/taesd`).

Each of the three is warmed up once, then they run in turn `--repeats` times, so that load from
other processes hits all alike; the table gives medians and each preview's share of a step. The
preview is what the pipeline computes for it (preview.decode_tiny of (1, 4, h, w) latents, its
readback and conversion to uint8 included; preview.approx for the linear map); a UNet step is the UNet's forward pass on (2, 4, h, w) latents
(the scheduler's host arithmetic is negligible beside it). Only ratios from one run mean anything.

`--count` runs nothing: it takes the WebGPU backend's real code path over the counting bridge
(backends/bridges/counting.py) through two-step generations with fp16 weights, TAESD previews and
linear-map ones, and reports the dispatches a step makes with each and each run's peak GPU memory:
what a preview adds on any adapter, whatever its speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))
DEFAULT_MODEL = ROOT / "weights" / "_bench" / "sd15-random"
TAESD_CONFIG = ROOT / "tests" / "data" / "real-configs" / "taesd" / "config.json"


def random_taesd(folder: Path) -> Path:
    """TAESD's real config and random weights of its shapes (diffusers' AutoencoderTiny on the meta
    device says which), in madebyollin/taesd's layout."""
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.numpy import save_file

    config = json.loads(TAESD_CONFIG.read_text())
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoencoderTiny.from_config(config).state_dict().items()}
    rng = np.random.default_rng(0)
    tensors = {k: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]) if len(s) > 1 else 1)).astype(np.float32)
               for k, s in shapes.items()}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="an SD 1.x folder (default: %(default)s)")
    ap.add_argument("--taesd", type=Path, default=None, help="a TAESD folder (default: random weights)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", choices=("numpy", "webgpu"), default="numpy")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--count", action="store_true", help="dispatches and GPU memory over the counting bridge")
    args = ap.parse_args(argv)
    if not (args.model / "model_index.json").is_file():
        import subprocess

        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_models.py"), "--full-size", "sd15",
                        str(args.model)], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        taesd = args.taesd or random_taesd(Path(tmp))
        out = count(args, taesd) if args.count else timing(args, taesd)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def count(args, taesd: Path) -> dict:
    from sdweb.backends import webgpu
    from sdweb.backends.bridges.counting import CountingBridge, counting
    from sdweb.model import AutoencoderFolder, ModelFolder
    from sdweb.pipeline import Pipeline

    out = {"size": args.size}
    for kind in ("approx", "taesd"):
        bridge = CountingBridge("desktop")
        marks = []
        with counting(bridge) as ctx:
            pipe = Pipeline(ModelFolder(args.model), webgpu, precision="fp16",
                            tiny_autoencoder=AutoencoderFolder(taesd))
            pipe.generate("a lighthouse", steps=2, seed=0, width=args.size, height=args.size, scheduler="ddim",
                          preview=kind, progress=lambda p: p.stage == "unet" and marks.append(bridge.dispatches))
            out[kind] = {"dispatches_per_step": marks[2] - marks[1], "peak_bytes": ctx.peak_bytes}
    out["preview_dispatches"] = out["taesd"]["dispatches_per_step"] - out["approx"]["dispatches_per_step"]
    print(f"WebGPU over the counting bridge, {args.size}x{args.size}, fp16 weights, CFG:")
    for kind in ("approx", "taesd"):
        o = out[kind]
        print(f"  {kind:<7} previews: {o['dispatches_per_step']} dispatches a step, run peak {o['peak_bytes'] / 2**20:,.0f} MiB")
    print(f"  a TAESD preview: {out['preview_dispatches']} dispatches")
    return out


def timing(args, taesd: Path) -> dict:
    from sdweb import preview
    from sdweb.autoencoder_tiny import AutoencoderTiny
    from sdweb.model import AutoencoderFolder, ModelFolder
    from sdweb.pipeline import Pipeline, to_uint8

    if args.backend == "webgpu":
        from sdweb.backends import webgpu as backend
    else:
        from sdweb.backends import numpy as backend
    tiny_folder = AutoencoderFolder(taesd)
    store = tiny_folder.weights("fp32", lazy=backend.takes_weight_refs)
    tiny = AutoencoderTiny(tiny_folder.config(), store.prefix(""), backend, encoder=False)
    store.finish()
    unet = Pipeline(ModelFolder(args.model), backend).load("unet")

    h = args.size // 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, h, h), dtype=np.float32)
    context = rng.standard_normal((2, 77, 768), dtype=np.float32)
    x0 = rng.standard_normal((1, 4, h, h), dtype=np.float32)
    runs = {
        "unet_step": lambda: backend.numpy(unet(backend.tensor(x), 500.0, backend.tensor(context))),
        "taesd_preview": lambda: to_uint8(backend.numpy(preview.decode_tiny(tiny, x0, backend))),
        "approx_preview": lambda: preview.approx(x0),
    }
    for fn in runs.values():
        fn()
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"backend": backend.name, "size": args.size, "taesd": str(args.taesd or "random weights"),
           "median_s": med, "runs_s": times,
           "share_of_step": {k: med[k] / med["unet_step"] for k in ("taesd_preview", "approx_preview")}}
    print(f"{backend.name}, {args.size}x{args.size} image ({h}x{h} latents), median of {args.repeats}:")
    print(f"  UNet step with CFG (2x4x{h}x{h})   {med['unet_step']:8.3f} s")
    for k, label in (("taesd_preview", "TAESD preview (1 image)"), ("approx_preview", "linear-map preview")):
        print(f"  {label:<34}{med[k]:8.3f} s   {100 * out['share_of_step'][k]:5.1f}% of a step")
    return out


if __name__ == "__main__":
    sys.exit(main())
