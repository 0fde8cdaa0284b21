"""Unloading a model version gives its memory back: the resident set size of a serving process, measured
in a fresh subprocess, before a large model loads, while it serves, and after it is unloaded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from psn_runtime.manifest import FULL_GRAPH, Manifest, NeuronKind

F, H, C, T = 256, 65536, 4, 8  # the first weight matrix alone is F * H float32 = 64 MiB
WEIGHT_BYTES = (F * H + H * C) * 4


def large_model(directory: Path) -> Path:
    """A full-only model directory whose graph holds ~64 MiB of weights: x [N, T, F] -> mean over T ->
    MatMul [F, H] -> Relu -> MatMul [H, C] -> logits [N, C]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((F, H)) / np.sqrt(F)).astype(np.float32)
    w2 = (rng.standard_normal((H, C)) / np.sqrt(H)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "w1"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["active"]),
            helper.make_node("MatMul", ["active", "w2"], ["logits"]),
        ],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, F])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    directory.mkdir(parents=True)
    onnx.save(proto, str(directory / FULL_GRAPH))
    Manifest(
        name="large",
        kind=NeuronKind.PSN,
        T=T,
        input_shape=(F,),
        labels=[str(i) for i in range(C)],
        variable_length=False,
        streams=False,
        opset=18,
        sha256={FULL_GRAPH: hashlib.sha256((directory / FULL_GRAPH).read_bytes()).hexdigest()},
        dataset="none",
        parameters=F * H + H * C,
        command="tests/test_runtime_memory.py",
    ).dump(directory)
    return directory


PROBE = r"""
import asyncio, gc, json, os, sys
import numpy as np
from psn_runtime import ModelStatus, Runtime, RuntimeConfig

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

async def main(models, staged, target):
    config = RuntimeConfig(models_dir=models, providers=["CPUExecutionProvider"], model_control="explicit")
    rt = Runtime(config)
    await rt.start()
    rt.classify("psn", np.zeros((1, 8, 5), np.float32))  # ORT is up and has run once
    base = rss()
    os.rename(staged, target)
    await rt.load_model("large")
    gc.freeze()  # as psn serve does after start-up: what is frozen is freed by reference counting only
    answer = rt.classify("large", np.ones((2, 8, 256), np.float32))
    loaded = rss()
    await rt.unload_model("large")
    while rt.model("large").status is not ModelStatus.UNAVAILABLE:
        await asyncio.sleep(0.02)
    unloaded = rss()
    await rt.close()
    shape = list(answer.logits.shape)
    print(json.dumps({"base": base, "loaded": loaded, "unloaded": unloaded, "shape": shape}))

asyncio.run(main(*sys.argv[1:4]))
"""


@pytest.mark.slow
def test_unloading_a_large_model_gives_its_memory_back(tmp_path):
    from tests.fixtures import exported_models

    models = tmp_path / "models"
    models.mkdir()
    (models / "psn").symlink_to(exported_models() / "psn")
    tiny = json.loads((models / "psn" / "manifest.json").read_text())
    assert tiny["input_shape"] == [5] and tiny["T"] == 8  # what the probe feeds it
    staged = large_model(tmp_path / "staged" / "1")
    target = models / "large" / "1"
    target.parent.mkdir()
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(models), str(staged), str(target)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["shape"] == [2, C]
    held = got["loaded"] - got["base"]
    left = got["unloaded"] - got["base"]
    assert held > 0.8 * WEIGHT_BYTES, got  # the model did occupy memory while it served
    assert left < 0.15 * WEIGHT_BYTES, got  # and unloading gave (almost) all of it back
