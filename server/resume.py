"""Resumable streams on the WebSocket route: signed snapshots out, snapshots back in.

The stream route calls these; the runtime exports and restores a stream's state, psn_runtime.snapshot
packs, signs and checks it. Resuming needs a secret the replicas share (``--stream-secret`` /
``PSN_STREAM_SECRET``); without one the hello says ``"resumable": false`` and why.

Protocol (client -> server, text frames):
  * ``{"snapshot": true}``: answered ``{"snapshot": "<base64>", "t": n}`` (n steps taken);
  * ``{"resume": "<base64>"}``: the stream takes the snapshot's state, answered
    ``{"resumed": true, "t": n, "version": v}``; the client then replays the inputs it sent from step n on.
    The snapshot names the model version that made it: the stream moves to that version when this replica
    has it ready (a stream opened on version 2 resumes a version-1 snapshot on version 1), else the answer
    is a ``version_unavailable`` error event (another replica may have it);
  * ``?snapshot_every=S`` on the URL: a snapshot message after every S-th step's answer;
  * on drain (SIGTERM): the answer in flight, then a snapshot message, then close 1001.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket

from psn_runtime import Runtime
from psn_runtime.errors import BadSnapshot
from psn_runtime.snapshot import (
    SnapshotOrigin,
    SnapshotSpec,
    decode,
    encode,
    origin,
    pack,
    secret_key,
    unpack,
)
from server.errors import InvalidRequest, ResumeDisabled
from server.jsonio import dumps_text
from server.settings import Settings

MAX_SNAPSHOT_EVERY = 1_000_000
_B64_OVERHEAD = 64  # the JSON around a base64 snapshot in a resume message


def snapshot_every(websocket: WebSocket) -> int:
    """The ``snapshot_every`` query parameter: 0 (default) = only on request and on drain."""
    raw = websocket.query_params.get("snapshot_every")
    if raw is None:
        return 0
    if not raw.isdigit() or int(raw) > MAX_SNAPSHOT_EVERY:
        raise InvalidRequest(
            f"query parameter snapshot_every: expected 0..{MAX_SNAPSHOT_EVERY}, got {raw!r}", "snapshot_every"
        )
    return int(raw)


def _off_reason(settings: Settings, spec: SnapshotSpec) -> str | None:
    if settings.stream_secret is None:
        return "resuming is off: the server has no stream secret (--stream-secret / PSN_STREAM_SECRET)"
    size = spec.size
    if size > settings.max_snapshot_bytes:
        return f"resuming is off: this model's snapshots ({size} bytes) are over --max-snapshot-bytes"
    if (size + 2) // 3 * 4 + _B64_OVERHEAD > settings.max_ws_message_bytes:
        return f"resuming is off: this model's snapshots ({size} bytes) do not fit --max-ws-message-bytes"
    return None


@dataclass
class StreamResume:
    """One socket's share of resuming: its stream, the model's snapshot spec and the secret."""

    runtime: Runtime
    stream_id: str
    spec: SnapshotSpec
    every: int
    max_bytes: int
    key: bytes | None
    off_reason: str | None

    @classmethod
    def open(
        cls, runtime: Runtime, settings: Settings, name: str, stream_id: str, every: int
    ) -> StreamResume:
        spec = runtime.stream_snapshot_spec(stream_id)  # the version the stream is on
        off = _off_reason(settings, spec)
        key = None
        if off is None and settings.stream_secret is not None:
            key = secret_key(settings.stream_secret.get_secret_value())
        return cls(
            runtime, stream_id, spec, every if off is None else 0, settings.max_snapshot_bytes, key, off
        )

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def hello(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"resumable": self.enabled, "snapshot_every": self.every}
        if self.off_reason is not None:
            fields["resumable_reason"] = self.off_reason
        return fields

    def due(self, t: int) -> bool:
        """After answering step t: is a periodic snapshot due?"""
        return self.every > 0 and (t + 1) % self.every == 0

    def _key(self) -> bytes:
        if self.key is None:
            raise ResumeDisabled(self.off_reason or "resuming is off")
        return self.key

    async def snapshot(self) -> tuple[str, int]:
        """(the stream's state as a signed snapshot, base64; the steps it has taken)."""
        key = self._key()
        state = await self.runtime.stream_state(self.stream_id)
        return encode(pack(self.spec, state, key)), state.t

    async def snapshot_message(self) -> str:
        snapshot, t = await self.snapshot()
        return dumps_text({"snapshot": snapshot, "t": t})

    async def resume(self, snapshot: str) -> int:
        """The stream takes the snapshot's state, on the model version that made it (``spec.version`` says
        which); returns its step count (the client replays from there)."""
        key = self._key()
        blob = decode(snapshot, self.max_bytes)
        made_by = origin(blob, key, self.max_bytes)  # size and signature checked first
        if made_by.model == self.spec.model and not self._same_version(made_by):
            await self._move(made_by)
        state = unpack(self.spec, blob, key, self.max_bytes)
        await self.runtime.restore_stream(self.stream_id, state)
        return state.t

    def _same_version(self, made_by: SnapshotOrigin) -> bool:
        if made_by.version is not None:
            return made_by.version == self.spec.version
        return made_by.graph_sha256 == self.spec.graph_sha256  # a snapshot from before versions

    async def _move(self, made_by: SnapshotOrigin) -> None:
        """Put the stream on the version that made the snapshot (VersionUnavailable when this replica does
        not have it ready; BadSnapshot when its steps do not take the shape the stream was opened for)."""
        version = self.runtime.snapshot_version(made_by)
        here = self.runtime.stream_info(self.stream_id).manifest
        there = self.runtime.model(made_by.model, version).manifest
        assert here is not None and there is not None  # both READY
        if tuple(there.input_shape) != tuple(here.input_shape) or there.labels != here.labels:
            raise BadSnapshot(
                f"the snapshot's version {version} of model {made_by.model!r} takes steps of shape "
                f"{list(there.input_shape)} and labels {there.labels}, this stream's version "
                f"{self.spec.version}: {list(here.input_shape)}, {here.labels}; open the stream with "
                f"?version={version}"
            )
        await self.runtime.move_stream(self.stream_id, version)
        self.spec = self.runtime.stream_snapshot_spec(self.stream_id)

    async def control(self, doc: dict[str, Any]) -> str:
        """Answer a ``{"snapshot": true}`` or ``{"resume": "..."}`` message."""
        if len(doc) != 1:
            raise InvalidRequest('send {"snapshot": true} or {"resume": "<snapshot>"} alone', next(iter(doc)))
        if "snapshot" in doc:
            if doc["snapshot"] is not True:
                raise InvalidRequest('snapshot: send exactly {"snapshot": true}', "snapshot")
            return await self.snapshot_message()
        t = await self.resume(doc["resume"])
        return dumps_text({"resumed": True, "t": t, "version": self.spec.version})
