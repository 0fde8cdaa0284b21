"""A raw ASGI fast path for the hottest HTTP requests, ``POST /v1/models/{name}/classify`` and
``POST /v2/models/{name}/infer``.

FastAPI's router matches every route in turn, builds a Request, solves the dependencies (the data plane, the
API key) and wraps the endpoint in several layers; on a classify of one sequence that is about a fifth of
the server's CPU. This middleware sits just inside the metrics middleware, recognises those requests by
method and path, and calls the very same handlers (``routes_v1.classify_request``,
``routes_v2.infer_request``) after the same key check, answering errors through the same
``error_response``. Every other request (a versioned V2 path included), and any request under a
``root_path`` (a proxy prefix), goes on to FastAPI unchanged; the FastAPI routes stay registered, so the
OpenAPI schema and the docs do not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from server import auth, routes_v1, routes_v2
from server.dataplane import DataPlane
from server.errors import ErrorRoute, error_response
from server.state import AppState

Handler = Callable[[str, Request, DataPlane], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HotRoute:
    """``POST {prefix}{name}{suffix}``: the FastAPI route it stands in for and the handler both call."""

    prefix: str
    suffix: str
    route: ErrorRoute  # carries the error format
    handler: Handler

    def model_name(self, path: str) -> str | None:
        """The ``{name}`` in path when path is this route's (as the router would match it: no slash)."""
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        name = path[len(self.prefix) : -len(self.suffix)]
        return name if name and "/" not in name else None


def _route(routes: list, template: str) -> ErrorRoute:
    for route in routes:
        if isinstance(route, ErrorRoute) and route.path == template and "POST" in route.methods:
            return route
    raise LookupError(f"no POST route {template}")


def hot_routes() -> tuple[HotRoute, ...]:
    """The routes the fast path serves (their templates label the requests' metrics, as the router's do)."""
    v1 = _route(routes_v1.router.routes, "/v1/models/{name}/classify")
    v2 = _route(routes_v2.router.routes, "/v2/models/{name}/infer")
    return (
        HotRoute("/v1/models/", "/classify", v1, routes_v1.classify_request),
        HotRoute("/v2/models/", "/infer", v2, routes_v2.infer_request),
    )


class FastPath:
    def __init__(self, app: ASGIApp, state: AppState, routes: tuple[HotRoute, ...]) -> None:
        self.app = app
        self.state = state
        self.routes = routes

    def match(self, scope: Scope) -> tuple[HotRoute, str] | None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        for hot in self.routes:
            name = hot.model_name(path)
            if name is not None:
                return hot, name
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.match(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        hot, name = found
        scope["route"] = hot.route  # what the router would set (the metrics middleware reads both)
        scope["path_params"] = {"name": name}
        request = Request(scope, receive)
        state = self.state
        try:
            auth.check(state.api_key, request.headers)
            response = await hot.handler(name, request, state.plane)
        except Exception as exc:  # as ErrorRoute does: every error becomes its answer, in the route's format
            response = error_response(request, exc, hot.route.error_format)
        await response(scope, receive, send)
