"""Open Inference Protocol (KServe V2): tritonclient's HTTP client, unmodified and with its default
settings (binary tensors), against a live server; JSON tensors and errors in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_server_support import sequence, served, settings, triton_client

from psn_runtime import Runtime, RuntimeConfig
from psn_runtime.manifest import NeuronKind
from server.app import build_app

PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN
httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def reference() -> Runtime:
    """A runtime of our own over the same model directories: what the server must answer."""
    runtime = Runtime(RuntimeConfig(models_dir=served().models_dir, providers=["CPUExecutionProvider"]))
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def triton() -> Iterator:
    with triton_client(settings()) as client:
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(build_app(settings())) as c:
        yield c


def test_health_and_metadata(triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "psn-serve" and "binary_tensor_data" in meta["extensions"]
    m = served().manifest(PSN)
    assert triton.is_model_ready(m.name)
    model = triton.get_model_metadata(m.name)
    assert model["name"] == m.name and model["versions"] == [m.version]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, m.T, m.features]}]
    C = len(m.labels)
    assert model["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, C]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, C]},
        {"name": "label_index", "datatype": "INT64", "shape": [-1]},
    ]
    sliding = triton.get_model_metadata(served().name(SLIDING))
    assert sliding["inputs"][0]["shape"] == [-1, -1, served().manifest(SLIDING).features]  # variable length
    assert not triton.is_model_ready("no-such-model")


@pytest.mark.parametrize("kind", [PSN, MASKED, SLIDING])
def test_infer_binary_by_default(triton, reference: Runtime, kind: NeuronKind) -> None:
    m = served().manifest(kind)
    x = sequence(m, batch=3, seed=10)  # [B, T, F]
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True: the tensor travels after the JSON header
    result = triton.infer(m.name, [inp])  # no outputs named: all of them, binary (binary_data_output)
    want = reference.classify(m.name, x)
    np.testing.assert_allclose(result.as_numpy("logits"), want.logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want.probabilities, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(result.as_numpy("label_index"), want.label_index)
    assert result.get_response()["model_name"] == m.name
    assert result.get_output("logits")["parameters"]["binary_data_size"] == 3 * len(m.labels) * 4


def test_infer_json_tensors_and_requested_outputs(triton, reference: Runtime) -> None:
    m = served().manifest(MASKED)
    x = sequence(m, batch=2, seed=11)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
        httpclient.InferRequestedOutput("label_index", binary_data=True),
    ]
    result = triton.infer(m.name, [inp], outputs=outputs, request_id="req-7")
    want = reference.classify(m.name, x)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert [o["name"] for o in response["outputs"]] == ["probabilities", "label_index"]
    assert "data" in response["outputs"][0] and "data" not in response["outputs"][1]
    np.testing.assert_allclose(result.as_numpy("probabilities"), want.probabilities, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(result.as_numpy("label_index"), want.label_index)
    assert result.as_numpy("logits") is None


def test_infer_compressed_request(triton, reference: Runtime) -> None:
    m = served().manifest(SLIDING)
    x = sequence(m, batch=1, seed=12)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = triton.infer(m.name, [inp], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("logits"), reference.classify(m.name, x).logits, rtol=1e-6)


def test_infer_errors_reach_tritonclient(triton) -> None:
    m = served().manifest(PSN)
    x = np.zeros((1, m.T, m.features + 1), dtype=np.float32)  # wrong F
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(httpclient.InferenceServerException) as info:
        triton.infer(m.name, [inp])
    assert info.value.status() == "422" and str(m.features) in info.value.message()
    with pytest.raises(httpclient.InferenceServerException) as info:
        triton.infer("no-such-model", [inp])
    assert info.value.status() == "404" and "no-such-model" in info.value.message()


def infer_raw(client: TestClient, name: str, doc: dict, binary: bytes = b"", **headers: str):
    header = json.dumps(doc).encode()
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(header))
    return client.post(f"/v2/models/{name}/infer", content=header + binary, headers=headers)


def test_raw_binary_response_layout(client: TestClient, reference: Runtime) -> None:
    m = served().manifest(PSN)
    x = sequence(m, batch=2, seed=13)
    doc = {
        "inputs": [
            {
                "name": "x",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }
    response = infer_raw(client, m.name, doc, x.astype("<f4").tobytes())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    (out,) = header["outputs"]
    assert out == {
        "name": "logits",
        "datatype": "FP32",
        "shape": [2, len(m.labels)],
        "parameters": {"binary_data_size": 2 * len(m.labels) * 4},
    }
    logits = np.frombuffer(response.content[length:], dtype="<f4").reshape(2, -1)
    np.testing.assert_allclose(logits, reference.classify(m.name, x).logits, rtol=1e-6)


def test_raw_json_request_nested_data(client: TestClient, reference: Runtime) -> None:
    m = served().manifest(MASKED)
    x = sequence(m, batch=1, seed=14)
    doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    response = infer_raw(client, m.name, doc)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    np.testing.assert_allclose(outputs["logits"]["data"], reference.classify(m.name, x).logits[0], rtol=1e-6)
    assert outputs["label_index"]["shape"] == [1]


def test_raw_errors_use_the_v2_error_body(client: TestClient) -> None:
    m = served().manifest(PSN)
    shape = [1, m.T, m.features]
    good = {"name": "x", "shape": shape, "datatype": "FP32", "data": [0.0] * (m.T * m.features)}
    cases = [
        ({"inputs": [{**good, "name": "y"}]}, b"", 422, "inputs[0].name"),
        ({"inputs": [{**good, "datatype": "BYTES"}]}, b"", 422, "datatype"),
        ({"inputs": [{**good, "shape": [m.T, m.features]}]}, b"", 422, "shape"),
        ({"inputs": [{**good, "data": [0.0] * 3}]}, b"", 422, "values for shape"),
        ({"inputs": [{**good, "data": [float("nan")] * (m.T * m.features)}]}, b"", 400, "invalid JSON"),
        ({"inputs": [good, good]}, b"", 422, "exactly one input"),
        ({"inputs": [good], "outputs": [{"name": "nope"}]}, b"", 422, "outputs[0].name"),
        (
            {"inputs": [good], "outputs": [{"name": "logits", "parameters": {"classification": 2}}]},
            b"",
            422,
            "classification",
        ),
        (
            {"inputs": [{**good, "data": None, "parameters": {"binary_data_size": 7}}]},
            b"\x00" * 7,
            422,
            "binary_data_size",
        ),
        (
            {"inputs": [{**good, "parameters": {"binary_data_size": 4 * m.T * m.features}}]},
            b"\x00" * (4 * m.T * m.features + 4),
            422,
            "bytes of binary data follow",
        ),
    ]
    for doc, binary, status, text in cases:
        response = infer_raw(client, m.name, doc, binary)
        assert response.status_code == status, (doc, response.text)
        body = response.json()
        assert isinstance(body["error"], str) and text in body["error"], (text, body)
    nan_binary = np.full(shape, np.nan, dtype="<f4").tobytes()
    doc = {"inputs": [{**good, "data": None, "parameters": {"binary_data_size": len(nan_binary)}}]}
    response = infer_raw(client, m.name, doc, nan_binary)
    assert response.status_code == 422 and "NaN" in response.json()["error"]
    bad_length = client.post(
        f"/v2/models/{m.name}/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"}
    )
    assert bad_length.status_code == 422
    assert client.get("/v2/models/no-such-model").json() == {"error": "unknown model 'no-such-model'"}
    assert client.get(f"/v2/models/{m.name}/versions/{m.version}").status_code == 200
    assert client.get(f"/v2/models/{m.name}/versions/999/ready").status_code == 404
