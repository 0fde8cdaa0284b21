"""Resumable streams, sans-IO: reconnect, resume from the last snapshot, replay the inputs since.

``PSNClient(url).stream(name, resumable=True)`` (and ``AsyncPSNClient``) run :class:`ResumableStream`'s
flows (server/client_core.py explains flows). The server sends a signed snapshot of the stream's state every
``snapshot_every`` steps and when it drains (SIGTERM); the stream keeps the snapshot and the frames it sent
since (:class:`ResumeLog`). When the connection drops (close 1001, 1006, 1011, 1012, 1013, a refused or reset
connection, a 5xx from the balancer, no answer within ``step_timeout_s``) it connects to the same URL again
(the balancer picks a live replica), sends ``{"resume": snapshot}``, replays the frames since the snapshot
and then the step that was in flight. The caller sees a slower step, with the answer an uninterrupted stream
would have given. The snapshot names its model version: a replica that serves it resumes the stream on it
(``stream.version`` follows); one that lacks it answers ``version_unavailable`` and the stream tries another
connection. After ``retries`` failed reconnects in a row it raises PSNError ``stream_lost`` (or
``version_unavailable`` when that was the last answer); a server that cannot resume, PSNError
``resume_disabled``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from server.client_core import (
    RESET_FRAME,
    Close,
    Connect,
    Flow,
    PlainStream,
    PSNError,
    Recv,
    Send,
    Sleep,
    closed_as_error,
    forwarded,
    parse_message,
)

SALVAGE_MESSAGES = 4  # at most this many messages read from a dropped connection
SALVAGE_TIMEOUT_S = 0.01  # each: what a dropped connection still holds is already here
DROP_CODES = frozenset({1001, 1006, 1011, 1012, 1013})  # going away, abnormal, internal, restart, try later


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 8  # reconnects in a row before giving up
    backoff_s: float = 0.05  # the first wait; doubles each time
    max_backoff_s: float = 2.0
    step_timeout_s: float = 30.0  # no answer within this long: the connection is taken for dropped

    def __post_init__(self) -> None:
        if self.retries < 1 or self.backoff_s < 0 or self.max_backoff_s < 0 or self.step_timeout_s <= 0:
            raise ValueError(f"invalid retry policy {self}")

    def wait(self, attempt: int) -> float:
        return 0.0 if attempt == 0 else min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


def is_drop(exc: BaseException) -> bool:
    """Is ``exc`` a lost connection that a reconnect may cure (rather than the server refusing us)?"""
    if isinstance(exc, ConnectionClosed):
        received = exc.rcvd
        return received is None or received.code in DROP_CODES
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code >= 500
    return isinstance(exc, OSError | TimeoutError | EOFError | InvalidMessage)


@dataclass
class ResumeLog:
    """The client's checkpoint and log: the last snapshot, and the frames answered since it."""

    snapshot: str | None = None
    t: int = 0  # the snapshot's t (steps it covers)
    frames: list[bytes | str] = field(default_factory=list)  # answered frames t, t+1, ...
    reconnects: int = 0
    replayed: int = 0

    def on_snapshot(self, doc: dict[str, Any]) -> None:
        covered = doc["t"] - self.t
        if not 0 <= covered <= len(self.frames):
            raise ValueError(
                f"snapshot at t={doc['t']} does not follow t={self.t} + {len(self.frames)} frames"
            )
        del self.frames[:covered]
        self.snapshot, self.t = doc["snapshot"], doc["t"]

    def absorb(self, raw: str | bytes) -> None:
        """Keep the snapshot in a message read from a dropped connection; ignore anything else."""
        try:
            doc = json.loads(raw)
        except ValueError:
            return
        if isinstance(doc, dict) and "snapshot" in doc and "t" in doc:
            self.on_snapshot(doc)

    def answered(self, frame: bytes | str) -> None:
        self.frames.append(frame)

    def reset(self) -> None:
        self.snapshot, self.t = None, 0
        self.frames.clear()


def elsewhere(exc: BaseException | None) -> bool:
    """Did a replica answer that it lacks the stream's model version (another one may have it)?"""
    return isinstance(exc, PSNError) and exc.code == "version_unavailable"


def check_hello(hello: dict[str, Any]) -> None:
    if not hello.get("resumable"):
        reason = hello.get("resumable_reason", "the server does not offer resumable streams")
        raise PSNError(reason, code="resume_disabled")


