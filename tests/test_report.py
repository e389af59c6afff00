"""``lightning-lplr report``: real TensorBoard / CSVLogger files in, numbers equal to the logged ones out."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_lplr.functional.rate import fit_linear_rate
from lightning_lplr.report import errors
from lightning_lplr.report.cli import main
from lightning_lplr.report.reader import find_runs, load_runs
from lightning_lplr.report.schema import SCHEMA_VERSION, validate_report

STEPS = np.arange(61)
TB_RUN = "width_64/version_0"
CSV_RUN = "width_256/version_0"


def f32(x: float) -> float:
    """What a TensorBoard scalar (float32) reads back as."""
    return float(np.float32(x))


# ---------------------------------------------------------------------------------------------
# Synthetic series with known answers
# ---------------------------------------------------------------------------------------------


def tb_metrics() -> dict[str, dict[int, float]]:
    """key → {step: value}: gap 2·0.9^t with regime 1, envelope, NTK, drift, a failing certificate."""
    ratio = {int(t): 1.0 + 0.5 * math.sin(t) for t in STEPS}
    running = np.minimum.accumulate([ratio[int(t)] for t in STEPS])
    return {
        "pl/gap": {int(t): 2.0 * 0.9**t for t in STEPS},
        "rate/regime": {int(t): 1.0 for t in STEPS[::2]},  # every other step: irregular vs the gap
        "rate/contraction_pred": {int(t): 0.905 for t in STEPS[::2]},
        "rate/contraction": {int(t): 0.9 for t in STEPS[::2]},
        "pl/ratio_step": ratio,
        "pl/envelope_min": {int(t): float(running[t]) for t in STEPS},
        "pl/envelope_q05": {int(t): float(running[t]) + 0.01 for t in STEPS},
        "pl/mu_ntk": {int(t): 0.4 + 0.001 * t for t in STEPS[::5]},
        "ntk/lambda_min": {int(t): 1.0 - 0.005 * t for t in STEPS[::5]},
        "ntk/lambda_max": {int(t): 3.0 + 0.01 * t for t in STEPS[::5]},
        "ntk/drift_op": {int(t): 0.002 * t for t in STEPS[::5]},
        "param/drift": {int(t): 0.01 * t for t in STEPS},
        "region/mu_cert": {int(t): 0.505 - 0.01 * t for t in STEPS[::3]},
        "region/inside": {int(t): float(0.505 - 0.01 * t > 0) for t in STEPS[::3]},
        "skipped/nonpositive_gap": {0: 0.0, 30: 1.0, 60: 2.0},
        "skipped/nonfinite_loss": {0: 0.0, 60: 0.0},
    }


def csv_gap(t: int) -> float:
    """0.9 per step on 0..20, a noisy plateau on 21..30, 0.8 per step on 31..60."""
    g20 = 3.0 * 0.9**20
    if t <= 20:
        return 3.0 * 0.9**t
    if t <= 30:
        return g20 * (1.0 + 0.05 * (-1) ** t)
    return g20 * 0.8 ** (t - 30)


def csv_metrics() -> dict[str, dict[int, float]]:
    regime = {int(t): 1.0 if t <= 20 or t >= 31 else 0.0 for t in STEPS}
    return {
        "pl/gap": {int(t): csv_gap(int(t)) for t in STEPS},
        "rate/regime": regime,
        "rate/contraction_pred": {int(t): 0.91 + 0.001 * t for t in STEPS[::5]},
        "pl/ratio_step": {int(t): 2.0 + 0.1 * math.cos(t) for t in STEPS},
        "pl/envelope_min": {int(t): 1.9 for t in STEPS[::4]},
        "ntk/lambda_min": {int(t): 0.5 + 0.001 * t for t in STEPS[::10]},
    }


def by_step(metrics: dict[str, dict[int, float]]) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for key, values in metrics.items():
        for step, value in values.items():
            rows.setdefault(step, {})[f"lplr/{key}"] = value
    return dict(sorted(rows.items()))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width ablation as Lightning writes it: ablation/width_64/version_0 (TensorBoardLogger,
    with hparams and a histogram) and ablation/width_256/version_0 (CSVLogger)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    root = tmp_path_factory.mktemp("logs")
    tb = TensorBoardLogger(save_dir=str(root / "ablation"), name="width_64", version=0)
    tb.log_hyperparams({"width": 64, "lr": 0.1})
    for step, row in by_step(tb_metrics()).items():
        tb.log_metrics({**row, "train_loss": 1.0 / (step + 1)}, step=step)
    tb.experiment.add_histogram("lplr/ntk/eigenvalues", np.linspace(0.1, 3.0, 16), global_step=0)
    tb.finalize("success")

    csv_logger = CSVLogger(save_dir=str(root / "ablation"), name="width_256", version=0)
    csv_logger.log_hyperparams({"width": 256})
    for step, row in by_step(csv_metrics()).items():
        csv_logger.log_metrics({**row, "epoch": step // 10}, step=step)
    csv_logger.finalize("success")

    pl_only = CSVLogger(save_dir=str(root), name="pl_only", version=0)
    for t in STEPS:
        gap = 0.5 * 0.95**t
        pl_only.log_metrics(
            {"lplr/pl/gap": gap, "lplr/pl/ratio_step": 0.3, "lplr/pl/envelope_min": 0.3}, step=t
        )
    pl_only.finalize("success")
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def report_json(capsys: pytest.CaptureFixture[str], *argv: object) -> dict:
    code, out, err = run_cli(capsys, "report", *argv, "--json")
    assert code == 0, err
    document = json.loads(out)
    validate_report(document)
    return document


# ---------------------------------------------------------------------------------------------
# Numbers: the JSON equals what is computed directly from the logged values
# ---------------------------------------------------------------------------------------------


def test_tensorboard_run_numbers_equal_logged_values(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = report_json(capsys, logs / "ablation" / "width_64" / "version_0")
    assert document["schema_version"] == SCHEMA_VERSION
    (run,) = document["runs"]
    m = tb_metrics()
    assert run["name"] == "version_0"
    assert run["formats"] == ["tensorboard"]

    spans = run["linear_spans"]
    assert (spans["num_regime_samples"], spans["num_linear_samples"], spans["fraction_linear"]) == (
        31,
        31,
        1.0,
    )
    (span,) = spans["spans"]
    assert (span["start_step"], span["end_step"], span["num_regime_samples"]) == (0, 60, 31)
    logged_gap = [f32(m["pl/gap"][t]) for t in STEPS]
    direct = fit_linear_rate(logged_gap, STEPS)
    assert span["fit"]["num_points"] == 61
    assert span["fit"]["contraction"] == pytest.approx(direct.contraction, abs=1e-12)
    assert span["fit"]["contraction"] == pytest.approx(0.9, abs=1e-6)
    assert span["fit"]["r2"] == pytest.approx(1.0, abs=1e-9)
    assert span["contraction_pred_mean"] == pytest.approx(f32(0.905), abs=1e-12)
    assert span["contraction_logged_mean"] == pytest.approx(f32(0.9), abs=1e-12)
    assert run["overall"]["regime"] == "linear"

    final_env = m["pl/envelope_min"][60]
    assert run["pl"]["envelope_min_final"] == f32(final_env)
    assert run["pl"]["envelope_q05_final"] == f32(final_env + 0.01)
    assert run["pl"]["mu_ntk_min"] == f32(0.4) and run["pl"]["mu_ntk_max"] == f32(0.4 + 0.06)
    assert run["pl"]["ratio_step_min"] == min(f32(v) for v in m["pl/ratio_step"].values())

    assert run["ntk"]["lambda_min_min"] == f32(1.0 - 0.3) and run["ntk"]["lambda_min_max"] == f32(1.0)
    assert run["ntk"]["lambda_min_final"] == f32(0.7)
    assert run["ntk"]["drift_op_final"] == f32(0.12) == run["ntk"]["drift_op_max"]
    assert run["param"]["drift_final"] == f32(0.6)

    region = run["region"]
    inside = m["region/inside"]
    assert region["num_samples"] == len(inside) == 21
    assert region["num_inside"] == sum(inside.values()) == 17
    assert region["inside_fraction"] == pytest.approx(17 / 21)
    assert region["first_outside_step"] == 51
    assert region["mu_cert_min"] == f32(0.505 - 0.6) and region["mu_cert_min_step"] == 60

    assert run["skipped"] == {"skipped/nonpositive_gap": 2.0}  # zero counters are left out
    assert "ntk/eigenvalues" not in run["keys"]  # a histogram, not a scalar
    assert "train_loss" not in run["keys"]
    assert "ntk/trace" in run["missing_keys"]
    assert run["series"]["pl/gap"]["num_points"] == 61


def test_csv_run_two_linear_spans_and_missing_keys(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = report_json(capsys, logs / "ablation" / "width_256" / "version_0" / "metrics.csv")
    (run,) = document["runs"]
    assert run["formats"] == ["csv"]
    spans = run["linear_spans"]["spans"]
    assert [(s["start_step"], s["end_step"], s["num_regime_samples"]) for s in spans] == [
        (0, 20, 21),
        (31, 60, 30),
    ]
    assert spans[0]["fit"]["contraction"] == pytest.approx(0.9, abs=1e-12)
    assert spans[1]["fit"]["contraction"] == pytest.approx(0.8, abs=1e-12)
    assert spans[1]["fit"]["num_points"] == 30
    pred = csv_metrics()["rate/contraction_pred"]
    for span in spans:
        inside = [v for t, v in pred.items() if span["start_step"] <= t <= span["end_step"]]
        assert span["contraction_pred_mean"] == pytest.approx(np.mean(inside), abs=1e-12)
        assert span["contraction_logged_mean"] is None  # rate/contraction not logged
    assert run["linear_spans"]["num_linear_samples"] == 51
    assert run["pl"]["envelope_min_final"] == 1.9
    assert run["region"]["num_samples"] == 0 and run["region"]["inside_fraction"] is None
    assert run["param"]["drift_final"] is None
    assert any("region certificate was not logged" in note for note in run["notes"])
    assert any("parameter drift was not logged" in note for note in run["notes"])


def test_parent_directory_names_runs_by_relative_path(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "report", logs / "ablation", "--json")
    assert code == 0 and err == ""
    names = [run["name"] for run in json.loads(out)["runs"]]
    assert names == [CSV_RUN, TB_RUN]
    assert (logs / "ablation" / "width_64" / "version_0" / "hparams.yaml").exists()  # Lightning's layout


def test_text_report_says_it_in_words(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "report", logs / "ablation")
    assert code == 0, err
    tb_block, csv_block = (b for b in out.split("\n\n") if b.startswith(f"Run '{TB_RUN}'")), None
    tb_block = next(tb_block)
    csv_block = next(b for b in out.split("\n\n") if b.startswith(f"Run '{CSV_RUN}'"))
    assert "the loss decays linearly in 1 span, 31 of 31 regime samples linear (100%)" in tb_block
    assert "steps 0 to 60: the gap shrinks by a factor 0.9 per step" in tb_block
    assert "predicted 0.905 (mean of rate/contraction_pred)" in tb_block
    assert "first outside at step 51" in tb_block
    assert "inside at 17 of 21 samples (81.0%)" in tb_block
    assert "Skipped samples: skipped/nonpositive_gap = 2." in tb_block
    assert "PL lower envelope: final running minimum pl/envelope_min 0.5 and low quantile" in tb_block
    assert "(positive, so a PL inequality held on the sampled steps)" in tb_block
    assert "NTK: smallest eigenvalue ntk/lambda_min between 0.7 and 1" in tb_block
    assert "linearly in 2 spans" in csv_block
    assert "steps 31 to 60: the gap shrinks by a factor 0.8 per step" in csv_block
    assert "The region certificate was not logged (region/inside, region/mu_cert)." in csv_block
    assert "The NTK drift was not logged (ntk/drift_op)." in csv_block


def test_markdown_report_has_a_table(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "report", logs / "ablation", "--markdown")
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| run |"))
    assert set(lines[header + 1]) <= {"|", "-"}
    rows = lines[header + 2 : header + 4]
    assert rows[0].startswith(f"| {CSV_RUN} | 0–20, 31–60 | 0.9 (R² 1); 0.8 (R² 1) |")
    assert rows[1].startswith(f"| {TB_RUN} | 0–60 | 0.9 (R² 1) | 0.905 |")
    assert f"## {TB_RUN}" in out
    assert "| 31–60 | 0.8 |" in out


def test_run_with_only_step_level_pl_keys_is_summarised(
    logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "report", logs / "pl_only")
    assert code == 0, err
    assert "rate/regime was not logged, so the linear spans are unknown." in out
    assert "The NTK spectrum was not logged (ntk/lambda_min)." in out
    assert (
        "Whole run (steps 0 to 60): regime linear; a single linear fit of pl/gap gives 0.95 per step" in out
    )
    document = report_json(capsys, logs / "pl_only")
    assert document["runs"][0]["overall"]["fit"]["contraction"] == pytest.approx(0.95, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------


def color_pixels(image: np.ndarray, hex_color: str, tol: float = 0.02) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] - rgb).max(axis=-1) < tol).sum())


def quadrants(image: np.ndarray) -> dict[str, np.ndarray]:
    """The four panel areas, below the run legend strip at the top."""
    h, w = image.shape[:2]
    top, mid, cx = int(0.12 * h), h // 2, w // 2
    return {
        "gap": image[top:mid, :cx],
        "pl": image[top:mid, cx:],
        "ntk": image[mid:, :cx],
        "region": image[mid:, cx:],
    }


def test_plot_overlays_runs_in_four_panels(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image

    from lightning_lplr.report.plot import RUN_COLORS

    png = tmp_path / "ablation.png"
    code, out, err = run_cli(capsys, "report", logs / "ablation", "--plot", png)
    assert code == 0, err
    assert f"wrote {png}" in err and out.startswith("Run ")
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (800, 1200)
    tb_color, csv_color = RUN_COLORS[1], RUN_COLORS[0]  # runs sorted: width_256 first
    for panel, area in quadrants(image).items():
        assert color_pixels(area, tb_color) > 50, panel
        if panel != "region":  # the CSV run logged no drift nor certificate
            assert color_pixels(area, csv_color) > 50, panel
    assert color_pixels(quadrants(image)["region"], csv_color) == 0


def test_plot_panel_without_data_is_left_empty(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image

    from lightning_lplr.report.plot import RUN_COLORS

    png = tmp_path / "pl_only.png"
    code, _, err = run_cli(capsys, "report", logs / "pl_only", "--plot", png)
    assert code == 0, err
    areas = quadrants(matplotlib.image.imread(png))
    assert color_pixels(areas["gap"], RUN_COLORS[0]) > 50
    assert color_pixels(areas["pl"], RUN_COLORS[0]) > 50
    assert color_pixels(areas["ntk"], RUN_COLORS[0]) == 0
    assert color_pixels(areas["region"], RUN_COLORS[0]) == 0
    assert areas["ntk"][..., :3].min() < 0.6  # the "no data" note is drawn


def test_plot_without_matplotlib_fails_cleanly(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.lines", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    png = tmp_path / "never.png"
    code, out, err = run_cli(capsys, "report", logs / "pl_only", "--plot", png)
    assert code == errors.EXIT_MISSING_DEPENDENCY
    assert 'pip install "lightning-lplr[plot]"' in err
    assert "Traceback" not in err and out == "" and not png.exists()


# ---------------------------------------------------------------------------------------------
# Errors: one line on stderr, a distinct exit status, never a traceback
# ---------------------------------------------------------------------------------------------


def write_events(directory: Path, scalars: dict[str, list[tuple[int, float]]], suffix: str = "") -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(directory), filename_suffix=suffix)
    for tag, pairs in scalars.items():
        for step, value in pairs:
            writer.add_scalar(tag, value, global_step=step)
    writer.close()
    (path,) = (p for p in directory.iterdir() if p.name.endswith(suffix) and "tfevents" in p.name)
    return path


def valid_event_file(directory: Path) -> Path:
    return write_events(directory, {"lplr/pl/gap": [(t, 0.5**t) for t in range(20)]})


def make_case(name: str, tmp_path: Path) -> Path:
    """Build the bad input of one error case and return the path to report on."""
    if name == "missing_path":
        return tmp_path / "no" / "such" / "dir"
    if name == "empty_dir":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if name == "no_lplr_keys":
        write_events(tmp_path / "run", {"train_loss": [(0, 1.0), (1, 0.5)]})
        return tmp_path / "run"
    if name == "csv_without_step":
        (tmp_path / "metrics.csv").write_text("epoch,lplr/pl/gap\n0,1.0\n")
        return tmp_path / "metrics.csv"
    if name == "csv_without_lplr_columns":
        (tmp_path / "metrics.csv").write_text("epoch,step,train_loss\n0,0,1.0\n0,1,0.5\n")
        return tmp_path
    if name == "truncated_event_file":
        path = valid_event_file(tmp_path / "run")
        path.write_bytes(path.read_bytes()[:-7])
        return tmp_path / "run"
    if name == "corrupt_event_file":
        path = valid_event_file(tmp_path / "run")
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        return path
    if name == "corrupt_scalar_value":  # the record still parses: only the data checksum can tell
        path = valid_event_file(tmp_path / "run")
        data = path.read_bytes()
        value = struct.pack("<f", 0.5**5)
        assert data.count(value) == 1
        at = data.index(value)
        path.write_bytes(data[:at] + struct.pack("<f", 0.5**4) + data[at + 4 :])
        return tmp_path / "run"
    if name == "not_a_log_file":
        (tmp_path / "notes.txt").write_text("hello")
        return tmp_path / "notes.txt"
    raise AssertionError(name)


ERROR_CASES = {
    "missing_path": (errors.EXIT_NOT_FOUND, "no such file or directory"),
    "empty_dir": (
        errors.EXIT_NO_DATA,
        "no TensorBoard event files (events.out.tfevents.*) or metrics.csv found",
    ),
    "no_lplr_keys": (errors.EXIT_NO_DATA, "no run holds a key under the prefix 'lplr/'"),
    "csv_without_step": (errors.EXIT_BAD_INPUT, "no 'step' column (columns: epoch, lplr/pl/gap)"),
    "csv_without_lplr_columns": (errors.EXIT_NO_DATA, "no run holds a key under the prefix 'lplr/'"),
    "truncated_event_file": (errors.EXIT_BAD_INPUT, "truncated event file"),
    "corrupt_event_file": (errors.EXIT_BAD_INPUT, "corrupt event file"),
    "corrupt_scalar_value": (errors.EXIT_BAD_INPUT, "corrupt event file (record data checksum mismatch"),
    "not_a_log_file": (errors.EXIT_BAD_INPUT, "neither a TensorBoard event file"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_exits_with_one_line_and_its_status(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected_code, expected_message = ERROR_CASES[case]
    code, out, err = run_cli(capsys, "report", make_case(case, tmp_path))
    assert code == expected_code, err
    assert expected_message in err
    assert err.startswith("lightning-lplr: error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and out == ""


def test_exit_statuses_are_distinct() -> None:
    codes = [getattr(errors, name) for name in errors.__all__ if name.startswith("EXIT_")]
    assert len(codes) == len(set(codes)) == 8


def test_allow_truncated_reads_the_complete_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = valid_event_file(tmp_path / "run")
    path.write_bytes(path.read_bytes()[:-7])
    document = report_json(capsys, tmp_path / "run", "--allow-truncated")
    series = document["runs"][0]["series"]["pl/gap"]
    assert series["num_points"] == 19 and series["last_step"] == 18  # the last record was cut
    code, _, err = run_cli(capsys, "report", tmp_path / "run", "--allow-truncated")
    assert code == 0 and "warning: " in err and "truncated final record" in err


def test_wrong_prefix_is_named_in_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_events(tmp_path / "run", {"probe/pl/gap": [(t, 0.5**t) for t in range(10)]})
    code, _, err = run_cli(capsys, "report", tmp_path / "run")
    assert code == errors.EXIT_NO_DATA and "--prefix 'probe/'" in err
    document = report_json(capsys, tmp_path / "run", "--prefix", "probe/")
    assert document["prefix"] == "probe/"
    assert document["runs"][0]["overall"]["fit"]["contraction"] == pytest.approx(0.5, abs=1e-6)


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys)
    assert code == errors.EXIT_USAGE and "missing COMMAND" in err
    code, _, err = run_cli(capsys, "report")
    assert code == errors.EXIT_USAGE and "PATH" in err
    code, _, err = run_cli(capsys, "report", ".", "--json", "--markdown")
    assert code == errors.EXIT_USAGE and "not allowed with" in err
    code, out, _ = run_cli(capsys, "report", "--help")
    assert code == 0 and "--allow-truncated" in out and "exit status" in out


def test_unwritable_plot_path_and_internal_errors_exit_cleanly(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(capsys, "report", logs / "pl_only", "--plot", tmp_path / "no" / "dir" / "x.png")
    assert code == errors.EXIT_OUTPUT and "cannot write the plot" in err and "Traceback" not in err

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("lightning_lplr.report.summary.document_of", broken)
    code, _, err = run_cli(capsys, "report", logs / "pl_only")
    assert code == errors.EXIT_INTERNAL
    assert err.strip() == (
        "lightning-lplr: error: internal error: RuntimeError: boom (rerun with --debug for the traceback)"
    )
    with pytest.raises(RuntimeError, match="boom"):
        main(["report", str(logs / "pl_only"), "--debug"])


# ---------------------------------------------------------------------------------------------
# Reader details: resumed runs, merged loggers, skipped runs
# ---------------------------------------------------------------------------------------------


def test_repeated_steps_keep_the_last_value_and_loggers_merge(tmp_path: Path) -> None:
    run = tmp_path / "version_0"
    write_events(run, {"lplr/pl/gap": [(0, 4.0), (1, 2.0)]}, suffix=".a")
    write_events(run, {"lplr/pl/gap": [(1, 3.0), (2, 1.0)]}, suffix=".b")  # a resumed run rewrites step 1
    (run / "metrics.csv").write_text("step,lplr/pl/gap,lplr/param/drift\n0,99.0,0.1\n5,,0.2\n")
    (loaded,) = load_runs([run])
    gap, drift = loaded.series["pl/gap"], loaded.series["param/drift"]
    assert gap.steps.tolist() == [0, 1, 2] and gap.values.tolist() == [4.0, 3.0, 1.0]  # events win
    assert drift.steps.tolist() == [0, 5] and drift.values.tolist() == pytest.approx([0.1, 0.2])  # CSV fills
    assert loaded.formats == ("tensorboard", "csv")


def test_runs_without_lplr_keys_are_skipped_with_a_warning(tmp_path: Path) -> None:
    valid_event_file(tmp_path / "good")
    write_events(tmp_path / "other", {"loss": [(0, 1.0)]})
    (tmp_path / ".hidden").mkdir()
    write_events(tmp_path / ".hidden", {"lplr/pl/gap": [(0, 1.0)]})
    assert [loc.name for loc in find_runs(tmp_path)] == ["good", "other"]
    warnings: list[str] = []
    runs = load_runs([tmp_path], warn=warnings.append)
    assert [r.name for r in runs] == ["good"]
    assert warnings == ["skipped run 'other': no keys under the prefix 'lplr/'"]


# ---------------------------------------------------------------------------------------------
# Schema: the validator rejects what does not match
# ---------------------------------------------------------------------------------------------


def test_schema_validator_rejects_bad_documents(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = report_json(capsys, logs / "ablation")
    run = document["runs"][0]
    bad_documents = {
        "missing field": {**document, "runs": [{k: v for k, v in run.items() if k != "region"}]},
        "extra field": {**document, "runs": [{**run, "surprise": 1}]},
        "string for a number": {**document, "runs": [{**run, "pl": {**run["pl"], "mu_ntk_min": "0.1"}}]},
        "NaN": {**document, "runs": [{**run, "param": {**run["param"], "drift_final": float("nan")}}]},
        "bad regime": {**document, "runs": [{**run, "overall": {**run["overall"], "regime": "fast"}}]},
        "bool for an int": {**document, "runs": [{**run, "first_step": True}]},
        "wrong version": {**document, "schema_version": "0.9"},
    }
    for what, bad in bad_documents.items():
        with pytest.raises(ValueError):
            validate_report(bad)
            pytest.fail(what)


# ---------------------------------------------------------------------------------------------
# The entry point, once, in a subprocess
# ---------------------------------------------------------------------------------------------


def test_python_dash_m_entry_point(logs: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}  # a C locale must not crash on ρ, λ, R²
    result = subprocess.run(
        [sys.executable, "-m", "lightning_lplr", "report", str(logs / "ablation"), "--markdown"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"| {TB_RUN} | 0" in result.stdout and "\\u03c1" in result.stdout
