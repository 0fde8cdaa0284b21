"""Small ORT work runs inline on the event loop (inline_max_rows); larger work, or inline_max_rows=0, in the
worker thread; both give the same answers. StepInput: the one validated step type (built only by
psn_runtime.validate.step_input) that Runtime.step takes without checking it again."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pydantic import ValidationError

from psn_runtime import RuntimeConfig
from psn_runtime.errors import BadInput
from psn_runtime.validate import StepInput, step_input
from tests.fixtures import (
    F,
    T,
    batcher_running,
    exported_models,
    make_runtime,
    ort_workers,
    run_full,
    running_means,
    sequences,
)


async def _steps(rt, kind: str, xs: np.ndarray) -> np.ndarray:
    """Step len(xs) streams of kind together over their T steps -> the mean logits [B, T', C] of the steps
    that answered (T' = T, or 1 for a full-only model)."""
    ids = [await rt.open_stream(kind) for _ in range(len(xs))]
    out = []
    for t in range(T):
        results = await asyncio.gather(*(rt.step(sid, x[t]) for sid, x in zip(ids, xs, strict=True)))
        if results[0].ready:
            out.append(np.stack([r.logits for r in results]))
    return np.stack(out, axis=1)  # [B, T, C]


@pytest.mark.parametrize("kind", ["lif", "sliding_psn", "psn"])
@pytest.mark.parametrize("inline_max_rows, streams", [(8, 3), (2, 3), (0, 3)])
def test_inline_and_worker_give_the_same_steps(kind: str, inline_max_rows: int, streams: int) -> None:
    xs = sequences(streams, seed=41)
    logits, step_logits = run_full(exported_models(), kind, xs)

    before = ort_workers(kind)

    async def main():
        rt = make_runtime(exported_models(), inline_max_rows=inline_max_rows)
        got = await _steps(rt, kind, xs)
        started = bool(ort_workers(kind) - before)
        await rt.close()
        return got, started

    got, started = asyncio.run(main())
    if kind == "psn":  # full-only: one answer, after T steps
        np.testing.assert_allclose(got[:, -1], logits, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(got, running_means(step_logits), rtol=1e-5, atol=1e-6)
    assert started is (inline_max_rows < streams)  # the worker thread starts only for work it gets


@pytest.mark.parametrize("batch", [1, 4, 5])
def test_classify_inline_and_worker_agree(batch: int) -> None:
    x = sequences(batch, seed=42)

    async def main(rows: int):
        rt = make_runtime(exported_models(), inline_max_rows=rows)
        out = await rt.classify_async("lif", x)
        await rt.close()
        return out

    inline, worker = asyncio.run(main(8)), asyncio.run(main(0))
    np.testing.assert_array_equal(inline.logits, worker.logits)
    assert inline.labels == worker.labels and len(inline.labels) == batch


def test_inline_max_rows_is_validated(tmp_path) -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        RuntimeConfig(models_dir=tmp_path, inline_max_rows=-1)
    assert RuntimeConfig(models_dir=tmp_path).inline_max_rows == 8


def test_step_takes_validated_inputs_and_refuses_bad_ones_touching_no_state() -> None:
    xs = sequences(1, seed=43)
    _, step_logits = run_full(exported_models(), "lif", xs)
    with pytest.raises(TypeError, match=r"built by psn_runtime\.validate\.step_input"):
        StepInput(np.zeros(F, np.float32), object())

    async def main():
        rt = make_runtime(exported_models())
        sid = await rt.open_stream("lif")
        shape = rt.stream_shape(sid)
        for bad in (np.zeros(F + 1, np.float32), np.zeros((1, F), np.float32), [[0.0] * F]):
            with pytest.raises(BadInput, match="expected one timestep"):
                await rt.step(sid, bad)
        other = step_input(np.zeros(F + 1, np.float32), shape=(F + 1,))  # valid, for another shape
        with pytest.raises(BadInput, match="expected one timestep"):
            await rt.step(sid, other)
        got = [(await rt.step(sid, step_input(x, shape=shape))).logits for x in xs[0, :-1]]
        got.append((await rt.step(sid, xs[0, -1].astype(np.float64))).logits)  # converted
        await rt.close()
        return np.stack(got)

    np.testing.assert_allclose(asyncio.run(main()), running_means(step_logits)[0], rtol=1e-5, atol=1e-6)


def test_a_models_only_stream_steps_without_the_batcher_and_gets_the_same_answers() -> None:
    xs = sequences(2, seed=44)

    async def main():
        rt = make_runtime(exported_models())
        alone = await rt.open_stream("lif")
        got_alone = [(await rt.step(alone, x)).logits for x in xs[0]]
        batcher_used_alone = batcher_running("lif")
        other = await rt.open_stream("lif")  # two streams: steps go through the batcher again
        rt.reset_stream(alone)
        pairs = [
            await asyncio.gather(rt.step(alone, a), rt.step(other, b))
            for a, b in zip(xs[0], xs[1], strict=True)
        ]
        batcher_used_two = batcher_running("lif")
        await rt.close()
        return (
            np.stack(got_alone),
            np.stack([p[0].logits for p in pairs]),
            batcher_used_alone,
            batcher_used_two,
        )

    alone, together, used_alone, used_two = asyncio.run(main())
    assert not used_alone and used_two
    np.testing.assert_array_equal(alone, together)  # bit-equal: the same batch-of-one arithmetic
