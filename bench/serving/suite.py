"""``psn bench serving``: the HTTP/WebSocket service under load on this machine, against the floor of its
stack measured in the same run (a raw ASGI echo on the same uvicorn, and a FastAPI echo) and the model's raw
ONNX Runtime cost. Parts (docs/benchmarks.md): classify, streams, latency, sweep; --workers, --profile.
Writes docs/bench-serving.json and docs/bench-serving-{limit,classify,streams,latency,sweep}.png
(``--quick``: bench-serving-quick*, so a smoke run never overwrites the real numbers)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.common import BenchError, arguments, environment, load_average
from bench.models import REPO_ROOT, resolve
from bench.serving.procs import HOST, choose_pinning, echo_server, psn_server
from bench.serving.runs import (
    Context,
    run_classify,
    run_first_output,
    run_profiles,
    run_raw,
    run_streams_part,
    run_sweep,
    run_workers_part,
    workers_table,
)
from bench.serving.wrk import WRK_MISSING, wrk_version

PACKAGES = (
    "fastapi starlette uvicorn uvloop httptools websockets orjson onnxruntime-gpu onnxruntime numpy py-spy"
)


class Part(StrEnum):
    CLASSIFY = "classify"
    STREAMS = "streams"
    LATENCY = "latency"
    SWEEP = "sweep"


@dataclass(frozen=True)
class Plan:
    connections: tuple[int, ...] = (1, 8, 32, 64)
    batches: tuple[int, ...] = (1, 16)
    streams: tuple[int, ...] = (1, 16, 64, 256)
    frames: tuple[str, ...] = ("binary", "json")
    formats: tuple[str, ...] = ("json", "v2-binary")  # classify bodies
    duration_s: float = 5.0
    warmup_s: float = 1.0
    sequences: int = 10  # streamed per kind (latency part)
    period_ms: float = 2.0
    client_procs: int = 2
    rounds: int = 1
    levels: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)  # open-loop sweep: fractions of saturation


FULL = Plan()
QUICK = Plan((1, 32), (1,), (1, 64), ("binary",), duration_s=0.5, warmup_s=0.1, sequences=2, levels=(0.5,))
BOUNDS = {"duration_s": (0.2, 120), "rounds": (1, 10)}


def _list(kind: type, choices: tuple[str, ...] = ()):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if (
            not values
            or (choices and not set(values) <= set(choices))
            or (kind in (int, float) and min(values) <= 0)
        ):
            want = f"a subset of {','.join(choices)}" if choices else "comma-separated positive numbers"
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return values

    return parse


OPTIONS = {  # flag: (type, help); --quick, --quiet, --out come from bench.common.arguments
    "--stem": (str, "file name stem (bench-serving; --quick: bench-serving-quick), e.g. bench-serving-short"),
    "--models-dir": (Path, "models to serve (default: models/ if it has every kind, else tiny ones)"),
    "--parts": (_list(Part, tuple(Part)), f"a subset of {','.join(Part)}"),
    "--duration": (float, "seconds counted per load point"),
    "--connections": (_list(int), "wrk connection counts (1,8,32,64)"),
    "--batches": (_list(int), "sequences per classify request (1,16)"),
    "--streams": (_list(int), "concurrent stream counts (1,16,64,256)"),
    "--frames": (_list(str, FULL.frames), "WebSocket frame kinds: binary,json"),
    "--formats": (_list(str, FULL.formats), "classify bodies: json (v1), v2-binary (V2)"),
    "--providers": (_list(str), "execution providers of the server and the raw ORT measurement"),
    "--rounds": (int, "times each load point is run, interleaved; the best is reported (1)"),
    "--levels": (_list(float), "open-loop sweep: fractions of saturation (0.25,0.5,0.75,0.9)"),
    "--workers": (_list(int), "also measure psn serve --workers N on cores 0..N-1"),
    "--profile": (Path, "profile the server with py-spy in extra runs; stacks to DIR"),
}
DESTS = {"--duration": "duration_s"}
METAVARS = {"--workers": "N,N", "--profile": "DIR"}


def parser() -> argparse.ArgumentParser:
    p = arguments("psn bench serving", __doc__)
    for flag, (kind, text) in OPTIONS.items():
        p.add_argument(flag, type=kind, help=text, dest=DESTS.get(flag), metavar=METAVARS.get(flag))
    p.set_defaults(parts=tuple(Part))
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the load to cores")
    return p


def make_plan(args: argparse.Namespace) -> Plan:
    fields = {k: getattr(args, k) for k in asdict(FULL) if getattr(args, k, None) is not None}
    for name, (low, high) in BOUNDS.items():
        if name in fields and not low <= fields[name] <= high:
            raise BenchError(f"--{name.removesuffix('_s')}: expected {low}..{high}, got {fields[name]}")
    return replace(QUICK if args.quick else FULL, **fields)


def _git_state() -> dict[str, Any]:
    """The commit measured, and which serving files differ from it (other people edit them meanwhile)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "server", "psn_runtime").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted": [c[3:] for c in changed]}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"wrk": wrk_version()}
    for name in PACKAGES.split():
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _terminate_cleanly(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds the ExitStack: every server is stopped


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is not threading.main_thread():
        return run(args)
    previous = signal.signal(signal.SIGTERM, _terminate_cleanly)
    try:
        return run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    plan, parts, skipped = make_plan(args), list(args.parts), {}
    stem = args.stem or ("bench-serving-quick" if args.quick else "bench-serving")
    if "/" in stem or not stem.strip():
        raise BenchError(f"--stem: expected a file name stem, got {stem!r}")
    if Part.CLASSIFY in parts and shutil.which("wrk") is None:
        print(f"psn bench serving: {WRK_MISSING}; skipping the classify part", file=sys.stderr, flush=True)
        parts.remove(Part.CLASSIFY)
        skipped[Part.CLASSIFY] = WRK_MISSING
    if not parts:
        raise BenchError("nothing to run")
    pinning, providers = choose_pinning(not args.no_pin), list(args.providers or []) or None
    cores = len(os.sched_getaffinity(0))
    env = environment(cores_available=cores, pinning=pinning.note, versions=_versions(), git=_git_state())
    results: dict[str, Any] = {
        "suite": "serving",
        "quick": args.quick,
        "environment": env,
        "plan": asdict(plan) | {"parts": [str(p) for p in parts], "providers": providers},
        "skipped": skipped,
    }
    started, extra = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="psn-bench-serving-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        models_dir, models, source = resolve(args.models_dir, work, args.quiet)
        results["models"] = {"source": source, "by_kind": {k: asdict(m) for k, m in models.items()}}
        print(f"psn bench serving: {pinning.note}; servers on {HOST}, models from {source}")
        print(f"load average at start: {env['loadavg_start']} (other people share these cores: expect noise)")
        echo, fastapi = (stack.enter_context(echo_server(work, pinning, k)) for k in ("raw", "fastapi"))
        serve = {"log_dir": work, "pinning": pinning, "providers": providers}
        on = stack.enter_context(psn_server(models_dir, batching=True, **serve))
        off = (
            stack.enter_context(psn_server(models_dir, batching=False, **serve))
            if Part.STREAMS in parts
            else None
        )
        results["servers"] = {s.label: s.command() for s in (echo, fastapi, on, off) if s is not None}
        ctx = Context(plan, pinning, work, models, args.quiet, echo, on, off, fastapi)
        if Part.CLASSIFY in parts or Part.STREAMS in parts:
            results["raw"] = run_raw(ctx, providers)
        if Part.CLASSIFY in parts:
            results["classify"] = run_classify(ctx)
        if Part.STREAMS in parts:
            results["streaming"] = run_streams_part(ctx)
        if Part.LATENCY in parts:
            results["first_output"] = run_first_output(ctx)
        if Part.SWEEP in parts:
            results["sweep"] = run_sweep(ctx, results.get("classify"), results.get("streaming"))
        if args.workers:
            results["workers"] = run_workers_part(args.workers, models_dir, ctx, not args.no_pin, providers)
            extra.append(workers_table(results["workers"]))
        if args.profile is not None:
            results["profile"] = run_profiles(ctx, args.profile, parts)
    env |= {"loadavg_end": load_average(), "wall_s": round(time.monotonic() - started, 1)}
    from bench.serving.report import report

    report(results, args.out, stem, extra)
    return 0
