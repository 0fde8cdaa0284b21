"""``psn bench peers``: psn-serve beside the servers a user would otherwise deploy, in the same run, each on
the same core with the same ONNX Runtime thread settings (one intra-op thread), one at a time:

- classify (the same full.onnx, one sequence per request): psn-serve (v1 JSON, V2 JSON), KServe 0.21's
  ModelServer (V2 JSON), LitServe 0.2.19 (JSON), a plain FastAPI + pydantic + ONNX Runtime server (JSON);
- streaming (the sliding PSN network): psn-serve's WebSocket against the one a user would write with FastAPI
  and SpikingJelly (the same architecture, single-step neurons, a copy of the network per connection).

Each: closed loop at saturation (wrk, 32 connections; 64 closed-loop streams; one stream's round trip) and
open loop at 75 % of its own saturation (``bench.serving.openloop``). KServe and LitServe run from their own
venv (``make bench-peers`` makes .venv-peers: never in the main venv); FastAPI and SpikingJelly from the
main venv (its fastapi/uvicorn, its CPU torch). Writes docs/bench-peers.json and docs/bench-peers.png.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_OUT,
    BenchError,
    Goal,
    environment,
    goals_table,
    load_average,
    progress,
    table,
    write_json,
)
from bench.models import REPO_ROOT, ModelRef, resolve
from bench.serving import openloop
from bench.serving.procs import HOST, Pinning, ServerProcess, choose_pinning, psn_server
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
    """One classify or streaming endpoint of one server."""

    server: str
    label: str
    path: str
    body: Body | None = None  # classify
    expect: str = ""  # a key of the JSON answer
    frames: Frames | None = None  # streaming


def _peer(
    name: str, python: Path, model: ModelRef, log_dir: Path, pinning: Pinning, port_file: bool
) -> ServerProcess:
    argv = [str(python), "-m", "bench.peers.servers", name, "--model", model.directory, "--host", HOST]
    ready = {"kserve": "/v2/health/ready", "litserve": "/health"}.get(name, "/readyz")
    return ServerProcess(name, argv, log_dir / f"{name}.log", pinning, ready_path=ready, port_file=port_file)


def servers(
    args: argparse.Namespace, models_dir: Path, models: dict[str, ModelRef], work: Path, pinning: Pinning
):
    """(name, a function starting it, its targets), psn-serve first; peers whose venv is missing are "
    "skipped."""
    cm, sm = models["psn"], models.get("sliding_psn")
    v1, v2 = classify_body(cm.T, cm.features, 1), v2_json_body(cm.T, cm.features, 1)
    main_python, peers_python = Path(sys.executable), args.peers_python
    out = []
    psn = [
        Target("psn-serve", "psn-serve v1 JSON", f"/v1/models/{cm.name}/classify", v1, "predictions"),
        Target("psn-serve", "psn-serve V2 JSON", f"/v2/models/{cm.name}/infer", v2, "outputs"),
    ]
    if sm is not None:
        psn += [
            Target("psn-serve", f"psn-serve WebSocket, {f} frames", f"/v1/models/{sm.name}/stream", frames=f)
            for f in (Frames.BINARY, Frames.JSON)
        ]
    out.append(
        ("psn-serve", lambda: psn_server(models_dir, batching=True, log_dir=work, pinning=pinning), psn)
    )
    if peers_python.exists():
        for name, target in (
            ("kserve", Target("kserve", "KServe V2 JSON", "/v2/models/model/infer", v2, "outputs")),
            ("litserve", Target("litserve", "LitServe JSON", "/predict", v1, "label_index")),
        ):
            out.append((name, lambda n=name: _peer(n, peers_python, cm, work, pinning, False), [target]))
    else:
        print(
            f"psn bench peers: {peers_python} missing (make bench-peers): no KServe, no LitServe",
            file=sys.stderr,
        )
    fastapi = Target("fastapi", "FastAPI + ORT JSON", "/classify", v1, "label_index")
    out.append(("fastapi", lambda: _peer("fastapi", main_python, cm, work, pinning, True), [fastapi]))
    if sm is not None and (Path(sm.directory) / "checkpoint" / "config.json").is_file():
        sj = [
            Target("sj", f"FastAPI + SpikingJelly WebSocket, {f} frames", "/stream", frames=f)
            for f in (Frames.BINARY, Frames.JSON)
        ]
        out.append(("sj-stream", lambda: _peer("sj-stream", main_python, sm, work, pinning, True), sj))
    return out


