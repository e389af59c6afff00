"""Convergence-rate fits of a suboptimality gap, regime classification, predicted contraction.

Conventions (``docs/theory.md``): over a window of steps ``t`` with gaps ``Δ_t = L_t − L*``

* linear (geometric) model ``log Δ_t ≈ a + b·t``: slope ``b``, per-step contraction
  ``ρ = e^b``, half-life ``ln 2 / |b|``;
* sublinear (power-law) model ``log Δ_t ≈ c + p·log t``;
* predicted contraction of gradient descent with step ``η`` under a PL constant
  ``μ`` and smoothness ``β``: ``ρ_pred = 1 − 2ημ(1 − ηβ/2)``, stable when ``η·β < 2``.

Points that cannot enter a log-fit (a non-positive or non-finite gap, a non-finite
step) are dropped, not errors: the fits report how many points they used, and with
fewer than two usable points every fitted value is NaN.

This module imports neither torch nor Lightning (the ``lightning-lplr report`` command uses it
without paying for them): a value is treated as a tensor only when torch is already imported and
the value is a ``torch.Tensor``; a tensor cannot exist before torch is imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import numpy as np

from lightning_lplr.functional._arrays import as_float, as_float_array, as_float_ndarray
from lightning_lplr.functional._checks import is_int, is_real
from lightning_lplr.functional._lines import LineFits, fit_line, fit_lines

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; torch is never imported here
    from torch import Tensor

__all__ = [
    "ArrayLike",
    "LinearRateFit",
    "LinearRateFits",
    "Regime",
    "RowsLike",
    "SublinearFit",
    "classify_regime",
    "classify_regime_rows",
    "fit_linear_rate",
    "fit_linear_rate_rows",
    "fit_sublinear_rate",
    "predicted_contraction",
    "stability_indicator",
]

ArrayLike = Union["Tensor", np.ndarray, Sequence[float]]  # "Tensor": a forward reference
"""A 1-D series: torch tensor, numpy array, or a sequence of floats / 0-d tensors."""


def _steps_for(gaps: np.ndarray, steps: Any) -> np.ndarray:
    if steps is None:
        return np.arange(gaps.shape[0], dtype=np.float64)
    t = as_float_array(steps, "steps")
    if t.shape != gaps.shape:
        raise ValueError(
            f"steps and gaps must have the same length; got steps of length {t.shape[0]} and gaps of "
            f"length {gaps.shape[0]}."
        )
    return t


class LinearRateFit(NamedTuple):
    """Fit of ``log Δ_t ≈ intercept + slope·t`` (natural log, ``t`` in steps)."""

    slope: float
    """``b``: per-step log-decrease; negative while the gap shrinks."""
    intercept: float
    """``a``: the fitted ``log Δ`` at ``t = 0``."""
    contraction: float
    """``ρ = e^b``: fitted per-step factor of the gap, ``< 1`` while it shrinks."""
    half_life: float
    """``ln 2 / |b|`` steps (a doubling time when ``b > 0``); ``inf`` when ``b == 0``."""
    r2: float
    """Coefficient of determination of the log-linear fit, ``1 − SSE/SST``."""
    num_points: int
    """How many points the fit used (after dropping unusable ones)."""


def _usable(gaps: Any, steps: Any) -> tuple[np.ndarray, np.ndarray]:
    g = as_float_array(gaps, "gaps")
    t = _steps_for(g, steps)
    keep = np.isfinite(g) & (g > 0) & np.isfinite(t)
    return t[keep], g[keep]


def _linear_from_points(t: np.ndarray, g: np.ndarray) -> LinearRateFit:
    n = int(t.shape[0])
    line = fit_line(t, np.log(g)) if n >= 2 else None
    if line is None or math.isnan(line.slope):
        nan = math.nan
        return LinearRateFit(nan, nan, nan, nan, nan, n)
    b = line.slope
    half_life = math.log(2) / abs(b) if b != 0 else math.inf
    return LinearRateFit(b, line.intercept, math.exp(b), half_life, line.r2, n)


def fit_linear_rate(gaps: ArrayLike, steps: ArrayLike | None = None) -> LinearRateFit:
    """Least-squares fit of ``log Δ_t ≈ a + b·t``: the linear (geometric) convergence rate.

    Points whose gap is not positive or not finite, or whose step is not finite,
    are dropped before fitting (a gap ``≤ 0`` has no logarithm; monitors skip
    such steps). With fewer than two usable points, or all usable points at one
    step, every float of the fit is NaN and ``num_points`` says how many were usable.

    ``r2 = 1 − SSE/SST`` of the log-linear fit, ``1.0`` for an exact geometric
    sequence. When ``log Δ`` is constant over the window (``SST = 0`` up to
    round-off) the horizontal line fits exactly: ``slope = 0``, ``contraction = 1``,
    ``half_life = inf`` and ``r2 = 1.0`` (a plateau, perfectly described with rate
    zero; :func:`classify_regime` does not call it linear convergence).

    Args:
        gaps: suboptimality gaps ``Δ_t``, 1-D.
        steps: the step of each gap, same length; default ``0, 1, …, n−1``.

    Returns:
        :class:`LinearRateFit` with the slope ``b`` per step, intercept ``a`` (at
        ``t = 0``), contraction ``e^b``, half-life ``ln 2/|b|``, ``r2`` and ``num_points``.

    Raises:
        ValueError: ``gaps`` or ``steps`` not 1-D, or of different lengths.

    Example:
        >>> fit = fit_linear_rate([1.0, 0.5, 0.25, 0.125])
        >>> round(fit.contraction, 12), round(fit.half_life, 12), fit.r2, fit.num_points
        (0.5, 1.0, 1.0, 4)
        >>> fit_linear_rate([1.0, 0.0, -1.0]).num_points
        1
    """
    t, g = _usable(gaps, steps)
    return _linear_from_points(t, g)


class SublinearFit(NamedTuple):
    """Fit of ``log Δ_t ≈ intercept + exponent·log t`` (natural logs, ``t ≥ 1``)."""

    exponent: float
    """``p``: the power of ``t``; ``Δ ∝ t^p``, ``p = −1`` for the ``O(1/t)`` rate."""
    intercept: float
    """``c``: the fitted ``log Δ`` at ``t = 1``."""
    r2: float
    """Coefficient of determination of the log-log fit, ``1 − SSE/SST``."""
    num_points: int
    """How many points the fit used (after dropping unusable ones)."""


def _sublinear_from_points(t: np.ndarray, g: np.ndarray) -> SublinearFit:
    n = int(t.shape[0])
    line = fit_line(np.log(t), np.log(g)) if n >= 2 else None
    if line is None or math.isnan(line.slope):
        nan = math.nan
        return SublinearFit(nan, nan, nan, n)
    return SublinearFit(line.slope, line.intercept, line.r2, n)


def fit_sublinear_rate(gaps: ArrayLike, steps: ArrayLike | None = None) -> SublinearFit:
    """Least-squares fit of ``log Δ_t ≈ c + p·log t``: the sublinear (power-law) rate.

    ``t`` is the step counted from the start of training, used as given: points
    with ``t < 1`` are dropped, together with non-positive or non-finite gaps. We
    do not shift a window to start at 1: a power law ``Δ ∝ t^p`` is anchored at the
    start of training, and shifting a late window (``t − t_first + 1``) would turn
    an exact ``1/t`` sequence into something that is no power law at all. With the
    default steps ``0, 1, …, n−1`` only the first point is dropped.

    Args:
        gaps: suboptimality gaps ``Δ_t``, 1-D.
        steps: the step of each gap, same length; default ``0, 1, …, n−1``.

    Returns:
        :class:`SublinearFit` with exponent ``p``, intercept ``c``, ``r2`` (defined as in
        :func:`fit_linear_rate`, ``1.0`` for a constant ``log Δ``) and ``num_points``;
        all floats NaN with fewer than two usable points.

    Raises:
        ValueError: ``gaps`` or ``steps`` not 1-D, or of different lengths.

    Example:
        >>> fit = fit_sublinear_rate([1.0, 1 / 2, 1 / 3, 1 / 4], steps=[1, 2, 3, 4])
        >>> round(fit.exponent, 12), round(fit.r2, 12), fit.num_points
        (-1.0, 1.0, 4)
    """
    t, g = _usable(gaps, steps)
    keep = t >= 1
    return _sublinear_from_points(t[keep], g[keep])


class Regime(str, Enum):
    """Which convergence model explains a window of gaps better (see :func:`classify_regime`)."""

    LINEAR = "linear"
    """Geometric decay, ``log Δ`` linear in ``t``."""
    SUBLINEAR = "sublinear"
    """Power-law decay, ``log Δ`` linear in ``log t``."""
    UNDETERMINED = "undetermined"
    """Too few points, no decrease, a poor fit, or no clear winner."""


def _check_regime_arguments(min_r2: Any, min_points: Any, max_sse_ratio: Any) -> None:
    if not is_real(min_r2) or not 0 <= min_r2 <= 1:
        raise ValueError(f"min_r2={min_r2!r} must be a number in [0, 1].")
    if not is_int(min_points) or min_points < 3:
        raise ValueError(f"min_points={min_points!r} must be an int >= 3 (a line through 2 points is exact).")
    if not is_real(max_sse_ratio) or not 0 < max_sse_ratio <= 1:
        raise ValueError(f"max_sse_ratio={max_sse_ratio!r} must be a number in (0, 1].")


def classify_regime(
    gaps: ArrayLike,
    steps: ArrayLike | None = None,
    *,
    min_r2: float = 0.9,
    min_points: int = 5,
    max_sse_ratio: float = 0.5,
) -> Regime:
    """Classify a window of gaps as linear, sublinear or undetermined convergence.

    The rule:

    1. Keep the points usable by *both* fits: finite positive gaps at finite steps
       ``t ≥ 1`` (see :func:`fit_sublinear_rate`), so both models are fitted to the
       same data. Fewer than ``min_points`` → ``UNDETERMINED``.
    2. Fit ``log Δ ≈ a + b·t`` and ``log Δ ≈ c + p·log t``. Both have two parameters
       and the same total sum of squares, so comparing their ``R²`` is comparing their
       residual sums of squares ``SSE``.
    3. A model wins when its ``SSE`` is at most ``max_sse_ratio`` times the other's
       (default: half; a relative margin, so an exact sequence is decided even when
       both ``R²`` are close to 1, while noise that both models fit equally well is
       not) — and its ``R²`` is at least ``min_r2`` — and it describes a decrease
       (``b < 0`` or ``p < 0``). Otherwise ``UNDETERMINED``.

    Short late windows where ``log t`` is almost linear in ``t`` are genuinely hard
    to tell apart; the rule then answers ``UNDETERMINED`` rather than guess.

    Args:
        gaps: suboptimality gaps ``Δ_t``, 1-D.
        steps: the step of each gap (from the start of training), same length;
            default ``0, 1, …, n−1``.
        min_r2: the winner's ``R²`` must reach this, in ``[0, 1]``.
        min_points: least number of usable points, ``≥ 3``.
        max_sse_ratio: the winner's ``SSE`` is at most this fraction of the loser's,
            in ``(0, 1]``.

    Returns:
        :class:`Regime`.

    Raises:
        ValueError: an argument out of its range (named with its value), or ``gaps``
            and ``steps`` of different lengths.

    Example:
        >>> classify_regime([0.5**t for t in range(20)])
        <Regime.LINEAR: 'linear'>
        >>> classify_regime([1 / t for t in range(1, 21)], steps=range(1, 21))
        <Regime.SUBLINEAR: 'sublinear'>
        >>> classify_regime([1.0, 0.5])
        <Regime.UNDETERMINED: 'undetermined'>
    """
    _check_regime_arguments(min_r2, min_points, max_sse_ratio)
    t, g = _usable(gaps, steps)
    keep = t >= 1
    t, g = t[keep], g[keep]
    if t.shape[0] < min_points:
        return Regime.UNDETERMINED
    y = np.log(g)
    linear = fit_line(t, y)
    sublinear = fit_line(np.log(t), y)
    if math.isnan(linear.slope) or math.isnan(sublinear.slope):
        return Regime.UNDETERMINED
    for winner, loser, regime in ((linear, sublinear, Regime.LINEAR), (sublinear, linear, Regime.SUBLINEAR)):
        if winner.sse < loser.sse and winner.sse <= max_sse_ratio * loser.sse:
            if winner.r2 >= min_r2 and winner.slope < 0:
                return regime
            return Regime.UNDETERMINED
    return Regime.UNDETERMINED


# ---------------------------------------------------------------------------------------------
# Row-wise (batched) fits: one independent window per row, the same math as the scalar fits.
# ---------------------------------------------------------------------------------------------

RowsLike = Union["Tensor", np.ndarray, Sequence[Sequence[float]]]  # "Tensor": a forward reference
"""A 2-D batch of windows ``(B, W)``: torch tensor, numpy array, or nested sequences of floats."""


def _usable_rows(gaps: Any, steps: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t, g, keep)`` as ``(B, W)`` arrays: ``keep`` marks the entries the scalar fits would use."""
    hint = " Pass one window per row, shape (B, W); for a single window use x[None] or the scalar fit."
    g = as_float_ndarray(gaps, "gaps", ndim=2, hint=hint)
    if steps is None:
        t = np.broadcast_to(np.arange(g.shape[1], dtype=np.float64), g.shape)
    else:
        t = as_float_ndarray(steps, "steps", ndim=2, hint=hint)
        if t.shape != g.shape:
            raise ValueError(
                f"steps and gaps must have the same shape (B, W); got steps of shape {t.shape} and gaps "
                f"of shape {g.shape}. Give every row the same width, NaN-padding shorter windows."
            )
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(g) & (g > 0) & np.isfinite(t)
    return t, g, keep


