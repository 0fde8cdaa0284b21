"""Export checks with threshold ties (exporters/parity.py): a spike that differs where |H − θ| is within the
float tolerance sets its sample aside after that layer (later layers and logits of that sample may
diverge), up to a bounded share of samples; every real difference is still refused, ties or not: a
perturbed weight, a wrong reset, a differing spike away from the threshold in any sample not set aside."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from exporters import ExportCheckFailed, ExportError, checks, export_module, onnx_rewrite
from exporters import cli as export_cli
from exporters import export as export_mod
from exporters.parity import CheckReport, LayerParity, Parity, Trace, allowed_ties, compare
from psn.neurons import ResetMode
from psn_runtime.manifest import Manifest
from tests.nets import INPUT_SHAPES, tiny_net

N, T, D, C = 4, 5, 6, 3


def _zeros(n: int = N) -> tuple[Trace, list[np.ndarray]]:
    """Two layers that never spike, zero logits, and margins far from the threshold (−0.5)."""
    ref = Trace(np.zeros((n, T, C), np.float32), [np.zeros((n, T, D), np.float32) for _ in range(2)])
    return ref, [np.full((n, T, D), -0.5, np.float32) for _ in range(2)]


def _copy(t: Trace) -> Trace:
    return Trace(t.step_logits.copy(), [s.copy() for s in t.spikes])


def _tie(margins: list[np.ndarray], got: Trace, sample: int, layer: int = 0, t: int = 1, d: int = 2) -> None:
    """Sample ``sample`` sits on the threshold at (layer, t, d) and ``got`` spikes there."""
    margins[layer][sample, t, d] = 3e-6
    got.spikes[layer][sample, t, d] = 1.0


# ------------------------------------------------------------------------------------------ compare


def test_a_tie_sets_its_sample_aside_after_that_layer() -> None:
    ref, margins = _zeros()
    got = _copy(ref)
    _tie(margins, got, sample=1)
    got.spikes[1][1] = 1.0  # everything downstream of the tie differs in that sample...
    got.step_logits[1] += 5.0  # ...and so do its logits
    p = compare("c", ref, got, margins, ["psn", "psn"])
    assert p.set_aside == 1 and list(p.aside_from) == [2, 1, 2, 2]
    assert [(x.spikes, x.differ, x.ties, x.set_aside) for x in p.layers] == [
        (N * T * D, 1, 1, 1),
        ((N - 1) * T * D, 0, 0, 0),  # layer 1 compares the other three samples only
    ]
    assert p.max_abs_err == 0.0  # the logits of samples 0, 2, 3

    got.spikes[1][2, 0, 0] = 1.0  # the same difference in a sample without a tie is real
    with pytest.raises(ExportCheckFailed, match=r"neuron layer 1 \(psn\): 1 of 90 spikes differ away from"):
        compare("c", ref, got, margins, ["psn", "psn"])


def test_a_real_difference_before_the_tie_is_refused() -> None:
    ref, margins = _zeros()
    got = _copy(ref)
    _tie(margins, got, sample=1, layer=1)
    got.spikes[0][1, 4, 5] = 1.0  # layer 0 of the tied sample, far from the threshold
    with pytest.raises(ExportCheckFailed, match=r"neuron layer 0 .* in 1 of 4 samples"):
        compare("c", ref, got, margins, ["lif", "lif"])


RESETS = [("lif", True), ("if", True), ("psn", False), ("sliding_psn", False)]


@pytest.mark.parametrize("kind,excused", RESETS)
def test_a_tie_explains_the_same_neurons_later_steps_only_when_it_resets(kind: str, excused: bool) -> None:
    """A LIF / IF spike resets its own potential: after a tie at step 1 the neuron's steps 2.. may differ.
    A PSN's spikes never feed back, so a later difference of the same neuron is real."""
    ref, margins = _zeros()
    got = _copy(ref)
    _tie(margins, got, sample=0, t=1, d=2)
    got.spikes[0][0, 3, 2] = 1.0  # same neuron, later step, far from the threshold
    if excused:
        p = compare("c", ref, got, margins, [kind, kind])
        assert (p.layers[0].differ, p.layers[0].ties, p.set_aside) == (2, 1, 1)
    else:
        with pytest.raises(ExportCheckFailed, match="differ away from the threshold"):
            compare("c", ref, got, margins, [kind, kind])
    got.spikes[0][0, 0, 2] = 1.0  # the same neuron *before* the tie: real for every kind
    with pytest.raises(ExportCheckFailed, match="differ away from the threshold"):
        compare("c", ref, got, margins, [kind, kind])
    got.spikes[0][0, 0, 2] = 0.0
    got.spikes[0][0, 3, 2] = 0.0
    got.spikes[0][0, 3, 4] = 1.0  # another neuron of the tied sample, same layer: real for every kind
    with pytest.raises(ExportCheckFailed, match="differ away from the threshold"):
        compare("c", ref, got, margins, [kind, kind])


