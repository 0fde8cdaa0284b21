"""A small Python client for psn-serve (httpx + websockets; no FastAPI, no torch).

    from server.client import PSNClient

    with PSNClient("http://127.0.0.1:8000") as client:
        print([m["name"] for m in client.models()])
        result = client.classify("smnist-psn", x)           # x: [T, *input_shape] or [B, T, *input_shape]
        print(result.predictions[0].label)
        with client.stream("smnist-sliding") as stream:     # binary float32 frames by default
            for row in x:
                step = stream.step(row)
                print(step.t, step.ready, step.label)

``AsyncPSNClient`` has the same methods as coroutines (``async with client.stream(name) as s``).
``client.stream(name, resumable=True)`` survives the loss of its replica (server/client_resume.py).
``classify`` sends inputs above ``binary_threshold`` bytes (64 KiB by default) as a V2 binary tensor,
smaller ones as JSON (``binary=True/False`` decides for one call); the answer is the same either way.
Errors come back as :class:`PSNError` (HTTP status or WebSocket close code, error code, message, param).

Everything the client decides lives in the sans-IO core (server/client_core.py, client_http.py,
client_resume.py) as flows; this module only runs them: :class:`SyncDriver` with httpx.Client and
websockets' sync client, :class:`AsyncDriver` with httpx.AsyncClient and websockets' asyncio client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Generic, TypeVar, Unpack

import httpx
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import connect as sync_connect

from server.client_core import (
    ClassifyResponse,
    Close,
    Connect,
    Effect,
    Flow,
    HTTPAnswer,
    HTTPCall,
    Prediction,
    PSNError,
    Recv,
    Send,
    Sleep,
    Step,
    advance,
    forwarded,
    frame,
    run_blocking,
    to_step,
)
from server.client_http import BINARY_THRESHOLD, ClassifyOptions, ClientCore, StreamOptions
from server.client_resume import RetryPolicy, StreamMachine

__all__ = [
    "BINARY_THRESHOLD",
    "AsyncPSNClient",
    "AsyncResumableStream",
    "AsyncStream",
    "ClassifyResponse",
    "PSNClient",
    "PSNError",
    "Prediction",
    "ResumableStream",
    "RetryPolicy",
    "Step",
    "Stream",
]

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


def _answer(response: httpx.Response, started: float) -> HTTPAnswer:
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    headers = {name.lower(): value for name, value in response.headers.items()}
    return HTTPAnswer(response.status_code, headers, response.content, elapsed_ms)


class SyncDriver:
    """Runs flows with blocking I/O."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def run(self, flow: Flow[T]) -> T:
        return run_blocking(flow, self._do)

    def _do(self, effect: Effect) -> Any:
        if isinstance(effect, HTTPCall):
            started = time.perf_counter()
            response = self.http.request(
                effect.method, effect.path, headers=dict(effect.headers), content=effect.content
            )
            return _answer(response, started)
        if isinstance(effect, Connect):
            connection = sync_connect(
                effect.url,
                additional_headers=dict(effect.headers),
                compression=None,
                open_timeout=effect.open_timeout,
            )
            return connection.__enter__()  # entered (closed by Close): no legacy-use warning
        if isinstance(effect, Send):
            return effect.ws.send(effect.data)
        if isinstance(effect, Recv):
            return effect.ws.recv(timeout=effect.timeout)
        if isinstance(effect, Close):
            with contextlib.suppress(Exception):  # already broken: nothing to close
                effect.ws.close()
            return None
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        raise TypeError(f"not an effect: {effect!r}")


