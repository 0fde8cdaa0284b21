"""The one table that maps every error to an HTTP status and a WebSocket close code, and the handlers
that turn errors into JSON bodies.

Body (v1 and everything outside /v2): ``{"error": {"code", "message", "param"?}}``.
Body under /v2 (Open Inference Protocol): ``{"error": "<message>"}``, what KServe clients parse.

WebSocket: ``ws_close = None`` means the error is recoverable: the server sends an error event
``{"error": {...}}`` and keeps the socket (and the stream's state) open. Otherwise it closes the socket
with that code and the message as the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from psn_runtime import errors as rt

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("psn.server")

# WebSocket close codes (RFC 6455 section 7.4 and the 4000-4999 private range)
WS_GOING_AWAY = 1001
WS_UNSUPPORTED_DATA = 1003
WS_POLICY_VIOLATION = 1008
WS_MESSAGE_TOO_BIG = 1009
WS_INTERNAL_ERROR = 1011
WS_SERVICE_RESTART = 1012
WS_TRY_AGAIN_LATER = 1013


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


class NotFound(ServerError):
    """A resource under a known model that does not exist (an example index, a model with no examples)."""

    code = "not_found"


@dataclass(frozen=True)
class ErrorSpec:
    status: int  # HTTP status
    ws_close: int | None  # WebSocket close code; None = error event, socket stays open
    retry_after_s: int | None = None  # Retry-After header for load shedding


INTERNAL = ErrorSpec(500, WS_INTERNAL_ERROR)

# Looked up along the exception's MRO, so the most specific entry wins.
ERROR_TABLE: dict[type[Exception], ErrorSpec] = {
    rt.UnknownModel: ErrorSpec(404, 4404),
    rt.ModelNotReady: ErrorSpec(503, WS_TRY_AGAIN_LATER, retry_after_s=1),
    rt.ModelLoadError: ErrorSpec(503, WS_INTERNAL_ERROR),
    rt.BadInput: ErrorSpec(422, None),
    rt.UnknownStream: ErrorSpec(410, 4410),
    rt.StreamLimit: ErrorSpec(503, WS_TRY_AGAIN_LATER, retry_after_s=1),
    rt.StreamOver: ErrorSpec(409, None),
    rt.Overloaded: ErrorSpec(429, None, retry_after_s=1),
    rt.RuntimeClosed: ErrorSpec(503, WS_SERVICE_RESTART),
    rt.BadSnapshot: ErrorSpec(422, None),
    rt.InferenceError: INTERNAL,
    rt.RuntimeErrorBase: INTERNAL,
    InvalidJSON: ErrorSpec(400, None),
    InvalidRequest: ErrorSpec(422, None),
    SequenceNotStarted: ErrorSpec(400, None),
    BodyTooLarge: ErrorSpec(413, WS_MESSAGE_TOO_BIG),
    UnsupportedMediaType: ErrorSpec(415, WS_UNSUPPORTED_DATA),
    Unauthorized: ErrorSpec(401, WS_POLICY_VIOLATION),
    ResumeDisabled: ErrorSpec(409, None),
    NotFound: ErrorSpec(404, None),
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


def _count(request: Request, kind: str) -> None:
    state = getattr(request.app.state, "psn", None)
    if state is not None:
        state.metrics.count_error(kind, "http")


def error_response(request: Request, exc: BaseException) -> Response:
    spec = spec_for(exc)
    if is_internal(exc):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    _count(request, error_code(exc))
    payload = error_payload(exc)
    if request.url.path.startswith("/v2"):
        payload = {"error": payload["error"]["message"]}
    headers = {"Retry-After": str(spec.retry_after_s)} if spec.retry_after_s else {}
    if spec.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(payload, status_code=spec.status, headers=headers)


async def _handle_any(request: Request, exc: Exception) -> Response:
    return error_response(request, exc)


async def _handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(part) for part in first.get("loc", ())) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else "invalid request"
    return error_response(request, InvalidRequest(message, param))


async def _handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    _count(request, code)
    message = exc.detail if isinstance(exc.detail, str) else "error"
    payload: dict = {"error": {"code": code, "message": message}}
    if request.url.path.startswith("/v2"):
        payload = {"error": message}
    return JSONResponse(payload, status_code=exc.status_code, headers=getattr(exc, "headers", None))


class ErrorRoute(APIRoute):
    """Routes whose every error, known or not, becomes :func:`error_response` right where it is raised
    (a catch-all exception handler would also re-raise it into the server's log as a crash)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except (StarletteHTTPException, RequestValidationError):
                raise
            except Exception as exc:
                return error_response(request, exc)

        return route_handler


def install(app: FastAPI) -> None:
    """Register the handlers ErrorRoute leaves to the app: request validation and HTTP errors (no route,
    wrong method), and the catch-all for what fails outside a route (a middleware): 500, generic body."""
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(Exception, _handle_any)
