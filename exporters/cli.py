"""``psn export``: a training checkpoint, or any PSN-family network given as Python code + weights, to a
checked model directory.

    psn export CHECKPOINT --out models/NAME[/VERSION] [--name NAME] [--max-tie-samples SHARE]
    psn export --module FILE.py:FUNCTION --weights W --input-shape T,D1[,D2,...] --name NAME --out DIR
               [--labels a,b,c] [--max-tie-samples SHARE] [--readout spikes|mem]
    psn export --nir GRAPH.nir --dt DT --input-shape T,D1[,D2,...] --name NAME --out DIR [--labels a,b,c]
               [--max-tie-samples SHARE]

FUNCTION (or ``package.module:FUNCTION``) takes no arguments and returns the network (an nn.Module,
x [T, N, *shape] -> per-step logits [T, N, C], or a snnTorch nn.Sequential in its single-step
convention, read out by its last layer's spikes or membrane: ``--readout``); W is a ``.safetensors`` file
or a ``.pt`` state_dict (loaded with ``torch.load(weights_only=True)``: no pickled code runs). GRAPH is a
feed-forward NIR graph, its neurons discretised by forward Euler at DT (exporters/sources/nir.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import NoReturn

PROG = "psn export"


class UsageError(Exception):
    """Bad command-line usage: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Export a training checkpoint, any PSN-family network (this project's psn modules, "
        "SpikingJelly's or a snnTorch nn.Sequential) given as --module + --weights, or a NIR graph (--nir), "
        "to a model directory (manifest.json, full.onnx, "
        "step.onnx when every neuron is causal). Nothing is written unless the ONNX checker and the "
        "PyTorch/ONNX Runtime parity checks pass.",
    )
    p.add_argument(
        "checkpoint", type=Path, nargs="?", help="checkpoint directory (weights.safetensors, config.json)"
    )
    p.add_argument("--module", help="FILE.py:FUNCTION or package.module:FUNCTION returning the network")
    p.add_argument(
        "--weights", type=Path, help="the network's state_dict: .safetensors or .pt (weights only)"
    )
    p.add_argument("--input-shape", help="T, then the per-step input shape: T,D1[,D2,...] (e.g. 10,2,64,64)")
    p.add_argument("--labels", help="class labels, comma-separated (default 0..C-1)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write, e.g. models/NAME")
    p.add_argument(
        "--name",
        help="model name in the manifest (default for a checkpoint: the --out directory's name, or the one "
        "above it for a numbered version folder: --out models/NAME/2 writes version 2 of NAME)",
    )
    p.add_argument(
        "--max-tie-samples",
        type=_share,
        default=None,
        metavar="SHARE",
        help="the share of each parity check's samples that may be set aside because a spike sat on the "
        "threshold (a float tie; its sample is not compared after that layer), as 0.0625 or 1/16 "
        "(default 1/16)",
    )
    p.add_argument(
        "--readout",
        choices=["spikes", "mem"],
        help="a snnTorch network's per-step logits: its last layer's spikes (default) or membrane",
    )
    p.add_argument("--nir", type=Path, help="a NIR graph (.nir, written by the nir package) to import")
    p.add_argument("--dt", type=float, help="--nir: the time step of the forward-Euler discretisation")
    p.add_argument("--quiet", action="store_true", help="do not print the parity table")
    return p


def _share(text: str) -> float:
    """A share in [0, 1): ``0.0625`` or ``1/16``."""
    num, sep, den = text.partition("/")
    try:
        value = float(num) / float(den) if sep else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share such as 0.0625 or 1/16") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share in [0, 1)")
    return value


def parse_shape(text: str) -> tuple[int, tuple[int, ...]]:
    try:
        dims = [int(d) for d in text.split(",")]
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: expected integers T,D1[,D2,...]") from None
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise UsageError(f"--input-shape {text!r}: expected T,D1[,D2,...], all >= 1")
    return dims[0], tuple(dims[1:])


