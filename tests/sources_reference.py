"""Test helpers for imported networks: a numpy reference of NIR graphs (docs/export.md's forward-Euler
equations, float32, written from the docs, not from the exporter's code), and the per-step logits of a
model directory's full.onnx and of a loop over its step.onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from exporters.checks import initial_states, session
from psn_runtime.manifest import INPUT_NAME, LOGITS_NAME, STEP_LOGITS_NAME, Manifest

F32 = np.float32


def onnx_step_logits(directory: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step logits [N, T, C] of full.onnx and of a loop over step.onnx for x [N, T, *shape]."""
    manifest = Manifest.load(directory)
    full = session(directory / "full.onnx").run([STEP_LOGITS_NAME], {INPUT_NAME: x})[0]
    step = session(directory / "step.onnx")
    feeds, outs = initial_states(manifest.states, x.shape[0]), []
    names = [LOGITS_NAME] + [s.output for s in manifest.states]
    for t in range(x.shape[1]):
        feeds[INPUT_NAME] = np.ascontiguousarray(x[:, t])
        logits, *states = step.run(names, feeds)
        outs.append(logits)
        feeds.update({s.input: v for s, v in zip(manifest.states, states, strict=True)})
    return full, np.stack(outs, 1)


def _pair(v) -> tuple[int, int]:
    flat = np.atleast_1d(np.asarray(v)).ravel().astype(int)
    return (int(flat[0]), int(flat[0])) if flat.size == 1 else (int(flat[0]), int(flat[1]))


def _windows(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], pad: tuple[int, ...]):
    """x [N, C, *S] zero-padded, its windows [N, C, *out, *kernel] at the stride."""
    x = np.pad(x, [(0, 0), (0, 0), *[(p, p) for p in pad]])
    w = sliding_window_view(x, kernel, axis=tuple(range(2, x.ndim)))
    index = (slice(None), slice(None), *[slice(None, None, s) for s in stride])
    return w[index]


def _conv(x: np.ndarray, node, dims: int) -> np.ndarray:
    weight, bias, groups = np.asarray(node.weight, F32), np.asarray(node.bias, F32), int(node.groups)
    kernel = weight.shape[2:]
    stride = _pair(node.stride)[:dims]
    pad = node.padding
    if isinstance(pad, str):
        pad = tuple((k - 1) // 2 for k in kernel) if pad == "same" else (0,) * dims
    else:
        pad = _pair(pad)[:dims]
    win = _windows(x, kernel, stride, pad)  # [N, C_in, *out, *k]
    cin, cout = x.shape[1] // groups, weight.shape[0] // groups
    outs = []
    for g in range(groups):
        wg = win[:, g * cin : (g + 1) * cin]
        kg = weight[g * cout : (g + 1) * cout]
        spec = "nc...ij,ocij->no..." if dims == 2 else "nc...i,oci->no..."
        outs.append(np.einsum(spec, wg, kg))
    y = np.concatenate(outs, 1)
    return (y + bias.reshape(-1, *([1] * dims))).astype(F32)


def _layer(node, x: np.ndarray) -> np.ndarray:
    op = type(node).__name__
    if op == "Affine":
        return (x @ np.asarray(node.weight, F32).T + np.asarray(node.bias, F32)).astype(F32)
    if op == "Linear":
        return (x @ np.asarray(node.weight, F32).T).astype(F32)
    if op == "Scale":
        return (x * np.asarray(node.scale, F32)).astype(F32)
    if op in ("Conv1d", "Conv2d"):
        return _conv(x, node, 1 if op == "Conv1d" else 2)
    if op == "Flatten":
        start, end = int(node.start_dim) + 1, int(node.end_dim)
        end = x.ndim + end if end < 0 else end + 1
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])
    win = _windows(x, _pair(node.kernel_size), _pair(node.stride), _pair(node.padding))
    total = win.sum(axis=(-2, -1), dtype=F32)
    return total if op == "SumPool2d" else (total / F32(np.prod(_pair(node.kernel_size)))).astype(F32)


def _neuron(node, x: np.ndarray, state: dict, dt: float) -> np.ndarray:
    """One forward-Euler step of docs/export.md; state holds "i" and "v" (all 0 at the start)."""
    op = type(node).__name__
    p = {
        k: np.asarray(v, F32)
        for k, v in vars(node).items()
        if k not in ("input_type", "output_type", "metadata")
    }
    current = x
    if op in ("CubaLIF", "CubaLI"):
        i = state.get("i", np.zeros_like(x))
        k_syn = F32(1.0) * (dt / p["tau_syn"].astype(np.float64)).astype(F32)
        i = i + k_syn * (-i + p["w_in"] * x)
        state["i"] = current = i
    v = state.get("v", np.zeros_like(x))
    if op in ("LIF", "LI", "CubaLIF", "CubaLI"):
        tau = p["tau_mem"] if op.startswith("Cuba") else p["tau"]
        k = (dt / tau.astype(np.float64)).astype(F32)
        v = v + k * ((p["v_leak"] - v) + p["r"] * current)
    else:  # IF, I
        v = v + p["r"] * current
    if op in ("LIF", "IF", "CubaLIF"):
        s = v > p["v_threshold"]
        state["v"] = np.where(s, p["v_reset"], v).astype(F32)
        return s.astype(F32)
    state["v"] = v.astype(F32)
    return state["v"]


def reference(graph, dt: float, x: np.ndarray) -> np.ndarray:
    """The Output node's value [N, T, C] for x [N, T, *shape]: every node once per step, in topological
    order, a node's input the sum of its predecessors' outputs."""
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    order: list[str] = []
    while len(order) < len(preds):
        order += [n for n in preds if n not in order and all(p in order for p in preds[n])]
    states: dict[str, dict] = {n: {} for n in graph.nodes}
    outs = []
    for t in range(x.shape[1]):
        values: dict[str, np.ndarray] = {}
        for name in order:
            node = graph.nodes[name]
            op = type(node).__name__
            if op == "Input":
                values[name] = x[:, t]
                continue
            h = (
                sum(values[p] for p in preds[name][1:]) + values[preds[name][0]]
                if preds[name][1:]
                else values[preds[name][0]]
            )
            if op == "Output":
                values[name] = h
            elif op in ("LIF", "IF", "LI", "I", "CubaLIF", "CubaLI"):
                values[name] = _neuron(node, h, states[name], dt)
            else:
                values[name] = _layer(node, h)
            if name in [o for o, n in graph.nodes.items() if type(n).__name__ == "Output"]:
                outs.append(values[name])
    return np.stack(outs, 1)
