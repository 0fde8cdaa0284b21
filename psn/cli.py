"""The ``psn`` command: ``psn {train,export,serve,bench} ...``.

Each subcommand lives in its own module and parses its own arguments; it is imported only when asked
for, so ``psn serve`` works on a serving-only install (no torch) and ``psn train`` never loads FastAPI.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("psn.train", "train a PSN-family sequence classifier on a bundled data set"),
    "train-zoo": ("psn.zoo_train", "train a psn.zoo 2-D network on MNIST images repeated over T"),
    "examples": ("psn.examples", "write examples.json (real test examples) beside each bundled model"),
    "export": ("exporters.cli", "export a checkpoint to a model directory (full.onnx, step.onnx)"),
    "serve": ("server.cli", "serve model directories over HTTP and WebSocket"),
    "bench": ("bench.cli", "run a benchmark suite (neurons, memory, runtime, serving)"),
}


def usage() -> str:
    lines = ["usage: psn <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
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
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(
            f"psn {name}: needs the missing package {exc.name!r}; "
            "install the extra it belongs to (pip install -e '.[train]')",
            file=sys.stderr,
        )
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
