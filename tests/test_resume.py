"""Resumable streams: snapshots are signed, bound to the model and checked; a stream resumed from a
snapshot (on another app, as on another replica) answers exactly as an uninterrupted one, for every kind;
a drain sends the snapshot and then closes 1001; without a secret resuming is off and says so."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_server_support import served, settings

from psn_runtime.errors import BadSnapshot
from psn_runtime.manifest import NeuronKind
from psn_runtime.snapshot import (
    ArrayLayout,
    SnapshotSpec,
    StreamState,
    decode,
    encode,
    pack,
    secret_key,
    unpack,
)
from server.app import build_app
from server.routes_stream import close_all
from server.state import app_state

SECRET = "a-secret-the-replicas-share"
KEY = secret_key(SECRET)
KINDS = [k for k in NeuronKind if k in served().by_kind]


# -- snapshot format ---------------------------------------------------------------------------------------
def _spec(max_t: int = 10) -> SnapshotSpec:
    layouts = (ArrayLayout("state_0", "float32", (3, 4)), ArrayLayout("t", "int64", ()))
    return SnapshotSpec("m", "ab" * 32, 3, layouts, max_t)


def _state(t: int = 4, fill: float = 0.5) -> StreamState:
    arrays = (np.arange(12, dtype=np.float32).reshape(3, 4) * fill, np.array(t, np.int64))
    return StreamState(t, t, np.array([0.1, -2.0, 1e-300]), arrays)


def test_pack_unpack_round_trip_is_exact() -> None:
    spec, state = _spec(), _state()
    blob = pack(spec, state, KEY)
    assert len(blob) <= spec.size
    got = unpack(spec, decode(encode(blob), 4096), KEY, 4096)
    assert (got.t, got.count) == (4, 4)
    assert got.sums.dtype == np.float64 and got.sums.tobytes() == state.sums.tobytes()
    for a, b in zip(got.arrays, state.arrays, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("where", [0, 5, 40, -40, -1])
def test_a_flipped_byte_anywhere_is_refused(where: int) -> None:
    blob = bytearray(pack(_spec(), _state(), KEY))
    blob[where] ^= 0x01
    with pytest.raises(BadSnapshot, match="signature"):
        unpack(_spec(), bytes(blob), KEY, 4096)


def test_wrong_secret_model_version_size_and_range_are_refused() -> None:
    spec, blob = _spec(), pack(_spec(), _state(), KEY)
    with pytest.raises(BadSnapshot, match="signature"):
        unpack(spec, blob, secret_key("another-secret-of-16+"), 4096)
    other_model = SnapshotSpec("m2", spec.graph_sha256, spec.classes, spec.arrays, spec.max_t)
    with pytest.raises(BadSnapshot, match="model 'm'"):
        unpack(other_model, blob, KEY, 4096)
    new_version = SnapshotSpec("m", "cd" * 32, spec.classes, spec.arrays, spec.max_t)
    with pytest.raises(BadSnapshot, match="another version"):
        unpack(new_version, blob, KEY, 4096)
    other_shape = SnapshotSpec("m", spec.graph_sha256, 3, (ArrayLayout("state_0", "float32", (4, 3)),), 10)
    with pytest.raises(BadSnapshot, match="do not match"):
        unpack(other_shape, blob, KEY, 4096)
    with pytest.raises(BadSnapshot, match="over the limit"):
        unpack(spec, blob, KEY, len(blob) - 1)
    with pytest.raises(BadSnapshot, match="out of range"):
        unpack(_spec(max_t=3), blob, KEY, 4096)  # t=4 > the model's 3 steps
    with pytest.raises(BadSnapshot, match="too short"):
        unpack(spec, b"PSNS", KEY, 4096)
    with pytest.raises(BadSnapshot, match="base64"):
        decode("not base64!", 4096)
    with pytest.raises(BadSnapshot, match="over the limit"):
        decode("A" * 8000, 4096)
    with pytest.raises(ValueError, match="16 bytes"):
        secret_key("short")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_even_when_signed(bad: float) -> None:
    state = _state()
    arrays = (state.arrays[0].copy(), state.arrays[1])
    arrays[0][1, 2] = bad
    with pytest.raises(BadSnapshot, match="state_0 holds NaN or Inf"):
        unpack(_spec(), pack(_spec(), StreamState(4, 4, state.sums, arrays), KEY), KEY, 4096)
    sums = state.sums.copy()
    sums[0] = bad
    with pytest.raises(BadSnapshot, match="sums holds NaN or Inf"):
        unpack(_spec(), pack(_spec(), StreamState(4, 4, sums, state.arrays), KEY), KEY, 4096)


# -- over the WebSocket ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps on the same models and secret, as two replicas."""
    s = settings(stream_secret=SECRET)
    with TestClient(build_app(s)) as a, TestClient(build_app(s)) as b:
        yield a, b


