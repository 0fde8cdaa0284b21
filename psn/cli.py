"""The ``psn`` command: ``psn {train,export,serve,bench} ...``.

Each subcommand lives in its own module and parses its own arguments; it is imported only when asked
for, so ``psn serve`` works on a serving-only install (no torch) and ``psn train`` never loads FastAPI.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from psn.extras import missing_message, missing_package


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    extras: tuple[str, ...] = ()  # the optional extras its work needs (pyproject.toml)


COMMANDS: dict[str, Command] = {
    "train": Command("psn.train", "train a PSN-family sequence classifier on a bundled data set", ("train",)),
    "train-zoo": Command(
        "psn.zoo_train", "train a psn.zoo 2-D network on MNIST images repeated over T", ("train",)
    ),
    "examples": Command(
        "psn.examples", "write examples.json (real test examples) beside each bundled model", ("train",)
    ),
    "export": Command(
        "exporters.cli", "export a network to a model directory (full.onnx, step.onnx)", ("train",)
    ),
    "serve": Command("server.cli", "serve model directories over HTTP and WebSocket"),
    "bench": Command(
        "bench.cli", "run a benchmark suite (neurons, memory, runtime, serving, transcript)", ("bench",)
    ),
}


def usage() -> str:
    lines = ["usage: psn <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "psn <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"psn: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    try:  # a package of an extra the serving install lacks: one line, exit 2 (never a traceback)
        module = importlib.import_module(command.module)
        return int(module.main(rest) or 0)
    except ModuleNotFoundError as exc:
        package = missing_package(exc)
        if package is None:
            raise
        print(missing_message(f"psn {name}", package, command.extras), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
