"""The floors of the serving stack, no model work, on uvicorn with psn serve's options: ``raw`` (the floor
the limit uses), a raw ASGI app that parses each body (a V2 binary request's JSON header) or WebSocket text
frame with orjson and answers a small JSON; ``fastapi``, the same on FastAPI, parsing nothing; ``busy``, the
raw app plus a constant busy-wait per POST /echo (``PSN_BENCH_BUSY_US`` µs, default 850: about psn serve's CPU
per classify), a server of constant cost for ``bench.serving.tailcheck``.
``python -m bench.serving.echo_app --kind raw --port 0 --port-file F``."""

from __future__ import annotations

import os
import time
from enum import StrEnum
from typing import Any

import orjson
from fastapi import FastAPI, Request, WebSocket
from starlette.websockets import WebSocketDisconnect

WS_MAX_SIZE = 256 * 1024  # as psn serve's default max_ws_message_bytes
HELLO = '{"model":"echo","features":0}'
# about the size of a service answer {"t", "ready", "label", "probabilities" [10], "done"}
_PROBS = ",".join(["0.1000000"] * 10)
ANSWER = '{"t":%d,"ready":true,"label":"0","probabilities":[' + _PROBS + '],"done":false}'
JSON_HEADERS = [(b"content-type", b"application/json")]


class Kind(StrEnum):
    RAW = "raw"
    FASTAPI = "fastapi"
    BUSY = "busy"


BUSY_US_ENV = "PSN_BENCH_BUSY_US"


def _parse_body(body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """orjson-parse a JSON body, or a V2 binary request's JSON header; the number of top-level keys."""
    length = next((int(v) for k, v in headers if k == b"inference-header-content-length"), None)
    return len(orjson.loads(body if length is None else body[:length]))


async def raw_app(scope: dict[str, Any], receive, send) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if scope["path"] == "/echo":
            answer = orjson.dumps(
                {"ok": True, "keys": _parse_body(body, scope["headers"]), "bytes": len(body)}
            )
            status = 200
        else:
            answer, status = b'{"status":"ready"}', 200 if scope["path"] == "/readyz" else 404
        headers = [*JSON_HEADERS, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": HELLO})
        t = 0
        while (message := await receive())["type"] == "websocket.receive":
            if message.get("text") is not None:
                orjson.loads(message["text"])
            await send({"type": "websocket.send", "text": ANSWER % t})
            t += 1


def busy_app(busy_s: float):
    """The raw app, each POST /echo first spinning busy_s seconds on the CPU (no sleep: the core is busy)."""

    async def app(scope: dict[str, Any], receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/echo":
            end = time.perf_counter() + busy_s
            while time.perf_counter() < end:
                pass
        await raw_app(scope, receive, send)

    return app


def fastapi_app() -> FastAPI:
    app = FastAPI(title="psn-serve echo (benchmark floor)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, object]:
        return {"ok": True, "bytes": len(await request.body())}

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(HELLO)
        t = 0
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                await websocket.send_text(ANSWER % t)
                t += 1
        except WebSocketDisconnect:
            return

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from bench.peers.servers import bound_socket, server_args

    args = server_args("python -m bench.serving.echo_app", argv, list(Kind))
    sock = bound_socket(args.host, args.port, args.port_file)
    if args.kind == Kind.FASTAPI:
        app = fastapi_app()
    elif args.kind == Kind.BUSY:
        app = busy_app(float(os.environ.get(BUSY_US_ENV, "850")) / 1e6)
    else:
        app = raw_app
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ws_max_size=WS_MAX_SIZE,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
