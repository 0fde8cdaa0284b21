"""Bad input over WebSocket against a real server process: 30 kinds of abuse, each answered with an error
event (the socket and the stream's state stay usable) or a close code with a reason, while a well-behaved
stream runs on the same server at the same time and gets answers byte-for-byte identical to a run without
the bad client."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_reliability_support import RawWebSocket, ServerProcess, server_process, wait_until
from test_server_support import sequence, served
from websockets.sync.client import connect

from psn_runtime.manifest import Manifest, NeuronKind

pytestmark = pytest.mark.e2e
PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN
LIMIT = 4096  # max_ws_message_bytes of the server under test


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server_process(tmp_path_factory.mktemp("ws"), "--max-ws-message-bytes", str(LIMIT)) as s:
        yield s


def frames(m: Manifest, steps: int, seed: int) -> list[bytes]:
    x = np.concatenate([sequence(m, seed=seed + i) for i in range(-(-steps // m.T))])[:steps]  # [steps, F]
    return [row.astype("<f4").tobytes() for row in x]


def good_pass(ws, m: Manifest, rows: list[bytes]) -> list[str]:
    """One sequence on an open socket (binary frames), then a reset: the answers' exact text."""
    answers = []
    for row in rows:
        ws.send(row)
        answers.append(ws.recv(timeout=10))
    ws.send('{"reset": true}')
    assert json.loads(ws.recv(timeout=10)) == {"reset": True, "t": -1}
    return answers


@dataclass
class Victim:
    """A well-behaved stream (sliding PSN, logits on, 2T steps a pass) running in a thread."""

    server: ServerProcess
    reference: list[str]
    passes: int = 0
    mismatches: list[tuple[int, str, str]] = field(default_factory=list)
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        m = served().manifest(SLIDING)
        rows = frames(m, 2 * m.T, seed=100)
        try:
            with connect(self.server.ws_url(m.name, "logits=true"), compression=None) as ws:
                ws.recv(timeout=10)
                while not self.stop.is_set():
                    got = good_pass(ws, m, rows)
                    for i, (a, b) in enumerate(zip(got, self.reference, strict=True)):
                        if a != b:
                            self.mismatches.append((i, a, b))
                    self.passes += 1
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.fixture(scope="module")
def reference(server: ServerProcess) -> list[str]:
    """The victim's answers with nobody else on the server (the same every time: checked twice)."""
    m = served().manifest(SLIDING)
    rows = frames(m, 2 * m.T, seed=100)
    with connect(server.ws_url(m.name, "logits=true"), compression=None) as ws:
        ws.recv(timeout=10)
        first = good_pass(ws, m, rows)
        assert good_pass(ws, m, rows) == first
    return first


@pytest.fixture
def victim(server: ServerProcess, reference: list[str]) -> Iterator[Victim]:
    v = Victim(server, reference)
    thread = threading.Thread(target=v.run, daemon=True)
    thread.start()
    assert wait_until(lambda: v.passes >= 1 or v.error is not None, 20)
    start = v.passes
    yield v
    assert wait_until(lambda: v.passes >= start + 1 or v.error is not None, 20)  # a pass during the abuse
    v.stop.set()
    thread.join(20)
    assert v.error is None, repr(v.error)
    assert not v.mismatches, v.mismatches[:2]
    assert v.passes >= 2


# -- the abuses -------------------------------------------------------------------------------------------
def open_raw(server: ServerProcess, kind: NeuronKind = SLIDING, query: str = "", **kw) -> RawWebSocket:
    ws = RawWebSocket(
        server.port, f"/v1/models/{served().name(kind)}/stream" + (f"?{query}" if query else ""), **kw
    )
    _opcode, hello = ws.recv_frame()
    assert json.loads(hello)["model"] == served().name(kind)
    return ws


def answer(ws: RawWebSocket) -> dict:
    opcode, payload = ws.recv_frame()
    assert opcode == 0x1, (opcode, payload)
    return json.loads(payload)


def error_event(ws: RawWebSocket, code: str, param: str | None = "<any>") -> dict:
    error = answer(ws)["error"]
    assert error["code"] == code, error
    assert error["message"], error
    if param != "<any>":
        assert error.get("param") == param, error
    return error


def step_frame(m: Manifest, value: float) -> bytes:
    """One timestep of model ``m``, every feature ``value``: a binary frame's payload."""
    return np.full(m.features, value, dtype="<f4").tobytes()


def still_works(ws: RawWebSocket, m: Manifest, t: int = 0) -> None:
    """After an error event, the same socket and stream keep stepping where they were."""
    ws.send_binary(step_frame(m, 0.25))
    assert answer(ws)["t"] == t


def closed(ws: RawWebSocket, code: int) -> str:
    got, reason, _ = ws.recv_until_close()
    assert got == code, (got, reason)
    assert reason or code == 1007, "a close needs a reason"  # 1007 comes from uvicorn itself, reasonless
    ws.close()
    return reason


