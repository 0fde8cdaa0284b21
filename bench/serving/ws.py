"""WebSocket load: client processes (multiprocessing, spawned, pinned to the load core), each driving many
streams with asyncio + the ``websockets`` library (uvloop when installed).

Every stream is closed-loop: it sends one step, waits for the answer, sends the next. All processes connect
first, then step together in one time window that the parent sets (CLOCK_MONOTONIC is shared by every
process): a warm-up, then the counted window, during which the parent reads the server's CPU time and each
client process its own.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from bench.common import BenchError
from bench.serving.procs import Pinning, ServerProcess, ThreadTimes

CONNECT_TIMEOUT_S = 60.0
CONNECT_PARALLEL = 32  # connections opened at once by one client process
RESET = '{"reset": true}'


class Frames(StrEnum):
    BINARY = "binary"  # F little-endian float32
    JSON = "json"  # {"x": [f, ...]}


@dataclass(frozen=True)
class ClientSpec:
    url: str
    streams: int
    frames: Frames
    features: int
    seed: int
    load_core: int | None


@dataclass
class StreamLoad:
    """One run of S closed-loop streams: the aggregate rate, the step round trip, the CPU on both sides."""

    streams: int
    frames: str
    client_procs: int
    window_s: float
    steps: int
    steps_per_s: float
    errors: int
    rtt_ms: dict[str, float]  # p50, p90, p99, mean, max
    server_cpu_s: float | None
    client_cpu_s: float
    label: str = ""
    threads: ThreadTimes | None = None  # the server's, over the counted window

    @property
    def server_cpu_util(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.window_s

    @property
    def client_cpu_util(self) -> float:
        return self.client_cpu_s / self.window_s

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["server_cpu_util"] = self.server_cpu_util
        out["client_cpu_util"] = self.client_cpu_util
        return out


def percentiles_ms(seconds: np.ndarray) -> dict[str, float]:
    if seconds.size == 0:
        return {
            "p50": float("nan"),
            "p90": float("nan"),
            "p99": float("nan"),
            "mean": float("nan"),
            "max": 0.0,
        }
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99]) * 1000.0
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(seconds.mean() * 1000.0),
        "max": float(seconds.max() * 1000.0),
    }


# --------------------------------------------------------------------------------------- client process


def make_frames(frames: Frames, features: int, seed: int, count: int = 16) -> list[bytes | str]:
    x = np.random.default_rng(seed).random((count, features)).astype("<f4")  # [count, F] in [0, 1)
    if frames is Frames.BINARY:
        return [row.tobytes() for row in x]
    return [json.dumps({"x": [round(float(v), 4) for v in row]}) for row in x]


def event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ModuleNotFoundError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


async def open_socket(url: str):
    from websockets.asyncio.client import connect

    ws = await connect(
        url, compression=None, ping_interval=None, open_timeout=CONNECT_TIMEOUT_S, close_timeout=2,
        max_size=1 << 20,
    )  # fmt: skip
    hello = await ws.recv()
    if '"error"' in hello[:20]:
        raise BenchError(f"{url}: {hello[:200]}")
    return ws


async def _step_loop(ws, frames: list, count_from: float, end_at: float, rtts: list[float]) -> int:
    """Closed loop until end_at; appends the round trips started after count_from; returns error answers."""
    mono = time.monotonic
    errors = 0
    i = 0
    n = len(frames)
    while True:
        t0 = mono()
        if t0 >= end_at:
            return errors
        await ws.send(frames[i % n])
        answer = await ws.recv()
        t1 = mono()
        i += 1
        if answer.startswith('{"error"'):
            errors += 1
            continue
        if t0 >= count_from:
            rtts.append(t1 - t0)
        if '"done":true' in answer:  # a bounded model took all its steps: start a new sequence
            await ws.send(RESET)
            await ws.recv()


async def _cpu_window(count_from: float, end_at: float) -> float:
    await asyncio.sleep(max(0.0, count_from - time.monotonic()))
    c0 = time.process_time()
    await asyncio.sleep(max(0.0, end_at - time.monotonic()))
    return time.process_time() - c0


async def _client(spec: ClientSpec, conn) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def connect_one():
        async with gate:
            return await open_socket(spec.url)

    sockets = await asyncio.gather(*(connect_one() for _ in range(spec.streams)))
    try:
        conn.send(("ready", len(sockets)))
        message = await loop.run_in_executor(None, conn.recv)
        if message[0] != "go":
            return {"aborted": True}
        _, start_at, count_from, end_at = message
        frames = make_frames(spec.frames, spec.features, spec.seed)
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        rtts: list[list[float]] = [[] for _ in sockets]
        cpu = asyncio.ensure_future(_cpu_window(count_from, end_at))
        errors = await asyncio.gather(
            *(_step_loop(ws, frames[i % 4 :] + frames[: i % 4], count_from, end_at, rtts[i])
              for i, ws in enumerate(sockets))
        )  # fmt: skip
        client_cpu = await cpu
        flat = np.fromiter((r for rs in rtts for r in rs), dtype=np.float64)
        return {"rtts": flat, "errors": int(sum(errors)), "client_cpu_s": client_cpu}
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def _client_main(spec: ClientSpec, conn) -> None:
    if spec.load_core is not None:
        os.sched_setaffinity(0, {spec.load_core})
    try:
        with event_loop_runner() as runner:
            result = runner.run(_client(spec, conn))
        conn.send(("result", result))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------- parent


def _recv(conn, timeout: float, what: str):
    if not conn.poll(timeout):
        raise BenchError(f"WebSocket client: no {what} after {timeout:.0f} s")
    message = conn.recv()
    if message[0] == "error":
        raise BenchError(f"WebSocket client failed: {message[1]}")
    return message


def run_streams(
    url: str,
    *,
    streams: int,
    frames: Frames,
    features: int,
    duration_s: float,
    warmup_s: float,
    client_procs: int,
    pinning: Pinning,
    server: ServerProcess | None,
    label: str = "",
    on_window: Callable[[], None] | None = None,
) -> StreamLoad:
    """S closed-loop streams spread over client processes; the steps answered in the counted window.

    ``on_window`` is called when the counted window starts."""
    procs = max(1, min(client_procs, streams))
    shares = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    children: list[tuple[Any, Any]] = []
    try:
        for i, share in enumerate(shares):
            parent_end, child_end = ctx.Pipe()
            spec = ClientSpec(url, share, frames, features, seed=i, load_core=pinning.load)
            proc = ctx.Process(target=_client_main, args=(spec, child_end), daemon=True)
            proc.start()
            child_end.close()
            children.append((proc, parent_end))
        for _, conn in children:
            _recv(conn, CONNECT_TIMEOUT_S + 30, "connection report")
        start_at = time.monotonic() + 0.05
        count_from = start_at + warmup_s
        end_at = count_from + duration_s
        for _, conn in children:
            conn.send(("go", start_at, count_from, end_at))
        time.sleep(max(0.0, count_from - time.monotonic()))
        if on_window is not None:  # e.g. start a profiler on the server for the counted window
            on_window()
        cpu0 = server.cpu_seconds() if server else None
        threads0 = server.thread_times() if server else None
        time.sleep(max(0.0, end_at - time.monotonic()))
        cpu1 = server.cpu_seconds() if server else None
        threads1 = server.thread_times() if server else None
        results = [_recv(conn, 60.0, "result")[1] for _, conn in children]
    finally:
        for proc, conn in children:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()
    rtts = np.concatenate([r["rtts"] for r in results])
    return StreamLoad(
        streams=streams,
        frames=str(frames),
        client_procs=procs,
        window_s=duration_s,
        steps=int(rtts.size),
        steps_per_s=rtts.size / duration_s,
        errors=sum(r["errors"] for r in results),
        rtt_ms=percentiles_ms(rtts),
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        client_cpu_s=sum(r["client_cpu_s"] for r in results),
        label=label,
        threads=None if threads0 is None or threads1 is None else threads1.minus(threads0),
    )


# ----------------------------------------------------------------------- any coroutine in a client process


def _call_main(fn: Callable[..., Any], args: tuple, load_core: int | None, conn) -> None:
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    try:
        with event_loop_runner() as runner:
            conn.send(("result", runner.run(fn(*args))))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_in_client_process(fn: Callable[..., Any], args: tuple, pinning: Pinning, timeout_s: float) -> Any:
    """``fn(*args)`` (an async function at module level) in a spawned process pinned to the load core."""
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_call_main, args=(fn, args, pinning.load, child_end), daemon=True)
    proc.start()
    child_end.close()
    try:
        return _recv(parent_end, timeout_s, "result")[1]
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        parent_end.close()
