"""The run's ``L*``: what the monitor logged with, and the post-hoc ``running_min`` of the report.

A running minimum cannot estimate ``L*`` while the loss still falls, so the monitors do not offer
it; after the run it can: ``lightning-lplr report --loss-star running_min [--margin M]`` sets

    ``L*_rm = min_t L_t − M·|min_t L_t|``

over the whole run, where the training loss is ``L_t = pl/gap_t + L*_logged`` (``L*_logged`` is 0
for the marker's ``loss_star`` ``"zero"`` and for a run without a marker, the number for a
numeric ``loss_star``; a run whose ``L*`` was fitted online has no single logged ``L*`` and is left
as logged, with a note). Then, from the logged series alone:

* ``pl/gap_t = L_t − L*_rm`` at every logged step;
* ``pl/ratio_step``: since ``ratio = ‖∇L‖² / (2Δ)``, ``ratio_new = ratio_old · Δ_old / Δ_new`` at every
  step where a ratio was logged (and ``Δ_new > 0``);
* ``pl/envelope_min`` / ``pl/envelope_q05``: running minimum and running 5 % quantile (numpy's
  linear interpolation) of the new ratios over the whole run, at every step of the gap;
* ``rate/slope``, ``rate/contraction``, ``rate/half_life``, ``rate/r2``, ``rate/regime``: the fits of
  :func:`~lightning_lplr.functional.rate.fit_linear_rate_rows` and
  :func:`~lightning_lplr.functional.rate.classify_regime_rows` over the trailing ``rate_window``
  gaps, at the steps the monitor logged its fits (every gap step when it logged none), skipping
  windows with fewer than :data:`RATE_MIN_POINTS` usable gaps — what the monitor does online;
* ``skipped/nonpositive_gap``: the running count of steps with ``Δ_new ≤ 0`` (with ``M = 0``, the
  step of the minimum itself).

What depends on the probe's gap or on the logged ``L*`` through ``μ`` (``pl/ratio_probe``,
``pl/mu_ntk``, ``rate/contraction_pred``) cannot be recomputed from the logged series and is left
out of the recomputed run (listed in ``dropped_keys``).

``M > 0`` keeps every gap positive; the gaps then level off at ``M·|min L|`` at the end of the run,
so the rate fits are meaningful where the gap is well above that floor.

Example:
    >>> import numpy as np
    >>> from lightning_lplr.report.reader import Run, Series
    >>> loss = [0.5 + 0.9**t for t in range(200)]
    >>> run = Run("r", (), ("csv",), {"pl/gap": Series.from_pairs(enumerate(loss))})
    >>> new, info = apply_running_min(run, None, margin=1e-6)
    >>> round(info["value"], 6), info["recomputed"]
    (0.5, True)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from lightning_lplr.functional._arrays import sorted_quantile
from lightning_lplr.functional.rate import classify_regime_rows, fit_linear_rate_rows
from lightning_lplr.report.reader import Run, Series
from lightning_lplr.reporting.keys import REGIME_CODES

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_RATE_WINDOW",
    "LOSS_STAR_CHOICES",
    "RATE_MIN_POINTS",
    "apply_running_min",
    "logged_loss_star",
    "running_quantile",
]

DEFAULT_MARGIN = 1e-3
"""Default ``M`` of ``L*_rm = min L − M·|min L|``: keeps the last gap positive (a relative 0.1 %)."""
DEFAULT_RATE_WINDOW = 50
"""Default trailing window of the recomputed rate fits: the monitors' default ``rate_window``."""
RATE_MIN_POINTS = 10
"""Fewest usable gaps in a window for a recomputed fit: the monitors' default ``rate_min_points``."""
LOSS_STAR_CHOICES = ("logged", "running_min")
"""Values of ``--loss-star``: the ``L*`` the run was logged with, or the post-hoc running minimum."""
_ENVELOPE_QUANTILE = 0.05
_DEPENDENT_KEYS = ("pl/ratio_probe", "pl/mu_ntk", "rate/contraction_pred")
_RATE_KEYS = ("rate/slope", "rate/contraction", "rate/half_life", "rate/r2", "rate/regime")


