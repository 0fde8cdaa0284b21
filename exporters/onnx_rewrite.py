"""Post-processing of the graphs ``torch.onnx.export`` writes: each ``psn_serve::LIF`` node (the full-
sequence LIF / IF of exporters/forms.py) becomes an ONNX Scan over the time axis, so that the graph does
not grow with T; the custom domain is then dropped from the opset imports."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from exporters.errors import ExportError
from exporters.forms import DOMAIN
from exporters.graph import FLOAT, GraphBuilder


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _lif_body(index: int, a: dict) -> onnx.GraphProto:
    """v_in [N, *], x_t [N, *] -> v_out, s_t: the float ops of exporters.forms.lif_update."""
    b = GraphBuilder(prefix=f"lif{index}_")
    v, x = b.reserve(f"lif{index}_v_in"), b.reserve(f"lif{index}_x_t")
    v_r = b.scalar(float(a["v_reset"]))
    if a["tau"] < 0:  # IF: H = V + X
        h = b.op("Add", [v, x])
    elif a["decay_input"]:  # H = V + (X − (V − V_r)) / τ
        h = b.op("Add", [v, b.op("Div", [b.op("Sub", [x, b.op("Sub", [v, v_r])]), b.scalar(a["tau"])])])
    else:  # H = V − (V − V_r) / τ + X
        h = b.op("Add", [b.op("Sub", [v, b.op("Div", [b.op("Sub", [v, v_r]), b.scalar(a["tau"])])]), x])
    vth = b.scalar(float(a["v_threshold"]))
    fire = b.op("GreaterOrEqual", [h, vth])
    reset = a["reset"].decode() if isinstance(a["reset"], bytes) else a["reset"]
    v_out = f"lif{index}_v_out"
    if reset == "hard":
        b.op("Where", [fire, v_r, h], out=v_out)
    elif reset == "soft":
        b.op("Where", [fire, b.op("Sub", [h, vth]), h], out=v_out)
    else:
        b.op("Identity", [h], out=v_out)
    s = b.op("Cast", [fire], out=f"lif{index}_s_t", to=FLOAT)
    return b.graph(
        f"lif{index}_step",
        [helper.make_tensor_value_info(v, FLOAT, None), helper.make_tensor_value_info(x, FLOAT, None)],
        [helper.make_tensor_value_info(v_out, FLOAT, None), helper.make_tensor_value_info(s, FLOAT, None)],
    )


def _lif_scan(node: onnx.NodeProto, index: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes replacing one psn_serve::LIF: V0 = full(shape(x)[1:], v0), then Scan over axis 0."""
    a = _attrs(node)
    v0_value = float(a["v_reset"]) if a["reset"] in (b"hard", "hard") else 0.0
    b = GraphBuilder(prefix=f"psn_lif{index}_")
    (x,) = node.input
    shape = b.op("Shape", [x], start=1)  # [N, *]
    v0 = b.op(
        "ConstantOfShape",
        [shape],
        value=helper.make_tensor("v0", FLOAT, [1], np.array([v0_value], np.float32)),
    )
    b.op(
        "Scan",
        [v0, x],
        outputs=[b.fresh("v_last"), node.output[0]],
        body=_lif_body(index, a),
        num_scan_inputs=1,
        scan_input_axes=[0],
        scan_output_axes=[0],
    )
    return b.nodes, b.initializers


def lower_custom_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every psn_serve node of the main graph (in place) and drop the custom opset import."""
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    index = 0
    for node in graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        if node.op_type != "LIF":
            raise ExportError(f"unknown custom op {DOMAIN}::{node.op_type}")
        new_nodes, inits = _lif_scan(node, index)
        nodes.extend(new_nodes)
        graph.initializer.extend(inits)
        index += 1
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    # value_info entries written for the custom node's output stay valid (same tensor, same type)
    return model


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def strip_stack_traces(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the Python stack trace torch.onnx records on every node (in place): it holds this machine's
    absolute file paths, so without it an export is the same bytes wherever it runs. The module names
    and scopes (``namespace``, ``pkg.torch.onnx.name_scopes``...) stay for debugging."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return model
