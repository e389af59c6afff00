"""``PLRatio``: the empirical PL ratio and its lower envelope as a torchmetrics ``Metric``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_lplr.functional.pl import envelope_min, envelope_quantile, pl_ratio

__all__ = ["PLRatio"]


class PLRatio(Metric):
    """Empirical PL ratios ``‖∇L‖² / (2(L − L*))`` with their running minimum and low quantile.

    Each ``update`` adds one ratio (a non-positive gap or a non-finite value is counted
    as skipped). Under DDP the ratios of all ranks are concatenated
    (``dist_reduce_fx="cat"``) and the skip counts summed, so ``compute`` returns the
    envelope over every rank's samples. Call ``update`` with the *global* loss (e.g.
    ``self.all_gather(loss).mean()``) and the gradient norm after DDP's all-reduce to
    get the ratio of the global objective.

    Args:
        loss_star: the optimal value ``L*`` (default 0, interpolating models).
        quantile: the robust low quantile of the envelope (default 5 %).
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> metric = PLRatio()
        >>> metric.update(grad_norm_sq=torch.tensor(4.0), loss=torch.tensor(1.0))
        >>> metric.update(grad_norm_sq=torch.tensor(1.0), loss=torch.tensor(1.0))
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'ratio': 0.5, 'envelope_min': 0.5, 'envelope_q05': 0.575, 'skipped': 0.0}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    ratios: list[Tensor]
    skipped: Tensor

    def __init__(self, loss_star: float = 0.0, quantile: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < quantile < 1:
            raise ValueError(f"quantile={quantile!r} must lie strictly between 0 and 1, e.g. 0.05.")
        self.loss_star = float(loss_star)
        self.quantile = quantile
        self.add_state("ratios", default=[], dist_reduce_fx="cat")
        self.add_state("skipped", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, grad_norm_sq: Tensor | float, loss: Tensor | float) -> None:
        """Add the ratio of one step: squared gradient norm and loss at the same parameters."""
        ratio = pl_ratio(float(grad_norm_sq), float(loss) - self.loss_star)
        if ratio != ratio:  # NaN: non-positive gap or non-finite input
            self.skipped += 1
            return
        self.ratios.append(torch.tensor([ratio], dtype=torch.float64, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        """``ratio`` (the last), ``envelope_min``, ``envelope_q05`` and ``skipped``, as float64 tensors."""
        values = self.ratios
        if isinstance(values, list):
            values = torch.cat(values) if values else torch.empty(0, dtype=torch.float64)
        flat = values.double().cpu().reshape(-1)
        nan = float("nan")
        out = {
            "ratio": flat[-1].item() if flat.numel() else nan,
            "envelope_min": envelope_min(flat) if flat.numel() else nan,
            "envelope_q05": envelope_quantile(flat, self.quantile) if flat.numel() else nan,
            "skipped": float(self.skipped),
        }
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
