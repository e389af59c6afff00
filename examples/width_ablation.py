"""Width ablation: a fixed step that suits a narrow MLP throws a wide one out of the local regime.

In *standard* parameterisation (PyTorch's default initialisation, weights ``N(0, g²/fan_in)``) the
largest eigenvalue of the NTK ``Θ = J Jᵀ / n`` grows about linearly with the width, so one step size
``η`` gives ``η·β = η·λ_max(Θ₀)`` far below 2 for a narrow network and above 2 for a wide one.
(In NTK parameterisation wider is simply closer to linear; this script uses standard on purpose.)

For each width this script trains :mod:`examples.mlp` (full-batch gradient descent on the squared
loss, probe = the whole training set, NTK every 10 steps) twice:

- at the **fixed** step ``--lr``;
- at a **reduced** step: ``--reduced-lr auto`` (default) scales the step so that ``η·β`` at
  initialisation equals that of the narrowest fixed-step run (read back from its logged
  ``ntk/eta_beta``), ``--reduced-lr width`` scales it by ``w_min / w``, a number sets it directly.

Every number of the table comes from the run's ``lightning-lplr report`` document (its ``series``,
``param``, ``ntk``, ``pl``, ``linear_spans`` and ``region`` parts). Columns:

==================  ================================================================================
``eta_beta_init``   ``ntk/eta_beta`` at step 0 (``η·λ_max(Θ₀)``; gradient descent is stable for < 2)
``loss_init/peak/final``  training loss before the first step, its maximum, and after the last step
``param_drift``     final ``param/drift`` ``‖θ_T − θ₀‖``
``ntk_drift``       final ``ntk/drift_op`` ``‖Θ_T − Θ₀‖₂ / ‖Θ₀‖₂``
``pl_envelope``     final ``pl/envelope_min`` (lower envelope of the step PL ratio)
``rho_fit``         contraction ``e^b`` of the report's fit of ``log Δ_t`` over the longest linear span
``rho_pred``        mean logged ``rate/contraction_pred`` (``1 − 2ημ(1 − ηβ/2)``) over that span
``linear_fraction`` share of the logged ``rate/regime`` codes that say "linear"
``inside_fraction`` share of NTK samples with ``region/inside = 1`` (``μ_cert > 0``)
``local``           loss finite and decreased, and the certificate held on ≥ 50 % of the NTK samples
``lin_gap_rel``     final ``lin/gap_rel`` ``‖f_T − f_lin,T‖ / ‖f_T − f_0‖``: the share of the change of
                    the outputs that the linearisation at ``θ₀`` does not explain
``lazy_regime``     ``lazy``, ``transitional`` or ``left``: the further of ``lin/gap_rel`` and
                    ``ntk/drift_op`` at their maxima, by the shared thresholds of
                    :mod:`lightning_lplr.report.regimes` (``lin/gap_rel``: lazy < 0.1, left ≥ 0.5;
                    ``ntk/drift_op``: lazy < 0.1, left ≥ 1)
``left_step``       the first NTK sample at which either reached its "left" threshold: the step at which
                    the run *leaves the local (lazy) regime*; empty when it never does
==================  ================================================================================

With the defaults (teacher data n=16, d=32; depth-2 tanh MLPs of widths 64, 256, 1024 without
biases; 150 steps at ``η = 0.025``) ``η·β₀`` is about 0.37, 0.85 and 3.1: widths 64 and 256 converge
inside the certified region, width 1024 takes the "catapult" route (the loss jumps up several-fold
while the NTK moves until ``η·λ_max < 2``, then falls) and leaves the region; at the reduced step
(``η·β₀ ≈ 0.37`` for every width) width 1024 stays put (NTK drift below 1 %) and the certificate
holds throughout. The linearisation gap says the same directly: at the fixed step width 1024's
``lin/gap_rel`` passes 0.5 at the first NTK sample after initialisation (the run leaves the lazy
regime there) and ends about 250 times the reduced-step run's. A summary sentence at the end says
whether this was observed, from the rows.

Run:
    python examples/width_ablation.py                         # the sweep above, ~20 s on 2 CPU cores
    python examples/width_ablation.py --fast                  # 2 widths, 40 steps: seconds
    python examples/width_ablation.py --widths 64 128 256 512 1024 --lr 0.02 --reduced-lr width
    python examples/width_ablation.py --config examples/configs/width_ablation.yaml [--steps 300 ...]
    tensorboard --logdir runs/width_ablation/runs

Outputs under ``--out`` (default ``runs/width_ablation``): ``width_ablation.csv``,
``width_ablation.md`` (the table and the summary sentence), ``summary.txt`` and the TensorBoard
logs of every run under ``runs/`` (with each run's console output in ``runs/<name>.log``).
"""

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (examples/_bootstrap.py: the repository root on sys.path)

