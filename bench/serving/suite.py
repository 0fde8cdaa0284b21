"""``psn bench serving``: the HTTP/WebSocket service under load, on this machine, against an echo app on
the same stack (FastAPI + uvicorn, no model work) measured in the same run: the ceiling.

Servers run as subprocesses on 127.0.0.1 pinned to one core (``taskset -c 0``); the load (wrk, WebSocket
client processes, the profiler) runs on another core. Parts:

- raw: the model's raw ONNX Runtime cost on the server's core (full graph batch 1; step graph batch 1 and
  64), from which, with the echo's rate, the *limit* of each kind of work (``bench.serving.limit``).
- classify: wrk POSTs a JSON sequence (batch 1) or 16 sequences (batch 16) over N connections, as a v1 JSON
  body and as a V2 binary tensor: req/s and p50/p90/p99, beside the echo app's with the same body.
- streams: one stream's step round trip (JSON and binary frames) and the aggregate steps/s of S closed-loop
  streams, step batching on and off (two servers), beside the echo app's WebSocket.
- workers (``--workers 1,2``): ``psn serve --workers N`` on cores 0..N-1, classify req/s and 64 streams'
  steps/s against one worker (``bench.serving.scaling``).
- latency: a sequence streamed at one step every 2 ms to every model kind: time to first output and to
  decision; a plot of output times against input times.

Writes docs/bench-serving.json and docs/bench-serving-{limit,classify,streams,latency}.png (``--quick``: the
``bench-serving-quick*`` files, so a smoke run never overwrites the real numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_OUT, SHARED_MACHINE_NOTE, BenchError, cpu_model, load_average
from bench.serving.models import resolve
from bench.serving.procs import HOST, REPO_ROOT, choose_pinning, echo_server, psn_server
from bench.serving.runs import (
    Context,
    run_classify,
    run_first_output,
    run_profiles,
    run_raw,
    run_streams_part,
)
from bench.serving.wrk import WRK_MISSING, wrk_binary, wrk_version


class Part(StrEnum):
    CLASSIFY = "classify"
    STREAMS = "streams"
    LATENCY = "latency"


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


FULL = Plan()
QUICK = Plan(connections=(1, 32), batches=(1,), streams=(1, 64), frames=("binary",), duration_s=0.5,
             warmup_s=0.1, sequences=2)  # fmt: skip


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="psn bench serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds per part (smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and PNGs (docs/)")
    p.add_argument("--stem", default=None,
                   help="file name stem of the JSON and PNGs (bench-serving, or bench-serving-quick with "
                        "--quick)")  # fmt: skip
    p.add_argument("--models-dir", type=Path, default=None,
                   help="model directories to serve (default: models/ if it has every kind, else tiny "
                        "untrained models exported for the run)")  # fmt: skip
    p.add_argument("--parts", default=",".join(Part), help=f"comma-separated subset of {','.join(Part)}")
    p.add_argument("--duration", type=float, default=None, help="seconds counted per load point")
    p.add_argument("--connections", type=_ints, default=None, help="wrk connection counts (1,8,32,64)")
    p.add_argument("--batches", type=_ints, default=None, help="sequences per classify request (1,16)")
    p.add_argument("--streams", type=_ints, default=None, help="concurrent stream counts (1,16,64,256)")
    p.add_argument("--frames", default=None, help="WebSocket frame kinds: binary,json")
    p.add_argument(
        "--formats", default=None, help="classify bodies: json (v1), v2-binary (V2 binary tensors)"
    )
    p.add_argument("--providers", default=None,
                   help="execution providers of the server and the raw ORT measurement, comma-separated "
                        "(default: the runtime's)")  # fmt: skip
    p.add_argument("--client-procs", type=int, default=None, help="WebSocket client processes (2)")
    p.add_argument("--rounds", type=int, default=None,
                   help="times each load point is run, interleaved; the best is reported (1)")  # fmt: skip
    p.add_argument("--sequences", type=int, default=None, help="sequences streamed per kind (latency part)")
    p.add_argument("--workers", type=_ints, default=None, metavar="N,N",
                   help="also measure psn serve --workers N for each N (e.g. 1,2): req/s and steps/s, the "
                        "server on cores 0..N-1")  # fmt: skip
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the load to cores")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="profile the server with py-spy in extra runs; stacks go to DIR")  # fmt: skip
    return p


def _plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    for name, attr in (("connections", "connections"), ("batches", "batches"), ("streams", "streams")):
        if getattr(args, name) is not None:
            overrides[attr] = getattr(args, name)
    if args.frames is not None:
        frames = tuple(f.strip() for f in args.frames.split(",") if f.strip())
        if not frames or any(f not in ("binary", "json") for f in frames):
            raise BenchError(f"--frames: expected binary and/or json, got {args.frames!r}")
        overrides["frames"] = frames
    if args.formats is not None:
        formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
        if not formats or any(f not in ("json", "v2-binary") for f in formats):
            raise BenchError(f"--formats: expected json and/or v2-binary, got {args.formats!r}")
        overrides["formats"] = formats
    # (flag, Plan field, lowest, highest)
    bounded = (
        ("duration", "duration_s", 0.2, 120),
        ("client_procs", "client_procs", 1, 16),
        ("rounds", "rounds", 1, 10),
        ("sequences", "sequences", 1, 100),
    )
    for flag, field_name, low, high in bounded:
        value = getattr(args, flag)
        if value is None:
            continue
        if not low <= value <= high:
            raise BenchError(f"--{flag.replace('_', '-')}: expected {low}..{high}, got {value}")
        overrides[field_name] = value
    return replace(plan, **overrides)


def _parts(text: str) -> list[Part]:
    try:
        return [Part(p.strip()) for p in text.split(",") if p.strip()]
    except ValueError:
        raise BenchError(f"--parts: expected a subset of {','.join(Part)}, got {text!r}") from None


def _git_state() -> dict[str, Any]:
    """The commit measured, and which serving files differ from it (other people edit them meanwhile)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "server", "psn_runtime").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted": [c[3:] for c in changed]}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "websockets", "orjson",
                 "onnxruntime-gpu", "onnxruntime", "numpy", "psutil", "py-spy"):  # fmt: skip
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["wrk"] = wrk_version()
    return out


