"""Model versions on every transport: the highest ready version answers unless a request names one
(``/v1/models/{name}/versions/{v}/classify``, ``/v2/models/{name}/versions/{v}/infer``,
``WS /v1/models/{name}/stream?version=v``, the Python client's ``version=``), and every answer says which
version gave it (classify's ``version``, V2's ``model_version``, the hello, ``/v1/models``, the metrics).

Version 2 of each model is version 1 with its classes rolled by one (tests/model_versions.py), so an answer
shows which version computed it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from server import launcher
from server.app import build_app
from server.client import PSNClient, PSNError
from server.settings import Settings
from tests.fixtures import F, T, exported_models, sequences
from tests.model_versions import derive_version

STREAM, CLASSIFY = "lif", "psn"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """models/NAME/1 (the tiny exported model) and models/NAME/2 (its classes rolled by one)."""
    root = tmp_path_factory.mktemp("versions") / "models"
    for name in (STREAM, CLASSIFY):
        shutil.copytree(exported_models() / name, root / name / "1")
        derive_version(exported_models() / name, root / name / "2", "2", shift=1)
    return root


@pytest.fixture(scope="module")
def client(models: Path) -> Iterator[TestClient]:
    settings = Settings(models_dir=models, providers=["CPUExecutionProvider"])
    with TestClient(build_app(settings)) as c:
        yield c


def _classify(client: TestClient, path: str, x: np.ndarray):
    return client.post(path, json={"inputs": x.tolist()})


def test_v1_lists_and_answers_by_version(client: TestClient) -> None:
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed[CLASSIFY]["version"] == "2" and listed[CLASSIFY]["manifest"]["version"] == "2"
    assert listed[CLASSIFY]["versions"] == [
        {"version": "1", "status": "ready", "error": None},
        {"version": "2", "status": "ready", "error": None},
    ]
    x = sequences(2, seed=1)
    latest = _classify(client, f"/v1/models/{CLASSIFY}/classify", x).json()
    first = _classify(client, f"/v1/models/{CLASSIFY}/versions/1/classify", x).json()
    assert (latest["version"], first["version"]) == ("2", "1")
    for a, b in zip(latest["predictions"], first["predictions"], strict=True):
        np.testing.assert_allclose(a["probabilities"], np.roll(b["probabilities"], 1), atol=1e-6)
    missing = _classify(client, f"/v1/models/{CLASSIFY}/versions/9/classify", x)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "version_unavailable"
    assert "versions: 1 ready, 2 ready" in missing.json()["error"]["message"]


def test_v2_infer_by_version_and_model_version(client: TestClient) -> None:
    x = sequences(1, seed=2)
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    latest = client.post(f"/v2/models/{CLASSIFY}/infer", json=body).json()
    first = client.post(f"/v2/models/{CLASSIFY}/versions/1/infer", json=body).json()
    assert (latest["model_version"], first["model_version"]) == ("2", "1")
    probs = {a["name"]: a["data"] for a in latest["outputs"]}["probabilities"]
    probs_first = {a["name"]: a["data"] for a in first["outputs"]}["probabilities"]
    np.testing.assert_allclose(probs, np.roll(probs_first, 1), atol=1e-6)
    missing = client.post(f"/v2/models/{CLASSIFY}/versions/9/infer", json=body)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
    assert client.get(f"/v2/models/{CLASSIFY}/versions/1").json()["versions"] == ["1"]


def test_v2_sequence_stays_on_its_version(client: TestClient) -> None:
    xs = sequences(1, seed=3)[0]  # [T, F]

    def step(t: int, **params) -> dict:
        body = {
            "inputs": [{"name": "x", "shape": [1, F], "datatype": "FP32", "data": xs[t].tolist()}],
            "parameters": {"sequence_id": 77, **params},
        }
        return client.post(
            f"/v2/models/{STREAM}/versions/1/infer" if t == 0 else f"/v2/models/{STREAM}/infer", json=body
        ).json()

    answers = [step(0, sequence_start=True)] + [step(t) for t in range(1, T)]
    assert {a["model_version"] for a in answers} == {"1"}  # named at the start, kept to the end


def test_websocket_streams_on_a_version(client: TestClient) -> None:
    xs = sequences(1, seed=4)[0]

    def run(query: str) -> tuple[dict, list[list[float]]]:
        with client.websocket_connect(f"/v1/models/{STREAM}/stream{query}") as ws:
            hello = ws.receive_json()
            out = []
            for x in xs:
                ws.send_bytes(x.astype("<f4").tobytes())
                out.append(ws.receive_json()["probabilities"])
            return hello, out

    hello_latest, latest = run("")
    hello_first, first = run("?version=1")
    assert (hello_latest["version"], hello_first["version"]) == ("2", "1")
    np.testing.assert_allclose(latest, np.roll(first, 1, axis=-1), atol=1e-6)
    with client.websocket_connect(f"/v1/models/{STREAM}/stream?version=9") as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4404 and "no version '9'" in closed.value.reason
    text = client.get("/metrics").text
    for version in ("1", "2"):  # (the V2 sequence test's steps count too)
        found = re.search(
            rf'^psn_stream_steps_total{{model="{STREAM}",version="{version}"}} (\S+)$', text, re.M
        )
        assert found is not None and float(found.group(1)) >= T, version


def test_python_client_takes_version(models: Path, tmp_path: Path) -> None:
    x = sequences(1, seed=5)[0]
    with (
        launcher.serve(
            "--providers", "CPUExecutionProvider", models_dir=models, log=tmp_path / "log"
        ) as server,
        PSNClient(server.base_url) as client,
    ):
        listed = {m["name"]: m for m in client.models()}
        assert [v["version"] for v in listed[STREAM]["versions"]] == ["1", "2"]
        for binary in (False, True):
            latest = client.classify(CLASSIFY, x, binary=binary)
            first = client.classify(CLASSIFY, x, binary=binary, version="1")
            assert (latest.version, first.version) == ("2", "1")
            np.testing.assert_allclose(
                latest.predictions[0].probabilities,
                np.roll(first.predictions[0].probabilities, 1),
                atol=1e-6,
            )
        with client.stream(STREAM, version="1") as stream:
            assert stream.version == "1"
            first_steps = [stream.step(row).probabilities for row in x]
        with client.stream(STREAM) as stream:
            assert stream.version == "2"
            latest_steps = [stream.step(row).probabilities for row in x]
        np.testing.assert_allclose(latest_steps, np.roll(first_steps, 1, axis=-1), atol=1e-6)
        with pytest.raises(PSNError) as missing:
            client.classify(CLASSIFY, x, version="9")
        assert (missing.value.code, missing.value.status) == ("version_unavailable", 404)
