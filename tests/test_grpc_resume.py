"""Resumable sequences over gRPC, as resumable WebSocket streams: a sequence's snapshot on request (the
parameter ``snapshot``), a snapshot of every sequence a stream holds when the server drains (then
UNAVAILABLE), and ``sequence_start`` with ``resume`` on another replica, after which the sequences' answers
equal an uninterrupted WebSocket stream's, bit for bit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_grpc import assert_same_answer
from test_grpc_support import Live, live, params_of
from test_server_support import sequence, served, settings
from test_server_v2_sequence import ws_answers

from psn_runtime.manifest import NeuronKind
from server.app import build_app

SECRET = "grpc-resume-secret-0123456789"
SIDS = (31, "resumed-b")
CUT = 3  # steps before the drain


@pytest.fixture(scope="module")
def ws() -> Iterator[TestClient]:
    with TestClient(build_app(settings())) as c:
        yield c


def _drain(server: Live) -> None:
    asyncio.run_coroutine_threadsafe(server.state.grpc.drain(), server.state.loop).result(30)


@pytest.mark.parametrize("kind", [NeuronKind.SLIDING_PSN, NeuronKind.MASKED_PSN])
def test_a_drained_stream_resumes_on_another_replica(ws: TestClient, kind: NeuronKind) -> None:
    m = served().manifest(kind)
    inputs = {sid: sequence(m, seed=70 + i) for i, sid in enumerate(SIDS)}  # [T, F] each
    want = {sid: ws_answers(ws, m.name, xs) for sid, xs in inputs.items()}
    snapshots: dict = {}
    with live(settings(grpc_port=0, stream_secret=SECRET)) as first, first.stream() as stream:
        for t in range(CUT):
            for sid, xs in inputs.items():
                ids = {"request_id": f"{sid}/{t}", "sequence_id": sid}
                stream.send(m.name, xs[t][None, None], **ids, sequence_start=t == 0)
        for _ in range(CUT * len(SIDS)):
            assert stream.get()[1] is None
        stream.control(m.name, SIDS[0], snapshot=True)
        result, error = stream.get()
        assert error is None and params_of(result)["snapshot"]
        assert params_of(result)["t"] == CUT  # steps taken
        _drain(first)
        for _ in SIDS:  # the drain: a snapshot per sequence, then UNAVAILABLE
            result, error = stream.get()
            assert error is None, error
            params = params_of(result)
            snapshots[params["sequence_id"]] = params["snapshot"]
            assert params["t"] == CUT
        result, error = stream.get()
        assert result is None and error.status() == "StatusCode.UNAVAILABLE"
    assert set(snapshots) == set(SIDS)
    with live(settings(grpc_port=0, stream_secret=SECRET)) as second, second.stream() as stream:
        for sid in SIDS:
            stream.control(m.name, sid, start=True, resume=snapshots[sid])
        for _ in SIDS:
            result, error = stream.get()
            assert error is None, error
            params = params_of(result)
            assert (params["resumed"], params["t"], params["version"]) == (True, CUT, m.version)
        for t in range(CUT, m.T):  # the steps after the last one the first replica answered
            for sid, xs in inputs.items():
                ids = {"request_id": f"{sid}/{t}", "sequence_id": sid}
                stream.send(m.name, xs[t][None, None], **ids, sequence_end=t == m.T - 1)
        got = {}
        for _ in range((m.T - CUT) * len(SIDS)):
            result, error = stream.get()
            assert error is None, error
            got[result.get_response().id] = result
    for sid, answers in want.items():
        for t in range(CUT, m.T):
            assert_same_answer(got[f"{sid}/{t}"], answers[t], m.labels)


def test_without_a_secret_there_is_no_snapshot() -> None:
    m = served().manifest(NeuronKind.SLIDING_PSN)
    x = sequence(m, seed=79)
    with live(settings(grpc_port=0)) as server, server.stream() as stream:
        stream.send(m.name, x[0][None, None], sequence_id=5, sequence_start=True)
        assert stream.get()[1] is None
        stream.control(m.name, 5, snapshot=True)
        result, error = stream.get()
        assert result is None and "resuming is off" in error.message()
        stream.control(m.name, 6, start=True, resume="AAAA")
        result, error = stream.get()
        assert result is None and "resuming is off" in error.message()
        _drain(server)  # no snapshot: straight to UNAVAILABLE
        result, error = stream.get()
        assert result is None and error.status() == "StatusCode.UNAVAILABLE"
