"""What ``psn train`` and ``psn train-zoo`` share: one-line usage errors, range checks of numeric flags,
the output directory check, and the process-wide torch settings of a training run."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line usage: reported as one line on stderr, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise UsageError(message)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ranges(
    args: argparse.Namespace, *, at_least_one: Iterable[str] = (), non_negative: Iterable[str] = ()
) -> None:
    """Each named flag >= 1 (counts) or >= 0; ``lr`` > 0 and ``limit`` (None or >= 1) when present."""
    for name in at_least_one:
        if getattr(args, name) < 1:
            raise UsageError(f"{_flag(name)} must be >= 1, got {getattr(args, name)}")
    for name in non_negative:
        if getattr(args, name) < 0:
            raise UsageError(f"{_flag(name)} must be >= 0, got {getattr(args, name)}")
    if hasattr(args, "lr") and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")


def check_out_dir(out: Path) -> None:
    """``--out`` is a directory or can become one."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: parent directory {str(parent)!r} does not exist")


def with_torch_settings(threads: int, run: Callable[[], int]) -> int:
    """``run()`` with ``threads`` torch CPU threads and deterministic algorithms; the process-wide settings
    are restored after (main may be called in-process, by tests)."""
    import torch

    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return run()
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def run_cli(
    prog: str,
    argv: list[str] | None,
    parser: argparse.ArgumentParser,
    check: Callable[[argparse.Namespace], None],
    train: Callable[[argparse.Namespace, str], int],
) -> int:
    """Parse and check ``argv`` (one line and EXIT_USAGE on bad usage), then ``train(args, command)`` under
    the run's torch settings; ``command`` is the command line as it would be typed (for the checkpoint)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join([*prog.split(), *(shlex.quote(a) for a in argv)])
    try:
        args = parser.parse_args(argv)
        check(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return with_torch_settings(args.threads, lambda: train(args, command))
