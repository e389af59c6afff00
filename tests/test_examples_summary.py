"""The examples end in an LPLR report; assert on what it says, not only that they ran (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest

from examples import cifar_resnet, mlp


def test_mlp_demo_defaults_sit_in_the_linear_regime(tmp_path):
    """The README demo at its default settings: a clean linear rate and a positive PL envelope."""
    summary = tmp_path / "summary.txt"
    result = mlp.main(["--no-progress-bar", "--log-dir", str(tmp_path), "--summary-file", str(summary)])
    # The documented claim of examples/mlp.py, on the raw losses: log-loss is linear in the step.
    log_loss = np.log(np.asarray(result.losses))
    assert len(log_loss) == mlp.STEPS
    steps, window = np.arange(len(log_loss))[20:], log_loss[20:]
    slope, intercept = np.polyfit(steps, window, 1)
    assert 1.0 - np.var(window - (slope * steps + intercept)) / np.var(window) > 0.99
    assert slope < -0.03 and result.losses[-1] < 1e-6 * result.losses[0]
    # ... and what the LPLR report read back from the event files says about it.
    (run,) = result.report["runs"]
    spans = run["linear_spans"]["spans"]
    assert spans, result.report_text
    longest = max(spans, key=lambda s: s["end_step"] - s["start_step"])
    assert longest["end_step"] - longest["start_step"] >= 150
    assert longest["fit"]["r2"] >= 0.99
    assert 0.8 < longest["fit"]["contraction"] < 1.0
    # The gradient-descent prediction is an upper bound on the per-step contraction.
    assert longest["fit"]["contraction"] <= longest["contraction_pred_mean"]
    assert run["pl"]["envelope_min_final"] > 0
    assert run["ntk"]["drift_op_max"] < 0.1
    text = summary.read_text()
    assert "LPLR report" in text and "the gap shrinks by a factor" in text
    assert "PL lower envelope" in text


def test_mlp_fast_report_mentions_every_section(tmp_path):
    result = mlp.main(["--fast", "--no-progress-bar", "--log-dir", str(tmp_path)])
    for phrase in (
        "Linear convergence",
        "PL lower envelope",
        "NTK:",
        "Parameter drift",
        "Region estimate",
    ):
        assert phrase in result.report_text
    (run,) = result.report["runs"]
    assert run["ntk"]["lambda_min_min"] > 0


@pytest.mark.slow
def test_cifar_fast_report_has_ntk_and_probe_pl(tmp_path):
    result = cifar_resnet.main(["--fast", "--no-progress-bar", "--log-dir", str(tmp_path)])
    (run,) = result.report["runs"]
    # The fast run uses the "cheap" preset: a pseudo kernel, reported under its own keys.
    assert run["ntk"]["kind"] == "pseudo"
    assert run["ntk"]["lambda_min_min"] is not None and run["ntk"]["lambda_max_max"] > 0
    assert run["pl"]["ratio_probe_min"] is not None
    # Momentum SGD: the gradient-descent prediction is not logged, and the report says so.
    assert "rate/contraction_pred" in run["missing_keys"]
