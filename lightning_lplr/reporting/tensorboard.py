"""TensorBoard extras: the "LPLR" custom-scalars layout, eigenvalue histograms, a text summary.

These apply to every ``TensorBoardLogger`` of a run and are skipped for other loggers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "LAYOUT_CHARTS",
    "add_eigenvalue_histogram",
    "add_scalars",
    "add_text_summary",
    "layout",
    "write_layout",
]

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


def add_scalars(
    logger: Logger,
    samples: Sequence[tuple[int, Mapping[str, float]]],
    *,
    walltimes: Sequence[float] | None = None,
) -> bool:
    """Write each ``(step, {tag: value})`` as one TensorBoard event holding all its scalars.

    ``TensorBoardLogger.log_metrics`` writes one event per scalar; one event per step with
    several ``simple_value`` entries is what TensorBoard's own ``SummaryWriter.add_scalar``
    produces for each of them, read back identically, and costs a fraction. The logger's
    ``prefix`` is applied as ``log_metrics`` would. ``walltimes`` (one per sample, NaN for
    now) date the events.

    Returns:
        ``False`` (and writes nothing) when ``logger`` is not a ``TensorBoardLogger`` backed by
        ``torch.utils.tensorboard``; the caller then uses ``log_metrics``.

    Example:
        >>> import tempfile
        >>> logger = TensorBoardLogger(tempfile.mkdtemp())
        >>> add_scalars(logger, [(0, {"lplr/pl/gap": 1.0, "lplr/pl/ratio_step": 0.5})])
        True
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> add_scalars(CSVLogger(tempfile.mkdtemp()), [(0, {"lplr/pl/gap": 1.0})])
        False
    """
    if not isinstance(logger, TensorBoardLogger):
        return False
    writer = logger.experiment
    if not isinstance(writer, SummaryWriter):  # tensorboardX or another writer: use log_metrics
        return False
    file_writer = writer._get_file_writer()
    prefix = getattr(logger, "_prefix", "")
    join = getattr(logger, "LOGGER_JOIN_CHAR", "-")
    head = f"{prefix}{join}" if prefix else ""
    for k, (step, metrics) in enumerate(samples):
        values = [Summary.Value(tag=head + tag, simple_value=float(v)) for tag, v in metrics.items()]
        walltime = None if walltimes is None or not math.isfinite(walltimes[k]) else walltimes[k]
        file_writer.add_summary(Summary(value=values), int(step), walltime)
    return True
