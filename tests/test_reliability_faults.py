"""Broken model directories next to a good one: each is reported FAILED with its reason by /v1/models,
/v1/models/{name}, /readyz and the V2 readiness route, requests to it are refused (503 / close 1013) with
that reason, and the good model is served as usual."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_server_support import sequence, served, settings

from psn_runtime.manifest import FULL_GRAPH, MANIFEST_FILE, STEP_GRAPH, NeuronKind
from server.app import build_app

SLIDING = NeuronKind.SLIDING_PSN


def _manifest(d: Path) -> dict:
    return json.loads((d / MANIFEST_FILE).read_text())


def _write(d: Path, doc: dict) -> None:
    (d / MANIFEST_FILE).write_text(json.dumps(doc))


def _rename(d: Path, name: str) -> None:
    doc = _manifest(d)
    doc["name"] = name
    _write(d, doc)


def corrupt_onnx(d: Path) -> None:
    """Garbage in full.onnx, and a manifest whose sha256 matches it: ORT itself must refuse it."""
    data = b"\x08\x07garbage, not a protobuf of an ONNX model" * 10
    (d / FULL_GRAPH).write_bytes(data)
    doc = _manifest(d)
    doc["sha256"][FULL_GRAPH] = hashlib.sha256(data).hexdigest()
    _write(d, doc)


def truncated_onnx(d: Path) -> None:
    data = (d / STEP_GRAPH).read_bytes()[:100]
    (d / STEP_GRAPH).write_bytes(data)
    doc = _manifest(d)
    doc["sha256"][STEP_GRAPH] = hashlib.sha256(data).hexdigest()
    _write(d, doc)


def sha_mismatch(d: Path) -> None:
    data = bytearray((d / FULL_GRAPH).read_bytes())
    data[-1] ^= 0xFF  # one bit flipped on disk, the manifest unchanged
    (d / FULL_GRAPH).write_bytes(bytes(data))


def bad_manifest_field(d: Path) -> None:
    doc = _manifest(d)
    doc["T"] = -3
    _write(d, doc)


def manifest_not_json(d: Path) -> None:
    (d / MANIFEST_FILE).write_text('{"name": "x", ')


def missing_step(d: Path) -> None:
    (d / STEP_GRAPH).unlink()


def path_in_sha256(d: Path) -> None:
    doc = _manifest(d)
    doc["sha256"]["../../etc/passwd"] = "0" * 64
    _write(d, doc)


def features_mismatch(d: Path) -> None:
    doc = _manifest(d)
    doc.pop("features", None)
    doc["input_shape"] = [doc["input_shape"][0] + 1]  # the graphs say otherwise
    _write(d, doc)


# directory (and model) name -> (damage, text the reason must contain)
FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt-onnx": (corrupt_onnx, "onnxruntime cannot load full.onnx"),
    "truncated-onnx": (truncated_onnx, "onnxruntime cannot load step.onnx"),
    "sha-mismatch": (sha_mismatch, "sha256 mismatch for full.onnx"),
    "bad-field": (bad_manifest_field, "bad manifest"),
    "not-json": (manifest_not_json, "bad manifest"),
    "missing-step": (missing_step, "missing file step.onnx"),
    "path-in-sha256": (path_in_sha256, "not a plain file name"),
    "features-mismatch": (features_mismatch, "full.onnx input 'x'"),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("faults")
    source = served().models_dir / served().name(SLIDING)
    shutil.copytree(source, root / "good")
    for name, (damage, _) in FAULTS.items():
        shutil.copytree(source, root / name)
        _rename(root / name, name)
        damage(root / name)
    with TestClient(build_app(settings(models_dir=root))) as c:
        yield c


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_broken_model_is_reported_with_its_reason(client: TestClient, name: str) -> None:
    reason = FAULTS[name][1]
    ready = client.get("/readyz")
    assert ready.status_code == 200  # the good model is ready
    entry = ready.json()["models"][name]
    assert entry["status"] == "failed" and reason in entry["error"], entry
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed[name]["status"] == "failed" and reason in listed[name]["error"]
    one = client.get(f"/v1/models/{name}").json()
    assert one["status"] == "failed" and reason in one["error"]
    refused = client.post(f"/v1/models/{name}/classify", json={"inputs": [[0.5]]})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_not_ready"
    assert reason in refused.json()["error"]["message"] and refused.headers["retry-after"] == "1"
    assert client.get(f"/v2/models/{name}/ready").status_code in (503, 404)
    with (
        client.websocket_connect(f"/v1/models/{name}/stream") as ws,
        pytest.raises(WebSocketDisconnect) as info,
    ):
        ws.receive_json()
    assert info.value.code == 1013 and info.value.reason
    for text in (ready.text, refused.text):
        assert "Traceback" not in text


def test_the_good_model_is_served_beside_the_broken_ones(client: TestClient) -> None:
    listed = {m["name"]: m["status"] for m in client.get("/v1/models").json()["models"]}
    good = served().name(SLIDING)
    assert listed[good] == "ready"
    assert sum(status == "failed" for status in listed.values()) == len(FAULTS)
    m = served().manifest(SLIDING)
    response = client.post(f"/v1/models/{good}/classify", json={"inputs": sequence(m).tolist()})
    assert response.status_code == 200, response.text
    with client.websocket_connect(f"/v1/models/{good}/stream") as ws:
        assert ws.receive_json()["model"] == good
        ws.send_bytes(sequence(m)[0].astype("<f4").tobytes())
        assert ws.receive_json()["t"] == 0
    metrics = client.get("/metrics").text
    assert (
        f'psn_model_ready{{model="{good}",provider="CPUExecutionProvider",version="{m.version}"}} 1.0'
        in metrics
    )
