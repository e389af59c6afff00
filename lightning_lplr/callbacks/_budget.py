r"""NTK samples within a share of the training time: the planner behind a monitor's ``overhead=``.

An NTK sample costs what it costs on the user's model — a few training steps on a small MLP,
tens on a ResNet — so a fixed schedule is either wasteful or blind. :class:`NTKBudget` keeps
the time spent in NTK samples within ``overhead`` times the *monitor-free* training time (the
wall time of the fit minus everything the monitor itself did), the first sample included, and
spreads the samples it can afford over the run.

**What it measures.** Its :class:`~._training_clock.TrainingClock` (clock injectable) between
:meth:`NTKBudget.start` and :meth:`NTKBudget.finish`, minus the time the caller spends inside
:meth:`NTKBudget.paused` (the monitor's hooks): that is the training time ``τ``. The time inside
:meth:`NTKBudget.sampling` (nested in a pause or not) is NTK time, ``S``. :meth:`NTKBudget.decide`
is called at the start of every optimizer step, so ``τ`` is observed at every step boundary and
the monitor-free time per step ``ŝ`` is the mean over this fit's steps, the first one (warm-up)
left out once there is a second.

**The rule.** At a candidate step ``t`` (one where the schedule says ``True``), with ``ρ`` the
overhead, ``T`` the planned number of steps, ``Ŵ = τ + ŝ·max(0, T − t)`` the projected training
time of the whole run (``Ŵ = τ`` when ``T`` is unknown), ``B = ρ·Ŵ`` the run's NTK budget, ``c``
the expected cost of a sample (the last one measured), ``k`` the samples taken so far and
``τ_L`` the training time at the last one:

* ``r = ⌊(B − S) / c⌋`` samples are still affordable; take none if ``r < 1``;
* otherwise take one once ``τ ≥ Ŵ / (2r)`` (first sample, ``k = 0``) or
  ``τ ≥ τ_L + (Ŵ − τ_L) / (r + ½)`` (later ones).

Why this rule:

* *Budget* — a sample is taken only if ``S + c ≤ ρ·Ŵ``, so with the cost and the projection
  right the whole run spends at most ``ρ·W`` (W the final training time); an error in ``c``
  (the first sample's cost is a guess, see below) or in ``Ŵ`` costs at most one sample.
* *Spread* — with ``n`` affordable samples of equal cost the rule puts them at the midpoints
  ``(j + ½)·Ŵ/n`` of ``n`` equal slices of the run (the first at ``Ŵ/(2n)``; after a sample at
  the midpoint of its slice, ``Ŵ − τ_L`` is ``r + ½`` slices): one in each third of a run that
  affords three. A first sample taken early or late (a wrong guess of its cost) is corrected by
  spreading the remaining ones evenly over the rest of the run. At no time does the spending
  run ahead of the budget earned so far, ``ρ·τ``, by more than half a sample (plus the error
  of ``c``), so a run stopped early (``EarlyStopping``, ``max_time``) is not overspent either.
* *Unknown length* — with ``Ŵ = τ`` both conditions reduce to ``S + c ≤ ρ·τ``: spend only what
  has been earned, one sample every ``c/ρ`` seconds of training.
* *At least one* — if the run affords a sample (``r ≥ 1``) its first one is due by mid-run,
  and is taken at the first candidate step after that.
* *Scale-free* — every condition compares times with times: a machine uniformly twice as slow
  (or a load on it that slows everything alike) gives the same sample steps.

**The first sample.** Its cost is unknown until it is taken. Before it the planner expects
``prior_steps`` training steps' worth of time (default one step, an optimistic guess: an NTK
sample of a probe of tens of samples costs at least about a training step on the models
measured), or what :meth:`NTKBudget.expect` was told. An optimistic guess keeps the guarantees
above: a run that affords a sample gets one, and a run that does not pays for at most that one
sample and is then told, with the measured cost, how to get one within the budget. ``Θ_0`` needs
no sample at step 0 (the monitor keeps ``θ_0``, a parameter copy, and computes ``Θ_0`` with its
first sample), so step 0 is never a budgeted sample: nothing is known about the step time yet.

**Too short.** When the run cannot afford a single sample, the planner says so once (through
``advise`` and :attr:`NTKBudget.advice`), with the overhead or the run length that would afford
one.

**Several processes.** Every rank calls :meth:`NTKBudget.decide` at every step; at a candidate
step that is due for a decision every rank enters one ``broadcast`` and adopts rank 0's
``(take, next_check)``: the decision and the first step at which to decide again. Ranks agree
without a collective at every candidate step (with a dense schedule that would be one
collective per training step): about one to three broadcasts per sample taken.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from lightning_lplr.callbacks._budget_advice import advice_message
from lightning_lplr.callbacks._training_clock import TrainingClock
from lightning_lplr.functional._checks import check_callable, check_float, check_int

__all__ = ["Broadcast", "Decision", "NTKBudget"]

Decision = tuple[bool, int]
"""``(take, next_check)``: sample at this step; the first step at which to decide again."""

Broadcast = Callable[[Decision], Decision]
"""Rank 0's decision on every rank, e.g. ``lambda d: collective.broadcast(d, src=0)``."""

