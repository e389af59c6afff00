"""Issue 14 acceptance at the monitor level: which function's kernel a BatchNorm network gets.

A BatchNorm CNN trained with the learning rate at 0 keeps its parameters but moves its running
statistics at every training batch. The kernel of ``norm_mode="probe"`` (statistics of the whole
probe at the current weights) and of ``"train"`` (the exact batch Jacobian) must then not drift at
all, while ``"eval"`` (running statistics) drifts; under DDP the probe-mode values must not depend
on how many processes share the batches, and a 2-process run must not log a negative ``λ_min``
beyond float32 Gram noise.
"""

from __future__ import annotations

import copy
import csv
import warnings
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_lplr import NTKMonitor
from lightning_lplr.callbacks import LPLRWarning
from lightning_lplr.report.regimes import negative_eigenvalue_tolerance
from tests import ddp_run
from tests._lightning_models import trainer_kwargs

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are tiny: on a loaded 2-core machine a second torch thread makes each op wait for a
    descheduled partner (measured: a 0.2 s fit takes 1-14 s with two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MODES = ("probe", "train", "eval")


class BNNet(pl.LightningModule):
    """Conv → BatchNorm → ReLU → pool → Linear on 1×6×6 images, cross-entropy, plain SGD; no dropout."""

    def __init__(self, lr: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        )
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


PARAMETERS = 4 * 9 + 4 + 2 * 4 + 16 * 3 + 3
"""``P`` of :class:`BNNet` (conv, BatchNorm affine, linear)."""


def images(n: int = 32, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 6, 6, generator=g, dtype=dtype) * 2.0 + y.to(dtype)[:, None, None, None]
    return x, y


# ============================================================================ oracles
def _kernel_eigs(fn, weights: dict, m: int) -> torch.Tensor:
    names = tuple(weights)

    def flat(*tensors):
        return fn(dict(zip(names, tensors, strict=True))).reshape(-1)

    jac = torch.autograd.functional.jacobian(flat, tuple(weights.values()))
    j = torch.cat([t.reshape(t.shape[0], -1) for t in jac], dim=1)
    return torch.linalg.eigvalsh(j @ j.T) / m


def train_mode_oracle(net: nn.Module, weights: dict, x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``Θ`` of the batch function in training mode (gradients through the statistics)."""
    net = copy.deepcopy(net).double().train()
    return _kernel_eigs(lambda p: functional_call(net, p, (x.double(),)), weights, x.shape[0])


def probe_mode_oracle(net: nn.Module, weights: dict, x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``Θ`` with the BatchNorm statistics of the whole probe held constant.

    The statistics (mean and biased variance over the probe, as training mode uses) are computed
    once at ``weights`` and detached; then each sample goes through BatchNorm with them.
    """
    net = copy.deepcopy(net).double()
    bn = net.net[1]
    with torch.no_grad():
        conv = {"weight": weights["net.0.weight"], "bias": weights["net.0.bias"]}
        h = functional_call(net.net[0], conv, (x.double(),))
        mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)

    def fn(p):
        h = functional_call(net.net[0], {"weight": p["net.0.weight"], "bias": p["net.0.bias"]}, (x.double(),))
        h = F.batch_norm(h, mean, var, p["net.1.weight"], p["net.1.bias"], training=False, eps=bn.eps)
        h = net.net[4](net.net[3](net.net[2](h)))
        return functional_call(net.net[5], {"weight": p["net.5.weight"], "bias": p["net.5.bias"]}, (h,))

    return _kernel_eigs(fn, weights, x.shape[0])


class Snapshots(pl.Callback):
    """float64 copies of the weights at the start of the given steps."""

    def __init__(self, steps) -> None:
        self.steps, self.weights = set(steps), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            self.weights[trainer.global_step] = {
                k: v.detach().double().clone() for k, v in pl_module.named_parameters()
            }


# ============================================================================ lr = 0, one process
def test_lr_zero_probe_and_train_kernels_do_not_drift_while_eval_does():
    """lr = 0, mini-batches of 8 shuffled images: parameters fixed, running statistics moving.

    Tolerance on ``ntk/drift_op`` and ``ntk/drift_fro`` in probe and train modes: ``P·ε₃₂`` (P = 99),
    the float32 rounding bound of a kernel entry (a dot product over ``P`` parameters) relative to
    ``‖Θ₀‖``: the same weights and probe give the same kernel up to at most that (in fact the
    computation repeats bit for bit). The eval-mode kernel must drift by far more (its running
    statistics move from (0, 1) towards the data's), so the test can tell the modes apart. At step 0
    the probe- and train-mode spectra equal float64 oracles of their own definitions (1e-4 relative
    to ``λ_max``: float32 kernel, ``P·ε₃₂`` = 1.2e-5).
    """
    x, y = images()
    m, steps = 8, 10
    torch.manual_seed(0)
    model = BNNet(lr=0.0)
    monitors = [
        NTKMonitor(overhead=None, norm_mode=mode, probe_size=m, ntk_every=3, prefix=f"{mode}/")
        for mode in MODES
    ]
    snaps = Snapshots((0,))
    trainer = pl.Trainer(callbacks=[snaps, *monitors], **trainer_kwargs(max_steps=steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LPLRWarning)
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    bn = model.net[1]
    assert float(bn.running_mean.abs().max()) > 0.1, "the running statistics did not move"
    tol = PARAMETERS * EPS32
    by_mode = {mode: monitor.history for mode, monitor in zip(MODES, monitors, strict=True)}
    for mode in ("probe", "train"):
        history = by_mode[mode]
        assert [s for s, _ in history["ntk/drift_op"]] == [0, 3, 6, 9], mode
        for key in ("ntk/drift_op", "ntk/drift_fro", "param/drift"):
            assert all(0 <= v <= tol for _, v in history[key]), (mode, key, history[key])
    eval_drift = dict(by_mode["eval"]["ntk/drift_op"])
    assert eval_drift[9] > 100 * tol, eval_drift
    probe_x = x[:m]
    oracles = {
        "probe": probe_mode_oracle(model, snaps.weights[0], probe_x),
        "train": train_mode_oracle(model, snaps.weights[0], probe_x),
    }
    for mode, eigs in oracles.items():
        history = by_mode[mode]
        scale = float(eigs[-1])
        assert dict(history["ntk/lambda_max"])[0] == pytest.approx(scale, rel=1e-4), mode
        assert dict(history["ntk/lambda_min"])[0] == pytest.approx(float(eigs[0]), abs=1e-4 * scale), mode
        assert dict(history["ntk/trace"])[0] == pytest.approx(float(eigs.sum()), rel=1e-4), mode
    # The two modes are different functions' kernels: the oracle tells them apart.
    assert abs(float(oracles["probe"][-1] - oracles["train"][-1])) > 1e-3 * float(oracles["train"][-1])


# ============================================================================ DDP
class GlobalBatches(pl.LightningDataModule):
    """The same global batches at any world size: rank r of w takes samples r, r + w, … in order."""

    def __init__(self, x, y, global_batch: int = 16) -> None:
        super().__init__()
        self.dataset = TensorDataset(x, y)
        self.global_batch = global_batch

    def train_dataloader(self):
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(self.dataset, batch_size=self.global_batch // world, sampler=sampler)


def _read_csv(out_dir: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in csv.DictReader((out_dir / "csv" / "version_0" / "metrics.csv").open()):
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def _ddp_fit(out_dir: Path, devices: int, model, data, monitors, max_steps: int):
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=120)) if devices > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        callbacks=[*monitors, ddp_run.CloseProcessGroup()],
        max_steps=max_steps,
        logger=CSVLogger(str(out_dir), name="csv", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    return _read_csv(out_dir)


def _lr_zero_run(out_dir: Path, devices: int):
    pl.seed_everything(0, verbose=False)
    x, y = images(dtype=torch.float64)
    monitors = [
        NTKMonitor(overhead=None, norm_mode=mode, probe_size=8, ntk_every=2, prefix=f"{mode}/")
        for mode in ("probe", "eval")
    ]
    return _ddp_fit(out_dir, devices, BNNet(lr=0.0).double(), GlobalBatches(x, y), monitors, max_steps=6)


@pytest.mark.slow
@pytest.mark.ddp
def test_lr_zero_one_and_two_processes_agree_in_probe_mode(tmp_path):
    """lr = 0, the same global batches split over 1 or 2 processes, float64 model.

    Probe mode: every rank computes the statistics of the same whole probe at the same weights, so
    the kernel does not depend on the world size; the only differences are float64 summation order
    (sharded rows, gathered): 1e-9 relative. Eval mode in the same runs: each rank's running
    statistics follow its own half of each batch, so from the first step on its values differ (the
    comparison can fail).
    """
    one = _lr_zero_run(tmp_path / "one", 1)
    two = _lr_zero_run(tmp_path / "two", 2)
    for key in ("ntk/lambda_min", "ntk/lambda_max", "ntk/trace", "ntk/drift_op", "ntk/drift_fro"):
        a, b = one[f"probe/{key}"], two[f"probe/{key}"]
        assert [s for s, _ in a] == [s for s, _ in b] == [0, 2, 4], key
        for (step, va), (_, vb) in zip(a, b, strict=True):
            assert vb == pytest.approx(va, rel=1e-9, abs=1e-12), (key, step, va, vb)
    eval_one, eval_two = dict(one["eval/ntk/lambda_max"]), dict(two["eval/ntk/lambda_max"])
    assert eval_two[0] == pytest.approx(eval_one[0], rel=1e-9)  # same running statistics at step 0
    assert abs(eval_two[4] - eval_one[4]) > 1e-3 * eval_one[4], (eval_one, eval_two)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_batchnorm_run_logs_no_negative_lambda_min_beyond_gram_noise(tmp_path):
    """50 steps of a float32 BatchNorm CNN on 2 processes (lr 0.2), NTK every 5 steps, default norm mode.

    Tolerance: the report's float32 Gram-noise bound, ``negative_eigenvalue_tolerance(λ_max)``.
    """
    pl.seed_everything(0, verbose=False)
    x, y = images(n=64)
    monitor = NTKMonitor(overhead=None, probe_size=16, ntk_every=5)
    logged = _ddp_fit(tmp_path, 2, BNNet(lr=0.2), GlobalBatches(x, y), [monitor], max_steps=50)
    lam_min, lam_max = dict(logged["lplr/ntk/lambda_min"]), dict(logged["lplr/ntk/lambda_max"])
    assert sorted(lam_min) == list(range(0, 50, 5))
    for step, value in lam_min.items():
        assert value >= -negative_eigenvalue_tolerance(lam_max[step]), (step, value, lam_max[step])
    assert dict(logged["lplr/param/drift"])[45] > 0  # it trained
