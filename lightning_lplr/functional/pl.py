"""Empirical Polyak–Łojasiewicz (PL) ratios, their lower envelope, ``L*`` strategies, NTK bounds.

Conventions (``docs/theory.md``), for an objective ``L`` with optimal value ``L*``:

* suboptimality gap ``Δ_t = L(θ_t) − L*``;
* empirical PL ratio ``μ̂_t = ‖∇L(θ_t)‖² / (2 Δ_t)``, so that ``½‖∇L‖² ≥ μ (L − L*)``
  holds along the run with ``μ = inf_t μ̂_t``; a non-positive gap is *not* an error,
  the ratio is NaN and monitors count the step as skipped;
* lower envelope: running minimum and a low quantile (default 5 %) of ``μ̂`` over
  a window;
* NTK Rayleigh bounds on a probe: with ``g = ∂L_probe/∂f`` (an ``m·O`` vector,
  sample-major) ``‖∇_θ L_probe‖² = gᵀ (J Jᵀ) g`` exactly, hence
  ``λ_min(JJᵀ)‖g‖² ≤ ‖∇_θ L_probe‖² ≤ λ_max(JJᵀ)‖g‖²`` and
  ``μ_NTK = λ_min(JJᵀ)‖g‖² / (2Δ)`` lower-bounds the probe PL ratio for any loss. For
  ``L = 1/(2m) Σ‖r_i‖²`` it reduces to ``λ_min(J Jᵀ / m)``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lightning_lplr.functional._arrays import as_float, as_float_array, sorted_quantile
from lightning_lplr.functional._checks import is_int, is_real
from lightning_lplr.functional._lines import fit_line, fit_lines
from lightning_lplr.functional._tensors import as_float64_tensor, square_kernel
from lightning_lplr.functional.rate import ArrayLike
from lightning_lplr.functional.spectrum import KernelLike, eigenvalues

__all__ = [
    "FIT_MIN_POINTS",
    "ExponentialFit",
    "LowerEnvelope",
    "NTKPLBounds",
    "envelope_min",
    "envelope_quantile",
    "estimate_loss_star",
    "fit_exponential_offset",
    "fit_loss_star",
    "ntk_gradient_norm_sq",
    "ntk_pl_bounds",
    "pl_ratio",
    "suboptimality_gap",
]

_STRATEGIES = ("zero", "running_min", "fit")


def suboptimality_gap(loss: float, loss_star: float) -> float:
    """Suboptimality gap ``Δ = L − L*``.

    Args:
        loss: the loss ``L`` (a number or a one-element tensor).
        loss_star: the optimal value ``L*`` (see :func:`estimate_loss_star`).

    Returns:
        ``L − L*`` as a float; it may be non-positive or NaN, which
        :func:`pl_ratio` turns into a NaN ratio rather than an error.

    Example:
        >>> suboptimality_gap(torch.tensor(0.75), 0.25)
        0.5
    """
    return as_float(loss, "loss") - as_float(loss_star, "loss_star")


def pl_ratio(grad_norm_sq: float, gap: float) -> float:
    """Empirical PL ratio ``μ̂ = ‖∇L‖² / (2Δ)``.

    Args:
        grad_norm_sq: squared gradient norm ``‖∇L‖²``.
        gap: suboptimality gap ``Δ = L − L*``.

    Returns:
        The ratio as a float, or ``nan`` (documented, no exception) when ``gap ≤ 0``,
        when ``grad_norm_sq < 0`` (not a squared norm), or when an input or the result
        is not finite. Monitors count a NaN ratio as a skipped step.

    Example:
        >>> pl_ratio(4.0, 0.5)
        4.0
        >>> pl_ratio(4.0, 0.0)
        nan
    """
    g2 = as_float(grad_norm_sq, "grad_norm_sq")
    delta = as_float(gap, "gap")
    if not (math.isfinite(g2) and math.isfinite(delta)) or delta <= 0 or g2 < 0:
        return math.nan
    ratio = g2 / (2.0 * delta)
    return ratio if math.isfinite(ratio) else math.nan


class ExponentialFit(NamedTuple):
    """Fit of ``L_t ≈ loss_star + amplitude · exp(rate · t)`` (see :func:`fit_exponential_offset`)."""

    loss_star: float
    """``L*``: the plateau the losses decay to."""
    amplitude: float
    """``A > 0``: the fitted ``L − L*`` at ``t = 0`` (``inf`` if it overflows)."""
    rate: float
    """``b``: per-step exponent of the decay (negative for a decreasing loss)."""
    r2: float
    """``R²`` of ``log(L_t − L*) ≈ log A + b·t`` at the fitted ``L*`` (what the fit maximises)."""


def _profile_objectives(t: np.ndarray, losses: np.ndarray, stars: np.ndarray) -> np.ndarray:
    """Unexplained fraction ``SSE/SST`` of the log-linear fit of ``L − L*`` for each ``L*``; lower is better.

    One vectorised row-wise line fit for all candidates.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(losses[None, :] - stars[:, None])
    keep = np.isfinite(y)
    dx = t - t.mean()
    sxx = float(dx @ dx)
    if keep.all() and t.shape[0] >= 2 and sxx > 0:
        # Every candidate lies below the losses (the usual case): the same least squares with the
        # shared abscissa centred once, 3-4x cheaper than the masked row-wise fit.
        dy = y - y.mean(axis=1, keepdims=True)
        sst = np.einsum("ij,ij->i", dy, dy)
        sxy = dy @ dx
        sse = np.maximum(sst - sxy * sxy / sxx, 0.0)
        resolution = 64 * np.finfo(np.float64).eps * np.abs(y).max(axis=1)
        constant = sst <= t.shape[0] * resolution**2
        with np.errstate(divide="ignore", invalid="ignore"):
            unexplained = np.minimum(sse / sst, 1.0)
        return np.where(constant | (sse <= 0), 0.0, unexplained)
    fits = fit_lines(np.broadcast_to(t, y.shape), y, keep)
    value = np.where(fits.sse > 0, 1.0 - fits.r2, 0.0)
    return np.where(np.isnan(fits.r2), math.inf, value)


