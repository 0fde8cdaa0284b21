"""psn_runtime classify: equal to full.onnx run directly; every bad input refused with BadInput."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from psn_runtime.errors import BadInput, RuntimeClosed, UnknownModel
from tests.fixtures import KINDS, C, F, T, exported_models, make_runtime, run_full, sequences

LONGEST = 4 * T  # max_stream_steps: the longest sequence a variable-length model classifies


@pytest.fixture(scope="module")
def rt():
    return make_runtime(exported_models(), max_classify_batch=8, max_stream_steps=LONGEST)


@pytest.mark.parametrize("kind", list(KINDS))
def test_classify_equals_full_onnx(rt, kind):
    x = sequences(5, seed=1)
    result = rt.classify(kind, x)
    logits, _ = run_full(exported_models(), kind, x)
    np.testing.assert_array_equal(result.logits, logits)
    assert result.logits.shape == (5, C) and result.logits.dtype == np.float32
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(result.probabilities, e / e.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(result.label_index, logits.argmax(1))
    assert result.labels == [str(i) for i in logits.argmax(1)]
    single = rt.classify(kind, x[2])  # [T, F]: one sequence
    np.testing.assert_allclose(single.logits, logits[2:3], rtol=1e-6, atol=1e-6)
    assert single.labels == [result.labels[2]]


def test_other_input_types_are_converted(rt):
    x = sequences(2, seed=2)
    ref = rt.classify("lif", x).logits
    np.testing.assert_allclose(rt.classify("lif", x.astype(np.float64)).logits, ref, rtol=1e-6)
    np.testing.assert_allclose(rt.classify("lif", x.tolist()).logits, ref, rtol=1e-6)
    np.testing.assert_allclose(rt.classify("lif", np.asfortranarray(x)).logits, ref, rtol=1e-6)
    assert rt.classify("lif", np.zeros((1, T, F), np.int64)).logits.shape == (1, C)


def test_variable_length(rt):
    x = sequences(3, seed=3)[:, :3]  # T' = 3 < T
    for kind in ("sliding_psn", "lif"):
        logits, _ = run_full(exported_models(), kind, x)
        np.testing.assert_array_equal(rt.classify(kind, x).logits, logits)
    for kind in ("psn", "masked_psn"):
        with pytest.raises(BadInput, match=f"exactly T={T} steps, got 3") as e:
            rt.classify(kind, x)
        assert e.value.param == "inputs" and e.value.value == 3
    assert rt.classify("lif", sequences(1, length=T + 1)).logits.shape == (
        1,
        C,
    )  # tests/test_runtime_unrolled.py
    with pytest.raises(BadInput, match=f"1 <= T <= {LONGEST} steps, got {LONGEST + 1}"):
        rt.classify("lif", sequences(1, length=LONGEST + 1))
    with pytest.raises(BadInput, match=f"exactly T={T} steps, got {T + 1}"):
        rt.classify("masked_psn", sequences(1, length=T + 1))


def _bad(rt, x, match, value=None, kind="lif"):
    with pytest.raises(BadInput, match=match) as e:
        rt.classify(kind, x)
    assert e.value.param.startswith("inputs")  # NaN/Inf: the element's path, inputs[1][4][2]
    assert str(e.value).startswith("inputs")
    if value is not None:
        assert e.value.value == value
    return e.value


def test_bad_inputs(rt):
    x = sequences(2)
    _bad(rt, x[0, 0], "got rank 1", 1)
    _bad(rt, x[None], "got rank 4", 4)
    _bad(
        rt, np.zeros((2, T, F + 1), np.float32), rf"expected per-step shape \[{F}\], got \[{F + 1}\]", [F + 1]
    )
    _bad(rt, np.zeros((0, T, F), np.float32), "empty input", [0, T, F])
    _bad(rt, np.zeros((9, T, F), np.float32), "batch of 9 sequences exceeds the limit of 8", 9)
    nan = x.copy()
    nan[1, 4, 2] = np.nan
    err = _bad(rt, nan, r"NaN or Inf \(first at index \[1, 4, 2\]")
    assert np.isnan(err.value) and err.param == "inputs[1][4][2]"
    inf = x.copy()
    inf[0, 0, 0] = -np.inf
    _bad(rt, inf, "NaN or Inf", -np.inf)
    _bad(rt, np.full((1, T, F), 1e39), "NaN or Inf")  # finite float64, overflows float32
    _bad(rt, [[["a"] * F] * T], "must hold numbers")
    _bad(rt, [[[1.0] * F] * T, [[1.0] * (F - 1)] * T], "not a rectangular array")
    _bad(rt, np.zeros((1, T, F), np.complex64), "must hold numbers, got dtype complex64", "complex64")
    _bad(rt, np.zeros((1, T, F), bool), "must hold numbers, got dtype bool")
    _bad(rt, None, "must hold numbers")
    # a large finite batch (its sum would overflow float32) is accepted
    big = np.full((1, T, F), 3e38, np.float32)
    assert rt.classify("lif", big).logits.shape == (1, C)


def test_unknown_model_and_async(rt):
    with pytest.raises(UnknownModel):
        rt.classify("nope", sequences(1))
    x = sequences(4, seed=5)

    async def main():
        return await rt.classify_async("masked_psn", x)

    np.testing.assert_array_equal(asyncio.run(main()).logits, rt.classify("masked_psn", x).logits)


def test_closed_runtime_refuses():
    rt = make_runtime(exported_models())
    asyncio.run(rt.close())
    with pytest.raises(RuntimeClosed):
        rt.classify("psn", sequences(1))


def test_classify_async_sheds_load_beyond_max_classify_pending():
    from psn_runtime.errors import Overloaded

    x = sequences(1)

    async def main():
        rt = make_runtime(exported_models(), max_classify_pending=1)
        outs = await asyncio.gather(*(rt.classify_async("lif", x) for _ in range(3)), return_exceptions=True)
        assert [type(o).__name__ for o in outs] == ["ClassifyResult", "Overloaded", "Overloaded"]
        assert isinstance(outs[1], Overloaded) and "pending" in outs[1].message
        assert rt.stats()["classify_pending"] == 0
        assert (await rt.classify_async("lif", x)).labels == outs[0].labels  # the slot is free again
        await rt.close()

    asyncio.run(main())
