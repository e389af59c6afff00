"""Example networks and one fast fit of each example script (argparse and LightningCLI paths)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from examples.models import MLP, NTKLinear, resnet20

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # These tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    # spinning OpenMP threads make a fit 10x slower; restore the setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------- ResNet-20


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_resnet20_parameter_count_and_shapes(norm: str) -> None:
    net = resnet20(norm=norm)
    count = sum(p.numel() for p in net.parameters())
    assert count == 269_722  # the 0.27M of He et al. (2016), option-A shortcuts
    assert abs(count / 0.27e6 - 1) < 0.01
    norm_type = nn.BatchNorm2d if norm == "batch" else nn.GroupNorm
    other = nn.GroupNorm if norm == "batch" else nn.BatchNorm2d
    assert sum(isinstance(m, norm_type) for m in net.modules()) == 19
    assert not any(isinstance(m, other) for m in net.modules())
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = resnet20(num_classes=2, norm=norm, width=4)
    assert small(torch.randn(3, 3, 32, 32)).shape == (3, 2)
    assert sum(p.numel() for p in small.parameters()) < count / 10


def test_resnet_rejects_unknown_norm() -> None:
    with pytest.raises(ValueError, match="norm='layer' must be 'batch' or 'group'"):
        resnet20(norm="layer")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- MLP


def test_mlp_shapes_and_flattening() -> None:
    net = MLP(12, width=32, depth=3, out_features=4, activation="tanh", parameterization="ntk")
    assert net(torch.randn(5, 12)).shape == (5, 4)
    assert net(torch.randn(5, 3, 4)).shape == (5, 4)
    assert sum(isinstance(m, NTKLinear) for m in net.modules()) == 4
    with pytest.raises(ValueError, match="activation='swish' is not one of"):
        MLP(4, 8, 1, 1, activation="swish")


def test_ntk_linear_scales_output_by_gain_over_sqrt_fan_in() -> None:
    torch.manual_seed(0)
    layer = NTKLinear(400, 300, gain=2.0)
    x = torch.randn(7, 400)
    torch.testing.assert_close(layer(x), x @ layer.weight.T * (2.0 / 20.0) + layer.bias)
    assert abs(float(layer.weight.std()) - 1.0) < 0.02  # N(0, 1) weights
    assert float(layer.bias.abs().max()) == 0.0


def test_standard_and_ntk_agree_in_distribution_at_init() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    for act in ("relu", "tanh"):
        std_net = MLP(64, 1024, 2, 1, act, "standard")
        ntk_net = MLP(64, 1024, 2, 1, act, "ntk")
        hidden_std = std_net.layers[2].weight.std() * math.sqrt(1024)
        assert abs(float(hidden_std) - (math.sqrt(2) if act == "relu" else 5 / 3)) < 0.02
        ratio = float(std_net(x).std() / ntk_net(x).std())
        assert 0.7 < ratio < 1.4, (act, ratio)


def _ntk_diagonal(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (x,)).sum(1))(params)
    return sum(j.reshape(x.shape[0], -1).pow(2).sum(1) for j in jac.values())


def test_ntk_parameterisation_has_width_independent_kernel() -> None:
    # Θ(x, x) = ‖∇_θ f(x)‖² has an O(1) limit in NTK parameterisation and grows ∝ width in the
    # standard one (learning rates therefore transfer across widths only in the former).
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    diag = {
        (param, width): _ntk_diagonal(MLP(16, width, 2, 1, "tanh", param, bias=False), x).mean()
        for param in ("ntk", "standard")
        for width in (128, 1024)
    }
    assert 0.8 < float(diag["ntk", 1024] / diag["ntk", 128]) < 1.25
    assert 6.0 < float(diag["standard", 1024] / diag["standard", 128]) < 10.0


# -------------------------------------------------------------------------------- example fits


def test_mlp_example_fast_fit(tmp_path: Path) -> None:
    from examples.mlp import FAST, main

    summary = tmp_path / "summary.txt"
    result = main(
        [
            "--fast",
            "--accelerator",
            "cpu",
            "--no-progress-bar",
            "--log-dir",
            str(tmp_path),
            "--summary-file",
            str(summary),
        ]
    )
    losses = result.losses
    assert len(losses) == FAST["steps"] == result.trainer.global_step  # one full-batch step per epoch
    assert losses[-1] < 0.05 * losses[0]
    tail = losses[10:]
    assert all(b < a for a, b in itertools.pairwise(tail))  # monotone after the start
    assert list(Path(result.log_dir).glob("events.out.tfevents.*"))
    assert f"steps: {FAST['steps']}" in summary.read_text()
    x, y = result.datamodule.probe(8)
    assert x.shape == (8, FAST["d"]) and y.shape == (8, 1)


# The default MLP run (the README demo) is tested once, with its report, in test_examples_summary.py.


_CLI_WARNINGS = (
    "ignore:LightningCLI's args parameter is intended",
    "ignore::DeprecationWarning:lightning.pytorch.cli",
)


@pytest.mark.filterwarnings(*_CLI_WARNINGS)
def test_mlp_yaml_config_matches_argparse_defaults(tmp_path: Path) -> None:
    from examples.mlp import main

    common = ["--accelerator", "cpu", "--no-progress-bar", "--log-dir", str(tmp_path / "argparse")]
    plain = main(["--steps", "4", *common])
    cli = main(
        [
            "--config",
            str(REPO / "examples" / "configs" / "mlp.yaml"),
            "--trainer.max_epochs=4",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'cli'}",
        ]
    )
    assert len(cli.losses) == 4
    assert cli.losses == pytest.approx(plain.losses, rel=1e-6)
    assert (Path(cli.log_dir) / "config.yaml").is_file()


def test_cifar_example_fast_fit(tmp_path: Path) -> None:
    from examples.cifar_resnet import FAST, main

    result = main(["--fast", "--accelerator", "cpu", "--no-progress-bar", "--log-dir", str(tmp_path)])
    losses = result.losses
    steps = FAST["epochs"] * math.ceil(FAST["train_size"] / FAST["batch_size"])
    assert len(losses) == steps == result.trainer.global_step
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert {"train/loss", "val/loss", "val/acc"} <= set(result.trainer.callback_metrics)
    assert list(Path(result.log_dir).glob("events.out.tfevents.*"))


@pytest.mark.filterwarnings(*_CLI_WARNINGS)
def test_cifar_yaml_config_links_num_classes(tmp_path: Path) -> None:
    from examples.cifar_resnet import main

    result = main(
        [
            "--config",
            str(REPO / "examples" / "configs" / "cifar_resnet.yaml"),
            "--data.synthetic=true",
            "--data.classes=[3, 5]",
            "--data.train_size=32",
            "--data.val_size=16",
            "--data.batch_size=16",
            "--model.width=4",
            "--trainer.max_epochs=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.enable_checkpointing=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert result.model.hparams.num_classes == 2
    assert result.model.net.fc.out_features == 2
    assert len(result.losses) == 2


@pytest.mark.slow
def test_scripts_run_from_the_repo_root_as_files() -> None:
    # `python examples/cifar_resnet.py` must find the `examples` package (sys.path bootstrap)
    proc = subprocess.run(
        [sys.executable, "examples/cifar_resnet.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--data-dir" in proc.stdout and "--synthetic" in proc.stdout


# ------------------------------------------------------------------------------ DataModules, augmentation


def test_full_batch_datamodule_on_digits_and_mnist(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from examples.datasets import MNIST_FILES, write_idx
    from examples.mlp import FullBatchDataModule

    digits = FullBatchDataModule(data="digits", n=50, classes=(3, 8), seed=1)
    x, y = digits.probe()
    assert (digits.in_features, digits.out_features) == (64, 1)
    assert x.shape == (50, 64) and y.shape == (50, 1) and set(y.flatten().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(x.norm(dim=1), torch.full((50,), 8.0))
    (batch,) = list(digits.train_dataloader())  # one batch per epoch: the whole set
    assert torch.equal(batch[0], x) and torch.equal(batch[1], y)

    rng = np.random.default_rng(0)
    images, labels = MNIST_FILES["train"]
    write_idx(tmp_path / images, rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / labels, (np.arange(40) % 10).astype(np.uint8))
    mnist = FullBatchDataModule(data="mnist", n=None, mnist_root=str(tmp_path))
    assert mnist.in_features == 784 and mnist.probe()[0].shape == (8, 784)
    with pytest.raises(ValueError, match="needs mnist_root"):
        FullBatchDataModule(data="mnist")


def test_cifar_datamodule_reads_local_files(tmp_path: Path) -> None:
    from examples.cifar_resnet import CIFAR10_MEAN, CIFAR10_STD, CIFARDataModule
    from examples.datasets import write_cifar10_binary

    rng = np.random.default_rng(0)
    (tmp_path / "cifar-10-batches-bin").mkdir()
    written = {}
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
        labels = np.array([1, 4, 1, 9])
        write_cifar10_binary(tmp_path / "cifar-10-batches-bin" / f"{stem}.bin", images, labels)
        written[stem] = images
    dm = CIFARDataModule(data_dir=str(tmp_path), classes=[4, 1], train_size=None, val_size=2, batch_size=4)
    assert dm.num_classes == 2
    dm.setup("fit")
    x, y = dm.train_set.tensors
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32
    assert sorted(y.tolist()) == [0] * 5 + [1] * 10  # label 4 -> 0, label 1 -> 1 (x2 per file)
    expected = (written["data_batch_1"][0, 1, 5, 6] / 255.0 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert float(x[0, 1, 5, 6]) == pytest.approx(expected, rel=1e-5)
    assert len(dm.val_set) == 2
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="give data_dir"):
        CIFARDataModule()


def test_random_crop_flip_is_a_shifted_window_or_its_mirror() -> None:
    from examples.cifar_resnet import random_crop_flip

    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32) + 1
    out = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, t : t + 32, s : s + 32] for t in range(9) for s in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