import argparse
import contextlib
import csv
import itertools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import yaml

from examples import mlp
from examples._common import RunResult
from examples.models import ACTIVATIONS
from lightning_lplr.report.regimes import LAZY, LEFT, LIN_GAP_REL, NTK_DRIFT_OP, TRANSITIONAL

__all__ = [
    "COLUMNS",
    "GAP_RATIO",
    "build_parser",
    "lazy_columns",
    "main",
    "render_markdown",
    "row_from_run",
    "summarize",
]

WIDTHS, LR, STEPS, N, D, DEPTH, ACTIVATION = (64, 256, 1024), 0.025, 150, 16, 32, 2, "tanh"
FAST = {"widths": [64, 1024], "steps": 40}
INSIDE_THRESHOLD = 0.5
"""A run counts as "local" when the certificate held on at least this share of its NTK samples."""
GAP_RATIO = 10.0
"""The widest run's final ``lin/gap_rel`` at the fixed step is expected to be at least this multiple of
its value at the reduced step."""

COLUMNS = (
    "width",
    "step",
    "lr",
    "eta_beta_init",
    "loss_init",
    "loss_peak",
    "loss_final",
    "param_drift",
    "ntk_drift",
    "pl_envelope",
    "rho_fit",
    "rho_pred",
    "linear_fraction",
    "inside_fraction",
    "local",
    "lin_gap_rel",
    "lazy_regime",
    "left_step",
    "seconds",
    "log_dir",
)
"""Columns of the CSV file, in order (the keys of every row ``main`` returns)."""

_MARKDOWN = (
    ("width", "width"),
    ("step", "step"),
    ("lr", "η"),
    ("eta_beta_init", "η·β₀"),
    ("loss_init", "loss₀"),
    ("loss_peak", "loss peak"),
    ("loss_final", "loss final"),
    ("param_drift", "param drift"),
    ("ntk_drift", "NTK drift"),
    ("pl_envelope", "PL envelope"),
    ("rho_fit", "ρ fit"),
    ("rho_pred", "ρ pred"),
    ("linear_fraction", "linear"),
    ("inside_fraction", "inside"),
    ("local", "local"),
    ("lin_gap_rel", "lin gap"),
    ("lazy_regime", "lazy regime"),
    ("left_step", "left at step"),
)


# ------------------------------------------------------------------------------------------- rows


