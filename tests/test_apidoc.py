"""/docs groups the routes by tags, gives each a summary, and describes the WebSocket protocol."""

from __future__ import annotations

import pytest

from server import apidoc
from server.app import build_app
from server.settings import Settings


@pytest.fixture(scope="module")
def spec() -> dict:
    return build_app(Settings(api_key=None)).openapi()


def test_every_operation_has_a_tag_and_a_summary(spec: dict) -> None:
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            assert op.get("tags"), f"{method.upper()} {path} has no tag"
            assert op.get("summary"), f"{method.upper()} {path} has no summary"


def test_the_tags_group_the_routes(spec: dict) -> None:
    tags = {path: op["tags"][0] for path, ops in spec["paths"].items() for op in ops.values()}
    assert tags["/v1/models/{name}/classify"] == "classify"
    assert tags["/v1/models"] == tags["/v1/models/{name}"] == "models"
    assert tags["/v1/models/{name}/examples/{i}"] == "examples"
    assert tags["/v2/models/{name}/infer"] == "Open Inference Protocol"
    assert tags["/healthz"] == tags["/readyz"] == tags["/v2/health/ready"] == "health"
    declared = [t["name"] for t in spec["tags"]]
    assert declared[:6] == ["classify", "streams", "Open Inference Protocol", "models", "examples", "health"]
    assert all(t["description"] for t in spec["tags"])
    assert apidoc.tag_for("/v1/models/{name}/stream") == "streams"  # not in OpenAPI: a WebSocket


def test_the_websocket_protocol_is_described(spec: dict) -> None:
    text = spec["info"]["description"]
    for part in ("WS /v1/models/{name}/stream", "**Hello**", "**Frames**", "**Answers**", "**Errors**"):
        assert part in text, part
    assert "**Snapshots**" in text and '{"resume": "<base64>"}' in text
    assert '"input_shape"' in text and "1013" in text


def test_a_route_keeps_the_tags_and_summary_its_router_gave() -> None:
    from fastapi import APIRouter, FastAPI

    router = APIRouter(tags=["mine"])

    @router.get("/v1/models/{name}/classify", summary="my summary")
    async def classify_it(name: str) -> dict:
        return {}

    app = FastAPI()
    app.include_router(router)
    apidoc.document(app)
    op = app.openapi()["paths"]["/v1/models/{name}/classify"]["get"]
    assert (op["tags"], op["summary"]) == (["mine"], "my summary")
