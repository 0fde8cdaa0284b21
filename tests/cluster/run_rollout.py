"""make cluster-test, second scenario: a rolling update from model version 1 to version 2 drops no stream.

As root: three ``psn serve`` replicas in network namespaces (10.201.{0,1,2}.2; tests/cluster/cluster.py)
behind nginx, each with its own models dir (as each pod has its image) holding version 1 of four models
(``NAME/1/``), in poll mode. 100 resumable streams (masked PSN, sliding PSN, LIF) open on version 1 and a
classify load runs through nginx. Then the replicas are restarted one at a time (SIGTERM: the drain hands
every stream its snapshot) with a models dir holding versions 1 and 2 (version 2: the classes relabeled,
tests/model_versions.py, so that every answer says which version gave it). A stream that resumes on an
updated replica moves back to version 1 (its snapshot names it). After the roll, 30 new streams open: they
get version 2. Once the version-1 streams have ended, version 1 is removed from every models dir and each
replica's poll unloads it. Checks:

- every stream opened before the roll answers as an uninterrupted version-1 stream, step by step (labels
  equal, probabilities within 1e-6), and ends on version 1; none is lost;
- every stream opened after the roll says version 2 and answers as version 2;
- no classify request fails; each answer equals the local answer of the version it names, and both
  versions answered during the roll;
- every replica was restarted once, served versions 1 and 2 after, and unloaded version 1 once it was
  removed (its repository index no longer lists it) while the version-2 streams went on.

Writes docs/cluster-test-rollout.json and .png (streams per replica and version over time, classify
answers per version, the restarts). Bounded (a hard alarm) and cleaned up as the first scenario.

    sudo .venv/bin/python tests/cluster/run_rollout.py [--before 100] [--after 30] [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from tests.cluster.cluster import REPO, Cluster, Net, execute, report, run, uninterrupted, upstream_replica
from tests.cluster.rollout_report import check, plot
from tests.model_versions import derive_version

REPLICAS = 3
NET = Net("psn-rl", "psnrl", 201)  # its own namespaces and subnet: the first scenario's are untouched
STREAM_MODELS = ("smnist-masked-psn", "smnist-sliding-psn", "smnist-lif")
CLASSIFY_MODEL = "smnist-psn"
MODELS = (*STREAM_MODELS, CLASSIFY_MODEL)
FEATURES = 28
MASKED_T = 28  # a masked PSN stream resets after T steps
MAX_STEPS = 2000  # inputs prepared per stream opened before the roll (they run until the roll is done)
AFTER_STEPS = 84  # per stream opened after the roll
PACE_S = 0.05  # client think time between steps
STAGGER_S = 1.0
ROLL_AT = 3.0  # seconds after the load starts
ROLL_GAP_S = 2.0  # between one replica ready and the next one's SIGTERM
LINGER_S = 1.0  # the version-1 streams go on this long after the roll
POLL_S = 1  # --poll-interval-s
SNAPSHOT_EVERY = 8
DEADLINE_S = 240


# -- models dirs ------------------------------------------------------------------------------------------
def prepare_models(tmp: Path) -> tuple[list[Path], Path]:
    """(each replica's models dir with version 1 of every model, the reference models dir with 1 and 2).
    Version folders are symlinks: adding or removing one is a single rename or unlink (what a poll needs)."""
    v2 = tmp / "v2"
    reference = tmp / "reference"
    for name in MODELS:
        derive_version(REPO / "models" / name, v2 / name, "2", shift=1)
        (reference / name).mkdir(parents=True)
        (reference / name / "1").symlink_to(REPO / "models" / name)
        (reference / name / "2").symlink_to(v2 / name)
    dirs = []
    for i in range(REPLICAS):
        models = tmp / f"replica-{i}" / "models"
        for name in MODELS:
            (models / name).mkdir(parents=True)
            (models / name / "1").symlink_to(REPO / "models" / name)
        dirs.append(models)
    return dirs, v2


def add_version_2(models: Path, v2: Path) -> None:
    for name in MODELS:
        (models / name / "2").symlink_to(v2 / name)


def remove_version_1(models: Path) -> None:
    for name in MODELS:
        (models / name / "1").unlink()


# -- load -------------------------------------------------------------------------------------------------
@dataclass
class StreamRun:
    index: int
    model: str
    phase: str  # "before" the roll or "after" it
    inputs: np.ndarray  # [steps, F]
    answers: list[tuple[int, str | None, list[float] | None]] = field(default_factory=list)
    expected: list[tuple[int, str | None, np.ndarray | None]] = field(default_factory=list)
    opened: float = 0.0
    finished: float = 0.0
    versions: list[str] = field(default_factory=list)  # the hello's, then each resume's
    connections: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, replica)
    error: str | None = None

    @property
    def reset_every(self) -> int | None:
        return MASKED_T if "masked" in self.model else None


async def stream_load(
    client: AsyncPSNClient, run: StreamRun, t0: float, delay: float, until: asyncio.Event | None
) -> None:
    """Step the stream through its inputs (a "before" stream stops once ``until`` is set and LINGER_S
    passed); record every answer, the version it is on and the replica it is connected to."""
    policy = RetryPolicy(retries=20, backoff_s=0.05, max_backoff_s=1.0, step_timeout_s=20)
    await asyncio.sleep(delay)
    stop_at = None
    try:
        opened = client.stream(run.model, resumable=True, snapshot_every=SNAPSHOT_EVERY, retry=policy)
        async with opened as stream:
            run.opened = time.monotonic() - t0
            conn = stream.connection
            run.connections.append((run.opened, upstream_replica(NET, conn.response.headers)))
            run.versions.append(stream.version)
            for j, x in enumerate(run.inputs):
                if until is not None and until.is_set():
                    stop_at = stop_at or time.monotonic() + LINGER_S
                    if time.monotonic() >= stop_at:
                        break
                if run.reset_every and j and j % run.reset_every == 0:
                    await stream.reset()
                step = await stream.step(x)
                if stream.connection is not conn:
                    conn = stream.connection
                    run.connections.append(
                        (time.monotonic() - t0, upstream_replica(NET, conn.response.headers))
                    )
                    run.versions.append(stream.version)
                run.answers.append((step.t, step.label, step.probabilities))
                await asyncio.sleep(PACE_S)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}: " + "".join(traceback.format_exception(exc)[-4:])
    run.finished = time.monotonic() - t0


async def classify_load(base: str, xs: np.ndarray, stop: asyncio.Event, t0: float, out: list[dict]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        i = 0
        while not stop.is_set():
            k = i % len(xs)
            record: dict = {"t": time.monotonic() - t0, "k": k, "ok": False, "replica": -1}
            try:
                r = await http.post(f"/v1/models/{CLASSIFY_MODEL}/classify", json={"inputs": xs[k].tolist()})
                record.update(status=r.status_code, replica=upstream_replica(NET, r.headers))
                if r.status_code == 200:
                    doc = r.json()
                    record.update(version=doc.get("version"), label=doc["predictions"][0]["label"])
                    record["probabilities"] = doc["predictions"][0]["probabilities"]
                else:
                    record["error"] = r.text[:200]
            except Exception as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            out.append(record)
            i += 1
            await asyncio.sleep(0.01)


async def reference(models: Path, runs: list[StreamRun], xs: np.ndarray) -> dict[str, list]:
    """The uninterrupted answers, in this process: each stream on the version it should answer from, for
    the steps it took; the classify answers of each version."""
    rt = Runtime(RuntimeConfig(models_dir=models, providers=["CPUExecutionProvider"]))
    await rt.start()
    try:

        async def one(run: StreamRun) -> None:
            version = "1" if run.phase == "before" else "2"
            inputs = run.inputs[: len(run.answers)]  # the steps it took
            run.expected = await uninterrupted(rt, run.model, inputs, run.reset_every, version)

        await asyncio.gather(*(one(run) for run in runs))
        return {v: [rt.classify(CLASSIFY_MODEL, x, version=v) for x in xs] for v in ("1", "2")}
    finally:
        await rt.close()


async def index(http: httpx.AsyncClient, cluster: Cluster, i: int) -> dict[tuple[str, str], str]:
    r = await http.post(f"{cluster.url(i)}/v2/repository/index")
    return {(e["name"], e["version"]): e["state"] for e in r.json()}


# -- the scenario -----------------------------------------------------------------------------------------
async def scenario(cluster: Cluster, tmp: Path, n_before: int, n_after: int, seed: int) -> dict:
    dirs, v2 = prepare_models(tmp)
    args = ["--model-control", "poll", "--poll-interval-s", str(POLL_S), "--grpc-port", "off"]
    rng = np.random.default_rng(seed)
    before = [
        StreamRun(i, STREAM_MODELS[i % 3], "before", rng.standard_normal((MAX_STEPS, FEATURES), np.float32))
        for i in range(n_before)
    ]
    after = [
        StreamRun(
            n_before + i,
            STREAM_MODELS[i % 3],
            "after",
            rng.standard_normal((AFTER_STEPS, FEATURES), np.float32),
        )
        for i in range(n_after)
    ]
    xs = rng.standard_normal((16, MASKED_T, FEATURES), np.float32)  # [16 requests, T, F]

    for i in range(REPLICAS):
        cluster.start(i, dirs[i], args)
    await asyncio.gather(*(cluster.wait_ready(i, 90) for i in range(REPLICAS)))
    base = cluster.start_nginx()
    events: dict = {"restarted": {}, "ready": {}, "indexes": {}}
    classify: list[dict] = []
    stop, rolled = asyncio.Event(), asyncio.Event()
    t0 = time.monotonic()

    async def roll() -> None:
        await asyncio.sleep(ROLL_AT)
        events["roll_started"] = time.monotonic() - t0
        async with httpx.AsyncClient(timeout=5) as http:
            for i in range(REPLICAS):
                events["restarted"][i] = time.monotonic() - t0
                cluster.signal(i, signal.SIGTERM)  # drain: every stream gets its snapshot, then 1001
                while cluster.procs[i].poll() is None:
                    await asyncio.sleep(0.05)
                add_version_2(dirs[i], v2)
                cluster.start(i, dirs[i], args)
                events["ready"][i] = await cluster.wait_ready(i) - t0
                events["indexes"][f"{i} restarted"] = sorted(
                    f"{n}/{v} {s}" for (n, v), s in (await index(http, cluster, i)).items()
                )
                await asyncio.sleep(ROLL_GAP_S)
        events["roll_done"] = time.monotonic() - t0
        rolled.set()

    client = AsyncPSNClient(base)
    delays = np.linspace(0, STAGGER_S, n_before)
    first = asyncio.gather(
        *(stream_load(client, r, t0, float(d), rolled) for r, d in zip(before, delays, strict=True))
    )
    workers = [asyncio.create_task(classify_load(base, xs, stop, t0, classify)) for _ in range(4)]
    roller = asyncio.create_task(roll())
    await rolled.wait()
    second = asyncio.gather(
        *(
            stream_load(client, r, t0, float(d), None)
            for r, d in zip(after, np.linspace(0, STAGGER_S, n_after), strict=True)
        )
    )
    await first
    events["before_streams_ended"] = time.monotonic() - t0
    for models in dirs:  # version 1 leaves every models dir; each replica's poll unloads it
        remove_version_1(models)
    events["version_1_removed"] = time.monotonic() - t0
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + 10 * POLL_S + 10
        gone: dict[int, float] = {}
        while len(gone) < REPLICAS and time.monotonic() < deadline:
            for i in range(REPLICAS):
                if i not in gone and not any(v == "1" for _, v in await index(http, cluster, i)):
                    gone[i] = time.monotonic() - t0
            await asyncio.sleep(0.2)
        events["version_1_gone"] = gone
        events["indexes"]["end"] = {
            i: sorted(f"{n}/{v} {s}" for (n, v), s in (await index(http, cluster, i)).items())
            for i in range(REPLICAS)
        }
    await second
    await roller
    stop.set()
    await asyncio.gather(*workers)
    await client.close()
    duration = time.monotonic() - t0
    want = await reference(tmp / "reference", before + after, xs)
    return {
        "before": before,
        "after": after,
        "classify": classify,
        "want": want,
        "events": events,
        "duration": duration,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=int, default=100, help="streams opened before the roll")
    parser.add_argument("--after", type=int, default=30, help="streams opened after the roll")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ran = execute(
        "cluster-test (rollout)",
        NET,
        REPLICAS,
        DEADLINE_S,
        lambda cluster: scenario(cluster, cluster.tmp, args.before, args.after, args.seed),
    )
    if ran is None:
        return 2
    result, logs = ran.value, ran.logs
    checks = {**check(result, REPLICAS), **ran.checks}
    before, after = result["before"], result["after"]
    summary = {
        "replicas": REPLICAS,
        "streams_before_the_roll": len(before),
        "streams_after_the_roll": len(after),
        "steps": sum(len(r.answers) for r in before + after),
        "models": list(STREAM_MODELS),
        "classify_model": CLASSIFY_MODEL,
        "poll_interval_s": POLL_S,
        "load_seconds": round(result["duration"], 2),
        "events": json.loads(json.dumps(result["events"], default=str)),
        "reconnects": sum(len(r.connections) - 1 for r in before + after),
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "commit": run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False).stdout.strip(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster-test-rollout.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plot(result, REPLICAS, args.out / "cluster-test-rollout.png")
    return report("cluster-test (rollout)", checks, logs)


if __name__ == "__main__":
    raise SystemExit(main())
