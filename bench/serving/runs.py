"""The parts of the serving suite, each against servers that bench.serving.suite has started: raw ORT cost,
classify (wrk), streams (WebSocket client processes), first output (a fixed-rate stream per kind), profiles
(py-spy)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import BenchError, progress
from bench.models import KINDS, ModelRef
from bench.serving.latency import LatencyJob, sample_inputs, stream_sequences, summarize
from bench.serving.procs import HOST, Pinning, PsnServer, ServerProcess, ThreadTimes, request
from bench.serving.wrk import Body, check_answer, classify_body, run_wrk, v2_binary_body
from bench.serving.ws import Frames, run_in_client_process, run_streams

SWEEP_STREAMS = 64
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
    echo: ServerProcess  # the floor: a raw ASGI app on the same uvicorn that parses the body with orjson
    on: ServerProcess
    off: ServerProcess | None
    fastapi: ServerProcess | None = None  # the FastAPI echo (second reference)

    def echoes(self) -> list[tuple[str, ServerProcess]]:
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


def best_rounds(rows: list[dict[str, Any]], keys: tuple[str, ...], rate: str) -> list[dict[str, Any]]:
    """Per configuration, the round with the highest rate (the least disturbed by other load on the shared
    cores), with every round's rate beside it."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [
        {**max(g, key=lambda r: r[rate]), "rounds": len(g), f"{rate}_rounds": [r[rate] for r in g]}
        for g in groups.values()
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


def gc_cost(server: ServerProcess, before: dict | None) -> dict[str, Any]:
    """The server's garbage collections since ``before`` (its gc_totals() then; psn serve only)."""
    from bench.serving.gctrace import delta

    after = server.gc_totals() if isinstance(server, PsnServer) else None
    return {} if before is None or after is None else {"gc": delta(before, after)}


def gc_mark(server: ServerProcess) -> dict | None:
    return server.gc_totals() if isinstance(server, PsnServer) else None


def _ms(latency: dict[str, float]) -> dict[str, float]:
    return {f"{k}_ms": v for k, v in latency.items()}


# ---------------------------------------------------------------------------------------------- raw ORT


def run_raw(ctx: Context, providers: list[str] | None = None) -> dict[str, Any]:
    """The model's raw ONNX Runtime cost, on the server's core: the classify model's full graph (batch 1)
    and the stream model's step graph (batch 1 and 64); see bench.raw."""
    from bench.raw import measure_pinned

    dirs = []
    for model in (ctx.classify_model(), ctx.stream_model(required=False)):
        if model is not None and Path(model.directory) not in dirs:
            dirs.append(Path(model.directory))
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


# ---------------------------------------------------------------------------------------------- classify


def classify_targets(ctx: Context, model: ModelRef, batch: int) -> dict[tuple[str, str], tuple]:
    """(target, format) -> (server, path, Body): the service and the echo app, for every body format."""
    out = {}
    for fmt in ctx.plan.formats:
        if fmt == "json":
            body, path = classify_body(model.T, model.features, batch), f"/v1/models/{model.name}/classify"
        else:
            body, path = v2_binary_body(model.T, model.features, batch), f"/v2/models/{model.name}/infer"
        out[("service", fmt)] = (ctx.on, path, body)
        out |= {(name, fmt): (server, "/echo", body) for name, server in ctx.echoes()}
    return out