def measure_classify(
    server: ServerProcess, t: Target, plan: argparse.Namespace, pinning: Pinning, work: Path
) -> dict:
    check_answer(server, t.path, t.body, t.expect)
    file = work / "peers.body"
    run_wrk(server, t.path, t.body, file, connections=8, duration_s=1, pinning=pinning)  # warm
    r = run_wrk(
        server, t.path, t.body, file, connections=CONNECTIONS, duration_s=plan.duration, pinning=pinning
    )
    url = f"http://{HOST}:{server.port}{t.path}"
    o = openloop.run_http(
        url, t.body.data, t.body.all_headers(), OPEN_LOOP_LEVEL * r.rps, plan.duration, pinning, server
    )
    return {
        "target": t.label,
        "server": t.server,
        "kind": "classify",
        "rate": r.rps,
        "errors": sum(r.errors.values()),
        **{f"{k}_ms": v for k, v in r.latency_ms.items()},
        "server_cpu_us": r.server_cpu_s * 1e6 / max(1, r.requests),
        "open": {
            "offered": o.offered_per_s,
            "errors": o.errors + o.lost,
            **{f"{k}_ms": v for k, v in o.latency_ms.items()},
        },
    }


def measure_stream(
    server: ServerProcess, t: Target, model: ModelRef, plan: argparse.Namespace, pinning: Pinning
) -> dict:
    url = f"ws://{HOST}:{server.port}{t.path}"
    load = Plan(duration_s=plan.duration, warmup_s=0.5)
    one = run_streams(url, 1, t.frames, model.features, load, pinning, server)
    many = run_streams(url, STREAMS, t.frames, model.features, load, pinning, server)
    frames = make_frames(t.frames, model.features, 0)
    o = openloop.run_ws(
        url, STREAMS, frames, OPEN_LOOP_LEVEL * many.steps_per_s, plan.duration, pinning, server
    )
    return {
        "target": t.label,
        "server": t.server,
        "kind": "streams",
        "rate": many.steps_per_s,
        "errors": many.errors,
        **{f"{k}_ms": v for k, v in many.rtt_ms.items()},
        "one_stream_p50_ms": one.rtt_ms["p50"],
        "one_stream_p99_ms": one.rtt_ms["p99"],
        "server_cpu_us": (many.server_cpu_s or 0) * 1e6 / max(1, many.steps),
        "open": {
            "offered": o.offered_per_s,
            "errors": o.errors + o.lost,
            **{f"{k}_ms": v for k, v in o.latency_ms.items()},
        },
    }


