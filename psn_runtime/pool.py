"""Per-model state pool: one array per state tensor, [capacity, *shape], indexed by slot.

A batch gathers ``array[idx]`` and scatters ``array[idx] = new`` with one slot index array: no Python loop
over streams touches a tensor. Running logit sums and step counts live beside the states. Capacity grows
by doubling; slot indices stay valid across growth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    """One per-slot array: the step graph's state (input/output names) or a full-only model's buffer."""

    input: str | None
    output: str | None
    shape: tuple[int, ...]
    dtype: np.dtype
    init: float


class SlotPool:
    def __init__(self, specs: list[ArraySpec], classes: int, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.specs = specs
        self.classes = classes
        self.capacity = capacity
        self.arrays = [np.full((capacity, *s.shape), s.init, dtype=s.dtype) for s in specs]  # [cap, *shape]
        self.sums = np.zeros((capacity, classes), np.float64)  # [cap, C] running sums of step logits
        self.counts = np.zeros(capacity, np.int64)  # [cap] steps summed
        self._free = list(range(capacity - 1, -1, -1))  # a stack: lowest slot first

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    def acquire(self) -> int:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.init_slot(slot)
        return slot

    def release(self, slot: int) -> None:
        if not 0 <= slot < self.capacity:
            raise ValueError(f"slot {slot} is outside the pool (capacity {self.capacity})")
        self._free.append(slot)

    def init_slot(self, slot: int) -> None:
        for spec, arr in zip(self.specs, self.arrays, strict=True):
            arr[slot] = spec.init
        self.sums[slot] = 0.0
        self.counts[slot] = 0

    def gather(self, idx: np.ndarray) -> list[np.ndarray]:
        """Copies of every array at the slots idx [B]: each [B, *shape], C-contiguous."""
        return [arr[idx] for arr in self.arrays]

    def scatter(self, idx: np.ndarray, values: list[np.ndarray]) -> None:
        for arr, v in zip(self.arrays, values, strict=True):
            arr[idx] = v

    def _grow(self) -> None:
        old = self.capacity
        new = old * 2
        grown = []
        for spec, arr in zip(self.specs, self.arrays, strict=True):
            a = np.full((new, *spec.shape), spec.init, dtype=spec.dtype)  # [2 cap, *shape]
            a[:old] = arr
            grown.append(a)
        sums = np.zeros((new, self.classes), np.float64)
        sums[:old] = self.sums
        counts = np.zeros(new, np.int64)
        counts[:old] = self.counts
        self.arrays, self.sums, self.counts = grown, sums, counts
        self.capacity = new
        self._free.extend(range(new - 1, old - 1, -1))
