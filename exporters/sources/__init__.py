"""Networks from other frameworks as networks of the exporter's contract (x [T, N, *] -> per-step
logits [T, N, C]), built from the exporter's own neuron forms so that they go through the same export,
the same checks and the same model directory: snnTorch (sources/snntorch.py) and NIR graphs
(sources/nir.py)."""

from __future__ import annotations

from torch import nn

from exporters.errors import ExportError


def from_module(net: nn.Module, readout: str | None = None) -> nn.Module:
    """``net`` as the exporter takes it: a snnTorch network converted (``readout``: spikes, the default,
    or mem), anything else unchanged."""
    from exporters.sources.snntorch import Readout, from_snntorch, is_snntorch_network

    if is_snntorch_network(net):
        return from_snntorch(net, Readout(readout or Readout.SPIKES))
    if readout is not None:
        raise ExportError("--readout only applies to a snnTorch network")
    return net