class LinearRateFits(NamedTuple):
    """Row-wise :class:`LinearRateFit`: each field a 1-D array with one entry per window.

    The float fields are ``float64`` arrays and ``num_points`` is ``int64``; entry ``b``
    of each field is the corresponding field of :func:`fit_linear_rate` on row ``b``.
    """

    slope: np.ndarray
    """``b`` per row: per-step log-decrease."""
    intercept: np.ndarray
    """``a`` per row: the fitted ``log Δ`` at ``t = 0``."""
    contraction: np.ndarray
    """``ρ = e^b`` per row."""
    half_life: np.ndarray
    """``ln 2 / |b|`` per row; ``inf`` where ``b == 0``."""
    r2: np.ndarray
    """``1 − SSE/SST`` per row."""
    num_points: np.ndarray
    """Usable points per row (``int64``)."""


def fit_linear_rate_rows(gaps: RowsLike, steps: RowsLike | None = None) -> LinearRateFits:
    """:func:`fit_linear_rate` on every row of a ``(B, W)`` batch of windows, vectorised.

    Each row is an independent window. Entries the scalar fit would drop (a
    non-positive or non-finite gap, a non-finite step) are dropped per row, so rows of
    different lengths are given by NaN-padding. Row ``b`` of the result equals
    ``fit_linear_rate(gaps[b], steps[b])`` up to round-off, edge cases included: NaN
    floats with fewer than two usable points or all of them at one step, and
    ``slope = 0``, ``contraction = 1``, ``half_life = inf``, ``r2 = 1`` for a constant
    ``log Δ``. The sums are masked and centred per row, so step numbers in the millions
    stay well conditioned.

    Args:
        gaps: suboptimality gaps ``Δ_t``, shape ``(B, W)``.
        steps: the step of each gap, shape ``(B, W)``; default ``0, 1, …, W−1`` in every row.

    Returns:
        :class:`LinearRateFits`, every field of length ``B``.

    Raises:
        ValueError: ``gaps`` or ``steps`` not 2-D, or of different shapes.

    Example:
        >>> nan = float("nan")
        >>> fits = fit_linear_rate_rows(
        ...     [[1.0, 0.5, 0.25, 0.125], [1.0, 0.25, nan, nan], [1.0, -1.0, nan, nan]],
        ...     [[0, 1, 2, 3], [10, 11, 12, 13], [0, 1, 2, 3]],
        ... )
        >>> fits.contraction.round(12).tolist(), fits.num_points.tolist()
        ([0.5, 0.25, nan], [4, 2, 1])
    """
    t, g, keep = _usable_rows(gaps, steps)
    with np.errstate(divide="ignore", invalid="ignore"):
        line = fit_lines(t, np.log(np.where(keep, g, 1.0)), keep)
        b = line.slope
        half_life = np.where(b != 0, math.log(2) / np.abs(b), math.inf)
    return LinearRateFits(
        slope=b,
        intercept=line.intercept,
        contraction=np.exp(b),
        half_life=half_life,
        r2=line.r2,
        num_points=keep.sum(axis=1, dtype=np.int64),
    )


