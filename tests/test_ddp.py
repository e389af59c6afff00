"""DDP: a 2-process CPU run (gloo) logs what a 1-process run logs for the same data, seed and global batch."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ddp_run

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

COMPARED = (
    "ntk/lambda_min",
    "ntk/lambda_max",
    "ntk/trace",
    "ntk/drift_op",
    "ntk/drift_fro",
    "param/drift",
    "pl/ratio_step",
    "pl/ratio_probe",
    "pl/mu_ntk",
    "pl/gap",
    "pl/envelope_min",
    "rate/contraction",
    "rate/r2",
    "region/mu_cert",
)


def _read(out_dir: Path) -> dict[str, list[tuple[int, float]]]:
    rows = list(csv.DictReader((out_dir / "csv" / "version_0" / "metrics.csv").open()))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("lplr/") and value not in ("", None):
                series.setdefault(key[5:], []).append((int(row["step"]), float(value)))
    return series


def _assert_same(single, multi, keys=COMPARED, rel=1e-5):
    for key in keys:
        assert key in single and key in multi, key
        steps_single = [s for s, _ in single[key]]
        steps_multi = [s for s, _ in multi[key]]
        assert steps_multi == steps_single, (key, steps_single, steps_multi)
        assert len(set(steps_multi)) == len(steps_multi), f"{key} logged twice at a step"
        for (step, a), (_, b) in zip(single[key], multi[key], strict=True):
            assert b == pytest.approx(a, rel=rel, abs=1e-9), (key, step, a, b)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> dict[str, list[tuple[int, float]]]:
    out = tmp_path_factory.mktemp("single")
    ddp_run.run(str(out), "auto", 1, max_steps=8)
    return _read(out)


def test_ddp_spawn_two_processes_match_one(single_run, tmp_path):
    ddp_run.run(str(tmp_path), "ddp_spawn", 2, max_steps=8)
    multi = _read(tmp_path)
    _assert_same(single_run, multi)
    assert [s for s, _ in multi["ntk/lambda_min"]] == [0, 2, 4, 6]


def test_ddp_subprocess_launcher_matches_one(single_run, tmp_path):
    script = Path(ddp_run.__file__)
    env = {**os.environ, "PYTHONPATH": str(script.parents[1])}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "ddp", "2", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same(single_run, _read(tmp_path))


def test_resumed_two_process_run_matches_uninterrupted(tmp_path):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    # Step 4 ends an epoch (2 batches per epoch), so the resumed run starts from a clean loader.
    ddp_run.run(str(full_dir), "ddp_spawn", 2, max_steps=8, ckpt_every=4)
    ckpt = next(full_dir.glob("*step=4.ckpt"))
    ddp_run.run(str(resumed_dir), "ddp_spawn", 2, max_steps=8, resume_from=str(ckpt))
    full, resumed = _read(full_dir), _read(resumed_dir)
    for key in COMPARED:
        after = [(s, v) for s, v in full[key] if s >= 4]
        assert [s for s, _ in resumed[key]] == [s for s, _ in after], key
        for (_, a), (_, b) in zip(after, resumed[key], strict=True):
            assert b == pytest.approx(a, rel=1e-9, abs=1e-12) or (math.isnan(a) and math.isnan(b)), key


def test_fault_on_one_rank_makes_every_rank_skip_together(tmp_path):
    # Rank 1 raises inside the NTK at step 2; a rank that went on alone would hang in the all_gather.
    ddp_run.run(str(tmp_path), "ddp_spawn", 2, max_steps=6, fail_at_step=2)
    series = _read(tmp_path)
    assert [s for s, _ in series["ntk/lambda_min"]] == [0, 4]
    assert series["skipped/ntk_error"] == [(2, 1.0)]
    assert [s for s, _ in series["pl/gap"]] == list(range(6))
