"""The model directories the serving suite loads: the bundled ones under models/ when they hold every
neuron kind, else tiny untrained ones exported on the spot (that needs torch; serving them does not)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import BenchError
from bench.serving.procs import REPO_ROOT

KINDS = ("psn", "masked_psn", "sliding_psn", "lif")
BUNDLED = REPO_ROOT / "models"
TINY_K = 4


@dataclass(frozen=True)
class ModelRef:
    name: str
    kind: str
    T: int
    features: int
    k: int | None
    streams: bool
    dataset: str
    test_accuracy: float
    parameters: int
    directory: str = ""  # the model directory (manifest.json, full.onnx, step.onnx)

    def to_json(self) -> dict:
        return asdict(self)


def scan(models_dir: Path) -> dict[str, ModelRef]:
    """One model per neuron kind in models_dir/*/manifest.json (1-D per-step inputs only): the most
    accurate, then the first by name."""
    best: dict[str, ModelRef] = {}
    for manifest in sorted(models_dir.glob("*/manifest.json")):
        try:
            m = json.loads(manifest.read_text())
            ref = ModelRef(
                m["name"], m["kind"], int(m["T"]), int(m["features"]), m.get("k"), bool(m["streams"]),
                str(m.get("dataset", "?")), float(m.get("test_accuracy") or 0.0), int(m.get("parameters", 0)),
                str(manifest.parent),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a model directory the server would load either; it reports why
        if len(m.get("input_shape") or [ref.features]) != 1:
            continue  # the load generators send [T, F] bodies and F-float frames: 1-D per-step models only
        if ref.kind not in best or ref.test_accuracy > best[ref.kind].test_accuracy:
            best[ref.kind] = ref
    return best


def export_tiny(dst: Path) -> Path:
    """Tiny untrained sMNIST-shaped models (T=28, F=28, 10 classes), one per kind, masked at λ=1."""
    try:
        from exporters.export import export_model
        from psn.network import NetConfig, SeqClassifier
    except ModuleNotFoundError as exc:
        raise BenchError(
            f"no complete models/ to serve and cannot export tiny ones ({exc}); pass --models-dir DIR "
            "or install the training extras (pip install -e '.[train]')"
        ) from exc
    import torch

    torch.manual_seed(0)
    for kind in KINDS:
        k = TINY_K if kind in ("masked_psn", "sliding_psn") else None
        cfg = NetConfig(
            T=28, features=28, classes=10, kind=kind, k=k, arch="conv", channels=16, depth=2, hidden=64
        )
        model = SeqClassifier(cfg)
        model.set_lambda(1.0)
        export_model(
            model.eval(), dst / kind, name=f"tiny-{kind}", dataset="untrained", test_accuracy=0.0,
            command=f"bench.serving.models.export_tiny (untrained {kind}, k={k})",
        )  # fmt: skip
    return dst


def resolve(models_dir: Path | None, work: Path, quiet: bool) -> tuple[Path, dict[str, ModelRef], str]:
    """(directory to serve, model per kind, where they come from)."""
    if models_dir is not None:
        found = scan(models_dir)
        if not found:
            raise BenchError(f"--models-dir {models_dir}: no */manifest.json there")
        return models_dir, found, f"{models_dir} (given)"
    found = scan(BUNDLED)
    missing = [k for k in KINDS if k not in found]
    if not missing:
        return BUNDLED, found, f"{BUNDLED} (bundled)"
    if not quiet:
        print(
            f"bundled models/ lacks {', '.join(missing)}: exporting tiny untrained models instead",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    dst = export_tiny(work / "models")
    return dst, scan(dst), "tiny untrained models exported for this run (bundled models/ incomplete)"
