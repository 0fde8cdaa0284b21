"""``psn bench <suite> [options]``: one suite (a module with ``main(argv) -> int``, imported only when asked
for), or ``all`` of those installed. To add one, add a line to ``SUITES``."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from psn.extras import missing_message, missing_package


@dataclass(frozen=True)
class Suite:
    module: str
    help: str
    in_all: bool = True  # run by `psn bench all` (peers: no, it has its own venv and make target)


SUITES: dict[str, Suite] = {
    "neurons": Suite(
        "bench.neurons.suite", "simulation speed, LIF vs PSN family (paper Fig. 3), ONNX Runtime, bandwidth"
    ),
    "memory": Suite("bench.memory.suite", "training memory with IF neurons vs PSN (paper Table 4)"),
    "runtime": Suite("bench.runtime.suite", "psn_runtime latency and throughput (ONNX Runtime sessions)"),
    "serving": Suite("bench.serving.suite", "the HTTP/WebSocket service under load"),
    "transcript": Suite(
        "bench.transcript.suite", "one sequence streamed through each kind: when each answers"
    ),
    "peers": Suite(
        "bench.peers.suite",
        "psn-serve beside KServe, LitServe, FastAPI and SpikingJelly (make bench-peers)",
        False,
    ),
}


def usage() -> str:
    lines = ["usage: psn bench <suite> [options]   (psn bench <suite> --help for its options)", "", "suites:"]
    lines += [f"  {name:<8} {s.help}" for name, s in SUITES.items()]
    lines += [
        "  all      every suite above but peers, with default options (--quick, --quiet, --out pass on)"
    ]
    return "\n".join(lines)


class SuiteMissing(LookupError):
    """The suite's module is not written (yet) or not installed."""


class SuiteNeeds(LookupError):
    """The suite needs a package of an optional extra that is not installed (the message says which)."""

    def __init__(self, name: str, package: str) -> None:
        super().__init__(missing_message(f"psn bench {name}", package, ("bench",)))
        self.package = package


def load(name: str):
    suite = SUITES[name]
    try:
        return importlib.import_module(suite.module)
    except ModuleNotFoundError as exc:
        if exc.name == suite.module:
            raise SuiteMissing(f"suite {name!r}: module {suite.module} is not present") from exc
        package = missing_package(exc)
        if package is None:
            raise
        raise SuiteNeeds(name, package) from exc


def run_all(rest: list[str]) -> int:
    from bench.common import arguments

    doc = "every suite but peers, with default options but these, which pass on to each"
    args = arguments("psn bench all", doc).parse_args(rest)  # anything else: a usage error, exit 2
    passthrough = ["--out", str(args.out)]
    if args.quick:
        passthrough.append("--quick")
    if args.quiet:
        passthrough.append("--quiet")
    modules, needs = {}, {}
    for name in (n for n, s in SUITES.items() if s.in_all):
        try:
            modules[name] = load(name)
        except SuiteMissing as exc:
            print(f"psn bench all: skipping {exc}", file=sys.stderr)
        except SuiteNeeds as exc:
            needs[name] = exc.package
    if needs:  # say it once, before any suite runs
        print(missing_message("psn bench all", needs.values(), ("bench",)), file=sys.stderr)
        return 2
    worst = 0
    for name, module in modules.items():
        print(f"\n===== psn bench {name} =====", flush=True)
        worst = max(worst, _run(name, module, list(passthrough)))
    return worst


def _run(name: str, module, rest: list[str]) -> int:
    from bench.common import BenchError

    try:
        return int(module.main(rest) or 0)
    except BenchError as exc:
        print(f"psn bench {name}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a package the suite imports only when it runs
        package = missing_package(exc)
        if package is None:
            raise
        print(missing_message(f"psn bench {name}", package, ("bench",)), file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    from bench.common import calm_openmp

    calm_openmp()  # before any suite imports torch
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "all":
        return run_all(rest)
    if name not in SUITES:
        print(f"psn bench: unknown suite {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = load(name)
    except SuiteMissing as exc:
        print(f"psn bench: {exc}", file=sys.stderr)
        return 2
    except SuiteNeeds as exc:
        if "-h" in rest or "--help" in rest:  # the options are the suite's, which cannot load here
            print(f"usage: psn bench {name} [options]\n\n{SUITES[name].help}\n\n{exc}")
            return 0
        print(exc, file=sys.stderr)
        return 2
    return _run(name, module, rest)


if __name__ == "__main__":
    raise SystemExit(main())