def _path(kind: NeuronKind, query: str = "logits=true") -> str:
    return f"/v1/models/{served().name(kind)}/stream?{query}"


def _inputs(kind: NeuronKind, steps: int, seed: int = 1) -> np.ndarray:
    m = served().manifest(kind)
    return np.random.default_rng(seed).standard_normal((steps, m.features)).astype(np.float32)  # [steps, F]


def _steps(kind: NeuronKind) -> int:
    m = served().manifest(kind)
    return m.T if (m.max_steps is not None or not m.streams) else m.T + 9  # sliding/LIF run past T


def _step(ws, x: np.ndarray) -> dict:
    ws.send_bytes(x.astype("<f4").tobytes())
    return ws.receive_json()


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_resumed_stream_answers_exactly_as_an_uninterrupted_one(
    replicas: tuple[TestClient, TestClient], kind: NeuronKind
) -> None:
    a, b = replicas
    xs = _inputs(kind, _steps(kind))
    with a.websocket_connect(_path(kind)) as ws:
        hello = ws.receive_json()
        assert hello["resumable"] is True and hello["snapshot_every"] == 0
        reference = [_step(ws, x) for x in xs]
    cut = len(xs) // 2 + 1
    with a.websocket_connect(_path(kind)) as ws:
        ws.receive_json()
        first = [_step(ws, x) for x in xs[:cut]]
        ws.send_json({"snapshot": True})
        snap = ws.receive_json()
        assert snap["t"] == cut and isinstance(snap["snapshot"], str)
    with b.websocket_connect(_path(kind)) as ws:  # another replica
        ws.receive_json()
        ws.send_json({"resume": snap["snapshot"]})
        assert ws.receive_json() == {"resumed": True, "t": cut, "version": served().manifest(kind).version}
        rest = [_step(ws, x) for x in xs[cut:]]
    got = first + rest
    assert [g["t"] for g in got] == list(range(len(xs)))
    assert got == reference  # labels, probabilities and logits: the same bits (JSON floats round-trip)


@pytest.mark.parametrize("kind", [k for k in KINDS if k is not NeuronKind.PSN], ids=str)
def test_periodic_snapshots_and_resume_in_the_middle_of_a_batch(
    replicas: tuple[TestClient, TestClient], kind: NeuronKind
) -> None:
    """Snapshots every 3 steps; a resume from the second one while other streams step beside it."""
    a, b = replicas
    xs = _inputs(kind, _steps(kind), seed=2)
    snaps: list[dict] = []
    answers: list[dict] = []
    with a.websocket_connect(_path(kind, "logits=true&snapshot_every=3")) as ws:
        assert ws.receive_json()["snapshot_every"] == 3
        for x in xs:
            answers.append(_step(ws, x))
            if (answers[-1]["t"] + 1) % 3 == 0 and not answers[-1]["done"]:
                snaps.append(ws.receive_json())
    assert [s["t"] for s in snaps] == [3 * (i + 1) for i in range(len(snaps))]
    snap = snaps[1]
    with b.websocket_connect(_path(kind)) as ws, b.websocket_connect(_path(kind)) as other:
        ws.receive_json()
        other.receive_json()
        ws.send_json({"resume": snap["snapshot"]})
        assert ws.receive_json()["t"] == snap["t"]
        for i, x in enumerate(xs[snap["t"] :]):
            other.send_bytes(xs[i].astype("<f4").tobytes())  # a neighbour in the same batches
            assert _step(ws, x) == answers[snap["t"] + i]
            other.receive_json()


