"""PL ratios, envelopes, L* strategies and the NTK Rayleigh identity against autograd oracles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_lplr.functional import (
    ExponentialFit,
    LowerEnvelope,
    NTKPLBounds,
    eigenvalues,
    empirical_ntk,
    envelope_min,
    envelope_quantile,
    estimate_loss_star,
    fit_exponential_offset,
    ntk_gradient_norm_sq,
    ntk_pl_bounds,
    pl_ratio,
    spectrum_stats,
    suboptimality_gap,
)

# ---------------------------------------------------------------------------------------------
# NTK oracle: gᵀ (J Jᵀ) g = ‖∇_θ L‖² for any loss (chain rule ∇_θ L = Jᵀ g).
# ---------------------------------------------------------------------------------------------

M, IN, HIDDEN, OUT = 6, 5, 32, 10


@pytest.fixture(scope="module")
def mlp_and_probe() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT)).double()
    x = torch.randn(M, IN, dtype=torch.float64)
    kernel = empirical_ntk(model, x)  # full (m·O, m·O); P = 522 > m·O = 60, so full rank
    assert kernel.shape == (M * OUT, M * OUT)
    return model, x, kernel


def _squared_loss(out: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(-1.0, 1.0, M * OUT, dtype=torch.float64).reshape(M, OUT)
    return ((out - target) ** 2).sum() / (2 * M)


def _cross_entropy(out: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(M) % OUT
    return F.cross_entropy(out, labels)


def _autograd_oracle(model: nn.Module, x: torch.Tensor, loss_fn) -> tuple[float, torch.Tensor, float]:
    """(loss, g = dloss/doutputs of shape (m, O), ‖∇_θ loss‖² over trainable params) by autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(x)
    loss = loss_fn(out)
    g, *grads = torch.autograd.grad(loss, [out, *params])
    grad_norm_sq = float(sum((gr**2).sum() for gr in grads))
    return float(loss.detach()), g.detach(), grad_norm_sq


@pytest.mark.parametrize("loss_fn", [_squared_loss, _cross_entropy], ids=["squared", "cross_entropy"])
def test_ntk_quadratic_form_equals_autograd_gradient_norm(mlp_and_probe, loss_fn) -> None:
    model, x, kernel = mlp_and_probe
    _, g, grad_norm_sq = _autograd_oracle(model, x, loss_fn)
    # Both sides are float64 sums of ~500 products of O(1) terms: round-off ~1e-14
    # relative, so 1e-10 leaves ample room while any ordering bug (e.g. output-major
    # instead of sample-major rows) changes the value at O(1).
    assert ntk_gradient_norm_sq(kernel, g) == pytest.approx(grad_norm_sq, rel=1e-10)
    assert ntk_gradient_norm_sq(kernel, g.reshape(-1)) == pytest.approx(grad_norm_sq, rel=1e-10)
    # The sample-major order matters: an output-major g gives a different number.
    wrong = g.T.contiguous().reshape(-1)
    assert ntk_gradient_norm_sq(kernel, wrong) != pytest.approx(grad_norm_sq, rel=1e-3)


def test_squared_loss_pl_ratio_lies_in_normalised_ntk_spectrum(mlp_and_probe) -> None:
    model, x, kernel = mlp_and_probe
    loss, g, grad_norm_sq = _autograd_oracle(model, x, _squared_loss)
    ratio = pl_ratio(grad_norm_sq, suboptimality_gap(loss, estimate_loss_star([loss], "zero")))
    stats = spectrum_stats(kernel, normalize=M)
    assert stats.lambda_min > 0  # the bound is not vacuous
    # Rayleigh: ratio = rᵀ(JJᵀ/m)r / ‖r‖² ∈ [λ_min, λ_max]; exact inequality, no tolerance needed
    # beyond round-off (the ratio is well inside: checked by the strict margins below).
    assert stats.lambda_min < ratio < stats.lambda_max
    bounds = ntk_pl_bounds(kernel, g, loss)
    assert isinstance(bounds, NTKPLBounds)
    assert bounds.lower <= ratio <= bounds.upper
    assert bounds.grad_norm_sq_lower <= grad_norm_sq <= bounds.grad_norm_sq_upper
    # For L = 1/(2m)Σ‖r‖² the bounds reduce to λ_min/max(JJᵀ/m) exactly (algebra, 1e-10).
    assert bounds.lower == pytest.approx(stats.lambda_min, rel=1e-10)
    assert bounds.upper == pytest.approx(stats.lambda_max, rel=1e-10)


