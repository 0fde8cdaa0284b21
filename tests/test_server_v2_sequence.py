"""Triton's sequence extension on V2: ``tritonclient.http``, unmodified, streams a sequence one timestep per
request (sequence_id / sequence_start / sequence_end) and gets, at every step, exactly the WebSocket
stream's answer for the same inputs; errors and limits are a stream's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_server_support import sequence, served, settings, triton_client

from psn_runtime.manifest import NeuronKind
from server.app import build_app

PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN
IDS = {SLIDING: 11, MASKED: 12, PSN: 13}
httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def triton() -> Iterator:
    with triton_client(settings()) as client:
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(build_app(settings(idle_timeout_s=0.5))) as c:
        yield c


def ws_answers(client: TestClient, name: str, xs: np.ndarray) -> list[dict]:
    """The WebSocket stream's answers (with logits) to the timesteps xs [T, *shape]."""
    with client.websocket_connect(f"/v1/models/{name}/stream?logits=true") as ws:
        ws.receive_json()
        answers = []
        for x in xs:
            ws.send_text(json.dumps({"x": x.tolist()}))
            answers.append(ws.receive_json())
    return answers


def assert_same_answer(result, params: dict, answer: dict, labels: list[str]) -> None:
    """A V2 sequence step's answer (over HTTP or gRPC: ``result.as_numpy``, the response parameters as a
    dict) == the WebSocket stream's answer for the same step, bit for bit."""
    assert (params["t"], params["ready"], params["done"], params.get("label")) == (
        answer["t"],
        answer["ready"],
        answer["done"],
        answer["label"],
    )
    logits = result.as_numpy("logits")
    if not answer["ready"]:  # a full-only PSN before its T-th step: no rows yet
        assert logits.shape == (0, len(labels))
        return
    np.testing.assert_array_equal(logits[0], np.float32(answer["logits"]))  # bit-equal
    np.testing.assert_array_equal(result.as_numpy("probabilities")[0], np.float32(answer["probabilities"]))
    assert labels[int(result.as_numpy("label_index")[0])] == answer["label"]


def step(triton, name: str, x: np.ndarray, sequence_id, start=False, end=False, shape=None):
    inp = httpclient.InferInput("x", shape or [1, 1, *x.shape], "FP32")
    inp.set_data_from_numpy(x.reshape(shape or [1, 1, *x.shape]).astype(np.float32))
    return triton.infer(name, [inp], sequence_id=sequence_id, sequence_start=start, sequence_end=end)


@pytest.mark.parametrize("kind", [SLIDING, MASKED, PSN])
def test_sequence_steps_equal_the_websocket_streams_answers(
    triton, client: TestClient, kind: NeuronKind
) -> None:
    m = served().manifest(kind)
    xs = sequence(m, seed=31)  # [T, F]
    want = ws_answers(client, m.name, xs)
    for t, x in enumerate(xs):
        result = step(triton, m.name, x, sequence_id=IDS[kind], start=t == 0, end=t == m.T - 1)
        assert_same_answer(result, result.get_response()["parameters"], want[t], m.labels)


def test_interleaved_sequences_keep_their_own_state(triton, client: TestClient) -> None:
    m = served().manifest(SLIDING)
    a, b = sequence(m, seed=32), sequence(m, seed=33)
    want_a, want_b = ws_answers(client, m.name, a), ws_answers(client, m.name, b)
    for t in range(m.T):
        last = t == m.T - 1
        ra = step(triton, m.name, a[t], sequence_id=7, start=t == 0, end=last, shape=[1, m.features])
        rb = step(triton, m.name, b[t], sequence_id="user-b", start=t == 0, end=last)
        np.testing.assert_array_equal(ra.as_numpy("logits")[0], np.float32(want_a[t]["logits"]))
        np.testing.assert_array_equal(rb.as_numpy("logits")[0], np.float32(want_b[t]["logits"]))


def test_a_step_without_start_on_an_unknown_or_ended_sequence_is_an_error(triton) -> None:
    m = served().manifest(SLIDING)
    x = sequence(m, seed=34)
    with pytest.raises(httpclient.InferenceServerException, match="sequence_start") as info:
        step(triton, m.name, x[0], sequence_id=424242)
    assert info.value.status() == "400"
    step(triton, m.name, x[0], sequence_id=55, start=True, end=True)  # a one-step sequence
    with pytest.raises(httpclient.InferenceServerException, match="is not open"):
        step(triton, m.name, x[1], sequence_id=55)


def test_bad_step_is_refused_and_leaves_the_sequence_as_it_was(triton, client: TestClient) -> None:
    m = served().manifest(SLIDING)
    xs = sequence(m, seed=35)
    want = ws_answers(client, m.name, xs[:2])
    step(triton, m.name, xs[0], sequence_id=77, start=True)
    bad = xs[1].copy()
    bad[2] = np.nan
    with pytest.raises(httpclient.InferenceServerException, match="NaN or Inf") as info:
        step(triton, m.name, bad, sequence_id=77)
    assert info.value.status() == "422"
    with pytest.raises(httpclient.InferenceServerException, match="one timestep"):
        step(triton, m.name, xs[:2], sequence_id=77, shape=[1, 2, m.features])  # two steps at once
    result = step(triton, m.name, xs[1], sequence_id=77, end=True)
    assert result.get_response()["parameters"]["t"] == 1
    np.testing.assert_array_equal(result.as_numpy("logits")[0], np.float32(want[1]["logits"]))


def _raw(client: TestClient, name: str, x: np.ndarray, **params) -> tuple[int, dict]:
    doc = {
        "inputs": [{"name": "x", "shape": [1, 1, x.size], "datatype": "FP32", "data": x.tolist()}],
        "parameters": params,
    }
    response = client.post(f"/v2/models/{name}/infer", json=doc)
    return response.status_code, response.json()


def test_masked_sequence_is_over_after_T_and_idle_sequences_close(client: TestClient) -> None:
    m = served().manifest(MASKED)
    xs = sequence(m, seed=36)
    for t in range(m.T):
        status, body = _raw(client, m.name, xs[t], sequence_id=9, sequence_start=t == 0)
        assert status == 200 and body["parameters"]["done"] is (t == m.T - 1)
    status, body = _raw(client, m.name, xs[0], sequence_id=9)
    assert status == 409 and "all" in body["error"]  # a stream's limit: StreamOver
    status, body = _raw(client, m.name, xs[0], sequence_id=9, sequence_start=True)  # starts over
    assert status == 200 and body["parameters"]["t"] == 0
    time.sleep(1.0)  # idle_timeout_s=0.5: the runtime closes the stream
    status, body = _raw(client, m.name, xs[1], sequence_id=9)
    assert status in (400, 410) and "sequence 9" in body["error"], body
    status, body = _raw(client, m.name, xs[0], sequence_id=0, sequence_start=True)
    assert status == 422 and "sequence_id" in body["error"]
