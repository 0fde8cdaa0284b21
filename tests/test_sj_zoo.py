"""SpikingJelly 2.0's own model zoo (tests/sj_zoo.py: spiking_resnet18 with IFNode, sew_resnet18 ADD with
LIFNode and with SlidingPSN, spiking_vgg11_bn with PSN, CIFAR10Net with ParametricLIFNode, with a soft-reset
LIFNode and with MaskedPSN at λ = 1; multi-step, input [3, 32, 32], T = 4, random weights whose neurons all
fire) exported by ``psn export --module`` with no other flag, then served: classify and every streamed step
answer like SpikingJelly's own forward (labels equal, logits within 1e-4) for every sample that a
threshold tie does not set aside (the same rule as the export checks, exporters/parity.py, applied to
these inputs); one network also through a real ``psn serve`` (HTTP classify, WebSocket stream).

Each network is built, calibrated and exported once (a module-scoped fixture, one network at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional

from exporters import checks
from exporters import cli as export_cli
from exporters.build import spikes_name
from exporters.parity import ATOL, RTOL, compare
from exporters.prepare import prepare
from psn_runtime.manifest import Manifest
from server.client import PSNClient
from server.launcher import serve
from tests import sj_zoo
from tests.fixtures import make_runtime, running_means

torch.set_num_threads(1)
# a deep network's two exports (torch.onnx.export) take 20-50 s of CPU each; on a loaded machine its first
# test (which builds it) may take far longer than the suite's default 300 s
pytestmark = pytest.mark.timeout(1200)

# name: (neuron kind of every layer, neuron layers, classes); the slowest to export are marked slow
ZOO = {
    "spiking_resnet18_if": ("if", 17, 10),
    "sew_resnet18_add_lif": ("lif", 20, 10),
    "sew_resnet18_add_sliding_psn": ("sliding_psn", 20, 10),
    "spiking_vgg11_bn_psn": ("psn", 10, 1000),  # spiking_vgg11_bn takes no num_classes
    "cifar10net_plif": ("lif", 8, 10),
    "cifar10net_lif_soft": ("lif", 8, 10),
    "cifar10net_masked_psn": ("masked_psn", 8, 10),
}
# the four deep ones (20-60 s of export each): marked zoo, run by `make zoo-test` (a stage of .ci/run) and not
# by `make test`, which keeps the three CIFAR10Nets
SLOW = {"spiking_resnet18_if", "sew_resnet18_add_lif", "sew_resnet18_add_sliding_psn", "spiking_vgg11_bn_psn"}
T, SHAPE = sj_zoo.T, sj_zoo.SHAPE
SERVED = 6  # sequences classified per network
STREAMED = 2  # of which streamed step by step


class Exported:
    def __init__(self, name: str, net: torch.nn.Module, out: Path, printed: str) -> None:
        self.name, self.net, self.out, self.printed = name, net, out, printed
        self.manifest = Manifest.load(out)


def _export(name: str, root: Path) -> Exported:
    """Build and calibrate the network, save its weights, export it with the command line."""
    torch.manual_seed(0)
    net = sj_zoo.calibrate(getattr(sj_zoo, name)())
    weights = root / f"{name}.pt"
    torch.save(net.state_dict(), weights)
    out = root / "models" / name.replace("_", "-")
    argv = [
        "--module",
        f"{Path(sj_zoo.__file__)}:{name}",
        "--weights",
        str(weights),
        "--input-shape",
        ",".join(str(d) for d in (T, *SHAPE)),
        "--name",
        out.name,
        "--out",
        str(out),
    ]
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = export_cli.main(argv)
    assert code == 0, errors.getvalue()
    weights.unlink()
    return Exported(name, net, out, printed.getvalue())


@pytest.fixture(
    scope="module",
    params=[pytest.param(n, marks=(pytest.mark.slow, pytest.mark.zoo)) if n in SLOW else n for n in ZOO],
)
def zoo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"sj-zoo-{request.param}")
    exported = _export(request.param, root)
    yield exported
    shutil.rmtree(root, ignore_errors=True)


def _sj(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """SpikingJelly's own forward (reset_net before and after): x [N, T, *] -> step logits [N, T, C]."""
    functional.reset_net(net)
    with torch.no_grad():
        y = net(torch.from_numpy(x).transpose(0, 1).contiguous())
    functional.reset_net(net)
    return y.transpose(0, 1).numpy()


def _kept(z: Exported, x: np.ndarray) -> np.ndarray:
    """Which samples of x [N, T, *] no threshold tie sets aside: SpikingJelly's spikes against the served
    full.onnx's, layer by layer, as the export checks compare them (raises on a real difference)."""
    p = prepare(z.net, SHAPE, T)
    layers = len(p.forms)
    sess = checks.session(z.out / "full.onnx", [spikes_name(i) for i in range(layers)])
    ref = checks.torch_trace(z.net, p, x)
    _, got = checks.full_trace(sess, x, layers)
    parity = compare("served_vs_sj", ref, got, ref.margins, [str(f.info.kind) for f in p.forms])
    return parity.aside_from == layers


