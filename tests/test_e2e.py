"""End to end: a real ``psn serve`` process on loopback, probed, streamed to with the ``websockets`` client
and classified with the project's client, then terminated."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_server_support import psn_serve, sequence, served
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from psn_runtime.manifest import NeuronKind
from server.client import PSNClient

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("e2e") / "server.log"
    with psn_serve(log, served().models_dir, env={"PSN_LOG_LEVEL": "info"}) as proc:
        yield proc.base_url, log
    # uvicorn re-raises the signal after a clean shutdown
    assert proc.process.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


def test_stream_with_websockets(server: tuple[str, Path]) -> None:
    base, _ = server
    for kind in (NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN):
        m = served().manifest(kind)
        x = sequence(m, seed=30)
        url = base.replace("http://", "ws://") + f"/v1/models/{m.name}/stream"
        with connect(url, compression=None) as ws:
            hello = json.loads(ws.recv())
            assert (hello["model"], hello["T"], hello["features"]) == (m.name, m.T, m.features)
            answers = []
            for row in x:
                ws.send(row.astype("<f4").tobytes())
                answers.append(json.loads(ws.recv()))
            ws.send(json.dumps({"x": [float("inf")] * m.features}))  # not JSON: an error event, socket open
            assert json.loads(ws.recv())["error"]["code"] == "invalid_json"
        assert [a["t"] for a in answers] == list(range(m.T))
        ready = [a["ready"] for a in answers]
        if kind is NeuronKind.PSN:
            assert ready == [False] * (m.T - 1) + [True]
        else:
            assert all(ready)
        with PSNClient(base) as client:
            result = client.classify(m.name, x)
        assert answers[-1]["label"] == result.predictions[0].label
        np.testing.assert_allclose(
            answers[-1]["probabilities"], result.predictions[0].probabilities, rtol=1e-4
        )


def test_oversized_frame_is_closed_by_the_server(server: tuple[str, Path]) -> None:
    base, _ = server
    url = base.replace("http://", "ws://") + f"/v1/models/{served().name(NeuronKind.SLIDING_PSN)}/stream"
    with connect(url, compression=None) as ws:
        ws.recv()
        ws.send(b"\x00" * (300 * 1024))  # over the default max_ws_message_bytes (256 KiB)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_service_reports_providers_and_metrics(server: tuple[str, Path]) -> None:
    base, log = server
    with PSNClient(base) as client:
        assert all(m["provider"] == "CPUExecutionProvider" for m in client.models() if m["status"] == "ready")
    metrics = httpx.get(f"{base}/metrics").text
    assert "psn_stream_steps_total" in metrics and "psn_http_requests_total" in metrics
    text = log.read_text()
    name = served().name(NeuronKind.SLIDING_PSN)
    assert f"model {name}: ready on CPUExecutionProvider" in text
    assert "event loop uvloop" in text and "HTTP parser httptools" in text
