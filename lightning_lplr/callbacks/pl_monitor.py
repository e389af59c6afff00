"""``PLMonitor``: the empirical Polyak–Łojasiewicz ratio and its lower envelope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_lplr.callbacks._config import NTKConfig, StepConfig, reject_ignored
from lightning_lplr.callbacks._journal import Journal
from lightning_lplr.callbacks._monitor import Monitor
from lightning_lplr.callbacks._ntk_part import NTKPart
from lightning_lplr.callbacks._step_parts import GapSeries, PLPart
from lightning_lplr.reporting.keys import DEFAULT_PREFIX
from lightning_lplr.schedules import Schedule

__all__ = ["PLMonitor"]

_WINDOW = 50
"""Steps kept for the ``"fit"`` and ``"running_min"`` strategies of ``L*``."""


class PLMonitor(Monitor):
    """Step-level PL ratio ``‖∇L‖²/(2(L − L*))`` with its running-min and low-quantile envelope.

    No NTK is computed. The loss comes from ``training_step``'s output and the gradient norm
    from ``on_before_optimizer_step`` (unscaled under AMP, averaged under DDP), so no extra
    pass is made. With ``loss_fn`` it also evaluates the full-batch PL ratio on the probe at
    ``ntk_every`` (the unbiased one under mini-batch SGD).

    Logged Metrics:
        ``pl/gap``, ``pl/ratio_step``, ``pl/envelope_min``, ``pl/envelope_q05``; with
        ``loss_fn``: ``pl/ratio_probe``; ``skipped/nonfinite_loss``, ``skipped/nonpositive_gap``.

    Args:
        step_every, flush_every, loss_star, loss_star_margin, envelope_window, envelope_quantile,
        prefix: as for :class:`~lightning_lplr.LPLRMonitor`.
        loss_fn, probe, probe_size, probe_seed, input_fn, target_fn, output_fn: the probe PL
            ratio, as for :class:`~lightning_lplr.LPLRMonitor` (probe of 32 samples by default).
        ntk_every: when the probe PL ratio is evaluated (default: the ``default`` preset's schedule).
        **ignored: other arguments of :class:`~lightning_lplr.LPLRMonitor`, which this monitor
            ignores: a ``FutureWarning`` now, an error in the next release.

    Example:
        >>> PLMonitor(loss_star="fit").loss_star
        'fit'
    """

    def __init__(
        self,
        *,
        step_every: int | Schedule | None = 1,
        flush_every: int = 50,
        loss_star: str | float = "zero",
        loss_star_margin: float = 1e-3,
        envelope_window: int | None = None,
        envelope_quantile: float = 0.05,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        ntk_every: int | Schedule | None = None,
        probe: Dataset | DataLoader | Tensor | tuple[Tensor, ...] | None = None,
        probe_size: int | None = None,
        probe_seed: int | None = None,
        input_fn: Callable[[Any], Tensor] | None = None,
        target_fn: Callable[[Any], Tensor | None] | None = None,
        output_fn: Callable[[Any], Tensor] | None = None,
        prefix: str = DEFAULT_PREFIX,
        **ignored: Any,
    ) -> None:
        reject_ignored(type(self).__name__, ignored)
        arguments = dict(locals())
        step = StepConfig.build({**arguments, "rate_window": _WINDOW, "rate_min_points": 2})
        self.loss_fn, self.loss_star = loss_fn, step.loss_star
        journal = Journal(type(self).__name__, prefix)
        gaps = GapSeries(step.loss_star, step.loss_star_margin, _WINDOW, journal)
        ntk = None
        if loss_fn is not None:  # the probe PL ratio needs the probe, not the kernel
            ntk = NTKPart(NTKConfig.build(arguments), kernel=False, gaps=gaps, journal=journal)
        self._assemble(
            prefix=prefix,
            step=step,
            ntk=ntk,
            gaps=gaps,
            pl_part=PLPart(step.envelope_window, step.envelope_quantile, journal),
            rate=None,
            journal=journal,
        )
