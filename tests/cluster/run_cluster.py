"""make cluster-test: three psn serve replicas behind nginx; streams survive losing their replica.

As root: three network namespaces (10.200.{0,1,2}.2, each reached over its own veth pair from the root
namespace, as three hosts would be), ``psn serve`` in each with a shared stream secret, nginx on loopback in
front (deploy/nginx/psn-serve.conf rendered for these replicas). 100 resumable streams (masked PSN,
sliding PSN, LIF) and a classify load go through nginx; mid-run one replica is SIGKILLed and another
SIGTERMed (drain), then both are started again. Checks:

- every stream's answers equal an uninterrupted run in this process (labels equal, probabilities within
  1e-6), step by step;
- no classify request fails (nginx retries another replica; an answer cut after its header by the SIGKILL,
  which nginx cannot retry, is asked once more by the load client, counted, and allowed at the kill only)
  and each answer equals the local one;
- every stream open on the SIGKILLed or SIGTERMed replica resumed on another one;
- the restarted replicas come back and serve.

Writes docs/cluster-test.json and docs/cluster-test.png (streams per replica over time, step latency
around the kills). Bounded (a hard alarm), and the namespaces, processes and files are removed on
success, failure, Ctrl-C or SIGTERM. Traffic goes only to loopback and to these namespaces.

    sudo .venv/bin/python tests/cluster/run_cluster.py [--streams 100] [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from psn_runtime import Runtime, RuntimeConfig
from server.client import AsyncPSNClient, RetryPolicy
from tests.cluster.cluster import (
    REPO,
    Cluster,
    Net,
    execute,
    replica_at,
    report,
    uninterrupted,
    upstream_replica,
)

REPLICAS = 3
NET = Net("psn-ct", "psnct", 200)  # namespaces psn-ct0..2, 10.200.0-2.0/30
STREAM_MODELS = ("smnist-masked-psn", "smnist-sliding-psn", "smnist-lif")
CLASSIFY_MODEL = "smnist-psn"
STEPS = 196  # per stream (masked PSN: 7 sequences of T=28, reset between)
PACE_S = 0.05  # client think time between steps
STAGGER_S = 1.0  # streams open over this long
KILL_AT, TERM_AT, RESTART_AT = 4.0, 7.0, 8.0  # seconds after the load starts
SNAPSHOT_EVERY = 8
DEADLINE_S = 170  # the whole run, setup and cleanup included


# -- load -------------------------------------------------------------------------------------------------
@dataclass
class StreamRun:
    index: int
    model: str
    reset_every: int | None  # masked PSN: T
    inputs: np.ndarray  # [STEPS, F]
    answers: list[tuple[int, str | None, list[float] | None]] = field(default_factory=list)
    expected: list[tuple[int, str | None, np.ndarray | None]] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, seconds)
    connections: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, replica)
    finished: float = 0.0
    error: str | None = None


def _replica(connection) -> int:
    """Which replica nginx sent a connection to."""
    return upstream_replica(NET, connection.response.headers)


async def stream_load(client: AsyncPSNClient, run: StreamRun, t0: float, delay: float) -> None:
    policy = RetryPolicy(retries=20, backoff_s=0.05, max_backoff_s=1.0, step_timeout_s=20)
    await asyncio.sleep(delay)
    try:
        opened = client.stream(run.model, resumable=True, snapshot_every=SNAPSHOT_EVERY, retry=policy)
        async with opened as stream:
            conn = stream.connection
            run.connections.append((time.monotonic() - t0, _replica(conn)))
            for j, x in enumerate(run.inputs):
                if run.reset_every and j and j % run.reset_every == 0:
                    await stream.reset()
                started = time.monotonic()
                step = await stream.step(x)
                run.latencies.append((started - t0, time.monotonic() - started))
                if stream.connection is not conn:
                    conn = stream.connection
                    run.connections.append((time.monotonic() - t0, _replica(conn)))
                run.answers.append((step.t, step.label, step.probabilities))
                await asyncio.sleep(PACE_S)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}: " + "".join(traceback.format_exception(exc)[-6:])
    run.finished = time.monotonic() - t0


async def classify_load(
    base: str, xs: np.ndarray, want: list[str], stop: asyncio.Event, t0: float, out: list
):
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        i = 0
        while not stop.is_set():
            k = i % len(xs)
            started = time.monotonic()
            record = {"t": started - t0, "ok": False, "replica": -1}
            body = {"inputs": xs[k].tolist()}
            try:
                try:
                    r = await http.post(f"/v1/models/{CLASSIFY_MODEL}/classify", json=body)
                except httpx.RemoteProtocolError as exc:
                    # the answer was cut after its header: its replica died between writing the header and
                    # the body, and nginx cannot retry what it has begun to answer. Classify is a pure
                    # function of its body: asked once more, as a client would (check: only at the SIGKILL)
                    record["cut"] = str(exc)
                    r = await http.post(f"/v1/models/{CLASSIFY_MODEL}/classify", json=body)
                label = r.json()["predictions"][0]["label"] if r.status_code == 200 else None
                record.update(status=r.status_code, ok=r.status_code == 200 and label == want[k])
                record["replica"] = upstream_replica(NET, r.headers)
                if r.status_code == 200 and label != want[k]:
                    record["error"] = f"label {label!r}, expected {want[k]!r}"
            except Exception as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            record["latency"] = time.monotonic() - started
            out.append(record)
            i += 1
            await asyncio.sleep(0.01)


async def reference(models_dir: Path, runs: list[StreamRun], xs: np.ndarray) -> list[str]:
    """The uninterrupted answers, in this process: every stream on one runtime, and the classify labels."""
    rt = Runtime(RuntimeConfig(models_dir=models_dir, providers=["CPUExecutionProvider"]))
    await rt.start()
    try:

        async def one(run: StreamRun) -> None:
            run.expected = await uninterrupted(rt, run.model, run.inputs, run.reset_every)

        await asyncio.gather(*(one(run) for run in runs))
        return [rt.classify(CLASSIFY_MODEL, x).labels[0] for x in xs]
    finally:
        await rt.close()


# -- checks, summary, plot --------------------------------------------------------------------------------
def check(runs: list[StreamRun], classify: list[dict], events: dict) -> dict[str, dict]:
    checks: dict[str, dict] = {}
    bad = []
    for run in runs:
        if run.error or len(run.answers) != len(run.expected):
            bad.append(
                f"stream {run.index}: {run.error or f'{len(run.answers)} answers of {len(run.expected)}'}"
            )
            continue
        for (t, label, probs), (et, elabel, eprobs) in zip(run.answers, run.expected, strict=True):
            diff = float(np.abs(np.asarray(probs, np.float64) - eprobs).max())
            if t != et or label != elabel or diff > 1e-6:
                bad.append(
                    f"stream {run.index} ({run.model}) step {et}: {label} vs {elabel}, |dp| {diff:.2e}"
                )
                break
    checks["streams_equal_uninterrupted"] = {"ok": not bad, "streams": len(runs), "bad": bad[:10]}
    failed = [c for c in classify if not c["ok"]]
    # a cut answer (retried once by the load client) is only the SIGKILL's: its request was under way then
    kill = events["sigkill_at"]
    cut = [c for c in classify if "cut" in c]
    stray = [c for c in cut if not c["t"] <= kill <= c["t"] + c["latency"]]
    checks["classify_no_failures"] = {
        "ok": not failed and not stray and len(classify) > 0,
        "requests": len(classify),
        "failed": failed[:10],
        "cut_by_the_sigkill_and_retried": len(cut),
        "cut_at_other_times": stray[:10],
    }
    for name, sig in (("sigkill", "SIGKILL"), ("sigterm", "SIGTERM")):
        replica = events[f"{name}_replica"]
        at = events[f"{name}_at"]
        victims = [r for r in runs if replica_at(r.connections, at) == replica and r.finished > at]
        moved = [r for r in victims if any(t > at and rep not in (replica, -1) for t, rep in r.connections)]
        checks[f"{name}_streams_resumed_elsewhere"] = {
            "ok": len(victims) > 0 and len(moved) == len(victims),
            "signal": sig,
            "replica": replica,
            "streams_on_it": len(victims),
            "resumed_on_others": len(moved),
        }
    back = {}
    for name in ("sigkill", "sigterm"):
        replica = events[f"{name}_replica"]
        ready = events.get(f"{name}_restarted_ready")
        served = ready is not None and any(
            c["ok"] and c["replica"] == replica and c["t"] > ready for c in classify
        )
        back[str(replica)] = {"ready_at": ready, "served_classify_after": served}
    checks["restarted_replicas_serve"] = {
        "ok": all(v["served_classify_after"] for v in back.values()),
        **back,
    }
    return checks


def plot(runs: list[StreamRun], events: dict, end: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.arange(0.0, end, 0.1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for replica in range(REPLICAS):
        counts = [
            sum(
                1
                for r in runs
                if r.connections
                and r.connections[0][0] <= t < r.finished
                and replica_at(r.connections, t) == replica
            )
            for t in grid
        ]
        top.plot(grid, counts, label=f"replica {replica} ({NET.addr(replica)})")
    top.set_ylabel("open streams")
    top.set_title("Streams per replica (through nginx), 100 resumable streams")
    times = np.array([t for r in runs for t, _ in r.latencies])
    lat = np.array([s * 1000 for r in runs for _, s in r.latencies])
    bottom.scatter(times, lat, s=2, alpha=0.3, color="gray", label="one step")
    bins = np.arange(0.0, end + 0.25, 0.25)
    which = np.digitize(times, bins)
    centers = [(bins[i - 1] + bins[i]) / 2 for i in range(1, len(bins)) if np.any(which == i)]
    p50 = [np.percentile(lat[which == i], 50) for i in range(1, len(bins)) if np.any(which == i)]
    p99 = [np.percentile(lat[which == i], 99) for i in range(1, len(bins)) if np.any(which == i)]
    bottom.plot(centers, p50, label="p50 per 0.25 s")
    bottom.plot(centers, p99, label="p99 per 0.25 s")
    bottom.set_yscale("log")
    bottom.set_ylabel("step latency (ms)")
    bottom.set_xlabel("seconds since the load started")
    for ax in (top, bottom):
        marks = (
            ("sigkill_at", "SIGKILL", "red"),
            ("sigterm_at", "SIGTERM", "orange"),
            ("sigkill_restarted_ready", "restarted", "green"),
            ("sigterm_restarted_ready", "restarted", "green"),
        )
        for key, label, color in marks:
            if events.get(key) is not None:
                ax.axvline(events[key], color=color, linestyle="--", linewidth=1)
                ax.text(events[key], ax.get_ylim()[1], f" {label}", color=color, va="top", fontsize=8)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------------------
async def scenario(
    cluster: Cluster, models: Path, n_streams: int, seed: int
) -> tuple[list[StreamRun], list[dict], dict, float]:
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n_streams):
        model = STREAM_MODELS[i % len(STREAM_MODELS)]
        inputs = rng.standard_normal((STEPS, 28)).astype(np.float32)  # [STEPS, F]
        runs.append(StreamRun(i, model, 28 if "masked" in model else None, inputs))
    xs = rng.standard_normal((16, 28, 28)).astype(np.float32)  # [16 requests, T, F]
    want = await reference(models, runs, xs)

    for i in range(REPLICAS):
        cluster.start(i, models)
    await asyncio.gather(*(cluster.wait_ready(i, 90) for i in range(REPLICAS)))
    base = cluster.start_nginx()

    events: dict = {"sigkill_replica": 0, "sigterm_replica": 1}
    classify: list[dict] = []
    stop = asyncio.Event()
    t0 = time.monotonic()

    async def chaos() -> None:
        await asyncio.sleep(KILL_AT - (time.monotonic() - t0))
        events["sigkill_at"] = time.monotonic() - t0
        cluster.signal(0, signal.SIGKILL)
        await asyncio.sleep(TERM_AT - (time.monotonic() - t0))
        events["sigterm_at"] = time.monotonic() - t0
        cluster.signal(1, signal.SIGTERM)
        await asyncio.sleep(RESTART_AT - (time.monotonic() - t0))
        cluster.start(0, models)
        while cluster.procs[1].poll() is None:  # the drain ends with the process
            await asyncio.sleep(0.05)
        events["sigterm_exit_status"] = cluster.procs[1].returncode
        cluster.start(1, models)
        ready = await asyncio.gather(cluster.wait_ready(0), cluster.wait_ready(1))
        events["sigkill_restarted_ready"] = ready[0] - t0
        events["sigterm_restarted_ready"] = ready[1] - t0

    delays = np.linspace(0, STAGGER_S, n_streams)
    client = AsyncPSNClient(base)  # one for all the streams (each stream has its own WebSocket)
    load = asyncio.gather(*(stream_load(client, r, t0, float(d)) for r, d in zip(runs, delays, strict=True)))
    workers = [asyncio.create_task(classify_load(base, xs, want, stop, t0, classify)) for _ in range(4)]
    chaos_task = asyncio.create_task(chaos())
    await load
    await chaos_task
    await asyncio.sleep(1.0)  # classify keeps going on the restarted replicas for a moment
    stop.set()
    await asyncio.gather(*workers)
    await client.close()
    return runs, classify, events, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    async def run_it(cluster: Cluster) -> tuple:
        models = cluster.tmp / "models"
        models.mkdir()
        for name in (*STREAM_MODELS, CLASSIFY_MODEL):
            (models / name).symlink_to(REPO / "models" / name)
        return await scenario(cluster, models, args.streams, args.seed)

    ran = execute("cluster-test", NET, REPLICAS, DEADLINE_S, run_it)
    if ran is None:
        return 2
    (runs, classify, events, duration), logs = ran.value, ran.logs
    checks = {**check(runs, classify, events), **ran.checks}
    lat = np.array([s for r in runs for _, s in r.latencies]) * 1000
    around = np.array([s for r in runs for t, s in r.latencies if abs(t - events["sigkill_at"]) < 1.0]) * 1000
    summary = {
        "replicas": REPLICAS,
        "streams": len(runs),
        "steps_per_stream": STEPS,
        "models": list(STREAM_MODELS),
        "classify_model": CLASSIFY_MODEL,
        "snapshot_every": SNAPSHOT_EVERY,
        "load_seconds": round(duration, 2),
        "events": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in events.items()},
        "reconnects": sum(len(r.connections) - 1 for r in runs if r.connections),
        "step_latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p99": round(float(np.percentile(lat, 99)), 3),
            "max": round(float(lat.max()), 1),
            "max_within_1s_of_sigkill": round(float(around.max()), 1) if around.size else None,
        },
        "classify": {"requests": len(classify), "failed": sum(not c["ok"] for c in classify)},
        "streams_per_replica_at_start": [
            sum(1 for r in runs if r.connections and r.connections[0][1] == i) for i in range(REPLICAS)
        ],
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster-test.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(runs, events, duration, args.out / "cluster-test.png")
    return report("cluster-test", checks, logs)


if __name__ == "__main__":
    raise SystemExit(main())
