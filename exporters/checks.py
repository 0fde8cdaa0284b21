"""Export checks: the ONNX checker, then the user's PyTorch module (its own forward: SpikingJelly's for a
SpikingJelly network) == full.onnx == a loop over step.onnx on random inputs, compared as
exporters/parity.py says (spikes exactly but for threshold ties, whose samples are set aside after the
tie; logits to 1e-4; a bounded share of samples set aside).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from exporters.build import spikes_name
from exporters.errors import ExportCheckFailed
from exporters.parity import ATOL, MAX_TIE_SAMPLES, RTOL, CheckReport, Trace, compare
from exporters.prepare import Prepared, run
from psn_runtime.manifest import INPUT_NAME, LOGITS_NAME, STEP_LOGITS_NAME, StateSpec

BATCHES = (1, 3, 64)
EXTRA_BATCH = 64  # drawn when a check sets aside more than its share: a deep network ties more often
MAX_EXTRA = 4  # at most this many extra batches per sequence length (68 -> at most 324 samples)

PROVIDERS_ENV = "PSN_PARITY_PROVIDERS"


def session(model: onnx.ModelProto | Path, extra_outputs: list[str] = ()) -> ort.InferenceSession:
    proto = onnx.load(str(model)) if isinstance(model, Path) else model
    if extra_outputs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        for name in extra_outputs:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    providers = parity_providers()
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=providers)
    if sess.get_providers()[0] != providers[0]:  # ORT falls back silently: a CUDA check must not pass on CPU
        raise RuntimeError(
            f"{PROVIDERS_ENV} asks for {providers[0]}, the session runs on {sess.get_providers()}"
        )
    return sess


def parity_providers() -> list[str]:
    """The execution providers of the parity sessions: ``PSN_PARITY_PROVIDERS`` (comma-separated, e.g.
    ``CUDAExecutionProvider,CPUExecutionProvider`` in ``make gpu-check``), else the CPU's."""
    wanted = [p.strip() for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()]
    return wanted or ["CPUExecutionProvider"]


def _ntd(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """Time-major [T, N, *] -> [N, T, D]."""
    t = t.numpy() if isinstance(t, torch.Tensor) else t
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 0, 2)


