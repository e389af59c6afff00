"""TensorBoard extras: paired series in sub-runs, the custom-scalars layout, histograms, a text summary.

These apply to every ``TensorBoardLogger`` of a run and are skipped for other loggers.

**Paired series.** TensorBoard colours lines by *run*, not by tag, so two tags drawn in one chart
(``ntk/lambda_min`` and ``ntk/lambda_max``, say) come out in the same colour. Every series of a
:data:`PAIR_GROUPS` group is therefore also written (*mirrored*: the same steps, wall times and
float32 values) to a sub-run of its own, ``<log_dir>/lplr_pairs/<group>/<name>`` (``/`` in the
group's name written ``_``, ``<name>`` the key's last part: ``lplr_pairs/ntk_spectrum/lambda_min``)
under one tag shared by the group, ``<prefix>pairs/<group>`` (``lplr/pairs/ntk/spectrum``).
TensorBoard's Scalars tab then shows one chart per group with one colour per series, and the
multi-line charts of the custom-scalars layout point at those tags. TensorBoard gives the i-th run,
ordered by start time and then by name, the i-th colour of a palette of seven: a group's sub-runs
sit next to each other in that order (one directory per group, created together, group by group),
so the at most five series of a group get different colours. The keys themselves stay in the run
as they are; ``lightning-lplr report`` reads the run and ignores ``lplr_pairs`` directories. The
sub-run writers are opened when their first value arrives and flushed and closed with the end-of-fit
text summary (:func:`add_text_summary`), or at interpreter exit when a fit ends on an error.

**Tags.** The monitors' values are written under exactly the keys they log (``lplr/pl/gap``).
The logger's own ``prefix`` (``TensorBoardLogger(prefix=...)``) is not applied to them: Lightning
keeps it in a private attribute only; the monitors' ``prefix`` argument is how to namespace their
keys. The layout's regular expressions accept any leading text ending in ``-`` or ``/``, so a run
written with a logger prefix still fills the charts.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from lightning_lplr.report.regimes import LIN_GAP_REL
from lightning_lplr.reporting.keys import KIND_PREFIXES, PAIRS_DIR_NAME

__all__ = [
    "KIND_LAYOUT_CHARTS",
    "LAYOUT_CHARTS",
    "PAIRS_DIR_NAME",
    "PAIR_GROUPS",
    "PairMember",
    "add_eigenvalue_histogram",
    "add_pair_scalars",
    "add_scalars",
    "add_text_summary",
    "close_pair_writers",
    "layout",
    "pair_member",
    "pair_tag",
    "tag_regex",
    "write_layout",
]


def _kind_groups() -> dict[str, tuple[str, ...]]:
    groups: dict[str, tuple[str, ...]] = {}
    for head in KIND_PREFIXES.values():
        groups[f"{head}spectrum"] = (f"{head}lambda_min", f"{head}lambda_max")
        groups[f"{head}drift"] = (f"{head}drift_op", f"{head}drift_fro")
    return groups


PAIR_GROUPS: dict[str, tuple[str, ...]] = {
    **_kind_groups(),
    "pl/ratio": ("pl/ratio_step", "pl/ratio_probe", "pl/envelope_min", "pl/envelope_q05", "pl/mu_ntk"),
    "rate/contraction": ("rate/contraction", "rate/contraction_pred"),
    "lin/loss": ("lin/loss_pred", "lin/loss_probe"),
}
"""Groups of keys drawn together, each mirrored into sub-runs under the tag ``<prefix>pairs/<group>``.

