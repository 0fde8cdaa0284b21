"""The load generators' core: client processes (spawned, pinned to the load core, uvloop) that connect
first, then run in one time window the parent sets (``drive``: a warm-up, then the counted window, over
which the parent reads the server's CPU); a hand-written WebSocket client (``connect``: no library per
message); closed-loop streams (each sends a step, awaits its answer, sends the next). Open loop:
``bench.serving.openloop``; HTTP load: ``bench.serving.wrk``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bench.common import BenchError
from bench.serving.procs import Pinning, Proc, ThreadTimes, cpu_seconds, thread_times

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


def percentiles_ms(seconds: np.ndarray) -> dict[str, float]:
    if seconds.size == 0:
        return dict.fromkeys(("p50", "p90", "p99", "p999", "mean", "max"), float("nan"))
    p = np.percentile(seconds, [50, 90, 99, 99.9]) * 1000.0
    out = {k: float(v) for k, v in zip(("p50", "p90", "p99", "p999"), p, strict=True)}
    return out | {"mean": float(seconds.mean() * 1000.0), "max": float(seconds.max() * 1000.0)}


def make_frames(frames: Frames, features: int, seed: int) -> list[bytes | str]:
    x = np.random.default_rng(seed).random((16, features)).astype("<f4")  # [16, F] in [0, 1)
    if frames is Frames.BINARY:
        return [row.tobytes() for row in x]
    return [json.dumps({"x": [round(float(v), 4) for v in row]}) for row in x]


# ---------------------------------------------------------------------------------------- WebSocket client


def ws_frame(payload: bytes | str, opcode: int | None = None) -> bytes:
    """A masked client frame (RFC 6455 5.2): text for str, binary for bytes unless ``opcode``; the mask is
    fixed: it hides nothing from a server on loopback."""
    if isinstance(payload, str):
        payload, opcode = payload.encode(), opcode or 0x1
    n, opcode = len(payload), opcode or 0x2
    size = struct.pack(">BH", 0xFE, n) if n < 65536 else struct.pack(">BQ", 0xFF, n)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else size)
    mask = b"\x11\x22\x33\x44"
    masked = (np.frombuffer(payload + b"\0" * (-n % 4), "<u4") ^ np.frombuffer(mask, "<u4")).tobytes()[:n]
    return head + mask + masked


class Ws(asyncio.Protocol):
    """One WebSocket: the upgrade, the server's hello (``opened`` resolves to it), then each text or binary
    message to ``on_message(self, payload)`` (None: connection lost), by default queued for ``recv()``."""

    def __init__(self, path: str, host: str, on_message: Callable[[Ws, bytes | None], None] | None) -> None:
        self.path, self.host, self.on_message = path, host, on_message or Ws._queue
        self.buffer, self.transport, self.upgraded = bytearray(), None, False
        self.opened = asyncio.get_running_loop().create_future()
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.pending: deque[float] = deque()  # open loop: due times of the steps in flight

    def _queue(self, payload: bytes | None) -> None:
        self.inbox.put_nowait(payload)

    async def recv(self) -> bytes:
        if (payload := await self.inbox.get()) is None:
            raise BenchError("WebSocket connection lost")
        return payload

    def send(self, frame: bytes) -> None:
        """A frame made by ``ws_frame``."""
        self.transport.write(frame)

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            if (end := self.buffer.find(b"\r\n\r\n")) < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                refused = BenchError(f"WebSocket upgrade refused: {bytes(self.buffer[:200])!r}")
                self.opened.set_exception(refused)
                self.transport.close()
                return
            del self.buffer[: end + 4]
            self.upgraded = True
        while len(self.buffer) >= 2:
            opcode, n, at = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if n >= 126:
                at = 4 if n == 126 else 10
                if len(self.buffer) < at:
                    return
                n = struct.unpack(">H" if at == 4 else ">Q", self.buffer[2:at])[0]
            if len(self.buffer) < at + n:
                return
            payload = bytes(self.buffer[at : at + n])
            del self.buffer[: at + n]
            if opcode == 0x9:  # ping: pong with the same payload
                self.transport.write(ws_frame(payload, 0xA))
            elif opcode in (0x1, 0x2) and not self.opened.done():
                self.opened.set_result(payload)
            elif opcode in (0x1, 0x2):
                self.on_message(self, payload)

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(BenchError(f"WebSocket connection lost before its hello: {exc}"))
        self.on_message(self, None)


async def connect(url: str, on_message: Callable[[Ws, bytes | None], None] | None = None) -> Ws:
    """A WebSocket to url (ws://HOST:PORT/PATH) once the server's hello is in (an error hello raises)."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, ws = await loop.create_connection(
        lambda: Ws(parts.path, parts.netloc, on_message), parts.hostname, parts.port
    )
    hello = await asyncio.wait_for(ws.opened, CONNECT_TIMEOUT_S)
    if hello.startswith(b'{"error"'):
        raise BenchError(f"{url}: {hello[:200]!r}")
    return ws


async def connect_many(
    url: str, n: int, on_message: Callable[[Ws, bytes | None], None] | None = None
) -> list[Ws]:
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one() -> Ws:
        async with gate:
            return await connect(url, on_message)

    return list(await asyncio.gather(*(one() for _ in range(n))))


# --------------------------------------------------------------------------------------- client processes


def _child_main(fn: Callable[..., Any], args: tuple, load_core: int | None, conn) -> None:
    """In a spawned client process: ``await fn(*args, conn)`` on uvloop (when installed), the result or the
    error sent back through ``conn``."""
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
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


