"""A ResNet-20 trained by mini-batch SGD with momentum on a CIFAR-10 subset.

The realistic counterpart of ``examples/mlp.py``: cross-entropy, BatchNorm (or GroupNorm), SGD with
momentum 0.9 and weight decay, mini-batches. The data come from local files only, in either
official format (``--data-dir``: the extracted ``cifar-10-binary.tar.gz`` or
``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html), or are generated
(``--synthetic``). Nothing downloads.

Run:
    python examples/cifar_resnet.py --data-dir data/cifar10            # 5000 train / 1000 val images
    python examples/cifar_resnet.py --data-dir data/cifar10 --classes 3 5 --train-size 2000
    python examples/cifar_resnet.py --synthetic --fast                 # seconds-long smoke run
    python examples/cifar_resnet.py --config examples/configs/cifar_resnet.yaml   # LightningCLI
    tensorboard --logdir runs/cifar_resnet
"""

import sys

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (examples/_bootstrap.py: the repository root on sys.path)

import argparse
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from examples._common import (
    RunResult,
    add_trainer_arguments,
    fit_and_report,
    lightning_noise_filtered,
    make_logger,
    parse_devices,
    wants_lightning_cli,
)
from examples.datasets import DatasetFormatError, DatasetNotFoundError, read_cifar10, subset, synthetic_cifar
from examples.models import resnet20
from lightning_lplr import LPLRMonitor

