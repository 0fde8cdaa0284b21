"""The parts of the serving suite, against the servers bench.serving.suite has started: raw ORT cost, classify
(wrk), streams (WebSocket client processes), first output, profiles (py-spy), the open-loop sweep, and
``psn serve --workers N`` (its own servers)."""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bench.common import BenchError, find, group_by, progress, table
from bench.models import KINDS, ModelRef
from bench.serving.latency import LatencyJob, sample_inputs, stream_sequences, summarize
from bench.serving.procs import HOST, Pinning, Proc, ThreadTimes, choose_pinning, psn_server
from bench.serving.wrk import Body, check_answer, classify_body, run_wrk, v2_binary_body
from bench.serving.ws import Frames, run_in_client_process, run_streams

SWEEP_STREAMS = 64
# the --workers part: wrk connections for classify, closed-loop streams for steps
WORKERS_CONNECTIONS = 32
WORKERS_STREAMS = 64
STREAM_KIND_ORDER = ("sliding_psn", "lif", "masked_psn")  # the unbounded kinds first: no resets needed
# psn_step_batch_size_sum{model="m",version="1"} 123.0 (any further labels)
_BATCH_METRIC = re.compile(r'^psn_step_batch_size_(sum|count)\{model="([^"]+)"[^}]*\} ([0-9.e+]+)$', re.M)


@dataclass
class Context:
    plan: Any  # bench.serving.suite.Plan
    pinning: Pinning
    work: Path
    models: dict[str, ModelRef]
    quiet: bool
    echo: Proc  # the floor: a raw ASGI app on the same uvicorn that parses the body with orjson
    on: Proc
    off: Proc | None
    fastapi: Proc | None = None  # the FastAPI echo (second reference)

    def echoes(self) -> list[tuple[str, Proc]]:
        return [("echo", self.echo)] + ([("fastapi-echo", self.fastapi)] if self.fastapi else [])

    def classify_model(self) -> ModelRef:
        return self.models.get("psn") or next(iter(self.models.values()))

    def stream_model(self, required: bool = True) -> ModelRef | None:
        for kind in STREAM_KIND_ORDER:
            if kind in self.models and self.models[kind].streams:
                return self.models[kind]
        if required:
            raise BenchError("no streaming model (sliding_psn, lif or masked_psn) to stream to")
        return None

    def wrk(self, server: Proc, path: str, body, connections: int, seconds: float | None = None):
        return run_wrk(server, path, body, connections, seconds or self.plan.duration_s, self.pinning)


def ws_url(server: Proc, model: ModelRef) -> str:
    return f"ws://{HOST}:{server.port}/v1/models/{model.name}/stream"


def v1_classify(model: ModelRef, batch: int = 1) -> tuple[Body, str]:
    """A v1 JSON classify request for model: (the body, the path)."""
    return classify_body(model.T, model.features, batch), f"/v1/models/{model.name}/classify"


def best_rounds(rows: list[dict[str, Any]], keys: tuple[str, ...], rate: str) -> list[dict[str, Any]]:
    """Per configuration, the round with the highest rate (the least disturbed by other load on the shared
    cores), with every round's rate beside it."""
    return [
        {**max(g, key=lambda r: r[rate]), "rounds": len(g), f"{rate}_rounds": [r[rate] for r in g]}
        for g in group_by(rows, keys).values()
    ]


def server_costs(
    count: int, seconds: float, cpu_s: float | None, threads: ThreadTimes | None, unit: str
) -> dict:
    """The server's CPU over a run: share of a core, CPU us per request or step, its main (event loop) thread
    against its other threads (ORT worker, executor), and context switches per request or step."""
    per = (lambda v: None) if not count else (lambda v: v * 1e6 / count)
    return {
        "server_cpu_util": None if cpu_s is None else cpu_s / seconds,
        f"server_cpu_us_per_{unit}": None if cpu_s is None else per(cpu_s),
        "main_thread_us": None if threads is None else per(threads.main_cpu_s),
        "other_threads_us": None if threads is None else per(threads.other_cpu_s),
        "switches": None if threads is None or not count else threads.switches / count,
    }


