"""Wall time of ``lightning-lplr report`` as a user runs it: a fresh process per call.

Cases:

* ``tensorboard``: the MLP demo's event file — ``examples/mlp.py`` at its defaults (300 full-batch
  steps, the monitors' default schedule) run into a temporary directory (``--demo-log-dir DIR``
  reuses an earlier run; ``--synthetic-tb`` or ``--quick`` writes instead a synthetic event file
  with ``torch.utils.tensorboard.SummaryWriter`` holding the demo's keys: step-level keys at every
  one of 300 steps, NTK/probe keys every 10 steps, and the schema marker);
* ``csv``: a ``CSVLogger``-style ``metrics.csv`` of 10 000 steps with *every* contract key
  (``ALL_KEYS`` and ``SKIP_KEYS``) written at every step — denser than any monitor writes, the
  reader's worst case for that length — and the marker in ``hparams.yaml``.

Each case is timed ``--repeats`` times (default 5), cases interleaved, each call a subprocess
``python -m lightning_lplr report PATH`` (text output to a pipe), measured from process start to
exit; reported: the median and the spread, against the target of 2 s on 2 cores
(``meets_target``). ``python -c pass`` is timed the same way (``interpreter_s``), the floor any
command pays. ``imports`` lists which heavy modules the command loaded (none of torch, Lightning
or matplotlib is expected).

Usage::

    python benchmarks/report.py --out benchmarks/results/report.json   # runs the demo first (≈ 1-2 min)
    python benchmarks/report.py --demo-log-dir runs/mlp                  # reuse a demo run
    python benchmarks/report.py --quick                                  # smoke test, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _timing

_timing.ensure_importable()

TARGET_S = 2.0
"""Target wall time of one ``lightning-lplr report`` call on 2 cores."""
HEAVY = ("torch", "lightning", "pytorch_lightning", "matplotlib")
_DEMO_STEP_KEYS = (
    "pl/gap",
    "pl/ratio_step",
    "pl/envelope_min",
    "pl/envelope_q05",
    "rate/slope",
    "rate/contraction",
    "rate/half_life",
    "rate/r2",
    "rate/regime",
    "rate/contraction_pred",
)
_DEMO_SAMPLE_KEYS = (
    "ntk/lambda_min",
    "ntk/lambda_max",
    "ntk/condition_number",
    "ntk/trace",
    "ntk/effective_rank",
    "ntk/drift_op",
    "ntk/drift_fro",
    "ntk/lipschitz",
    "ntk/eta_beta",
    "param/drift",
    "pl/ratio_probe",
    "pl/mu_ntk",
    "region/mu_cert",
    "region/inside",
    "cost/ntk_seconds",
)


def _marker() -> dict[str, Any]:
    from lightning_lplr.reporting.marker import make_marker

    return make_marker(
        monitor="LPLRMonitor",
        prefix="lplr/",
        kernel_kind="full",
        norm_mode="probe",
        loss="squared_loss",
        loss_star="zero",
        optimizer="SGD",
        momentum=0.0,
        plain_sgd=True,
        probe_is_training_set=True,
        full_batch=True,
        world_size=1,
    )


def _value(key: str, t: int) -> float:
    """A plausible value of ``key`` at step ``t`` (a 0.95 decay, slowly moving spectra)."""
    if key == "pl/gap":
        return 0.5 * 0.95**t
    if key == "rate/regime":
        return 1.0 if t >= 20 else 0.0
    if key == "region/inside":
        return 1.0 if t < 40 else 0.0
    if key.startswith("skipped/"):
        return 0.0
    return (1.0 + 0.01 * (hash(key) % 97)) * (1.0 + 0.1 * math.sin(0.01 * t))


def write_synthetic_tb(directory: Path, steps: int) -> Path:
    """The demo's keys for ``steps`` steps, written with SummaryWriter; returns the run directory."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_lplr.reporting.marker import encode_marker, marker_tag

    writer = SummaryWriter(log_dir=str(directory))
    writer.add_text(marker_tag("lplr/"), encode_marker(_marker()), global_step=0)
    for t in range(steps):
        keys = _DEMO_STEP_KEYS + (_DEMO_SAMPLE_KEYS if t % 10 == 0 else ())
        for key in keys:
            writer.add_scalar(f"lplr/{key}", _value(key, t), global_step=t)
    writer.close()
    return directory


