"""Compare two forward passes of one network (the user's PyTorch module, full.onnx, a loop over step.onnx)
on the same inputs, and the report ``psn export`` prints.

Spikes are compared exactly, per sample and per neuron layer in network order. Two float paths may sum
in different orders, so where the membrane potential sits on the threshold one path may spike and the
other not: a **tie**, a differing spike where the reference path's |H − θ| < ``TIE_TOL`` (times the
layer's largest |H − θ| when that exceeds 1: float error grows with the size of the sums). A tie changes
that neuron's own later steps when the neuron resets on a spike (LIF, IF), and everything downstream of
it in that sample; so the sample is **set aside** after that layer: its later layers and its logits are
not compared. Every other difference is real and fails the check: a spike that differs away from the
threshold in a sample not set aside, logits of such a sample off by more than ``ATOL`` + ``RTOL``·|logit|,
or more samples set aside than the caller allows (``max_tie_samples``, a share).

A real bug (a wrong weight, reset or threshold) flips spikes far from the threshold in many samples: it
fails in every sample not set aside, and set-aside samples are still compared up to their tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from exporters.errors import ExportCheckFailed

TIE_TOL = 1e-5
ATOL = 1e-4
RTOL = 1e-4
MAX_TIE_SAMPLES = 1 / 16  # default: at most this share of a check's samples may be set aside for ties


@dataclass
class Trace:
    """One forward pass: per-step logits [N, T, C], and per neuron layer spikes and H − θ [N, T, D]."""

    step_logits: np.ndarray
    spikes: list[np.ndarray]
    margins: list[np.ndarray] | None = None


@dataclass
class LayerParity:
    """One neuron layer in one comparison."""

    spikes: int = 0  # spike values compared (of the samples not set aside before this layer)
    differ: int = 0  # of which differ (ties and the neuron's own later steps after a tie included)
    ties: int = 0  # of those, on the threshold
    set_aside: int = 0  # samples with a tie in this layer: not compared after it
    spike_rate: float = 0.0  # of the reference path, all samples


@dataclass
class Parity:
    """One comparison of two paths on the same inputs (one batch, one length)."""

    check: str
    batch: int
    steps: int
    max_abs_err: float = 0.0  # largest logit difference over the samples compared
    layers: list[LayerParity] = field(default_factory=list)
    inherited: int = 0  # samples set aside by an earlier check of the same inputs (not compared here)
    # per sample: the first neuron layer not compared (len(layers) when all were and its logits too)
    aside_from: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    @property
    def spikes(self) -> int:
        return sum(layer.spikes for layer in self.layers)

    @property
    def spike_mismatch(self) -> int:
        return sum(layer.differ for layer in self.layers)

    @property
    def tie_mismatch(self) -> int:
        return sum(layer.ties for layer in self.layers)

    @property
    def set_aside(self) -> int:
        """Samples whose logits were not compared (set aside here or by an earlier check)."""
        return int((self.aside_from < len(self.layers)).sum())

    @property
    def spike_rate(self) -> list[float]:
        return [layer.spike_rate for layer in self.layers]

    def line(self) -> str:
        return (
            f"{self.check} N={self.batch} T={self.steps}: max|Δlogit| {self.max_abs_err:.2e}, spikes "
            f"{self.spike_mismatch}/{self.spikes} differ ({self.tie_mismatch} at ties), "
            f"{self.set_aside} of {self.batch} samples set aside"
        )


def _feeds_back(kind: str) -> bool:
    """Whether a neuron's spike changes its own later steps (a reset): LIF and IF, not the PSN family."""
    return kind not in ("psn", "masked_psn", "sliding_psn")


