#!/usr/bin/env python3
"""Prefetch a model's weights from the Hugging Face Hub: the same command as `sdweb download`.

    python scripts/fetch_weights.py stable-diffusion-v1-5/stable-diffusion-v1-5   # -> ./weights/<repo>/
    python scripts/fetch_weights.py REPO --variant fp32 --dir DIR --token ...      # see --help
    python scripts/fetch_weights.py --list                                         # known-good models

Needs `pip install -e '.[cli]'` (huggingface_hub, tqdm). Works from a checkout without installing
sdweb too: py/ is put on the path when the package is not importable. See WEIGHTS.md.
"""

import sys
from pathlib import Path

try:
    import sdweb  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "py"))

from sdweb.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
