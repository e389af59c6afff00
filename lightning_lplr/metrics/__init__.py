"""torchmetrics ``Metric`` wrappers of the PL and rate math, DDP-aware, for use inside a LightningModule."""

from lightning_lplr.metrics.linear_rate import LinearRate
from lightning_lplr.metrics.pl_ratio import PLRatio

__all__: list[str] = ["LinearRate", "PLRatio"]