def test_tolerance_scales_with_large_potentials() -> None:
    ref, margins = _zeros()
    got = _copy(ref)
    margins = [m * 2000 for m in margins]  # potentials up to 1000: a tie is |H − θ| < 1e-2
    margins[0][2, 0, 0] = 5e-3
    got.spikes[0][2, 0, 0] = 1.0
    assert compare("c", ref, got, margins).set_aside == 1
    margins[0][2, 0, 0] = 5e-2
    with pytest.raises(ExportCheckFailed, match="differ away"):
        compare("c", ref, got, margins)


def test_an_earlier_checks_set_aside_samples_are_not_compared_after_their_tie() -> None:
    ref, margins = _zeros()
    got = _copy(ref)
    got.spikes[1][3] = 1.0  # sample 3 diverges after layer 0: the step check inherits its set-aside
    got.step_logits[3] += 1.0
    p = compare("step_vs_full", ref, got, margins, aside_from=np.array([2, 2, 2, 1]))
    assert (p.inherited, p.set_aside, p.layers[1].spikes) == (1, 1, 3 * T * D)


def test_logits_of_a_sample_not_set_aside_must_match() -> None:
    ref, margins = _zeros()
    got = _copy(ref)
    got.step_logits[2, 3, 1] = 1e-3
    with pytest.raises(ExportCheckFailed, match="logits differ"):
        compare("c", ref, got, margins)
    got.step_logits[2, 3, 1] = 5e-5  # within 1e-4
    assert compare("c", ref, got, margins).max_abs_err == pytest.approx(5e-5)


def _parity(check: str, batch: int, aside: int) -> Parity:
    aside_from = np.array([0] * aside + [2] * (batch - aside))
    return Parity(check, batch, T, layers=[LayerParity(), LayerParity()], aside_from=aside_from)


def test_the_share_set_aside_is_bounded_per_check() -> None:
    assert [allowed_ties(n, 1 / 16) for n in (1, 15, 16, 68, 136)] == [0, 0, 1, 4, 8]
    report = CheckReport(
        [_parity("full_vs_torch", 64, 3), _parity("full_vs_torch", 4, 1), _parity("step_vs_full", 68, 4)]
    )
    report.check_bound()  # 4 of 68 each: at most floor(68 / 16) = 4
    report.results.append(_parity("step_vs_full", 1, 1))
    with pytest.raises(ExportCheckFailed, match=r"'step_vs_full' failed: 5 of 69 .*--max-tie-samples"):
        report.check_bound()
    report.max_tie_samples = 0.1
    report.check_bound()


# ----------------------------------------------------------------------------- through export_module

NET = (("lif", "sliding_psn"), 1, 6, "psn")  # two neuron layers, input [6], T = 6: streams
TIED = (0, 16, 32, 48)  # samples of the batch of 64 given a tie in layer 0: 4 of 68 = the default bound


