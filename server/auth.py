"""API-key authentication: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (WebSocket also
``?api_key=<key>``, since browsers cannot set headers on a WebSocket), compared in constant time.

When no key is configured every check passes. Liveness and readiness routes never call these.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from fastapi import Request
from starlette.datastructures import QueryParams
from starlette.websockets import WebSocket

from server.errors import Unauthorized
from server.state import app_state


def _presented(headers: Mapping[str, str], query: QueryParams | None) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    if key:
        return key
    if query is not None:
        return query.get("api_key")
    return None


def check(expected: str | None, headers: Mapping[str, str], query: QueryParams | None = None) -> None:
    """Raise Unauthorized unless the request carries the expected key (no-op when none is set). ``headers``:
    HTTP headers, or gRPC metadata as a dict (lower-case keys, as gRPC sends them)."""
    if expected is None:
        return
    presented = _presented(headers, query)
    if presented is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized("invalid API key")


async def require_key(request: Request) -> None:
    """FastAPI dependency for the routers that need the key."""
    check(app_state(request.app).api_key, request.headers)


def check_websocket(websocket: WebSocket) -> None:
    check(app_state(websocket.app).api_key, websocket.headers, websocket.query_params)
