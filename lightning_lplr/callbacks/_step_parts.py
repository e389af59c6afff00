"""The step-level parts of a monitor: the gap series, the PL ratio with its envelope, the linear rate.

A flush hands a batch of finished steps to :class:`GapSeries`, which reduces the losses over
ranks (one collective) and turns each step into a gap ``Δ_t = L_t − L*``; :class:`PLPart` turns
gaps and gradient norms into PL ratios and their lower envelope; :class:`RatePart` fits
``log Δ`` over a trailing window for every step of the batch in one vectorised pass.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_lplr.callbacks._journal import Journal
from lightning_lplr.callbacks._step_buffer import StepRecord, stack_float64
from lightning_lplr.functional.pl import LowerEnvelope, estimate_loss_star, fit_loss_star, pl_ratio
from lightning_lplr.functional.rate import classify_regime_rows, fit_linear_rate_rows
from lightning_lplr.reporting.keys import REGIME_CODES

__all__ = ["FIT_EVERY", "GapSeries", "PLPart", "RatePart", "StepGap", "step_metrics"]

FIT_EVERY = 50
"""``loss_star='fit'`` re-estimates ``L*`` every this many steps, from past losses only."""


@dataclass
class StepGap:
    """One finished step seen through the gap series."""

    record: StepRecord
    loss: float
    grad_norm_sq: float
    loss_star: float
    gap: float
    index: int
    """Position of this step in :attr:`GapSeries.window` history of the batch (for the rate rows)."""


class GapSeries:
    """Losses of the recent steps, ``L*`` and the gap ``Δ_t = L_t − L*`` of each new step.

    Args:
        loss_star: ``"zero"``, ``"running_min"``, ``"fit"`` or a number.
        margin: relative safety margin of ``"running_min"``.
        window: steps kept for ``"fit"`` and for the rate fits.
        journal: the monitor's skip counters and warnings.
    """

    def __init__(self, loss_star: str | float, margin: float, window: int, journal: Journal) -> None:
        self.loss_star = loss_star
        self.margin = margin
        self.journal = journal
        self.window: deque[tuple[int, float]] = deque(maxlen=window)
        self.running_min = math.inf
        self.fitted = math.nan
        self.fit_step = -1

    def star(self, window: Iterable[tuple[int, float]], running_min: float | None = None) -> float:
        """``L*`` for a window of ``(step, loss)`` seen so far.

        ``"fit"``: the cached past-only fit of the step losses; for another window (the probe losses
        of NTK samples, a few points far apart) a fit of that window's past points.
        """
        if self.loss_star == "running_min":
            lowest = min(v for _, v in window) if running_min is None else running_min
            return estimate_loss_star([lowest], "running_min", margin=self.margin)
        if self.loss_star == "fit":
            if window is self.window:
                return self.fitted
            past = list(window)[:-1]
            return fit_loss_star([s for s, _ in past], [v for _, v in past], min_points=3)
        return estimate_loss_star((), self.loss_star)  # "zero" or a number: the losses are not read

    def _refit(self, step: int) -> None:
        """``"fit"``: re-estimate ``L*`` every :data:`FIT_EVERY` steps from the losses before ``step``."""
        if self.loss_star != "fit" or (self.fit_step >= 0 and step - self.fit_step < FIT_EVERY):
            return
        self.fit_step = step
        self.fitted = fit_loss_star([s for s, _ in self.window], [v for _, v in self.window])

    def gaps(
        self, records: list[StepRecord], losses: list[float], grad_norm_sq: list[float]
    ) -> tuple[list[StepGap], list[tuple[int, float]], dict[int, dict[str, float]]]:
        """The gap of every finite step (in order), the window history they index, skip metrics by step."""
        history: list[tuple[int, float]] = list(self.window)
        out: list[StepGap] = []
        skipped: dict[int, dict[str, float]] = {}
        for record, loss, gsq in zip(records, losses, grad_norm_sq, strict=True):
            t = record.step
            if not math.isfinite(loss) or (record.optimizers <= 1 and not math.isfinite(gsq)):
                skipped[t] = self.journal.skip(
                    "nonfinite_loss", f"non-finite loss {loss} or squared gradient norm {gsq}"
                )
                continue
            self._refit(t)
            self.window.append((t, loss))
            history.append((t, loss))
            self.running_min = min(self.running_min, loss)
            star = self.star(self.window, self.running_min)
            if math.isnan(star):
                skipped[t] = self.journal.skip(
                    "loss_star_unidentified",
                    "loss_star='fit' cannot identify L* from the losses so far (too few, not decaying, or no "
                    "plateau in the window)",
                    warn=self.fit_step > FIT_EVERY,
                )
                continue
            out.append(StepGap(record, loss, gsq, star, loss - star, len(history) - 1))
        return out, history, skipped

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": list(self.window),
            "running_min": self.running_min,
            "fitted": self.fitted,
            "fit_step": self.fit_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = deque(state.get("window", []), maxlen=self.window.maxlen)
        self.running_min = state.get("running_min", math.inf)
        self.fitted = state.get("fitted", math.nan)
        self.fit_step = state.get("fit_step", -1)


class PLPart:
    """Step PL ratio ``‖∇L‖²/(2Δ)`` and its lower envelope (running minimum, low quantile).

    Args:
        window: steps in the envelope's window (``None``: the whole run).
        quantile: the robust low quantile.
        journal: the monitor's skip counters and warnings.
        log: whether the ratio and envelope keys are written (the envelope is kept either way).
    """

    def __init__(self, window: int | None, quantile: float, journal: Journal, *, log: bool = True) -> None:
        self.envelope = LowerEnvelope(window=window, quantile=quantile)
        self.journal = journal
        self.log = log

    def metrics(self, step: StepGap) -> dict[str, float]:
        """``pl/*`` of one step (also counts a non-positive gap)."""
        metrics: dict[str, float] = {"pl/gap": step.gap}
        if step.gap <= 0:
            metrics.update(
                self.journal.skip(
                    "nonpositive_gap", f"non-positive gap {step.gap} (L* = {step.loss_star})", warn=False
                )
            )
        elif step.record.optimizers > 1:
            metrics.update(
                self.journal.skip(
                    "several_optimizers",
                    f"{step.record.optimizers} optimizers stepped in one training step; one returned loss "
                    "cannot be paired with several optimizers' gradients, so pl/ratio_step is not logged",
                )
            )
        else:
            ratio = pl_ratio(step.grad_norm_sq, step.gap)
            if self.log:
                metrics["pl/ratio_step"] = ratio
            self.envelope.update(ratio)
        if self.log:
            metrics["pl/envelope_min"] = self.envelope.minimum
            metrics["pl/envelope_q05"] = self.envelope.quantile_value
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"envelope": self.envelope.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "envelope" in state:
            self.envelope.load_state_dict(state["envelope"])


class RatePart:
    """Least-squares fit of ``log Δ_t`` over the trailing window of every step, and the predicted rate.

    Args:
        window: steps in the fit's window.
        min_points: gaps needed before a fit is logged.
        journal: the monitor's skip counters and warnings.
    """

    def __init__(self, window: int, min_points: int, journal: Journal) -> None:
        self.window = window
        self.min_points = min_points
        self.journal = journal

    def metrics(
        self,
        history: list[tuple[int, float]],
        steps: list[StepGap],
        predict: Callable[[StepGap], tuple[str | None, float]] | None,
    ) -> dict[int, dict[str, float]]:
        """``rate/*`` of each step of ``steps``; ``predict(step) -> (reason, ρ_pred)`` where it applies."""
        if not steps:
            return {}
        w = self.window
        step_arr = np.array([s for s, _ in history], dtype=np.float64)
        losses = np.array([v for _, v in history], dtype=np.float64)
        pad = np.full(w - 1, np.nan)
        index = np.array([s.index for s in steps])[:, None] + np.arange(w)  # window ending at each step
        step_rows = np.concatenate([pad, step_arr])[index]
        gap_rows = np.concatenate([pad, losses])[index] - np.array([s.loss_star for s in steps])[:, None]
        fits = fit_linear_rate_rows(gap_rows, step_rows)
        regimes = classify_regime_rows(gap_rows, step_rows)
        out: dict[int, dict[str, float]] = {}
        for k, step in enumerate(steps):
            if fits.num_points[k] < self.min_points:
                continue
            metrics = {
                "rate/slope": float(fits.slope[k]),
                "rate/contraction": float(fits.contraction[k]),
                "rate/half_life": float(fits.half_life[k]),
                "rate/r2": float(fits.r2[k]),
                "rate/regime": REGIME_CODES[str(regimes[k].value)],
            }
            out[step.record.step] = metrics
            if predict is None:
                continue
            reason, value = predict(step)
            if reason is None:
                metrics["rate/contraction_pred"] = value
            else:
                metrics.update(
                    self.journal.skip(
                        f"contraction_pred_{reason}",
                        _REASONS.get(reason, reason),
                        warn=True,
                    )
                )
        return out


_REASONS = {
    "several_optimizers": "several optimizers step in one training step",
    "not_plain_sgd": "the optimizer is not plain SGD (momentum, Nesterov or an adaptive method)",
    "weight_decay": "the optimizer applies weight decay",
    "several_lrs": "the parameter groups have different learning rates",
    "clipping": "gradient clipping is active",
    "not_full_batch": "an optimizer step does not see the whole training set (mini-batches)",
    "probe_not_training_set": "the probe is not the whole training set",
    "no_loss_fn": "no loss_fn is given, so μ_NTK and β are unknown",
    "no_full_kernel": "the kernel is not the full one",
    "loss_mismatch": "loss_fn on the probe differs from the training loss (or could not be compared)",
    "no_mu": "μ_NTK or β is not known at this step",
    "unstable_step": "η·β ≥ 2: gradient descent is past its stability threshold",
    "mu_above_beta": "μ > β: the gap's L* is likely wrong (μ ≤ β holds for any PL, β-smooth loss)",
}
"""What each reason of an absent ``rate/contraction_pred`` means (the once-per-reason warning)."""


def step_metrics(
    records: list[StepRecord],
    collective: Any,
    gaps: GapSeries,
    pl_part: PLPart | None,
    rate: RatePart | None,
    predict: Callable[[StepGap], tuple[str | None, float]] | None,
    journal: Journal,
) -> dict[int, dict[str, float]]:
    """Step-level PL and rate quantities of a batch of finished steps (in step order), step → metrics.

    One stack, one collective (the mean loss over ranks) and one device→host copy serve the whole
    batch; the predictions are made in step order, so a sample's loss check holds from its step on.
    """
    with_loss = [r for r in records if r.loss is not None]
    if len(with_loss) < len(records):
        journal.warn_once(
            "no_loss",
            "training_step returned no loss tensor (None, or a dict without 'loss'); the step-level PL "
            "and rate quantities need it and are not logged.",
        )
    if not with_loss:
        return {}
    losses = collective.all_reduce(stack_float64([r.loss for r in with_loss if r.loss is not None]), "mean")
    squares = [r.grad_norm_sq for r in with_loss if r.grad_norm_sq is not None]
    values = iter(stack_float64(squares).cpu().tolist() if squares else [])
    grad_norm_sq = [next(values) if r.grad_norm_sq is not None else math.nan for r in with_loss]
    steps, history, out = gaps.gaps(with_loss, losses.cpu().tolist(), grad_norm_sq)
    predictions: dict[int, tuple[str | None, float]] = {}
    for step in steps:
        out[step.record.step] = pl_part.metrics(step) if pl_part is not None else {}
        if predict is not None:
            predictions[step.record.step] = predict(step)
    if rate is not None:
        lookup = (lambda step: predictions[step.record.step]) if predict is not None else None
        for t, metrics in rate.metrics(history, steps, lookup).items():
            out[t].update(metrics)
    return out
