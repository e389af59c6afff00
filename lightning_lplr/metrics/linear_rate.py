"""``LinearRate``: the fitted linear rate of the loss decay as a torchmetrics ``Metric``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_lplr.functional.rate import classify_regime, fit_linear_rate
from lightning_lplr.reporting.keys import REGIME_CODES

__all__ = ["LinearRate"]


class LinearRate(Metric):
    """Least-squares fit of ``log(L_t − L*) ≈ a + b·t`` over the ``(step, loss)`` pairs seen.

    Under DDP the pairs of all ranks are concatenated; ``compute`` averages the losses
    logged at the same step (the global objective for equal per-rank batches) before
    fitting, so every rank reports the rate of the global loss.

    Args:
        loss_star: the optimal value ``L*`` (default 0).
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> metric = LinearRate()
        >>> for t in range(10):
        ...     metric.update(t, 0.5**t)
        >>> out = metric.compute()
        >>> round(float(out["contraction"]), 6), float(out["r2"]), float(out["regime"])
        (0.5, 1.0, 1.0)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    steps: list[Tensor]
    losses: list[Tensor]

    def __init__(self, loss_star: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss_star = float(loss_star)
        self.add_state("steps", default=[], dist_reduce_fx="cat")
        self.add_state("losses", default=[], dist_reduce_fx="cat")

    def update(self, step: int | Tensor, loss: float | Tensor) -> None:
        """Add the loss at optimizer step ``step``."""
        self.steps.append(torch.as_tensor([float(step)], dtype=torch.float64, device=self.device))
        self.losses.append(torch.as_tensor([float(loss)], dtype=torch.float64, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        """``slope``, ``contraction``, ``half_life``, ``r2``, ``regime`` (1/0/−1) and ``num_points``."""
        steps, losses = self.steps, self.losses
        if isinstance(steps, list):
            steps = torch.cat(steps) if steps else torch.empty(0, dtype=torch.float64)
            losses = torch.cat(losses) if losses else torch.empty(0, dtype=torch.float64)
        steps, losses = steps.double().cpu().reshape(-1), losses.double().cpu().reshape(-1)
        unique, inverse = torch.unique(steps, return_inverse=True)
        sums = torch.zeros_like(unique).index_add_(0, inverse, losses)
        counts = torch.zeros_like(unique).index_add_(0, inverse, torch.ones_like(losses))
        gaps = (sums / counts.clamp(min=1)) - self.loss_star
        fit = fit_linear_rate(gaps, unique)
        regime = classify_regime(gaps, unique) if unique.numel() else None
        out = {
            "slope": fit.slope,
            "contraction": fit.contraction,
            "half_life": fit.half_life,
            "r2": fit.r2,
            "regime": REGIME_CODES[regime.value] if regime is not None else 0.0,
            "num_points": float(fit.num_points),
        }
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
