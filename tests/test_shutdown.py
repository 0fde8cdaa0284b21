"""Shutdown of a real server process: SIGTERM lets the HTTP requests in flight finish, closes every stream
WebSocket with 1001 (going away) and a reason at once, refuses new connections, and exits cleanly within
the grace period (uvicorn's timeout_graceful_shutdown)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
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


def _response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_sigterm_finishes_requests_in_flight_and_closes_streams_1001(tmp_path: Path) -> None:
    with server_process(tmp_path) as server:
        streams = []
        for kind in (PSN, MASKED, SLIDING, SLIDING):
            ws = RawWebSocket(server.port, f"/v1/models/{served().name(kind)}/stream")
            ws.recv_frame()
            streams.append(ws)
        m = served().manifest(SLIDING)
        streams[-1].send_binary(sequence(m)[0].astype("<f4").tobytes())
        assert json.loads(streams[-1].recv_frame()[1])["t"] == 0

        # a classify request in flight: headers and half the body sent when the signal comes
        body = json.dumps({"inputs": sequence(m, batch=4).tolist()}).encode()
        upload = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        upload.sendall(
            f"POST /v1/models/{m.name}/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        time.sleep(0.2)  # the server has the request (headers parsed, body being read)

        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for ws in streams:
            code, reason, _ = ws.recv_until_close()
            assert (code, reason) == (1001, "server shutting down")
            ws.close()
        closed_after = time.monotonic() - start
        assert closed_after < 2.0, closed_after
        with pytest.raises(OSError):  # no new connections once the shutdown began
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()

        upload.sendall(body[len(body) // 2 :])  # the request in flight is still answered, in full
        status, answer = _response(upload)
        upload.close()
        assert status == 200, answer
        assert len(answer["predictions"]) == 4

        code = server.proc.wait(GRACE_S + 10)
        exited_after = time.monotonic() - start
        log = server.log.read_text()
    assert code in (0, -signal.SIGTERM), log
    assert exited_after < GRACE_S + 5, exited_after
    assert "closed 4 stream socket(s) with 1001" in log
    assert "Application shutdown complete" in log
    assert "Traceback" not in log, log[-3000:]


def test_sigterm_under_classify_load_never_answers_5xx(tmp_path: Path) -> None:
    """Clients hammering classify while the server stops: each request is answered 200 or fails to
    connect / finds its idle connection closed; none gets a 5xx or a truncated answer."""
    with server_process(tmp_path) as server:
        m = served().manifest(PSN)
        body = {"inputs": sequence(m, batch=16).tolist()}
        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=server.base, timeout=10) as client:
                while not stop.is_set():
                    try:
                        response = client.post(f"/v1/models/{m.name}/classify", json=body)
                    except httpx.TransportError as exc:
                        outcomes[type(exc).__name__] += 1
                        time.sleep(0.01)
                        continue
                    outcomes[str(response.status_code)] += 1
                    if response.status_code == 200:
                        assert len(response.json()["predictions"]) == 16

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        served_before = outcomes["200"]
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(GRACE_S + 10)
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join(15)
    print("classify during shutdown", dict(outcomes))
    assert served_before > 0
    assert not [k for k in outcomes if k.isdigit() and k != "200"], outcomes
    assert code in (0, -signal.SIGTERM)
