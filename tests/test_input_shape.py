"""Any per-step input shape, end to end: a model whose timestep is [2, 3] (not a flat [F]) through the
runtime, HTTP classify (nested JSON), the WebSocket (binary frame of prod(shape) float32, nested JSON) and
V2. The model is a small hand-built ONNX pair with known math, so every answer is checked
against numpy:

    full.onnx  x [N, T, 2, 3] -> flat [N, T, 6] -> cumsum over T -> @ W [6, C] -> step_logits [N, T, C]
    step.onnx  x [N, 2, 3], s [N, 6] -> s' = s + flat(x) -> logits = s' @ W, state s'
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from psn_runtime import Runtime, RuntimeConfig
from psn_runtime.errors import BadInput
from psn_runtime.manifest import Manifest
from server.app import build_app
from server.settings import Settings
from tests.frames_model import sum_model_graphs, write_sum_model

SHAPE = (2, 3)
F = 6
T = 5
C = 4
NAME = "shape23"
W = np.random.default_rng(0).standard_normal((F, C)).astype(np.float32)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shape-models")
    for model in sum_model_graphs(SHAPE, W):
        onnx.checker.check_model(model, full_check=True)
    labels = [f"c{i}" for i in range(C)]
    write_sum_model(root / NAME, name=NAME, shape=SHAPE, T=T, w=W, labels=labels, command=__file__)
    return root


def _expected(x: np.ndarray) -> np.ndarray:
    """x [B, T', 2, 3] -> the mean over T' of the per-step logits [B, C] (numpy, float64)."""
    flat = x.reshape(x.shape[0], x.shape[1], F).astype(np.float64)  # [B, T', 6]
    return (np.cumsum(flat, axis=1) @ W.astype(np.float64)).mean(axis=1)


def _xs(batch: int, steps: int = T, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, steps, *SHAPE)).astype(np.float32)


def test_manifest_records_the_shape_and_reads_schema_1(models_dir):
    m = Manifest.load(models_dir / NAME)
    assert (m.input_shape, m.features, m.schema_version) == (SHAPE, 6, 2)
    doc = json.loads((models_dir / NAME / "manifest.json").read_text())
    assert doc["input_shape"] == [2, 3] and doc["features"] == 6
    doc.pop("input_shape")
    doc["features"] = 7
    assert Manifest.model_validate(doc).input_shape == (7,)  # schema 1: one feature axis
    doc["input_shape"] = [2, 3]
    with pytest.raises(ValueError, match="not the product"):
        Manifest.model_validate(doc)


def test_runtime_classify_and_stream_any_shape(models_dir):
    async def main():
        rt = Runtime(RuntimeConfig(models_dir=models_dir, providers=["CPUExecutionProvider"]))
        await rt.start()
        try:
            x = _xs(3)
            np.testing.assert_allclose(rt.classify(NAME, x).logits, _expected(x), rtol=1e-5, atol=1e-5)
            one = rt.classify(NAME, x[1])  # [T, 2, 3]: one sequence
            np.testing.assert_allclose(one.logits, _expected(x[1:2]), rtol=1e-5, atol=1e-5)
            with pytest.raises(BadInput, match=r"per-step shape \[2, 3\], got \[3, 2\]"):
                rt.classify(NAME, x.reshape(3, T, 3, 2))
            with pytest.raises(BadInput, match=r"rank 4 or 3\), got rank 2"):
                rt.classify(NAME, x.reshape(3 * T, 6))
            sid = await rt.open_stream(NAME)
            for t in range(T):
                res = await rt.step(sid, x[0, t])  # [2, 3]
                want = _expected(x[:1, : t + 1])[0]
                assert res.t == t and res.ready
                assert res.label == f"c{int(np.argmax(want))}"
            with pytest.raises(BadInput, match=r"one timestep of shape \[2, 3\]"):
                await rt.step(sid, x[0, 0].reshape(6))
        finally:
            await rt.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def client(models_dir):
    settings = Settings(models_dir=models_dir, providers=["CPUExecutionProvider"])
    with TestClient(build_app(settings)) as c:
        yield c


def test_http_classify_nested_json(client):
    x = _xs(2, seed=2)
    r = client.post(f"/v1/models/{NAME}/classify", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    got = np.array([p["logits"] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, _expected(x), rtol=1e-5, atol=1e-5)
    bad = client.post(f"/v1/models/{NAME}/classify", json={"inputs": x.reshape(2, T, 6).tolist()})
    assert bad.status_code == 422
    assert "per-step shape [2, 3]" in bad.json()["error"]["message"]  # names the expected shape
    deep = client.post(f"/v1/models/{NAME}/classify", json={"inputs": [x.tolist()]})
    assert deep.status_code == 422 and "B×T×2×3" in deep.json()["error"]["message"]
    info = client.get(f"/v1/models/{NAME}").json()
    assert info["manifest"]["input_shape"] == [2, 3] and info["manifest"]["features"] == 6


@pytest.mark.parametrize("frame", ["binary", "flat", "nested", "mixed"])
def test_websocket_frames_binary_flat_and_nested(client, frame):
    """One contract for every per-step shape: a binary frame of prod(shape) float32, or a JSON frame
    ``{"x": [...]}`` with prod(shape) numbers (flat, C order) or nested as the shape; all answer alike."""
    x = _xs(1, seed=3)[0]  # [T, 2, 3]
    with client.websocket_connect(f"/v1/models/{NAME}/stream?logits=true") as ws:
        hello = ws.receive_json()
        assert hello["input_shape"] == [2, 3] and hello["features"] == 6
        assert "6 numbers (flat, C order) or nested as [2, 3]" in hello["json"]
        for t in range(T):
            kind = ("binary", "flat", "nested")[t % 3] if frame == "mixed" else frame
            if kind == "binary":
                ws.send_bytes(x[t].astype("<f4").tobytes())  # 6 float32, C order
            elif kind == "flat":
                ws.send_text(json.dumps({"x": x[t].reshape(6).tolist()}))  # [6]
            else:
                ws.send_text(json.dumps({"x": x[t].tolist()}))  # nested [2][3]
            step = ws.receive_json()
            assert step["t"] == t
            np.testing.assert_allclose(step["logits"], _expected(x[None, : t + 1])[0], rtol=1e-5, atol=1e-5)


def test_websocket_frames_of_the_wrong_size_are_refused(client):
    x = _xs(1, seed=3)[0]  # [T, 2, 3]
    with client.websocket_connect(f"/v1/models/{NAME}/stream") as ws:
        ws.receive_json()
        ws.send_bytes(x[0].astype("<f4").tobytes()[:20])
        err = ws.receive_json()["error"]
        assert "[2, 3]" in err["message"] and err["param"] == "x"
        ws.send_text(json.dumps({"x": x[0].reshape(6)[:5].tolist()}))  # flat, one short
        err = ws.receive_json()["error"]
        assert err["param"] == "x" and "6 numbers (flat) or 2×3" in err["message"]
        assert "got 5" in err["message"]
        ws.send_text(json.dumps({"x": x[0].reshape(3, 2).tolist()}))  # nested, the wrong shape
        err = ws.receive_json()["error"]
        assert err["param"] == "x" and "shape [2, 3], got shape [3, 2]" in err["message"]
        ws.send_text(json.dumps({"x": [x[0].tolist()]}))  # nested too deep
        assert "nested too deep" in ws.receive_json()["error"]["message"]
        ws.send_text(json.dumps({"x": x[0].tolist()}))  # the stream's state was untouched by the refusals
        step = ws.receive_json()
        assert step["t"] == 0


def test_v2_shape_metadata_and_infer(client):
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["inputs"][0]["shape"] == [-1, -1, 2, 3]
    x = _xs(2, steps=3, seed=4)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = client.post(f"/v2/models/{NAME}/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    got = np.array(out["logits"]["data"]).reshape(2, C)
    np.testing.assert_allclose(got, _expected(x), rtol=1e-5, atol=1e-5)
    body["inputs"][0]["shape"] = [2, 3, 6]
    bad = client.post(f"/v2/models/{NAME}/infer", json=body)
    assert bad.status_code == 422 and "[B, T, 2, 3]" in bad.json()["error"]
