"""Summarise a run's logged LPLR metrics into the ``--json`` document (see :mod:`.schema`).

Every fit goes through :mod:`lightning_lplr.functional.rate`; this module only
selects the data:

* **Linear spans.** The logged ``rate/regime`` codes (1 linear, 0 undetermined,
  -1 sublinear) are read in step order; a span is a maximal run of consecutive
  samples coded linear, from the step of its first to the step of its last sample
  (a code at step ``t`` judges the fit window that ends at ``t``). Over each span
  ``pl/gap`` is re-fitted with :func:`~lightning_lplr.functional.rate.fit_linear_rate`
  on the gaps logged at steps ``start..end`` (their own, possibly irregular, steps),
  and compared with the mean logged ``rate/contraction_pred`` in the span.
* **Overall.** ``pl/gap`` over all its steps: :func:`fit_linear_rate` and
  :func:`~lightning_lplr.functional.rate.classify_regime`, so that a run without
  ``rate/regime`` still gets a verdict.
* **Statistics** of a key use its finite values only; "final" is the value at the
  last step with a finite value.
* **What is read, and L*.** The run's schema marker (``marker``), the ``L*`` its gaps were
  logged with or the post-hoc running minimum (``loss_star``, :mod:`.posthoc`), the verdict
  with ``μ`` and the contraction it implies, the stability of the step, the lazy regime and the
  flags (:mod:`.verdict`, thresholds in :mod:`.regimes`).

:func:`report_from_history` builds the same document from a monitor's in-memory history, so
the end-of-fit summary of a callback says what ``lightning-lplr report`` says.

Example:
    >>> find_linear_spans([0, 1, 2, 3, 4, 5], [1, 1, 0, 1, float("nan"), 1])
    [(0, 1, 2), (3, 3, 1), (5, 5, 1)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lightning_lplr.functional.rate import LinearRateFit, classify_regime, fit_linear_rate
from lightning_lplr.report._version import tool_version
from lightning_lplr.report.numbers import finite_number
from lightning_lplr.report.posthoc import (
    DEFAULT_MARGIN,
    DEFAULT_RATE_WINDOW,
    LOSS_STAR_CHOICES,
    apply_running_min,
    logged_loss_star,
)
from lightning_lplr.report.reader import Run, Series
from lightning_lplr.report.schema import SCHEMA_VERSION
from lightning_lplr.report.verdict import (
    lazy_section,
    marker_section,
    negative_lambda_flags,
    stability_section,
    verdict_section,
)
from lightning_lplr.reporting.keys import ALL_KEYS, DEFAULT_PREFIX, KIND_PREFIXES, REGIME_CODES

__all__ = [
    "build_report",
    "document_of",
    "find_linear_spans",
    "fit_to_dict",
    "missing_notes",
    "report_from_history",
    "resolve_loss_star",
    "series_stats",
    "summarize_run",
]

_LINEAR_CODE = REGIME_CODES["linear"]


def fit_to_dict(fit: LinearRateFit) -> dict[str, Any]:
    """A :class:`~lightning_lplr.functional.rate.LinearRateFit` as a JSON object (non-finite → ``None``).

    Example:
        >>> fit_to_dict(fit_linear_rate([1.0, 0.5, 0.25]))["contraction"]
        0.5
    """
    return {
        "slope": finite_number(fit.slope),
        "intercept": finite_number(fit.intercept),
        "contraction": finite_number(fit.contraction),
        "half_life": finite_number(fit.half_life),
        "r2": finite_number(fit.r2),
        "num_points": int(fit.num_points),
    }


def series_stats(series: Series) -> dict[str, Any]:
    """Count, first/last step, initial/final/min/max/mean of the finite values of a series.

    Example:
        >>> s = Series.from_pairs([(0, 3.0), (5, 1.0), (9, float("nan"))])
        >>> st = series_stats(s)
        >>> st["final"], st["min_step"], st["num_points"], st["num_finite"]
        (1.0, 5, 3, 2)
    """
    finite = series.finite()
    out: dict[str, Any] = {
        "num_points": len(series),
        "num_finite": len(finite),
        "first_step": int(series.steps[0]) if len(series) else None,
        "last_step": int(series.steps[-1]) if len(series) else None,
    }
    if len(finite):
        v, t = finite.values, finite.steps
        i_min, i_max = int(np.argmin(v)), int(np.argmax(v))
        out.update(
            initial=finite_number(v[0]),
            final=finite_number(v[-1]),
            min=finite_number(v[i_min]),
            min_step=int(t[i_min]),
            max=finite_number(v[i_max]),
            max_step=int(t[i_max]),
            mean=finite_number(np.mean(v)),
        )
    else:
        out.update(dict.fromkeys(("initial", "final", "min", "min_step", "max", "max_step", "mean")))
    return out


def find_linear_spans(
    steps: Sequence[int] | np.ndarray, codes: Sequence[float] | np.ndarray
) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive regime codes equal to the linear code (1).

    Args:
        steps: increasing steps of the regime samples.
        codes: the logged ``rate/regime`` values; a non-finite code ends a span.

    Returns:
        ``[(start_step, end_step, num_samples), ...]`` in step order.
    """
    spans: list[tuple[int, int, int]] = []
    start = end = None
    count = 0
    for step, code in zip(
        np.asarray(steps).tolist(), np.asarray(codes, dtype=np.float64).tolist(), strict=True
    ):
        if math.isfinite(code) and round(code) == _LINEAR_CODE:
            if start is None:
                start, count = int(step), 0
            end = int(step)
            count += 1
        elif start is not None:
            spans.append((start, end, count))
            start = None
    if start is not None:
        spans.append((start, end, count))
    return spans


