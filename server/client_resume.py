"""Resumable streams for the Python client: reconnect, resume from the last snapshot, replay the inputs since.

``PSNClient(url).stream(name, resumable=True)`` (and ``AsyncPSNClient``) return these streams. The server
sends a signed snapshot of the stream's state every ``snapshot_every`` steps and when it drains (SIGTERM);
the stream keeps the snapshot and the frames it sent since. When the connection drops (close 1001, 1006,
1011, 1012, 1013, a refused or reset connection, a 5xx from the balancer, no answer within
``step_timeout``) it connects to the same URL again (the balancer picks a live replica), sends
``{"resume": snapshot}``, replays the frames since the snapshot and then the step that was in flight. The
caller sees a slower step, with the answer an uninterrupted stream would have given. After ``retries``
failed reconnects in a row it raises :class:`~server.client.PSNError` with code ``stream_lost``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

log = logging.getLogger("psn.client")

SALVAGE_MESSAGES = 4  # at most this many messages read from a dropped connection
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

    def answered(self, frame: bytes | str) -> None:
        self.frames.append(frame)

    def reset(self) -> None:
        self.snapshot, self.t = None, 0
        self.frames.clear()


def _doc(raw: str | bytes, error: Callable[[dict], Exception]) -> dict[str, Any]:
    doc = json.loads(raw)
    if "error" in doc:
        raise error(doc["error"])
    return doc


def check_hello(hello: dict[str, Any], error: Callable[[dict], Exception]) -> None:
    if not hello.get("resumable"):
        reason = hello.get("resumable_reason", "the server does not offer resumable streams")
        raise error({"code": "resume_disabled", "message": reason})


class SyncResumer:
    """Drives one synchronous connection: answers (absorbing snapshot messages) and recovery."""

    def __init__(
        self, connect: Callable[[], Any], policy: RetryPolicy, error: Callable[[dict], Exception],
    ) -> None:  # fmt: skip
        self.connect, self.policy, self.error = connect, policy, error
        self.log = ResumeLog()
        self.hello: dict[str, Any] = {}

    def answer(self, ws: Any) -> dict[str, Any]:
        """The next non-snapshot message (a step answer, ``resumed`` or ``reset``)."""
        while True:
            doc = _doc(ws.recv(timeout=self.policy.step_timeout_s), self.error)
            if "snapshot" in doc:
                self.log.on_snapshot(doc)
                continue
            return doc

    def open(self) -> tuple[Any, dict[str, Any]]:
        ws = self.connect()
        try:
            hello = _doc(ws.recv(timeout=self.policy.step_timeout_s), self.error)
            check_hello(hello, self.error)
            self.hello = hello
        except BaseException:
            ws.close()
            raise
        return ws, hello

    def salvage(self, ws: Any) -> None:
        """Read what a dropped connection still holds: a drain's snapshot arrives just before its close."""
        for _ in range(SALVAGE_MESSAGES):
            try:
                raw = ws.recv(timeout=0)
            except Exception:  # closed, empty or broken: nothing more to read
                return
            self._absorb(raw)

    def _absorb(self, raw: str | bytes) -> None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return
        if isinstance(doc, dict) and "snapshot" in doc and "t" in doc:
            self.log.on_snapshot(doc)

    def recover(self, old: Any, pending: bytes | str | None) -> tuple[Any, dict[str, Any] | None]:
        """A new connection with the stream's state back (old=None: the first connection, with the same
        retries); the answer to ``pending`` (when given)."""
        if old is not None:
            self.salvage(old)
        _quiet_close(old)
        last: BaseException | None = None
        for attempt in range(self.policy.retries):
            time.sleep(self.policy.wait(attempt))
            ws = None
            try:
                ws, _ = self.open()
                answer = self._replay(ws, pending)
            except Exception as exc:
                _quiet_close(ws)
                if not is_drop(exc):
                    raise
                last = exc
                continue
            if old is not None:
                self.log.reconnects += 1
            return ws, answer
        raise self.error({
            "code": "stream_lost",
            "message": f"the stream could not be resumed: {self.policy.retries} reconnects failed "
            f"(last: {last!r})",
        })  # fmt: skip

    def _replay(self, ws: Any, pending: bytes | str | None) -> dict[str, Any] | None:
        log = self.log
        if log.snapshot is not None:
            ws.send(json.dumps({"resume": log.snapshot}))
            resumed = self.answer(ws)
            if resumed.get("t") != log.t:
                raise self.error(
                    {"code": "bad_snapshot", "message": f"resumed at {resumed}, expected t={log.t}"}
                )
        for frame in list(log.frames):  # answered already: their answers are the ones the caller got
            ws.send(frame)
            self.answer(ws)
            log.replayed += 1
        if pending is None:
            return None
        ws.send(pending)
        return self.answer(ws)