def _num(value: Any) -> float | None:
    """A finite float, or ``None``."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _longest_linear_span(run: dict[str, Any]) -> dict[str, Any] | None:
    spans = [s for s in run["linear_spans"]["spans"] if _num(s["fit"]["contraction"]) is not None]
    if not spans:
        return None
    return max(spans, key=lambda s: (s["num_regime_samples"], -s["start_step"]))


_ORDER = {LAZY: 0, TRANSITIONAL: 1, LEFT: 2}


def lazy_columns(lazy: dict[str, Any]) -> dict[str, Any]:
    """``lin_gap_rel``, ``lazy_regime`` and ``left_step`` from the ``lazy`` part of a run's report.

    The report classifies ``lin/gap_rel`` and ``ntk/drift_op`` by the thresholds of
    :mod:`lightning_lplr.report.regimes`; the row keeps the further of the two regimes and the
    first step at which either reached "left".

    Args:
        lazy: ``{"lin_gap_rel": {...}, "ntk_drift_op": {...}}`` as in the report document.

    Returns:
        ``{"lin_gap_rel": final value or None, "lazy_regime": str or None, "left_step": int or None}``.

    Example:
        >>> gap = {"final": 0.6, "regime": "left", "first_step_left": 10}
        >>> drift = {"final": 0.75, "regime": "transitional", "first_step_left": None}
        >>> lazy_columns({"lin_gap_rel": gap, "ntk_drift_op": drift})
        {'lin_gap_rel': 0.6, 'lazy_regime': 'left', 'left_step': 10}
    """
    parts = [lazy.get(name) or {} for name in ("lin_gap_rel", "ntk_drift_op")]
    regimes = [p.get("regime") for p in parts if p.get("regime") in _ORDER]
    left = [int(p["first_step_left"]) for p in parts if p.get("first_step_left") is not None]
    return {
        "lin_gap_rel": _num(parts[0].get("final")),
        "lazy_regime": max(regimes, key=_ORDER.__getitem__) if regimes else None,
        "left_step": min(left) if left else None,
    }


def row_from_run(width: int, step: str, lr: float, result: RunResult) -> dict[str, Any]:
    """One table row from a finished run of :func:`examples.mlp.main` and its LPLR report.

    Args:
        width: Hidden width of the run.
        step: ``"fixed"`` or ``"reduced"``.
        lr: The step size it ran with.
        result: The run; ``result.report`` is the ``lightning-lplr report`` JSON document.

    Returns:
        A dict with the keys :data:`COLUMNS`; numbers are Python floats, ``None`` where the report
        has no value (e.g. no linear span to fit), and losses keep ``inf``/``nan`` of a diverged run.
    """
    if not result.report or not result.report["runs"]:
        raise RuntimeError(f"width {width}, {step} step: the run wrote no LPLR report ({result.log_dir}).")
    run = result.report["runs"][0]
    series = run["series"]
    span = _longest_linear_span(run)
    losses = [float(v) for v in result.losses]
    loss_init = losses[0] if losses else math.nan
    loss_final = losses[-1] if losses else math.nan
    finite = [v for v in losses if math.isfinite(v)]
    diverged = len(finite) < len(losses)
    loss_peak = math.inf if diverged else (max(finite) if finite else math.nan)
    inside = _num(run["region"]["inside_fraction"])
    local = (
        math.isfinite(loss_final)
        and loss_final < loss_init
        and inside is not None
        and inside >= INSIDE_THRESHOLD
    )
    return {
        "width": int(width),
        "step": step,
        "lr": float(lr),
        "eta_beta_init": _num(series.get("ntk/eta_beta", {}).get("initial")),
        "loss_init": loss_init,
        "loss_peak": loss_peak,
        "loss_final": loss_final,
        "param_drift": _num(run["param"]["drift_final"]),
        "ntk_drift": _num(run["ntk"]["drift_op_final"]),
        "pl_envelope": _num(run["pl"]["envelope_min_final"]),
        "rho_fit": None if span is None else _num(span["fit"]["contraction"]),
        "rho_pred": None if span is None else _num(span["contraction_pred_mean"]),
        "linear_fraction": _num(run["linear_spans"]["fraction_linear"]),
        "inside_fraction": inside,
        "local": bool(local),
        **lazy_columns(run.get("lazy") or {}),
        "seconds": round(float(result.seconds), 2),
        "log_dir": result.log_dir or "",
    }


# ---------------------------------------------------------------------------------------- summary


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.3g}"
    return str(value)


def summarize(rows: Sequence[dict[str, Any]]) -> tuple[bool, str]:
    """Whether the expected effect shows in ``rows``, and a sentence saying so.

    Expected: at the fixed step ``η·β₀`` grows with the width, the narrowest run converges
    without a loss spike, the widest is not local (it left the certified region, or diverged)
    and its NTK drift exceeds the narrowest's; at the reduced step the widest run is local again,
    with a smaller NTK drift than at the fixed step; by the linearisation gap, the widest run at the
    fixed step leaves the lazy regime (``lin/gap_rel`` ≥ 0.5 or ``ntk/drift_op`` ≥ 1) while the reduced
    step stays lazy, and its final ``lin/gap_rel`` is at least :data:`GAP_RATIO` times the reduced
    step's (checked for rows that hold ``lin_gap_rel``). (Whether the *narrowest* run is certified is
    reported but not required: the certificate is conservative, and a narrow network is the
    least lazy one.)

    Args:
        rows: The rows of :func:`main` (both steps, at least two widths).

    Returns:
        ``(observed, sentence)``.
    """
    fixed = sorted((r for r in rows if r["step"] == "fixed"), key=lambda r: r["width"])
    reduced = {r["width"]: r for r in rows if r["step"] == "reduced"}
    if len(fixed) < 2 or fixed[-1]["width"] not in reduced:
        return False, "Expected effect not assessable: need at least two widths, each at both steps."
    narrow, wide = fixed[0], fixed[-1]
    wide_red = reduced[wide["width"]]
    eb = [r["eta_beta_init"] for r in fixed]
    grows = all(a is not None and b is not None and b > a for a, b in itertools.pairwise(eb))
    drift_fixed = wide["ntk_drift"] if wide["ntk_drift"] is not None else math.inf
    drift_red = wide_red["ntk_drift"] if wide_red["ntk_drift"] is not None else math.inf
    narrow_drift = narrow["ntk_drift"] if narrow["ntk_drift"] is not None else math.inf
    checks = {
        f"η·β₀ grows with width at the fixed step ({' → '.join(_fmt(v) for v in eb)})": grows,
        f"width {narrow['width']} at the fixed step converges without a loss spike": (
            math.isfinite(narrow["loss_final"])
            and narrow["loss_final"] < narrow["loss_init"]
            and narrow["loss_peak"] <= narrow["loss_init"] * (1 + 1e-6)
        ),
        f"width {wide['width']} at the fixed step left the local regime": not wide["local"],
        f"its NTK drift exceeds width {narrow['width']}'s ({_fmt(wide['ntk_drift'])} vs "
        f"{_fmt(narrow['ntk_drift'])})": drift_fixed > narrow_drift or not math.isfinite(wide["loss_final"]),
        f"width {wide['width']} at the reduced step is local": wide_red["local"],
        f"its NTK drift shrinks with the reduced step ({_fmt(wide['ntk_drift'])} → "
        f"{_fmt(wide_red['ntk_drift'])})": drift_red < drift_fixed,
    }
    if "lin_gap_rel" in wide and "lin_gap_rel" in wide_red:  # rows of a run that logged lin/gap_rel
        gap, gap_red = wide["lin_gap_rel"], wide_red["lin_gap_rel"]
        checks[
            f"width {wide['width']} at the fixed step left the lazy regime ({_left(wide)}) and the "
            f"reduced step stays lazy ({_left(wide_red)})"
        ] = wide.get("left_step") is not None and wide_red.get("lazy_regime") == LAZY
        checks[
            f"its final lin/gap_rel is at least {GAP_RATIO:g}× the reduced step's ({_fmt(gap)} vs "
            f"{_fmt(gap_red)})"
        ] = gap is not None and gap_red is not None and gap >= GAP_RATIO * gap_red
    observed = all(checks.values())

    def how(r: dict[str, Any]) -> str:
        if not math.isfinite(r["loss_final"]):
            return "diverged (non-finite loss)"
        lazy = f"lin/gap_rel {_fmt(r['lin_gap_rel'])}, {_left(r)}, " if "lin_gap_rel" in r else ""
        return (
            f"{lazy}NTK drift {_fmt(r['ntk_drift'])}, parameter drift {_fmt(r['param_drift'])}, "
            f"loss peak {_fmt(r['loss_peak'])} from {_fmt(r['loss_init'])}, "
            f"certificate held on {_fmt_pct(r['inside_fraction'])} of the NTK samples"
        )

    if observed:
        sentence = (
            f"Expected effect observed: at the fixed step η = {_fmt(wide['lr'])}, η·β₀ grows with width "
            f"({' → '.join(_fmt(v) for v in eb)}); width {narrow['width']} converges smoothly "
            f"({how(narrow)}), width {wide['width']} leaves the local regime ({how(wide)}); at the "
            f"reduced step η = {_fmt(wide_red['lr'])} (η·β₀ = {_fmt(wide_red['eta_beta_init'])}) "
            f"width {wide['width']} is back in it ({how(wide_red)})."
        )
    else:
        failed = "; ".join(name for name, ok in checks.items() if not ok)
        sentence = f"Expected effect NOT observed. Failed: {failed}. Widest fixed-step run: {how(wide)}."
    return observed, sentence


def _left(row: dict[str, Any]) -> str:
    """Where ``row``'s run left the lazy regime, in words."""
    if row.get("left_step") is not None:
        return f"left the lazy regime at step {row['left_step']}"
    regime = row.get("lazy_regime")
    return "lazy regime not measured" if regime is None else f"{regime} throughout"