class AsyncDriver:
    """Runs flows with asyncio I/O."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def run(self, flow: Flow[T]) -> T:
        """As :func:`~server.client_core.run_blocking`, awaiting each effect."""
        with contextlib.closing(flow):
            done, out = advance(flow)
            while not done:
                try:
                    outcome = await self._do(out), None
                except Exception as exc:  # the flow decides what it means (a drop, an error answer)
                    outcome = None, exc
                done, out = advance(flow, *outcome)
            return out

    async def _do(self, effect: Effect) -> Any:
        if isinstance(effect, HTTPCall):
            started = time.perf_counter()
            response = await self.http.request(
                effect.method, effect.path, headers=dict(effect.headers), content=effect.content
            )
            return _answer(response, started)
        if isinstance(effect, Connect):
            return await async_connect(
                effect.url,
                additional_headers=dict(effect.headers),
                compression=None,
                open_timeout=effect.open_timeout,
            )
        if isinstance(effect, Send):
            return await effect.ws.send(effect.data)
        if isinstance(effect, Recv):
            async with asyncio.timeout(effect.timeout):
                return await effect.ws.recv()
        if isinstance(effect, Close):
            with contextlib.suppress(Exception):  # already broken: nothing to close
                await effect.ws.close()
            return None
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        raise TypeError(f"not an effect: {effect!r}")


class _StreamState:
    """What both kinds of stream show: the hello, the connection in use, what resuming did (and the driver
    that runs their flows: a SyncDriver's or an AsyncDriver's)."""

    hello = forwarded("_machine.hello", "The server's first message on the stream (model, version...).")
    version = forwarded("_machine.version", "The model version it is on: the hello's, or the snapshot's.")
    connection = forwarded("_machine.ws", "The WebSocket connection in use now (a new one after a resume).")
    reconnects = forwarded("_machine.reconnects", "Connections lost and resumed (0 unless resumable=True).")
    replayed = forwarded("_machine.replayed", "Frames sent again after reconnects (since the last snapshot).")

    def __init__(self, machine: StreamMachine, driver: Any, binary: bool) -> None:
        self._machine, self._driver, self.binary = machine, driver, binary


class Stream(_StreamState):
    """A synchronous stream: ``step(x)`` sends one timestep and waits for its answer."""

    _driver: SyncDriver

    def open(self) -> None:
        self._driver.run(self._machine.open())

    def step(self, x: Any) -> Step:
        return to_step(self._driver.run(self._machine.step(frame(x, self.binary))))

    def reset(self) -> None:
        self._driver.run(self._machine.reset())

    def close(self) -> None:
        self._driver.run(self._machine.close())


class AsyncStream(_StreamState):
    """An asynchronous stream: ``await step(x)``."""

    _driver: AsyncDriver

    async def open(self) -> None:
        await self._driver.run(self._machine.open())

    async def step(self, x: Any) -> Step:
        return to_step(await self._driver.run(self._machine.step(frame(x, self.binary))))

    async def reset(self) -> None:
        await self._driver.run(self._machine.reset())

    async def close(self) -> None:
        await self._driver.run(self._machine.close())


ResumableStream = Stream  # resumable=True: the same class (a dropped step is slower, not lost)
AsyncResumableStream = AsyncStream


class _Client(Generic[H]):
    """What both clients hold: the sans-IO core, an httpx client (``http``, else one of their own that
    ``close`` closes) and the driver that runs the core's flows over it.

    ``binary_threshold``: classify sends inputs of more than this many bytes (as float32) as a V2 binary
    tensor (default :data:`BINARY_THRESHOLD`; None = always JSON, 0 = always binary)."""

    _http_class: Callable[..., H]
    _driver_class: Callable[[H], Any]

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: H | None = None,
        binary_threshold: int | None = BINARY_THRESHOLD,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._core = ClientCore(self.base_url, api_key=api_key, binary_threshold=binary_threshold)
        self._http: H = http or self._http_class(base_url=self.base_url, timeout=timeout)
        self._owns_http = http is None
        self._driver = self._driver_class(self._http)


class PSNClient(_Client[httpx.Client]):
    """Synchronous client. ``http`` may be any ``httpx.Client`` (e.g. a FastAPI TestClient)."""

    _http_class = httpx.Client
    _driver_class = SyncDriver

    def __enter__(self) -> PSNClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def health(self) -> bool:
        return self._driver.run(self._core.health())

    def ready(self) -> dict[str, Any]:
        """The readiness body (``status``, every model's status); does not raise when not ready."""
        return self._driver.run(self._core.ready())

    def models(self) -> list[dict[str, Any]]:
        return self._driver.run(self._core.models())

    def model(self, name: str) -> dict[str, Any]:
        return self._driver.run(self._core.model(name))

    def classify(self, name: str, inputs: Any, **options: Unpack[ClassifyOptions]) -> ClassifyResponse:
        """inputs: [T, *input_shape] (one sequence) or [B, T, *input_shape]; a numpy array or nested lists.
        ``return_logits`` (True); ``binary``: None = by size (``binary_threshold``), True = a V2 binary
        tensor, False = JSON; ``version``: the model version (None: the highest the server has ready); the
        answer's ``version`` says which."""
        return self._driver.run(self._core.classify(name, inputs, **options))

    @contextmanager
    def stream(self, name: str, *, binary: bool = True, **options: Unpack[StreamOptions]) -> Iterator[Stream]:
        """A stream on its own WebSocket; binary float32 frames by default, JSON with binary=False; with
        ``logits`` (False) in its answers; on model ``version`` (None: the highest the server has ready;
        ``stream.version`` says which).

        ``resumable=True`` (False): the stream survives the loss of its replica (reconnect to this URL,
        resume from the last snapshot, which the server sends every ``snapshot_every`` (16) steps and on
        drain, replay the steps since; on the snapshot's version); PSNError ``resume_disabled`` when the
        server cannot, ``version_unavailable`` when no replica reached has its version, ``stream_lost``
        after ``retry.retries`` failed reconnects (``retry``: a RetryPolicy, None = the default one)."""
        stream = Stream(self._core.stream(name, **options), self._driver, binary)
        stream.open()
        try:
            yield stream
        finally:
            stream.close()


class AsyncPSNClient(_Client[httpx.AsyncClient]):
    """Asynchronous client with the methods of :class:`PSNClient` as coroutines (``http``: any
    ``httpx.AsyncClient``)."""

    _http_class = httpx.AsyncClient
    _driver_class = AsyncDriver

    async def __aenter__(self) -> AsyncPSNClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def health(self) -> bool:
        return await self._driver.run(self._core.health())

    async def ready(self) -> dict[str, Any]:
        return await self._driver.run(self._core.ready())

    async def models(self) -> list[dict[str, Any]]:
        return await self._driver.run(self._core.models())

    async def model(self, name: str) -> dict[str, Any]:
        return await self._driver.run(self._core.model(name))

    async def classify(self, name: str, inputs: Any, **options: Unpack[ClassifyOptions]) -> ClassifyResponse:
        return await self._driver.run(self._core.classify(name, inputs, **options))

    @asynccontextmanager
    async def stream(
        self, name: str, *, binary: bool = True, **options: Unpack[StreamOptions]
    ) -> AsyncIterator[AsyncStream]:
        stream = AsyncStream(self._core.stream(name, **options), self._driver, binary)
        await stream.open()
        try:
            yield stream
        finally:
            await stream.close()
