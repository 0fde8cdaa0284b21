"""``psn serve --workers N`` for each N of ``--workers 1,2`` on cores 0..N-1, the load on the next core:
classify req/s (JSON, batch 1, 32 connections) and 64 streams' steps/s, each against one worker."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import BenchError, progress, table
from bench.serving.procs import HOST, choose_pinning, psn_server
from bench.serving.wrk import classify_body, run_wrk
from bench.serving.ws import Frames, run_streams

CONNECTIONS = 32
STREAMS = 64


def wait_for_workers(port: int, n: int, timeout_s: float = 90.0) -> None:
    """Until n distinct workers have answered /readyz 200 (fresh connections: the kernel picks one each)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(seen)} of {n} workers answered in {timeout_s:.0f} s")
        try:
            r = httpx.get(f"http://{HOST}:{port}/readyz", timeout=5)
            seen |= (
                {r.headers["x-psn-worker"]} if r.status_code == 200 and "x-psn-worker" in r.headers else set()
            )
        except httpx.TransportError:
            time.sleep(0.1)


def run_workers_part(
    counts: tuple[int, ...], models_dir: Path, ctx: Any, pin: bool, providers: list[str] | None
) -> dict[str, Any]:
    """ctx: a bench.serving.runs.Context (plan, work folder, models, quiet)."""
    classify, stream, plan = ctx.classify_model(), ctx.stream_model(required=False), ctx.plan
    body, path = classify_body(classify.T, classify.features, 1), f"/v1/models/{classify.name}/classify"
    rows = []
    for n in progress(counts, desc="workers", quiet=ctx.quiet):
        pinning = choose_pinning(pin, server_cores=n)
        serve = {"log_dir": ctx.work, "pinning": pinning, "providers": providers, "workers": n}
        with psn_server(models_dir, batching=True, **serve) as server:
            if n > 1:
                wait_for_workers(server.port, n)
            run_wrk(server, path, body, 8, 1, pinning)  # warm every worker
            r = run_wrk(server, path, body, CONNECTIONS, plan.duration_s, pinning)
            row = {"workers": n, "pinning": pinning.note, "classify_rps": r.rps}
            row |= {"classify_p99_ms": r.latency_ms["p99"], "classify_errors": sum(r.errors.values())}
            if stream is not None:
                url = f"ws://{HOST}:{server.port}/v1/models/{stream.name}/stream"
                load = run_streams(url, STREAMS, Frames.BINARY, stream.features, plan, pinning)
                row |= {
                    "steps_per_s": load.steps_per_s,
                    "steps_p99_ms": load.rtt_ms["p99"],
                    "steps_errors": load.errors,
                }
            rows.append(row)
    one = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        r["classify_vs_1"] = None if one is None else r["classify_rps"] / one["classify_rps"]
        if one is not None and "steps_per_s" in r and one.get("steps_per_s"):
            r["steps_vs_1"] = r["steps_per_s"] / one["steps_per_s"]
    return {
        "classify": f"{classify.name}, JSON, batch 1, {CONNECTIONS} connections (wrk)",
        "streams": None if stream is None else f"{stream.name}, {STREAMS} closed-loop streams, binary frames",
        "cores_available": len(os.sched_getaffinity(0)),
        "rows": rows,
    }


def workers_table(part: dict[str, Any]) -> str:
    columns = (
        "workers | req/s=classify_rps:d | p99 ms=classify_p99_ms | x 1 worker=classify_vs_1 | "
        "steps/s=steps_per_s:d | p99 ms=steps_p99_ms | x 1 worker=steps_vs_1 | cores=pinning"
    )
    title = (
        f"psn serve --workers N ({part['classify']}; {part['streams']}; {part['cores_available']} cores here)"
    )
    return table(part["rows"], columns, title)
