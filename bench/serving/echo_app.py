"""The floors of the serving stack: apps that do no model work, run by uvicorn with the options ``psn serve``
uses (uvloop and httptools when installed, the same WebSocket implementation, no access log, no server
header).

- ``raw`` (the floor the limit is computed from): a raw ASGI app. ``POST /echo`` reads the whole body and
  parses it with orjson (a V2 binary request: its JSON header, the Inference-Header-Content-Length bytes),
  then answers a small JSON; ``WS /stream`` greets, then per message parses a text frame with orjson (a
  binary frame is taken as it is) and answers a small JSON text about the size of a service step answer.
- ``fastapi``: the same on FastAPI (``Request.body()``, a ``WebSocket`` route), no parsing: the
  framework's own cost, a second reference.

Both answer ``GET /readyz`` 200. Run: ``python -m bench.serving.echo_app --kind raw --port 0 --port-file F``.
"""

from __future__ import annotations

import argparse
import socket
from enum import StrEnum
from pathlib import Path
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
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving.echo_app", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kind", type=Kind, choices=list(Kind), default=Kind.RAW)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0: any free port (see --port-file)")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port to this file")
    args = parser.parse_args(argv)
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))  # the port is bound before it is reported: no race
    if args.port_file is not None:
        args.port_file.write_text(str(sock.getsockname()[1]))
    app = raw_app if args.kind is Kind.RAW else fastapi_app()
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
