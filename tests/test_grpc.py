"""The Open Inference Protocol over gRPC with ``tritonclient.grpc``, unmodified: health and metadata,
ModelInfer (raw and typed contents) equal to V2 HTTP's answers, Triton's ModelStreamInfer with many
sequences on one stream equal to the WebSocket's answers bit for bit, errors and their status codes, the
API key, the metrics."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient
from test_grpc_support import Live, infer_input, live, params_of
from test_server_support import sequence, served, settings
from test_server_v2_sequence import assert_same_answer as assert_v2_answer
from test_server_v2_sequence import ws_answers
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from psn_runtime.manifest import NeuronKind
from server.app import build_app

PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN
KEY = "grpc-test-key-0123"


@pytest.fixture(scope="module")
def server() -> Iterator[Live]:
    with live(settings(grpc_port=0, max_streams=8)) as running:
        yield running


@pytest.fixture(scope="module")
def triton(server: Live) -> Iterator:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: Live) -> Iterator:
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def ws() -> Iterator[TestClient]:
    with TestClient(build_app(settings())) as c:
        yield c


def assert_same_answer(result, answer: dict, labels: list[str]) -> None:
    """A gRPC sequence step's answer == the WebSocket's answer for the same step, bit for bit."""
    assert_v2_answer(result, params_of(result), answer, labels)


# -- health and metadata ---------------------------------------------------------------------------------
def test_health_and_metadata_match_v2_http(server: Live, triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata(as_json=True)
    http_meta = httpx.get(f"{server.http}/v2").json()
    assert (meta["name"], meta["version"], meta["extensions"]) == (
        http_meta["name"],
        http_meta["version"],
        http_meta["extensions"],
    )
    for kind in (PSN, MASKED, SLIDING):
        m = served().manifest(kind)
        assert triton.is_model_ready(m.name) and triton.is_model_ready(m.name, m.version)
        got = triton.get_model_metadata(m.name, as_json=True)
        want = httpx.get(f"{server.http}/v2/models/{m.name}").json()
        for key in ("name", "versions", "platform"):
            assert got[key] == want[key]
        for key in ("inputs", "outputs"):
            assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in got[key]] == want[key]


# -- ModelInfer ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [PSN, SLIDING])
def test_infer_equals_v2_http(server: Live, triton, kind: NeuronKind) -> None:
    m = served().manifest(kind)
    x = sequence(m, batch=3, seed=41)  # [B, T, F]
    result = triton.infer(m.name, [infer_input(x)], request_id="req-1")
    assert result.get_response().id == "req-1" and result.get_response().model_version == m.version
    body = httpx.post(
        f"{server.http}/v2/models/{m.name}/infer",
        json={
            "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
        },
    ).json()
    want = {out["name"]: np.array(out["data"]).reshape(out["shape"]) for out in body["outputs"]}
    np.testing.assert_array_equal(result.as_numpy("logits"), want["logits"].astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("probabilities"), want["probabilities"].astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("label_index"), want["label_index"])
    assert result.as_numpy("label_index").dtype == np.int64


def test_typed_contents_are_answered_typed_with_the_same_values(triton, stub) -> None:
    m = served().manifest(SLIDING)
    x = sequence(m, batch=2, seed=42)
    raw = triton.infer(m.name, [infer_input(x)])
    request = pb.ModelInferRequest(model_name=m.name, id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="label_index")
    request.outputs.add(name="probabilities")
    answer = stub.ModelInfer(request)
    assert [out.name for out in answer.outputs] == ["label_index", "probabilities"]  # asked for, in order
    assert not answer.raw_output_contents and answer.id == "typed"
    labels, probabilities = answer.outputs
    assert (
        list(labels.shape) == [2]
        and list(labels.contents.int64_contents) == raw.as_numpy("label_index").tolist()
    )
    got = np.array(probabilities.contents.fp32_contents, np.float32).reshape(list(probabilities.shape))
    np.testing.assert_array_equal(got, raw.as_numpy("probabilities"))
    fp64 = pb.ModelInferRequest(model_name=m.name)  # FP64 typed contents are taken too
    fp64.inputs.add(name="x", datatype="FP64", shape=x.shape).contents.fp64_contents.extend(
        x.ravel().tolist()
    )
    again = stub.ModelInfer(fp64)
    assert list(again.outputs[2].contents.int64_contents) == raw.as_numpy("label_index").tolist()


def test_fp16_raw_input_is_its_fp32_values(triton) -> None:
    m = served().manifest(SLIDING)
    x16 = sequence(m, batch=2, seed=44).astype(np.float16)
    half = grpcclient.InferInput("x", list(x16.shape), "FP16")
    half.set_data_from_numpy(x16)
    got = triton.infer(m.name, [half]).as_numpy("logits")
    np.testing.assert_array_equal(
        got, triton.infer(m.name, [infer_input(x16.astype(np.float32))]).as_numpy("logits")
    )


def test_requested_outputs_in_order(triton) -> None:
    m = served().manifest(PSN)
    x = sequence(m, batch=1, seed=43)
    outputs = [grpcclient.InferRequestedOutput("probabilities"), grpcclient.InferRequestedOutput("logits")]
    result = triton.infer(m.name, [infer_input(x)], outputs=outputs)
    assert [out.name for out in result.get_response().outputs] == ["probabilities", "logits"]


# -- ModelStreamInfer: Triton's sequences ----------------------------------------------------------------
@pytest.mark.parametrize("kind", [SLIDING, MASKED, PSN])
def test_streamed_sequences_equal_the_websocket_answers(
    server: Live, ws: TestClient, kind: NeuronKind
) -> None:
    """Three sequences interleaved on one stream: each answer is the WebSocket's, bit for bit."""
    m = served().manifest(kind)
    inputs = {sid: sequence(m, seed=50 + i) for i, sid in enumerate((101, "seq-b", 103))}  # [T, F] each
    want = {sid: ws_answers(ws, m.name, xs) for sid, xs in inputs.items()}
    with server.stream() as stream:
        for t in range(m.T):
            for sid, xs in inputs.items():
                ids = {"request_id": f"{sid}/{t}", "sequence_id": sid}
                step = xs[t][None, None]  # [1, 1, F]
                stream.send(m.name, step, **ids, sequence_start=t == 0, sequence_end=t == m.T - 1)
        got: dict[str, object] = {}
        for _ in range(m.T * len(inputs)):
            result, error = stream.get()
            assert error is None, error
            got[result.get_response().id] = result
    for sid, answers in want.items():
        for t, answer in enumerate(answers):
            assert_same_answer(got[f"{sid}/{t}"], answer, m.labels)


