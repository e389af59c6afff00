"""Wall-time overhead of the monitors, measured side by side: a model matrix and the two examples.

Two sections (``--sections``, both by default):

**matrix** — the default ``LPLRMonitor()`` against no monitor on four models, 200 steps each, at
the Trainer's default ``log_every_n_steps`` (what a user who adds the callback gets):

* ``mlp``: the MLP example (``examples/mlp.py``: full-batch GD, one step per epoch); also with
  ``PLMonitor()`` and ``LinearRateMonitor()`` alone (the step-level monitors);
* ``resnet18``: ResNet-18 in torchvision's layout for 32×32 inputs (BasicBlocks, BatchNorm) at a
  quarter of its widths, 16-32-64-128 (0.70M parameters; at 64-128-256-512, 11.2M, one step
  takes 3.8 s and one NTK sample 50 s on two cores), synthetic CIFAR, batch 32;
* ``transformer``: ``lightning.pytorch.demos.Transformer`` (d_model 64) on synthetic token
  streams, the NTK of the last position's log-probabilities (``output_fn``);
* ``cifar_resnet``: the CIFAR example (``examples/cifar_resnet.py``, ResNet-20, synthetic data,
  batch 128).

Per model: a warm-up fit without a monitor and a 2-step one with it, then ``none`` and, per
round, every monitored variant (order rotated) followed by ``none`` again; a round's paired
ratio is to the mean of the two ``none`` fits around it. Reported: wall and CPU ratios, the
in-fit estimate ``loop / (loop − time in the monitor's hooks)``, the NTK samples and their
steps, the scalar points the monitor wrote (read back from the TensorBoard files) and at how
many steps, against the targets in ``MATRIX_TARGETS``. ``--overhead X`` passes ``overhead=X``
to ``LPLRMonitor`` where it takes that argument (detected with ``inspect.signature``), so the
same script measures before and after the NTK budget.

**examples** — every preset on the two examples at its NTK schedule (with ``overhead=None``
where the monitor takes it: this section measures the schedules themselves):

For each example, fits with and without a monitor run in one process, interleaved round by
round (``none, pl, rate, ntk, lplr_cheap, lplr_default, lplr_full, none`` …, the order rotated
from round to round, ``none`` bracketing every round):

* ``none``: no monitor;
* ``pl``: ``PLMonitor()``; ``rate``: ``LinearRateMonitor()`` (step-level: every step);
* ``ntk``: ``NTKMonitor()`` (preset ``default``);
* ``lplr_<preset>``: ``LPLRMonitor(preset=<preset>)`` for every preset in ``PRESETS``, at the
  preset's default (log-spaced) NTK cadence.

The NTK monitors get the example's probe (its DataModule's first training samples) and loss
(``loss_fn``, which adds the probe PL ratio and ``μ_NTK``). Every fit logs to a TensorBoard
logger (a temporary directory), as the examples do; validation is off so that only training
steps are compared.

The two examples:

* ``mlp``: ``examples/mlp.py`` defaults — full-batch gradient descent, teacher-student data
  (n=64, d=16), width-512 depth-2 tanh MLP, 300 steps (one step per epoch).
* ``cifar_resnet``: ``examples/cifar_resnet.py`` — ResNet-20 (width 16, BatchNorm), SGD with
  momentum, synthetic CIFAR (5000 training images), batch 128, 60 steps by default (the whole
  run must fit in a few minutes on two CPU cores; the default cadence's samples are front-loaded
  — 10 of the 13 a 200-step run takes fall in the first 60 steps — and the projection covers
  longer runs; ``--cifar-steps`` for more).

Before the timed rounds each example runs a short warm-up fit without a monitor (first-iteration
costs) and one per NTK preset (two steps): the latter pays ``implementation="auto"``'s one-time
timed trial, so the timed fits measure the steady state, and its first NTK sample is reported as
``first_sample_cold_s`` (what a fresh process pays once).

Per variant: training-loop wall time (``on_train_start`` → ``on_train_end``) and CPU time of the
process over the same span, their ratios to ``none`` (ratio of medians, and the median of
per-round ratios to the round's bracketing ``none`` fits), the time spent inside the monitor's
own hooks and the in-fit estimate ``loop / (loop − hooks)``, the NTK samples taken and their
cost. On a machine whose two cores other processes share, wall time swings by several times
between identical fits; CPU time does not, so the CPU ratios and the in-fit estimates are the
ones to read there (on a quiet machine all agree). The MLP runs with one torch thread (its
matrices are too small for two: with two, a competing process stalls every op), the ResNet
with two. From the CPU-time parts — base step, per-step hook cost, per-sample NTK cost —
overhead is projected for other run lengths and NTK intervals:
``1 + (n_samples(schedule, T)·c_ntk + T·c_step) / (T·t_step)``.

Usage:
    python benchmarks/overhead.py                  # JSON to stdout (both sections)
    python benchmarks/overhead.py --sections matrix --overhead 0.05 --out matrix.json
    python benchmarks/overhead.py --sections examples    # the presets (~6.5 min on two idle cores)
    python benchmarks/overhead.py --table          # the markdown tables instead of the JSON
    python benchmarks/overhead.py --quick          # tiny sizes, a smoke test
    python benchmarks/overhead.py --table --from results.json   # tables of an earlier run
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _timing

VARIANTS = ("none", "pl", "rate", "ntk", "lplr_cheap", "lplr_default", "lplr_full")
NTK_VARIANTS = ("lplr_cheap", "lplr_default", "lplr_full", "ntk")  # warm-up order: one per preset first
TARGETS = {"pl": 1.02, "rate": 1.02, "lplr_default": 1.05}
TARGET_EXAMPLE = {"pl": None, "rate": None, "lplr_default": "cifar_resnet"}  # None: every example
INTERVALS = ("default", 50, 200)
PROJECT_STEPS = (200, 1000, 10000)

FULL = {
    "mlp": {"steps": 300, "rounds": 3, "warmup_steps": 20, "threads": 1},
    "cifar_resnet": {"steps": 60, "rounds": 1, "warmup_steps": 10, "batch": 128, "threads": 2},
}
QUICK = {
    "mlp": {"steps": 12, "rounds": 1, "warmup_steps": 2, "threads": 1},
    "cifar_resnet": {"steps": 4, "rounds": 1, "warmup_steps": 1, "batch": 16, "threads": 2},
}


# ---------------------------------------------------------------------------------------- examples
class _Example:
    """Builds the example's DataModule, LightningModule, Trainer options and monitor arguments."""

    name = ""
    description = ""

    def __init__(self, quick: bool, settings: dict[str, Any]) -> None:
        self.quick = quick
        self.settings = settings

    def build(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def trainer_kwargs(self, steps: int) -> dict[str, Any]:
        raise NotImplementedError

    def monitor_kwargs(self, datamodule: Any, probe_size: int) -> dict[str, Any]:
        raise NotImplementedError


class _MLP(_Example):
    name = "mlp"

    def __init__(self, quick: bool, settings: dict[str, Any]) -> None:
        super().__init__(quick, settings)
        from examples import mlp

        self.mod = mlp
        sizes = mlp.FAST if quick else {"n": mlp.N, "d": mlp.D, "width": mlp.WIDTH}
        self.n, self.d, self.width = sizes["n"], sizes["d"], sizes["width"]
        self.description = (
            f"examples/mlp.py: full-batch GD, teacher-student n={self.n} d={self.d}, width-{self.width} "
            f"depth-{mlp.DEPTH} {mlp.ACTIVATION} MLP (NTK parameterisation), lr {mlp.LR}, "
            f"{settings['steps']} steps (1 step per epoch)"
        )

    def build(self) -> tuple[Any, Any]:
        dm = self.mod.FullBatchDataModule(n=self.n, d=self.d)
        model = self.mod.MLPRegression(
            in_features=dm.in_features, out_features=dm.out_features, width=self.width
        )
        return dm, model

    def trainer_kwargs(self, steps: int) -> dict[str, Any]:
        return {"max_epochs": steps, "log_every_n_steps": 1}

    def monitor_kwargs(self, datamodule: Any, probe_size: int) -> dict[str, Any]:
        m = min(probe_size, self.n)
        return {"probe": datamodule.probe(m), "probe_size": m, "loss_fn": self.mod.squared_loss}


class _CIFAR(_Example):
    name = "cifar_resnet"

    def __init__(self, quick: bool, settings: dict[str, Any]) -> None:
        super().__init__(quick, settings)
        from examples import cifar_resnet

        self.mod = cifar_resnet
        self.batch = settings["batch"]
        self.width = cifar_resnet.FAST["width"] if quick else cifar_resnet.WIDTH
        self.train_size = 64 if quick else cifar_resnet.TRAIN_SIZE
        self.description = (
            f"examples/cifar_resnet.py: ResNet-20 width {self.width} (BatchNorm), SGD lr "
            f"{cifar_resnet.LR} momentum {cifar_resnet.MOMENTUM} wd {cifar_resnet.WEIGHT_DECAY}, "
            f"synthetic CIFAR ({self.train_size} training images), batch {self.batch}, "
            f"{settings['steps']} steps, validation off"
        )

    def build(self) -> tuple[Any, Any]:
        dm = self.mod.CIFARDataModule(
            synthetic=True, train_size=self.train_size, val_size=32, batch_size=self.batch
        )
        dm.setup("fit")
        model = self.mod.CIFARResNet(num_classes=dm.num_classes, width=self.width)
        return dm, model

    def trainer_kwargs(self, steps: int) -> dict[str, Any]:
        return {"max_steps": steps, "log_every_n_steps": 10, "limit_val_batches": 0}

    def monitor_kwargs(self, datamodule: Any, probe_size: int) -> dict[str, Any]:
        import torch.nn.functional as F

        m = min(probe_size, 4) if self.quick else probe_size
        return {"probe": datamodule.probe(m), "probe_size": m, "loss_fn": F.cross_entropy}


def _monitor(variant: str, example: _Example, datamodule: Any, implementation: str) -> Any:
    from lightning_lplr import PRESETS, LinearRateMonitor, LPLRMonitor, NTKMonitor, PLMonitor

    if variant == "none":
        return None
    if variant == "pl":
        return PLMonitor()
    if variant == "rate":
        return LinearRateMonitor()
    preset = "default" if variant == "ntk" else variant.removeprefix("lplr_")
    kwargs = example.monitor_kwargs(datamodule, PRESETS[preset].probe_size)
    cls = NTKMonitor if variant == "ntk" else LPLRMonitor
    if _accepts(cls, "overhead"):  # the study measures the schedules themselves: no budget
        kwargs["overhead"] = None
    return cls(preset=preset, implementation=implementation, **kwargs)


def _accepts(cls: Any, argument: str) -> bool:
    """Whether ``cls(...)`` takes ``argument`` (so one script measures before and after a change)."""
    return argument in inspect.signature(cls).parameters


def _describe(variant: str) -> str:
    return {
        "none": "no monitor",
        "pl": "PLMonitor() (every step)",
        "rate": "LinearRateMonitor() (every step)",
        "ntk": "NTKMonitor(preset='default')",
    }.get(variant, f"LPLRMonitor(preset={variant.removeprefix('lplr_')!r})")


# ---------------------------------------------------------------------------------------- one fit
def _fit(example: _Example, variant: str, steps: int, logdir: str, implementation: str) -> dict[str, Any]:
    return fit_once(
        example, variant, lambda dm: _monitor(variant, example, dm, implementation), steps, logdir
    )


def _written(log_dir: str, prefix: str | None) -> tuple[int, int]:
    """Scalar points under ``prefix`` in a TensorBoard run directory, and the steps they are at.

    Read from the event files after the fit (the monitors write through the writer directly, not
    always through ``log_metrics``), so it counts what reached the disk.
    """
    if prefix is None:
        return 0, 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    events.Reload()
    points, steps = 0, set()
    for tag in events.Tags().get("scalars", []):
        if tag.startswith(prefix):
            values = events.Scalars(tag)
            points += len(values)
            steps.update(v.step for v in values)
    return points, len(steps)


def fit_once(
    example: Any, name: str, make_monitor: Callable[[Any], Any], steps: int, logdir: str
) -> dict[str, Any]:
    """One clocked fit of ``example`` with the callback ``make_monitor(datamodule)`` (``None``: none)."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    pl.seed_everything(0, verbose=False)
    datamodule, model = example.build()
    monitor = make_monitor(datamodule)
    timer = _timing.HookTimer(monitor) if monitor is not None else None
    clock = _timing.make_fit_clock()
    logger = TensorBoardLogger(logdir, name=name, default_hp_metric=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[clock] + ([monitor] if monitor is not None else []),
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **example.trainer_kwargs(steps),
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - started
    history = monitor.history if monitor is not None else {}
    ntk = [(s, v) for s, v in history.get("cost/ntk_seconds", [])]
    ntk_steps = [s for s, _ in ntk]
    points, steps_written = _written(logger.log_dir, getattr(monitor, "prefix", None))
    return {
        "fit_s": fit_s,
        "train_s": clock.train_s,
        "train_cpu_s": clock.train_cpu_s,
        "steps": clock.steps,
        "monitor_in_loop_s": timer.in_loop_s if timer is not None else 0.0,
        "monitor_in_loop_cpu_s": timer.in_loop_cpu_s if timer is not None else 0.0,
        "monitor_total_s": timer.total_s if timer is not None else 0.0,
        "monitor_by_hook_s": dict(timer.by_hook) if timer is not None else {},
        "ntk_steps": ntk_steps,
        "ntk_seconds": [v for _, v in ntk],
        "ntk_cpu_seconds": timer.sample_cpu_s(ntk_steps) if timer is not None else [],
        "skipped": monitor.skipped if monitor is not None else {},
        "points_written": points,
        "steps_written": steps_written,
    }


# ---------------------------------------------------------------------------------------- one example
def _by_hook(recs: list[dict[str, Any]]) -> dict[str, float]:
    """Median time per hook over the fits, hooks above 1 ms only."""
    names = {k for x in recs for k in x["monitor_by_hook_s"]}
    out = {k: _timing.median([x["monitor_by_hook_s"].get(k, 0.0) for x in recs]) for k in sorted(names)}
    return {k: v for k, v in out.items() if v >= 1e-3}


def _schedule(preset: str, interval: str | int) -> Callable[[int], bool]:
    from lightning_lplr import PRESETS
    from lightning_lplr.schedules import every_n_steps

    return PRESETS[preset].ntk_every if interval == "default" else every_n_steps(int(interval))


def _samples(schedule: Callable[[int], bool], steps: int) -> int:
    return sum(1 for t in range(steps) if t == 0 or schedule(t))


def run_example(example: _Example, implementation: str, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    s = example.settings
    steps, rounds = s["steps"], s["rounds"]
    torch.set_num_threads(s["threads"])
    started = time.perf_counter()
    chosen = tuple(s.get("variants", VARIANTS))
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in chosen}
    none_rounds: list[dict[str, float]] = []  # per round: mean of the bracketing 'none' fits
    cold: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=f"lplr_bench_{example.name}_") as logdir:
        log(f"{example.name}: warm-up")
        _fit(example, "none", s["warmup_steps"], logdir, implementation)
        for variant in (v for v in NTK_VARIANTS if v in chosen):
            rec = _fit(example, variant, 2, logdir, implementation)
            cold[variant] = {
                "first_sample_cold_s": rec["ntk_seconds"][0] if rec["ntk_seconds"] else math.nan,
                "second_sample_s": rec["ntk_seconds"][1] if len(rec["ntk_seconds"]) > 1 else math.nan,
            }
        others = [v for v in chosen if v != "none"]
        for r in range(rounds):
            k = r % len(others)
            order = ["none", *others[k:], *others[:k], "none"]
            log(f"{example.name}: round {r + 1}/{rounds}: {' '.join(order)}")
            brackets = []
            for variant in order:
                rec = _fit(example, variant, steps, logdir, implementation)
                log(f"  {variant}: loop {rec['train_s']:.2f} s wall, {rec['train_cpu_s']:.2f} s cpu")
                if variant == "none":
                    brackets.append(rec)
                else:
                    runs[variant].append(rec)
            runs["none"].extend(brackets)
            none_rounds.append(
                {k: sum(b[k] for b in brackets) / len(brackets) for k in ("train_s", "train_cpu_s")}
            )
    analysis = _analyse(example, runs, none_rounds, cold)
    analysis["seconds"] = time.perf_counter() - started
    return analysis


def _analyse(
    example: _Example,
    runs: dict[str, list[dict[str, Any]]],
    none_rounds: list[dict[str, float]],
    cold: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    from lightning_lplr import PRESETS

    steps = example.settings["steps"]
    base = {k: _timing.median([x[k] for x in runs["none"]]) for k in ("train_s", "train_cpu_s")}
    variants: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    parts: dict[str, dict[str, float]] = {}
    for v in (v for v in VARIANTS if v in runs):
        recs = runs[v]
        per_sample = [c for x in recs for c in x["ntk_seconds"]]
        per_sample_cpu = [c for x in recs for c in x["ntk_cpu_seconds"]]
        in_loop_cpu = _timing.median([x["monitor_in_loop_cpu_s"] for x in recs])
        ntk_cpu_sum = _timing.median([sum(x["ntk_cpu_seconds"]) for x in recs])
        in_loop = _timing.median([x["monitor_in_loop_s"] for x in recs])
        ntk_sum = _timing.median([sum(x["ntk_seconds"]) for x in recs])
        parts[v] = {
            "c_ntk_cpu": _timing.median(per_sample_cpu) if per_sample_cpu else 0.0,
            "c_step_cpu": max(0.0, in_loop_cpu - ntk_cpu_sum) / steps if v != "none" else 0.0,
        }
        variants[v] = {
            "monitor": _describe(v),
            "train_s": _timing.summarize(x["train_s"] for x in recs),
            "train_cpu_s": _timing.summarize(x["train_cpu_s"] for x in recs),
            "fit_s": _timing.summarize(x["fit_s"] for x in recs),
            "monitor_in_loop_s": _timing.summarize(x["monitor_in_loop_s"] for x in recs),
            "monitor_in_loop_cpu_s": _timing.summarize(x["monitor_in_loop_cpu_s"] for x in recs),
            "ntk_samples": len(recs[0]["ntk_steps"]) if recs else 0,
            "ntk_steps": recs[0]["ntk_steps"] if recs else [],
            "ntk_seconds_per_sample": _timing.summarize(per_sample),
            "ntk_cpu_seconds_per_sample": _timing.summarize(per_sample_cpu),
            "step_hook_s_per_step": max(0.0, in_loop - ntk_sum) / steps if v != "none" else 0.0,
            "step_hook_cpu_s_per_step": parts[v]["c_step_cpu"],
            "monitor_by_hook_s": _by_hook(recs),
            "skipped": recs[0]["skipped"] if recs else {},
            **cold.get(v, {}),
        }
        if v == "none":
            continue
        target = TARGETS.get(v)
        applies = target is not None and TARGET_EXAMPLE.get(v) in (None, example.name)
        r: dict[str, Any] = {}
        for key, clock, hooks_key in (
            ("wall", "train_s", "monitor_in_loop_s"),
            ("cpu", "train_cpu_s", "monitor_in_loop_cpu_s"),
        ):
            loops = [x[clock] for x in recs]
            r[key] = _timing.safe_ratio(_timing.median(loops), base[clock])
            r[f"{key}_paired"] = _timing.paired_ratio(loops, [n[clock] for n in none_rounds])
            hooks = [x[clock] / (x[clock] - x[hooks_key]) for x in recs if x[clock] > x[hooks_key]]
            r["hooks" if key == "wall" else "hooks_cpu"] = _timing.median(hooks)
        r["target"] = target if applies else None
        for key in ("wall", "cpu", "hooks", "hooks_cpu"):
            r[f"meets_target_{key}"] = bool(r[key] <= target) if applies else None
        ratios[v] = r
    step_cpu = base["train_cpu_s"] / steps
    projection: dict[str, Any] = {}
    for preset in (p for p in PRESETS if f"lplr_{p}" in runs):
        v = f"lplr_{preset}"
        c_ntk, c_step = parts[v]["c_ntk_cpu"], parts[v]["c_step_cpu"]
        # the first sample's extra (auto's trial), wall time (the warm-up fit is not CPU-clocked)
        extra_cold = (
            variants[v].get("first_sample_cold_s", math.nan) - variants[v]["ntk_seconds_per_sample"]["median"]
        )
        extra_cold = max(0.0, extra_cold) if math.isfinite(extra_cold) else 0.0
        base_wall_step = base["train_s"] / steps
        projection[preset] = {"ntk_cpu_seconds_per_sample": c_ntk, "step_hook_cpu_s_per_step": c_step}
        for interval in INTERVALS:
            sched = _schedule(preset, interval)
            cells = {}
            for T in (steps, *PROJECT_STEPS):
                n = _samples(sched, T)
                over = 1.0 + (n * c_ntk + T * c_step) / (T * step_cpu)
                cells[str(T)] = {
                    "samples": n,
                    "overhead": over,
                    "overhead_cold": over + extra_cold / (T * base_wall_step),
                }
            projection[preset][str(interval)] = cells
    return {
        "description": example.description,
        "steps": steps,
        "rounds": example.settings["rounds"],
        "torch_threads": example.settings["threads"],
        "order": "none, then the others (rotated by round), then none again",
        "base_step_s": base["train_s"] / steps,
        "base_step_cpu_s": step_cpu,
        "variants": variants,
        "ratios": ratios,
        "ratios_note": "wall/cpu: median training-loop wall/CPU time over median of 'none'; *_paired: median "
        "of per-round ratios to that round's bracketing 'none' fits; hooks/hooks_cpu: in-fit estimate "
        "loop / (loop - time inside the monitor's hooks). CPU time (process, all threads) is the robust "
        "one on a machine whose cores other processes share.",
        "projection": projection,
        "projection_note": "overhead(T) = 1 + (samples(T)·ntk_cpu_seconds_per_sample + "
        "T·step_hook_cpu_s_per_step) / (T·base_step_cpu_s), all CPU time (steady state); overhead_cold "
        "adds the one-time extra wall time of the first NTK sample (implementation='auto' trial) over "
        "T·base_step_s",
    }


# ---------------------------------------------------------------------------------------- matrix
# The default LPLRMonitor() against no monitor on a matrix of models, 200 steps each, with the
# Trainer's default log_every_n_steps (what a user gets); on the MLP also the step-level monitors.
MATRIX_MODELS = ("mlp", "resnet18", "transformer", "cifar_resnet")
MATRIX_VARIANTS = {"mlp": ("none", "lplr", "pl", "rate")}  # every other model: none, lplr
MATRIX_TARGETS = {"wall": 1.10, "hooks": 1.06, "ntk_samples": 1}
"""Targets of ``LPLRMonitor()`` on every model: wall ratio, in-fit estimate, NTK samples in the run."""
MATRIX_FULL: dict[str, dict[str, Any]] = {
    "mlp": {"steps": 200, "rounds": 5, "warmup_steps": 20, "threads": 1},
    # ResNet-18 at a quarter of its widths (0.70M parameters): at 64-128-256-512 (11.2M) one step
    # takes 3.8 s and one NTK sample 50 s on two cores, a 200-step fit 13 minutes.
    "resnet18": {
        "steps": 200,
        "rounds": 3,
        "warmup_steps": 3,
        "threads": 2,
        "batch": 32,
        "widths": [16, 32, 64, 128],
        "train_size": 2048,
    },
    # The demo Transformer at d_model 64 (its default 200 with a 32-token vocabulary: 1.8 s per
    # step and 25-100 s per NTK sample on two cores).
    "transformer": {
        "steps": 200,
        "rounds": 3,
        "warmup_steps": 5,
        "threads": 2,
        "batch": 32,
        "seq": 16,
        "vocab": 16,
        "ninp": 64,
        "nhid": 128,
        "nlayers": 2,
        "nhead": 2,
    },
    "cifar_resnet": {"steps": 200, "rounds": 1, "warmup_steps": 5, "threads": 2, "batch": 128},
}
MATRIX_QUICK: dict[str, dict[str, Any]] = {
    "mlp": {"steps": 8, "rounds": 1, "warmup_steps": 2, "threads": 1},
    "resnet18": {
        "steps": 4,
        "rounds": 1,
        "warmup_steps": 1,
        "threads": 2,
        "batch": 8,
        "widths": [8, 16, 32, 64],
        "train_size": 64,
    },
    "transformer": {
        "steps": 4,
        "rounds": 1,
        "warmup_steps": 1,
        "threads": 2,
        "batch": 8,
        "seq": 8,
        "vocab": 8,
        "ninp": 16,
        "nhid": 16,
        "nlayers": 1,
        "nhead": 2,
    },
    "cifar_resnet": {"steps": 4, "rounds": 1, "warmup_steps": 1, "threads": 2, "batch": 16},
}


class _MatrixMLP(_MLP):
    """The MLP example (one step per epoch), at the Trainer's default ``log_every_n_steps``."""

    def trainer_kwargs(self, steps: int) -> dict[str, Any]:
        return {"max_epochs": steps}


class _MatrixCIFAR(_CIFAR):
    """The CIFAR example (synthetic data), at the Trainer's default ``log_every_n_steps``."""

    def trainer_kwargs(self, steps: int) -> dict[str, Any]:
        return {"max_steps": steps, "limit_val_batches": 0}


def _classifier(net: Any, lr: float, momentum: float, weight_decay: float) -> Any:
    """A LightningModule training ``net`` with cross-entropy and SGD (momentum)."""
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train/loss", loss, batch_size=x.shape[0])
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    return Classifier()


def resnet18(widths: list[int], num_classes: int = 10) -> Any:
    """The ResNet-18 layout of torchvision for 32×32 inputs: 3×3 stem, no max-pool, 4×2 BasicBlocks.

    With widths 64-128-256-512 and 10 classes it has 11.17M parameters (torchvision's
    ``resnet18(num_classes=10)`` has 11.18M: its stem is a 7×7 convolution).
    """
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample: nn.Module | None = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: Any) -> Any:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            layers, cin = [], widths[0]
            for i, cout in enumerate(widths):
                layers += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x: Any) -> Any:
            out = self.layers(self.relu(self.bn1(self.conv1(x))))
            return self.fc(self.pool(out).flatten(1))

    return ResNet18()


