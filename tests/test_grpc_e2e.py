"""gRPC on a real ``psn serve`` (server/launcher.py): ``--grpc-port 0`` is bound and reported; with
``--workers 2`` both workers serve gRPC on the one port (SO_REUSEPORT: the kernel spreads connections),
each ModelStreamInfer call staying on the worker that took it; SIGTERM ends every open stream call with
UNAVAILABLE ("server shutting down") and the server exits cleanly."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
from test_grpc_support import Stream, streaming
from test_reliability_support import metric
from test_server_support import sequence, served

from psn_runtime.manifest import NeuronKind
from server.launcher import serve

pytestmark = pytest.mark.e2e
OWN = [("grpc.use_local_subchannel_pool", 1)]  # no TCP connection shared between clients


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_workers_serve_grpc_on_one_port_and_drain_on_sigterm(tmp_path: Path) -> None:
    m = served().manifest(NeuronKind.SLIDING_PSN)
    x = sequence(m, seed=9)[0][None, None]  # [1, 1, F]
    log = tmp_path / "server.log"
    args = ("--workers", "2", "--providers", "CPUExecutionProvider")
    with serve(*args, models_dir=served().models_dir, grpc=True, log=log) as server:
        address = f"127.0.0.1:{server.ports['grpc']}"
        assert server.report["urls"]["grpc"].endswith(address)
        with contextlib.ExitStack() as stack:
            streams: list[Stream] = []
            workers: set[str] = set()
            while len(workers) < 2:  # a new connection per client until both workers hold a stream
                assert len(streams) < 48, f"every gRPC stream landed on workers {workers}"
                client = stack.enter_context(grpcclient.InferenceServerClient(address, channel_args=OWN))
                stream = stack.enter_context(streaming(client))
                streams.append(stream)
                sid = len(streams)
                stream.send(m.name, x, request_id=str(sid), sequence_id=sid, sequence_start=True)
                result, error = stream.get()
                assert error is None, error
                workers = {pid for pid, count in worker_streams(server.base_url).items() if count > 0}
            assert metric(server.base_url, "psn_streams_open", model=m.name) == len(streams)
            for sid, stream in enumerate(streams, 1):  # each sequence steps on, on its own worker
                stream.send(m.name, x, request_id=f"{sid}b", sequence_id=sid)
                result, error = stream.get()
                assert error is None and result.get_response().parameters["t"].int64_param == 1, error
            assert server.stop() == 0
            for stream in streams:
                result, error = stream.get()
                assert result is None and error.status() == "StatusCode.UNAVAILABLE", error
                assert "shutting down" in error.message()
    assert "Traceback" not in log.read_text()


def worker_streams(base: str) -> dict[str, float]:
    """Open streams per worker pid (``psn_worker_streams_open``)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        pid: float(v) for pid, v in re.findall(r'^psn_worker_streams_open\{pid="(\d+)"\} (\S+)', text, re.M)
    }
