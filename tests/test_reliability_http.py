"""Bad input over HTTP, in-process against the real runtime: every case a 4xx with a JSON error that names
the field, and the server still serving afterwards (tests/test_server.py has the basic cases; these are
the rest). Plus the security checks: an API key guards every route but the probes (HTTP and WebSocket,
every route of ``app.routes``), CORS is off unless configured, a pickle checkpoint is never unpickled."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect
from test_server_support import live_server, sequence, served, settings

from psn_runtime.manifest import NeuronKind
from server.app import build_app

PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN
BODY_LIMIT = 64 * 1024
MAX_STEPS = 100  # max_stream_steps: also the longest sequence a variable-length model classifies
KEY = "reliability-key-0123"
PROBES = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
PUBLIC = {"/"}  # the demo page (it asks for the key itself; its /static files are public too)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(
        build_app(settings(max_body_bytes=BODY_LIMIT, max_classify_batch=8, max_stream_steps=MAX_STEPS))
    ) as c:
        yield c


def still_serving(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    m = served().manifest(SLIDING)
    ok = client.post(f"/v1/models/{m.name}/classify", json={"inputs": sequence(m).tolist()})
    assert ok.status_code == 200, ok.text


def v1_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) <= {"code", "message", "param"}, body
    return body["error"]


# -- v1 classify --------------------------------------------------------------------------------------------
def _row(kind=PSN) -> list[float]:
    return [0.5] * served().manifest(kind).features


def _T(kind=PSN) -> int:
    return served().manifest(kind).T


# name -> (model kind, body builder, status, error code, param named (None: the message names nothing))
CLASSIFY_CASES = {
    "sliding: T over the stream step limit": (
        SLIDING,
        lambda: {"inputs": [_row(SLIDING)] * (max(MAX_STEPS, _T(SLIDING)) + 1)},
        422,
        "bad_input",
        "inputs",
    ),
    "masked: T too short": (
        MASKED,
        lambda: {"inputs": [_row(MASKED)] * (_T(MASKED) - 1)},
        422,
        "bad_input",
        "inputs",
    ),
    "F = 0 (empty rows)": (PSN, lambda: {"inputs": [[]] * _T()}, 422, "bad_input", "inputs"),
    "empty sequence in a batch": (PSN, lambda: {"inputs": [[[]]]}, 422, "bad_input", "inputs"),
    "ragged batch (T differs)": (
        PSN,
        lambda: {"inputs": [[_row()] * _T(), [_row()] * (_T() - 1)]},
        422,
        "bad_input",
        "inputs[1]",
    ),
    "ragged batch (F differs)": (
        PSN,
        lambda: {"inputs": [[_row()] * _T(), [_row()[:-1]] * _T()]},
        422,
        "bad_input",
        "inputs[1][0]",
    ),
    "'NaN' as a string": (
        PSN,
        lambda: {"inputs": [["NaN", *_row()[1:]]] * _T()},
        422,
        "bad_input",
        "inputs[0][0]",
    ),
    "number over float64 (1e400)": (PSN, lambda: None, 422, "bad_input", "inputs[0][0]"),
    "4 dimensions": (PSN, lambda: {"inputs": [[[_row()] * _T()]]}, 422, "bad_input", "inputs"),
    "inputs null": (PSN, lambda: {"inputs": None}, 422, "bad_input", "inputs"),
    "inputs an object": (PSN, lambda: {"inputs": {"0": _row()}}, 422, "bad_input", "inputs"),
    "inputs a number": (PSN, lambda: {"inputs": 3.5}, 422, "bad_input", "inputs"),
    "return_logits null": (
        PSN,
        lambda: {"inputs": [_row()] * _T(), "return_logits": None},
        422,
        "invalid_request",
        "return_logits",
    ),
    "body a JSON string": (PSN, lambda: "inputs", 422, "invalid_request", None),
    "body null": (PSN, lambda: None, 422, "invalid_request", None),
}


@pytest.mark.parametrize("case", list(CLASSIFY_CASES))
def test_classify_bad_body(client: TestClient, case: str) -> None:
    kind, build, status, code, param = CLASSIFY_CASES[case]
    name = served().name(kind)
    if case.startswith("number over float64"):
        raw = b'{"inputs": [[1e400' + b", 0.5" * (len(_row()) - 1) + b"]]}"
    else:
        raw = json.dumps(build()).encode()
    response = client.post(
        f"/v1/models/{name}/classify", content=raw, headers={"Content-Type": "application/json"}
    )
    if case.startswith("number over float64") and response.status_code == 400:  # a parser may refuse it
        assert v1_error(response, 400)["code"] == "invalid_json"
    else:
        error = v1_error(response, status)
        assert error["code"] == code, error
        assert error.get("param") == param, error
        if param is not None:
            assert error["message"].startswith(param), error
    still_serving(client)


RAW_CASES = {
    # name -> (headers, body, status, code, param)
    "empty body": ({"Content-Type": "application/json"}, b"", 400, "invalid_json", None),
    "invalid UTF-8": (
        {"Content-Type": "application/json"},
        b'{"inputs": "\xff\xfe"}',
        400,
        "invalid_json",
        None,
    ),
    "trailing garbage": (
        {"Content-Type": "application/json"},
        b'{"inputs": [[1]]} x',
        400,
        "invalid_json",
        None,
    ),
    "XML": ({"Content-Type": "application/xml"}, b"<inputs/>", 415, "unsupported_media_type", "Content-Type"),
    "multipart": (
        {"Content-Type": "multipart/form-data; boundary=x"},
        b"--x--",
        415,
        "unsupported_media_type",
        "Content-Type",
    ),
    "unknown Content-Encoding": (
        {"Content-Type": "application/json", "Content-Encoding": "br"},
        b"{}",
        415,
        "unsupported_media_type",
        "Content-Encoding",
    ),
    "invalid gzip": (
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        b"not gzip",
        422,
        "invalid_request",
        "Content-Encoding",
    ),
    "gzip bomb (decodes over the limit)": (
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        gzip.compress(b'{"inputs": [' + b"0.0," * 200_000 + b"0.0]}"),
        413,
        "body_too_large",
        None,
    ),
    "body over the limit, chunked": (
        {"Content-Type": "application/json"},
        "chunked",
        413,
        "body_too_large",
        None,
    ),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_classify_bad_transport(client: TestClient, case: str) -> None:
    headers, body, status, code, param = RAW_CASES[case]
    if body == "chunked":  # no Content-Length: the limit is enforced while reading
        body = (b'{"inputs": [' + b"0.0," * 10_000 + b"0.0]}" for _ in range(3))
    name = served().name(PSN)
    error = v1_error(client.post(f"/v1/models/{name}/classify", content=body, headers=headers), status)
    assert error["code"] == code and error.get("param") == param, error
    if code == "body_too_large":
        assert str(BODY_LIMIT) in error["message"]
    still_serving(client)


BAD_NAMES = [
    *["..", "%2e%2e", "%2E%2E", ".%2e", "%2e%2e%2fetc", "..%2F..%2Fetc", "a%2Fb", "%00", "%20", "x" * 5000],
    *["%F0%9F%98%80", "manifest.json", "..%5C..%5Cwindows", "../../etc/passwd", "./psn"],
]
NAME_ROUTES = [
    "/v1/models/{}",
    "/v1/models/{}/classify",
    "/v2/models/{}",
    "/v2/models/{}/ready",
    "/v2/models/{}/infer",
]


@pytest.fixture(scope="module")
def live() -> Iterator[int]:
    """A real server: the raw path reaches it as sent (an HTTP client would resolve the dot segments)."""
    with live_server(settings()) as base:
        yield int(base.rsplit(":", 1)[1])


def raw_http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: n[:20])
@pytest.mark.parametrize("route", NAME_ROUTES)
def test_model_names_with_path_characters(live: int, route: str, name: str) -> None:
    """Never a file, never a 5xx: an unknown model (404 naming it) or, with a slash, no route at all."""
    path = route.format(name)
    post = path.endswith(("classify", "infer"))
    status, body = raw_http(live, "POST" if post else "GET", path, b'{"inputs": [[0.5]]}' if post else b"")
    assert status in (404, 405), (path, status, body[:300])
    error = json.loads(body)["error"]
    if isinstance(error, dict):
        assert error["code"] in ("unknown_model", "not_found", "method_not_allowed") and error["message"], (
            error
        )
    else:
        assert path.startswith("/v2") and error
    assert b"Traceback" not in body and b"/work" not in body and b"root:" not in body
    assert raw_http(live, "GET", "/healthz")[0] == 200


# -- v2 infer ---------------------------------------------------------------------------------------------
def _tensor(**overrides) -> dict:
    m = served().manifest(PSN)
    tensor = {
        "name": "x",
        "shape": [1, m.T, m.features],
        "datatype": "FP32",
        "data": [0.0] * (m.T * m.features),
    }
    tensor.update(overrides)
    return tensor


def _size() -> int:
    m = served().manifest(PSN)
    return 4 * m.T * m.features


V2_CASES = {
    # name -> (doc builder, binary tail, status, text the error must contain (the field))
    "datatype INT32": (lambda: {"inputs": [_tensor(datatype="INT32")]}, b"", 422, "inputs[0].datatype"),
    "datatype lowercase": (lambda: {"inputs": [_tensor(datatype="fp32")]}, b"", 422, "inputs[0].datatype"),
    "datatype missing": (lambda: {"inputs": [_tensor(datatype=None)]}, b"", 422, "inputs[0].datatype"),
    "shape of 4 dims": (lambda: {"inputs": [_tensor(shape=[1, 1, 1, 1])]}, b"", 422, "inputs[0].shape"),
    "shape with 0": (lambda: {"inputs": [_tensor(shape=[0, 8, 5])]}, b"", 422, "inputs[0].shape"),
    "shape negative": (lambda: {"inputs": [_tensor(shape=[-1, 8, 5])]}, b"", 422, "inputs[0].shape"),
    "shape strings": (lambda: {"inputs": [_tensor(shape=["1", "8", "5"])]}, b"", 422, "inputs[0].shape"),
    "shape huge": (lambda: {"inputs": [_tensor(shape=[10**12, 10**12, 10**12])]}, b"", 422, "inputs[0].data"),
    "shape vs model F": (
        lambda: {
            "inputs": [_tensor(shape=[1, served().manifest(PSN).T * served().manifest(PSN).features, 1])]
        },
        b"",
        422,
        "per-step shape",
    ),
    "binary size too small": (
        lambda: {"inputs": [_tensor(data=None, parameters={"binary_data_size": 4})]},
        lambda: b"\x00" * 4,
        422,
        "binary_data_size",
    ),
    "binary size over what was sent": (
        lambda: {"inputs": [_tensor(data=None, parameters={"binary_data_size": _size()})]},
        lambda: b"\x00" * (_size() - 4),
        422,
        "binary_data_size",
    ),
    "binary size a string": (
        lambda: {"inputs": [_tensor(data=None, parameters={"binary_data_size": "160"})]},
        lambda: b"\x00" * _size(),
        422,
        "binary_data_size",
    ),
    "binary without size": (
        lambda: {"inputs": [_tensor(data=None)]},
        lambda: b"\x00" * _size(),
        422,
        "binary_data_size",
    ),
    "binary Inf": (
        lambda: {"inputs": [_tensor(data=None, parameters={"binary_data_size": _size()})]},
        lambda: np.full(_size() // 4, np.inf, "<f4").tobytes(),
        422,
        "NaN or Inf",
    ),
    "FP64 byte length as FP32": (
        lambda: {"inputs": [_tensor(datatype="FP64", data=None, parameters={"binary_data_size": _size()})]},
        lambda: b"\x00" * _size(),
        422,
        "binary_data_size",
    ),
    "inputs not a list": (lambda: {"inputs": {"name": "x"}}, b"", 422, "inputs"),
    "inputs[0] not an object": (lambda: {"inputs": ["x"]}, b"", 422, "inputs"),
    "no inputs": (lambda: {"outputs": []}, b"", 422, "inputs"),
    "data strings": (lambda: {"inputs": [_tensor(data=["a"] * _size())]}, b"", 422, "inputs[0].data"),
    "outputs parameters a number": (
        lambda: {"inputs": [_tensor()], "outputs": [{"name": "logits", "parameters": 5}]},
        b"",
        422,
        "outputs[0].parameters",
    ),
    "binary_data_output a string": (
        lambda: {"inputs": [_tensor()], "parameters": {"binary_data_output": "yes"}},
        b"",
        422,
        "binary_data_output",
    ),
    "id a number": (lambda: {"inputs": [_tensor()], "id": 7}, b"", 422, "id"),
    "parameters a list": (lambda: {"inputs": [_tensor()], "parameters": [1]}, b"", 422, "parameters"),
}


@pytest.mark.parametrize("case", list(V2_CASES))
def test_v2_bad_request(client: TestClient, case: str) -> None:
    build, tail, status, text = V2_CASES[case]
    header = json.dumps(build()).encode()
    tail = tail() if callable(tail) else tail
    headers = {"Content-Type": "application/octet-stream" if tail else "application/json"}
    if tail:
        headers["Inference-Header-Content-Length"] = str(len(header))
    response = client.post(f"/v2/models/{served().name(PSN)}/infer", content=header + tail, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert text in body["error"], body
    still_serving(client)


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "text/plain"}, b"{}", 415),
        ({"Content-Type": "application/json"}, b"{not json", 400),
        ({"Content-Type": "application/json"}, b"[1, 2]", 422),
        ({"Content-Type": "application/json"}, b"x" * (BODY_LIMIT + 1), 413),
        ({"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "-5"}, b"{}", 422),
        ({"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "1e3"}, b"{}", 422),
    ],
    ids=[
        "text/plain",
        "malformed JSON",
        "not an object",
        "over the body limit",
        "negative header length",
        "header length not an integer",
    ],
)
def test_v2_bad_transport(client: TestClient, headers: dict, body: bytes, status: int) -> None:
    response = client.post(f"/v2/models/{served().name(PSN)}/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    still_serving(client)


# -- security --------------------------------------------------------------------------------------------
def all_routes(app) -> list[tuple[str, str]]:
    """(method or "WS", path) of every route the app serves, walking included routers (FastAPI versions
    differ in whether ``app.routes`` is flat)."""
    out: list[tuple[str, str]] = []

    def walk(routes) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None) or getattr(route, "router", None)
            if inner is not None and not isinstance(route, Route | WebSocketRoute):
                walk(inner.routes)
            elif isinstance(route, WebSocketRoute):
                out.append(("WS", route.path))
            elif isinstance(route, Route):
                out.extend((method, route.path) for method in sorted(route.methods or ()) if method != "HEAD")

    walk(app.routes)
    return sorted(set(out))


def _fill(path: str) -> str:
    m = served().manifest(SLIDING)
    return path.replace("{name}", m.name).replace("{version}", m.version)


KEYED_APP = build_app(settings(api_key=KEY))
ROUTES = all_routes(KEYED_APP)


def test_route_walk_sees_every_route() -> None:
    paths = {path for _, path in ROUTES}
    assert {
        "/v1/models/{name}/classify",
        "/v1/models/{name}/stream",
        "/v2/models/{name}/infer",
        "/metrics",
    } <= paths
    assert paths >= PROBES
    assert "/openapi.json" not in paths and "/docs" not in paths  # no open docs with a key set


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    with TestClient(KEYED_APP) as c:
        yield c


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_but_the_probes_needs_the_key(keyed: TestClient, method: str, path: str) -> None:
    url = _fill(path)
    if method == "WS":
        for headers in ({}, {"Authorization": "Bearer wrong-key-0000"}, {"X-API-Key": KEY[:-1]}):
            with (
                keyed.websocket_connect(url, headers=headers) as ws,
                pytest.raises(WebSocketDisconnect) as info,
            ):
                ws.receive_json()
            assert info.value.code == 1008 and "API key" in info.value.reason
        with keyed.websocket_connect(url, headers={"Authorization": f"Bearer {KEY}"}) as ws:
            assert ws.receive_json()["model"] == served().name(SLIDING)
        return
    send = lambda **kw: keyed.request(method, url, **kw)  # noqa: E731
    if path in PROBES | PUBLIC:
        assert send().status_code == 200
        return
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key-0000"},
        {"X-API-Key": "nope-nope-nope"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
    ):
        response = send(headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "key" in response.text
    assert send(params={"api_key": KEY}).status_code == 401  # query keys: WebSocket only
    authorized = send(
        headers={"X-API-Key": KEY}, json={"inputs": sequence(served().manifest(SLIDING)).tolist()}
    )
    assert authorized.status_code != 401, authorized.text


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[0] != "WS"], ids=lambda v: str(v))
def test_cors_is_off_unless_configured(client: TestClient, method: str, path: str) -> None:
    origin = {"Origin": "https://evil.example"}
    response = client.request(method, _fill(path), headers=origin)
    assert not any(h.lower().startswith("access-control-") for h in response.headers), response.headers
    preflight = client.options(_fill(path), headers={**origin, "Access-Control-Request-Method": method})
    assert "access-control-allow-origin" not in preflight.headers


def test_a_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    """psn.checkpoint reads weights with safetensors: a pickle (plain or torch.save) under the weights name
    is refused, and the code a pickle would run never runs."""
    pytest.importorskip("torch")
    import os
    import pickle

    import torch

    from psn.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
    from tests.fixtures import tiny_model

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = save_checkpoint(tiny_model("psn", None), tmp_path / "good", {})
    load_checkpoint(good)  # the real thing loads
    for name, write in {
        "pickle": lambda p: p.write_bytes(pickle.dumps({"w": Payload()})),
        "torch.save": lambda p: torch.save({"layers.0.weight": torch.zeros(2), "x": Payload()}, p),
    }.items():
        bad = tmp_path / name
        bad.mkdir()
        (bad / "config.json").write_text((good / "config.json").read_text())
        write(bad / WEIGHTS_FILE)
        with pytest.raises(Exception) as info:
            load_checkpoint(bad)
        assert not marker.exists(), f"a {name} checkpoint was unpickled"
        assert "pickle" not in type(info.value).__module__
