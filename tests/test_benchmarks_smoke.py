"""Smoke tests of the benchmark scripts: each runs with ``--quick`` as a subprocess and its JSON is checked.

The figures of a ``--quick`` run mean nothing (tiny sizes); these tests only check that the
scripts run end to end and that the JSON has the documented shape with finite, positive ratios.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lightning_lplr.callbacks._step_parts import FIT_EVERY

ROOT = Path(__file__).resolve().parents[1]
# A guard against hangs only, never a verdict on speed: a --quick run takes 10-30 s on two idle
# cores, and a loaded machine may be several times slower, so the limit is more than 10x that.
TIMEOUT_S = 540


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{script} {args} failed:\n{proc.stderr[-4000:]}"
    return proc


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_summary(summary: dict[str, Any]) -> None:
    assert set(summary) >= {"median", "min", "max", "n", "values"}
    assert summary["n"] == len(summary["values"]) >= 1
    assert summary["min"] <= summary["median"] <= summary["max"]


def _check_environment(result: dict[str, Any]) -> None:
    assert result["schema_version"] == 1
    assert result["quick"] is True
    assert {"torch", "cpu_count", "load_average_at_start"} <= set(result["environment"])
    assert _positive(result["wall_seconds"])


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    proc = _run("ddp.py", "--quick", "--out", str(out))
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == result
    assert result["benchmark"] == "ddp"
    _check_environment(result)

    ntk = result["ntk"]
    assert ntk["kind"] == "full"
    m_o = ntk["probe_size"] * int(ntk["model"].split()[1].split("-")[-1])
    assert ntk["kernel_shape"] == [m_o, m_o]
    assert set(ntk["configs"]) == {"ws1_t1", "ws2_t1", "ws1_t2"}
    for name, config in ntk["configs"].items():
        assert config["world_size"] == (2 if name.startswith("ws2") else 1)
        assert set(config["per_rank"]) == ({"0", "1"} if config["world_size"] == 2 else {"0"})
        for key in ("wall_s", "kernel_wall_s", "spectra_wall_s"):
            _check_summary(config[key])
            assert _positive(config[key]["median"])
        for phases in config["per_rank"].values():
            assert set(phases) == {"kernel_s", "spectra_s", "total_s", "cpu_s"}
            for summary in phases.values():
                _check_summary(summary)
    speedup = ntk["speedup"]
    for key in (
        "ntk_sample_ws2_vs_ws1_t1",
        "ntk_sample_ws2_vs_ws1_t1_paired",
        "ntk_sample_ws2_vs_ws1_t2",
        "kernel_ws2_vs_ws1_t1",
        "spectra_ws2_vs_ws1_t1",
    ):
        assert _positive(speedup[key]), key
    assert speedup["target"] == 1.6
    assert isinstance(speedup["meets_target"], bool)
    # The sample reports the same numbers at world size 1 and 2.
    for series in ntk["same_values"].values():
        values = list(series.values())
        assert all(v == pytest.approx(values[0], rel=1e-5) for v in values)

    fit = result["fit"]
    assert fit["world_size"] == 2
    assert set(fit["variants"]) == {"none", "lplr_default", "lplr_every"}
    for variant in fit["variants"].values():
        _check_summary(variant["train_s"])
        _check_summary(variant["train_cpu_s"])
        assert variant["steps"] == fit["steps"]
    assert fit["variants"]["lplr_default"]["ntk_samples"] >= 1
    for ratios in fit["ratios"].values():
        assert set(ratios) == {"wall", "wall_paired", "hooks", "cpu", "hooks_cpu"}
        assert all(_positive(v) for v in ratios.values())


@pytest.mark.slow
def test_overhead_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = _run("overhead.py", "--quick", "--out", str(out))
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == result
    assert result["benchmark"] == "overhead"
    _check_environment(result)
    assert result["settings"]["sections"] == ["matrix", "examples"]
    assert isinstance(result["settings"]["overhead_supported"], bool)

    # The model matrix: the default LPLRMonitor() against no monitor (and the step-level monitors on the MLP).
    assert set(result["matrix"]) == {"mlp", "resnet18", "transformer", "cifar_resnet"}
    for name, model in result["matrix"].items():
        expected = {"none", "lplr", "pl", "rate"} if name == "mlp" else {"none", "lplr"}
        assert set(model["variants"]) == expected
        assert set(model["ratios"]) == expected - {"none"}
        assert _positive(model["base_step_s"]) and _positive(model["base_step_cpu_s"])
        assert model["variants"]["none"]["train_s"]["n"] == model["rounds"] + 1  # the shared brackets
        for variant in model["variants"].values():
            _check_summary(variant["train_s"])
            _check_summary(variant["train_cpu_s"])
            assert variant["ntk_samples"] == len(variant["ntk_steps"])
            assert isinstance(variant["monitor_steps_written"], int) and variant["monitor_steps_written"] >= 0
        lplr = model["variants"]["lplr"]
        assert lplr["monitor"].startswith("LPLRMonitor(")
        assert lplr["ntk_steps"] == sorted(lplr["ntk_steps"])
        assert all(0 <= s < model["steps"] for s in lplr["ntk_steps"])
        for ratios in model["ratios"].values():
            for key in ("wall", "wall_paired", "hooks", "cpu", "cpu_paired", "hooks_cpu"):
                assert _positive(ratios[key]), key
        assert model["ratios"]["lplr"]["targets"] == {"wall": 1.10, "hooks": 1.06, "ntk_samples": 1}
        assert all(isinstance(v, bool) for v in model["ratios"]["lplr"]["meets_target"].values())
    assert result["matrix"]["mlp"]["variants"]["pl"]["monitor_steps_written"] >= 1

    # The presets on the two examples, at their schedules (no budget).
    variants = {"none", "pl", "rate", "ntk", "lplr_cheap", "lplr_default", "lplr_full"}
    assert set(result["examples"]) == {"mlp", "cifar_resnet"}
    for example in result["examples"].values():
        assert set(example["variants"]) == variants
        assert _positive(example["base_step_s"]) and _positive(example["base_step_cpu_s"])
        for name, variant in example["variants"].items():
            _check_summary(variant["train_s"])
            _check_summary(variant["train_cpu_s"])
            if name.startswith(("ntk", "lplr")):
                assert variant["ntk_samples"] >= 1
                assert _positive(variant["first_sample_cold_s"])
                assert variant["ntk_cpu_seconds_per_sample"]["n"] >= 1
        assert set(example["ratios"]) == variants - {"none"}
        for ratios in example["ratios"].values():
            for key in ("wall", "wall_paired", "hooks", "cpu", "cpu_paired", "hooks_cpu"):
                assert _positive(ratios[key]), key
            if ratios["target"] is not None:
                assert isinstance(ratios["meets_target_wall"], bool)
                assert isinstance(ratios["meets_target_cpu"], bool)
        assert set(example["projection"]) == {"cheap", "default", "full"}
        for preset in example["projection"].values():
            for interval in ("default", "50", "200"):
                for cell in preset[interval].values():
                    assert cell["samples"] >= 1
                    assert _positive(cell["overhead"]) and cell["overhead"] >= 1.0
    assert result["examples"]["cifar_resnet"]["ratios"]["lplr_default"]["target"] == 1.05
    assert result["examples"]["mlp"]["ratios"]["lplr_default"]["target"] is None
    assert result["examples"]["mlp"]["ratios"]["pl"]["target"] == 1.02

    table = _run("overhead.py", "--table", "--from", str(out)).stdout
    assert table == result["matrix_table_markdown"] + "\n\n" + result["table_markdown"] + "\n"
    for name in result["matrix"]:
        assert f"| {name} |" in table
    assert "| preset | ntk_every |" in table
    for preset in ("cheap", "default", "full"):
        assert f"| {preset} | default (log-spaced) |" in table
        assert f"| {preset} | 50 |" in table and f"| {preset} | 200 |" in table

    # --overhead reaches the monitor where it takes the argument (before that, the JSON says so).
    proc = _run("overhead.py", "--quick", "--sections", "matrix", "--models", "mlp", "--overhead", "0.25")
    result = json.loads(proc.stdout)
    assert set(result["matrix"]) == {"mlp"} and result["examples"] == {}
    assert result["settings"]["overhead"] == 0.25
    monitor = result["matrix"]["mlp"]["variants"]["lplr"]["monitor"]
    assert ("overhead=0.25" in monitor) == result["settings"]["overhead_supported"]


# The report benchmark's --quick run takes about 3 s on two idle cores (it writes a tiny event file
# with torch's SummaryWriter, then times 2 report calls and the interpreter); REPORT_TIMEOUT_S is far
# more than 10x that, a guard against hangs only.
REPORT_TIMEOUT_S = 120


def test_report_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=REPORT_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == result
    assert result["benchmark"] == "report"
    _check_environment(result)
    assert result["repeats"] == 1
    _check_summary(result["interpreter_s"])
    assert set(result["cases"]) == {"tensorboard", "csv"}
    for case in result["cases"].values():
        _check_summary(case["wall_s"])
        assert _positive(case["wall_s"]["median"]) and case["bytes"] > 0
        assert case["target_s"] == 2.0 and isinstance(case["meets_target"], bool)
        assert case["imports"] == []  # neither torch, Lightning nor matplotlib in the report process
    assert result["cases"]["csv"]["files"] == ["hparams.yaml", "metrics.csv"]


@pytest.mark.slow
def test_loss_star_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "loss_star.json"
    proc = _run("loss_star.py", "--quick", "--out", str(out))
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == result
    assert result["benchmark"] == "loss_star"
    _check_environment(result)
    for part in ("hooks", "flush"):
        measured = result[part]
        for strategy in ("zero", "fit"):
            for clock in ("per_step_wall_s", "per_step_cpu_s"):
                _check_summary(measured[strategy][clock])
                assert _positive(measured[strategy][clock]["median"]), (part, strategy, clock)
        # "zero" never skips a step; "fit" only its FIT_EVERY-step warm-up (refits every FIT_EVERY from past
        # losses), so the timed runs really refit: an unidentified window would skip the work.
        assert measured["zero"]["unidentified_steps"] == 0
        assert measured["fit"]["unidentified_steps"] == FIT_EVERY
        for key in ("ratio_wall", "ratio_wall_paired", "ratio_cpu", "ratio_cpu_paired"):
            assert _positive(measured[key]), (part, key)
        assert measured["target"] == 1.2
        assert isinstance(measured["meets_target_cpu"], bool) and isinstance(
            measured["meets_target_wall"], bool
        )
