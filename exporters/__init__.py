"""Export PSN-family networks to a model directory (manifest.json, full.onnx, step.onnx).

Python API (stable; docs/export.md has the details)::

    from exporters import export_module
    manifest = export_module(
        net,                      # nn.Module: x [T, N, *input_shape] -> per-step logits [T, N, C]
        "models/my-net",          # model directory (written only when every check passes)
        input_shape=(2, 64, 64),  # the per-step input shape
        T=10,                     # sequence length (the longest accepted for variable-length networks)
        name="my-net",
        labels=["a", "b", "c"],   # optional: "0".."C-1"
    )

``net`` is built from this project's psn.neurons or SpikingJelly's ``activation_based`` (multi-step
PSN, MaskedPSN at λ = 1, SlidingPSN, LIFNode, ParametricLIFNode, IFNode; its model zoo too) plus
time-local layers; ``torch.onnx.export`` lowers the layers, exporters/forms.py gives the neurons' export
forms (exporters/cells.py: state-space neurons as step functions with per-neuron parameters).
``export_model`` and ``export_checkpoint`` do the same for a ``SeqClassifier`` / a ``psn train``
checkpoint. Other sources become such a ``net``:
``exporters.sources.snntorch.from_snntorch(seq)`` (a snnTorch nn.Sequential) and
``exporters.sources.nir.import_nir(graph, dt, input_shape)`` (a NIR graph).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psn_runtime.lazy import lazy_attributes

if TYPE_CHECKING:
    from exporters.errors import ExportCheckFailed, ExportError
    from exporters.export import export_checkpoint, export_model, export_module
    from exporters.graph import OPSET
    from exporters.parity import MAX_TIE_SAMPLES, CheckReport, Parity

# loaded on first use, so that `psn export --help` (exporters.cli) runs without torch or onnx installed
_LAZY = {
    "OPSET": "exporters.graph",
    "MAX_TIE_SAMPLES": "exporters.parity",
    "CheckReport": "exporters.parity",
    "Parity": "exporters.parity",
    "ExportCheckFailed": "exporters.errors",
    "ExportError": "exporters.errors",
    "export_checkpoint": "exporters.export",
    "export_model": "exporters.export",
    "export_module": "exporters.export",
}

__all__ = [
    "MAX_TIE_SAMPLES",
    "OPSET",
    "CheckReport",
    "ExportCheckFailed",
    "ExportError",
    "Parity",
    "export_checkpoint",
    "export_model",
    "export_module",
]


__getattr__ = lazy_attributes(__name__, _LAZY)