@pytest.fixture
def inject_ties(monkeypatch: pytest.MonkeyPatch):
    """Make the full graph tie with PyTorch in layer 0 of the given samples of each batch of 64 (PyTorch's
    margin 0, the graph spikes) and diverge completely after it (layer 1's spikes, logits); with
    ``first_only``, in the first batch of 64 of each sequence length only."""

    def install(samples: tuple[int, ...] = TIED, first_only: bool = False) -> None:
        torch_trace, full_trace = checks.torch_trace, checks.full_trace
        seen: dict[int, int] = {}  # batches of 64 per length, counted by the fake PyTorch trace

        def tied(x) -> bool:
            return x.shape[0] == 64 and (not first_only or seen[x.shape[1]] == 1)

        def fake_torch(module, p, x):
            ref = torch_trace(module, p, x)
            if x.shape[0] == 64:
                seen[x.shape[1]] = seen.get(x.shape[1], 0) + 1
            if tied(x):
                ref.margins[0][list(samples), 0, 0] = 0.0
            return ref

        def fake_full(sess, x, layers):
            logits, got = full_trace(sess, x, layers)
            if tied(x):
                s = list(samples)
                got.spikes[0][s, 0, 0] = 1.0 - got.spikes[0][s, 0, 0]
                got.spikes[1][s] = 1.0 - got.spikes[1][s]
                got.step_logits[s] += 3.0
                logits = logits.copy()
                logits[s] += 3.0
            return logits, got

        monkeypatch.setattr(checks, "torch_trace", fake_torch)
        monkeypatch.setattr(checks, "full_trace", fake_full)

    return install


@pytest.fixture(scope="module")
def built() -> dict:
    return {}


@pytest.fixture
def graphs_once(monkeypatch: pytest.MonkeyPatch, built: dict) -> None:
    """NET's full and step graphs built once for this module's tests that change only what the checks see
    (tiny_net is seeded: every export of NET builds the same graphs); the others build their own."""

    def once(name: str):
        build = getattr(export_mod, name)

        def cached(p, *args):
            if (name, args) not in built:
                built[name, args] = build(p, *args)
            return built[name, args]

        return cached

    for name in ("build_full", "build_step"):
        monkeypatch.setattr(export_mod, name, once(name))


def _export(tmp_path: Path, **kw) -> tuple[Manifest, CheckReport]:
    kinds, rank, steps, source = NET
    report = CheckReport()
    manifest = export_module(
        tiny_net(kinds, rank, steps, source),
        tmp_path / "m",
        input_shape=INPUT_SHAPES[rank],
        T=steps,
        name="m",
        report=report,
        **kw,
    )
    return manifest, report


def test_tie_only_differences_pass_and_are_reported(tmp_path: Path, inject_ties, graphs_once) -> None:
    inject_ties()
    manifest, report = _export(tmp_path)
    assert manifest.streams and (tmp_path / "m" / "step.onnx").is_file()
    by_check = {name: sum(r.set_aside for r in rs) for name, rs in report.groups().items()}
    assert by_check == {"full_vs_torch": 4, "step_vs_full": 4, "full_vs_torch@T=3": 4, "step_vs_full@T=3": 4}
    full = report.groups()["full_vs_torch"]
    assert [sum(r.layers[i].set_aside for r in full) for i in range(2)] == [4, 0]
    assert sum(r.layers[0].ties for r in full) == 4
    assert sum(r.layers[1].spikes for r in full) == (68 - 4) * 6 * 10  # the 4 not compared in layer 1
    step = report.groups()["step_vs_full"]
    assert sum(r.inherited for r in step) == 4
    assert all(r.max_abs_err < 1e-4 for r in report.results)
    text = report.summary()
    assert "full_vs_torch: 68 samples (N=1,3,64, T=6), 4 set aside for threshold ties (at most 4)" in text
    rows = [line.split() for line in text.splitlines()[2:4]]
    assert rows == [
        ["0", "1", "(lif)", "4896", "4", "4", "4", rows[0][7]],
        ["1", "3", "(sliding_psn)", *rows[1][3:]],
    ]


