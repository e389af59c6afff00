"""The four-panel figure of ``lightning-lplr report --plot FILE.png``.

Panels (runs overlaid, one colour per run, the run legend in a strip at the top):

1. log suboptimality ``pl/gap`` with the ``fit_linear_rate`` lines over each linear span;
2. PL ratios ``pl/ratio_step``, ``pl/ratio_probe`` with ``pl/envelope_min`` and ``pl/mu_ntk``;
3. NTK ``ntk/lambda_min`` / ``ntk/lambda_max`` (shaded between) and ``ntk/drift_op`` (right axis);
4. ``param/drift`` with ``region/mu_cert`` (right axis); steps where ``region/inside`` is 0
   are shaded.

A panel without data says so instead of failing. matplotlib is an optional
dependency (``pip install "lightning-lplr[plot]"``); it is imported when a plot is
drawn, through its Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_lplr.report.errors import EXIT_MISSING_DEPENDENCY, EXIT_OUTPUT, ReportError
from lightning_lplr.report.reader import Run, Series

__all__ = ["DEFAULT_DPI", "DEFAULT_FIGSIZE", "RUN_COLORS", "plot_report"]

DEFAULT_FIGSIZE: tuple[float, float] = (12.0, 8.0)
"""Figure size in inches; at :data:`DEFAULT_DPI` the PNG is 1200 × 800 pixels."""
DEFAULT_DPI = 100
RUN_COLORS: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
"""Colour of the i-th run (cycled): matplotlib's ``tab10``."""


