"""The ceiling of the serving stack: a FastAPI app, run by uvicorn with the options ``psn serve`` uses (uvloop
and httptools when installed, no access log, no server header), that does no model work at all.

- ``POST /echo``: reads the whole body (the same JSON a classify request sends) and answers a small JSON.
- ``WS /stream``: a hello, then one small JSON text answer per message (binary or text), about the size of
  a service step answer; the message is not parsed.
- ``GET /readyz``: 200.

Run: ``python -m bench.serving.echo_app --port 8001`` (127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from starlette.websockets import WebSocketDisconnect

WS_MAX_SIZE = 256 * 1024  # as psn serve's default max_ws_message_bytes
# about the size of a service answer {"t", "ready", "label", "probabilities" [10], "done"}
_PROBS = ",".join(["0.1000000"] * 10)


def create_app() -> FastAPI:
    app = FastAPI(title="psn-serve echo (benchmark ceiling)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, object]:
        body = await request.body()
        return {"ok": True, "bytes": len(body)}

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text('{"model":"echo","features":0}')
        t = 0
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await websocket.send_text(
                    f'{{"t":{t},"ready":true,"label":"0","probabilities":[{_PROBS}],"done":false}}'
                )
                t += 1
        except WebSocketDisconnect:
            return

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving.echo_app", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0: any free port (see --port-file)")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port to this file")
    parser.add_argument("--ws", default="auto", help="uvicorn WebSocket implementation (auto, as psn serve)")
    args = parser.parse_args(argv)
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))  # the port is bound before it is reported: no race
    if args.port_file is not None:
        args.port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(
        create_app,
        factory=True,
        log_level="warning",
        access_log=False,
        ws=args.ws,
        ws_max_size=WS_MAX_SIZE,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