def classify_regime_rows(
    gaps: RowsLike,
    steps: RowsLike | None = None,
    *,
    min_r2: float = 0.9,
    min_points: int = 5,
    max_sse_ratio: float = 0.5,
) -> list[Regime]:
    """:func:`classify_regime` on every row of a ``(B, W)`` batch of windows, vectorised.

    Each row is an independent window, classified by the rule of
    :func:`classify_regime` with the same arguments. Entries that rule drops (a
    non-positive or non-finite gap, a non-finite step, ``t < 1``) are dropped per row,
    so rows of different lengths are given by NaN-padding.

    Args:
        gaps: suboptimality gaps ``Δ_t``, shape ``(B, W)``.
        steps: the step of each gap (from the start of training), shape ``(B, W)``;
            default ``0, 1, …, W−1`` in every row.
        min_r2: the winner's ``R²`` must reach this, in ``[0, 1]``.
        min_points: least number of usable points per row, ``≥ 3``.
        max_sse_ratio: the winner's ``SSE`` is at most this fraction of the loser's,
            in ``(0, 1]``.

    Returns:
        One :class:`Regime` per row, as a list of length ``B`` (map each to a code
        with ``regime.value``).

    Raises:
        ValueError: an argument out of its range (named with its value), or ``gaps``
            and ``steps`` not 2-D or of different shapes.

    Example:
        >>> t = np.arange(1.0, 21.0)
        >>> regimes = classify_regime_rows(np.stack([0.5**t, 1 / t, np.ones_like(t)]), np.stack([t, t, t]))
        >>> [regime.value for regime in regimes]
        ['linear', 'sublinear', 'undetermined']
    """
    _check_regime_arguments(min_r2, min_points, max_sse_ratio)
    t, g, keep = _usable_rows(gaps, steps)
    with np.errstate(invalid="ignore"):
        keep &= t >= 1
    enough = keep.sum(axis=1) >= min_points
    t = np.where(keep, t, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.where(keep, g, 1.0))
        linear = fit_lines(t, y, keep)
        sublinear = fit_lines(np.log(t), y, keep)
        fitted = enough & ~np.isnan(linear.slope) & ~np.isnan(sublinear.slope)

        def wins(winner: LineFits, loser: LineFits) -> np.ndarray:
            better = (winner.sse < loser.sse) & (winner.sse <= max_sse_ratio * loser.sse)
            return fitted & better & (winner.r2 >= min_r2) & (winner.slope < 0)

        is_linear = wins(linear, sublinear)
        is_sublinear = wins(sublinear, linear)
    codes = np.where(is_linear, 1, np.where(is_sublinear, 2, 0))
    regimes = (Regime.UNDETERMINED, Regime.LINEAR, Regime.SUBLINEAR)
    return [regimes[c] for c in codes.tolist()]


