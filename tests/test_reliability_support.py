"""Helpers for the reliability suites (no tests here): a real ``psn serve`` process on loopback (always
terminated), its RSS, its Prometheus gauges, and a raw WebSocket client that can misbehave in ways a
polite library will not (never read, drop the TCP connection without a close frame, send odd frames)."""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from test_server_support import served

from server import launcher


class ServerProcess:
    """A ``psn serve`` started by server/launcher.py: the launcher's ``Server`` (``process``, ``port``,
    ``pid``, ``log``, ``base_url``, ``stop(sig, timeout)``...) with what the reliability suites read from
    it."""

    def __init__(self, server: launcher.Server) -> None:
        self.server = server

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def ws_url(self, model: str, query: str = "") -> str:
        return self.server.ws_url(f"/v1/models/{model}/stream" + (f"?{query}" if query else ""))

    def rss_mb(self) -> float:
        return rss_mb(self.server.pid)

    def gauge(self, name: str, **labels: str) -> float:
        return metric(self.server.base_url, name, **labels)


@contextmanager
def server_process(
    tmp: Path, *flags: str, models_dir: Path | None = None, ready_timeout: float = 90.0
) -> Iterator[ServerProcess]:
    """``psn serve`` (server/launcher.py: on a port it binds itself), CPU provider, INFO log in
    ``tmp/server-*.log``; ready (/readyz 200); terminated (SIGTERM, then SIGKILL) whatever happens."""
    fd, name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=tmp)
    os.close(fd)
    args = ["--providers", "CPUExecutionProvider", *flags]
    with launcher.serve(
        *args,
        models_dir=models_dir or served().models_dir,
        log=Path(name),
        env={"PSN_LOG_LEVEL": "info"},
        ready_timeout=ready_timeout,
    ) as server:
        yield ServerProcess(server)


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def metric(base: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels`` (0 when there is none)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def wait_until(predicate, timeout: float, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


# -- a raw WebSocket client --------------------------------------------------------------------------------
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0x1, 0x2, 0x8, 0x9


class RawWebSocket:
    """Just enough RFC 6455 to misbehave: frames are masked as a client must, nothing is read unless asked."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small receive buffer: a client that never reads fills it fast
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.decode(errors="replace"))
        self.headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.decode(errors="replace").split("\r\n")[1:])
            if k
        }  # the handshake response's headers, lower-case names
        self.buffer = b""

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(self._frame(opcode, payload, fin))

    @staticmethod
    def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        header = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + masked

    def flood(self, opcode: int, payload: bytes, seconds: float = 20.0) -> int:
        """Send the same frame over and over, in 64 KiB writes, until a write blocks for the socket's
        timeout (the peer stopped reading: every buffer on the way is full) or ``seconds`` pass. Returns
        the number of whole frames sent."""
        frame = self._frame(opcode, payload)
        chunk = frame * max(1, 65536 // len(frame))
        sent_bytes = 0
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                self.sock.sendall(chunk)
                sent_bytes += len(chunk)
        except TimeoutError:
            pass
        return sent_bytes // len(frame)

    def send_text(self, text: str | bytes) -> None:
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def send_binary(self, data: bytes) -> None:
        self.send_frame(OP_BINARY, data)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        return b0 & 0x0F, self._read(n)

    def recv_until_close(self, limit: int = 100_000) -> tuple[int, str, list[bytes]]:
        """Read frames until the server's close frame: (code, reason, the data frames before it)."""
        frames = []
        for _ in range(limit):
            opcode, payload = self.recv_frame()
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return code, payload[2:].decode(errors="replace"), frames
            if opcode in (OP_TEXT, OP_BINARY):
                frames.append(payload)
        raise AssertionError("no close frame")

    def drop(self) -> None:
        """Vanish without a close frame: RST (SO_LINGER 0), no FIN handshake."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
