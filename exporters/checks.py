"""Export checks: the ONNX checker, then the user's PyTorch module (its own forward: SpikingJelly's for a
SpikingJelly network) == full.onnx == a loop over step.onnx on random inputs.

Spikes are compared exactly. A spike may flip between two float paths only where the membrane potential
sits on the threshold; such a flip is tolerated only where PyTorch's |H − θ| < ``TIE_TOL`` (times the
layer's largest |H − θ| when that exceeds 1: float error grows with the size of the sums), and the
logits of a sample with a tolerated flip are then not compared (every layer is per sample, so a flip
touches nothing else). Everything else must match: logits to ``ATOL`` + ``RTOL`` · |logit|.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from exporters.build import spikes_name
from exporters.errors import ExportCheckFailed
from exporters.prepare import Prepared, run
from psn_runtime.manifest import INPUT_NAME, LOGITS_NAME, STEP_LOGITS_NAME, StateSpec

TIE_TOL = 1e-5
ATOL = 1e-4
RTOL = 1e-4
BATCHES = (1, 3, 64)
MAX_EXCUSED = 0.25  # at most this share of samples may be set aside for threshold ties


@dataclass
class Parity:
    """One comparison of two paths on the same inputs."""

    check: str
    batch: int
    steps: int
    max_abs_err: float = 0.0  # largest logit difference over the compared samples
    spikes: int = 0  # spike values compared
    spike_mismatch: int = 0  # of which differ
    tie_mismatch: int = 0  # of those, at |H − θ| < TIE_TOL (tolerated)
    excused: int = 0  # samples whose logits were not compared (a tolerated flip)
    spike_rate: list[float] = field(default_factory=list)  # per neuron layer (reference path)

    def line(self) -> str:
        rates = ", ".join(f"{r:.2f}" for r in self.spike_rate)
        return (
            f"{self.check:<15} N={self.batch:<3} T={self.steps:<3} max|Δlogit|={self.max_abs_err:.2e} "
            f"spikes {self.spike_mismatch}/{self.spikes} differ ({self.tie_mismatch} at ties), "
            f"{self.excused} samples excused, spike rates [{rates}]"
        )


@dataclass
class CheckReport:
    results: list[Parity] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(r.line() for r in self.results)


PROVIDERS_ENV = "PSN_PARITY_PROVIDERS"


@dataclass
class Trace:
    """One forward pass: per-step logits [N, T, C], and per neuron layer spikes and H − θ [N, T, D]."""

    step_logits: np.ndarray
    spikes: list[np.ndarray]
    margins: list[np.ndarray] | None = None


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


def torch_trace(module: torch.nn.Module, p: Prepared, x: np.ndarray) -> Trace:
    """x [N, T, *shape] through the user's own module (eval mode, states reset before and after); the
    spikes of each neuron layer come from its own forward, H − θ from its export form."""
    by_name = dict(module.named_modules())
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        return lambda mod, inp, out: seen.__setitem__(name, (inp[0], out))

    hooks = [by_name[f.name].register_forward_hook(hook(f.name)) for f in p.forms if f.name in by_name]
    try:
        xt = torch.from_numpy(x).transpose(0, 1).contiguous()  # [T, N, *]
        logits = run(module, xt, "the check input")  # [T, N, C]
        with torch.no_grad():
            margins = [_ntd(f.margin(seen[f.name][0])) for f in p.forms]
    finally:
        for h in hooks:
            h.remove()
    spikes = [_ntd(seen[f.name][1].detach()) for f in p.forms]
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


def compare(check: str, ref: Trace, got: Trace, margins: list[np.ndarray]) -> Parity:
    """Spikes exactly (flips at ties tolerated), then logits of the samples without a tolerated flip."""
    n, steps = ref.step_logits.shape[:2]
    p = Parity(check, n, steps, spike_rate=[float(s.mean()) for s in ref.spikes])
    flipped = np.zeros(n, dtype=bool)
    for i, (a, b, m) in enumerate(zip(ref.spikes, got.spikes, margins, strict=True)):
        if a.shape != b.shape:
            raise ExportCheckFailed(check, f"neuron layer {i}: spikes of shape {b.shape}, expected {a.shape}")
        diff = a != b
        tol = TIE_TOL * max(1.0, float(np.abs(m).max(initial=0.0)))  # relative for large potentials
        ties = diff & (np.abs(m) < tol)
        p.spikes += a.size
        p.spike_mismatch += int(diff.sum())
        p.tie_mismatch += int(ties.sum())
        if (diff & ~ties).any():
            worst = float(np.abs(m[diff & ~ties]).max())
            raise ExportCheckFailed(
                check,
                f"neuron layer {i}: {int((diff & ~ties).sum())} of {a.size} spikes differ away from the "
                f"threshold (|H - θ| up to {worst:.3g} >= {tol:.3g}); {p.line()}",
            )
        flipped |= ties.reshape(n, -1).any(axis=1)
    p.excused = int(flipped.sum())
    keep = ~flipped
    if ref.step_logits.shape != got.step_logits.shape:
        raise ExportCheckFailed(
            check, f"step logits {got.step_logits.shape}, expected {ref.step_logits.shape}"
        )
    a, b = ref.step_logits[keep], got.step_logits[keep]
    p.max_abs_err = float(np.abs(a - b).max()) if a.size else 0.0
    if not np.allclose(b, a, rtol=RTOL, atol=ATOL):
        raise ExportCheckFailed(check, f"logits differ (atol {ATOL:g}, rtol {RTOL:g}); {p.line()}")
    return p


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
) -> CheckReport:
    """The user's module == full.onnx (logits, step logits, spikes) == a loop over step.onnx, per batch.

    ``lengths``: sequence lengths to try (default: T, and for variable-length models T // 2 as well).
    """
    layers = len(p.forms)
    spike_names = [spikes_name(i) for i in range(layers)]
    try:
        full_sess = session(full, spike_names)
        step_sess = session(step, spike_names) if step is not None else None
    except Exception as exc:  # onnxruntime raises its own (pybind) types
        raise ExportCheckFailed("ort_session", f"onnxruntime cannot load the graph: {exc}") from exc
    if lengths is None:
        lengths = (p.T, max(1, p.T // 2)) if variable_length and p.T > 1 else (p.T,)
    rng = np.random.default_rng(seed)
    report = CheckReport()
    was_training = module.training
    module.eval()
    try:
        for steps in lengths:
            suffix = "" if steps == p.T else f"@T={steps}"
            for n in batches:
                x = rng.standard_normal((n, steps, *p.input_shape)).astype(np.float32)
                ref = torch_trace(module, p, x)
                try:
                    logits, got = full_trace(full_sess, x, layers)
                except Exception as exc:  # onnxruntime raises its own (pybind) types
                    raise ExportCheckFailed("full_runs" + suffix, f"N={n}, T={steps}: {exc}") from exc
                report.results.append(compare("full_vs_torch" + suffix, ref, got, ref.margins))
                if not np.allclose(logits, got.step_logits.mean(1), rtol=RTOL, atol=ATOL):
                    raise ExportCheckFailed("full_vs_torch" + suffix, "logits != mean of step_logits")
                if step_sess is not None:
                    try:
                        stepped = step_trace(step_sess, states, x, layers)
                    except Exception as exc:  # onnxruntime raises its own (pybind) types
                        raise ExportCheckFailed("step_runs" + suffix, f"N={n}, T={steps}: {exc}") from exc
                    report.results.append(compare("step_vs_full" + suffix, got, stepped, ref.margins))
    finally:
        module.train(was_training)
    total = sum(r.batch for r in report.results)
    excused = sum(r.excused for r in report.results)
    if excused > MAX_EXCUSED * total:
        raise ExportCheckFailed(
            "ties", f"{excused} of {total} samples had a spike on the threshold: too many to trust the check"
        )
    return report
