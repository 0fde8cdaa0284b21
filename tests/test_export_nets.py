"""The exporter on networks beyond SeqClassifier: neuron kinds (this project's and SpikingJelly's, mixed
in one network) × layer types (Linear, Conv1d, Conv2d, BatchNorm, average / max pooling, Flatten,
Dropout) × per-step input ranks 1, 2, 3 × two T, each checked at batch 1, 3 and 64 by the export's
own parity checks (PyTorch == full.onnx == step loop), then served by psn_runtime (classify and every
streamed step against the module's own forward)."""

from __future__ import annotations

import asyncio
import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters import CheckReport, export_module
from exporters.build import build_full
from exporters.graph import count_nodes
from exporters.prepare import prepare, reset_states
from psn_runtime import Runtime, RuntimeConfig
from psn_runtime.manifest import Manifest
from tests.nets import INPUT_SHAPES, tiny_net

pytest.importorskip("spikingjelly.activation_based.neuron")

# (kinds of the two neuron layers, input rank, T, source of the neurons)
CASES = [
    (("psn", "psn"), 1, 4, "psn"),
    (("masked_psn", "masked_psn"), 2, 6, "psn"),
    (("sliding_psn", "lif"), 3, 4, "psn"),
    (("lif_soft", "sliding_psn"), 1, 6, "psn"),
    (("psn", "psn"), 3, 6, "sj"),
    (("masked_psn", "sliding_psn"), 1, 4, "sj"),
    (("sliding_psn", "sliding_psn"), 2, 6, "sj"),
    (("lif", "if"), 3, 4, "sj"),
    (("plif", "lif_soft"), 2, 6, "sj"),
    (("masked_psn", "psn"), 2, 4, "sj"),
]
KIND = {"lif_soft": "lif", "plif": "lif"}  # the manifest kind of each test kind
RANK = {"psn": 0, "masked_psn": 1}  # how little each kind can stream; sliding PSN, LIF, IF: 2


def _id(case: tuple) -> str:
    (a, b), rank, T, source = case
    return f"{source}-{a}+{b}-rank{rank}-T{T}"


@functools.cache
def exported(case: tuple) -> tuple[torch.nn.Module, Path, Manifest, CheckReport]:
    kinds, rank, T, source = case
    net = tiny_net(kinds, rank, T, source)
    out = Path(tempfile.mkdtemp(prefix="psn-export-nets-")) / "net"
    report = CheckReport()
    manifest = export_module(
        net, out, input_shape=INPUT_SHAPES[rank], T=T, name="net", labels=["a", "b", "c"], report=report
    )
    return net, out, manifest, report


def _forward(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """x [N, T, *shape] -> the module's own per-step logits [N, T, C]."""
    reset_states(net)
    with torch.no_grad():
        y = net(torch.from_numpy(x).transpose(0, 1).contiguous())
    reset_states(net)
    return y.transpose(0, 1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_export_checks_and_manifest(case: tuple) -> None:
    (a, b), rank, T, _ = case
    _, out, manifest, report = exported(case)
    kinds = [KIND.get(a, a), KIND.get(b, b)]
    assert [k.value for k in manifest.neurons] == kinds
    assert manifest.kind.value == min(kinds, key=lambda k: RANK.get(k, 2))  # ties: the first
    assert manifest.input_shape == INPUT_SHAPES[rank] and manifest.T == T
    assert manifest.streams is ("psn" not in kinds)
    variable = all(k in ("sliding_psn", "lif", "if") for k in kinds)
    assert manifest.variable_length is variable
    assert manifest.max_steps == (T if manifest.streams and "masked_psn" in kinds else None)
    assert manifest.labels == ["a", "b", "c"]
    files = {"full.onnx", "step.onnx"} if manifest.streams else {"full.onnx"}
    assert {p.name for p in out.iterdir()} == files | {"manifest.json"}
    # the export's own checks ran at batch 1, 3, 64 (and T/2 for variable-length networks), spikes equal
    checks = {"full_vs_torch", "step_vs_full"} if manifest.streams else {"full_vs_torch"}
    lengths = 2 if variable else 1
    assert sorted(r.batch for r in report.results) == sorted([1, 3, 64] * len(checks) * lengths)
    assert {r.check.split("@")[0] for r in report.results} == checks
    assert all(r.max_abs_err < 1e-4 and r.spike_mismatch == r.tie_mismatch for r in report.results)
    rates = np.mean([r.spike_rate for r in report.results if r.check == "full_vs_torch"], axis=0)
    assert (rates > 0.02).all() and (rates < 0.98).all(), rates  # the comparison is not vacuous
    for name in files:
        onnx.checker.check_model(str(out / name), full_check=True)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_served_by_the_runtime(case: tuple) -> None:
    """psn_runtime classify and every streamed step == the module's own forward (1e-4)."""
    net, out, manifest, _ = exported(case)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, manifest.T, *manifest.input_shape)).astype(np.float32)
    ref = _forward(net, x)  # [3, T, C]
    assert np.abs(ref - ref.mean(1, keepdims=True)).max() > 1e-3  # the logits depend on the input

    async def serve() -> list[np.ndarray]:
        runtime = Runtime(RuntimeConfig(models_dir=out.parent, providers=["CPUExecutionProvider"]))
        await runtime.start()
        try:
            got = runtime.classify("net", x)
            np.testing.assert_allclose(got.logits, ref.mean(1), rtol=1e-4, atol=1e-4)
            assert got.labels == [["a", "b", "c"][i] for i in ref.mean(1).argmax(1)]
            running = []
            sid = await runtime.open_stream("net")
            for t in range(manifest.T):
                r = await runtime.step(sid, x[0, t])
                running.append(r.logits if r.ready else None)
            runtime.close_stream(sid)
            return running
        finally:
            await runtime.close()

    running = asyncio.run(serve())
    if manifest.streams:  # the running mean after every step
        for t, logits in enumerate(running):
            np.testing.assert_allclose(logits, ref[0, : t + 1].mean(0), rtol=1e-4, atol=1e-4)
    else:  # a PSN answers once all T steps are in
        np.testing.assert_allclose(running[-1], ref[0].mean(0), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kinds,rank,source",
    [(("psn", "psn"), 3, "sj"), (("masked_psn", "lif"), 2, "psn"), (("sliding_psn", "if"), 1, "sj")],
)
def test_node_count_does_not_depend_on_T(kinds: tuple, rank: int, source: str) -> None:
    counts = []
    for T in (4, 9):
        p = prepare(tiny_net(kinds, rank, T, source), INPUT_SHAPES[rank], T)
        counts.append(count_nodes(build_full(p, False).graph))
    assert counts[0] == counts[1]
