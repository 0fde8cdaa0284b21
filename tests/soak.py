"""Soak: a real ``psn serve`` process on loopback under a steady mixed load for PSN_SOAK_SECONDS (default
300): classify requests at a fixed rate (open loop, random batch sizes, every model) and streams stepping at
a fixed rate (every model, full sequences, resets, and streams closed and reopened as they go). Bounded in
time and in count. Every answer is checked (status, shape, and each stream's answers byte-identical to its
first run of the same sequence); the server's RSS and open streams are sampled every second.

Writes a JSON report and a plot (latency p99 per window, throughput, RSS over time)::

    PYTHONPATH=. .venv/bin/python tests/soak.py [--seconds 30] [--out docs/soak]

``make soak`` runs it through tests/test_reliability_soak.py (pytest -m soak --run-soak).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reliability_support import ServerProcess, server_process
from test_server_support import served

from psn_runtime.manifest import Manifest

WINDOW_S = 10.0


@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 300.0
    classify_rate: float = 20.0  # requests per second, open loop
    max_batch: int = 8
    streams: int = 12  # concurrent streams
    step_rate: float = 40.0  # steps per second per stream
    sequences_per_socket: int = 5  # then the socket is closed (clean or dropped) and a new one opened
    seed: int = 0


@dataclass
class Tally:
    start: float
    events: list[tuple[float, str, float]] = field(default_factory=list)  # (t, kind, latency s)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # RSS and gauges over time

    def ok(self, kind: str, t0: float, latency: float) -> None:
        self.events.append((t0 - self.start, kind, latency))

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{kind}: {detail[:300]}")


async def classify_load(server: ServerProcess, cfg: SoakConfig, tally: Tally, deadline: float) -> None:
    rng = random.Random(cfg.seed)
    models = list(served().by_kind.values())
    period = 1.0 / cfg.classify_rate
    tasks: set[asyncio.Task] = set()
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as client:

        async def one(m: Manifest, batch: int, due: float) -> None:
            x = np.random.default_rng(rng.randrange(1 << 30)).standard_normal((batch, m.T, m.features))
            try:
                response = await client.post(f"/v1/models/{m.name}/classify", json={"inputs": x.tolist()})
            except httpx.HTTPError as exc:
                tally.error("classify_transport", repr(exc))
                return
            latency = time.monotonic() - due  # from when it was due: client lag counts too
            if response.status_code != 200:
                tally.error(f"classify_{response.status_code}", response.text)
            elif len(response.json()["predictions"]) != batch:
                tally.error("classify_shape", response.text)
            else:
                tally.ok("classify", due, latency)

        due = time.monotonic()
        while due < deadline:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(tasks) >= 64:  # bounded: a stalled server cannot make the client pile up requests
                tally.error("classify_backlog", "64 requests outstanding")
            else:
                m = models[rng.randrange(len(models))]
                task = asyncio.create_task(one(m, rng.randint(1, cfg.max_batch), due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            due += period
        if tasks:
            await asyncio.wait(tasks, timeout=30)


async def stream_load(server: ServerProcess, cfg: SoakConfig, tally: Tally, deadline: float, i: int) -> None:
    """One stream slot: sockets opened one after the other, each running a few sequences of its model."""
    models = list(served().by_kind.values())
    m = models[i % len(models)]
    steps = m.T if m.max_steps is not None or not m.streams else 2 * m.T  # sliding/LIF: past T
    x = np.random.default_rng(cfg.seed + i).standard_normal((steps, m.features)).astype("<f4")
    frames = [row.tobytes() for row in x]
    period = 1.0 / cfg.step_rate
    expected: list[str] | None = None  # the first run's answers: every later run must match them
    socket_no = 0
    due = time.monotonic()
    while time.monotonic() < deadline:
        socket_no += 1
        try:
            ws = await connect(server.ws_url(m.name), compression=None, open_timeout=30)
        except Exception as exc:
            tally.error("stream_connect", repr(exc))
            await asyncio.sleep(1.0)
            continue
        try:
            hello = json.loads(await ws.recv())
            assert hello["model"] == m.name, hello
            for _ in range(cfg.sequences_per_socket):
                answers = []
                for frame in frames:
                    due = max(due + period, time.monotonic() - 1.0)
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    sent = time.monotonic()
                    await ws.send(frame)
                    text = await ws.recv()
                    tally.ok("step", sent, time.monotonic() - sent)
                    answers.append(text)
                await ws.send('{"reset": true}')
                if json.loads(await ws.recv()) != {"reset": True, "t": -1}:
                    tally.error("stream_reset", "bad reset answer")
                if expected is None:
                    expected = answers
                elif answers != expected:
                    bad = next(j for j, (a, b) in enumerate(zip(answers, expected, strict=True)) if a != b)
                    tally.error("stream_mismatch", f"{m.name} step {bad}: {answers[bad]} != {expected[bad]}")
                if time.monotonic() >= deadline:
                    break
        except Exception as exc:
            tally.error("stream", repr(exc))
        finally:
            if socket_no % 2:
                await ws.close()
            else:
                ws.transport.abort()  # vanish without a close frame


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sampler(server: ServerProcess, tally: Tally, deadline: float) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        while time.monotonic() < deadline + 2:
            try:
                text = (await client.get("/metrics")).text
            except httpx.HTTPError as exc:
                tally.error("metrics", repr(exc))
                text = ""
            open_streams = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("psn_streams_open{")
            )
            tally.samples.append(
                {
                    "t": round(time.monotonic() - tally.start, 2),
                    "rss_mb": round(server.rss_mb(), 2),
                    "streams_open": open_streams,
                    "server_cpu_s": round(cpu_seconds(server.pid), 2),
                    "load1": float(Path("/proc/loadavg").read_text().split()[0]),
                }
            )
            await asyncio.sleep(1.0)


async def run_load(server: ServerProcess, cfg: SoakConfig) -> Tally:
    tally = Tally(start=time.monotonic())
    deadline = tally.start + cfg.seconds
    await asyncio.gather(
        sampler(server, tally, deadline),
        classify_load(server, cfg, tally, deadline),
        *(stream_load(server, cfg, tally, deadline, i) for i in range(cfg.streams)),
    )
    return tally


def windows(tally: Tally, seconds: float) -> list[dict]:
    out = []
    for w in range(int(np.ceil(seconds / WINDOW_S))):
        lo, hi = w * WINDOW_S, (w + 1) * WINDOW_S
        row: dict = {"t": (lo + hi) / 2}
        for kind in ("classify", "step"):
            lat = np.array([lat for t, k, lat in tally.events if k == kind and lo <= t < hi])
            row[f"{kind}_count"] = int(lat.size)
            row[f"{kind}_p50_ms"] = round(float(np.percentile(lat, 50)) * 1000, 3) if lat.size else None
            row[f"{kind}_p99_ms"] = round(float(np.percentile(lat, 99)) * 1000, 3) if lat.size else None
        out.append(row)
    return out


def report(tally: Tally, cfg: SoakConfig, server_pid: int, end_gauges: dict) -> dict:
    summary: dict = {}
    for kind in ("classify", "step"):
        lat = np.array([lat for _, k, lat in tally.events if k == kind])
        summary[kind] = {
            "count": int(lat.size),
            "rate_per_s": round(lat.size / cfg.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 3) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 3) if lat.size else None,
            "max_ms": round(float(lat.max()) * 1000, 3) if lat.size else None,
        }
    rss = [s["rss_mb"] for s in tally.samples]
    load = [s["load1"] for s in tally.samples]
    return {
        "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "server_pid": server_pid},
        "errors": sum(tally.errors.values()),
        "errors_by_kind": dict(tally.errors),
        "error_samples": tally.error_samples,
        "summary": summary,
        "server_cpu_s": tally.samples[-1]["server_cpu_s"] if tally.samples else None,
        "machine_load1": {"mean": round(float(np.mean(load)), 2), "max": max(load)} if load else {},
        "rss_mb": {"start": rss[0], "end": rss[-1], "max": max(rss), "growth": round(rss[-1] - rss[0], 2)}
        if rss
        else {},
        "after": end_gauges,
        "windows": windows(tally, cfg.seconds),
        "samples": tally.samples,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = result["windows"]
    t = [row["t"] for row in w]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for kind, color in (("classify", "tab:blue"), ("step", "tab:orange")):
        axes[0].plot(t, [row[f"{kind}_p99_ms"] for row in w], "o-", color=color, label=f"{kind} p99")
        axes[0].plot(t, [row[f"{kind}_p50_ms"] for row in w], ":", color=color, label=f"{kind} p50")
        axes[1].plot(t, [row[f"{kind}_count"] / WINDOW_S for row in w], "o-", color=color, label=kind)
    axes[0].set_ylabel("latency (ms)")
    axes[0].set_yscale("log")
    axes[0].legend(loc="upper left", fontsize=8)
    s = result["samples"]
    load = axes[0].twinx()  # the machine is shared: its load explains latency spikes the server did not cause
    load.plot([p["t"] for p in s], [p["load1"] for p in s], color="tab:red", alpha=0.4, lw=1)
    load.set_ylabel(f"machine load (1 min), {result['machine']['cpus']} CPUs", color="tab:red")
    cpu = [
        (b["server_cpu_s"] - a["server_cpu_s"]) / max(b["t"] - a["t"], 1e-9) for a, b in itertools.pairwise(s)
    ]
    axes[1].set_ylabel(f"answered per s ({WINDOW_S:g} s windows)")
    axes[1].legend(loc="upper left", fontsize=8)
    busy = axes[1].twinx()
    busy.plot([p["t"] for p in s[1:]], [100 * c for c in cpu], color="tab:purple", alpha=0.4, lw=1)
    busy.set_ylabel("server CPU (% of one core)", color="tab:purple")
    axes[2].plot([p["t"] for p in s], [p["rss_mb"] for p in s], color="tab:green", label="server RSS")
    axes[2].set_ylabel("RSS (MiB)")
    axes[2].set_xlabel("time (s)")
    twin = axes[2].twinx()
    twin.plot([p["t"] for p in s], [p["streams_open"] for p in s], color="tab:gray", alpha=0.5)
    twin.set_ylabel("open streams", color="tab:gray")
    cfg = result["config"]
    fig.suptitle(
        f"psn-serve soak: {cfg['seconds']:g} s, classify {cfg['classify_rate']:g}/s + {cfg['streams']} "
        f"streams × {cfg['step_rate']:g} steps/s — errors {result['errors']}, "
        f"RSS {result['rss_mb'].get('start')} → {result['rss_mb'].get('end')} MiB",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def soak(cfg: SoakConfig, out: Path | None, log_dir: Path | None = None) -> dict:
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="psn-soak-"))
    with server_process(log_dir) as server:
        tally = asyncio.run(run_load(server, cfg))
        time.sleep(1.0)  # dropped sockets noticed, idle work done
        end_gauges = {
            "streams_open": server.gauge("psn_streams_open"),
            "pool_in_use": server.gauge("psn_stream_pool_in_use"),
            "step_queue": server.gauge("psn_step_queue"),
            "server_errors_5xx": sum(
                server.gauge("psn_http_requests_total", status=str(code)) for code in (500, 502, 503, 504)
            ),
        }
        pid = server.pid
    result = report(tally, cfg, pid, end_gauges)
    if "Traceback" in server.log.read_text():
        result["errors"] += 1
        result["errors_by_kind"]["server_traceback"] = 1
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        plot(result, out.with_suffix(".png"))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("PSN_SOAK_SECONDS", "300")))
    parser.add_argument("--classify-rate", type=float, default=SoakConfig.classify_rate)
    parser.add_argument("--streams", type=int, default=SoakConfig.streams)
    parser.add_argument("--step-rate", type=float, default=SoakConfig.step_rate)
    parser.add_argument("--out", type=Path, default=Path("docs/soak"), help="writes OUT.json and OUT.png")
    args = parser.parse_args(argv)
    cfg = SoakConfig(args.seconds, args.classify_rate, streams=args.streams, step_rate=args.step_rate)
    result = soak(cfg, args.out)
    print(
        json.dumps(
            {k: result[k] for k in ("errors", "errors_by_kind", "summary", "rss_mb", "after")}, indent=1
        )
    )
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
