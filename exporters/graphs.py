"""Build ``full.onnx`` and ``step.onnx`` by walking ``model.layers`` (see psn_runtime/manifest.py for the
graph contracts). No loop over time is unrolled: the node count does not depend on T."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from torch import nn

from exporters import layers as L
from exporters.errors import ExportError
from exporters.graph import FLOAT, INT64, GraphBuilder, make_model, value_info
from exporters.layers import Act, Layout, Lowering, Mode
from exporters.neuron_ops import T_STATE, T_STATE_OUT, neuron_full, neuron_step
from psn.network import NEURON_TYPES, SeqClassifier
from psn.neurons import LIF, PSN, MaskedPSN, SlidingPSN
from psn_runtime.manifest import INPUT_NAME, LOGITS_NAME, STEP_LOGITS_NAME, NeuronKind, StateSpec

_SKIP = (nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class StepGraph:
    model: onnx.ModelProto
    states: list[StateSpec]


def neuron_kind(model: SeqClassifier) -> NeuronKind:
    kinds = set()
    for m in model.neurons():
        if isinstance(m, MaskedPSN):
            kinds.add(NeuronKind.MASKED_PSN)
        elif isinstance(m, PSN):
            kinds.add(NeuronKind.PSN)
        elif isinstance(m, SlidingPSN):
            kinds.add(NeuronKind.SLIDING_PSN)
        elif isinstance(m, LIF):
            kinds.add(NeuronKind.LIF)
    if len(kinds) != 1:
        raise ExportError(f"a model must use exactly one neuron kind, found {sorted(kinds) or 'none'}")
    return kinds.pop()


def _walk(
    low: Lowering,
    model: SeqClassifier,
    a: Act,
    prefer: Layout,
    on_neuron: Callable[[Lowering, Act, nn.Module, int], Act],
) -> Act:
    """Lower every layer; a BatchNorm1d right after a Conv1d/Linear is folded into it."""
    mods = list(model.layers)
    i, neuron_index = 0, 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        bn = nxt if isinstance(nxt, nn.BatchNorm1d) else None
        if isinstance(m, NEURON_TYPES):
            a = on_neuron(low, a, m, neuron_index)
            neuron_index += 1
        elif isinstance(m, nn.Conv1d):
            a = L.conv1d(low, a, m, bn)
            i += bn is not None
        elif isinstance(m, nn.Linear):
            a = L.linear(low, a, m, bn, prefer)
            i += bn is not None
        elif isinstance(m, nn.BatchNorm1d):
            a = L.batchnorm(low, a, m)
        elif isinstance(m, nn.AvgPool1d):
            a = L.avgpool1d(low, a, m)
        elif isinstance(m, nn.Unflatten):
            a = L.unflatten(a, m)
        elif isinstance(m, nn.Flatten):
            a = L.flatten(a, m)
        elif not isinstance(m, _SKIP):
            raise ExportError(f"layer {i} ({type(m).__name__}) is not supported by the exporter")
        i += 1
    if len(a.row) != 1 or a.width != model.cfg.classes:
        raise ExportError(f"the network ends in rows of shape {a.row}, expected ({model.cfg.classes},)")
    return a


def build_full(model: SeqClassifier) -> onnx.ModelProto:
    """``x`` [N, T, F] -> ``logits`` [N, C], ``step_logits`` [N, T, C]."""
    cfg = model.cfg
    kind = neuron_kind(model)
    variable = kind.facts.variable_length
    t_dim: int | str = "T" if variable else cfg.T
    b = GraphBuilder()
    low = Lowering(b, Mode.FULL, b.reserve(INPUT_NAME))
    a = Act(INPUT_NAME, Layout.SEQ, (cfg.features,), (cfg.features,))  # [N, T, F]

    def on_neuron(low: Lowering, a: Act, m: nn.Module, idx: int) -> Act:
        return neuron_full(low, a, m, cfg.T, idx)

    a = low.to_seq(_walk(low, model, a, Layout.SEQ, on_neuron))  # [N, T, C]
    step_logits = b.rename_output(a.name, STEP_LOGITS_NAME)
    b.op("ReduceMean", [step_logits, b.shape_const([1])], out=LOGITS_NAME, keepdims=0)  # [N, C]
    graph = b.graph(
        "psn_full",
        [value_info(INPUT_NAME, FLOAT, ["N", t_dim, cfg.features])],
        [
            value_info(LOGITS_NAME, FLOAT, ["N", cfg.classes]),
            value_info(STEP_LOGITS_NAME, FLOAT, ["N", t_dim, cfg.classes]),
        ],
    )
    return make_model(graph, f"psn-serve full graph: {kind} network, T={cfg.T}, k={cfg.k}")


def build_step(model: SeqClassifier) -> StepGraph:
    """``x`` [N, F] + states -> ``logits`` [N, C] + new states (masked PSN, sliding PSN, LIF)."""
    cfg = model.cfg
    kind = neuron_kind(model)
    if kind is NeuronKind.PSN:
        raise ExportError("a PSN has no step graph: every H[t] reads all T inputs")
    b = GraphBuilder()
    low = Lowering(b, Mode.STEP, b.reserve(INPUT_NAME))
    a = Act(INPUT_NAME, Layout.ROWS, (cfg.features,), (cfg.features,))  # [N, F]
    states: list[StateSpec] = []
    if kind is NeuronKind.MASKED_PSN:
        b.reserve(T_STATE)
    prefer = Layout.ROWS if kind is NeuronKind.LIF else Layout.SEQ

    def on_neuron(low: Lowering, a: Act, m: nn.Module, idx: int) -> Act:
        a, spec = neuron_step(low, a, m, idx)
        states.append(spec)
        return a

    a = low.to_rows(_walk(low, model, a, prefer, on_neuron), (cfg.classes,))  # [N, C]
    b.rename_output(a.name, LOGITS_NAME)
    if kind is NeuronKind.MASKED_PSN:
        b.op("Add", [T_STATE, b.scalar(1, dtype=np.int64)], out=T_STATE_OUT)  # [N]
        states.append(StateSpec(input=T_STATE, output=T_STATE_OUT, shape=(), dtype="int64", init=0.0))
    inputs = [value_info(INPUT_NAME, FLOAT, ["N", cfg.features])]
    outputs = [value_info(LOGITS_NAME, FLOAT, ["N", cfg.classes])]
    for s in states:
        elem = INT64 if s.dtype == "int64" else FLOAT
        inputs.append(value_info(s.input, elem, ["N", *s.shape]))
        outputs.append(value_info(s.output, elem, ["N", *s.shape]))
    graph = b.graph("psn_step", inputs, outputs)
    doc = f"psn-serve step graph: {kind} network, T={cfg.T}, k={cfg.k}"
    return StepGraph(make_model(graph, doc), states)
