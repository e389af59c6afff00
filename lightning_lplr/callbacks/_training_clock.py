"""Monitor-free training time: the wall time of a run minus the monitor's own work.

The overhead budget (:mod:`._budget`) compares NTK time with *training* time, so the time the
monitor spends in its hooks must not count as training. :class:`TrainingClock` measures it: its
clock runs between :meth:`TrainingClock.begin` and :meth:`TrainingClock.end` of a fit, minus the
time inside :meth:`TrainingClock.paused`; :meth:`TrainingClock.observe` records it at the start of
every optimizer step, which gives the time per step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

__all__ = ["TrainingClock"]


class TrainingClock:
    """Training seconds and seconds per step, earlier fits (or a checkpoint's) included.

    Args:
        clock: seconds, monotonic (``time.perf_counter``; tests pass a fake one).

    Example:
        >>> now = [0.0]
        >>> clock = TrainingClock(lambda: now[0])
        >>> clock.begin()
        >>> for step in range(4):
        ...     clock.observe(step)
        ...     with clock.paused():  # the monitor's hook: not training time
        ...         now[0] += 0.5
        ...     now[0] += 1.0  # the training step
        >>> clock.seconds, clock.step_seconds
        (4.0, 1.0)
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.now = clock
        self.reset()

    def reset(self) -> None:
        """Forget the run (a new fit without a checkpoint)."""
        self.before = 0.0
        """Training seconds of earlier fits (or the checkpoint's)."""
        self.carried_step_s: float | None = None
        """Seconds per step of the previous fit (or the checkpoint's), until this fit has its own."""
        self.start_fit()

    def start_fit(self) -> None:
        """Forget this fit's clock and steps (what :meth:`begin` starts from)."""
        self._origin: float | None = None
        self._excluded = 0.0
        self._depth = 0
        self._pause_start = 0.0
        self._first: tuple[int, float] | None = None  # (step, seconds) at this fit's first step
        self._second: tuple[int, float] | None = None  # ... at its second step
        self.last: tuple[int, float] | None = None
        """``(step, seconds)`` at the latest :meth:`observe`."""

    @property
    def running(self) -> bool:
        """Whether a fit's clock is running (between :meth:`begin` and :meth:`end`)."""
        return self._origin is not None

    def begin(self) -> None:
        """Start the fit's clock."""
        self._origin = self.now()

    def end(self) -> None:
        """Stop the fit's clock, carrying its training time and step time to the next fit."""
        if self._origin is None:
            return
        self.before = self.seconds
        self.carried_step_s = self.step_seconds
        self._origin = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The monitor's own work: not training time (nested pauses count once)."""
        if self._depth == 0:
            self._pause_start = self.now()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._excluded += self.now() - self._pause_start

    @property
    def seconds(self) -> float:
        """Monitor-free training time so far, earlier fits included."""
        if self._origin is None:
            return self.before
        now = self._pause_start if self._depth > 0 else self.now()
        return self.before + (now - self._origin - self._excluded)

    def observe(self, step: int) -> None:
        """Record the training time at the start of optimizer step ``step``."""
        point = (step, self.seconds)
        if self._first is None:
            self._first = point
        elif self._second is None and step > self._first[0]:
            self._second = point
        self.last = point

    @property
    def step_seconds(self) -> float | None:
        """Monitor-free seconds per step (``None`` while nothing is known).

        This fit's mean, its first step left out once there is a second (the first carries
        warm-up costs); before any step of this fit, the previous fit's (or the checkpoint's).
        """
        first, second, last = self._first, self._second, self.last
        if second is not None and last is not None and last[0] > second[0]:
            return (last[1] - second[1]) / (last[0] - second[0])
        if second is not None and first is not None:
            return (second[1] - first[1]) / (second[0] - first[0])
        return self.carried_step_s
