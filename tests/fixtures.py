"""Model directories for the runtime tests: tiny untrained models of every kind, exported once per test
session with ``exporters.export_model`` into a temporary directory (shared, read-only), plus helpers to
copy them somewhere a test may damage them.

A fresh network barely fires (BatchNorm statistics 0/1), so its logits would not depend on the input;
``tiny_model`` randomizes the BatchNorm statistics and the neuron biases so that outputs vary with the
input and a wrong state shows up as a wrong answer.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

T, F, C = 8, 5, 3
K = 3
KINDS: dict[str, int | None] = {"psn": None, "masked_psn": K, "sliding_psn": K, "lif": None}
STREAMING = ("masked_psn", "sliding_psn", "lif")


def tiny_model(kind: str, k: int | None, seed: int = 0):
    import torch
    from torch import nn

    from psn.network import NetConfig, SeqClassifier
    from psn.neurons import PSN, SlidingPSN

    torch.manual_seed(seed)
    cfg = NetConfig(T=T, features=F, classes=C, kind=kind, k=k, arch="mlp", channels=4, depth=2, hidden=16)
    model = SeqClassifier(cfg)
    g = torch.Generator().manual_seed(seed)
    lif = kind == "lif"
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(1.0, 2.0, generator=g) if lif else m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.8 if lif else 0.0, 0.5, generator=g)
            elif isinstance(m, PSN):  # PSN and masked PSN
                m.bias.uniform_(-0.5, 0.5, generator=g)
            elif isinstance(m, SlidingPSN):
                m.weight.copy_(torch.randn(m.k, generator=g))
                m.bias.uniform_(-0.3, 0.3, generator=g)
    model.set_lambda(1.0)
    return model.eval()


_CACHE_ENV = (
    "PSN_TEST_EXPORTED_MODELS"  # shared by both import names of this module (fixtures, tests.fixtures)
)


@functools.cache
def exported_models() -> Path:
    """A directory holding one model directory per kind (named after the kind). Do not modify it."""
    cached = os.environ.get(_CACHE_ENV)
    if cached and all((Path(cached) / kind / "manifest.json").is_file() for kind in KINDS):
        return Path(cached)
    from exporters import export_model

    root = Path(tempfile.mkdtemp(prefix="psn-runtime-tests-"))
    atexit.register(shutil.rmtree, root, True)
    for kind, k in KINDS.items():
        export_model(
            tiny_model(kind, k),
            root / kind,
            name=kind,
            dataset="random",
            test_accuracy=0.0,
            command=f"tests/fixtures.py tiny_model({kind!r}, {k})",
        )
    os.environ[_CACHE_ENV] = str(root)
    return root


def copy_models(dst: Path, kinds: tuple[str, ...] = tuple(KINDS)) -> Path:
    """Copy the exported model directories of ``kinds`` into dst (created); returns dst."""
    src = exported_models()
    dst.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        shutil.copytree(src / kind, dst / kind)
    return dst


def run_full(models_dir: Path, kind: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [B, C], step_logits [B, T, C]) of the model's full.onnx run directly by ORT."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(models_dir / kind / "full.onnx"), providers=["CPUExecutionProvider"])
    logits, step_logits = sess.run(["logits", "step_logits"], {"x": np.ascontiguousarray(x, np.float32)})
    return logits, step_logits


def sequences(n: int, seed: int = 0, length: int = T) -> np.ndarray:
    """n random input sequences [n, length, F] float32."""
    return np.random.default_rng(seed).standard_normal((n, length, F)).astype(np.float32)


def make_runtime(models_dir: Path, **config):
    """A loaded Runtime over models_dir (CPU provider unless config says otherwise)."""
    from psn_runtime import Runtime, RuntimeConfig

    config.setdefault("providers", ["CPUExecutionProvider"])
    runtime = Runtime(RuntimeConfig(models_dir=models_dir, **config))
    runtime.load()
    return runtime


def running_means(step_logits: np.ndarray) -> np.ndarray:
    """[B, T, C] step logits -> [B, T, C] mean of the logits of steps 0..t."""
    counts = np.arange(1, step_logits.shape[1] + 1, dtype=np.float64)[None, :, None]
    return np.cumsum(step_logits.astype(np.float64), axis=1) / counts
