"""When to sample: plain ``step -> bool`` callables.

A schedule answers "measure at optimizer step ``t``?" for ``t = 0, 1, 2, …``
(``t`` is ``trainer.global_step`` before the step is taken, so step ``0`` is the
initialisation). Every monitor argument that takes a schedule also accepts an
``int`` ``n`` (meaning :func:`every_n_steps` ``(n)``) or any ``Callable[[int], bool]``.

Example:
    >>> s = every_n_steps(10)
    >>> [t for t in range(35) if s(t)]
    [0, 10, 20, 30]
    >>> s = log_spaced(per_decade=3)
    >>> [t for t in range(120) if s(t)]
    [0, 1, 2, 3, 4, 5, 10, 22, 47, 100]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Schedule", "as_schedule", "every_n_steps", "log_spaced", "never"]

Schedule = Callable[[int], bool]


@dataclass(frozen=True)
class every_n_steps:  # noqa: N801 - reads as a function in a Trainer(callbacks=[...]) line
    """True at ``start, start + n, start + 2n, …``.

    Args:
        n: interval in optimizer steps, ``>= 1``.
        start: first step to sample, ``>= 0``.

    Example:
        >>> every_n_steps(3, start=1)(7)
        True
    """

    n: int
    start: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"every_n_steps(n={self.n!r}): n must be an int >= 1, e.g. every_n_steps(10).")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"every_n_steps(start={self.start!r}): start must be an int >= 0.")

    def __call__(self, step: int) -> bool:
        """Whether to sample at ``step``."""
        return step >= self.start and (step - self.start) % self.n == 0


@dataclass(frozen=True)
class log_spaced:  # noqa: N801
    """About ``per_decade`` samples per decade of steps, dense early, sparse late.

    True at step 0 and at every step ``t >= 1`` with
    ``floor(per_decade·log10(t)) > floor(per_decade·log10(t−1))`` — the first step
    of each of the ``per_decade`` equal slices of a decade — plus every step up to
    ``dense_until`` and, when ``max_interval`` is set, at least every
    ``max_interval`` steps, so late training is not left unsampled.

    Args:
        per_decade: samples per factor of 10 in the step count, ``>= 1``.
        dense_until: sample every step ``t <= dense_until``.
        max_interval: cap on the gap between samples (``None``: no cap).

    Example:
        >>> s = log_spaced(per_decade=3, dense_until=0)
        >>> [t for t in range(0, 1001) if s(t)]
        [0, 1, 3, 5, 10, 22, 47, 100, 216, 465, 1000]
        >>> s = log_spaced(per_decade=2, max_interval=500)
        >>> [t for t in range(0, 2001) if s(t)]
        [0, 1, 2, 3, 4, 10, 32, 100, 317, 500, 1000, 1500, 2000]
    """

    per_decade: int = 10
    dense_until: int = 4
    max_interval: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.per_decade, bool) or not isinstance(self.per_decade, int) or self.per_decade < 1:
            raise ValueError(f"log_spaced(per_decade={self.per_decade!r}): per_decade must be an int >= 1.")
        if self.dense_until < 0:
            raise ValueError(f"log_spaced(dense_until={self.dense_until!r}): must be >= 0.")
        if self.max_interval is not None and self.max_interval < 1:
            raise ValueError(f"log_spaced(max_interval={self.max_interval!r}): must be >= 1 or None.")

    def __call__(self, step: int) -> bool:
        """Whether to sample at ``step``."""
        if step <= self.dense_until:
            return True
        if self.max_interval is not None and step % self.max_interval == 0:
            return True
        if step == 1:
            return True  # the first slice of the first decade
        k = self.per_decade
        return math.floor(k * math.log10(step)) > math.floor(k * math.log10(step - 1))


def never(step: int) -> bool:
    """A schedule that never samples (switches a quantity off).

    Example:
        >>> never(0)
        False
    """
    return False


def as_schedule(value: int | Schedule | None, argument: str = "schedule") -> Schedule:
    """Normalise an ``int``, a callable or ``None`` (never) to a schedule.

    Args:
        value: ``n`` for :func:`every_n_steps` ``(n)``, a ``Callable[[int], bool]``, or ``None``.
        argument: the caller's argument name, used in the error message.

    Raises:
        ValueError: a non-positive ``int`` or something that is not callable.

    Example:
        >>> as_schedule(5)(10), as_schedule(5)(11)
        (True, False)
    """
    if value is None:
        return never
    if isinstance(value, bool):
        raise ValueError(f"{argument}={value!r}: pass an int interval, a Callable[[int], bool] or None.")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{argument}={value!r}: an interval must be >= 1 (or None to switch it off).")
        return every_n_steps(value)
    if callable(value):
        return value
    raise ValueError(
        f"{argument}={value!r} is not a schedule; pass an int interval, a Callable[[int], bool] "
        "such as lightning_lplr.schedules.log_spaced(), or None."
    )
