#!/usr/bin/env python3
"""CPU benchmark: sdweb's NumPy backend against diffusers / transformers on torch, full-size SD 1.5.

    python scripts/bench_cpu.py [--only unet|vae|text ...] [--repeats N] [--json FILE] [--model DIR]
                                [--speed-only] [--whole N]

The model is the real SD 1.5 architecture with random weights (speed does not depend on the values),
made once by `scripts/make_test_models.py --full-size sd15` into weights/_bench/sd15-random
(gitignored; ~4.3 GB). Stages, each on fixed seeded inputs:

    unet   one denoising step with classifier-free guidance: batch 2, 64x64 latents, context (2, 77, 768)
    vae    decode of (1, 4, 64, 64) latents to a 512x512 image
    text   the text encoder on (2, 77) ids (a prompt and the empty negative prompt)

1. Speed: each implementation warm in a process of its own, fp32, on every core it may use
   (torch.set_num_threads(cores); `taskset -c 0` gives a one-core comparison), inference_mode;
   NumPy's BLAS threads by default). One warm-up each, then `--repeats` timed runs, diffusers and
   sdweb alternating so that load from other processes hits both alike; the table gives medians and
   the ratio sdweb / diffusers. Separate processes because each side's process-wide settings would
   help the other: sdweb's malloc settings (backends/numpy.py) alone made diffusers' UNet step ~7 %
   faster when both ran in one process. Only ratios from one run mean anything: absolute times
   move with the machine's load.
2. Memory and precision (skipped by --speed-only): each stage once per sdweb precision (fp32, fp16,
   bf16) and once for the reference (fp32), each in a fresh subprocess that loads the component
   and runs it once. Peak RSS is the process's VmHWM (/proc/self/status; ru_maxrss would report the
   parent, as it survives execve); it counts the fp32 weights that sdweb reads as mmap views of the
   file (file-backed, reclaimable pages) as well as anonymous memory. fp16/bf16 outputs are compared
   with sdweb's fp32 output: max rel err = max|out - ref| / max|ref|; PSNR = 10 log10(range^2 / MSE)
   with range = max(ref) - min(ref).

3. Whole process (--whole N, instead of 1 and 2): a 512x512 image, 3 DDIM steps with CFG 7.5, as a
   person runs it: `sdweb generate` (the CLI, fp32 from the fp32 files) and a script of diffusers'
   StableDiffusionPipeline (fp32, DDIMScheduler, safety checker off), each a fresh process that
   imports, loads, encodes the prompt, denoises, decodes and writes a PNG. One untimed pair first
   (the files into the page cache), then N pairs, the order alternating; wall time and peak RSS of
   each process, medians and the ratio sdweb / diffusers. This is what a cold start costs, which
   the in-process timings of 1 leave out.

BLAS matters: NumPy's matmuls go to its bundled OpenBLAS, torch's to MKL / oneDNN. On some machines
(this project's included) OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are set in the environment, because
older OpenBLAS builds misbehave on those processors; they pin a current NumPy to older kernels (e.g.
Haswell's AVX2 on an AVX-512 CPU, about half the GEMM speed). The header says which kernel NumPy's
OpenBLAS runs. To measure what a user's machine would do, unset both for this command alone:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_cpu.py

(never in tests or CI). A default run takes about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sdweb  # noqa: F401  (before NumPy: it sets OpenBLAS's thread timeout, as `sdweb generate` runs)
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "weights" / "_bench" / "sd15-random"
STAGES = ("unet", "vae", "text")
COMPONENT = {"unet": "unet", "vae": "vae", "text": "text_encoder"}
PRECISIONS = ("fp32", "fp16", "bf16")
# the text stage encodes [uncond; cond], in the order CFG batches them
PROMPTS = ("", "a photograph of an astronaut riding a horse")
TIMESTEP = 500.0
SEED = 0


# --- model and inputs -----------------------------------------------------------------------------


def ensure_model(path: Path) -> Path:
    """Build the random-weight full-size SD 1.5 folder if it is missing (a no-op when up to date)."""
    if path == DEFAULT_MODEL or not (path / "model_index.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_test_models.py"), "--full-size", "sd15",
                        str(path)], check=True)
    return path


def inputs(stage: str, model: Path) -> dict:
    """The fixed inputs of a stage, as NumPy arrays (the same in every process)."""
    rng = np.random.default_rng(SEED)
    if stage == "unet":
        x = rng.standard_normal((1, 4, 64, 64), dtype=np.float32)
        return {"x": np.concatenate([x, x]),  # CFG: the same latents for uncond and cond
                "context": rng.standard_normal((2, 77, 768), dtype=np.float32)}
    if stage == "vae":
        # what the pipeline hands the decoder: latents / scaling_factor
        return {"z": rng.standard_normal((1, 4, 64, 64), dtype=np.float32) / np.float32(0.18215)}
    from sdweb.tokenizer import CLIPTokenizer

    tok = CLIPTokenizer.from_folder(model / "tokenizer")
    return {"ids": np.asarray([tok.encode(p) for p in PROMPTS], dtype=np.int64)}


# --- sdweb ----------------------------------------------------------------------------------------


def load_sdweb(stage: str, model: Path, precision: str):
    from sdweb.model import ModelFolder
    from sdweb.pipeline import Pipeline

    pipe = Pipeline(ModelFolder(model), precision=precision, keep_loaded=True)
    return pipe.load(COMPONENT[stage])


def run_sdweb(stage: str, m, inp: dict) -> np.ndarray:
    from sdweb.backends import numpy as B

    if stage == "unet":
        return B.numpy(m(B.tensor(inp["x"]), TIMESTEP, B.tensor(inp["context"])))
    if stage == "vae":
        return B.numpy(m.decode(B.tensor(inp["z"])))
    return B.numpy(m(inp["ids"]))


# --- diffusers / transformers ---------------------------------------------------------------------


def cores() -> int:
    """The cores this process may run on (its affinity: what NumPy's BLAS and sdweb use too)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def torch_setup():
    import torch

    torch.set_num_threads(cores())
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    return torch


def load_reference(stage: str, model: Path):
    torch = torch_setup()
    path = model / COMPONENT[stage]
    if stage == "unet":
        from diffusers import UNet2DConditionModel as cls
    elif stage == "vae":
        from diffusers import AutoencoderKL as cls
    else:
        from transformers import CLIPTextModel as cls
    return cls.from_pretrained(str(path), torch_dtype=torch.float32).eval()


def run_reference(stage: str, m, inp: dict) -> np.ndarray:
    import torch

    with torch.inference_mode():
        if stage == "unet":
            ctx = torch.from_numpy(inp["context"])
            out = m(torch.from_numpy(inp["x"]), TIMESTEP, encoder_hidden_states=ctx).sample
        elif stage == "vae":
            out = m.decode(torch.from_numpy(inp["z"])).sample
        else:
            out = m(torch.from_numpy(inp["ids"])).last_hidden_state
    return out.numpy()


# --- environment header ---------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_blas() -> str:
    """Which BLAS NumPy calls and, for OpenBLAS, which kernel it runs here."""
    try:
        import threadpoolctl

        infos = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"
                 and "numpy" in i.get("filepath", "")]
        if infos:
            i = infos[0]
            return (f"{i['internal_api']} {i.get('version')} kernel {i.get('architecture')}, "
                    f"{i['num_threads']} threads")
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        desc = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # show_config's layout is not a stable API
        desc = "unknown BLAS"
    import ctypes

    for lib in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")):
        try:
            so = ctypes.CDLL(lib)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                fn = getattr(so, f"{prefix}get_corename{suffix}", None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    return f"{desc}, kernel {fn().decode()}"
    return desc


def header(model: Path) -> dict:
    import torch

    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                      "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS") if k in os.environ}
    torch_blas = ", ".join(filter(None, [
        "MKL" if torch.backends.mkl.is_available() else "",
        "oneDNN" if torch.backends.mkldnn.is_available() else "",
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"]))
    import diffusers
    import transformers

    return {
        "cpu": _cpu_name(), "cores": cores(), "python": platform.python_version(),
        "numpy": np.__version__, "numpy_blas": numpy_blas(),
        "torch": torch.__version__, "torch_blas": torch_blas, "torch_threads": torch.get_num_threads(),
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "env": env, "model": str(model), "loadavg_start": os.getloadavg()[0],
    }


# --- measurements ---------------------------------------------------------------------------------


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def speed(stage: str, model: Path, repeats: int) -> dict:
    """A warm worker process per implementation, then alternating timed runs; medians, ratio, and
    the fp32 outputs' agreement."""
    with tempfile.TemporaryDirectory(prefix="sdweb-speed-") as tmp:
        workers = {impl: subprocess.Popen([sys.executable, __file__, "--child-speed", stage, impl,
                                           str(Path(tmp) / f"{impl}.npy"), "--model", str(model)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                   for impl in ("diffusers", "sdweb")}
        try:
            for w in workers.values():  # loaded and warmed up (its output saved)
                if w.stdout.readline().strip() != "ready":
                    raise SystemExit(f"{stage}: a speed worker failed (its error is above)")
            want, got = (np.load(Path(tmp) / f"{impl}.npy") for impl in ("diffusers", "sdweb"))
            runs = {impl: [] for impl in workers}
            for _ in range(repeats):
                for impl, w in workers.items():
                    w.stdin.write("run\n")
                    w.stdin.flush()
                    runs[impl].append(json.loads(w.stdout.readline()))
        finally:
            for w in workers.values():
                w.stdin.close()
                w.wait()
    ref_t, sd_t = ([r["wall_s"] for r in runs[i]] for i in ("diffusers", "sdweb"))
    ref_c, sd_c = ([r["cpu_s"] for r in runs[i]] for i in ("diffusers", "sdweb"))
    ref_s, sd_s = statistics.median(ref_t), statistics.median(sd_t)
    return {"stage": stage, "diffusers_s": ref_s, "sdweb_s": sd_s, "ratio": sd_s / ref_s,
            "cpu_ratio": statistics.median(sd_c) / statistics.median(ref_c),
            "diffusers_runs": ref_t, "sdweb_runs": sd_t, "diffusers_cpu": ref_c, "sdweb_cpu": sd_c,
            "fp32_max_rel_vs_diffusers": max_rel(got, want)}


def loaded(stage: str, impl: str, model: Path, inp: dict):
    """Load a stage's component for `impl` (diffusers, or an sdweb precision) -> a function that runs
    it once on the inputs `inp` and returns the output."""
    if impl == "diffusers":
        m = load_reference(stage, model)
        return lambda: run_reference(stage, m, inp)
    m = load_sdweb(stage, model, impl)
    return lambda: run_sdweb(stage, m, inp)


def speed_worker(stage: str, impl: str, model: Path, out: Path) -> None:
    """One side of speed() (a child process): load, warm up (the output saved to `out`), print
    "ready", then one timed run per "run" line on stdin, each answered with its times as JSON."""
    run = loaded(stage, "fp32" if impl == "sdweb" else impl, model, inputs(stage, model))
    np.save(out, run())
    print("ready", flush=True)
    for line in sys.stdin:
        c = time.process_time()
        wall = timed(run)
        print(json.dumps({"wall_s": wall, "cpu_s": time.process_time() - c}), flush=True)


def child(stage: str, impl: str, model: Path, out: Path) -> None:
    """One fresh-process run: load, run once, save the output, print time and peak RSS as JSON."""
    inp = inputs(stage, model)
    t = time.perf_counter()
    run = loaded(stage, impl, model, inp)
    load_s = time.perf_counter() - t
    run_s = timed(lambda: np.save(out, run()))
    print(json.dumps({"load_s": load_s, "run_s": run_s, "peak_rss_mb": peak_rss_kib() / 1024}))


WHOLE = dict(prompt=PROMPTS[1], steps=3, guidance=7.5, seed=SEED, size=512)


def whole_diffusers(model: Path, out: Path) -> None:
    """The diffusers side of --whole (run as a child process): the pipeline from the folder, one image."""
    torch = torch_setup()
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    w = WHOLE
    with torch.inference_mode():
        image = pipe(w["prompt"], num_inference_steps=w["steps"], guidance_scale=w["guidance"], height=w["size"],
                     width=w["size"], generator=torch.Generator().manual_seed(w["seed"])).images[0]
    image.save(out)


def whole_run(impl: str, model: Path, tmp: Path) -> dict:
    """One fresh process of `impl` (sdweb or diffusers): wall time and peak RSS (the child's own)."""
    out = tmp / f"{impl}.png"
    w = WHOLE
    if impl == "sdweb":
        cmd = [sys.executable, "-m", "sdweb.cli", "generate", "--model", str(model), "--prompt", w["prompt"],
               "--steps", str(w["steps"]), "--scheduler", "ddim", "--guidance", str(w["guidance"]),
               "--seed", str(w["seed"]), "--width", str(w["size"]), "--height", str(w["size"]),
               "--output", str(out), "--quiet"]
    else:
        cmd = [sys.executable, __file__, "--child-whole", str(out), "--model", str(model)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if status != 0 or not out.is_file():
        raise SystemExit(f"{impl} whole-process run failed (status {status}):\n{err}")
    return {"impl": impl, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss: KiB on Linux


def whole(model: Path, pairs: int) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="sdweb-whole-") as tmp:
        for impl in ("diffusers", "sdweb"):  # untimed: the weight files into the page cache
            whole_run(impl, model, Path(tmp))
        for i in range(pairs):
            for impl in (("diffusers", "sdweb") if i % 2 == 0 else ("sdweb", "diffusers")):
                runs.append(whole_run(impl, model, Path(tmp)))
                print(f"  {impl}: {runs[-1]['wall_s']:.1f} s ({runs[-1]['cpu_s']:.1f} s CPU), "
                      f"peak RSS {runs[-1]['peak_rss_mb']:.0f} MB", flush=True)

    def median(key, impl):
        return statistics.median(r[key] for r in runs if r["impl"] == impl)

    med = {impl: median("wall_s", impl) for impl in ("diffusers", "sdweb")}
    cpu = {impl: median("cpu_s", impl) for impl in ("diffusers", "sdweb")}
    ratios = [s["wall_s"] / d["wall_s"] for d, s in zip([r for r in runs if r["impl"] == "diffusers"],
                                                          [r for r in runs if r["impl"] == "sdweb"])]
    return {"runs": runs, "median_s": med, "ratio": med["sdweb"] / med["diffusers"], "median_cpu_s": cpu,
            "cpu_ratio": cpu["sdweb"] / cpu["diffusers"], "pair_ratios": ratios}


def peak_rss_kib() -> int:
    """This process's peak resident set in KiB (see the module docstring)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def memory_and_precision(stage: str, model: Path, tmp: Path) -> list[dict]:
    rows, outs = [], {}
    for impl in ("diffusers",) + PRECISIONS:
        out = tmp / f"{stage}-{impl}.npy"
        cmd = [sys.executable, __file__, "--child", stage, impl, str(out), "--model", str(model)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        outs[impl] = np.load(out)
        row = {"stage": stage, "impl": "diffusers fp32" if impl == "diffusers" else f"sdweb {impl}", **res}
        if impl in ("fp16", "bf16"):
            row["psnr_db"] = psnr(outs[impl], outs["fp32"])
            row["max_rel_err"] = max_rel(outs[impl], outs["fp32"])
        rows.append(row)
        print(f"  {stage} {row['impl']}: peak RSS {res['peak_rss_mb']:.0f} MB, run {res['run_s']:.2f} s",
              flush=True)
    return rows


def max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max())


def psnr(a: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - ref) ** 2))
    span = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(span * span / mse)


# --- report ---------------------------------------------------------------------------------------


def whole_report(res: dict) -> str:
    w, med = WHOLE, res["median_s"]
    rss = {impl: statistics.median(r["peak_rss_mb"] for r in res["runs"] if r["impl"] == impl) for impl in med}
    n = len(res["pair_ratios"])
    return "\n".join([
        f"Whole process, {w['size']}x{w['size']}, {w['steps']} DDIM steps, CFG {w['guidance']}, fp32, median of {n} "
        "alternating pairs (after one untimed pair):", "",
        "| | diffusers | sdweb | ratio (sdweb/diffusers) |", "|---|---:|---:|---:|",
        f"| wall time s | {med['diffusers']:.1f} | {med['sdweb']:.1f} | **{res['ratio']:.2f}** |",
        f"| CPU time s | {res['median_cpu_s']['diffusers']:.1f} | {res['median_cpu_s']['sdweb']:.1f} | "
        f"{res['cpu_ratio']:.2f} |",
        f"| peak RSS MB | {rss['diffusers']:.0f} | {rss['sdweb']:.0f} | {rss['sdweb'] / rss['diffusers']:.2f} |", "",
        "ratio per pair: " + ", ".join(f"{r:.2f}" for r in res["pair_ratios"])])


def report(head: dict, speeds: list[dict], prec: list[dict], repeats: int) -> str:
    lines = [f"# sdweb CPU benchmark: SD 1.5 shapes, random weights ({head['model']})", "",
             f"- CPU: {head['cpu']}, {head['cores']} cores; Python {head['python']}",
             f"- NumPy {head['numpy']}: {head['numpy_blas']}",
             f"- torch {head['torch']} ({head['torch_blas']}, {head['torch_threads']} threads), "
             f"diffusers {head['diffusers']}, transformers {head['transformers']}"]
    if head["env"]:
        lines.append("- environment: " + ", ".join(f"{k}={v}" for k, v in head["env"].items()))
    if "OPENBLAS_CORETYPE" in head["env"]:
        lines.append("  (OPENBLAS_CORETYPE pins NumPy's OpenBLAS kernel; see this script's docstring)")
    load = f"- 1-minute load average: {head['loadavg_start']:.2f} at start"
    if "loadavg_end" in head:
        load += f", {head['loadavg_end']:.2f} at end"
    lines.append(load + " (other processes on the machine slow both sides, unevenly)")
    if speeds:
        lines += ["", f"Speed, fp32, median of {repeats} (after 1 warm-up); CPU ratio: of the process CPU time "
                  "(all threads; on one core it is robust to other processes' load, on several it also counts "
                  "threads spinning while they wait):", "",
                  "| stage | diffusers s | sdweb s | ratio (sdweb/diffusers) | CPU-time ratio |",
                  "|---|---:|---:|---:|---:|"]
        names = {"unet": "UNet step, CFG (2x4x64x64)", "vae": "VAE decode to 512x512",
                 "text": "text encoder (2x77)"}
        for s in speeds:
            lines.append(f"| {names[s['stage']]} | {s['diffusers_s']:.3f} | {s['sdweb_s']:.3f} | "
                         f"{s['ratio']:.2f} | {s['cpu_ratio']:.2f} |")
        lines.append("")
        lines.append("fp32 agreement with diffusers (max|sdweb - ref| / max|ref|): " + ", ".join(
            f"{s['stage']} {s['fp32_max_rel_vs_diffusers']:.1e}" for s in speeds))
    if prec:
        lines += ["", "Peak RSS (fresh process: load + one run) and half-precision error vs sdweb fp32:", "",
                  "| stage | run | peak RSS MB | load s | run s | PSNR dB | max rel err |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in prec:
            err = (f"{r['psnr_db']:.1f} | {r['max_rel_err']:.1e}") if "psnr_db" in r else "| "
            lines.append(f"| {r['stage']} | {r['impl']} | {r['peak_rss_mb']:.0f} | {r['load_s']:.1f} | "
                         f"{r['run_s']:.2f} | {err} |")
        lines += ["", "(run s: one cold run, no warm-up. sdweb fp32 holds its weights as mmap views of the "
                  "file; fp16/bf16 made from an fp32 file also count the fp32 pages read while converting.)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=STAGES, help="benchmark only this stage (repeatable)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (default 3)")
    ap.add_argument("--json", metavar="FILE", help="also write every number to FILE as JSON")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help=f"model folder (default {DEFAULT_MODEL.relative_to(ROOT)}, built when missing)")
    ap.add_argument("--speed-only", action="store_true", help="skip the peak-RSS / precision subprocesses")
    ap.add_argument("--whole", type=int, metavar="N",
                    help="instead: N alternating pairs of whole-process runs (sdweb generate vs a diffusers script)")
    ap.add_argument("--child", nargs=3, metavar=("STAGE", "IMPL", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--child-whole", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--child-speed", nargs=3, metavar=("STAGE", "IMPL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_speed:
        speed_worker(args.child_speed[0], args.child_speed[1], args.model, Path(args.child_speed[2]))
        return 0
    if args.child:
        child(args.child[0], args.child[1], args.model, Path(args.child[2]))
        return 0
    if args.child_whole:
        whole_diffusers(args.model, Path(args.child_whole))
        return 0
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: give 1 or more")
    if args.whole is not None:
        if args.whole < 1:
            ap.error(f"--whole {args.whole}: give 1 or more pairs")
        model = ensure_model(args.model)
        torch_setup()
        head = header(model)
        print(report(head, [], [], args.repeats), flush=True)
        res = whole(model, args.whole)
        head["loadavg_end"] = os.getloadavg()[0]
        print("\n" + report(head, [], [], args.repeats) + "\n\n" + whole_report(res))
        if args.json:
            Path(args.json).write_text(json.dumps({"header": head, "whole": res}, indent=2))
        return 0
    stages = [s for s in STAGES if not args.only or s in args.only]
    model = ensure_model(args.model)
    torch_setup()
    head = header(model)
    print(report(head, [], [], args.repeats), flush=True)
    t0 = time.perf_counter()
    speeds, prec = [], []
    for stage in stages:
        print(f"\n{stage}: speed ...", flush=True)
        speeds.append(speed(stage, model, args.repeats))
        s = speeds[-1]
        print(f"  diffusers {s['diffusers_runs']}\n  sdweb     {s['sdweb_runs']}", flush=True)
    if not args.speed_only:
        with tempfile.TemporaryDirectory(prefix="sdweb-bench-") as tmp:
            for stage in stages:
                print(f"\n{stage}: memory and precision ...", flush=True)
                prec += memory_and_precision(stage, model, Path(tmp))
    head["loadavg_end"] = os.getloadavg()[0]
    print("\n" + report(head, speeds, prec, args.repeats))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": head, "repeats": args.repeats, "speed": speeds,
                                               "memory_precision": prec}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
