"""TensorBoard: paired series mirrored into sub-runs, the custom-scalars layout, read back by TensorBoard.

Real fits written to real ``TensorBoardLogger``s, read back with TensorBoard's own
``EventMultiplexer`` (the reader TensorBoard's server uses), so what is checked is what a person
sees: each paired series in a sub-run of its own (one colour per series), under one tag per group,
with the steps, values and wall times of the run's own key; every chart of the layout drawing tags
that exist; and ``lightning-lplr report`` still seeing one run.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.custom_scalar import layout_pb2

from lightning_lplr import LPLRMonitor
from lightning_lplr.callbacks import LPLRWarning
from lightning_lplr.report import load_runs
from lightning_lplr.report.cli import main as report_main
from lightning_lplr.report.reader import PAIRS_DIR_NAME as READER_PAIRS_DIR_NAME
from lightning_lplr.reporting import tensorboard as tb
from lightning_lplr.reporting.keys import KIND_PREFIXES
from tests._lightning_models import SmallNet, loader, regression_data, squared_loss, trainer_kwargs

PREFIX = "lplr/"
STEPS = 12
REQUIRED_GROUPS = ("ntk/spectrum", "ntk/drift", "pl/ratio", "rate/contraction", "lin/loss")
"""Groups whose every key the full-kernel fit below logs (plain GD, whole training set, squared loss)."""

PAIRS_DIR_NAME = tb.PAIRS_DIR_NAME
_GUIDANCE = {"scalars": 0, "tensors": 0, "histograms": 1}


def _fit(root: Path, **monitor_kw) -> TensorBoardLogger:
    pl.seed_everything(0, verbose=False)
    x, y = regression_data(n=16)
    logger = TensorBoardLogger(str(root), name="run")
    monitor = LPLRMonitor(overhead=None, probe_size=16, loss_fn=squared_loss, rate_min_points=4, **monitor_kw)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(logger=logger, max_steps=STEPS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LPLRWarning)
        trainer.fit(SmallNet(lr=0.05), loader(x, y))
    return logger


def _multiplexer(logger: TensorBoardLogger) -> EventMultiplexer:
    mux = EventMultiplexer(size_guidance=_GUIDANCE)
    mux.AddRunsFromDirectory(str(Path(logger.log_dir).parent))
    mux.Reload()
    return mux


def _scalar_tags(mux: EventMultiplexer) -> dict[str, list[str]]:
    return {run: tags["scalars"] for run, tags in mux.Runs().items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TensorBoardLogger, EventMultiplexer]:
    logger = _fit(tmp_path_factory.mktemp("tb_full"), ntk_every=3)
    return logger, _multiplexer(logger)


@pytest.fixture(scope="module", params=["pseudo", "trace"])
def kind_run(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, EventMultiplexer]:
    logger = _fit(tmp_path_factory.mktemp(f"tb_{request.param}"), ntk_every=4, kind=request.param)
    return request.param, _multiplexer(logger)


def _main_run(mux: EventMultiplexer) -> str:
    (main,) = [run for run in mux.Runs() if PAIRS_DIR_NAME not in run]
    return main


def test_the_reporting_layer_and_the_report_name_the_same_directory() -> None:
    assert tb.PAIRS_DIR_NAME == READER_PAIRS_DIR_NAME == "lplr_pairs"


def _assert_mirrored(mux: EventMultiplexer, groups: dict[str, tuple[str, ...]]) -> int:
    """Every logged key of ``groups`` is in its sub-run under the group's tag, bit-equal; the keys seen."""
    main = _main_run(mux)
    main_tags = set(mux.Runs()[main]["scalars"])
    seen = 0
    for group, keys in groups.items():
        shared = tb.pair_tag(group, PREFIX)
        for key in keys:
            if PREFIX + key not in main_tags:
                continue
            member = tb.pair_member(PREFIX + key)
            assert member is not None and member.tag == shared, key
            sub = f"{main}/{PAIRS_DIR_NAME}/{member.run}"
            assert sub in mux.Runs(), f"{key}: no sub-run {sub}; runs {sorted(mux.Runs())}"
            assert shared in mux.Runs()[sub]["scalars"], (key, mux.Runs()[sub]["scalars"])
            original, mirror = mux.Scalars(main, PREFIX + key), mux.Scalars(sub, shared)
            assert [e.step for e in mirror] == [e.step for e in original], key
            # Bit-equal float32 values (NaN included), the same wall time: a mirror, not a recomputation.
            got = np.asarray([e.value for e in mirror], dtype=np.float32).view(np.uint32)
            want = np.asarray([e.value for e in original], dtype=np.float32).view(np.uint32)
            assert np.array_equal(got, want), key
            assert [e.wall_time for e in mirror] == [e.wall_time for e in original], key
            seen += 1
    return seen


