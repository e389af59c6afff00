"""``LPLRMonitor``: NTK, PL and linear-rate monitoring in one Lightning callback.

The callback decides *when* to measure, *on what* (the probe), *where to log* and
*what to persist*; every number comes from :mod:`lightning_lplr.functional`. It composes the
three parts that :class:`~lightning_lplr.NTKMonitor`, :class:`~lightning_lplr.PLMonitor` and
:class:`~lightning_lplr.LinearRateMonitor` use on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_lplr.callbacks._config import PRESETS, NTKConfig, Preset, StepConfig
from lightning_lplr.callbacks._journal import Journal, LPLRWarning
from lightning_lplr.callbacks._monitor import Monitor
from lightning_lplr.callbacks._ntk_part import NTKPart
from lightning_lplr.callbacks._step_parts import GapSeries, PLPart, RatePart
from lightning_lplr.reporting.keys import DEFAULT_PREFIX
from lightning_lplr.schedules import Schedule

__all__ = ["PRESETS", "LPLRMonitor", "LPLRWarning", "Preset"]


class LPLRMonitor(Monitor):
    r"""Monitor whether training sits in a locally Polyak–Łojasiewicz region.

    Add it to a ``Trainer`` and train as usual; nothing in the ``training_step``
    changes. At steps chosen by ``ntk_every`` it computes the empirical NTK ``K`` of a
    fixed probe of ``m`` training samples (``Θ = K/m``; eval mode, detached parameters,
    the module's modes, the RNG and every ``.grad`` left exactly as they were). At
    every step chosen by ``step_every`` it reads the training loss and the gradient
    norm the optimizer is about to use and estimates the PL ratio and the linear rate.

    Definitions (see ``docs/``): gap ``Δ_t = L(θ_t) − L*``; step PL ratio
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
        norm_mode: str = "probe",
        full_batch: bool | None = None,
    ) -> None:
        arguments = dict(locals())
        config = NTKConfig.build(arguments)
        step = StepConfig.build(arguments)
        self.preset, self.kind, self.probe_size = preset, config.kind, config.probe_size
        self.ntk_every, self.loss_fn, self.loss_star = config.ntk_every, loss_fn, step.loss_star
        journal = Journal(type(self).__name__, prefix)
        gaps = GapSeries(step.loss_star, step.loss_star_margin, step.rate_window, journal)
        self._assemble(
            prefix=prefix,
            step=step,
            ntk=NTKPart(config, kernel=True, gaps=gaps, journal=journal),
            gaps=gaps,
            pl_part=PLPart(step.envelope_window, step.envelope_quantile, journal),
            rate=RatePart(step.rate_window, step.rate_min_points, journal),
            journal=journal,
            log_histograms=log_histograms,
        )

    def _state_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "probe_size": self.probe_size, **super()._state_config()}
