"""When the theory's prediction applies: the optimizer, clipping, full batches, probe and loss checks.

``rate/contraction_pred = 1 − 2ημ(1 − ηβ/2)`` is the per-step contraction that gradient descent
on a ``β``-smooth loss satisfying a PL inequality with constant ``μ`` guarantees. It is logged only
when every condition of that theorem holds at the step (:func:`contraction_reason` returns the
first that fails, counted under ``skipped/contraction_pred_<reason>``):

* one optimizer, plain SGD: no momentum, Nesterov or weight decay, one learning rate for all
  parameter groups;
* no gradient clipping active at that step (clipping by value, or an overridden
  ``configure_gradient_clipping``, count as always active; clipping by norm is active when the
  gradient norm, read before Lightning clips, exceeds ``gradient_clip_val``);
* every optimizer step sees the whole training set (one step per epoch, a sampler that yields
  each index once; ``full_batch=`` overrides the detection);
* the probe is the whole training set, ``loss_fn`` is given and is the training objective (its
  value on the probe equals the step's training loss within 1e-4 relative);
* ``μ = μ_NTK`` of the full kernel is known, ``η < 2/β`` and ``μ ≤ β``.

Then ``ρ_pred ∈ [1 − μ/β, 1)``: nothing is clamped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from lightning_lplr.functional.rate import predicted_contraction
from lightning_lplr.reporting.marker import make_marker

__all__ = [
    "LOSS_MATCH_RTOL",
    "Predictor",
    "RunConditions",
    "RunSetup",
    "contraction_reason",
    "loss_pred_reason",
    "optimizer_info",
    "run_marker",
]

LOSS_MATCH_RTOL = 1e-4
"""``loss_fn`` on the probe and the step's training loss agree within this relative tolerance."""


def optimizer_info(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What the conditions need of an optimizer: its class, momentum, weight decay, learning rates."""
    groups = optimizer.param_groups
    lrs = {float(g.get("lr", math.nan)) for g in groups}
    momentum = float(groups[0].get("momentum", 0.0) or 0.0) if groups else 0.0
    return {
        "name": type(optimizer).__name__,
        "sgd": type(optimizer) is torch.optim.SGD,
        "momentum": momentum,
        "nesterov": any(bool(g.get("nesterov", False)) for g in groups),
        "weight_decay": any(float(g.get("weight_decay", 0.0) or 0.0) != 0.0 for g in groups),
        "several_lrs": len(lrs) > 1,
    }


def _full_batch(trainer: pl.Trainer) -> bool:
    """Whether every optimizer step sees the whole training set exactly once (see the module docstring)."""
    loader = trainer.train_dataloader
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if len(loader) == 1 else None
    if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__len__"):
        return False
    steps_per_epoch = math.ceil(trainer.num_training_batches / max(trainer.accumulate_grad_batches, 1))
    if steps_per_epoch != 1:
        return False
    sampler = loader.sampler
    n = len(loader.dataset)  # type: ignore[arg-type]
    if isinstance(sampler, DistributedSampler):
        once = n % sampler.num_replicas == 0  # otherwise it pads with repeated samples or drops some
    elif isinstance(sampler, RandomSampler):
        once = not sampler.replacement and sampler.num_samples == n
    else:
        once = isinstance(sampler, SequentialSampler)
    drawn = len(loader.batch_sampler) * (loader.batch_size or 1) if loader.batch_sampler is not None else 0
    drawn *= trainer.world_size
    drop_last = bool(getattr(loader.batch_sampler, "drop_last", False))
    return once and (drawn >= n) and not (drop_last and drawn < n)


@dataclass
class RunConditions:
    """The conditions fixed for the run (found at the start of training)."""

    full_batch: bool = False
    probe_is_training_set: bool = False
    clip_val: float | None = None
    clip_always: bool = False
    """Clipping by value or a custom ``configure_gradient_clipping``: counted as active at every step."""

    @classmethod
    def of(
        cls,
        trainer: pl.Trainer,
        pl_module: LightningModule,
        *,
        probe_size: int | None,
        probe_from_training_set: bool,
        full_batch: bool | None,
    ) -> RunConditions:
        """Read the conditions of ``trainer``'s run; a ``full_batch`` not ``None`` overrides the detection."""
        custom = (
            type(pl_module).configure_gradient_clipping is not LightningModule.configure_gradient_clipping
        )
        clip_val = trainer.gradient_clip_val
        by_value = clip_val is not None and trainer.gradient_clip_algorithm == GradClipAlgorithmType.VALUE
        dataset_size = _dataset_size(trainer)
        return cls(
            full_batch=_full_batch(trainer) if full_batch is None else bool(full_batch),
            probe_is_training_set=bool(
                probe_from_training_set and probe_size is not None and probe_size == dataset_size
            ),
            clip_val=None if clip_val is None or by_value else float(clip_val),
            clip_always=bool(custom or by_value),
        )


def _dataset_size(trainer: pl.Trainer) -> int | None:
    loader = trainer.train_dataloader
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]