_PROFILE_LEVELS = 5
"""Grid refinements of the profile search (each 161 points over ±1 step of the previous grid)."""


def fit_exponential_offset(steps: ArrayLike | None, losses: ArrayLike) -> ExponentialFit:
    """Fit ``L_t ≈ L* + A·exp(b·t)`` with ``A > 0`` and ``L* < min L``; numpy only.

    Method (a profile search over ``L*``): for a candidate ``L*`` the model is the
    straight line ``log(L_t − L*) = log A + b·t``, fitted exactly by least squares;
    its ``R²`` (scale-free, so candidates far below the data are not favoured) is
    maximised over ``L* = min L − s·(max L − min L)`` for ``s`` on a log grid of 161 points
    from ``1e-10`` to ``1e6``, refined four times by a grid of 161 points over the two cells
    around the best point (each refinement one vectorised row-wise fit: the optimum is located
    to about ``1e-9`` decades of ``s``). Working in log space weighs every step by its relative
    error, which suits losses spanning orders of magnitude and multiplicative noise. An
    optimum at ``s = 1e6`` means the window shows no plateau (a straight line fits as well).

    Non-finite pairs are dropped. With fewer than three usable points every float is
    NaN; with constant losses the result is ``L* = that value``, ``A = 0`` and NaN
    rate and ``r2``.

    Args:
        steps: the step of each loss, 1-D; ``None`` for ``0, 1, …, n−1``.
        losses: the losses, same length.

    Returns:
        :class:`ExponentialFit` ``(loss_star, amplitude, rate, r2)``.

    Raises:
        ValueError: inputs not 1-D or of different lengths.

    Example:
        >>> t = np.arange(60.0)
        >>> fit = fit_exponential_offset(t, 0.5 + 2.0 * np.exp(-0.1 * t))
        >>> [round(v, 6) for v in fit]
        [0.5, 2.0, -0.1, 1.0]
    """
    y = as_float_array(losses, "losses")
    if steps is None:
        t = np.arange(y.shape[0], dtype=np.float64)
    else:
        t = as_float_array(steps, "steps")
        if t.shape != y.shape:
            raise ValueError(
                f"steps and losses must have the same length; got steps of length {t.shape[0]} and "
                f"losses of length {y.shape[0]}."
            )
    keep = np.isfinite(y) & np.isfinite(t)
    t, y = t[keep], y[keep]
    nan = math.nan
    if y.shape[0] < 3 or np.unique(t).shape[0] < 2:
        return ExponentialFit(nan, nan, nan, nan)
    low = float(y.min())
    spread = float(y.max()) - low
    if not spread > 0:
        return ExponentialFit(low, 0.0, nan, nan)

    grid = np.linspace(-10.0, 6.0, 161)
    best_value, log_s = math.inf, 0.0
    for _ in range(_PROFILE_LEVELS):
        values = _profile_objectives(t, y, low - 10.0**grid * spread)
        k = int(np.argmin(values))
        if values[k] < best_value or not math.isfinite(best_value):
            best_value, log_s = float(values[k]), float(grid[k])
        step = grid[1] - grid[0]
        grid = np.linspace(log_s - step, log_s + step, 161)
    loss_star = low - 10.0**log_s * spread
    line = fit_line(t, np.log(y - loss_star))
    amplitude = math.exp(line.intercept) if line.intercept < 709.0 else math.inf
    return ExponentialFit(loss_star, amplitude, line.slope, line.r2)


