"""examples/width_ablation.py: the --fast sweep end to end, its tables, and the expected effect."""

from __future__ import annotations

import contextlib
import csv
import io
import math
from pathlib import Path

import pytest

from examples import width_ablation as wa
from lightning_lplr.report import load_runs
from lightning_lplr.report.regimes import LIN_GAP_REL, NTK_DRIFT_OP

REPO = Path(__file__).resolve().parents[1]

_ALWAYS_FINITE = (
    "lr",
    "eta_beta_init",
    "loss_init",
    "loss_final",
    "param_drift",
    "ntk_drift",
    "pl_envelope",
    "linear_fraction",
    "inside_fraction",
    "lin_gap_rel",
)


@pytest.fixture(scope="module")
def fast_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path, str]:
    out = tmp_path_factory.mktemp("width_ablation")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rows = wa.main(["--fast", "--out", str(out), "--accelerator", "cpu"])
    return rows, out, buf.getvalue()


def test_fast_sweep_writes_one_row_per_run(fast_sweep: tuple[list[dict], Path, str]) -> None:
    rows, out, printed = fast_sweep
    runs = {(r["width"], r["step"]) for r in rows}
    assert len(rows) == 4
    assert runs == {(w, s) for w in wa.FAST["widths"] for s in ("fixed", "reduced")}
    for row in rows:
        assert tuple(row) == wa.COLUMNS
        for key in _ALWAYS_FINITE:
            assert row[key] is not None and math.isfinite(row[key]), (row["width"], row["step"], key)
        assert 0.0 <= row["inside_fraction"] <= 1.0
        assert Path(row["log_dir"]).is_dir()

    with (out / "width_ablation.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == wa.COLUMNS
        table = list(reader)
    assert [(int(r["width"]), r["step"]) for r in table] == [(r["width"], r["step"]) for r in rows]
    for got, row in zip(table, rows, strict=True):
        assert float(got["eta_beta_init"]) == pytest.approx(row["eta_beta_init"])
        assert float(got["ntk_drift"]) == pytest.approx(row["ntk_drift"])
        assert float(got["lin_gap_rel"]) == row["lin_gap_rel"]  # repr round-trips
        assert got["left_step"] == ("" if row["left_step"] is None else str(row["left_step"]))

    markdown = (out / "width_ablation.md").read_text(encoding="utf-8")
    body = [line for line in markdown.splitlines() if line.startswith("| ") and "width" not in line]
    assert len(body) == 4
    titles = ("η·β₀", "param drift", "NTK drift", "PL envelope", "ρ fit", "ρ pred", "inside", "lin gap")
    for title in (*titles, "lazy regime", "left at step"):
        assert f" {title} |" in markdown
    assert (out / "summary.txt").is_file()
    assert "Expected effect" in printed.strip().splitlines()[-1]


def test_fast_sweep_shows_the_width_effect(fast_sweep: tuple[list[dict], Path, str]) -> None:
    rows, _, printed = fast_sweep
    by = {(r["width"], r["step"]): r for r in rows}
    narrow, wide = wa.FAST["widths"]
    # Standard parameterisation: λ_max(Θ₀) grows with width, so η·β does at a fixed step ...
    assert by[wide, "fixed"]["eta_beta_init"] > 4 * by[narrow, "fixed"]["eta_beta_init"]
    assert by[wide, "fixed"]["eta_beta_init"] > 2.0
    # ... and --reduced-lr auto brings every width back to the narrowest run's η·β.
    assert by[wide, "reduced"]["lr"] < by[wide, "fixed"]["lr"]
    for width in (narrow, wide):
        assert by[width, "reduced"]["eta_beta_init"] == pytest.approx(
            by[narrow, "fixed"]["eta_beta_init"], rel=1e-4
        )
    # The wide run at the fixed step leaves the local regime (the NTK moves, the certificate fails);
    # the reduced step keeps it local.
    assert by[wide, "fixed"]["ntk_drift"] > 10 * by[wide, "reduced"]["ntk_drift"]
    assert by[wide, "fixed"]["loss_peak"] > by[wide, "fixed"]["loss_init"]
    assert not by[wide, "fixed"]["local"]
    assert by[wide, "reduced"]["local"]
    for row in (by[wide, "reduced"], by[narrow, "reduced"]):
        assert row["rho_fit"] is not None and 0.0 < row["rho_fit"] < 1.0
        assert row["rho_pred"] is not None and 0.0 < row["rho_pred"] < 1.0
    # The linearisation gap: the wide run leaves the lazy regime at the fixed step, with a final
    # lin/gap_rel at least GAP_RATIO times the reduced step's, which stays lazy.
    assert by[wide, "fixed"]["lin_gap_rel"] >= wa.GAP_RATIO * by[wide, "reduced"]["lin_gap_rel"]
    assert (by[wide, "fixed"]["lazy_regime"], by[wide, "reduced"]["lazy_regime"]) == ("left", "lazy")
    assert by[wide, "fixed"]["left_step"] is not None and by[wide, "reduced"]["left_step"] is None
    observed, sentence = wa.summarize(rows)
    assert observed, sentence
    assert sentence in printed
    assert f"at least {wa.GAP_RATIO:g}× the reduced step's" not in sentence  # only named when it fails


def _first_at_or_above(series, threshold: float) -> int | None:
    steps = [int(s) for s, v in zip(series.steps, series.values, strict=True) if v >= threshold]
    return steps[0] if steps else None


def test_lazy_columns_agree_with_the_logged_series(fast_sweep: tuple[list[dict], Path, str]) -> None:
    """lin_gap_rel, lazy_regime and left_step recomputed from each run's event file and the thresholds."""
    rows, _, _ = fast_sweep
    order = {"lazy": 0, "transitional": 1, "left": 2}
    for row in rows:
        (run,) = load_runs([row["log_dir"]])
        gap, drift = run.get("lin/gap_rel").finite(), run.get("ntk/drift_op").finite()
        assert row["lin_gap_rel"] == float(gap.values[-1])
        regimes = [t.classify(float(s.values.max())) for t, s in ((LIN_GAP_REL, gap), (NTK_DRIFT_OP, drift))]
        assert row["lazy_regime"] == max(regimes, key=order.__getitem__)
        left = [
            step
            for step in (
                _first_at_or_above(gap, LIN_GAP_REL.left_from),
                _first_at_or_above(drift, NTK_DRIFT_OP.left_from),
            )
            if step is not None
        ]
        assert row["left_step"] == (min(left) if left else None), (row["width"], row["step"])


def test_lazy_columns_without_a_lazy_section() -> None:
    assert wa.lazy_columns({}) == {"lin_gap_rel": None, "lazy_regime": None, "left_step": None}
    drift_only = {"ntk_drift_op": {"final": 1.5, "regime": "left", "first_step_left": 30}}
    assert wa.lazy_columns(drift_only) == {"lin_gap_rel": None, "lazy_regime": "left", "left_step": 30}


def test_summary_reports_a_missing_effect() -> None:
    def row(width: int, step: str, eta_beta: float, local: bool, drift: float) -> dict:
        return {
            "width": width,
            "step": step,
            "lr": 0.1,
            "eta_beta_init": eta_beta,
            "loss_init": 1.0,
            "loss_peak": 1.0,
            "loss_final": 0.1,
            "param_drift": 0.1,
            "ntk_drift": drift,
            "inside_fraction": 1.0 if local else 0.0,
            "local": local,
        }

    rows = [
        row(64, "fixed", 0.3, True, 0.05),
        row(1024, "fixed", 1.5, True, 0.01),
        row(64, "reduced", 0.3, True, 0.05),
        row(1024, "reduced", 0.3, True, 0.005),
    ]
    observed, sentence = wa.summarize(rows)
    assert not observed
    assert sentence.startswith("Expected effect NOT observed")
    assert "width 1024 at the fixed step left the local regime" in sentence
    assert "lin/gap_rel" not in sentence  # rows without the column: no linearisation-gap checks
    assert not wa.summarize(rows[:1])[0]
    # With the column: a fixed-step gap under GAP_RATIO times the reduced step's is named.
    rows[1] = row(1024, "fixed", 3.0, False, 0.7)
    lazy = {"lin_gap_rel": 0.05, "lazy_regime": "lazy", "left_step": None}
    for r, gap in zip(rows, (0.04, 0.6, 0.04, 0.1), strict=True):
        r.update(lazy, lin_gap_rel=gap)
    rows[1].update(lazy_regime="left", left_step=10)
    observed, sentence = wa.summarize(rows)
    assert not observed
    assert f"its final lin/gap_rel is at least {wa.GAP_RATIO:g}× the reduced step's (0.6 vs 0.1)" in sentence
    rows[3]["lin_gap_rel"] = 0.01
    assert wa.summarize(rows)[0], wa.summarize(rows)[1]


def test_config_file_and_precedence(tmp_path: Path) -> None:
    config = REPO / "examples" / "configs" / "width_ablation.yaml"
    args = wa._parse(["--config", str(config)])
    assert args.widths == [64, 256, 1024]
    assert (args.lr, args.steps, args.reduced_lr) == (wa.LR, wa.STEPS, "auto")
    args = wa._parse(["--config", str(config), "--steps", "7", "--widths", "512", "32"])
    assert (args.steps, args.widths) == (7, [32, 512])
    args = wa._parse(["--config", str(config), "--fast"])
    assert (args.widths, args.steps) == (wa.FAST["widths"], wa.FAST["steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("widths: [8]\nlearning_rate: 0.1\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        wa._parse(["--config", str(bad)])
    with pytest.raises(SystemExit):
        wa._parse(["--reduced-lr", "smaller"])
    assert wa._parse(["--reduced-lr", "0.01"]).reduced_lr == "0.01"
