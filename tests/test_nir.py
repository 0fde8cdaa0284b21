"""NIR graphs written by the ``nir`` package import with ``psn export --nir`` and serve with per-step
outputs within 1e-5 of a numpy reference of docs/export.md's forward-Euler equations, for random graphs
of every supported node type; round trips from snnTorch (``export_to_nir``) and Norse (``to_nir``);
cycles, Delay nodes and nested graphs are refused by name."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from exporters import ExportError  # noqa: E402
from exporters import cli as export_cli  # noqa: E402
from exporters.sources.nir import import_nir  # noqa: E402
from psn_runtime.manifest import Manifest  # noqa: E402
from tests.fixtures import make_runtime, running_means  # noqa: E402
from tests.sources_reference import onnx_step_logits, reference  # noqa: E402

DT = 1e-3


def _f32(rng: np.random.Generator, lo: float, hi: float, shape) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _neuron(kind: str, shape, rng: np.random.Generator):
    """A NIR neuron of ``kind`` with per-neuron parameters: dt/τ in [0.3, 0.8]."""
    tau = lambda: _f32(rng, 1.25 * DT, 3.3 * DT, shape)  # noqa: E731
    r, v_leak = _f32(rng, 0.5, 1.5, shape), _f32(rng, -0.2, 0.2, shape)
    spike = {"v_threshold": _f32(rng, 0.3, 1.0, shape), "v_reset": _f32(rng, -0.3, 0.1, shape)}
    if kind == "LIF":
        return nir.LIF(tau=tau(), r=r, v_leak=v_leak, **spike)
    if kind == "IF":
        return nir.IF(r=r, **spike)
    if kind == "LI":
        return nir.LI(tau=tau(), r=r, v_leak=v_leak)
    if kind == "I":
        return nir.I(r=r)
    cuba = {"tau_syn": tau(), "tau_mem": tau(), "r": r, "v_leak": v_leak, "w_in": _f32(rng, 0.5, 1.5, shape)}
    return nir.CubaLIF(**cuba, **spike) if kind == "CubaLIF" else nir.CubaLI(**cuba)


def _dense(rng: np.random.Generator) -> tuple[nir.NIRGraph, tuple[int, ...]]:
    """[6] -> Affine, Linear, Scale and every neuron kind, with a skip edge (NIR adds a node's inputs)."""
    w = lambda o, i: _f32(rng, -0.5, 1.0, (o, i)) * (4.0 / np.sqrt(i))  # noqa: E731
    nodes = {
        "input": nir.Input(input_type=np.array([6])),
        "fc1": nir.Affine(weight=w(8, 6), bias=_f32(rng, 0.0, 0.5, 8)),
        "lif": _neuron("LIF", (8,), rng),
        "fc2": nir.Linear(weight=w(8, 8)),
        "cubalif": _neuron("CubaLIF", (8,), rng),
        "scale": nir.Scale(scale=_f32(rng, 0.5, 2.0, 8)),
        "if": _neuron("IF", (8,), rng),
        "fc3": nir.Affine(weight=w(8, 8) * 0.2, bias=_f32(rng, -0.1, 0.1, 8)),
        "i": _neuron("I", (8,), rng),
        "fc4": nir.Affine(weight=w(8, 8) * 0.2, bias=_f32(rng, -0.1, 0.1, 8)),
        "cubali": _neuron("CubaLI", (8,), rng),
        "fc5": nir.Linear(weight=w(4, 8) * 0.3),
        "li": _neuron("LI", (4,), rng),
        "output": nir.Output(output_type=np.array([4])),
    }
    chain = list(nodes)
    edges = [*pairwise(chain), ("lif", "scale")]
    return nir.NIRGraph(nodes=nodes, edges=edges), (6,)


def _conv2d(rng: np.random.Generator) -> tuple[nir.NIRGraph, tuple[int, ...]]:
    """[2, 10, 10] -> Conv2d, LIF, SumPool2d, Conv2d (stride 2, groups 2), CubaLIF, AvgPool2d, Flatten..."""
    k = lambda o, i, s: _f32(rng, -0.5, 1.0, (o, i, s, s)) * (4.0 / np.sqrt(i * s * s))  # noqa: E731
    nodes = {
        "input": nir.Input(input_type=np.array([2, 10, 10])),
        "conv1": nir.Conv2d((10, 10), k(4, 2, 3), 1, 1, 1, 1, _f32(rng, 0.0, 0.5, 4)),
        "lif": _neuron("LIF", (4, 10, 10), rng),
        "sum": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "conv2": nir.Conv2d((5, 5), k(4, 2, 3), 2, 1, 1, 2, _f32(rng, 0.0, 0.3, 4)),  # [4, 3, 3]
        "cubalif": _neuron("CubaLIF", (4, 3, 3), rng),
        "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 2, 2])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=_f32(rng, -1.0, 1.0, (3, 16)), bias=_f32(rng, 0.0, 0.2, 3)),
        "li": _neuron("LI", (3,), rng),
        "output": nir.Output(output_type=np.array([3])),
    }
    shape = (2, 10, 10)
    return nir.NIRGraph(nodes=nodes, edges=list(pairwise(nodes)), type_check=False), shape


def _conv1d(rng: np.random.Generator) -> tuple[nir.NIRGraph, tuple[int, ...]]:
    """[3, 12] -> Conv1d (padding 'same'), IF, Conv1d (stride 2), I, Flatten, Linear."""
    nodes = {
        "input": nir.Input(input_type=np.array([3, 12])),
        "conv1": nir.Conv1d(12, _f32(rng, -1.0, 1.0, (4, 3, 3)), 1, "same", 1, 1, _f32(rng, 0.0, 0.5, 4)),
        "if": _neuron("IF", (4, 12), rng),
        "conv2": nir.Conv1d(12, _f32(rng, -1.0, 1.0, (2, 4, 3)), 2, 1, 1, 1, _f32(rng, -0.1, 0.1, 2)),
        "i": _neuron("I", (2, 6), rng),
        "flat": nir.Flatten(input_type={"input": np.array([2, 6])}, start_dim=0, end_dim=-1),
        "fc": nir.Linear(weight=_f32(rng, -0.1, 0.1, (5, 12))),
        "output": nir.Output(output_type=np.array([5])),
    }
    shape = (3, 12)
    return nir.NIRGraph(nodes=nodes, edges=list(pairwise(nodes)), type_check=False), shape


GRAPHS = {"dense": _dense, "conv2d": _conv2d, "conv1d": _conv1d}
T = 8


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every graph written with nir.write, then imported with ``psn export --nir`` into one models dir."""
    root = tmp_path_factory.mktemp("nir")
    for name, make in GRAPHS.items():
        graph, shape = make(np.random.default_rng(len(name)))
        nir.write(root / f"{name}.nir", graph)
        argv = [
            "--nir",
            str(root / f"{name}.nir"),
            "--dt",
            str(DT),
            "--input-shape",
            ",".join(map(str, (T, *shape))),
        ]
        assert export_cli.main([*argv, "--name", name, "--out", str(root / "models" / name), "--quiet"]) == 0
    return root


def _inputs(name: str, shape: tuple[int, ...], batch: int = 4, steps: int = T) -> np.ndarray:
    return np.random.default_rng(7).uniform(0.0, 1.5, (batch, steps, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", GRAPHS)
def test_nir_graph_serves_within_1e5_of_the_numpy_reference(imported: Path, name: str) -> None:
    graph = nir.read(imported / f"{name}.nir", type_check=False)
    manifest = Manifest.load(imported / "models" / name)
    x = _inputs(name, manifest.input_shape)
    ref = reference(graph, DT, x)  # [N, T, C]
    full, stepped = onnx_step_logits(imported / "models" / name, x)
    np.testing.assert_allclose(full, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(stepped, ref, rtol=0, atol=1e-5)

    async def serve() -> tuple[np.ndarray, list]:
        runtime = make_runtime(imported / "models")
        try:
            logits = runtime.classify(name, x).logits
            sid = await runtime.open_stream(name)
            return logits, [await runtime.step(sid, frame) for frame in x[0]]
        finally:
            await runtime.close()

    logits, steps = asyncio.run(serve())
    np.testing.assert_allclose(logits, ref.mean(1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.stack([s.logits for s in steps]), running_means(ref)[0], rtol=0, atol=1e-5)
    assert np.ptp(ref) > 0.01 and np.ptp(ref[:, -1], axis=0).max() > 1e-3  # they move, per sample


def test_every_supported_node_type_is_covered(imported: Path) -> None:
    types = {
        type(n).__name__
        for name in GRAPHS
        for n in nir.read(imported / f"{name}.nir", type_check=False).nodes.values()
    }
    assert types == {"Input", "Output", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "Flatten"} | {
        "SumPool2d",
        "AvgPool2d",
        "IF",
        "LIF",
        "LI",
        "I",
        "CubaLIF",
        "CubaLI",
    }
    kinds = {str(k) for name in GRAPHS for k in Manifest.load(imported / "models" / name).neurons}
    assert kinds == {"lif", "if", "li", "cuba_lif", "cuba_li"}


def test_spikes_use_a_strict_threshold() -> None:
    """NIR fires at v > v_threshold, never at v == v_threshold (SpikingJelly's Θ fires at 0)."""
    graph = nir.NIRGraph.from_list(
        nir.IF(r=np.ones(2, np.float32), v_threshold=np.array([0.5, 0.25], np.float32))
    )
    net = import_nir(graph, DT, (2,))
    import torch

    out = net(torch.full((2, 1, 2), 0.25)).numpy()  # v = 0.25, then 0.5
    assert out[:, 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]


# ------------------------------------------------------------------------------------------ refused


def test_cycles_delays_and_nested_graphs_are_refused_by_name() -> None:
    lif = lambda: _neuron("LIF", (3,), np.random.default_rng(0))  # noqa: E731
    w = np.eye(3, dtype=np.float32)
    nodes = {
        "input": nir.Input(np.array([3])),
        "lif": lif(),
        "rec": nir.Linear(w),
        "output": nir.Output(np.array([3])),
    }
    edges = [("input", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")]
    with pytest.raises(ExportError, match=r"cycle \((lif -> rec -> lif|rec -> lif -> rec)\)"):
        import_nir(nir.NIRGraph(nodes=nodes, edges=edges), DT, (3,))
    delayed = nir.NIRGraph.from_list(nir.Delay(delay=np.ones(3, np.float32)), lif())
    with pytest.raises(ExportError, match=r"node 'delay' \(Delay\)"):
        import_nir(delayed, DT, (3,))
    nested = nir.NIRGraph.from_list(nir.NIRGraph.from_list(lif()), lif(), type_check=False)
    with pytest.raises(ExportError, match=r"\(NIRGraph\): a nested graph"):
        import_nir(nested, DT, (3,))
    with pytest.raises(ExportError, match=r"Input node declares shape \[3\]; --input-shape gives \[4\]"):
        import_nir(nir.NIRGraph.from_list(lif()), DT, (4,))


def test_cli_usage_errors_for_nir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--nir", str(tmp_path / "g.nir"), "--out", str(tmp_path / "m")]
    assert export_cli.main([*base, "--input-shape", "4,3", "--name", "m"]) == 2
    assert "--nir needs --dt" in capsys.readouterr().err
    assert export_cli.main([*base, "--dt", "0", "--input-shape", "4,3", "--name", "m"]) == 2
    assert "--dt 0.0: expected a time step > 0" in capsys.readouterr().err
    assert (
        export_cli.main([*base, "--dt", "1e-3", "--input-shape", "4,3", "--name", "m", "--module", "a.py:f"])
        == 2
    )
    assert "--module do not go with --nir" in capsys.readouterr().err
    assert export_cli.main([*base, "--dt", "1e-3", "--input-shape", "4,3", "--name", "m"]) == 2
    assert "no such file" in capsys.readouterr().err
