"""The resumable client through real server restarts: a stream opened with ``resumable=True`` gives the
answers of an uninterrupted stream while its server is SIGKILLed (resume from the last periodic snapshot)
or SIGTERMed (resume from the drain snapshot) and started again on the same address; it gives up with a
clear error when no server comes back, and refuses to start when the server cannot resume."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_server_support import served
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from psn_runtime.manifest import NeuronKind
from server import launcher
from server.client import AsyncPSNClient, PSNClient, PSNError, RetryPolicy
from server.client_resume import ResumeLog, is_drop
from server.listen import REPORT_PREFIX

pytestmark = pytest.mark.e2e
SECRET = "client-resume-test-secret"
PATIENT = RetryPolicy(retries=60, backoff_s=0.05, max_backoff_s=0.5, step_timeout_s=20)


@contextmanager
def server(tmp: Path, *flags: str) -> Iterator[launcher.Server]:
    """``psn serve`` on a port it binds itself; ``restart()`` starts it again on that port."""
    args = ["--providers", "CPUExecutionProvider", *flags]
    with launcher.serve(*args, models_dir=served().models_dir, log=tmp / "server.log") as srv:
        yield srv


def _starts(srv: launcher.Server) -> int:
    return srv.log.read_text().count(REPORT_PREFIX)


def _inputs(kind: NeuronKind, steps: int) -> np.ndarray:
    m = served().manifest(kind)
    return np.random.default_rng(7).standard_normal((steps, m.features)).astype(np.float32)  # [steps, F]


def _same(got, want) -> None:
    assert [s.t for s in got] == [s.t for s in want]
    assert [s.label for s in got] == [s.label for s in want]
    np.testing.assert_allclose(
        [s.probabilities for s in got], [s.probabilities for s in want], rtol=0, atol=1e-6
    )


@pytest.mark.slow
def test_sync_stream_survives_sigkill_and_sigterm_of_its_server(tmp_path: Path) -> None:
    kind = NeuronKind.SLIDING_PSN
    name = served().name(kind)
    xs = _inputs(kind, served().manifest(kind).T + 12)
    with server(tmp_path, "--stream-secret", SECRET) as srv, PSNClient(srv.base_url) as client:
        with client.stream(name) as plain:
            want = [plain.step(x) for x in xs]
        with client.stream(name, resumable=True, snapshot_every=4, retry=PATIENT) as stream:
            assert stream.hello["resumable"] is True and stream.hello["snapshot_every"] == 4
            got = [stream.step(x) for x in xs[:10]]  # last periodic snapshot at t=8: 2 steps to replay
            srv.stop(signal.SIGKILL)
            srv.restart(ready=False)  # not waited for: the step below retries until the new server answers
            got += [stream.step(x) for x in xs[10:20]]
            assert stream.reconnects == 1 and stream.replayed == 2
            srv.stop(signal.SIGTERM)  # drain: the snapshot at t=20, then 1001
            srv.restart(ready=False)
            got += [stream.step(x) for x in xs[20:]]
            assert stream.reconnects == 2 and stream.replayed == 2  # nothing to replay
    _same(got, want)
    assert _starts(srv) == 3


@pytest.mark.slow
def test_async_stream_survives_a_restart_and_a_reset(tmp_path: Path) -> None:
    kind = NeuronKind.MASKED_PSN
    name = served().name(kind)
    T = served().manifest(kind).T
    xs = _inputs(kind, T)

    async def run(base: str, srv: launcher.Server) -> tuple[list, list]:
        async with AsyncPSNClient(base) as client:
            async with client.stream(name) as plain:
                want = [await plain.step(x) for x in xs]
            async with client.stream(name, resumable=True, snapshot_every=5, retry=PATIENT) as stream:
                got = [await stream.step(x) for x in xs[:3]]
                await stream.reset()  # the log starts again
                got = [await stream.step(x) for x in xs[:7]]
                srv.stop(signal.SIGKILL)
                srv.restart(ready=False)
                got += [await stream.step(x) for x in xs[7:]]
                assert stream.reconnects == 1 and stream.replayed == 2
            return got, want

    with server(tmp_path, "--stream-secret", SECRET) as srv:
        got, want = asyncio.run(run(srv.base_url, srv))
    _same(got, want)


def test_gives_up_with_a_clear_error_when_no_server_comes_back(tmp_path: Path) -> None:
    kind = NeuronKind.SLIDING_PSN
    xs = _inputs(kind, 3)
    with server(tmp_path, "--stream-secret", SECRET) as srv, PSNClient(srv.base_url) as client:
        policy = RetryPolicy(retries=3, backoff_s=0.01, max_backoff_s=0.02, step_timeout_s=5)
        with client.stream(served().name(kind), resumable=True, retry=policy) as stream:
            stream.step(xs[0])
            srv.stop(signal.SIGKILL)
            with pytest.raises(PSNError) as info:
                stream.step(xs[1])
            assert info.value.code == "stream_lost" and "3 reconnects failed" in info.value.message


def test_resumable_needs_a_server_that_resumes(tmp_path: Path) -> None:
    with server(tmp_path) as srv, PSNClient(srv.base_url) as client:
        with pytest.raises(PSNError) as info, client.stream(served().name(NeuronKind.LIF), resumable=True):
            pass
        assert info.value.code == "resume_disabled" and "PSN_STREAM_SECRET" in info.value.message


def test_resume_log_keeps_only_the_frames_after_its_snapshot() -> None:
    log = ResumeLog()
    for i in range(5):
        log.answered(f"f{i}")
    log.on_snapshot({"t": 3, "snapshot": "s3"})
    assert (log.t, log.snapshot, log.frames) == (3, "s3", ["f3", "f4"])
    log.on_snapshot({"t": 5, "snapshot": "s5"})
    assert log.frames == []
    with pytest.raises(ValueError, match="does not follow"):
        log.on_snapshot({"t": 7, "snapshot": "s7"})
    log.reset()
    assert (log.t, log.snapshot, log.frames) == (0, None, [])


def _closed_with(code: int | None) -> ConnectionClosedError:
    frame = None if code is None else Close(code, "reason")
    return ConnectionClosedError(frame, frame, True if frame is not None else None)


@pytest.mark.parametrize(
    ("exc", "drop"),
    [
        (_closed_with(None), True),  # no close frame: the replica died (1006)
        (_closed_with(1001), True),  # drained
        (_closed_with(1011), True),
        (_closed_with(1012), True),
        (_closed_with(1013), True),
        (_closed_with(1008), False),  # wrong API key: reconnecting will not help
        (_closed_with(4404), False),  # unknown model
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (InvalidStatus(Response(502, "Bad Gateway", Headers())), True),  # the balancer has no replica now
        (InvalidStatus(Response(404, "Not Found", Headers())), False),
        (PSNError("x", code="bad_snapshot"), False),
    ],
    ids=repr,
)
def test_which_failures_are_drops(exc: BaseException, drop: bool) -> None:
    assert is_drop(exc) is drop


def test_retry_policy_is_bounded_and_checked() -> None:
    policy = RetryPolicy(retries=5, backoff_s=0.1, max_backoff_s=0.3)
    assert [policy.wait(i) for i in range(5)] == [0.0, 0.1, 0.2, 0.3, 0.3]
    with pytest.raises(ValueError):
        RetryPolicy(retries=0)
