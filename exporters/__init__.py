"""Export PSN-family sequence classifiers to a model directory (manifest.json, full.onnx, step.onnx).

The graphs are built node by node with ``onnx.helper`` from ``model.layers`` (see exporters/graphs.py);
psn_runtime/manifest.py defines their inputs, outputs and the manifest.
"""

from exporters.checks import CheckReport, Parity
from exporters.errors import ExportCheckFailed, ExportError
from exporters.export import export_checkpoint, export_model
from exporters.graph import OPSET

__all__ = [
    "OPSET",
    "CheckReport",
    "ExportCheckFailed",
    "ExportError",
    "Parity",
    "export_checkpoint",
    "export_model",
]
