"""The parts of the serving suite, each against servers that bench.serving.suite has started: classify (wrk),
streams (WebSocket client processes), first output (a fixed-rate stream per kind), profiles (py-spy)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchError, progress
from bench.serving.latency import LatencyJob, sample_inputs, stream_sequences, summarize
from bench.serving.models import KINDS, ModelRef
from bench.serving.procs import HOST, Pinning, ServerProcess, ThreadTimes, get
from bench.serving.wrk import Body, check_answer, classify_body, run_wrk, v2_binary_body
from bench.serving.ws import Frames, run_in_client_process, run_streams

STREAM_KIND_ORDER = ("sliding_psn", "lif", "masked_psn")  # the unbounded kinds first: no resets needed
_BATCH_METRIC = re.compile(r'^psn_step_batch_size_(sum|count)\{model="([^"]+)"\} ([0-9.e+]+)$', re.M)


@dataclass
class Context:
    plan: Any  # bench.serving.Plan
    pinning: Pinning
    work: Path
    models: dict[str, ModelRef]
    quiet: bool
    echo: ServerProcess
    on: ServerProcess
    off: ServerProcess | None


def best_rounds(rows: list[dict[str, Any]], keys: tuple[str, ...], rate: str) -> list[dict[str, Any]]:
    """Per configuration, the round with the highest rate (the least disturbed by other load on the shared
    cores), with every round's rate beside it."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    best = []
    for group in groups.values():
        top = max(group, key=lambda r: r[rate])
        best.append({**top, "rounds": len(group), f"{rate}_rounds": [r[rate] for r in group]})
    return best


def _per(cpu_s: float | None, count: int) -> float | None:
    """CPU microseconds per request or step: what a run costs, however busy the shared cores were."""
    return None if cpu_s is None or count == 0 else cpu_s * 1e6 / count


def _threads(times: ThreadTimes | None, count: int) -> dict[str, float | None]:
    """Per request or step: CPU us of the server's main (event loop) thread and of its other threads (ORT
    worker, executor), and context switches of all its threads."""
    if times is None or count == 0:
        return {"main_thread_us": None, "other_threads_us": None, "switches": None}
    return {
        "main_thread_us": times.main_cpu_s * 1e6 / count,
        "other_threads_us": times.other_cpu_s * 1e6 / count,
        "switches": times.switches / count,
    }


def _ms(latency: dict[str, float]) -> dict[str, float]:
    return {f"{k}_ms": v for k, v in latency.items()}


# ---------------------------------------------------------------------------------------------- classify


def _classify_model(ctx: Context) -> ModelRef:
    return ctx.models.get("psn") or next(iter(ctx.models.values()))


def _classify_targets(ctx: Context, model: ModelRef, batch: int) -> dict[tuple[str, str], tuple]:
    """(target, format) -> (server, path, Body): the service and the echo app, for every body format."""
    out = {}
    for fmt in ctx.plan.formats:
        if fmt == "json":
            body, path = (
                Body(classify_body(model.T, model.features, batch)),
                f"/v1/models/{model.name}/classify",
            )
        else:
            body, path = v2_binary_body(model.T, model.features, batch), f"/v2/models/{model.name}/infer"
        out[("service", fmt)] = (ctx.on, path, body)
        out[("echo", fmt)] = (ctx.echo, "/echo", body)
    return out


