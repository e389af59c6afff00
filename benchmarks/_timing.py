"""Helpers shared by ``benchmarks/ddp.py`` and ``benchmarks/overhead.py``.

Timing on a small shared machine is noisy, so every benchmark here measures the variants it
compares side by side, interleaved (A B A B …), and reports medians and ratios of medians and
the median of per-round (paired) ratios. The helpers below keep those conventions in one place:
summary statistics, the environment block every JSON result carries, Lightning callbacks that
clock a fit and the time spent inside another callback's hooks, and the JSON output.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (so that ``examples`` and ``lightning_lplr`` import from a checkout)."""

SCHEMA_VERSION = 1


def ensure_importable() -> None:
    """Put the repository root on ``sys.path`` (for ``python benchmarks/x.py`` from anywhere)."""
    root = str(ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """Median, min, max and count of ``values`` (and the values, rounded), for the JSON."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": [round(v, 6) for v in vals],
    }


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence, ``nan`` for an empty one."""
    return statistics.median(values) if values else math.nan


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, ``nan`` when undefined."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return math.nan
    return numerator / denominator


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the per-round ratios ``numerators[i] / denominators[i]`` (rounds interleaved)."""
    ratios = [safe_ratio(a, b) for a, b in zip(numerators, denominators, strict=False)]
    ratios = [r for r in ratios if math.isfinite(r)]
    return median(ratios)


def environment() -> dict[str, Any]:
    """What a reader needs to judge the numbers: versions, cores, threads, load, commit."""
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    try:  # the distribution's metadata: importing lightning itself takes seconds
        lightning_version = importlib.metadata.version("lightning")
    except importlib.metadata.PackageNotFoundError:
        lightning_version = ""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning_version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "git_commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def header(benchmark: str, quick: bool) -> dict[str, Any]:
    """The fields every benchmark's JSON starts with: its name, schema, mode and machine."""
    return {
        "benchmark": benchmark,
        "schema_version": SCHEMA_VERSION,
        "quick": quick,
        "environment": environment(),
    }


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (empty where unavailable)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return []


def emit(result: dict[str, Any], out: str | None, *, stdout: bool = True) -> None:
    """Write ``result`` as JSON to stdout (unless ``stdout=False``) and to ``out`` when given."""
    text = json.dumps(_finite_or_none(result), indent=2, sort_keys=False)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    if stdout:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/Infinity: write them as ``null``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def quiet_lightning() -> None:
    """Silence Lightning's banners and advice (they would interleave with the JSON on stdout)."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401 - sets its loggers' levels at import: import first, then quieten

    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning_fabric",
        "pytorch_lightning",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def make_fit_clock() -> Any:
    """A Lightning callback that clocks the training loop (put it *first* in ``callbacks``).

    Attributes after a fit: ``train_s`` (wall time ``on_train_start`` → ``on_train_end``; being
    first, its start precedes every other callback's ``on_train_start``), ``train_cpu_s`` (CPU
    time of the process, all its threads, over the same span: unlike wall time it barely moves
    when other processes compete for the cores), ``steps`` and ``step_times`` (wall time between
    consecutive ``on_train_batch_start`` calls).
    """
    from lightning.pytorch.callbacks import Callback

    class FitClock(Callback):
        def __init__(self) -> None:
            self.start = self.cpu_start = math.nan
            self.train_s = self.train_cpu_s = math.nan
            self.steps = 0
            self._batch_starts: list[float] = []

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.start = time.perf_counter()
            self.cpu_start = time.process_time()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self._batch_starts.append(time.perf_counter())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.train_s = time.perf_counter() - self.start
            self.train_cpu_s = time.process_time() - self.cpu_start
            self.steps = int(trainer.global_step)

        @property
        def step_times(self) -> list[float]:
            s = self._batch_starts
            return [b - a for a, b in itertools.pairwise(s)]

    return FitClock()


_HOOKS = (
    "setup",
    "on_fit_start",
    "on_train_start",
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_end",
    "on_fit_end",
    "teardown",
)


class HookTimer:
    """Accumulate the wall and CPU time spent inside a callback's hooks (instance-level wrapping).

    Lightning looks hooks up with ``getattr(callback, name)``, so an instance attribute that
    wraps the bound method is what it calls; the callback's behaviour is unchanged.
    ``in_loop_s`` / ``in_loop_cpu_s`` count the hooks that run between ``on_train_start`` and
    ``on_train_end`` (``on_train_start`` included), i.e. the monitor's cost inside a clocked loop.
    ``batch_start_calls`` holds ``(global_step, wall_s, cpu_s)`` of every ``on_train_batch_start``
    call (where the monitors take their NTK samples).
    """

    _IN_LOOP = frozenset(_HOOKS[_HOOKS.index("on_train_start") : _HOOKS.index("on_train_end")])

    def __init__(self, callback: Any) -> None:
        self.by_hook: dict[str, float] = {}
        self.by_hook_cpu: dict[str, float] = {}
        self.batch_start_calls: list[tuple[int, float, float]] = []
        for name in _HOOKS:
            method = getattr(callback, name, None)
            if method is None:
                continue
            setattr(callback, name, self._wrap(name, method))

    def _wrap(self, name: str, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            step = int(getattr(args[0], "global_step", -1)) if args else -1
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                self.by_hook[name] = self.by_hook.get(name, 0.0) + wall
                self.by_hook_cpu[name] = self.by_hook_cpu.get(name, 0.0) + cpu
                if name == "on_train_batch_start":
                    self.batch_start_calls.append((step, wall, cpu))

        return timed

    @property
    def total_s(self) -> float:
        """All hook wall time."""
        return sum(self.by_hook.values())

    @property
    def in_loop_s(self) -> float:
        """Hook wall time inside the clocked training loop."""
        return sum(v for k, v in self.by_hook.items() if k in self._IN_LOOP)

    @property
    def in_loop_cpu_s(self) -> float:
        """Hook CPU time inside the clocked training loop."""
        return sum(v for k, v in self.by_hook_cpu.items() if k in self._IN_LOOP)

    def sample_cpu_s(self, steps: Iterable[int]) -> list[float]:
        """CPU time of the ``on_train_batch_start`` calls at ``steps`` (the NTK samples)."""
        wanted = set(steps)
        return [cpu for step, _, cpu in self.batch_start_calls if step in wanted]
