"""The Lightning layer every monitor shares: hook wiring, the step buffer, flushes, checkpoints.

A monitor is this callback with some of three parts plugged in: the NTK part
(:mod:`._ntk_part`), the step PL part and the rate part (:mod:`._step_parts`). The callback
decides *when* (schedules, flush cadence), reads what a step leaves (loss, gradient norm, step
size), hands batches of steps to the parts, and writes what they return to every logger.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import (
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceXLAStrategy,
    XLAStrategy,
)
from torch import Tensor
from typing_extensions import override

from lightning_lplr.callbacks._collective import Collective, LocalCollective, StrategyCollective
from lightning_lplr.callbacks._conditions import Predictor, RunConditions, RunSetup, optimizer_info
from lightning_lplr.callbacks._config import StepConfig
from lightning_lplr.callbacks._journal import Journal
from lightning_lplr.callbacks._ntk_part import NTKPart
from lightning_lplr.callbacks._step_buffer import (
    StepBuffer,
    StepRecord,
    grad_norm,
    loss_of,
    monitored_keys,
)
from lightning_lplr.callbacks._step_parts import GapSeries, PLPart, RatePart, step_metrics
from lightning_lplr.report import render_markdown, render_text, report_from_history
from lightning_lplr.reporting import tensorboard as tb
from lightning_lplr.reporting.fanout import update_callback_metrics, write_marker
from lightning_lplr.reporting.keys import ALL_KEYS, KIND_PREFIXES, SKIP_KEYS

__all__ = ["Monitor"]

_REFUSED_STRATEGIES = (
    FSDPStrategy,
    DeepSpeedStrategy,
    ModelParallelStrategy,
    XLAStrategy,
    SingleDeviceXLAStrategy,
)


class Monitor(Callback):
    """Base of the public monitors; subclasses build the parts in ``__init__`` and call :meth:`_assemble`."""

    prefix: str
    log_histograms: bool

    def _assemble(
        self,
        *,
        prefix: str,
        step: StepConfig | None,
        ntk: NTKPart | None,
        gaps: GapSeries | None,
        pl_part: PLPart | None,
        rate: RatePart | None,
        journal: Journal,
        log_histograms: bool = False,
    ) -> None:
        if not isinstance(prefix, str):
            raise ValueError(
                f"prefix={prefix!r} must be a string, e.g. 'lplr/' (every key is logged as prefix + key)."
            )
        if not isinstance(log_histograms, bool):
            raise ValueError(f"log_histograms={log_histograms!r} must be True or False.")
        self.prefix = prefix
        self.log_histograms = log_histograms
        self._step_config = step
        self._ntk = ntk
        self._gaps = gaps
        self._pl = pl_part
        self._rate = rate
        self._journal = journal
        self._buffer = StepBuffer(step.flush_every if step is not None else 1)
        self._trainer_ref: weakref.ReferenceType[pl.Trainer] | None = None
        self._collective: Collective = LocalCollective()
        self._conditions = RunConditions()
        self._loss_pred_reason: str | None = "the run has not started"
        self._predict: Predictor | None = None
        self._marker: dict[str, Any] | None = None
        self._carried: dict[str, float] = {}
        self._parts = tuple(
            name
            for name, part in (
                ("ntk", ntk if ntk and ntk.with_kernel else None),
                ("pl", pl_part if pl_part and pl_part.log else None),
                ("rate", rate),
            )
            if part is not None
        )
        for cause in ("nonfinite_loss", "nonpositive_gap", "ntk_error"):
            journal.skips.setdefault(cause, 0)

    # ------------------------------------------------------------------ public state
    @property
    def history(self) -> dict[str, list[tuple[int, float]]]:
        """What this process logged, key (without prefix) → ``[(step, value), …]``.

        The last 100 000 samples of each key are kept in memory (the loggers have them all),
        so a long run does not grow without bound.
        """
        return self._journal.history

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped so far, by cause."""
        return dict(self._journal.skips)

    def summary(self) -> dict[str, float]:
        """The latest value of every quantity (key without prefix → value), plus run aggregates."""
        return self._journal.summary()

    def _state_config(self) -> dict[str, Any]:
        """What identifies this monitor in a checkpoint (subclasses add their configuration)."""
        return {"prefix": self.prefix, "parts": list(self._parts)}

    @property
    def state_key(self) -> str:
        """Checkpoint key derived from the configuration, so two monitors can coexist.

        Lightning reads it around every hook call (profiler names), eight times a step, so it
        is built on first use and cached: the configuration it names is fixed at ``__init__``.
        """
        cached = self.__dict__.get("_state_key_cache")
        if cached is None:
            cached = self._state_key_cache = self._generate_state_key(**self._state_config())
        return cached

    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = None if self._trainer_ref is None else self._trainer_ref()
        if trainer is not None:
            self._flush(trainer)  # a checkpoint holds every finished step's state,
            self._buffer.write(trainer)  # and everything before it is on disk
        state: dict[str, Any] = {"version": 2, **self._journal.state_dict()}
        for name, part in self._stateful():
            state[name] = part.state_dict()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._journal.load_state_dict(state_dict)
        for name, part in self._stateful():
            if name in state_dict:
                part.load_state_dict(state_dict[name])
            elif state_dict.get("version") == 1:  # one flat dict before the split into parts
                part.load_state_dict(state_dict)

    def _stateful(self) -> list[tuple[str, Any]]:
        parts = (("ntk", self._ntk), ("gaps", self._gaps), ("pl", self._pl))
        return [(name, part) for name, part in parts if part is not None]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trainer_ref"] = None  # a weak reference cannot be pickled (ddp_spawn, torch.save)
        return state

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, _REFUSED_STRATEGIES):
            raise ValueError(
                f"{type(self).__name__} does not support strategy {type(trainer.strategy).__name__}: it "
                "shards parameters, so the NTK of the full model cannot be formed on one rank. Use "
                "strategy='ddp' (or 'ddp_spawn') or a single device."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.loggers:
            self._journal.warn_once(
                "no_logger",
                f"{type(self).__name__}: the Trainer has no logger, so nothing is written to disk; the "
                "values are still in trainer.callback_metrics. Pass logger=TensorBoardLogger('runs') to see "
                "them.",
            )
        if trainer.is_global_zero:
            tb.write_layout(trainer.loggers, self.prefix)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer_ref = weakref.ref(trainer)
        self._collective = (
            StrategyCollective(trainer.strategy, trainer.world_size, trainer.global_rank)
            if trainer.world_size > 1
            else LocalCollective()
        )
        # A callback or scheduler that monitors one of our keys reads trainer.callback_metrics at
        # an epoch or validation boundary: write every step as it ends so it reads current values.
        keys = {self.prefix + key for key in ALL_KEYS + SKIP_KEYS}
        flush_every = self._buffer.flush_every
        self._buffer.reset(1 if monitored_keys(trainer) & keys else flush_every)
        self._carried = {}
        ntk = self._ntk
        if ntk is not None:
            ntk.on_train_start(trainer, pl_module, self._collective)
            if ntk.budget is not None:
                collective = self._collective
                ntk.budget.start(
                    trainer.global_step,
                    trainer.estimated_stepping_batches,
                    broadcast=(lambda d: collective.broadcast(d, src=0)) if trainer.world_size > 1 else None,
                    advise=lambda message: self._journal.warn_once("ntk_budget", message),
                )
        run = RunSetup.of(trainer, pl_module, ntk, rate=self._rate is not None)
        self._conditions, self._loss_pred_reason, self._predict = run.conditions, run.loss_pred, run.predict
        self._marker = run.marker(
            monitor=type(self).__name__,
            prefix=self.prefix,
            loss_star=None if self._gaps is None else self._gaps.loss_star,
        )
        write_marker(trainer, self.prefix, self._marker)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        with self._paused():
            t = trainer.global_step
            config = self._step_config
            wants_step = config is not None and (self._pl is not None or self._rate is not None)
            record = self._buffer.begin(t, wants_step and bool(config and config.step_every(t)))
            ntk = self._ntk
            if ntk is None or not ntk.wants(t):  # every rank decides at every step
                return
            self._flush(trainer)  # the earlier steps first: they are described by the previous sample
            if ntk.needs_reference(t):
                with self._sampling(once=True):  # Θ_0 at θ_0: charged once, not the cost of a sample
                    ntk.reference(pl_module, self._collective)
            with self._sampling():
                lr = _current_lr(trainer)
                record.probe.update(ntk.sample(pl_module, t, self._collective, lr, self._loss_pred_reason))
                if self.log_histograms and ntk.eigenvalues is not None and trainer.is_global_zero:
                    tag = self.prefix + KIND_PREFIXES[ntk.kind] + "eigenvalues"
                    tb.add_eigenvalue_histogram(trainer.loggers, tag, ntk.eigenvalues, t)

    def _paused(self) -> contextlib.AbstractContextManager[None]:
        """The monitor's own work: not training time for the overhead budget."""
        budget = None if self._ntk is None else self._ntk.budget
        return contextlib.nullcontext() if budget is None else budget.paused()

    def _sampling(self, *, once: bool = False) -> contextlib.AbstractContextManager[None]:
        """An NTK sample: charged to the overhead budget."""
        budget = None if self._ntk is None else self._ntk.budget
        return contextlib.nullcontext() if budget is None else budget.sampling(once=once)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        with self._paused():
            record = self._buffer.current
            if record is None:
                return
            record.optimizers += 1
            if record.optimizers == 1:  # the first optimizer's step size and type
                lr = optimizer.param_groups[0].get("lr", math.nan)
                # A tensor lr is updated in place by schedulers: keep its value at this step.
                record.lr = lr.detach().clone() if isinstance(lr, Tensor) else lr
                if self._predict is not None:  # only the predicted contraction reads it
                    record.optimizer = optimizer_info(optimizer)
                if self._ntk is not None and self._loss_pred_reason is None:  # the kernel-predicted loss
                    self._ntk.quantities.observe_lr(record.step, float(lr))
            if not record.wants_step:
                return
            norm = grad_norm(optimizer)
            if norm is not None:
                # Several optimizers stepping in one batch (manual optimization) apply disjoint
                # parts of the gradient: their squared norms add up (the PL part does not use it then).
                square = norm.square()
                record.grad_norm_sq = square if record.grad_norm_sq is None else record.grad_norm_sq + square

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        with self._paused():
            record = self._buffer.current
            if record is None:
                return
            if record.wants_step:
                loss = loss_of(outputs)
                if loss is not None:
                    loss = loss.detach()
                    # Under gradient accumulation Lightning divides each micro-batch loss by
                    # accumulate_grad_batches before backward and hands that value to this hook,
                    # so the sum is the objective whose gradient the optimizer sees.
                    record.loss = loss if record.loss is None else record.loss.double() + loss.double()
            if trainer.global_step == record.step:
                return  # gradient accumulation: the optimizer has not stepped yet
            self._buffer.finish(record, time.time())
            # Every flush_every steps (not records: a sparse step_every or an NTK-only monitor
            # would otherwise wait many steps), and at once after an NTK sample.
            if self._buffer.due(record):
                self._flush(trainer)
            self._buffer.pace(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ntk is not None and self._ntk.budget is not None:
            self._ntk.budget.finish()
        self._flush(trainer, final=True)
        self._buffer.write(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Keep what the finished steps measured when the run stops on an error or an interrupt.

        Single process only: with several ranks the flush's collective could wait for a rank
        that is gone, so those steps are dropped.
        """
        if trainer.world_size == 1:
            try:
                self._flush(trainer, final=True)
                self._buffer.write(trainer)
            except Exception as err:  # never mask the run's own exception
                self._journal.warn_once(
                    "exception_flush", f"{type(self).__name__} could not write its last steps: {err}"
                )
        self._buffer.reset(self._buffer.flush_size)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer_ref = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            tb.add_text_summary(
                trainer.loggers, self.prefix + "summary", self.summary_markdown(), trainer.global_step
            )

    def report(self) -> dict[str, Any]:
        """The report document of the run so far: what ``lightning-lplr report`` says of the logged run."""
        return report_from_history(self.history, self._marker, name=type(self).__name__, prefix=self.prefix)

    def summary_markdown(self) -> str:
        """The report as markdown (written to TensorBoard at the end of fit)."""
        return render_markdown(self.report())

    def summary_text(self) -> str:
        """The report as plain text: verdicts that never claim more than the logged values show."""
        return render_text(self.report())

    # ------------------------------------------------------------------ flush
    def _flush(self, trainer: pl.Trainer, final: bool = False) -> None:
        """Compute and record every finished step not yet computed, in step order; queue the writes.

        Runs at the same steps on every rank (every ``flush_every`` steps, around NTK samples,
        at checkpoints and at the end of training), so its one collective (the mean loss over
        ranks) is entered by all of them. Every step is computed (the fits and envelopes use them
        all) and kept in :attr:`history` and ``trainer.callback_metrics``; the loggers get the NTK
        samples and the step-level values of every ``log_every_n_steps``-th step (and of the last
        step), as Lightning writes ``self.log``; skip counters of the steps in between are
        carried to the next written step.
        """
        records = self._buffer.take()
        if not records:
            return
        wanted = [r for r in records if r.wants_step]
        step_metrics = self._step_metrics(wanted) if wanted else {}
        every = max(int(getattr(trainer, "log_every_n_steps", 1) or 1), 1)
        samples: list[tuple[int, dict[str, float]]] = []
        latest: list[tuple[int, dict[str, float]]] = []
        walltimes: list[float] = []
        for k, record in enumerate(records):
            steps = step_metrics.get(record.step, {})
            metrics = {**record.probe, **steps}
            if not metrics:
                continue
            self._journal.record(metrics, record.step)
            latest.append((record.step, {self.prefix + key: float(v) for key, v in metrics.items()}))
            written = dict(record.probe)
            if record.step % every == 0 or (final and k == len(records) - 1):
                written.update(self._carried)
                written.update(steps)
                self._carried = {}
            else:
                self._carried.update((key, v) for key, v in steps.items() if key.startswith("skipped/"))
            if written:
                samples.append((record.step, {self.prefix + key: float(v) for key, v in written.items()}))
                walltimes.append(record.walltime)
        update_callback_metrics(trainer, latest)
        if trainer.is_global_zero:
            self._buffer.queue(samples, walltimes)

    def _step_metrics(self, records: list[StepRecord]) -> dict[int, dict[str, float]]:
        """Step-level PL and rate quantities of ``records`` (in step order), step → metrics."""
        if self._gaps is None:
            return {}
        return step_metrics(
            records, self._collective, self._gaps, self._pl, self._rate, self._predict, self._journal
        )


def _current_lr(trainer: pl.Trainer) -> float:
    optimizers = trainer.optimizers
    if not optimizers:
        return math.nan
    return float(optimizers[0].param_groups[0].get("lr", math.nan))
