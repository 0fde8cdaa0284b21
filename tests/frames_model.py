"""A model directory whose timestep is a whole image, [1, 28, 28] (MNIST repeated over T, like psn.zoo's
mnist2d): a hand-built ONNX pair (no training) that classifies by the nearest of ten templates, the
bundled sMNIST examples themselves, so it gets those examples right. For the demo page's tests: it must
play, draw and show a per-step shape other than sequential MNIST's [28] columns.

    full.onnx  x [N, T, 1, 28, 28] -> flat [N, T, 784] -> cumsum over T -> @ W [784, 10] -> step_logits
    step.onnx  x [N, 1, 28, 28], s [N, 784] -> s' = s + flat(x) -> logits = s' @ W, state s'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SHAPE = (1, 28, 28)
F = 28 * 28
T = 4
NAME = "frames28-template"


def sum_model_graphs(shape: tuple[int, ...], w: np.ndarray):
    """(full, step) ONNX models of the running-sum classifier for per-step ``shape`` and W [prod(shape), C]:
    full x [N, T, *shape] -> cumsum over T of flat(x) @ W; step x [N, *shape], s [N, F] -> s + flat(x)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f, classes = w.shape
    opset = [helper.make_opsetid("", 21)]
    full = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),  # [N, T, *shape] -> [N, T, F]
            helper.make_node("CumSum", ["flat", "t_axis"], ["acc"]),
            helper.make_node("MatMul", ["acc", "W"], ["step_logits"]),  # [N, T, C]
            helper.make_node("ReduceMean", ["step_logits", "t_axes"], ["logits"], keepdims=0),  # [N, C]
        ],
        "full",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", *shape])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("step_logits", TensorProto.FLOAT, ["N", "T", classes]),
        ],
        [
            numpy_helper.from_array(np.array([0, 0, f], np.int64), "flat_shape"),
            numpy_helper.from_array(np.array(1, np.int64), "t_axis"),
            numpy_helper.from_array(np.array([1], np.int64), "t_axes"),
            numpy_helper.from_array(w, "W"),
        ],
    )
    step = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),  # [N, *shape] -> [N, F]
            helper.make_node("Add", ["s", "flat"], ["s_out"]),
            helper.make_node("MatMul", ["s_out", "W"], ["logits"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", f]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["N", f]),
        ],
        [numpy_helper.from_array(np.array([0, f], np.int64), "flat_shape"), numpy_helper.from_array(w, "W")],
    )
    return [onnx.helper.make_model(g, opset_imports=opset, ir_version=10) for g in (full, step)]


def write_sum_model(
    d: Path, *, name: str, shape: tuple[int, ...], T: int, w: np.ndarray, labels: list[str], **manifest
):
    """Write the running-sum classifier (sum_model_graphs) and its manifest into the directory ``d``;
    ``manifest`` adds dataset, command... Returns the Manifest."""
    from psn_runtime.manifest import FULL_GRAPH, STEP_GRAPH, Manifest, NeuronKind, StateSpec

    d.mkdir(parents=True, exist_ok=True)
    sha = {}
    for file, model in zip((FULL_GRAPH, STEP_GRAPH), sum_model_graphs(shape, w), strict=True):
        data = model.SerializeToString()
        (d / file).write_bytes(data)
        sha[file] = hashlib.sha256(data).hexdigest()
    result = Manifest(
        name=name,
        kind=NeuronKind.SLIDING_PSN,
        T=T,
        k=2,
        input_shape=shape,
        labels=labels,
        variable_length=True,
        streams=True,
        states=[StateSpec(input="s", output="s_out", shape=(w.shape[0],), dtype="float32")],
        opset=21,
        sha256=sha,
        parameters=w.size,
        **{"dataset": "none", "test_accuracy": 0.0, "command": "tests/frames_model.py", **manifest},
    )
    result.dump(d)
    return result


def write_frames_model(root: Path, smnist_examples: Path) -> Path:
    """models_dir/NAME from the ten sMNIST examples (x [28 columns, 28 rows] each); returns its directory."""
    doc = json.loads(smnist_examples.read_text())
    images = [np.asarray(e["inputs"], dtype=np.float32).T for e in doc["examples"]]  # [rows, cols]
    labels = [e["label"] for e in doc["examples"]]
    templates = np.stack([im.ravel() / np.linalg.norm(im) for im in images], axis=1)  # [784, 10]
    d = root / NAME
    write_sum_model(
        d,
        name=NAME,
        shape=SHAPE,
        T=T,
        w=templates.astype(np.float32),
        labels=labels,
        dataset="mnist2d",
        command="tests/frames_model.py (nearest template, no training)",
    )
    examples = [
        {"index": i, "label": e["label"], "inputs": np.repeat(im[None, None], T, axis=0).tolist()}
        for i, (e, im) in enumerate(zip(doc["examples"], images, strict=True))
    ]  # each [T, 1, 28, 28]
    (d / "examples.json").write_text(
        json.dumps({"dataset": "mnist2d", "split": "test", "examples": examples})
    )
    return d