def gc_cost(server: Proc, before: dict | None) -> dict[str, Any]:
    """The server's garbage collections since ``before`` (its gc_totals() then; psn serve only)."""
    from bench.serving.gctrace import delta

    after = server.gc_totals()
    return {} if before is None or after is None else {"gc": delta(before, after)}


def _ms(latency: dict[str, float]) -> dict[str, float]:
    return {f"{k}_ms": v for k, v in latency.items()}


def run_raw(ctx: Context, providers: list[str] | None = None) -> dict[str, Any]:
    """The model's raw ONNX Runtime cost on the server's core: the classify model's full graph (batch 1) and
    the stream model's step graph (batch 1 and 64); see bench.raw."""
    from bench.raw import measure_pinned

    dirs = list(
        dict.fromkeys(Path(m.directory) for m in (ctx.classify_model(), ctx.stream_model(False)) if m)
    )
    seconds = min(2.0, max(0.3, ctx.plan.duration_s / 2))
    if not ctx.quiet:
        print(f"raw ORT cost: {len(dirs)} model(s), {seconds:g} s per graph ...", file=sys.stderr, flush=True)
    core = ctx.pinning.server[0] if ctx.pinning.server else None
    return {
        "method": "session.run in a process pinned to the server's core, sessions made as the runtime makes "
        "them; median per call (full graph batch 1; step graph batch 1 and 64, per step = call / 64)",
        "seconds_per_graph": seconds,
        "models": measure_pinned(dirs, seconds, core, providers),
    }


def run_classify(ctx: Context) -> dict[str, Any]:
    plan, model = ctx.plan, ctx.classify_model()
    targets = {}  # (target, format, batch) -> (server, path, body)
    for batch in plan.batches:
        for fmt in plan.formats:
            if fmt == "json":
                body, path = v1_classify(model, batch)
            else:
                body, path = v2_binary_body(model.T, model.features, batch), f"/v2/models/{model.name}/infer"
            targets[("service", fmt, batch)] = (ctx.on, path, body)
            targets |= {(name, fmt, batch): (server, "/echo", body) for name, server in ctx.echoes()}
    for (target, fmt, batch), (server, path, body) in targets.items():
        expect = "ok" if target != "service" else ("predictions" if fmt == "json" else "outputs")
        answer = check_answer(server, path, body, expect)
        if target == "service" and fmt == "json" and len(answer["predictions"]) != batch:
            raise BenchError(f"classify of a batch of {batch} gave {len(answer['predictions'])} predictions")
    if plan.duration_s >= 2:  # warm the servers (first requests, allocator, caches) before counting
        for server, path, body in targets.values():
            ctx.wrk(server, path, body, 8, 1)
    points = [(r, key, c) for r in range(plan.rounds) for key in targets for c in plan.connections]
    rows = []
    for rnd, (target, fmt, batch), conns in progress(points, desc="classify (wrk)", quiet=ctx.quiet):
        server, path, body = targets[(target, fmt, batch)]
        mark = server.gc_totals()
        r = ctx.wrk(server, path, body, conns)
        if errors := sum(r.errors.values()):
            print(f"warning: {target} {fmt} batch {batch}, {conns} conns: errors {r.errors}", file=sys.stderr)
        rows.append(
            {
                "round": rnd,
                "target": target,
                "format": fmt,
                "batch": batch,
                "connections": conns,
                "rps": r.rps,
            }
            | {"seq_per_s": r.rps * batch, **_ms(r.latency_ms), "errors": errors, "error_kinds": r.errors}
            | {"requests": r.requests, "duration_s": r.duration_s}
            | server_costs(r.requests, r.duration_s, r.server_cpu_s, r.threads, "request")
            | gc_cost(server, mark)
        )
    return {
        "model": model.name,
        "kind": model.kind,
        "paths": {f"{t}/{f}": p for (t, f, _), (_, p, _) in targets.items()},
        "body_bytes": {f"{t}/{f}/b{b}": len(body.data) for (t, f, b), (_, _, body) in targets.items()},
        "load": "wrk -t1 -cN, keep-alive, one pre-built POST (bench/serving/post_json.lua)",
        "rows": best_rounds(rows, ("target", "format", "batch", "connections"), "rps"),
        "all_rounds": rows,
    }