def _terminate_cleanly(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds the ExitStack: every server is stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is not threading.main_thread():
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _terminate_cleanly)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    parts = _parts(args.parts)
    skipped: dict[str, str] = {}
    if Part.CLASSIFY in parts and wrk_binary() is None:
        print(f"psn bench serving: {WRK_MISSING}; skipping the classify part", file=sys.stderr, flush=True)
        parts.remove(Part.CLASSIFY)
        skipped[Part.CLASSIFY] = WRK_MISSING
    if not parts:
        raise BenchError("nothing to run")
    pinning = choose_pinning(not args.no_pin)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores_available": len(__import__("os").sched_getaffinity(0)),
        "pinning": pinning.note,
        "loadavg_start": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "versions": _versions(),
        "git": _git_state(),
        "note": SHARED_MACHINE_NOTE,
    }
    results: dict[str, Any] = {
        "suite": "serving",
        "quick": args.quick,
        "environment": env,
        "plan": plan.__dict__ | {"parts": [str(p) for p in parts], "providers": providers},
        "skipped": skipped,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="psn-bench-serving-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        models_dir, models, source = resolve(args.models_dir, work, args.quiet)
        results["models"] = {"source": source, "by_kind": {k: m.to_json() for k, m in models.items()}}
        print(f"psn bench serving: {pinning.note}; servers on {HOST}, models from {source}")
        print(f"load average at start: {env['loadavg_start']} (other people share these cores: expect noise)")
        echo = stack.enter_context(echo_server(work, pinning))
        serve = {"log_dir": work, "pinning": pinning, "providers": providers}
        on = stack.enter_context(psn_server(models_dir, batching=True, **serve))
        off = None
        if Part.STREAMS in parts:
            off = stack.enter_context(psn_server(models_dir, batching=False, **serve))
        results["servers"] = {s.label: " ".join(s.command()) for s in (echo, on, off) if s is not None}
        ctx = Context(plan=plan, pinning=pinning, work=work, models=models, quiet=args.quiet,
                      echo=echo, on=on, off=off)  # fmt: skip
        if Part.CLASSIFY in parts or Part.STREAMS in parts:
            results["raw"] = run_raw(ctx, providers)
        if Part.CLASSIFY in parts:
            results["classify"] = run_classify(ctx)
        if Part.STREAMS in parts:
            results["streaming"] = run_streams_part(ctx)
        if Part.LATENCY in parts:
            results["first_output"] = run_first_output(ctx)
        if args.workers:
            from bench.serving.runs import _classify_model, _stream_model_or_none
            from bench.serving.scaling import run_workers_part

            results["workers"] = run_workers_part(
                args.workers, models_dir, _classify_model(ctx), _stream_model_or_none(ctx), plan, work,
                not args.no_pin, args.quiet, providers,
            )  # fmt: skip
        if args.profile is not None:
            results["profile"] = run_profiles(ctx, args.profile, parts)
    env["loadavg_end"] = load_average()
    env["wall_s"] = round(time.monotonic() - started, 1)
    from bench.serving.output import report

    stem = args.stem or ("bench-serving-quick" if args.quick else "bench-serving")
    if "/" in stem or not stem.strip():
        raise BenchError(f"--stem: expected a file name stem, got {stem!r}")
    report(results, args.out, stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