def contraction_reason(
    *,
    optimizer: dict[str, Any] | None,
    optimizers: int,
    grad_norm: float,
    conditions: RunConditions,
    has_loss_fn: bool,
    full_kernel: bool,
    loss_matches: bool | None,
    lr: float,
    mu: float,
    beta: float,
) -> str | None:
    """The first condition of the theorem that fails at this step (``None``: the prediction applies).

    The reasons are the suffixes of ``skipped/contraction_pred_<reason>``.
    """
    if optimizers > 1:
        return "several_optimizers"
    if optimizer is None or not optimizer["sgd"] or optimizer["momentum"] != 0 or optimizer["nesterov"]:
        return "not_plain_sgd"
    if optimizer["weight_decay"]:
        return "weight_decay"
    if optimizer["several_lrs"]:
        return "several_lrs"
    if conditions.clip_always or (conditions.clip_val is not None and grad_norm > conditions.clip_val):
        return "clipping"
    if not conditions.full_batch:
        return "not_full_batch"
    if not conditions.probe_is_training_set:
        return "probe_not_training_set"
    if not has_loss_fn:
        return "no_loss_fn"
    if not full_kernel:
        return "no_full_kernel"
    if not (math.isfinite(mu) and math.isfinite(beta) and math.isfinite(lr)):
        return "no_mu"  # no NTK sample yet (or it failed): nothing to predict with
    if not loss_matches:  # differs, or could not be checked (no training loss at the sample's step)
        return "loss_mismatch"
    if not lr * beta < 2:
        return "unstable_step"
    if mu > beta:
        return "mu_above_beta"
    return None


class Predictor:
    """``rate/contraction_pred`` of each step, or why it is absent (steps handed over in step order).

    Args:
        conditions: the run's fixed conditions.
        has_loss_fn: whether ``loss_fn`` is given.
        full_kernel: whether the kernel sampled is the full one.
        latest: ``() -> (μ_NTK, β, (step, probe loss) | None)`` of the latest NTK sample.
    """

    def __init__(
        self,
        conditions: RunConditions,
        *,
        has_loss_fn: bool,
        full_kernel: bool,
        latest: Callable[[], tuple[float, float, tuple[int, float] | None]],
    ) -> None:
        self.conditions = conditions
        self.has_loss_fn = has_loss_fn
        self.full_kernel = full_kernel
        self.latest = latest
        self.loss_matches: bool | None = None

    def __call__(self, step: Any) -> tuple[str | None, float]:
        """``(reason, ρ_pred)`` for a :class:`~._step_parts.StepGap`: ``reason`` ``None`` when it applies."""
        record = step.record
        mu, beta, probe_loss = self.latest()
        if probe_loss is not None and probe_loss[0] == record.step:
            self.loss_matches = abs(probe_loss[1] - step.loss) <= LOSS_MATCH_RTOL * abs(step.loss)
        lr = math.nan if record.lr is None else float(record.lr)
        reason = contraction_reason(
            optimizer=record.optimizer,
            optimizers=record.optimizers,
            grad_norm=math.sqrt(step.grad_norm_sq) if step.grad_norm_sq >= 0 else math.nan,
            conditions=self.conditions,
            has_loss_fn=self.has_loss_fn,
            full_kernel=self.full_kernel,
            loss_matches=self.loss_matches,
            lr=lr,
            mu=mu,
            beta=beta,
        )
        return reason, (predicted_contraction(lr, mu, beta) if reason is None else math.nan)


def loss_pred_reason(
    conditions: RunConditions,
    optimizers: list[torch.optim.Optimizer],
    *,
    full_kernel: bool,
    has_loss_fn: bool,
) -> str | None:
    """Why the kernel-predicted loss curve does not apply to this run (``None``: it does).

    The prediction is plain full-batch gradient descent on the model linearised at the first
    sample, seen on the probe: the same conditions as the contraction, fixed for the run.
    """
    if len(optimizers) != 1:
        return "it needs exactly one optimizer"
    info = optimizer_info(optimizers[0])
    reason = contraction_reason(
        optimizer=info,
        optimizers=1,
        grad_norm=0.0,
        conditions=conditions,
        has_loss_fn=has_loss_fn,
        full_kernel=full_kernel,
        loss_matches=True,
        lr=0.0,
        mu=0.0,
        beta=0.0,
    )
    if reason is None and conditions.clip_val is not None:
        reason = "clipping"
    return None if reason is None else _LOSS_PRED_WORDS.get(reason, reason)