FIT_MIN_POINTS = 10
"""Losses the online ``"fit"`` strategy needs before it estimates ``L*``."""


def fit_loss_star(steps: ArrayLike, losses: ArrayLike, *, min_points: int = FIT_MIN_POINTS) -> float:
    """``L*`` of the online ``"fit"`` strategy, or NaN when the window does not identify it.

    The ``L*`` of :func:`fit_exponential_offset` over past losses, kept only when it means
    something: at least ``min_points`` finite losses, a decaying fit (``rate < 0``) and an
    optimum inside the profile search — an optimum at its far end (``L*`` more than ``1e5``
    loss spreads below the lowest loss) means the window shows no plateau, and any ``L*`` far
    enough below fits a straight line equally well. NaN is the documented answer then: a monitor
    counts the step as skipped rather than inventing a value.

    Args:
        steps: the step of each loss (past steps only: the caller's step is not among them).
        losses: the losses, same length.
        min_points: finite losses needed, ``>= 3``.

    Returns:
        ``L*`` as a float, or NaN.

    Example:
        >>> t = np.arange(40.0)
        >>> round(fit_loss_star(t, 0.25 + np.exp(-0.2 * t)), 6)
        0.25
        >>> fit_loss_star(t[:5], np.exp(-0.2 * t[:5]))  # too few points
        nan
        >>> fit_loss_star(t, 1.0 + 0.0 * t)  # nothing decays
        nan
    """
    if not is_int(min_points) or min_points < 3:
        raise ValueError(f"min_points={min_points!r} must be an int >= 3.")
    y = as_float_array(losses, "losses")
    if int(np.isfinite(y).sum()) < min_points:
        return math.nan
    fit = fit_exponential_offset(steps, y)
    finite = y[np.isfinite(y)]
    spread = float(finite.max() - finite.min())
    if not (math.isfinite(fit.loss_star) and fit.rate < 0 and spread > 0):
        return math.nan
    if (float(finite.min()) - fit.loss_star) / spread > 1e5:
        return math.nan
    return fit.loss_star


def estimate_loss_star(
    losses: ArrayLike,
    strategy: str | float = "zero",
    *,
    steps: ArrayLike | None = None,
    margin: float = 1e-3,
) -> float:
    """The optimal value ``L*`` by one of the strategies of ``docs/theory.md``.

    * ``"zero"``: ``0.0``, for interpolating models (squared or cross-entropy loss
      that can reach zero). ``losses`` is not read.
    * a number: that number (must be finite).
    * ``"running_min"``: ``m − margin·|m|`` with ``m`` the smallest finite loss, so
      every gap of the window is positive, ``margin·|m|`` at the minimum. When that
      does not lie below ``m`` in floating point (``m = 0``, or ``margin`` below the
      float64 resolution) the next float below ``m`` is returned instead, so the
      gap at the minimum is still positive. ``nan`` when no loss is finite.
    * ``"fit"``: the ``L*`` of :func:`fit_exponential_offset` over ``(steps, losses)``;
      ``nan`` with fewer than three finite losses.

    Args:
        losses: the window of losses, 1-D (ignored by ``"zero"`` and a number).
        strategy: ``"zero"``, ``"running_min"``, ``"fit"``, or a finite number.
        steps: the step of each loss for ``"fit"``; default ``0, 1, …, n−1``.
        margin: relative safety margin of ``"running_min"``, finite and ``≥ 0``.

    Returns:
        ``L*`` as a float.

    Raises:
        ValueError: an unknown ``strategy`` (allowed values listed), a non-finite
            number, or a negative or non-finite ``margin``.

    Example:
        >>> estimate_loss_star([3.0, 2.0, 1.0])
        0.0
        >>> estimate_loss_star([3.0, 2.0, 1.0], 0.5)
        0.5
        >>> estimate_loss_star([3.0, 2.0, 1.0], "running_min", margin=0.1)
        0.9
    """
    if not (isinstance(strategy, str) or is_real(strategy)):
        allowed = ", ".join(repr(s) for s in _STRATEGIES)
        raise ValueError(f"strategy={strategy!r} is not a known strategy; pass one of {allowed} or a float.")
    if not isinstance(strategy, str):
        value = float(strategy)
        if not math.isfinite(value):
            raise ValueError(f"strategy={strategy!r}: a numeric L* must be finite.")
        return value
    if strategy not in _STRATEGIES:
        allowed = ", ".join(repr(s) for s in _STRATEGIES)
        raise ValueError(f"strategy={strategy!r} is not a known strategy; pass one of {allowed} or a float.")
    if not is_real(margin) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin={margin!r} must be a finite number >= 0 (a relative safety margin).")
    if strategy == "zero":
        return 0.0
    if strategy == "fit":
        return fit_exponential_offset(steps, losses).loss_star
    values = as_float_array(losses, "losses")
    finite = values[np.isfinite(values)]
    if finite.shape[0] == 0:
        return math.nan
    lowest = float(finite.min())
    star = lowest - margin * abs(lowest)
    if not star < lowest:
        star = float(np.nextafter(lowest, -np.inf))
    return star


