"""NIR graphs (the Neuromorphic Intermediate Representation, the ``nir`` package 1.x) as networks of the
exporter's contract, built from its own neuron forms: ``import_nir(graph, dt, input_shape)``.

A feed-forward graph (a DAG: a node's input is the sum of its predecessors' outputs, as NIR defines)
of Input, Output, Affine, Linear, Scale, Conv1d, Conv2d, Flatten, SumPool2d, AvgPool2d and the neurons
IF, LIF, LI, I, CubaLIF, CubaLI with scalar or per-neuron parameters. The neurons are discretised by
forward Euler at ``dt`` (exporters/cells.py's NIRCell; docs/export.md writes the equations out), every
state starts at 0. Every layer but the neurons is time-local and runs on the T·N steps at once. The
per-step logits are the Output node's value. Cycles, Delay nodes and nested graphs are refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exporters.cells import NIRCell, param
from exporters.errors import ExportError
from exporters.forms import CellForm
from psn_runtime.manifest import NeuronKind

NEURONS = {"LIF": NeuronKind.LIF, "IF": NeuronKind.IF, "LI": NeuronKind.LI, "I": NeuronKind.LI}
NEURONS |= {"CubaLIF": NeuronKind.CUBA_LIF, "CubaLI": NeuronKind.CUBA_LI}
LAYERS = ("Affine", "Linear", "Scale", "Conv1d", "Conv2d", "Flatten", "SumPool2d", "AvgPool2d")
WHY_NOT = {
    "Delay": "a Delay node holds inputs across steps (no export form)",
    "NIRGraph": "a nested graph (snnTorch writes one for a recurrent RLeaky / RSynaptic)",
    "Threshold": "a Threshold node is not supported",
}


def read(path: Path | str):
    """The graph in a .nir file (``nir.read``, without nir's type inference, which knows no grouped
    convolution: running the imported network checks the shapes), or ExportError."""
    import nir

    try:
        return nir.read(str(path), type_check=False)
    except FileNotFoundError:
        raise ExportError(f"--nir {str(path)!r}: no such file") from None
    except Exception as exc:  # h5py and nir raise their own types for a file that is not a NIR graph
        raise ExportError(f"--nir {str(path)!r}: not a NIR graph: {exc}") from exc


def _arr(value) -> np.ndarray:
    return np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)


def _pair(value) -> tuple[int, int]:
    flat = [int(v) for v in np.atleast_1d(_arr(value)).ravel()]
    return (flat[0], flat[0]) if len(flat) == 1 else (flat[0], flat[1])


def _padding(value, dims: int):
    if isinstance(value, str | bytes):
        return value.decode() if isinstance(value, bytes) else value
    flat = [int(v) for v in np.atleast_1d(_arr(value)).ravel()]
    return flat[0] if dims == 1 else _pair(flat)


def _frozen(value: np.ndarray) -> nn.Parameter:
    return nn.Parameter(param(value), requires_grad=False)


class Layer(nn.Module):
    """One time-local NIR node on one step, x [B, *] -> [B, *] (B = T·N); its arrays are (frozen)
    parameters, so that the manifest counts them."""

    def __init__(self, name: str, node) -> None:
        super().__init__()
        self.op = type(node).__name__
        self.node_name = name
        if self.op in ("Affine", "Linear"):
            weight = _arr(node.weight)
            if weight.ndim != 2:
                raise ExportError(
                    f"node {name!r} ({self.op}): a weight of shape {list(weight.shape)} (2-D only)"
                )
            self.weight = _frozen(weight)
            self.bias = _frozen(_arr(node.bias)) if self.op == "Affine" else None
        elif self.op == "Scale":
            self.scale = _frozen(_arr(node.scale))
        elif self.op in ("Conv1d", "Conv2d"):
            self.weight, self.bias = _frozen(_arr(node.weight)), _frozen(_arr(node.bias))
            dims = 1 if self.op == "Conv1d" else 2
            one = (lambda v: int(np.atleast_1d(_arr(v)).ravel()[0])) if dims == 1 else _pair
            self.conv = {
                "stride": one(node.stride),
                "padding": _padding(node.padding, dims),
                "dilation": one(node.dilation),
                "groups": int(node.groups),
            }
        elif self.op == "Flatten":
            self.start, self.end = int(node.start_dim), int(node.end_dim)
        else:  # SumPool2d, AvgPool2d
            self.kernel, self.stride, self.pad = (
                _pair(node.kernel_size),
                _pair(node.stride),
                _pair(node.padding),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op in ("Affine", "Linear"):
            return F.linear(x, self.weight, self.bias)
        if self.op == "Scale":
            return x * self.scale
        if self.op == "Conv1d":
            return F.conv1d(x, self.weight, self.bias, **self.conv)
        if self.op == "Conv2d":
            return F.conv2d(x, self.weight, self.bias, **self.conv)
        if self.op == "Flatten":  # NIR's dims leave out the batch axis
            return x.flatten(
                self.start + 1 if self.start >= 0 else self.start, self.end + 1 if self.end >= 0 else self.end
            )
        if self.op == "AvgPool2d":
            return F.avg_pool2d(x, self.kernel, self.stride, self.pad)
        channels = x.shape[1]  # SumPool2d: a depthwise convolution with a kernel of ones
        ones = x.new_ones((channels, 1, *self.kernel))
        return F.conv2d(x, ones, None, self.stride, self.pad, groups=channels)


def _cell(name: str, node, dt: float) -> NIRCell:
    op = type(node).__name__
    get = {k: _arr(v) for k, v in vars(node).items() if k not in ("input_type", "output_type", "metadata")}
    kw = {"r": get["r"]}
    if op in ("LIF", "LI"):
        kw |= {"tau": get["tau"], "v_leak": get["v_leak"]}
    if op in ("CubaLIF", "CubaLI"):
        kw |= {"tau": get["tau_mem"], "v_leak": get["v_leak"], "tau_syn": get["tau_syn"], "w_in": get["w_in"]}
    if op in ("LIF", "IF", "CubaLIF"):
        kw |= {"v_threshold": get["v_threshold"], "v_reset": get["v_reset"]}
    for key in ("tau", "tau_syn"):
        if key in kw and not (np.all(np.isfinite(kw[key])) and np.all(kw[key] > 0)):
            raise ExportError(f"node {name!r} ({op}): {key} must be finite and > 0")
    return NIRCell(NEURONS[op], dt, **kw)


def _order(nodes: dict, edges: Sequence[tuple[str, str]]) -> list[str]:
    """The nodes in topological order; ExportError naming a cycle."""
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        preds[b].append(a)
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            loop = " -> ".join(reversed([*path[path.index(n) :], n]))
            raise ExportError(f"the NIR graph has a cycle ({loop}): recurrent graphs are not supported")
        state[n] = 1
        for p in preds[n]:
            visit(p, [*path, n])
        state[n] = 2
        order.append(n)

    for n in nodes:
        visit(n, [])
    return order


class NIRNetwork(nn.Module):
    """An imported NIR graph, x [T, N, *input_shape] -> the Output node's value [T, N, C]."""

    def __init__(self, graph, dt: float) -> None:
        super().__init__()
        nodes = dict(graph.nodes)
        edges = [(str(a), str(b)) for a, b in graph.edges]
        for name, node in nodes.items():
            op = type(node).__name__
            if op in WHY_NOT:
                raise ExportError(f"node {name!r} ({op}): {WHY_NOT[op]}; a feed-forward graph only")
            if op not in (*NEURONS, *LAYERS, "Input", "Output"):
                raise ExportError(f"node {name!r}: NIR's {op} is not supported")
        for a, b in edges:
            for end in (a, b):
                if end not in nodes:
                    raise ExportError(f"edge ({a!r}, {b!r}) names no node {end!r}")
        inputs = [n for n, node in nodes.items() if type(node).__name__ == "Input"]
        outputs = [n for n, node in nodes.items() if type(node).__name__ == "Output"]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportError(
                f"a NIR graph with one Input and one Output node; got {len(inputs)} and {len(outputs)}"
            )
        self.input_node, self.output_node = inputs[0], outputs[0]
        self.declared = nodes[self.input_node].input_type.get("input")
        self.order = _order(nodes, edges)
        self.preds = {n: [a for a, b in edges if b == n] for n in nodes}
        self.keys = {n: f"n{i}_{''.join(c if c.isalnum() else '_' for c in n)}" for i, n in enumerate(nodes)}
        self.nodes = nn.ModuleDict()
        for name, node in nodes.items():
            op = type(node).__name__
            if op in NEURONS:
                self.nodes[self.keys[name]] = CellForm(name, _cell(name, node, dt))
            elif op in LAYERS:
                self.nodes[self.keys[name]] = Layer(name, node)
        for name in self.order:
            if name != self.input_node and not self.preds[name]:
                raise ExportError(f"node {name!r} has no input")

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """The Input node's declared shape (if any) is input_shape, or [1, *input_shape] (with a batch
        axis of 1, as Norse writes it)."""
        if self.declared is None:
            return
        declared = tuple(int(d) for d in np.atleast_1d(self.declared))
        if declared not in (tuple(input_shape), (1, *input_shape)):
            raise ExportError(
                f"the NIR graph's Input node declares shape {list(declared)}; --input-shape gives "
                f"{list(input_shape)} per step"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for name in self.order:
            if name == self.input_node:
                values[name] = x
                continue
            h = values[self.preds[name][0]]
            for p in self.preds[name][1:]:
                h = h + values[p]  # NIR: the inputs of a node add up
            if name == self.output_node:
                values[name] = h
                continue
            module = self.nodes[self.keys[name]]
            if isinstance(module, CellForm):
                values[name] = module(h)  # [T, N, *]
            else:
                steps = h.shape[:2]
                values[name] = module(h.flatten(0, 1)).unflatten(0, steps)  # [T·N, *] -> [T, N, *]
        return values[self.output_node]


def import_nir(graph, dt: float, input_shape: Sequence[int]) -> NIRNetwork:
    """The exporter's network for a NIR graph (a ``nir.NIRGraph`` or the path of a .nir file) at time
    step ``dt`` for per-step inputs of ``input_shape``; ExportError names what cannot be imported."""
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ExportError(f"--dt {dt!r}: the time step must be a number > 0")
    if isinstance(graph, str | Path):
        graph = read(graph)
    net = NIRNetwork(graph, float(dt))
    net.check_input(tuple(int(d) for d in input_shape))
    return net.eval()
