"""Bookkeeping a monitor shares between its parts: skip counters, one-time warnings, history."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["HISTORY_LENGTH", "Journal", "LPLRWarning"]

HISTORY_LENGTH = 100_000
"""Samples of each key kept in memory (the loggers have them all)."""


class LPLRWarning(UserWarning):
    """A monitor could not measure something; training is unaffected."""


class Journal:
    """Skip counters, warn-once bookkeeping and the in-memory history of one monitor.

    Args:
        owner: the monitor's class name, for messages.
        prefix: the monitor's key prefix, for messages.
    """

    def __init__(self, owner: str, prefix: str) -> None:
        self.owner = owner
        self.prefix = prefix
        self.skips: dict[str, int] = {}
        self.warned: set[str] = set()
        self.last: dict[str, float] = {}
        self._history: dict[str, deque[tuple[int, float]]] = {}

    def warn_once(self, kind: str, message: str) -> None:
        """Warn (rank zero, :class:`LPLRWarning`) the first time ``kind`` comes up in this run."""
        if kind in self.warned:
            return
        self.warned.add(kind)
        rank_zero_warn(message, category=LPLRWarning)

    def skip(self, cause: str, detail: str, *, warn: bool = True) -> dict[str, float]:
        """Count a skipped sample; the metric that records the running count, to log at that step."""
        self.skips[cause] = self.skips.get(cause, 0) + 1
        if warn:
            self.warn_once(
                cause,
                f"{self.owner} skipped a sample ({cause}): {detail}. Training is unaffected; the monitor "
                f"counts these under '{self.prefix}skipped/{cause}' and resumes at the next scheduled step. "
                "This warning is shown once.",
            )
        return {f"skipped/{cause}": float(self.skips[cause])}

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        """Keep ``metrics`` (keys without prefix) as logged at ``step``."""
        for key, value in metrics.items():
            self.last[key] = value
            self._history.setdefault(key, deque(maxlen=HISTORY_LENGTH)).append((step, value))

    @property
    def history(self) -> dict[str, list[tuple[int, float]]]:
        """Key (without prefix) → ``[(step, value), …]``, the last :data:`HISTORY_LENGTH` of each."""
        return {key: list(values) for key, values in self._history.items()}

    def summary(self) -> dict[str, float]:
        """The latest value of every quantity plus run aggregates and skip counts."""
        out = dict(self.last)
        inside = [v for _, v in self._history.get("region/inside", ())]
        if inside:
            out["region/inside_fraction"] = sum(inside) / len(inside)
        lam = [v for _, v in self._history.get("ntk/lambda_min", ()) if math.isfinite(v)]
        if lam:
            out["ntk/lambda_min_lowest"] = min(lam)
        for cause, count in self.skips.items():
            out[f"skipped/{cause}"] = float(count)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"skips": dict(self.skips), "last": dict(self.last)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skips.update(state.get("skips", {}))
        self.last = dict(state.get("last", {}))
