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
    assert any("region estimate was not logged" in note for note in run["notes"])
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
    assert "Verdict: A PL inequality held on the sampled steps" in tb_block  # no marker: L* = 0, linear decay
    assert "Reading: no schema marker" in tb_block
    assert "NTK: smallest eigenvalue ntk/lambda_min between 0.7 and 1" in tb_block
    assert "linearly in 2 spans" in csv_block
    assert "steps 31 to 60: the gap shrinks by a factor 0.8 per step" in csv_block
    assert "The region estimate was not logged (region/inside, region/mu_cert)." in csv_block
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


def panel(fig, name: str):
    (ax,) = (a for a in fig.axes if a.get_label() == f"panel:{name}")
    return ax


def data_lines(ax) -> list:
    """The lines that carry data (threshold lines are horizontal: two points at the axes' edges)."""
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 2 or line.get_linestyle() == "None"]


def test_plot_overlays_runs_in_its_panels(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image

    from lightning_lplr.report.plot import DEFAULT_DPI, DEFAULT_FIGSIZE, RUN_COLORS, draw_report

    png = tmp_path / "ablation.png"
    code, out, err = run_cli(capsys, "report", logs / "ablation", "--plot", png)
    assert code == 0, err
    assert f"wrote {png}" in err and out.startswith("Run ")
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (DEFAULT_FIGSIZE[1] * DEFAULT_DPI, DEFAULT_FIGSIZE[0] * DEFAULT_DPI)

    runs = load_runs([logs / "ablation"])
    document = report_json(capsys, logs / "ablation")
    fig = draw_report(runs, document["runs"])
    csv_color, tb_color = RUN_COLORS[0], RUN_COLORS[1]  # runs sorted: width_256 first
    colors = {
        name: {line.get_color() for line in data_lines(panel(fig, name))} for name in ("gap", "pl", "ntk")
    }
    for name, used in colors.items():
        assert {csv_color, tb_color} <= used, name
    # The CSV run logged no certificate, drift or η·β: only the TensorBoard run's colour there.
    assert {line.get_color() for line in data_lines(panel(fig, "region"))} == {tb_color}
    assert {line.get_color() for line in data_lines(panel(fig, "param"))} == {tb_color}


def test_plot_panel_without_data_is_left_empty(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_lplr.report.plot import PANELS, draw_report

    runs = load_runs([logs / "pl_only"])
    fig = draw_report(runs, report_json(capsys, logs / "pl_only")["runs"])
    with_data = {name for row in PANELS for name in row if data_lines(panel(fig, name))}
    assert with_data == {"gap", "pl"}
    texts = [t.get_text() for t in panel(fig, "ntk").texts]
    assert texts == ["no data\n(ntk/lambda_min, ntk/lambda_max not logged)"]


def test_plot_labels_inside_canvas_and_legends_off_the_data(
    logs: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from lightning_lplr.report.plot import draw_report

    run_dir = tmp_path / "wide"
    write_csv_run(run_dir, wide_range_metrics())
    runs = load_runs([logs / "ablation", run_dir])
    documents = report_json(capsys, logs / "ablation", run_dir)["runs"]
    fig = draw_report(runs, documents)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    tight, canvas = fig.get_tightbbox(renderer), fig.bbox_inches
    assert tight.x0 >= canvas.x0 - 1e-9 and tight.y0 >= canvas.y0 - 1e-9, (tight, canvas)
    assert tight.x1 <= canvas.x1 + 1e-9 and tight.y1 <= canvas.y1 + 1e-9, (tight, canvas)
    data_axes = [ax for ax in fig.axes if ax.get_label().startswith("panel:")]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends
    assert len(legends) >= 7
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in data_axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (legend, ax.get_label())
    for ax in data_axes:  # every y label is drawn inside the canvas
        label_box = ax.yaxis.label.get_window_extent(renderer)
        assert label_box.x0 >= 0 and label_box.y0 >= 0


def wide_range_metrics() -> dict[str, dict[int, float]]:
    """λ_min = 1e-4 next to λ_max = 1e3, a certificate that turns negative at step 25.5, and
    lin/gap_rel crossing both thresholds."""
    steps = range(0, 61, 5)
    return {
        "pl/gap": {t: 0.9**t for t in range(61)},
        "ntk/lambda_min": {t: 1e-4 * (1 + 0.01 * t) for t in steps},
        "ntk/lambda_max": {t: 1e3 for t in steps},
        "region/mu_cert": {t: 0.5 - t / 51 for t in range(0, 61, 3)},
        "lin/gap_rel": {t: 0.02 * t for t in steps},
    }


def test_plot_eigenvalues_on_a_log_axis_show_a_small_lambda_min(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_lplr.report.plot import draw_report

    write_csv_run(tmp_path / "wide", wide_range_metrics())
    runs = load_runs([tmp_path / "wide"])
    fig = draw_report(runs, report_json(capsys, tmp_path / "wide")["runs"])
    fig.canvas.draw()
    ax = panel(fig, "ntk")
    assert ax.get_yscale() == "log"
    box = ax.get_window_extent()
    lo, hi = data_lines(ax)  # lambda_min is drawn first
    y_lo = ax.transData.transform(np.column_stack([lo.get_xdata(), lo.get_ydata()]))[:, 1]
    y_hi = ax.transData.transform(np.column_stack([hi.get_xdata(), hi.get_ydata()]))[:, 1]
    assert np.all((y_lo > box.y0) & (y_lo < box.y1)) and np.all((y_hi > box.y0) & (y_hi < box.y1))
    assert y_hi.min() - y_lo.max() > 0.5 * box.height  # seven decades apart, both readable


def test_plot_shades_only_where_the_certificate_is_negative(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_lplr.report.plot import draw_report

    write_csv_run(tmp_path / "wide", wide_range_metrics())
    fig = draw_report(load_runs([tmp_path / "wide"]), report_json(capsys, tmp_path / "wide")["runs"])
    ax = panel(fig, "region")
    (fill,) = [c for c in ax.collections if c.get_gid() == "mu_cert_negative"]
    xs = np.concatenate([path.vertices[:, 0] for path in fill.get_paths()])
    ys = np.concatenate([path.vertices[:, 1] for path in fill.get_paths()])
    # mu_cert = 0.5 - t/51 crosses zero at t = 25.5 (interpolated); sampled every 3 steps up to 60.
    assert xs.min() == pytest.approx(25.5) and xs.max() == 60
    assert ys.max() <= 1e-12  # the shaded area lies between the certificate and zero, below zero

    write_csv_run(tmp_path / "inside", {"pl/gap": {t: 0.9**t for t in range(10)},
                                        "region/mu_cert": {t: 1.0 for t in range(10)}})  # fmt: skip
    fig = draw_report(load_runs([tmp_path / "inside"]), report_json(capsys, tmp_path / "inside")["runs"])
    assert not [c for c in panel(fig, "region").collections if c.get_gid() == "mu_cert_negative"]


def test_plot_lazy_panel_draws_the_regime_thresholds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_lplr.report.plot import draw_report
    from lightning_lplr.report.regimes import LIN_GAP_REL

    write_csv_run(tmp_path / "wide", wide_range_metrics())
    fig = draw_report(load_runs([tmp_path / "wide"]), report_json(capsys, tmp_path / "wide")["runs"])
    ax = panel(fig, "lazy")
    levels = {line.get_ydata()[0] for line in ax.get_lines() if line not in data_lines(ax)}
    assert levels == {LIN_GAP_REL.lazy_below, LIN_GAP_REL.left_from}  # no drift logged: no drift threshold
    assert ax.get_yscale() == "log"


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


def test_csv_cells_blank_text_nan_short_rows_and_repeats(tmp_path: Path) -> None:
    from lightning_lplr.report.reader import read_metrics_csv

    (tmp_path / "metrics.csv").write_text(
        "step,lplr/pl/gap,lplr/param/drift\n"
        "0,1.0,\n"
        "1, ,0.5\n"  # a blank cell: not logged
        "2,abc,nan\n"  # text: skipped; NaN: kept
        "3,0.25\n"  # a short row
        "3,0.125,0.1\n"  # the same step again: the last value wins
        "x,9,9\n"  # no usable step: skipped
    )
    pairs, _ = read_metrics_csv(tmp_path / "metrics.csv")
    assert pairs["pl/gap"] == [(0, 1.0), (3, 0.25), (3, 0.125)]
    (run,) = load_runs([tmp_path])
    gap, drift = run.series["pl/gap"], run.series["param/drift"]
    assert gap.steps.tolist() == [0, 3] and gap.values.tolist() == [1.0, 0.125]
    assert drift.steps.tolist() == [1, 2, 3]
    assert drift.values[0] == 0.5 and math.isnan(drift.values[1]) and drift.values[2] == 0.1


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


FLAG = {
    "code": "ntk_drift_left_lazy",
    "severity": "warning",
    "key": "ntk/drift_op",
    "step": 3,
    "value": 1.5,
    "threshold": 1.0,
    "message": "left",
}


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
        "unknown flag code": {**document, "runs": [{**run, "flags": [{**FLAG, "code": "looks_bad"}]}]},
        "flag without message": {
            **document,
            "runs": [{**run, "flags": [{k: v for k, v in FLAG.items() if k != "message"}]}],
        },
        "list in marker fields": {
            **document,
            "runs": [{**run, "marker": {**run["marker"], "fields": {"loss": ["mse"]}}}],
        },
        "verdict claim not a bool": {
            **document,
            "runs": [{**run, "verdict": {**run["verdict"], "pl_inequality_held": "yes"}}],
        },
        "bad lazy regime": {
            **document,
            "runs": [
                {**run, "lazy": {**run["lazy"], "lin_gap_rel": {**run["lazy"]["lin_gap_rel"], "regime": "x"}}}
            ],
        },
    }
    validate_report({**document, "runs": [{**run, "flags": [FLAG]}]})  # the well-formed flag passes
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


# ---------------------------------------------------------------------------------------------
# Schema marker, verdicts and flags: runs written with real writers, read back through the CLI
# ---------------------------------------------------------------------------------------------

V2_MARKER = {
    "key_semantics_version": 2,
    "monitor": "LPLRMonitor",
    "prefix": "lplr/",
    "kernel_kind": "full",
    "norm_mode": "probe",
    "loss": "mse_loss",
    "loss_star": "zero",
    "optimizer": "SGD",
    "momentum": 0.0,
    "plain_sgd": True,
    "probe_is_training_set": True,
    "full_batch": True,
    "world_size": 1,
}


def v2_marker(**fields: object) -> dict:
    from lightning_lplr.reporting.marker import make_marker

    return make_marker(**{**{k: v for k, v in V2_MARKER.items() if k != "key_semantics_version"}, **fields})


def write_csv_run(directory: Path, metrics: dict[str, dict[int, float]], marker: dict | None = None) -> Path:
    """A CSVLogger-style run by hand: sparse metrics.csv (values written with repr, so float64 survives)
    and, with a marker, hparams.yaml holding flatten_marker(marker) as log_hyperparams keeps it."""
    import yaml

    from lightning_lplr.reporting.marker import flatten_marker

    directory.mkdir(parents=True, exist_ok=True)
    columns = [f"lplr/{key}" for key in metrics]
    rows = by_step(metrics)
    lines = [",".join(["epoch", "step", *columns])]
    for step, row in rows.items():
        lines.append(",".join(["0", str(step), *(repr(row[c]) if c in row else "" for c in columns)]))
    (directory / "metrics.csv").write_text("\n".join(lines) + "\n")
    if marker is not None:
        (directory / "hparams.yaml").write_text(yaml.safe_dump(flatten_marker(marker, "lplr/")))
    return directory


def write_tb_run(directory: Path, metrics: dict[str, dict[int, float]], marker: dict | None = None) -> Path:
    """A TensorBoard run written with SummaryWriter; the marker as the monitor writes it (add_text)."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_lplr.reporting.marker import encode_marker, marker_tag

    writer = SummaryWriter(log_dir=str(directory))
    if marker is not None:
        writer.add_text(marker_tag("lplr/"), encode_marker(marker), global_step=0)
    for step, row in by_step(metrics).items():
        for tag, value in row.items():
            writer.add_scalar(tag, value, global_step=step)
    writer.close()
    return directory


def decaying(steps: int = 80, rho: float = 0.9, envelope: float = 0.3) -> dict[str, dict[int, float]]:
    """A clean linear decay from 1 with a positive envelope and linear regime codes."""
    return {
        "pl/gap": {t: rho**t for t in range(steps)},
        "pl/envelope_min": {t: envelope for t in range(steps)},
        "rate/regime": {t: 1.0 for t in range(10, steps)},
    }


def run_doc(capsys: pytest.CaptureFixture[str], path: Path, *argv: object) -> tuple[dict, str]:
    """The run's JSON object and its text block, both through the CLI."""
    (run,) = report_json(capsys, path, *argv)["runs"]
    code, text, err = run_cli(capsys, "report", path, *argv)
    assert code == 0, err
    return run, text


def flag_codes(run: dict) -> list[str]:
    return [flag["code"] for flag in run["flags"]]


@pytest.mark.parametrize("decay", ["flat", "linear"])
def test_cross_entropy_with_zero_loss_star_never_claims_pl(
    decay: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = decaying()
    if decay == "flat":  # a loss that does not move: ln 10 for ten classes, a flat ratio, regime undetermined
        metrics["pl/gap"] = {t: math.log(10) * (1 + 1e-4 * (-1) ** t) for t in range(80)}
        metrics["rate/regime"] = {t: 0.0 for t in range(10, 80)}
    path = write_csv_run(tmp_path / "ce", metrics, v2_marker(loss="cross_entropy"))
    run, text = run_doc(capsys, path)
    verdict = run["verdict"]
    assert verdict["pl_inequality_held"] is False and verdict["gap_credible"] is False
    assert verdict["gap_basis"] is None and verdict["mu_envelope_min"] == 0.3
    assert "A PL inequality held" not in text
    assert "L* = 0 is the infimum of the cross_entropy loss" in text and "typically sublinear" in text
    # The same data with a squared loss: the decay decides (the rule can say yes).
    path = write_csv_run(tmp_path / "mse", metrics, v2_marker(loss="mse_loss"))
    run, text = run_doc(capsys, path)
    assert run["verdict"]["pl_inequality_held"] is (decay == "linear")
    assert ("A PL inequality held on the sampled steps" in text) is (decay == "linear")
    if decay == "linear":
        assert run["verdict"]["gap_basis"] == "linear_regime"


def test_given_loss_star_makes_the_gap_credible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = decaying()
    metrics["rate/regime"] = {t: 0.0 for t in range(10, 80)}  # not linear: only the given L* can vouch
    run, text = run_doc(
        capsys, write_csv_run(tmp_path / "r", metrics, v2_marker(loss="cross_entropy", loss_star=0.25))
    )
    assert run["verdict"]["pl_inequality_held"] and run["verdict"]["gap_basis"] == "loss_star_value"
    assert run["loss_star"]["strategy"] == "value" and run["loss_star"]["value"] == 0.25
    assert "L* = 0.25 was given" in text


def test_eta_beta_past_the_threshold_is_flagged_only_where_it_means_something(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eta, beta = 0.5, {t: 3.0 + 0.02 * t for t in range(0, 80, 10)}  # η·β = 1.5, 1.6, …, 2.2 (step 70)
    metrics = {
        **decaying(),
        "curv/beta": beta,
        "ntk/eta_beta": {t: eta * b for t, b in beta.items()},
    }
    first = min(t for t, b in beta.items() if eta * b >= 2)
    run, text = run_doc(capsys, write_tb_run(tmp_path / "sgd", metrics, v2_marker()))
    (flag,) = run["flags"]
    assert flag["code"] == "eta_beta_unstable" and flag["severity"] == "warning"
    assert flag["step"] == first == 50 and flag["threshold"] == 2.0
    assert flag["value"] == pytest.approx(eta * beta[70], rel=1e-6)
    assert run["stability"]["first_step_unstable"] == first
    assert "eta_beta_unstable" in text and "past the stability threshold 2" in text
    # η recovered from ntk/eta_beta / curv/beta (float32 in TensorBoard: rel 1e-6); β = the largest curv/beta.
    verdict = run["verdict"]
    assert verdict["eta"] == pytest.approx(eta, rel=1e-6) and verdict["beta"] == pytest.approx(
        beta[70], rel=1e-6
    )
    mu = verdict["mu_envelope_min"]
    expected = 1 - 2 * eta * mu * (1 - eta * beta[70] / 2)
    assert verdict["contraction_implied_envelope"] == pytest.approx(expected, rel=1e-5)
    assert verdict["contraction_measured"] == pytest.approx(0.9, rel=1e-6)

    # Heavy-ball momentum 0.9: threshold 2(1 + 0.9) = 3.8, not reached. Adam: indicative only, no flag.
    run, _ = run_doc(
        capsys, write_tb_run(tmp_path / "momentum", metrics, v2_marker(momentum=0.9, plain_sgd=False))
    )
    assert run["flags"] == [] and run["stability"]["threshold"] == pytest.approx(3.8)
    run, text = run_doc(
        capsys, write_tb_run(tmp_path / "adam", metrics, v2_marker(optimizer="Adam", plain_sgd=False))
    )
    assert run["flags"] == [] and run["stability"]["threshold"] is None
    assert "indicative only (optimizer Adam" in text
    assert "The formula is for plain gradient descent; this run used Adam" in text


def test_negative_lambda_min_beyond_float32_tolerance_is_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_lplr.report.regimes import negative_eigenvalue_tolerance

    tol = negative_eigenvalue_tolerance(1.0)  # 1000·2⁻²³ ≈ 1.19e-4 with λ_max = 1
    steps = range(0, 80, 10)
    metrics = {
        **decaying(),
        "ntk/lambda_max": {t: 1.0 for t in steps},
        "ntk/lambda_min": {t: (-0.5 * tol if t < 40 else -10 * tol) for t in steps},  # noise, then not
        "ntk_pseudo/lambda_max": {t: 2.0 for t in steps},
        "ntk_pseudo/lambda_min": {t: -0.9 * negative_eigenvalue_tolerance(2.0) for t in steps},  # noise only
        "ntk_trace/lambda_min": {t: -1e-3 for t in steps},  # no lambda_max: no tolerance to apply
    }
    run, text = run_doc(capsys, write_csv_run(tmp_path / "neg", metrics, v2_marker()))
    flags = {flag["key"]: flag for flag in run["flags"]}
    assert set(flags) == {"ntk/lambda_min", "ntk_trace/lambda_min"}
    full = flags["ntk/lambda_min"]
    assert full["code"] == "negative_lambda_min" and full["step"] == 40
    assert full["value"] == pytest.approx(-10 * tol) and full["threshold"] == pytest.approx(-tol)
    assert "at 4 of 8 samples" in full["message"] and "not a property of the model" in full["message"]
    assert "no ntk_trace/lambda_max was logged" in flags["ntk_trace/lambda_min"]["message"]
    assert text.count("negative_lambda_min") == 2


def test_float32_gram_noise_stays_inside_the_tolerance() -> None:
    """The measurement behind GRAM_NOISE_FACTOR, on rank-deficient kernels (true λ_min = 0): the float32
    Gram's most negative eigenvalue stays within the tolerance, and a genuine error is caught."""
    from lightning_lplr.report.regimes import negative_eigenvalue_tolerance

    rng = np.random.default_rng(0)
    worst = 0.0
    for n, p, rank in ((64, 8, 8), (320, 2000, 40), (640, 64, 64)):
        jac = (rng.standard_normal((n, rank)) @ rng.standard_normal((rank, p))).astype(np.float32)
        gram = jac @ jac.T  # float32 product, as the kernels are computed
        eig = np.linalg.eigvalsh(0.5 * (gram + gram.T).astype(np.float64))
        worst = max(worst, -eig[0] / negative_eigenvalue_tolerance(eig[-1]))
        broken = eig[0] - 2 * negative_eigenvalue_tolerance(eig[-1])  # e.g. a wrong diagonal shift
        assert broken < -negative_eigenvalue_tolerance(eig[-1])
    assert 0 < worst < 0.05  # measured ≤ 2 ε₃₂ λ_max against the tolerance of 1000 ε₃₂ λ_max


def test_ntk_drift_past_one_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {**decaying(), "ntk/drift_op": {t: 0.025 * t for t in range(0, 80, 10)}}  # 1.0 at step 40
    run, text = run_doc(capsys, write_tb_run(tmp_path / "drift", metrics, v2_marker()))
    (flag,) = run["flags"]
    assert flag["code"] == "ntk_drift_left_lazy" and flag["step"] == 40 and flag["threshold"] == 1.0
    assert flag["value"] == pytest.approx(1.75)
    drift = run["lazy"]["ntk_drift_op"]
    assert (drift["first_step_transitional"], drift["first_step_left"], drift["regime"]) == (10, 40, "left")
    assert "ntk_drift_left_lazy" in text and "training left the lazy regime" in text


def test_linearisation_gap_crossing_both_thresholds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gap_rel = {0: 0.0, 5: 0.05, 10: 0.08, 15: 0.12, 20: 0.3, 25: 0.49, 30: 0.51, 35: 0.9}
    run, text = run_doc(
        capsys, write_csv_run(tmp_path / "lin", {**decaying(), "lin/gap_rel": gap_rel}, v2_marker())
    )
    lin = run["lazy"]["lin_gap_rel"]
    assert (lin["first_step_transitional"], lin["first_step_left"]) == (15, 30)
    assert (lin["max"], lin["max_step"], lin["regime"]) == (0.9, 35, "left")
    assert flag_codes(run) == ["lin_gap_left_lazy"]
    assert "lin/gap_rel max 0.9 at step 35, first ≥ 0.1 at step 15, first ≥ 0.5 at step 30: left" in text
    assert "lin_gap_left_lazy" in text
    # Below 0.5: transitional, an info flag.
    gap_rel = {t: v for t, v in gap_rel.items() if v < 0.5}
    run, _ = run_doc(
        capsys, write_csv_run(tmp_path / "lin2", {**decaying(), "lin/gap_rel": gap_rel}, v2_marker())
    )
    assert flag_codes(run) == ["lin_gap_transitional"] and run["flags"][0]["severity"] == "info"
    assert run["lazy"]["lin_gap_rel"]["first_step_left"] is None


def test_marker_is_read_from_tensorboard_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = v2_marker(loss="cross_entropy", package_version="0.1.0")
    run, text = run_doc(capsys, write_tb_run(tmp_path / "tb", decaying(), marker))
    assert run["marker"]["found"] and run["marker"]["source"] == "tensorboard"
    assert run["marker"]["fields"] == marker and run["marker"]["key_semantics_version"] == 2
    assert (
        "Reading: key semantics v2, full kernel, norm_mode probe, loss cross_entropy, L* zero, optimizer SGD "
        in text
    )
    assert "(schema marker from TensorBoard text record)" in text


def test_marker_is_read_from_csv_logger_hparams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CSVLogger keeps log_hyperparams(flatten_marker(...)) in hparams.yaml next to metrics.csv."""
    from lightning.pytorch.loggers import CSVLogger

    from lightning_lplr.reporting.marker import flatten_marker

    marker = v2_marker(norm_mode="train", momentum=0.9, plain_sgd=False)
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version=0)
    logger.log_hyperparams({**flatten_marker(marker, "lplr/"), "classes": (0, 1)})  # a tuple: !!python/tuple
    for step, row in by_step(decaying()).items():
        logger.log_metrics(row, step=step)
    logger.finalize("success")
    run, text = run_doc(capsys, tmp_path / "csv" / "version_0")
    assert run["marker"]["source"] == "hparams.yaml" and run["marker"]["fields"] == marker
    assert "norm_mode train" in text and "optimizer SGD (momentum 0.9)" in text
    assert run["stability"]["threshold"] == pytest.approx(3.8)


def test_run_without_marker_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, text = run_doc(capsys, write_csv_run(tmp_path / "old", decaying()))
    assert run["marker"] == {
        "found": False,
        "source": None,
        "key_semantics_version": 1,
        "fields": {},
        "description": run["marker"]["description"],
    }
    assert "Reading: no schema marker: the run was written before key semantics v2" in text
    assert "ntk/* may be a trace or pseudo kernel, ntk/eta_beta used λ_max(K)/m" in text
    assert run["loss_star"]["source"] == "assumed" and run["loss_star"]["value"] == 0.0


def test_lplr_pairs_directories_are_not_runs(tmp_path: Path) -> None:
    write_tb_run(tmp_path / "version_0", decaying())
    write_events(tmp_path / "version_0" / "lplr_pairs" / "pl_ratio", {"lplr/pl/gap": [(0, 1.0)]})
    write_events(tmp_path / "version_0" / "nested" / "lplr_pairs", {"lplr/pl/gap": [(0, 1.0)]})
    assert [loc.name for loc in find_runs(tmp_path)] == ["version_0"]


# ---------------------------------------------------------------------------------------------
# Post-hoc running_min L*
# ---------------------------------------------------------------------------------------------

L_STAR, AMPLITUDE, RHO, MU = 0.5, 1.0, 0.95, 0.2


def offset_run(tmp_path: Path) -> Path:
    """Losses L* + A·ρ^t with L* = 0.5 logged with L* = 0 (pl/gap = loss), and step PL ratios whose true
    value (with the true gap) is μ: ‖∇L‖² = 2μ(L − L*), so the logged ratio is μ(L − L*)/L."""
    steps = range(300)
    loss = {t: L_STAR + AMPLITUDE * RHO**t for t in steps}
    ratio = {t: MU * (loss[t] - L_STAR) / loss[t] for t in steps}
    regime = {t: 0.0 for t in range(10, 300)}  # what the monitor saw with L* = 0: a plateau
    metrics = {
        "pl/gap": loss,
        "pl/ratio_step": ratio,
        "pl/envelope_min": {t: min(ratio[s] for s in range(t + 1)) for t in steps},
        "rate/regime": regime,
        "rate/contraction": {t: 1.0 for t in range(10, 300)},
        "pl/mu_ntk": {t: 0.1 for t in range(0, 300, 50)},
    }
    return write_csv_run(tmp_path / "offset", metrics, v2_marker())


def test_running_min_recovers_loss_star_and_the_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = offset_run(tmp_path)
    logged, text = run_doc(capsys, path)
    assert not logged["verdict"]["pl_inequality_held"]  # gap = loss ≈ 0.5: not linear, L* = 0 not credible

    margin = 1e-6
    run, text = run_doc(capsys, path, "--loss-star", "running_min", "--margin", margin)
    star = run["loss_star"]
    lowest = L_STAR + AMPLITUDE * RHO**299
    assert star["strategy"] == "running_min" and star["recomputed"] and star["margin"] == margin
    assert star["value"] == pytest.approx(lowest - margin * lowest, abs=1e-15)
    assert abs(star["value"] - L_STAR) <= margin * lowest + AMPLITUDE * RHO**299  # within the margin
    assert star["dropped_keys"] == ["pl/mu_ntk"] and "pl/mu_ntk" not in run["keys"]
    # The recomputed rate: the early decay is A·ρ^t on top of a floor δ = L* − L*_rm ≈ 3e-7; the
    # recomputed regime codes find it linear, and the fit over that span recovers ρ to 1e-3
    # (δ is at most 1e-2 of the gap where the fit ends).
    spans = run["linear_spans"]["spans"]
    assert spans, text
    longest = max(spans, key=lambda s: s["end_step"] - s["start_step"])
    assert longest["end_step"] - longest["start_step"] >= 100
    assert longest["fit"]["contraction"] == pytest.approx(RHO, abs=1e-3)
    assert run["verdict"]["pl_inequality_held"] and run["verdict"]["gap_basis"] == "loss_star_running_min"
    assert "L*: post-hoc running minimum 0.5" in text and "recomputed with it" in text
    # Step PL ratios: ratio_new = ratio_old·Δ_old/Δ_new = μ (L − L*)/(L − L*_rm), μ where δ ≪ L − L*.
    (loaded,) = load_runs([path])
    from lightning_lplr.report.summary import resolve_loss_star

    recomputed, _ = resolve_loss_star(loaded, "running_min", margin=margin)
    ratio = recomputed.series["pl/ratio_step"]
    early = ratio.steps <= 100
    assert ratio.values[early] == pytest.approx(MU, rel=1e-4)
    assert recomputed.series["pl/envelope_min"].values[-1] == pytest.approx(ratio.values.min())
    assert run["pl"]["envelope_min_final"] == pytest.approx(ratio.values.min())


def test_running_min_needs_a_logged_loss_star(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv_run(tmp_path / "fit", decaying(), v2_marker(loss_star="fit"))
    run, text = run_doc(capsys, path, "--loss-star", "running_min")
    assert not run["loss_star"]["recomputed"] and run["loss_star"]["value"] is None
    assert "no single value is logged" in text


def test_cli_defaults_match_posthoc() -> None:
    from lightning_lplr.report import cli, posthoc

    assert cli._DEFAULT_MARGIN == posthoc.DEFAULT_MARGIN
    assert cli._DEFAULT_RATE_WINDOW == posthoc.DEFAULT_RATE_WINDOW


# ---------------------------------------------------------------------------------------------
# The monitor's end-of-fit summary: the same document from an in-memory history
# ---------------------------------------------------------------------------------------------


def test_report_from_history_equals_the_report_of_the_logged_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_lplr.report import render_text, report_from_history

    metrics = {
        **decaying(),
        "ntk/drift_op": {t: 0.025 * t for t in range(0, 80, 10)},
        "lin/gap_rel": {t: 0.01 * t for t in range(0, 80, 10)},
    }
    marker = v2_marker()
    (from_files,) = report_json(capsys, write_csv_run(tmp_path / "r", metrics, marker))["runs"]
    history = {key: sorted(values.items()) for key, values in metrics.items()}
    history["train_loss"] = [(0, 1.0)]  # not a contract key: left out
    document = report_from_history(history, marker, name="r")
    validate_report(document)
    (from_history,) = document["runs"]
    assert from_history["formats"] == ["history"] and from_history["marker"]["source"] == "monitor"
    assert from_history["other_keys"] == ["train_loss"]
    for key in ("verdict", "flags", "lazy", "stability", "linear_spans", "overall", "pl", "ntk", "loss_star"):
        assert from_history[key] == from_files[key], key
    text = render_text(document)
    assert "ntk_drift_left_lazy" in text and "A PL inequality held" in text


def test_a_span_written_sparsely_reads_the_monitors_rate_fits():
    """pl/gap written every 50 steps: the span's rate is the median logged rate/slope, not a 3-point line."""
    from lightning_lplr.report import Run, Series, build_report

    steps = list(range(0, 101, 50))
    gap = Series.from_pairs((t, 2 * 0.95**t * (1.3 if t == 50 else 1.0)) for t in steps)
    regime = Series.from_pairs((t, 1.0) for t in steps)
    slope = Series.from_pairs((t, math.log(0.95)) for t in steps)
    r2 = Series.from_pairs((t, 0.999) for t in steps)
    series = {"pl/gap": gap, "rate/regime": regime, "rate/slope": slope, "rate/r2": r2}
    (run,) = build_report([Run("sparse", (), ("csv",), series)])["runs"]
    (span,) = run["linear_spans"]["spans"]
    assert span["fit_source"] == "rate/*"
    assert span["fit"]["contraction"] == pytest.approx(0.95, rel=1e-12)
    assert span["fit"]["num_points"] == 3 and span["fit"]["r2"] == pytest.approx(0.999)