class AsyncResumer(SyncResumer):
    """SyncResumer for an asyncio connection (the same log and policy; awaits instead of blocking)."""

    def __init__(
        self, connect: Callable[[], Awaitable[Any]], policy: RetryPolicy, error: Callable[[dict], Exception],
    ) -> None:  # fmt: skip
        super().__init__(connect, policy, error)

    async def answer(self, ws: Any) -> dict[str, Any]:  # type: ignore[override]
        while True:
            async with asyncio.timeout(self.policy.step_timeout_s):
                raw = await ws.recv()
            doc = _doc(raw, self.error)
            if "snapshot" in doc:
                self.log.on_snapshot(doc)
                continue
            return doc

    async def open(self) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        ws = await self.connect()
        try:
            async with asyncio.timeout(self.policy.step_timeout_s):
                hello = _doc(await ws.recv(), self.error)
            check_hello(hello, self.error)
            self.hello = hello
        except BaseException:
            await ws.close()
            raise
        return ws, hello

    async def asalvage(self, ws: Any) -> None:
        for _ in range(SALVAGE_MESSAGES):
            try:
                async with asyncio.timeout(0.01):
                    raw = await ws.recv()
            except Exception:
                return
            self._absorb(raw)

    async def recover(self, old: Any, pending: bytes | str | None) -> tuple[Any, dict[str, Any] | None]:  # type: ignore[override]
        if old is not None:
            await self.asalvage(old)
        await _aquiet_close(old)
        last: BaseException | None = None
        for attempt in range(self.policy.retries):
            await asyncio.sleep(self.policy.wait(attempt))
            ws = None
            try:
                ws, _ = await self.open()
                answer = await self._areplay(ws, pending)
            except Exception as exc:
                await _aquiet_close(ws)
                if not is_drop(exc):
                    raise
                last = exc
                continue
            if old is not None:
                self.log.reconnects += 1
            return ws, answer
        raise self.error({
            "code": "stream_lost",
            "message": f"the stream could not be resumed: {self.policy.retries} reconnects failed "
            f"(last: {last!r})",
        })  # fmt: skip

    async def _areplay(self, ws: Any, pending: bytes | str | None) -> dict[str, Any] | None:
        log = self.log
        if log.snapshot is not None:
            await ws.send(json.dumps({"resume": log.snapshot}))
            resumed = await self.answer(ws)
            if resumed.get("t") != log.t:
                raise self.error(
                    {"code": "bad_snapshot", "message": f"resumed at {resumed}, expected t={log.t}"}
                )
        for frame in list(log.frames):
            await ws.send(frame)
            await self.answer(ws)
            log.replayed += 1
        if pending is None:
            return None
        await ws.send(pending)
        return await self.answer(ws)


class ResumableStream:
    """A synchronous stream that survives the loss of its replica: ``step(x)`` as :class:`Stream`; a
    dropped connection is reconnected, resumed from the last snapshot and replayed (a slower step)."""

    def __init__(
        self, resumer: SyncResumer, encode: Callable[[Any], bytes | str], decode: Callable[[dict], Any],
        closed: Callable[[ConnectionClosed], Exception],
    ) -> None:  # fmt: skip
        self._resumer = resumer
        self._encode, self._decode, self._closed_error = encode, decode, closed
        self._ws, _ = resumer.recover(None, None)  # connection refused, 5xx: retried as any drop
        self.hello = resumer.hello

    @property
    def reconnects(self) -> int:
        return self._resumer.log.reconnects

    @property
    def connection(self) -> Any:
        """The WebSocket connection in use now (a new one after each resume)."""
        return self._ws

    def _exchange(self, frame: bytes | str) -> dict[str, Any]:
        try:
            self._ws.send(frame)
            return self._resumer.answer(self._ws)
        except Exception as exc:
            if isinstance(exc, ConnectionClosed) and not is_drop(exc):
                raise self._closed_error(exc) from None
            if not is_drop(exc):
                raise
        self._ws, answer = self._resumer.recover(self._ws, frame)
        assert answer is not None
        return answer

    def step(self, x: Any) -> Any:
        frame = self._encode(x)
        doc = self._exchange(frame)
        self._resumer.log.answered(frame)
        return self._decode(doc)

    def reset(self) -> None:
        self._exchange('{"reset": true}')
        self._resumer.log.reset()

    def close(self) -> None:
        self._ws.close()


class AsyncResumableStream:
    """:class:`ResumableStream` for asyncio: ``await step(x)``; ``_open()`` before the first step."""

    def __init__(
        self, resumer: AsyncResumer, encode: Callable[[Any], bytes | str], decode: Callable[[dict], Any],
        closed: Callable[[ConnectionClosed], Exception],
    ) -> None:  # fmt: skip
        self._resumer = resumer
        self._encode, self._decode, self._closed_error = encode, decode, closed
        self._ws: Any = None
        self.hello: dict[str, Any] = {}

    @property
    def reconnects(self) -> int:
        return self._resumer.log.reconnects

    @property
    def connection(self) -> Any:
        """The WebSocket connection in use now (a new one after each resume)."""
        return self._ws

    async def _open(self) -> None:
        self._ws, _ = await self._resumer.recover(None, None)
        self.hello = self._resumer.hello

    async def _exchange(self, frame: bytes | str) -> dict[str, Any]:
        try:
            await self._ws.send(frame)
            return await self._resumer.answer(self._ws)
        except Exception as exc:
            if isinstance(exc, ConnectionClosed) and not is_drop(exc):
                raise self._closed_error(exc) from None
            if not is_drop(exc):
                raise
        self._ws, answer = await self._resumer.recover(self._ws, frame)
        assert answer is not None
        return answer

    async def step(self, x: Any) -> Any:
        frame = self._encode(x)
        doc = await self._exchange(frame)
        self._resumer.log.answered(frame)
        return self._decode(doc)

    async def reset(self) -> None:
        await self._exchange('{"reset": true}')
        self._resumer.log.reset()

    async def close(self) -> None:
        await self._ws.close()


def _quiet_close(ws: Any) -> None:
    if ws is not None:
        try:
            ws.close()
        except Exception:  # already broken: nothing to close
            log.debug("closing a dropped connection failed", exc_info=True)


async def _aquiet_close(ws: Any) -> None:
    if ws is not None:
        try:
            await ws.close()
        except Exception:
            log.debug("closing a dropped connection failed", exc_info=True)
