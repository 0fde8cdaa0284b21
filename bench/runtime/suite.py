"""``psn bench runtime``: psn_runtime overhead and cross-stream step batching, over ONNX Runtime sessions.

- classify: µs per sequence at batch 1 and 64, a raw ``session.run`` of full.onnx vs ``Runtime.classify``
  (same session; the goal is a ratio <= 1.2).
- steps: µs per step and steps/s at 1, 16 and 256 concurrent streams, batching on and off. Each stream is
  a closed-loop client (it sends its next step when the last is answered), as behind a WebSocket. The
  goal is >= 3x the steps/s with batching at 256 streams. A raw ``session.run`` of step.onnx at batch 1
  and at max_batch is the reference.

Uses the bundled models under models/ when there are any, else exports untrained models of the same
shape (sequential MNIST, conv arch, T = 28, F = 28) into a temporary folder (that needs torch).
Writes docs/bench-runtime.json.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import common
from bench.runtime.report import tables
from psn_runtime import ModelStatus, Runtime, RuntimeConfig
from psn_runtime.manifest import INPUT_NAME, LOGITS_NAME, MANIFEST_FILE

CPU_DEVICE = SimpleNamespace(type="cpu")  # bench.common's timers only synchronize CUDA devices
STREAM_COUNTS = (1, 16, 256)
CLASSIFY_BATCHES = (1, 64)
OUTPUTS = [LOGITS_NAME]
FALLBACK_KINDS = {"psn": None, "masked_psn": 4, "sliding_psn": 4, "lif": None}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="psn bench runtime", description=__doc__.splitlines()[0])
    p.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="model directories (default models/)"
    )
    p.add_argument("--model", nargs="+", help="models to run (default: all READY ones)")
    p.add_argument("--out", type=Path, default=common.DEFAULT_OUT, help="folder for bench-runtime.json")
    p.add_argument("--providers", nargs="+", help="execution providers (default: the runtime's default)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per session (default 1)")
    p.add_argument("--max-batch", type=int, default=64, help="runtime max_batch (default 64)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timing per measurement (default 1)")
    p.add_argument("--quick", action="store_true", help="one streaming model, short budgets (smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- models


def _has_models(models_dir: Path) -> bool:
    return models_dir.is_dir() and any(
        (d / MANIFEST_FILE).is_file() for d in models_dir.iterdir() if d.is_dir()
    )


def export_fallback_models(out: Path) -> Path:
    """Untrained sequential-MNIST-shaped models of every kind (conv arch, T=28, F=28, channels 16)."""
    from exporters import export_model
    from psn.network import NetConfig, SeqClassifier

    for kind, k in FALLBACK_KINDS.items():
        cfg = NetConfig(
            T=28, features=28, classes=10, kind=kind, k=k, arch="conv", channels=16, depth=2, hidden=128
        )
        model = SeqClassifier(cfg)
        model.set_lambda(1.0)
        export_model(
            model.eval(),
            out / f"smnist-{kind}",
            name=f"smnist-{kind}",
            dataset="none (untrained, for timing)",
            test_accuracy=0.0,
            command="bench/runtime/suite.py export_fallback_models",
        )
    return out


# ------------------------------------------------------------------------------------------- classify


def time_paired(raw, runtime, budget: float, block_s: float = 0.004) -> dict[str, float]:
    """Median seconds per call of raw and runtime, timed as adjacent blocks (their order alternating each
    round) so that load from other processes hits both alike; ratio = median of the per-round ratios."""
    raw(), runtime()  # cold calls
    t0 = time.perf_counter()
    raw()
    inner = max(1, min(2000, math.ceil(block_s / max(time.perf_counter() - t0, 1e-7))))
    raws: list[float] = []
    runs: list[float] = []
    deadline = time.perf_counter() + budget
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 400):
        pair = {}
        for which in ("raw", "runtime") if rounds % 2 == 0 else ("runtime", "raw"):
            fn = raw if which == "raw" else runtime
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            pair[which] = (time.perf_counter() - t0) / inner
        raws.append(pair["raw"])
        runs.append(pair["runtime"])
        rounds += 1
    return {
        "raw_s": statistics.median(raws),
        "runtime_s": statistics.median(runs),
        "ratio": statistics.median(r / w for r, w in zip(runs, raws, strict=True)),
        "ratio_of_minima": min(runs) / min(raws),
        "rounds": rounds,
        "inner": inner,
    }


class _FixedSession:
    """Stands in for an ORT session: returns precomputed outputs, so that only the runtime's work is timed."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.outputs


def runtime_only_us(rt: Runtime, name: str, x: np.ndarray, budget: float) -> float:
    """Best-case µs per Runtime.classify call spent outside ORT (validation, softmax, result): the session is
    replaced by one that returns the real output at once. The minimum over blocks resists load."""
    model = rt._models[name]
    real = model.full
    model.full = _FixedSession(real.run(OUTPUTS, {INPUT_NAME: x}))
    try:
        blocks = []
        deadline = time.perf_counter() + budget
        while len(blocks) < 5 or (time.perf_counter() < deadline and len(blocks) < 200):
            t0 = time.perf_counter()
            for _ in range(200):
                rt.classify(name, x)
            blocks.append((time.perf_counter() - t0) / 200)
    finally:
        model.full = real
    return min(blocks) * 1e6


