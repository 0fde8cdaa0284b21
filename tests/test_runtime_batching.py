"""psn_runtime cross-stream step batching: batched == alone, isolation of bad input, close/reset/cancel
while a step is queued or in flight, Overloaded, shutdown."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from psn_runtime.errors import BadInput, InferenceError, RuntimeClosed, UnknownStream
from tests.fixtures import (
    OrtRuns,
    Recorder,
    T,
    exported_models,
    make_runtime,
    ort_workers,
    run_full,
    running_means,
    sequences,
    yield_to_others,
)

N = 64
OFFSETS = [i % 4 for i in range(N)]  # streams start at different waves: one batch mixes several t


async def _waves(rt, kind: str, xs: np.ndarray) -> list[list]:
    """Open N streams; at each wave, step every stream that is inside its sequence, all at once."""
    ids = [await rt.open_stream(kind) for _ in range(N)]
    results: list[list] = [[] for _ in range(N)]
    for wave in range(T + max(OFFSETS)):
        active = [i for i in range(N) if 0 <= wave - OFFSETS[i] < T]
        outs = await asyncio.gather(*(rt.step(ids[i], xs[i, wave - OFFSETS[i]]) for i in active))
        for i, r in zip(active, outs, strict=True):
            results[i].append(r)
    return results


def _run(kind: str, xs: np.ndarray, **config):
    rec = Recorder()

    async def main():
        rt = make_runtime(exported_models(), observer=rec, **config)
        results = await _waves(rt, kind, xs)
        await rt.close()
        return results

    results = asyncio.run(main())
    assert rec.seconds and min(rec.seconds) >= 0 and rec.versions == {"1"}
    return results, [size for _, size in rec.batches]


@pytest.mark.parametrize("kind", ["masked_psn", "sliding_psn", "lif", "psn"])
def test_batched_streams_equal_streams_run_alone(kind):
    xs = sequences(N, seed=21)
    batched, sizes = _run(kind, xs, batching=True, max_batch=N)
    alone, alone_sizes = _run(kind, xs, batching=False)
    # steps really were batched: a wave holds 48..64 streams; a PSN runs only the last step of each stream,
    # and a quarter of the streams finish in each of the last 4 waves
    assert max(sizes) >= (N // 4 if kind == "psn" else N * 3 // 4)
    assert set(alone_sizes) == {1}
    for i in range(N):
        for b, a in zip(batched[i], alone[i], strict=True):
            assert (b.t, b.ready, b.label, b.done) == (a.t, a.ready, a.label, a.done)
            if b.ready and kind != "psn":
                np.testing.assert_array_equal(b.logits, a.logits)  # bit-equal
                np.testing.assert_array_equal(b.probabilities, a.probabilities)
            elif b.ready:
                # full.onnx's PSN layer is one MatMul [T, T] x [T, B*D]: ORT's GEMM blocks it differently
                # for B = 16 and B = 1, so the last bit of a sum may differ (the spikes and labels do not)
                np.testing.assert_allclose(b.logits, a.logits, rtol=1e-6, atol=1e-7)
    logits, step_logits = run_full(exported_models(), kind, xs)
    if kind == "psn":
        got = np.stack([r[-1].logits for r in batched])  # [N, C]
        np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-6)
    else:
        got = np.stack([[r.logits for r in rs] for rs in batched])  # [N, T, C]
        np.testing.assert_allclose(got, running_means(step_logits), rtol=1e-5, atol=1e-5)


def test_small_max_batch_splits_batches():
    xs = sequences(N, seed=22)
    results, sizes = _run("lif", xs, max_batch=16)
    assert max(sizes) == 16 and sum(sizes) == sum(len(r) for r in results)


def test_bad_input_in_a_batch_disturbs_no_one():
    xs = sequences(8, seed=23)
    _, step_logits = run_full(exported_models(), "masked_psn", xs)
    means = running_means(step_logits)  # [8, T, C]

    async def main():
        rt = make_runtime(exported_models())
        ids = [await rt.open_stream("masked_psn") for _ in range(8)]
        got = np.zeros((8, T, 3))
        for t in range(T):
            bad = xs[t % 8, t].copy()
            bad[0] = np.inf
            inputs = [bad if i == t % 8 else xs[i, t] for i in range(8)]
            outs = await asyncio.gather(
                *(rt.step(s, x) for s, x in zip(ids, inputs, strict=True)), return_exceptions=True
            )
            for i, out in enumerate(outs):
                if i == t % 8:
                    assert isinstance(out, BadInput)
                    out = await rt.step(ids[i], xs[i, t])  # the same stream goes on with good input
                assert out.t == t
                got[i, t] = out.logits
        await rt.close()
        return got

    np.testing.assert_allclose(asyncio.run(main()), means, rtol=1e-5, atol=1e-5)


def test_overloaded_when_the_queue_is_full():
    xs = sequences(8, seed=24)

    async def main():
        rt = make_runtime(exported_models(), max_queue=2)
        ids = [await rt.open_stream("lif") for _ in range(8)]
        outs = await asyncio.gather(
            *(rt.step(s, xs[i, 0]) for i, s in enumerate(ids)), return_exceptions=True
        )
        assert [type(o).__name__ for o in outs] == ["StepResult"] * 2 + ["Overloaded"] * 6
        assert "2 steps already queued" in str(outs[2])
        for i, s in enumerate(ids):  # refused steps left the state untouched: t is still 0 there
            assert (await rt.step(s, xs[i, 0])).t == (1 if i < 2 else 0)
        await rt.close()

    asyncio.run(main())


def _reference(kind: str, x: np.ndarray) -> np.ndarray:
    _, step_logits = run_full(exported_models(), kind, x[None])
    return running_means(step_logits)[0]  # [T, C]


def _in_use(rt, kind: str) -> int:
    return rt.stats()["models"][kind]["pool_in_use"]


def test_close_and_reset_while_in_flight_corrupt_no_slot(monkeypatch):
    xs = sequences(4, seed=25)
    refs = [_reference("lif", xs[i]) for i in range(4)]
    runs = OrtRuns(monkeypatch)

    async def main():
        rt = make_runtime(exported_models(), inline_max_rows=0)  # every step runs in the worker thread
        a, b = await rt.open_stream("lif"), await rt.open_stream("lif")
        await rt.step(a, xs[0, 0])
        await rt.step(b, xs[1, 0])
        runs.hold()
        in_flight = asyncio.ensure_future(rt.step(a, xs[0, 1]))
        await runs.started()  # a's step is running in the worker thread
        queued = asyncio.ensure_future(rt.step(b, xs[1, 1]))
        await yield_to_others()  # b's step is queued behind it
        rt.close_stream(a)
        c = await rt.open_stream("lif")
        assert _in_use(rt, "lif") == 3  # a's slot stays taken while its step runs: c got another one
        rt.reset_stream(b)  # b's step is queued: it is answered first, then b starts over
        runs.release()
        r_a = await in_flight
        assert r_a.t == 1  # the step that was in flight is answered
        np.testing.assert_allclose(r_a.logits, refs[0][1], rtol=1e-5, atol=1e-6)
        r_b = await queued
        assert r_b.t == 1
        assert _in_use(rt, "lif") == 2  # a's slot is free now
        d = await rt.open_stream("lif")  # (a's slot, reused) starts clean
        got_b = [(await rt.step(b, x)).logits for x in xs[1]]
        got_c = [(await rt.step(c, x)).logits for x in xs[2]]
        got_d = [(await rt.step(d, x)).logits for x in xs[3]]
        await rt.close()
        return got_b, got_c, got_d

    got_b, got_c, got_d = asyncio.run(main())
    for got, ref in zip((got_b, got_c, got_d), refs[1:], strict=True):
        np.testing.assert_allclose(np.stack(got), ref, rtol=1e-5, atol=1e-6)


def test_queued_step_of_closed_stream_and_cancelled_step(monkeypatch):
    xs = sequences(3, seed=26)
    ref = _reference("sliding_psn", xs[2])
    runs = OrtRuns(monkeypatch)

    async def main():
        rt = make_runtime(exported_models(), inline_max_rows=0)  # every step runs in the worker thread
        a, b, c = [await rt.open_stream("sliding_psn") for _ in range(3)]
        runs.hold()
        first = asyncio.ensure_future(rt.step(a, xs[0, 0]))
        await runs.started()  # a runs; b and c queue behind it
        queued = asyncio.ensure_future(rt.step(b, xs[1, 0]))
        cancelled = asyncio.ensure_future(rt.step(c, xs[2, 0]))
        await yield_to_others()
        rt.close_stream(b)
        cancelled.cancel()
        runs.release()
        await first
        with pytest.raises(UnknownStream, match="was closed"):
            await queued
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        got = [(await rt.step(c, x)) for x in xs[2]]  # c's cancelled step left no trace
        assert [r.t for r in got] == list(range(T))
        stats = rt.stats()["models"]["sliding_psn"]
        assert stats["pool_in_use"] == 2 and stats["streams"] == 2
        await rt.close()
        return np.stack([r.logits for r in got])

    np.testing.assert_allclose(asyncio.run(main()), ref, rtol=1e-5, atol=1e-6)


def test_runtime_close_answers_pending_steps(monkeypatch):
    runs = OrtRuns(monkeypatch)

    async def main():
        rt = make_runtime(exported_models(), inline_max_rows=0)  # every step runs in the worker thread
        a, b = await rt.open_stream("lif"), await rt.open_stream("lif")
        runs.hold()
        first = asyncio.ensure_future(rt.step(a, np.zeros(5, np.float32)))
        await runs.started()  # in flight in the worker thread
        second = asyncio.ensure_future(rt.step(b, np.zeros(5, np.float32)))
        await yield_to_others()  # queued
        try:
            await rt.close()
            for fut in (first, second):
                with pytest.raises(RuntimeClosed):
                    await fut
            assert rt.stream_count() == 0
        finally:
            runs.release()  # the worker thread finishes its run and ends

    asyncio.run(main())


def test_max_wait_gathers_late_steps():
    """Steps that come one by one (each after the batcher took the ones before) still share one batch."""
    rec = Recorder()

    async def main():
        rt = make_runtime(exported_models(), observer=rec, max_wait_ms=1000, max_batch=3)
        ids = [await rt.open_stream("lif") for _ in range(3)]
        futures = []
        for sid in ids:
            futures.append(asyncio.ensure_future(rt.step(sid, np.zeros(5, np.float32))))
            await yield_to_others()  # the batcher takes it and waits for more
        results = [await fut for fut in futures]
        np.testing.assert_array_equal(results[0].logits, results[2].logits)
        await rt.close()

    asyncio.run(main())
    assert rec.batches == [("lif", 3)]


def test_pool_grows_by_doubling_and_keeps_slots():
    from psn_runtime.pool import ArraySpec, SlotPool

    pool = SlotPool(
        [
            ArraySpec("s", "s_out", (2,), np.dtype(np.float32), 0.5),
            ArraySpec("t", "t_out", (), np.dtype(np.int64), 0),
        ],
        3,
        capacity=2,
    )
    slots = [pool.acquire() for _ in range(5)]
    assert slots == [0, 1, 2, 3, 4] and pool.capacity == 8 and pool.in_use == 5
    idx = np.array(slots)
    pool.scatter(idx, [np.arange(10, dtype=np.float32).reshape(5, 2), np.arange(5)])
    pool.sums[idx] = 1.0
    pool.acquire(), pool.acquire(), pool.acquire()
    pool.acquire()  # grows to 16
    assert pool.capacity == 16
    s, t = pool.gather(idx)
    np.testing.assert_array_equal(s, np.arange(10).reshape(5, 2))
    np.testing.assert_array_equal(t, np.arange(5))
    pool.release(3)
    assert pool.acquire() == 3  # reused, and starts from init
    s, t = pool.gather(np.array([3]))
    np.testing.assert_array_equal(s, [[0.5, 0.5]])
    assert t.tolist() == [0] and pool.sums[3].tolist() == [0, 0, 0] and pool.counts[3] == 0


def test_ort_failure_answers_inference_error_and_keeps_serving(monkeypatch):
    x = sequences(1, seed=27)
    ref = _reference("lif", x[0])
    runs = OrtRuns(monkeypatch)
    before = ort_workers("lif")

    async def main():
        rt = make_runtime(exported_models(), inline_max_rows=0)  # every step runs in the worker thread
        sid = await rt.open_stream("lif")
        runs.fail_next(RuntimeError("simulated ORT failure"))
        with pytest.raises(InferenceError, match="simulated ORT failure"):
            await rt.step(sid, x[0, 0])
        got = [await rt.step(sid, v) for v in x[0]]  # the failed step wrote nothing
        (worker,) = ort_workers("lif") - before
        await rt.close()
        worker.join(timeout=60)
        assert not worker.is_alive()  # close ends the worker thread
        return got

    got = asyncio.run(main())
    assert [r.t for r in got] == list(range(T))
    np.testing.assert_allclose(np.stack([r.logits for r in got]), ref, rtol=1e-5, atol=1e-6)
