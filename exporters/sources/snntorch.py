"""snnTorch networks: an ``nn.Sequential`` of time-local layers and ``snn.Leaky`` / ``snn.Synaptic``
neurons built with ``init_hidden=True``, in snnTorch's single-step convention (the user's loop calls the
network once per step; it returns the last layer's spikes, or (spk, mem) with ``output=True``).

``from_snntorch(seq, readout)`` turns one into a network of the exporter's contract, x [T, N, *] ->
per-step logits [T, N, C]: the time-local layers run on the T·N steps at once, each neuron runs
snnTorch's own forward once per step (``SnnTorchNeuron``: the reference the export checks compare
against) and exports as a cell with snnTorch's exact expressions (exporters/cells.py: LeakyCell,
SynapticCell). The per-step logits are the last layer's spikes (``Readout.SPIKES``) or its membrane
(``Readout.MEM``).
"""

from __future__ import annotations

import sys
from enum import StrEnum

import torch
from torch import nn

from exporters.cells import LeakyCell, SnnReset, SynapticCell
from exporters.errors import ExportError
from exporters.forms import CellForm


class Readout(StrEnum):
    SPIKES = "spikes"  # the last neuron layer's spikes (graded spikes as snnTorch scales them)
    MEM = "mem"  # the last neuron layer's membrane potential


SUPPORTED = ("Leaky", "Synaptic")
WHY_NOT = {
    "RLeaky": "a recurrent neuron (its spikes feed back into its input through a weight)",
    "RSynaptic": "a recurrent neuron (its spikes feed back into its input through a weight)",
    "Alpha": "an alpha neuron (excitatory and inhibitory synaptic currents): no export form",
    "Lapicque": "Lapicque's RC neuron: no export form (snn.Leaky is the same model with β = 1 − T/τ)",
    "SConv2dLSTM": "a spiking convolutional LSTM cell (gates over time): no export form",
    "SLSTM": "a spiking LSTM cell (gates over time): no export form",
    "LeakyParallel": "runs an nn.RNN over the whole sequence at once (not the single-step convention)",
    "LeakyKernel": "convolves the whole sequence with a kernel (not the single-step convention)",
    "StateLeaky": "takes the whole sequence at once (not the single-step convention)",
    "LinearLeaky": "takes the whole sequence at once (not the single-step convention)",
    "AssociativeLeaky": "an associative-memory neuron over the whole sequence: no export form",
    "DeltaLeaky": "fires on the change of its membrane: no export form",
    "BatchNormTT1d": "one BatchNorm per time step: not time-local",
    "BatchNormTT2d": "one BatchNorm per time step: not time-local",
}


def _is_snntorch(m: nn.Module) -> bool:
    return type(m).__module__.split(".")[0] == "snntorch"


def is_snntorch_network(net: nn.Module) -> bool:
    """Whether ``net`` holds a snnTorch neuron or layer."""
    return "snntorch" in sys.modules and any(_is_snntorch(m) for m in net.modules())


def refusal(name: str, m: nn.Module) -> ExportError | None:
    """Why snnTorch module ``m`` cannot be exported (None: it can)."""
    kind = type(m).__name__
    if kind in SUPPORTED and _is_snntorch(m):
        if not m.init_hidden:
            return ExportError(
                f"layer {name!r} (snn.{kind}): built with init_hidden=False, it takes and returns its state "
                "through the caller; build it with init_hidden=True (snnTorch's nn.Sequential convention)"
            )
        if m.inhibition:
            return ExportError(f"layer {name!r} (snn.{kind}): inhibition=True is not supported")
        if m.state_quant:
            return ExportError(
                f"layer {name!r} (snn.{kind}): a quantized state (state_quant) is not supported"
            )
        return None
    why = WHY_NOT.get(kind)
    if why is None and hasattr(m, "init_hidden"):  # a snnTorch neuron this exporter does not know
        why = "not a supported snnTorch neuron"
    if why is None:
        return None
    return ExportError(f"layer {name!r} (snn.{kind}): {why}; supported: snn.Leaky, snn.Synaptic")