Abuse = Callable[[ServerProcess], None]
F = lambda: served().manifest(SLIDING).features  # noqa: E731


def event_case(frame: bytes | str, code: str, param: str | None = "<any>", binary: bool = False) -> Abuse:
    def abuse(server: ServerProcess) -> None:
        m = served().manifest(SLIDING)
        ws = open_raw(server)
        for _ in range(3):  # again and again: each time an event, the stream untouched
            ws.send_binary(frame) if binary else ws.send_text(frame)
            error_event(ws, code, param)
        still_works(ws, m)
        ws.close()

    return abuse


def _lazy(fn: Callable[[], Abuse]) -> Abuse:
    return lambda server: fn()(server)


def too_big(binary: bool) -> Abuse:
    def abuse(server: ServerProcess) -> None:
        ws = open_raw(server)
        payload = b"\x00" * (LIMIT + 4) if binary else json.dumps({"x": [0.5] * 2000})
        ws.send_binary(payload) if binary else ws.send_text(payload)
        assert closed(ws, 1009)

    return abuse


def invalid_utf8(server: ServerProcess) -> None:
    ws = open_raw(server)
    ws.send_text(b'{"x": [\xff\xfe]}')
    closed(ws, 1007)  # uvicorn's protocol layer refuses the frame before the app sees it


def after_masked_T(server: ServerProcess) -> None:
    m = served().manifest(MASKED)
    ws = open_raw(server, MASKED)
    for t in range(m.T):
        ws.send_binary(step_frame(m, 0.1))
        assert answer(ws)["done"] is (t == m.T - 1)
    for _ in range(3):
        ws.send_binary(step_frame(m, 0.1))
        assert str(m.T) in error_event(ws, "stream_over")["message"]
    ws.send_text('{"reset": true}')
    assert answer(ws) == {"reset": True, "t": -1}
    still_works(ws, m)
    ws.close()


def after_psn_T(server: ServerProcess) -> None:
    m = served().manifest(PSN)
    ws = open_raw(server, PSN)
    for t in range(m.T):
        ws.send_binary(step_frame(m, 0.1))
        assert answer(ws)["ready"] is (t == m.T - 1)
    ws.send_binary(step_frame(m, 0.1))
    error_event(ws, "stream_over")
    ws.close()


def reset_spam(server: ServerProcess) -> None:
    m = served().manifest(SLIDING)
    ws = open_raw(server)
    still_works(ws, m)
    for _ in range(1000):
        ws.send_text('{"reset":true}')
    for _ in range(1000):
        assert answer(ws) == {"reset": True, "t": -1}
    still_works(ws, m, t=0)
    ws.close()


def flood(server: ServerProcess) -> None:
    """500 steps sent without reading: all answered, in order (the server reads one message at a time)."""
    m = served().manifest(SLIDING)
    ws = open_raw(server)
    row = step_frame(m, 0.3)
    sender = threading.Thread(target=lambda: [ws.send_binary(row) for _ in range(500)])
    sender.start()
    ts = [answer(ws)["t"] for _ in range(500)]
    sender.join(20)
    assert ts == list(range(500))
    ws.close()


def never_reads(server: ServerProcess) -> None:
    """A client that sends and never reads: the server blocks on that one socket only; then it vanishes."""
    m = served().manifest(SLIDING)
    ws = open_raw(server, rcvbuf=4096, timeout=1.0)
    row = step_frame(m, 0.3)
    assert ws.flood(0x2, row) > 100  # until the server stopped reading this socket
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200  # everyone else is served
    ws.drop()


def leave_mid_batch(close_frame: bool) -> Abuse:
    """50 steps sent without reading, then a close frame (``close_frame``) or a dropped TCP connection."""

    def abuse(server: ServerProcess) -> None:
        ws = open_raw(server)
        row = step_frame(served().manifest(SLIDING), 0.3)
        for _ in range(50):
            ws.send_binary(row)
        if not close_frame:
            ws.drop()
            return
        ws.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
        time.sleep(0.05)
        ws.close()

    return abuse


def unknown_model(server: ServerProcess) -> None:
    for name in ("no-such-model", "%2e%2e", "..", "%00", "a%20b"):
        ws = RawWebSocket(server.port, f"/v1/models/{name}/stream")
        assert "unknown model" in closed(ws, 4404)
    for name in ("..%2F..%2Fetc", "a/b", "%2F"):  # a slash matches no route: the handshake is refused
        with pytest.raises(ConnectionError, match="403"):
            RawWebSocket(server.port, f"/v1/models/{name}/stream")


def bad_query(server: ServerProcess) -> None:
    ws = RawWebSocket(server.port, f"/v1/models/{served().name(SLIDING)}/stream?logits=maybe")
    assert "logits" in closed(ws, 1008)


def fragmented_flood_of_pings(server: ServerProcess) -> None:
    """Pings between steps (200 of them) are answered by the protocol and never disturb the stream."""
    m = served().manifest(SLIDING)
    ws = open_raw(server)
    for _ in range(200):
        ws.send_frame(0x9, b"p")
    still = step_frame(m, 0.25)
    ws.send_binary(still)
    while True:
        opcode, payload = ws.recv_frame()
        if opcode == 0x1:
            assert json.loads(payload)["t"] == 0
            break
        assert opcode == 0xA  # pong
    ws.close()


