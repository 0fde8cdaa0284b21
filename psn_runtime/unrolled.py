"""Classification of sequences longer than the full graph holds, by the step graph.

A variable-length model's full graph takes any 1 <= T' <= T (a sliding PSN's band is built for T steps), while
its step graph runs as long as a stream may. ``classify_logits`` runs a sequence of T' > T steps through the
step graph the way a stream would, the whole batch in one call per step: every state starts at its
manifest ``init`` (no code per neuron kind), each step feeds the states the last one returned, and the
answer is the mean of the per-step logits, summed in float64 in step order as a stream sums them. A batch of
one thus answers what a stream of the same steps answers after its last step, bit for bit; larger batches
run the graph's kernels for more rows, equal within float32 rounding.

The runtime calls it for a ``ClassifyInput`` with ``unrolled`` set, in a worker thread (T' ORT calls).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from psn_runtime.manifest import INPUT_NAME, LOGITS_NAME, Manifest


class Session(Protocol):  # what is used of an onnxruntime.InferenceSession
    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def classify_logits(step: Session, manifest: Manifest, x: np.ndarray) -> np.ndarray:
    """x [B, T', *shape] float32 -> the mean over the T' steps of the step graph's logits, [B, C] float32."""
    batch, steps = x.shape[:2]
    names = [s.input for s in manifest.states]
    outputs = [LOGITS_NAME, *(s.output for s in manifest.states)]
    states = [np.full((batch, *s.shape), s.init, dtype=s.dtype) for s in manifest.states]  # each [B, *state]
    by_step = np.ascontiguousarray(x.swapaxes(0, 1))  # [T', B, *shape]: one contiguous block per step
    sums = np.zeros((batch, manifest.num_classes), np.float64)  # [B, C]
    for t in range(steps):
        feed = dict(zip(names, states, strict=True))
        feed[INPUT_NAME] = by_step[t]  # [B, *shape]
        logits, *states = step.run(outputs, feed)  # [B, C], new states
        sums += logits
    return (sums / steps).astype(np.float32)  # [B, C]