def run_classify(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    model = _classify_model(ctx)
    targets: dict[tuple[str, str, int], tuple[ServerProcess, str, Body, Path]] = {}
    for batch in plan.batches:
        for (target, fmt), (server, path, body) in _classify_targets(ctx, model, batch).items():
            file = ctx.work / f"classify-{target}-{fmt}-b{batch}.body"
            file.write_bytes(body.data)
            expect = "ok" if target == "echo" else ("predictions" if fmt == "json" else "outputs")
            answer = check_answer(server, path, body, expect)
            if target == "service" and fmt == "json" and len(answer["predictions"]) != batch:
                raise BenchError(
                    f"classify of a batch of {batch} gave {len(answer['predictions'])} predictions"
                )
            targets[(target, fmt, batch)] = (server, path, body, file)
    if plan.duration_s >= 2:  # warm both servers (first requests, allocator, caches) before counting
        for server, path, body, file in targets.values():
            run_wrk(server, path, file, body=body, connections=8, duration_s=1, pinning=ctx.pinning)
    points = [(r, key, c) for r in range(plan.rounds) for key in targets for c in plan.connections]
    rows = []
    for rnd, (target, fmt, batch), conns in progress(points, desc="classify (wrk)", quiet=ctx.quiet):
        server, path, body, file = targets[(target, fmt, batch)]
        r = run_wrk(server, path, file, body=body, connections=conns, duration_s=plan.duration_s,
                    pinning=ctx.pinning)  # fmt: skip
        errors = sum(r.errors.values())
        if errors:
            print(f"warning: {target} {fmt} batch {batch}, {conns} conns: errors {r.errors}", file=sys.stderr)
        rows.append({
            "round": rnd, "target": target, "format": fmt, "batch": batch, "connections": conns, "rps": r.rps,
            "seq_per_s": r.rps * batch,
            **_ms(r.latency_ms), "errors": errors, "error_kinds": r.errors, "requests": r.requests,
            "duration_s": r.duration_s, "server_cpu_util": r.server_cpu_util,
            "server_cpu_us_per_request": _per(r.server_cpu_s, r.requests), **_threads(r.threads, r.requests),
        })  # fmt: skip
    return {
        "model": model.name,
        "kind": model.kind,
        "paths": {f"{t}/{f}": p for (t, f, _), (_, p, _, _) in targets.items()},
        "body_bytes": {f"{t}/{f}/b{b}": len(body.data) for (t, f, b), (_, _, body, _) in targets.items()},
        "formats": {
            "json": "POST /v1/models/{name}/classify, a JSON body {inputs: [[...]]}",
            "v2-binary": "POST /v2/models/{name}/infer, JSON header + float32 tensor (binary extension), "
            "label_index answered binary",
        },
        "load": "wrk -t1 -cN, keep-alive, one pre-built POST (bench/serving/post_json.lua)",
        "echo": "POST /echo with the same body: reads it, answers a small JSON; no parsing, no model",
        "rows": best_rounds(rows, ("target", "format", "batch", "connections"), "rps"),
        "all_rounds": rows,
    }


# ---------------------------------------------------------------------------------------------- raw ORT


def run_raw(ctx: Context, providers: list[str] | None = None) -> dict[str, Any]:
    """The model's raw ONNX Runtime cost, on the server's core: the classify model's full graph (batch 1)
    and the stream model's step graph (batch 1 and 64); see bench.serving.raw."""
    from bench.serving.raw import measure_pinned

    dirs = []
    for model in (_classify_model(ctx), _stream_model_or_none(ctx)):
        if model is not None and Path(model.directory) not in dirs:
            dirs.append(Path(model.directory))
    seconds = min(2.0, max(0.3, ctx.plan.duration_s / 2))
    if not ctx.quiet:
        print(f"raw ORT cost: {len(dirs)} model(s), {seconds:g} s per graph ...", file=sys.stderr, flush=True)
    models = measure_pinned(dirs, seconds, ctx.pinning.server, providers)
    return {
        "method": "session.run in a process pinned to the server's core, sessions made as the runtime makes "
        "them; median per call (full graph batch 1; step graph batch 1 and 64, per step = call / 64)",
        "seconds_per_graph": seconds,
        "models": models,
    }


# ----------------------------------------------------------------------------------------------- streams


def _stream_model_or_none(ctx: Context) -> ModelRef | None:
    for kind in STREAM_KIND_ORDER:
        if kind in ctx.models and ctx.models[kind].streams:
            return ctx.models[kind]
    return None


def _stream_model(ctx: Context) -> ModelRef:
    model = _stream_model_or_none(ctx)
    if model is None:
        raise BenchError("no streaming model (sliding_psn, lif or masked_psn) to stream to")
    return model


def _batch_totals(server: ServerProcess, model: str) -> tuple[float, float]:
    """(sum, count) of the server's step batch size histogram for model."""
    status, text = get(server.port, "/metrics", timeout=10)
    if status != 200:
        return 0.0, 0.0
    totals = {kind: float(v) for kind, name, v in _BATCH_METRIC.findall(text.decode()) if name == model}
    return totals.get("sum", 0.0), totals.get("count", 0.0)


def run_streams_part(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    model = _stream_model(ctx)
    service_path = f"/v1/models/{model.name}/stream"
    targets = [("service", "on", ctx.on, service_path), ("echo", "-", ctx.echo, "/stream")]
    if ctx.off is not None:
        targets.insert(1, ("service", "off", ctx.off, service_path))
    points = [
        (r, f, n, t) for r in range(plan.rounds) for f in plan.frames for n in plan.streams for t in targets
    ]
    rows = []
    for rnd, frames, n, (target, batching, server, path) in progress(points, desc="streams", quiet=ctx.quiet):
        before = _batch_totals(server, model.name) if target == "service" else (0.0, 0.0)
        load = run_streams(
            f"ws://{HOST}:{server.port}{path}", streams=n, frames=Frames(frames), features=model.features,
            duration_s=plan.duration_s, warmup_s=plan.warmup_s, client_procs=plan.client_procs,
            pinning=ctx.pinning, server=server,
        )  # fmt: skip
        after = _batch_totals(server, model.name) if target == "service" else (0.0, 0.0)
        batches = after[1] - before[1]
        rows.append({
            "round": rnd, "target": target, "batching": batching, "frames": frames, "streams": n,
            "steps_per_s": load.steps_per_s, **_ms(load.rtt_ms), "steps": load.steps, "errors": load.errors,
            "server_cpu_util": load.server_cpu_util, "client_cpu_util": load.client_cpu_util,
            "client_procs": load.client_procs,
            "mean_batch": (after[0] - before[0]) / batches if batches else None,
            "server_cpu_us_per_step": _per(load.server_cpu_s, load.steps),
            "client_cpu_us_per_step": _per(load.client_cpu_s, load.steps),
            **_threads(load.threads, load.steps),
        })  # fmt: skip
    return {
        "model": model.name,
        "kind": model.kind,
        "load": "closed-loop streams (send a step, await its answer); asyncio + websockets, client processes",
        "echo": "WS /stream on the echo app: one small JSON text answer per message, nothing parsed",
        "rows": best_rounds(rows, ("target", "batching", "frames", "streams"), "steps_per_s"),
        "all_rounds": rows,
    }


# ------------------------------------------------------------------------------------------ first output


def run_first_output(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    jobs, sources = [], {}
    for kind in KINDS:
        model = ctx.models.get(kind)
        if model is None:
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
    plan = ctx.plan
    seconds = max(2.0, plan.duration_s)
    out: list[dict[str, Any]] = []

    def record(name: str, server: ServerProcess, action) -> None:
        holder: list[Recorder] = []
        try:
            action(lambda: holder.append(Recorder(server.pid, seconds, out_dir, name, ctx.pinning)))
            out.append(holder[0].finish().to_json())
        except Exception as exc:  # a profiler that cannot attach must not lose the measurements
            out.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})

    if "classify" in parts:
        model = _classify_model(ctx)
        body = ctx.work / "profile-classify-b1.json"
        body.write_bytes(classify_body(model.T, model.features, 1))
        path = f"/v1/models/{model.name}/classify"

        def wrk_action(start) -> None:
            start()
            run_wrk(ctx.on, path, body, connections=32, duration_s=seconds, pinning=ctx.pinning)

        record("classify-b1-c32", ctx.on, wrk_action)
    if "streams" in parts:
        model = _stream_model(ctx)
        scenarios = [
            ("stream-1-json-on", ctx.on, 1, Frames.JSON),
            ("stream-256-binary-on", ctx.on, 256, Frames.BINARY),
        ]
        if ctx.off is not None:
            scenarios.append(("stream-256-binary-off", ctx.off, 256, Frames.BINARY))
        for name, server, n, frames in progress(scenarios, desc="profiles", quiet=ctx.quiet):

            def ws_action(start, server=server, n=n, frames=frames) -> None:
                run_streams(
                    f"ws://{HOST}:{server.port}/v1/models/{model.name}/stream", streams=n, frames=frames,
                    features=model.features, duration_s=seconds, warmup_s=0.5, client_procs=plan.client_procs,
                    pinning=ctx.pinning, server=server, on_window=start,
                )  # fmt: skip

            record(name, server, ws_action)
    return out
