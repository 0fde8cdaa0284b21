"""The Python client's sans-IO core: requests built, answers parsed, errors made :class:`PSNError`, as flows.

A flow is a generator that yields the I/O it needs as effects (an HTTP call, a WebSocket connect, send,
receive or close, a sleep) and is sent each effect's result back (or has its exception thrown in); its
return value is the answer. server/client.py runs the same flows with httpx + websockets, synchronously
(``PSNClient``) or with asyncio (``AsyncPSNClient``); nothing here does I/O, so every decision (which
route, JSON or V2 binary tensors, what an answer or an error means, when a stream reconnects and what it
replays: server/client_resume.py) is made once, for both.

Modules: this one (results, errors, effects, WebSocket messages, a plain stream), server/client_http.py
(the HTTP requests, classify as JSON or V2 binary tensors), server/client_resume.py (resumable streams).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus

T_ = TypeVar("T_")

RESET_FRAME = '{"reset": true}'


class PSNError(Exception):
    """An error answer: ``status`` (HTTP) or ``close_code`` (WebSocket), ``code``, ``message``, ``param``."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        close_code: int | None = None,
        param: str | None = None,
    ) -> None:
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
    """``latency_ms``: the server's time from request to answer (JSON), or the round trip the client
    measured (V2 binary, whose answer does not carry the server's)."""

    model: str
    predictions: list[Prediction]
    latency_ms: float
    provider: str | None
    version: str | None = None  # the model version that answered


@dataclass(frozen=True)
class Step:
    t: int
    ready: bool
    label: str | None
    probabilities: list[float] | None
    done: bool = False
    logits: list[float] | None = None


# -- effects: what a flow asks its driver to do ------------------------------------------------------------
@dataclass(frozen=True)
class HTTPCall:
    """Answered with an :class:`HTTPAnswer`."""

    method: str
    path: str  # relative to the client's base URL
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None


@dataclass(frozen=True)
class HTTPAnswer:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    elapsed_ms: float = 0.0  # request sent to answer read, measured by the driver


@dataclass(frozen=True)
class Connect:
    """Open a WebSocket; answered with the connection (an opaque handle for Send, Recv and Close)."""

    url: str
    headers: Mapping[str, str]
    open_timeout: float | None = 10.0


@dataclass(frozen=True)
class Send:
    ws: Any
    data: bytes | str


@dataclass(frozen=True)
class Recv:
    """Answered with the next message; TimeoutError after ``timeout`` seconds (None: wait)."""

    ws: Any
    timeout: float | None = None


@dataclass(frozen=True)
class Close:
    """Close the connection; never fails (a broken connection is already closed)."""

    ws: Any


@dataclass(frozen=True)
class Sleep:
    seconds: float


Effect = HTTPCall | Connect | Send | Recv | Close | Sleep
Flow = Generator[Effect, Any, T_]


def advance(flow: Flow[T_], value: Any = None, error: Exception | None = None) -> tuple[bool, Any]:
    """Resume ``flow`` with the last effect's result (or its exception): (True, the flow's answer) when it
    is done, else (False, the next effect). Start it with no result."""
    try:
        return False, (flow.throw(error) if error is not None else flow.send(value))
    except StopIteration as done:
        return True, done.value


def run_blocking(flow: Flow[T_], do: Callable[[Effect], Any]) -> T_:
    """Run ``flow`` to its answer, ``do(effect)`` performing each effect (blocking); an exception ``do``
    raises is thrown into the flow, which decides what it means (a drop, an error answer)."""
    with closing(flow):
        done, out = advance(flow)
        while not done:
            done, out = advance(flow, *outcome(do, out))
        return out


def outcome(do: Callable[[Effect], Any], effect: Effect) -> tuple[Any, Exception | None]:
    """What performing ``effect`` gave: (its result, None), or (None, the exception it raised)."""
    try:
        return do(effect), None
    except Exception as exc:
        return None, exc


# -- HTTP answers ------------------------------------------------------------------------------------------
def http_error(answer: HTTPAnswer) -> PSNError:
    """The PSNError of an error answer: v1 ``{"error": {"code", "message", "param"}}``, V2 ``{"error": msg}``,
    or whatever text came (a proxy's page)."""
    try:
        error = json.loads(answer.body)["error"]
    except (ValueError, KeyError, TypeError):
        text = answer.body[:200].decode(errors="replace")
        return PSNError(text or f"HTTP {answer.status}", status=answer.status)
    if isinstance(error, str):
        return PSNError(error, status=answer.status)
    return PSNError(
        error.get("message", ""),
        code=error.get("code", "error"),
        status=answer.status,
        param=error.get("param"),
    )


