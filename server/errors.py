"""The one table that maps every error to an HTTP status, a WebSocket close code and a gRPC status code, and
the handlers that turn errors into JSON bodies.

The body's format is a property of the route that answers, never of the URL path (a proxy may put any
prefix, ``root_path``, in front of it):

- ``ErrorFormat.V1`` (v1 and every route outside the Open Inference Protocol, the default):
  ``{"error": {"code", "message", "param"?}}``, by the routes of ``ErrorRoute``;
- ``ErrorFormat.V2`` (Open Inference Protocol, V2 HTTP): ``{"error": "<message>"}``, what KServe and Triton
  clients parse, by the routes of ``V2Route``.

A request that no route matches fully gets the format of the route that matched it partly (a wrong
method: 405), else of the protocol's ``Fallback`` (the last route of the app for a protocol's prefix: 404),
else V1. The fast path (server.fastpath) answers with its route's format.

WebSocket: ``ws_close = None`` means the error is recoverable: the server sends an error event
``{"error": {...}}`` and keeps the socket (and the stream's state) open. Otherwise it closes the socket
with that code and the message as the reason.

gRPC (server.grpc_service): a unary call ends with the table's status code and the message as its details;
on a ModelStreamInfer stream an error is an in-stream ``error_message`` (Triton's behaviour) and the stream
stays open, since it may carry other sequences.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from psn_runtime import errors as rt

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

log = logging.getLogger("psn.server")

# WebSocket close codes (RFC 6455 section 7.4 and the 4000-4999 private range)
WS_GOING_AWAY = 1001
WS_UNSUPPORTED_DATA = 1003
WS_POLICY_VIOLATION = 1008
WS_MESSAGE_TOO_BIG = 1009
WS_INTERNAL_ERROR = 1011
WS_SERVICE_RESTART = 1012
WS_TRY_AGAIN_LATER = 1013


class ErrorFormat(StrEnum):
    """How an HTTP error body is written (module docstring): a property of the route that answers."""

    V1 = "v1"  # {"error": {"code", "message", "param"?}}
    V2 = "v2"  # Open Inference Protocol: {"error": "<message>"}


class ServerError(Exception):
    """Errors the server itself raises (the runtime's are in psn_runtime.errors)."""

    code = "server_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidJSON(ServerError):
    code = "invalid_json"


class InvalidRequest(ServerError):
    """The request is well-formed JSON but a field is missing, unknown or of the wrong type."""

    code = "invalid_request"


class SequenceNotStarted(InvalidRequest):
    """A V2 sequence request for an id with no open sequence, without ``sequence_start`` (Triton: 400)."""

    code = "unknown_sequence"


class BodyTooLarge(ServerError):
    code = "body_too_large"


class UnsupportedMediaType(ServerError):
    code = "unsupported_media_type"


class Unauthorized(ServerError):
    code = "unauthorized"


class ResumeDisabled(ServerError):
    """A snapshot or resume message on a server (or model) where resuming streams is off."""

    code = "resume_disabled"


class LoadFailed(ServerError):
    """A model load requested through the repository API failed (each failed version's reason); what served
    before keeps serving."""

    code = "load_failed"


class ShuttingDown(ServerError):
    """A new call while the server drains (SIGTERM): retry on another replica."""

    code = "shutting_down"


class NotFound(ServerError):
    """A resource under a known model that does not exist (an example index, a model with no examples)."""

    code = "not_found"


class GrpcStatus(StrEnum):
    """gRPC status codes this server answers: names of ``grpc.StatusCode`` (this module imports no grpc)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


G = GrpcStatus


@dataclass(frozen=True)
class ErrorSpec:
    status: int  # HTTP status
    ws_close: int | None  # WebSocket close code; None = error event, socket stays open
    grpc: GrpcStatus  # gRPC status code of a unary call
    retry_after_s: int | None = None  # Retry-After header for load shedding


INTERNAL = ErrorSpec(500, WS_INTERNAL_ERROR, G.INTERNAL)

# Looked up along the exception's MRO, so the most specific entry wins.
ERROR_TABLE: dict[type[Exception], ErrorSpec] = {
    rt.UnknownModel: ErrorSpec(404, 4404, G.NOT_FOUND),
    rt.ModelNotReady: ErrorSpec(503, WS_TRY_AGAIN_LATER, G.UNAVAILABLE, retry_after_s=1),
    rt.ModelLoadError: ErrorSpec(503, WS_INTERNAL_ERROR, G.UNAVAILABLE),
    rt.BadInput: ErrorSpec(422, None, G.INVALID_ARGUMENT),
    rt.UnknownStream: ErrorSpec(410, 4410, G.NOT_FOUND),
    rt.StreamLimit: ErrorSpec(503, WS_TRY_AGAIN_LATER, G.RESOURCE_EXHAUSTED, retry_after_s=1),
    rt.StreamOver: ErrorSpec(409, None, G.FAILED_PRECONDITION),
    rt.Overloaded: ErrorSpec(429, None, G.RESOURCE_EXHAUSTED, retry_after_s=1),
    rt.RuntimeClosed: ErrorSpec(503, WS_SERVICE_RESTART, G.UNAVAILABLE),
    rt.BadSnapshot: ErrorSpec(422, None, G.INVALID_ARGUMENT),
    rt.VersionUnavailable: ErrorSpec(404, None, G.NOT_FOUND),
    rt.ModelControlDisabled: ErrorSpec(400, None, G.FAILED_PRECONDITION),
    rt.InferenceError: INTERNAL,
    rt.RuntimeErrorBase: INTERNAL,
    InvalidJSON: ErrorSpec(400, None, G.INVALID_ARGUMENT),
    InvalidRequest: ErrorSpec(422, None, G.INVALID_ARGUMENT),
    SequenceNotStarted: ErrorSpec(400, None, G.INVALID_ARGUMENT),
    BodyTooLarge: ErrorSpec(413, WS_MESSAGE_TOO_BIG, G.RESOURCE_EXHAUSTED),
    UnsupportedMediaType: ErrorSpec(415, WS_UNSUPPORTED_DATA, G.INVALID_ARGUMENT),
    Unauthorized: ErrorSpec(401, WS_POLICY_VIOLATION, G.UNAUTHENTICATED),
    ResumeDisabled: ErrorSpec(409, None, G.FAILED_PRECONDITION),
    LoadFailed: ErrorSpec(400, None, G.FAILED_PRECONDITION),
    NotFound: ErrorSpec(404, None, G.NOT_FOUND),
    ShuttingDown: ErrorSpec(503, WS_GOING_AWAY, G.UNAVAILABLE, retry_after_s=1),
}


def spec_for(exc: BaseException) -> ErrorSpec:
    for cls in type(exc).__mro__:
        spec = ERROR_TABLE.get(cls)
        if spec is not None:
            return spec
    return INTERNAL


def is_known(exc: BaseException) -> bool:
    return isinstance(exc, rt.RuntimeErrorBase | ServerError)


def error_code(exc: BaseException) -> str:
    return exc.code if is_known(exc) else "internal_error"  # type: ignore[attr-defined]


def is_internal(exc: BaseException) -> bool:
    """A server-side failure (500): logged with its details, answered with a generic message."""
    return spec_for(exc).status == 500


def error_payload(exc: BaseException) -> dict:
    """``{"error": {"code", "message", "param"?}}``; internal errors get a generic message."""
    if is_internal(exc):
        return {"error": {"code": error_code(exc), "message": "internal server error"}}
    body: dict = {"code": exc.code, "message": exc.message}  # type: ignore[attr-defined]
    param = getattr(exc, "param", None)
    if param is not None:
        body["param"] = param
    return {"error": body}


def ws_reason(exc: BaseException) -> str:
    """A close reason must fit in 123 bytes of UTF-8."""
    text = error_payload(exc)["error"]["message"]
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


def format_body(payload: dict, fmt: ErrorFormat) -> dict:
    """A v1 payload ``{"error": {"code", "message", ...}}`` in the format ``fmt``."""
    return payload if fmt is ErrorFormat.V1 else {"error": payload["error"]["message"]}


def route_format(scope: Scope) -> ErrorFormat:
    """The error format of the route the router matched to this request, fully or partly (V1 when none)."""
    return getattr(scope.get("route"), "error_format", ErrorFormat.V1)


def _count(request: Request, kind: str) -> None:
    state = getattr(request.app.state, "psn", None)
    if state is not None:
        state.metrics.count_error(kind, "http")


def error_response(request: Request, exc: BaseException, fmt: ErrorFormat) -> Response:
    """The answer to ``exc``: its status from the table, its body in the answering route's format."""
    spec = spec_for(exc)
    if is_internal(exc):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    _count(request, error_code(exc))
    headers = {"Retry-After": str(spec.retry_after_s)} if spec.retry_after_s else {}
    if spec.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(format_body(error_payload(exc), fmt), status_code=spec.status, headers=headers)


async def _handle_any(request: Request, exc: Exception) -> Response:
    return error_response(request, exc, route_format(request.scope))


async def _handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(part) for part in first.get("loc", ())) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else "invalid request"
    return error_response(request, InvalidRequest(message, param), route_format(request.scope))