def test_bad_snapshots_get_error_events_and_the_stream_goes_on(
    replicas: tuple[TestClient, TestClient],
) -> None:
    a, _ = replicas
    sliding, masked = NeuronKind.SLIDING_PSN, NeuronKind.MASKED_PSN
    with a.websocket_connect(_path(masked)) as ws:
        ws.receive_json()
        _step(ws, _inputs(masked, 1)[0])
        ws.send_json({"snapshot": True})
        masked_snap = ws.receive_json()["snapshot"]
    with a.websocket_connect(_path(sliding)) as ws:
        ws.receive_json()
        raw = bytearray(base64.b64decode(masked_snap))
        cases = [
            (masked_snap, "bad_snapshot", "of model"),  # another model's snapshot
            (encode(bytes(raw[:-1]) + bytes([raw[-1] ^ 1])), "bad_snapshot", "signature"),
            ("%%%", "bad_snapshot", "base64"),
            (12, "bad_snapshot", "base64 string"),
        ]
        for snapshot, code, words in cases:
            ws.send_json({"resume": snapshot})
            error = ws.receive_json()["error"]
            assert error["code"] == code and words in error["message"], error
        ws.send_json({"snapshot": True, "x": [0.0]})
        assert ws.receive_json()["error"]["code"] == "invalid_request"
        answer = _step(ws, _inputs(sliding, 1)[0])
        assert answer["t"] == 0  # the refused snapshots did not touch the stream


def test_without_a_secret_resuming_is_off_and_says_so() -> None:
    kind = NeuronKind.SLIDING_PSN
    with TestClient(build_app(settings())) as c, c.websocket_connect(_path(kind, "snapshot_every=2")) as ws:
        hello = ws.receive_json()
        assert hello["resumable"] is False and hello["snapshot_every"] == 0
        assert "PSN_STREAM_SECRET" in hello["resumable_reason"]
        for message in ({"snapshot": True}, {"resume": "AAAA"}):
            ws.send_json(message)
            error = ws.receive_json()["error"]
            assert error["code"] == "resume_disabled" and "stream secret" in error["message"]
        assert [_step(ws, x)["t"] for x in _inputs(kind, 3)] == [0, 1, 2]  # no snapshot messages


def test_a_snapshot_limit_below_the_model_turns_resuming_off() -> None:
    kind = NeuronKind.SLIDING_PSN
    with (
        TestClient(build_app(settings(stream_secret=SECRET, max_snapshot_bytes=1024))) as c,
        c.websocket_connect(_path(kind)) as ws,
    ):
        hello = ws.receive_json()
        assert hello["resumable"] is False and "max-snapshot-bytes" in hello["resumable_reason"]


@pytest.mark.parametrize("kind", [k for k in KINDS if k is not NeuronKind.PSN], ids=str)
def test_drain_sends_the_snapshot_then_closes_1001(
    replicas: tuple[TestClient, TestClient], kind: NeuronKind
) -> None:
    s = settings(stream_secret=SECRET)
    xs = _inputs(kind, _steps(kind), seed=3)
    _, b = replicas
    with b.websocket_connect(_path(kind)) as ws:
        ws.receive_json()
        reference = [_step(ws, x) for x in xs]
    cut = 4
    with TestClient(build_app(s)) as c, c.websocket_connect(_path(kind)) as ws:
        ws.receive_json()
        first = [_step(ws, x) for x in xs[:cut]]
        closed = c.portal.call(close_all, app_state(c.app))
        assert closed == 1
        snap = ws.receive_json()
        assert snap["t"] == cut
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1001
    with b.websocket_connect(_path(kind)) as ws:
        ws.receive_json()
        ws.send_json({"resume": snap["snapshot"]})
        assert ws.receive_json()["t"] == cut
        assert first + [_step(ws, x) for x in xs[cut:]] == reference


def test_stream_secret_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        settings(stream_secret="short")
    env = settings(stream_secret=SECRET).env()
    assert env["PSN_STREAM_SECRET"] == SECRET
    assert json.dumps(settings(stream_secret=SECRET).model_dump(mode="json")).count(SECRET) == 0


def test_snapshot_of_a_stream_waits_for_its_pending_step() -> None:
    """stream_state taken while a step is in flight is the state after that step (never half of it)."""
    kind = NeuronKind.SLIDING_PSN
    name = served().name(kind)

    async def run() -> tuple[int, int]:
        from psn_runtime import Runtime, RuntimeConfig

        rt = Runtime(RuntimeConfig(models_dir=served().models_dir, providers=["CPUExecutionProvider"]))
        await rt.start()
        try:
            sid = await rt.open_stream(name)
            x = _inputs(kind, 1)[0]
            step = asyncio.ensure_future(rt.step(sid, x))
            await asyncio.sleep(0)
            state = await rt.stream_state(sid)
            await step
            return state.t, state.count
        finally:
            await rt.close()

    assert asyncio.run(run()) == (1, 1)
