"""Tiny LightningModules shared by the callback tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def squared_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1/(2n) Σ‖r‖²``, the loss of the full-batch examples."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim=1).mean()


class LinearRegression(pl.LightningModule):
    """``f(x) = W x`` (no bias) trained by full-batch gradient descent on ``1/(2n)‖Xw − y‖²``."""

    def __init__(self, d: int, lr: float, outputs: int = 1) -> None:
        super().__init__()
        self.lin = nn.Linear(d, outputs, bias=False)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return squared_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class SmallNet(pl.LightningModule):
    """An MLP (optionally with dropout / BatchNorm / a frozen first layer) on a regression task."""

    def __init__(
        self,
        d: int = 6,
        width: int = 16,
        outputs: int = 2,
        lr: float = 0.05,
        dropout: float = 0.0,
        batchnorm: bool = False,
        freeze_first: bool = False,
        momentum: float = 0.0,
        validate: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(d, width)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.Tanh())
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, outputs))
        self.net = nn.Sequential(*layers)
        if freeze_first:
            self.net[0].requires_grad_(False)
        self.lr = lr
        self.momentum = momentum
        self.validate = validate
        self.val_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = squared_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_seen += 1
        self.log("val_loss", squared_loss(self(x), y))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)


def regression_data(n: int = 32, d: int = 6, outputs: int = 2, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(d, outputs, generator=g, dtype=dtype)
    y = torch.tanh(x @ w)
    return x, y


def loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None, shuffle: bool = False
) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size or len(x), shuffle=shuffle)


def trainer_kwargs(**overrides):
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        deterministic=True,
        log_every_n_steps=1,  # the tests read every step back; Lightning's default writes every 50th
    )
    kwargs.update(overrides)
    return kwargs