def compare(
    check: str,
    ref: Trace,
    got: Trace,
    margins: list[np.ndarray],
    kinds: Sequence[str] | None = None,
    aside_from: np.ndarray | None = None,
) -> Parity:
    """``got`` against ``ref`` as the module docstring says; ``margins`` are H − θ of the reference path,
    ``kinds`` the neuron kind of each layer (default: every layer resets, the lenient reading), and
    ``aside_from`` per sample the first layer not to compare (samples an earlier check set aside: the
    reference margins are not theirs after it). Raises ExportCheckFailed on a real difference."""
    n, steps = ref.step_logits.shape[:2]
    count = len(ref.spikes)
    kinds = list(kinds) if kinds is not None else ["lif"] * count
    aside = np.full(n, count, np.int64) if aside_from is None else aside_from.astype(np.int64).copy()
    p = Parity(check, n, steps, inherited=int((aside < count).sum()))
    for i, (a, b, m) in enumerate(zip(ref.spikes, got.spikes, margins, strict=True)):
        if a.shape != b.shape:
            raise ExportCheckFailed(check, f"neuron layer {i}: spikes of shape {b.shape}, expected {a.shape}")
        live = aside > i  # [N]: the samples compared at this layer
        diff = (a != b) & live[:, None, None]  # [N, T, D]
        tol = TIE_TOL * max(1.0, float(np.abs(m).max(initial=0.0)))
        tie = diff & (np.abs(m) < tol)
        explained = tie
        if _feeds_back(kinds[i]):  # a tie at step t changes that neuron's reset, so its steps after t
            explained = tie | (diff & ((np.cumsum(tie, axis=1) - tie) > 0))
        real = diff & ~explained
        layer = LayerParity(
            spikes=int(live.sum()) * a[0].size,
            differ=int(diff.sum()),
            ties=int(tie.sum()),
            spike_rate=float(a.mean()),
        )
        p.layers.append(layer)
        if real.any():
            worst = float(np.abs(m[real]).max())
            where = int(real.reshape(n, -1).any(1).sum())
            raise ExportCheckFailed(
                check,
                f"neuron layer {i} ({kinds[i]}): {int(real.sum())} of {layer.spikes} spikes differ away from "
                f"the threshold in {where} of {int(live.sum())} samples (|H - θ| up to {worst:.3g}, a tie "
                f"is < {tol:.3g}); {p.line()}",
            )
        tied = tie.reshape(n, -1).any(1)
        layer.set_aside = int(tied.sum())
        aside[tied] = i + 1  # compared up to this layer; later layers and the logits are not
    p.aside_from = aside
    if ref.step_logits.shape != got.step_logits.shape:
        raise ExportCheckFailed(
            check, f"step logits {got.step_logits.shape}, expected {ref.step_logits.shape}"
        )
    keep = aside == count
    a, b = ref.step_logits[keep], got.step_logits[keep]
    p.max_abs_err = float(np.abs(a - b).max()) if a.size else 0.0
    if not np.allclose(b, a, rtol=RTOL, atol=ATOL):
        raise ExportCheckFailed(check, f"logits differ (atol {ATOL:g}, rtol {RTOL:g}); {p.line()}")
    return p


def allowed_ties(samples: int, max_tie_samples: float) -> int:
    """How many of ``samples`` may be set aside."""
    return int(np.floor(samples * max_tie_samples + 1e-9))


@dataclass
class CheckReport:
    """Every comparison an export ran, and the names and kinds of its neuron layers (for the table)."""

    results: list[Parity] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    layer_kinds: list[str] = field(default_factory=list)
    max_tie_samples: float = MAX_TIE_SAMPLES

    def groups(self) -> dict[str, list[Parity]]:
        """The results by check name (full_vs_torch, step_vs_full, ...@T=t), in the order they ran."""
        out: dict[str, list[Parity]] = {}
        for r in self.results:
            out.setdefault(r.check, []).append(r)
        return out

    def _over(self, rs: list[Parity]) -> tuple[int, int, bool]:
        total, aside = sum(r.batch for r in rs), sum(r.set_aside for r in rs)
        return total, aside, aside > allowed_ties(total, self.max_tie_samples)

    def over_bound(self, steps: int) -> bool:
        """Whether a check at sequence length ``steps`` set aside more samples than its share so far."""
        return any(self._over(rs)[2] for rs in self.groups().values() if rs[0].steps == steps)

    def check_bound(self) -> None:
        """Fail when a check set aside more samples than ``max_tie_samples`` allows."""
        for name, rs in self.groups().items():
            total, aside, over = self._over(rs)
            if over:
                raise ExportCheckFailed(
                    name,
                    f"{aside} of {total} samples had a spike on the threshold (a tie), more than the "
                    f"{self.max_tie_samples:.4g} share allowed (--max-tie-samples): too few samples left "
                    "to trust the check",
                )

    def summary(self) -> str:
        lines = []
        width = max([30, *(len(self._label(i)) for i in range(len(self.layer_names)))])
        for name, rs in self.groups().items():
            total = sum(r.batch for r in rs)
            aside = sum(r.set_aside for r in rs)
            inherited = sum(r.inherited for r in rs)
            batches = ",".join(str(r.batch) for r in rs)
            err = max(r.max_abs_err for r in rs)
            came = f", {inherited} of them by an earlier check" if inherited else ""
            lines.append(
                f"{name}: {total} samples (N={batches}, T={rs[0].steps}), {aside} set aside for threshold "
                f"ties{came} (at most {allowed_ties(total, self.max_tie_samples)}), max|Δlogit| {err:.2e} "
                f"over the other {total - aside}"
            )
            lines.append(
                f"  {'#':>3}  {'neuron layer':<{width}} {'spikes compared':>15} {'differ':>7} {'ties':>5} "
                f"{'set aside':>9} {'spike rate':>10}"
            )
            for i in range(len(rs[0].layers)):
                ls = [r.layers[i] for r in rs]
                rate = float(np.mean([x.spike_rate for x in ls]))
                spikes, differ = sum(x.spikes for x in ls), sum(x.differ for x in ls)
                ties, aside_here = sum(x.ties for x in ls), sum(x.set_aside for x in ls)
                lines.append(
                    f"  {i:>3}  {self._label(i):<{width}} {spikes:>15} {differ:>7} {ties:>5} {aside_here:>9} "
                    f"{rate:>10.2f}"
                )
        return "\n".join(lines)

    def _label(self, i: int) -> str:
        name = self.layer_names[i] if i < len(self.layer_names) else ""
        kind = self.layer_kinds[i] if i < len(self.layer_kinds) else ""
        return f"{name} ({kind})" if kind else name