def test_too_many_ties_are_refused_unless_allowed(tmp_path: Path, inject_ties, graphs_once) -> None:
    inject_ties((0, 8, 16, 24, 32))  # 5 of every 64: 5 of 68, then 4 more batches of 64 drawn: 25 of 324
    with pytest.raises(ExportCheckFailed, match=r"25 of 324 samples had a spike on the threshold"):
        _export(tmp_path)
    assert not (tmp_path / "m").exists()
    _export(tmp_path, max_tie_samples=0.1)
    with pytest.raises(ExportError, match=r"max_tie_samples=1\.5"):
        _export(tmp_path, max_tie_samples=1.5)


def test_more_samples_are_drawn_when_ties_exceed_the_share(tmp_path: Path, inject_ties, graphs_once) -> None:
    """5 of the first 68 samples tie (over 1/16): one more batch of 64 is drawn at each length, and the
    check passes on all 132 (5 ≤ 8); the report says so."""
    inject_ties((0, 8, 16, 24, 32), first_only=True)
    _, report = _export(tmp_path)
    for name, rs in report.groups().items():
        assert [r.batch for r in rs] == [1, 3, 64, 64], name
        assert sum(r.set_aside for r in rs) == 5
    assert "full_vs_torch: 132 samples (N=1,3,64,64, T=6), 5 set aside for threshold ties (at most 8)" in (
        report.summary()
    )


def test_a_perturbed_weight_is_refused_even_with_ties(
    tmp_path: Path, inject_ties, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter bug: the graphs get a Linear weight off by 0.05 (PyTorch keeps the right one)."""
    inject_ties()
    build_full = export_mod.build_full

    def perturbed(p, variable):
        linear = p.net[2][-2]  # the Linear in front of the second neuron layer
        linear.weight.data[0, 0] += 0.05
        return build_full(p, variable)

    monkeypatch.setattr(export_mod, "build_full", perturbed)
    with pytest.raises(ExportCheckFailed, match=r"'full_vs_torch' failed: neuron layer 1 .*differ away"):
        _export(tmp_path)
    assert not (tmp_path / "m").exists()


def test_a_wrong_reset_is_refused_even_with_ties(
    tmp_path: Path, inject_ties, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter bug: the full graph's LIF (its ONNX Scan) resets softly where the network resets to 0."""
    inject_ties()
    original = onnx_rewrite.cell_body

    def soft_reset(cell, *args):  # the Scan body of a copy of the cell that resets softly
        wrong = copy.deepcopy(cell)
        wrong.reset = ResetMode.SOFT
        return original(wrong, *args)

    monkeypatch.setattr(onnx_rewrite, "cell_body", soft_reset)
    with pytest.raises(ExportCheckFailed, match=r"neuron layer 0 \(lif\).*differ away"):
        _export(tmp_path)


def test_cli_flag_and_report(tmp_path: Path, inject_ties, graphs_once, capsys: pytest.CaptureFixture) -> None:
    inject_ties((0, 8, 16, 24, 32))  # 5 of 68: refused by default, passes at 1/8
    kinds, rank, steps, source = NET
    net_py = tmp_path / "net.py"
    net_py.write_text(
        "from tests.nets import tiny_net\n\n\n"
        f"def build():\n    return tiny_net({kinds!r}, {rank}, {steps}, {source!r})\n"
    )
    import torch

    torch.save(tiny_net(kinds, rank, steps, source).state_dict(), tmp_path / "w.pt")
    argv = [
        "--module",
        f"{net_py}:build",
        "--weights",
        str(tmp_path / "w.pt"),
        "--input-shape",
        "6,6",
        "--name",
        "m",
        "--out",
        str(tmp_path / "m"),
    ]
    assert export_cli.main(argv) == 2
    assert "25 of 324 samples had a spike on the threshold" in capsys.readouterr().err
    assert export_cli.main([*argv, "--max-tie-samples", "1/8"]) == 0
    out = capsys.readouterr().out
    assert "5 set aside for threshold ties (at most 8)" in out
    assert Manifest.load(tmp_path / "m").name == "m"
