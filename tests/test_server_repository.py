"""Triton's model repository extension: ``tritonclient.http``'s get_model_repository_index, load_model and
unload_model, unmodified, against ``psn serve --model-control explicit`` (a real server, the shared
launcher); the same routes in-process for what the client does not show (bodies, refusals)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from server import launcher
from server.app import build_app
from server.settings import Settings
from tests.fixtures import exported_models, sequences
from tests.model_versions import derive_version

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

KEY = "repository-test-key"
NAME = "psn"  # full-only: classify through V2 infer


def _stage(models: Path, src: Path, version: str) -> None:
    staging = models.parent / f"staging-{version}"
    shutil.copytree(src, staging)
    (models / NAME).mkdir(exist_ok=True)
    staging.rename(models / NAME / version)


def _index(client, **kwargs) -> dict[str, tuple[str, str]]:
    entries = client.get_model_repository_index(**kwargs)
    return {e["version"]: (e["state"], e["reason"]) for e in entries if e["name"] == NAME}


def _infer(client, x: np.ndarray, version: str = "") -> np.ndarray:
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(NAME, [tensor], model_version=version, headers={"X-API-Key": KEY})
    return result.as_numpy("logits")


@pytest.fixture(scope="module")
def second(tmp_path_factory) -> Path:
    return derive_version(exported_models() / NAME, tmp_path_factory.mktemp("v") / "2", "2", shift=1)


def test_tritonclient_repository_calls_unmodified(tmp_path, second):
    models = tmp_path / "models"
    models.mkdir()
    _stage(models, exported_models() / NAME, "1")
    x = sequences(2, seed=4)
    args = ("--providers", "CPUExecutionProvider", "--model-control", "explicit", "--api-key", KEY)
    with launcher.serve(*args, models_dir=models, log=tmp_path / "server.log") as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        headers = {"Authorization": f"Bearer {KEY}"}
        with pytest.raises(InferenceServerException, match="API key"):
            client.get_model_repository_index()
        assert _index(client, headers=headers) == {"1": ("READY", "")}
        first = _infer(client, x)

        _stage(models, second, "2")  # on disk, not loaded until asked
        assert _index(client, headers=headers)["2"] == ("UNAVAILABLE", "not loaded: load it on request")
        client.load_model(NAME, headers=headers)
        assert _index(client, headers=headers) == {"1": ("READY", ""), "2": ("READY", "")}
        assert client.is_model_ready(NAME, "2", headers=headers)
        latest = _infer(client, x)
        np.testing.assert_allclose(latest, np.roll(first, 1, axis=-1), atol=1e-5)  # version 2 answers

        _stage(models, exported_models() / "lif", "3")  # a model of another name: refused with the reason
        with pytest.raises(InferenceServerException, match="manifest names model 'lif'"):
            client.load_model(NAME, headers=headers)
        assert _index(client, headers=headers)["3"][0] == "UNAVAILABLE"
        np.testing.assert_allclose(_infer(client, x), latest, atol=1e-6)  # what served, serves on
        shutil.rmtree(models / NAME / "3")

        with pytest.raises(InferenceServerException, match="not supported"):
            client.load_model(NAME, headers=headers, config='{"max_batch_size": 8}')
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.load_model("nope", headers=headers)

        client.unload_model(NAME, headers=headers)
        states = _index(client, headers=headers)
        assert {s for s, _ in states.values()} <= {"UNLOADING", "UNAVAILABLE"}, states
        assert not client.is_model_ready(NAME, headers=headers)
        ready_only = httpx.post(
            f"{server.base_url}/v2/repository/index", json={"ready": True}, headers=headers
        )
        assert ready_only.status_code == 200 and ready_only.json() == []
        client.load_model(NAME, headers=headers)
        np.testing.assert_allclose(_infer(client, x), latest, atol=1e-6)
        client.close()


def test_load_and_unload_need_explicit_model_control(tmp_path):
    settings = Settings(models_dir=exported_models(), providers=["CPUExecutionProvider"])
    with TestClient(build_app(settings)) as client:
        index = client.post("/v2/repository/index")
        assert index.status_code == 200
        assert {(e["name"], e["version"], e["state"]) for e in index.json()} >= {(NAME, "1", "READY")}
        assert client.post("/v2/repository/index", json={"ready": True}).status_code == 200
        bad = client.post("/v2/repository/index", json={"nope": 1})
        assert bad.status_code == 422 and "nope" in bad.json()["error"]
        for action in ("load", "unload"):
            refused = client.post(f"/v2/repository/models/{NAME}/{action}", json={})
            assert refused.status_code == 400, refused.text
            assert refused.json() == {"error": refused.json()["error"]}  # the V2 body
            assert "model control is none" in refused.json()["error"]
        metadata = client.get("/v2").json()
        assert "model_repository" in metadata["extensions"]