class ResumableStream:
    """A stream that survives the loss of its replica, as flows: ``open``, ``step(frame)``, ``reset``,
    ``close`` (as :class:`~server.client_core.PlainStream`); ``reconnects`` and ``replayed`` count what it
    did; ``log`` is its :class:`ResumeLog`."""

    def __init__(self, url: str, headers: Mapping[str, str], policy: RetryPolicy) -> None:
        self.url, self.headers, self.policy = url, headers, policy
        self.log = ResumeLog()
        self.ws: Any = None
        self.hello: dict[str, Any] = {}
        self.resumed_on: str | None = None  # the version a resume put the stream on (the hello's may differ)

    @property
    def version(self) -> str | None:
        """The model version the stream is on: the snapshot's after a resume, else the hello's."""
        return self.resumed_on or self.hello.get("version")

    reconnects = forwarded("log.reconnects", "Connections lost and resumed.")
    replayed = forwarded("log.replayed", "Frames sent again after reconnects (since the last snapshot).")

    def open(self) -> Flow[None]:
        with closed_as_error():  # connection refused, 5xx: retried as any drop; the rest is a PSNError
            self.ws, _ = yield from self._recover(None, None)

    def step(self, data: bytes | str) -> Flow[dict[str, Any]]:
        doc = yield from self._exchange(data)
        self.log.answered(data)
        return doc

    def reset(self) -> Flow[None]:
        yield from self._exchange(RESET_FRAME)
        self.log.reset()

    def close(self) -> Flow[None]:
        if self.ws is not None:
            yield Close(self.ws)

    def _exchange(self, data: bytes | str) -> Flow[dict[str, Any]]:
        with closed_as_error():
            try:
                yield Send(self.ws, data)
                return (yield from self._answer(self.ws))
            except Exception as exc:
                if not is_drop(exc):
                    raise
            self.ws, answer = yield from self._recover(self.ws, data)
            assert answer is not None  # a pending frame always gets its answer
            return answer

    def _answer(self, ws: Any) -> Flow[dict[str, Any]]:
        """The next message that is not a snapshot (a step answer, ``resumed`` or ``reset``)."""
        while True:
            doc = parse_message((yield Recv(ws, self.policy.step_timeout_s)))
            if "snapshot" not in doc:
                return doc
            self.log.on_snapshot(doc)

    def _connect(self) -> Flow[Any]:
        """A new connection whose hello says it can resume."""
        ws = yield Connect(self.url, self.headers)
        try:
            self.hello = parse_message((yield Recv(ws, self.policy.step_timeout_s)))
            check_hello(self.hello)
        except Exception:
            yield Close(ws)
            raise
        return ws

    def _recover(self, old: Any, pending: bytes | str | None) -> Flow[tuple[Any, dict[str, Any] | None]]:
        """A new connection with the stream's state back (old=None: the first connection, with the same
        retries) and the answer to ``pending`` (when given)."""
        if old is not None:
            yield from self._salvage(old)
            yield Close(old)
        last: BaseException | None = None
        for attempt in range(self.policy.retries):
            wait = self.policy.wait(attempt)
            if wait:
                yield Sleep(wait)
            ws = None
            try:
                ws = yield from self._connect()
                answer = yield from self._replay(ws, pending)
            except Exception as exc:
                if ws is not None:
                    yield Close(ws)
                if not (is_drop(exc) or elsewhere(exc)):
                    raise
                last = exc
                continue
            if old is not None:
                self.log.reconnects += 1
            return ws, answer
        if elsewhere(last):
            assert isinstance(last, PSNError)
            raise PSNError(
                f"no replica reached in {self.policy.retries} tries has the stream's model version: "
                f"{last.message}",
                code="version_unavailable",
            )
        raise PSNError(
            f"the stream could not be resumed: {self.policy.retries} reconnects failed (last: {last!r})",
            code="stream_lost",
        )

    def _salvage(self, ws: Any) -> Flow[None]:
        """Read what a dropped connection still holds: a drain's snapshot arrives just before its close."""
        for _ in range(SALVAGE_MESSAGES):
            try:
                raw = yield Recv(ws, SALVAGE_TIMEOUT_S)
            except Exception:  # closed, empty or broken: nothing more to read
                return
            self.log.absorb(raw)

    def _replay(self, ws: Any, pending: bytes | str | None) -> Flow[dict[str, Any] | None]:
        log = self.log
        self.resumed_on = None
        if log.snapshot is not None:
            yield Send(ws, json.dumps({"resume": log.snapshot}))
            resumed = yield from self._answer(ws)  # version_unavailable: another connection may have it
            if resumed.get("t") != log.t:
                raise PSNError(f"resumed at {resumed}, expected t={log.t}", code="bad_snapshot")
            self.resumed_on = resumed.get("version")
        for frame in list(log.frames):  # answered already: their answers are the ones the caller got
            yield Send(ws, frame)
            yield from self._answer(ws)
            log.replayed += 1
        if pending is None:
            return None
        yield Send(ws, pending)
        return (yield from self._answer(ws))


StreamMachine = PlainStream | ResumableStream
