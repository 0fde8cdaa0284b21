"""Helpers for the gRPC tests (no tests here): an app served over HTTP and gRPC in one thread's event loop,
as ``psn serve`` serves it, and tritonclient.grpc helpers."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import uvicorn

from server.app import build_app
from server.cli import server_class
from server.listen import bind_http
from server.settings import Settings
from server.state import AppState, app_state


@dataclass
class Live:
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT (what tritonclient.grpc and KServe's client take)
    state: AppState
    server: Any  # the uvicorn server (PSNServer: its shutdown drains, as on SIGTERM)

    def client(self, **kwargs: Any) -> Any:
        return grpcclient.InferenceServerClient(self.grpc, **kwargs)


@contextmanager
def live(settings: Settings) -> Iterator[Live]:
    """``settings`` served on free loopback ports (HTTP and, with grpc_port=0, gRPC) by the server class
    of ``psn serve`` in a thread; leaving it shuts the server down (drain included)."""
    sock = bind_http("127.0.0.1", 0, workers=1)
    app = build_app(settings)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws_max_size=settings.max_ws_message_bytes
    )
    server = server_class()(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    state = app_state(app)
    grpc_port = state.grpc.port if state.grpc is not None else 0
    try:
        yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", f"127.0.0.1:{grpc_port}", state, server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def infer_input(x: np.ndarray) -> Any:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(x, np.float32))
    return inp


class Stream:
    """A tritonclient.grpc stream (``start_stream``): its callback's (result, error) pairs go to a queue."""

    def __init__(self, client: Any, **kwargs: Any) -> None:
        self.client = client
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.results.put((result, error)), **kwargs)

    def send(self, model: str, x: np.ndarray, **kwargs: Any) -> None:
        self.client.async_stream_infer(model, [infer_input(x)], **kwargs)

    def get(self, timeout: float = 30) -> tuple[Any, Any]:
        return self.results.get(timeout=timeout)

    def close(self) -> None:
        self.client.stop_stream()
