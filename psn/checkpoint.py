"""Checkpoints: a directory with ``weights.safetensors`` (the state_dict, tensors only: nothing is ever
unpickled), ``config.json`` (the NetConfig) and ``metrics.json`` (test accuracy, epochs, wall time, the
command line...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from psn.network import NetConfig, SeqClassifier

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


def write_checkpoint(directory: Path, model: nn.Module, config_json: str, metrics: dict[str, Any]) -> Path:
    """Write ``model``'s weights, its config (JSON text) and the run's metrics into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(config_json + "\n")
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return directory


def save_checkpoint(model: SeqClassifier, directory: Path, metrics: dict[str, Any]) -> Path:
    """A SeqClassifier's checkpoint (its config is its NetConfig)."""
    return write_checkpoint(directory, model, model.cfg.to_json(), metrics)


def load_checkpoint(directory: Path) -> tuple[SeqClassifier, dict[str, Any]]:
    """Rebuild the model (in eval mode) and return it with its metrics."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint {str(directory)!r} has no {name}")
    try:
        cfg = NetConfig.load(directory / CONFIG_FILE)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"bad {CONFIG_FILE} in {str(directory)!r}: {exc}") from exc
    model = SeqClassifier(cfg)
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"weights do not match config in {str(directory)!r}: {exc}") from exc
    metrics_path = directory / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return model.eval(), metrics
