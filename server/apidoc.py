"""What /docs and /redoc say: the routes grouped by tags, each with a summary, and the WebSocket protocol
(which OpenAPI cannot describe) in the API's description.

``document(app)`` runs once the routers are included: a route without tags gets the tag of the first rule
its path matches (``TAG_RULES``), a route without a summary gets the first sentence of its docstring. A
router that sets its own tags or summaries keeps them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

CLASSIFY, STREAMS, OIP, MODELS, EXAMPLES, HEALTH = (
    "classify",
    "streams",
    "Open Inference Protocol",
    "models",
    "examples",
    "health",
)

TAG_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/v1/models/\{[^}]+\}/classify$"), CLASSIFY),
    (re.compile(r"^/v1/models/\{[^}]+\}/stream$"), STREAMS),
    (re.compile(r"^/v1/models/\{[^}]+\}/examples"), EXAMPLES),
    (re.compile(r"^/v1/models"), MODELS),
    (re.compile(r"^/(healthz|readyz|metrics)$|^/v2/health/"), HEALTH),
    (re.compile(r"^/v2(/|$)"), OIP),
]

STREAM_PROTOCOL = """
## Streams: `WS /v1/models/{name}/stream`

One timestep per message, an answer after every step (anytime classification). WebSocket routes are not
part of OpenAPI, so this is their description.

**Connect** to `ws://HOST/v1/models/{name}/stream`. Query: `logits=true` adds the running mean logits to
every answer; `api_key=KEY` for clients that cannot send headers; `snapshot_every=S` sends a snapshot
after every S-th answer (resumable streams).

**Hello** (the server's first message): `{"model", "kind", "T", "k", "features", "input_shape", "labels",
"streams", "max_steps", "provider", "binary", "json", "resumable", "snapshot_every"}` (and `resumable_reason`
when resuming is off).

**Frames** (client to server), one timestep each:
- a binary frame of `features` = prod(`input_shape`) little-endian float32 (C order), or
- a text frame `{"x": [...]}`: `features` numbers (flat, C order) or nested as `input_shape`, for every
  per-step shape, optionally `"logits": true`;
- `{"reset": true}` starts a new sequence (answer `{"reset": true, "t": -1}`).

**Answers**: `{"t", "ready", "label", "probabilities", "done"}` (+ `"logits"`): the prediction from the mean
logits of steps 0..t. A PSN (`streams: false`) answers `ready: false` until it has all T steps; masked PSN,
sliding PSN and LIF answer every step. `done: true`: the stream takes no more steps; send a reset.

**Errors**: a bad frame (wrong size, NaN/Inf, not a number, malformed JSON, a step after `done`, an
overload) gets an error event `{"error": {"code", "message", "param"}}`, and the socket and the stream's
state stay as they were. Anything else closes the socket with a code and a reason: 4404 unknown model,
1008 missing or wrong API key, 1009 message too big, 1013 model not ready or too many streams (retry
later), 4410 stream closed as idle, 1001 server shutting down, 1011 internal error.

**Snapshots** (resumable streams, when the server has `--stream-secret`): `{"snapshot": true}` asks for
one, answered `{"snapshot": "<base64>", "t": n}`; on drain the server sends one before closing with 1001.
On a new socket `{"resume": "<base64>"}` restores the stream (answer `{"resumed": true, "t": n}`); then
replay the inputs from step n on. A snapshot that is tampered with, of another model or version, too large
or holding NaN/Inf gets a `bad_snapshot` error event.
"""

DESCRIPTION = (
    "Parallel Spiking Neuron networks on ONNX Runtime. Classify whole sequences over HTTP, stream one "
    "timestep at a time over a WebSocket, or use the Open Inference Protocol (KServe V2). Errors: "
    '`{"error": {"code", "message", "param"?}}`; under the Open Inference Protocol `{"error": "<message>"}`.'
    "\n" + STREAM_PROTOCOL
)

TAGS: list[dict[str, Any]] = [
    {"name": CLASSIFY, "description": "Whole sequences in, one answer each (v1 JSON)."},
    {
        "name": STREAMS,
        "description": "One timestep per WebSocket message: `WS /v1/models/{name}/stream`, described at the "
        "top of this page (hello, frames, answers, errors, snapshots).",
    },
    {
        "name": OIP,
        "description": "KServe V2 / Open Inference Protocol over HTTP (tritonclient works unmodified), with "
        "Triton's binary tensor data and sequence extensions.",
    },
    {"name": MODELS, "description": "The models served: manifests, status, the reason a model failed."},
    {"name": EXAMPLES, "description": "Real test inputs shipped beside a model, to classify or stream."},
    {"name": HEALTH, "description": "Liveness, readiness and Prometheus metrics."},
]


def tag_for(path: str) -> str | None:
    return next((tag for pattern, tag in TAG_RULES if pattern.search(path)), None)


def _summary(route: APIRoute) -> str:
    """The first sentence of the endpoint's docstring, else its name in words (as FastAPI would)."""
    doc = inspect.getdoc(route.endpoint)
    if not doc:
        return route.name.replace("_", " ").capitalize()
    first = " ".join(doc.split("\n\n")[0].split())
    head, dot, _ = first.partition(". ")
    return (head + "." if dot else first).rstrip(".")


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router (FastAPI >= 0.160)
        if inner is not None:
            yield from _api_routes(inner.routes)
        elif isinstance(route, APIRoute):
            yield route


def document(app: FastAPI) -> None:
    """Tags, summaries and the API description for /docs (call once the routers are included)."""
    for route in _api_routes(app.routes):
        if not route.include_in_schema:
            continue
        if not route.tags:
            tag = tag_for(route.path)
            if tag is not None:
                route.tags = [tag]
        if not route.summary:
            route.summary = _summary(route)
    app.description = DESCRIPTION
    app.openapi_tags = TAGS