def _import_matplotlib() -> tuple[Any, Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise ReportError(
            "--plot needs matplotlib, which is not installed; install it with "
            'pip install "lightning-lplr[plot]" (or pip install matplotlib)',
            EXIT_MISSING_DEPENDENCY,
        ) from None
    return Figure, FigureCanvasAgg, Line2D


def _finite(series: Series | None, *, positive: bool = False) -> Series | None:
    if series is None:
        return None
    out = series.finite()
    if positive:
        keep = out.values > 0
        out = Series(out.steps[keep], out.values[keep])
    return out if len(out) else None


def _no_data(ax: Any, keys: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"no data\n({keys} not logged)",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color="0.4",
        fontsize=11,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _log_if_positive(ax: Any, arrays: list[np.ndarray]) -> None:
    values = np.concatenate(arrays) if arrays else np.zeros(0)
    if values.size and np.all(values > 0):
        ax.set_yscale("log")


def _style_legend(ax: Any, line2d: Any, entries: list[tuple[str, dict[str, Any]]]) -> None:
    if entries:
        handles = [line2d([], [], color="0.2", **style) for _, style in entries]
        ax.legend(handles, [label for label, _ in entries], loc="best", fontsize=8, framealpha=0.7)


def _panel_gap(ax: Any, runs: Sequence[Run], docs: Sequence[dict[str, Any]], line2d: Any) -> None:
    ax.set_title("Suboptimality gap pl/gap (log) and linear fits")
    drawn = fitted = False
    for color, run, doc in zip(_colors(runs), runs, docs, strict=True):
        gap = _finite(run.get("pl/gap"), positive=True)
        if gap is None:
            continue
        drawn = True
        ax.plot(gap.steps, gap.values, color=color, lw=1.5)
        for span in doc["linear_spans"]["spans"]:
            fit = span["fit"]
            if fit["slope"] is None or fit["intercept"] is None:
                continue
            t = np.linspace(span["start_step"], span["end_step"], 50)
            ax.plot(t, np.exp(fit["intercept"] + fit["slope"] * t), color="0.1", lw=1.3, ls="--")
            fitted = True
    if not drawn:
        _no_data(ax, "pl/gap")
        return
    ax.set_yscale("log")
    entries = [("gap", {"lw": 1.5})]
    if fitted:
        entries.append(("fit_linear_rate over a linear span", {"lw": 1.3, "ls": "--"}))
    _style_legend(ax, line2d, entries)


def _panel_pl(ax: Any, runs: Sequence[Run], line2d: Any) -> None:
    ax.set_title("PL ratio and lower envelope")
    styles = {
        "pl/ratio_step": {"lw": 0.8, "alpha": 0.6},
        "pl/ratio_probe": {"lw": 1.2, "ls": ":"},
        "pl/envelope_min": {"lw": 2.2},
        "pl/mu_ntk": {"lw": 1.5, "ls": "-."},
    }
    used: set[str] = set()
    arrays = []
    for color, run in zip(_colors(runs), runs, strict=True):
        for key, style in styles.items():
            series = _finite(run.get(key))
            if series is None:
                continue
            used.add(key)
            arrays.append(series.values)
            ax.plot(series.steps, series.values, color=color, **style)
    if not used:
        _no_data(ax, "pl/ratio_step, pl/envelope_min")
        return
    _log_if_positive(ax, arrays)
    _style_legend(ax, line2d, [(key, style) for key, style in styles.items() if key in used])


def _panel_ntk(ax: Any, runs: Sequence[Run], line2d: Any) -> None:
    ax.set_title("NTK eigenvalue range and drift (right axis)")
    used: list[tuple[str, dict[str, Any]]] = []
    twin = None
    arrays = []
    for color, run in zip(_colors(runs), runs, strict=True):
        lo, hi = _finite(run.get("ntk/lambda_min")), _finite(run.get("ntk/lambda_max"))
        for key, series, style in (
            ("ntk/lambda_min", lo, {"lw": 1.8}),
            ("ntk/lambda_max", hi, {"lw": 1.2, "ls": "--"}),
        ):
            if series is not None:
                ax.plot(series.steps, series.values, color=color, **style)
                arrays.append(series.values)
                if (key, style) not in used:
                    used.append((key, style))
        if lo is not None and hi is not None:
            common, i_lo, i_hi = np.intersect1d(lo.steps, hi.steps, return_indices=True)
            if common.size:
                ax.fill_between(common, lo.values[i_lo], hi.values[i_hi], color=color, alpha=0.12, lw=0)
        drift = _finite(run.get("ntk/drift_op"))
        if drift is not None:
            twin = twin or ax.twinx()
            style = {"lw": 1.2, "ls": ":"}
            twin.plot(drift.steps, drift.values, color=color, **style)
            if ("ntk/drift_op (right)", style) not in used:
                used.append(("ntk/drift_op (right)", style))
    if not used:
        _no_data(ax, "ntk/lambda_min, ntk/drift_op")
        return
    _log_if_positive(ax, arrays)
    if twin is not None:
        twin.set_ylabel("‖Θ_t − Θ_0‖₂ / ‖Θ_0‖₂")
    _style_legend(ax, line2d, used)


def _outside_intervals(inside: Series) -> list[tuple[float, float]]:
    """Merged step intervals ``[s_i, s_{i+1}]`` starting at samples with ``inside == 0``.

    The last sample's interval ends at its own step (half a sampling interval wide
    when it stands alone), so the shading never runs past the logged steps.
    """
    samples = inside.finite()
    if not len(samples):
        return []
    steps = samples.steps.astype(np.float64)
    half = 0.5 * float(np.median(np.diff(steps))) if steps.size > 1 else 0.5
    ends = np.append(steps[1:], steps[-1])
    intervals: list[tuple[float, float]] = []
    for start, end, value in zip(steps, ends, samples.values, strict=True):
        if value > 0.5:
            continue
        if intervals and intervals[-1][1] >= start:
            intervals[-1] = (intervals[-1][0], float(end))
        else:
            intervals.append((float(start), float(end)))
    return [(a, b) if b > a else (a - half, a + half) for a, b in intervals]


def _panel_region(ax: Any, runs: Sequence[Run], line2d: Any) -> None:
    ax.set_title("Parameter drift and region certificate μ_cert (right axis)")
    used: list[tuple[str, dict[str, Any]]] = []
    twin = None
    shaded = False
    for color, run in zip(_colors(runs), runs, strict=True):
        drift = _finite(run.get("param/drift"))
        if drift is not None:
            ax.plot(drift.steps, drift.values, color=color, lw=1.8)
            if not any(k == "param/drift" for k, _ in used):
                used.append(("param/drift", {"lw": 1.8}))
        cert = _finite(run.get("region/mu_cert"))
        if cert is not None:
            twin = twin or ax.twinx()
            twin.plot(cert.steps, cert.values, color=color, lw=1.2, ls="--")
            if not any(k.startswith("region/mu_cert") for k, _ in used):
                used.append(("region/mu_cert (right)", {"lw": 1.2, "ls": "--"}))
        inside = run.get("region/inside")
        if inside is not None:
            for start, end in _outside_intervals(inside):
                ax.axvspan(start, end, color=color, alpha=0.12, lw=0)
                shaded = True
    if not used and not shaded:
        _no_data(ax, "param/drift, region/mu_cert")
        return
    if twin is not None:
        twin.axhline(0.0, color="0.5", lw=0.8)
    if shaded:
        used.append(("outside the region (inside = 0)", {"lw": 6, "alpha": 0.15}))
    _style_legend(ax, line2d, used)


def _colors(runs: Sequence[Run]) -> list[str]:
    return [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(runs))]


def plot_report(
    runs: Sequence[Run],
    documents: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    figsize: tuple[float, float] = DEFAULT_FIGSIZE,
    dpi: int = DEFAULT_DPI,
) -> None:
    """Draw the four panels for ``runs`` and save them to ``path`` (format from the suffix, e.g. PNG).

    Args:
        runs: the runs, overlaid in this order with colours :data:`RUN_COLORS`.
        documents: their summaries (:func:`.summary.summarize_run`), for the span fits.
        path: the output file.
        figsize: inches; the PNG has ``figsize × dpi`` pixels exactly.
        dpi: dots per inch.

    Raises:
        ReportError: matplotlib is not installed (``EXIT_MISSING_DEPENDENCY``) or the
            file cannot be written (``EXIT_OUTPUT``).
    """
    Figure, FigureCanvasAgg, Line2D = _import_matplotlib()
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    fig.subplots_adjust(left=0.07, right=0.93, bottom=0.07, top=0.86, hspace=0.32, wspace=0.3)
    _panel_gap(axes[0, 0], runs, documents, Line2D)
    _panel_pl(axes[0, 1], runs, Line2D)
    _panel_ntk(axes[1, 0], runs, Line2D)
    _panel_region(axes[1, 1], runs, Line2D)
    for ax in axes[1]:
        ax.set_xlabel("step")
    handles = [Line2D([], [], color=c, lw=3) for c in _colors(runs)]
    fig.legend(
        handles,
        [run.name for run in runs],
        loc="upper center",
        ncol=min(len(runs), 4),
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    try:
        fig.savefig(path, dpi=dpi)
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: cannot write the plot ({error})", EXIT_OUTPUT) from None
