"""``LinearRateMonitor``: the fitted linear rate of the loss decay."""

from __future__ import annotations

from typing import Any

from lightning_lplr.callbacks._config import StepConfig, reject_ignored
from lightning_lplr.callbacks._journal import Journal
from lightning_lplr.callbacks._monitor import Monitor
from lightning_lplr.callbacks._step_parts import GapSeries, PLPart, RatePart
from lightning_lplr.reporting.keys import DEFAULT_PREFIX
from lightning_lplr.schedules import Schedule

__all__ = ["LinearRateMonitor"]


class LinearRateMonitor(Monitor):
    """Fit ``log(L_t − L*) ≈ a + b·t`` over a sliding window of steps: contraction, half-life, regime.

    No NTK is computed, so there is no ``μ_NTK`` and no curvature ``β``: the prediction of the
    theory (``rate/contraction_pred``) needs :class:`~lightning_lplr.LPLRMonitor`.

    Logged Metrics:
        ``pl/gap``, ``rate/slope``, ``rate/contraction``, ``rate/half_life``, ``rate/r2``,
        ``rate/regime`` (1 linear, 0 undetermined, −1 sublinear); ``skipped/nonfinite_loss``,
        ``skipped/nonpositive_gap``.

    Args:
        step_every, flush_every, loss_star, loss_star_margin, rate_window, rate_min_points, prefix:
            as for :class:`~lightning_lplr.LPLRMonitor`.
        **ignored: other arguments of :class:`~lightning_lplr.LPLRMonitor`, which this monitor
            ignores: a ``FutureWarning`` now, an error in the next release.

    Example:
        >>> LinearRateMonitor(rate_window=100).rate_window
        100
    """

    def __init__(
        self,
        *,
        step_every: int | Schedule | None = 1,
        flush_every: int = 50,
        loss_star: str | float = "zero",
        loss_star_margin: float = 1e-3,
        rate_window: int = 50,
        rate_min_points: int = 10,
        prefix: str = DEFAULT_PREFIX,
        **ignored: Any,
    ) -> None:
        reject_ignored(type(self).__name__, ignored)
        step = StepConfig.build(dict(locals()))
        self.loss_star, self.rate_window = step.loss_star, step.rate_window
        journal = Journal(type(self).__name__, prefix)
        self._assemble(
            prefix=prefix,
            step=step,
            ntk=None,
            gaps=GapSeries(step.loss_star, step.loss_star_margin, step.rate_window, journal),
            pl_part=PLPart(None, 0.05, journal, log=False),
            rate=RatePart(step.rate_window, step.rate_min_points, journal),
            journal=journal,
        )
