"""Integration tests of the monitors on tiny real Trainer fits (issue 3)."""

from __future__ import annotations

import csv
import itertools
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_lplr import LinearRateMonitor, LPLRMonitor, NTKMonitor, PLMonitor
from lightning_lplr.callbacks import LPLRWarning
from lightning_lplr.reporting.keys import (
    COST_KEYS,
    CURV_KEYS,
    LIN_KEYS,
    NTK_KEYS,
    PARAM_KEYS,
    PL_KEYS,
    RATE_KEYS,
    REGION_KEYS,
)
from tests._lightning_models import (
    LinearRegression,
    SmallNet,
    loader,
    regression_data,
    squared_loss,
    trainer_kwargs,
)

NTK_EVERY = 5
STEPS = 20
LOGGED_KEYS = NTK_KEYS + PARAM_KEYS + PL_KEYS + RATE_KEYS + REGION_KEYS + CURV_KEYS + LIN_KEYS + COST_KEYS
"""What the logged run below writes: a full kernel of the whole training set, a squared loss, plain GD."""


def _fit(model, data, callbacks, **kw):
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(**kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LPLRWarning)
        trainer.fit(model, data)
    return trainer


# ---------------------------------------------------------------------------- loggers read back
@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One fit written to a real TensorBoard, CSV and MLflow (local file store) logger at once."""
    root = tmp_path_factory.mktemp("loggers")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    torch.manual_seed(0)
    x, y = regression_data(n=24)
    model = SmallNet(lr=0.05)
    monitor = LPLRMonitor(
        overhead=None, ntk_every=NTK_EVERY, probe_size=24, loss_fn=squared_loss, rate_min_points=5
    )
    loggers = [
        TensorBoardLogger(str(root / "tb"), name="run"),
        CSVLogger(str(root / "csv"), name="run"),
        MLFlowLogger(experiment_name="lplr", tracking_uri=f"file:{root / 'mlruns'}"),
    ]
    trainer = _fit(model, loader(x, y), [monitor], logger=loggers, max_steps=STEPS)
    yield root, trainer, monitor, loggers
    mp.undo()


def _expected_steps(key: str) -> list[int]:
    ntk_steps = [t for t in range(STEPS) if t % NTK_EVERY == 0]
    if key == "lin/gap_rel":
        return ntk_steps[1:]  # 0/0 at the first sample: the outputs have not moved
    if key.startswith(("ntk/", "param/", "region/", "cost/", "curv/", "lin/")) or key in (
        "pl/ratio_probe",
        "pl/mu_ntk",
    ):
        return ntk_steps
    if key.startswith("rate/"):
        return list(range(4, STEPS))  # rate_min_points=5 gaps -> first fit at step 4
    return list(range(STEPS))


def test_tensorboard_event_file_holds_every_key(logged_run):
    root, *_ = logged_run
    event_dirs = list((root / "tb").rglob("events.out.tfevents.*"))
    assert event_dirs, "no event file written"
    acc = EventAccumulator(
        str(event_dirs[0].parent), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in LOGGED_KEYS:
        tag = "lplr/" + key
        assert tag in tags, f"{tag} missing from the event file"
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert steps == _expected_steps(key), (key, steps)
        assert all(math.isfinite(e.value) for e in events), key
    # Custom-scalars layout and eigenvalue histograms.
    assert "lplr/ntk/eigenvalues" in acc.Tags()["histograms"]
    assert [h.step for h in acc.Histograms("lplr/ntk/eigenvalues")] == _expected_steps("ntk/lambda_min")
    layout = acc.PluginTagToContent("custom_scalars")
    assert layout, "custom scalars layout not written"
    from tensorboard.plugins.custom_scalar import layout_pb2

    parsed = layout_pb2.Layout()
    parsed.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    assert parsed.category[0].title == "LPLR"
    assert len(parsed.category[0].chart) >= 6
    # The markdown summary written at the end of fit.
    assert "lplr/summary/text_summary" in acc.Tags()["tensors"]


def test_csv_logger_has_one_row_per_logged_step(logged_run):
    root, *_ = logged_run
    path = next((root / "csv").rglob("metrics.csv"))
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    lplr_rows = [r for r in rows if r.get("lplr/pl/gap")]
    steps = [int(r["step"]) for r in lplr_rows]
    assert steps == list(range(STEPS))  # one row per step, no duplicates
    for key in LOGGED_KEYS:
        assert "lplr/" + key in rows[0], key
        logged = [int(r["step"]) for r in rows if r.get("lplr/" + key)]
        assert logged == _expected_steps(key), key


def test_mlflow_logger_read_back_through_its_client(logged_run):
    from mlflow.tracking import MlflowClient

    root, _, _, loggers = logged_run
    client = MlflowClient(tracking_uri=f"file:{root / 'mlruns'}")
    run_id = loggers[2].run_id
    for key in ("ntk/lambda_min", "pl/ratio_step", "rate/contraction", "region/inside"):
        history = client.get_metric_history(run_id, "lplr/" + key)
        assert sorted(m.step for m in history) == _expected_steps(key), key


def test_callback_metrics_and_history_agree(logged_run):
    _, trainer, monitor, _ = logged_run
    for key in ("ntk/lambda_min", "pl/envelope_min", "rate/r2"):
        assert float(trainer.callback_metrics["lplr/" + key]) == pytest.approx(monitor.history[key][-1][1])


class _Snapshots(pl.Callback):
    """Keeps a float64 copy of the weights at the start of the given steps (what an NTK sample sees)."""

    def __init__(self, steps):
        self.steps, self.weights = set(steps), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            self.weights[trainer.global_step] = {
                k: v.detach().double().clone() for k, v in pl_module.named_parameters()
            }


def test_probe_pl_ratio_and_mu_ntk_equal_an_autograd_oracle():
    """pl/ratio_probe and pl/mu_ntk against float64 autograd, not against each other.

    Oracle: the full-batch probe loss L = 1/(2m)Σ‖r‖² at the sampled weights, ‖∇_θ L‖² by
    autograd, and λ_min(JJᵀ) of a brute-force Jacobian. The monitor works in float32: ‖∇L‖²
    = gᵀKg carries a relative error of a few eps32, and λ_min(K) one of eps32·κ (Weyl), so the
    tolerances are 100·eps32 and 100·eps32·κ with κ the oracle's condition number.
    """
    from torch.func import functional_call

    x, y = regression_data(n=16)
    steps = (0, 4, 8)
    snaps = _Snapshots(steps)
    torch.manual_seed(0)
    model = SmallNet(lr=0.05)
    monitor = LPLRMonitor(overhead=None, ntk_every=4, probe_size=8, loss_fn=squared_loss, rate_min_points=3)
    _fit(model, loader(x, y), [snaps, monitor], max_steps=9)
    px, py = monitor._ntk.probe.x.double(), monitor._ntk.probe.y.double()
    eps32 = torch.finfo(torch.float32).eps
    net = model.double()
    ratio = dict(monitor.history["pl/ratio_probe"])
    mu = dict(monitor.history["pl/mu_ntk"])
    assert sorted(ratio) == sorted(mu) == list(steps)
    for step in steps:
        params = snaps.weights[step]

        def loss_of(p):
            return squared_loss(functional_call(net, p, (px,)), py)

        loss = loss_of(params)
        p_req = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad(loss_of(p_req), list(p_req.values()))
        g2 = sum(float((g**2).sum()) for g in grads)
        assert ratio[step] == pytest.approx(g2 / (2 * float(loss)), rel=100 * eps32), step

        def flat_out(*tensors, names=tuple(params)):
            return functional_call(net, dict(zip(names, tensors, strict=True)), (px,)).reshape(-1)

        jac = torch.autograd.functional.jacobian(flat_out, tuple(params.values()))
        j = torch.cat([t.reshape(t.shape[0], -1) for t in jac], dim=1)
        lam = torch.linalg.eigvalsh(j @ j.T)
        out = functional_call(net, params, (px,))
        grad_out = (out - py) / px.shape[0]  # ∂L/∂f of 1/(2m)Σ‖r‖²
        expected_mu = float(lam[0]) * float((grad_out**2).sum()) / (2 * float(loss))
        kappa = float(lam[-1] / lam[0])
        assert mu[step] == pytest.approx(expected_mu, rel=100 * eps32 * kappa), (step, kappa)


# ---------------------------------------------------------------------------- known answer
def test_linear_least_squares_rate_through_the_whole_stack():
    """GD on over-parameterised least squares: the exact asymptotic contraction is (1 − ηλ_min(XXᵀ/n))²."""
    n, d, lr = 16, 40, 0.2
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = LinearRegression(d, lr).double()
    monitor = LPLRMonitor(overhead=None, ntk_every=10, probe_size=n, rate_window=40)
    _fit(model, loader(x, y), [monitor], max_steps=150)
    eig = torch.linalg.eigvalsh(x @ x.T / n)
    exact = (1 - lr * eig[0].item()) ** 2
    # 1e-3 as the issue states; the window ends after 150 steps when the second mode has
    # decayed by ((1 − ηλ_2)/(1 − ηλ_1))^300, so the fit is in fact much closer.
    assert monitor.summary()["rate/contraction"] == pytest.approx(exact, abs=1e-3)
    assert monitor.summary()["rate/regime"] == 1.0
    lam_min = min(v for _, v in monitor.history["ntk/lambda_min"])
    lam_max = max(v for _, v in monitor.history["ntk/lambda_max"])
    assert lam_min == pytest.approx(eig[0].item(), rel=1e-9)
    for _, ratio in monitor.history["pl/ratio_step"]:
        assert lam_min * (1 - 1e-9) <= ratio <= lam_max * (1 + 1e-9)


# ---------------------------------------------------------------------------- non-interference
@pytest.mark.parametrize("variant", ["dropout", "batchnorm"])
def test_weights_bit_identical_with_and_without_monitor(variant):
    x, y = regression_data(n=40)
    finals = []
    for with_monitor in (False, True):
        pl.seed_everything(7, verbose=False)
        model = SmallNet(dropout=0.3 if variant == "dropout" else 0.0, batchnorm=variant == "batchnorm")
        callbacks = (
            [LPLRMonitor(overhead=None, ntk_every=2, probe_size=6, loss_fn=squared_loss)]
            if with_monitor
            else []
        )
        _fit(model, loader(x, y, batch_size=10, shuffle=True), callbacks, max_steps=12)
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
        rng_after = torch.get_rng_state()
        finals[-1]["__rng__"] = rng_after
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


def test_ntk_sample_restores_modes_every_rng_and_grads():
    import random

    import numpy as np

    from lightning_lplr.callbacks._collective import LocalCollective

    model = SmallNet(dropout=0.2, batchnorm=True)
    x, y = regression_data(n=12)
    monitor = LPLRMonitor(overhead=None, probe_size=4, probe=(x, y), loss_fn=squared_loss)
    trainer = pl.Trainer(**trainer_kwargs(max_steps=1))
    model.trainer = trainer  # type: ignore[misc]
    part = monitor._ntk
    part.on_train_start(trainer, model, LocalCollective())
    model.train()
    model.net[1].eval()  # a mixed state must come back as it was
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    running_mean = model.net[1].running_mean.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = part.sample(model, 0, LocalCollective(), lr=0.05, loss_pred="not tested here")
    assert "ntk/lambda_min" in metrics and "pl/mu_ntk" in metrics
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert random.getstate() == python_rng
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_rng, strict=True))
    assert torch.equal(model.net[1].running_mean, running_mean)
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())


# ---------------------------------------------------------------------------- resume
def test_resume_logs_the_same_values_as_the_uninterrupted_run(tmp_path):
    x, y = regression_data(n=20)

    def run(max_steps, ckpt_path=None, save=False):
        torch.manual_seed(3)
        model = SmallNet(lr=0.1)
        monitor = LPLRMonitor(
            overhead=None, ntk_every=3, probe_size=6, loss_fn=squared_loss, rate_min_points=4, rate_window=8
        )
        callbacks = [monitor]
        kw = {}
        if save:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=7, save_top_k=-1))
            kw["enable_checkpointing"] = True
        trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(max_steps=max_steps, **kw))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, loader(x, y), ckpt_path=ckpt_path)
        return monitor

    full = run(16, save=True)
    ckpt = next(tmp_path.glob("*step=7.ckpt"))
    resumed = run(16, ckpt_path=str(ckpt))
    assert resumed.history, "nothing logged after resume"
    for key, series in resumed.history.items():
        if key.startswith("cost/"):
            continue  # wall time differs between any two runs
        reference = dict(full.history[key])
        for step, value in series:
            assert step >= 7
            ref = reference[step]
            assert value == pytest.approx(ref, rel=1e-9, abs=1e-12) or (
                math.isnan(value) and math.isnan(ref)
            ), (
                key,
                step,
            )
    # And the other way: every value the uninterrupted run logged from step 7 on was logged again.
    for key, series in full.history.items():
        if key.startswith("cost/"):
            continue
        assert [s for s, _ in series if s >= 7] == [s for s, _ in resumed.history.get(key, [])], key
    assert "ntk/drift_op" in resumed.history and resumed.history["ntk/drift_op"][0][0] == 9


# ---------------------------------------------------------------------------- batched writes
@pytest.mark.parametrize("loss_star", ["zero", "running_min"])
def test_batched_writes_log_the_same_values_as_writing_every_step(tmp_path, loss_star):
    """Step-level values computed in batches of 7 steps equal those computed step by step."""
    x, y = regression_data(n=20)
    runs = {}
    for flush_every in (1, 7):
        torch.manual_seed(3)
        monitor = LPLRMonitor(
            overhead=None,
            ntk_every=4,
            probe_size=6,
            loss_fn=squared_loss,
            rate_min_points=4,
            rate_window=9,
            loss_star=loss_star,
            flush_every=flush_every,
        )
        logger = TensorBoardLogger(str(tmp_path / str(flush_every)), name="run")
        _fit(SmallNet(lr=0.1), loader(x, y, batch_size=5), [monitor], logger=logger, max_steps=23)
        runs[flush_every] = monitor
    one, batched = runs[1].history, runs[7].history
    assert set(one) == set(batched)
    for key, series in one.items():
        if key.startswith("cost/"):
            continue
        assert [s for s, _ in series] == [s for s, _ in batched[key]], key
        for (_, a), (_, b) in zip(series, batched[key], strict=True):
            assert a == pytest.approx(b, rel=1e-12, abs=1e-15) or (math.isnan(a) and math.isnan(b)), key
    # Every step is in the event file once per key, though written in batches.
    event = next((tmp_path / "7").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(event.parent), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("lplr/pl/gap")] == list(range(23))
    assert [e.step for e in acc.Scalars("lplr/rate/slope")] == list(range(3, 23))


class _ReadsCallbackMetrics(pl.Callback):
    """Records ``callback_metrics[key]`` after every training step (it runs after the monitor)."""

    def __init__(self, key: str) -> None:
        self.key, self.seen = key, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        value = trainer.callback_metrics.get(self.key)
        self.seen.append((trainer.global_step - 1, None if value is None else float(value)))


def test_a_callback_monitoring_a_key_reads_the_current_step():
    """With EarlyStopping on one of its keys the monitor writes every step as it ends."""
    x, y = regression_data(n=16)
    key = "lplr/pl/gap"
    stopper = EarlyStopping(monitor=key, mode="min", patience=1000, check_on_train_epoch_end=True)
    reader = _ReadsCallbackMetrics(key)
    monitor = PLMonitor()  # flush_every=50 by default
    _fit(SmallNet(lr=0.05), loader(x, y, batch_size=4), [monitor, stopper, reader], max_steps=12)
    assert reader.seen == [(t, pytest.approx(v)) for t, v in monitor.history["pl/gap"]]
    # Without a consumer the values arrive in batches: none yet after the first steps.
    reader = _ReadsCallbackMetrics(key)
    _fit(SmallNet(lr=0.05), loader(x, y, batch_size=4), [PLMonitor(flush_every=5), reader], max_steps=12)
    assert [v is None for _, v in reader.seen[:4]] == [True] * 4
    assert reader.seen[4][1] is not None


# ---------------------------------------------------------------------------- early stopping, CLI
def test_early_stopping_on_the_envelope():
    x, y = regression_data(n=16)
    model = SmallNet(lr=0.05)
    stopper = EarlyStopping(
        monitor="lplr/pl/envelope_min", mode="max", patience=1, check_on_train_epoch_end=True
    )
    trainer = _fit(model, loader(x, y, batch_size=4), [PLMonitor(), stopper], max_epochs=50)
    # The running minimum never increases, so patience 1 stops the run after a couple of epochs.
    assert trainer.current_epoch < 10
    assert stopper.stopped_epoch > 0
    assert "lplr/pl/envelope_min" in trainer.callback_metrics


def test_lightning_cli_yaml_with_the_callback(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
trainer:
  max_steps: 6
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {tmp_path}
  callbacks:
    - class_path: lightning_lplr.LPLRMonitor
      init_args:
        preset: cheap
        ntk_every: 2
        probe_size: 4
        rate_min_points: 3
        overhead: null
model:
  d: 6
data:
  n: 12
"""
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = LightningCLI(
            SmallNet, _RegressionData, args=["fit", "--config", str(config)], save_config_callback=None
        )
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LPLRMonitor))
    assert monitor.kind == "pseudo"
    assert [s for s, _ in monitor.history["ntk_pseudo/lambda_min"]] == [0, 2, 4]
    assert "ntk/lambda_min" not in monitor.history  # only the full kernel's spectrum is ntk/*
    assert "lplr/rate/contraction" in cli.trainer.callback_metrics


