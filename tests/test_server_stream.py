"""The WebSocket stream endpoint in-process (TestClient), against the real Runtime and real model
directories: the protocol, the values (a stream ends where classify does), every error and limit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_server_support import sequence, served, settings

from psn_runtime.manifest import NeuronKind
from server.app import build_app
from server.state import app_state

PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN
KEY = "stream-test-key"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(build_app(settings(max_ws_message_bytes=4096))) as c:
        yield c


def path(kind: NeuronKind, query: str = "") -> str:
    return f"/v1/models/{served().name(kind)}/stream" + (f"?{query}" if query else "")


def classify(client: TestClient, kind: NeuronKind, x: np.ndarray):
    return app_state(client.app).runtime.classify(served().name(kind), x)


def closed_with(ws, code: int) -> str:
    """Receive until the server closes; assert the code, return the reason."""
    with pytest.raises(WebSocketDisconnect) as info:
        ws.receive_json()
    assert info.value.code == code, info.value.reason
    return info.value.reason


def test_hello(client: TestClient) -> None:
    for kind in (PSN, MASKED, SLIDING):
        m = served().manifest(kind)
        with client.websocket_connect(path(kind)) as ws:
            hello = ws.receive_json()
        assert hello["model"] == m.name and hello["kind"] == kind.value
        assert (hello["T"], hello["features"], hello["labels"]) == (m.T, m.features, m.labels)
        assert hello["streams"] is m.streams
        assert hello["provider"] == "CPUExecutionProvider"
        expected_max = {PSN: m.T, MASKED: m.T, SLIDING: 100_000}[kind]
        assert hello["max_steps"] == expected_max


def test_psn_waits_for_T_steps_then_answers_like_classify(client: TestClient) -> None:
    m = served().manifest(PSN)
    x = sequence(m, seed=3)  # [T, F]
    want = classify(client, PSN, x)
    with client.websocket_connect(path(PSN)) as ws:
        ws.receive_json()
        for t in range(m.T - 1):
            ws.send_json({"x": x[t].tolist()})
            assert ws.receive_json() == {
                "t": t,
                "ready": False,
                "label": None,
                "probabilities": None,
                "done": False,
            }
        ws.send_bytes(x[-1].astype("<f4").tobytes())
        last = ws.receive_json()
        assert last["t"] == m.T - 1 and last["ready"] is True and last["done"] is True
        assert last["label"] == want.labels[0]
        np.testing.assert_allclose(last["probabilities"], want.probabilities[0], rtol=1e-5, atol=1e-6)
        ws.send_json({"x": x[0].tolist()})
        over = ws.receive_json()
        assert over["error"]["code"] == "stream_over"
        ws.send_json({"reset": True})
        assert ws.receive_json() == {"reset": True, "t": -1}
        ws.send_json({"x": x[0].tolist()})
        assert ws.receive_json()["t"] == 0


@pytest.mark.parametrize("binary", [False, True])
def test_masked_answers_every_step_and_closes_the_sequence_after_T(client: TestClient, binary: bool) -> None:
    m = served().manifest(MASKED)
    x = sequence(m, seed=4)
    want = classify(client, MASKED, x)
    with client.websocket_connect(path(MASKED, "logits=true")) as ws:
        ws.receive_json()
        for t in range(m.T):
            if binary:
                ws.send_bytes(x[t].astype("<f4").tobytes())
            else:
                ws.send_text(json.dumps({"x": x[t].tolist()}))
            answer = ws.receive_json()
            assert answer["t"] == t and answer["ready"] is True and answer["label"] in m.labels
            assert len(answer["probabilities"]) == len(m.labels) and len(answer["logits"]) == len(m.labels)
            assert answer["done"] is (t == m.T - 1)
        np.testing.assert_allclose(answer["logits"], want.logits[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(answer["probabilities"], want.probabilities[0], rtol=1e-4, atol=1e-5)
        assert answer["label"] == want.labels[0]
        ws.send_bytes(x[0].astype("<f4").tobytes())
        assert ws.receive_json()["error"]["code"] == "stream_over"  # the socket stays open
        ws.send_json({"reset": True})
        assert ws.receive_json() == {"reset": True, "t": -1}
        ws.send_json({"x": x[0].tolist()})
        assert ws.receive_json()["t"] == 0


def test_sliding_answers_every_step_like_classify_of_the_prefix_and_runs_past_T(client: TestClient) -> None:
    m = served().manifest(SLIDING)
    x = sequence(m, seed=5)
    with client.websocket_connect(path(SLIDING)) as ws:
        ws.receive_json()
        for t in range(m.T):
            ws.send_json({"x": x[t].tolist(), "logits": True})
            answer = ws.receive_json()
            assert answer["t"] == t and answer["ready"] is True and answer["done"] is False
            prefix = classify(client, SLIDING, x[: t + 1])  # variable length: the mean over steps 0..t
            np.testing.assert_allclose(answer["logits"], prefix.logits[0], rtol=1e-4, atol=1e-5)
            assert answer["label"] == prefix.labels[0]
        for t in range(m.T, m.T + 3):
            ws.send_bytes(x[t - m.T].astype("<f4").tobytes())
            answer = ws.receive_json()
            assert answer["t"] == t and answer["ready"] is True and "logits" not in answer


def test_bad_frames_get_error_events_and_leave_the_state_untouched(client: TestClient) -> None:
    m = served().manifest(MASKED)
    x = sequence(m, seed=6)
    want = classify(client, MASKED, x)
    bad_frames = [
        (b"\x00" * (4 * m.features - 1), "bad_input", "x"),
        (json.dumps({"x": [0.5] * (m.features + 1)}), "bad_input", "x"),
        ('{"x": [NaN' + ", 0.5" * (m.features - 1) + "]}", "invalid_json", None),
        (json.dumps({"x": ["a"] + [0.5] * (m.features - 1)}), "bad_input", "x[0]"),
        (json.dumps({"x": [[0.5] * m.features]}), "bad_input", "x"),
        (json.dumps({"x": [0.5] * m.features, "extra": 1}), "invalid_request", "extra"),
        (json.dumps({"x": [0.5] * m.features, "logits": "yes"}), "invalid_request", "logits"),
        (json.dumps({"reset": False}), "invalid_request", "reset"),
        (json.dumps([0.5] * m.features), "invalid_request", None),
        ("not json", "invalid_json", None),
        (np.full(m.features, np.nan, dtype="<f4").tobytes(), "bad_input", "x[0]"),
    ]

    def send_bad(ws, frame: bytes | str, code: str, param: str | None) -> None:
        ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_text(frame)
        error = ws.receive_json()["error"]
        assert error["code"] == code, (frame, error)
        assert error.get("param") == param, (frame, error)

    with client.websocket_connect(path(MASKED)) as ws:
        ws.receive_json()
        for frame in bad_frames:  # before the first step
            send_bad(ws, *frame)
        for t in range(m.T):
            send_bad(ws, *bad_frames[t % len(bad_frames)])  # and between steps
            ws.send_json({"x": x[t].tolist()})
            answer = ws.receive_json()
            assert answer["t"] == t
        np.testing.assert_allclose(answer["probabilities"], want.probabilities[0], rtol=1e-4, atol=1e-5)


def test_streams_are_isolated(client: TestClient) -> None:
    """Two interleaved sockets on one model (one sending garbage too) each end where classify does."""
    m = served().manifest(MASKED)
    xa, xb = sequence(m, seed=7), sequence(m, seed=8)
    with client.websocket_connect(path(MASKED)) as a, client.websocket_connect(path(MASKED)) as b:
        a.receive_json(), b.receive_json()
        for t in range(m.T):
            a.send_bytes(xa[t].astype("<f4").tobytes())
            b.send_text("garbage")
            b.send_json({"x": xb[t].tolist()})
            last_a = a.receive_json()
            assert "error" in b.receive_json()
            last_b = b.receive_json()
        assert app_state(client.app).runtime.stream_count(m.name) == 2
    for last, x in ((last_a, xa), (last_b, xb)):
        want = classify(client, MASKED, x)
        np.testing.assert_allclose(last["probabilities"], want.probabilities[0], rtol=1e-4, atol=1e-5)
    deadline = time.monotonic() + 5
    while app_state(client.app).runtime.stream_count(m.name) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app_state(client.app).runtime.stream_count(m.name) == 0  # closed sockets release their streams


def test_oversized_message_closes_1009(client: TestClient) -> None:
    with client.websocket_connect(path(SLIDING)) as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"x": [0.5] * 2000}))  # > max_ws_message_bytes=4096
        assert "over the limit" in closed_with(ws, 1009)


def test_unknown_model_and_bad_query_close_with_a_code(client: TestClient) -> None:
    with client.websocket_connect("/v1/models/no-such-model/stream") as ws:
        assert closed_with(ws, 4404) == "unknown model 'no-such-model'"
    with client.websocket_connect(path(SLIDING, "logits=maybe")) as ws:
        assert "logits" in closed_with(ws, 1008)


def test_stream_limit_closes_1013_and_frees_up() -> None:
    with TestClient(build_app(settings(max_streams=2))) as c:
        with c.websocket_connect(path(SLIDING)) as a, c.websocket_connect(path(SLIDING)) as b:
            a.receive_json(), b.receive_json()
            with c.websocket_connect(path(SLIDING)) as third:
                closed_with(third, 1013)
            a.send_json({"x": [0.1] * served().manifest(SLIDING).features})
            assert a.receive_json()["t"] == 0  # the open streams keep working
        with c.websocket_connect(path(SLIDING)) as again:
            assert again.receive_json()["model"] == served().name(SLIDING)


def test_idle_socket_is_closed() -> None:
    with TestClient(build_app(settings(idle_timeout_s=0.3))) as c, c.websocket_connect(path(SLIDING)) as ws:
        ws.receive_json()
        assert "idle" in closed_with(ws, 1001)


def test_api_key_on_websocket() -> None:
    with TestClient(build_app(settings(api_key=KEY))) as c:
        with c.websocket_connect(path(SLIDING)) as ws:
            assert "API key" in closed_with(ws, 1008)
        with c.websocket_connect(path(SLIDING, "api_key=wrong-key-123")) as ws:
            assert closed_with(ws, 1008) == "invalid API key"
        with c.websocket_connect(path(SLIDING), headers={"Authorization": f"Bearer {KEY}"}) as ws:
            assert ws.receive_json()["model"] == served().name(SLIDING)
        with c.websocket_connect(path(SLIDING, f"api_key={KEY}")) as ws:
            assert ws.receive_json()["model"] == served().name(SLIDING)
        with c.websocket_connect(path(SLIDING), headers={"X-API-Key": KEY}) as ws:
            assert ws.receive_json()["model"] == served().name(SLIDING)