def logged_loss_star(marker: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``L*`` a run's gaps were logged with, from its schema marker.

    Args:
        marker: the run's schema marker, ``None`` for a run without one (``L* = 0`` is assumed:
            the monitors' default before key-semantics version 2).

    Returns:
        ``{"strategy", "source", "value"}``: strategy ``"zero"``, ``"value"`` (a number),
        ``"fit"`` (fitted online, no single value) or ``"other"``; source ``"marker"`` or
        ``"assumed"``; ``value`` the number (0 for zero) or ``None``.

    Example:
        >>> logged_loss_star({"loss_star": 0.25})
        {'strategy': 'value', 'source': 'marker', 'value': 0.25}
        >>> logged_loss_star(None)
        {'strategy': 'zero', 'source': 'assumed', 'value': 0.0}
    """
    if marker is None or marker.get("loss_star") is None:
        return {"strategy": "zero", "source": "assumed", "value": 0.0}
    raw = marker["loss_star"]
    if isinstance(raw, str):
        if raw.strip().lower() == "zero":
            return {"strategy": "zero", "source": "marker", "value": 0.0}
        if raw.strip().lower() == "fit":
            return {"strategy": "fit", "source": "marker", "value": None}
    if not isinstance(raw, bool):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value):
            return {"strategy": "value", "source": "marker", "value": value}
    return {"strategy": "other", "source": "marker", "value": None}


def running_quantile(values: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-quantile of ``values[:i + 1]`` for every ``i`` (numpy's default linear method).

    Args:
        values: 1-D finite values in arrival order.
        q: the quantile, in ``[0, 1]``.

    Returns:
        A float64 array of the same length.

    Example:
        >>> running_quantile(np.array([3.0, 1.0, 2.0]), 0.5).tolist()
        [3.0, 2.0, 2.0]
    """
    ordered: list[float] = []
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(np.asarray(values, dtype=np.float64).tolist()):
        bisect.insort(ordered, value)
        out[i] = sorted_quantile(ordered, q)
    return out


def _series(steps: np.ndarray, values: np.ndarray) -> Series:
    return Series(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))


def _rate_series(gap: Series, at_steps: np.ndarray, window: int) -> dict[str, Series]:
    """Trailing-window fits of ``gap`` ending at each of ``at_steps`` (the monitor's batched fit)."""
    ends = np.searchsorted(gap.steps, at_steps, side="right") - 1
    ends = np.unique(ends[ends >= 0])
    if ends.size == 0:
        return {}
    pad = np.full(window - 1, np.nan)
    index = ends[:, None] + np.arange(window)
    step_rows = np.concatenate([pad, gap.steps.astype(np.float64)])[index]
    gap_rows = np.concatenate([pad, gap.values])[index]
    fits = fit_linear_rate_rows(gap_rows, step_rows)
    regimes = classify_regime_rows(gap_rows, step_rows)
    keep = np.asarray(fits.num_points) >= RATE_MIN_POINTS
    steps = gap.steps[ends][keep]
    codes = np.array([REGIME_CODES[str(r.value)] for r in regimes], dtype=np.float64)[keep]
    return {
        "rate/slope": _series(steps, np.asarray(fits.slope)[keep]),
        "rate/contraction": _series(steps, np.asarray(fits.contraction)[keep]),
        "rate/half_life": _series(steps, np.asarray(fits.half_life)[keep]),
        "rate/r2": _series(steps, np.asarray(fits.r2)[keep]),
        "rate/regime": _series(steps, codes),
    }