class _RegressionData(pl.LightningDataModule):
    def __init__(self, n: int = 12) -> None:
        super().__init__()
        self.n = n

    def train_dataloader(self):
        return loader(*regression_data(n=self.n))


# ---------------------------------------------------------------------------- faults
class _NaNAfter(SmallNet):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step in (3, 4):  # a NaN value with a finite gradient
            return loss + (torch.tensor(float("nan")) - loss.detach())
        return loss


def test_nan_loss_is_skipped_counted_and_warned_once():
    x, y = regression_data(n=16)
    model = _NaNAfter()
    monitor = LPLRMonitor(overhead=None, ntk_every=2, probe_size=4)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(max_steps=8))
    with pytest.warns(LPLRWarning, match="nonfinite_loss") as record:
        trainer.fit(model, loader(x, y))
    assert sum("nonfinite_loss" in str(w.message) for w in record) == 1
    assert monitor.skipped["nonfinite_loss"] == 2
    assert [s for s, _ in monitor.history["pl/ratio_step"]] == [0, 1, 2, 5, 6, 7]
    assert monitor.history["skipped/nonfinite_loss"] == [(3, 1.0), (4, 2.0)]
    assert trainer.global_step == 8


def test_nonpositive_gap_is_skipped_not_fatal():
    x, y = regression_data(n=16)
    monitor = PLMonitor(loss_star=10.0)  # an L* above every loss: every gap is negative
    trainer = _fit(SmallNet(), loader(x, y), [monitor], max_steps=5)
    assert trainer.global_step == 5
    assert monitor.skipped["nonpositive_gap"] == 5
    assert "pl/ratio_step" not in monitor.history


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CPU out of memory (simulated)"), RuntimeError("boom")],
    ids=["oom", "runtime-error"],
)
def test_exception_inside_ntk_is_skipped_and_sampling_resumes(monkeypatch, error):
    import lightning_lplr.callbacks._kernel as mod

    calls = {"n": 0}
    real = mod.empirical_ntk

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "empirical_ntk", flaky)
    x, y = regression_data(n=16)
    monitor = NTKMonitor(overhead=None, ntk_every=2, probe_size=4)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(max_steps=8))
    with pytest.warns(LPLRWarning, match="ntk_error"):
        trainer.fit(SmallNet(), loader(x, y))
    assert trainer.global_step == 8
    assert monitor.skipped["ntk_error"] == 1
    assert [s for s, _ in monitor.history["ntk/lambda_min"]] == [0, 4, 6]
    assert monitor.history["skipped/ntk_error"] == [(2, 1.0)]