def _finite_values(ratios: Any) -> np.ndarray:
    values = as_float_array(ratios, "ratios")
    return values[np.isfinite(values)]


def _check_quantile(q: Any, argument: str = "q") -> float:
    if not is_real(q) or not 0 < q < 1:
        raise ValueError(f"{argument}={q!r} must be a number strictly between 0 and 1 (e.g. 0.05).")
    return float(q)


def envelope_min(ratios: ArrayLike) -> float:
    """Lower envelope: the minimum of the finite PL ratios.

    Args:
        ratios: PL ratios, 1-D; NaN and infinite values are ignored.

    Returns:
        The minimum as a float, ``nan`` when no value is finite.

    Example:
        >>> envelope_min([3.0, float("nan"), 2.0, 5.0])
        2.0
    """
    values = _finite_values(ratios)
    return float(values.min()) if values.shape[0] else math.nan


def envelope_quantile(ratios: ArrayLike, q: float = 0.05) -> float:
    """Robust lower envelope: the ``q``-quantile of the finite PL ratios.

    The quantile interpolates linearly between order statistics (``numpy.quantile``
    with its default ``method="linear"``).

    Args:
        ratios: PL ratios, 1-D; NaN and infinite values are ignored.
        q: the quantile, strictly between 0 and 1 (default 5 %).

    Returns:
        The quantile as a float, ``nan`` when no value is finite.

    Raises:
        ValueError: ``q`` outside ``(0, 1)``.

    Example:
        >>> envelope_quantile([1.0, 2.0, 3.0, 4.0, 5.0], q=0.25)
        2.0
    """
    q = _check_quantile(q)
    values = _finite_values(ratios)
    return float(np.quantile(values, q)) if values.shape[0] else math.nan