Spectrum (``λ_min``, ``λ_max``) and drift (operator, Frobenius) of every kernel kind (``ntk/``,
``ntk_trace/``, ``ntk_pseudo/``, ``ntk_loss_gram/``); step and probe PL ratios with the lower
envelopes and ``μ_NTK``; measured and predicted contraction; kernel-predicted and probe loss.
"""

LAYOUT_CHARTS: dict[str, tuple[str, ...]] = {
    "NTK spectrum: λ_min, λ_max of Θ = JJᵀ/m (log scale to see λ_min)": PAIR_GROUPS["ntk/spectrum"],
    "NTK drift ‖Θ_t−Θ_0‖/‖Θ_0‖: operator, Frobenius": PAIR_GROUPS["ntk/drift"],
    "PL ratio (step, probe), lower envelope (min, 5 % quantile), μ_NTK": PAIR_GROUPS["pl/ratio"],
    "Suboptimality gap L − L* (log scale: a straight line is linear convergence)": ("pl/gap",),
    "Linear rate: measured vs predicted contraction per step": PAIR_GROUPS["rate/contraction"],
    (
        f"Linearisation gap ‖f_t−f_lin,t‖/‖f_t−f_0‖ (lazy < {LIN_GAP_REL.lazy_below:g}, "
        f"left ≥ {LIN_GAP_REL.left_from:g})"
    ): ("lin/gap_rel",),
    "Loss: predicted by the initial kernel vs on the probe": PAIR_GROUPS["lin/loss"],
    "Gauss–Newton sharpness β of the trained loss": ("curv/beta",),
    "Stability η·β (plain gradient descent is unstable above 2)": ("ntk/eta_beta",),
    "Fit quality R² of the linear rate": ("rate/r2",),
    "Regime (1 linear, 0 undetermined, −1 sublinear)": ("rate/regime",),
    "Parameter drift ‖θ_t−θ_0‖": ("param/drift",),
    "Region estimate μ_cert = λ_min(Θ_0) − L̂·r_t (L̂ empirical: not a certificate)": ("region/mu_cert",),
    "Inside the estimated region (1 yes, 0 no)": ("region/inside",),
}
"""Charts of the "LPLR" category, each a group of contract keys (without prefix) drawn together.

A chart whose keys are a :data:`PAIR_GROUPS` group shows that group's mirrored tag (one colour per
series); any other chart shows the keys themselves.
"""

KIND_LAYOUT_CHARTS: dict[str, tuple[str, ...]] = {
    f"{label}: {what}": PAIR_GROUPS[f"{KIND_PREFIXES[kind]}{group}"]
    for kind, label in (("pseudo", "pNTK"), ("trace", "Trace NTK"), ("loss_gram", "Loss-Gram NTK"))
    for group, what in (("spectrum", "λ_min, λ_max"), ("drift", "drift, operator and Frobenius"))
}
"""Charts of the "LPLR kernel kinds" category: the other kernel kinds' spectra and drifts."""

_CATEGORIES: tuple[tuple[str, dict[str, tuple[str, ...]]], ...] = (
    ("LPLR", LAYOUT_CHARTS),
    ("LPLR kernel kinds", KIND_LAYOUT_CHARTS),
)
_GROUP_OF_KEYS: dict[tuple[str, ...], str] = {keys: group for group, keys in PAIR_GROUPS.items()}
_MEMBERS: tuple[tuple[str, str, tuple[int, int]], ...] = tuple(
    sorted(
        (
            (key, group, (g, k))
            for g, (group, keys) in enumerate(PAIR_GROUPS.items())
            for k, key in enumerate(keys)
        ),
        key=lambda item: -len(item[0]),
    )
)


class PairMember(NamedTuple):
    """Where a logged tag of a :data:`PAIR_GROUPS` group is mirrored."""

    tag: str
    """The tag shared by the group's sub-runs, ``<prefix>pairs/<group>``."""
    run: str
    """The sub-run, relative to the run's ``lplr_pairs`` directory: ``<group with _ for />/<name>``."""
    order: tuple[int, int]
    """(group, member) position in :data:`PAIR_GROUPS`: the order in which sub-runs are created."""


def pair_tag(group: str, prefix: str) -> str:
    """The tag, shared by the sub-runs, under which ``group``'s series are mirrored.

    Example:
        >>> pair_tag("ntk/spectrum", "lplr/")
        'lplr/pairs/ntk/spectrum'
    """
    return f"{prefix}pairs/{group}"