def run_classify(ctx: Context) -> dict[str, Any]:
    plan, model = ctx.plan, ctx.classify_model()
    targets: dict[tuple[str, str, int], tuple[ServerProcess, str, Body]] = {}
    for batch in plan.batches:
        for (target, fmt), (server, path, body) in classify_targets(ctx, model, batch).items():
            expect = "ok" if target != "service" else ("predictions" if fmt == "json" else "outputs")
            answer = check_answer(server, path, body, expect)
            if target == "service" and fmt == "json" and len(answer["predictions"]) != batch:
                raise BenchError(
                    f"classify of a batch of {batch} gave {len(answer['predictions'])} predictions"
                )
            targets[(target, fmt, batch)] = (server, path, body)
    file = ctx.work / "classify.body"
    if plan.duration_s >= 2:  # warm both servers (first requests, allocator, caches) before counting
        for server, path, body in targets.values():
            run_wrk(server, path, body, file, connections=8, duration_s=1, pinning=ctx.pinning)
    points = [(r, key, c) for r in range(plan.rounds) for key in targets for c in plan.connections]
    rows = []
    for rnd, (target, fmt, batch), conns in progress(points, desc="classify (wrk)", quiet=ctx.quiet):
        server, path, body = targets[(target, fmt, batch)]
        mark = gc_mark(server)
        r = run_wrk(
            server, path, body, file, connections=conns, duration_s=plan.duration_s, pinning=ctx.pinning
        )
        errors = sum(r.errors.values())
        if errors:
            print(f"warning: {target} {fmt} batch {batch}, {conns} conns: errors {r.errors}", file=sys.stderr)
        rows.append(
            {
                "round": rnd,
                "target": target,
                "format": fmt,
                "batch": batch,
                "connections": conns,
                "rps": r.rps,
                "seq_per_s": r.rps * batch,
                **_ms(r.latency_ms),
                "errors": errors,
                "error_kinds": r.errors,
                "requests": r.requests,
                "duration_s": r.duration_s,
                **server_costs(r.requests, r.duration_s, r.server_cpu_s, r.threads, "request"),
                **gc_cost(server, mark),
            }
        )
    return {
        "model": model.name,
        "kind": model.kind,
        "paths": {f"{t}/{f}": p for (t, f, _), (_, p, _) in targets.items()},
        "body_bytes": {f"{t}/{f}/b{b}": len(body.data) for (t, f, b), (_, _, body) in targets.items()},
        "formats": {
            "json": "POST /v1/models/{name}/classify, a JSON body {inputs: [[...]]}",
            "v2-binary": "POST /v2/models/{name}/infer, JSON header + float32 tensor (binary extension), "
            "label_index answered binary",
        },
        "load": "wrk -t1 -cN, keep-alive, one pre-built POST (bench/serving/post_json.lua)",
        "echo": "POST /echo with the same body on the raw ASGI floor (reads it, parses it with "
        "orjson, answers a "
        "small JSON) and on the FastAPI echo (reads it, answers a small JSON); no model",
        "rows": best_rounds(rows, ("target", "format", "batch", "connections"), "rps"),
        "all_rounds": rows,
    }


# ----------------------------------------------------------------------------------------------- streams


def _batch_totals(server: ServerProcess, model: str) -> tuple[float, float]:
    """(sum, count) of the server's step batch size histogram for model."""
    status, text, _ = request(server.port, "GET", "/metrics", timeout=10)
    if status != 200:
        return 0.0, 0.0
    totals = {"sum": 0.0, "count": 0.0}
    for kind, name, v in _BATCH_METRIC.findall(text.decode()):
        totals[kind] += float(v) if name == model else 0.0  # summed over the model's versions
    return totals["sum"], totals["count"]


