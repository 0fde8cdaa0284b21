"""The opset of the exported graphs, and node counting (a Scan's body included)."""

from __future__ import annotations

import onnx

OPSET = 21  # supported by onnxruntime >= 1.20


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
