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
    """A tiny mlp network whose neurons all fire (see tests/nets.py), in eval mode."""
    from tests.nets import tiny_model as randomized_tiny_model

    return randomized_tiny_model(kind, T, k, arch="mlp", features=F, classes=C, seed=seed)


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