def _table(printed: str, check: str) -> list[list[str]]:
    """The per-layer rows the command line printed for one check."""
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{check}: "))
    rows = []
    for line in lines[start + 2 :]:
        if not re.match(r"\s+\d+\s", line):
            break
        rows.append(line.split())
    return rows


def test_exports_with_the_cli_unchanged(zoo: Exported) -> None:
    print(zoo.printed)  # the parity table psn export printed (pytest -rP shows it)
    kind, layers, classes = ZOO[zoo.name]
    m = zoo.manifest
    assert [str(k) for k in m.neurons] == [kind] * layers
    assert (m.input_shape, m.T, len(m.labels)) == (SHAPE, T, classes)
    assert m.streams is (kind != "psn")
    assert (zoo.out / "step.onnx").is_file() is m.streams
    assert f"psn export: {m.name} ({kind}, T={T}" in zoo.printed
    rows = _table(zoo.printed, "full_vs_torch")
    assert [int(r[0]) for r in rows] == list(range(layers))
    rates = [float(r[-1]) for r in rows]
    assert all(0.01 <= r <= 0.99 for r in rates), rates  # every layer fires (the check is not vacuous)
    header = next(line for line in zoo.printed.splitlines() if line.startswith("full_vs_torch: "))
    found = re.search(r"(\d+) samples .* (\d+) set aside .*at most (\d+)", header)
    total, aside, most = map(int, found.groups())
    assert total >= 68 and aside <= most == total // 16  # the default bound, 1/16


def test_serves_like_spikingjelly(zoo: Exported) -> None:
    """psn_runtime's classify (labels, logits) and every streamed step against SpikingJelly's forward."""
    name = zoo.manifest.name
    x = np.random.default_rng(11).standard_normal((SERVED, T, *SHAPE)).astype(np.float32)
    ref = _sj(zoo.net, x)  # [N, T, C]
    assert np.abs(ref - ref.mean(1, keepdims=True)).max() > 1e-3  # the logits depend on the input
    kept = _kept(zoo, x)
    assert kept.sum() >= SERVED // 2, kept  # a tie sets a sample aside now and then, not most

    async def run() -> tuple:
        runtime = make_runtime(zoo.out.parent)
        try:
            got = runtime.classify(name, x)
            streams = []
            for i in range(STREAMED if zoo.manifest.streams else 0):
                sid = await runtime.open_stream(name)
                streams.append([await runtime.step(sid, x[i, t]) for t in range(T)])
                runtime.close_stream(sid)
            return got, streams
        finally:
            await runtime.close()

    got, streams = asyncio.run(run())
    mean = ref.mean(1)  # [N, C]: the decision is the mean over T
    np.testing.assert_allclose(got.logits[kept], mean[kept], rtol=RTOL, atol=ATOL)
    _same_labels(got.labels, mean, kept, zoo.manifest.labels)
    means = running_means(ref)  # [N, T, C]: what a stream answers after each step
    for i, steps in enumerate(streams):
        if kept[i]:
            got_means = np.array([s.logits for s in steps])  # [T, C]
            np.testing.assert_allclose(got_means, means[i], rtol=RTOL, atol=ATOL)
            assert all(s.ready for s in steps)


def _same_labels(labels: list[str], mean: np.ndarray, kept: np.ndarray, names: list[str]) -> None:
    """Every kept sample's label is SpikingJelly's best class (one of them where its logits tie exactly:
    the zoo's VotingLayer averages spikes, so two classes may share the top value)."""
    for i in np.flatnonzero(kept):
        top = np.flatnonzero(mean[i] >= mean[i].max() - 1e-6)
        assert names.index(labels[i]) in top, (i, labels[i], mean[i])


@pytest.mark.parametrize("zoo", ["cifar10net_plif"], indirect=True)
def test_a_real_server_answers_like_spikingjelly(zoo: Exported, tmp_path: Path) -> None:
    """CIFAR10Net with ParametricLIFNode through ``psn serve`` (the shared launcher): HTTP classify (JSON
    and V2 binary) and a WebSocket stream, every step, against SpikingJelly's forward."""
    z = zoo
    name = z.manifest.name
    x = np.random.default_rng(5).standard_normal((3, T, *SHAPE)).astype(np.float32)
    ref = _sj(z.net, x)
    kept = _kept(z, x)
    with (
        serve(
            "--providers", "CPUExecutionProvider", models_dir=z.out.parent, log=tmp_path / "server.log"
        ) as srv,
        PSNClient(srv.base_url) as client,
    ):
        answers = [client.classify(name, x, binary=binary) for binary in (False, True)]
        with client.stream(name, logits=True) as stream:
            steps = [stream.step(x[0, t]) for t in range(T)]
    mean = ref.mean(1)
    for answer in answers:
        logits = np.array([p.logits for p in answer.predictions])
        np.testing.assert_allclose(logits[kept], mean[kept], rtol=RTOL, atol=ATOL)
        _same_labels([p.label for p in answer.predictions], mean, kept, z.manifest.labels)
    if kept[0]:
        got = np.array([s.logits for s in steps])
        np.testing.assert_allclose(got, running_means(ref)[0], rtol=RTOL, atol=ATOL)