class LowerEnvelope:
    """Windowed lower envelope of a stream of PL ratios.

    Holds the last ``window`` finite values (all of them when ``window=None``; memory
    grows with the run) and reports their minimum and ``quantile``-quantile, as
    :func:`envelope_min` and :func:`envelope_quantile` would on the same values.
    Non-finite values are not stored; they are counted in ``num_skipped``.

    Besides the values in arrival order (the state) it keeps them sorted, so that
    ``minimum`` and ``quantile_value`` cost O(1) however long the run; ``update`` costs
    a binary search plus a list insertion (and a removal when the window is full).

    Args:
        window: how many most recent finite values to keep, ``≥ 1``; ``None`` for all.
        quantile: the quantile reported by ``quantile_value``, in ``(0, 1)``.

    Raises:
        ValueError: ``window`` not a positive int or ``None``; ``quantile`` outside ``(0, 1)``.

    Example:
        >>> env = LowerEnvelope(window=3, quantile=0.5)
        >>> for v in [5.0, 1.0, float("nan"), 4.0, 3.0]:
        ...     env.update(v)
        >>> env.minimum, env.quantile_value, env.count, env.num_skipped
        (1.0, 3.0, 3, 1)
        >>> env.update(6.0)
        >>> env.minimum
        3.0
    """

    def __init__(self, window: int | None = None, quantile: float = 0.05) -> None:
        if window is not None and (not is_int(window) or window < 1):
            raise ValueError(f"window={window!r} must be a positive int (or None to keep every value).")
        self.window = None if window is None else int(window)
        self.quantile = _check_quantile(quantile, "quantile")
        self._values: deque[float] = deque(maxlen=self.window)
        # The same values sorted; among equal values, oldest first (insort after equals, stable
        # sort on load), so evicting the oldest value removes the leftmost equal entry.
        self._sorted: list[float] = []
        self._num_skipped = 0

    def update(self, value: float) -> None:
        """Add one ratio; a NaN or infinite value is ignored (and counted in ``num_skipped``)."""
        v = as_float(value, "value")
        if not math.isfinite(v):
            self._num_skipped += 1
            return
        if self.window is not None and len(self._values) == self.window:
            oldest = self._values.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._values.append(v)
        bisect.insort(self._sorted, v)

    def reset(self) -> None:
        """Forget every value and the skip count."""
        self._values.clear()
        self._sorted.clear()
        self._num_skipped = 0

    @property
    def minimum(self) -> float:
        """Minimum over the window; ``nan`` when empty."""
        return self._sorted[0] if self._sorted else math.nan

    @property
    def quantile_value(self) -> float:
        """The ``quantile``-quantile over the window (linear interpolation); ``nan`` when empty.

        Bit-identical to ``np.quantile(values, quantile)`` (numpy's default ``"linear"``
        method): index ``quantile·(n − 1)`` into the sorted values, interpolated with
        numpy's formula.
        """
        return sorted_quantile(self._sorted, self.quantile)

    @property
    def count(self) -> int:
        """How many values the envelope is over now (``≤ window``)."""
        return len(self._values)

    @property
    def num_skipped(self) -> int:
        """How many non-finite values ``update`` ignored since creation or ``reset``."""
        return self._num_skipped

    def state_dict(self) -> dict[str, Any]:
        """Plain python state (floats in a list), for checkpoints; a resumed run continues exactly."""
        return {
            "window": self.window,
            "quantile": self.quantile,
            "values": list(self._values),
            "num_skipped": self._num_skipped,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the values of :meth:`state_dict`; keeps this instance's ``window`` and ``quantile``.

        Values beyond this instance's ``window`` are dropped, oldest first; missing
        keys default to an empty envelope.
        """
        values: Iterable[Any] = state_dict.get("values", [])
        self._values = deque((float(v) for v in values if math.isfinite(float(v))), maxlen=self.window)
        self._sorted = sorted(self._values)
        self._num_skipped = int(state_dict.get("num_skipped", 0))


def _gradient_vector(output_grad: Any, rows: int, device: torch.device) -> Tensor:
    g = as_float64_tensor(output_grad, "output_grad").reshape(-1).to(device)
    if g.shape[0] != rows:
        raise ValueError(
            f"output_grad has {g.shape[0]} entries but kernel_full has {rows} rows; pass the (m, O) "
            "gradient of the probe loss w.r.t. the model outputs for the same probe (flattened "
            "sample-major) and the 'full' kernel."
        )
    return g


def ntk_gradient_norm_sq(kernel_full: KernelLike, output_grad: KernelLike) -> float:
    """``‖∇_θ L‖²`` through the NTK: ``gᵀ K g`` in float64.

    With ``K = J Jᵀ`` the ``"full"`` kernel and ``g = ∂L/∂f`` the gradient of the
    probe loss w.r.t. the model outputs, the chain rule ``∇_θ L = Jᵀ g`` gives
    ``‖∇_θ L‖² = gᵀ J Jᵀ g`` exactly, for any loss.

    Args:
        kernel_full: ``(m·O, m·O)`` kernel ``J Jᵀ`` (rows sample-major, unnormalised).
        output_grad: ``∂L/∂f`` of shape ``(m, O)`` (or already flattened to ``m·O``),
            flattened row-major so that sample ``i``, output ``a`` is entry ``i·O + a``.

    Returns:
        ``gᵀ K g`` as a float (NaN when an input is not finite).

    Raises:
        ValueError: a kernel that is not square, or a gradient whose size differs
            from the kernel's rows.

    Example:
        >>> ntk_gradient_norm_sq(torch.diag(torch.tensor([1.0, 2.0])), torch.tensor([[3.0, 1.0]]))
        11.0
    """
    k = square_kernel(kernel_full, "kernel_full")
    g = _gradient_vector(output_grad, k.shape[0], k.device)
    return float(g @ k @ g)


class NTKPLBounds(NamedTuple):
    """Rayleigh bounds of the probe PL ratio and of ``‖∇_θ L_probe‖²`` from the full NTK."""

    lower: float
    """``λ_min(JJᵀ)·‖g‖² / (2Δ)``: ``μ_NTK``, a lower bound of the probe PL ratio."""
    upper: float
    """``λ_max(JJᵀ)·‖g‖² / (2Δ)``: an upper bound of the probe PL ratio."""
    grad_norm_sq_lower: float
    """``λ_min(JJᵀ)·‖g‖² ≤ ‖∇_θ L_probe‖²``."""
    grad_norm_sq_upper: float
    """``λ_max(JJᵀ)·‖g‖² ≥ ‖∇_θ L_probe‖²``."""


def ntk_pl_bounds(
    kernel_full: KernelLike,
    output_grad: KernelLike,
    gap: float,
    *,
    kernel_eigenvalues: Tensor | None = None,
) -> NTKPLBounds:
    """Rayleigh bounds of the probe PL ratio from the full NTK (``μ_NTK = lower``, ``docs/theory.md``).

    Since ``‖∇_θ L‖² = gᵀ (JJᵀ) g`` (see :func:`ntk_gradient_norm_sq`),
    ``λ_min‖g‖² ≤ ‖∇_θ L‖² ≤ λ_max‖g‖²`` with ``λ`` the extreme eigenvalues of the
    symmetrised float64 kernel, and dividing by ``2Δ`` bounds the PL ratio. For
    ``L = 1/(2m) Σ‖r_i‖²`` and ``L* = 0`` (``g = r/m``, ``Δ = ‖r‖²/(2m)``) the bounds
    are ``λ_min(JJᵀ/m)`` and ``λ_max(JJᵀ/m)``. ``λ_min`` is used as computed: round-off
    may make it slightly negative for a singular kernel.

    Args:
        kernel_full: ``(m·O, m·O)`` kernel ``J Jᵀ`` (unnormalised).
        output_grad: ``∂L_probe/∂f``, shape ``(m, O)`` or flattened ``m·O``.
        gap: ``Δ = L_probe − L*``.
        kernel_eigenvalues: the ascending eigenvalues of ``kernel_full`` when the caller
            already has them (:func:`~lightning_lplr.functional.spectrum.eigenvalues`
            without ``normalize``), which skips a second eigendecomposition.

    Returns:
        :class:`NTKPLBounds`; ``lower`` and ``upper`` are NaN when ``gap ≤ 0`` or not
        finite, and every field is NaN when the kernel or gradient is not finite.

    Raises:
        ValueError: as for :func:`ntk_gradient_norm_sq`.

    Example:
        >>> b = ntk_pl_bounds(torch.diag(torch.tensor([1.0, 4.0])), torch.tensor([1.0, 1.0]), 0.5)
        >>> b.lower, b.upper, b.grad_norm_sq_lower, b.grad_norm_sq_upper
        (2.0, 8.0, 2.0, 8.0)
    """
    k = square_kernel(kernel_full, "kernel_full")
    g = _gradient_vector(output_grad, k.shape[0], k.device)
    delta = as_float(gap, "gap")
    if kernel_eigenvalues is None:
        eigs = eigenvalues(k)
    else:
        eigs = kernel_eigenvalues.detach().to(torch.float64).reshape(-1)
        if eigs.shape[0] != k.shape[0]:
            raise ValueError(
                f"kernel_eigenvalues has {eigs.shape[0]} entries but kernel_full has {k.shape[0]} rows; "
                "pass eigenvalues(kernel_full) of the same kernel (or None to compute them)."
            )
    g2 = float(g @ g)
    nan = math.nan
    if not math.isfinite(g2) or bool(torch.isnan(eigs).any()):
        return NTKPLBounds(nan, nan, nan, nan)
    lower_sq = float(eigs[0]) * g2
    upper_sq = float(eigs[-1]) * g2
    if not math.isfinite(delta) or delta <= 0:
        return NTKPLBounds(nan, nan, lower_sq, upper_sq)
    return NTKPLBounds(lower_sq / (2.0 * delta), upper_sq / (2.0 * delta), lower_sq, upper_sq)