def run_streams_part(ctx: Context) -> dict[str, Any]:
    plan, model = ctx.plan, ctx.stream_model()
    service_path = f"/v1/models/{model.name}/stream"
    targets = [("service", "on", ctx.on, service_path)]
    targets += [("service", "off", ctx.off, service_path)] if ctx.off is not None else []
    targets += [(name, "-", server, "/stream") for name, server in ctx.echoes()]
    points = [
        (r, f, n, t) for r in range(plan.rounds) for f in plan.frames for n in plan.streams for t in targets
    ]
    rows = []
    for rnd, frames, n, (target, batching, server, path) in progress(points, desc="streams", quiet=ctx.quiet):
        before = _batch_totals(server, model.name) if target == "service" else (0.0, 0.0)
        url, mark = f"ws://{HOST}:{server.port}{path}", gc_mark(server)
        load = run_streams(url, n, Frames(frames), model.features, plan, ctx.pinning, server)
        after = _batch_totals(server, model.name) if target == "service" else (0.0, 0.0)
        batches = after[1] - before[1]
        rows.append(
            {
                "round": rnd,
                "target": target,
                "batching": batching,
                "frames": frames,
                "streams": n,
                "steps_per_s": load.steps_per_s,
                **_ms(load.rtt_ms),
                "steps": load.steps,
                "errors": load.errors,
                "client_cpu_util": load.client_cpu_s / load.window_s,
                "client_procs": load.client_procs,
                "mean_batch": (after[0] - before[0]) / batches if batches else None,
                "client_cpu_us_per_step": load.client_cpu_s * 1e6 / load.steps if load.steps else None,
                **server_costs(load.steps, load.window_s, load.server_cpu_s, load.threads, "step"),
                **gc_cost(server, mark),
            }
        )
    return {
        "model": model.name,
        "kind": model.kind,
        "load": "closed-loop streams (send a step, await its answer); asyncio + websockets, client processes",
        "echo": "WS /stream on the raw ASGI floor (text frames parsed with orjson) and the FastAPI "
        "echo (nothing "
        "parsed): one small JSON text answer per message",
        "rows": best_rounds(rows, ("target", "batching", "frames", "streams"), "steps_per_s"),
        "all_rounds": rows,
    }


# ------------------------------------------------------------------------------------------ first output


def run_first_output(ctx: Context) -> dict[str, Any]:
    plan, jobs, sources = ctx.plan, [], {}
    for kind in KINDS:
        if (model := ctx.models.get(kind)) is None:
            continue
        inputs, sources[kind] = sample_inputs(model.dataset, model.T, model.features, plan.sequences)
        url = f"ws://{HOST}:{ctx.on.port}/v1/models/{model.name}/stream"
        jobs.append(LatencyJob(kind, model.name, url, inputs, plan.period_ms / 1000.0))
    if not jobs:
        raise BenchError("no model to stream to")
    budget = 60.0 + sum(len(j.inputs) * (j.inputs.shape[1] * j.period_s + 0.5) for j in jobs)
    if not ctx.quiet:
        print(
            f"first output: streaming {plan.sequences} sequence(s) per kind ...", file=sys.stderr, flush=True
        )
    raw = run_in_client_process(stream_sequences, (jobs,), ctx.pinning, timeout_s=budget)
    kinds = [summarize(j.kind, j.model, raw[j.kind]).to_json() for j in jobs]
    return {"period_ms": plan.period_ms, "inputs": sources, "batching": "on", "kinds": kinds, "raw": raw}


# ---------------------------------------------------------------------------------------------- profiles


def run_profiles(ctx: Context, out_dir: Path, parts: list[str]) -> list[dict[str, Any]]:
    """Extra runs under py-spy: classify at 32 connections, one JSON stream, 256 binary streams on/off."""
    from bench.serving.profile import Recorder, py_spy_binary

    if py_spy_binary() is None:
        print("profile: py-spy is not installed (.venv/bin/pip install py-spy); skipped", file=sys.stderr)
        return [{"name": "all", "error": "py-spy not installed"}]
    seconds = max(2.0, ctx.plan.duration_s)
    out: list[dict[str, Any]] = []

    def record(name: str, server: ServerProcess, action) -> None:
        holder: list[Recorder] = []
        try:
            action(lambda: holder.append(Recorder(server.pid, seconds, out_dir, name, ctx.pinning)))
            out.append(holder[0].finish().to_json())
        except Exception as exc:  # a profiler that cannot attach must not lose the measurements
            out.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})

    if "classify" in parts:
        model = ctx.classify_model()
        body, path = classify_body(model.T, model.features, 1), f"/v1/models/{model.name}/classify"

        def wrk_action(start) -> None:
            start()
            run_wrk(
                ctx.on,
                path,
                body,
                ctx.work / "profile.body",
                connections=32,
                duration_s=seconds,
                pinning=ctx.pinning,
            )

        record("classify-b1-c32", ctx.on, wrk_action)
    if "streams" in parts:
        model = ctx.stream_model()
        scenarios = [
            ("stream-1-json-on", ctx.on, 1, Frames.JSON),
            ("stream-256-binary-on", ctx.on, 256, Frames.BINARY),
        ]
        if ctx.off is not None:
            scenarios.append(("stream-256-binary-off", ctx.off, 256, Frames.BINARY))
        for name, server, n, frames in progress(scenarios, desc="profiles", quiet=ctx.quiet):

            def ws_action(start, server=server, n=n, frames=frames) -> None:
                url = f"ws://{HOST}:{server.port}/v1/models/{model.name}/stream"
                plan = replace(ctx.plan, duration_s=seconds, warmup_s=0.5)
                run_streams(url, n, frames, model.features, plan, ctx.pinning, server, on_window=start)

            record(name, server, ws_action)
    return out


