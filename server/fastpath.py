"""A raw ASGI fast path for the hottest HTTP request, ``POST /v1/models/{name}/classify``.

FastAPI's router matches every route in turn, builds a Request, solves the dependencies (the data plane, the
API key) and wraps the endpoint in several layers; on a classify of one sequence that is about a fifth of
the server's CPU. This middleware sits just inside the metrics middleware, recognises that one request by
its method and path, and calls the very same handler (``routes_v1.classify_request``) after the same key
check, answering errors through the same ``error_response``. Every other request, and a classify under a
``root_path`` (a proxy prefix), goes on to FastAPI unchanged; the FastAPI route stays registered, so the
OpenAPI schema and the docs do not change.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from server import auth
from server.errors import error_response
from server.routes_v1 import classify_request
from server.state import AppState

PREFIX = "/v1/models/"
SUFFIX = "/classify"
TEMPLATE = PREFIX + "{name}" + SUFFIX


def classify_route(routes: list) -> APIRoute:
    """The FastAPI route the fast path stands in for (its template labels the request's metrics)."""
    for route in routes:
        if isinstance(route, APIRoute) and route.path == TEMPLATE and "POST" in route.methods:
            return route
    raise LookupError(f"no POST route {TEMPLATE}")


class ClassifyFastPath:
    def __init__(self, app: ASGIApp, state: AppState, route: APIRoute) -> None:
        self.app = app
        self.state = state
        self.route = route

    def _name(self, scope: Scope) -> str | None:
        """The model name when scope is ``POST /v1/models/{name}/classify`` (as the router would match)."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            return None
        name = path[len(PREFIX) : -len(SUFFIX)]
        return name if name and "/" not in name else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self._name(scope)
        if name is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # what the router would set (the metrics middleware reads both)
        scope["path_params"] = {"name": name}
        request = Request(scope, receive)
        state = self.state
        try:
            auth.check(state.api_key, request.headers)
            response = await classify_request(name, request, state.plane)
        except Exception as exc:  # as ErrorRoute does: every error becomes its answer
            response = error_response(request, exc)
        await response(scope, receive, send)
