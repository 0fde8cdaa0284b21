"""The classify fast path (server/fastpath.py) answers exactly as FastAPI's route does: the same bodies,
statuses and headers for good and bad requests, the same key check, the same metrics labels; requests it
does not recognise go on to the router."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from test_server_support import sequence, served, settings

from psn_runtime.manifest import NeuronKind
from server.app import build_app
from server.fastpath import ClassifyFastPath

KEY = "k" * 24


def without_fast_path(**overrides):
    app = build_app(settings(**overrides))
    app.user_middleware = [m for m in app.user_middleware if m.cls is not ClassifyFastPath]
    return app


def answers(client: TestClient, name: str, manifest) -> list[tuple[int, dict, dict]]:
    x = sequence(manifest, batch=2)
    requests = [
        ({"inputs": x.tolist()}, {}),
        ({"inputs": x[0].tolist(), "return_logits": False}, {}),
        ({"inputs": [[1.0, "a"]]}, {}),
        ({"inputs": x.tolist(), "extra": 1}, {}),
        (None, {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
        (None, {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
    ]
    out = []
    for target in (name, "no-such-model"):
        for body, kwargs in requests:
            if body is not None:
                kwargs = {
                    "content": json.dumps(body).encode(),
                    "headers": {"Content-Type": "application/json"},
                }
            headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
            for auth in (headers, {k: v for k, v in headers.items() if k != "Authorization"}):
                r = client.post(f"/v1/models/{target}/classify", headers=auth, **kwargs)
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


def test_other_paths_go_on_to_the_router() -> None:
    app = build_app(settings())
    fast = next(m for m in app.user_middleware if m.cls is ClassifyFastPath)
    path_of = ClassifyFastPath(None, None, None)._name  # type: ignore[arg-type]

    def scope(path: str, method: str = "POST", root_path: str = "") -> dict:
        return {"type": "http", "method": method, "path": path, "root_path": root_path}

    assert fast is not None
    assert path_of(scope("/v1/models/m/classify")) == "m"
    for other in (
        scope("/v1/models/m/classify", "GET"),
        scope("/v1/models//classify"),
        scope("/v1/models/a/b/classify"),
        scope("/v1/models/m/classify/"),
        scope("/v2/models/m/infer"),
        scope("/v1/models/m/classify", root_path="/api"),
        {"type": "websocket", "path": "/v1/models/m/classify"},
    ):
        assert path_of(other) is None, other
    with TestClient(app) as c:  # a wrong method still gets the router's 405
        assert c.get(f"/v1/models/{served().by_kind[NeuronKind.PSN].name}/classify").status_code == 405
