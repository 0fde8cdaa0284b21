"""Stream snapshots: one stream's whole state as a signed, self-describing byte string.

A resumable stream works like a database recovering from a checkpoint and its log: the server hands the
client a snapshot of the stream's state; the client keeps the inputs it sent since; on a new connection
(to any replica that shares the secret) it sends the snapshot back and replays those inputs. The step
graph is a pure function of (state, x), so the replayed answers are the ones the lost replica would
have given.

Layout (all little-endian)::

    b"PSNS"  u8 version  u32 header length  header (JSON, UTF-8)  payload  HMAC-SHA256 (32 bytes)

The header names the model, its version, the sha256 of the graph whose state this is (step.onnx; full.onnx
for a full-only model, whose state is its input buffer), t (steps taken), count (step logits summed) and
the arrays, in order, with dtype and per-sample shape. (Snapshots made before versions existed have no
version: their sha256 alone names the graph.) The payload is the running logit sum (float64 [C])
followed by each array's raw bytes. The HMAC covers everything before it, under a secret the replicas
share: a snapshot is checked (size, then signature, then everything else) before any of it is used.

No per-kind code: the arrays are the step graph's states from the manifest (see streams.ModelStreams).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

import numpy as np

from psn_runtime.errors import BadSnapshot

MAGIC = b"PSNS"
VERSION = 1
MAC_BYTES = 32
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
_SUMS = np.dtype("<f8")
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class ArrayLayout:
    name: str
    dtype: str  # "float32" | "int64"
    shape: tuple[int, ...]  # per sample

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class SnapshotSpec:
    """What a snapshot of one model's stream must look like."""

    model: str
    graph_sha256: str
    classes: int
    arrays: tuple[ArrayLayout, ...]
    max_t: int  # most steps a stream of this model may have taken
    version: str = ""  # the model version (its graph's sha256 says which files)

    @property
    def size(self) -> int:
        """Bytes of a packed snapshot of this model (header length varies a little with t)."""
        header = len(self._header(self.max_t, self.max_t))
        return _PREFIX.size + header + self.classes * _SUMS.itemsize + self.payload_bytes + MAC_BYTES

    @property
    def payload_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def _header(self, t: int, count: int) -> bytes:
        doc = {
            "model": self.model,
            "version": self.version,
            "sha256": self.graph_sha256,
            "t": t,
            "count": count,
            "classes": self.classes,
            "arrays": [[a.name, a.dtype, list(a.shape)] for a in self.arrays],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class StreamState:
    """One stream's state: ``arrays`` in the spec's order, each [*shape] (no batch axis)."""

    t: int
    count: int
    sums: np.ndarray  # [C] float64 running sum of step logits
    arrays: tuple[np.ndarray, ...]


def secret_key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"a stream secret must be at least {MIN_SECRET_BYTES} bytes, got {len(key)}")
    return key


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def pack(spec: SnapshotSpec, state: StreamState, key: bytes) -> bytes:
    """The signed snapshot of ``state`` (a stream of ``spec``'s model)."""
    if len(state.arrays) != len(spec.arrays):
        raise ValueError(f"{len(state.arrays)} arrays for a spec of {len(spec.arrays)}")
    header = spec._header(state.t, state.count)
    parts = [_PREFIX.pack(MAGIC, VERSION, len(header)), header, np.asarray(state.sums, _SUMS).tobytes()]
    for layout, arr in zip(spec.arrays, state.arrays, strict=True):
        if tuple(arr.shape) != layout.shape:
            raise ValueError(f"array {layout.name}: shape {arr.shape}, expected {layout.shape}")
        parts.append(np.ascontiguousarray(arr, _DTYPES[layout.dtype]).tobytes())
    body = b"".join(parts)
    return body + _mac(key, body)


@dataclass(frozen=True)
class SnapshotOrigin:
    """What made a snapshot: the model, its version (None in a snapshot made before versions existed) and
    the sha256 of the graph."""

    model: str
    version: str | None
    graph_sha256: str


