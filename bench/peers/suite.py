"""``psn bench peers``: psn-serve beside the servers a user would otherwise deploy (KServe's ModelServer,
LitServe, FastAPI + ONNX Runtime; for streaming FastAPI + SpikingJelly), one at a time on the same core, at
saturation and open-loop at 75 % of each one's own (docs/benchmarks.md). KServe and LitServe run from
.venv-peers (``make bench-peers``). Writes docs/bench-peers.json and docs/bench-peers.png."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    Goal,
    arguments,
    bars,
    environment,
    figure,
    goal,
    goals_table,
    load_average,
    progress,
    table,
    write_outputs,
)
from bench.models import REPO_ROOT, ModelRef, resolve
from bench.serving import openloop
from bench.serving.procs import HOST, Pinning, Proc, choose_pinning, launch, psn_server
from bench.serving.suite import Plan
from bench.serving.wrk import Body, check_answer, classify_body, run_wrk, v2_json_body
from bench.serving.ws import Frames, make_frames, run_streams

PEERS_VENV = REPO_ROOT / ".venv-peers"
CONNECTIONS = 32
STREAMS = 64
OPEN_LOOP_LEVEL = 0.75
GOAL_OVER_KSERVE = 2.0  # psn-serve's req/s at saturation against KServe's, its p99 no higher


@dataclass(frozen=True)
class Target:
    """One classify (body, expect: a key of the JSON answer) or streaming (frames) endpoint of a server."""

    server: str
    label: str
    path: str
    body: Body | None = None
    expect: str = ""
    frames: Frames | None = None


def servers(args: argparse.Namespace, models_dir: Path, models: dict, work: Path, pinning: Pinning) -> list:
    """(name, a function starting it, its targets), psn-serve first; a peer whose venv is missing skipped."""
    cm, sm = models["psn"], models.get("sliding_psn")
    v1, v2 = classify_body(cm.T, cm.features, 1), v2_json_body(cm.T, cm.features, 1)

    def peer(name: str, python: Path, model: ModelRef):
        ready = {"kserve": "/v2/health/ready", "litserve": "/health"}.get(name, "/readyz")
        argv = [str(python), "-m", "bench.peers.servers", "--kind", name, "--model", model.directory]
        return lambda: launch(name, argv, work / f"{name}.log", pinning, ready)

    psn = [
        Target("psn-serve", "psn-serve v1 JSON", f"/v1/models/{cm.name}/classify", v1, "predictions"),
        Target("psn-serve", "psn-serve V2 JSON", f"/v2/models/{cm.name}/infer", v2, "outputs"),
    ]
    psn += [
        Target("psn-serve", f"psn-serve WebSocket, {f} frames", f"/v1/models/{sm.name}/stream", frames=f)
        for f in (Frames.BINARY, Frames.JSON)
        if sm is not None
    ]
    out = [("psn-serve", lambda: psn_server(models_dir, batching=True, log_dir=work, pinning=pinning), psn)]
    if args.peers_python.exists():
        kserve = Target("kserve", "KServe V2 JSON", "/v2/models/model/infer", v2, "outputs")
        out.append(("kserve", peer("kserve", args.peers_python, cm), [kserve]))
        litserve = Target("litserve", "LitServe JSON", "/predict", v1, "label_index")
        out.append(("litserve", peer("litserve", args.peers_python, cm), [litserve]))
    else:
        print(
            f"psn bench peers: {args.peers_python} missing (make bench-peers): no KServe, LitServe",
            file=sys.stderr,
        )
    main_python = Path(sys.executable)  # FastAPI and SpikingJelly: the main venv's
    fastapi = Target("fastapi", "FastAPI + ORT JSON", "/classify", v1, "label_index")
    out.append(("fastapi", peer("fastapi", main_python, cm), [fastapi]))
    if sm is not None and (Path(sm.directory) / "checkpoint" / "config.json").is_file():
        sj = [
            Target("sj", f"FastAPI + SpikingJelly WebSocket, {f} frames", "/stream", frames=f) for f in Frames
        ]
        out.append(("sj-stream", peer("sj-stream", main_python, sm), sj))
    return out


def _row(
    t: Target, kind: str, rate: float, errors: int, latency_ms: dict, cpu_us: float, o
) -> dict[str, Any]:
    open_loop = {"offered": o.offered_per_s, "errors": o.errors + o.lost}
    open_loop |= {f"{k}_ms": v for k, v in o.latency_ms.items()}
    row = {"target": t.label, "server": t.server, "kind": kind, "rate": rate, "errors": errors}
    return row | {f"{k}_ms": v for k, v in latency_ms.items()} | {"server_cpu_us": cpu_us, "open": open_loop}


def measure_classify(server: Proc, t: Target, duration: float, pinning: Pinning) -> dict:
    check_answer(server, t.path, t.body, t.expect)
    run_wrk(server, t.path, t.body, 8, 1, pinning)  # warm
    r = run_wrk(server, t.path, t.body, CONNECTIONS, duration, pinning)
    url, rate = f"http://{HOST}:{server.port}{t.path}", OPEN_LOOP_LEVEL * r.rps
    o = openloop.run_http(url, t.body, rate, duration, pinning, server)
    cpu_us = r.server_cpu_s * 1e6 / max(1, r.requests)
    return _row(t, "classify", r.rps, sum(r.errors.values()), r.latency_ms, cpu_us, o)


def measure_stream(server: Proc, t: Target, model: ModelRef, duration: float, pinning: Pinning) -> dict:
    url, load = f"ws://{HOST}:{server.port}{t.path}", Plan(duration_s=duration, warmup_s=0.5)
    one = run_streams(url, 1, t.frames, model.features, load, pinning, server)
    many = run_streams(url, STREAMS, t.frames, model.features, load, pinning, server)
    frames, rate = make_frames(t.frames, model.features, 0), OPEN_LOOP_LEVEL * many.steps_per_s
    o = openloop.run_ws(url, STREAMS, frames, rate, duration, pinning, server)
    cpu_us = (many.server_cpu_s or 0) * 1e6 / max(1, many.steps)
    row = _row(t, "streams", many.steps_per_s, many.errors, many.rtt_ms, cpu_us, o)
    return row | {"one_stream_p50_ms": one.rtt_ms["p50"], "one_stream_p99_ms": one.rtt_ms["p99"]}


def goals(rows: list[dict[str, Any]]) -> list[Goal]:
    kserve, out = next((r for r in rows if r["server"] == "kserve"), None), []
    target = f">= {GOAL_OVER_KSERVE:g}x req/s, p99 <= KServe's"
    for r in (r for r in rows if r["server"] == "psn-serve" and r["kind"] == "classify"):
        name = f"{r['target']} vs KServe V2 JSON at saturation ({CONNECTIONS} conns)"
        if kserve is None:
            out.append(goal(name, None, GOAL_OVER_KSERVE, target=target))
            continue
        ratio = r["rate"] / kserve["rate"]
        measured = f"{ratio:.2f}x, p99 {r['p99_ms']:.1f} vs {kserve['p99_ms']:.1f} ms"
        met = goal(name, ratio, GOAL_OVER_KSERVE, target=target, measured=measured)
        out.append(Goal(met.goal, met.target, met.measured, met.met and r["p99_ms"] <= kserve["p99_ms"]))
    return out


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> list[Path]:
    """Per kind: the rate at saturation (psn-serve green), p50 / p99 at saturation and open loop (log)."""
    kinds = [k for k in ("classify", "streams") if any(r["kind"] == k for r in rows)]
    short = {"FastAPI + SpikingJelly WebSocket": "FastAPI + SJ WS", "psn-serve WebSocket": "psn-serve WS"}
    with figure(path, title, len(kinds), 2, (6.5, 4)) as (_, axes):
        for col, kind in enumerate(kinds):
            group = [r for r in rows if r["kind"] == kind]
            labels = [
                short.get(n, n) + (f"\n{f}" if f else "")
                for n, _, f in (r["target"].partition(", ") for r in group)
            ]
            colors = ["tab:green" if r["server"] == "psn-serve" else "tab:gray" for r in group]
            ax = axes[0][col]
            ax.bar(range(len(group)), [r["rate"] for r in group], color=colors)
            ax.set_xticks(range(len(group)), labels, fontsize=7)
            what = f"{CONNECTIONS} conns" if kind == "classify" else f"{STREAMS} closed-loop streams"
            ax.set_title(
                f"{kind}: {'req/s' if kind == 'classify' else 'steps/s'} at saturation ({what})", fontsize=10
            )
            ax = axes[1][col]
            series = {f"{p} sat.": [r[f"{p}_ms"] for r in group] for p in ("p50", "p99")}
            series |= {f"{p} open 75%": [r["open"][f"{p}_ms"] for r in group] for p in ("p50", "p99")}
            bars(ax, labels, series)
            ax.set(yscale="log", ylabel="latency (ms, log)")
            ax.legend(fontsize=7)
            ax.grid(True, axis="y", alpha=0.3)
    return [path]


def parser() -> argparse.ArgumentParser:
    p = arguments("psn bench peers", __doc__, "folder for the JSON and PNG (docs/)")
    p.add_argument("--models-dir", type=Path, default=None, help="model directories (default: models/)")
    p.add_argument("--duration", type=float, default=None, help="seconds per load point (5; --quick 1)")
    python = PEERS_VENV / "bin" / "python"
    p.add_argument(
        "--peers-python", type=Path, default=python, help="the Python of .venv-peers (make bench-peers)"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers and the load to cores")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(list(argv or []))
    duration = args.duration or (1.0 if args.quick else 5.0)
    pinning = choose_pinning(not args.no_pin)
    env = environment(pinning=pinning.note)
    rows, started = [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="psn-bench-peers-") as tmp:
        work = Path(tmp)
        models_dir, models, source = resolve(args.models_dir, work, args.quiet)
        if "psn" not in models:
            raise BenchError(f"{models_dir}: no PSN model to classify with")
        for name, start, targets in progress(
            servers(args, models_dir, models, work, pinning), desc="servers", quiet=args.quiet
        ):
            try:
                server = start()
            except BenchError as exc:
                print(f"psn bench peers: {name} did not start: {exc}", file=sys.stderr)
                continue
            with server:
                for t in targets:
                    if t.frames is None:
                        rows.append(measure_classify(server, t, duration, pinning))
                    else:
                        rows.append(measure_stream(server, t, models["sliding_psn"], duration, pinning))
    env |= {"loadavg_end": load_average(), "wall_s": round(time.monotonic() - started, 1)}
    goal_items = goals(rows)
    result = {"suite": "peers", "quick": args.quick, "environment": env, "models": source, "rows": rows}
    result["goals"] = [g.to_json() for g in goal_items]
    columns = (
        "target | rate:d | p50 ms=p50_ms | p99 ms=p99_ms | p99.9 ms=p999_ms | srv us=server_cpu_us:d | "
        "errors | 1 stream p50=one_stream_p50_ms | open 75% p50=open_p50_ms | p99=open_p99_ms | "
        "p99.9=open_p999_ms"
    )
    title = (
        f"classify (req/s, wrk {CONNECTIONS} conns) and streams (steps/s, {STREAMS} streams) at saturation, "
        f"then open loop at {OPEN_LOOP_LEVEL:.0%} of each one's saturation"
    )
    print(table([r | {f"open_{k}": v for k, v in r["open"].items()} for r in rows], columns, title))
    load = f"load average {env['loadavg_start']} -> {env['loadavg_end']}"
    print("\n" + goals_table(goal_items) + f"\n\n{pinning.note}; {load}; {env['wall_s']} s")
    stem = args.out / ("bench-peers-quick" if args.quick else "bench-peers")
    title = f"psn-serve and its peers, server on one core ({env['cpu']})"
    write_outputs(stem.with_suffix(".json"), result, lambda: plot(rows, title, stem.with_suffix(".png")), 4)
    return 0
