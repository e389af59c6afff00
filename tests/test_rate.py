"""Linear / sublinear rate fits, regime classification and predicted contraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_lplr.functional import (
    LinearRateFit,
    LinearRateFits,
    Regime,
    SublinearFit,
    classify_regime,
    classify_regime_rows,
    fit_linear_rate,
    fit_linear_rate_rows,
    fit_sublinear_rate,
    predicted_contraction,
    stability_indicator,
)


def _gd_overparameterised_least_squares(steps: int) -> tuple[np.ndarray, float, float, float]:
    """GD on L(w) = 1/(2n)‖Xw − y‖², n = 20 < d = 50, w₀ = 0, η = 1/λ_max(XXᵀ/n).

    Returns the losses L_0..L_{steps-1}, η, λ_min and λ_max of H = XXᵀ/n. The residual
    obeys r_{t+1} = (I − ηH) r_t, so L_t = Σ_i c_i (1 − ηλ_i)^{2t}: the slowest mode λ_min
    dominates late and log L_t has slope 2·log(1 − ηλ_min).
    """
    rng = np.random.default_rng(0)
    n, d = 20, 50
    x = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    lam = np.linalg.eigvalsh(x @ x.T / n)
    eta = 1.0 / lam[-1]
    w = np.zeros(d)
    losses = np.empty(steps)
    for t in range(steps):
        r = x @ w - y
        losses[t] = r @ r / (2 * n)
        w -= eta * x.T @ r / n
    return losses, float(eta), float(lam[0]), float(lam[-1])


def test_fitted_slope_converges_to_slowest_mode_of_gd_least_squares() -> None:
    losses, eta, lam_min, lam_max = _gd_overparameterised_least_squares(350)
    expected = 2 * math.log(1 - eta * lam_min)
    # The window must stay far above the float64 round-off floor of the residual
    # (‖r‖ ~ eps·‖y‖, L ~ 1e-32); L_349 ~ 1e-21 leaves ten orders of margin.
    assert losses[-1] > 1e-25
    early = fit_linear_rate(losses[:50])
    late = fit_linear_rate(losses[250:350], steps=np.arange(250, 350))
    # Late: the next mode (λ_2 ≈ 0.53 vs λ_min ≈ 0.36, λ_max ≈ 6.6) is suppressed by
    # ((1 − ηλ_2)/(1 − ηλ_min))^{2t} ≈ 1e-6 at t = 250, so the slope is within 1e-6 of the
    # target; 1e-3 (the acceptance tolerance) would fail for the early window, whose slope
    # is off by ~0.09 because faster modes still contribute.
    assert late.slope == pytest.approx(expected, abs=1e-3)
    assert abs(early.slope - expected) > 1e-3
    assert late.r2 > 0.999999 and late.num_points == 100
    # PL with μ = λ_min(H) and β = λ_max(H): the measured contraction obeys the GD bound.
    assert late.contraction <= predicted_contraction(eta, lam_min, lam_max)
    assert stability_indicator(eta, lam_max) == pytest.approx(1.0)
    assert classify_regime(losses[250:350], steps=np.arange(250, 350)) is Regime.LINEAR


def test_exact_geometric_sequence() -> None:
    steps = np.arange(10, 60)
    gaps = 3.0 * 0.9**steps
    fit = fit_linear_rate(gaps, steps)
    assert isinstance(fit, LinearRateFit)
    # Exact data: only round-off of log and the centred sums (1e-12 relative is generous).
    assert fit.slope == pytest.approx(math.log(0.9), rel=1e-12)
    assert fit.intercept == pytest.approx(math.log(3.0), rel=1e-10)
    assert fit.contraction == pytest.approx(0.9, rel=1e-12)
    assert fit.half_life == pytest.approx(math.log(2) / -math.log(0.9), rel=1e-12)
    assert fit.r2 == 1.0 or fit.r2 == pytest.approx(1.0, abs=1e-14)
    assert fit.num_points == 50
    assert all(type(v) is float for v in fit[:5]) and type(fit.num_points) is int
    assert classify_regime(gaps, steps) is Regime.LINEAR
    assert classify_regime(torch.tensor(0.5 ** np.arange(30.0))) is Regime.LINEAR


def test_noisy_geometric_rate_within_noise_derived_tolerance() -> None:
    # log Δ_t = log Δ_0 + b·t + σ·ε_t, ε ~ N(0, 1). OLS slope has standard deviation
    # σ_b = σ·sqrt(12 / (N (N² − 1))) for N equispaced steps.
    n, sigma, b = 200, 0.1, -0.05
    sigma_b = sigma * math.sqrt(12 / (n * (n**2 - 1)))
    steps = np.arange(n, dtype=np.float64)

    def noisy(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return 2.0 * np.exp(b * steps + sigma * rng.standard_normal(n))

    fit = fit_linear_rate(noisy(0), steps)
    # 5 σ_b: a correct estimator fails with probability 6e-7; a biased one (e.g. a fit
    # of log E[Δ]) or a wrong time axis is off by far more.
    assert abs(fit.slope - b) <= 5 * sigma_b
    assert fit.contraction == pytest.approx(math.exp(b), abs=5 * sigma_b)
    # Calibration over 200 seeds: the spread of the estimate is σ_b (the standard error of a
    # standard deviation from 200 samples is 5 %, so ±15 % is a 3-SE band).
    slopes = np.array([fit_linear_rate(noisy(seed), steps).slope for seed in range(1, 201)])
    assert abs(slopes.mean() - b) <= 5 * sigma_b / math.sqrt(200)
    assert slopes.std(ddof=1) == pytest.approx(sigma_b, rel=0.15)
    assert classify_regime(noisy(0), steps) is Regime.LINEAR


def test_unusable_points_are_dropped() -> None:
    gaps = [1.0, 0.5, 0.0, -1.0, math.nan, math.inf, 2.0**-6]
    fit = fit_linear_rate(gaps)
    # Kept: (0, 1), (1, 1/2), (6, 1/16): exactly 2^{-t}.
    assert fit.num_points == 3
    assert fit.contraction == pytest.approx(0.5, rel=1e-12)
    fit = fit_linear_rate([1.0, 0.5, 0.25], steps=[0.0, math.nan, 2.0])
    assert fit.num_points == 2 and fit.contraction == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize(
    ("gaps", "steps", "usable"),
    [([], None, 0), ([1.0], None, 1), ([1.0, -1.0, 0.0], None, 1), ([1.0, 0.5], [3, 3], 2)],
    ids=["empty", "one", "one-usable", "same-step"],
)
def test_too_few_points_give_nan_fit(gaps, steps, usable: int) -> None:
    fit = fit_linear_rate(gaps, steps)
    assert fit.num_points == usable
    assert all(math.isnan(v) for v in fit[:5])
    sub = fit_sublinear_rate(gaps, steps)
    assert all(math.isnan(v) for v in sub[:3])


def test_constant_log_gap_is_a_perfect_zero_rate_fit() -> None:
    fit = fit_linear_rate([0.1] * 8)
    assert fit.slope == 0.0 and fit.contraction == 1.0 and fit.half_life == math.inf
    assert fit.r2 == 1.0
    assert classify_regime([0.1] * 8) is Regime.UNDETERMINED


def test_sublinear_exact_power_law_and_step_rule() -> None:
    steps = np.arange(1, 101)
    fit = fit_sublinear_rate(4.0 * steps**-2.0, steps)
    assert isinstance(fit, SublinearFit)
    assert fit.exponent == pytest.approx(-2.0, rel=1e-12)
    assert fit.intercept == pytest.approx(math.log(4.0), rel=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-14) and fit.num_points == 100
    # t < 1 is dropped (the default steps start at 0, so the first point goes).
    default = fit_sublinear_rate(1.0 / np.maximum(np.arange(20.0), 1.0))
    assert default.num_points == 19 and default.exponent == pytest.approx(-1.0, rel=1e-12)
    # A late window uses t as given: an exact 1/t stays exactly 1/t.
    late = np.arange(1000, 1050)
    assert fit_sublinear_rate(1.0 / late, late).exponent == pytest.approx(-1.0, rel=1e-10)


def test_one_over_t_is_sublinear() -> None:
    steps = np.arange(1, 201)
    assert classify_regime(1.0 / steps, steps) is Regime.SUBLINEAR
    assert classify_regime(5.0 / np.sqrt(steps), steps) is Regime.SUBLINEAR


@pytest.mark.parametrize(
    ("gaps", "steps"),
    [
        (np.arange(1.0, 30.0), np.arange(1, 30)),  # increasing
        ([1.0, 0.5, 0.25, 0.125], None),  # fewer than min_points
        (np.exp(np.random.default_rng(0).standard_normal(40)), None),  # noise, no trend
    ],
    ids=["increasing", "too-few", "pure-noise"],
)
def test_undetermined_cases(gaps, steps) -> None:
    assert classify_regime(gaps, steps) is Regime.UNDETERMINED


def test_regime_is_a_string_enum() -> None:
    assert Regime("linear") is Regime.LINEAR and Regime.SUBLINEAR == "sublinear"
    assert {r.value for r in Regime} == {"linear", "sublinear", "undetermined"}


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"min_r2": 1.5}, r"min_r2=1\.5"),
        ({"min_points": 2}, r"min_points=2"),
        ({"max_sse_ratio": 0.0}, r"max_sse_ratio=0\.0"),
    ],
    ids=["min_r2", "min_points", "max_sse_ratio"],
)
def test_classify_regime_bad_arguments(kwargs, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        classify_regime([1.0] * 10, **kwargs)


def test_length_mismatch_and_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"steps of length 2 and gaps of length 3"):
        fit_linear_rate([1.0, 0.5, 0.25], steps=[0, 1])
    with pytest.raises(ValueError, match=r"gaps must be 1-D; got shape \(2, 2\)"):
        fit_sublinear_rate(np.ones((2, 2)))


def test_predicted_contraction_and_stability() -> None:
    assert predicted_contraction(0.1, 2.0) == pytest.approx(0.6, rel=1e-15)
    # 1 − 2·0.1·2·(1 − 0.1·4/2) = 1 − 0.4·0.8 = 0.68
    assert predicted_contraction(0.1, 2.0, beta=4.0) == pytest.approx(0.68, rel=1e-15)
    assert predicted_contraction(torch.tensor(0.1), 2.0) == pytest.approx(0.6)
    assert predicted_contraction(0.0, 2.0) == 1.0
    assert math.isnan(predicted_contraction(0.1, math.nan))
    assert math.isnan(predicted_contraction(0.1, 1.0, beta=math.inf))
    assert stability_indicator(0.5, 4.0) == 2.0
    assert math.isnan(stability_indicator(0.5, math.nan))
    for lr in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match=rf"lr={lr!r}"):
            predicted_contraction(lr, 1.0)


# ---------------------------------------------------------------------------------------------
# Row-wise (batched) fits against the scalar ones, row by row.
# ---------------------------------------------------------------------------------------------


def _random_windows(seed: int, width: int = 50) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A ``(B, width)`` batch covering every case the scalar fits distinguish, with each row's kind."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    kinds: list[str] = []

    def add(kind: str, gaps: np.ndarray, steps: np.ndarray) -> None:
        rows.append((np.asarray(gaps, dtype=np.float64), np.asarray(steps, dtype=np.float64)))
        kinds.append(kind)

    for _ in range(6):
        start = float(rng.choice([0, 1, 100, 10**6, 3 * 10**6 + 7]))
        t = start + np.arange(width)
        b = -rng.uniform(1e-3, 0.3)
        noise = rng.choice([0.0, 1e-6, 0.05, 0.5])
        add("geometric", np.exp(rng.normal(0, 2) + b * (t - start) + noise * rng.standard_normal(width)), t)
    for _ in range(6):
        t = float(rng.choice([1, 5, 200, 10**6])) + np.arange(width)
        p = -rng.uniform(0.3, 2.0)
        add(
            "power",
            rng.uniform(0.1, 10) * t**p * np.exp(rng.choice([0.0, 1e-3]) * rng.standard_normal(width)),
            t,
        )
    t = np.arange(width, dtype=np.float64)
    add("constant", np.full(width, 0.1), t)
    add("constant", np.full(width, 3.7e-5), 10**6 + t)
    add("constant-noise", 0.1 * (1 + 1e-14 * rng.standard_normal(width)), t)
    add("plateau-noise", np.exp(0.01 * rng.standard_normal(width)), 1 + t)
    add("increasing", np.arange(1.0, width + 1.0), 1 + t)
    add("pure-noise", np.exp(rng.standard_normal(width)), 1 + t)
    # NaN padding (ragged windows), in gaps or in steps, and scattered unusable entries.
    for length in (3, 5, 17, 49):
        gaps = np.exp(-0.1 * t + 0.01 * rng.standard_normal(width))
        gaps[length:] = math.nan
        add("nan-padded", gaps, 10**6 + t)
        steps = 1 + t.copy()
        steps[length:] = math.nan
        add("nan-padded-steps", 1.0 / steps, steps)
    gaps = np.exp(-0.05 * t)
    gaps[rng.choice(width, 15, replace=False)] = rng.choice([-1.0, 0.0, -math.inf, math.inf, math.nan], 15)
    add("negative-gaps", gaps, t)
    add("all-negative", -np.ones(width), t)
    # Fewer than two usable points, and usable points all at one step.
    one = np.full(width, math.nan)
    one[7] = 0.5
    add("one-usable", one, t)
    add("none-usable", np.full(width, math.nan), t)
    add("one-step", np.exp(-0.1 * t), np.full(width, 12.0))
    add("one-step", np.exp(-0.1 * t), np.full(width, 0.1))  # a mean of 0.1s is not exactly 0.1
    add("one-step", np.exp(-0.1 * t), np.full(width, 1e6 + 0.1))
    two = np.full(width, math.nan)
    two[[3, 40]] = [1.0, 0.5]
    add("two-usable", two, t)
    # Steps out of order, repeated steps, t < 1 (dropped by the regime rule only).
    add("shuffled", np.exp(-0.2 * t), rng.permutation(t))
    add("repeated-steps", np.exp(-0.2 * (t // 2)), t // 2)
    add("t-below-one", 1.0 / np.maximum(t - 10, 0.5), t - 10)
    order = rng.permutation(len(rows))
    gaps = np.stack([rows[i][0] for i in order])
    steps = np.stack([rows[i][1] for i in order])
    return gaps, steps, [kinds[i] for i in order]


def _same(row_value: float, scalar_value: float) -> bool:
    """Equal up to a relative 1e-9; NaN equals NaN and inf equals inf.

    The absolute 1e-12 is for values that are zero in exact arithmetic (e.g. the
    intercept of an exact ``e^{-bt}``), which both sides only get up to round-off.
    """
    if math.isnan(scalar_value) or math.isnan(row_value):
        return math.isnan(scalar_value) and math.isnan(row_value)
    return math.isclose(row_value, scalar_value, rel_tol=1e-9, abs_tol=1e-12)


def _usable_row(gaps: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(gaps) & (gaps > 0) & np.isfinite(steps)
    return gaps[keep], steps[keep]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_linear_rate_rows_matches_scalar_fit_row_by_row(seed: int) -> None:
    gaps, steps, kinds = _random_windows(seed)
    fits = fit_linear_rate_rows(gaps, steps)
    assert isinstance(fits, LinearRateFits)
    batch = gaps.shape[0]
    for name, field in fits._asdict().items():
        assert isinstance(field, np.ndarray) and field.shape == (batch,), name
        assert field.dtype == (np.int64 if name == "num_points" else np.float64), name
    for b in range(batch):
        scalar = fit_linear_rate(*_usable_row(gaps[b], steps[b]))
        assert fit_linear_rate(gaps[b], steps[b]) == scalar  # dropping first changes nothing
        row = LinearRateFit(*(field[b].item() for field in fits))
        assert row.num_points == scalar.num_points, kinds[b]
        for name in ("slope", "intercept", "contraction", "half_life", "r2"):
            assert _same(getattr(row, name), getattr(scalar, name)), (kinds[b], name, row, scalar)
    # The batch does reach every edge case of the scalar fit.
    is_nan = np.isnan(fits.slope)
    assert is_nan[[k in ("one-step", "one-usable", "none-usable", "all-negative") for k in kinds]].all()
    constant = [k == "constant" for k in kinds]
    assert (fits.slope[constant] == 0).all() and (fits.r2[constant] == 1).all()
    assert (fits.half_life[constant] == math.inf).all() and (fits.contraction[constant] == 1).all()
    assert set(fits.num_points.tolist()) >= {0, 1, 2, 3, 5, 17, 50}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"min_r2": 0.5, "min_points": 3, "max_sse_ratio": 1.0}, {"min_r2": 0.99, "max_sse_ratio": 0.1}],
    ids=["default", "lenient", "strict"],
)
def test_classify_regime_rows_matches_scalar_rule_row_by_row(seed: int, kwargs: dict) -> None:
    gaps, steps, kinds = _random_windows(seed)
    regimes = classify_regime_rows(gaps, steps, **kwargs)
    assert isinstance(regimes, list) and len(regimes) == gaps.shape[0]
    for b, regime in enumerate(regimes):
        assert regime is classify_regime(*_usable_row(gaps[b], steps[b]), **kwargs), kinds[b]
    assert set(regimes) == set(Regime)  # every outcome occurs in the batch


def test_row_fits_accept_tensors_default_steps_and_empty_batches() -> None:
    gaps, steps, _ = _random_windows(3)
    expected = fit_linear_rate_rows(gaps, steps)
    from_tensors = fit_linear_rate_rows(torch.from_numpy(gaps), torch.from_numpy(steps))
    for got, want in zip(from_tensors, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert classify_regime_rows(torch.from_numpy(gaps), torch.from_numpy(steps)) == classify_regime_rows(
        gaps, steps
    )
    # float32 tensors are widened to float64; default steps are 0..W-1 in every row.
    tensor = torch.tensor([[1.0, 0.5, 0.25, 0.125], [8.0, 4.0, 2.0, 1.0]], dtype=torch.float32)
    fits = fit_linear_rate_rows(tensor)
    np.testing.assert_allclose(fits.contraction, [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(fits.intercept, np.log([1.0, 8.0]), rtol=1e-12, atol=1e-12)
    assert classify_regime_rows(tensor.tolist()) == [classify_regime(row) for row in tensor.tolist()]
    empty = fit_linear_rate_rows(np.empty((0, 50)), np.empty((0, 50)))
    assert all(field.shape == (0,) for field in empty) and classify_regime_rows(np.empty((0, 50))) == []
    no_columns = fit_linear_rate_rows(np.empty((2, 0)))
    assert no_columns.num_points.tolist() == [0, 0] and np.isnan(no_columns.slope).all()


def test_row_fits_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"gaps must be 2-D; got shape \(3,\)\. Pass one window per row"):
        fit_linear_rate_rows([1.0, 0.5, 0.25])
    with pytest.raises(ValueError, match=r"steps must be 2-D; got shape \(3,\)"):
        classify_regime_rows(np.ones((2, 3)), np.arange(3))
    with pytest.raises(ValueError, match=r"steps of shape \(2, 4\) and gaps of shape \(2, 3\).*NaN-padding"):
        fit_linear_rate_rows(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(TypeError, match=r"gaps must be a 2-D sequence of numbers"):
        fit_linear_rate_rows([["a", "b"]])
    for kwargs, pattern in [
        ({"min_r2": 1.5}, r"min_r2=1\.5"),
        ({"min_points": 2}, r"min_points=2"),
        ({"max_sse_ratio": 0.0}, r"max_sse_ratio=0\.0"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            classify_regime_rows(np.ones((2, 10)), **kwargs)


def test_scalar_fit_of_points_at_one_inexact_step_is_nan() -> None:
    # The mean of three 0.1s is not exactly 0.1: the fit must still see a single step.
    fit = fit_linear_rate([1.0, 0.5, 0.3], steps=[0.1, 0.1, 0.1])
    assert fit.num_points == 3 and all(math.isnan(v) for v in fit[:5])