def _batch_totals(server: Proc, model: str) -> tuple[float, float]:
    """(sum, count) of the server's step batch size histogram for model, over its versions."""
    r = httpx.get(f"http://{HOST}:{server.port}/metrics", timeout=10)
    totals = {"sum": 0.0, "count": 0.0}
    for kind, name, v in _BATCH_METRIC.findall(r.text if r.status_code == 200 else ""):
        totals[kind] += float(v) if name == model else 0.0
    return totals["sum"], totals["count"]


def run_streams_part(ctx: Context) -> dict[str, Any]:
    plan, model = ctx.plan, ctx.stream_model()
    targets = [("service", "on", ctx.on, ws_url(ctx.on, model))]
    targets += [("service", "off", ctx.off, ws_url(ctx.off, model))] if ctx.off is not None else []
    targets += [(name, "-", server, f"ws://{HOST}:{server.port}/stream") for name, server in ctx.echoes()]
    points = [
        (r, f, n, t) for r in range(plan.rounds) for f in plan.frames for n in plan.streams for t in targets
    ]
    rows = []
    for rnd, frames, n, (target, batching, server, url) in progress(points, desc="streams", quiet=ctx.quiet):
        service = target == "service"
        before, mark = _batch_totals(server, model.name) if service else (0.0, 0.0), server.gc_totals()
        load = run_streams(url, n, Frames(frames), model.features, plan, ctx.pinning, server)
        after = _batch_totals(server, model.name) if service else (0.0, 0.0)
        batches, steps = after[1] - before[1], load.steps
        rows.append(
            {"round": rnd, "target": target, "batching": batching, "frames": frames, "streams": n}
            | {"steps_per_s": load.steps_per_s, **_ms(load.rtt_ms), "steps": steps, "errors": load.errors}
            | {"client_cpu_util": load.client_cpu_s / load.window_s, "client_procs": load.client_procs}
            | {"mean_batch": (after[0] - before[0]) / batches if batches else None}
            | {"client_cpu_us_per_step": load.client_cpu_s * 1e6 / steps if steps else None}
            | server_costs(steps, load.window_s, load.server_cpu_s, load.threads, "step")
            | gc_cost(server, mark)
        )
    return {
        "model": model.name,
        "kind": model.kind,
        "load": "closed-loop streams (send a step, await its answer), hand-written WebSocket clients",
        "rows": best_rounds(rows, ("target", "batching", "frames", "streams"), "steps_per_s"),
        "all_rounds": rows,
    }


def run_first_output(ctx: Context) -> dict[str, Any]:
    plan, jobs, sources = ctx.plan, [], {}
    for kind, model in ((k, ctx.models[k]) for k in KINDS if k in ctx.models):
        inputs, sources[kind] = sample_inputs(model.dataset, model.T, model.features, plan.sequences)
        jobs.append(LatencyJob(kind, model.name, ws_url(ctx.on, model), inputs, plan.period_ms / 1000.0))
    if not jobs:
        raise BenchError("no model to stream to")
    budget = 60.0 + sum(len(j.inputs) * (j.inputs.shape[1] * j.period_s + 0.5) for j in jobs)
    if not ctx.quiet:
        print(
            f"first output: streaming {plan.sequences} sequence(s) per kind ...", file=sys.stderr, flush=True
        )
    raw = run_in_client_process(stream_sequences, (jobs,), ctx.pinning, timeout_s=budget)
    kinds = [asdict(summarize(j.kind, j.model, raw[j.kind])) for j in jobs]
    return {"period_ms": plan.period_ms, "inputs": sources, "batching": "on", "kinds": kinds, "raw": raw}


