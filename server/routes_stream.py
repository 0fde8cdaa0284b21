"""WebSocket streaming: one timestep per message, an answer after every step."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import Enum
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from psn_runtime import StepResult
from psn_runtime.validate import StepInput
from server import auth, resume
from server.dataplane import OpenStream
from server.errors import (
    WS_GOING_AWAY,
    WS_POLICY_VIOLATION,
    InvalidRequest,
    error_code,
    error_payload,
    is_internal,
    spec_for,
    ws_reason,
)
from server.jsonio import dumps_text, loads
from server.schemas import StepFrame, parse
from server.state import AppState, app_state

log = logging.getLogger("psn.server")
router = APIRouter()

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def _flag(websocket: WebSocket, name: str) -> bool:
    raw = websocket.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise InvalidRequest(f"query parameter {name}: expected true or false, got {raw!r}", name)


def _version(websocket: WebSocket) -> str | None:
    """The ``version`` query parameter: the model version to stream with (none: the highest ready)."""
    raw = websocket.query_params.get("version")
    if raw is not None and not raw:
        raise InvalidRequest("query parameter version: expected a model version, got ''", "version")
    return raw


WS_NOT_FOUND = 4404  # the close code of an unknown model (server.errors.ERROR_TABLE)
CLOSE_TIMEOUT_S = 5.0  # a client that does not read cannot hold a close (or an answer) longer than this
SHUTDOWN_REASON = "server shutting down"


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close unless the client is already gone (bounded: a client that never reads cannot block it)."""
    if websocket.application_state is not WebSocketState.CONNECTED:
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await websocket.close(code, reason)


async def close_all(state: AppState, code: int = WS_GOING_AWAY, reason: str = SHUTDOWN_REASON) -> int:
    """Refuse new streams and close every open one with ``code`` (shutdown: 1001 going away). Each
    session then ends its stream. Returns how many sockets were closed."""
    state.draining = True
    sockets = list(state.sockets)
    await asyncio.gather(*(_drain(ws, code, reason) for ws in sockets))
    return len(sockets)


async def _drain(websocket: WebSocket, code: int, reason: str) -> None:
    """Close one stream socket; a resumable one first gets its answer in flight, then its snapshot."""
    session = getattr(websocket.state, "psn_session", None)
    if session is not None and session.resume is not None and session.resume.enabled:
        with contextlib.suppress(Exception):  # a socket that cannot take its snapshot is closed anyway
            async with asyncio.timeout(CLOSE_TIMEOUT_S), session.busy:
                if websocket.application_state is WebSocketState.CONNECTED:
                    await websocket.send_text(await session.resume.snapshot_message())
    await _close(websocket, code, reason)


def _answer(result: StepResult, with_logits: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "t": result.t,
        "ready": result.ready,
        "label": result.label,
        "probabilities": result.probabilities,
        "done": result.done,
    }
    if with_logits:
        answer["logits"] = result.logits
    return answer


class _Phase(Enum):
    RECEIVE = "receive"  # waiting for the client's next message: the idle timeout
    SEND = "send"  # answering: a client that stopped reading is dropped


