"""Smoke test of ``psn bench peers --quick`` on tiny models with the peers that need no venv of their own:
psn-serve, a FastAPI + ONNX Runtime server and a FastAPI + SpikingJelly WebSocket server (KServe and
LitServe need .venv-peers, made by ``make bench-peers``; they are skipped here). Checks the JSON and the plot
it writes. Skipped without wrk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("spikingjelly")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.bench,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)"),
]


@pytest.mark.timeout(300)
def test_peers_quick_run(tmp_path: Path) -> None:
    from bench.models import export_tiny
    from bench.peers.servers import sj_network
    from bench.peers.suite import main

    models = export_tiny(
        tmp_path / "models",
        T=8,
        features=5,
        classes=3,
        arch="mlp",
        channels=4,
        hidden=16,
        k=3,
        kinds=("psn", "sliding_psn"),
    )
    argv = ["--quick", "--quiet", "--duration", "0.5", "--models-dir", str(models), "--out", str(tmp_path)]
    assert main([*argv, "--peers-python", str(tmp_path / "no-peers-venv" / "python")]) == 0

    doc = json.loads((tmp_path / "bench-peers-quick.json").read_text())
    rows = {r["target"]: r for r in doc["rows"]}
    assert set(rows) == {
        "psn-serve v1 JSON",
        "psn-serve V2 JSON",
        "FastAPI + ORT JSON",
        "psn-serve WebSocket, binary frames",
        "psn-serve WebSocket, json frames",
        "FastAPI + SpikingJelly WebSocket, binary frames",
        "FastAPI + SpikingJelly WebSocket, json frames",
    }
    for r in rows.values():
        assert r["errors"] == 0 and r["rate"] > 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"]
        assert r["open"]["offered"] == pytest.approx(0.75 * r["rate"]) and r["open"]["p50_ms"] > 0
    for target in ("psn-serve WebSocket, binary frames", "FastAPI + SpikingJelly WebSocket, json frames"):
        assert rows[target]["one_stream_p50_ms"] > 0
    # no KServe in this run: its goals are listed, not judged
    assert [g["met"] for g in doc["goals"]] == [None, None]
    assert (tmp_path / "bench-peers-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the SpikingJelly peer runs the model's network: the same layers as the checkpoint's config
    config = json.loads((models / "sliding_psn" / "checkpoint" / "config.json").read_text())
    manifest = json.loads((models / "sliding_psn" / "manifest.json").read_text())
    assert sum(p.numel() for p in sj_network(config).parameters()) == manifest["parameters"]