def _flat(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    out = []
    for child_name, child in seq.named_children():
        path = f"{prefix}{child_name}"
        out += _flat(child, f"{path}.") if type(child) is nn.Sequential else [(path, child)]
    return out


class SnnTorchNeuron(nn.Module):
    """One snnTorch neuron over a whole sequence, x [T, N, *] -> [T, N, *], by its own forward once per
    step from a fresh state (the export checks' reference). ``spikes`` keeps the 0/1 spikes of the last
    call (the output is the membrane with ``readout_mem``)."""

    def __init__(self, neuron: nn.Module, readout_mem: bool) -> None:
        super().__init__()
        self.neuron = neuron
        self.readout_mem = readout_mem
        self.spikes: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.neuron.reset_mem()
        outs, spikes = [], []
        try:
            for t in range(x.shape[0]):
                y = self.neuron(x[t])
                spk = y[0] if isinstance(y, tuple) else y
                spikes.append((spk != 0).to(torch.float32))
                outs.append(self.neuron.mem if self.readout_mem else spk)
        finally:
            self.neuron.reset_mem()
        self.spikes = torch.stack(spikes)
        return torch.stack(outs)

    def export_form(self, name: str) -> CellForm:
        m = self.neuron
        common = {
            "threshold": m.threshold,
            "reset": SnnReset(m.reset_mechanism),
            "reset_delay": bool(m.reset_delay),
            "graded": m.graded_spikes_factor,
            "readout_mem": self.readout_mem,
        }
        if type(m).__name__ == "Synaptic":
            return CellForm(name, SynapticCell(m.alpha, m.beta, **common))
        return CellForm(name, LeakyCell(m.beta, **common))


class SnnTorchSequence(nn.Module):
    """A snnTorch nn.Sequential as x [T, N, *] -> per-step logits [T, N, C]."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if isinstance(layer, SnnTorchNeuron):
                x = layer(x)  # [T, N, *]
            else:
                steps = x.shape[:2]
                x = layer(x.flatten(0, 1)).unflatten(0, steps)  # [T·N, *] -> [T, N, *]
        return x


def from_snntorch(net: nn.Module, readout: Readout | str = Readout.SPIKES) -> SnnTorchSequence:
    """The exporter's network for snnTorch network ``net`` (the same modules, not copies); raises
    ExportError naming the layer that cannot be exported, and why."""
    readout = Readout(readout)
    if type(net) is not nn.Sequential:
        raise ExportError(
            f"a snnTorch network must be an nn.Sequential of time-local layers and snn.Leaky / snn.Synaptic "
            f"with init_hidden=True (snnTorch's single-step convention); got {type(net).__name__}, whose "
            "forward the exporter cannot follow"
        )
    layers = _flat(net, "")
    for name, m in layers:
        for sub_name, sub in m.named_modules():
            error = refusal(f"{name}.{sub_name}" if sub_name else name, sub)
            if error is not None:
                raise error
    neurons = [i for i, (_, m) in enumerate(layers) if type(m).__name__ in SUPPORTED and _is_snntorch(m)]
    if not neurons:
        raise ExportError("the snnTorch network has no snn.Leaky or snn.Synaptic layer")
    last = len(layers) - 1
    for i in neurons:
        if layers[i][1].output and i != last:
            raise ExportError(
                f"layer {layers[i][0]!r}: output=True returns (spk, mem), which the next layer cannot take; "
                "only the last layer may set it"
            )
    if readout is Readout.MEM and neurons[-1] != last:
        raise ExportError(
            f"--readout mem reads the last layer's membrane, but the last layer {layers[last][0]!r} is a "
            f"{type(layers[last][1]).__name__}, not a snnTorch neuron"
        )
    wrapped = [
        SnnTorchNeuron(m, readout is Readout.MEM and i == last) if i in neurons else m
        for i, (_, m) in enumerate(layers)
    ]
    return SnnTorchSequence(wrapped).eval()