_MANY = 1 << 30  # "unlimited" samples when a sample costs nothing


class NTKBudget:
    r"""When to take an NTK sample so that NTK time stays within ``overhead`` × training time.

    See the module docstring for the rule and why. The caller's wiring, per fit:
    :meth:`start` at the start of training, :meth:`decide` at the start of every optimizer
    step (on every rank), :meth:`sampling` around each sample, :meth:`paused` around all of the
    monitor's own work (so it is not counted as training time), :meth:`finish` at the end;
    :meth:`state_dict` / :meth:`load_state_dict` in checkpoints.

    Args:
        overhead: NTK time allowed per second of monitor-free training time (``0.05``: 5 %), or
            ``None`` for no budget: :meth:`decide` then returns ``schedule(step)``.
        schedule: the candidate steps, ``step -> bool``: a sample is only ever taken at a step
            where it returns ``True`` (the densest cadence wanted, e.g. every step).
        prior_steps: before any sample has been measured (and without :meth:`expect`), a sample
            is expected to cost this many (monitor-free) training steps.
        clock: seconds, monotonic (``time.perf_counter``; tests pass a fake one).

    Raises:
        ValueError: ``overhead`` not a finite number ``> 0`` nor ``None``; ``schedule`` not
            callable; ``prior_steps`` negative or not finite.

    Example:
        >>> class Clock:  # a fake clock: one step = 1 s, one NTK sample = 2 s
        ...     now = 0.0
        ...     def __call__(self):
        ...         return self.now
        >>> clock = Clock()
        >>> budget = NTKBudget(0.1, lambda step: True, clock=clock)
        >>> budget.start(0, total_steps=100)
        >>> taken = []
        >>> for step in range(100):
        ...     with budget.paused():  # the monitor's hook
        ...         if budget.decide(step):
        ...             with budget.sampling():
        ...                 clock.now += 2.0
        ...             taken.append(step)
        ...     clock.now += 1.0  # the training step
        >>> budget.finish()
        >>> taken  # the first at the 1-step guess, then 4 more spread over the rest
        [5, 27, 48, 69, 90]
        >>> budget.spent_seconds <= 0.1 * budget.trained_seconds
        True
    """

    def __init__(
        self,
        overhead: float | None,
        schedule: Callable[[int], bool],
        *,
        prior_steps: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.overhead = check_float(
            "overhead",
            overhead,
            minimum=0.0,
            strict=True,
            allow_none=True,
            hint="It is the NTK time allowed per second of training, e.g. overhead=0.05 for 5 %; "
            "None samples at every step of the schedule.",
        )
        self.schedule = check_callable("schedule", schedule, allow_none=False, signature="step -> bool")
        self.prior_steps = check_float("prior_steps", prior_steps, minimum=0.0)
        self.clock = TrainingClock(clock)
        """The monitor-free training time and step time this budget plans against."""
        self._broadcast: Broadcast | None = None
        self._advise: Callable[[str], None] | None = None
        self.reset()

    # ------------------------------------------------------------------ run state
    def reset(self) -> None:
        """Forget the run (a new fit without a checkpoint)."""
        self.clock.reset()
        self._spent = 0.0
        self._samples = 0
        self._last_cost: float | None = None
        self._last_sample_trained = 0.0
        self._last_sample_step = -1
        self._next_check = 0
        self._expected: float | None = None
        self.advice: str | None = None
        """The one "this run cannot afford a sample" message, once it has been given."""
        self._start_fit(None)

    def _start_fit(self, total_steps: float | None) -> None:
        self._total = total_steps
        self._once_inside = 0.0  # time in one-time parts of samples (see sampling(once=True))
        self._last_decided: int | None = None
        self.clock.start_fit()

    def start(
        self,
        step: int,
        total_steps: float | None,
        *,
        broadcast: Broadcast | None = None,
        advise: Callable[[str], None] | None = None,
    ) -> None:
        """Start the clock of a fit (``on_train_start``).

        Args:
            step: the step the fit starts at (``trainer.global_step``; > 0 when resumed).
            total_steps: the run's planned optimizer steps, counted from step 0
                (``trainer.estimated_stepping_batches``); ``None``, ``inf`` or not above ``step``:
                unknown, and the budget is what the steps so far have earned.
            broadcast: rank 0's :data:`Decision` on every rank (``None``: one process).
            advise: called once with the "cannot afford a sample" message (e.g. a rank-zero
                warning); the message is also kept in :attr:`advice`.
        """
        step = check_int("step", step, minimum=0)
        total: float | None = None
        if total_steps is not None and math.isfinite(float(total_steps)) and float(total_steps) > step:
            total = float(total_steps)
        self._start_fit(total)
        self._broadcast = broadcast
        self._advise = advise
        # Decide afresh at the fit's first candidate step (every rank starts from the same step and
        # state, so they agree), whatever an earlier fit or the checkpoint planned.
        self._next_check = step
        self.clock.begin()

    def finish(self) -> None:
        """Stop the clock of the fit (``on_train_end``); advise if the run could not afford a sample."""
        if not self.clock.running:
            return
        trained = self.clock.seconds
        step_s = self.clock.step_seconds
        if self.overhead is not None and self.advice is None and step_s is not None:
            if self._samples == 0:
                self._give_advice(self._expected_cost(step_s), trained, step_s, end=True)
            elif self._samples == 1 and self._spent > self.overhead * trained:
                self._give_advice(self._spent, trained, step_s, end=True)
        self.clock.end()

    def expect(self, seconds: float) -> None:
        """The expected cost of the next sample, until one is measured (a caller's prediction).

        Raises:
            ValueError: ``seconds`` negative or not finite.
        """
        self._expected = check_float("seconds", seconds, minimum=0.0)

    # ------------------------------------------------------------------ clocks
    def paused(self) -> contextlib.AbstractContextManager[None]:
        """The monitor's own work: not training time (nested pauses count once)."""
        return self.clock.paused()

    @contextlib.contextmanager
    def sampling(self, *, once: bool = False) -> Iterator[None]:
        """One NTK sample: its time is charged to the budget (and is not training time).

        Args:
            once: a one-time part of a sample, e.g. the kernel at ``θ_0`` computed with the first
                sample: charged to the budget, but neither counted as a sample nor taken as the
                expected cost of the next one (it may be nested in the sample's own ``sampling()``).
        """
        with self.clock.paused():
            started = self.clock.now()
            once_before = self._once_inside
            try:
                yield
            finally:
                elapsed = self.clock.now() - started
                if once:
                    self._spent += elapsed
                    self._once_inside += elapsed
                else:
                    self._record(elapsed - (self._once_inside - once_before))

    @property
    def trained_seconds(self) -> float:
        """Monitor-free training time so far, earlier fits included (seconds)."""
        return self.clock.seconds

    @property
    def spent_seconds(self) -> float:
        """Time spent in NTK samples so far (seconds)."""
        return self._spent

    @property
    def samples(self) -> int:
        """NTK samples taken so far."""
        return self._samples

    @property
    def step_seconds(self) -> float | None:
        """Monitor-free seconds per step (``None`` while nothing is known); see :class:`TrainingClock`."""
        return self.clock.step_seconds

    # ------------------------------------------------------------------ the decision
    def decide(self, step: int) -> bool:
        """Whether to take an NTK sample at ``step`` (call at the start of every optimizer step, every rank).

        A step is decided once: a second call with the same ``step`` (gradient accumulation)
        returns ``False``. Rank 0's decision is every rank's (see ``broadcast`` in :meth:`start`).
        """
        if step == self._last_decided:
            return False
        self._last_decided = step
        if not self.clock.running:  # decide() without start(): start the clock here
            self._start_fit(self._total)
            self.clock.begin()
        self.clock.observe(step)
        if not self.schedule(step):
            return False
        if self.overhead is None:
            return True
        if step < self._next_check or step == self._last_sample_step:
            return False
        proposal = self._propose(step)
        take, next_check = self._broadcast(proposal) if self._broadcast is not None else proposal
        self._next_check = int(next_check)
        return bool(take)

    def _expected_cost(self, step_s: float) -> float:
        if self._last_cost is not None:
            return self._last_cost
        if self._expected is not None:
            return self._expected
        return self.prior_steps * step_s

    def _projected(self, step: int, trained: float, step_s: float) -> float:
        """``Ŵ``: training time so far plus the steps still planned at ``step_s`` each."""
        remaining = 0.0 if self._total is None else max(0.0, self._total - step)
        return trained + step_s * remaining

    def _propose(self, step: int) -> Decision:
        """Rank-local decision at a candidate ``step`` (the module docstring's rule)."""
        assert self.overhead is not None and self.clock.last is not None
        step_s = self.clock.step_seconds
        if step_s is None or step_s <= 0.0:
            return False, step + 1  # no step time measured yet (the first step of a fit)
        trained = self.clock.last[1]
        whole = self._projected(step, trained, step_s)
        cost = self._expected_cost(step_s)
        spare = self.overhead * whole - self._spent
        affordable = _MANY if cost <= 0.0 else (math.floor(spare / cost) if spare >= 0.0 else -1)
        if affordable < 1:
            horizon_known = self._total is not None and self._total > step
            if self._samples == 0 and horizon_known and self.advice is None:
                self._give_advice(cost, whole, step_s, end=False)
            if horizon_known:  # the projected budget only moves if the step time does: look again later
                assert self._total is not None
                return False, step + max(1, int((self._total - step) // 2))
            due = (self._spent + cost) / self.overhead  # unknown length: when the steps will have earned it
        elif self._samples == 0:
            due = whole / (2 * affordable)
        else:
            due = self._last_sample_trained + (whole - self._last_sample_trained) / (affordable + 0.5)
        if affordable >= 1 and trained >= due:
            return True, step + 1
        # Decide again at the step predicted to reach ``due`` at the current step time (a step
        # late at most when the steps speed up; earlier, a new prediction, when they slow down).
        return False, step + max(1, math.ceil((due - trained) / step_s - 1e-9))

    def _record(self, cost: float) -> None:
        self._spent += cost
        self._samples += 1
        self._last_cost = cost
        self._last_sample_trained = self.clock.seconds
        last = self.clock.last
        if last is not None:
            self._last_sample_step = last[0]
        step_s = self.clock.step_seconds
        first_of_planned_run = self._samples == 1 and self._total is not None and last is not None
        if first_of_planned_run and self.overhead is not None and self.advice is None and step_s is not None:
            assert last is not None
            whole = self._projected(last[0], self._last_sample_trained, step_s)
            if cost > self.overhead * whole:
                self._give_advice(cost, whole, step_s, end=False)

    def _give_advice(self, cost: float, whole: float, step_s: float, *, end: bool) -> None:
        """Say once that the run cannot afford a sample, and what would afford one."""
        assert self.overhead is not None
        if self._last_cost is not None:
            source: Literal["measured", "predicted", "guessed"] = "measured"
        else:
            source = "predicted" if self._expected is not None else "guessed"
        self.advice = advice_message(
            self.overhead, cost, whole, step_s, source=source, end=end, total_steps=self._total
        )
        if self._advise is not None:
            self._advise(self.advice)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The run's budget so far, plain Python (a resumed run keeps it)."""
        return {
            "version": 1,
            "trained_s": self.clock.seconds,
            "spent_s": self._spent,
            "samples": self._samples,
            "last_cost_s": self._last_cost,
            "last_sample_trained_s": self._last_sample_trained,
            "last_sample_step": self._last_sample_step,
            "step_s": self.clock.step_seconds,
            "advice": self.advice,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s budget (before :meth:`start` of the resumed fit)."""
        self.reset()
        self.clock.before = float(state.get("trained_s", 0.0))
        self._spent = float(state.get("spent_s", 0.0))
        self._samples = int(state.get("samples", 0))
        last_cost = state.get("last_cost_s")
        self._last_cost = None if last_cost is None else float(last_cost)
        self._last_sample_trained = float(state.get("last_sample_trained_s", 0.0))
        self._last_sample_step = int(state.get("last_sample_step", -1))
        step_s = state.get("step_s")
        self.clock.carried_step_s = None if step_s is None else float(step_s)
        self.advice = state.get("advice")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_broadcast"] = None  # closures over a process group: set again by start()
        state["_advise"] = None
        return state