def test_probe_larger_than_dataset_is_a_clear_error():
    x, y = regression_data(n=5)
    trainer = pl.Trainer(callbacks=[LPLRMonitor(overhead=None, probe_size=8)], **trainer_kwargs(max_steps=2))
    with pytest.raises(ValueError, match=r"probe_size=8 is larger than the training dataset \(5 samples\)"):
        trainer.fit(SmallNet(), loader(x, y))


class _DictOut(SmallNet):
    def forward(self, x):
        return {"pred": self.net(x)}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return squared_loss(self(x)["pred"], y)


def test_dict_output_takes_its_tensor_and_output_fn_overrides():
    """A dict output without 'logits' gives its first tensor; output_fn picks another one."""
    x, y = regression_data(n=8)
    runs = {}
    for name, output_fn in (("default", None), ("explicit", lambda out: out["pred"])):
        torch.manual_seed(0)
        monitor = NTKMonitor(overhead=None, probe_size=4, output_fn=output_fn)
        _fit(_DictOut(), loader(x, y), [monitor], max_steps=2)
        runs[name] = monitor.history["ntk/lambda_min"]
    assert len(runs["default"]) == 2 and runs["default"] == runs["explicit"]


class _NoTensorOut(SmallNet):
    def forward(self, x):
        return {"note": "no tensor here"}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return squared_loss(self.net(x), y)