def run_profiles(ctx: Context, out_dir: Path, parts: list[str]) -> list[dict[str, Any]]:
    """Extra runs under py-spy: classify at 32 connections, one JSON stream, 256 binary streams on/off."""
    from bench.serving.profile import Recorder, py_spy_binary

    if py_spy_binary() is None:
        print("profile: py-spy is not installed (.venv/bin/pip install py-spy); skipped", file=sys.stderr)
        return [{"name": "all", "error": "py-spy not installed"}]
    seconds, out, scenarios = max(2.0, ctx.plan.duration_s), [], []
    if "classify" in parts:
        m = ctx.classify_model()
        body, path = v1_classify(m)
        scenarios.append(
            ("classify-b1-c32", ctx.on, lambda start: (start(), ctx.wrk(ctx.on, path, body, 32, seconds)))
        )
    if "streams" in parts:
        m, plan = ctx.stream_model(), replace(ctx.plan, duration_s=seconds, warmup_s=0.5)
        runs = [
            ("stream-1-json-on", ctx.on, 1, Frames.JSON),
            ("stream-256-binary-on", ctx.on, 256, Frames.BINARY),
        ]
        runs += [("stream-256-binary-off", ctx.off, 256, Frames.BINARY)] if ctx.off is not None else []
        for name, server, n, frames in runs:
            url = ws_url(server, m)

            def action(start, url=url, n=n, frames=frames, server=server) -> None:
                run_streams(url, n, frames, m.features, plan, ctx.pinning, server, on_window=start)

            scenarios.append((name, server, action))
    for name, server, action in progress(scenarios, desc="profiles", quiet=ctx.quiet):
        holder: list[Recorder] = []

        def start(holder=holder, pid=server.pid, name=name) -> None:
            holder.append(Recorder(pid, seconds, out_dir, name, ctx.pinning))

        try:
            action(start)
            out.append(holder[0].finish())
        except Exception as exc:  # a profiler that cannot attach must not lose the measurements
            out.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
    return out


