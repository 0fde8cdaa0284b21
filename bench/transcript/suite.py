"""``psn bench transcript``: stream one test sequence through a PSN, a masked PSN, a sliding PSN and a LIF
model of one data set on a psn serve it starts, and print step by step when each answers (a markdown
table): a PSN only after all T inputs, the others from the first step on."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.models import BUNDLED
from bench.serving.procs import choose_pinning, psn_server
from server.client import PSNClient

KINDS = ("psn", "masked-psn", "sliding-psn", "lif")


def sample(dataset: str, index: int) -> tuple[np.ndarray, str]:
    """A test sequence [T, F] and its label: the real test set when the train extra is installed."""
    try:
        from psn.data import load_dataset
    except ModuleNotFoundError:
        rng = np.random.default_rng(index)
        return rng.random((28, 28), dtype=np.float32), "?"
    _, _, x_test, y_test, labels = load_dataset(dataset)
    return np.asarray(x_test[index], dtype=np.float32), labels[int(y_test[index])]


def cell(step) -> str:
    if not step.ready:
        return "ready=false"
    p = float(np.max(step.probabilities))
    return f"**{step.label}** ({p:.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="psn bench transcript", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="smnist", help="model name prefix in models/ (smnist, mnist1d)")
    ap.add_argument("--index", type=int, default=0, help="which test sequence")
    ap.add_argument("--models-dir", type=Path, default=BUNDLED)
    ap.add_argument("--every", type=int, default=3, help="print every n-th step (and the last)")
    for flag in ("--quick", "--quiet"):
        ap.add_argument(flag, action="store_true", help="accepted for `psn bench all` (no effect here)")
    ap.add_argument("--out", type=Path, help="accepted for `psn bench all` (the table goes to stdout)")
    args = ap.parse_args(argv)
    if args.every < 1:
        ap.error("--every must be >= 1")
    names = [f"{args.dataset}-{kind}" for kind in KINDS]
    missing = [n for n in names if not (args.models_dir / n / "manifest.json").is_file()]
    if missing:
        ap.error(f"no model directory for {missing} under {args.models_dir}")
    x, truth = sample(args.dataset, args.index)
    with tempfile.TemporaryDirectory() as tmp:
        pinning = choose_pinning(enabled=False)
        with (
            psn_server(args.models_dir, batching=True, log_dir=Path(tmp), pinning=pinning) as server,
            PSNClient(f"http://127.0.0.1:{server.port}") as client,
        ):
            columns = []
            for name in names:
                with client.stream(name) as stream:
                    columns.append([stream.step(row) for row in x])
    T = len(x)
    print(f"test sequence {args.index} of {args.dataset} (true label {truth}), T = {T}\n")
    print("| t | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for t in range(T):
        if t % args.every and t != T - 1 and t > 2:
            continue
        row = [str(t), *(cell(steps[t]) for steps in columns)]
        print("| " + " | ".join(row) + " |")
    print()
    for name, steps in zip(names, columns, strict=True):
        first = next((s.t for s in steps if s.ready), None)
        when = "never" if first is None else f"step {first}"
        print(f"- {name}: first answer at {when}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
