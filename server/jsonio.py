"""JSON in and out, fast (orjson when installed, else the standard library). JSON tensor payloads become
arrays in the input builder (``server.inputs``), which checks them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse

from server.errors import InvalidJSON

try:  # optional speed-up: several times faster than json on both sides, and numpy-aware
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    orjson = None  # type: ignore[assignment]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _numpy_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def loads(data: bytes | str) -> Any:
    """Parse a JSON document; InvalidJSON (400) on a syntax error, NaN/Infinity, or too deep nesting
    (orjson refuses more than 1024 levels; the standard library hits RecursionError)."""
    try:
        if orjson is not None:
            return orjson.loads(data)
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise InvalidJSON(f"invalid JSON: {exc}") from None


def dumps(obj: Any) -> bytes:
    """Serialize to JSON bytes; numpy arrays and scalars are written as lists and numbers."""
    if orjson is not None:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, default=_numpy_default, allow_nan=False, separators=(",", ":")).encode()


def dumps_text(obj: Any) -> str:
    return dumps(obj).decode()


class JSONBytesResponse(JSONResponse):
    """A JSON response rendered with :func:`dumps` (orjson when available). A JSONResponse subclass, so that
    the OpenAPI schema takes the route's declared body for it (not a plain string)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