__all__ = ["CIFARDataModule", "CIFARResNet", "build_callbacks", "build_parser", "main"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Defaults, shared by the classes (and so by the LightningCLI) and by the argparse CLI.
TRAIN_SIZE, VAL_SIZE, BATCH_SIZE, EPOCHS = 5000, 1000, 128, 20
WIDTH, NORM, LR, MOMENTUM, WEIGHT_DECAY = 16, "batch", 0.05, 0.9, 5e-4
FAST = {"train_size": 128, "val_size": 32, "batch_size": 32, "epochs": 3, "width": 8}


def _to_float(images: np.ndarray) -> Tensor:
    """uint8 ``(N, 3, 32, 32)`` → float32, normalised with the CIFAR-10 channel statistics."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def random_crop_flip(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Standard CIFAR augmentation on a batch: zero-pad, random crop back, random horizontal flip.

    Args:
        x: Images ``(N, C, H, W)``.
        padding: Pixels of zero padding on every side before cropping.
        generator: Optional generator on ``x``'s device for the random offsets and flips.

    Returns:
        Augmented images of the same shape.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    kw = {"device": x.device, "generator": generator}
    top = torch.randint(0, 2 * padding + 1, (n,), **kw)
    left = torch.randint(0, 2 * padding + 1, (n,), **kw)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (N, C, H, W)
    flip = torch.rand(n, **kw) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out).contiguous()


class CIFARDataModule(pl.LightningDataModule):
    """A CIFAR-10 subset from local files (either official format) or synthetic look-alike data.

    Training images are a seeded subset of the training split; validation images a seeded subset
    of the test split. Images are held in memory as normalised float32 ``(N, 3, 32, 32)`` tensors.

    Args:
        data_dir: Directory of the extracted CIFAR-10 archive (binary or python version).
        synthetic: Use :func:`~examples.datasets.synthetic_cifar` instead of files.
        classes: CIFAR-10 labels to keep (relabelled ``0..k-1`` in this order); all ten when
            ``None``.
        train_size: Training images (``None``: all of the kept classes).
        val_size: Validation images (``None``: all of the kept classes in the test split).
        batch_size: Mini-batch size.
        format: ``"auto"``, ``"binary"`` or ``"python"`` (see :func:`~examples.datasets.read_cifar10`).
        augment: Random crop and horizontal flip on training batches.
        num_workers: DataLoader workers.
        seed: Seed of the subsets, the synthetic data and the shuffling.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        synthetic: bool = False,
        classes: list[int] | None = None,
        train_size: int | None = TRAIN_SIZE,
        val_size: int | None = VAL_SIZE,
        batch_size: int = BATCH_SIZE,
        format: Literal["auto", "binary", "python"] = "auto",
        augment: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not synthetic and not data_dir:
            raise ValueError(
                "CIFARDataModule: give data_dir (--data-dir DIR, the extracted CIFAR-10 archive from "
                "https://www.cs.toronto.edu/~kriz/cifar.html) or synthetic=True (--synthetic); "
                "nothing is downloaded."
            )
        if batch_size < 1:
            raise ValueError(f"CIFARDataModule: batch_size must be >= 1, got {batch_size}.")
        self.save_hyperparameters()
        self.data_dir, self.synthetic = data_dir, synthetic
        self.classes = None if classes is None else [int(c) for c in classes]
        self.train_size, self.val_size, self.batch_size = train_size, val_size, batch_size
        self.format, self.augment, self.num_workers, self.seed = format, augment, num_workers, seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes after the class selection."""
        return 10 if self.classes is None else len(self.classes)

    def _split(self, split: Literal["train", "test"], size: int | None) -> TensorDataset:
        if self.synthetic:
            count = size if size is not None else (50_000 if split == "train" else 10_000)
            values = self.classes if self.classes is not None else 10
            images, labels = synthetic_cifar(count, values, seed=self.seed, split=split)
            images, labels = subset(images, labels, classes=self.classes)
        else:
            assert self.data_dir is not None
            images, labels = read_cifar10(self.data_dir, split, format=self.format)
            images, labels = subset(images, labels, n=size, classes=self.classes, seed=self.seed)
        return TensorDataset(_to_float(images), torch.from_numpy(labels))

    def setup(self, stage: str) -> None:
        """Read (or generate) and normalise the subsets."""
        if self.train_set is None:
            self.train_set = self._split("train", self.train_size)
            self.val_set = self._split("test", self.val_size)

    def train_dataloader(self) -> DataLoader:
        """Shuffled mini-batches ``(images (B, 3, 32, 32), labels (B,))``."""
        assert self.train_set is not None, "call setup() first"
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation mini-batches in a fixed order."""
        assert self.val_set is not None, "call setup() first"
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the device when ``augment`` is on."""
        if self.augment and self.trainer is not None and self.trainer.training:
            x, y = batch
            return random_crop_flip(x), y
        return batch

    def probe(self, m: int) -> tuple[Tensor, Tensor]:
        """The first ``m`` training images and labels: a fixed probe set for NTK monitors."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        x, y = self.train_set.tensors
        return x[:m], y[:m]


class CIFARResNet(pl.LightningModule):
    """ResNet-20 with cross-entropy and SGD (momentum 0.9) on CIFAR-10.

    Logs ``train/loss`` and ``train/acc`` every ``log_every_n_steps`` steps, ``val/loss`` and
    ``val/acc`` per epoch, and keeps every step's training loss in :attr:`loss_history`.

    Args:
        num_classes: Output logits (the LightningCLI links it from the DataModule).
        norm: ``"batch"`` or ``"group"`` normalisation.
        width: Channels of the first stage (16: 0.27M parameters).
        lr: Learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
    """

    def __init__(
        self,
        num_classes: int = 10,
        norm: Literal["batch", "group"] = NORM,
        width: int = WIDTH,
        lr: float = LR,
        momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY,
    ) -> None:
        super().__init__()
        if not lr > 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"CIFARResNet: need lr > 0, momentum >= 0, weight_decay >= 0; "
                f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}."
            )
        self.save_hyperparameters()
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.net = resnet20(num_classes=num_classes, norm=norm, width=width)
        self.loss_history: list[float] = []

    loss_fn = staticmethod(F.cross_entropy)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, 3, 32, 32)``."""
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Mean cross-entropy of the mini-batch."""
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Record the step's loss in :attr:`loss_history`."""
        self.loss_history.append(float(outputs["loss"].detach()))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Cross-entropy and accuracy on the validation subset (epoch means)."""
        x, y = batch
        logits = self(x)
        metrics = {
            "val/loss": self.loss_fn(logits, y),
            "val/acc": (logits.argmax(dim=1) == y).float().mean(),
        }
        self.log_dict(metrics, prog_bar=True, batch_size=x.shape[0], sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD with momentum and weight decay (constant learning rate)."""
        return torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )


def build_callbacks(args: argparse.Namespace | None) -> list[Callback]:
    """The one place where this example's monitor callbacks are built.

    The default :class:`~lightning_lplr.LPLRMonitor` (full NTK of 32 training images on a
    log-spaced schedule, computed in eval mode so BatchNorm uses its running statistics)
    with cross-entropy as ``loss_fn``, so the full-batch probe PL ratio — the unbiased one
    under mini-batch SGD — and ``μ_NTK`` are logged. SGD has momentum here, so the
    predicted contraction (a gradient-descent formula) is not logged; the measured rate is.

    Args:
        args: The parsed argparse options, or ``None`` on the LightningCLI (``--config``) path.

    Returns:
        The callbacks to add to the ``Trainer``.
    """
    fast = args is not None and args.fast
    if fast:
        return [
            LPLRMonitor(
                preset="cheap",
                ntk_every=4,
                probe_size=8,
                loss_fn=F.cross_entropy,
                rate_min_points=5,
                overhead=None,  # a smoke run of a few steps: no budget would afford a sample
            )
        ]
    return [LPLRMonitor(loss_fn=F.cross_entropy)]


