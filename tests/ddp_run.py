"""A fit with the monitor at a given world size, writing the logged values to a CSV logger.

Used by tests/test_ddp.py both in-process (``ddp_spawn``) and as a subprocess script
(``ddp``, which re-launches this file in each worker), so that every strategy runs the
very same model, data, seed and global batch.

Usage: python tests/ddp_run.py OUT_DIR STRATEGY DEVICES [MAX_STEPS [CKPT_EVERY [RESUME_FROM]]]
"""

from __future__ import annotations

import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_lplr import LPLRMonitor

N, D, OUT, GLOBAL_BATCH = 32, 8, 3, 16
PROBE = 12  # not a multiple of 2: the shards differ in size


def squared_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((outputs - targets) ** 2).sum(dim=1).mean()


class Net(pl.LightningModule):
    def __init__(self, fail_at_step: int = -1, fail_rank: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, OUT))
        self.fail_at_step = fail_at_step
        self.fail_rank = fail_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            and self._trainer is not None
            and self.trainer.global_step == self.fail_at_step
            and self.global_rank == self.fail_rank
        ):
            raise RuntimeError(f"injected fault on rank {self.global_rank}")
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return squared_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CloseProcessGroup(pl.Callback):
    """Destroy the gloo process group in ``teardown``, the last hook of a worker's fit.

    Left to Lightning's atexit handler, the group's teardown during interpreter exit
    intermittently aborts a spawned worker ("terminate called without an active
    exception", SIGABRT) after its work is done, which fails the whole run.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    # float64: a 1-process and a 2-process run then agree far below the 1e-5 tolerance
    # (float32 reductions in another order move a small eigenvalue by ~1e-5 relative).
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(D, OUT, generator=g, dtype=torch.float64))
    return TensorDataset(x, y)


class Data(pl.LightningDataModule):
    """The same global batches at any world size: rank r of w takes samples r, r + w, … in order."""

    def __init__(self, devices: int) -> None:
        super().__init__()
        self.devices = devices

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        # Lightning's own distributed sampler shuffles the training set; this one does not.
        sampler = DistributedSampler(data(), num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data(), batch_size=GLOBAL_BATCH // world, sampler=sampler)


def run(
    out_dir: str,
    strategy: str,
    devices: int,
    max_steps: int = 8,
    ckpt_every: int = 0,
    resume_from: str | None = None,
    fail_at_step: int = -1,
) -> None:
    pl.seed_everything(0, verbose=False)
    model = Net(fail_at_step=fail_at_step).double()
    monitor = LPLRMonitor(
        overhead=None, ntk_every=2, probe_size=PROBE, loss_fn=squared_loss, rate_min_points=4, rate_window=10
    )
    callbacks: list[pl.Callback] = [monitor, CloseProcessGroup()]
    if ckpt_every:
        callbacks.append(ModelCheckpoint(dirpath=out_dir, every_n_train_steps=ckpt_every, save_top_k=-1))
    if strategy.startswith("ddp"):
        start = "spawn" if strategy == "ddp_spawn" else "popen"
        strat: str | DDPStrategy = DDPStrategy(start_method=start, timeout=timedelta(seconds=120))
    else:
        strat = "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strat,
        callbacks=callbacks,
        max_steps=max_steps,
        logger=CSVLogger(out_dir, name="csv", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(ckpt_every),
        use_distributed_sampler=False,
        log_every_n_steps=1,  # every step written: the tests compare each one
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=Data(devices), ckpt_path=resume_from)
    if strategy == "ddp" and torch.distributed.is_initialized():
        # Lightning leaves the process group up; tearing gloo down at interpreter exit instead
        # can abort the process ("terminate called without an active exception").
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    args = sys.argv[1:]
    run(
        args[0],
        args[1],
        int(args[2]),
        int(args[3]) if len(args) > 3 else 8,
        int(args[4]) if len(args) > 4 else 0,
        args[5] if len(args) > 5 and args[5] != "-" else None,
        int(args[6]) if len(args) > 6 else -1,
    )
    # The fit and its logs are complete: skip interpreter finalization, where a gloo teardown
    # can still abort a worker ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
