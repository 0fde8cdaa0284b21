"""PyTorch == full.onnx == a loop over step.onnx, over kind, T, k, architecture and batch size."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from exporters import checks
from exporters.build import StepGraph, build_full, build_step, spikes_name
from exporters.parity import compare
from exporters.prepare import prepare
from psn.network import SeqClassifier
from tests.nets import tiny_model

# each kind and k once, both architectures and both T across them (conv at T=6, mlp at T=12), every case at
# three batch sizes; tests/test_export_nets.py runs the exporter's own parity checks (the same comparisons at
# batch 1, 3, 64) over mixed kinds, SpikingJelly's neurons and input ranks 1-3
CASES = [
    ("psn", None, "conv", 6),
    ("masked_psn", 2, "conv", 6),
    ("sliding_psn", 5, "conv", 6),
    ("masked_psn", 5, "mlp", 12),
    ("sliding_psn", 2, "mlp", 12),
    ("lif", None, "mlp", 12),
]
STREAMING = [case for case in CASES if case[0] != "psn" and case[2] == "mlp"]


def _id(case: tuple) -> str:
    kind, k, arch, T = case
    return f"{kind}-k{k}-{arch}-T{T}" if k else f"{kind}-{arch}-T{T}"


@functools.cache
def exported(kind: str, k: int | None, arch: str, T: int):
    """(model, prepared, full session, step session or None, step graph or None), built once per case."""
    model = tiny_model(kind, T, k, arch, seed=T)
    p = prepare(model, (model.cfg.features,), T)
    spikes = [spikes_name(i) for i in range(len(model.neurons()))]
    full = checks.session(build_full(p, kind in ("sliding_psn", "lif")), spikes)
    step: StepGraph | None = build_step(p) if kind != "psn" else None
    step_sess = checks.session(step.model, spikes) if step else None
    return model, p, full, step_sess, step


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_torch_full_step_agree(case: tuple, batch: int) -> None:
    T = case[3]
    model, p, full, step_sess, step = exported(*case)
    layers = len(model.neurons())
    x = (
        np.random.default_rng(batch * 100 + T)
        .standard_normal((batch, T, model.cfg.features))
        .astype(np.float32)
    )

    ref = checks.torch_trace(model, p, x)
    logits, got = checks.full_trace(full, x, layers)
    p = compare("full_vs_torch", ref, got, ref.margins)
    assert p.spikes == sum(s.size for s in ref.spikes) > 0
    assert p.spike_mismatch == p.tie_mismatch == 0
    assert p.set_aside == 0
    assert p.max_abs_err < 1e-4
    np.testing.assert_allclose(logits, ref.step_logits.mean(1), rtol=1e-4, atol=1e-4)
    assert np.mean(p.spike_rate) > 0.05  # the comparison is not vacuous: the layers fire

    if step is None:
        return
    stepped = checks.step_trace(step_sess, step.states, x, layers)
    q = compare("step_vs_full", got, stepped, ref.margins)
    assert q.spike_mismatch == q.tie_mismatch == 0
    assert q.max_abs_err < 1e-4
    np.testing.assert_allclose(stepped.step_logits, ref.step_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_plain_forward_matches(case: tuple) -> None:
    """The same, with nothing but model(x) and session.run (no helper of the checks module)."""
    model, _, full, _, _ = exported(*case)
    x = np.random.default_rng(7).standard_normal((5, case[3], model.cfg.features)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).transpose(0, 1)).transpose(0, 1).numpy()  # [N, T, C]
    logits, step_logits = full.run(["logits", "step_logits"], {"x": x})
    np.testing.assert_allclose(step_logits, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, ref.mean(1), rtol=1e-4, atol=1e-4)
    assert np.abs(ref - ref.mean(1, keepdims=True)).max() > 1e-3  # the logits do depend on the input


@pytest.mark.slow
@pytest.mark.parametrize("case", STREAMING, ids=_id)
def test_streams_at_different_steps_batch_together(case: tuple) -> None:
    """Two streams, the second 4 steps behind, stepped in one batch: each equals its own full run."""
    kind, T, lag = case[0], case[3], 4
    model, _, full, step_sess, step = exported(*case)
    x = np.random.default_rng(3).standard_normal((2, T, model.cfg.features)).astype(np.float32)
    _, ref = full.run(["logits", "step_logits"], {"x": x})  # [2, T, C]
    names = ["logits"] + [s.output for s in step.states]
    a = checks.initial_states(step.states, 1)
    for t in range(lag):  # stream 0 alone for the first steps
        out = step_sess.run(names, {"x": x[:1, t], **a})
        np.testing.assert_allclose(out[0][0], ref[0, t], rtol=1e-4, atol=1e-4)
        a = {s.input: v for s, v in zip(step.states, out[1:], strict=True)}
    b = checks.initial_states(step.states, 1)
    for t in range(lag, T):  # then both together, at steps t and t - lag
        feeds = {s.input: np.concatenate([a[s.input], b[s.input]]) for s in step.states}
        out = step_sess.run(names, {"x": np.stack([x[0, t], x[1, t - lag]]), **feeds})
        np.testing.assert_allclose(out[0][0], ref[0, t], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out[0][1], ref[1, t - lag], rtol=1e-4, atol=1e-4)
        a = {s.input: v[:1] for s, v in zip(step.states, out[1:], strict=True)}
        b = {s.input: v[1:] for s, v in zip(step.states, out[1:], strict=True)}
    if kind == "masked_psn":
        assert int(a["t"][0]) == T and int(b["t"][0]) == T - lag


@pytest.mark.slow
def test_check_parity_report() -> None:
    model = tiny_model("sliding_psn", 8, 3, "mlp")
    p = prepare(model, (model.cfg.features,), 8)
    step = build_step(p)
    report = checks.check_parity(model, p, build_full(p, True), step.model, step.states, variable_length=True)
    names = [r.check for r in report.results]
    assert names == ["full_vs_torch", "step_vs_full"] * 3 + ["full_vs_torch@T=4", "step_vs_full@T=4"] * 3
    assert [r.batch for r in report.results] == [1, 1, 3, 3, 64, 64] * 2
    assert all(r.max_abs_err < 1e-4 and r.spike_mismatch == 0 for r in report.results)
    assert "full_vs_torch" in report.summary()


@pytest.mark.slow
def test_model_is_left_in_its_mode() -> None:
    model: SeqClassifier = tiny_model("psn", 6, None, "mlp").train()
    p = prepare(model, (model.cfg.features,), 6)
    checks.check_parity(model, p, build_full(p, False), None, [], variable_length=False, batches=(2,))
    assert model.training
