"""The neuron math of psn/neurons.py against explicit sums, closed forms and conv1d (DESIGN.md, paper)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from psn.neurons import (
    LIF,
    PSN,
    MaskedPSN,
    ResetMode,
    SlidingPSN,
    StepOutOfRange,
    lambda_schedule,
    masked_psn_mask,
    sliding_toeplitz,
)
from psn.surrogate import heaviside

torch.set_num_threads(1)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _spikes_match(spikes: torch.Tensor, h: torch.Tensor) -> None:
    """spikes == Θ(h), ignoring membranes within float noise of the threshold."""
    clear = h.abs() > 1e-5
    assert torch.equal(spikes[clear], (h[clear] >= 0).to(spikes.dtype))


# --- PSN -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 3, 8])
def test_psn_equals_explicit_sum(T: int) -> None:
    torch.manual_seed(T)
    neuron = PSN(T)
    with torch.no_grad():
        neuron.bias.copy_(_rand(T, seed=1))
    x = _rand(T, 2, 3, seed=2)  # [T, N, D]
    W, B = neuron.weight.detach(), neuron.bias.detach()
    expected = torch.zeros(T, 2, 3)
    for t in range(T):
        expected[t] = B[t] + sum(W[t, j] * x[j] for j in range(T))
    h = neuron.membrane(x).detach()
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-5)
    _spikes_match(neuron(x).detach(), expected)


def test_psn_init_and_wrong_length() -> None:
    neuron = PSN(6)
    assert torch.equal(neuron.bias.detach(), torch.full((6,), -1.0))
    bound = 1.0 / math.sqrt(6)  # kaiming_uniform(a=√5) on a [6, 6] matrix
    assert float(neuron.weight.detach().abs().max()) <= bound + 1e-6
    with pytest.raises(ValueError, match="T=6"):
        neuron(torch.zeros(5, 1, 1))


# --- masked PSN ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("T", "k"), [(1, 1), (5, 1), (5, 2), (6, 3), (7, 7)])
def test_mask_entry_by_entry(T: int, k: int) -> None:
    m = masked_psn_mask(T, k)
    for i in range(T):
        for j in range(T):
            assert float(m[i, j]) == (1.0 if j <= i <= j + k - 1 else 0.0), (i, j)
    for lam in (0.0, 0.25, 0.7, 1.0):
        m_lam = masked_psn_mask(T, k, lam)
        for i in range(T):
            for j in range(T):
                inside = j <= i <= j + k - 1
                assert float(m_lam[i, j]) == pytest.approx(1.0 if inside else 1.0 - lam), (lam, i, j)


def test_mask_example_T4_k2() -> None:
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(masked_psn_mask(4, 2), expected)


def test_masked_psn_at_lambda_zero_equals_psn() -> None:
    torch.manual_seed(0)
    masked, plain = MaskedPSN(7, 3), PSN(7)
    plain.load_state_dict({"weight": masked.weight.detach(), "bias": _rand(7, seed=3)})
    with torch.no_grad():
        masked.bias.copy_(plain.bias)
    masked.set_lambda(0.0)
    x = _rand(7, 4, 5, seed=4)
    torch.testing.assert_close(masked.membrane(x), plain.membrane(x))
    assert torch.equal(masked(x), plain(x))


@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_masked_psn_equals_explicit_masked_sum(lam: float) -> None:
    T, k = 6, 3
    torch.manual_seed(1)
    neuron = MaskedPSN(T, k)
    neuron.set_lambda(lam)
    x = _rand(T, 2, 3, seed=5)
    W, B = neuron.weight.detach(), neuron.bias.detach()
    expected = torch.zeros(T, 2, 3)
    for t in range(T):
        for j in range(T):
            m = 1.0 if j <= t <= j + k - 1 else 1.0 - lam
            expected[t] += m * W[t, j] * x[j]
        expected[t] += B[t]
    torch.testing.assert_close(neuron.membrane(x).detach(), expected, rtol=1e-5, atol=1e-5)


def test_masked_psn_band() -> None:
    neuron = MaskedPSN(5, 3)
    W = neuron.weight.detach()
    band = neuron.band().detach()
    for t in range(5):
        for i in range(3):
            j = t - 3 + 1 + i
            assert float(band[t, i]) == (float(W[t, j]) if j >= 0 else 0.0)


def test_masked_psn_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        MaskedPSN(4, 5)
    with pytest.raises(ValueError, match="k must be in"):
        MaskedPSN(4, 0)


def test_lambda_schedule() -> None:
    epochs = 17
    values = [lambda_schedule(e, epochs) for e in range(epochs)]
    assert values[0] == 0.0
    assert values[1] == pytest.approx(0.5)  # 8 · 1 / 16
    assert values[2] == 1.0 and values[-1] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert lambda_schedule(0, 1) == 1.0


# --- sliding PSN ---------------------------------------------------------------------------------

SLIDING_CASES = [(1, 1), (1, 3), (4, 1), (4, 2), (5, 5), (8, 3), (9, 12), (28, 8), (40, 16)]


def _sliding(k: int, seed: int) -> SlidingPSN:
    neuron = SlidingPSN(k)
    with torch.no_grad():
        neuron.weight.copy_(_rand(k, seed=seed))
        neuron.bias.fill_(0.3)
    return neuron


@pytest.mark.parametrize(("T", "k"), SLIDING_CASES)
def test_sliding_toeplitz_equals_eq14_sum(T: int, k: int) -> None:
    neuron = _sliding(k, seed=T * 100 + k)
    x = _rand(T, 3, 2, seed=k)
    W, b = neuron.weight.detach(), float(neuron.bias.detach())
    expected = torch.full((T, 3, 2), b)
    for t in range(T):
        for i in range(k):
            j = t - k + 1 + i
            if j >= 0:
                expected[t] += W[i] * x[j]
    h = neuron.membrane(x).detach()
    torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-5)
    _spikes_match(neuron(x).detach(), expected)


@pytest.mark.parametrize(("T", "k"), SLIDING_CASES)
def test_sliding_toeplitz_equals_causal_conv1d(T: int, k: int) -> None:
    neuron = _sliding(k, seed=k)
    x = _rand(T, 3, 2, seed=T)  # [T, N, D]
    seq = x.permute(1, 2, 0).reshape(6, 1, T)  # [N*D, 1, T]
    conv = F.conv1d(F.pad(seq, (k - 1, 0)), neuron.weight.detach().view(1, 1, k)) + float(
        neuron.bias.detach()
    )
    expected = conv.reshape(3, 2, T).permute(2, 0, 1)  # [T, N, D]
    torch.testing.assert_close(neuron.membrane(x).detach(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("T", "k"), [(4, 2), (6, 3), (3, 5)])
def test_sliding_toeplitz_entries(T: int, k: int) -> None:
    w = torch.arange(1.0, k + 1)  # W_i = i + 1, all distinct and non-zero
    a = sliding_toeplitz(w, T)
    for i in range(T):
        for j in range(T):
            inside = i + 1 - k <= j <= i
            assert float(a[i, j]) == (float(w[k - 1 - i + j]) if inside else 0.0), (i, j)


def test_sliding_init() -> None:
    neuron = SlidingPSN(4)
    assert neuron.weight.detach().tolist() == [0.125, 0.25, 0.5, 1.0]  # W_i = 2^(i-k+1)
    assert float(neuron.bias.detach()) == -1.0


# --- LIF -----------------------------------------------------------------------------------------


def _lif_closed_form(x: torch.Tensor, tau: float) -> torch.Tensor:
    T = x.shape[0]
    h = torch.zeros_like(x)
    for t in range(T):
        for i in range(t + 1):
            h[t] += (1.0 - 1.0 / tau) ** (t - i) * x[i]
    return h / tau


@pytest.mark.parametrize("tau", [2.0, 3.5])
def test_lif_without_reset_equals_closed_form(tau: float) -> None:
    x = _rand(10, 2, 3, seed=7)
    expected = _lif_closed_form(x, tau)
    neuron = LIF(tau=tau, reset=ResetMode.NONE)
    v = neuron.initial_state(x[0])
    membranes = []
    for t in range(10):
        _, v = neuron.step(x[t], v)
        membranes.append(v)  # with no reset, V[t] = H[t]
    torch.testing.assert_close(torch.stack(membranes), expected, rtol=1e-5, atol=1e-6)
    _spikes_match(neuron(x), expected - neuron.v_threshold)


def test_lif_never_spiking_keeps_closed_form_membrane() -> None:
    x = _rand(8, 2, 2, seed=8)
    neuron = LIF(tau=2.0, v_threshold=1e6, reset=ResetMode.HARD)
    assert float(neuron(x).sum()) == 0.0
    v = neuron.initial_state(x[0])
    for t in range(8):
        _, v = neuron.step(x[t], v)
    torch.testing.assert_close(v, _lif_closed_form(x, 2.0)[-1], rtol=1e-5, atol=1e-6)


def test_lif_resets_by_hand() -> None:
    x = torch.full((4, 1), 1.5)  # τ = 2, V_th = 1
    # hard: H = .75 | 1.125 (spike, V=0) | .75 | 1.125 (spike)
    assert LIF(reset=ResetMode.HARD)(x).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    # soft: H = .75 | 1.125 (spike, V=.125) | .8125 | 1.15625 (spike)
    assert LIF(reset=ResetMode.SOFT)(x).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    soft = LIF(reset=ResetMode.SOFT)
    v = soft.initial_state(x[0])
    for t in range(3):
        _, v = soft.step(x[t], v)
    assert float(v) == pytest.approx(0.8125)
    # none: H = .75, 1.125, 1.3125, 1.40625: spikes from t = 1 on
    assert LIF(reset=ResetMode.NONE)(x).flatten().tolist() == [0.0, 1.0, 1.0, 1.0]


# --- step == forward, purity, limits ---------------------------------------------------------------


def _clone_state(state):
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, tuple):
        return (
            type(state)(*(_clone_state(s) for s in state))
            if hasattr(state, "_fields")
            else tuple(_clone_state(s) for s in state)
        )
    return state


def _assert_state_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_state_equal(x, y)
    else:
        assert a == b


def _neurons(T: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(3)
    masked = MaskedPSN(T, 3)
    masked.set_lambda(1.0)
    return {
        "psn": PSN(T),
        "masked_psn": masked,
        "sliding_psn": _sliding(4, seed=9),
        "lif_hard": LIF(reset=ResetMode.HARD),
        "lif_soft": LIF(reset=ResetMode.SOFT),
        "lif_none": LIF(reset=ResetMode.NONE),
    }


@pytest.mark.parametrize("name", ["psn", "masked_psn", "sliding_psn", "lif_hard", "lif_soft", "lif_none"])
def test_step_loop_equals_forward_and_is_pure(name: str) -> None:
    T = 7
    neuron = _neurons(T)[name]
    x = 2.0 * _rand(T, 3, 5, seed=11) + 0.5  # [T, N, D], enough drive for spikes
    with torch.no_grad():
        full = neuron(x)
        assert 0 < float(full.mean()) < 1  # the comparison is not trivial
        state = neuron.initial_state(x[0])
        outs = []
        for t in range(T):
            before = _clone_state(state)
            out, state_new = neuron.step(x[t], state)
            _assert_state_equal(state, before)  # the given state is not modified
            state = state_new
            outs.append(out)
    if name == "psn":
        assert all(o is None for o in outs[:-1])
        stepped = outs[-1]
    else:
        stepped = torch.stack(outs)
    assert torch.equal(stepped, full)


def test_masked_psn_step_limits() -> None:
    neuron = MaskedPSN(4, 2)
    x = torch.ones(1, 3)
    with pytest.raises(ValueError, match="λ = 1"):
        neuron.step(x, neuron.initial_state(x))  # λ = 0 at construction: not causal
    neuron.set_lambda(1.0)
    state = neuron.initial_state(x)
    for _ in range(4):
        _, state = neuron.step(x, state)
    assert state.t.tolist() == [4]
    with pytest.raises(StepOutOfRange):
        neuron.step(x, state)


def test_psn_step_past_T_raises() -> None:
    neuron = PSN(2)
    x = torch.ones(1, 3)
    state = neuron.initial_state(x)
    for _ in range(2):
        _, state = neuron.step(x, state)
    with pytest.raises(StepOutOfRange):
        neuron.step(x, state)


def test_masked_psn_steps_per_sample_index() -> None:
    """Samples at different steps batch together: each uses the weights of its own t."""
    T, k = 5, 3
    torch.manual_seed(5)
    neuron = MaskedPSN(T, k)
    neuron.set_lambda(1.0)
    with torch.no_grad():
        neuron.bias.copy_(_rand(T, seed=6))
    x = _rand(T, 2, 4, seed=12)
    full_h = neuron.membrane(x).detach()
    # sample 0 at step 3 (window x[1..3]), sample 1 at step 1 (window 0, x[0..1])
    buffer = torch.stack([torch.stack([x[1, 0], torch.zeros(4)]), torch.stack([x[2, 0], x[0, 1]])])
    state = neuron.initial_state(x[0])._replace(t=torch.tensor([3, 1]), buffer=buffer)
    s, new_state = neuron.step(torch.stack([x[3, 0], x[1, 1]]), state)
    _spikes_match(s, torch.stack([full_h[3, 0], full_h[1, 1]]))
    assert new_state.t.tolist() == [4, 2]


# --- surrogate gradient ----------------------------------------------------------------------------


def test_heaviside_forward_and_atan_gradient() -> None:
    x = torch.tensor([-2.0, -0.1, 0.0, 0.1, 3.0], requires_grad=True)
    alpha = 2.0
    s = heaviside(x, alpha)
    assert s.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    s.sum().backward()
    expected = alpha / (2.0 * (1.0 + (math.pi / 2.0 * alpha * x.detach()) ** 2))
    torch.testing.assert_close(x.grad, expected)
    assert float(x.grad[2]) == pytest.approx(1.0)  # α / 2 at the threshold


@pytest.mark.parametrize("name", ["psn", "masked_psn", "sliding_psn", "lif_hard", "lif_soft"])
def test_surrogate_gradients_finite_and_nonzero(name: str) -> None:
    neuron = _neurons(6)[name]
    if name == "masked_psn":
        neuron.set_lambda(0.5)
    x = _rand(6, 4, 3, seed=13).requires_grad_(True)
    out = neuron(x)
    (out * _rand(*out.shape, seed=14)).sum().backward()
    grads = [x.grad, *(p.grad for p in neuron.parameters())]
    for g in grads:
        assert g is not None
        assert torch.isfinite(g).all()
        assert float(g.abs().sum()) > 0


def test_every_neuron_kind_has_its_facts_in_one_place() -> None:
    from psn_runtime.manifest import KIND_FACTS, NeuronKind

    assert set(KIND_FACTS) == set(NeuronKind)  # a new kind must say what it implies
    import psn.neurons

    assert psn.neurons.NeuronKind is NeuronKind  # one definition, re-exported
