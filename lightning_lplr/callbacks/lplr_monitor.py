"""``LPLRMonitor``: NTK, PL and linear-rate monitoring in one Lightning callback.

The callback decides *when* to measure, *on what* (the probe), *where to log* and
*what to persist*; every number comes from :mod:`lightning_lplr.functional`.
:class:`~lightning_lplr.NTKMonitor`, :class:`~lightning_lplr.PLMonitor` and
:class:`~lightning_lplr.LinearRateMonitor` are the same machinery with only some
of the parts switched on.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_lplr.callbacks.probe import Probe, default_input_fn, default_target_fn, select_probe
from lightning_lplr.functional.ntk import NTKImplementation, empirical_ntk, trainable_params
from lightning_lplr.functional.pl import (
    LowerEnvelope,
    estimate_loss_star,
    ntk_gradient_norm_sq,
    ntk_pl_bounds,
    pl_ratio,
)
from lightning_lplr.functional.rate import (
    classify_regime_rows,
    fit_linear_rate_rows,
    predicted_contraction,
)
from lightning_lplr.functional.spectrum import (
    eigenvalues,
    kernel_distance,
    spectrum_from_eigenvalues,
    spectrum_stats,
)
from lightning_lplr.reporting import tensorboard as tb
from lightning_lplr.reporting.fanout import update_callback_metrics, write_samples
from lightning_lplr.reporting.keys import ALL_KEYS, DEFAULT_PREFIX, REGIME_CODES, SKIP_KEYS
from lightning_lplr.schedules import Schedule, as_schedule, log_spaced

__all__ = ["PRESETS", "LPLRMonitor", "LPLRWarning", "Preset"]

_MONITOR_KINDS = ("full", "trace", "pseudo")
_STRATEGIES_REFUSED = ("FSDP", "DeepSpeed", "ModelParallel", "XLA")
_PARTS = frozenset({"ntk", "pl", "rate"})
_HISTORY_LENGTH = 100_000


@dataclass(frozen=True)
class Preset:
    """A cost/detail trade-off for the NTK part of the monitors."""

    kind: str
    probe_size: int
    ntk_every: Schedule


PRESETS: dict[str, Preset] = {
    "cheap": Preset(
        kind="pseudo", probe_size=16, ntk_every=log_spaced(per_decade=2, dense_until=0, max_interval=2000)
    ),
    "default": Preset(
        kind="full", probe_size=32, ntk_every=log_spaced(per_decade=3, dense_until=0, max_interval=1000)
    ),
    "full": Preset(kind="full", probe_size=64, ntk_every=log_spaced(per_decade=10, max_interval=200)),
}
"""``cheap``: pNTK of 16 samples at steps 0, 1, 4, 10, 32, 100, 317, … and at least every
2000 steps. ``default``: full kernel of 32 samples at steps 0, 1, 3, 5, 10, 22, 47, 100, 216,
465, 1000 and then every 1000 steps. ``full``: full kernel of 64 samples, every step up to 4,
~10 per decade and at least every 200 steps."""


class LPLRMonitor(Callback):
    r"""Monitor whether training sits in a locally Polyak–Łojasiewicz region.

    Add it to a ``Trainer`` and train as usual; nothing in the ``training_step``
    changes. At steps chosen by ``ntk_every`` it computes the empirical NTK ``K`` of a
    fixed probe of ``m`` training samples (``Θ = K/m``; eval mode, detached parameters,
    the module's modes, the RNG and every ``.grad`` left exactly as they were). At
    every step chosen by ``step_every`` it reads the training loss and the gradient
    norm the optimizer is about to use and estimates the PL ratio and the linear rate.

    Definitions (DESIGN.md §2): gap ``Δ_t = L(θ_t) − L*``; step PL ratio
    ``μ̂_t = ‖∇L(θ_t)‖² / (2Δ_t)`` (biased upward by gradient noise under mini-batch SGD;
    the probe ratio is the full-batch one); lower envelope = running min and low
    quantile of ``μ̂`` over ``envelope_window`` steps; linear rate = least-squares fit of
    ``log Δ_t`` over the last ``rate_window`` logged steps; predicted contraction
    ``1 − 2ημ(1 − ηβ/2)`` with ``μ`` the envelope (or ``μ_NTK`` when ``loss_fn`` is
    given) and ``β = λ_max(Θ)``, logged only for plain SGD (no momentum, not adaptive);
    NTK drift ``‖Θ_t − Θ_0‖/‖Θ_0‖``; parameter drift ``r_t = ‖θ_t − θ_0‖``; Lipschitz
    estimate ``L̂ = max_s ‖Θ_s − Θ_0‖₂ / r_s``; certificate ``μ_cert = λ_min(Θ_0) − L̂·r_t``.

    Logged Metrics (each under ``prefix``, default ``"lplr/"``, at the optimizer step
    ``t`` — ``trainer.global_step`` before the step — whose parameters they describe):
        At NTK samples: ``ntk/lambda_min``, ``ntk/lambda_max``, ``ntk/condition_number``,
        ``ntk/trace``, ``ntk/effective_rank`` (of ``Θ``), ``ntk/drift_op``,
        ``ntk/drift_fro``, ``ntk/lipschitz``, ``ntk/eta_beta``, ``param/drift``,
        ``region/mu_cert``, ``region/inside`` (1 or 0), ``cost/ntk_seconds``; with
        ``loss_fn``: ``pl/ratio_probe`` and, for ``kind="full"``, ``pl/mu_ntk``.
        At step samples: ``pl/gap``, ``pl/ratio_step``, ``pl/envelope_min``,
        ``pl/envelope_q05``; once ``rate_min_points`` gaps are in the window:
        ``rate/slope``, ``rate/contraction``, ``rate/half_life``, ``rate/r2``,
        ``rate/regime`` (1 linear, 0 undetermined, −1 sublinear) and, for plain SGD,
        ``rate/contraction_pred``. When a sample is skipped: ``skipped/nonfinite_loss``,
        ``skipped/nonpositive_gap``, ``skipped/ntk_error`` (cumulative counts).
        TensorBoard loggers also get the "LPLR" custom-scalars layout, a histogram
        ``ntk/eigenvalues`` per NTK sample and a markdown ``summary`` at the end of fit.

    Args:
        preset: ``"cheap"``, ``"default"`` or ``"full"`` (see :data:`PRESETS`); supplies
            ``kind``, ``probe_size`` and ``ntk_every`` where those are ``None``.
        ntk_every: NTK schedule: an int interval, a ``Callable[[int], bool]``, or
            ``None`` for the preset's. Step 0 (or the first step of the fit) is always sampled.
        step_every: schedule of the step-level PL and rate quantities (default every step).
        flush_every: the step-level quantities are kept on the device during training (no
            host sync per step) and computed every this many steps, each value written at its
            own step; also around every NTK sample, at checkpoints and at the end of training
            (and, in a single process, when training stops on an error). Under DDP a checkpoint
            computes them with a collective: call ``state_dict()`` on every rank, as Lightning's
            ``save_checkpoint`` does. When another callback (``EarlyStopping``, ``ModelCheckpoint``) or an LR
            scheduler monitors one of this monitor's keys, every step is written as it ends,
            so they read current values; ``flush_every=1`` does the same for anything else
            that reads ``trainer.callback_metrics`` during training.
        probe: where the probe comes from: a ``Dataset``, ``DataLoader``, input tensor or
            ``(x, y)`` tuple; ``None`` takes the training dataset at fit start.
        probe_size: probe samples ``m``.
        probe_seed: ``None`` takes the first ``m`` samples; an int a seeded random subset.
        input_fn: batch → model input (default: tensor, first element, or ``"x"``-like key).
        target_fn: batch → targets (for ``loss_fn``).
        output_fn: model output → tensor ``(batch, *out)``, for models returning dicts etc.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` on the probe; enables the probe
            PL ratio and ``μ_NTK``.
        kind: NTK kind, ``"full"``, ``"trace"`` or ``"pseudo"``.
        implementation: NTK implementation (see ``NTKImplementation``). The default,
            ``"structured"``, is exact for any model and the fastest or close to it on every
            model benchmarked; ``"auto"`` would add a one-time timed trial (seconds to tens of
            seconds on a CNN) to the first sample of the run.
        chunk_size: probe samples per NTK chunk (bounds memory).
        max_memory_bytes: memory budget of one NTK sample, from which chunk sizes are
            derived when ``chunk_size`` is ``None``.
        loss_star: ``L*``: ``"zero"``, a float, ``"running_min"`` or ``"fit"``.
        loss_star_margin: safety margin of ``"running_min"``.
        envelope_window: steps in the lower envelope's window (``None``: whole run).
        envelope_quantile: the robust low quantile (default 5 %).
        rate_window: logged steps in the rate fit's window.
        rate_min_points: gaps needed before the rate is logged.
        prefix: prefix of every logged key.
        log_histograms: write NTK eigenvalue histograms to TensorBoard loggers.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> monitor = LPLRMonitor(preset="cheap", ntk_every=50)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
        >>> monitor.kind, monitor.probe_size
        ('pseudo', 16)
    """

    _parts: frozenset[str] = _PARTS

    def __init__(
        self,
        *,
        preset: str = "default",
        ntk_every: int | Schedule | None = None,
        step_every: int | Schedule | None = 1,
        flush_every: int = 50,
        probe: Dataset | DataLoader | Tensor | tuple[Tensor, ...] | None = None,
        probe_size: int | None = None,
        probe_seed: int | None = None,
        input_fn: Callable[[Any], Tensor] | None = None,
        target_fn: Callable[[Any], Tensor | None] | None = None,
        output_fn: Callable[[Any], Tensor] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        kind: str | None = None,
        implementation: str = "structured",
        chunk_size: int | None = None,
        max_memory_bytes: int | None = None,
        loss_star: str | float = "zero",
        loss_star_margin: float = 1e-3,
        envelope_window: int | None = None,
        envelope_quantile: float = 0.05,
        rate_window: int = 50,
        rate_min_points: int = 10,
        prefix: str = DEFAULT_PREFIX,
        log_histograms: bool = True,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(
                f"preset={preset!r} is not one of {sorted(PRESETS)}; pick one, e.g. preset='cheap'."
            )
        chosen = PRESETS[preset]
        self.preset = preset
        self.kind = chosen.kind if kind is None else kind
        if self.kind not in _MONITOR_KINDS:
            raise ValueError(
                f"kind={self.kind!r}: the monitors take one of {_MONITOR_KINDS} (a 'diagonal' kernel has "
                "no single spectrum; use empirical_ntk(kind='diagonal') directly)."
            )
        try:
            NTKImplementation(implementation)
        except ValueError:
            allowed = [m.value for m in NTKImplementation]
            raise ValueError(f"implementation={implementation!r} is not one of {allowed}.") from None
        self.implementation = implementation
        self.probe_size = chosen.probe_size if probe_size is None else probe_size
        if isinstance(self.probe_size, bool) or not isinstance(self.probe_size, int) or self.probe_size < 1:
            raise ValueError(f"probe_size={self.probe_size!r} must be an int >= 1.")
        self.ntk_every = as_schedule(chosen.ntk_every if ntk_every is None else ntk_every, "ntk_every")
        self.step_every = as_schedule(step_every, "step_every")
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every={flush_every!r} must be an int >= 1 (steps per batch of writes).")
        self.flush_every = flush_every
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive int or None.")
        if not (
            isinstance(loss_star, (int, float)) and not isinstance(loss_star, bool)
        ) and loss_star not in (
            "zero",
            "running_min",
            "fit",
        ):
            raise ValueError(
                f"loss_star={loss_star!r}: pass 'zero', 'running_min', 'fit' or a float (the known optimum)."
            )
        if rate_window < 2:
            raise ValueError(f"rate_window={rate_window!r} must be >= 2 steps.")
        if not 2 <= rate_min_points <= rate_window:
            raise ValueError(
                f"rate_min_points={rate_min_points!r} must lie in [2, rate_window={rate_window}]."
            )
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn={loss_fn!r} must be a callable loss_fn(outputs, targets) -> scalar.")
        self.probe_source = probe
        self.probe_seed = probe_seed
        self.input_fn = input_fn or default_input_fn
        self.target_fn = target_fn or default_target_fn
        self.output_fn = output_fn
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        if max_memory_bytes is not None and (not isinstance(max_memory_bytes, int) or max_memory_bytes < 1):
            raise ValueError(f"max_memory_bytes={max_memory_bytes!r} must be a positive int (bytes) or None.")
        self.max_memory_bytes = max_memory_bytes
        self.loss_star = loss_star
        self.loss_star_margin = loss_star_margin
        self.envelope_quantile = envelope_quantile
        self.envelope_window = envelope_window
        self.rate_window = rate_window
        self.rate_min_points = rate_min_points
        self.prefix = prefix
        self.log_histograms = log_histograms
        self._envelope = LowerEnvelope(window=envelope_window, quantile=envelope_quantile)
        self._reset_run_state()

    # ------------------------------------------------------------------ state
    def _reset_run_state(self) -> None:
        self._probe: Probe | None = None
        self._theta0: dict[str, Tensor] | None = None
        self._kernel0: Tensor | None = None
        self._lambda_min0 = math.nan
        self._lambda_max0 = math.nan
        self._lipschitz = 0.0
        self._envelope = LowerEnvelope(window=self.envelope_window, quantile=self.envelope_quantile)
        self._window: deque[tuple[int, float]] = deque(maxlen=self.rate_window)
        self._probe_losses: deque[tuple[int, float]] = deque(maxlen=self.rate_window)
        self._running_min = math.inf
        self._skips: dict[str, int] = {"nonfinite_loss": 0, "nonpositive_gap": 0, "ntk_error": 0}
        self._warned: set[str] = set()
        self._last_ntk_step = -1
        self._last: dict[str, float] = {}
        self._history: dict[str, deque[tuple[int, float]]] = {}
        self._beta = math.nan
        self._mu_ntk = math.nan
        self._kernel_eigs: Tensor | None = None
        # The step in progress and the finished steps not yet written (flushed before any
        # checkpoint is written, so never persisted).
        self._current: _StepRecord | None = None
        self._pending: list[_StepRecord] = []
        self._trainer_ref: weakref.ReferenceType[pl.Trainer] | None = None
        self._flush_size = self.flush_every
        self._outbox: deque[tuple[tuple[int, dict[str, float]], float]] = deque()

    @property
    def state_key(self) -> str:
        """Checkpoint key derived from the configuration, so two monitors can coexist.

        Lightning reads it around every hook call (profiler names), so it is built once per
        configuration and cached.
        """
        config = (self.kind, self.probe_size, self.prefix)
        cached = self.__dict__.get("_state_key_cache")
        if cached is None or cached[0] != config:
            key = self._generate_state_key(
                kind=self.kind, probe_size=self.probe_size, prefix=self.prefix, parts=sorted(self._parts)
            )
            cached = self._state_key_cache = (config, key)
        return cached[1]

    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = None if self._trainer_ref is None else self._trainer_ref()
        if trainer is not None:
            self._flush(trainer)  # a checkpoint holds every finished step's state,
            self._write(trainer)  # and everything before it is on disk
        return {
            "version": 1,
            "probe_x": None if self._probe is None else self._probe.x.cpu(),
            "probe_y": None if self._probe is None or self._probe.y is None else self._probe.y.cpu(),
            "theta0": None if self._theta0 is None else {k: v.cpu() for k, v in self._theta0.items()},
            "kernel0": None if self._kernel0 is None else self._kernel0.cpu(),
            "lambda_min0": self._lambda_min0,
            "lambda_max0": self._lambda_max0,
            "lipschitz": self._lipschitz,
            "envelope": self._envelope.state_dict(),
            "window": list(self._window),
            "probe_losses": list(self._probe_losses),
            "running_min": self._running_min,
            "skips": dict(self._skips),
            "last_ntk_step": self._last_ntk_step,
            "beta": self._beta,
            "mu_ntk": self._mu_ntk,
            "last": dict(self._last),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        x = state_dict.get("probe_x")
        self._probe = None if x is None else Probe(x, state_dict.get("probe_y"))
        self._theta0 = state_dict.get("theta0")
        self._kernel0 = state_dict.get("kernel0")
        self._lambda_min0 = state_dict.get("lambda_min0", math.nan)
        self._lambda_max0 = state_dict.get("lambda_max0", math.nan)
        self._lipschitz = state_dict.get("lipschitz", 0.0)
        if "envelope" in state_dict:
            self._envelope.load_state_dict(state_dict["envelope"])
        self._window = deque(state_dict.get("window", []), maxlen=self.rate_window)
        self._probe_losses = deque(state_dict.get("probe_losses", []), maxlen=self.rate_window)
        self._running_min = state_dict.get("running_min", math.inf)
        self._skips.update(state_dict.get("skips", {}))
        self._last_ntk_step = state_dict.get("last_ntk_step", -1)
        self._beta = state_dict.get("beta", math.nan)
        self._mu_ntk = state_dict.get("mu_ntk", math.nan)
        self._last = dict(state_dict.get("last", {}))

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = type(trainer.strategy).__name__
        if any(name in strategy for name in _STRATEGIES_REFUSED):
            raise ValueError(
                f"{type(self).__name__} does not support strategy {strategy}: it shards parameters, so the "
                "NTK of the full model cannot be formed on one rank. Use strategy='ddp' (or 'ddp_spawn') or "
                "a single device."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.loggers:
            self._warn_once(
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
        self._current, self._pending = None, []  # nothing of an earlier, interrupted fit
        self._outbox.clear()
        # A callback or scheduler that monitors one of our keys reads trainer.callback_metrics at
        # an epoch or validation boundary: write every step as it ends so it reads current values.
        self._flush_size = 1 if _monitored_keys(trainer) & self._keys() else self.flush_every
        device = pl_module.device
        if "ntk" in self._parts or self.loss_fn is not None:
            if self._probe is None:
                self._probe = self._select_probe(trainer)
            self._probe = self._probe.to(device)
            self._check_output(pl_module)
        if self._theta0 is None:
            self._theta0 = {k: v.clone() for k, v in trainer_params(pl_module).items()}
        else:
            self._theta0 = {k: v.to(device) for k, v in self._theta0.items()}
        if self._kernel0 is not None:
            self._kernel0 = self._kernel0.to(device)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        t = trainer.global_step
        current = self._current
        if current is None or current.step != t:
            wants_step = bool({"pl", "rate"} & self._parts) and bool(self.step_every(t))
            current = self._current = _StepRecord(t, wants_step)
        if not self._wants_probe_work(t):
            return
        self._last_ntk_step = t
        self._flush(trainer)  # the earlier steps first: they are described by the previous sample
        current.probe.update(self._sample_probe(trainer, pl_module, t))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        current = self._current
        if current is None or not current.wants_step:
            return
        norm = _grad_norm(optimizer)
        if norm is not None:
            # Several optimizers stepping in one batch (manual optimization) apply disjoint
            # parts of the gradient: their squared norms add up to the whole one.
            square = norm.square()
            current.grad_norm_sq = square if current.grad_norm_sq is None else current.grad_norm_sq + square
        if current.lr is None:  # the first optimizer's step size and type
            lr = optimizer.param_groups[0].get("lr", math.nan)
            # A tensor lr is updated in place by schedulers: keep its value at this step.
            current.lr = lr.detach().clone() if isinstance(lr, Tensor) else lr
            current.plain_sgd = _is_plain_sgd(optimizer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        current = self._current
        if current is None:
            return
        if current.wants_step:
            loss = _loss_of(outputs)
            if loss is not None:
                loss = loss.detach()
                # Under gradient accumulation Lightning divides each micro-batch loss by
                # accumulate_grad_batches before backward and hands that value to this hook,
                # so the sum is the objective whose gradient the optimizer sees.
                current.loss = loss if current.loss is None else current.loss.double() + loss.double()
        if trainer.global_step == current.step:
            return  # gradient accumulation: the optimizer has not stepped yet
        self._current = None
        if current.wants_step or current.probe:
            current.walltime = time.time()
            self._pending.append(current)
        # Every flush_every steps (not records: a sparse step_every or an NTK-only monitor
        # would otherwise wait many steps), and at once after an NTK sample.
        if self._pending and (current.probe or current.step - self._pending[0].step + 1 >= self._flush_size):
            self._flush(trainer)
        if self._outbox:
            self._write(trainer, 1 + len(self._outbox) // self._flush_size)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)
        self._write(trainer)

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
                self._flush(trainer)
                self._write(trainer)
            except Exception as err:  # never mask the run's own exception
                self._warn_once(
                    "exception_flush", f"{type(self).__name__} could not write its last steps: {err}"
                )
        self._current, self._pending = None, []
        self._outbox.clear()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer_ref = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trainer_ref"] = None  # a weak reference cannot be pickled (ddp_spawn, torch.save)
        return state

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            tb.add_text_summary(
                trainer.loggers, self.prefix + "summary", self.summary_markdown(), trainer.global_step
            )

    # ------------------------------------------------------------------ probe and NTK
    def _wants_probe_work(self, t: int) -> bool:
        if t == self._last_ntk_step:
            return False
        if "ntk" in self._parts:
            return self._kernel0 is None or bool(self.ntk_every(t))
        return self.loss_fn is not None and bool(self.ntk_every(t))

    def _select_probe(self, trainer: pl.Trainer) -> Probe:
        source = self.probe_source
        if source is None:
            source = trainer.train_dataloader
            if isinstance(source, (list, tuple)) and source and isinstance(source[0], DataLoader):
                source = source[0]
            if source is None:
                raise ValueError(
                    f"{type(self).__name__} found no training dataloader to draw the probe from; pass probe=."
                )
        probe = select_probe(
            source, self.probe_size, seed=self.probe_seed, input_fn=self.input_fn, target_fn=self.target_fn
        )
        if trainer.world_size > 1:
            probe = trainer.strategy.broadcast(probe, src=0)
        return probe

    def _model_fn(self, pl_module: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
        output_fn = self.output_fn

        def fn(params: dict[str, Tensor], x: Tensor) -> Tensor:
            out = functional_call(pl_module, params, (x,))
            return output_fn(out) if output_fn is not None else out

        return fn

    def _check_output(self, pl_module: pl.LightningModule) -> None:
        assert self._probe is not None
        with _preserved(pl_module), torch.no_grad():
            pl_module.eval()
            out = self._model_fn(pl_module)(trainer_params(pl_module), self._probe.x[:1])
        if not isinstance(out, Tensor):
            raise ValueError(
                f"the model returned a {type(out).__name__}, not a tensor, so the NTK cannot be formed; pass "
                "output_fn=lambda out: out['logits'] (or whatever picks the output tensor) to the monitor."
            )

    def _kernel(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        """The probe kernel on every rank, or ``None`` when any rank failed (all ranks skip together)."""
        assert self._probe is not None
        fn = self._model_fn(pl_module)
        params = trainer_params(pl_module)
        x = self._probe.x
        world = trainer.world_size
        error: BaseException | None = None
        block: Tensor | None = None
        rows = self._probe.shard(trainer.global_rank, world) if world > 1 else slice(None)
        try:
            kwargs = {
                "params": params,
                "kind": self.kind,
                "implementation": self.implementation,
                "chunk_size": self.chunk_size,
                "max_memory_bytes": self.max_memory_bytes,
            }
            block = empirical_ntk(fn, x, **kwargs) if world == 1 else empirical_ntk(fn, x[rows], x, **kwargs)
        except Exception as err:  # the user's run must go on, whatever the NTK hit (OOM included)
            error = err
        if world > 1:
            failed = trainer.strategy.reduce(
                torch.tensor(float(error is not None), device=pl_module.device), reduce_op="sum"
            )
            if float(failed) > 0:
                error = error or RuntimeError("the NTK computation failed on another rank")
        if error is not None:
            self._skip("ntk_error", f"the NTK computation raised {type(error).__name__}: {error}")
            return None
        assert block is not None
        if world == 1:
            return block.to(torch.float64)
        # Gather in the kernel's own dtype (float32 moves half the bytes), then widen.
        return self._gather_rows(trainer, block, x.shape[0]).to(torch.float64)

    def _gather_rows(self, trainer: pl.Trainer, block: Tensor, m: int) -> Tensor:
        assert self._probe is not None
        world = trainer.world_size
        own = self._probe.shard(trainer.global_rank, world)
        per_row = block.shape[0] // (own.stop - own.start)  # O kernel rows per sample (full), else 1
        longest = -(-m // world) * per_row
        padded = torch.zeros((longest, *block.shape[1:]), dtype=block.dtype, device=block.device)
        padded[: block.shape[0]] = block
        gathered = trainer.strategy.all_gather(padded)  # (world, longest, ...)
        parts = []
        for rank in range(world):
            sl = self._probe.shard(rank, world)
            parts.append(gathered[rank, : (sl.stop - sl.start) * per_row])
        return torch.cat(parts)

    def _sample_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, t: int) -> dict[str, float]:
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        with _preserved(pl_module), _compute_context(pl_module):
            pl_module.eval()
            kernel = self._kernel(trainer, pl_module) if "ntk" in self._parts else None
            if "ntk" in self._parts and kernel is None:
                metrics["skipped/ntk_error"] = float(self._skips["ntk_error"])
                return metrics
            if kernel is not None:
                metrics.update(self._ntk_metrics(pl_module, kernel, t))
            if self.loss_fn is not None:
                metrics.update(self._probe_pl_metrics(pl_module, kernel, t))
        metrics["cost/ntk_seconds"] = time.perf_counter() - started
        return metrics

    def _ntk_metrics(self, pl_module: pl.LightningModule, kernel: Tensor, t: int) -> dict[str, float]:
        assert self._probe is not None and self._theta0 is not None
        m = self._probe.size
        self._kernel_eigs = None
        if not bool(torch.isfinite(kernel).all()):  # the same kernel on every rank: all skip together
            self._skip("ntk_error", "the NTK has non-finite entries")
            return {"skipped/ntk_error": float(self._skips["ntk_error"])}
        eigs, drift_abs = self._spectra(pl_module.trainer, kernel)
        stats = spectrum_from_eigenvalues(eigs / m)
        if not math.isfinite(stats.lambda_max):
            self._skip("ntk_error", "the NTK eigen solver did not converge")
            return {"skipped/ntk_error": float(self._skips["ntk_error"])}
        self._kernel_eigs = eigs
        if self._kernel0 is None:
            self._kernel0 = kernel.detach().clone()
            self._lambda_min0 = stats.lambda_min
            self._lambda_max0 = stats.lambda_max
        if self._lambda_max0 != self._lambda_max0:  # NaN: not yet known (e.g. an old checkpoint)
            stats0 = spectrum_stats(self._kernel0, normalize=m)
            self._lambda_min0, self._lambda_max0 = stats0.lambda_min, stats0.lambda_max
        # ‖Θ_0‖₂ = max |λ(Θ_0)|: the extreme eigenvalues of the first sample, kept.
        extremes = [abs(v) for v in (self._lambda_min0, self._lambda_max0) if math.isfinite(v)]
        norm0 = m * max(extremes) if extremes else math.nan
        if math.isnan(norm0):
            drift_op = math.nan
        else:
            drift_op = drift_abs / norm0 if norm0 > 0 else (0.0 if drift_abs == 0 else math.inf)
        drift_fro = kernel_distance(kernel, self._kernel0, norm="fro")
        radius = _param_distance(trainer_params(pl_module), self._theta0)
        if radius > 0:
            # ‖Θ_t − Θ_0‖₂ = drift_op · ‖Θ_0‖₂ and ‖Θ_0‖₂ = λ_max(Θ_0) for a PSD kernel.
            self._lipschitz = max(self._lipschitz, drift_op * self._lambda_max0 / radius)
        mu_cert = self._lambda_min0 - self._lipschitz * radius
        self._beta = stats.lambda_max
        if self.log_histograms and pl_module.trainer.is_global_zero:
            tb.add_eigenvalue_histogram(
                pl_module.trainer.loggers, self.prefix + "ntk/eigenvalues", stats.eigenvalues, t
            )
        lr = _current_lr(pl_module.trainer)
        return {
            "ntk/lambda_min": stats.lambda_min,
            "ntk/lambda_max": stats.lambda_max,
            "ntk/condition_number": stats.condition_number,
            "ntk/trace": stats.trace,
            "ntk/effective_rank": stats.effective_rank,
            "ntk/drift_op": drift_op,
            "ntk/drift_fro": drift_fro,
            "ntk/lipschitz": self._lipschitz,
            "ntk/eta_beta": lr * stats.lambda_max,
            "param/drift": radius,
            "region/mu_cert": mu_cert,
            "region/inside": float(mu_cert > 0),
        }

    def _spectra(self, trainer: pl.Trainer, kernel: Tensor) -> tuple[Tensor, float]:
        """Eigenvalues of ``K`` and ``‖K − K_0‖₂``: the two eigendecompositions of an NTK sample.

        With several ranks the two run on different ranks (0 and 1) at the same time, and one
        all-gather of ``n + 1`` numbers gives both results to every rank.
        """
        world, rank = trainer.world_size, trainer.global_rank
        kernel0 = self._kernel0
        n = kernel.shape[0]
        eigs: Tensor | None = None
        drift = math.nan
        try:
            if world == 1 or rank == 0:
                eigs = eigenvalues(kernel)
            if kernel0 is None:
                drift = 0.0
            elif world == 1 or rank == 1:
                # ‖K − K₀‖₂ = max |λ| of the symmetrised difference (kernels are symmetric; rows
                # gathered from several ranks may differ from their transposes in the last bit).
                lam = eigenvalues(kernel - kernel0)
                drift = float(torch.maximum(lam[0].abs(), lam[-1].abs()))
        except Exception:  # e.g. out of memory: NaN results, and every rank still meets below
            eigs = torch.full((n,), math.nan, dtype=torch.float64, device=kernel.device)
            drift = math.nan
        if world == 1:
            assert eigs is not None
            return eigs, drift
        buffer = torch.full((n + 1,), math.nan, dtype=torch.float64, device=kernel.device)
        if eigs is not None:
            buffer[:n] = eigs
        buffer[n] = drift
        gathered = trainer.strategy.all_gather(buffer)  # (world, n + 1)
        return gathered[0, :n].clone(), float(gathered[0 if kernel0 is None else 1, n])

    def _probe_pl_metrics(
        self, pl_module: pl.LightningModule, kernel: Tensor | None, t: int
    ) -> dict[str, float]:
        assert self._probe is not None and self.loss_fn is not None
        if self._probe.y is None:
            self._warn_once("no_targets", "loss_fn is set but the probe has no targets; pass target_fn=.")
            return {}
        fn = self._model_fn(pl_module)
        params = trainer_params(pl_module)
        x, y = self._probe.x, self._probe.y
        loss_fn = self.loss_fn
        with torch.no_grad():
            out = fn(params, x)
        out = out.detach().requires_grad_(True)
        loss = loss_fn(out, y)
        (g,) = torch.autograd.grad(loss, out)
        loss_value = float(loss.detach())
        if kernel is not None and self.kind == "full":
            grad_norm_sq = ntk_gradient_norm_sq(kernel, g.reshape(-1).to(torch.float64))
        else:
            grads = torch.func.grad(lambda p: loss_fn(fn(p, x), y))(params)
            grad_norm_sq = float(sum((v.double() ** 2).sum() for v in grads.values()))
        self._probe_losses.append((t, loss_value))
        loss_star = self._loss_star(self._probe_losses)
        gap = loss_value - loss_star
        metrics = {"pl/ratio_probe": pl_ratio(grad_norm_sq, gap)}
        if kernel is not None and self.kind == "full" and gap > 0:
            g64 = g.reshape(-1).to(torch.float64)
            self._mu_ntk = ntk_pl_bounds(kernel, g64, gap, kernel_eigenvalues=self._kernel_eigs).lower
            metrics["pl/mu_ntk"] = self._mu_ntk
        return metrics

    # ------------------------------------------------------------------ step-level PL and rate
    def _loss_star(self, window: Iterable[tuple[int, float]], running_min: float | None = None) -> float:
        """``L*`` for a window of ``(step, loss)``; ``running_min`` is the lowest loss of the run so far."""
        if self.loss_star == "running_min":
            lowest = min(v for _, v in window) if running_min is None else running_min
            return estimate_loss_star([lowest], "running_min", margin=self.loss_star_margin)
        if self.loss_star == "fit":
            steps = [s for s, _ in window]
            losses = [v for _, v in window]
            if len(losses) < 4:
                return 0.0 if not losses else min(losses) - abs(min(losses)) * self.loss_star_margin
            return estimate_loss_star(losses, "fit", steps=steps)
        return estimate_loss_star((), self.loss_star)  # "zero" or a number: the losses are not read

    def _flush(self, trainer: pl.Trainer) -> None:
        """Compute and record every finished step not yet computed, in step order; queue the writes.

        Runs at the same steps on every rank (every ``flush_every`` steps, around NTK samples,
        at checkpoints and at the end of training), so its one collective (the mean loss over
        ranks) is entered by all of them.
        """
        records, self._pending = self._pending, []
        if not records:
            return
        wanted = [r for r in records if r.wants_step]
        step_metrics = self._step_metrics(trainer, wanted) if wanted else {}
        samples: list[tuple[int, dict[str, float]]] = []
        walltimes: list[float] = []
        for record in records:
            metrics = dict(record.probe)
            metrics.update(step_metrics.get(record.step, {}))
            if not metrics:
                continue
            self._record(metrics, record.step)
            samples.append((record.step, {self.prefix + k: float(v) for k, v in metrics.items()}))
            walltimes.append(record.walltime)
        update_callback_metrics(trainer, samples)
        if trainer.is_global_zero:
            self._outbox.extend(zip(samples, walltimes, strict=True))

    def _write(self, trainer: pl.Trainer, limit: int | None = None) -> None:
        """Write up to ``limit`` (all for ``None``) computed samples to the loggers, oldest first.

        A flush computes a batch of steps at once, but writing them all at once would make the
        training thread wait on TensorBoard's writer queue (whose thread serialises and checksums
        every event in Python); a few per step let that thread work while the model computes.
        """
        count = len(self._outbox) if limit is None else min(limit, len(self._outbox))
        if count:
            batch = [self._outbox.popleft() for _ in range(count)]
            write_samples(trainer, [sample for sample, _ in batch], walltimes=[w for _, w in batch])

    def _step_metrics(self, trainer: pl.Trainer, records: list[_StepRecord]) -> dict[int, dict[str, float]]:
        """Step-level PL and rate quantities of ``records`` (in step order), step → metrics."""
        with_loss = [r for r in records if r.loss is not None]
        if len(with_loss) < len(records):
            self._warn_once(
                "no_loss",
                "training_step returned no loss tensor (None, or a dict without 'loss'); the step-level PL "
                "and rate quantities need it and are not logged.",
            )
        if not with_loss:
            return {}
        # One stack, one collective and one device→host copy for the whole batch of steps.
        losses_t = _stack_float64([r.loss for r in with_loss if r.loss is not None])
        if trainer.world_size > 1:
            losses_t = trainer.strategy.reduce(losses_t, reduce_op="mean")
        losses = losses_t.cpu().tolist()
        squares = [r.grad_norm_sq for r in with_loss if r.grad_norm_sq is not None]
        values = iter(_stack_float64(squares).cpu().tolist() if squares else [])
        grad_norm_sq = [next(values) if r.grad_norm_sq is not None else math.nan for r in with_loss]

        out: dict[int, dict[str, float]] = {}
        rows: list[tuple[int, float, float]] = []  # (end index in the window history, L*, μ) per rate row
        history: list[tuple[int, float]] = list(self._window)
        for record, loss_value, gsq in zip(with_loss, losses, grad_norm_sq, strict=True):
            t = record.step
            if not (math.isfinite(loss_value) and math.isfinite(gsq)):
                self._skip("nonfinite_loss", f"non-finite loss {loss_value} or squared gradient norm {gsq}")
                out[t] = {"skipped/nonfinite_loss": float(self._skips["nonfinite_loss"])}
                continue
            self._window.append((t, loss_value))
            history.append((t, loss_value))
            self._running_min = min(self._running_min, loss_value)
            loss_star = self._loss_star(self._window, self._running_min)
            gap = loss_value - loss_star
            metrics: dict[str, float] = {"pl/gap": gap}
            if gap <= 0:
                self._skip("nonpositive_gap", f"non-positive gap {gap} (L* = {loss_star})", warn=False)
                metrics["skipped/nonpositive_gap"] = float(self._skips["nonpositive_gap"])
            else:
                ratio = pl_ratio(gsq, gap)
                if "pl" in self._parts:
                    metrics["pl/ratio_step"] = ratio
                self._envelope.update(ratio)
            envelope_min = self._envelope.minimum
            if "pl" in self._parts:
                metrics["pl/envelope_min"] = envelope_min
                metrics["pl/envelope_q05"] = self._envelope.quantile_value
            out[t] = metrics
            if "rate" in self._parts:
                mu = self._mu_ntk if math.isfinite(self._mu_ntk) else envelope_min
                rows.append((len(history) - 1, loss_star, mu))
        if rows:
            self._rate_metrics(history, rows, with_loss, out)
        return out

    def _rate_metrics(
        self,
        history: list[tuple[int, float]],
        rows: list[tuple[int, float, float]],
        records: list[_StepRecord],
        out: dict[int, dict[str, float]],
    ) -> None:
        """Add the rate fit over each row's trailing window to ``out``, all rows in one batched fit."""
        w = self.rate_window
        steps = np.array([s for s, _ in history], dtype=np.float64)
        losses = np.array([v for _, v in history], dtype=np.float64)
        pad = np.full(w - 1, np.nan)
        end = np.array([r[0] for r in rows])
        index = end[:, None] + np.arange(w)  # window of the entry at `end` in the padded arrays
        step_rows = np.concatenate([pad, steps])[index]
        gap_rows = np.concatenate([pad, losses])[index] - np.array([r[1] for r in rows])[:, None]
        fits = fit_linear_rate_rows(gap_rows, step_rows)
        regimes = classify_regime_rows(gap_rows, step_rows)
        by_step = {r.step: r for r in records}
        for k, (e, _, mu) in enumerate(rows):
            if fits.num_points[k] < self.rate_min_points:
                continue
            t = int(steps[e])
            metrics = out[t]
            metrics.update(
                {
                    "rate/slope": float(fits.slope[k]),
                    "rate/contraction": float(fits.contraction[k]),
                    "rate/half_life": float(fits.half_life[k]),
                    "rate/r2": float(fits.r2[k]),
                    "rate/regime": REGIME_CODES[str(regimes[k].value)],
                }
            )
            record = by_step[t]
            if not record.plain_sgd:
                self._warn_once(
                    "not_plain_sgd",
                    "the optimizer is not plain SGD (momentum, Nesterov or an adaptive method): the "
                    "predicted contraction 1 − 2ημ(1 − ηβ/2) holds for gradient descent only and is not "
                    "logged; the measured rate still is.",
                )
                continue
            lr = math.nan if record.lr is None else float(record.lr)
            if math.isfinite(mu) and math.isfinite(lr):
                beta = self._beta if math.isfinite(self._beta) else None
                metrics["rate/contraction_pred"] = predicted_contraction(lr, mu, beta)

    # ------------------------------------------------------------------ bookkeeping
    def _skip(self, cause: str, detail: str, warn: bool = True) -> None:
        self._skips[cause] += 1
        if warn:
            self._warn_once(
                cause,
                f"{type(self).__name__} skipped a sample ({cause}): {detail}. Training is unaffected; the "
                f"monitor counts these under '{self.prefix}skipped/{cause}' and resumes at the next "
                "scheduled "
                "step. This warning is shown once.",
            )

    def _warn_once(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        rank_zero_warn(message, category=LPLRWarning)

    def _record(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._last[key] = value
            self._history.setdefault(key, deque(maxlen=_HISTORY_LENGTH)).append((step, value))

    def _keys(self) -> set[str]:
        """Every key this monitor can write, with the prefix."""
        return {self.prefix + key for key in ALL_KEYS + SKIP_KEYS}

    @property
    def history(self) -> dict[str, list[tuple[int, float]]]:
        """What this process logged, key (without prefix) → ``[(step, value), …]``.

        The last 100 000 samples of each key are kept in memory (the loggers have them all),
        so a long run does not grow without bound.
        """
        return {key: list(values) for key, values in self._history.items()}

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped so far, by cause."""
        return dict(self._skips)

    def summary(self) -> dict[str, float]:
        """The latest value of every quantity (key without prefix → value), plus run aggregates."""
        out = dict(self._last)
        inside = [v for _, v in self._history.get("region/inside", ())]
        if inside:
            out["region/inside_fraction"] = sum(inside) / len(inside)
        lam = [v for _, v in self._history.get("ntk/lambda_min", ())]
        if lam:
            out["ntk/lambda_min_lowest"] = min(lam)
        for cause, count in self._skips.items():
            out[f"skipped/{cause}"] = float(count)
        return out

    def summary_markdown(self) -> str:
        """A short markdown report of the run so far (written to TensorBoard at the end of fit)."""
        s = self.summary()

        def fmt(key: str) -> str:
            value = s.get(key)
            return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"

        regime = {1.0: "linear", 0.0: "undetermined", -1.0: "sublinear"}.get(
            s.get("rate/regime", math.nan), "n/a"
        )
        lines = [
            "| quantity | value |",
            "|---|---|",
            f"| regime (last window) | {regime} |",
            f"| contraction per step, measured | {fmt('rate/contraction')} (R² {fmt('rate/r2')}) |",
            f"| contraction per step, predicted | {fmt('rate/contraction_pred')} |",
            f"| PL envelope min / q05 | {fmt('pl/envelope_min')} / {fmt('pl/envelope_q05')} |",
            f"| μ_NTK (last) | {fmt('pl/mu_ntk')} |",
            f"| NTK λ_min (last, lowest) | {fmt('ntk/lambda_min')}, {fmt('ntk/lambda_min_lowest')} |",
            f"| NTK drift (op) | {fmt('ntk/drift_op')} |",
            f"| parameter drift | {fmt('param/drift')} |",
            f"| certificate μ_cert (last) | {fmt('region/mu_cert')} |",
            f"| fraction of NTK samples inside region | {fmt('region/inside_fraction')} |",
            f"| skipped samples | {', '.join(f'{k}: {v}' for k, v in self._skips.items())} |",
        ]
        return "\n".join(lines)


class LPLRWarning(UserWarning):
    """A monitor could not measure something; training is unaffected."""


def trainer_params(module: nn.Module) -> dict[str, Tensor]:
    """The module's trainable parameters, detached (shared storage, no copy)."""
    return trainable_params(module)


def _param_distance(params: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for name, value in params.items():
        ref = reference.get(name)
        if ref is None:
            continue
        total = total + ((value.double() - ref.double()) ** 2).sum().cpu()
    return float(total.sqrt())


def _monitored_keys(trainer: pl.Trainer) -> set[str]:
    """Keys of ``trainer.callback_metrics`` that callbacks and LR schedulers monitor."""
    keys = {getattr(cb, "monitor", None) for cb in trainer.callbacks}
    keys.update(getattr(config, "monitor", None) for config in getattr(trainer, "lr_scheduler_configs", ()))
    return {k for k in keys if isinstance(k, str)}


@dataclass
class _StepRecord:
    """What one optimizer step left for the monitor, kept on the device until it is written."""

    step: int
    wants_step: bool
    probe: dict[str, float] = field(default_factory=dict)
    """Metrics of the NTK/probe sample taken at this step."""
    loss: Tensor | None = None
    """The training loss (summed over micro-batches), detached, on the device."""
    grad_norm_sq: Tensor | None = None
    """``‖∇L‖²`` of the gradients the optimizers are about to apply, 0-d, on the device."""
    lr: Any = None
    """The first optimizer's step size at this step (a float, or a 0-d tensor copy)."""
    plain_sgd: bool = False
    walltime: float = math.nan
    """When the step ended (``time.time()``), the wall time of its logged events."""


def _norm_dtype(tensor: Tensor) -> torch.dtype:
    """float32 for half-precision gradients (their squares overflow), else their own dtype."""
    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype


def _grad_norm(optimizer: torch.optim.Optimizer) -> Tensor | None:
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


def _stack_float64(values: list[Tensor]) -> Tensor:
    """One float64 1-D tensor of 0-d tensors (possibly of different dtypes)."""
    if all(v.dtype == values[0].dtype for v in values):
        return torch.stack(values).to(torch.float64)
    return torch.stack([v.to(torch.float64) for v in values])


def _loss_of(outputs: Any) -> Tensor | None:
    if isinstance(outputs, Tensor):
        return outputs if outputs.numel() == 1 else None
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
        return loss if isinstance(loss, Tensor) and loss.numel() == 1 else None
    return None


def _is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    if type(optimizer) is not torch.optim.SGD:
        return False
    return all(g.get("momentum", 0) == 0 and not g.get("nesterov", False) for g in optimizer.param_groups)


def _current_lr(trainer: pl.Trainer) -> float:
    optimizers = trainer.optimizers
    if not optimizers:
        return math.nan
    return float(optimizers[0].param_groups[0].get("lr", math.nan))


@contextlib.contextmanager
def _preserved(module: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag and the global RNG states on exit."""
    modes = [(m, m.training) for m in module.modules()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextlib.contextmanager
def _compute_context(module: nn.Module) -> Iterator[None]:
    """Gradients on, inference mode and autocast off: the NTK is computed in full precision."""
    device_type = next((p.device.type for p in module.parameters()), "cpu")
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type, enabled=False):
        yield