# ------------------------------------------------------------------------------------------ open-loop sweep


def _closed_loop_rate(rows: list[dict[str, Any]], rate: str, **match: Any) -> float | None:
    row = next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)
    return None if row is None else row[rate]


def run_sweep(
    ctx: Context, classify: dict[str, Any] | None, streaming: dict[str, Any] | None
) -> dict[str, Any]:
    """Open-loop constant-rate load at fractions of saturation (the closed-loop rate: wrk at 32 connections
    for classify, 64 closed-loop streams for steps), p50/p99/p99.9 from each request's due time."""
    from bench.serving.openloop import run_http, run_ws
    from bench.serving.ws import make_frames

    plan, rows = ctx.plan, []
    cmodel, smodel = ctx.classify_model(), ctx.stream_model(required=False)
    body = classify_body(cmodel.T, cmodel.features, 1)
    url = f"http://{HOST}:{ctx.on.port}/v1/models/{cmodel.name}/classify"
    sat = {
        "classify": _closed_loop_rate(
            (classify or {}).get("rows", []), "rps", target="service", format="json", batch=1, connections=32
        )
    }
    if sat["classify"] is None:
        r = run_wrk(
            ctx.on,
            url.split(str(ctx.on.port), 1)[1],
            body,
            ctx.work / "sweep.body",
            connections=32,
            duration_s=plan.duration_s,
            pinning=ctx.pinning,
        )
        sat["classify"] = r.rps
    jobs = [("classify", level) for level in plan.levels]
    if smodel is not None:
        ws_url = f"ws://{HOST}:{ctx.on.port}/v1/models/{smodel.name}/stream"
        frames = make_frames(Frames.BINARY, smodel.features, 0)
        sat["streams"] = _closed_loop_rate(
            (streaming or {}).get("rows", []),
            "steps_per_s",
            target="service",
            batching="on",
            frames="binary",
            streams=SWEEP_STREAMS,
        )
        if sat["streams"] is None:
            load = run_streams(
                ws_url, SWEEP_STREAMS, Frames.BINARY, smodel.features, plan, ctx.pinning, ctx.on
            )
            sat["streams"] = load.steps_per_s
        jobs += [("streams", level) for level in plan.levels]
    for workload, level in progress(jobs, desc="open-loop sweep", quiet=ctx.quiet):
        rate, mark = level * sat[workload], gc_mark(ctx.on)
        if workload == "classify":
            r = run_http(url, body.data, body.all_headers(), rate, plan.duration_s, ctx.pinning, ctx.on)
        else:
            r = run_ws(ws_url, SWEEP_STREAMS, frames, rate, plan.duration_s, ctx.pinning, ctx.on)
        gc = gc_cost(ctx.on, mark)
        rows.append({"workload": workload, "level": level, **r.to_json(), **_ms(r.latency_ms), **gc})
    return {
        "load": "open loop at a constant rate (latency from each request's due time, wrk2's way): classify = "
        "v1 JSON batch 1 over keep-alive connections opened as needed; streams = "
        f"{SWEEP_STREAMS} WebSocket streams, binary frames, steps pipelined",
        "saturation": sat
        | {
            "classify_from": "closed loop, wrk 32 connections",
            "streams_from": f"closed loop, {SWEEP_STREAMS} streams",
        },
        "classify_model": cmodel.name,
        "stream_model": None if smodel is None else smodel.name,
        "rows": rows,
    }