_LOSS_PRED_WORDS = {
    "not_plain_sgd": "the optimizer is not plain SGD",
    "weight_decay": "the optimizer applies weight decay",
    "several_lrs": "the parameter groups have different learning rates",
    "clipping": "gradient clipping is configured",
    "not_full_batch": "the optimizer steps on mini-batches",
    "probe_not_training_set": "the probe is not the whole training set",
    "no_loss_fn": "no loss_fn is given",
    "no_full_kernel": "the kernel is not the full one",
}


def run_marker(
    *,
    monitor: str,
    prefix: str,
    kernel_kind: str | None,
    norm_mode: str | None,
    loss_fn: Any,
    loss_star: Any,
    optimizers: list[torch.optim.Optimizer],
    conditions: RunConditions,
    world_size: int,
) -> dict[str, Any]:
    """The run's schema marker: what its keys assume (see :mod:`lightning_lplr.reporting.marker`)."""
    info = optimizer_info(optimizers[0]) if optimizers else None
    plain = (
        info is not None
        and len(optimizers) == 1
        and info["sgd"]
        and info["momentum"] == 0
        and not (info["nesterov"] or info["weight_decay"] or info["several_lrs"])
    )
    return make_marker(
        package_version=_package_version(),
        monitor=monitor,
        prefix=prefix,
        kernel_kind=kernel_kind,
        norm_mode=norm_mode,
        loss=None if loss_fn is None else getattr(loss_fn, "__name__", type(loss_fn).__name__),
        loss_star=loss_star,
        optimizer=None if info is None else info["name"],
        momentum=None if info is None else info["momentum"],
        plain_sgd=bool(plain),
        probe_is_training_set=conditions.probe_is_training_set,
        full_batch=conditions.full_batch,
        world_size=world_size,
    )


def _package_version() -> str:
    try:
        return version("lightning-lplr")
    except PackageNotFoundError:  # pragma: no cover - a source tree without install
        return "unknown"


@dataclass
class RunSetup:
    """What a monitor fixes at the start of training: the conditions, the predictions that apply."""

    trainer: Any
    ntk: Any
    conditions: RunConditions
    loss_pred: str | None
    """Why the kernel-predicted loss does not apply to this run (``None``: it does)."""
    predict: Predictor | None
    """``rate/contraction_pred`` of each step (``None``: a monitor without rate or NTK part)."""

    @classmethod
    def of(cls, trainer: pl.Trainer, pl_module: LightningModule, ntk: Any, *, rate: bool) -> RunSetup:
        """Read the run's conditions once the NTK part has its probe and kernel plan."""
        conditions = RunConditions.of(
            trainer,
            pl_module,
            probe_size=None if ntk is None or ntk.probe is None else ntk.probe.size,
            probe_from_training_set=ntk is not None and ntk.config.probe is None,
            full_batch=None if ntk is None else ntk.config.full_batch,
        )
        full_kernel = ntk is not None and ntk.with_kernel and ntk.kind == "full"  # after the memory plan
        has_loss_fn = ntk is not None and ntk.config.loss_fn is not None
        optimizers = list(trainer.optimizers)
        reason = loss_pred_reason(conditions, optimizers, full_kernel=full_kernel, has_loss_fn=has_loss_fn)
        predict = None
        if rate and ntk is not None:
            quantities = ntk.quantities
            predict = Predictor(
                conditions,
                has_loss_fn=has_loss_fn,
                full_kernel=full_kernel,
                latest=lambda: (quantities.mu_ntk, quantities.beta, quantities.probe_loss),
            )
        return cls(trainer, ntk, conditions, reason, predict)

    def marker(self, *, monitor: str, prefix: str, loss_star: Any) -> dict[str, Any]:
        """The run's schema marker (:func:`run_marker`)."""
        ntk = self.ntk
        return run_marker(
            monitor=monitor,
            prefix=prefix,
            kernel_kind=ntk.kind if ntk is not None and ntk.with_kernel else None,
            norm_mode=None if ntk is None else ntk.config.norm_mode,
            loss_fn=None if ntk is None else ntk.config.loss_fn,
            loss_star=loss_star,
            optimizers=list(self.trainer.optimizers),
            conditions=self.conditions,
            world_size=self.trainer.world_size,
        )
