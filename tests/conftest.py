"""Shared fixtures: the tiny test models and a cached diffusers reference pipeline.

Nothing heavy is imported at module level: torch, diffusers and transformers are imported inside
the fixtures, so tests that use none of them start fast.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "tests" / ".models"  # gitignored; rebuilt when make_test_models.py changes

# Test files by what they need beyond Python, so a newcomer can run the suite in parts
# (`pytest -m "not browser"`, `pytest -m "not browser and not gpu"`). The markers are registered in
# pyproject.toml; a file not named here can still set its own `pytestmark`.
MARKED_FILES = {
    "browser": ("test_page*.py",),  # Playwright driving Debian's chromium
    "gpu": ("test_webgpu_*.py", "test_lazy_weights.py"),  # a WebGPU adapter through wgpu (lavapipe)
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        for marker, patterns in MARKED_FILES.items():
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                item.add_marker(marker)


def load_script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package), loaded once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def make_test_models():
    """The make_test_models module (specs, `build`, `make_tiny_modules`, `is_complete`)."""
    return load_script("make_test_models")


@pytest.fixture(scope="session")
def matmul_ladder():
    """scripts/matmul_ladder.py: the kernel ladder's `linear(ctx, x, weight, bias, act, version)`."""
    return load_script("matmul_ladder")


@pytest.fixture(scope="session")
def test_models_dir(make_test_models) -> Path:
    """tests/.models/ holding sd1-tiny, sd2-tiny, nomid-tiny, sd1-inpaint-tiny, lcm-tiny and taesd-tiny,
    built on first use (a few seconds)."""
    make_test_models.build(MODELS_DIR, quiet=True)
    return MODELS_DIR


@pytest.fixture(scope="session")
def sd1_tiny(test_models_dir) -> Path:
    """SD 1.x layout: prefixed CLIP file with position_ids, legacy VAE names, .fp16 variants."""
    return test_models_dir / "sd1-tiny"


@pytest.fixture(scope="session")
def sd2_tiny(test_models_dir) -> Path:
    """SD 2.x layout: unprefixed CLIP (transformers 5), per-block heads, v_prediction, pads with '!'."""
    return test_models_dir / "sd2-tiny"


@pytest.fixture(scope="session")
def nomid_tiny(test_models_dir) -> Path:
    """BK-SDM layout: UNet without a mid block, new VAE attention names."""
    return test_models_dir / "nomid-tiny"


@pytest.fixture(scope="session")
def sd1_inpaint_tiny(test_models_dir) -> Path:
    """An inpainting model: sd1-tiny's layout, a 9-channel UNet, StableDiffusionInpaintPipeline."""
    return test_models_dir / "sd1-inpaint-tiny"


@pytest.fixture(scope="session")
def lcm_tiny(test_models_dir) -> Path:
    """A latent consistency model: LatentConsistencyModelPipeline, LCMScheduler, UNet with time_cond_proj_dim."""
    return test_models_dir / "lcm-tiny"


@pytest.fixture(scope="session")
def taesd_tiny(test_models_dir) -> Path:
    """A tiny random AutoencoderTiny in madebyollin/taesd's layout (config.json and
    diffusion_pytorch_model.safetensors at the root), for the SD test models' latents."""
    return test_models_dir / "taesd-tiny"


@pytest.fixture(scope="session")
def diffusers_pipe():
    """Factory: `diffusers_pipe(path, variant=None)` -> StableDiffusionPipeline in float32.

    Components are loaded once per (path, variant) and shared; each call returns a new pipeline
    object with its own fresh scheduler, so a test may swap `pipe.scheduler` without changing
    what the next test gets (do not modify the shared modules' weights). Safety checker off,
    progress bars off. Sets torch to one thread for the session: the tiny models' ops are far
    too small to gain from threads, and threads competing with other processes on a shared
    2-core box make them many times slower.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    cache = {}

    def load(path, variant=None):
        key = (str(Path(path).resolve()), variant)
        if key not in cache:
            cache[key] = StableDiffusionPipeline.from_pretrained(
                path, dtype=torch.float32, variant=variant, safety_checker=None, requires_safety_checker=False
            )
        base = cache[key]
        components = dict(base.components, scheduler=type(base.scheduler).from_config(base.scheduler.config))
        pipe = StableDiffusionPipeline(**dict(components, requires_safety_checker=False))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


@pytest.fixture
def hub(tmp_path_factory, sd1_tiny, sd2_tiny):
    """A local Hub-compatible HTTP server (tests/hub_server.py) on 127.0.0.1, one per test, serving
    copies of the tiny models as test/sd1-tiny (.fp16 variants too), test/sd2-tiny (plain files only)
    and test/sd1-tiny-gated (401 without `Authorization: Bearer <hub.token>`, 403 with another).
    `hub.url` is the endpoint (HF_ENDPOINT, the page's ?endpoint=); faults and the request log are
    described in hub_server.py; `hub.add_repo` adds more."""
    if "hub_server" not in sys.modules:
        spec = importlib.util.spec_from_file_location("hub_server", ROOT / "tests" / "hub_server.py")
        sys.modules["hub_server"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["hub_server"])
    server = sys.modules["hub_server"].HubServer(tmp_path_factory.mktemp("hub"))
    server.add_repo("test/sd1-tiny", sd1_tiny, license="creativeml-openrail-m")
    server.add_repo("test/sd2-tiny", sd2_tiny, license="openrail++")
    server.add_repo("test/sd1-tiny-gated", sd1_tiny, gated=True, license="creativeml-openrail-m")
    with server:
        yield server
