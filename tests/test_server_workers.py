"""``psn serve --workers 2``, a real process tree: both workers answer (X-PSN-Worker names the pid), every
stream stays on the worker that accepted it, /metrics on any worker sums them all, and SIGTERM closes every
stream of every worker with 1001 and removes the Prometheus multiprocess directory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from test_reliability_support import RawWebSocket, metric, server_process, wait_until
from test_server_support import sequence, served

from psn_runtime.manifest import NeuronKind
from server.cli import GRACE_S
from server.listen import bind_socket

pytestmark = pytest.mark.e2e
STREAMS = 12


def _worker_pids(base: str) -> set[str]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return set(re.findall(r'^psn_worker_streams_open\{pid="(\d+)"\}', text, re.M))


def _answering_pids(base: str, tries: int) -> Counter:
    """Which worker answered each of ``tries`` fresh connections (HTTP 200 /readyz only)."""
    seen: Counter = Counter()
    for _ in range(tries):
        with httpx.Client(timeout=5) as client:  # a new connection each time: the kernel picks a worker
            r = client.get(f"{base}/readyz")
        if r.status_code == 200:
            seen[r.headers["x-psn-worker"]] += 1
    return seen


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_workers_answer_stream_sum_metrics_and_drain_with_1001(tmp_path: Path, monkeypatch) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the CLI makes its PROMETHEUS_MULTIPROC_DIR
    with server_process(tmp_path, "--workers", "2") as server:
        assert wait_until(lambda: len(_worker_pids(server.base_url)) == 2, timeout=60), _worker_pids(
            server.base_url
        )
        workers = _worker_pids(server.base_url)
        assert str(server.process.pid) not in workers  # the supervisor serves nothing itself
        assert len(list(tmp.glob("psn-metrics-*"))) == 1
        # both workers load the models and answer: keep asking on fresh connections until each has
        assert wait_until(
            lambda: set(_answering_pids(server.base_url, 16)) == workers, timeout=60, period=0.2
        )

        m = served().manifest(NeuronKind.SLIDING_PSN)
        x = sequence(m)[0].astype("<f4").tobytes()
        streams, where = [], Counter()
        while len(streams) < STREAMS or len(where) < 2:  # SO_REUSEPORT hashes connections: both get some
            assert len(streams) < 64, where
            ws = RawWebSocket(server.port, f"/v1/models/{m.name}/stream")
            hello = json.loads(ws.recv_frame()[1])
            assert hello["model"] == m.name, hello
            where[ws.headers["x-psn-worker"]] += 1
            streams.append(ws)
        assert set(where) == workers
        for ws in streams:  # each stream steps on its own worker, twice: its state is there
            for t in (0, 1):
                ws.send_binary(x)
                answer = json.loads(ws.recv_frame()[1])
                assert answer["t"] == t and answer["label"] in m.labels, answer

        # /metrics from any worker: the sum over both (and one series per worker pid)
        assert metric(server.base_url, "psn_streams_open", model=m.name) == len(streams)
        assert metric(server.base_url, "psn_stream_steps_total", model=m.name) == 2 * len(streams)
        for pid, count in where.items():
            assert metric(server.base_url, "psn_worker_streams_open", pid=pid) == count

        server.process.send_signal(signal.SIGTERM)
        for ws in streams:
            code, reason, _ = ws.recv_until_close()
            assert (code, reason) == (1001, "server shutting down")
            ws.close()
        code = server.process.wait(GRACE_S + 20)
        log = server.log.read_text()
    assert code == 0, log
    for pid in workers:  # every worker drained its own streams with 1001 and is gone
        assert f"Finished server process [{pid}]" in log, log[-3000:]
        assert not Path(f"/proc/{pid}").exists()
    closed = sum(int(n) for n in re.findall(r"closed (\d+) stream socket\(s\) with 1001", log))
    assert closed == len(streams), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert list(tmp.glob("psn-metrics-*")) == [], "the CLI left its metrics directory behind"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_killed_is_replaced_and_its_open_streams_stop_counting(tmp_path: Path) -> None:
    with server_process(tmp_path, "--workers", "2") as server:
        assert wait_until(lambda: len(_worker_pids(server.base_url)) == 2, timeout=60)
        workers = _worker_pids(server.base_url)
        assert wait_until(
            lambda: set(_answering_pids(server.base_url, 16)) == workers, timeout=60, period=0.2
        )
        m = served().manifest(NeuronKind.SLIDING_PSN)
        streams: dict[str, list[RawWebSocket]] = {}
        while len(streams) < 2:
            ws = RawWebSocket(server.port, f"/v1/models/{m.name}/stream")
            ws.recv_frame()
            streams.setdefault(ws.headers["x-psn-worker"], []).append(ws)
        victim, survivor = sorted(streams)
        assert metric(server.base_url, "psn_streams_open", model=m.name) == sum(map(len, streams.values()))

        os.kill(int(victim), signal.SIGKILL)
        # the supervisor forgets the dead worker's live gauges and starts another in its place
        assert wait_until(lambda: victim not in _worker_pids(server.base_url), timeout=30)
        assert wait_until(lambda: len(_worker_pids(server.base_url) - workers) == 1, timeout=60)
        assert metric(server.base_url, "psn_streams_open", model=m.name) == len(streams[survivor])
        for ws in streams[survivor]:  # the other worker's streams never noticed
            ws.send_binary(sequence(m)[0].astype("<f4").tobytes())
            assert json.loads(ws.recv_frame()[1])["t"] == 0
        log = server.log.read_text()
    assert f"worker {victim} exited with status -9: starting another" in log, log[-2000:]


def test_workers_refuse_a_port_that_is_taken(tmp_path: Path) -> None:
    """Even by another SO_REUSEPORT group: two servers never share a port by accident."""
    taken = bind_socket("127.0.0.1", 0, reuse_port=True)
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "server.cli",
                "--workers",
                "2",
                "--port",
                str(port),
                "--models-dir",
                str(served().models_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PSN_LOG_LEVEL": "info"},
        )
    finally:
        taken.close()
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"psn serve: cannot listen on http://127.0.0.1:{port}: address already in use (--host, --port)"
    ]  # one line, before anything started or loaded