class _Watchdog:
    """One timer per socket instead of an ``asyncio.timeout`` around every receive and send: ``arm`` only
    moves a deadline; the timer, when it fires, re-arms itself for the current deadline, or cancels the
    session's task once the deadline of the phase it is in has passed (``fired`` says which)."""

    def __init__(self, task: asyncio.Task) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = task
        self.phase: _Phase | None = None
        self.deadline = 0.0
        self.fired: _Phase | None = None
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, phase: _Phase, seconds: float) -> None:
        self.phase = phase
        self.deadline = deadline = self.loop.time() + seconds
        handle = self._handle
        if handle is None or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._handle = self.loop.call_at(deadline, self._check)

    def disarm(self) -> None:
        self.phase = None

    def _check(self) -> None:
        self._handle = None
        if self.phase is None or self.fired is not None:
            return  # nothing watched now: the next arm starts the timer again
        if self.loop.time() >= self.deadline:
            self.fired = self.phase
            self.task.cancel()
        else:
            self._handle = self.loop.call_at(self.deadline, self._check)

    def stop(self) -> None:
        self.phase = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _Session:
    """One socket: parses frames, steps its stream through the data plane, answers. Errors that leave the
    stream usable become error events; the others close the socket (``server.errors.ERROR_TABLE``)."""

    def __init__(self, websocket: WebSocket, state: AppState, name: str, logits: bool):
        self.ws = websocket
        self.state = state
        self.plane = state.plane
        self.name = name
        self.logits = logits
        self.stream: OpenStream | None = None
        self.resume: resume.StreamResume | None = None
        self.busy = asyncio.Lock()  # held from a message's arrival to its answer (a drain waits for it)

    async def open(self) -> dict[str, Any]:
        every = resume.snapshot_every(self.ws)
        version = _version(self.ws)
        self.stream = stream = await self.plane.open_stream(self.name, version)
        self.resume = resume.StreamResume.open(
            self.plane.runtime, self.state.settings, self.name, stream.id, every
        )
        manifest = stream.manifest
        return {
            "model": self.name,
            "version": stream.inputs.version,
            "kind": str(manifest.kind),
            "T": manifest.T,
            "k": manifest.k,
            "features": manifest.features,
            "input_shape": list(manifest.input_shape),
            "labels": manifest.labels,
            "streams": manifest.streams,
            "max_steps": stream.max_steps,
            "provider": stream.inputs.provider,
            "binary": f"{manifest.features} little-endian float32 per frame ({4 * manifest.features} bytes), "
            f"C order over the per-step shape {list(manifest.input_shape)}",
            "json": f'{{"x": [...]}}: {manifest.features} numbers (flat, C order) or nested as '
            f"{list(manifest.input_shape)}",
            **self.resume.hello(),
        }

    def parse(self, message: dict[str, Any]) -> tuple[StepInput | dict | None, bool]:
        """A frame -> (one checked timestep, logits wanted); the step is None for a reset, the message
        for a snapshot or resume request (server.resume answers it). The stream's input builder checks
        the frame's length and values."""
        stream = self.stream
        assert stream is not None
        inputs = stream.inputs
        data = message.get("bytes")
        if data is not None:
            return inputs.step_bytes(data), self.logits  # [*shape]
        text = message.get("text") or ""
        inputs.check_message(len(text), "characters")
        doc = loads(text)
        if isinstance(doc, dict) and "reset" in doc:
            if doc.get("reset") is not True or len(doc) != 1:
                raise InvalidRequest('reset: send exactly {"reset": true}', "reset")
            return None, False
        if isinstance(doc, dict) and ("snapshot" in doc or "resume" in doc):
            return doc, False
        frame = parse(StepFrame, doc, 'a text frame: {"x": [...]} or {"reset": true},')
        logits = self.logits if frame.logits is None else frame.logits
        return inputs.step_json(frame.x, "x", raw=text), logits  # [*shape]

    async def run(self) -> None:
        idle = self.state.settings.idle_timeout_s
        task = asyncio.current_task()
        assert task is not None
        watch = _Watchdog(task)
        try:
            await self._answer_messages(watch, idle, max(idle, CLOSE_TIMEOUT_S))
        except asyncio.CancelledError:
            if watch.fired is None or task.uncancel() > 0:
                raise  # not the watchdog's: shutdown
            if watch.fired is _Phase.RECEIVE:
                await _close(self.ws, WS_GOING_AWAY, f"idle for {idle:g} s")
            # _Phase.SEND: a client that stopped reading is dropped
        finally:
            watch.stop()

    async def _answer_messages(self, watch: _Watchdog, idle: float, send_timeout: float) -> None:
        """Receive, step and answer until the client leaves (or an error closes the socket)."""
        receive, send_text = self.ws.receive, self.ws.send_text
        plane = self.plane
        stream = self.stream
        assert stream is not None
        resumer = self.resume
        assert resumer is not None
        while True:
            watch.arm(_Phase.RECEIVE, idle)
            message = await receive()
            watch.disarm()
            if message["type"] == "websocket.disconnect":
                return
            async with self.busy:
                try:
                    x, with_logits = self.parse(message)
                    if x is None:
                        plane.reset(stream)
                        watch.arm(_Phase.SEND, send_timeout)
                        await send_text('{"reset":true,"t":-1}')
                        continue
                    if type(x) is dict:  # {"snapshot": true} or {"resume": ...}
                        text = await resumer.control(x)
                        if resumer.spec.version != stream.inputs.version:  # resumed on the snapshot's
                            stream = self.stream = plane.moved(stream, resumer.spec.version)
                        watch.arm(_Phase.SEND, send_timeout)
                        await send_text(text)
                        continue
                    result = await plane.step(stream, x)
                    text = dumps_text(_answer(result, with_logits))
                    watch.arm(_Phase.SEND, send_timeout)
                    await send_text(text)
                    if resumer.every and resumer.due(result.t) and not result.done:
                        await send_text(await resumer.snapshot_message())
                except WebSocketDisconnect:
                    return
                except Exception as exc:
                    watch.disarm()
                    if self.ws.application_state is not WebSocketState.CONNECTED:
                        return  # closed under us (server shutdown): nothing to answer
                    try:
                        if not await self.fail(exc):
                            return
                    except (WebSocketDisconnect, RuntimeError):  # the client left while we answered
                        return

    async def fail(self, exc: Exception) -> bool:
        """Answer an error: an error event (True: keep reading) or a close with a code (False)."""
        spec = spec_for(exc)
        self.state.metrics.count_error(error_code(exc), "ws")
        if is_internal(exc):
            stream_id = self.stream.id if self.stream is not None else None
            log.error("internal error on stream %s of %s", stream_id, self.name, exc_info=exc)
        if spec.ws_close is None:
            await self.ws.send_text(dumps_text(error_payload(exc)))
            return True
        await _close(self.ws, spec.ws_close, ws_reason(exc))
        return False


