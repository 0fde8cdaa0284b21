"""psn_runtime streams: step-by-step answers equal the full graph, limits, reset, close, idle timeout."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from psn_runtime.errors import (
    BadInput,
    ModelNotReady,
    RuntimeClosed,
    StreamLimit,
    StreamOver,
    UnknownModel,
    UnknownStream,
)
from tests.fixtures import (
    STREAMING,
    WAIT_S,
    Recorder,
    T,
    exported_models,
    make_runtime,
    run_full,
    running_means,
    sequences,
)


def run(coro):
    return asyncio.run(coro)


async def _steps(rt, sid, xs):
    return [await rt.step(sid, x) for x in xs]


@pytest.mark.parametrize("kind", STREAMING)
def test_stream_equals_full_running_mean(kind):
    x = sequences(1, seed=11)
    _, step_logits = run_full(exported_models(), kind, x)
    means = running_means(step_logits)[0]  # [T, C]

    async def main():
        rt = make_runtime(exported_models())
        sid = await rt.open_stream(kind)
        results = await _steps(rt, sid, x[0])
        await rt.close()
        return results

    results = run(main())
    for t, r in enumerate(results):
        assert (r.t, r.ready) == (t, True)
        np.testing.assert_allclose(r.logits, means[t], rtol=1e-5, atol=1e-6)
        assert r.label == str(int(np.argmax(r.logits)))
        np.testing.assert_allclose(r.probabilities.sum(), 1.0, rtol=1e-6)
        assert r.done is (kind == "masked_psn" and t == T - 1)


def test_psn_stream_waits_for_t_steps_then_answers_full():
    x = sequences(1, seed=12)
    logits, _ = run_full(exported_models(), "psn", x)

    async def main():
        rt = make_runtime(exported_models())
        sid = await rt.open_stream("psn")
        results = await _steps(rt, sid, x[0])
        with pytest.raises(StreamOver, match="answers once, after its T=8 steps"):
            await rt.step(sid, x[0, 0])
        rt.reset_stream(sid)
        again = await _steps(rt, sid, x[0])
        await rt.close()
        return results, again

    results, again = run(main())
    for t, r in enumerate(results[:-1]):
        assert (r.t, r.ready, r.label, r.probabilities, r.logits, r.done) == (
            t,
            False,
            None,
            None,
            None,
            False,
        )
    last = results[-1]
    assert (last.t, last.ready, last.done) == (T - 1, True, True)
    np.testing.assert_allclose(last.logits, logits[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(again[-1].logits, last.logits)


def test_masked_psn_stream_over_after_t_steps():
    x = sequences(1, seed=13)

    async def main():
        rt = make_runtime(exported_models())
        sid = await rt.open_stream("masked_psn")
        results = await _steps(rt, sid, x[0])
        assert results[-1].done and not results[-2].done
        with pytest.raises(StreamOver, match="all 8 steps it may") as e:
            await rt.step(sid, x[0, 0])
        assert "reset" in e.value.message
        rt.reset_stream(sid)
        assert (await rt.step(sid, x[0, 0])).t == 0
        await rt.close()

    run(main())


def test_unbounded_stream_stops_at_max_stream_steps():
    async def main():
        rt = make_runtime(exported_models(), max_stream_steps=3)
        sid = await rt.open_stream("lif")
        results = await _steps(rt, sid, sequences(1)[0, :3])
        assert [r.done for r in results] == [False, False, True]
        with pytest.raises(StreamOver, match="max_stream_steps"):
            await rt.step(sid, sequences(1)[0, 0])
        # a masked PSN keeps its own, smaller limit
        assert rt.stats()["models"]["masked_psn"]["max_steps_per_stream"] == 3
        await rt.close()

    run(main())


def test_sliding_streams_past_t():
    x = sequences(1, seed=14, length=3 * T)

    async def main():
        rt = make_runtime(exported_models())
        sid = await rt.open_stream("sliding_psn")
        results = await _steps(rt, sid, x[0])
        await rt.close()
        return results

    results = run(main())
    assert [r.t for r in results] == list(range(3 * T)) and not any(r.done for r in results)
    assert all(np.isfinite(r.logits).all() for r in results)


def test_reset_restarts_the_sequence():
    x = sequences(2, seed=15)
    _, step_logits = run_full(exported_models(), "lif", x[1:])
    means = running_means(step_logits)[0]

    async def main():
        rt = make_runtime(exported_models())
        sid = await rt.open_stream("lif")
        await _steps(rt, sid, x[0, :5])
        rt.reset_stream(sid)
        results = await _steps(rt, sid, x[1])
        await rt.close()
        return results

    results = run(main())
    assert [r.t for r in results] == list(range(T))
    np.testing.assert_allclose(np.stack([r.logits for r in results]), means, rtol=1e-5, atol=1e-6)


def test_bad_step_input_leaves_state_untouched():
    x = sequences(1, seed=16)
    _, step_logits = run_full(exported_models(), "masked_psn", x)
    means = running_means(step_logits)[0]

    async def main():
        rt = make_runtime(exported_models())
        sid = await rt.open_stream("masked_psn")
        out = []
        for t in range(T):
            bad = x[0, t].copy()
            bad[1] = np.nan
            for wrong, match in ((bad, "NaN or Inf"), (x[0, t, :3], r"shape \[5\]"), (x[0], r"shape \[5\]")):
                with pytest.raises(BadInput, match=match) as e:
                    await rt.step(sid, wrong)
                assert e.value.param == ("x[1]" if wrong is bad else "x")  # NaN: the element
            out.append(await rt.step(sid, x[0, t]))
        await rt.close()
        return out

    results = run(main())
    assert [r.t for r in results] == list(range(T))
    np.testing.assert_allclose(np.stack([r.logits for r in results]), means, rtol=1e-5, atol=1e-6)


def test_unknown_and_failed_models_and_streams(tmp_path):
    async def main():
        rt = make_runtime(exported_models())
        with pytest.raises(UnknownModel):
            await rt.open_stream("nope")
        with pytest.raises(UnknownStream):
            await rt.step("nope", np.zeros(5, np.float32))
        with pytest.raises(UnknownStream):
            rt.reset_stream("nope")
        with pytest.raises(UnknownModel):
            rt.stream_count("nope")
        await rt.close()
        with pytest.raises(RuntimeClosed):
            await rt.open_stream("lif")

    run(main())
    broken = tmp_path / "models"
    (broken / "x").mkdir(parents=True)
    (broken / "x" / "manifest.json").write_text("{}")

    async def failed():
        rt = make_runtime(broken)
        with pytest.raises(ModelNotReady, match="bad manifest"):
            await rt.open_stream("x")
        await rt.close()

    run(failed())


def test_stream_limit_and_idempotent_close():
    rec = Recorder()

    async def main():
        rt = make_runtime(exported_models(), observer=rec, max_streams=2)
        a = await rt.open_stream("lif")
        b = await rt.open_stream("psn")
        with pytest.raises(StreamLimit, match="2 streams are open, the limit is 2"):
            await rt.open_stream("lif")
        assert (rt.stream_count(), rt.stream_count("lif"), rt.stream_count("psn")) == (2, 1, 1)
        rt.close_stream(a)
        rt.close_stream(a)  # idempotent
        rt.close_stream("never-opened")
        assert rt.stream_count() == 1
        with pytest.raises(UnknownStream):
            await rt.step(a, np.zeros(5, np.float32))
        c = await rt.open_stream("lif")
        assert c not in (a, b)
        await rt.close()
        assert rt.stream_count() == 0

    run(main())
    assert rec.opened == ["lif", "psn", "lif"]
    assert rec.closed[0] == ("lif", "client")
    assert sorted(rec.closed[1:]) == [("lif", "shutdown"), ("psn", "shutdown")]
    assert rec.versions == {"1"}  # every hook named the version


def test_idle_streams_are_reaped(monkeypatch):
    """A stream idle longer than idle_timeout_s is closed ("idle"); one stepped since is not. The clock
    is moved forward by hand (time.monotonic, which the runtime and the event loop both read), so the
    outcome does not depend on how fast the machine is."""
    rec = Recorder()
    clock = {"offset": 0.0}
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + clock["offset"])
    timeout = 60.0

    async def main():
        reaped = asyncio.Event()
        rec.on_close = lambda model, reason: reaped.set() if reason == "idle" else None
        rt = make_runtime(exported_models(), observer=rec, idle_timeout_s=timeout)
        await rt.start()  # starts the reaper (load() already ran: start loads nothing twice)
        idle = await rt.open_stream("lif")
        busy = await rt.open_stream("lif")
        clock["offset"] += timeout + 1  # a minute passes for both streams...
        await rt.step(busy, np.zeros(5, np.float32))  # ...then the busy one steps
        await asyncio.wait_for(reaped.wait(), WAIT_S)  # the reaper's next round (its timer is due now)
        assert rt.stream_count() == 1
        with pytest.raises(UnknownStream):
            await rt.step(idle, np.zeros(5, np.float32))
        assert (await rt.step(busy, np.zeros(5, np.float32))).t == 1
        await rt.close()

    run(main())
    assert rec.closed[0] == ("lif", "idle") and rec.versions == {"1"}


def test_models_serve_as_soon_as_they_load(monkeypatch):
    import threading

    import psn_runtime.control as rt_module
    from psn_runtime import ModelStatus, Runtime, RuntimeConfig

    gate, reached = threading.Event(), threading.Event()
    real_load = rt_module.load_model

    def slow_for_sliding(directory, manifest, config):
        if manifest.name == "sliding_psn":
            reached.set()  # models load one by one, sorted: lif, masked_psn and psn are READY now
            gate.wait(WAIT_S)
        return real_load(directory, manifest, config)

    monkeypatch.setattr(rt_module, "load_model", slow_for_sliding)

    async def main():
        rt = Runtime(RuntimeConfig(models_dir=exported_models(), providers=["CPUExecutionProvider"]))
        starting = asyncio.ensure_future(rt.start())
        try:
            assert await asyncio.get_running_loop().run_in_executor(None, reached.wait, WAIT_S)
            assert not rt.loaded
            assert rt.model("psn").status is ModelStatus.READY
            assert rt.model("sliding_psn").status is ModelStatus.LOADING
            with pytest.raises(ModelNotReady, match="still loading"):
                await rt.open_stream("sliding_psn")
            sid = await rt.open_stream("lif")
            assert (await rt.step(sid, np.zeros(5, np.float32))).t == 0
        finally:
            gate.set()
        await starting
        assert rt.loaded and rt.model("sliding_psn").status is ModelStatus.READY
        await rt.close()

    run(main())
