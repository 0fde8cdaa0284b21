"""Helpers for the model-version tests and the rollout scenario (no tests here): a second version of a
model directory whose answers differ from the first, and the layouts that hold them.

``derive_version`` writes a copy of a model directory whose graphs relabel the classes: every graph's
``logits`` (and ``step_logits``) output goes through one more node that rolls the class axis by ``shift``
(class i's logit is reported as class i + shift's). Same inputs, same states, same shapes: a model the
runtime loads like any other, whose every answer differs from the original's in a way a test can predict.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from psn_runtime.manifest import LOGITS_NAME, STEP_LOGITS_NAME, Manifest

_RELABELED = (LOGITS_NAME, STEP_LOGITS_NAME)


def _relabel_graph(src: Path, dst: Path, classes: int, shift: int) -> None:
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    order = np.roll(np.arange(classes, dtype=np.int64), shift)  # output class j takes input class order[j]
    graph.initializer.append(numpy_helper.from_array(order, "relabel_order"))
    for out in graph.output:
        if out.name not in _RELABELED:
            continue
        inner = f"{out.name}_before_relabel"
        for node in graph.node:  # the graph's own nodes keep reading the tensor as it was
            node.output[:] = [inner if name == out.name else name for name in node.output]
            node.input[:] = [inner if name == out.name else name for name in node.input]
        graph.node.append(helper.make_node("Gather", [inner, "relabel_order"], [out.name], axis=-1))
    onnx.save(proto, str(dst))


def derive_version(src: Path, dst: Path, version: str, shift: int = 1) -> Path:
    """A new version of the model directory ``src`` in ``dst`` (created): the manifest's version and
    sha256 updated, the classes rolled by ``shift``. Returns dst."""
    manifest = Manifest.load(src)
    dst.mkdir(parents=True)
    for name in manifest.sha256:
        _relabel_graph(src / name, dst / name, manifest.num_classes, shift)
    sha = {name: hashlib.sha256((dst / name).read_bytes()).hexdigest() for name in manifest.sha256}
    manifest.model_copy(update={"version": version, "sha256": sha}).dump(dst)
    return dst


def relabeled(probabilities: np.ndarray, shift: int) -> np.ndarray:
    """What a version derived with ``shift`` answers, from the original's [..., C] answer."""
    return np.roll(probabilities, shift, axis=-1)


def numbered_layout(models_dir: Path, src: Path, name: str, versions: dict[str, int]) -> Path:
    """models_dir/name/V for each version V -> shift (0: a plain copy of src); returns models_dir/name."""
    folder = models_dir / name
    for version, shift in versions.items():
        if shift == 0:
            shutil.copytree(src, folder / version)
        else:
            derive_version(src, folder / version, version, shift)
    return folder
