"""Make PyPI's torchvision 0.28.0 import beside the CPU torch 2.13 of the dev venv (``make`` runs this once
after installing it), for SpikingJelly's model zoo (``spikingjelly.activation_based.model``), which imports
torchvision for ``load_state_dict_from_url`` only.

Why a shim: torchvision 0.28.0 is the release built for torch 2.13, but PyPI's Linux x86_64 wheel is the
CUDA build: its C ops (``torchvision/_C.so``) link libtorch_cuda.so and libc10_cuda.so, which the CPU torch
does not have, so they do not load. torchvision then runs without its C ops, as it is written to (each op
registration is guarded by ``extension._has_ops()``), except for two unguarded decorators,
``@torch.library.register_fake("torchvision::nms")`` and ``("torchvision::qnms")``, which raise
"operator torchvision::nms does not exist" and make ``import torchvision`` fail. This script guards those
two the way torchvision guards the others; nothing else changes. torchvision's Python code (models,
transforms, datasets) then works; its C ops (nms, roi_align, deformable conv, image decoding) stay
unavailable, and nothing in this project uses them. It refuses any other torchvision version, and is a
no-op once applied.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

VERSION = "0.28.0"
GUARD = "torchvision.extension._has_ops()"


def main() -> int:
    version = importlib.metadata.version("torchvision")
    if version != VERSION:
        print(f"{sys.argv[0]}: torchvision {version} is installed; this is for {VERSION}", file=sys.stderr)
        return 1
    spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    for op in ("nms", "qnms"):
        old = f'@torch.library.register_fake("torchvision::{op}")'
        new = f'@(torch.library.register_fake("torchvision::{op}") if {GUARD} else (lambda fn: fn))'
        if new in text:
            continue
        if text.count(old) != 1:
            print(f"{sys.argv[0]}: {path} has no single {old}", file=sys.stderr)
            return 1
        text = text.replace(old, new)
    path.write_text(text)
    check = "import torchvision; from torchvision._internally_replaced_utils import load_state_dict_from_url"
    return subprocess.run([sys.executable, "-c", check], check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