def _validate_nir(args: argparse.Namespace) -> None:
    given = [f for f, v in (("CHECKPOINT", args.checkpoint), ("--module", args.module)) if v is not None]
    given += [f for f, v in (("--weights", args.weights), ("--readout", args.readout)) if v is not None]
    if given:
        raise UsageError(f"{', '.join(given)} do not go with --nir")
    missing = [
        f
        for f, v in (("--dt", args.dt), ("--input-shape", args.input_shape), ("--name", args.name))
        if v is None
    ]
    if missing:
        raise UsageError(f"--nir needs {', '.join(missing)}")
    if not args.dt > 0 or args.dt == float("inf"):
        raise UsageError(f"--dt {args.dt}: expected a time step > 0")


def _validate(args: argparse.Namespace) -> None:
    if args.nir is not None:
        return _validate_nir(args)
    if args.dt is not None:
        raise UsageError("--dt only goes with --nir")
    if args.readout is not None and args.module is None:
        raise UsageError("--readout only goes with --module")
    module_flags = {"--weights": args.weights, "--input-shape": args.input_shape, "--labels": args.labels}
    if args.module is None:
        if args.checkpoint is None:
            raise UsageError("give a CHECKPOINT directory or --module FILE.py:FUNCTION")
        extra = [flag for flag, v in module_flags.items() if v is not None]
        if extra:
            raise UsageError(f"{', '.join(extra)} only go with --module")
        return
    if args.checkpoint is not None:
        raise UsageError("give either a CHECKPOINT or --module, not both")
    missing = [f for f, v in (("--weights", args.weights), ("--input-shape", args.input_shape)) if v is None]
    if args.name is None:
        missing.append("--name")
    if missing:
        raise UsageError(f"--module needs {', '.join(missing)}")


def _command(argv: list[str]) -> str:
    return shlex.join(["psn", "export", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser().parse_args(argv)
        _validate(args)
        shape = parse_shape(args.input_shape) if args.module or args.nir else None
    except UsageError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2
    # imported here so that `psn export --help` is fast and a missing torch/onnx is reported by psn.cli
    from exporters.checks import CheckReport
    from exporters.errors import ExportCheckFailed, ExportError
    from exporters.export import export_checkpoint, export_module
    from exporters.loading import load_network
    from exporters.sources import from_module
    from exporters.sources.nir import import_nir

    report = CheckReport()
    ties = {} if args.max_tie_samples is None else {"max_tie_samples": args.max_tie_samples}
    try:
        if args.module or args.nir:
            T, input_shape = shape
            if args.nir:
                net = import_nir(args.nir, args.dt, input_shape)
            else:
                net = from_module(load_network(args.module, args.weights), args.readout)
            labels = args.labels.split(",") if args.labels else None
            manifest = export_module(
                net,
                args.out,
                input_shape=input_shape,
                T=T,
                name=args.name,
                labels=labels,
                command=_command(argv),
                report=report,
                **ties,
            )
        else:
            manifest = export_checkpoint(args.checkpoint, args.out, args.name, report=report, **ties)
    except ExportCheckFailed as exc:
        print(f"{PROG}: {exc}\n{PROG}: nothing was written to {args.out}", file=sys.stderr)
        return 2
    except (ExportError, ValueError, OSError) as exc:  # CheckpointError is a ValueError
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(report.summary())
    graphs = ", ".join(sorted(manifest.sha256))
    acc = "" if manifest.test_accuracy is None else f", test accuracy {manifest.test_accuracy:.4f}"
    neurons = ", ".join(str(k) for k in manifest.neurons)
    print(
        f"{PROG}: {manifest.name} ({manifest.kind}, T={manifest.T}, k={manifest.k}, input "
        f"{list(manifest.input_shape)}, neurons [{neurons}], {manifest.parameters} parameters{acc}) -> "
        f"{args.out} [{graphs}, manifest.json]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