def test_a_stream_answers_errors_in_stream_and_goes_on(server: Live) -> None:
    m = served().manifest(SLIDING)
    xs = sequence(m, seed=60)
    bad = xs[1].copy()
    bad[0] = np.nan
    with server.stream() as stream:
        stream.send(m.name, xs[0][None, None], request_id="a0", sequence_id=7, sequence_start=True)
        stream.send(m.name, xs[0][None, None], request_id="lost", sequence_id=424242)  # never started
        stream.send(m.name, bad[None, None], request_id="nan", sequence_id=7)
        unknown = {"request_id": "unknown", "sequence_id": 8, "sequence_start": True}
        stream.send("no-such-model", xs[0][None, None], **unknown)
        stream.send(m.name, xs[1][None, None], request_id="a1", sequence_id=7, sequence_end=True)
        results = [stream.get() for _ in range(5)]
    errors = [error.message() for _, error in results if error is not None]
    answers = {result.get_response().id: result for result, error in results if error is None}
    assert sorted(answers) == ["a0", "a1"]
    assert any("sequence_start" in e for e in errors)
    assert any("NaN or Inf" in e for e in errors)
    assert any("no-such-model" in e for e in errors)
    assert answers["a1"].get_response().parameters["t"].int64_param == 1  # the NaN step left no trace


def test_many_sequences_on_one_stream_are_bounded_by_max_streams(server: Live) -> None:
    m = served().manifest(SLIDING)
    x = sequence(m, seed=61)[0][None, None]
    with server.stream() as stream:
        for sid in range(1, 11):  # max_streams=8
            stream.send(m.name, x, request_id=str(sid), sequence_id=sid, sequence_start=True)
        results = [stream.get() for _ in range(10)]
    refused = [error.message() for _, error in results if error is not None]
    assert len(refused) == 2 and all("streams" in message for message in refused), refused
    with server.stream() as stream:  # the first stream's sequences closed with it: 8 slots are free
        for sid in range(20, 28):
            stream.send(m.name, x, sequence_id=sid, sequence_start=True, sequence_end=True)
        assert all(stream.get()[1] is None for _ in range(8))