def _mean_between(series: Series | None, start: int, end: int) -> float | None:
    if series is None:
        return None
    window = series.between(start, end).finite()
    return finite_number(np.mean(window.values)) if len(window) else None


def _linear_spans(run: Run) -> dict[str, Any]:
    regime = run.get("rate/regime")
    gap = run.get("pl/gap")
    out: dict[str, Any] = {
        "regime_logged": regime is not None,
        "num_regime_samples": 0,
        "num_linear_samples": 0,
        "fraction_linear": None,
        "spans": [],
    }
    if regime is None:
        return out
    codes = regime.finite()
    spans = find_linear_spans(codes.steps, codes.values)
    num_linear = sum(n for _, _, n in spans)
    out.update(
        num_regime_samples=len(codes),
        num_linear_samples=num_linear,
        fraction_linear=num_linear / len(codes) if len(codes) else None,
    )
    for start, end, count in spans:
        window = gap.between(start, end) if gap is not None else Series(np.zeros(0, np.int64), np.zeros(0))
        fit, source = fit_to_dict(fit_linear_rate(window.values, window.steps)), "pl/gap"
        if len(window) < MIN_GAP_POINTS:
            # pl/gap written sparsely (every log_every_n_steps steps): the monitor's own fits over
            # every step, logged as rate/*, say more than a line through a few points.
            logged = _logged_fit(run, start, end)
            if logged is not None:
                fit, source = logged, "rate/*"
        out["spans"].append(
            {
                "start_step": start,
                "end_step": end,
                "num_regime_samples": count,
                "fit": fit,
                "fit_source": source,
                "contraction_pred_mean": _mean_between(run.get("rate/contraction_pred"), start, end),
                "contraction_logged_mean": _mean_between(run.get("rate/contraction"), start, end),
            }
        )
    return out


MIN_GAP_POINTS = 10
"""Logged ``pl/gap`` points a span needs before the report fits them itself instead of reading ``rate/*``."""


def _logged_fit(run: Run, start: int, end: int) -> dict[str, Any] | None:
    """A span's rate from the monitor's logged window fits: median ``rate/slope`` and ``rate/r2`` in it."""
    slope = run.get("rate/slope")
    window = None if slope is None else slope.between(start, end).finite()
    if window is None or len(window) == 0:
        return None
    b = float(np.median(window.values))
    r2_series = run.get("rate/r2")
    r2 = None if r2_series is None else r2_series.between(start, end).finite()
    return {
        "slope": finite_number(b),
        "intercept": None,
        "contraction": finite_number(math.exp(b)),
        "half_life": finite_number(math.log(2) / abs(b)) if b != 0 else None,
        "r2": None if r2 is None or len(r2) == 0 else finite_number(float(np.median(r2.values))),
        "num_points": len(window),
    }


def _overall(run: Run) -> dict[str, Any]:
    gap = run.get("pl/gap")
    if gap is None:
        return {"regime": None, "fit": None}
    return {
        "regime": classify_regime(gap.values, gap.steps).value,
        "fit": fit_to_dict(fit_linear_rate(gap.values, gap.steps)),
    }


def _stat(stats: dict[str, dict[str, Any]], key: str, field: str) -> Any:
    entry = stats.get(key)
    return None if entry is None else entry[field]


