"""``psn train``: train a PSN-family sequence classifier on a bundled data set and write a checkpoint.

Example (the bundled sequential-MNIST masked PSN)::

    psn train --dataset smnist --kind masked_psn --k 8 --epochs 30 --out models/smnist-masked-psn/checkpoint

Bad usage (an unknown data set or neuron kind, k > T, k given for psn/lif, a missing parent directory
for --out...) prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from psn.cli_args import (
    OneLineParser,
    UsageError,
    check_out_dir,
    check_ranges,
    run_cli,
)
from psn.data import UnknownDataset, dataset_info, parse_dataset_name

PROG = "psn train"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Train a PSN-family sequence classifier and save a checkpoint.")
    p.add_argument("--dataset", required=True, help="smnist (T=28, F=28) or mnist1d (T=40, F=1)")
    p.add_argument("--kind", required=True, help="psn, masked_psn, sliding_psn or lif")
    p.add_argument("--k", type=int, default=None, help="order of a masked or sliding PSN (2 <= k <= T)")
    p.add_argument("--arch", choices=["conv", "mlp"], default=None, help="default: conv if F > 1, else mlp")
    p.add_argument("--channels", type=int, default=32, help="conv channels (conv arch)")
    p.add_argument("--depth", type=int, default=2, help="conv blocks (conv) or hidden layers (mlp)")
    p.add_argument("--hidden", type=int, default=128, help="width of the last hidden layer(s)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to 0)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adamw")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weight-decay", type=float, default=0.01, help="on matrices and kernels only")
    p.add_argument("--warmup", type=float, default=0.0, help="epochs of linear learning-rate warmup")
    p.add_argument("--shift", type=int, default=0, help="random shift augmentation of up to this many steps")
    p.add_argument(
        "--stream-loss", type=float, default=0.0, help="weight of the per-step (running mean) loss term"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="checkpoint directory (default runs/<data>-<kind>)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training samples only")
    p.add_argument("--eval-every", type=int, default=0, help="print test accuracy every N epochs")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return p


def _check(args: argparse.Namespace) -> None:
    """Validate everything that does not need the data; raises UsageError."""
    from psn.neurons import NeuronKind

    try:
        args.dataset = parse_dataset_name(args.dataset)
    except UnknownDataset as exc:
        raise UsageError(str(exc)) from None
    trainable = [k for k in NeuronKind if k.facts.trainable]  # the others are exported, not trained
    if args.kind not in trainable:
        raise UsageError(
            f"unknown neuron kind {args.kind!r} (choose from {', '.join(k.value for k in trainable)})"
        ) from None
    args.kind = NeuronKind(args.kind)
    info = dataset_info(args.dataset)
    if NeuronKind(args.kind).facts.order:
        if args.k is None:
            raise UsageError(f"--k is required for {args.kind.value} (2 <= k <= T={info.T})")
        if not 2 <= args.k <= info.T:
            raise UsageError(
                f"--k {args.k} is out of range for {args.dataset.value}: need 2 <= k <= T={info.T}"
            )
    elif args.k is not None:
        raise UsageError(f"--k applies to masked_psn and sliding_psn only, not {args.kind.value}")
    check_ranges(
        args,
        at_least_one=("channels", "depth", "hidden", "epochs", "batch_size", "threads"),
        non_negative=("weight_decay", "warmup", "shift", "stream_loss", "eval_every"),
    )
    if args.out is None:
        args.out = Path("runs") / f"{args.dataset.value}-{args.kind.value.replace('_', '-')}"
        args.out.mkdir(parents=True, exist_ok=True)
    check_out_dir(args.out)


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, argv, build_parser(), _check, _train)


def _train(args: argparse.Namespace, command: str) -> int:
    import torch

    from psn.checkpoint import save_checkpoint
    from psn.data import load_dataset
    from psn.network import Arch, NetConfig, SeqClassifier, count_parameters
    from psn.trainer import (
        OptimizerName,
        TrainConfig,
        done_line,
        fit,
        random_shift,
        run_metrics,
        seed_everything,
    )

    started = time.perf_counter()
    generator = seed_everything(args.seed)
    data = load_dataset(args.dataset)
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    if args.limit is not None:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    _, T, features = x_train.shape
    arch = Arch(args.arch) if args.arch else (Arch.CONV if features > 1 else Arch.MLP)
    cfg = NetConfig(
        T=T,
        features=features,
        classes=len(data.labels),
        kind=args.kind,
        k=args.k,
        arch=arch,
        channels=args.channels,
        depth=args.depth,
        hidden=args.hidden,
        labels=data.labels,
    )
    model = SeqClassifier(cfg)
    train_cfg = TrainConfig.from_flags(
        args,
        optimizer=OptimizerName(args.optimizer),
        warmup_epochs=args.warmup,
        eval_every=args.eval_every,
    )
    parameters = count_parameters(model)
    if not args.quiet:
        print(
            f"{PROG}: {args.dataset.value} {args.kind.value} k={args.k} {arch.value} "
            f"{parameters:,} parameters, {len(y_train)} training samples",
            file=sys.stderr,
        )

    def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_shift(x, args.shift, generator)  # [B, T, F]

    result = fit(model, x_train, y_train, x_test, y_test, train_cfg, generator, augment=shift)
    metrics = {
        "dataset": args.dataset.value,
        "kind": args.kind.value,
        "k": args.k,
        "arch": arch.value,
        **run_metrics(result, args, started=started, parameters=parameters, command=command),
    }
    save_checkpoint(model, args.out, metrics)
    print(done_line(PROG, result, metrics, args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