def nan_bytes(value: float, at: int) -> bytes:
    x = np.full(F(), 0.5, dtype="<f4")
    x[at] = value
    return x.tobytes()


ABUSES: dict[str, Abuse] = {
    "text not JSON": event_case("not json at all", "invalid_json", None),
    "JSON array": _lazy(lambda: event_case(json.dumps([0.5] * F()), "invalid_request", None)),
    "JSON scalar": event_case("42", "invalid_request", None),
    "JSON string": event_case('"x"', "invalid_request", None),
    "no x": event_case("{}", "invalid_request", "x"),
    "x too long": _lazy(lambda: event_case(json.dumps({"x": [0.5] * (F() + 1)}), "bad_input", "x")),
    "x too short": event_case(json.dumps({"x": [0.5]}), "bad_input", "x"),
    "x nested": _lazy(lambda: event_case(json.dumps({"x": [[0.5] * F()]}), "bad_input", "x")),
    "x an object": event_case(json.dumps({"x": {"a": 1}}), "bad_input", "x"),
    "x strings": _lazy(lambda: event_case(json.dumps({"x": ["1"] * F()}), "bad_input", "x[0]")),
    "x null": _lazy(lambda: event_case(json.dumps({"x": [None] * F()}), "bad_input", "x[0]")),
    "x booleans": _lazy(lambda: event_case(json.dumps({"x": [True] * F()}), "bad_input", "x[0]")),
    "huge float": _lazy(lambda: event_case(json.dumps({"x": [1e39] * F()}), "bad_input", "x[0]")),
    "huge integer": _lazy(
        lambda: event_case('{"x": [' + ",".join(["1" + "0" * 40] * F()) + "]}", "bad_input", "x[0]")
    ),
    "NaN literal": _lazy(lambda: event_case('{"x": [NaN' + ", 0.5" * (F() - 1) + "]}", "invalid_json", None)),
    "deeply nested JSON": event_case('{"x": ' + "[" * 2000 + "]" * 2000 + "}", "invalid_json", None),
    "empty text frame": event_case("", "invalid_json", None),
    "empty binary frame": event_case(b"", "bad_input", "x", binary=True),
    "binary wrong length": _lazy(lambda: event_case(b"\x00" * (4 * F() - 1), "bad_input", "x", binary=True)),
    "binary NaN": _lazy(lambda: event_case(nan_bytes(float("nan"), 1), "bad_input", "x[1]", binary=True)),
    "binary Inf": _lazy(lambda: event_case(nan_bytes(float("-inf"), 0), "bad_input", "x[0]", binary=True)),
    "unknown key": _lazy(lambda: event_case(json.dumps({"x": [0.5] * F(), "y": 1}), "invalid_request", "y")),
    "reset not true": event_case(json.dumps({"reset": 1}), "invalid_request", "reset"),
    "reset with x": _lazy(
        lambda: event_case(json.dumps({"reset": True, "x": [0.5] * F()}), "invalid_request", "reset")
    ),
    "logits not bool": _lazy(
        lambda: event_case(json.dumps({"x": [0.5] * F(), "logits": 1}), "invalid_request", "logits")
    ),
    "text over the limit": too_big(binary=False),
    "binary over the limit": too_big(binary=True),
    "invalid UTF-8": invalid_utf8,
    "step after a masked PSN's T": after_masked_T,
    "step after a PSN's T": after_psn_T,
    "reset spam": reset_spam,
    "flood without reading": flood,
    "client that never reads": never_reads,
    "close in the middle of a batch": leave_mid_batch(close_frame=True),
    "drop (no close frame) mid-batch": leave_mid_batch(close_frame=False),
    "unknown model and path characters": unknown_model,
    "bad query flag": bad_query,
    "ping flood": fragmented_flood_of_pings,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ABUSES))
def test_abuse_is_answered_and_never_disturbs_another_stream(
    name: str, server: ServerProcess, victim: Victim
) -> None:
    ABUSES[name](server)
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200


def test_abusive_streams_are_all_released(server: ServerProcess) -> None:
    """After every abuse (closed, dropped, never-reading sockets included) no stream is left open."""
    assert wait_until(lambda: server.gauge("psn_streams_open") == 0, 15), server.gauge("psn_streams_open")
    for m in served().by_kind.values():
        assert server.gauge("psn_stream_pool_in_use", model=m.name) == 0
    assert server.gauge("psn_errors_total", transport="ws") > 0
    # the one traceback allowed is uvicorn's own log line for the invalid UTF-8 frame
    text = Path(server.log).read_text()
    blocks = text.split("Invalid UTF-8 sequence received from client.")
    assert all("Traceback" not in block.split("UnicodeDecodeError", 1)[-1] for block in blocks), text[-3000:]
