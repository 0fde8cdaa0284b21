"""``psn bench runtime``: psn_runtime overhead and cross-stream step batching over ONNX Runtime sessions:
``Runtime.classify`` against a raw ``session.run`` of full.onnx (batch 1, 64; goal ratio <= 1.2), closed-loop
streams at 1, 16, 256 with batching on and off (goal >= 3x steps/s at 256), raw step.onnx as the reference.
Models from --models-dir (models/), else tiny untrained ones. Writes docs/bench-runtime.json."""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import common, raw
from bench.models import export_tiny
from psn_runtime import ModelStatus, Runtime, RuntimeConfig
from psn_runtime.manifest import MANIFEST_FILE

STREAM_COUNTS = (1, 16, 256)
CLASSIFY_BATCHES = (1, 64)
GOAL_RATIO = 1.2
GOAL_BATCHING = 3.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = common.arguments("psn bench runtime", __doc__, "folder for bench-runtime.json")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="model directories (models/)")
    p.add_argument("--model", nargs="+", help="models to run (default: all READY ones)")
    p.add_argument("--providers", nargs="+", help="execution providers (default: the runtime's default)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per session (default 1)")
    p.add_argument("--max-batch", type=int, default=64, help="runtime max_batch (default 64)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timing per measurement (default 1)")
    return p.parse_args(argv)


def bench_classify(rt: Runtime, name: str, budget: float, config: RuntimeConfig) -> list[dict[str, Any]]:
    model = raw.load(rt.model(name).directory, config.providers, config.intra_op_threads)
    rows = []
    for batch in CLASSIFY_BATCHES:
        m = model.manifest
        x = np.random.default_rng(0).random((batch, m.T, *m.input_shape), dtype=np.float32)  # [B, T, *shape]
        t = common.time_interleaved(
            {"raw": raw.full_call(model, batch), "runtime": lambda x=x: rt.classify(name, x)},
            budget_s=budget,
            max_repeats=400,
        )
        ratios = [r / w for r, w in zip(t["runtime"].samples, t["raw"].samples, strict=True)]
        rows.append(
            {
                "model": name,
                "batch": batch,
                "raw_us_per_seq": t["raw"].median_s / batch * 1e6,
                "runtime_us_per_seq": t["runtime"].median_s / batch * 1e6,
                "overhead_us_per_call": (t["runtime"].median_s - t["raw"].median_s) * 1e6,
                "ratio": statistics.median(ratios),
                "ratio_of_minima": t["runtime"].min_s / t["raw"].min_s,
                "rounds": t["raw"].repeats,
            }
        )
    return rows


async def _closed_loop(rt: Runtime, name: str, streams: int, budget: float) -> dict[str, Any]:
    m = rt.model(name).manifest
    xs = np.random.default_rng(1).standard_normal((streams, m.T, *m.input_shape)).astype(np.float32)
    ids = [await rt.open_stream(name) for _ in range(streams)]
    limit = rt.stats()["models"][name]["max_steps_per_stream"]
    latencies: list[float] = []
    counts = [0] * streams
    taken = [0] * streams  # per stream, since its last reset

    async def client(i: int, deadline: float) -> None:
        while time.perf_counter() < deadline:
            if taken[i] >= limit:
                rt.reset_stream(ids[i])
                taken[i] = 0
            t0 = time.perf_counter()
            await rt.step(ids[i], xs[i, taken[i] % m.T])
            latencies.append(time.perf_counter() - t0)
            taken[i] += 1
            counts[i] += 1

    warm = time.perf_counter() + min(0.2, budget / 4)
    await asyncio.gather(*(client(i, warm) for i in range(streams)))
    latencies.clear()
    counts[:] = [0] * streams
    start = time.perf_counter()
    await asyncio.gather(*(client(i, start + budget) for i in range(streams)))
    elapsed = time.perf_counter() - start
    for sid in ids:
        rt.close_stream(sid)
    total = sum(counts)
    return {
        "steps": total,
        "seconds": elapsed,
        "steps_per_s": total / elapsed,
        "us_per_step": elapsed / total * 1e6,
        "latency_p50_us": statistics.median(latencies) * 1e6,
        "latency_p99_us": float(np.percentile(latencies, 99)) * 1e6,
    }


def bench_steps(config: RuntimeConfig, name: str, budget: float) -> list[dict[str, Any]]:
    rows = []
    for batching in (True, False):
        rt = Runtime(config.model_copy(update={"batching": batching, "max_streams": max(STREAM_COUNTS)}))
        rt.load()

        async def run_all(rt: Runtime = rt, batching: bool = batching) -> list[dict[str, Any]]:
            out = [
                {"model": name, "batching": batching, "streams": n} | await _closed_loop(rt, name, n, budget)
                for n in STREAM_COUNTS
            ]
            await rt.close()
            return out

        rows += asyncio.run(run_all())
    return rows


def bench_raw_step(rt: Runtime, name: str, max_batch: int, budget: float, config: RuntimeConfig) -> dict:
    model = raw.load(rt.model(name).directory, config.providers, config.intra_op_threads)
    t = common.time_interleaved(
        {"b1": raw.step_call(model, 1), "max": raw.step_call(model, max_batch)}, budget_s=budget
    )
    return {
        "model": name,
        "batch1_us": t["b1"].median_s * 1e6,
        "max_batch_us": t["max"].median_s / max_batch * 1e6,
    }


