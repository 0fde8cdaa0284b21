"""The opset, node counting, and a small builder of ONNX (sub)graphs (nodes, numpy initializers,
unique tensor names) for the few nodes torch.onnx does not write: the LIF / IF Scan body
(exporters/onnx_rewrite.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21  # supported by onnxruntime >= 1.20


class GraphBuilder:
    """Collects nodes and initializers; every ``op`` returns the name(s) of its output tensor(s)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()
        self._const_cache: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        base = f"{self.prefix}{hint}"
        name, i = base, 1
        while name in self._used:
            name = f"{base}_{i}"
            i += 1
        self._used.add(name)
        return name

    def reserve(self, name: str) -> str:
        """Claim an exact name (a graph input or output)."""
        if name in self._used:
            raise ValueError(f"tensor name {name!r} is already used")
        self._used.add(name)
        return name

    def const(self, hint: str, value: np.ndarray, *, share: bool = False) -> str:
        """An initializer; ``share`` reuses an identical earlier one (small shape constants)."""
        arr = np.ascontiguousarray(value)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if share else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def shape_const(self, values: Sequence[int]) -> str:
        return self.const("shape", np.asarray(values, dtype=np.int64), share=True)

    def scalar(self, value: float, dtype: type = np.float32) -> str:
        return self.const("scalar", np.asarray(value, dtype=dtype), share=True)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        out: str | None = None,
        outputs: Sequence[str] | None = None,
        n_out: int = 1,
        **attrs,
    ) -> str:
        """Add one node; returns its (first) output name. ``out`` names the output exactly (reserved)."""
        if outputs is not None:
            names = list(outputs)
        elif out is not None:
            names = [self.reserve(out)]
        else:
            names = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), names, name=self.fresh(f"n_{op_type}"), **attrs)
        )
        return names[0]

    def rename_output(self, old: str, new: str) -> str:
        """Give the tensor ``old`` (produced by a node of this graph, consumed by none) the name ``new``."""
        self.reserve(new)
        for node in self.nodes:
            if old in node.input:
                raise ValueError(f"cannot rename {old!r}: it is consumed inside the graph")
        for node in reversed(self.nodes):
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new
                    return new
        raise ValueError(f"no node produces {old!r}")

    def graph(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)


def count_nodes(graph: onnx.GraphProto) -> int:
    """All nodes, including those of subgraphs (a Scan's body)."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += count_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                total += sum(count_nodes(g) for g in attr.graphs)
    return total


FLOAT = TensorProto.FLOAT