@functools.lru_cache(maxsize=4096)
def pair_member(tag: str) -> PairMember | None:
    """Shared tag and sub-run of a logged tag that belongs to a :data:`PAIR_GROUPS` group.

    The monitor's prefix is whatever precedes the contract key in ``tag``.

    Returns:
        ``None`` for a tag of no group.

    Example:
        >>> pair_member("lplr/ntk/lambda_min")[:2]
        ('lplr/pairs/ntk/spectrum', 'ntk_spectrum/lambda_min')
        >>> pair_member("probe_ntk_pseudo/lambda_max")[:2]
        ('probe_pairs/ntk_pseudo/spectrum', 'ntk_pseudo_spectrum/lambda_max')
        >>> pair_member("lplr/pl/gap") is None
        True
    """
    for key, group, order in _MEMBERS:
        if tag.endswith(key):
            prefix = tag[: len(tag) - len(key)]
            run = group.replace("/", "_") + "/" + key.rsplit("/", 1)[1]
            return PairMember(pair_tag(group, prefix), run, order)
    return None


def tag_regex(tag: str) -> str:
    """A regular expression (matched from the start) for ``tag`` after any ``…-`` or ``…/`` prefix.

    Example:
        >>> rx = re.compile(tag_regex("lplr/pl/gap"))
        >>> [bool(rx.match(t)) for t in ("lplr/pl/gap", "train-lplr/pl/gap", "lplr/pl/gap_x", "xlplr/pl/gap")]
        [True, True, False, False]
    """
    return f"(?:.*[-/])?{re.escape(tag)}$"


def layout(prefix: str) -> dict[str, dict[str, list]]:
    """The custom-scalars layout for keys under ``prefix``: categories of multi-line charts.

    Example:
        >>> lay = layout("lplr/")
        >>> lay["LPLR"]["Parameter drift ‖θ_t−θ_0‖"]
        ['Multiline', ['(?:.*[-/])?lplr/param/drift$']]
        >>> lay["LPLR"]["Linear rate: measured vs predicted contraction per step"]
        ['Multiline', ['(?:.*[-/])?lplr/pairs/rate/contraction$']]
    """
    out: dict[str, dict[str, list]] = {}
    for category, charts in _CATEGORIES:
        out[category] = {}
        for title, keys in charts.items():
            group = _GROUP_OF_KEYS.get(keys)
            tags = [pair_tag(group, prefix)] if group is not None else [prefix + key for key in keys]
            out[category][title] = ["Multiline", [tag_regex(tag) for tag in tags]]
    return out


def _tensorboards(loggers: Sequence[Logger]) -> list[TensorBoardLogger]:
    return [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]


def write_layout(loggers: Sequence[Logger], prefix: str) -> None:
    """Write the custom-scalars layout once to each TensorBoard logger."""
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
    """A markdown text summary at ``step`` in each TensorBoard logger; flushed so it survives the run.

    The end of a fit: the paired sub-runs of these loggers are flushed and closed too
    (:func:`close_pair_writers`); a later write opens them again.
    """
    for logger in _tensorboards(loggers):
        logger.experiment.add_text(tag, markdown, global_step=step)
        logger.experiment.flush()
    close_pair_writers(loggers)


def _walltime(walltimes: Sequence[float] | None, k: int) -> float | None:
    return None if walltimes is None or not math.isfinite(walltimes[k]) else walltimes[k]


