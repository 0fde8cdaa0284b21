"""Post-processing of the graphs ``torch.onnx.export`` writes: each ``psn_serve::Cell`` node (the full
sequence of a state-space neuron, exporters/forms.py's CellForm) becomes an ONNX Scan over the time axis
whose body is that neuron's cell (exporters/cells.py) exported for one step, so that the graph does not
grow with T; the custom domain is then dropped from the opset imports. Stack traces are stripped.

The body is exported with torch.onnx's TorchScript exporter: a cell is a handful of elementwise ops,
which it writes in milliseconds, where tracing a ``scan`` with torch.export costs seconds per layer."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from exporters.cells import Cell
from exporters.errors import ExportError
from exporters.graph import OPSET

DOMAIN = "psn_serve"  # the custom ONNX domain of the nodes lowered here
CELL_OP = "Cell"
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


class _Body(nn.Module):
    """A Scan body: (*states, x_t) -> (*new states, out[, spikes])."""

    def __init__(self, cell: Cell, spikes: bool) -> None:
        super().__init__()
        self.cell = cell
        self.spikes = spikes

    def forward(self, *args: torch.Tensor):
        st = self.cell(args[-1], *args[:-1])
        return (*st.states, st.out, *([st.spikes] if self.spikes else []))


def cell_body(cell: Cell, step_shape: tuple[int, ...], spikes: bool, prefix: str) -> onnx.GraphProto:
    """The Scan body of ``cell`` for per-sample step inputs of ``step_shape``; every name prefixed."""
    n = len(cell.states)
    x_t = torch.zeros(2, *step_shape)
    args = (*(torch.full_like(x_t, v) for v in cell.init()), x_t)
    inputs = [f"s{j}" for j in range(n)] + ["x_t"]
    outputs = [f"s{j}_out" for j in range(n)] + ["out"] + (["spikes"] if spikes else [])
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Body(cell, spikes).eval(),
            args,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "N"} for name in inputs + outputs},
        )
    graph = onnx.load_from_string(buf.getvalue()).graph
    _prefix_names(graph, prefix)
    return graph


def _prefix_names(graph: onnx.GraphProto, prefix: str) -> None:
    """Rename every tensor of ``graph`` (a body must not reuse a name of the graph around it), and give
    a graph output that repeats an earlier one (a state read out as the output) its own Identity."""

    def rename(name: str) -> str:
        return f"{prefix}{name}" if name else name

    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = rename(value.name)
    for init in graph.initializer:
        init.name = rename(init.name)
    seen: set[str] = {i.name for i in graph.input}
    for j, out in enumerate(graph.output):
        if out.name in seen:
            fresh = f"{out.name}_{j}"
            graph.node.append(helper.make_node("Identity", [out.name], [fresh], name=f"{fresh}_copy"))
            out.name = fresh
        seen.add(out.name)


def _scan(node: onnx.NodeProto, index: int, forms: Mapping[str, object]) -> list[onnx.NodeProto]:
    """Nodes replacing one psn_serve::Cell: each state = full(shape(x)[1:], init), then Scan over axis 0."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    layer = attrs["layer"].decode() if isinstance(attrs["layer"], bytes) else attrs["layer"]
    form = forms.get(layer)
    if form is None:
        raise ExportError(f"no neuron layer {layer!r} for a {DOMAIN}::{CELL_OP} node")
    prefix = f"psn_cell{index}_"
    cell: Cell = form.cell
    body = cell_body(cell, form.step_shape, len(node.output) > 1, prefix + "body_")
    (x,) = node.input
    shape = f"{prefix}shape"
    nodes = [helper.make_node("Shape", [x], [shape], name=f"{prefix}Shape", start=1)]  # [N, *]
    inits = []
    for j, value in enumerate(cell.init()):
        inits.append(f"{prefix}init{j}")
        tensor = helper.make_tensor(f"{prefix}v{j}", TensorProto.FLOAT, [1], np.array([value], np.float32))
        nodes.append(
            helper.make_node("ConstantOfShape", [shape], [inits[-1]], name=f"{prefix}Init{j}", value=tensor)
        )
    last = [f"{prefix}last{j}" for j in range(len(inits))]
    nodes.append(
        helper.make_node(
            "Scan",
            [*inits, x],
            [*last, *node.output],
            name=f"{prefix}Scan",
            body=body,
            num_scan_inputs=1,
            scan_input_axes=[0],
            scan_output_axes=[0] * len(node.output),
        )
    )
    return nodes


def lower_custom_ops(model: onnx.ModelProto, forms: Mapping[str, object]) -> onnx.ModelProto:
    """Replace every psn_serve node of the main graph (in place) and drop the custom opset import;
    ``forms`` maps a neuron layer's name to its CellForm."""
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    index = 0
    for node in graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        if node.op_type != CELL_OP:
            raise ExportError(f"unknown custom op {DOMAIN}::{node.op_type}")
        nodes.extend(_scan(node, index, forms))
        index += 1
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    # value_info entries written for the custom node's outputs stay valid (same tensors, same types)
    return model


def strip_stack_traces(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the Python stack trace torch.onnx records on every node (in place): it holds this machine's
    absolute file paths, so without it an export is the same bytes wherever it runs. The module names
    and scopes (``namespace``, ``pkg.torch.onnx.name_scopes``...) stay for debugging."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return model
