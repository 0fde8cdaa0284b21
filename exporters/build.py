"""Trace a prepared network into ``full.onnx`` and ``step.onnx`` with ``torch.onnx.export`` (its
torch.export-based exporter, which keeps the batch and time axes symbolic through any reshape; the
TorchScript one bakes the traced batch size into SpikingJelly's ``unflatten(0, (T, N))``).

full.onnx:  x [N, T, *shape] -> logits [N, C] (mean over T), step_logits [N, T, C]
step.onnx:  x [N, *shape] + states -> logits [N, C] + new states: per neuron layer its states (the last
            k-1 inputs [N, k-1, *] of a masked / sliding PSN, V [N, *] of a LIF / IF, the synaptic
            current and the membrane of a CubaLIF...) and, with a masked PSN, the step index t [N] int64
            shared by its layers.

Both graphs also produce ``spikes_<i>`` (the i-th spiking neuron layer's spikes, time-major [T, N, *] /
[1, N, *]), which the checks read; they are not graph outputs of the files written.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import warnings
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from exporters.errors import ExportError
from exporters.forms import Mode
from exporters.graph import OPSET
from exporters.onnx_rewrite import lower_custom_ops, strip_stack_traces
from exporters.prepare import Prepared, reset_states
from psn_runtime.manifest import INPUT_NAME, LOGITS_NAME, STEP_LOGITS_NAME, NeuronKind, StateSpec

T_STATE, T_STATE_OUT = "t", "t_out"
_BATCH = torch.export.Dim("N")


def spikes_name(index: int) -> str:
    return f"spikes_{index}"


def state_names(index: int, label: str | None = None) -> tuple[str, str]:
    """Neuron layer ``index``'s state: ``state_<i>`` for a layer with one state, ``state_<i>_<label>``
    for each of several (a CubaLIF's ``i`` and ``v``)."""
    base = f"state_{index}" if label is None else f"state_{index}_{label}"
    return base, f"{base}_out"


def spike_outputs(p: Prepared) -> list[torch.Tensor]:
    return [f.spikes for f in p.forms if f.spiking]


@dataclass(frozen=True)
class StepGraph:
    model: onnx.ModelProto
    states: list[StateSpec]


class _Full(nn.Module):
    def __init__(self, p: Prepared) -> None:
        super().__init__()
        self.p = p
        self.net = p.net

    def forward(self, x: torch.Tensor):
        y = self.net(x.transpose(0, 1).contiguous())  # [N, T, *] -> [T, N, *] -> [T, N, C]
        step_logits = y.transpose(0, 1)  # [N, T, C]
        return (step_logits.mean(1), step_logits, *spike_outputs(self.p))


class _Step(nn.Module):
    def __init__(self, p: Prepared, counts: list[int], masked: bool) -> None:
        super().__init__()
        self.p = p
        self.net = p.net
        self.counts = counts  # states per neuron layer
        self.masked = masked

    def forward(self, x: torch.Tensor, *states: torch.Tensor):
        t = states[-1] if self.masked else None
        i = 0
        for f, n in zip(self.p.forms, self.counts, strict=True):
            f.state, f.t = tuple(states[i : i + n]), t
            i += n
        y = self.net(x.unsqueeze(0))  # [1, N, *] -> [1, N, C]
        new = [s for f in self.p.forms for s in f.new_state] + ([t + 1] if self.masked else [])
        return (y[0], *new, *spike_outputs(self.p))


def _export(
    wrapper: nn.Module,
    args: tuple,
    input_names: list[str],
    output_names: list[str],
    dynamic: tuple,
    shapes: dict[str, list[int | str]],
    doc: str,
    forms: list,
) -> onnx.ModelProto:
    """Export ``wrapper`` with torch.onnx's exporter (torch.export + onnxscript's optimizer); ``dynamic``
    names the dynamic axes of each argument, ``shapes`` are the declared shapes of the graph inputs and
    outputs."""
    for f in forms:
        f.exporting = True
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_logs(), _registry_once():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
            )
    except ExportError:
        raise
    except Exception as exc:  # the exporter's own errors (an operator it cannot lower...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed: {first}") from exc
    finally:
        for f in forms:
            f.exporting = False
    model = strip_stack_traces(lower_custom_ops(program.model_proto, {f.name: f for f in forms}))
    spikes = {n for n in output_names if n.startswith("spikes_")}
    keep = [o for o in model.graph.output if o.name not in spikes]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in shapes:
            elem = value.type.tensor_type.elem_type
            value.CopyFrom(onnx.helper.make_tensor_value_info(value.name, elem, shapes[value.name]))
    model.producer_name = "psn-serve exporters (torch.onnx)"
    model.doc_string = doc
    return model


