"""Open-loop load at a constant rate (wrk2's way, no coordinated omission): request i is due at
start + i / rate whether or not earlier ones were answered, and its latency counts from its due time. One
client process (``bench.serving.ws.drive``), hand-written protocols; the generator's own CPU and lateness
are reported. HTTP: a due request goes out on an idle keep-alive connection, or a new one (up to
``MAX_CONNS``). WebSocket: S streams at rate/S each, pipelined (a step goes out when due)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from bench.common import BenchError
from bench.serving.procs import Pinning, Proc
from bench.serving.wrk import Body
from bench.serving.ws import Ws, connect_many, drive, percentiles_ms, ready_go, ws_frame

MAX_CONNS = 256
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
DRAIN_S = 5.0  # after the last due request, wait this long for answers; the rest count as lost


@dataclass
class OpenLoopResult:
    offered_per_s: float
    achieved_per_s: float  # answers / window
    sent: int
    answered: int
    errors: int  # non-200 answers, error events, connections lost
    lost: int  # not answered within DRAIN_S after the last due request
    latency_ms: dict[str, float]  # from due time to answer: p50, p90, p99, p999, mean, max
    send_lag_ms: dict[str, float]  # actual send time - due time (the generator's own lateness)
    client_cpu_util: float  # the generator's CPU seconds / window
    connections: int
    server_cpu_util: float | None = None


# ------------------------------------------------------------------------------------------------- HTTP


class _Http(asyncio.Protocol):
    """One keep-alive connection: an answer is complete when its Content-Length bytes of body are in."""

    def __init__(self, done) -> None:
        self.done, self.buffer, self.transport, self.pending = done, bytearray(), None, deque()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end])
            length = _CONTENT_LENGTH.search(head)
            if length is None:  # chunked answers are not read here: every server measured sends a length
                raise BenchError(f"an answer without Content-Length: {head[:200]!r}")
            size = end + 4 + int(length.group(1))
            if len(self.buffer) < size:
                return
            del self.buffer[:size]
            self.done(self, self.pending.popleft(), head.startswith(b"HTTP/1.1 200"))

    def connection_lost(self, exc) -> None:
        while self.pending:
            self.done(None, self.pending.popleft(), False)


async def _http_client(url: str, request: bytes, rate: float, seconds: float, conn) -> dict:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    idle: list[_Http] = []
    due_times, latencies, lags, errors, n_conns = [], [], [], [0], [0]

    def done(proto: _Http | None, i: int, ok: bool) -> None:
        latencies.append(time.monotonic() - due_times[i])
        errors[0] += not ok
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            idle.append(proto)

    async def connect() -> _Http:
        n_conns[0] += 1
        _, proto = await loop.create_connection(lambda: _Http(done), parts.hostname, parts.port)
        return proto

    idle += [await connect() for _ in range(4)]
    waiting: deque[int] = deque()
    total = int(rate * seconds)
    start_at = (await ready_go(conn, len(idle)))[0]
    cpu0 = time.process_time()
    i = 0
    while i < total or waiting:
        now = time.monotonic()
        while i < total and start_at + i / rate <= now:
            due_times.append(start_at + i / rate)
            waiting.append(i)
            i += 1
        while waiting and (idle or n_conns[0] < MAX_CONNS):
            proto = idle.pop() if idle else await connect()
            if proto.transport.is_closing():  # the server closed an idle keep-alive connection
                continue
            k = waiting.popleft()
            lags.append(time.monotonic() - due_times[k])
            proto.pending.append(k)
            proto.transport.write(request)
        if i < total:
            await asyncio.sleep(max(0.0, start_at + i / rate - time.monotonic()))
        elif waiting:
            await asyncio.sleep(0.0005)
    deadline = time.monotonic() + DRAIN_S
    while len(latencies) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    cpu = time.process_time() - cpu0
    return {
        "latencies": np.array(latencies),
        "lags": np.array(lags),
        "errors": errors[0],
        "sent": len(lags),
        "cpu_s": cpu,
        "connections": n_conns[0],
    }


def http_request(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _ws_client(url: str, streams: int, frames: list[bytes], rate: float, seconds: float, conn) -> dict:
    latencies, errors = [], [0]

    def on_message(ws: Ws, payload: bytes | None) -> None:
        if payload is None:  # connection lost: every step in flight is lost
            errors[0] += len(ws.pending)
            ws.pending.clear()
        else:
            latencies.append(time.monotonic() - ws.pending.popleft())
            errors[0] += payload.startswith(b'{"error"')

    sockets = await connect_many(url, streams, on_message)
    total, lags = int(rate * seconds), []
    start_at = (await ready_go(conn, streams))[0]
    cpu0 = time.process_time()
    for i in range(total):  # step i: stream i % S, its (i // S)-th step, due at start + i / rate
        due = start_at + i / rate
        if (rest := due - time.monotonic()) > 0:
            await asyncio.sleep(rest)
        ws = sockets[i % streams]
        ws.pending.append(due)
        lags.append(time.monotonic() - due)
        ws.send(frames[(i // streams) % len(frames)])
    deadline = time.monotonic() + DRAIN_S
    while len(latencies) + errors[0] < total and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    cpu = time.process_time() - cpu0
    for ws in sockets:
        ws.transport.close()
    done = {"latencies": np.array(latencies), "lags": np.array(lags), "errors": errors[0], "sent": total}
    return done | {"cpu_s": cpu, "connections": streams}


# ------------------------------------------------------------------------------------------------ parent


def run(
    fn, args: tuple, rate: float, seconds: float, pinning: Pinning, server: Proc | None
) -> OpenLoopResult:
    """``fn(*args, conn)`` (_http_client or _ws_client) in a client process; the server's CPU read around."""
    run = drive(fn, [args], pinning, server, 0.0, seconds, timeout_s=seconds + DRAIN_S + 60)
    r, answered = run.results[0], int(run.results[0]["latencies"].size)
    return OpenLoopResult(
        offered_per_s=rate,
        achieved_per_s=answered / seconds,
        sent=r["sent"],
        answered=answered,
        errors=r["errors"],
        lost=int(rate * seconds) - answered,
        latency_ms=percentiles_ms(r["latencies"]),
        send_lag_ms=percentiles_ms(r["lags"]),
        client_cpu_util=r["cpu_s"] / seconds,
        connections=r["connections"],
        server_cpu_util=None if run.server_cpu_s is None else run.server_cpu_s / seconds,
    )


def run_http(
    url: str, body: Body, rate: float, seconds: float, pinning: Pinning, server: Proc | None = None
) -> OpenLoopResult:
    args = (url, http_request(url, body.data, body.all_headers()), rate, seconds)
    return run(_http_client, args, rate, seconds, pinning, server)


def run_ws(
    url: str,
    streams: int,
    frames: list[bytes | str],
    rate: float,
    seconds: float,
    pinning: Pinning,
    server: Proc | None = None,
) -> OpenLoopResult:
    data = [ws_frame(f) for f in frames]
    return run(_ws_client, (url, streams, data, rate, seconds), rate, seconds, pinning, server)
