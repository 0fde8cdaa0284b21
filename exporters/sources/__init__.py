"""Networks from other frameworks as networks of the exporter's contract (x [T, N, *] -> per-step
logits [T, N, C]), built from the exporter's own neuron forms so that they go through the same export,
the same checks and the same model directory: snnTorch (sources/snntorch.py) and NIR graphs
(sources/nir.py)."""

from __future__ import annotations

from torch import nn

from exporters.errors import ExportError

# libraries whose networks come in through NIR: (name, how they write it)
VIA_NIR = {
    "norse": ("Norse", "norse.torch.utils.export_nir.to_nir"),
    "sinabs": ("Sinabs", "sinabs.to_nir"),
    "rockpool": ("Rockpool", "its to_nir"),
}


def from_module(net: nn.Module, readout: str | None = None) -> nn.Module:
    """``net`` as the exporter takes it: a snnTorch network converted (``readout``: spikes, the default,
    or mem), anything else unchanged; a module of a library that exports to NIR is refused by name."""
    from exporters.sources.snntorch import Readout, from_snntorch, is_snntorch_network

    for name, m in net.named_modules():
        library = VIA_NIR.get(type(m).__module__.split(".")[0])
        if library is not None:
            where = f"layer {name!r}" if name else "the network"
            raise ExportError(
                f"{where} ({type(m).__name__}) is a {library[0]} module: write the "
                f"network as a NIR graph ({library[1]}, then nir.write) and import it with psn export --nir"
            )
    if is_snntorch_network(net):
        return from_snntorch(net, Readout(readout or Readout.SPIKES))
    if readout is not None:
        raise ExportError("--readout only applies to a snnTorch network")
    return net