# torch.onnx builds its operator registry anew for every export (ONNXRegistry.from_torchlib): onnxscript
# re-parses the source of each of its ~1,000 torchlib functions to list them, then each is matched to its
# ATen overload (1.0-1.7 s of a tiny network's ~3 s per graph on a 2-core VM). The registry depends only on
# the installed torch and onnxscript and on the opset: built once per process here, and a copy of it lent to
# torch.onnx while an export runs (the copy: an export that registers its own ops changes only its own).
_REGISTRATION = "torch.onnx._internal.exporter._registration"
_REGISTRIES: dict[tuple, object] = {}


@contextlib.contextmanager
def _registry_once():
    """``ONNXRegistry.from_torchlib()`` answered with a copy of the process's first answer (per opset) during
    an export; where this torch lays the registry out otherwise, nothing changes."""
    try:
        cls = importlib.import_module(_REGISTRATION).ONNXRegistry
        original = cls.__dict__["from_torchlib"]  # the classmethod itself, put back afterwards
    except (ImportError, AttributeError, KeyError):
        yield
        return
    build = original.__get__(None, cls)

    def lent(_cls, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        cached = _REGISTRIES.get(key)
        if cached is None:
            cached = build(*args, **kwargs)
            if not isinstance(getattr(cached, "functions", None), dict):
                return cached  # laid out otherwise: not kept, as it could not be copied
            _REGISTRIES[key] = cached
        registry = copy.copy(cached)
        registry.functions = {target: list(metas) for target, metas in cached.functions.items()}
        return registry

    cls.from_torchlib = classmethod(lent)
    try:
        yield
    finally:
        cls.from_torchlib = original


@contextlib.contextmanager
def _quiet_logs():
    """torch.onnx logs every step of its exporter and each torchvision op it skips: keep that quiet."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def build_full(p: Prepared, variable_length: bool) -> onnx.ModelProto:
    p.set_mode(Mode.FULL)
    spikes = [spikes_name(i) for i in range(p.spiking_layers)]
    dims = {0: _BATCH} | ({1: torch.export.Dim("T", min=1, max=p.T)} if variable_length and p.T > 1 else {})
    x = torch.randn(2, p.T, *p.input_shape)
    reset_states(p.net)
    kinds = ", ".join(f.info.kind for f in p.forms)
    t: int | str = "T" if variable_length else p.T
    shapes = {
        INPUT_NAME: ["N", t, *p.input_shape],
        LOGITS_NAME: ["N", p.classes],
        STEP_LOGITS_NAME: ["N", t, p.classes],
    }
    return _export(
        _Full(p),
        (x,),
        [INPUT_NAME],
        [LOGITS_NAME, STEP_LOGITS_NAME, *spikes],
        (dims,),
        shapes,
        f"psn-serve full graph: T={p.T}, input {list(p.input_shape)}, neurons [{kinds}]",
        p.forms,
    )


def build_step(p: Prepared) -> StepGraph:
    kinds = [f.info.kind for f in p.forms]
    if NeuronKind.PSN in kinds:
        raise ExportError("a network with a PSN has no step graph: every H[t] reads all T inputs")
    masked = NeuronKind.MASKED_PSN in kinds
    x = torch.randn(2, *p.input_shape)
    # state shapes: trace one step in full mode, recording each neuron's per-step input
    seen: list[torch.Tensor] = []
    hooks = [f.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0])) for f in p.forms]
    try:
        p.set_mode(Mode.IDENTITY)
        with torch.no_grad():
            p.net(x.unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
    states: list[StateSpec] = []
    example: list[torch.Tensor] = []
    counts: list[int] = []
    for i, (f, x_in) in enumerate(zip(p.forms, seen, strict=True)):
        layer = f.initial_states(x_in[0])  # x_in [1, N, *]
        counts.append(len(layer))
        for label, value, init in layer:
            s_in, s_out = state_names(i, label if len(layer) > 1 else None)
            states.append(
                StateSpec(input=s_in, output=s_out, shape=tuple(value.shape[1:]), dtype="float32", init=init)
            )
            example.append(value)
    if masked:
        states.append(StateSpec(input=T_STATE, output=T_STATE_OUT, shape=(), dtype="int64", init=0.0))
        example.append(torch.zeros(2, dtype=torch.int64))
    p.set_mode(Mode.STEP)
    try:
        spikes = [spikes_name(i) for i in range(p.spiking_layers)]
        dynamic = ({0: _BATCH}, tuple({0: _BATCH} for _ in states))  # x, *states
        shapes = {INPUT_NAME: ["N", *p.input_shape], LOGITS_NAME: ["N", p.classes]}
        shapes |= {s.input: ["N", *s.shape] for s in states} | {s.output: ["N", *s.shape] for s in states}
        model = _export(
            _Step(p, counts, masked),
            (x, *example),
            [INPUT_NAME, *(s.input for s in states)],
            [LOGITS_NAME, *(s.output for s in states), *spikes],
            dynamic,
            shapes,
            f"psn-serve step graph: input {list(p.input_shape)}, neurons [{', '.join(kinds)}]",
            p.forms,
        )
    finally:
        p.set_mode(Mode.FULL)
        for f in p.forms:
            f.state = f.t = f.new_state = None
    return StepGraph(model, states)
