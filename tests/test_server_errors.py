"""The error body's format is the answering route's (server/errors.py), never the URL path's: behind a proxy
prefix (``root_path``) a V2 error is still ``{"error": "<message>"}`` and a v1 error
``{"error": {"code", "message"}}``, for errors raised in a route, by the fast path, by request validation,
and for requests no route matches (404) or that a route matches but for the method (405)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_server_support import served, settings

from psn_runtime.manifest import NeuronKind
from server.app import build_app
from server.errors import ErrorFormat, Fallback

ROOTS = ["", "/api"]


@pytest.fixture(scope="module", params=ROOTS, ids=["no-prefix", "root_path"])
def client(request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, str]]:
    with TestClient(build_app(settings()), root_path=request.param) as c:
        yield c, request.param


def is_v2(body: object) -> bool:
    return isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)


def is_v1(body: object, code: str) -> bool:
    return isinstance(body, dict) and set(body) == {"error"} and body["error"]["code"] == code


def test_v2_errors_have_the_v2_body(client: tuple[TestClient, str]) -> None:
    c, root = client
    name = served().name(NeuronKind.PSN)
    cases = [
        (c.get(f"{root}/v2/models/no-such-model"), 404),  # raised in a route
        (c.post(f"{root}/v2/models/no-such-model/infer", json={"inputs": []}), 404),  # the fast path's
        (c.post(f"{root}/v2/models/{name}/infer", content=b"{oops"), 400),
        (c.post(f"{root}/v2/models/{name}/infer", json={"inputs": []}), 422),
        (c.get(f"{root}/v2/models/{name}/versions/999/ready"), 404),
        (c.get(f"{root}/v2/nothing/here"), 404),  # no route: the V2 fallback
        (c.get(f"{root}/v2/models/{name}/ready/more"), 404),
        (c.get(f"{root}/v2/models/{name}/infer"), 405),  # the route matched, the method did not
        (c.put(f"{root}/v2/health/live"), 405),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert is_v2(response.json()), (response.request.url, response.text)
        assert response.json()["error"]  # a message, not an empty string
    assert "no-such-model" in cases[0][0].json()["error"]


def test_v1_and_other_errors_have_the_v1_body(client: tuple[TestClient, str]) -> None:
    c, root = client
    name = served().name(NeuronKind.PSN)
    cases = [
        (c.get(f"{root}/v1/models/no-such-model"), 404, "unknown_model"),
        (c.post(f"{root}/v1/models/no-such-model/classify", json={"inputs": [[1.0]]}), 404, "unknown_model"),
        (c.post(f"{root}/v1/models/{name}/classify", content=b"{oops"), 400, "invalid_json"),
        (c.get(f"{root}/v1/nothing-here"), 404, "not_found"),
        (c.get(f"{root}/nothing-here"), 404, "not_found"),
        (c.get(f"{root}/v2x/models"), 404, "not_found"),  # not under the /v2 prefix
        (c.get(f"{root}/v1/models/{name}/classify"), 405, "method_not_allowed"),
        (c.post(f"{root}/healthz"), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert is_v1(response.json(), code), (response.request.url, response.text)


def test_the_fallback_leaves_trailing_slash_redirects_to_the_router(client: tuple[TestClient, str]) -> None:
    c, root = client
    name = served().name(NeuronKind.PSN)
    response = c.get(f"{root}/v2/models/{name}/ready/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].endswith(f"{root}/v2/models/{name}/ready")
    assert c.get(f"{root}/v2/models/{name}/ready/").json() == {"name": name, "ready": True}


def test_the_fallback_is_the_last_route_and_takes_one_protocol() -> None:
    app = build_app(settings())
    last = app.router.routes[-1]
    assert isinstance(last, Fallback) and last.prefix == "/v2" and last.error_format is ErrorFormat.V2
    from server import routes_v1, routes_v2

    with pytest.raises(ValueError, match="one prefix and format"):
        Fallback(routes_v1.router, routes_v2.router)
