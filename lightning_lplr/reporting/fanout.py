"""Write one sample of metrics to every logger of a run, exactly once per step.

``pl_module.log(..., on_step=True)`` writes at ``log_every_n_steps`` and repeats
stale values; the monitors instead call ``logger.log_metrics(metrics, step=t)`` on
each logger in ``trainer.loggers`` (rank zero only) and put the same values into
``trainer.callback_metrics`` (via ``pl_module.log(..., logger=False)``) so that
``EarlyStopping`` and ``ModelCheckpoint`` can monitor them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning.pytorch as pl

__all__ = ["log_sample"]


def log_sample(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    metrics: Mapping[str, float],
    step: int,
    *,
    to_callback_metrics: bool = True,
) -> None:
    """Log ``metrics`` at ``step`` to all loggers (rank zero) and to ``callback_metrics`` (all ranks).

    Args:
        trainer: the running trainer.
        pl_module: the module being trained (its ``log`` feeds ``callback_metrics``).
        metrics: full key → float; non-finite values are written as they are (loggers
            accept NaN), so a reader sees that a quantity was undefined at that step.
        step: the optimizer step the values describe.
        to_callback_metrics: also expose the values in ``trainer.callback_metrics``;
            only possible from hooks where ``LightningModule.log`` is allowed.
    """
    if not metrics:
        return
    values = {k: float(v) for k, v in metrics.items()}
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
    if to_callback_metrics:
        for key, value in values.items():
            if math.isfinite(value):
                pl_module.log(key, value, logger=False, on_step=True, on_epoch=False, sync_dist=False)
