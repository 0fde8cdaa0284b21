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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from bench.common import BenchError
from bench.serving.procs import Pinning, ServerProcess, ThreadTimes, pin_self

CONNECT_TIMEOUT_S = 60.0
CONNECT_PARALLEL = 32  # connections opened at once by one client process
RESET = '{"reset": true}'


class Frames(StrEnum):
    BINARY = "binary"  # F little-endian float32
    JSON = "json"  # {"x": [f, ...]}


@dataclass
class StreamLoad:
    """One run of S streams: the aggregate rate, the step round trip, the CPU on both sides."""

    streams: int
    frames: str
    client_procs: int
    window_s: float
    steps: int
    steps_per_s: float
    errors: int
    rtt_ms: dict[str, float]  # p50, p90, p99, p999, mean, max
    server_cpu_s: float | None
    client_cpu_s: float
    threads: ThreadTimes | None = None  # the server's, over the counted window

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentiles_ms(seconds: np.ndarray) -> dict[str, float]:
    if seconds.size == 0:
        return dict.fromkeys(("p50", "p90", "p99", "p999", "mean", "max"), float("nan"))
    p = np.percentile(seconds, [50, 90, 99, 99.9]) * 1000.0
    out = {k: float(v) for k, v in zip(("p50", "p90", "p99", "p999"), p, strict=True)}
    return out | {"mean": float(seconds.mean() * 1000.0), "max": float(seconds.max() * 1000.0)}


def make_frames(frames: Frames, features: int, seed: int, count: int = 16) -> list[bytes | str]:
    x = np.random.default_rng(seed).random((count, features)).astype("<f4")  # [count, F] in [0, 1)
    if frames is Frames.BINARY:
        return [row.tobytes() for row in x]
    return [json.dumps({"x": [round(float(v), 4) for v in row]}) for row in x]


async def open_socket(url: str):
    from websockets.asyncio.client import connect

    ws = await connect(
        url,
        compression=None,
        ping_interval=None,
        open_timeout=CONNECT_TIMEOUT_S,
        close_timeout=2,
        max_size=1 << 20,
    )
    hello = await ws.recv()
    if '"error"' in hello[:20]:
        raise BenchError(f"{url}: {hello[:200]}")
    return ws


async def open_sockets(url: str, n: int) -> list:
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one():
        async with gate:
            return await open_socket(url)

    return list(await asyncio.gather(*(one() for _ in range(n))))


# --------------------------------------------------------------------------------------- client processes


def _child_main(fn: Callable[..., Any], args: tuple, load_core: int | None, conn) -> None:
    """In a spawned client process: ``await fn(*args, conn)`` on uvloop (when installed), the result or the
    error sent back through ``conn``."""
    pin_self(load_core)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ModuleNotFoundError:
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            conn.send(("result", runner.run(fn(*args, conn))))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _recv(conn, timeout: float, what: str):
    if not conn.poll(timeout):
        raise BenchError(f"client process: no {what} after {timeout:.0f} s")
    message = conn.recv()
    if message[0] == "error":
        raise BenchError(f"client process failed: {message[1]}")
    return message


class ClientProcesses:
    """``with ClientProcesses(fn, [args, ...], pinning) as clients:`` one spawned process per args tuple, each
    running ``fn(*args, conn)``; ``clients.conns`` talk to them; always joined (then terminated) on exit."""

    def __init__(self, fn: Callable[..., Any], arg_list: list[tuple], pinning: Pinning) -> None:
        ctx = mp.get_context("spawn")
        self.children = []
        for args in arg_list:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_child_main, args=(fn, args, pinning.load, child_end), daemon=True)
            proc.start()
            child_end.close()
            self.children.append((proc, parent_end))
        self.conns = [conn for _, conn in self.children]

    def results(self, timeout: float) -> list[Any]:
        return [_recv(conn, timeout, "result")[1] for conn in self.conns]

    def __enter__(self) -> ClientProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc, conn in self.children:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()