def goals(rows: list[dict[str, Any]]) -> list[Goal]:
    kserve = next((r for r in rows if r["server"] == "kserve"), None)
    out = []
    for r in (r for r in rows if r["server"] == "psn-serve" and r["kind"] == "classify"):
        if kserve is None:
            out.append(
                Goal(
                    f"{r['target']} vs KServe at saturation",
                    f">= {GOAL_OVER_KSERVE:g}x req/s, p99 <=",
                    "-",
                    None,
                )
            )
            continue
        ratio = r["rate"] / kserve["rate"]
        out.append(
            Goal(
                f"{r['target']} vs KServe V2 JSON at saturation ({CONNECTIONS} conns)",
                f">= {GOAL_OVER_KSERVE:g}x req/s, p99 <= KServe's",
                f"{ratio:.2f}x, p99 {r['p99_ms']:.1f} vs {kserve['p99_ms']:.1f} ms",
                ratio >= GOAL_OVER_KSERVE and r["p99_ms"] <= kserve["p99_ms"],
            )
        )
    return out


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    from bench.plots import pyplot

    plt = pyplot()
    kinds = [k for k in ("classify", "streams") if any(r["kind"] == k for r in rows)]
    fig, axes = plt.subplots(
        2, len(kinds), figsize=(6.5 * len(kinds), 8), constrained_layout=True, squeeze=False
    )
    for col, kind in enumerate(kinds):
        group = [r for r in rows if r["kind"] == kind]
        short = {"FastAPI + SpikingJelly WebSocket": "FastAPI + SJ WS", "psn-serve WebSocket": "psn-serve WS"}
        names = [r["target"].partition(", ") for r in group]  # (server, ", ", frames)
        labels = [short.get(name, name) + (f"\n{frames}" if frames else "") for name, _, frames in names]
        colors = ["tab:green" if r["server"] == "psn-serve" else "tab:gray" for r in group]
        ax = axes[0][col]
        ax.bar(range(len(group)), [r["rate"] for r in group], color=colors)
        ax.set_xticks(range(len(group)), labels, fontsize=7)
        unit = "req/s" if kind == "classify" else "steps/s"
        ax.set_title(
            f"{kind}: {unit} at saturation ({CONNECTIONS} conns)"
            if kind == "classify"
            else f"{kind}: {unit}, {STREAMS} closed-loop streams",
            fontsize=10,
        )
        ax = axes[1][col]
        width = 0.2
        for j, (key, name) in enumerate((("p50_ms", "p50 sat."), ("p99_ms", "p99 sat."))):
            ax.bar(
                [i + (j - 1.5) * width for i in range(len(group))], [r[key] for r in group], width, label=name
            )
        for j, (key, name) in enumerate((("p50_ms", "p50 open 75%"), ("p99_ms", "p99 open 75%"))):
            ax.bar(
                [i + (j + 0.5) * width for i in range(len(group))],
                [r["open"][key] for r in group],
                width,
                label=name,
            )
        ax.set_xticks(range(len(group)), labels, fontsize=7)
        ax.set(yscale="log", ylabel="latency (ms, log)")
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="psn bench peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and PNG (docs/)")
    p.add_argument("--models-dir", type=Path, default=None, help="model directories (default: models/)")
    p.add_argument("--duration", type=float, default=None, help="seconds per load point (5; --quick 1)")
    p.add_argument(
        "--peers-python",
        type=Path,
        default=PEERS_VENV / "bin" / "python",
        help="the Python of the peers' venv (.venv-peers, made by make bench-peers)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers and the load to cores")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(list(argv or []))
    args.duration = args.duration or (1.0 if args.quick else 5.0)
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
            with contextlib.ExitStack() as stack:
                try:
                    server = stack.enter_context(start())
                except BenchError as exc:
                    print(f"psn bench peers: {name} did not start: {exc}", file=sys.stderr)
                    continue
                for t in targets:
                    if t.frames is None:
                        rows.append(measure_classify(server, t, args, pinning, work))
                    else:
                        rows.append(measure_stream(server, t, models["sliding_psn"], args, pinning))
    env |= {"loadavg_end": load_average(), "wall_s": round(time.monotonic() - started, 1)}
    goal_items = goals(rows)
    result = {
        "suite": "peers",
        "quick": args.quick,
        "environment": env,
        "models": source,
        "rows": rows,
        "goals": [g.to_json() for g in goal_items],
    }
    flat = [r | {f"open_{k}": v for k, v in r["open"].items()} for r in rows]
    columns = (
        "target | rate:d | p50 ms=p50_ms | p99 ms=p99_ms | p99.9 ms=p999_ms | srv us=server_cpu_us:d "
        "| errors | "
        "1 stream p50=one_stream_p50_ms | open 75% p50=open_p50_ms | p99=open_p99_ms | p99.9=open_p999_ms"
    )
    print(
        table(
            flat,
            columns,
            f"classify (req/s, wrk {CONNECTIONS} conns) and streams (steps/s, {STREAMS} streams) "
            f"at saturation, then open loop at {OPEN_LOOP_LEVEL:.0%} of each one's saturation",
        )
    )
    print(
        "\n" + goals_table(goal_items) + f"\n\n{pinning.note}; load average {env['loadavg_start']} -> "
        f"{env['loadavg_end']}; {env['wall_s']} s"
    )
    stem = "bench-peers-quick" if args.quick else "bench-peers"
    write_json(args.out / f"{stem}.json", result, digits=4)
    plot(rows, f"psn-serve and its peers, server on one core ({env['cpu']})", args.out / f"{stem}.png")
    print(f"wrote {args.out / f'{stem}.json'}, {args.out / f'{stem}.png'}")
    return 0