def test_an_output_without_a_tensor_is_a_configuration_error_at_the_start():
    x, y = regression_data(n=8)
    trainer = pl.Trainer(callbacks=[NTKMonitor(overhead=None, probe_size=4)], **trainer_kwargs(max_steps=2))
    with pytest.raises(ValueError, match=r"cannot run _NoTensorOut\.forward on the probe.*output_fn="):
        trainer.fit(_NoTensorOut(), loader(x, y))
    assert trainer.global_step == 0


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_sharded_strategies_are_refused_at_setup(strategy):
    import lightning.pytorch.strategies as strategies

    cls = getattr(strategies, strategy)
    # DeepSpeedStrategy() refuses to build without deepspeed installed: the check is isinstance only.
    instance = cls() if strategy == "FSDPStrategy" else object.__new__(cls)
    trainer = type("T", (), {"strategy": instance})()
    with pytest.raises(ValueError, match=f"does not support strategy {strategy}.*strategy='ddp'"):
        LPLRMonitor(overhead=None).setup(trainer, None, "fit")  # type: ignore[arg-type]


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="preset='fast'"):
        LPLRMonitor(overhead=None, preset="fast")
    with pytest.raises(ValueError, match="kind='diagonal'"):
        LPLRMonitor(overhead=None, kind="diagonal")
    with pytest.raises(ValueError, match="ntk_every=0"):
        LPLRMonitor(overhead=None, ntk_every=0)
    with pytest.raises(ValueError, match="loss_star='min'"):
        LPLRMonitor(overhead=None, loss_star="min")
    with pytest.raises(ValueError, match="implementation='fast'"):
        LPLRMonitor(overhead=None, implementation="fast")
    with pytest.raises(ValueError, match="flush_every=0"):
        LPLRMonitor(overhead=None, flush_every=0)


