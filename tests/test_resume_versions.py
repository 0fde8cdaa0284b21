"""Resuming a stream on the model version that made its snapshot: a replica that also serves a newer
version moves the stream back to the snapshot's; one without it answers ``version_unavailable`` and the
stream goes on as it was."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server import launcher
from server.app import build_app
from server.client import PSNClient, PSNError, RetryPolicy
from server.settings import Settings
from tests.fixtures import T, exported_models, sequences
from tests.model_versions import derive_version

SECRET = "a-secret-of-at-least-16-bytes"
NAME = "lif"
PATH = f"/v1/models/{NAME}/stream?logits=true"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> Iterator[dict[str, TestClient]]:
    """Three replicas of one secret: "old" serves version 1, "both" versions 1 and 2, "new" version 2."""
    root = tmp_path_factory.mktemp("replicas")
    second = derive_version(exported_models() / NAME, root / "v2", "2", shift=1)
    layouts = {"old": {"1": exported_models() / NAME}, "both": {"1": exported_models() / NAME, "2": second}}
    layouts["new"] = {"2": second}
    apps = {}
    for replica, versions in layouts.items():
        for version, src in versions.items():
            shutil.copytree(src, root / replica / NAME / version)
        apps[replica] = build_app(
            Settings(models_dir=root / replica, providers=["CPUExecutionProvider"], stream_secret=SECRET)
        )
    with TestClient(apps["old"]) as old, TestClient(apps["both"]) as both, TestClient(apps["new"]) as new:
        yield {"old": old, "both": both, "new": new}


def _step(ws, x: np.ndarray) -> dict:
    ws.send_bytes(x.astype("<f4").tobytes())
    return ws.receive_json()


def _snapshot(client: TestClient, xs: np.ndarray) -> tuple[list[dict], dict]:
    with client.websocket_connect(PATH) as ws:
        ws.receive_json()
        answers = [_step(ws, x) for x in xs]
        ws.send_json({"snapshot": True})
        return answers, ws.receive_json()


def test_a_newer_replica_resumes_on_the_snapshot_version(replicas: dict[str, TestClient]) -> None:
    xs = sequences(1, seed=8)[0]  # [T, F]
    cut = T // 2
    with replicas["old"].websocket_connect(PATH) as ws:
        ws.receive_json()
        reference = [_step(ws, x) for x in xs]  # uninterrupted, on version 1
    first, snap = _snapshot(replicas["old"], xs[:cut])
    with replicas["both"].websocket_connect(PATH) as ws:
        assert ws.receive_json()["model"] == NAME
        ws.send_json({"resume": snap["snapshot"]})
        assert ws.receive_json() == {"resumed": True, "t": cut, "version": "1"}
        rest = [_step(ws, x) for x in xs[cut:]]
    assert first + rest == reference


def test_a_replica_without_the_version_says_version_unavailable(replicas: dict[str, TestClient]) -> None:
    xs = sequences(1, seed=9)[0]
    _, snap = _snapshot(replicas["old"], xs[:3])
    with replicas["new"].websocket_connect(PATH) as ws:
        ws.receive_json()
        ws.send_json({"resume": snap["snapshot"]})
        error = ws.receive_json()["error"]
        assert error["code"] == "version_unavailable" and "another replica may have it" in error["message"]
        answer = _step(ws, xs[0])  # the stream goes on, on version 2, from its start
        assert answer["t"] == 0
    with replicas["both"].websocket_connect(PATH) as ws:  # and a version-2 snapshot resumes on version 2
        ws.receive_json()
        first = [_step(ws, x) for x in xs[:3]]
        ws.send_json({"snapshot": True})
        newer = ws.receive_json()
    with replicas["new"].websocket_connect(PATH) as ws:
        ws.receive_json()
        ws.send_json({"resume": newer["snapshot"]})
        assert ws.receive_json() == {"resumed": True, "t": 3, "version": "2"}
    [on_one], _ = _snapshot(replicas["old"], xs[:1])
    np.testing.assert_allclose(first[0]["logits"], np.roll(on_one["logits"], 1))  # version 2's relabeling


def test_models_dir_layout_is_what_the_fixture_says(replicas: dict[str, TestClient]) -> None:
    versions = {r: [v["version"] for v in c.post("/v2/repository/index").json()] for r, c in replicas.items()}
    assert versions == {"old": ["1"], "both": ["1", "2"], "new": ["2"]}


@pytest.mark.slow
def test_the_resumable_client_follows_the_snapshot_version(tmp_path: Path) -> None:
    """A real server restarted under a resumable stream: with versions 1 and 2 the stream resumes on its
    version 1 (``stream.version``, answers equal to an uninterrupted run); with version 2 only, the client
    tries other connections and raises PSNError ``version_unavailable``."""
    models = tmp_path / "models"
    shutil.copytree(exported_models() / NAME, models / NAME / "1")
    xs = sequences(1, seed=12)[0]  # [T, F]
    args = ("--providers", "CPUExecutionProvider", "--stream-secret", SECRET)
    policy = RetryPolicy(retries=4, backoff_s=0.05, max_backoff_s=0.2, step_timeout_s=20)
    with launcher.serve(*args, models_dir=models, log=tmp_path / "server.log") as server:
        with PSNClient(server.base_url) as client, client.stream(NAME) as plain:
            reference = [plain.step(x).probabilities for x in xs]  # version 1, uninterrupted
        with (
            PSNClient(server.base_url) as client,
            client.stream(NAME, resumable=True, snapshot_every=2, retry=policy) as stream,
        ):
            got = [stream.step(x).probabilities for x in xs[:4]]
            assert stream.version == "1"
            server.stop()  # the drain hands the stream its snapshot
            derive_version(exported_models() / NAME, models / NAME / "2", "2", shift=1)
            server.restart()  # versions 1 and 2: a new stream would get version 2
            got += [stream.step(x).probabilities for x in xs[4:]]
            assert (stream.version, stream.reconnects) == ("1", 1)
            np.testing.assert_allclose(got, reference, atol=1e-6)
            server.stop()
            shutil.rmtree(models / NAME / "1")
            server.restart()  # version 2 only
            with pytest.raises(PSNError) as lost:
                stream.step(xs[0])
            assert lost.value.code == "version_unavailable", lost.value