def run_sweep(
    ctx: Context, classify: dict[str, Any] | None, streaming: dict[str, Any] | None
) -> dict[str, Any]:
    """Open-loop constant-rate load at fractions of saturation (the closed-loop rate: wrk at 32 connections
    for classify, 64 closed-loop streams for steps, measured here when those parts did not run)."""
    from bench.serving.openloop import run_http, run_ws
    from bench.serving.ws import make_frames

    plan, on, rows = ctx.plan, ctx.on, []
    cmodel, smodel = ctx.classify_model(), ctx.stream_model(required=False)
    body, path = v1_classify(cmodel)
    crows = (classify or {}).get("rows", [])
    sat = {
        "classify": (find(crows, target="service", format="json", batch=1, connections=32) or {}).get("rps")
    }
    sat["classify"] = sat["classify"] or ctx.wrk(on, path, body, 32).rps
    jobs = [("classify", level) for level in plan.levels]
    if smodel is not None:
        url, frames = ws_url(on, smodel), make_frames(Frames.BINARY, smodel.features, 0)
        match = {"target": "service", "batching": "on", "frames": "binary", "streams": SWEEP_STREAMS}
        sat["streams"] = (find((streaming or {}).get("rows", []), **match) or {}).get("steps_per_s")
        if sat["streams"] is None:
            load = run_streams(url, SWEEP_STREAMS, Frames.BINARY, smodel.features, plan, ctx.pinning, on)
            sat["streams"] = load.steps_per_s
        jobs += [("streams", level) for level in plan.levels]
    for workload, level in progress(jobs, desc="open-loop sweep", quiet=ctx.quiet):
        rate, mark = level * sat[workload], on.gc_totals()
        if workload == "classify":
            curl = f"http://{HOST}:{on.port}{path}"
            r = run_http(curl, body, rate, plan.duration_s, ctx.pinning, on)
        else:
            r = run_ws(url, SWEEP_STREAMS, frames, rate, plan.duration_s, ctx.pinning, on)
        rows.append(
            {"workload": workload, "level": level, **asdict(r), **_ms(r.latency_ms), **gc_cost(on, mark)}
        )
    return {
        "load": "open loop at a constant rate (latency from each request's due time, wrk2's way): classify = "
        f"v1 JSON batch 1; streams = {SWEEP_STREAMS} WebSocket streams, binary frames, steps pipelined",
        "saturation": sat
        | {"classify_from": "closed loop, wrk 32 connections"}
        | {"streams_from": f"closed loop, {SWEEP_STREAMS} streams"},
        "classify_model": cmodel.name,
        "stream_model": None if smodel is None else smodel.name,
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------ --workers N


def wait_for_workers(port: int, n: int, timeout_s: float = 90.0) -> None:
    """Until n distinct workers have answered /readyz 200 (fresh connections: the kernel picks one each)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(seen)} of {n} workers answered in {timeout_s:.0f} s")
        try:
            r = httpx.get(f"http://{HOST}:{port}/readyz", timeout=5)
            if r.status_code == 200 and "x-psn-worker" in r.headers:
                seen.add(r.headers["x-psn-worker"])
        except httpx.TransportError:
            time.sleep(0.1)


def run_workers_part(
    counts: tuple[int, ...], models_dir: Path, ctx: Context, pin: bool, providers: list[str] | None
) -> dict[str, Any]:
    """``psn serve --workers N`` for each N of ``--workers 1,2`` on cores 0..N-1, the load on the next core:
    classify req/s (JSON, batch 1, 32 connections) and 64 streams' steps/s, each against one worker."""
    classify, stream, plan = ctx.classify_model(), ctx.stream_model(required=False), ctx.plan
    body, path = v1_classify(classify)
    rows = []
    for n in progress(counts, desc="workers", quiet=ctx.quiet):
        pinning = choose_pinning(pin, server_cores=n)
        serve = {"log_dir": ctx.work, "pinning": pinning, "providers": providers, "workers": n}
        with psn_server(models_dir, batching=True, **serve) as server:
            if n > 1:
                wait_for_workers(server.port, n)
            run_wrk(server, path, body, 8, 1, pinning)  # warm every worker
            r = run_wrk(server, path, body, WORKERS_CONNECTIONS, plan.duration_s, pinning)
            row = {
                "workers": n,
                "pinning": pinning.note,
                "classify_rps": r.rps,
                "classify_p99_ms": r.latency_ms["p99"],
                "classify_errors": sum(r.errors.values()),
            }
            if stream is not None:
                url = f"ws://{HOST}:{server.port}/v1/models/{stream.name}/stream"
                load = run_streams(url, WORKERS_STREAMS, Frames.BINARY, stream.features, plan, pinning)
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
    streams = None
    if stream is not None:
        streams = f"{stream.name}, {WORKERS_STREAMS} closed-loop streams, binary frames"
    return {
        "classify": f"{classify.name}, JSON, batch 1, {WORKERS_CONNECTIONS} connections (wrk)",
        "streams": streams,
        "cores_available": len(os.sched_getaffinity(0)),
        "rows": rows,
    }


def workers_table(part: dict[str, Any]) -> str:
    columns = (
        "workers | req/s=classify_rps:d | p99 ms=classify_p99_ms | x 1 worker=classify_vs_1 | "
        "steps/s=steps_per_s:d | p99 ms=steps_p99_ms | x 1 worker=steps_vs_1 | cores=pinning"
    )
    where = f"{part['classify']}; {part['streams']}; {part['cores_available']} cores here"
    return table(part["rows"], columns, f"psn serve --workers N ({where})")