def apply_running_min(
    run: Run,
    marker: Mapping[str, Any] | None,
    *,
    margin: float = DEFAULT_MARGIN,
    rate_window: int = DEFAULT_RATE_WINDOW,
) -> tuple[Run, dict[str, Any]]:
    """The run with ``L* = min L − margin·|min L|`` applied after the fact (module docstring).

    Args:
        run: the run as logged.
        marker: its schema marker (``None``: logged with ``L* = 0``).
        margin: ``M ≥ 0``.
        rate_window: trailing gaps per recomputed rate fit, ``≥ 2``.

    Returns:
        ``(run, info)``: the recomputed run (unchanged when the logged ``L*`` is unknown, or when
        ``pl/gap`` was not logged or never finite) and the ``loss_star`` object of the report
        (schema ``LossStar``).

    Raises:
        ValueError: ``margin`` negative or not finite; ``rate_window`` below 2.
    """
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin={margin!r} must be a finite number >= 0 (e.g. {DEFAULT_MARGIN}).")
    if not isinstance(rate_window, int) or isinstance(rate_window, bool) or rate_window < 2:
        raise ValueError(f"rate_window={rate_window!r} must be an int >= 2 (the monitors' default is 50).")
    logged = logged_loss_star(marker)
    info: dict[str, Any] = {
        "strategy": "running_min",
        "source": "report",
        "value": None,
        "margin": float(margin),
        "logged": logged["strategy"] if logged["value"] is None else _describe(logged),
        "recomputed": False,
        "dropped_keys": [],
        "note": None,
    }
    gap = run.get("pl/gap")
    if logged["value"] is None:
        info["note"] = (
            "--loss-star running_min needs the L* the run was logged with; the marker says "
            f"loss_star={marker.get('loss_star')!r} (no single value is logged), so the gaps are left as "
            "logged."
            if marker is not None
            else "--loss-star running_min needs the logged L*."
        )
        return run, info
    finite = gap.finite() if gap is not None else None
    if gap is None or finite is None or not len(finite):
        info["note"] = "--loss-star running_min needs a finite pl/gap; the gaps are left as logged."
        return run, info
    offset = float(logged["value"])
    loss = gap.values + offset
    lowest = float(np.min(finite.values + offset))
    loss_star = lowest - margin * abs(lowest)
    new_gap = loss - loss_star
    series = dict(run.series)
    series["pl/gap"] = _series(gap.steps, new_gap)

    ratio = run.get("pl/ratio_step")
    if ratio is not None:
        at = np.searchsorted(gap.steps, ratio.steps)
        valid = (at < len(gap)) & (gap.steps[np.minimum(at, len(gap) - 1)] == ratio.steps)
        at = at[valid]
        old, new = gap.values[at], new_gap[at]
        with np.errstate(divide="ignore", invalid="ignore"):
            values = ratio.values[valid] * old / new
        keep = np.isfinite(values) & (new > 0)
        new_ratio = _series(ratio.steps[valid][keep], values[keep])
        series["pl/ratio_step"] = new_ratio
        if len(new_ratio):
            envelope_steps = gap.steps[gap.steps >= new_ratio.steps[0]]
            counts = np.searchsorted(new_ratio.steps, envelope_steps, side="right") - 1
            running_min = np.minimum.accumulate(new_ratio.values)
            running_q = running_quantile(new_ratio.values, _ENVELOPE_QUANTILE)
            series["pl/envelope_min"] = _series(envelope_steps, running_min[counts])
            series["pl/envelope_q05"] = _series(envelope_steps, running_q[counts])
        else:
            series.pop("pl/envelope_min", None)
            series.pop("pl/envelope_q05", None)

    rate_steps = [
        run.get(key).steps for key in ("rate/contraction", "rate/regime") if run.get(key) is not None
    ]
    at_steps = np.unique(np.concatenate(rate_steps)) if rate_steps else gap.steps
    for key in _RATE_KEYS:
        series.pop(key, None)
    series.update(_rate_series(series["pl/gap"], at_steps, rate_window))

    nonpositive = np.cumsum(~(new_gap > 0) & np.isfinite(new_gap))
    if nonpositive[-1] > 0 or "skipped/nonpositive_gap" in series:
        series["skipped/nonpositive_gap"] = _series(gap.steps, nonpositive.astype(np.float64))
    dropped = [key for key in _DEPENDENT_KEYS if series.pop(key, None) is not None]
    info.update(value=loss_star, recomputed=True, dropped_keys=dropped)
    if dropped:
        verb = "depends" if len(dropped) == 1 else "depend"
        info["note"] = (
            f"{', '.join(dropped)} {verb} on the logged L* through the probe's gap or μ and cannot be "
            "recomputed from the logged series; left out."
        )
    return replace(run, series=dict(sorted(series.items()))), info


def _describe(logged: Mapping[str, Any]) -> str:
    return "zero" if logged["strategy"] == "zero" else f"{logged['value']:.6g}"
