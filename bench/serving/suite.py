"""``psn bench serving``: the HTTP/WebSocket service under load, on this machine, against the floor of its
stack measured in the same run: a raw ASGI echo on the same uvicorn, uvloop and httptools that reads the
body and parses it with orjson (and, as a second reference, a FastAPI echo).

Servers run as subprocesses on 127.0.0.1 pinned to one core; the load (wrk, WebSocket client processes, the
profiler) runs on another core. Parts:

- raw: the model's raw ONNX Runtime cost on the server's core (full graph batch 1; step graph batch 1 and
  64), from which, with the echo's rate, the *limit* of each kind of work (``bench.serving.report``).
- classify: wrk POSTs a JSON sequence (batch 1) or 16 sequences (batch 16) over N connections, as a v1 JSON
  body and as a V2 binary tensor: req/s and p50/p90/p99, beside the echo app's with the same body.
- streams: one stream's step round trip (JSON and binary frames) and the aggregate steps/s of S closed-loop
  streams, step batching on and off (two servers), beside the echo app's WebSocket.
- workers (``--workers 1,2``): ``psn serve --workers N`` on cores 0..N-1, classify req/s and 64 streams'
  steps/s against one worker (``bench.serving.scaling``).
- latency: a sequence streamed at one step every 2 ms to every model kind: time to first output and to
  decision; a plot of output times against input times.
- sweep: open-loop constant-rate load (``bench.serving.openloop``) at 25, 50, 75 and 90 % of saturation (the
  closed-loop rate), classify and 64 streams: p50 / p99 / p99.9 per level.

Writes docs/bench-serving.json and docs/bench-serving-{limit,classify,streams,latency,sweep}.png
(``--quick``: the ``bench-serving-quick*`` files, so a smoke run never overwrites the real numbers).
"""

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
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_OUT, BenchError, environment, load_average
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
)
from bench.serving.wrk import WRK_MISSING, wrk_version


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
    sequences: int = 10
    period_ms: float = 2.0
    client_procs: int = 2
    rounds: int = 1
    levels: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)  # open-loop sweep: fractions of saturation


FULL = Plan()
QUICK = Plan(
    connections=(1, 32),
    batches=(1,),
    streams=(1, 64),
    frames=("binary",),
    duration_s=0.5,
    levels=(0.5,),
    warmup_s=0.1,
    sequences=2,
)
CHOICES = {"frames": ("binary", "json"), "formats": ("json", "v2-binary")}
BOUNDS = {"duration_s": (0.2, 120), "client_procs": (1, 16), "rounds": (1, 10), "sequences": (1, 100)}


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
            want = f"a subset of {','.join(choices)}" if choices else "comma-separated positive integers"
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return values

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="psn bench serving", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--quick", action="store_true", help="a few seconds per part (smoke test)")
    add("--quiet", action="store_true", help="no progress bars")
    add("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and PNGs (docs/)")
    add("--stem", default=None, help="file name stem (bench-serving, or bench-serving-quick with --quick)")
    add(
        "--models-dir",
        type=Path,
        default=None,
        help="model directories to serve (default: models/ if it has every kind, else tiny untrained models)",
    )
    add("--parts", type=_list(Part, tuple(Part)), default=tuple(Part), help=f"a subset of {','.join(Part)}")
    add("--duration", dest="duration_s", type=float, help="seconds counted per load point")
    add("--connections", type=_list(int), help="wrk connection counts (1,8,32,64)")
    add("--batches", type=_list(int), help="sequences per classify request (1,16)")
    add("--streams", type=_list(int), help="concurrent stream counts (1,16,64,256)")
    add("--frames", type=_list(str, CHOICES["frames"]), help="WebSocket frame kinds: binary,json")
    add(
        "--formats",
        type=_list(str, CHOICES["formats"]),
        help="classify bodies: json (v1), v2-binary (V2 binary)",
    )
    add("--providers", type=_list(str), help="execution providers of the server and the raw ORT measurement")
    add("--client-procs", type=int, help="WebSocket client processes (2)")
    add("--rounds", type=int, help="times each load point is run, interleaved; the best is reported (1)")
    add("--sequences", type=int, help="sequences streamed per kind (latency part)")
    add("--levels", type=_list(float), help="open-loop sweep: fractions of saturation (0.25,0.5,0.75,0.9)")
    add(
        "--workers",
        type=_list(int),
        metavar="N,N",
        help="also measure psn serve --workers N for each N (e.g. 1,2), the server on cores 0..N-1",
    )
    add("--no-pin", action="store_true", help="do not pin the server and the load to cores")
    add(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the server with py-spy in extra runs; stacks go to DIR",
    )
    return p


def make_plan(args: argparse.Namespace) -> Plan:
    fields = {k: getattr(args, k) for k in asdict(FULL) if getattr(args, k, None) is not None}
    for name, (low, high) in BOUNDS.items():
        if name in fields and not low <= fields[name] <= high:
            flag = "--" + name.removesuffix("_s").replace("_", "-")
            raise BenchError(f"{flag}: expected {low}..{high}, got {fields[name]}")
    return replace(QUICK if args.quick else FULL, **fields)


def _git_state() -> dict[str, Any]:
    """The commit measured, and which serving files differ from it (other people edit them meanwhile)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "server", "psn_runtime").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted": [c[3:] for c in changed]}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"wrk": wrk_version()}
    for name in (
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "websockets",
        "orjson",
        "onnxruntime-gpu",
        "onnxruntime",
        "numpy",
        "psutil",
        "py-spy",
    ):
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
    pinning = choose_pinning(not args.no_pin)
    providers = list(args.providers) if args.providers else None
    env = environment(
        cores_available=len(os.sched_getaffinity(0)),
        pinning=pinning.note,
        versions=_versions(),
        git=_git_state(),
    )
    results: dict[str, Any] = {
        "suite": "serving",
        "quick": args.quick,
        "environment": env,
        "plan": asdict(plan) | {"parts": [str(p) for p in parts], "providers": providers},
        "skipped": skipped,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="psn-bench-serving-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        models_dir, models, source = resolve(args.models_dir, work, args.quiet)
        results["models"] = {"source": source, "by_kind": {k: m.to_json() for k, m in models.items()}}
        print(f"psn bench serving: {pinning.note}; servers on {HOST}, models from {source}")
        print(f"load average at start: {env['loadavg_start']} (other people share these cores: expect noise)")
        echo = stack.enter_context(echo_server(work, pinning, "raw"))
        fastapi = stack.enter_context(echo_server(work, pinning, "fastapi"))
        serve = {"log_dir": work, "pinning": pinning, "providers": providers}
        on = stack.enter_context(psn_server(models_dir, batching=True, **serve))
        off = (
            stack.enter_context(psn_server(models_dir, batching=False, **serve))
            if Part.STREAMS in parts
            else None
        )
        servers = (echo, fastapi, on, off)
        results["servers"] = {s.label: " ".join(s.command()) for s in servers if s is not None}
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
        if Part.SWEEP in parts:
            results["sweep"] = run_sweep(ctx, results.get("classify"), results.get("streaming"))
        extra = []
        if args.workers:
            from bench.serving.scaling import run_workers_part, workers_table

            results["workers"] = run_workers_part(args.workers, models_dir, ctx, not args.no_pin, providers)
            extra.append(workers_table(results["workers"]))
        if args.profile is not None:
            results["profile"] = run_profiles(ctx, args.profile, parts)
    env["loadavg_end"] = load_average()
    env["wall_s"] = round(time.monotonic() - started, 1)
    from bench.serving.report import report

    report(results, args.out, stem, extra)
    return 0