def test_no_logger_warns_once_and_fills_callback_metrics():
    x, y = regression_data(n=8)
    trainer = pl.Trainer(
        callbacks=[LPLRMonitor(overhead=None, probe_size=4, ntk_every=1)], **trainer_kwargs(max_steps=3)
    )
    with pytest.warns(LPLRWarning, match="no logger"):
        trainer.fit(SmallNet(), loader(x, y))
    assert "lplr/ntk/lambda_min" in trainer.callback_metrics


# ---------------------------------------------------------------------------- training set-ups
def test_gradient_accumulation_averages_the_micro_batch_losses():
    x, y = regression_data(n=16)
    model = SmallNet(lr=0.0)  # frozen weights: every step sees the same loss
    monitor = PLMonitor()
    _fit(model, loader(x, y, batch_size=4), [monitor], max_steps=3, accumulate_grad_batches=4)
    with torch.no_grad():
        full_loss = float(squared_loss(model(x), y))
    assert [s for s, _ in monitor.history["pl/gap"]] == [0, 1, 2]
    for _, gap in monitor.history["pl/gap"]:
        assert gap == pytest.approx(full_loss, rel=1e-6)
    # The accumulated gradient is the full-batch gradient (equal batch sizes): compare ‖∇L‖².
    model.zero_grad()
    squared_loss(model(x), y).backward()
    grad_sq = sum(float((p.grad**2).sum()) for p in model.parameters())
    assert monitor.history["pl/ratio_step"][0][1] == pytest.approx(grad_sq / (2 * full_loss), rel=1e-5)


