"""The fast path (server/fastpath.py: v1 classify, V2 infer) answers exactly as FastAPI's routes do: the
same bodies, statuses and headers for good and bad requests, the same key check, the same metrics labels;
requests it does not recognise go on to the router."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from test_server_support import sequence, served, settings

from psn_runtime.manifest import NeuronKind
from server.app import build_app
from server.fastpath import FastPath, hot_routes

KEY = "k" * 24


def without_fast_path(**overrides):
    app = build_app(settings(**overrides))
    app.user_middleware = [m for m in app.user_middleware if m.cls is not FastPath]
    return app


def answers(client: TestClient, name: str, manifest) -> list[tuple[int, dict, dict]]:
    x = sequence(manifest, batch=2)
    v1_requests = [
        ({"inputs": x.tolist()}, {}),
        ({"inputs": x[0].tolist(), "return_logits": False}, {}),
        ({"inputs": [[1.0, "a"]]}, {}),
        ({"inputs": x.tolist(), "extra": 1}, {}),
        (None, {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
        (None, {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
    ]
    v2 = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32"}]}
    header = json.dumps({**v2, "inputs": [{**v2["inputs"][0], "parameters": {"binary_data_size": x.nbytes}}]})
    binary = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    v2_requests = [
        ({**v2, "inputs": [{**v2["inputs"][0], "data": x.ravel().tolist()}]}, {}),
        (None, {"content": header.encode() + x.tobytes(), "headers": binary}),
        (None, {"content": header.encode() + x.tobytes()[:-4], "headers": binary}),
        ({"inputs": []}, {}),
    ]
    out = []
    for target, route, requests in (
        (name, "/v1/models/{}/classify", v1_requests),
        ("no-such-model", "/v1/models/{}/classify", v1_requests[:2]),
        (name, "/v2/models/{}/infer", v2_requests),
        ("no-such-model", "/v2/models/{}/infer", v2_requests[:1]),
    ):
        for body, given in requests:
            kwargs = dict(given)
            if body is not None:
                kwargs = {
                    "content": json.dumps(body).encode(),
                    "headers": {"Content-Type": "application/json"},
                }
            headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
            for auth in (headers, {k: v for k, v in headers.items() if k != "Authorization"}):
                r = client.post(route.format(target), headers=auth, **dict(kwargs))
                doc = r.json()
                doc.pop("latency_ms", None)
                kept = {
                    k: v for k, v in r.headers.items() if k not in ("date", "content-length")
                }  # (latency_ms varies)
                out.append((r.status_code, doc, kept))
    return out


@pytest.mark.parametrize("key", [None, KEY])
def test_fast_path_answers_as_the_router(key: str | None) -> None:
    manifest = served().by_kind[NeuronKind.PSN]
    with (
        TestClient(build_app(settings(api_key=key))) as fast,
        TestClient(without_fast_path(api_key=key)) as slow,
    ):
        got, want = answers(fast, manifest.name, manifest), answers(slow, manifest.name, manifest)
        assert got == want
        statuses = {status for status, _, _ in got}
        assert 200 in statuses and 400 in statuses and 404 in statuses and 415 in statuses
        assert (401 in statuses) == (key is not None)
        ok = next(doc for status, doc, _ in got if status == 200)
        assert len(ok["predictions"]) == 2 and ok["model"] == manifest.name
        metrics = fast.get("/metrics", headers={"X-API-Key": KEY}).text
        line = (
            f'psn_http_requests_total{{method="POST",model="{manifest.name}",'
            'route="/v1/models/{name}/classify",status="200"}'
        )
        assert line in metrics
        assert 'route="/v2/models/{name}/infer",status="200"' in metrics


def test_other_paths_go_on_to_the_router() -> None:
    app = build_app(settings())
    assert any(m.cls is FastPath for m in app.user_middleware)
    fast = FastPath(None, None, hot_routes())  # type: ignore[arg-type]

    def path_of(scope: dict) -> str | None:
        found = fast.match(scope)
        return None if found is None else found[1]

    def scope(path: str, method: str = "POST", root_path: str = "") -> dict:
        return {"type": "http", "method": method, "path": path, "root_path": root_path}

    assert path_of(scope("/v1/models/m/classify")) == "m"
    assert path_of(scope("/v2/models/m/infer")) == "m"
    for other in (
        scope("/v1/models/m/classify", "GET"),
        scope("/v1/models//classify"),
        scope("/v1/models/a/b/classify"),
        scope("/v1/models/m/classify/"),
        scope("/v2/models/m/versions/1/infer"),
        scope("/v2/models/m/ready"),
        scope("/v1/models/m/classify", root_path="/api"),
        {"type": "websocket", "path": "/v1/models/m/classify"},
    ):
        assert path_of(other) is None, other
    with TestClient(app) as c:  # a wrong method still gets the router's 405
        assert c.get(f"/v1/models/{served().by_kind[NeuronKind.PSN].name}/classify").status_code == 405