def test_ntk_pl_bounds_cross_entropy_bounds_hold(mlp_and_probe) -> None:
    model, x, kernel = mlp_and_probe
    loss, g, grad_norm_sq = _autograd_oracle(model, x, _cross_entropy)
    bounds = ntk_pl_bounds(kernel, g, loss)
    assert 0 < bounds.lower <= pl_ratio(grad_norm_sq, loss) <= bounds.upper


def test_ntk_pl_bounds_closed_form_and_nonpositive_gap() -> None:
    k = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    g = torch.tensor([1.0, 2.0], dtype=torch.float64)  # ‖g‖² = 5
    assert ntk_pl_bounds(k, g, 0.5) == pytest.approx((5.0, 20.0, 5.0, 20.0))
    for gap in (0.0, -1.0, math.nan):
        b = ntk_pl_bounds(k, g, gap)
        assert math.isnan(b.lower) and math.isnan(b.upper)
        assert (b.grad_norm_sq_lower, b.grad_norm_sq_upper) == (5.0, 20.0)
    k_nan = k.clone()
    k_nan[0, 1] = math.nan
    assert all(math.isnan(v) for v in ntk_pl_bounds(k_nan, g, 0.5))


def test_ntk_pl_bounds_reuses_given_eigenvalues(mlp_and_probe) -> None:
    _, _, kernel = mlp_and_probe
    g = torch.linspace(-1, 1, kernel.shape[0], dtype=torch.float64)
    eigs = eigenvalues(kernel)
    assert ntk_pl_bounds(kernel, g, 0.3, kernel_eigenvalues=eigs) == ntk_pl_bounds(kernel, g, 0.3)
    with pytest.raises(ValueError, match="kernel_eigenvalues has 2 entries"):
        ntk_pl_bounds(kernel, g, 0.3, kernel_eigenvalues=eigs[:2])


def test_ntk_gradient_size_mismatch_names_both() -> None:
    with pytest.raises(ValueError, match=r"output_grad has 3 entries but kernel_full has 4 rows"):
        ntk_gradient_norm_sq(torch.eye(4), torch.ones(3))


# ---------------------------------------------------------------------------------------------
# Gap and ratio
# ---------------------------------------------------------------------------------------------


def test_suboptimality_gap_and_pl_ratio_values() -> None:
    assert suboptimality_gap(torch.tensor(1.5, dtype=torch.float64), 0.25) == 1.25
    assert type(suboptimality_gap(np.float32(1.0), 0)) is float
    assert pl_ratio(3.0, 0.75) == 2.0
    assert pl_ratio(torch.tensor(3.0), torch.tensor(0.75)) == 2.0


