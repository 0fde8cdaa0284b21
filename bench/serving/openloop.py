"""Open-loop load at a constant rate (as wrk2 does, no coordinated omission): request i is due at
``start + i / rate`` whether or not earlier ones were answered, and its latency counts from when it was due,
so a server that stalls is charged for every request that waited behind the stall.

Both generators run in one client process on the load core (``bench.serving.ws.ClientProcesses``) on uvloop
with hand-written protocols (no HTTP or WebSocket library per request), and report their own CPU time and
how late they sent (a generator that cannot keep up shows here, not as server latency).

- HTTP: POST one pre-built request; a due request goes out on an idle keep-alive connection, a new one is
  opened when none is idle (up to ``max_conns``; past that it waits, and the wait counts).
- WebSocket: S streams, each sending its steps at rate/S (phases spread), pipelined: a step goes out when due
  even if the last one is not answered yet; answers come back in order per stream.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bench.common import BenchError
from bench.serving.procs import Pinning, ServerProcess
from bench.serving.ws import ClientProcesses, percentiles_ms

MAX_CONNS = 256
CONNECT_TIMEOUT_S = 30.0
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


async def _http_client(url: str, request: bytes, rate: float, seconds: float, max_conns: int, conn) -> dict:
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
    conn.send(("ready", len(idle)))
    start_at = (await loop.run_in_executor(None, conn.recv))[1]
    waiting: deque[int] = deque()
    total = int(rate * seconds)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = time.process_time()
    i = 0
    while i < total or waiting:
        now = time.monotonic()
        while i < total and start_at + i / rate <= now:
            due_times.append(start_at + i / rate)
            waiting.append(i)
            i += 1
        while waiting and (idle or n_conns[0] < max_conns):
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


# --------------------------------------------------------------------------------------------- WebSocket


def ws_frame(payload: bytes, opcode: int) -> bytes:
    """A masked client frame (RFC 6455 5.2); the mask is fixed: it hides nothing from a server on loopback."""
    n = len(payload)
    head = bytes([0x80 | opcode]) + (
        bytes([0x80 | n])
        if n < 126
        else bytes([0x80 | 126]) + struct.pack(">H", n)
        if n < 65536
        else bytes([0x80 | 127]) + struct.pack(">Q", n)
    )
    mask = b"\x11\x22\x33\x44"
    masked = (np.frombuffer(payload + b"\0" * (-n % 4), "<u4") ^ np.frombuffer(mask, "<u4")).tobytes()[:n]
    return head + mask + masked


class _Ws(asyncio.Protocol):
    """One WebSocket: the upgrade, then server frames parsed; ``on_message(self, opcode, payload)``."""

    def __init__(self, path: str, host: str, on_message) -> None:
        self.path, self.host, self.on_message = path, host, on_message
        self.buffer, self.open, self.transport = bytearray(), asyncio.get_running_loop().create_future(), None
        self.pending: deque[float] = deque()  # due times of the steps in flight
        self.hello = True  # the server's first message is its hello, not an answer

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.open.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            ok = self.buffer.startswith(b"HTTP/1.1 101")
            del self.buffer[: end + 4]
            if not ok:
                self.open.set_exception(BenchError("WebSocket upgrade refused"))
                return
            self.open.set_result(None)
        while len(self.buffer) >= 2:
            opcode, n, at = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if n == 126:
                n, at = (struct.unpack(">H", self.buffer[2:4])[0], 4) if len(self.buffer) >= 4 else (None, 0)
            elif n == 127:
                n, at = (
                    (struct.unpack(">Q", self.buffer[2:10])[0], 10) if len(self.buffer) >= 10 else (None, 0)
                )
            if n is None or len(self.buffer) < at + n:
                return
            payload = bytes(self.buffer[at : at + n])
            del self.buffer[: at + n]
            if opcode == 0x9:  # ping: pong with the same payload
                self.transport.write(ws_frame(payload, 0xA))
            elif opcode in (0x1, 0x2):
                self.on_message(self, opcode, payload)

    def connection_lost(self, exc) -> None:
        if not self.open.done():
            self.open.set_exception(BenchError(f"connection lost during the upgrade: {exc}"))
        self.on_message(self, None, b"")


async def _ws_client(
    url: str, streams: int, frames: list[bytes], opcode: int, rate: float, seconds: float, conn
) -> dict:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    latencies, errors, hellos = [], [0], [0]

    def on_message(ws: _Ws, op: int | None, payload: bytes) -> None:
        if op is None:  # connection lost: every step in flight is lost
            errors[0] += len(ws.pending)
            ws.pending.clear()
        elif ws.hello:
            ws.hello = False
            hellos[0] += 1
        else:
            latencies.append(time.monotonic() - ws.pending.popleft())
            errors[0] += payload.startswith(b'{"error"')

    async def open_one() -> _Ws:
        _, ws = await loop.create_connection(
            lambda: _Ws(parts.path, parts.netloc, on_message), parts.hostname, parts.port
        )
        await asyncio.wait_for(ws.open, CONNECT_TIMEOUT_S)
        return ws

    sockets = [await open_one() for _ in range(streams)]
    while hellos[0] < streams:
        await asyncio.sleep(0.01)
    data = [ws_frame(f, opcode) for f in frames]
    conn.send(("ready", streams))
    start_at = (await loop.run_in_executor(None, conn.recv))[1]
    total = int(rate * seconds)
    lags = []
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = time.process_time()
    for i in range(total):  # step i: stream i % S, its (i // S)-th step, due at start + i / rate
        due = start_at + i / rate
        if (rest := due - time.monotonic()) > 0:
            await asyncio.sleep(rest)
        ws = sockets[i % streams]
        ws.pending.append(due)
        lags.append(time.monotonic() - due)
        ws.transport.write(data[(i // streams) % len(data)])
    deadline = time.monotonic() + DRAIN_S
    while len(latencies) + errors[0] < total and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    cpu = time.process_time() - cpu0
    for ws in sockets:
        ws.transport.close()
    return {
        "latencies": np.array(latencies),
        "lags": np.array(lags),
        "errors": errors[0],
        "sent": total,
        "cpu_s": cpu,
        "connections": streams,
    }


# ------------------------------------------------------------------------------------------------ parent


def run(
    fn, args: tuple, rate: float, seconds: float, pinning: Pinning, server: ServerProcess | None
) -> OpenLoopResult:
    """``fn(*args, conn)`` (_http_client or _ws_client) in a client process; the server's CPU read around."""
    with ClientProcesses(fn, [args], pinning) as clients:
        message = (
            clients.conns[0].recv()
            if clients.conns[0].poll(CONNECT_TIMEOUT_S + 30)
            else ("error", "no ready")
        )
        if message[0] != "ready":
            raise BenchError(f"open-loop client: {message[1]}")
        start_at = time.monotonic() + 0.05
        clients.conns[0].send(("go", start_at))
        cpu0 = server.cpu_seconds() if server else None
        time.sleep(max(0.0, start_at + seconds - time.monotonic()))
        cpu1 = server.cpu_seconds() if server else None
        r = clients.results(seconds + DRAIN_S + 60)[0]
    answered = int(r["latencies"].size)
    return OpenLoopResult(
        rate,
        answered / seconds,
        r["sent"],
        answered,
        r["errors"],
        int(rate * seconds) - answered,
        percentiles_ms(r["latencies"]),
        percentiles_ms(r["lags"]),
        r["cpu_s"] / seconds,
        r["connections"],
        None if cpu0 is None else (cpu1 - cpu0) / seconds,
    )


def run_http(
    url: str,
    body: bytes,
    headers: dict[str, str],
    rate: float,
    seconds: float,
    pinning: Pinning,
    server: ServerProcess | None = None,
    max_conns: int = MAX_CONNS,
) -> OpenLoopResult:
    args = (url, http_request(url, body, headers), rate, seconds, max_conns)
    return run(_http_client, args, rate, seconds, pinning, server)


def run_ws(
    url: str,
    streams: int,
    frames: list[bytes | str],
    rate: float,
    seconds: float,
    pinning: Pinning,
    server: ServerProcess | None = None,
) -> OpenLoopResult:
    opcode = 0x1 if isinstance(frames[0], str) else 0x2
    data = [f.encode() if isinstance(f, str) else f for f in frames]
    return run(_ws_client, (url, streams, data, opcode, rate, seconds), rate, seconds, pinning, server)
