"""What a run that cannot afford an NTK sample within its overhead budget is told.

One message, given once per run by :class:`~lightning_lplr.callbacks._budget.NTKBudget`: what a
sample costs (measured, predicted or guessed), what the budget allows, and the overhead or the
run length that would afford a sample.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["advice_message"]


def advice_message(
    overhead: float,
    cost: float,
    whole: float,
    step_s: float,
    *,
    source: Literal["measured", "predicted", "guessed"],
    end: bool,
    total_steps: float | None,
) -> str:
    """The "cannot afford a sample" message.

    Args:
        overhead: the budget ``ρ`` (NTK seconds per training second).
        cost: seconds of one sample: the first one measured, or the expected cost.
        whole: the training time the budget applies to (seconds): this fit's (``end``) or the
            run's projection.
        step_s: monitor-free seconds per training step.
        source: where ``cost`` comes from: the first sample, a caller's prediction, or the
            planner's guess.
        end: said at the end of the fit (``whole`` is this fit's training time).
        total_steps: the run's planned steps (``None``: unknown).

    Example:
        >>> print(advice_message(0.05, 2.0, 10.0, 0.1, source="measured", end=False, total_steps=100))
        ... # doctest: +NORMALIZE_WHITESPACE
        NTK samples are budgeted at overhead=0.05 of the training time, and the first NTK sample
        took 2 s (20 training steps of 0.1 s), more than overhead × the run's projected training
        time (10 s over 100 planned steps) = 0.5 s: no further sample fits. For NTK samples within
        the budget, raise overhead= to 0.2 or more, or train for at least 400 steps (overhead=None
        samples at every step of ntk_every, without a budget).
    """
    steps_needed = math.ceil(cost / (overhead * step_s)) if step_s > 0 else 0
    overhead_needed = cost / whole if whole > 0 else math.inf
    steps = f"{cost / step_s:.3g} training steps of {step_s:.3g} s" if step_s > 0 else "no step time"
    if source == "measured":
        what = f"the first NTK sample took {cost:.3g} s ({steps})"
    elif source == "predicted":
        what = f"an NTK sample is expected to cost about {cost:.3g} s ({steps}; as predicted)"
    else:
        what = (
            f"an NTK sample is expected to cost about {cost:.3g} s ({steps}; a guess: none has been "
            "measured yet)"
        )
    if end:
        scope = f"this fit's training time ({whole:.3g} s)"
    else:
        length = f"{total_steps:.0f} planned steps" if total_steps is not None else "the steps so far"
        scope = f"the run's projected training time ({whole:.3g} s over {length})"
    outcome = "no further sample fits" if source == "measured" else "no NTK sample is taken"
    return (
        f"NTK samples are budgeted at overhead={overhead:g} of the training time, and {what}, more than "
        f"overhead × {scope} = {overhead * whole:.3g} s: {outcome}. For NTK samples within the budget, "
        f"raise overhead= to {overhead_needed:.2g} or more, or train for at least {steps_needed} steps "
        "(overhead=None samples at every step of ntk_every, without a budget)."
    )
