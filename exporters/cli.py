"""``psn export CHECKPOINT --out models/NAME [--name NAME]``: checkpoint -> checked model directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "psn export"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a training checkpoint to a model directory (manifest.json, full.onnx, "
        "step.onnx). Nothing is written unless the ONNX checker and the PyTorch/ONNX Runtime parity "
        "checks pass.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (weights.safetensors, config.json)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write, e.g. models/NAME")
    p.add_argument("--name", help="model name in the manifest (default: the --out directory's name)")
    p.add_argument("--quiet", action="store_true", help="do not print the parity table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    # imported here so that `psn export --help` is fast and a missing torch/onnx is reported by psn.cli
    from exporters.checks import CheckReport
    from exporters.errors import ExportCheckFailed, ExportError
    from exporters.export import export_checkpoint

    report = CheckReport()
    try:
        manifest = export_checkpoint(args.checkpoint, args.out, args.name, report=report)
    except ExportCheckFailed as exc:
        print(f"{PROG}: {exc}\n{PROG}: nothing was written to {args.out}", file=sys.stderr)
        return 2
    except (ExportError, ValueError, OSError) as exc:  # CheckpointError is a ValueError
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(report.summary())
    graphs = ", ".join(sorted(manifest.sha256))
    print(
        f"{PROG}: {manifest.name} ({manifest.kind}, T={manifest.T}, k={manifest.k}, "
        f"{manifest.parameters} parameters, test accuracy {manifest.test_accuracy:.4f}) -> {args.out} "
        f"[{graphs}, manifest.json]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