# -- errors ----------------------------------------------------------------------------------------------
def _code(call, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value.status(), info.value.message()


def test_errors_have_the_tables_status_codes(triton, stub) -> None:
    m = served().manifest(SLIDING)
    masked = served().manifest(MASKED)
    x = sequence(m, batch=1, seed=70)
    assert _code(triton.infer, "nope", [infer_input(x)])[0] == "StatusCode.NOT_FOUND"
    assert _code(triton.get_model_metadata, "nope")[0] == "StatusCode.NOT_FOUND"
    status, message = _code(triton.infer, m.name, [infer_input(x[0])])  # [T, F]: rank 2
    assert status == "StatusCode.INVALID_ARGUMENT" and "rank" in message
    bad = x.copy()
    bad[0, 0, 0] = np.inf
    assert _code(triton.infer, m.name, [infer_input(bad)])[0] == "StatusCode.INVALID_ARGUMENT"
    status, message = _code(triton.infer, m.name, [infer_input(x[:, :1])], sequence_id=99)  # not started
    assert status == "StatusCode.INVALID_ARGUMENT" and "sequence_start" in message
    xs = sequence(masked, seed=71)
    for t in range(masked.T):  # a masked PSN's sequence is over after T steps
        triton.infer(masked.name, [infer_input(xs[t][None, None])], sequence_id=5, sequence_start=t == 0)
    assert _code(triton.infer, masked.name, [infer_input(xs[0][None, None])], sequence_id=5)[0] == (
        "StatusCode.FAILED_PRECONDITION"
    )
    triton.infer(
        masked.name, [infer_input(xs[0][None, None])], sequence_id=5, sequence_start=True, sequence_end=True
    )
    wrong = pb.ModelInferRequest(model_name=m.name)
    wrong.inputs.add(name="y", datatype="FP32", shape=[1, 1, m.features]).contents.fp32_contents.extend(
        [0] * m.features
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(wrong)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'x'" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelConfig(pb.ModelConfigRequest(name=m.name))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_message_over_the_body_limit_is_resource_exhausted(tmp_path) -> None:
    m = served().manifest(SLIDING)
    x = np.zeros((64, m.T, m.features), np.float32)  # far over 4 KiB
    with live(settings(grpc_port=0, max_body_bytes=4096)) as small, small.client() as client:
        assert _code(client.infer, m.name, [infer_input(x)])[0] == "StatusCode.RESOURCE_EXHAUSTED"


# -- API key ---------------------------------------------------------------------------------------------
def test_the_api_key_is_required_but_not_by_the_probes() -> None:
    m = served().manifest(SLIDING)
    x = sequence(m, batch=1, seed=80)
    with live(settings(grpc_port=0, api_key=KEY)) as keyed, keyed.client() as plain:
        assert plain.is_server_live() and plain.is_server_ready()  # probes: no key
        status, message = _code(plain.infer, m.name, [infer_input(x)])
        assert status == "StatusCode.UNAUTHENTICATED" and "missing API key" in message
        assert _code(plain.get_server_metadata)[0] == "StatusCode.UNAUTHENTICATED"
        wrong = {"authorization": "Bearer not-the-key"}
        assert _code(plain.infer, m.name, [infer_input(x)], headers=wrong)[0] == "StatusCode.UNAUTHENTICATED"
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            assert plain.infer(m.name, [infer_input(x)], headers=headers).as_numpy("logits").shape[0] == 1
        with keyed.stream() as stream:  # a stream without the key ends with UNAUTHENTICATED, in the callback
            with contextlib.suppress(InferenceServerException):  # once it has ended: "no longer valid"
                stream.send(m.name, x[:, :1], sequence_id=3, sequence_start=True)
            result, error = stream.get()
        assert result is None and error.status() == "StatusCode.UNAUTHENTICATED"
        with keyed.stream(headers={"x-api-key": KEY}) as stream:
            stream.send(m.name, x[:, :1], sequence_id=3, sequence_start=True, sequence_end=True)
            assert stream.get()[1] is None


# -- metrics ---------------------------------------------------------------------------------------------
def test_grpc_calls_and_errors_are_in_the_metrics(server: Live, triton) -> None:
    m = served().manifest(SLIDING)
    x = sequence(m, batch=1, seed=90)
    triton.infer(m.name, [infer_input(x)])
    _code(triton.infer, "nope", [infer_input(x)])
    text = httpx.get(f"{server.http}/metrics").text
    ok = re.search(rf'psn_grpc_requests_total{{code="OK",method="ModelInfer",model="{m.name}"}} (\S+)', text)
    assert ok and float(ok.group(1)) >= 1
    assert re.search(r'psn_grpc_requests_total{code="NOT_FOUND",method="ModelInfer",model="<unknown>"}', text)
    assert 'psn_errors_total{kind="unknown_model",transport="grpc"}' in text
    assert f'psn_grpc_request_duration_seconds_count{{method="ModelInfer",model="{m.name}"}}' in text
