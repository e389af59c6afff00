"""Wall-time overhead of each monitor on the two examples, measured side by side (issues 3 and 7).

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
    python benchmarks/overhead.py                  # JSON to stdout (~6.5 min on two idle cores)
    python benchmarks/overhead.py --table          # the markdown table instead of the JSON
    python benchmarks/overhead.py --quick          # tiny sizes, a smoke test
    python benchmarks/overhead.py --table --from results.json   # table of an earlier run
"""

from __future__ import annotations

import argparse
import json
import math
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
    return cls(preset=preset, implementation=implementation, **kwargs)


def _describe(variant: str) -> str:
    return {
        "none": "no monitor",
        "pl": "PLMonitor() (every step)",
        "rate": "LinearRateMonitor() (every step)",
        "ntk": "NTKMonitor(preset='default')",
    }.get(variant, f"LPLRMonitor(preset={variant.removeprefix('lplr_')!r})")


# ---------------------------------------------------------------------------------------- one fit
def _fit(example: _Example, variant: str, steps: int, logdir: str, implementation: str) -> dict[str, Any]:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    pl.seed_everything(0, verbose=False)
    datamodule, model = example.build()
    monitor = _monitor(variant, example, datamodule, implementation)
    timer = _timing.HookTimer(monitor) if monitor is not None else None
    clock = _timing.make_fit_clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[clock] + ([monitor] if monitor is not None else []),
        logger=TensorBoardLogger(logdir, name=variant, default_hp_metric=False),
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


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------- driver
def run(args: argparse.Namespace) -> dict[str, Any]:

    _timing.quiet_lightning()
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
    result: dict[str, Any] = {
        **_timing.header("overhead", args.quick),
        "settings": {"implementation": args.implementation, "plan": plan},
        "examples": {},
    }
    started = time.perf_counter()

    def log(message: str) -> None:
        if args.verbose:
            print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    _timing.ensure_importable()
    builders = {"mlp": _MLP, "cifar_resnet": _CIFAR}
    for name in args.examples.split(","):
        example = builders[name](args.quick, plan[name])
        result["examples"][name] = run_example(example, args.implementation, log)
    result["wall_seconds"] = time.perf_counter() - started
    result["load_average_at_end"] = _timing.load_average()
    result["table_markdown"] = markdown_table(result)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--table", action="store_true", help="print the markdown table instead of the JSON")
    p.add_argument("--from", dest="source", default=None, help="with --table: render this earlier JSON")
    p.add_argument("--examples", default="mlp,cifar_resnet", help="comma-separated: mlp, cifar_resnet")
    p.add_argument("--mlp-steps", type=int, default=0, help="steps of the MLP fits (default 300)")
    p.add_argument("--cifar-steps", type=int, default=0, help="steps of the CIFAR fits (default 60)")
    p.add_argument("--cifar-batch", type=int, default=0, help="CIFAR batch size (default 128)")
    p.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default MLP 3, CIFAR 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default MLP 1, CIFAR 2)")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants (with none)"
    )
    p.add_argument(
        "--implementation", default="structured", help="NTK implementation of the monitors (their default)"
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
        sys.stdout.write(markdown_table(result) + "\n")
    elif args.source:
        _timing.emit(result, None)
    return result


if __name__ == "__main__":
    main()