def _region(run: Run, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    inside = run.get("region/inside")
    out: dict[str, Any] = {
        "num_samples": 0,
        "num_inside": 0,
        "inside_fraction": None,
        "first_outside_step": None,
        "mu_cert_min": _stat(stats, "region/mu_cert", "min"),
        "mu_cert_min_step": _stat(stats, "region/mu_cert", "min_step"),
        "mu_cert_final": _stat(stats, "region/mu_cert", "final"),
    }
    if inside is None:
        return out
    samples = inside.finite()
    is_inside = samples.values > 0.5
    outside_steps = samples.steps[~is_inside]
    out.update(
        num_samples=len(samples),
        num_inside=int(is_inside.sum()),
        inside_fraction=float(is_inside.mean()) if len(samples) else None,
        first_outside_step=int(outside_steps[0]) if outside_steps.size else None,
    )
    return out


def missing_notes(run_doc: dict[str, Any]) -> list[tuple[str, str]]:
    """``(section, sentence)`` for each thing a run summary lacks; sections ``rate pl ntk param region``.

    The same sentences fill the ``notes`` of the JSON document and the text report.

    Example:
        >>> doc = summarize_run(Run("r", (), ("csv",), {"pl/gap": Series.from_pairs([(0, 1.0)])}))
        >>> [section for section, _ in missing_notes(doc)]
        ['rate', 'pl', 'ntk', 'ntk', 'param', 'region']
    """
    keys = set(run_doc["keys"])
    series = run_doc["series"]
    notes: list[tuple[str, str]] = []

    def never_finite(key: str) -> bool:
        return key in series and series[key]["num_finite"] == 0

    if "pl/gap" not in keys:
        notes.append(("rate", "pl/gap was not logged, so no convergence rate can be fitted."))
    elif never_finite("pl/gap"):
        notes.append(("rate", "pl/gap was logged but never finite, so no convergence rate can be fitted."))
    if "rate/regime" not in keys:
        notes.append(("rate", "rate/regime was not logged, so the linear spans are unknown."))
    elif run_doc["linear_spans"]["num_regime_samples"] == 0:
        notes.append(("rate", "rate/regime was logged but never finite, so the linear spans are unknown."))
    if "pl/envelope_min" not in keys and "pl/envelope_q05" not in keys and "pl/mu_ntk" not in keys:
        notes.append(("pl", "No PL lower envelope was logged (pl/envelope_min, pl/envelope_q05, pl/mu_ntk)."))
    if "ntk/lambda_min" not in keys:
        notes.append(("ntk", "The NTK spectrum was not logged (ntk/lambda_min)."))
    elif never_finite("ntk/lambda_min"):
        notes.append(("ntk", "ntk/lambda_min was logged but never finite."))
    if "ntk/drift_op" not in keys:
        notes.append(("ntk", "The NTK drift was not logged (ntk/drift_op)."))
    if "param/drift" not in keys:
        notes.append(("param", "The parameter drift was not logged (param/drift)."))
    if "region/inside" not in keys and "region/mu_cert" not in keys:
        notes.append(("region", "The region estimate was not logged (region/inside, region/mu_cert)."))
    elif "region/inside" not in keys:
        notes.append(("region", "region/inside was not logged; only the certificate mu_cert is summarised."))
    return notes


def resolve_loss_star(
    run: Run,
    loss_star: str = "logged",
    *,
    margin: float = DEFAULT_MARGIN,
    rate_window: int = DEFAULT_RATE_WINDOW,
) -> tuple[Run, dict[str, Any]]:
    """The run with the ``L*`` the report uses, and the ``loss_star`` object of its summary.

    Args:
        run: the run as read.
        loss_star: ``"logged"`` (the ``L*`` the run was logged with) or ``"running_min"`` (the post-hoc
            running minimum of :func:`lightning_lplr.report.posthoc.apply_running_min`).
        margin: ``M`` of ``L* = min L − M·|min L|`` (``running_min`` only).
        rate_window: trailing gaps per recomputed rate fit (``running_min`` only).

    Returns:
        ``(run, loss_star_object)``; the run is unchanged for ``"logged"``.

    Raises:
        ValueError: an unknown ``loss_star`` (the choices are listed), a bad ``margin`` or ``rate_window``.

    Example:
        >>> run = Run("r", (), ("csv",), {"pl/gap": Series.from_pairs((t, 0.5 + 0.9**t) for t in range(99))})
        >>> _, info = resolve_loss_star(run, "running_min", margin=0.0)
        >>> info["strategy"], round(info["value"], 4)
        ('running_min', 0.5)
    """
    if loss_star == "logged":
        info = logged_loss_star(run.marker)
        logged = (
            info["strategy"]
            if info["value"] is None or info["strategy"] == "zero"
            else f"{info['value']:.6g}"
        )
        return run, {
            **info,
            "margin": None,
            "logged": logged,
            "recomputed": False,
            "dropped_keys": [],
            "note": None,
        }
    if loss_star == "running_min":
        return apply_running_min(run, run.marker, margin=margin, rate_window=rate_window)
    raise ValueError(f"loss_star={loss_star!r} is not one of {list(LOSS_STAR_CHOICES)}.")


def _ntk_section(run: Run, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Spectrum and drift of the kernel the run sampled: the full one (``ntk/*``), else its kind's."""
    kind = next(
        (k for k, head in KIND_PREFIXES.items() if head + "lambda_min" in run.series),
        None,
    )
    head = KIND_PREFIXES[kind or "full"]
    return {
        "kind": kind,
        "lambda_min_initial": _stat(stats, head + "lambda_min", "initial"),
        "lambda_min_final": _stat(stats, head + "lambda_min", "final"),
        "lambda_min_min": _stat(stats, head + "lambda_min", "min"),
        "lambda_min_max": _stat(stats, head + "lambda_min", "max"),
        "lambda_max_min": _stat(stats, head + "lambda_max", "min"),
        "lambda_max_max": _stat(stats, head + "lambda_max", "max"),
        "drift_op_final": _stat(stats, head + "drift_op", "final"),
        "drift_op_max": _stat(stats, head + "drift_op", "max"),
    }


def summarize_run(run: Run, loss_star: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object of one run (schema ``Run`` in :mod:`lightning_lplr.report.schema`).

    Args:
        run: the logged series of one run (after :func:`resolve_loss_star` when ``L*`` was changed).
        loss_star: its ``loss_star`` object (:func:`resolve_loss_star`); default: the logged ``L*``.

    Returns:
        A dict of plain Python values (JSON-ready; non-finite numbers as ``None``).
    """
    if loss_star is None:
        run, loss_star = resolve_loss_star(run)
    stats = {key: series_stats(series) for key, series in run.series.items()}
    steps = [int(s.steps[i]) for s in run.series.values() if len(s) for i in (0, -1)]
    doc: dict[str, Any] = {
        "name": run.name,
        "sources": list(run.sources),
        "formats": list(run.formats),
        "keys": sorted(run.series),
        "missing_keys": sorted(set(ALL_KEYS) - set(run.series)),
        "other_keys": list(run.other_keys),
        "first_step": min(steps) if steps else None,
        "last_step": max(steps) if steps else None,
        "series": stats,
        "linear_spans": _linear_spans(run),
        "overall": _overall(run),
        "pl": {
            "envelope_min_final": _stat(stats, "pl/envelope_min", "final"),
            "envelope_q05_final": _stat(stats, "pl/envelope_q05", "final"),
            "mu_ntk_min": _stat(stats, "pl/mu_ntk", "min"),
            "mu_ntk_max": _stat(stats, "pl/mu_ntk", "max"),
            "ratio_step_min": _stat(stats, "pl/ratio_step", "min"),
            "ratio_probe_min": _stat(stats, "pl/ratio_probe", "min"),
        },
        "ntk": _ntk_section(run, stats),
        "param": {
            "drift_final": _stat(stats, "param/drift", "final"),
            "drift_max": _stat(stats, "param/drift", "max"),
        },
        "region": _region(run, stats),
        "skipped": {
            key: entry["final"]
            for key, entry in stats.items()
            if key.startswith("skipped/") and entry["final"] not in (None, 0.0)
        },
        "notes": [],
    }
    lazy, lazy_flags = lazy_section(run)
    stability, stability_flags = stability_section(run, run.marker)
    doc.update(
        marker=marker_section(run.marker, run.marker_source),
        loss_star=dict(loss_star),
        verdict=verdict_section(run, doc, run.marker, loss_star),
        stability=stability,
        lazy=lazy,
        flags=stability_flags + negative_lambda_flags(run) + lazy_flags,
    )
    notes = [sentence for _, sentence in missing_notes(doc)]
    notes.extend(run.notes)
    if loss_star.get("note"):
        notes.append(loss_star["note"])
    doc["notes"] = notes
    return doc


def document_of(
    resolved: Sequence[tuple[Run, dict[str, Any]]], prefix: str = DEFAULT_PREFIX
) -> dict[str, Any]:
    """The ``--json`` document of runs already passed through :func:`resolve_loss_star`."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "lightning-lplr",
        "tool_version": tool_version(),
        "prefix": prefix,
        "runs": [summarize_run(run, info) for run, info in resolved],
    }


def build_report(
    runs: Sequence[Run],
    prefix: str = DEFAULT_PREFIX,
    *,
    loss_star: str = "logged",
    margin: float = DEFAULT_MARGIN,
    rate_window: int = DEFAULT_RATE_WINDOW,
) -> dict[str, Any]:
    """The whole ``--json`` document for ``runs`` (validated by :func:`.schema.validate_report`).

    Args:
        runs: the runs, as read by :func:`lightning_lplr.report.reader.load_runs`.
        prefix: the prefix their keys were read under.
        loss_star: ``"logged"`` or ``"running_min"`` (see :func:`resolve_loss_star`).
        margin: ``M`` of the post-hoc running minimum.
        rate_window: trailing gaps per recomputed rate fit.

    Returns:
        The document (schema :mod:`lightning_lplr.report.schema`).

    Example:
        >>> gap = Series.from_pairs((t, 2 * 0.9**t) for t in range(10))
        >>> doc = build_report([Run("demo", (), ("csv",), {"pl/gap": gap})])
        >>> doc["schema_version"], doc["runs"][0]["overall"]["regime"]
        ('1.1', 'linear')
        >>> round(doc["runs"][0]["overall"]["fit"]["contraction"], 12)
        0.9
    """
    resolved = [resolve_loss_star(run, loss_star, margin=margin, rate_window=rate_window) for run in runs]
    return document_of(resolved, prefix)


def report_from_history(
    history: Mapping[str, Sequence[tuple[int, float]]],
    marker: Mapping[str, Any] | None = None,
    *,
    name: str = "this run",
    prefix: str = DEFAULT_PREFIX,
    loss_star: str = "logged",
    margin: float = DEFAULT_MARGIN,
    rate_window: int = DEFAULT_RATE_WINDOW,
) -> dict[str, Any]:
    """The report document of a run held in memory, e.g. a monitor's ``history`` at the end of fit.

    This is ``lightning-lplr report`` without the files: the same verdicts, flags and numbers,
    rendered with :func:`lightning_lplr.report.render_text` or
    :func:`~lightning_lplr.report.render_markdown`. Keys outside the contract of
    :mod:`lightning_lplr.reporting.keys` (and the ``skipped/*`` counters) are left out.

    Args:
        history: key without prefix (``"pl/gap"``) → ``[(step, value), ...]`` in write order; a
            repeated step keeps its last value.
        marker: the run's schema marker (:func:`lightning_lplr.reporting.marker.make_marker`), or ``None``.
        name: the run's name in the report.
        prefix: the prefix the keys are logged under (reported in the document only).
        loss_star: ``"logged"`` or ``"running_min"`` (see :func:`resolve_loss_star`).
        margin: ``M`` of the post-hoc running minimum.
        rate_window: trailing gaps per recomputed rate fit.

    Returns:
        The document (schema :mod:`lightning_lplr.report.schema`), with one run whose ``formats`` is
        ``["history"]`` and whose marker source is ``"monitor"``.

    Example:
        >>> from lightning_lplr.reporting.marker import make_marker
        >>> history = {"pl/gap": [(t, 0.9**t) for t in range(60)], "pl/envelope_min": [(59, 0.2)]}
        >>> doc = report_from_history(history, make_marker(loss="mse_loss", loss_star="zero"))
        >>> doc["runs"][0]["verdict"]["pl_inequality_held"], doc["runs"][0]["marker"]["source"]
        (True, 'monitor')
    """
    from lightning_lplr.report.reader import is_contract_key

    series = {
        key: Series.from_pairs(pairs)
        for key, pairs in sorted(history.items())
        if is_contract_key(key) and pairs
    }
    run = Run(
        name=name,
        sources=(),
        formats=("history",),
        series=series,
        other_keys=tuple(sorted(k for k in history if not is_contract_key(k))),
        marker=dict(marker) if marker is not None else None,
        marker_source="monitor" if marker is not None else None,
    )
    return build_report([run], prefix, loss_star=loss_star, margin=margin, rate_window=rate_window)
