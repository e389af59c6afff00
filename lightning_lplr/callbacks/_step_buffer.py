"""The step buffer: what each optimizer step leaves for a monitor, kept on the device until written.

Per step a monitor keeps a :class:`StepRecord`: the detached loss and one gradient-norm tensor on
the device (no host synchronisation), the step size, the NTK/probe sample taken at that step.
Finished records wait in :attr:`StepBuffer.pending` until a flush turns a whole batch of them
into metrics at once (one stack, one collective, one host copy); the computed samples wait in
:attr:`StepBuffer.outbox` and are written a few per step, so TensorBoard's writer thread works
while the model computes instead of blocking it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_lplr.reporting.fanout import write_samples

__all__ = ["StepBuffer", "StepRecord", "grad_norm", "loss_of", "monitored_keys", "stack_float64"]


@dataclass
class StepRecord:
    """What one optimizer step left for the monitor, kept on the device until it is written."""

    step: int
    wants_step: bool
    probe: dict[str, float] = field(default_factory=dict)
    """Metrics of the NTK/probe sample taken at this step."""
    loss: Tensor | None = None
    """The training loss (summed over micro-batches), detached, on the device."""
    grad_norm_sq: Tensor | None = None
    """``‖∇L‖²`` of the gradients the optimizers are about to apply, 0-d, on the device."""
    optimizers: int = 0
    """How many optimizers stepped in this step (several under manual optimization)."""
    lr: Any = None
    """The first optimizer's step size at this step (a float, or a 0-d tensor copy)."""
    optimizer: Any = None
    """What the monitor needs to know of the first optimizer at this step (see the rate part)."""
    walltime: float = math.nan
    """When the step ended (``time.time()``), the wall time of its logged events."""


class StepBuffer:
    """The record in progress, finished records not yet computed, computed samples not yet written.

    Args:
        flush_every: steps per batch of computation (1 when another callback reads our keys).
    """

    def __init__(self, flush_every: int) -> None:
        self.flush_every = flush_every
        self.flush_size = flush_every
        self.current: StepRecord | None = None
        self.pending: list[StepRecord] = []
        self.outbox: deque[tuple[tuple[int, dict[str, float]], float]] = deque()

    def reset(self, flush_size: int) -> None:
        """Forget everything of an earlier (interrupted) fit; batches of ``flush_size`` steps."""
        self.current, self.pending = None, []
        self.outbox.clear()
        self.flush_size = flush_size

    def begin(self, step: int, wants_step: bool) -> StepRecord:
        """The record of ``step``, started if this is its first micro-batch."""
        if self.current is None or self.current.step != step:
            self.current = StepRecord(step, wants_step)
        return self.current

    def finish(self, record: StepRecord, walltime: float) -> None:
        """``record``'s step is over: keep it for the next flush if it holds anything."""
        self.current = None
        if record.wants_step or record.probe:
            record.walltime = walltime
            self.pending.append(record)

    def due(self, record: StepRecord) -> bool:
        """Whether to flush after ``record``: every ``flush_size`` steps, and at once after a probe sample."""
        if not self.pending:
            return False
        return bool(record.probe) or record.step - self.pending[0].step + 1 >= self.flush_size

    def take(self) -> list[StepRecord]:
        """The pending records, which are no longer pending."""
        records, self.pending = self.pending, []
        return records

    def queue(self, samples: Iterable[tuple[int, dict[str, float]]], walltimes: Iterable[float]) -> None:
        """Computed samples to write, with the wall time of their steps."""
        self.outbox.extend(zip(samples, walltimes, strict=True))

    def write(self, trainer: pl.Trainer, limit: int | None = None) -> None:
        """Write up to ``limit`` (all for ``None``) queued samples to the loggers, oldest first."""
        count = len(self.outbox) if limit is None else min(limit, len(self.outbox))
        if count:
            batch = [self.outbox.popleft() for _ in range(count)]
            write_samples(trainer, [sample for sample, _ in batch], walltimes=[w for _, w in batch])

    def pace(self, trainer: pl.Trainer) -> None:
        """Write a few queued samples: enough to empty the queue within one batch of steps."""
        if self.outbox:
            self.write(trainer, 1 + len(self.outbox) // self.flush_size)


def monitored_keys(trainer: pl.Trainer) -> set[str]:
    """Keys of ``trainer.callback_metrics`` that callbacks and LR schedulers monitor."""
    keys = {getattr(cb, "monitor", None) for cb in trainer.callbacks}
    keys.update(getattr(config, "monitor", None) for config in getattr(trainer, "lr_scheduler_configs", ()))
    return {k for k in keys if isinstance(k, str)}


def _norm_dtype(tensor: Tensor) -> torch.dtype:
    """float32 for half-precision gradients (their squares overflow), else their own dtype."""
    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype


def grad_norm(optimizer: torch.optim.Optimizer) -> Tensor | None:
    """``‖∇L‖`` of the gradients ``optimizer`` is about to apply, 0-d on the device (no host sync).

    ``None`` when no parameter has a gradient. Per-tensor norms by one ``_foreach_norm`` in
    the gradients' dtype (float32 for half precision, whose squares overflow), then the norm
    of those: no float64 copy of every gradient, which cost more than a small model's step.
    Gradients on several devices, of mixed dtypes or sparse take a per-tensor path.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return None
    first = grads[0]
    with torch.no_grad():
        try:
            norms = torch._foreach_norm(grads, 2, dtype=_norm_dtype(first))
            return torch.linalg.vector_norm(torch.stack(norms))
        except (RuntimeError, TypeError):  # several devices or dtypes, sparse; TypeError: torch < 2.4
            parts = [
                torch.linalg.vector_norm(g.to_dense(), dtype=_norm_dtype(g)).double().to(first.device)
                for g in grads
            ]
            return torch.linalg.vector_norm(torch.stack(parts))


def stack_float64(values: list[Tensor]) -> Tensor:
    """One float64 1-D tensor of 0-d tensors (possibly of different dtypes)."""
    if all(v.dtype == values[0].dtype for v in values):
        return torch.stack(values).to(torch.float64)
    return torch.stack([v.to(torch.float64) for v in values])


def loss_of(outputs: Any) -> Tensor | None:
    """The scalar loss ``training_step`` returned (a tensor or a dict's ``"loss"``), else ``None``."""
    if isinstance(outputs, Tensor):
        return outputs if outputs.numel() == 1 else None
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
        return loss if isinstance(loss, Tensor) and loss.numel() == 1 else None
    return None