def run_in_client_process(fn: Callable[..., Any], args: tuple, pinning: Pinning, timeout_s: float) -> Any:
    """``await fn(*args, conn)`` (an async function at module level) in a process pinned to the load core."""
    with ClientProcesses(fn, [args], pinning) as client:
        return client.results(timeout_s)[0]


# ------------------------------------------------------------------------------------------- closed loop


async def _step_loop(ws, frames: list, count_from: float, end_at: float, rtts: list[float]) -> int:
    """Closed loop until end_at; appends the round trips started after count_from; returns error answers."""
    mono, errors, i, n = time.monotonic, 0, 0, len(frames)
    while (t0 := mono()) < end_at:
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
    return errors


async def _cpu_window(count_from: float, end_at: float) -> float:
    await asyncio.sleep(max(0.0, count_from - time.monotonic()))
    c0 = time.process_time()
    await asyncio.sleep(max(0.0, end_at - time.monotonic()))
    return time.process_time() - c0


async def _closed_loop_client(url: str, streams: int, frames: Frames, features: int, seed: int, conn) -> dict:
    sockets = await open_sockets(url, streams)
    try:
        conn.send(("ready", len(sockets)))
        message = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        if message[0] != "go":
            return {"aborted": True}
        _, start_at, count_from, end_at = message
        data = make_frames(frames, features, seed)
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        rtts: list[list[float]] = [[] for _ in sockets]
        cpu = asyncio.ensure_future(_cpu_window(count_from, end_at))
        loops = (
            _step_loop(ws, data[i % 4 :] + data[: i % 4], count_from, end_at, rtts[i])
            for i, ws in enumerate(sockets)
        )
        errors = await asyncio.gather(*loops)
        flat = np.fromiter((r for rs in rtts for r in rs), dtype=np.float64)
        return {"rtts": flat, "errors": int(sum(errors)), "client_cpu_s": await cpu}
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def run_streams(
    url: str,
    streams: int,
    frames: Frames,
    features: int,
    plan: Any,
    pinning: Pinning,
    server: ServerProcess | None = None,
    on_window: Callable[[], None] | None = None,
) -> StreamLoad:
    """S closed-loop streams spread over ``plan.client_procs`` client processes; the steps answered in the
    counted window (``plan.warmup_s``, then ``plan.duration_s``). ``on_window`` is called when the counted
    window starts (e.g. to start a profiler)."""
    duration_s, warmup_s, client_procs = plan.duration_s, plan.warmup_s, plan.client_procs
    procs = max(1, min(client_procs, streams))
    shares = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
    args = [(url, share, frames, features, i) for i, share in enumerate(shares)]
    with ClientProcesses(_closed_loop_client, args, pinning) as clients:
        for conn in clients.conns:
            _recv(conn, CONNECT_TIMEOUT_S + 30, "connection report")
        start_at = time.monotonic() + 0.05
        count_from, end_at = start_at + warmup_s, start_at + warmup_s + duration_s
        for conn in clients.conns:
            conn.send(("go", start_at, count_from, end_at))
        time.sleep(max(0.0, count_from - time.monotonic()))
        if on_window is not None:
            on_window()
        cpu0, threads0 = (server.cpu_seconds(), server.thread_times()) if server else (None, None)
        time.sleep(max(0.0, end_at - time.monotonic()))
        cpu1, threads1 = (server.cpu_seconds(), server.thread_times()) if server else (None, None)
        results = clients.results(60.0)
    rtts = np.concatenate([r["rtts"] for r in results])
    return StreamLoad(
        streams,
        str(frames),
        procs,
        duration_s,
        int(rtts.size),
        rtts.size / duration_s,
        sum(r["errors"] for r in results),
        percentiles_ms(rtts),
        None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        sum(r["client_cpu_s"] for r in results),
        None if threads0 is None or threads1 is None else threads1.minus(threads0),
    )
