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
``client.stream(name, resumable=True)`` survives the loss of its replica (see server/client_resume.py).
Errors come back as :class:`PSNError` (HTTP status or WebSocket close code, error code, message, param).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from server.client_resume import AsyncResumableStream, AsyncResumer, ResumableStream, RetryPolicy, SyncResumer

__all__ = [
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


class PSNError(Exception):
    """An error answer: ``status`` (HTTP) or ``close_code`` (WebSocket), ``code``, ``message``, ``param``."""

    def __init__(
        self, message: str, *, code: str = "error", status: int | None = None, close_code: int | None = None,
        param: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.message = message
        self.code = code
        self.status = status
        self.close_code = close_code
        self.param = param


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: list[float]
    logits: list[float] | None = None


@dataclass(frozen=True)
class ClassifyResponse:
    model: str
    predictions: list[Prediction]
    latency_ms: float
    provider: str | None


@dataclass(frozen=True)
class Step:
    t: int
    ready: bool
    label: str | None
    probabilities: list[float] | None
    done: bool = False
    logits: list[float] | None = None


def _http_error(response: httpx.Response) -> PSNError:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return PSNError(response.text[:200] or response.reason_phrase, status=response.status_code)
    if isinstance(error, str):  # /v2 error body
        return PSNError(error, status=response.status_code)
    return PSNError(
        error.get("message", ""), code=error.get("code", "error"), status=response.status_code,
        param=error.get("param"),
    )  # fmt: skip


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _http_error(response)
    return response.json()


def _classify_body(inputs: Any, return_logits: bool) -> dict[str, Any]:
    data = inputs.tolist() if isinstance(inputs, np.ndarray) else inputs
    return {"inputs": data, "return_logits": return_logits}


def _classify_result(doc: dict[str, Any]) -> ClassifyResponse:
    predictions = [Prediction(p["label"], p["probabilities"], p.get("logits")) for p in doc["predictions"]]
    return ClassifyResponse(doc["model"], predictions, doc["latency_ms"], doc.get("provider"))


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _ws_url(base_url: str, name: str, logits: bool, snapshot_every: int = 0) -> str:
    url = base_url.rstrip("/")
    url = "ws" + url[4:] if url.startswith("http") else url
    query = (["logits=true"] if logits else []) + (
        [f"snapshot_every={snapshot_every}"] if snapshot_every else []
    )
    return f"{url}/v1/models/{name}/stream" + ("?" + "&".join(query) if query else "")


def _error(error: dict[str, Any]) -> PSNError:
    return PSNError(error.get("message", ""), code=error.get("code", "error"), param=error.get("param"))


def _frame(x: Any, binary: bool) -> bytes | str:
    if binary:
        return np.ascontiguousarray(x, dtype="<f4").tobytes()  # [F] little-endian float32
    data = x.tolist() if isinstance(x, np.ndarray) else list(x)
    return json.dumps({"x": data})


def _parse_answer(text: str | bytes) -> dict[str, Any]:
    doc = json.loads(text)
    error = doc.get("error")
    if error is not None:
        raise PSNError(error.get("message", ""), code=error.get("code", "error"), param=error.get("param"))
    return doc


def _closed(exc: ConnectionClosed) -> PSNError:
    received = exc.rcvd
    code = received.code if received is not None else None
    reason = received.reason if received is not None else "connection lost"
    return PSNError(reason or "socket closed", code="closed", close_code=code)


def _step(doc: dict[str, Any]) -> Step:
    return Step(
        doc["t"], doc["ready"], doc["label"], doc["probabilities"], doc.get("done", False), doc.get("logits")
    )


class Stream:
    """A synchronous stream: ``step(x)`` sends one timestep and waits for its answer."""

    def __init__(self, connection: SyncConnection, binary: bool) -> None:
        self._ws = connection
        self.binary = binary
        self.hello: dict[str, Any] = self._receive()

    def _receive(self) -> dict[str, Any]:
        try:
            return _parse_answer(self._ws.recv())
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    def step(self, x: Any) -> Step:
        try:
            self._ws.send(_frame(x, self.binary))
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        return _step(self._receive())

    def reset(self) -> None:
        self._ws.send('{"reset": true}')
        self._receive()

    def close(self) -> None:
        self._ws.close()


class AsyncStream:
    """An asynchronous stream: ``await step(x)``."""

    def __init__(self, connection: AsyncConnection, binary: bool) -> None:
        self._ws = connection
        self.binary = binary
        self.hello: dict[str, Any] = {}

    async def _receive(self) -> dict[str, Any]:
        try:
            return _parse_answer(await self._ws.recv())
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def step(self, x: Any) -> Step:
        try:
            await self._ws.send(_frame(x, self.binary))
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        return _step(await self._receive())

    async def reset(self) -> None:
        await self._ws.send('{"reset": true}')
        await self._receive()

    async def close(self) -> None:
        await self._ws.close()


class PSNClient:
    """Synchronous client. ``http`` may be any ``httpx.Client`` (e.g. a FastAPI TestClient)."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._http.headers.update(_headers(api_key))
        self._owns_http = http is None

    def __enter__(self) -> PSNClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def health(self) -> bool:
        return self._http.get("/healthz").status_code == 200

    def ready(self) -> dict[str, Any]:
        """The readiness body (``status``, every model's status); does not raise when not ready."""
        return self._http.get("/readyz").json()

    def models(self) -> list[dict[str, Any]]:
        return _checked(self._http.get("/v1/models"))["models"]

    def model(self, name: str) -> dict[str, Any]:
        return _checked(self._http.get(f"/v1/models/{name}"))

    def classify(self, name: str, inputs: Any, *, return_logits: bool = True) -> ClassifyResponse:
        """inputs: [T, *input_shape] (one sequence) or [B, T, *input_shape]; a numpy array or nested lists."""
        body = _classify_body(inputs, return_logits)
        return _classify_result(_checked(self._http.post(f"/v1/models/{name}/classify", json=body)))

    @contextmanager
    def stream(
        self, name: str, *, binary: bool = True, logits: bool = False, resumable: bool = False,
        snapshot_every: int = 16, retry: RetryPolicy | None = None,
    ) -> Iterator[Stream | ResumableStream]:  # fmt: skip
        """A stream on its own WebSocket; binary float32 frames by default, JSON with binary=False.

        resumable=True: the stream survives the loss of its replica (reconnect to this URL, resume from the
        last snapshot, which the server sends every ``snapshot_every`` steps and on drain, replay the steps
        since); PSNError ``resume_disabled`` when the server cannot, ``stream_lost`` after ``retry.retries``
        failed reconnects."""
        if resumable:
            url = _ws_url(self.base_url, name, logits, snapshot_every)
            headers = _headers(self.api_key)
            resumer = SyncResumer(
                # entered as a context manager (it is closed by the stream): no legacy-use warning
                lambda: sync_connect(
                    url, additional_headers=headers, compression=None, open_timeout=10
                ).__enter__(),
                retry or RetryPolicy(),
                _error,
            )
            resumable_stream = ResumableStream(resumer, partial(_frame, binary=binary), _step, _closed)
            try:
                yield resumable_stream
            finally:
                resumable_stream.close()
            return
        url = _ws_url(self.base_url, name, logits)
        try:
            connection = sync_connect(url, additional_headers=_headers(self.api_key), compression=None)
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        with connection:
            yield Stream(connection, binary)


class AsyncPSNClient:
    """Asynchronous client with the methods of :class:`PSNClient` as coroutines."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._http.headers.update(_headers(api_key))
        self._owns_http = http is None

    async def __aenter__(self) -> AsyncPSNClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def health(self) -> bool:
        return (await self._http.get("/healthz")).status_code == 200

    async def ready(self) -> dict[str, Any]:
        return (await self._http.get("/readyz")).json()

    async def models(self) -> list[dict[str, Any]]:
        return _checked(await self._http.get("/v1/models"))["models"]

    async def model(self, name: str) -> dict[str, Any]:
        return _checked(await self._http.get(f"/v1/models/{name}"))

    async def classify(self, name: str, inputs: Any, *, return_logits: bool = True) -> ClassifyResponse:
        body = _classify_body(inputs, return_logits)
        return _classify_result(_checked(await self._http.post(f"/v1/models/{name}/classify", json=body)))

    @asynccontextmanager
    async def stream(
        self, name: str, *, binary: bool = True, logits: bool = False, resumable: bool = False,
        snapshot_every: int = 16, retry: RetryPolicy | None = None,
    ) -> AsyncIterator[AsyncStream | AsyncResumableStream]:  # fmt: skip
        if resumable:
            url = _ws_url(self.base_url, name, logits, snapshot_every)
            headers = _headers(self.api_key)

            async def connect() -> AsyncConnection:
                return await async_connect(url, additional_headers=headers, compression=None, open_timeout=10)

            resumer = AsyncResumer(connect, retry or RetryPolicy(), _error)
            resumable_stream = AsyncResumableStream(resumer, partial(_frame, binary=binary), _step, _closed)
            await resumable_stream._open()
            try:
                yield resumable_stream
            finally:
                await resumable_stream.close()
            return
        url = _ws_url(self.base_url, name, logits)
        async with async_connect(
            url, additional_headers=_headers(self.api_key), compression=None
        ) as connection:
            stream = AsyncStream(connection, binary)
            stream.hello = await stream._receive()
            yield stream