class _ResNet18(_Example):
    name = "resnet18"

    def __init__(self, quick: bool, settings: dict[str, Any]) -> None:
        super().__init__(quick, settings)
        from examples import cifar_resnet

        self.mod = cifar_resnet
        net = resnet18(settings["widths"])
        params = sum(p.numel() for p in net.parameters())
        self.description = (
            f"ResNet-18 (torchvision layout, 3×3 stem for 32×32 inputs, BatchNorm, widths "
            f"{'-'.join(map(str, settings['widths']))}, {params / 1e6:.2f}M parameters), SGD lr 0.05 "
            f"momentum 0.9, synthetic CIFAR ({settings['train_size']} images), batch {settings['batch']}, "
            f"{settings['steps']} steps"
        )

    def build(self) -> tuple[Any, Any]:
        s = self.settings
        dm = self.mod.CIFARDataModule(
            synthetic=True, train_size=s["train_size"], val_size=32, batch_size=s["batch"]
        )
        dm.setup("fit")
        return dm, _classifier(resnet18(s["widths"], dm.num_classes), 0.05, 0.9, 5e-4)

    def trainer_kwargs(self, steps: int) -> dict[str, Any]:
        return {"max_steps": steps, "limit_val_batches": 0}


def _last_position(out: Any) -> Any:
    """The transformer's log-probabilities at the last position, ``(B, vocab)``: its NTK output."""
    return out[:, -1]


