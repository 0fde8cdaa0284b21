"""The models the suites run: one per neuron kind of a models directory, or tiny untrained sMNIST-shaped ones
exported on the spot (``export_tiny``, the one tiny-model maker; it needs torch, serving them does not)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = REPO_ROOT / "models"
KINDS = ("psn", "masked_psn", "sliding_psn", "lif")
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


def scan(models_dir: Path) -> dict[str, ModelRef]:
    """One model per neuron kind in models_dir/*/manifest.json (1-D per-step inputs only): the most
    accurate, then the first by name."""
    best: dict[str, ModelRef] = {}
    for manifest in sorted(models_dir.glob("*/manifest.json")):
        try:
            m = json.loads(manifest.read_text())
            ref = ModelRef(
                name=m["name"],
                kind=m["kind"],
                T=int(m["T"]),
                features=int(m["features"]),
                k=m.get("k"),
                streams=bool(m["streams"]),
                dataset=str(m.get("dataset", "?")),
                test_accuracy=float(m.get("test_accuracy") or 0.0),
                parameters=int(m.get("parameters", 0)),
                directory=str(manifest.parent),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a model directory the server would load either; it reports why
        if len(m.get("input_shape") or [ref.features]) != 1:
            continue  # the load generators send [T, F] bodies and F-float frames: 1-D per-step models only
        if ref.kind not in best or ref.test_accuracy > best[ref.kind].test_accuracy:
            best[ref.kind] = ref
    return best


def export_tiny(
    dst: Path,
    *,
    T: int = 28,
    features: int = 28,
    classes: int = 10,
    arch: str = "conv",
    channels: int = 16,
    hidden: int = 64,
    k: int = TINY_K,
    kinds: tuple[str, ...] = KINDS,
) -> Path:
    """One untrained model per kind into dst/<kind> (named ``tiny-<kind>``, masked PSN at λ = 1; k for the
    masked and sliding PSN)."""
    try:
        import torch

        from exporters import export_model
        from psn.network import NetConfig, SeqClassifier
    except ModuleNotFoundError as exc:
        raise BenchError(
            f"no models to run and cannot export tiny ones ({exc}); pass --models-dir DIR "
            "or install the training extras (pip install -e '.[train]')"
        ) from exc
    torch.manual_seed(0)
    dims = {
        "T": T,
        "features": features,
        "classes": classes,
        "arch": arch,
        "channels": channels,
        "hidden": hidden,
    }
    for kind in kinds:
        order = k if kind in ("masked_psn", "sliding_psn") else None
        cfg = NetConfig(kind=kind, k=order, depth=2, **dims)
        model = SeqClassifier(cfg)
        model.set_lambda(1.0)
        model.eval()
        export_model(
            model,
            dst / kind,
            name=f"tiny-{kind}",
            dataset="untrained",
            test_accuracy=0.0,
            command=f"bench.models.export_tiny (untrained {kind}, T={T}, F={features}, k={order})",
        )
        (dst / kind / "checkpoint").mkdir(exist_ok=True)  # the network's config, as psn train leaves it
        (dst / kind / "checkpoint" / "config.json").write_text(cfg.to_json())
    return dst


def resolve(models_dir: Path | None, work: Path, quiet: bool) -> tuple[Path, dict[str, ModelRef], str]:
    """(directory to serve, model per kind, where they come from): the given directory, else models/ if it
    holds every kind, else tiny models exported into work/models."""
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
            file=sys.stderr,
            flush=True,
        )
    dst = export_tiny(work / "models")
    return dst, scan(dst), "tiny untrained models exported for this run (bundled models/ incomplete)"
