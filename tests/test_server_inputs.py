"""The data plane's input builder (server/inputs.py) seen from the transports: a model that is not ready
is refused (503) before any body is read; a variable-length model classifies sequences longer than its T
(v1 JSON and V2 binary) as its stream answers them; a body over the limit says how to get through (413);
the OpenAPI schema declares V2's binary body."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_server_support import sequence, served, settings

from psn_runtime.manifest import NeuronKind
from server.app import build_app
from tests.fixtures import copy_models

SLIDING = NeuronKind.SLIDING_PSN


def asgi_post(app: Any, path: str, root_path: str = "") -> tuple[int, dict, int]:
    """POST to path through the whole ASGI app with a body that fails the test if anything reads it:
    (status, JSON body, times the body was asked for)."""
    asked = 0

    async def receive() -> dict:
        nonlocal asked
        asked += 1
        raise AssertionError("the request body was read")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "query_string": b"",
        "root_path": root_path,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5555),
        "state": {},
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
    }

    async def call() -> None:
        await app(scope, receive, send)

    asyncio.run(call())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), asked


@pytest.fixture(scope="module")
def failing_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good model, one whose manifest does not parse, and one whose full.onnx fails its sha256."""
    root = copy_models(tmp_path_factory.mktemp("not-ready"), ("lif",))
    (root / "no-manifest").mkdir()
    (root / "no-manifest" / "manifest.json").write_text("{not json")
    bad = root / "bad-onnx"
    copy_models(root / "copy", ("lif",))
    (root / "copy" / "lif").rename(bad)
    (root / "copy").rmdir()
    doc = json.loads((bad / "manifest.json").read_text())
    doc["name"] = "bad-onnx"
    (bad / "manifest.json").write_text(json.dumps(doc))
    (bad / "full.onnx").write_bytes(b"not an onnx graph")
    return root


ROUTES = [
    ("/v1/models/{}/classify", ""),  # the fast path
    ("/v2/models/{}/infer", ""),  # the fast path
    ("/v2/models/{}/versions/1/infer", ""),  # FastAPI's router
    ("/v1/models/{}/classify", "/api"),  # under a proxy prefix: FastAPI's router
    ("/v2/models/{}/infer", "/api"),
]


@pytest.mark.parametrize(("route", "root_path"), ROUTES)
@pytest.mark.parametrize("name", ["no-manifest", "bad-onnx"])
def test_a_model_not_ready_is_refused_before_the_body_is_read(
    failing_models: Path, route: str, root_path: str, name: str
) -> None:
    app = build_app(settings(models_dir=failing_models))

    async def run() -> tuple[int, dict, int]:
        async with app.router.lifespan_context(app):
            return await asyncio.to_thread(asgi_post, app, route.format(name), root_path)

    status, body, asked = asyncio.run(run())
    if "/versions/" in route:  # a named version that takes no work here: 404 (another replica may have it)
        assert (status, asked) == (404, 0), body
        return
    assert (status, asked) == (503, 0), body
    message = body["error"] if route.startswith("/v2") else body["error"]["message"]
    assert f"model {name!r} failed to load" in message
    if route.startswith("/v1"):
        assert body["error"]["code"] == "model_not_ready"


def test_no_body_is_read_before_the_runtime_has_started() -> None:
    app = build_app(settings())  # no lifespan: the runtime is not there yet
    name = served().name(SLIDING)
    for path in (f"/v1/models/{name}/classify", f"/v2/models/{name}/infer"):
        status, body, asked = asgi_post(app, path)
        assert (status, asked) == (503, 0), body


@pytest.fixture(scope="module")
def client() -> Any:
    with TestClient(build_app(settings(max_stream_steps=200, max_body_bytes=64 * 1024))) as c:
        yield c


def stream_logits(client: TestClient, name: str, x: np.ndarray) -> list[float]:
    """x [T', *shape] through the WebSocket, one JSON step at a time: the last answer's logits."""
    with client.websocket_connect(f"/v1/models/{name}/stream?logits=true") as ws:
        ws.receive_json()
        for step in x:
            ws.send_text(json.dumps({"x": step.tolist()}))
            answer = ws.receive_json()
        assert answer["t"] == len(x) - 1
        return answer["logits"]


@pytest.mark.parametrize("extra", [1, 45])
def test_classify_longer_than_T_answers_as_the_stream(client: TestClient, extra: int) -> None:
    m = served().manifest(SLIDING)
    x = np.concatenate([sequence(m, seed=1), sequence(m, seed=2)])[: m.T + extra]  # [T', F], T' > T
    want = stream_logits(client, m.name, x)
    v1 = client.post(f"/v1/models/{m.name}/classify", json={"inputs": x.tolist()})
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"][0]["logits"] == want  # the same float32 values, bit for bit
    batch = x[None]  # [1, T', F] as V2 binary
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ]
        }
    ).encode()
    v2 = client.post(
        f"/v2/models/{m.name}/infer",
        content=header + batch.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert v2.status_code == 200, v2.text
    logits = next(o for o in v2.json()["outputs"] if o["name"] == "logits")
    np.testing.assert_array_equal(np.float32(logits["data"]), np.float32(want))


def test_classify_longer_than_the_stream_limit_is_refused(client: TestClient) -> None:
    m = served().manifest(SLIDING)
    steps = max(200, m.T) + 1
    response = client.post(f"/v1/models/{m.name}/classify", json={"inputs": [[0.5] * m.features] * steps})
    assert response.status_code == 422
    assert f"1 <= T <= {max(200, m.T)} steps, got {steps}" in response.json()["error"]["message"]


def test_413_names_the_limit_and_the_binary_way(client: TestClient) -> None:
    name = served().name(SLIDING)
    big = b'{"inputs": [' + b"0.123456789," * 8000 + b"0]}"
    for path in (f"/v1/models/{name}/classify", f"/v2/models/{name}/infer"):
        response = client.post(path, content=big, headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        body = response.json()["error"]
        message = body if isinstance(body, str) else body["message"]
        for text in ("over the limit of 65536 bytes", "--max-body-bytes", "PSN_MAX_BODY_BYTES", "binary"):
            assert text in message, message


def test_openapi_declares_the_v2_binary_body(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/octet-stream"}
        binary = content["application/octet-stream"]["schema"]
        assert binary["format"] == "binary" and "Inference-Header-Content-Length" in binary["description"]
    classify = paths["/v1/models/{name}/classify"]["post"]["requestBody"]["content"]
    assert set(classify) == {"application/json"}