def test_bf16_autocast_on_cpu():
    x, y = regression_data(n=16)
    monitor = LPLRMonitor(overhead=None, ntk_every=2, probe_size=4, loss_fn=squared_loss, rate_min_points=3)
    trainer = _fit(SmallNet(), loader(x, y), [monitor], max_steps=6, precision="bf16-mixed")
    assert trainer.global_step == 6
    lam = [v for _, v in monitor.history["ntk/lambda_min"]]
    assert len(lam) == 3 and all(math.isfinite(v) and v > 0 for v in lam)
    assert len(monitor.history["pl/ratio_step"]) == 6


def test_frozen_submodule_is_left_out_of_the_ntk():
    x, y = regression_data(n=16)
    model = SmallNet(freeze_first=True)
    monitor = NTKMonitor(overhead=None, ntk_every=2, probe_size=4)
    _fit(model, loader(x, y), [monitor], max_steps=4)
    # With the first layer frozen, only the last Linear's parameters count: its NTK is
    # (H Hᵀ + 1) ⊗ I with H the frozen features, so trace(Θ) = Σ_i (‖h_i‖² + 1) · O / m.
    model.eval()
    with torch.no_grad():
        h = model.net[:2](monitor._ntk.probe.x)
    m = h.shape[0]
    expected_trace = float(((h**2).sum(1) + 1).sum() * 2 / m)
    assert monitor.history["ntk/trace"][0][1] == pytest.approx(expected_trace, rel=1e-5)


def test_validation_loops_do_not_disturb_the_monitor():
    x, y = regression_data(n=16)
    model = SmallNet(validate=True)
    monitor = LPLRMonitor(overhead=None, ntk_every=2, probe_size=4, rate_min_points=3)
    trainer = pl.Trainer(
        callbacks=[monitor], **trainer_kwargs(max_epochs=6, val_check_interval=1, num_sanity_val_steps=2)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(x, y, batch_size=8), loader(x, y, batch_size=8))
    assert model.val_seen > 0
    assert [s for s, _ in monitor.history["pl/gap"]] == list(range(12))
    assert [s for s, _ in monitor.history["ntk/lambda_min"]] == list(range(0, 12, 2))


def test_the_parts_log_only_their_keys():
    x, y = regression_data(n=16)
    monitors = [
        NTKMonitor(overhead=None, ntk_every=2, probe_size=4),
        PLMonitor(),
        LinearRateMonitor(rate_min_points=3),
    ]
    _fit(SmallNet(), loader(x, y), monitors, max_steps=5)
    ntk, plm, rate = (set(m.history) for m in monitors)
    assert {k.split("/")[0] for k in ntk} == {"ntk", "param", "region", "cost", "lin"}
    assert {k.split("/")[0] for k in plm} == {"pl"}
    assert {k.split("/")[0] for k in rate} == {"pl", "rate"} and not any(
        k.startswith("pl/ratio") for k in rate
    )
    # Distinct state keys let all three coexist in one checkpoint.
    assert len({m.state_key for m in monitors}) == 3