def _spikes_of(module: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
    spikes = getattr(module, "spikes", None)
    return spikes if isinstance(spikes, torch.Tensor) else out


def torch_trace(module: torch.nn.Module, p: Prepared, x: np.ndarray) -> Trace:
    """x [N, T, *shape] through the user's own module (eval mode, states reset before and after); the
    spikes of each spiking neuron layer come from its own forward (its output, or its ``spikes``
    attribute where its output is something else, e.g. a membrane read out), H − θ from its export form."""
    by_name = dict(module.named_modules())
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        return lambda mod, inp, out: seen.__setitem__(name, (inp[0], _spikes_of(mod, out)))

    hooks = [by_name[f.name].register_forward_hook(hook(f.name)) for f in p.spiking if f.name in by_name]
    try:
        xt = torch.from_numpy(x).transpose(0, 1).contiguous()  # [T, N, *]
        logits = run(module, xt, "the check input")  # [T, N, C]
        with torch.no_grad():
            margins = [_ntd(f.margin(seen[f.name][0])) for f in p.spiking]
    finally:
        for h in hooks:
            h.remove()
    spikes = [_ntd(seen[f.name][1].detach()) for f in p.spiking]
    return Trace(logits.transpose(0, 1).numpy(), spikes, margins)


def full_trace(sess: ort.InferenceSession, x: np.ndarray, layers: int) -> tuple[np.ndarray, Trace]:
    names = [LOGITS_NAME, STEP_LOGITS_NAME] + [spikes_name(i) for i in range(layers)]
    logits, step_logits, *spikes = sess.run(names, {INPUT_NAME: x})
    return logits, Trace(step_logits, [_ntd(s) for s in spikes])


def initial_states(states: list[StateSpec], batch: int) -> dict[str, np.ndarray]:
    """What the runtime feeds a new stream: each state filled with its ``init`` (the batch axis first)."""
    return {s.input: np.full((batch, *s.shape), s.init, dtype=np.dtype(s.dtype)) for s in states}


def step_trace(sess: ort.InferenceSession, states: list[StateSpec], x: np.ndarray, layers: int) -> Trace:
    """A loop over the step graph for the T steps of x [N, T, *shape]."""
    feeds = initial_states(states, x.shape[0])
    names = [LOGITS_NAME] + [s.output for s in states] + [spikes_name(i) for i in range(layers)]
    logits, spikes = [], [[] for _ in range(layers)]
    for t in range(x.shape[1]):
        feeds[INPUT_NAME] = np.ascontiguousarray(x[:, t])
        out = sess.run(names, feeds)
        logits.append(out[0])
        for s, value in zip(states, out[1 : 1 + len(states)], strict=True):
            feeds[s.input] = value
        for i, value in enumerate(out[1 + len(states) :]):
            spikes[i].append(value.reshape(value.shape[1], -1))  # [1, N, *] -> [N, D]
    return Trace(np.stack(logits, 1), [np.stack(s, 1) for s in spikes])


def check_onnx(paths: list[Path]) -> None:
    for path in paths:
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportCheckFailed("onnx_checker", f"{path.name}: {exc}") from exc


def check_parity(
    module: torch.nn.Module,
    p: Prepared,
    full: Path | onnx.ModelProto,
    step: Path | onnx.ModelProto | None,
    states: list[StateSpec],
    *,
    variable_length: bool,
    batches: tuple[int, ...] = BATCHES,
    lengths: tuple[int, ...] | None = None,
    seed: int = 0,
    max_tie_samples: float = MAX_TIE_SAMPLES,
) -> CheckReport:
    """The user's module == full.onnx (logits, step logits, spikes) == a loop over step.onnx, per batch.

    ``lengths``: sequence lengths to try (default: T, and for variable-length models T // 2 as well).
    ``max_tie_samples``: the share of each check's samples (over its batches) that may be set aside for
    threshold ties; a check over that share at its planned batches draws up to ``MAX_EXTRA`` more
    batches of ``EXTRA_BATCH`` and is decided on all its samples. The step loop is compared with the
    full graph on each sample up to where the full graph's check set it aside (the reference margins
    are PyTorch's).
    """
    forms = p.spiking  # the neuron layers whose spikes are compared, in network order
    layers = len(forms)
    kinds = [str(f.info.kind) for f in forms]
    spike_names = [spikes_name(i) for i in range(layers)]
    try:
        full_sess = session(full, spike_names)
        step_sess = session(step, spike_names) if step is not None else None
    except Exception as exc:  # onnxruntime raises its own (pybind) types
        raise ExportCheckFailed("ort_session", f"onnxruntime cannot load the graph: {exc}") from exc
    if lengths is None:
        lengths = (p.T, max(1, p.T // 2)) if variable_length and p.T > 1 else (p.T,)
    rng = np.random.default_rng(seed)
    report = CheckReport(
        layer_names=[f.name for f in forms], layer_kinds=kinds, max_tie_samples=max_tie_samples
    )

    def run(n: int, steps: int) -> None:
        suffix = "" if steps == p.T else f"@T={steps}"
        x = rng.standard_normal((n, steps, *p.input_shape)).astype(np.float32)
        ref = torch_trace(module, p, x)
        try:
            logits, got = full_trace(full_sess, x, layers)
        except Exception as exc:  # onnxruntime raises its own (pybind) types
            raise ExportCheckFailed("full_runs" + suffix, f"N={n}, T={steps}: {exc}") from exc
        vs_torch = compare("full_vs_torch" + suffix, ref, got, ref.margins, kinds)
        report.results.append(vs_torch)
        if not np.allclose(logits, got.step_logits.mean(1), rtol=RTOL, atol=ATOL):
            raise ExportCheckFailed("full_vs_torch" + suffix, "logits != mean of step_logits")
        if step_sess is not None:
            try:
                stepped = step_trace(step_sess, states, x, layers)
            except Exception as exc:  # onnxruntime raises its own (pybind) types
                raise ExportCheckFailed("step_runs" + suffix, f"N={n}, T={steps}: {exc}") from exc
            aside = vs_torch.aside_from
            report.results.append(compare("step_vs_full" + suffix, got, stepped, ref.margins, kinds, aside))

    was_training = module.training
    module.eval()
    try:
        for steps in lengths:
            for n in batches:
                run(n, steps)
            # more samples where ties exceed the share: the share of a deep network's samples that tie is
            # small but noisy over 68; decided on all the samples drawn (a real difference fails in any)
            for _ in range(MAX_EXTRA):
                if not report.over_bound(steps):
                    break
                run(EXTRA_BATCH, steps)
    finally:
        module.train(was_training)
    report.check_bound()
    return report