def _fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f} %"


# ---------------------------------------------------------------------------------------- outputs


def render_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table (the columns of :data:`_MARKDOWN`)."""
    head = "| " + " | ".join(title for _, title in _MARKDOWN) + " |"
    rule = (
        "|"
        + "|".join("---:" if key not in ("step", "local", "lazy_regime") else ":---" for key, _ in _MARKDOWN)
        + "|"
    )
    body = ["| " + " | ".join(_fmt(row[key]) for key, _ in _MARKDOWN) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips; nan/inf as "nan"/"inf"
    return value


def write_outputs(out: Path, rows: Sequence[dict[str, Any]], sentence: str, settings: str) -> dict[str, Path]:
    """Write ``width_ablation.csv``, ``width_ablation.md`` and ``summary.txt`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "width_ablation.csv", "md": out / "width_ablation.md", "txt": out / "summary.txt"}
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row[k]) for k in COLUMNS})
    table = render_markdown(rows)
    paths["md"].write_text(
        f"# Width ablation\n\n{settings}\n\n{table}\n\n{sentence}\n\n"
        "η·β₀: `ntk/eta_beta` at step 0; drifts and PL envelope: final logged values; ρ fit / ρ pred: "
        "the report's fit over the longest linear span and the mean logged `rate/contraction_pred` "
        "there; linear / inside: shares of `rate/regime` samples that are linear and of NTK samples "
        f"inside the certified region; local: loss decreased and inside ≥ {INSIDE_THRESHOLD:.0%}; "
        "lin gap: final `lin/gap_rel`; lazy regime: the further of `lin/gap_rel` (lazy < "
        f"{LIN_GAP_REL.lazy_below:g}, left ≥ {LIN_GAP_REL.left_from:g}) and `ntk/drift_op` (lazy < "
        f"{NTK_DRIFT_OP.lazy_below:g}, left ≥ {NTK_DRIFT_OP.left_from:g}) at their maxima; left at step: "
        'the first NTK sample at which either reached "left".\n',
        encoding="utf-8",
    )
    paths["txt"].write_text(f"{settings}\n\n{table}\n\n{sentence}\n", encoding="utf-8")
    return paths


# ------------------------------------------------------------------------------------------- runs


@contextlib.contextmanager
def _quiet(log_file: Path | None) -> Iterator[None]:
    """Send a run's console output (model summary, LPLR report, warnings) to ``log_file``."""
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with (
        log_file.open("w", encoding="utf-8") as fh,
        contextlib.redirect_stdout(fh),
        contextlib.redirect_stderr(fh),
    ):
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _fit(args: argparse.Namespace, width: int, lr: float, name: str) -> RunResult:
    runs_dir = Path(args.out) / "runs"
    argv = [
        "--parameterization", "standard",
        "--width", str(width),
        "--lr", repr(float(lr)),
        "--steps", str(args.steps),
        "--n", str(args.n),
        "--d", str(args.d),
        "--depth", str(args.depth),
        "--activation", args.activation,
        "--seed", str(args.seed),
        "--log-dir", str(runs_dir),
        "--name", name,
        "--accelerator", args.accelerator,
        "--no-progress-bar",
    ]  # fmt: skip
    if args.fast:
        argv.append("--fast")  # examples/mlp.py then samples the NTK every 4 steps, rate window 20
    with _quiet(None if args.verbose else runs_dir / f"{name}.log"):
        return mlp.main(argv)


def _reduced_lrs(args: argparse.Namespace, widths: Sequence[int], fixed: dict[int, dict[str, Any]]) -> dict:
    rule = str(args.reduced_lr).lower()
    if rule == "width":
        return {w: args.lr * widths[0] / w for w in widths}
    if rule == "auto":
        ref = fixed[widths[0]]["eta_beta_init"]
        out = {}
        for w in widths:
            eb = fixed[w]["eta_beta_init"]
            if ref is None or eb is None or eb <= 0:
                raise RuntimeError(
                    f"--reduced-lr auto: no η·β at initialisation for width {w} (ntk/eta_beta was not "
                    "logged at step 0); use --reduced-lr width or a number."
                )
            out[w] = args.lr * ref / eb
        return out
    return dict.fromkeys(widths, float(rule))


def _positive_ints(values: Sequence[int], option: str) -> list[int]:
    widths = sorted(set(values))
    if not widths or widths[0] < 1:
        raise SystemExit(f"examples/width_ablation.py: error: {option} must be positive integers.")
    return widths


def build_parser() -> argparse.ArgumentParser:
    """The argparse CLI (``python examples/width_ablation.py --help``)."""
    p = argparse.ArgumentParser(
        prog="examples/width_ablation.py",
        description="Width ablation in standard parameterisation: a fixed step versus a reduced one. "
        "--config FILE.yaml sets any of these options (keys as below with '_' for '-'). Precedence: "
        "command line, then the --fast preset, then the config file, then the defaults shown.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file of option values (the sweep)")
    p.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="hidden widths")
    p.add_argument("--lr", type=float, default=LR, help="the fixed step size")
    p.add_argument(
        "--reduced-lr",
        default="auto",
        help="'auto': per width, the step giving the narrowest fixed-step run's η·β at init; "
        "'width': lr·min(widths)/width; or a number",
    )
    p.add_argument("--steps", type=int, default=STEPS, help="gradient steps per run")
    p.add_argument("--n", type=int, default=N, help="teacher samples (the probe: the first min(n, 64))")
    p.add_argument("--d", type=int, default=D, help="input dimension")
    p.add_argument("--depth", type=int, default=DEPTH, help="hidden layers")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=ACTIVATION)
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initialisation")
    p.add_argument("--out", default="runs/width_ablation", help="output directory (tables, logs)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads during the sweep (these small full-batch fits gain nothing from more; "
        "0 leaves the setting alone)",
    )
    p.add_argument("--verbose", action="store_true", help="show each run's console output")
    p.add_argument("--fast", action="store_true", help=f"tiny sweep: {FAST}")
    return p


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = {}
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            parser.error(f"--config {args.config}: expected a mapping of option names to values.")
        known = set(vars(parser.parse_args([]))) - {"config"}
        unknown = sorted(set(loaded) - known)
        if unknown:
            parser.error(f"--config {args.config}: unknown keys {unknown}; allowed: {sorted(known)}.")
        defaults.update(loaded)
    if args.fast or defaults.get("fast"):
        defaults.update(FAST)
    if defaults:  # file and --fast values become the defaults; options given explicitly still win
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    reduced = str(args.reduced_lr).lower()
    if reduced not in ("auto", "width"):
        try:
            if not float(reduced) > 0:
                raise ValueError
        except ValueError:
            parser.error(f"--reduced-lr {args.reduced_lr!r}: use 'auto', 'width' or a positive number.")
    if not args.lr > 0 or args.steps < 1:
        parser.error("--lr must be > 0 and --steps >= 1.")
    args.widths = _positive_ints([int(w) for w in args.widths], "--widths")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the sweep, print and save the table and the summary sentence, return the rows.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``), see :func:`build_parser`.

    Returns:
        One dict per run (fixed-step runs by width, then reduced-step runs), keys :data:`COLUMNS`.
    """
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    threads_before = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _sweep(args)
    finally:
        torch.set_num_threads(threads_before)


def _sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = Path(args.out)
    widths: list[int] = args.widths
    total = 2 * len(widths)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def one(width: int, step: str, lr: float) -> dict[str, Any]:
        result = _fit(args, width, lr, f"w{width}_{step}")
        row = row_from_run(width, step, lr, result)
        print(
            f"[{len(rows) + 1}/{total}] width {width:>5}, {step:>7} step η={lr:.4g}: "
            f"η·β₀={_fmt(row['eta_beta_init'])}, "
            f"loss {_fmt(row['loss_init'])} → {_fmt(row['loss_final'])} (peak {_fmt(row['loss_peak'])}), "
            f"NTK drift {_fmt(row['ntk_drift'])}, inside {_fmt_pct(row['inside_fraction'])}  "
            f"[{row['seconds']:.1f} s]",
            flush=True,
        )
        rows.append(row)
        return row

    fixed = {w: one(w, "fixed", args.lr) for w in widths}
    for w, lr in _reduced_lrs(args, widths, fixed).items():
        one(w, "reduced", lr)

    _, sentence = summarize(rows)
    settings = (
        f"Standard parameterisation, depth-{args.depth} {args.activation} MLP without biases, teacher data "
        f"n={args.n}, d={args.d}, seed {args.seed}; full-batch GD for {args.steps} steps; fixed step "
        f"η={args.lr:g}, reduced step rule: {args.reduced_lr}."
    )
    paths = write_outputs(out, rows, sentence, settings)
    print("\n" + settings + "\n")
    print(render_markdown(rows))
    print(
        f"\nWrote {paths['csv']} and {paths['md']} (TensorBoard logs: {out / 'runs'}); "
        f"{time.perf_counter() - started:.0f} s in all."
    )
    print("\n" + sentence)
    return rows


if __name__ == "__main__":
    main()