@router.websocket("/v1/models/{name}/stream")
async def stream(websocket: WebSocket, name: str) -> None:
    """Stream one timestep per message; get an answer after every step.

    Connect: ``ws://HOST/v1/models/{name}/stream`` (``?logits=true`` adds the running mean logits to every
    answer; ``?version=V`` streams with version V of the model, else the highest ready one: the stream stays
    on it until it ends; ``?api_key=KEY`` when the server needs a key and the client cannot send headers).

    Server -> client, first message (hello)::

        {"model", "version", "kind", "T", "k", "features", "input_shape", "labels", "streams", "max_steps",
         "provider", "binary", "json"}

    Client -> server, one timestep per message, either
      * a binary frame of ``features`` = prod(input_shape) little-endian float32 (C order), or
      * a text frame ``{"x": [...]}``: ``features`` numbers (flat, C order) or nested as ``input_shape``
        (for every per-step shape), optionally with ``"logits": true``;
      * ``{"reset": true}`` starts a new sequence on the same socket (answer ``{"reset": true, "t": -1}``);
      * ``{"snapshot": true}`` / ``{"resume": "<snapshot>"}``: resumable streams (server/resume.py).

    Server -> client, after every step::

        {"t": 0-based step index, "ready": bool, "label": str | null, "probabilities": [C] | null,
         "done": bool, "logits": [C] (when asked)}

    ``label`` and ``probabilities`` are the prediction from the mean logits of steps 0..t. A PSN (full-only)
    model answers ``ready: false`` (label null) for its first T-1 steps and gives the result at step T-1;
    masked and sliding PSN and LIF models answer every step. ``done: true`` means the stream takes no more
    steps (PSN and masked PSN after T steps, any model after ``max_steps``): send ``{"reset": true}``.

    Errors: a recoverable one (bad frame: wrong size, NaN/Inf, not a number, malformed JSON; a step after
    ``done``; server overloaded, retry the step) is answered with ``{"error": {"code", "message", "param"?}}``
    and the socket, with the stream's state untouched, stays open. Otherwise the server closes the socket with
    a code and a reason: 4404 unknown model, 1008 missing/invalid API key, 1009 message too big,
    1013 model not ready or too many streams (retry later), 4410 stream closed by the server (idle),
    1001 idle socket or server shutting down (the reason says which), 1012 runtime closed, 1011 internal
    error. One socket's errors never touch
    another's stream.
    """
    state = app_state(websocket.app)
    await websocket.accept()
    if state.draining:
        await _close(websocket, WS_GOING_AWAY, SHUTDOWN_REASON)
        return
    state.sockets.add(websocket)
    try:
        await serve_socket(websocket, state, name)
    finally:
        state.sockets.discard(websocket)


async def serve_socket(websocket: WebSocket, state: AppState, name: str) -> None:
    """One accepted socket's stream of model ``name``, from the key check and the hello to its close."""
    session = _Session(websocket, state, name, False)
    websocket.state.psn_session = session  # close_all drains it (snapshot, then 1001)
    try:
        auth.check_websocket(websocket)
        session.logits = _flag(websocket, "logits")
        hello = await session.open()
        await websocket.send_text(dumps_text(hello))
    except WebSocketDisconnect:
        if session.stream is not None:
            state.plane.close(session.stream)
        return
    except Exception as exc:
        spec = spec_for(exc)
        state.metrics.count_error(error_code(exc), "ws")
        if is_internal(exc):
            log.error("internal error opening a stream of %s", name, exc_info=exc)
        if session.stream is not None:
            state.plane.close(session.stream)
        # an error that is an event on an open stream closes the socket when there is no stream yet: a
        # version this server lacks like an unknown model (4404), anything else as a policy violation
        code = spec.ws_close or (WS_NOT_FOUND if spec.status == 404 else WS_POLICY_VIOLATION)
        await _close(websocket, code, ws_reason(exc))
        return
    try:
        await session.run()
    except WebSocketDisconnect:
        pass
    finally:
        assert session.stream is not None
        state.plane.close(session.stream)