def test_tensorboard_text_summary_matches_monitor(tmp_path: Path):
    x, y = regression_data(n=16)
    monitor = LPLRMonitor(overhead=None, ntk_every=2, probe_size=4, rate_min_points=3)
    _fit(SmallNet(), loader(x, y), [monitor], max_steps=6, logger=TensorBoardLogger(str(tmp_path)))
    text = monitor.summary_markdown()
    # The report's own rendering of the monitor's history, marker included.
    assert "key semantics v2" in text and "NTK" in text
    # What TensorBoard holds is that text, read back through TensorBoard's own reader.
    events = next(tmp_path.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("lplr/summary/text_summary")
    assert event.tensor_proto.string_val[0].decode("utf-8") == text
    assert event.step == 6


def test_memory_budget_reaches_the_ntk_and_leaves_values_unchanged():
    """Chunked and unchunked kernels agree; compared in float64 so that the tolerance is exact.

    In float32 the two summation orders differ by ~eps32·‖K‖ per entry, which moves λ_min by up
    to eps32·κ relative (κ ≈ 650 here: ≈ 8e-5), so a float32 comparison can only check that
    much. In float64 (``precision="64-true"``) the same bound is ≈ 1e-13: 1e-9 leaves a margin
    of 10⁴ and still fails on any chunking error.
    """
    x, y = regression_data(n=16)
    runs = []
    for budget in (None, 120_000):  # 120 kB in float64: the probe is cut into chunks of 3 samples
        torch.manual_seed(0)
        monitor = NTKMonitor(
            overhead=None,
            ntk_every=2,
            probe_size=12,
            max_memory_bytes=budget,
            implementation="jacobian_contraction",
        )
        _fit(SmallNet(width=64), loader(x.double(), y.double()), [monitor], max_steps=4, precision="64-true")
        runs.append(monitor.history)
    for key in ("ntk/lambda_min", "ntk/lambda_max", "ntk/drift_op"):
        assert len(runs[0][key]) == 2, key
        for (s1, a), (s2, b) in zip(runs[0][key], runs[1][key], strict=True):
            assert s1 == s2 and b == pytest.approx(a, rel=1e-9, abs=1e-12), key
    with pytest.raises(ValueError, match="max_memory_bytes=-1"):
        NTKMonitor(overhead=None, max_memory_bytes=-1)


# ---------------------------------------------------------------------------- batched path: edges
class _TensorLrScheduled(SmallNet):
    """SGD with a tensor step size that a per-step scheduler halves in place."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=torch.tensor(0.05))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_a_tensor_step_size_is_read_at_its_step():
    """rate/contraction_pred uses each step's own lr although the batch is computed later."""
    x, y = regression_data(n=16)
    runs = {}
    for flush_every in (1, 10):
        torch.manual_seed(0)
        # Full batch, the probe is the training set, plain SGD: the prediction applies at every step.
        monitor = LPLRMonitor(
            overhead=None,
            flush_every=flush_every,
            rate_min_points=3,
            probe_size=16,
            loss_fn=squared_loss,
            ntk_every=4,
        )
        _fit(_TensorLrScheduled(), loader(x, y), [monitor], max_steps=12)
        runs[flush_every] = monitor.history["rate/contraction_pred"]
    assert [s for s, _ in runs[1]] == list(range(2, 12))
    assert runs[10] == [(s, pytest.approx(v, rel=1e-12)) for s, v in runs[1]]
    # The step size halves every step, so the prediction moves towards 1 (1 − 2ημ(1 − ηβ/2) with η → 0).
    values = [v for _, v in runs[1]]
    assert all(b > a for a, b in itertools.pairwise(values[3:]))


class _TwoOptimizers(SmallNet):
    """Manual optimization: one optimizer per layer, both stepping in every batch."""

    def __init__(self) -> None:
        super().__init__(lr=0.05)
        self.automatic_optimization = False
        self.full_grad_norm_sq: list[float] = []

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        xb, yb = batch
        loss = squared_loss(self(xb), yb)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        self.full_grad_norm_sq.append(sum(float((p.grad.double() ** 2).sum()) for p in self.parameters()))
        first.step()
        second.step()
        return loss

    def configure_optimizers(self):
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.05),
            torch.optim.SGD(self.net[2].parameters(), lr=0.05),
        ]


def test_several_optimizers_in_one_step_have_no_step_pl_ratio():
    """One returned loss cannot be paired with several optimizers' gradients: absent, counted, warned."""
    x, y = regression_data(n=16)
    torch.manual_seed(0)
    model = _TwoOptimizers()
    monitor = PLMonitor()
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(max_steps=6))
    with pytest.warns(LPLRWarning, match="several_optimizers"):
        trainer.fit(model, loader(x, y))
    assert "pl/ratio_step" not in monitor.history
    # Each optimizer step advances global_step under manual optimization: 3 batches, steps 0, 2, 4.
    assert [s for s, _ in monitor.history["pl/gap"]] == [0, 2, 4]
    assert monitor.skipped["several_optimizers"] == 3
    assert monitor.history["skipped/several_optimizers"][-1] == (4, 3.0)


def test_sparse_schedules_are_written_within_flush_every_steps():
    """An NTK sample is visible when its step ends; a sparse step_every within flush_every steps."""
    x, y = regression_data(n=16)
    ntk_reader = _ReadsCallbackMetrics("lplr/ntk/lambda_min")
    _fit(
        SmallNet(),
        loader(x, y),
        [NTKMonitor(overhead=None, ntk_every=10, probe_size=4), ntk_reader],
        max_steps=12,
    )
    assert ntk_reader.seen[0][1] is not None  # step 0's sample, at the end of step 0
    gap_reader = _ReadsCallbackMetrics("lplr/pl/gap")
    _fit(SmallNet(), loader(x, y), [PLMonitor(step_every=10, flush_every=5), gap_reader], max_steps=12)
    visible = [t for t, v in gap_reader.seen if v is not None]
    assert visible[0] <= 4


class _FailsAt(SmallNet):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.fail_step = step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_step:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_an_error_in_training_keeps_the_finished_steps_and_the_callback_pickles(tmp_path):
    import pickle

    x, y = regression_data(n=16)
    monitor = PLMonitor()  # flush_every=50: nothing written yet when the run fails at step 30
    logger = TensorBoardLogger(str(tmp_path), name="run")
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(max_steps=40, logger=logger))
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="boom"):
        warnings.simplefilter("ignore")
        trainer.fit(_FailsAt(30), loader(x, y, batch_size=4))
    assert [s for s, _ in monitor.history["pl/gap"]] == list(range(30))
    event = next(tmp_path.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(event.parent), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("lplr/pl/gap")] == list(range(30))
    # A finished (or failed) run leaves nothing unpicklable behind (ddp_spawn, torch.save).
    assert pickle.loads(pickle.dumps(monitor)).history == monitor.history