def checked(answer: HTTPAnswer) -> Any:
    """The JSON body of a 2xx answer; PSNError otherwise."""
    if answer.status >= 400:
        raise http_error(answer)
    return json.loads(answer.body)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# -- WebSocket streams -------------------------------------------------------------------------------------
def ws_url(
    base_url: str, name: str, logits: bool, snapshot_every: int = 0, version: str | None = None
) -> str:
    url = base_url.rstrip("/")
    url = "ws" + url[4:] if url.startswith("http") else url
    query = (["logits=true"] if logits else []) + (
        [f"snapshot_every={snapshot_every}"] if snapshot_every else []
    )
    if version is not None:
        query.append(f"version={quote(version, safe='')}")
    return f"{url}/v1/models/{name}/stream" + ("?" + "&".join(query) if query else "")


def frame(x: Any, binary: bool) -> bytes | str:
    """One timestep: prod(input_shape) little-endian float32 (binary) or ``{"x": [...]}``."""
    if binary:
        return np.ascontiguousarray(x, dtype="<f4").tobytes()  # [*input_shape], C order
    data = x.tolist() if isinstance(x, np.ndarray) else list(x)
    return json.dumps({"x": data})


def stream_error(error: dict[str, Any]) -> PSNError:
    return PSNError(error.get("message", ""), code=error.get("code", "error"), param=error.get("param"))


def parse_message(raw: str | bytes) -> dict[str, Any]:
    """A server message as a dict; PSNError for an error event."""
    doc = json.loads(raw)
    error = doc.get("error")
    if error is not None:
        raise stream_error(error)
    return doc


def closed_error(exc: ConnectionClosed) -> PSNError:
    """A closed connection as a PSNError: the close code and reason the server sent (None: no close frame)."""
    received = exc.rcvd
    code = received.code if received is not None else None
    reason = received.reason if received is not None else "connection lost"
    return PSNError(reason or "socket closed", code="closed", close_code=code)


@contextmanager
def closed_as_error() -> Iterator[None]:
    """ConnectionClosed -> PSNError with the close code; a handshake refused with an HTTP status -> PSNError
    with that status."""
    try:
        yield
    except ConnectionClosed as exc:
        raise closed_error(exc) from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = (exc.response.body or b"").decode(errors="replace")[:200]
        raise PSNError(body or "the WebSocket handshake was refused", code="refused", status=status) from None


def to_step(doc: dict[str, Any]) -> Step:
    return Step(
        doc["t"], doc["ready"], doc["label"], doc["probabilities"], doc.get("done", False), doc.get("logits")
    )


def forwarded(path: str, doc: str) -> property:
    """A read-only property whose value is its object's attribute ``path`` (dotted: ``log.replayed``)."""
    return property(attrgetter(path), doc=doc)


class PlainStream:
    """A stream on one WebSocket, as flows: ``open``, ``step(frame)``, ``reset``, ``close``. A closed
    connection is a PSNError (``close_code``, the server's reason); a refused handshake, with ``status``."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self.url, self.headers = url, headers
        self.ws: Any = None
        self.hello: dict[str, Any] = {}
        self.reconnects = self.replayed = 0  # never: see client_resume.ResumableStream

    @property
    def version(self) -> str | None:
        """The model version the stream is on (the hello's)."""
        return self.hello.get("version")

    def open(self) -> Flow[None]:
        with closed_as_error():
            self.ws = yield Connect(self.url, self.headers)
            try:
                self.hello = parse_message((yield Recv(self.ws)))
            except Exception:
                yield Close(self.ws)
                raise

    def step(self, data: bytes | str) -> Flow[dict[str, Any]]:
        with closed_as_error():
            yield Send(self.ws, data)
            return parse_message((yield Recv(self.ws)))

    def reset(self) -> Flow[None]:
        yield from self.step(RESET_FRAME)

    def close(self) -> Flow[None]:
        if self.ws is not None:
            yield Close(self.ws)