@pytest.mark.parametrize(
    ("grad_norm_sq", "gap"),
    [(1.0, 0.0), (1.0, -0.5), (math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (-1.0, 1.0), (1.0, 1e-320)],
    ids=["gap0", "gap<0", "nan-grad", "nan-gap", "inf-grad", "neg-grad", "overflow"],
)
def test_pl_ratio_is_nan_instead_of_raising(grad_norm_sq: float, gap: float) -> None:
    assert math.isnan(pl_ratio(grad_norm_sq, gap))


# ---------------------------------------------------------------------------------------------
# L* strategies
# ---------------------------------------------------------------------------------------------


def test_estimate_loss_star_zero_and_number() -> None:
    assert estimate_loss_star([3.0, 1.0]) == 0.0
    assert estimate_loss_star([3.0, 1.0], 0.125) == 0.125
    assert estimate_loss_star([], -2) == -2.0
    assert estimate_loss_star([], np.float32(0.5)) == 0.5


@pytest.mark.parametrize(
    "losses",
    [[3.0, 2.0, 1.0, 1.5], [0.0, 0.5, 1e-300], [-1.0, -3.0, -2.0], [5e-9, 1e-8, 2e-8], [7.0, 7.0, 7.0]],
    ids=["positive", "with-zero", "negative", "tiny", "constant"],
)
@pytest.mark.parametrize("margin", [1e-3, 0.0, 1e-30], ids=["default", "zero", "below-eps"])
def test_running_min_leaves_every_gap_positive(losses: list[float], margin: float) -> None:
    star = estimate_loss_star([*losses, math.nan], "running_min", margin=margin)
    assert all(loss - star > 0 for loss in losses)
    assert star < min(losses)


def test_running_min_documented_margin() -> None:
    assert estimate_loss_star([4.0, 2.0, 3.0], "running_min", margin=0.25) == 1.5
    assert estimate_loss_star([-4.0, -2.0], "running_min", margin=0.25) == -5.0
    assert math.isnan(estimate_loss_star([math.nan, math.inf], "running_min"))


@pytest.mark.parametrize("t0", [0, 5000], ids=["t0=0", "t0=5000"])
def test_fit_recovers_known_offset(t0: int) -> None:
    steps = np.arange(t0, t0 + 150, dtype=np.float64)
    loss_star, amplitude, rate = 0.25, 1.5, -0.04
    losses = loss_star + amplitude * np.exp(rate * (steps - t0))
    # Exact data: the profile objective is 0 at the true L* and grows quadratically away
    # from it; golden-section search resolves L* to ~1e-9 relative (round-off in log(L − L*)),
    # so 1e-6 is a safe bound that still rejects e.g. running_min (0.25 - 3.8e-3 off).
    assert estimate_loss_star(losses, "fit", steps=steps) == pytest.approx(loss_star, rel=1e-6)
    fit = fit_exponential_offset(steps, losses)
    assert isinstance(fit, ExponentialFit)
    assert fit.rate == pytest.approx(rate, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    if t0 == 0:
        assert fit.amplitude == pytest.approx(amplitude, rel=1e-6)


def test_fit_with_multiplicative_noise_is_close() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(200.0)
    losses = 0.25 + 1.5 * np.exp(-0.04 * steps) * np.exp(0.01 * rng.standard_normal(200))
    # 1 % noise on the decaying part; the tail (where L* is identified) has L − L* ≈ 5e-4,
    # so L* is known to about 1 % of that: 1e-4 absolute is a conservative bound.
    assert estimate_loss_star(losses, "fit") == pytest.approx(0.25, abs=1e-4)


def test_fit_degenerate_inputs() -> None:
    assert all(math.isnan(v) for v in fit_exponential_offset(None, [1.0, 0.5]))
    flat = fit_exponential_offset(None, [2.0, 2.0, 2.0, 2.0])
    assert flat.loss_star == 2.0 and flat.amplitude == 0.0
    with pytest.raises(ValueError, match="same length"):
        fit_exponential_offset([0, 1, 2], [1.0, 0.5])


@pytest.mark.parametrize("strategy", ["min", "Zero", "", [0.0], None, True], ids=repr)
def test_unknown_strategy_raises_listing_allowed(strategy) -> None:
    with pytest.raises(ValueError, match=r"strategy=.*'zero', 'running_min', 'fit'"):
        estimate_loss_star([1.0], strategy)


def test_bad_margin_and_nonfinite_number_raise() -> None:
    with pytest.raises(ValueError, match=r"margin=-0\.1"):
        estimate_loss_star([1.0], "running_min", margin=-0.1)
    with pytest.raises(ValueError, match=r"strategy=nan"):
        estimate_loss_star([1.0], math.nan)


# ---------------------------------------------------------------------------------------------
# Envelopes
# ---------------------------------------------------------------------------------------------


def test_envelopes_over_finite_values_only() -> None:
    rng = np.random.default_rng(0)
    values = rng.exponential(size=101)
    with_bad = np.concatenate([values, [math.nan, math.inf, -math.inf]])
    assert envelope_min(with_bad) == float(values.min())
    assert envelope_quantile(with_bad, q=0.05) == pytest.approx(float(np.quantile(values, 0.05)), rel=1e-15)
    assert envelope_quantile(torch.from_numpy(with_bad), q=0.5) == pytest.approx(float(np.median(values)))
    assert math.isnan(envelope_min([math.nan]))
    assert math.isnan(envelope_quantile([], q=0.5))
    assert envelope_quantile([1.0, 2.0, 3.0], q=np.float32(0.5)) == 2.0
    numpy_config = LowerEnvelope(window=np.int64(2), quantile=np.float64(0.5))
    assert numpy_config.window == 2 and type(numpy_config.state_dict()["window"]) is int


@pytest.mark.parametrize("q", [0, 1, -0.1, 1.5, math.nan, True], ids=repr)
def test_quantile_outside_open_unit_interval_raises(q: float) -> None:
    with pytest.raises(ValueError, match=rf"q={q!r}.*between 0 and 1"):
        envelope_quantile([1.0, 2.0], q=q)
    with pytest.raises(ValueError, match=rf"quantile={q!r}.*between 0 and 1"):
        LowerEnvelope(quantile=q)


@pytest.mark.parametrize("window", [None, 1, 7], ids=lambda w: f"window={w}")
def test_lower_envelope_matches_functional_on_window(window: int | None) -> None:
    rng = np.random.default_rng(1)
    stream = rng.exponential(size=40)
    stream[[3, 10, 11]] = [math.nan, math.inf, -math.inf]
    env = LowerEnvelope(window=window, quantile=0.2)
    assert math.isnan(env.minimum) and math.isnan(env.quantile_value) and env.count == 0
    finite: list[float] = []
    for v in stream:
        env.update(v)
        if math.isfinite(v):
            finite.append(float(v))
        held = finite if window is None else finite[-window:]
        assert env.count == len(held)
        assert env.minimum == envelope_min(held)
        assert env.quantile_value == envelope_quantile(held, q=0.2)
    assert env.num_skipped == 3


def _continue_in_step(original: LowerEnvelope, resumed: LowerEnvelope, values: list[float]) -> None:
    """Feed both envelopes the same values: they agree after every one, and on their final state."""
    for v in values:
        original.update(v)
        resumed.update(v)
        assert (resumed.minimum, resumed.quantile_value, resumed.count) == (
            original.minimum,
            original.quantile_value,
            original.count,
        )
    assert resumed.state_dict() == original.state_dict()


def test_lower_envelope_state_dict_resumes_exactly() -> None:
    rng = np.random.default_rng(2)
    stream = [*rng.exponential(size=30).tolist(), math.nan]
    original = LowerEnvelope(window=10, quantile=0.1)
    for v in stream[:17]:
        original.update(v)
    state = json.loads(json.dumps(original.state_dict()))  # plain python containers only
    resumed = LowerEnvelope(window=10, quantile=0.1)
    resumed.load_state_dict(state)
    _continue_in_step(original, resumed, stream[17:])
    # A smaller window keeps the newest values; missing keys give an empty envelope.
    small = LowerEnvelope(window=2)
    small.load_state_dict(state)
    assert small.count == 2 and small.minimum == min(state["values"][-2:])
    empty = LowerEnvelope()
    empty.load_state_dict({})
    assert empty.count == 0 and empty.num_skipped == 0


def _random_stream(seed: int, size: int) -> list[float]:
    """Exponential ratios with NaN/inf, many exact duplicates, signed zeros, huge and tiny values."""
    rng = np.random.default_rng(seed)
    stream = rng.exponential(size=size)
    picks = rng.random(size)
    stream[picks < 0.3] = rng.choice([0.5, 1.0, 2.0, 0.0, -0.0], size=int((picks < 0.3).sum()))
    stream[picks > 0.99] = rng.choice([1e300, 1e-300], size=int((picks > 0.99).sum()))
    stream[(picks > 0.9) & (picks <= 0.93)] = math.nan
    stream[(picks > 0.93) & (picks <= 0.95)] = rng.choice([math.inf, -math.inf])
    return stream.tolist()


_QUANTILES = (0.01, 0.05, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.75, 0.9, 0.99)


@pytest.mark.parametrize("window", [None, 1, 2, 7], ids=lambda w: f"window={w}")
def test_lower_envelope_is_exactly_min_and_np_quantile_after_every_update(window: int | None) -> None:
    stream = _random_stream(3, 400)
    envelopes = [LowerEnvelope(window=window, quantile=q) for q in _QUANTILES]
    finite: list[float] = []
    for step, v in enumerate(stream):
        for env in envelopes:
            env.update(v)
        if math.isfinite(v):
            finite.append(v)
        held = finite if window is None else finite[-window:]
        for env in envelopes:
            assert env.count == len(held)
            assert env.minimum == min(held), step
            # Bit-identical to numpy's default "linear" quantile, not merely close.
            assert env.quantile_value == float(np.quantile(np.array(held), env.quantile)), (
                step,
                env.quantile,
            )
        if step == 200:  # a reset in the middle starts an empty envelope again
            for env in envelopes:
                env.reset()
                assert math.isnan(env.minimum) and math.isnan(env.quantile_value) and env.count == 0
            finite.clear()
    assert envelopes[0].num_skipped == sum(not math.isfinite(v) for v in stream[201:])


@pytest.mark.parametrize("window", [None, 7], ids=lambda w: f"window={w}")
def test_lower_envelope_state_round_trip_then_continuing_is_identical(window: int | None) -> None:
    stream = _random_stream(4, 300)
    original = LowerEnvelope(window=window, quantile=0.3)
    for v in stream[:150]:
        original.update(v)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["values"] == [v for v in stream[:150] if math.isfinite(v)][-(window or 150) :]
    resumed = LowerEnvelope(window=window, quantile=0.3)
    resumed.update(123.0)  # loading replaces whatever was there
    resumed.load_state_dict(state)
    assert (resumed.minimum, resumed.quantile_value) == (original.minimum, original.quantile_value)
    _continue_in_step(original, resumed, stream[150:])


@pytest.mark.parametrize("window", [0, -3, 2.5, True], ids=repr)
def test_lower_envelope_bad_window_raises(window) -> None:
    with pytest.raises(ValueError, match=rf"window={window!r}.*positive int"):
        LowerEnvelope(window=window)
