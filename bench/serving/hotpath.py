"""The server's own per-message CPU cost, in-process: no sockets, no other process, so the figures hold on a
shared machine where wall-clock latencies do not (thread CPU time, best of several rounds).

- ``stream``: the WebSocket route's whole loop (``server.routes_stream``: parse a JSON frame, validate,
  step through the data plane and the runtime, encode the answer) over a fake socket, one stream;
- ``classify``: a v1 classify request (JSON body, batch 1) through the whole ASGI app (middleware, the fast
  path of server/fastpath.py, body, validation, runtime, response) with a fake receive/send;
- ``raw``: the model's step graph (batch 1) and full graph (batch 1) alone, ``session.run`` only.

The answers' sha256 is printed too: a change that claims speed must leave it as it was (bit-identical).

Run: ``taskset -c 1 python -m bench.serving.hotpath [--models-dir models] [--messages 4000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

STREAM_MODEL = "smnist-sliding-psn"
CLASSIFY_MODEL = "smnist-psn"


class _FakeSocket:
    """What routes_stream touches on a Starlette WebSocket: receive, send_text, close, state, query."""

    def __init__(self, app: Any, frames: list[dict[str, Any]]) -> None:
        from starlette.websockets import WebSocketState

        self.app = app
        self.frames = frames
        self.i = 0
        self.sent: list[str] = []
        self.query_params: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        self.state = type("State", (), {})()
        self.application_state = WebSocketState.CONNECTED

    async def accept(self) -> None:
        return None

    async def receive(self) -> dict[str, Any]:
        if self.i >= len(self.frames):
            return {"type": "websocket.disconnect", "code": 1000}
        self.i += 1
        return self.frames[self.i - 1]

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        from starlette.websockets import WebSocketState

        self.application_state = WebSocketState.DISCONNECTED


def _frames(features: int, T: int, n: int) -> list[dict[str, Any]]:
    """n messages: sequences of T JSON timesteps, each followed by a reset."""
    rng = np.random.default_rng(0)
    steps = [json.dumps({"x": rng.random(features).round(4).tolist()}) for _ in range(T)]
    out = []
    for i in range(n):
        k = i % (T + 1)
        out.append({"type": "websocket.receive", "text": steps[k] if k < T else '{"reset": true}'})
    return out


async def _measure(models_dir: Path, messages: int, rounds: int) -> dict[str, Any]:
    from bench.serving.wrk import classify_body
    from server import routes_stream
    from server.app import build_app
    from server.settings import Settings
    from server.state import app_state

    app = build_app(Settings(models_dir=models_dir, providers=["CPUExecutionProvider"]))
    state = app_state(app)
    out: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        plane = getattr(state, "plane", None)  # (older trees: the runtime sat on the state itself)
        runtime = plane.runtime if plane is not None else state.runtime
        manifest = runtime.model(STREAM_MODEL).manifest
        frames = _frames(manifest.features, manifest.T, messages)
        best, sent = float("inf"), []
        for _ in range(rounds):
            sock = _FakeSocket(app, frames)
            start = time.thread_time()
            await routes_stream._serve(sock, state, STREAM_MODEL)  # type: ignore[arg-type]
            best = min(best, (time.thread_time() - start) / messages)
            sent = sock.sent
        out["stream_us"] = best * 1e6
        out["stream_sha256"] = hashlib.sha256("\n".join(sent[1:]).encode()).hexdigest()[:16]  # answers

        cm = runtime.model(CLASSIFY_MODEL).manifest
        body = classify_body(cm.T, cm.features, 1)
        path = f"/v1/models/{CLASSIFY_MODEL}/classify"
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555), "state": {},
            "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        answers: list[bytes] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                answers.append(message["body"])

        requests = max(messages // 2, 1)
        best = float("inf")
        for _ in range(rounds):
            answers.clear()
            start = time.thread_time()
            for _ in range(requests):
                await app(dict(scope), receive, send)
            best = min(best, (time.thread_time() - start) / requests)
        doc = json.loads(answers[-1])
        doc.pop("latency_ms")
        out["classify_us"] = best * 1e6
        out["classify_sha256"] = hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]

        ms = runtime._model_streams[STREAM_MODEL]
        feed = {name: arr[0:1] for name, arr in zip(ms.input_names, ms.pool.arrays, strict=True)}
        feed["x"] = np.zeros((1, *manifest.input_shape), np.float32)
        full = runtime._models[CLASSIFY_MODEL].full
        x = np.zeros((1, cm.T, *cm.input_shape), np.float32)
        for key, call in (
            ("raw_step_us", lambda: ms.session.run(ms.output_names, feed)),
            ("raw_full_us", lambda: full.run(["logits"], {"x": x})),
        ):
            best = float("inf")
            for _ in range(rounds):
                start = time.thread_time()
                for _ in range(requests):
                    call()
                best = min(best, (time.thread_time() - start) / requests)
            out[key] = best * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving.hotpath", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--models-dir", type=Path, default=Path(__file__).resolve().parents[2] / "models")
    parser.add_argument("--messages", type=int, default=4000, help="stream messages per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(_measure(args.models_dir, args.messages, args.rounds))
    except ImportError:
        result = asyncio.run(_measure(args.models_dir, args.messages, args.rounds))
    if args.json:
        print(json.dumps(result))
        return 0
    print("server CPU per message, in-process (us; best of rounds)")
    print(f"  stream, JSON frame ({STREAM_MODEL}): {result['stream_us']:7.1f}   raw step b1: "
          f"{result['raw_step_us']:6.1f}   answers sha256 {result['stream_sha256']}")  # fmt: skip
    print(f"  classify, JSON batch 1 ({CLASSIFY_MODEL}): {result['classify_us']:7.1f}   raw full b1: "
          f"{result['raw_full_us']:6.1f}   answer sha256 {result['classify_sha256']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
