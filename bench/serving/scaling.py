"""Throughput against worker processes: ``psn serve --workers N`` for each N of ``--workers 1,2``, the
server on cores 0..N-1 (``taskset -c``), the load (wrk, WebSocket clients) on the next core when there is
one, else unpinned (sharing the server's cores: the table says so). Measures classify req/s (JSON, batch 1,
32 connections) and aggregate steps/s of 64 streams (binary frames), and each against one worker.
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchError, format_table, progress
from bench.serving.models import ModelRef
from bench.serving.procs import HOST, Pinning, psn_server
from bench.serving.wrk import classify_body, run_wrk
from bench.serving.ws import Frames, run_streams

CONNECTIONS = 32
STREAMS = 64


@dataclass(frozen=True)
class CoreSet(Pinning):
    """The server on a set of cores (a multi-process server), the load on ``load`` or unpinned."""

    cores: tuple[int, ...] = ()

    @property
    def note(self) -> str:
        where = "unpinned (shares the server's cores)" if self.load is None else f"on core {self.load}"
        return f"server on cores {','.join(map(str, self.cores))}, load {where}"

    def prefix(self) -> list[str]:
        if not self.cores or not shutil.which("taskset"):
            return []
        return ["taskset", "-c", ",".join(map(str, self.cores))]


def core_sets(counts: tuple[int, ...], pin: bool) -> dict[int, CoreSet]:
    cores = sorted(os.sched_getaffinity(0))
    out = {}
    for n in counts:
        if not pin or n > len(cores):
            out[n] = CoreSet(None, None, ())
        else:
            out[n] = CoreSet(cores[0], cores[n] if n < len(cores) else None, tuple(cores[:n]))
    return out


def wait_for_workers(port: int, n: int, timeout_s: float = 90.0) -> None:
    """Until n distinct workers have answered /readyz 200 (fresh connections: the kernel picks one each)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(seen)} of {n} workers answered in {timeout_s:.0f} s")
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            response.read()
            if response.status == 200 and response.getheader("x-psn-worker"):
                seen.add(response.getheader("x-psn-worker"))
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()


def run_workers_part(
    counts: tuple[int, ...], models_dir: Path, classify: ModelRef, stream: ModelRef | None, plan: Any,
    work: Path, pin: bool, quiet: bool, providers: list[str] | None,
) -> dict[str, Any]:  # fmt: skip
    rows = []
    body = work / "workers-classify-b1.json"
    body.write_bytes(classify_body(classify.T, classify.features, 1))
    for n, pinning in progress(list(core_sets(counts, pin).items()), desc="workers", quiet=quiet):
        server = psn_server(models_dir, batching=True, log_dir=work, pinning=pinning, providers=providers,
                            workers=n)  # fmt: skip
        with server:
            if n > 1:
                wait_for_workers(server.port, n)
            path = f"/v1/models/{classify.name}/classify"
            run_wrk(server, path, body, connections=8, duration_s=1, pinning=pinning)  # warm every worker
            r = run_wrk(
                server, path, body, connections=CONNECTIONS, duration_s=plan.duration_s, pinning=pinning
            )
            row: dict[str, Any] = {
                "workers": n, "pinning": pinning.note, "classify_rps": r.rps,
                "classify_p99_ms": r.latency_ms["p99"], "classify_errors": sum(r.errors.values()),
            }  # fmt: skip
            if stream is not None:
                load = run_streams(
                    f"ws://{HOST}:{server.port}/v1/models/{stream.name}/stream", streams=STREAMS,
                    frames=Frames.BINARY, features=stream.features, duration_s=plan.duration_s,
                    warmup_s=plan.warmup_s, client_procs=plan.client_procs, pinning=pinning, server=None,
                )  # fmt: skip
                row.update(
                    steps_per_s=load.steps_per_s, steps_p99_ms=load.rtt_ms["p99"], steps_errors=load.errors
                )
            rows.append(row)
    one = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        r["classify_vs_1"] = None if one is None else r["classify_rps"] / one["classify_rps"]
        if one is not None and "steps_per_s" in r and one.get("steps_per_s"):
            r["steps_vs_1"] = r["steps_per_s"] / one["steps_per_s"]
    if not quiet:
        print(f"workers: {', '.join(r['pinning'] for r in rows)}", file=sys.stderr)
    return {
        "classify": f"{classify.name}, JSON, batch 1, {CONNECTIONS} connections (wrk)",
        "streams": None if stream is None else f"{stream.name}, {STREAMS} closed-loop streams, binary frames",
        "cores_available": len(os.sched_getaffinity(0)),
        "rows": rows,
    }


def workers_table(part: dict[str, Any]) -> str:
    rows = [
        [r["workers"], round(r["classify_rps"]), r["classify_p99_ms"], r.get("classify_vs_1"),
         None if r.get("steps_per_s") is None else round(r["steps_per_s"]), r.get("steps_p99_ms"),
         r.get("steps_vs_1"), r["pinning"]]
        for r in part["rows"]
    ]  # fmt: skip
    headers = ["workers", "req/s", "p99 ms", "x 1 worker", "steps/s", "p99 ms", "x 1 worker", "cores"]
    title = (
        f"psn serve --workers N ({part['classify']}; {part['streams']}; {part['cores_available']} cores here)"
    )
    return format_table(headers, rows, title)
