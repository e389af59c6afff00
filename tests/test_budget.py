"""The NTK budget planner (``overhead=``), driven by a fake clock: no test here reads the real time.

A simulated run advances a fake clock by a step time per optimizer step (the training) and by a
sample cost inside :meth:`NTKBudget.sampling` (the NTK), with the monitor's hook wrapped in
:meth:`NTKBudget.paused` as the monitor wraps it. Times are dyadic fractions where a test
compares sums exactly, so float addition is exact and the expected values are closed forms.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import threading
from collections.abc import Callable

import pytest

from lightning_lplr.callbacks._budget import NTKBudget
from lightning_lplr.callbacks._collective import InMemoryGroup
from lightning_lplr.schedules import every_n_steps

Times = float | Callable[[int], float]


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _at(times: Times, step: int) -> float:
    return times(step) if callable(times) else times


def every_step(step: int) -> bool:
    return True


def simulate(
    budget: NTKBudget,
    clock: FakeClock,
    *,
    steps: int,
    step_s: Times,
    cost: Times,
    total: float | None,
    start: int = 0,
    hook_s: float = 0.0,
    broadcast: Callable | None = None,
    trace: list[tuple[int, float, float]] | None = None,
    finish: bool = True,
) -> list[int]:
    """Steps ``start .. start+steps-1`` of a run; the steps at which a sample was taken."""
    budget.start(start, total, broadcast=broadcast)
    taken = []
    for t in range(start, start + steps):
        with budget.paused():  # the monitor's on_train_batch_start
            clock.advance(hook_s)
            if budget.decide(t):
                with budget.sampling():
                    clock.advance(_at(cost, t))
                taken.append(t)
            if trace is not None:
                trace.append((t, budget.spent_seconds, budget.trained_seconds))
        clock.advance(_at(step_s, t))  # the training step itself
        with budget.paused():  # the monitor's on_train_batch_end
            clock.advance(hook_s)
    if finish:
        budget.finish()
    return taken


def run(
    overhead: float | None,
    steps: int,
    step_s: Times,
    cost: Times,
    *,
    total: float | str | None = "steps",
    expect: float | None = None,
    schedule: Callable[[int], bool] = every_step,
    **kwargs,
) -> tuple[list[int], NTKBudget, FakeClock]:
    clock = FakeClock()
    budget = NTKBudget(overhead, schedule, clock=clock)
    if expect is not None:
        budget.expect(expect)
    horizon = steps if total == "steps" else total
    taken = simulate(budget, clock, steps=steps, step_s=step_s, cost=cost, total=horizon, **kwargs)
    return taken, budget, clock


def noisy(seed: int, mean: float, spread: float) -> Callable[[int], float]:
    """Per-step times, uniform in ``mean·[1 − spread, 1 + spread]``, fixed by ``seed``."""
    rng = random.Random(seed)
    table: dict[int, float] = {}

    def times(step: int) -> float:
        if step not in table:
            table[step] = mean * (1.0 + spread * (2.0 * rng.random() - 1.0))
        return table[step]

    return times


# ---------------------------------------------------------------------------------------- budget
@pytest.mark.parametrize(
    ("overhead", "steps", "step_s", "cost", "expect"),
    [
        (0.05, 2000, 0.25, 2.0, None),  # long run, 12 samples of 8 steps each
        (0.05, 2000, 0.25, 2.0, 2.0),  # the same, the cost known beforehand
        (0.05, 200, 0.5, 2.5, None),  # 200 steps, 2 samples of 5 steps
        (0.10, 100, 1.0, 2.0, None),  # short run, 5 samples of 2 steps
        (0.20, 400, 0.125, 0.0625, 0.0625),  # a sample cheaper than a step: 160 of them
    ],
    ids=["long", "long-expected", "200-steps", "short", "cheap-sample"],
)
def test_spends_the_budget_and_no_more(
    overhead: float, steps: int, step_s: float, cost: float, expect: float | None
) -> None:
    taken, budget, _ = run(overhead, steps, step_s, cost, expect=expect)
    training = steps * step_s  # the monitor-free time: the hooks' time is excluded
    assert budget.trained_seconds == training
    assert budget.spent_seconds == len(taken) * cost
    # Constant times make the projection exact: the run spends at most overhead × training time,
    # and every sample it affords is taken (candidates at every step, slices of >= 10 steps).
    assert budget.spent_seconds <= overhead * training
    assert len(taken) == math.floor(overhead * training / cost)
    assert budget.advice is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_times_stay_within_one_sample_of_the_budget(seed: int) -> None:
    step_s, cost = noisy(seed, 0.3, 0.5), noisy(100 + seed, 3.0, 0.3)
    taken, budget, _ = run(0.05, 1500, step_s, cost)
    training = sum(step_s(t) for t in range(1500))
    assert budget.trained_seconds == pytest.approx(training, rel=1e-12)  # float sums, reordered
    largest = max(cost(t) for t in taken)
    assert budget.spent_seconds <= 0.05 * training + largest
    # ... and about what it affords: 1500·0.3·0.05 / 3 = 7.5 samples on average.
    assert 5 <= len(taken) <= 9


def test_spending_never_runs_ahead_of_the_earned_budget_by_more_than_half_a_sample() -> None:
    trace: list[tuple[int, float, float]] = []
    cost = 4.0
    taken, _, _ = run(0.05, 3000, 0.25, cost, expect=cost, trace=trace)
    assert len(taken) == math.floor(0.05 * 3000 * 0.25 / cost) == 9
    for _, spent, trained in trace:
        assert spent <= 0.05 * trained + cost / 2
    # A run stopped early (EarlyStopping, max_time) is not overspent either: at a third of the way.
    spent, trained = next((s, tr) for t, s, tr in trace if t == 1000)
    assert spent <= 0.05 * trained + cost / 2


def test_unknown_length_spends_only_what_the_steps_so_far_earned() -> None:
    trace: list[tuple[int, float, float]] = []
    taken, budget, _ = run(0.05, 1000, 1.0, 5.0, total=math.inf, expect=5.0, trace=trace)
    # S + c <= 0.05·τ: a sample every c / (0.05·s) = 100 steps, the first once 100 s are earned.
    assert taken == [100, 200, 300, 400, 500, 600, 700, 800, 900]
    for _, spent, trained in trace:
        assert spent <= 0.05 * trained
    assert budget.spent_seconds <= 0.05 * budget.trained_seconds


# ---------------------------------------------------------------------------------------- spread
@pytest.mark.parametrize("expect", [None, 10.0], ids=["first-cost-guessed", "first-cost-known"])
def test_three_affordable_samples_fall_one_in_each_third(expect: float | None) -> None:
    # 700 steps of 1 s at 5 %: 35 s of budget, three 10-s samples.
    taken, _, _ = run(0.05, 700, 1.0, 10.0, expect=expect)
    assert len(taken) == 3
    assert [t * 3 // 700 for t in taken] == [0, 1, 2]
    if expect is not None:
        # Midpoints of three equal slices, each the first step at or after its due time, measured
        # from the step actually taken: ⌈700/6⌉, ⌈117 + 583/2.5⌉, ⌈351 + 349/1.5⌉.
        assert taken == [117, 351, 584]


def test_many_samples_are_evenly_spaced() -> None:
    taken, _, _ = run(0.05, 4000, 1.0, 20.0, expect=20.0)
    assert len(taken) == 10  # midpoints of ten 400-step slices
    assert taken == [200 + 400 * j for j in range(10)]


def test_samples_only_at_candidate_steps() -> None:
    schedule = every_n_steps(7)
    taken, budget, _ = run(0.05, 2000, 0.5, 4.0, schedule=schedule)
    assert taken and all(t % 7 == 0 for t in taken)
    assert budget.spent_seconds <= 0.05 * 2000 * 0.5
    assert len(taken) == 12  # floor(50 / 4): the coarse candidates cost no sample


# ---------------------------------------------------------------------------------------- first sample
def test_first_sample_is_deferred_until_the_budget_affords_it() -> None:
    # Known cost 10 s, 1 s steps, 5 %, 1000 steps: five samples, the first at the middle of the
    # first 200-step slice; never at step 0 (nothing is known of the step time there).
    taken, _, _ = run(0.05, 1000, 1.0, 10.0, expect=10.0)
    assert taken[0] == 100
    # The default guess (one step per sample) puts the first one at 1 / (2·0.05) = 10 steps.
    taken, _, _ = run(0.05, 1000, 1.0, 10.0)
    assert taken[0] == 10
    assert len(taken) == 5
    # Unknown length: not before the steps have earned its expected cost.
    taken, _, _ = run(0.05, 1000, 1.0, 10.0, total=None, expect=10.0)
    assert taken[0] == 200


def test_no_sample_at_the_first_step_of_a_fit() -> None:
    clock = FakeClock()
    budget = NTKBudget(10.0, every_step, clock=clock)  # a budget that affords everything
    budget.start(0, 100)
    assert budget.decide(0) is False
    clock.advance(1.0)
    assert budget.decide(1) is True


# ---------------------------------------------------------------------------------------- too short
def test_too_short_run_with_a_known_cost_takes_no_sample_and_says_how_to_get_one() -> None:
    messages: list[str] = []
    clock = FakeClock()
    budget = NTKBudget(0.05, every_step, clock=clock)
    budget.expect(20.0)
    budget.start(0, 30, advise=messages.append)
    taken = []
    for t in range(30):
        with budget.paused():
            if budget.decide(t):
                taken.append(t)
        clock.advance(1.0)
    budget.finish()
    assert taken == []
    assert len(messages) == 1 and budget.advice == messages[0]
    # 20 s against 0.05 × 30 s: overhead 20/30 or 20 / (0.05·1 s) = 400 steps would afford it.
    assert "overhead= to 0.67 or more" in messages[0]
    assert "at least 400 steps" in messages[0]
    assert "a guess" not in messages[0]  # expect() gave the cost


def test_too_short_run_pays_one_guessed_sample_then_says_so_with_its_measured_cost() -> None:
    messages: list[str] = []
    clock = FakeClock()
    budget = NTKBudget(0.05, every_step, clock=clock)
    budget.start(0, 30, advise=messages.append)
    taken = []
    for t in range(30):
        with budget.paused():
            if budget.decide(t):
                with budget.sampling():
                    clock.advance(20.0)
                taken.append(t)
        clock.advance(1.0)
    budget.finish()
    # The 1-step guess fits 1.5 s of budget once, at mid-run; the sample takes 20 s.
    assert taken == [15]
    assert budget.spent_seconds - 0.05 * budget.trained_seconds <= 20.0  # over by less than the sample
    assert len(messages) == 1
    assert "the first NTK sample took 20 s" in messages[0]
    assert "overhead= to 0.67 or more" in messages[0] and "at least 400 steps" in messages[0]


def test_too_short_run_of_unknown_length_is_told_at_the_end() -> None:
    messages: list[str] = []
    clock = FakeClock()
    budget = NTKBudget(0.05, every_step, clock=clock)
    budget.expect(20.0)
    budget.start(0, None, advise=messages.append)
    for t in range(50):
        with budget.paused():
            assert not budget.decide(t)
        clock.advance(1.0)
    assert messages == []  # the run may still earn it
    budget.finish()
    assert len(messages) == 1
    assert "this fit's training time (50 s)" in messages[0] and "at least 400 steps" in messages[0]


def test_a_run_that_affords_samples_gives_no_advice() -> None:
    messages: list[str] = []
    clock = FakeClock()
    budget = NTKBudget(0.05, every_step, clock=clock)
    budget.start(0, 1000, advise=messages.append)
    for t in range(1000):
        with budget.paused():
            if budget.decide(t):
                with budget.sampling():
                    clock.advance(5.0)
        clock.advance(1.0)
    budget.finish()
    assert budget.samples == 10 and messages == [] and budget.advice is None


# ---------------------------------------------------------------------------------------- determinism
def test_same_times_give_the_same_steps_and_a_uniform_slowdown_changes_nothing() -> None:
    def times(scale: float) -> tuple[Callable[[int], float], Callable[[int], float]]:
        step_s, cost = noisy(7, 0.2, 0.6), noisy(8, 1.5, 0.4)
        return (lambda t: scale * step_s(t)), (lambda t: scale * cost(t))

    runs = [run(0.05, 1200, *times(scale), hook_s=scale * 0.01)[0] for scale in (1.0, 1.0, 2.0, 0.25)]
    assert len(runs[0]) >= 4
    # Identical times: identical steps. All times scaled by a power of two (float-exact): the rule
    # compares times with times only, so a machine that is uniformly slower takes the same steps.
    assert runs[1] == runs[0] and runs[2] == runs[0] and runs[3] == runs[0]


def test_two_ranks_take_the_same_steps_with_different_clocks() -> None:
    group = InMemoryGroup(2)
    broadcasts = [0, 0]
    times = {
        0: (noisy(1, 0.3, 0.5), noisy(2, 2.0, 0.3)),
        1: (noisy(3, 0.7, 0.5), noisy(4, 5.0, 0.3)),  # a slower rank with its own noise
    }

    def rank_run(member) -> list[int]:
        def broadcast(decision):
            broadcasts[member.rank] += 1
            return member.broadcast(decision, src=0)

        clock = FakeClock()
        budget = NTKBudget(0.05, every_step, clock=clock)
        step_s, cost = times[member.rank]
        return simulate(budget, clock, steps=1500, step_s=step_s, cost=cost, total=1500, broadcast=broadcast)

    # A guard against a deadlock only (ranks entering different numbers of broadcasts), never a
    # verdict on speed: the simulation takes milliseconds.
    results: list[list[list[int]]] = []
    runner = threading.Thread(target=lambda: results.append(group.run(rank_run)), daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "the ranks entered different numbers of broadcasts"
    steps0, steps1 = results[0]
    alone, _, _ = run(0.05, 1500, *times[0])  # rank 0's clock in one process
    assert steps0 == steps1 == alone
    assert len(alone) >= 4
    assert broadcasts[0] == broadcasts[1]
    # Not a collective per candidate step: a few per sample.
    assert broadcasts[0] <= 4 * len(alone) + 10


def test_one_broadcast_for_a_few_steps_per_sample() -> None:
    calls: list[tuple[bool, int]] = []

    def broadcast(decision: tuple[bool, int]) -> tuple[bool, int]:
        calls.append(decision)
        return decision

    taken, _, _ = run(0.05, 5000, 0.5, 4.0, broadcast=broadcast)
    assert len(taken) == 31  # floor(0.05 · 2500 / 4)
    assert sum(1 for take, _ in calls if take) == len(taken)
    # Each sample: the broadcast that takes it and the one at the next step that plans the next
    # (the step time is constant, so the planned step is right the first time); once nothing more
    # is affordable, a look every half of the remaining steps (log2 of them in all).
    assert len(calls) <= 2 * len(taken) + math.log2(5000) + 2


# ---------------------------------------------------------------------------------------- state
def test_a_resumed_run_keeps_its_budget_and_its_steps() -> None:
    straight, budget, _ = run(0.05, 1000, 0.5, 3.0)
    clock = FakeClock()
    first = NTKBudget(0.05, every_step, clock=clock)
    before = simulate(first, clock, steps=500, step_s=0.5, cost=3.0, total=1000, finish=False)
    state = json.loads(json.dumps(first.state_dict()))  # plain Python, as in a checkpoint
    clock2 = FakeClock()
    clock2.advance(12345.0)  # another process: its clock reads anything
    resumed = NTKBudget(0.05, every_step, clock=clock2)
    resumed.load_state_dict(state)
    after = simulate(resumed, clock2, steps=500, step_s=0.5, cost=3.0, total=1000, start=500)
    assert before + after == straight
    assert resumed.spent_seconds == budget.spent_seconds
    assert resumed.trained_seconds == budget.trained_seconds == 500.0
    assert resumed.samples == len(straight)


def test_reset_forgets_the_run_and_a_second_fit_does_not_count_the_gap() -> None:
    clock = FakeClock()
    budget = NTKBudget(0.05, every_step, clock=clock)
    simulate(budget, clock, steps=400, step_s=1.0, cost=4.0, total=400)
    clock.advance(1000.0)  # between two fits: not training time
    assert budget.trained_seconds == 400.0
    budget.start(400, 800)
    clock.advance(2.0)
    assert budget.trained_seconds == 402.0
    budget.reset()
    assert (budget.trained_seconds, budget.spent_seconds, budget.samples) == (0.0, 0.0, 0)


def test_pickles_without_its_process_group() -> None:
    budget = NTKBudget(0.05, every_step)
    budget.start(0, 100, broadcast=lambda d: d, advise=lambda m: None)
    copy = pickle.loads(pickle.dumps(budget))
    assert copy._broadcast is None and copy._advise is None
    assert copy.overhead == 0.05


# ---------------------------------------------------------------------------------------- accounting
def test_the_monitors_own_time_is_not_training_time() -> None:
    clock = FakeClock()
    budget = NTKBudget(0.05, every_step, clock=clock)
    budget.start(0, 10)
    for t in range(10):
        with budget.paused():
            clock.advance(0.25)
            with budget.paused():  # nested: counted once
                clock.advance(0.5)
            budget.decide(t)
            with budget.sampling():
                clock.advance(2.0)
        clock.advance(1.0)
    assert budget.trained_seconds == 10.0
    assert budget.spent_seconds == 20.0
    with budget.paused():
        clock.advance(3.0)
        assert budget.trained_seconds == 10.0  # read inside a pause: the time when it began


def test_a_one_time_part_is_charged_but_does_not_set_the_expected_cost() -> None:
    # The first sample also computes the kernel at θ_0 (4 s once); every sample costs 2 s.
    clock = FakeClock()
    budget = NTKBudget(0.1, every_step, clock=clock)
    budget.start(0, 100)
    taken = []
    for t in range(100):
        with budget.paused():
            if budget.decide(t):
                with budget.sampling():
                    clock.advance(2.0)
                    if not taken:
                        with budget.sampling(once=True):
                            clock.advance(4.0)
                taken.append(t)
        clock.advance(1.0)
    assert budget.samples == len(taken)
    assert budget.spent_seconds == 4.0 + 2.0 * len(taken)
    assert budget.spent_seconds <= 0.1 * budget.trained_seconds
    # 10 s of budget: the 6-s first sample leaves 4 s, two more 2-s samples (the next one is
    # expected at 2 s, not 6 s, so it is spread as a 2-s sample).
    assert len(taken) == 3
    assert budget.state_dict()["last_cost_s"] == 2.0


def test_a_step_is_decided_once() -> None:
    clock = FakeClock()
    budget = NTKBudget(10.0, every_step, clock=clock)
    budget.start(0, 100)
    budget.decide(0)
    clock.advance(1.0)
    assert budget.decide(1) is True
    assert budget.decide(1) is False  # the next micro-batch of the same optimizer step


def test_without_overhead_the_schedule_decides_alone() -> None:
    calls: list[tuple[bool, int]] = []
    schedule = every_n_steps(5)
    clock = FakeClock()
    budget = NTKBudget(None, schedule, clock=clock)
    budget.start(0, 100, broadcast=lambda d: calls.append(d) or d)
    decisions = []
    for t in range(100):
        decisions.append(budget.decide(t))
        if decisions[-1]:
            with budget.sampling():
                clock.advance(50.0)
        clock.advance(1.0)
    assert decisions == [schedule(t) for t in range(100)]
    assert calls == []  # no collective: every rank evaluates the same schedule
    assert budget.spent_seconds == 20 * 50.0 and budget.advice is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overhead": 0.0}, r"overhead=0\.0 must be a finite number > 0\.0 or None"),
        ({"overhead": -0.05}, r"overhead=-0\.05 must be"),
        ({"overhead": math.nan}, r"overhead=nan must be"),
        ({"overhead": "5%"}, r"overhead='5%' must be .*overhead=0\.05 for 5 %"),
        ({"overhead": True}, r"overhead=True must be"),
        ({"schedule": 10}, r"schedule=10 must be a callable"),
        ({"prior_steps": -1.0}, r"prior_steps=-1\.0 must be a finite number >= 0\.0"),
    ],
    ids=["zero", "negative", "nan", "string", "bool", "schedule", "prior"],
)
def test_bad_arguments_name_themselves(kwargs: dict, match: str) -> None:
    args = {"overhead": 0.05, "schedule": every_step, **kwargs}
    with pytest.raises(ValueError, match=match):
        NTKBudget(**args)


def test_expect_rejects_a_negative_cost() -> None:
    with pytest.raises(ValueError, match=r"seconds=-1\.0 must be a finite number >= 0\.0"):
        NTKBudget(0.05, every_step).expect(-1.0)


# ---------------------------------------------------------------------------------------- in a Trainer
class _Budgeted:
    """The wiring a monitor gets, in a plain callback; the hooks move a fake clock (no real time)."""

    def __new__(cls, *args, **kwargs):  # a Callback subclass built lazily: Lightning imports in seconds
        from lightning.pytorch.callbacks import Callback

        class Budgeted(Callback):
            def __init__(self, overhead: float, step_s: float, cost: float, stop_at: int | None = None):
                self.clock = FakeClock()
                self.budget = NTKBudget(overhead, every_step, clock=self.clock)
                self.step_s, self.cost, self.stop_at = step_s, cost, stop_at
                self.taken: list[int] = []
                self.decisions = 0

            def on_train_start(self, trainer, pl_module) -> None:
                self.budget.start(trainer.global_step, trainer.estimated_stepping_batches)

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                with self.budget.paused():
                    self.decisions += 1
                    if self.budget.decide(trainer.global_step):
                        with self.budget.sampling():
                            self.clock.advance(self.cost)
                        self.taken.append(trainer.global_step)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                self.clock.advance(self.step_s)  # each micro-batch's share of the step
                if self.stop_at is not None and trainer.global_step >= self.stop_at:
                    trainer.should_stop = True  # the run is interrupted here (then resumed)

            def on_train_end(self, trainer, pl_module) -> None:
                self.budget.finish()

            def state_dict(self) -> dict:
                return {"budget": self.budget.state_dict(), "taken": list(self.taken)}

            def load_state_dict(self, state_dict: dict) -> None:
                self.budget.load_state_dict(state_dict["budget"])
                self.taken = list(state_dict["taken"])

        return Budgeted(*args, **kwargs)


def _fit(callback, max_steps: int, *, accumulate: int = 1, ckpt_path: str | None = None) -> object:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tests._lightning_models import LinearRegression

    pl.seed_everything(0, verbose=False)
    data = TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    trainer = pl.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(LinearRegression(3, 0.01), DataLoader(data, batch_size=4), ckpt_path=ckpt_path)
    return trainer


def test_in_a_trainer_a_resumed_run_takes_the_steps_of_an_uninterrupted_one(tmp_path) -> None:
    straight = _Budgeted(0.1, 1.0, 2.0)
    _fit(straight, 60)
    expected, _, _ = run(0.1, 60, 1.0, 2.0)  # the same times, simulated without Lightning
    assert straight.taken == expected and len(expected) == 3

    first = _Budgeted(0.1, 1.0, 2.0, stop_at=30)
    trainer = _fit(first, 60)
    assert trainer.global_step == 30
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = _Budgeted(0.1, 1.0, 2.0)
    trainer = _fit(resumed, 60, ckpt_path=str(tmp_path / "half.ckpt"))
    assert trainer.global_step == 60
    assert resumed.taken == straight.taken
    assert resumed.budget.spent_seconds == straight.budget.spent_seconds == 6.0
    assert resumed.budget.trained_seconds == straight.budget.trained_seconds == 60.0


def test_in_a_trainer_gradient_accumulation_decides_each_optimizer_step_once() -> None:
    callback = _Budgeted(0.1, 1.0, 2.0)
    _fit(callback, 40, accumulate=2)
    assert callback.decisions == 80  # on_train_batch_start per micro-batch
    expected, _, _ = run(0.1, 40, 2.0, 2.0)  # a step = two micro-batches of 1 s
    assert callback.taken == expected and len(expected) == 4
