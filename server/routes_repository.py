"""Triton's model repository extension over HTTP (``tritonclient.http``'s ``get_model_repository_index``,
``load_model`` and ``unload_model`` work unmodified), behind the API key like every route:

- ``POST /v2/repository/index``: every model version known or on the models dir, with its state (READY,
  LOADING, UNLOADING, UNAVAILABLE) and the reason (why it failed, why it is not loaded); body ``{}``,
  empty, or ``{"ready": true}`` for the READY ones only.
- ``POST /v2/repository/models/{name}/load``: load (or reload) the model from the models dir: new or
  changed versions load, versions gone from disk unload. Answers once the load is done; a version that
  fails is a 400 with the reason, and what served before keeps serving.
- ``POST /v2/repository/models/{name}/unload``: every version of the model takes no new work at once and
  unloads once the streams open on it end (at most ``--unload-grace-s``).

Load and unload need ``--model-control explicit`` (400 otherwise); the index answers in every mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from psn_runtime import ModelInfo
from server.auth import require_key
from server.body import read_body, require_media_type
from server.dataplane import Plane
from server.errors import InvalidRequest, V2Route
from server.jsonio import JSONBytesResponse, loads
from server.schemas import errors, ok, parse, request_body

router = APIRouter(
    prefix="/v2", route_class=V2Route, dependencies=[Depends(require_key)], tags=["repository"]
)

MAX_BODY_BYTES = 64 * 1024  # these bodies hold a flag or two


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool = Field(False, description="only the versions ready for inference")
    repository_name: str = Field("", description="ignored: one models dir")


class IndexItem(BaseModel):
    name: str
    version: str
    state: Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
    reason: str = Field(description="why the version is in this state ('' when READY)")


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="load: no parameter is taken (a model's files come from the models dir); unload: "
        "unload_dependents (ignored: no model depends on another)",
    )


class VersionState(BaseModel):
    version: str
    state: str
    reason: str


class ControlResponse(BaseModel):
    name: str
    versions: list[VersionState]


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The optional JSON body (empty = every field's default)."""
    require_media_type(request, ("application/json",))
    body = await read_body(request, MAX_BODY_BYTES)
    return parse(model, loads(body) if body.strip() else {})


def _answer(name: str, infos: list[ModelInfo]) -> Response:
    versions = [
        {"version": i.version, "state": str(i.status).upper(), "reason": i.error or ""} for i in infos
    ]
    return JSONBytesResponse({"name": name, "versions": versions})


ERRORS = (400, 401, 413, 415, 422, 503)  # V2 error bodies every repository route may answer


def _post(path: str, summary: str, body: type[BaseModel], answer: Any, *more_errors: int) -> Callable:
    """A repository route: POST ``path`` with the optional JSON ``body``, answering ``answer`` or a V2 error
    (``ERRORS`` and ``more_errors``)."""
    responses = {**ok(answer), **errors(*sorted({*ERRORS, *more_errors}), v2=True)}
    return router.post(
        path, summary=summary, response_model=None, responses=responses, openapi_extra=request_body(body)
    )


def _control(action: str, summary: str) -> Callable:
    """``POST /v2/repository/models/{name}/<action>``: a ControlRequest, a ControlResponse (404: no model)."""
    return _post(f"/repository/models/{{name}}/{action}", summary, ControlRequest, ControlResponse, 404)


@_post(
    "/repository/index",
    "every model version known or on the models dir, with its state and reason",
    IndexRequest,
    list[IndexItem],
)
async def index(request: Request, plane: Plane) -> Response:
    doc = await _body(request, IndexRequest)
    entries = await plane.repository_index(doc.ready)
    return JSONBytesResponse(
        [{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason} for e in entries]
    )


@_control("load", "load or reload a model from the models dir (--model-control explicit)")
async def load(name: str, request: Request, plane: Plane) -> Response:
    doc = await _body(request, ControlRequest)
    if doc.parameters:
        given = ", ".join(sorted(doc.parameters))
        raise InvalidRequest(
            f"parameters: {given} not supported: psn-serve loads a model's files from its models dir",
            "parameters",
        )
    return _answer(name, await plane.load_model(name))


@_control("unload", "unload every version of a model once its streams end (--model-control explicit)")
async def unload(name: str, request: Request, plane: Plane) -> Response:
    doc = await _body(request, ControlRequest)
    unknown = sorted(set(doc.parameters) - {"unload_dependents"})
    if unknown:
        raise InvalidRequest(f"parameters: {', '.join(unknown)} not supported", "parameters")
    return _answer(name, await plane.unload_model(name))
