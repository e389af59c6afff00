"""The seven-panel figure of ``lightning-lplr report --plot FILE.png``.

Panels (runs overlaid, one colour per run, the run legend in a strip at the top; within a
panel the line style tells the keys apart, explained in a legend box below the panel, so no
legend covers data):

1. ``pl/gap`` on a log axis with the ``fit_linear_rate`` lines over each linear span;
2. PL ratios ``pl/ratio_step``, ``pl/ratio_probe`` with ``pl/envelope_min`` and ``pl/mu_ntk``;
3. NTK eigenvalues ``ntk/lambda_min`` and ``ntk/lambda_max`` on a log axis (a small ``λ_min``
   stays visible next to a large ``λ_max``); samples where ``λ_min ≤ 0`` (which a log axis cannot
   show) are marked on the bottom edge;
4. the lazy regime: ``ntk/drift_op`` and ``lin/gap_rel`` on a log axis with the thresholds of
   :mod:`lightning_lplr.report.regimes`;
5. the region certificate ``region/mu_cert``; the area between the certificate and zero is
   shaded where the certificate is negative (and only there);
6. the parameter drift ``param/drift``;
7. (full width) the step-size stability ``ntk/eta_beta`` with the stability threshold of each
   run's optimizer (none for adaptive optimizers).

No panel has a second y axis, so nothing depends on how a layout engine places twin axes.

A panel without data says so instead of failing. The layout is matplotlib's constrained layout,
so every title, tick and axis label lies inside the canvas. matplotlib is an optional
dependency (``pip install "lightning-lplr[plot]"``); it is imported when a plot is drawn,
through its Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_lplr.report.errors import EXIT_MISSING_DEPENDENCY, EXIT_OUTPUT, ReportError
from lightning_lplr.report.reader import Run, Series
from lightning_lplr.report.regimes import LIN_GAP_REL, NTK_DRIFT_OP

__all__ = ["DEFAULT_DPI", "DEFAULT_FIGSIZE", "PANELS", "RUN_COLORS", "draw_report", "plot_report"]

DEFAULT_FIGSIZE: tuple[float, float] = (12.0, 14.0)
"""Figure size in inches; at :data:`DEFAULT_DPI` the PNG is 1200 × 1400 pixels."""
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
PANELS: tuple[tuple[str, ...], ...] = (("gap", "pl"), ("ntk", "lazy"), ("region", "param"), ("stability",))
"""The panels by row (a row of one spans the width); each data axes carries the label ``"panel:<name>"``."""
_LEGEND_HEIGHT = 0.2
"""Height of the legend strip below each panel, relative to the panel."""


def import_matplotlib() -> tuple[Any, Any, Any]:
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


class _Legend:
    """Style entries of one panel, drawn in the legend strip below it."""

    def __init__(self, line2d: Any) -> None:
        self.line2d = line2d
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def add(self, label: str, **style: Any) -> None:
        if all(existing != label for existing, _ in self.entries):
            self.entries.append((label, style))

    def draw(self, lax: Any, ncol: int = 2) -> None:
        lax.axis("off")
        if not self.entries:
            return
        handles = [self.line2d([], [], **{"color": "0.2", **style}) for _, style in self.entries]
        labels = [label for label, _ in self.entries]
        lax.legend(
            handles,
            labels,
            loc="upper center",
            ncol=min(len(labels), ncol),
            fontsize=8,
            frameon=False,
            borderaxespad=0.0,
        )


def _panel_gap(ax: Any, runs: Sequence[Run], docs: Sequence[dict[str, Any]], legend: _Legend) -> None:
    ax.set_title("Suboptimality gap pl/gap (log) and linear fits")
    drawn = False
    for color, run, doc in zip(_colors(runs), runs, docs, strict=True):
        gap = _finite(run.get("pl/gap"), positive=True)
        if gap is None:
            continue
        drawn = True
        ax.plot(gap.steps, gap.values, color=color, lw=1.5)
        legend.add("pl/gap", lw=1.5)
        for span in doc["linear_spans"]["spans"]:
            fit = span["fit"]
            if fit["slope"] is None or fit["intercept"] is None:
                continue
            t = np.linspace(span["start_step"], span["end_step"], 50)
            ax.plot(t, np.exp(fit["intercept"] + fit["slope"] * t), color="0.1", lw=1.3, ls="--")
            legend.add("fit_linear_rate over a linear span", lw=1.3, ls="--")
    if not drawn:
        _no_data(ax, "pl/gap")
        return
    ax.set_yscale("log")
    ax.set_ylabel("L − L*")


def _panel_pl(ax: Any, runs: Sequence[Run], legend: _Legend) -> None:
    ax.set_title("PL ratio and lower envelope")
    styles = {
        "pl/ratio_step": {"lw": 0.8, "alpha": 0.6},
        "pl/ratio_probe": {"lw": 1.2, "ls": ":"},
        "pl/envelope_min": {"lw": 2.2},
        "pl/mu_ntk": {"lw": 1.5, "ls": "-."},
    }
    arrays = []
    for color, run in zip(_colors(runs), runs, strict=True):
        for key, style in styles.items():
            series = _finite(run.get(key))
            if series is None:
                continue
            arrays.append(series.values)
            ax.plot(series.steps, series.values, color=color, **style)
            legend.add(key, **style)
    if not arrays:
        _no_data(ax, "pl/ratio_step, pl/envelope_min")
        return
    _log_if_positive(ax, arrays)
    ax.set_ylabel("‖∇L‖² / (2(L − L*))")


def _panel_ntk(ax: Any, runs: Sequence[Run], legend: _Legend) -> None:
    ax.set_title("NTK eigenvalues of Θ = JJᵀ/m (log)")
    drawn = False
    nonpositive: list[tuple[str, np.ndarray]] = []
    for color, run in zip(_colors(runs), runs, strict=True):
        lo_all = _finite(run.get("ntk/lambda_min"))
        lo, hi = (
            _finite(run.get("ntk/lambda_min"), positive=True),
            _finite(run.get("ntk/lambda_max"), positive=True),
        )
        if lo is not None:
            ax.plot(lo.steps, lo.values, color=color, lw=1.8, marker=".", ms=4)
            legend.add("ntk/lambda_min", lw=1.8, marker=".", ms=4)
            drawn = True
        if hi is not None:
            ax.plot(hi.steps, hi.values, color=color, lw=1.2, ls="--")
            legend.add("ntk/lambda_max", lw=1.2, ls="--")
            drawn = True
        if lo_all is not None and np.any(lo_all.values <= 0):
            nonpositive.append((color, lo_all.steps[lo_all.values <= 0]))
    if not drawn and not nonpositive:
        _no_data(ax, "ntk/lambda_min, ntk/lambda_max")
        return
    if drawn:
        ax.set_yscale("log")
    for color, steps in nonpositive:
        # Blended transform: x in steps, y on the bottom edge of the axes (log cannot show λ ≤ 0).
        ax.plot(
            steps,
            np.full(steps.shape, 0.02),
            transform=ax.get_xaxis_transform(),
            ls="none",
            marker="v",
            ms=7,
            color=color,
            clip_on=False,
        )
        legend.add("ntk/lambda_min ≤ 0 (marked on the bottom edge)", ls="none", marker="v", ms=7)
    ax.set_ylabel("eigenvalue")


def _panel_lazy(ax: Any, runs: Sequence[Run], legend: _Legend) -> None:
    ax.set_title("Lazy regime: NTK drift and linearisation gap (log)")
    styles = {"ntk/drift_op": {"lw": 1.6}, "lin/gap_rel": {"lw": 1.6, "ls": "-."}}
    present: set[str] = set()
    for color, run in zip(_colors(runs), runs, strict=True):
        for key, style in styles.items():
            series = _finite(run.get(key), positive=True)
            if series is None:
                continue
            present.add(key)
            ax.plot(series.steps, series.values, color=color, marker=".", ms=3, **style)
            legend.add(key, **style)
    if not present:
        _no_data(ax, "ntk/drift_op, lin/gap_rel")
        return
    ax.set_yscale("log")
    ax.axhline(LIN_GAP_REL.lazy_below, color="0.35", lw=1.0, ls=":")
    legend.add(f"lazy below {LIN_GAP_REL.lazy_below:g} (both)", color="0.35", lw=1.0, ls=":")
    for thresholds, style in ((LIN_GAP_REL, {"ls": (0, (4, 2))}), (NTK_DRIFT_OP, {"ls": (0, (8, 3))})):
        if thresholds.key in present:
            ax.axhline(thresholds.left_from, color="0.35", lw=1.0, **style)
            legend.add(
                f"{thresholds.key}: left the lazy regime from {thresholds.left_from:g}", lw=1.0, **style
            )
    ax.set_ylabel("relative change")


def _panel_region(ax: Any, runs: Sequence[Run], legend: _Legend) -> None:
    ax.set_title("Region estimate μ_cert = λ_min(Θ_0) − L̂·‖θ_t − θ_0‖ (L̂ empirical)")
    drawn = shaded = False
    for color, run in zip(_colors(runs), runs, strict=True):
        cert = _finite(run.get("region/mu_cert"))
        if cert is None:
            continue
        drawn = True
        ax.plot(cert.steps, cert.values, color=color, lw=1.6, marker=".", ms=3)
        legend.add("region/mu_cert", lw=1.6)
        negative = cert.values < 0
        if np.any(negative):
            fill = ax.fill_between(
                cert.steps, cert.values, 0.0, where=negative, interpolate=True, color=color, alpha=0.2, lw=0
            )
            fill.set_gid("mu_cert_negative")
            shaded = True
    if not drawn:
        _no_data(ax, "region/mu_cert")
        return
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_ylabel("μ_cert")
    if shaded:
        legend.add("μ_cert < 0: the region is not certified", lw=6, alpha=0.25)


def _panel_param(ax: Any, runs: Sequence[Run], legend: _Legend) -> None:
    ax.set_title("Parameter drift ‖θ_t − θ_0‖")
    drawn = False
    for color, run in zip(_colors(runs), runs, strict=True):
        drift = _finite(run.get("param/drift"))
        if drift is not None:
            ax.plot(drift.steps, drift.values, color=color, lw=1.8)
            legend.add("param/drift", lw=1.8)
            drawn = True
    if not drawn:
        _no_data(ax, "param/drift")
        return
    ax.set_ylabel("‖θ_t − θ_0‖₂")


def _panel_stability(ax: Any, runs: Sequence[Run], docs: Sequence[dict[str, Any]], legend: _Legend) -> None:
    ax.set_title("Step-size stability η·β")
    drawn = False
    thresholds: set[float] = set()
    for color, run, doc in zip(_colors(runs), runs, docs, strict=True):
        series = _finite(run.get("ntk/eta_beta"))
        if series is None:
            continue
        drawn = True
        ax.plot(series.steps, series.values, color=color, lw=1.6, marker=".", ms=3)
        legend.add("ntk/eta_beta", lw=1.6)
        threshold = (doc.get("stability") or {}).get("threshold")
        if threshold is not None:
            thresholds.add(float(threshold))
    if not drawn:
        _no_data(ax, "ntk/eta_beta")
        return
    for threshold in sorted(thresholds):
        ax.axhline(threshold, color="0.35", lw=1.0, ls="--")
        legend.add(f"stability threshold {threshold:g}", color="0.35", lw=1.0, ls="--")
    if not thresholds:
        legend.add("no threshold: adaptive optimizer, other objective or no schema marker", ls="none")
    ax.set_ylabel("η·β")


def _colors(runs: Sequence[Run]) -> list[str]:
    return [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(runs))]


def draw_report(
    runs: Sequence[Run],
    documents: Sequence[dict[str, Any]],
    *,
    figsize: tuple[float, float] = DEFAULT_FIGSIZE,
    dpi: int = DEFAULT_DPI,
) -> Any:
    """The figure of ``runs`` (six panels, see the module docstring), not yet saved.

    Args:
        runs: the runs, overlaid in this order with colours :data:`RUN_COLORS`.
        documents: their summaries (:func:`.summary.summarize_run`), for the span fits and thresholds.
        figsize: inches.
        dpi: dots per inch.

    Returns:
        A ``matplotlib.figure.Figure`` with an Agg canvas; its data axes carry the labels
        ``"panel:<name>"`` of :data:`PANELS`.

    Raises:
        ReportError: matplotlib is not installed (``EXIT_MISSING_DEPENDENCY``).
    """
    Figure, FigureCanvasAgg, Line2D = import_matplotlib()
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ratios = [1.0, _LEGEND_HEIGHT] * len(PANELS)
    grid = fig.add_gridspec(2 * len(PANELS), 2, height_ratios=ratios)
    for row, names in enumerate(PANELS):
        for col, name in enumerate(names):
            cols = slice(col, col + 1) if len(names) > 1 else slice(0, 2)
            ax = fig.add_subplot(grid[2 * row, cols], label=f"panel:{name}")
            legend = _Legend(Line2D)
            if name == "gap":
                _panel_gap(ax, runs, documents, legend)
            elif name == "pl":
                _panel_pl(ax, runs, legend)
            elif name == "ntk":
                _panel_ntk(ax, runs, legend)
            elif name == "lazy":
                _panel_lazy(ax, runs, legend)
            elif name == "region":
                _panel_region(ax, runs, legend)
            elif name == "param":
                _panel_param(ax, runs, legend)
            else:
                _panel_stability(ax, runs, documents, legend)
            if ax.has_data():
                ax.set_xlabel("step")
            legend.draw(
                fig.add_subplot(grid[2 * row + 1, cols], label=f"legend:{name}"), 2 * (3 - len(names))
            )
    handles = [Line2D([], [], color=c, lw=3) for c in _colors(runs)]
    fig.legend(
        handles,
        [run.name for run in runs],
        loc="outside upper center",
        ncol=min(len(runs), 4),
        fontsize=9,
        frameon=False,
    )
    return fig


def plot_report(
    runs: Sequence[Run],
    documents: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    figsize: tuple[float, float] = DEFAULT_FIGSIZE,
    dpi: int = DEFAULT_DPI,
) -> None:
    """Draw :func:`draw_report` and save it to ``path`` (format from the suffix, e.g. PNG).

    Args:
        runs: the runs, overlaid in this order with colours :data:`RUN_COLORS`.
        documents: their summaries (:func:`.summary.summarize_run`).
        path: the output file.
        figsize: inches; the PNG has ``figsize × dpi`` pixels exactly.
        dpi: dots per inch.

    Raises:
        ReportError: matplotlib is not installed (``EXIT_MISSING_DEPENDENCY``) or the
            file cannot be written (``EXIT_OUTPUT``).
    """
    fig = draw_report(runs, documents, figsize=figsize, dpi=dpi)
    try:
        fig.savefig(path, dpi=dpi)
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: cannot write the plot ({error})", EXIT_OUTPUT) from None