# ---------------------------------------------------------------------------- configuration
def test_sub_monitors_take_only_their_own_arguments():
    import inspect

    from lightning_lplr.callbacks._config import LPLR_ARGUMENTS

    assert set(inspect.signature(LPLRMonitor.__init__).parameters) - {"self"} == LPLR_ARGUMENTS
    # An LPLRMonitor argument a part ignores: one release of FutureWarning, then an error.
    with pytest.warns(FutureWarning, match=r"NTKMonitor ignores \['rate_window'\]"):
        NTKMonitor(overhead=None, rate_window=10)
    with pytest.warns(FutureWarning, match=r"LinearRateMonitor ignores \['kind', 'loss_fn'\]"):
        LinearRateMonitor(kind="full", loss_fn=squared_loss)
    with pytest.warns(FutureWarning, match=r"PLMonitor ignores \['rate_min_points'\]"):
        PLMonitor(rate_min_points=3)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['no_such'\]"):
        PLMonitor(no_such=1)
    # Their own arguments pass without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NTKMonitor(overhead=None, kind="trace", probe_size=8, loss_fn=squared_loss, loss_star=0.1)
        PLMonitor(envelope_window=20, loss_fn=squared_loss, probe_size=4)
        LinearRateMonitor(rate_window=20, rate_min_points=5, loss_star="fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_star": float("nan")}, "loss_star=nan must be finite"),
        ({"loss_star": "median"}, "loss_star='median' is not one of"),
        ({"loss_star_margin": -0.1}, "loss_star_margin=-0.1 must be a finite number >= 0.0"),
        ({"envelope_quantile": 1.0}, "envelope_quantile=1.0 must be a finite number in"),
        ({"envelope_window": 0}, "envelope_window=0 must be an int >= 1"),
        ({"probe_seed": 1.5}, "probe_seed=1.5 must be an int"),
        ({"kind": "diagonal"}, "kind='diagonal' is not one of"),
        ({"loss_fn": "mse"}, "loss_fn='mse' must be a callable"),
        ({"rate_min_points": 100}, "rate_min_points=100 must be an int in"),
    ],
)
def test_every_argument_is_checked_in_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LPLRMonitor(overhead=None, **kwargs)


def test_a_failing_ntk_backs_off_exponentially_over_scheduled_steps(monkeypatch):
    """Retried only at scheduled steps: the next after one failure, then skipping 1, 3, ... of them."""
    import lightning_lplr.callbacks._kernel as mod

    attempts = []

    def always_fails(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("no NTK for this model")

    monkeypatch.setattr(mod, "empirical_ntk", always_fails)
    x, y = regression_data(n=16)
    monitor = NTKMonitor(overhead=None, ntk_every=2, probe_size=4)
    steps = []
    original = monitor._ntk.sample

    def spy(pl_module, step, *args, **kwargs):
        steps.append(step)
        return original(pl_module, step, *args, **kwargs)

    monitor._ntk.sample = spy
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(max_steps=40))
    with pytest.warns(LPLRWarning, match="ntk_error"):
        trainer.fit(SmallNet(), loader(x, y))
    assert trainer.global_step == 40
    # Scheduled steps 0, 2, 4, ...: tries at 0, 2 (next), 6 (skip 1), 14 (skip 3), 30 (skip 7).
    assert steps == [0, 2, 6, 14, 30]
    assert monitor.skipped["ntk_error"] == 5 == len(attempts)


def test_step_values_are_written_at_log_every_n_steps_and_computed_every_step(tmp_path):
    """Loggers get step-level values every log_every_n_steps steps (and the last); NTK samples always."""
    x, y = regression_data(n=16)
    monitor = LPLRMonitor(overhead=None, ntk_every=7, probe_size=16, loss_fn=squared_loss, rate_min_points=3)
    logger = CSVLogger(str(tmp_path), name="run")
    _fit(SmallNet(), loader(x, y), [monitor], max_steps=23, logger=logger, log_every_n_steps=5)
    with next(tmp_path.rglob("metrics.csv")).open() as fh:
        rows = list(csv.DictReader(fh))
    written = sorted({int(r["step"]) for r in rows if r.get("lplr/pl/gap")})
    assert written == [0, 5, 10, 15, 20, 22]
    assert sorted({int(r["step"]) for r in rows if r.get("lplr/ntk/lambda_min")}) == [0, 7, 14, 21]
    # Every step was computed: the envelope and fits use them all, and history holds them.
    assert [s for s, _ in monitor.history["pl/gap"]] == list(range(23))
    logged = {int(r["step"]): float(r["lplr/pl/envelope_min"]) for r in rows if r.get("lplr/pl/envelope_min")}
    assert logged == {s: v for s, v in monitor.history["pl/envelope_min"] if s in logged}
