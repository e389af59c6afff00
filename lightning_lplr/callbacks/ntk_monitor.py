"""``NTKMonitor``: the NTK part of :class:`~lightning_lplr.LPLRMonitor` alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_lplr.callbacks._config import NTKConfig, check_loss_star, reject_ignored
from lightning_lplr.callbacks._journal import Journal
from lightning_lplr.callbacks._monitor import Monitor
from lightning_lplr.callbacks._ntk_part import NTKPart
from lightning_lplr.callbacks._step_parts import GapSeries
from lightning_lplr.functional._checks import check_float
from lightning_lplr.reporting.keys import DEFAULT_PREFIX
from lightning_lplr.schedules import Schedule

__all__ = ["NTKMonitor"]

_PROBE_LOSS_WINDOW = 50
"""Probe losses kept for the ``L*`` strategy of the probe PL ratio."""


class NTKMonitor(Monitor):
    """Sample the empirical NTK of a fixed probe: spectrum, drift, parameter drift, region estimate.

    The NTK part of :class:`~lightning_lplr.LPLRMonitor` on its own: same arguments for the
    kernel and the probe, no step-level quantities.

    Logged Metrics:
        For the full kernel ``ntk/lambda_min``, ``ntk/lambda_max``, ``ntk/condition_number``,
        ``ntk/trace``, ``ntk/effective_rank``, ``ntk/drift_op``, ``ntk/drift_fro``,
        ``ntk/lipschitz``, ``region/mu_cert``, ``region/inside``; for another kind its spectrum and
        drift under ``ntk_trace/``, ``ntk_pseudo/`` or ``ntk_loss_gram/``; ``param/drift``,
        ``lin/gap``, ``lin/gap_rel``, ``cost/ntk_seconds``; with ``loss_fn``: ``pl/ratio_probe``
        and, for the full kernel, ``pl/mu_ntk``, ``curv/beta``, ``ntk/eta_beta`` (and the
        ``lin/loss_*`` keys where the kernel prediction applies); ``skipped/ntk_error`` when a
        sample fails.

    Args:
        preset, ntk_every, probe, probe_size, probe_seed, input_fn, target_fn, output_fn, loss_fn,
        kind, implementation, chunk_size, max_memory_bytes, loss_star, loss_star_margin, prefix,
        log_histograms, norm_mode, full_batch, overhead, theta0: as for :class:`~lightning_lplr.LPLRMonitor`
            (``loss_star`` and its margin set the gap of the probe PL ratio).
        **ignored: other arguments of :class:`~lightning_lplr.LPLRMonitor`, which this monitor
            ignores: a ``FutureWarning`` now, an error in the next release.

    Example:
        >>> NTKMonitor(ntk_every=100, kind="trace", probe_size=16).kind
        'trace'
    """

    def __init__(
        self,
        *,
        preset: str = "default",
        ntk_every: int | Schedule | None = None,
        probe: Dataset | DataLoader | Tensor | tuple[Tensor, ...] | None = None,
        probe_size: int | None = None,
        probe_seed: int | None = None,
        input_fn: Callable[[Any], Tensor] | None = None,
        target_fn: Callable[[Any], Tensor | None] | None = None,
        output_fn: Callable[[Any], Tensor] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        kind: str | None = None,
        implementation: str = "structured",
        chunk_size: int | None = None,
        max_memory_bytes: int | None = None,
        loss_star: str | float = "zero",
        loss_star_margin: float = 1e-3,
        prefix: str = DEFAULT_PREFIX,
        log_histograms: bool = True,
        norm_mode: str = "probe",
        full_batch: bool | None = None,
        overhead: float | None = 0.05,
        theta0: str = "auto",
        **ignored: Any,
    ) -> None:
        reject_ignored(type(self).__name__, ignored)
        arguments = dict(locals())
        config = NTKConfig.build(arguments)
        self.preset, self.kind, self.probe_size = preset, config.kind, config.probe_size
        self.ntk_every, self.loss_fn = config.ntk_every, loss_fn
        journal = Journal(type(self).__name__, prefix)
        check_float("loss_star_margin", loss_star_margin, minimum=0.0)
        gaps = GapSeries(check_loss_star(loss_star), loss_star_margin, _PROBE_LOSS_WINDOW, journal)
        self._assemble(
            prefix=prefix,
            step=None,
            ntk=NTKPart(config, kernel=True, gaps=gaps, journal=journal),
            gaps=None,
            pl_part=None,
            rate=None,
            journal=journal,
            log_histograms=log_histograms,
        )

    def _state_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "probe_size": self.probe_size, **super()._state_config()}
