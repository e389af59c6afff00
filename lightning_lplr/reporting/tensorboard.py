"""TensorBoard extras: the "LPLR" custom-scalars layout, eigenvalue histograms, a text summary.

These apply to every ``TensorBoardLogger`` of a run and are skipped for other loggers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch import Tensor

__all__ = ["LAYOUT_CHARTS", "add_eigenvalue_histogram", "add_text_summary", "layout", "write_layout"]

LAYOUT_CHARTS: dict[str, tuple[str, ...]] = {
    "NTK spectrum (λ of Θ = JJᵀ/m)": ("ntk/lambda_min", "ntk/lambda_max"),
    "NTK drift ‖Θ_t−Θ_0‖/‖Θ_0‖": ("ntk/drift_op", "ntk/drift_fro"),
    "PL ratio and lower envelope": (
        "pl/ratio_step",
        "pl/ratio_probe",
        "pl/envelope_min",
        "pl/envelope_q05",
        "pl/mu_ntk",
    ),
    "Suboptimality gap": ("pl/gap",),
    "Linear rate: measured vs predicted contraction": ("rate/contraction", "rate/contraction_pred"),
    "Fit quality (R²) and regime": ("rate/r2", "rate/regime"),
    "Parameter drift ‖θ_t−θ_0‖": ("param/drift",),
    "Region certificate μ_cert = λ_min(Θ_0) − L̂·r_t": ("region/mu_cert",),
    "Inside the certified region (1 yes, 0 no)": ("region/inside",),
    "Stability η·β (diverges above 2)": ("ntk/eta_beta",),
}
"""Charts of the layout, each a group of contract keys (without prefix) drawn together."""


def layout(prefix: str) -> dict[str, dict[str, list]]:
    """The custom-scalars layout for keys under ``prefix``.

    Example:
        >>> lay = layout("lplr/")
        >>> lay["LPLR"]["Suboptimality gap"]
        ['Multiline', ['^lplr/pl/gap$']]
    """
    charts = {
        title: ["Multiline", [f"^{re.escape(prefix + key)}$" for key in keys]]
        for title, keys in LAYOUT_CHARTS.items()
    }
    return {"LPLR": charts}


def _tensorboards(loggers: Sequence[Logger]) -> list[TensorBoardLogger]:
    return [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]


def write_layout(loggers: Sequence[Logger], prefix: str) -> None:
    """Write the "LPLR" custom-scalars layout once to each TensorBoard logger."""
    for logger in _tensorboards(loggers):
        logger.experiment.add_custom_scalars(layout(prefix))


def add_eigenvalue_histogram(loggers: Sequence[Logger], tag: str, eigenvalues: Tensor, step: int) -> None:
    """A histogram of NTK eigenvalues at ``step`` in each TensorBoard logger (NaNs dropped)."""
    values = eigenvalues.detach().double().cpu()
    values = values[values.isfinite()]
    if values.numel() == 0:
        return
    for logger in _tensorboards(loggers):
        logger.experiment.add_histogram(tag, values, global_step=step)


def add_text_summary(loggers: Sequence[Logger], tag: str, markdown: str, step: int) -> None:
    """A markdown text summary at ``step`` in each TensorBoard logger; flushed so it survives the run."""
    for logger in _tensorboards(loggers):
        logger.experiment.add_text(tag, markdown, global_step=step)
        logger.experiment.flush()
