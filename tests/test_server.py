"""HTTP routes in-process (TestClient, lifespan included) against the real Runtime and real model
directories: health, readiness, models, classify (values and every error), metrics, auth, CORS."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_server_support import sequence, served, settings

from psn_runtime.manifest import NeuronKind
from server.app import build_app
from server.state import app_state

PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(build_app(settings(max_body_bytes=64 * 1024, max_classify_batch=8))) as c:
        yield c


def reference(client: TestClient, name: str, x: np.ndarray):
    """What the runtime itself answers for x (the server must only translate it)."""
    return app_state(client.app).runtime.classify(name, x)


def classify(client: TestClient, name: str, body: object, **kwargs):
    return client.post(f"/v1/models/{name}/classify", json=body, **kwargs)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# -- health, readiness, models ---------------------------------------------------------------------------
def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    for manifest in served().by_kind.values():
        assert body["models"][manifest.name] == {"status": "ready"}


def test_list_and_get_models(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    names = {m["name"] for m in models}
    assert {m.name for m in served().by_kind.values()} <= names
    manifest = served().manifest(SLIDING)
    one = client.get(f"/v1/models/{manifest.name}").json()
    assert one["status"] == "ready" and one["error"] is None
    assert one["provider"] == "CPUExecutionProvider"
    assert one["providers"]["full.onnx"] == ["CPUExecutionProvider"]
    assert one["manifest"]["kind"] == "sliding_psn"
    assert one["manifest"]["T"] == manifest.T and one["manifest"]["features"] == manifest.features
    missing = client.get("/v1/models/no-such-model")
    assert missing.status_code == 404
    assert error_of(missing) == {"code": "unknown_model", "message": "unknown model 'no-such-model'"}


def test_readyz_lists_failed_models_and_503_when_none_ready(tmp_path: Path) -> None:
    good = served().manifest(SLIDING)
    shutil.copytree(served().models_dir / good.name, tmp_path / "good")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with TestClient(build_app(settings(models_dir=tmp_path))) as c:
        body = c.get("/readyz")
        assert body.status_code == 200
        models = body.json()["models"]
        assert models[good.name] == {"status": "ready"}
        assert models["broken"]["status"] == "failed" and models["broken"]["error"]
        failed = c.get("/v1/models/broken").json()
        assert failed["status"] == "failed" and failed["manifest"] is None and failed["error"]
        not_ready = classify(c, "broken", {"inputs": [[0.0]]})
        assert not_ready.status_code == 503 and error_of(not_ready)["code"] == "model_not_ready"
        assert not_ready.headers["retry-after"] == "1"
    shutil.rmtree(tmp_path / "good")
    with TestClient(build_app(settings(models_dir=tmp_path))) as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/readyz").json()["status"] == "no model ready"
        assert c.get("/healthz").status_code == 200


def test_readyz_503_before_the_runtime_started() -> None:
    client = TestClient(build_app(settings()))  # no context manager: the lifespan has not run
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json() == {"status": "loading", "models": {}}
    assert client.get("/v1/models").status_code == 503


# -- classify ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [PSN, MASKED, SLIDING])
def test_classify_one_sequence_matches_the_runtime(client: TestClient, kind: NeuronKind) -> None:
    manifest = served().manifest(kind)
    x = sequence(manifest, seed=1)  # [T, F]
    response = classify(client, manifest.name, {"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    want = reference(client, manifest.name, x)
    assert body["model"] == manifest.name and body["provider"] == "CPUExecutionProvider"
    assert body["latency_ms"] > 0
    (pred,) = body["predictions"]
    assert pred["label"] == want.labels[0] == manifest.labels[int(np.argmax(want.logits[0]))]
    np.testing.assert_allclose(pred["probabilities"], want.probabilities[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pred["logits"], want.logits[0], rtol=1e-6, atol=1e-7)
    assert sum(pred["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_classify_batch_and_return_logits_false(client: TestClient) -> None:
    manifest = served().manifest(MASKED)
    x = sequence(manifest, batch=3, seed=2)  # [B, T, F]
    body = classify(client, manifest.name, {"inputs": x.tolist(), "return_logits": False}).json()
    want = reference(client, manifest.name, x)
    assert [p["label"] for p in body["predictions"]] == want.labels
    assert all("logits" not in p for p in body["predictions"])
    np.testing.assert_allclose(
        [p["probabilities"] for p in body["predictions"]], want.probabilities, rtol=1e-6
    )


def test_classify_accepts_integers_and_variable_length(client: TestClient) -> None:
    manifest = served().manifest(SLIDING)  # variable length: any 1 <= T' <= T
    x = np.ones((2, manifest.features), dtype=np.int64)
    body = classify(client, manifest.name, {"inputs": x.tolist()})
    assert body.status_code == 200, body.text
    want = reference(client, manifest.name, x.astype(np.float32))
    np.testing.assert_allclose(
        body.json()["predictions"][0]["probabilities"], want.probabilities[0], rtol=1e-6
    )


def _bad(client: TestClient, inputs: object, kind: NeuronKind = PSN, raw: bytes | None = None):
    name = served().manifest(kind).name
    if raw is not None:
        return client.post(
            f"/v1/models/{name}/classify", content=raw, headers={"Content-Type": "application/json"}
        )
    return classify(client, name, {"inputs": inputs})


def test_classify_rejects_bad_inputs_naming_the_field(client: TestClient) -> None:
    m = served().manifest(PSN)
    row = [0.5] * m.features
    cases = {
        "ragged": ([row, row[:-1]] + [row] * (m.T - 2), "inputs[1]", "ragged"),
        "string": ([[*row[:-1], "1.5"]] + [row] * (m.T - 1), f"inputs[0][{m.features - 1}]", "a string"),
        "boolean": ([[True, *row[1:]]] + [row] * (m.T - 1), "inputs[0][0]", "a boolean"),
        "null": ([[None, *row[1:]]] + [row] * (m.T - 1), "inputs[0][0]", "null"),
        "object": ([row] * (m.T - 1) + [{"a": 1}], f"inputs[{m.T - 1}]", "an object"),
        "too deep": ([[[[0.5]]]], "inputs", "nested too deep"),
        "not an array": ("abc", "inputs", "a string"),
        "empty": ([], "inputs", "empty"),
        "float32 overflow": ([[1e39, *row[1:]]] + [row] * (m.T - 1), "inputs[0][0]", "finite"),
        "wrong F": ([[*row, 0.5]] * m.T, "inputs", str(m.features)),
        "wrong T": ([row] * (m.T + 1), "inputs", str(m.T)),
    }
    for case, (inputs, param, text) in cases.items():
        response = _bad(client, inputs)
        assert response.status_code == 422, (case, response.text)
        error = error_of(response)
        assert error["code"] == "bad_input", case
        assert error["param"] == param, (case, error)
        assert text in error["message"], (case, error)


def test_classify_rejects_nan_infinity_and_malformed_json(client: TestClient) -> None:
    m = served().manifest(PSN)
    row = ", ".join(["0.5"] * (m.features - 1))
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = ('{"inputs": [[' + literal + ", " + row + "]]}").encode()
        response = _bad(client, None, raw=raw)
        assert response.status_code == 400, literal
        assert error_of(response)["code"] == "invalid_json"
    assert error_of(_bad(client, None, raw=b'{"inputs": [[1, 2]'))["code"] == "invalid_json"
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = _bad(client, None, raw=deep)
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_json"


def test_classify_request_shape_errors(client: TestClient) -> None:
    name = served().manifest(PSN).name
    response = classify(client, name, {"input": [[1.0]]})
    assert response.status_code == 422
    assert error_of(response) == {
        "code": "invalid_request",
        "message": "unknown field 'input'; expected ['inputs', 'return_logits']",
        "param": "input",
    }
    assert error_of(classify(client, name, {}))["param"] == "inputs"
    assert error_of(classify(client, name, [1, 2]))["code"] == "invalid_request"
    bad_flag = classify(client, name, {"inputs": [[1.0]], "return_logits": "yes"})
    assert bad_flag.status_code == 422 and error_of(bad_flag)["param"] == "return_logits"


def test_classify_limits(client: TestClient) -> None:
    m = served().manifest(PSN)
    too_many = sequence(m, batch=9).tolist()  # max_classify_batch=8
    response = classify(client, m.name, {"inputs": too_many})
    assert response.status_code in (413, 422), response.text  # the body limit may catch it first
    small = {"inputs": np.zeros((9, m.T, 1)).tolist()}  # a small body, still 9 sequences (wrong F too)
    assert classify(client, m.name, small).status_code == 422
    big = b'{"inputs": [' + b"0.0," * 20000 + b"0.0]}"
    response = _bad(client, None, raw=big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"
    assert "65536" in error_of(response)["message"]


def test_classify_batch_limit_is_the_runtimes(client: TestClient) -> None:
    m = served().manifest(PSN)
    x = np.zeros((9, m.T, m.features), dtype=np.float32)
    body = json.dumps({"inputs": x.tolist()}, separators=(",", ":")).encode()
    if len(body) > 64 * 1024:
        pytest.skip("the model is too wide for this body limit")
    response = _bad(client, None, raw=body)
    assert response.status_code == 422 and error_of(response)["code"] == "bad_input"


def test_classify_content_type(client: TestClient) -> None:
    name = served().manifest(PSN).name
    response = client.post(
        f"/v1/models/{name}/classify", content=b"inputs=1", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    form = client.post(f"/v1/models/{name}/classify", data={"inputs": "1"})
    assert form.status_code == 415
    ok = client.post(
        f"/v1/models/{name}/classify",
        content=json.dumps({"inputs": sequence(served().manifest(PSN)).tolist()}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200


def test_unknown_model_and_route(client: TestClient) -> None:
    response = classify(client, "nope", {"inputs": [[1.0]]})
    assert response.status_code == 404 and error_of(response)["code"] == "unknown_model"
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = client.get(f"/v1/models/{served().manifest(PSN).name}/classify")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_unexpected_error_is_a_generic_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    runtime = app_state(client.app).runtime

    async def boom(name: str, x: np.ndarray, version: str | None = None, admitted: str | None = None) -> None:
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(runtime, "classify_async", boom)
    m = served().manifest(PSN)
    with caplog.at_level("ERROR", logger="psn.server"):
        response = classify(client, m.name, {"inputs": sequence(m).tolist()})
    assert response.status_code == 500
    assert error_of(response) == {"code": "internal_error", "message": "internal server error"}
    assert "secret" not in response.text and "Traceback" not in response.text
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)


def test_request_validation_errors_name_the_field() -> None:
    app = build_app(settings())

    @app.get("/v1/echo/{n}")
    async def echo(n: int, limit: int = 3) -> dict:  # a typed route: FastAPI validates it
        return {"n": n}

    with TestClient(app) as c:
        response = c.get("/v1/echo/1?limit=abc")
        assert response.status_code == 422
        error = error_of(response)
        assert error["code"] == "invalid_request" and error["param"] == "query.limit"
        assert error["message"].startswith("query.limit: ")


# -- metrics ----------------------------------------------------------------------------------------------
def test_metrics(client: TestClient) -> None:
    m = served().manifest(SLIDING)
    classify(client, m.name, {"inputs": sequence(m, batch=2).tolist()})
    classify(client, "not-served-1", {"inputs": [[1.0]]})
    with client.websocket_connect("/v1/models/not-served-2/stream") as ws:
        ws.receive()  # closed 4404
    with client.websocket_connect(f"/v1/models/{m.name}/stream") as ws:
        ws.receive_json()
        for _ in range(3):
            ws.send_json({"x": [0.1] * m.features})
            ws.receive_json()
        text = client.get("/metrics").text
        assert f'psn_streams_open{{model="{m.name}",version="{m.version}"}} 1.0' in text
    route = "/v1/models/{name}/classify"
    assert f'psn_http_requests_total{{method="POST",model="{m.name}",route="{route}",status="200"}}' in text
    assert f'psn_http_requests_total{{method="POST",model="<unknown>",route="{route}",status="404"}}' in text
    assert (
        f'psn_http_request_duration_seconds_count{{method="POST",model="{m.name}",route="{route}"}}' in text
    )
    assert f'psn_stream_steps_total{{model="{m.name}",version="{m.version}"}} 3.0' in text
    assert f'psn_step_batch_size_count{{model="{m.name}",version="{m.version}"}}' in text
    assert f'psn_classified_sequences_total{{model="{m.name}",version="{m.version}"}}' in text
    assert 'psn_errors_total{kind="unknown_model",transport="http"}' in text
    assert (
        f'psn_model_ready{{model="{m.name}",provider="CPUExecutionProvider",version="{m.version}"}} 1.0'
        in text
    )
    assert "not-served" not in text  # unknown names never become label values
    closed = client.get("/metrics").text
    assert f'psn_streams_open{{model="{m.name}",version="{m.version}"}} 0.0' in closed


def test_two_apps_in_one_process_do_not_share_metrics(client: TestClient) -> None:
    with TestClient(build_app(settings())) as other:
        other.get("/healthz")
        text = other.get("/metrics").text
    assert 'route="/healthz"' in text
    assert "/classify" not in text  # the module client's classify requests are not in this registry


# -- auth and CORS ----------------------------------------------------------------------------------------
def test_api_key() -> None:
    key = "k" * 8 + "-secret"
    with TestClient(build_app(settings(api_key=key))) as c:
        name = served().manifest(PSN).name
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200, path
        for path in ("/v1/models", f"/v1/models/{name}", "/metrics", "/v2", f"/v2/models/{name}"):
            response = c.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        assert error_of(c.get("/v1/models"))["code"] == "unauthorized"
        assert c.get("/v2").json() == {
            "error": "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        }
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong-key"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": key}).status_code == 200
        assert c.get("/v1/models", params={"api_key": key}).status_code == 401  # query keys: WebSocket only
        assert c.get("/docs").status_code == 404  # no open docs when a key is set
        unauthorized = classify(c, name, {"inputs": [[1.0]]})
        assert unauthorized.status_code == 401


def test_cors_off_by_default_and_on_when_configured(client: TestClient) -> None:
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    response = client.options("/v1/models", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    with TestClient(build_app(settings(cors_origins="https://ui.example"))) as c:
        response = c.options("/v1/models", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://ui.example"
        other = c.options("/v1/models", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_json_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard-library fallback (no orjson installed) is as strict and writes numpy the same way."""
    from psn_runtime.validate import check_finite
    from server import jsonio
    from server.errors import InvalidJSON
    from server.inputs import json_float32

    monkeypatch.setattr(jsonio, "orjson", None)
    assert jsonio.loads(b'{"inputs": [[1, 2.5]]}') == {"inputs": [[1, 2.5]]}
    for bad in (b"[NaN]", b"[Infinity]", b"[-Infinity]", b"[1,", b"[" * 100_000):
        with pytest.raises(InvalidJSON):
            jsonio.loads(bad)
    out = json.loads(jsonio.dumps({"p": np.array([0.25, 0.75], dtype=np.float32), "t": np.int64(3)}))
    assert out == {"p": [0.25, 0.75], "t": 3}
    x = json_float32(jsonio.loads(b"[[1e400, 1]]"), "inputs", (2,), "numbers")  # inf from the stdlib parser
    with pytest.raises(Exception, match="inputs\\[0\\]\\[0\\]"):
        check_finite(x, "inputs")  # the runtime's validator, which every transport goes through


def test_inference_failure_is_a_500_without_details(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from psn_runtime.errors import InferenceError

    async def failing(
        name: str, x: np.ndarray, version: str | None = None, admitted: str | None = None
    ) -> None:
        raise InferenceError("model 'x': onnxruntime failed: [ONNXRuntimeError] node /layers.3/MatMul")

    monkeypatch.setattr(app_state(client.app).runtime, "classify_async", failing)
    m = served().manifest(PSN)
    response = classify(client, m.name, {"inputs": sequence(m).tolist()})
    assert response.status_code == 500
    assert error_of(response) == {"code": "inference_error", "message": "internal server error"}