def add_scalars(
    logger: Logger,
    samples: Sequence[tuple[int, Mapping[str, float]]],
    *,
    walltimes: Sequence[float] | None = None,
) -> bool:
    """Write each ``(step, {tag: value})`` as one TensorBoard event holding all its scalars.

    ``TensorBoardLogger.log_metrics`` writes one event per scalar; one event per step with
    several ``simple_value`` entries is what TensorBoard's own ``SummaryWriter.add_scalar``
    produces for each of them, read back identically, and costs a fraction. It goes through the
    writer's public ``file_writer``; when the writer was closed (``file_writer`` is ``None``, e.g.
    after ``logger.finalize``) each value goes through ``SummaryWriter.add_scalar``, which opens it
    again. Tags are written as given (see the module docstring on the logger's ``prefix``).
    ``walltimes`` (one per sample, NaN for now) date the events.

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
    for k, (step, metrics) in enumerate(samples):
        walltime = _walltime(walltimes, k)
        file_writer = writer.file_writer
        if file_writer is None:
            for tag, value in metrics.items():
                writer.add_scalar(tag, float(value), int(step), walltime=walltime)
            continue
        values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in metrics.items()]
        file_writer.add_summary(Summary(value=values), int(step), walltime)
    return True


_PAIR_WRITERS: dict[str, SummaryWriter] = {}
"""Open sub-run writers by directory (rank zero only: nothing else writes)."""


def _pair_writer(logger: TensorBoardLogger, root: str, run: str) -> SummaryWriter:
    directory = os.path.join(root, *run.split("/"))
    writer = _PAIR_WRITERS.get(directory)
    if writer is None:
        main = logger.experiment
        # The run's own queue and flush interval; defaults for a writer that is not torch's.
        queue = getattr(main, "max_queue", 10) if isinstance(main, SummaryWriter) else 10
        secs = getattr(main, "flush_secs", 120) if isinstance(main, SummaryWriter) else 120
        writer = SummaryWriter(log_dir=directory, max_queue=queue, flush_secs=secs)
        _PAIR_WRITERS[directory] = writer
    return writer


def add_pair_scalars(
    logger: Logger,
    samples: Sequence[tuple[int, Mapping[str, float]]],
    *,
    walltimes: Sequence[float] | None = None,
) -> int:
    """Mirror the :data:`PAIR_GROUPS` series of ``samples`` into their sub-runs of ``logger``'s run.

    Each value of a group's key is written, at its step and wall time, to its sub-run
    ``<log_dir>/lplr_pairs/<group>/<name>`` under the group's shared tag (:func:`pair_member`);
    the values of one step in one sub-run form one event. Sub-run writers are opened on first use,
    group by group in the order of :data:`PAIR_GROUPS`.

    Args:
        logger: any logger; only a ``TensorBoardLogger`` is written to.
        samples: ``(step, {tag: value})`` as the monitors write them.
        walltimes: one per sample (NaN for now), or ``None``.

    Returns:
        The number of events written (0 for other loggers or samples without a paired key).

    Example:
        >>> import tempfile
        >>> logger = TensorBoardLogger(tempfile.mkdtemp(), name="run")
        >>> add_pair_scalars(logger, [(0, {"lplr/ntk/lambda_min": 0.1, "lplr/ntk/lambda_max": 2.0})])
        2
        >>> sorted(os.listdir(os.path.join(logger.log_dir, PAIRS_DIR_NAME, "ntk_spectrum")))
        ['lambda_max', 'lambda_min']
        >>> close_pair_writers([logger])
    """
    if not isinstance(logger, TensorBoardLogger):
        return 0
    events = 0
    root = ""
    for k, (step, metrics) in enumerate(samples):
        by_run: dict[str, tuple[tuple[int, int], list[Summary.Value]]] = {}
        for tag, value in metrics.items():
            member = pair_member(tag)
            if member is not None:
                _, values = by_run.setdefault(member.run, (member.order, []))
                values.append(Summary.Value(tag=member.tag, simple_value=float(value)))
        if not by_run:
            continue
        root = root or os.path.join(logger.log_dir, PAIRS_DIR_NAME)
        walltime = _walltime(walltimes, k)
        for run, (_, values) in sorted(by_run.items(), key=lambda item: item[1][0]):
            _pair_writer(logger, root, run).file_writer.add_summary(
                Summary(value=values), int(step), walltime
            )
            events += 1
    return events


def close_pair_writers(loggers: Sequence[Logger] | None = None) -> None:
    """Flush and close the open sub-run writers of ``loggers`` (every one for ``None``).

    A later :func:`add_pair_scalars` opens them again (a new event file in the same sub-run).

    Args:
        loggers: the loggers whose sub-runs to close (others are skipped); ``None`` for all
            (what runs at interpreter exit).

    Example:
        >>> close_pair_writers([])
    """
    if loggers is None:
        directories = list(_PAIR_WRITERS)
    else:
        roots = [os.path.join(lg.log_dir, PAIRS_DIR_NAME) + os.sep for lg in _tensorboards(loggers)]
        directories = [d for d in _PAIR_WRITERS if any(d.startswith(root) for root in roots)]
    for directory in directories:
        _PAIR_WRITERS.pop(directory).close()


atexit.register(close_pair_writers)