def write_dense_csv(directory: Path, steps: int) -> Path:
    """A CSVLogger-style metrics.csv with every contract key at every step, and hparams.yaml."""
    import yaml

    from lightning_lplr.reporting.keys import ALL_KEYS, SKIP_KEYS
    from lightning_lplr.reporting.marker import flatten_marker

    directory.mkdir(parents=True, exist_ok=True)
    keys = list(ALL_KEYS) + list(SKIP_KEYS)
    with open(directory / "metrics.csv", "w", encoding="utf-8") as fh:
        fh.write(",".join(["epoch", "step", *(f"lplr/{k}" for k in keys)]) + "\n")
        for t in range(steps):
            fh.write(",".join([str(t // 100), str(t), *(repr(_value(k, t)) for k in keys)]) + "\n")
    (directory / "hparams.yaml").write_text(yaml.safe_dump(flatten_marker(_marker(), "lplr/")))
    return directory


def run_demo(log_dir: Path, verbose: bool) -> Path:
    """Run examples/mlp.py at its defaults into ``log_dir``; return the directory of its event file."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(_timing.ROOT / "examples" / "mlp.py"),
            "--no-progress-bar",
            "--log-dir",
            str(log_dir),
        ],
        cwd=_timing.ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=None if verbose else subprocess.DEVNULL,
        check=True,
    )
    if verbose:
        print(f"demo: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return _event_dir(log_dir)


def _event_dir(root: Path) -> Path:
    events = sorted(root.rglob("events.out.tfevents.*"))
    if not events:
        raise SystemExit(f"benchmarks/report.py: no TensorBoard event file under {root}")
    return events[-1].parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_timing.ROOT), env.get("PYTHONPATH", "")]))
    return env


def _time_call(argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=_timing.ROOT, env=_env(), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"benchmarks/report.py: {' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    return wall


def _imports(path: Path) -> list[str]:
    """The heavy modules one report call loads (in a fresh interpreter)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from lightning_lplr.report.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['report', {str(path)!r}]) == 0\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _describe(path: Path) -> dict[str, Any]:
    files = [p for p in path.iterdir() if p.is_file()]
    return {
        "files": sorted(p.name for p in files),
        "bytes": sum(p.stat().st_size for p in files),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = _timing.header("report", args.quick)
    start = time.perf_counter()
    repeats = 1 if args.quick else args.repeats
    csv_steps = 200 if args.quick else args.csv_steps
    with tempfile.TemporaryDirectory(prefix="lplr_report_bench_") as tmp:
        root = Path(tmp)
        if args.demo_log_dir:
            tb_dir, tb_source = (
                _event_dir(Path(args.demo_log_dir)),
                f"examples/mlp.py run in {args.demo_log_dir}",
            )
        elif args.quick or args.synthetic_tb:
            steps = 50 if args.quick else 300
            tb_dir = write_synthetic_tb(root / "tb" / "version_0", steps)
            tb_source = f"synthetic: the demo's keys for {steps} steps (SummaryWriter)"
        else:
            tb_dir = run_demo(root / "demo", args.verbose)
            tb_source = "examples/mlp.py at its defaults (run by this benchmark)"
        csv_dir = write_dense_csv(root / "csv" / "version_0", csv_steps)
        cases = {
            "tensorboard": {"source": tb_source, **_describe(tb_dir)},
            "csv": {"source": f"every contract key at every one of {csv_steps} steps", **_describe(csv_dir)},
        }
        paths = {"tensorboard": tb_dir, "csv": csv_dir}
        times: dict[str, list[float]] = {name: [] for name in cases}
        interpreter: list[float] = []
        for round_ in range(repeats):  # cases interleaved, so a load spike hits them alike
            interpreter.append(_time_call([sys.executable, "-c", "pass"]))
            for name in cases:
                times[name].append(
                    _time_call([sys.executable, "-m", "lightning_lplr", "report", str(paths[name])])
                )
            if args.verbose:
                done = ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
                print(f"round {round_ + 1}/{repeats}: {done}", file=sys.stderr)
        for name, case in cases.items():
            wall = _timing.summarize(times[name])
            case.update(
                wall_s=wall,
                target_s=TARGET_S,
                meets_target=bool(wall["median"] <= TARGET_S),
                imports=_imports(paths[name]),
            )
    result.update(
        command="python -m lightning_lplr report PATH (text to a pipe), one fresh process per call",
        repeats=repeats,
        interpreter_s=_timing.summarize(interpreter),
        cases=cases,
        load_average_at_end=_timing.load_average(),
        wall_seconds=time.perf_counter() - start,
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny synthetic runs, one repeat (smoke test)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--repeats", type=int, default=5, help="calls per case (default 5)")
    p.add_argument("--csv-steps", type=int, default=10_000, help="steps of the dense CSV (default 10000)")
    p.add_argument(
        "--demo-log-dir", default=None, help="reuse the event file of an earlier examples/mlp.py run"
    )
    p.add_argument(
        "--synthetic-tb", action="store_true", help="a synthetic event file instead of running the demo"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        _timing.emit(run(args), args.out)


if __name__ == "__main__":
    main()
