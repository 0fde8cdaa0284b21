"""The client's sans-IO core without a network: its flows run against scripted connections and answers, so
each decision (V2 binary or JSON, what an answer or error means, what a resumable stream sends after a drop)
is checked exactly, including the failures a live server rarely produces on cue."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close as CloseFrame

from server.client_core import (
    Close,
    Connect,
    Flow,
    HTTPAnswer,
    HTTPCall,
    PlainStream,
    PSNError,
    Recv,
    Send,
    Sleep,
    frame,
    run_blocking,
)
from server.client_http import HEADER_LENGTH, ClientCore
from server.client_resume import ResumableStream, RetryPolicy

HELLO = json.dumps({"model": "m", "resumable": True, "snapshot_every": 2})


def _closed(code: int | None) -> ConnectionClosedError:
    received = None if code is None else CloseFrame(code, "reason")
    return ConnectionClosedError(received, received, None if received is None else True)


class FakeWS:
    """A scripted connection: ``answer(data)`` gives the messages the server sends back for each frame;
    ``fail_send_at``: the send with this index raises ``failure`` (the connection dropped)."""

    def __init__(
        self,
        hello: str = HELLO,
        answer: Callable[[bytes | str], list[str]] | None = None,
        fail_send_at: int | None = None,
        failure: Exception | None = None,
    ) -> None:
        self.incoming: deque[str] = deque([hello])
        self.answer = answer or (lambda data: [])
        self.fail_send_at, self.failure = fail_send_at, failure
        self.sent: list[bytes | str] = []
        self.closed = False

    def send(self, data: bytes | str) -> None:
        if self.fail_send_at is not None and len(self.sent) >= self.fail_send_at:
            assert self.failure is not None
            raise self.failure
        self.sent.append(data)
        self.incoming.extend(self.answer(data))

    def recv(self) -> str:
        if not self.incoming:
            raise TimeoutError("nothing to read")
        return self.incoming.popleft()


class Script:
    """Runs a flow: Connect takes the next of ``connections`` (an Exception there is raised), HTTP calls
    are answered by ``http``; records the sleeps and HTTP calls."""

    def __init__(
        self, connections: list[FakeWS | Exception] = (), http: Callable[[HTTPCall], HTTPAnswer] | None = None
    ) -> None:
        self.connections = deque(connections)
        self.http = http
        self.sleeps: list[float] = []
        self.calls: list[HTTPCall] = []

    def run(self, flow: Flow[Any]) -> Any:
        return run_blocking(flow, self._do)

    def _do(self, effect: Any) -> Any:
        if isinstance(effect, HTTPCall):
            assert self.http is not None
            self.calls.append(effect)
            return self.http(effect)
        if isinstance(effect, Connect):
            conn = self.connections.popleft()
            if isinstance(conn, Exception):
                raise conn
            return conn
        if isinstance(effect, Send):
            return effect.ws.send(effect.data)
        if isinstance(effect, Recv):
            return effect.ws.recv()
        if isinstance(effect, Close):
            effect.ws.closed = True
            return None
        assert isinstance(effect, Sleep)
        self.sleeps.append(effect.seconds)
        return None


def _counting_server(snapshot_every: int = 2, start: int = 0) -> Callable[[bytes | str], list[str]]:
    """Answers frame i with t = start + i and, after every ``snapshot_every`` steps, a snapshot; a resume
    with ``{"resumed": true, "t": ...}``."""
    state = {"t": start}

    def answer(data: bytes | str) -> list[str]:
        if isinstance(data, str) and data.startswith('{"resume"'):
            state["t"] = int(json.loads(data)["resume"].removeprefix("s"))
            return [json.dumps({"resumed": True, "t": state["t"]})]
        t = state["t"]
        state["t"] += 1
        out = [json.dumps({"t": t, "ready": True, "label": "a", "probabilities": [1.0], "x": data})]
        if state["t"] % snapshot_every == 0:
            out.append(json.dumps({"snapshot": f"s{state['t']}", "t": state["t"]}))
        return out

    return answer


def test_a_dropped_stream_resumes_from_its_snapshot_and_replays_only_the_frames_since() -> None:
    first = FakeWS(answer=_counting_server(), fail_send_at=3, failure=_closed(None))  # no close frame: 1006
    second = FakeWS(answer=_counting_server())
    script = Script([first, second])
    stream = ResumableStream("ws://x/v1/models/m/stream", {}, RetryPolicy(retries=2))
    script.run(stream.open())
    answers = [script.run(stream.step(f"f{i}")) for i in range(4)]  # f3's send fails: resume, replay f2, f3
    assert [a["t"] for a in answers] == [0, 1, 2, 3]
    assert [a["x"] for a in answers] == ["f0", "f1", "f2", "f3"]
    assert first.closed and first.sent == ["f0", "f1", "f2"]
    assert second.sent == ['{"resume": "s2"}', "f2", "f3"]
    assert (stream.reconnects, stream.replayed, stream.log.t, stream.log.frames) == (1, 1, 2, ["f2", "f3"])
    assert script.sleeps == []  # the first reconnect is immediate


def test_a_snapshot_still_in_a_dropped_connection_is_used() -> None:
    """A drain sends its snapshot just before closing: read from the dead connection, nothing to replay."""
    answer = _counting_server(snapshot_every=100)
    first = FakeWS(answer=answer, fail_send_at=2, failure=_closed(1001))
    second = FakeWS(answer=_counting_server())
    script = Script([first, second])
    stream = ResumableStream("ws://x", {}, RetryPolicy())
    script.run(stream.open())
    script.run(stream.step("f0"))
    script.run(stream.step("f1"))
    first.incoming.append(json.dumps({"snapshot": "s2", "t": 2}))  # the drain's snapshot, unread
    assert script.run(stream.step("f2"))["t"] == 2
    assert second.sent == ['{"resume": "s2"}', "f2"] and stream.replayed == 0


def test_gives_up_after_the_retries_with_the_policy_backoff() -> None:
    refused = [ConnectionRefusedError("refused")] * 3
    script = Script([FakeWS(answer=_counting_server(), fail_send_at=1, failure=_closed(1012)), *refused])
    stream = ResumableStream("ws://x", {}, RetryPolicy(retries=3, backoff_s=0.1, max_backoff_s=0.15))
    script.run(stream.open())
    script.run(stream.step("f0"))
    with pytest.raises(PSNError) as info:
        script.run(stream.step("f1"))
    assert info.value.code == "stream_lost" and "3 reconnects failed" in info.value.message
    assert script.sleeps == [0.1, 0.15]


@pytest.mark.parametrize("code", [1008, 4404])
def test_a_refusal_is_not_retried(code: int) -> None:
    script = Script([FakeWS(answer=_counting_server(), fail_send_at=0, failure=_closed(code))])
    stream = ResumableStream("ws://x", {}, RetryPolicy())
    script.run(stream.open())
    with pytest.raises(PSNError) as info:
        script.run(stream.step("f0"))
    assert (info.value.code, info.value.close_code) == ("closed", code)
    assert not script.connections and script.sleeps == []


def test_a_server_that_cannot_resume_is_refused_and_its_connection_closed() -> None:
    ws = FakeWS(hello=json.dumps({"resumable": False, "resumable_reason": "set PSN_STREAM_SECRET"}))
    with pytest.raises(PSNError) as info:
        Script([ws]).run(ResumableStream("ws://x", {}, RetryPolicy()).open())
    assert (info.value.code, info.value.message) == ("resume_disabled", "set PSN_STREAM_SECRET")
    assert ws.closed


def test_a_resume_at_the_wrong_step_is_an_error() -> None:
    lying = FakeWS(answer=lambda data: [json.dumps({"resumed": True, "t": 5})])
    first = FakeWS(answer=_counting_server(), fail_send_at=2, failure=_closed(1011))
    script = Script([first, lying])
    stream = ResumableStream("ws://x", {}, RetryPolicy())
    script.run(stream.open())
    script.run(stream.step("f0"))
    script.run(stream.step("f1"))  # snapshot at t=2
    with pytest.raises(PSNError) as info:
        script.run(stream.step("f2"))
    assert info.value.code == "bad_snapshot" and lying.closed


@pytest.mark.parametrize("action", ["step", "reset"])
def test_a_plain_stream_turns_a_closed_connection_into_a_psn_error(action: str) -> None:
    received = CloseFrame(1000, "bye")
    ws = FakeWS(fail_send_at=0, failure=ConnectionClosedOK(received, received, True))
    stream = PlainStream("ws://x", {})
    script = Script([ws])
    script.run(stream.open())
    flow = stream.step("f0") if action == "step" else stream.reset()
    with pytest.raises(PSNError) as info:
        script.run(flow)
    assert (info.value.code, info.value.close_code, info.value.message) == ("closed", 1000, "bye")


def test_an_error_event_is_a_psn_error_and_the_stream_goes_on() -> None:
    error = json.dumps({"error": {"code": "bad_input", "message": "5 values", "param": "x"}})
    answers = deque([[error], [json.dumps({"t": 0, "ready": True, "label": "a", "probabilities": [1.0]})]])
    ws = FakeWS(answer=lambda data: answers.popleft())
    stream = PlainStream("ws://x", {})
    script = Script([ws])
    script.run(stream.open())
    with pytest.raises(PSNError) as info:
        script.run(stream.step("bad"))
    assert (info.value.code, info.value.param) == ("bad_input", "x")
    assert script.run(stream.step("good"))["t"] == 0


# -- classify: JSON or one V2 binary tensor ----------------------------------------------------------------
METADATA = {
    "name": "m",
    "versions": ["1"],
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4, 3]}],
    "parameters": {"labels": ["a", "b"], "provider": "CPUExecutionProvider"},
}


def _v2_server(version: str = "1") -> Callable[[HTTPCall], HTTPAnswer]:
    """Answers V2 metadata and infer calls; infer answers binary outputs computed from the input."""

    def http(call: HTTPCall) -> HTTPAnswer:
        if call.method == "GET":
            doc = {**METADATA, "versions": [call.path.rsplit("/", 1)[-1] if "versions" in call.path else "1"]}
            return HTTPAnswer(200, {}, json.dumps(doc).encode())
        assert call.content is not None
        split = int(call.headers[HEADER_LENGTH])
        head = json.loads(call.content[:split])
        x = np.frombuffer(call.content[split:], "<f4").reshape(head["inputs"][0]["shape"])  # [B, T, F]
        logits = np.stack([x.sum(axis=(1, 2)), -x.sum(axis=(1, 2))], axis=1).astype("<f4")  # [B, 2]
        tensors = {
            "logits": logits,
            "probabilities": np.full_like(logits, 0.5),
            "label_index": logits.argmax(axis=1).astype("<i8"),
        }
        wanted = [out["name"] for out in head["outputs"]]
        assert all(out["parameters"]["binary_data"] for out in head["outputs"])
        outputs = []
        for n in wanted:
            datatype = "INT64" if n == "label_index" else "FP32"
            size = {"binary_data_size": tensors[n].nbytes}
            outputs.append(
                {"name": n, "datatype": datatype, "shape": list(tensors[n].shape), "parameters": size}
            )
        header = json.dumps({"model_name": "m", "model_version": version, "outputs": outputs}).encode()
        body = header + b"".join(tensors[n].tobytes() for n in wanted)
        return HTTPAnswer(200, {HEADER_LENGTH.lower(): str(len(header))}, body, elapsed_ms=1.5)

    return http


def test_classify_sends_one_binary_tensor_above_the_threshold_and_json_below() -> None:
    core = ClientCore(api_key="k" * 8, binary_threshold=40)  # one sequence [4, 3] float32: 48 bytes
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3) - 10  # [B, T, F]: 96 bytes
    script = Script(http=_v2_server())
    result = script.run(core.classify("m", x))
    get, infer = script.calls
    assert (get.method, get.path, infer.method, infer.path) == (
        "GET",
        "/v2/models/m",
        "POST",
        "/v2/models/m/infer",
    )
    assert infer.headers["Authorization"] == "Bearer kkkkkkkk"
    assert infer.headers["Content-Type"] == "application/octet-stream"
    split = int(infer.headers[HEADER_LENGTH])
    assert infer.content is not None and infer.content[split:] == x.astype("<f4").tobytes()  # no JSON numbers
    sums = x.sum(axis=(1, 2))
    assert [p.label for p in result.predictions] == ["a" if s > -s else "b" for s in sums]
    assert [p.logits for p in result.predictions] == [[float(s), float(-s)] for s in sums]
    assert (result.model, result.provider, result.latency_ms) == ("m", "CPUExecutionProvider", 1.5)

    one = script.run(core.classify("m", x[1], return_logits=False))  # [T, F]: sent as [1, T, F]
    assert len(script.calls) == 3  # the metadata was kept
    assert one.predictions[0].logits is None and one.predictions[0].label == result.predictions[1].label

    short = x[0, :2]  # [2, 3]: 24 bytes
    assert core.use_binary(short, None) is False and core.use_binary(short, True) is True
    small = Script(
        http=lambda call: HTTPAnswer(200, {}, b'{"model": "m", "predictions": [], "latency_ms": 1}')
    )
    small.run(core.classify("m", short))
    (call,) = small.calls
    assert (
        call.path == "/v1/models/m/classify" and json.loads(call.content or b"")["inputs"] == short.tolist()
    )


def test_a_newer_version_answering_brings_its_own_labels() -> None:
    core = ClientCore(api_key=None, binary_threshold=0)
    script = Script(http=_v2_server(version="2"))
    script.run(core.classify("m", np.ones((1, 4, 3), np.float32)))
    assert [c.path for c in script.calls] == ["/v2/models/m", "/v2/models/m/infer", "/v2/models/m/versions/2"]


def test_classify_errors_are_psn_errors() -> None:
    core = ClientCore(api_key=None, binary_threshold=0)
    v2_404 = Script(http=lambda call: HTTPAnswer(404, {}, b'{"error": "unknown model nope"}'))
    with pytest.raises(PSNError) as info:
        v2_404.run(core.classify("nope", np.ones((1, 4, 3), np.float32)))
    assert (info.value.status, info.value.message) == (404, "unknown model nope")
    with pytest.raises(PSNError) as info:
        Script().run(core.classify("m", [[1.0, 2.0], [3.0]], binary=True))
    assert (info.value.code, info.value.param) == ("bad_input", "inputs")
    v1 = b'{"error": {"code": "bad_input", "message": "ragged", "param": "inputs[1]"}}'
    json_422 = Script(http=lambda call: HTTPAnswer(422, {}, v1))
    with pytest.raises(PSNError) as info:
        json_422.run(core.classify("m", [[1.0, 2.0], [3.0]]))  # not an array: JSON, the server explains
    assert (info.value.status, info.value.code, info.value.param) == (422, "bad_input", "inputs[1]")
    with pytest.raises(ValueError):
        ClientCore(api_key=None, binary_threshold=-1)


def test_frames() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float64)  # a [2, 2] step
    assert frame(x, binary=True) == np.array([1, 2, 3, 4], "<f4").tobytes()
    assert json.loads(frame(x, binary=False)) == {"x": [[1.0, 2.0], [3.0, 4.0]]}