def test_each_paired_series_is_in_its_own_sub_run_bit_equal(full_run) -> None:
    logger, mux = full_run
    main = _main_run(mux)
    main_tags = set(mux.Runs()[main]["scalars"])
    for group in REQUIRED_GROUPS:
        missing = [k for k in tb.PAIR_GROUPS[group] if PREFIX + k not in main_tags]
        assert not missing, f"the fit did not log {missing}: the test would check nothing for {group}"
    seen = _assert_mirrored(mux, tb.PAIR_GROUPS)
    assert seen == sum(len(tb.PAIR_GROUPS[g]) for g in REQUIRED_GROUPS)
    # A sub-run holds its group's shared tag and nothing else; the run itself no shared tag.
    subs = {run: tags for run, tags in _scalar_tags(mux).items() if run != main}
    assert len(subs) == seen
    for run, tags in subs.items():
        group_dir = run.split("/")[-2]
        (group,) = [g for g in tb.PAIR_GROUPS if g.replace("/", "_") == group_dir]
        assert tags == [tb.pair_tag(group, PREFIX)], run
    assert not any("/pairs/" in tag for tag in main_tags)
    # Closed at the end of fit: one event file per sub-run, no writer left open for this run.
    pairs = Path(logger.log_dir) / PAIRS_DIR_NAME
    files = list(pairs.rglob("events.out.tfevents.*"))
    assert len(files) == seen and len({f.parent for f in files}) == seen
    assert not [d for d in tb._PAIR_WRITERS if d.startswith(str(pairs))]


def test_kind_prefixed_spectra_are_mirrored(kind_run) -> None:
    kind, mux = kind_run
    head = KIND_PREFIXES[kind]
    groups = {g: keys for g, keys in tb.PAIR_GROUPS.items() if g.startswith(head)}
    assert _assert_mirrored(mux, groups) == 4  # λ_min, λ_max, drift op and Frobenius


def _run_orders(mux: EventMultiplexer) -> dict[str, list[str]]:
    """The run orders TensorBoard colours by: (start time, name) with the start time of either loader.

    TensorBoard's ``/data/runs`` sorts runs by start time, then name, and the i-th run gets the
    i-th colour of a 7-colour palette. The Python loader's start time is the file's first event
    (written when the writer opens); the fast loader's, as observed with TensorBoard 2.21, the wall
    time of the first data: both orders are checked.
    """
    opened = {run: mux.FirstEventTimestamp(run) for run in mux.Runs()}
    first_data = {
        run: min((e.wall_time for tag in tags for e in mux.Scalars(run, tag)), default=math.inf)
        for run, tags in _scalar_tags(mux).items()
    }
    return {
        name: sorted(mux.Runs(), key=lambda run, start=start: (start[run], run))
        for name, start in (("writer opened", opened), ("first data", first_data))
    }


def test_the_series_of_a_group_get_different_colours(full_run) -> None:
    _, mux = full_run
    main = _main_run(mux)
    for order_name, order in _run_orders(mux).items():
        for group, keys in tb.PAIR_GROUPS.items():
            runs = [f"{main}/{PAIRS_DIR_NAME}/{tb.pair_member(PREFIX + k).run}" for k in keys]
            positions = sorted(order.index(run) for run in runs if run in order)
            if not positions:
                continue
            # Next to each other in the order, at most 7 of them: distinct colours of the palette.
            assert positions == list(range(positions[0], positions[0] + len(positions))), (
                order_name,
                group,
                order,
            )
            assert len({p % 7 for p in positions}) == len(positions)


def _layout(mux: EventMultiplexer) -> layout_pb2.Layout:
    (event,) = mux.Tensors(_main_run(mux), "custom_scalars__config__")
    parsed = layout_pb2.Layout()
    parsed.ParseFromString(event.tensor_proto.string_val[0])
    return parsed


def _matches(mux: EventMultiplexer, regex: str) -> list[tuple[str, str]]:
    """``(run, tag)`` pairs the custom-scalars plugin draws for ``regex`` (it uses ``re.match``)."""
    rx = re.compile(regex)
    return [(run, tag) for run, tags in _scalar_tags(mux).items() for tag in tags if rx.match(tag)]


