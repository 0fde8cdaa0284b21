"""Classify of a variable-length model takes sequences longer than its trained T (up to max_stream_steps):
the step graph runs them (psn_runtime.unrolled), and the answer is what a stream of the same steps answers
after its last step: bit for bit for a batch of one (the same graph, the same kernels, the same float64
sums), within float32 rounding for larger batches (the kernels run more rows at once)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from psn_runtime.errors import BadInput
from tests.fixtures import C, T, exported_models, make_runtime, sequences

LONGEST = 5 * T
VARIABLE = ("sliding_psn", "lif")


@pytest.fixture(scope="module")
def rt():
    return make_runtime(exported_models(), max_stream_steps=LONGEST)


def streamed(rt, kind: str, x: np.ndarray) -> np.ndarray:
    """Each sequence of x [B, T', F] through a stream of its own, one step at a time: the last answer's
    running mean logits, [B, C]."""

    async def one(seq: np.ndarray) -> np.ndarray:
        sid = await rt.open_stream(kind)
        try:
            for step in seq:
                result = await rt.step(sid, step)
            return result.logits
        finally:
            rt.close_stream(sid)

    async def main() -> np.ndarray:
        return np.stack([await one(seq) for seq in x])

    return asyncio.run(main())


@pytest.mark.parametrize("kind", VARIABLE)
@pytest.mark.parametrize("steps", [T + 1, 3 * T + 2, LONGEST])
@pytest.mark.parametrize("batch", [1, 3])
def test_long_classify_equals_the_stream(rt, kind: str, steps: int, batch: int) -> None:
    x = sequences(batch, seed=steps + batch, length=steps)  # [B, T', F]
    got = rt.classify(kind, x)
    want = streamed(rt, kind, x)
    assert got.logits.shape == (batch, C) and got.logits.dtype == np.float32
    if batch == 1:
        np.testing.assert_array_equal(got.logits, want)
    else:
        np.testing.assert_allclose(got.logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.label_index, got.logits.argmax(1))


@pytest.mark.parametrize("kind", VARIABLE)
def test_long_classify_async_runs_in_a_worker_thread(rt, kind: str) -> None:
    x = sequences(2, seed=7, length=2 * T)

    async def main():
        return await rt.classify_async(kind, x)

    np.testing.assert_array_equal(asyncio.run(main()).logits, rt.classify(kind, x).logits)


def test_up_to_the_stream_limit_only(rt) -> None:
    with pytest.raises(BadInput, match=f"1 <= T <= {LONGEST} steps, got {LONGEST + 1}"):
        rt.classify("sliding_psn", sequences(1, length=LONGEST + 1))
    for kind in ("psn", "masked_psn"):  # not variable-length: exactly T
        with pytest.raises(BadInput, match=f"exactly T={T} steps"):
            rt.classify(kind, sequences(1, length=T + 1))
