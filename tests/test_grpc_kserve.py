"""KServe's gRPC client (kserve 0.21's ``InferenceGRPCClient``, unmodified, in a process of its own: see
tests/grpc_kserve_client.py) against psn-serve's gRPC port: probes, inference with raw and typed inputs
equal to tritonclient.grpc's answers, status codes, the API key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_grpc_support import infer_input, live
from test_server_support import sequence, served, settings

from psn_runtime.manifest import NeuronKind

SCRIPT = Path(__file__).with_name("grpc_kserve_client.py")
KEY = "kserve-key-0123"


def kserve(url: str, model: str, x: np.ndarray, tmp_path: Path, key: str | None = None) -> dict:
    path = tmp_path / "x.npy"
    np.save(path, x)
    command = [sys.executable, str(SCRIPT), url, model, str(path), *([key] if key else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow  # KServe's package takes seconds to import
def test_kserve_grpc_client(tmp_path: Path) -> None:
    """With an API key: KServe's client sends it as metadata (its calls' ``headers``)."""
    m = served().manifest(NeuronKind.SLIDING_PSN)
    x = sequence(m, batch=2, seed=7)  # [B, T, F]
    with live(settings(grpc_port=0, api_key=KEY)) as running:
        report = kserve(running.grpc, m.name, x, tmp_path, KEY)
        with running.client() as client:
            want = client.infer(m.name, [infer_input(x)], headers={"x-api-key": KEY})
    assert (report["live"], report["ready"], report["model_ready"]) == (True, True, True)
    assert report["unknown_model"] == "NOT_FOUND"
    for form in ("raw", "typed"):
        answer = report[form]
        assert answer["id"] == f"kserve-{form}"
        np.testing.assert_array_equal(np.float32(answer["outputs"]["logits"]), want.as_numpy("logits"))
        np.testing.assert_array_equal(
            np.float32(answer["outputs"]["probabilities"]), want.as_numpy("probabilities")
        )
        assert answer["outputs"]["label_index"] == want.as_numpy("label_index").tolist()