class _Transformer(_Example):
    name = "transformer"

    def __init__(self, quick: bool, settings: dict[str, Any]) -> None:
        super().__init__(quick, settings)
        s = settings
        self.description = (
            f"lightning.pytorch.demos.Transformer (encoder-decoder, {s['nlayers']}+{s['nlayers']} layers, "
            f"d_model {s['ninp']}, ffn {s['nhid']}, {s['nhead']} heads, dropout 0.2), vocabulary "
            f"{s['vocab']}, synthetic token streams (next token = previous + 1 or 2), sequence {s['seq']}, "
            f"batch {s['batch']}, SGD lr 0.1, {s['steps']} steps; the NTK of the last position's "
            "log-probabilities (output_fn)"
        )

    def build(self) -> tuple[Any, Any]:
        import lightning.pytorch as pl
        import torch
        import torch.nn.functional as F
        from lightning.pytorch.demos import Transformer
        from torch.utils.data import TensorDataset

        s = self.settings
        count = max(4 * s["batch"], 256)
        g = torch.Generator().manual_seed(0)
        stream = torch.randint(1, 3, (count * s["seq"] + 1,), generator=g).cumsum(0) % s["vocab"]
        windows = torch.arange(count)[:, None] * s["seq"] + torch.arange(s["seq"])
        data = TensorDataset(stream[windows], stream[windows + 1])
        dm = pl.LightningDataModule.from_datasets(train_dataset=data, batch_size=s["batch"])

        class TokenTransformer(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.model = Transformer(
                    vocab_size=s["vocab"],
                    ninp=s["ninp"],
                    nhead=s["nhead"],
                    nhid=s["nhid"],
                    nlayers=s["nlayers"],
                )

            def forward(self, x: Any) -> Any:
                """Log-probabilities ``(B, T, vocab)`` of tokens ``(B, T)`` (decoder fed the input)."""
                return self.model(x, x).view(x.shape[0], x.shape[1], -1)

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                x, y = batch  # as the demo's LightningTransformer
                loss = F.nll_loss(self.model(x, y), y.reshape(-1))
                self.log("train/loss", loss, batch_size=x.shape[0])
                return loss

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return dm, TokenTransformer()

    def trainer_kwargs(self, steps: int) -> dict[str, Any]:
        return {"max_steps": steps}


MATRIX_BUILDERS: dict[str, type[_Example]] = {
    "mlp": _MatrixMLP,
    "resnet18": _ResNet18,
    "transformer": _Transformer,
    "cifar_resnet": _MatrixCIFAR,
}


def _matrix_monitor(variant: str, model: _Example, overhead: float | None) -> tuple[Any, dict[str, Any]]:
    """The callback of a matrix variant and the arguments it was given (for the JSON)."""
    from lightning_lplr import LinearRateMonitor, LPLRMonitor, PLMonitor

    if variant == "none":
        return None, {}
    if variant == "pl":
        return PLMonitor(), {}
    if variant == "rate":
        return LinearRateMonitor(), {}
    kwargs: dict[str, Any] = {}
    if model.quick:  # a smoke test: the smallest kernel that runs every code path
        kwargs["probe_size"] = 4
    if model.name == "transformer":
        kwargs["output_fn"] = _last_position
    if overhead is not None and _accepts(LPLRMonitor, "overhead"):
        kwargs["overhead"] = overhead
    shown = {k: (v.__name__ if callable(v) else v) for k, v in kwargs.items()}
    return LPLRMonitor(**kwargs), shown


def _matrix_label(variant: str, shown: dict[str, Any]) -> str:
    if variant == "none":
        return "no monitor"
    if variant in ("pl", "rate"):
        return {"pl": "PLMonitor()", "rate": "LinearRateMonitor()"}[variant]
    return "LPLRMonitor(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"


def run_matrix_model(model: _Example, overhead: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Fits of one model with and without the monitors, interleaved; their ratios."""
    import torch

    s = model.settings
    steps, rounds = s["steps"], s["rounds"]
    torch.set_num_threads(s["threads"])
    started = time.perf_counter()
    variants = MATRIX_VARIANTS.get(model.name, ("none", "lplr"))
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    shown: dict[str, dict[str, Any]] = {}

    def fit(variant: str, n: int) -> dict[str, Any]:
        def make(dm: Any) -> Any:
            monitor, shown[variant] = _matrix_monitor(variant, model, overhead)
            return monitor

        return fit_once(model, variant, make, n, logdir)

    cold: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"lplr_matrix_{model.name}_") as logdir:
        log(f"{model.name}: warm-up")
        fit("none", s["warmup_steps"])
        first = fit("lplr", min(2, steps))  # first-call costs of the monitor's code paths
        cold = {"warmup_ntk_steps": first["ntk_steps"], "warmup_ntk_seconds": first["ntk_seconds"]}
        others = [v for v in variants if v != "none"]
        nones = [fit("none", steps)]  # the rounds share their bracketing 'none' fits
        log(f"  none: loop {nones[-1]['train_s']:.2f} s wall, {nones[-1]['train_cpu_s']:.2f} s cpu")
        for r in range(rounds):
            k = r % len(others)
            order = [*others[k:], *others[:k]]
            log(f"{model.name}: round {r + 1}/{rounds}: {' '.join(order)} none")
            for variant in order:
                rec = fit(variant, steps)
                log(f"  {variant}: loop {rec['train_s']:.2f} s wall, {rec['train_cpu_s']:.2f} s cpu")
                runs[variant].append(rec)
            nones.append(fit("none", steps))
            log(f"  none: loop {nones[-1]['train_s']:.2f} s wall, {nones[-1]['train_cpu_s']:.2f} s cpu")
    runs["none"] = nones
    brackets = [
        {k: (a[k] + b[k]) / 2 for k in ("train_s", "train_cpu_s")} for a, b in itertools.pairwise(nones)
    ]
    out = _matrix_analyse(model, runs, brackets, shown)
    out["warmup"] = cold
    out["seconds"] = time.perf_counter() - started
    return out


def _matrix_analyse(
    model: _Example,
    runs: dict[str, list[dict[str, Any]]],
    brackets: list[dict[str, float]],
    shown: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    steps = model.settings["steps"]
    base = {k: _timing.median([x[k] for x in runs["none"]]) for k in ("train_s", "train_cpu_s")}
    variants: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for v, recs in runs.items():
        variants[v] = {
            "monitor": _matrix_label(v, shown.get(v, {})),
            "train_s": _timing.summarize(x["train_s"] for x in recs),
            "train_cpu_s": _timing.summarize(x["train_cpu_s"] for x in recs),
            "monitor_in_loop_s": _timing.summarize(x["monitor_in_loop_s"] for x in recs),
            "monitor_in_loop_cpu_s": _timing.summarize(x["monitor_in_loop_cpu_s"] for x in recs),
            "ntk_samples": len(recs[0]["ntk_steps"]) if recs else 0,
            "ntk_steps": recs[0]["ntk_steps"] if recs else [],
            "ntk_samples_per_fit": [len(x["ntk_steps"]) for x in recs],
            "ntk_seconds_per_sample": _timing.summarize(c for x in recs for c in x["ntk_seconds"]),
            "ntk_seconds_per_fit": _timing.summarize(sum(x["ntk_seconds"]) for x in recs),
            "monitor_points_written": recs[0]["points_written"] if recs else 0,
            "monitor_steps_written": recs[0]["steps_written"] if recs else 0,
            "monitor_by_hook_s": _by_hook(recs),
            "skipped": recs[0]["skipped"] if recs else {},
        }
        if v == "none":
            continue
        r: dict[str, Any] = {}
        for key, clock, hooks_key in (
            ("wall", "train_s", "monitor_in_loop_s"),
            ("cpu", "train_cpu_s", "monitor_in_loop_cpu_s"),
        ):
            loops = [x[clock] for x in recs]
            r[key] = _timing.safe_ratio(_timing.median(loops), base[clock])
            r[f"{key}_paired"] = _timing.paired_ratio(loops, [b[clock] for b in brackets])
            hooks = [x[clock] / (x[clock] - x[hooks_key]) for x in recs if x[clock] > x[hooks_key]]
            r["hooks" if key == "wall" else "hooks_cpu"] = _timing.median(hooks)
        if v == "lplr":
            t = MATRIX_TARGETS
            r["targets"] = dict(t)
            r["meets_target"] = {
                "wall": bool(r["wall"] <= t["wall"]),
                "hooks": bool(r["hooks"] <= t["hooks"]),
                "ntk_samples": bool(min(variants[v]["ntk_samples_per_fit"], default=0) >= t["ntk_samples"]),
            }
        ratios[v] = r
    return {
        "description": model.description,
        "steps": steps,
        "rounds": model.settings["rounds"],
        "torch_threads": model.settings["threads"],
        "trainer": model.trainer_kwargs(steps),
        "order": "none, then each round's monitored fits (rotated) and a none; a round's ratio is to the "
        "mean of the none fits around it",
        "base_step_s": base["train_s"] / steps,
        "base_step_cpu_s": base["train_cpu_s"] / steps,
        "variants": variants,
        "ratios": ratios,
    }


def matrix_table(result: dict[str, Any]) -> str:
    """One row per (model, monitor) of a matrix result."""
    matrix = result.get("matrix", {})
    if not matrix:
        return ""
    settings = result.get("settings", {})
    lines = [
        f"Monitors against no monitor, {settings.get('matrix_note', '')}. wall / CPU: ratio of medians "
        "(paired: median of per-round ratios); in-fit: loop / (loop − time in the monitor's hooks), "
        "wall / CPU; targets for LPLRMonitor(): wall ≤ "
        f"{MATRIX_TARGETS['wall']}, in-fit ≤ {MATRIX_TARGETS['hooks']}, ≥ {MATRIX_TARGETS['ntk_samples']} "
        "NTK sample.",
        "",
        "| model | base step | monitor | rounds | wall (paired) | CPU (paired) | in-fit wall / CPU "
        "| NTK samples: steps | s / sample | steps written | meets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ex in matrix.items():
        for v, r in ex["ratios"].items():
            var = ex["variants"][v]
            meets = r.get("meets_target")
            verdict = "" if meets is None else ", ".join(k for k, ok in meets.items() if not ok) or "all"
            if meets is not None and verdict != "all":
                verdict = "no: " + verdict
            samples = f"{var['ntk_samples']}: {var['ntk_steps']}" if v == "lplr" else "–"
            per = _fmt(var["ntk_seconds_per_sample"]["median"]) if v == "lplr" else "–"
            lines.append(
                f"| {name} | {ex['base_step_s'] * 1e3:.1f} ms | {var['monitor']} | {ex['rounds']} | "
                f"{_fmt(r['wall'])} ({_fmt(r['wall_paired'])}) | "
                f"{_fmt(r['cpu'])} ({_fmt(r['cpu_paired'])}) | "
                f"{_fmt(r['hooks'])} / {_fmt(r['hooks_cpu'])} | {samples} | {per} | "
                f"{var['monitor_steps_written']} | {verdict} |"
            )
    lines.append("")
    for name, ex in matrix.items():
        lines.append(f"* **{name}**: {ex['description']}; torch threads {ex['torch_threads']}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- table
def markdown_table(result: dict[str, Any]) -> str:
    """``preset × NTK interval → overhead`` for every example of a result."""
    lines = [
        "Overhead of `LPLRMonitor(preset)` relative to no monitor (training loop), by NTK sampling "
        "interval. *measured* (default cadence, at the benchmark's run length): wall-time ratio / "
        "CPU-time ratio / in-fit hook estimate (CPU). *projected*: from the measured CPU time of a "
        "base step, of the monitor's per-step hooks and of one NTK sample (steady state, i.e. after "
        "`implementation='auto'`'s one-time trial; with it: `overhead_cold` in the JSON).",
        "",
    ]
    for name, ex in result.get("examples", {}).items():
        steps = ex["steps"]
        cols = [str(steps), *[str(t) for t in PROJECT_STEPS if t != steps]]
        lines.append(
            f"**{name}** — {ex['description']}; torch threads {ex.get('torch_threads')}; base step "
            f"{ex['base_step_s'] * 1e3:.1f} ms wall, {ex['base_step_cpu_s'] * 1e3:.1f} ms CPU"
        )
        lines.append("")
        header = f"| preset | ntk_every | CPU s / NTK sample | measured @{steps}: wall / CPU / hooks |"
        header += "".join(f" projected @{c} (samples) |" for c in cols)
        lines.append(header)
        lines.append("|" + "---|" * (4 + len(cols)))
        for preset, proj in ex["projection"].items():
            for interval in INTERVALS:
                cells = proj[str(interval)]
                measured = ""
                if interval == "default":
                    r = ex["ratios"].get(f"lplr_{preset}", {})
                    measured = f"{_fmt(r.get('wall'))} / {_fmt(r.get('cpu'))} / {_fmt(r.get('hooks_cpu'))}"
                label = "default (log-spaced)" if interval == "default" else str(interval)
                row = f"| {preset} | {label} | {_fmt(proj['ntk_cpu_seconds_per_sample'])} | {measured} |"
                for c in cols:
                    cell = cells[c]
                    row += f" {_fmt(cell['overhead'])}× ({cell['samples']}) |"
                lines.append(row)
        lines.append("")
        lines.append(
            "| variant | wall ratio (paired) | CPU ratio (paired) | in-fit hooks wall / CPU | target |"
        )
        lines.append("|---|---|---|---|---|")
        for v, r in ex["ratios"].items():
            target = "" if r.get("target") is None else f"≤ {r['target']}"
            lines.append(
                f"| {ex['variants'][v]['monitor']} | {_fmt(r['wall'])} ({_fmt(r['wall_paired'])}) | "
                f"{_fmt(r['cpu'])} ({_fmt(r['cpu_paired'])}) | {_fmt(r['hooks'])} / {_fmt(r['hooks_cpu'])} | "
                f"{target} |"
            )
        lines.append("")
    return "\n".join(lines)


def tables(result: dict[str, Any]) -> str:
    """The markdown of ``--table``: the matrix's table, then the examples' (where run)."""
    parts = []
    if result.get("matrix"):
        parts.append(matrix_table(result))
    if result.get("examples"):
        parts.append(markdown_table(result))
    return "\n\n".join(parts)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------- driver
def run(args: argparse.Namespace) -> dict[str, Any]:

    _timing.quiet_lightning()
    sections = tuple(args.sections.split(","))
    if not sections or any(x not in ("matrix", "examples") for x in sections):
        raise SystemExit(f"--sections={args.sections!r}: pick from matrix, examples.")
    plan = json.loads(json.dumps(QUICK if args.quick else FULL))
    if args.mlp_steps:
        plan["mlp"]["steps"] = args.mlp_steps
    if args.cifar_steps:
        plan["cifar_resnet"]["steps"] = args.cifar_steps
    if args.cifar_batch:
        plan["cifar_resnet"]["batch"] = args.cifar_batch
    variants = tuple(args.variants.split(","))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "none" not in variants:
        raise SystemExit(f"--variants={args.variants!r}: pick from {','.join(VARIANTS)}, including 'none'.")
    for p in plan.values():
        p["variants"] = [v for v in VARIANTS if v in variants]
        if args.rounds:
            p["rounds"] = args.rounds
        if args.threads:
            p["threads"] = args.threads
    models = tuple(args.models.split(","))
    if any(m not in MATRIX_MODELS for m in models):
        raise SystemExit(f"--models={args.models!r}: pick from {','.join(MATRIX_MODELS)}.")
    matrix_plan = {
        m: dict(s) for m, s in (MATRIX_QUICK if args.quick else MATRIX_FULL).items() if m in models
    }
    for p in matrix_plan.values():
        if args.matrix_steps:
            p["steps"] = args.matrix_steps
        if args.matrix_rounds:
            p["rounds"] = args.matrix_rounds
    from lightning_lplr import LPLRMonitor

    supported = _accepts(LPLRMonitor, "overhead")
    result: dict[str, Any] = {
        **_timing.header("overhead", args.quick),
        "settings": {
            "implementation": args.implementation,
            "sections": list(sections),
            "overhead": args.overhead,
            "overhead_supported": supported,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "matrix_note": (
                "the default LPLRMonitor()"
                + (f" with overhead={args.overhead}" if args.overhead is not None and supported else "")
                + (
                    " (--overhead ignored: this LPLRMonitor has no such argument)"
                    if args.overhead is not None and not supported
                    else ""
                )
                + ", the Trainer's default log_every_n_steps"
            ),
            "plan": plan if "examples" in sections else {},
            "matrix_plan": matrix_plan if "matrix" in sections else {},
        },
        "matrix": {},
        "examples": {},
    }
    started = time.perf_counter()

    def log(message: str) -> None:
        if args.verbose:
            print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    _timing.ensure_importable()
    if "matrix" in sections:
        for name, settings in matrix_plan.items():
            model = MATRIX_BUILDERS[name](args.quick, settings)
            result["matrix"][name] = run_matrix_model(model, args.overhead, log)
    if "examples" in sections:
        builders = {"mlp": _MLP, "cifar_resnet": _CIFAR}
        for name in args.examples.split(","):
            example = builders[name](args.quick, plan[name])
            result["examples"][name] = run_example(example, args.implementation, log)
    result["wall_seconds"] = time.perf_counter() - started
    result["load_average_at_end"] = _timing.load_average()
    result["matrix_table_markdown"] = matrix_table(result)
    result["table_markdown"] = markdown_table(result)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--table", action="store_true", help="print the markdown tables instead of the JSON")
    p.add_argument("--from", dest="source", default=None, help="with --table: render this earlier JSON")
    p.add_argument(
        "--sections", default="matrix,examples", help="comma-separated: matrix (models), examples (presets)"
    )
    p.add_argument("--models", default=",".join(MATRIX_MODELS), help="matrix models, comma-separated")
    p.add_argument("--matrix-steps", type=int, default=0, help="steps of every matrix fit (default 200)")
    p.add_argument(
        "--matrix-rounds", type=int, default=0, help="rounds of every matrix model (default per model)"
    )
    p.add_argument(
        "--overhead",
        type=float,
        default=None,
        help="matrix: LPLRMonitor(overhead=X) where the monitor takes that argument (default: its default)",
    )
    p.add_argument("--examples", default="mlp,cifar_resnet", help="comma-separated: mlp, cifar_resnet")
    p.add_argument("--mlp-steps", type=int, default=0, help="steps of the MLP fits (default 300)")
    p.add_argument("--cifar-steps", type=int, default=0, help="steps of the CIFAR fits (default 60)")
    p.add_argument("--cifar-batch", type=int, default=0, help="CIFAR batch size (default 128)")
    p.add_argument(
        "--rounds", type=int, default=0, help="examples: interleaved rounds (default MLP 3, CIFAR 1)"
    )
    p.add_argument("--threads", type=int, default=0, help="examples: torch threads (default MLP 1, CIFAR 2)")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="examples: comma-separated subset of the variants (with none)",
    )
    p.add_argument(
        "--implementation", default="structured", help="examples: NTK implementation of the monitors"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.source:
        result = json.loads(Path(args.source).read_text(encoding="utf-8"))
    else:
        result = run(args)
        _timing.emit(result, args.out, stdout=not args.table)
    if args.table:
        sys.stdout.write(tables(result) + "\n")
    elif args.source:
        _timing.emit(result, None)
    return result


if __name__ == "__main__":
    main()
