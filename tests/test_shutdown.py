"""Shutdown of a real server process: SIGTERM lets the HTTP requests in flight finish, closes every stream
WebSocket with 1001 (going away) and a reason at once (before the request in flight is answered), refuses
new connections, and exits cleanly within the grace period (uvicorn's timeout_graceful_shutdown, which logs
when it is exceeded)."""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from test_reliability_support import RawWebSocket, server_process
from test_server_support import sequence, served

from psn_runtime.manifest import NeuronKind
from server.cli import GRACE_S

pytestmark = pytest.mark.e2e
PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN


def _read_head(sock: socket.socket, data: bytes = b"") -> tuple[bytes, bytes]:
    """(one response head, the bytes after it) read from sock."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _response(sock: socket.socket, data: bytes = b"") -> tuple[int, dict]:
    head, body = _read_head(sock, data)
    while chunk := sock.recv(65536):
        body += chunk
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_sigterm_finishes_requests_in_flight_and_closes_streams_1001(tmp_path: Path) -> None:
    with server_process(tmp_path) as server:
        m = served().manifest(SLIDING)
        # a classify request in flight: the app is reading its body (it asked for it: 100 Continue) and has
        # half of it when the signal comes
        body = json.dumps({"inputs": sequence(m, batch=4).tolist()}).encode()
        upload = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        upload.sendall(
            f"POST /v1/models/{m.name}/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        head, early = _read_head(upload)
        assert head == b"HTTP/1.1 100 Continue", head
        upload.sendall(body[: len(body) // 2])

        streams = []
        for kind in (PSN, MASKED, SLIDING, SLIDING):
            ws = RawWebSocket(server.port, f"/v1/models/{served().name(kind)}/stream")
            ws.recv_frame()
            streams.append(ws)
        streams[-1].send_binary(sequence(m)[0].astype("<f4").tobytes())
        assert json.loads(streams[-1].recv_frame()[1])["t"] == 0

        server.process.send_signal(signal.SIGTERM)
        # every stream is closed with 1001 while the classify request is still unanswered (not after it)
        for ws in streams:
            code, reason, _ = ws.recv_until_close()
            assert (code, reason) == (1001, "server shutting down")
            ws.close()
        with pytest.raises(OSError):  # no new connections once the shutdown began
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()

        upload.sendall(body[len(body) // 2 :])  # the request in flight is still answered, in full
        status, answer = _response(upload, early)
        upload.close()
        assert status == 200, answer
        assert len(answer["predictions"]) == 4

        code = server.process.wait(GRACE_S + 60)  # a bound on a hang, not a timing: the log says why below
        log = server.log.read_text()
    assert code in (0, -signal.SIGTERM), log
    assert "timeout graceful shutdown exceeded" not in log, log[-3000:]  # everything ended within GRACE_S
    assert "closed 4 stream socket(s) with 1001" in log
    assert "Application shutdown complete" in log
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.slow
def test_sigterm_under_classify_load_never_answers_5xx(tmp_path: Path) -> None:
    """Clients hammering classify while the server stops: each request is answered 200 in full, or fails to
    connect / finds its idle connection closed once the signal was sent; none gets a 5xx or a truncated
    answer. Each client stops at its first failure after the signal (the server is gone for it)."""
    clients, warm = 6, 12
    with server_process(tmp_path) as server:
        m = served().manifest(PSN)
        body = {"inputs": sequence(m, batch=16).tolist()}
        outcomes: Counter[str] = Counter()  # "200", other statuses, "truncated", failures by kind and phase
        lock = threading.Lock()
        warmed, signalled = threading.Event(), threading.Event()

        def record(outcome: str) -> None:
            with lock:
                outcomes[outcome] += 1
                if outcomes["200"] >= warm:
                    warmed.set()

        def hammer() -> None:
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                while True:
                    try:
                        response = client.post(f"/v1/models/{m.name}/classify", json=body)
                    except httpx.TransportError as exc:
                        after = signalled.is_set()  # set before the signal is sent
                        record(f"{type(exc).__name__} {'after' if after else 'before'} the signal")
                        if after:
                            return
                        continue
                    try:
                        whole = len(response.json()["predictions"]) == 16
                    except (ValueError, KeyError):
                        whole = False
                    status = str(response.status_code)
                    record(status if whole or status != "200" else "truncated")

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        assert warmed.wait(120), outcomes  # the load is on: answers are coming back
        signalled.set()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(GRACE_S + 60)  # a bound on a hang
        for thread in threads:
            thread.join(60)
        alive = [t for t in threads if t.is_alive()]
    print("classify during shutdown", dict(outcomes))
    assert not alive, outcomes
    assert outcomes["200"] >= warm
    assert not [k for k in outcomes if k != "200" and "after the signal" not in k], outcomes
    assert code in (0, -signal.SIGTERM)
