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
    fixed probe of ``m`` training samples (``Θ = K/m``; dropout off, normalisation layers as
    ``norm_mode`` says, float32 whatever the training precision, detached parameters; the
    module's modes, every RNG and every ``.grad`` left exactly as they were). At every step
    chosen by ``step_every`` it reads the training loss and the gradient norm the optimizer is
    about to use and estimates the PL ratio and the linear rate.

    Definitions (``docs/theory.md``): gap ``Δ_t = L(θ_t) − L*``; step PL ratio
    ``μ̂_t = ‖∇L(θ_t)‖² / (2Δ_t)`` (biased upward by gradient noise under mini-batch SGD;
    the probe ratio is the full-batch one); lower envelope = running min and low quantile of
    ``μ̂``; linear rate = least-squares fit of ``log Δ_t`` over the last ``rate_window`` steps;
    ``μ_NTK = λ_min(K)‖g‖²/(2Δ)`` on the probe (``g = ∂L/∂f``); ``β`` the Gauss–Newton
    sharpness ``λ_max(K^{1/2}HK^{1/2})`` of ``loss_fn`` on the probe; predicted contraction
    ``1 − 2ημ_NTK(1 − ηβ/2)`` only where the theorem applies (plain full-batch GD on the probe
    = the training set with ``loss_fn`` the objective, no clipping, ``η < 2/β``, ``μ ≤ β``);
    NTK drift ``‖Θ_t − Θ_0‖/‖Θ_0‖``; parameter drift ``r_t = ‖θ_t − θ_0‖``; empirical Lipschitz
    constant ``L̂ = max_s ‖Θ_s − Θ_0‖₂ / r_s`` and region estimate ``λ_min(Θ_0) − L̂·r_t``;
    linearisation gap ``‖f_t − f_lin,t‖/‖f_t − f_0‖`` with ``f_lin,t = f_0 + J_0(θ_t − θ_0)``.

    Logged Metrics (each under ``prefix``, default ``"lplr/"``, at the optimizer step
    ``t`` — ``trainer.global_step`` before the step — whose parameters they describe):
        At NTK samples, for the full kernel: ``ntk/lambda_min``, ``ntk/lambda_max``,
        ``ntk/condition_number``, ``ntk/trace``, ``ntk/effective_rank`` (of ``Θ``),
        ``ntk/drift_op``, ``ntk/drift_fro``, ``ntk/lipschitz``, ``region/mu_cert``,
        ``region/inside`` (1 or 0); for another kind the same spectrum and drift keys under
        ``ntk_trace/``, ``ntk_pseudo/`` or ``ntk_loss_gram/``; ``param/drift``, ``lin/gap``,
        ``lin/gap_rel`` (from the second sample on), ``cost/ntk_seconds``. With ``loss_fn``:
        ``pl/ratio_probe``; for the full kernel also ``pl/mu_ntk``, ``curv/beta``,
        ``ntk/eta_beta`` and, where the kernel prediction applies, ``lin/loss_pred``,
        ``lin/loss_probe``, ``lin/loss_ratio``.
        At step samples: ``pl/gap``, ``pl/ratio_step`` (one optimizer only),
        ``pl/envelope_min``, ``pl/envelope_q05``; once ``rate_min_points`` gaps are in the
        window: ``rate/slope``, ``rate/contraction``, ``rate/half_life``, ``rate/r2``,
        ``rate/regime`` (1 linear, 0 undetermined, −1 sublinear) and ``rate/contraction_pred``
        where it applies. Cumulative skip counts: ``skipped/nonfinite_loss``,
        ``skipped/nonpositive_gap``, ``skipped/ntk_error``, ``skipped/several_optimizers``,
        ``skipped/loss_star_unidentified``, ``skipped/lin_<reason>`` and
        ``skipped/contraction_pred_<reason>`` (why the prediction is absent).
        Once per run a schema marker (what the keys assume); TensorBoard loggers also get the
        "LPLR" custom-scalars layout, a histogram ``ntk/eigenvalues`` per NTK sample and the
        report of the run as markdown text (``summary``) at the end of fit.

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
        input_fn: batch → model inputs: a tensor (``forward(x)``), a tuple (positional) or a dict
            (keywords). Default: a tensor batch; a tuple's first element (its first ``k`` when
            ``forward`` takes ``k`` positional inputs); a dict without its label keys.
        target_fn: batch → targets (default: a tuple's second element or a dict's label entry).
        output_fn: model output → tensor ``(batch, *out)``. Default: the tensor; a tuple's first
            element; a mapping's / ``ModelOutput``'s / dataclass's ``logits``, else its first tensor.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` on the probe, the loss you train with;
            enables the probe PL ratio, ``μ_NTK``, ``β`` and the theory's predictions.
        kind: NTK kind, ``"full"``, ``"trace"``, ``"pseudo"`` or ``"loss_gram"`` (the Gram of the
            probe's per-sample loss gradients; needs ``loss_fn``). A kernel that does not fit the
            memory budget falls back to pseudo, then to chunks, then to fewer samples (said once).
        implementation: NTK implementation (see ``NTKImplementation``). The default,
            ``"structured"``, is exact for any model and the fastest or close to it on every
            model benchmarked; ``"auto"`` would add a one-time timed trial (seconds to tens of
            seconds on a CNN) to the first sample of the run.
        chunk_size: probe samples per NTK chunk (bounds memory).
        max_memory_bytes: memory budget of one NTK sample (default: half of what the process
            may still allocate; under DDP the smallest over ranks), from which the kind and chunk
            sizes are planned.
        loss_star: ``L*``: ``"zero"`` (interpolating models), a float (the known optimum) or
            ``"fit"`` (``L* + A·e^{bt}`` refitted every 50 steps from past losses; steps before it
            is identifiable are counted, not guessed). ``"running_min"`` is deprecated online
            (the report computes it after the fact).
        loss_star_margin: safety margin of ``"running_min"``.
        envelope_window: steps in the lower envelope's window (``None``: whole run).
        envelope_quantile: the robust low quantile (default 5 %).
        rate_window: logged steps in the rate fit's window.
        rate_min_points: gaps needed before the rate is logged.
        prefix: prefix of every logged key.
        log_histograms: write NTK eigenvalue histograms to TensorBoard loggers.
        norm_mode: which function's kernel for normalisation layers: ``"probe"`` (batch
            statistics of the whole probe at the current weights, held fixed), ``"train"`` (the
            exact batch Jacobian in training mode, about ``m×`` the cost) or ``"eval"`` (running
            statistics). See ``docs/kernels.md``.
        full_batch: whether every optimizer step sees the whole training set (a condition of
            the predicted contraction); ``None`` detects it from the dataloader.
        overhead: NTK time allowed per second of monitor-free training time (``0.05``: the NTK
            samples cost at most 5 % of the run, the first one included). Samples are spread over
            the run at steps of ``ntk_every`` (every step when ``ntk_every`` is not given), decided
            by rank 0 for all ranks; a run too short for one sample says so once, with the fix.
            ``None``: sample at every step of ``ntk_every`` (the preset's log-spaced schedule when
            not given), whatever it costs.
        theta0: where ``θ_0`` (a float32 copy of the trainable parameters, kept for the drift and
            the linearisation) lives: ``"device"``, ``"cpu"`` or ``"auto"`` (the CPU when it would
            take more than 10 % of the memory budget). ``Θ_0`` always stays on the CPU.

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
        overhead: float | None = 0.05,
        theta0: str = "auto",
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