async def _handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    _count(request, code)
    message = exc.detail if isinstance(exc.detail, str) else "error"
    payload = format_body({"error": {"code": code, "message": message}}, route_format(request.scope))
    return JSONResponse(payload, status_code=exc.status_code, headers=getattr(exc, "headers", None))


class ErrorRoute(APIRoute):
    """Routes whose every error, known or not, becomes :func:`error_response` in the route's
    ``error_format`` right where it is raised (a catch-all exception handler would also re-raise it into
    the server's log as a crash). Request validation and HTTP errors go on to the app's handlers, which
    read the format from the matched route (``scope["route"]``)."""

    error_format: ClassVar[ErrorFormat] = ErrorFormat.V1

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        fmt = self.error_format

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except (StarletteHTTPException, RequestValidationError):
                raise
            except Exception as exc:
                return error_response(request, exc, fmt)

        return route_handler


class V2Route(ErrorRoute):
    """The Open Inference Protocol's routes: errors are ``{"error": "<message>"}``."""

    error_format = ErrorFormat.V2


class Fallback(BaseRoute):
    """The last route of the app for one protocol's routers (their common prefix, their route class's
    error format): it matches partly every HTTP request under the prefix, so it answers (404, in the
    protocol's format) only what no route matched, fully or partly (a route that matched the path but not
    the method still answers 405 in its format). A path that a route matches with its trailing slash
    toggled is left to the app's router, which redirects it."""

    def __init__(self, *routers: APIRouter) -> None:
        prefixes = {router.prefix for router in routers}
        formats = {getattr(router.route_class, "error_format", ErrorFormat.V1) for router in routers}
        if len(prefixes) != 1 or len(formats) != 1 or "" in prefixes:
            raise ValueError(f"a fallback takes routers of one prefix and format: {prefixes}, {formats}")
        self.prefix = prefixes.pop()
        self.error_format = formats.pop()
        self.routes: list[BaseRoute] = [route for router in routers for route in router.routes]

    def _under(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def _redirects(self, scope: Scope, path: str) -> bool:
        toggled = path.rstrip("/") if path.endswith("/") else path + "/"
        probe = {**scope, "path": scope["path"][: len(scope["path"]) - len(path)] + toggled}
        return any(route.matches(probe)[0] is not Match.NONE for route in self.routes)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path = get_route_path(scope)
        if not self._under(path) or self._redirects(scope, path):
            return Match.NONE, {}
        return Match.PARTIAL, {"route": self}  # what the error handler reads the format from

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise StarletteHTTPException(404)  # answered by _handle_http, in this route's format

    def __repr__(self) -> str:
        return f"Fallback({self.prefix!r}, {self.error_format})"


def install(app: FastAPI, protocols: Iterable[tuple[APIRouter, ...]] = ()) -> None:
    """Register the handlers ErrorRoute leaves to the app: request validation and HTTP errors (no route,
    wrong method), and the catch-all for what fails outside a route (a middleware): 500, generic body.
    Then append a :class:`Fallback` for each protocol's routers (include them first)."""
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(Exception, _handle_any)
    for routers in protocols:
        app.router.routes.append(Fallback(*routers))