@contextlib.contextmanager
def client_processes(fn: Callable[..., Any], arg_list: list[tuple], pinning: Pinning) -> Iterator[list[Any]]:
    """``with client_processes(fn, [args, ...], pinning) as conns:`` one spawned process per args tuple, each
    running ``fn(*args, conn)``, and the pipes to them; always joined (then terminated) on exit."""
    ctx = mp.get_context("spawn")
    children = []
    try:
        for args in arg_list:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_child_main, args=(fn, args, pinning.load, child_end), daemon=True)
            proc.start()
            child_end.close()
            children.append((proc, parent_end))
        yield [conn for _, conn in children]
    finally:
        for proc, conn in children:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()


def run_in_client_process(fn: Callable[..., Any], args: tuple, pinning: Pinning, timeout_s: float) -> Any:
    """``await fn(*args, conn)`` (an async function at module level) in a process pinned to the load core."""
    with client_processes(fn, [args], pinning) as (conn,):
        return _recv(conn, timeout_s, "result")[1]


async def ready_go(conn, connections: int) -> tuple[float, float, float]:
    """In a client process: report its connections, wait for ``drive``'s (start_at, count_from, end_at), then
    until start_at; returns them."""
    conn.send(("ready", connections))
    start_at, count_from, end_at = (await asyncio.get_running_loop().run_in_executor(None, conn.recv))[1:]
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    return start_at, count_from, end_at


@dataclass
class Driven:
    results: list[Any]  # each client process's
    server_cpu_s: float | None  # over the counted window
    threads: ThreadTimes | None


def drive(
    fn: Callable[..., Any],
    arg_list: list[tuple],
    pinning: Pinning,
    server: Proc | None,
    warmup_s: float,
    seconds: float,
    on_window: Callable[[], None] | None = None,
    timeout_s: float = 60.0,
) -> Driven:
    """``fn(*args, conn)`` in one client process per args; all start together (``ready_go``), warm up for
    warmup_s, then count for ``seconds``. ``on_window`` is called as the counted window starts."""
    with client_processes(fn, arg_list, pinning) as conns:
        for conn in conns:
            _recv(conn, CONNECT_TIMEOUT_S + 30, "connection report")
        start_at = time.monotonic() + 0.05
        count_from, end_at = start_at + warmup_s, start_at + warmup_s + seconds
        for conn in conns:
            conn.send(("go", start_at, count_from, end_at))
        time.sleep(max(0.0, count_from - time.monotonic()))
        if on_window is not None:
            on_window()
        cpu0, threads0 = (cpu_seconds(server.pid), thread_times(server.pid)) if server else (None, None)
        time.sleep(max(0.0, end_at - time.monotonic()))
        cpu1, threads1 = (cpu_seconds(server.pid), thread_times(server.pid)) if server else (None, None)
        results = [_recv(conn, timeout_s, "result")[1] for conn in conns]
    return Driven(
        results=results,
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        threads=None if threads0 is None or threads1 is None else threads1.minus(threads0),
    )


# ------------------------------------------------------------------------------------------- closed loop


async def _step_loop(ws: Ws, frames: list[bytes], count_from: float, end_at: float, rtts: list[float]) -> int:
    """Closed loop until end_at; appends the round trips started after count_from; returns error answers."""
    mono, errors, i, n, reset = time.monotonic, 0, 0, len(frames), ws_frame(RESET)
    while (t0 := mono()) < end_at:
        ws.send(frames[i % n])
        answer = await ws.recv()
        t1 = mono()
        i += 1
        if answer.startswith(b'{"error"'):
            errors += 1
            continue
        if t0 >= count_from:
            rtts.append(t1 - t0)
        if b'"done":true' in answer:  # a bounded model took all its steps: start a new sequence
            ws.send(reset)
            await ws.recv()
    return errors


async def _cpu_window(count_from: float, end_at: float) -> float:
    await asyncio.sleep(max(0.0, count_from - time.monotonic()))
    c0 = time.process_time()
    await asyncio.sleep(max(0.0, end_at - time.monotonic()))
    return time.process_time() - c0


async def _closed_loop_client(url: str, streams: int, frames: Frames, features: int, seed: int, conn) -> dict:
    sockets = await connect_many(url, streams)
    try:
        data = [ws_frame(f) for f in make_frames(frames, features, seed)]
        _, count_from, end_at = await ready_go(conn, len(sockets))
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
        for ws in sockets:
            ws.transport.close()


def run_streams(
    url: str,
    streams: int,
    frames: Frames,
    features: int,
    plan: Any,
    pinning: Pinning,
    server: Proc | None = None,
    on_window: Callable[[], None] | None = None,
) -> StreamLoad:
    """S closed-loop streams spread over ``plan.client_procs`` client processes; the steps answered in the
    counted window (``plan.warmup_s``, then ``plan.duration_s``)."""
    procs = max(1, min(plan.client_procs, streams))
    shares = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
    args = [(url, share, frames, features, i) for i, share in enumerate(shares)]
    run = drive(_closed_loop_client, args, pinning, server, plan.warmup_s, plan.duration_s, on_window)
    rtts = np.concatenate([r["rtts"] for r in run.results])
    return StreamLoad(
        streams=streams,
        frames=str(frames),
        client_procs=procs,
        window_s=plan.duration_s,
        steps=int(rtts.size),
        steps_per_s=rtts.size / plan.duration_s,
        errors=sum(r["errors"] for r in run.results),
        rtt_ms=percentiles_ms(rtts),
        server_cpu_s=run.server_cpu_s,
        client_cpu_s=sum(r["client_cpu_s"] for r in run.results),
        threads=run.threads,
    )
