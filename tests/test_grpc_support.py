"""Helpers for the gRPC tests (no tests here): an app served over HTTP and gRPC in one thread's event loop,
as ``psn serve`` serves it, and tritonclient.grpc helpers."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from test_server_support import in_thread
from tritonclient.utils import InferenceServerException

from server.app import build_app
from server.cli import server_class
from server.settings import Settings
from server.state import AppState, app_state


@dataclass
class Live:
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT (what tritonclient.grpc and KServe's client take)
    state: AppState
    server: Any  # the uvicorn server (PSNServer: its shutdown drains, as on SIGTERM)

    @contextmanager
    def client(self, **kwargs: Any) -> Iterator[Any]:
        """A tritonclient.grpc client of this server, closed on the way out."""
        client = grpcclient.InferenceServerClient(self.grpc, **kwargs)
        try:
            yield client
        finally:
            client.close()

    @contextmanager
    def stream(self, **kwargs: Any) -> Iterator[Stream]:
        """A ModelStreamInfer stream on a client of its own (``kwargs``: start_stream's, e.g. headers)."""
        with self.client() as client, streaming(client, **kwargs) as stream:
            yield stream


@contextmanager
def live(settings: Settings) -> Iterator[Live]:
    """``settings`` served on free loopback ports (HTTP and, with grpc_port=0, gRPC) by the server class
    of ``psn serve`` in a thread; leaving it shuts the server down (drain included)."""
    app = build_app(settings)
    with in_thread(app, settings, server_class()) as (base, server):
        state = app_state(app)
        grpc_port = state.grpc.port if state.grpc is not None else 0
        yield Live(base, f"127.0.0.1:{grpc_port}", state, server)


def params_of(result: Any) -> dict[str, Any]:
    """A tritonclient.grpc result's response parameters as plain values."""
    parameters = result.get_response().parameters
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in parameters.items()}


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

    def control(self, model: str, sequence_id: int | str, start: bool = False, **parameters: Any) -> None:
        """A request with no inputs and custom ``parameters`` (a sequence's ``snapshot`` or ``resume``)."""
        self.client.async_stream_infer(
            model, [], sequence_id=sequence_id, sequence_start=start, parameters=parameters
        )

    def get(self, timeout: float = 30) -> tuple[Any, Any]:
        return self.results.get(timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(InferenceServerException):  # a stream the server ended
            self.client.stop_stream()


@contextmanager
def streaming(client: Any, **kwargs: Any) -> Iterator[Stream]:
    """A ModelStreamInfer stream of ``client``, stopped on the way out."""
    stream = Stream(client, **kwargs)
    try:
        yield stream
    finally:
        stream.close()
