"""Plumbing shared by the example scripts: trainer arguments, the LightningCLI switch, run results."""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

__all__ = [
    "RunResult",
    "add_trainer_arguments",
    "finish_run",
    "fit_and_report",
    "lightning_noise_filtered",
    "log_dir_of",
    "lplr_report",
    "make_logger",
    "parse_devices",
    "timed_fit",
    "wants_lightning_cli",
    "write_summary",
]


@dataclass
class RunResult:
    """What an example's ``main`` returns.

    Attributes:
        trainer: The trainer after ``fit``.
        model: The trained LightningModule.
        datamodule: The DataModule.
        losses: Training loss at every optimizer step (before the step), as Python floats.
        seconds: Wall time of ``trainer.fit``.
        log_dir: Directory the logger wrote to (``None`` without a logger).
    """

    trainer: pl.Trainer
    model: pl.LightningModule
    datamodule: pl.LightningDataModule
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    log_dir: str | None = None
    report_text: str = ""
    report: dict[str, Any] | None = None


def wants_lightning_cli(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for the LightningCLI path (``--config``/``--print_config``) over argparse."""
    return any(a == "--config" or a.startswith(("--config=", "--print_config")) for a in argv)


def parse_devices(value: str) -> int | str | list[int]:
    """Parse ``--devices``: ``"auto"``, a count (``"2"``) or a list of indices (``"0,1"``)."""
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return int(value)


def add_trainer_arguments(parser: argparse.ArgumentParser, log_dir: str, name: str) -> None:
    """Add the trainer-level options both examples share."""
    group = parser.add_argument_group("trainer")
    group.add_argument("--log-dir", default=log_dir, help="TensorBoard save_dir")
    group.add_argument("--name", default=name, help="experiment name under the log dir")
    group.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    group.add_argument("--devices", default="1", help="device count, 'auto' or a list like '0,1'")
    group.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    group.add_argument(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show the progress bar (default: on)",
    )


def make_logger(args: argparse.Namespace) -> TensorBoardLogger:
    """TensorBoard logger under ``args.log_dir/args.name``."""
    return TensorBoardLogger(save_dir=args.log_dir, name=args.name, default_hp_metric=False)


@contextlib.contextmanager
def lightning_noise_filtered() -> Iterator[None]:
    """Silence Lightning's advice that does not apply to these in-memory examples."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
        yield


def timed_fit(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule) -> float:
    """Run ``trainer.fit`` and return its wall time in seconds."""
    start = time.perf_counter()
    with lightning_noise_filtered():
        trainer.fit(model, datamodule=datamodule)
    return time.perf_counter() - start


def log_dir_of(trainer: pl.Trainer) -> str | None:
    """The logger's directory, if the trainer has a logger."""
    logger: Any = trainer.logger
    return None if logger is None else str(Path(logger.log_dir))


def lplr_report(log_dir: str | None) -> tuple[str, dict[str, Any] | None]:
    """The LPLR findings of a finished run, read back from its TensorBoard event files.

    This is ``lightning-lplr report LOG_DIR`` as a function: the plain-text report and
    the JSON document (schema of :mod:`lightning_lplr.report.schema`).

    Args:
        log_dir: the run's logger directory (``None``: no logger, nothing to report).

    Returns:
        ``(text, document)``; ``("", None)`` without a log directory.
    """
    if log_dir is None:
        return "", None
    from lightning_lplr.report import build_report, load_runs, render_text

    document = build_report(load_runs([log_dir]))
    return render_text(document), document


def write_summary(path: str | Path, result: RunResult) -> Path:
    """Write a plain-text summary of a run: steps, first and last loss, time, and the LPLR report.

    Args:
        path: Destination file (parent directories are created).
        result: The run.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    losses = result.losses
    lines = [
        f"log_dir: {result.log_dir}",
        f"steps: {len(losses)}",
        f"loss_first: {losses[0]:.6g}" if losses else "loss_first: n/a",
        f"loss_last: {losses[-1]:.6g}" if losses else "loss_last: n/a",
        f"fit_seconds: {result.seconds:.2f}",
    ]
    if result.report_text:
        lines += ["", "LPLR report (lightning-lplr report LOG_DIR):", result.report_text.rstrip()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def finish_run(result: RunResult, summary_file: str | None = None) -> RunResult:
    """Read the run's LPLR report back from its event files, print it, write the summary file.

    Only rank zero reports (under DDP the other ranks return the result untouched).
    """
    if result.trainer.is_global_zero:
        result.report_text, result.report = lplr_report(result.log_dir)
        if result.report_text:
            print("\n" + "=" * 30 + " LPLR report " + "=" * 30)
            print(result.report_text.rstrip())
            print(f"\nCharts: tensorboard --logdir {Path(result.log_dir or '.').parent}")
        if summary_file:
            write_summary(summary_file, result)
    return result


def fit_and_report(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    summary_file: str | None = None,
) -> RunResult:
    """Fit, then :func:`finish_run`: the common ending of every example's ``main``."""
    seconds = timed_fit(trainer, model, datamodule)
    losses = list(getattr(model, "loss_history", []))
    result = RunResult(trainer, model, datamodule, losses, seconds, log_dir_of(trainer))
    return finish_run(result, summary_file)