def predicted_contraction(lr: float, mu: float, beta: float | None = None) -> float:
    """Predicted per-step contraction of the gap under gradient descent: ``1 − 2ημ(1 − ηβ/2)``.

    For a ``β``-smooth loss satisfying the PL inequality ``½‖∇L‖² ≥ μ (L − L*)``, one
    gradient step of size ``η`` gives ``Δ_{t+1} ≤ (1 − 2ημ(1 − ηβ/2)) Δ_t``. With
    ``beta=None`` the curvature term is dropped: ``1 − 2ημ``. Compare with the
    measured ``e^b`` of :func:`fit_linear_rate`. The formula is for plain gradient
    descent (no momentum, no adaptive step).

    Args:
        lr: step size ``η``, finite and ``≥ 0``.
        mu: PL constant ``μ`` (e.g. the lower envelope of the PL ratio, or ``μ_NTK``).
        beta: smoothness ``β`` (e.g. ``λ_max(J Jᵀ)/m`` for squared loss) or ``None``.

    Returns:
        ``ρ_pred`` as a float; ``nan`` when ``mu`` or ``beta`` is not finite.

    Raises:
        ValueError: ``lr`` negative or not finite.

    Example:
        >>> predicted_contraction(0.1, 1.0)
        0.8
        >>> predicted_contraction(0.5, 0.5, beta=1.0)
        0.625
    """
    eta = as_float(lr, "lr")
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"lr={lr!r} must be a finite step size >= 0.")
    m = as_float(mu, "mu")
    factor = 1.0 if beta is None else 1.0 - eta * as_float(beta, "beta") / 2
    value = 1.0 - 2.0 * eta * m * factor
    return value if math.isfinite(value) else math.nan


def stability_indicator(lr: float, beta: float) -> float:
    """Stability indicator ``η·β`` of gradient descent; compare with 2.

    Gradient descent on a ``β``-smooth loss decreases it for ``η·β < 2``; above 2 the
    step overshoots along the sharpest direction (the edge of stability).

    Args:
        lr: step size ``η``.
        beta: smoothness / sharpness ``β`` (e.g. ``λ_max(J Jᵀ)/m`` for squared loss).

    Returns:
        ``η·β`` as a float (``nan`` if either is not finite).

    Example:
        >>> stability_indicator(0.5, 3.0)
        1.5
    """
    value = as_float(lr, "lr") * as_float(beta, "beta")
    return value if math.isfinite(value) else math.nan