def build_parser() -> argparse.ArgumentParser:
    """The argparse CLI (``python examples/cifar_resnet.py --help``)."""
    p = argparse.ArgumentParser(
        prog="examples/cifar_resnet.py",
        description="ResNet-20 with mini-batch SGD (momentum 0.9) on a CIFAR-10 subset. "
        "Use --config FILE.yaml instead to drive the same classes with LightningCLI.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--data-dir", default=None, help="extracted CIFAR-10 archive (binary or python)")
    source.add_argument("--synthetic", action="store_true", help="generated images, no files needed")
    data.add_argument("--format", choices=["auto", "binary", "python"], default="auto")
    data.add_argument("--classes", type=int, nargs="+", default=None, help="labels to keep (default: all)")
    data.add_argument("--train-size", type=int, default=TRAIN_SIZE, help="0: all")
    data.add_argument("--val-size", type=int, default=VAL_SIZE, help="0: all")
    data.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    data.add_argument("--augment", action="store_true", help="random crop + horizontal flip")
    data.add_argument("--num-workers", type=int, default=0)
    model = p.add_argument_group("model and optimizer")
    model.add_argument("--width", type=int, default=WIDTH)
    model.add_argument("--norm", choices=["batch", "group"], default=NORM)
    model.add_argument("--lr", type=float, default=LR)
    model.add_argument("--momentum", type=float, default=MOMENTUM)
    model.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    model.add_argument("--epochs", type=int, default=EPOCHS)
    model.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fast", action="store_true", help=f"tiny smoke run (synthetic unless --data-dir): {FAST}"
    )
    p.add_argument("--summary-file", default=None, help="write a short text summary of the run here")
    add_trainer_arguments(p, log_dir="runs/cifar_resnet", name="resnet20")
    return p


class _CIFARCLI(LightningCLI):
    """LightningCLI whose model takes its class count from the DataModule."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def _run_lightning_cli(argv: Sequence[str]) -> RunResult:
    with lightning_noise_filtered():
        cli = _CIFARCLI(
            CIFARResNet,
            CIFARDataModule,
            args=list(argv),
            run=False,
            trainer_defaults={"callbacks": build_callbacks(None), "max_epochs": EPOCHS},
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
        )
    return fit_and_report(cli.trainer, cli.model, cli.datamodule)


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Train, log to TensorBoard, and return the run.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``). With ``--config`` the LightningCLI
            parses them, otherwise :func:`build_parser`.

    Returns:
        The :class:`~examples._common.RunResult` (trainer, model, datamodule, per-step losses, time).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_lightning_cli(argv):
        return _run_lightning_cli(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fast:  # the FAST sizes become the defaults; options given explicitly still win
        parser.set_defaults(**FAST)
        args = parser.parse_args(argv)
        args.synthetic = args.synthetic or not args.data_dir
    if not args.synthetic and not args.data_dir:
        parser.error(
            "give --data-dir DIR (the extracted CIFAR-10 archive, binary or python version, from "
            "https://www.cs.toronto.edu/~kriz/cifar.html) or --synthetic; nothing is downloaded"
        )
    pl.seed_everything(args.seed, verbose=False)
    datamodule = CIFARDataModule(
        data_dir=args.data_dir,
        synthetic=args.synthetic,
        classes=args.classes,
        train_size=args.train_size or None,
        val_size=args.val_size or None,
        batch_size=args.batch_size,
        format=args.format,
        augment=args.augment,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    model = CIFARResNet(
        num_classes=datamodule.num_classes,
        norm=args.norm,
        width=args.width,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=make_logger(args),
        callbacks=build_callbacks(args),
        accelerator=args.accelerator,
        devices=parse_devices(args.devices),
        strategy=args.strategy,
        log_every_n_steps=1 if args.fast else 10,
        enable_checkpointing=not args.fast,
        enable_progress_bar=args.progress_bar,
        enable_model_summary=not args.fast,
    )
    return fit_and_report(trainer, model, datamodule, args.summary_file)


if __name__ == "__main__":
    try:
        main()
    except (DatasetNotFoundError, DatasetFormatError) as err:
        sys.exit(f"examples/cifar_resnet.py: error: {err}")