def _models_dir(models_dir: Path, tmp: Path) -> tuple[Path, str]:
    if models_dir.is_dir() and any((d / MANIFEST_FILE).is_file() for d in models_dir.iterdir() if d.is_dir()):
        return models_dir, f"model directories under {models_dir}"
    return export_tiny(tmp), "untrained export (no models found)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="psn-bench-runtime-") as tmp:
        models_dir, source = _models_dir(args.models_dir, Path(tmp))
        update: dict[str, Any] = {"models_dir": models_dir, "intra_op_threads": args.threads}
        update |= {"max_batch": args.max_batch} | ({"providers": args.providers} if args.providers else {})
        config = RuntimeConfig(**update)
        rt = Runtime(config)
        rt.load()
        names = args.model or [i.name for i in rt.models() if i.status is ModelStatus.READY]
        streaming = [n for n in names if rt.model(n).manifest.streams]
        if args.quick:
            names, streaming = streaming[:1] or names[:1], streaming[:1]
        budget = min(args.budget, 0.3) if args.quick else args.budget
        env = common.environment(
            onnxruntime=ort.__version__,
            available_providers=ort.get_available_providers(),
            numpy=np.__version__,
            models={
                i.name: {"kind": str(i.manifest.kind), "providers": i.providers}
                for i in rt.models()
                if i.manifest
            },
        )
        result: dict[str, Any] = {
            "suite": "runtime",
            "models_source": source,
            "models_dir": str(args.models_dir),
            "config": config.model_dump(mode="json"),
            "environment": env,
            "classify": [],
            "steps": [],
            "raw_step": [],
        }
        jobs = [("classify", n) for n in names] + [("steps", n) for n in streaming]
        for job, name in common.progress(jobs, desc="runtime bench", quiet=args.quiet):
            if job == "classify":
                result["classify"] += bench_classify(rt, name, budget, config)
            else:
                result["steps"] += bench_steps(config, name, budget)
                result["raw_step"].append(bench_raw_step(rt, name, args.max_batch, budget, config))
        asyncio.run(rt.close())
    by_key = {(r["model"], r["streams"], r["batching"]): r for r in result["steps"]}
    result["batching_speedup"] = [
        {
            "model": m,
            "streams": n,
            "speedup": by_key[(m, n, True)]["steps_per_s"] / by_key[(m, n, False)]["steps_per_s"],
        }
        for (m, n, b) in by_key
        if b
    ]
    result["goals"] = [g.to_json() for g in goals(result)]
    env["loadavg_end"] = common.load_average()
    return result


def goals(result: dict[str, Any]) -> list[common.Goal]:
    out = [
        common.goal(
            f"Runtime.classify / raw, {r['model']}, batch {r['batch']}", r["ratio"], GOAL_RATIO, at_most=True
        )
        for r in result["classify"]
    ]
    out += [
        common.goal(f"batching speed-up, {s['model']}, {s['streams']} streams", s["speedup"], GOAL_BATCHING)
        for s in result["batching_speedup"]
        if s["streams"] == max(STREAM_COUNTS)
    ]
    return out


def tables(result: dict[str, Any]) -> str:
    classify = (
        f"model | batch | raw ORT us/seq=raw_us_per_seq | Runtime.classify us/seq=runtime_us_per_seq | "
        f"ratio (goal <= {GOAL_RATIO})=ratio | ratio of minima=ratio_of_minima | "
        "overhead us/call=overhead_us_per_call"
    )
    steps = (
        "model | streams | batching=on | us/step=us_per_step | steps/s=steps_per_s | "
        "latency p50 us=latency_p50_us | p99 us=latency_p99_us"
    )
    speedup = f"model | streams | speed-up from batching (goal >= {GOAL_BATCHING:g} at 256)=speedup"
    raw_step = "model | raw step.onnx us/step, batch 1=batch1_us | raw us/step at max_batch=max_batch_us"
    on = [r | {"on": "on" if r["batching"] else "off"} for r in result["steps"]]
    max_batch = result["config"]["max_batch"]
    return "\n\n".join(
        [
            common.table(
                result["classify"], classify, "classify: raw session.run vs Runtime.classify, per sequence"
            ),
            common.table(on, steps, "stream steps: closed-loop clients, one step in flight per stream"),
            common.table(result["batching_speedup"], speedup, "steps/s with batching / without"),
            common.table(
                result["raw_step"],
                raw_step,
                f"reference: raw session.run of step.onnx (max_batch {max_batch})",
            ),
            common.goals_table([common.Goal(**g) for g in result["goals"]]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args([] if argv is None else list(argv))
    # the runtime warns once per session when CUDA falls back to CPU: the JSON records the providers instead
    logging.getLogger("psn_runtime").setLevel(logging.ERROR)
    ort.set_default_logger_severity(4)  # and ORT's own log of that fallback, once per session
    result = run(args)
    print(tables(result))
    common.write_outputs(args.out / "bench-runtime.json", result)
    return 0