def _open(blob: bytes, key: bytes, max_bytes: int) -> tuple[bytes, dict, int]:
    """(body, header, payload offset) of a snapshot whose size and signature check."""
    if len(blob) > max_bytes:
        raise BadSnapshot(f"snapshot of {len(blob)} bytes is over the limit of {max_bytes}")
    if len(blob) < _PREFIX.size + MAC_BYTES:
        raise BadSnapshot(f"snapshot of {len(blob)} bytes is too short")
    body, mac = blob[:-MAC_BYTES], blob[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise BadSnapshot("snapshot signature does not match: tampered with, or signed with another secret")
    magic, version, header_len = _PREFIX.unpack_from(body)
    if magic != MAGIC or version != VERSION:
        raise BadSnapshot(f"not a version {VERSION} stream snapshot")
    start = _PREFIX.size + header_len
    try:
        header = json.loads(body[_PREFIX.size : start])
        if not isinstance(header, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        raise BadSnapshot(f"snapshot header is unreadable: {exc}") from None
    return body, header, start


def origin(blob: bytes, key: bytes, max_bytes: int) -> SnapshotOrigin:
    """Which model, version and graph made ``blob`` (its size and signature checked first)."""
    _, header, _ = _open(blob, key, max_bytes)
    model, version, sha = header.get("model"), header.get("version"), header.get("sha256")
    if not isinstance(model, str) or not isinstance(sha, str) or not isinstance(version, str | None):
        raise BadSnapshot("snapshot header is unreadable: no model, version or sha256")
    return SnapshotOrigin(model, version, sha)


def unpack(spec: SnapshotSpec, blob: bytes, key: bytes, max_bytes: int) -> StreamState:
    """Check ``blob`` against ``spec`` and the secret and decode it; BadSnapshot names what is wrong."""
    body, header, start = _open(blob, key, max_bytes)
    try:
        model, sha, t, count = header["model"], header["sha256"], header["t"], header["count"]
        version = header.get("version")
        layouts = tuple(ArrayLayout(n, d, tuple(s)) for n, d, s in header["arrays"])
        classes = header["classes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadSnapshot(f"snapshot header is unreadable: {exc}") from None
    if model != spec.model:
        raise BadSnapshot(f"snapshot is of model {model!r}, not {spec.model!r}")
    if version is not None and version != spec.version:
        raise BadSnapshot(
            f"snapshot was made by version {version!r} of model {spec.model!r}, this stream is on version "
            f"{spec.version!r}"
        )
    if sha != spec.graph_sha256:
        raise BadSnapshot(
            f"snapshot was made by another version of model {spec.model!r} (graph sha256 {str(sha)[:12]}…, "
            f"served: {spec.graph_sha256[:12]}…)"
        )
    if layouts != spec.arrays or classes != spec.classes:
        raise BadSnapshot(f"snapshot's arrays do not match model {spec.model!r}'s stream state")
    if not (type(t) is int and type(count) is int and 0 <= count <= t <= spec.max_t):
        raise BadSnapshot(
            f"snapshot's t={t!r}, count={count!r} are out of range (0 <= count <= t <= {spec.max_t})"
        )
    expected = start + classes * _SUMS.itemsize + spec.payload_bytes
    if len(body) != expected:
        raise BadSnapshot(f"snapshot holds {len(body) - start} payload bytes, expected {expected - start}")
    sums = np.frombuffer(body, _SUMS, classes, start).copy()  # [C]
    offset = start + sums.nbytes
    arrays = []
    for layout in layouts:
        dtype = _DTYPES[layout.dtype]
        n = int(np.prod(layout.shape, dtype=np.int64))
        arrays.append(
            np.frombuffer(body, dtype, n, offset).reshape(layout.shape).astype(dtype.newbyteorder("="))
        )
        offset += layout.nbytes
    for name, arr in [("sums", sums), *((a.name, v) for a, v in zip(layouts, arrays, strict=True))]:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadSnapshot(f"snapshot array {name} holds NaN or Inf")
    return StreamState(t, count, sums, tuple(arrays))


def encode(blob: bytes) -> str:
    """A snapshot as text for a JSON message (standard base64)."""
    return base64.b64encode(blob).decode("ascii")


def decode(text: object, max_bytes: int) -> bytes:
    if not isinstance(text, str):
        raise BadSnapshot("snapshot: expected a base64 string")
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise BadSnapshot(f"snapshot of about {len(text) * 3 // 4} bytes is over the limit of {max_bytes}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadSnapshot("snapshot: not valid base64") from None