def bench_classify(rt: Runtime, name: str, budget: float) -> list[dict[str, Any]]:
    model = rt._models[name]  # the very session Runtime.classify runs: only the runtime's own work differs
    m = model.manifest
    session = model.full
    rows = []
    for batch in CLASSIFY_BATCHES:
        x = np.random.default_rng(0).standard_normal((batch, m.T, *m.input_shape)).astype(np.float32)
        t = time_paired(
            lambda x=x: session.run(OUTPUTS, {INPUT_NAME: x}), lambda x=x: rt.classify(name, x), budget
        )
        rows.append(
            {
                "model": name,
                "batch": batch,
                "raw_us_per_seq": t["raw_s"] / batch * 1e6,
                "runtime_us_per_seq": t["runtime_s"] / batch * 1e6,
                "overhead_us_per_call": (t["runtime_s"] - t["raw_s"]) * 1e6,
                "ratio": t["ratio"],
                "ratio_of_minima": t["ratio_of_minima"],
                "rounds": t["rounds"],
                "runtime_only_us_per_call": runtime_only_us(rt, name, x, budget / 4),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------- steps


def bench_raw_step(rt: Runtime, name: str, batch: int, budget: float) -> float:
    """Seconds per step of one raw session.run of step.onnx at this batch, divided by the batch."""
    model = rt._models[name]
    m = model.manifest
    feed = {INPUT_NAME: np.random.default_rng(0).standard_normal((batch, *m.input_shape)).astype(np.float32)}
    for s in m.states:
        feed[s.input] = np.full((batch, *s.shape), s.init, dtype=s.dtype)
    names = [LOGITS_NAME] + [s.output for s in m.states]
    t = common.time_interleaved({"raw": lambda: model.step.run(names, feed)}, CPU_DEVICE, budget_s=budget)
    return t["raw"].median_s / batch


async def _closed_loop(rt: Runtime, name: str, streams: int, budget: float) -> dict[str, Any]:
    m = rt.model(name).manifest
    xs = np.random.default_rng(1).standard_normal((streams, m.T, *m.input_shape)).astype(np.float32)
    ids = [await rt.open_stream(name) for _ in range(streams)]
    limit = rt.stats()["models"][name]["max_steps_per_stream"]
    latencies: list[float] = []
    counts = [0] * streams
    steps_taken = [0] * streams  # per stream, since its last reset

    async def client(i: int, deadline: float) -> None:
        while time.perf_counter() < deadline:
            if steps_taken[i] >= limit:
                rt.reset_stream(ids[i])
                steps_taken[i] = 0
            t0 = time.perf_counter()
            await rt.step(ids[i], xs[i, steps_taken[i] % m.T])
            latencies.append(time.perf_counter() - t0)
            steps_taken[i] += 1
            counts[i] += 1

    await asyncio.gather(
        *(client(i, time.perf_counter() + min(0.2, budget / 4)) for i in range(streams))
    )  # warm
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
            out = []
            for n in STREAM_COUNTS:
                out.append(
                    {"model": name, "batching": batching, "streams": n}
                    | await _closed_loop(rt, name, n, budget)
                )
            await rt.close()
            return out

        rows += asyncio.run(run_all())
    return rows


# ------------------------------------------------------------------------------------------- report


def environment(rt: Runtime) -> dict[str, Any]:
    return {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": common.cpu_model(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_start": common.load_average(),
        "note": common.SHARED_MACHINE_NOTE,
        "models": {
            i.name: {"kind": str(i.manifest.kind), "providers": i.providers}
            for i in rt.models()
            if i.manifest
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp: Path | None = None
    models_dir = args.models_dir
    source = f"model directories under {args.models_dir}"
    if not _has_models(models_dir):
        tmp = Path(tempfile.mkdtemp(prefix="psn-bench-runtime-"))
        models_dir = export_fallback_models(tmp)
        source = "untrained export (no bundled models found)"
    try:
        update: dict[str, Any] = {"models_dir": models_dir, "intra_op_threads": args.threads}
        update["max_batch"] = args.max_batch
        if args.providers:
            update["providers"] = args.providers
        config = RuntimeConfig(**update)
        rt = Runtime(config)
        rt.load()
        ready = [i for i in rt.models() if i.status is ModelStatus.READY]
        names = args.model or [i.name for i in ready]
        streaming = [n for n in names if rt.model(n).manifest.streams]
        if args.quick:
            names = streaming[:1] or names[:1]
            streaming = streaming[:1]
        budget = min(args.budget, 0.3) if args.quick else args.budget
        result: dict[str, Any] = {
            "suite": "runtime",
            "models_source": source,
            "models_dir": str(args.models_dir),
            "config": config.model_dump(mode="json"),
            "environment": environment(rt),
            "classify": [],
            "steps": [],
            "raw_step": [],
        }
        jobs = [("classify", n) for n in names] + [("steps", n) for n in streaming]
        for job, name in common.progress(jobs, desc="runtime bench", quiet=args.quiet):
            if job == "classify":
                result["classify"] += bench_classify(rt, name, budget)
            else:
                result["steps"] += bench_steps(config, name, budget)
                result["raw_step"].append(
                    {
                        "model": name,
                        "batch1_us": bench_raw_step(rt, name, 1, budget / 2) * 1e6,
                        "max_batch_us": bench_raw_step(rt, name, args.max_batch, budget / 2) * 1e6,
                    }
                )
        asyncio.run(rt.close())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
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
    result["environment"]["loadavg_end"] = common.load_average()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args([] if argv is None else list(argv))
    # the runtime warns once per session when CUDA falls back to CPU: the JSON records the providers instead
    logging.getLogger("psn_runtime").setLevel(logging.ERROR)
    ort.set_default_logger_severity(4)  # and ORT's own log of that fallback, once per session
    result = run(args)
    print(tables(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench-runtime.json"
    common.write_json(path, result)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