def test_every_layout_chart_draws_existing_tags_one_run_per_line(full_run) -> None:
    _, mux = full_run
    layout = _layout(mux)
    assert [c.title for c in layout.category] == ["LPLR", "LPLR kernel kinds"]
    charts = {chart.title: chart for chart in layout.category[0].chart}
    assert list(charts) == list(tb.LAYOUT_CHARTS)
    main = _main_run(mux)
    for title, keys in tb.LAYOUT_CHARTS.items():
        regexes = list(charts[title].multiline.tag)
        lines = [m for regex in regexes for m in _matches(mux, regex)]
        assert len(lines) == len(keys), (title, lines)
        if len(keys) > 1:
            # Several series: each from its own sub-run, so TensorBoard gives each its own colour.
            runs = [run for run, _ in lines]
            assert len(set(runs)) == len(keys) and main not in runs, (title, lines)
            assert {run.rsplit("/", 1)[1] for run in runs} == {k.rsplit("/", 1)[1] for k in keys}
        else:
            assert lines == [(main, PREFIX + keys[0])], (title, lines)
    for title in (
        "Loss: predicted by the initial kernel vs on the probe",
        "Gauss–Newton sharpness β of the trained loss",
    ):
        assert title in charts
    assert any("lin/gap_rel" in r for c in charts.values() for r in c.multiline.tag)
    assert any("above 2" in title for title in charts if "η·β" in title)


def test_kernel_kind_charts_draw_the_kinds_mirrored_tags(kind_run) -> None:
    kind, mux = kind_run
    head = KIND_PREFIXES[kind]
    category = _layout(mux).category[1]
    for chart in category.chart:
        group = next(g for g, keys in tb.PAIR_GROUPS.items() if tb.KIND_LAYOUT_CHARTS[chart.title] == keys)
        lines = [m for regex in chart.multiline.tag for m in _matches(mux, regex)]
        if group.startswith(head):
            assert len(lines) == 2 and len({run for run, _ in lines}) == 2, (chart.title, lines)
        else:
            assert lines == [], (chart.title, lines)
    # The one kind no monitor samples alone: its charts match what the mirror would write.
    for group in ("ntk_loss_gram/spectrum", "ntk_loss_gram/drift"):
        (title,) = [t for t, keys in tb.KIND_LAYOUT_CHARTS.items() if keys == tb.PAIR_GROUPS[group]]
        (regex,) = tb.layout(PREFIX)["LPLR kernel kinds"][title][1]
        for key in tb.PAIR_GROUPS[group]:
            member = tb.pair_member(PREFIX + key)
            assert member is not None and re.match(regex, member.tag)


def test_the_report_reads_one_run_and_ignores_the_sub_runs(full_run, capsys) -> None:
    logger, mux = full_run
    assert len(mux.Runs()) > 1  # TensorBoard sees the sub-runs ...
    root = Path(logger.log_dir).parent
    runs = load_runs([root])
    assert [run.name for run in runs] == ["version_0"]  # ... the report one run
    assert not any("pairs" in key for key in runs[0].series)
    assert report_main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("Run '") == 1 and "Run 'version_0'" in out


def test_a_closed_writer_is_reopened_and_tags_keep_their_names(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="run", prefix="train")
    logger.experiment.close()  # what logger.finalize does at the end of a fit
    assert logger.experiment.file_writer is None
    assert tb.add_scalars(logger, [(3, {"lplr/pl/gap": 0.25, "lplr/ntk/lambda_min": 0.5})])
    assert tb.add_pair_scalars(logger, [(3, {"lplr/pl/gap": 0.25, "lplr/ntk/lambda_min": 0.5})]) == 1
    logger.experiment.flush()
    tb.close_pair_writers([logger])
    mux = _multiplexer(logger)
    assert sorted(_scalar_tags(mux)["version_0"]) == ["lplr/ntk/lambda_min", "lplr/pl/gap"]
    assert [(e.step, e.value) for e in mux.Scalars("version_0", "lplr/pl/gap")] == [(3, 0.25)]
    sub = f"version_0/{PAIRS_DIR_NAME}/ntk_spectrum/lambda_min"
    assert [(e.step, e.value) for e in mux.Scalars(sub, "lplr/pairs/ntk/spectrum")] == [(3, 0.5)]


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("lplr/ntk/lambda_min", ("lplr/pairs/ntk/spectrum", "ntk_spectrum/lambda_min")),
        ("lplr/ntk_pseudo/lambda_max", ("lplr/pairs/ntk_pseudo/spectrum", "ntk_pseudo_spectrum/lambda_max")),
        ("lplr/ntk_trace/drift_fro", ("lplr/pairs/ntk_trace/drift", "ntk_trace_drift/drift_fro")),
        ("x_pl/envelope_q05", ("x_pairs/pl/ratio", "pl_ratio/envelope_q05")),
        ("rate/contraction_pred", ("pairs/rate/contraction", "rate_contraction/contraction_pred")),
        ("lplr/lin/loss_probe", ("lplr/pairs/lin/loss", "lin_loss/loss_probe")),
        ("lplr/pl/gap", None),
        ("lplr/lin/gap_rel", None),
        ("lplr/ntk/eta_beta", None),
    ],
)
def test_pair_member(tag: str, expected: tuple[str, str] | None) -> None:
    member = tb.pair_member(tag)
    assert (member if member is None else member[:2]) == expected
