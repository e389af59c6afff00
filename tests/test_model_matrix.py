"""``Trainer(callbacks=[LPLRMonitor()])`` on models and training set-ups nobody on the team wrote.

The monitors run with ``overhead=None``: a dozen steps cannot afford an NTK sample within the default
5 % budget (the monitor then says so and samples nothing), and these tests are about what a sample
does on each model, not about when one is affordable (tests/test_budget.py).

Each test trains a third-party-style model (``tests/_third_party.py``) for a dozen optimizer
steps with the DEFAULT ``LPLRMonitor(overhead=None)`` (plus only documented public arguments where the set-up
needs them) and checks the README's promises:

* the NTK spectrum keys and the step keys are logged and finite, read back from the logger's
  own files (a TensorBoard event file or a ``CSVLogger`` ``metrics.csv``);
* the monitor never changes the run: with the same seed the final weights (every parameter and
  buffer) are bit-identical to the same fit without the monitor;
* configurations it cannot handle fail at the start with an error that names the argument to pass.

Guards: every fit with a monitor runs under an address-space cap (a kernel too large for this
machine must fail the test with a ``MemoryError``-like error instead of swapping out the 2-core
machine other work shares) and every test under a timeout.
"""

from __future__ import annotations

import contextlib
import csv
import math
import resource
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_lplr import LPLRMonitor
from tests import _third_party as tp

SEED = 1234
STEPS = 12
"""Optimizer steps per fit: the default schedule samples the NTK at steps 0, 1, 3, 5 and 10, and
the rate fit (``rate_min_points=10``) is logged from the tenth step on."""
DEFAULT_NTK_STEPS = (0, 1, 3, 5, 10)
NTK_KEYS = (
    "ntk/lambda_min",
    "ntk/lambda_max",
    "ntk/trace",
    "ntk/effective_rank",
    "ntk/drift_op",
    "ntk/drift_fro",
    "param/drift",
)
"""Logged at every NTK sample and finite for any kernel (``ntk/condition_number`` is also
required to be logged, but it is ``inf`` for a singular kernel, so not required finite)."""
STEP_KEYS = ("pl/gap", "pl/ratio_step", "pl/envelope_min", "pl/envelope_q05")
RATE_KEYS = ("rate/slope", "rate/contraction", "rate/r2")
ADDRESS_SPACE_HEADROOM = 6 * 2**30
"""Bytes of address space a monitored fit may add to the test process (the machine has 23 GiB,
shared). Generous for every model here: their fits without the monitor stay under 1 GiB."""

pytestmark = pytest.mark.timeout(150)  # a safety net against a runaway kernel, not a speed test


# ============================================================================ harness
@dataclass
class Fit:
    trainer: pl.Trainer
    model: pl.LightningModule
    initial: dict[str, torch.Tensor]
    logged: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    grad_norm_sq: dict[int, float] = field(default_factory=dict)
    """``‖∇L‖²`` in float64 of what the optimizers stepped with, by the step the batch began at."""


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter (tied ones under each of their names) and every buffer, detached copies."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    return {k: v.detach().clone() for k, v in tensors.items()}


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def _address_space_cap(headroom: int = ADDRESS_SPACE_HEADROOM) -> Iterator[None]:
    """Cap the process's address space at its current size + ``headroom`` (restored on exit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _read_tensorboard(root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(root.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {root}"
    out: dict[str, list[tuple[int, float]]] = {}
    for directory in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return out


def _read_csv(root: Path) -> dict[str, list[tuple[int, float]]]:
    files = sorted(root.rglob("metrics.csv"))
    assert files, f"no metrics.csv under {root}"
    out: dict[str, list[tuple[int, float]]] = {}
    with open(files[0], newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    out.setdefault(key, []).append((step, float(value)))
    return out


def _fit(
    make_model: Callable[[], pl.LightningModule],
    make_data: Callable[[], Any],
    *,
    monitor: LPLRMonitor | None,
    root: Path | None = None,
    logger: str = "csv",
    max_steps: int = STEPS,
    callbacks: tuple[Callback, ...] = (),
    **trainer_kwargs: Any,
) -> Fit:
    """One seeded fit; with a monitor, under the address-space cap and read back from ``logger``'s files."""
    pl.seed_everything(SEED, verbose=False)
    model = make_model()
    data = make_data()
    initial = _state(model)
    if monitor is None:
        run_logger: Any = False
    elif logger == "tensorboard":
        run_logger = TensorBoardLogger(str(root), name="run", version=0)
    else:
        run_logger = CSVLogger(str(root), name="run", version=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=run_logger,
        callbacks=[*callbacks] if monitor is None else [monitor, *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # every step written: the tests read each one back
        **trainer_kwargs,
    )
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        guard = contextlib.nullcontext() if monitor is None else _address_space_cap()
        with guard:
            trainer.fit(model, data)
    caught = [f"{r.category.__name__}: {r.message}" for r in records if "lplr" in str(r.category).lower()]
    fit = Fit(trainer, model, initial, warnings=caught)
    if monitor is not None:
        fit.logged = _read_tensorboard(root) if logger == "tensorboard" else _read_csv(root)
    return fit


def _assert_logged_finite(
    fit: Fit,
    *,
    ntk_steps: tuple[int, ...] | None = DEFAULT_NTK_STEPS,
    step_count: int | None = STEPS,
    rate: bool = True,
) -> None:
    """The NTK keys at ``ntk_steps`` and the step keys at ``step_count`` steps, each logged and finite."""
    context = f"monitor warnings: {fit.warnings}; keys logged: {sorted(k for k in fit.logged if 'lplr' in k)}"
    required: dict[str, int] = {}
    # A kernel that does not fit the memory budget falls back to the pseudo kernel, under its own keys.
    head = (
        "ntk/"
        if "lplr/ntk/lambda_min" in fit.logged or "lplr/ntk_pseudo/lambda_min" not in fit.logged
        else "ntk_pseudo/"
    )
    if ntk_steps is not None:
        required.update({key.replace("ntk/", head): len(ntk_steps) for key in NTK_KEYS})
    if step_count is not None:
        required.update({key: step_count for key in STEP_KEYS})
        if rate:
            required.update({key: step_count - 9 for key in RATE_KEYS})  # from the 10th gap on
    for key, count in required.items():
        points = fit.logged.get("lplr/" + key, [])
        assert len(points) >= count, f"lplr/{key}: {len(points)} points logged, expected {count}. {context}"
        bad = [(s, v) for s, v in points if not math.isfinite(v)]
        assert not bad, f"lplr/{key} has non-finite values at (step, value) {bad[:5]}. {context}"
    if ntk_steps is not None:
        steps = sorted({s for s, _ in fit.logged.get(f"lplr/{head}lambda_max", [])})
        assert steps[: len(ntk_steps)] == list(ntk_steps), (
            f"NTK sampled at steps {steps}, expected {ntk_steps}"
        )
        assert len(fit.logged.get(f"lplr/{head}condition_number", [])) >= len(ntk_steps), context
    fit_skips = {k: v for k, v in fit.logged.items() if k.startswith("lplr/skipped/")}
    assert not fit_skips.get("lplr/skipped/ntk_error"), f"NTK samples were skipped: {fit_skips}. {context}"


def _assert_bit_identical(monitored: Fit, reference: Fit) -> None:
    """Every parameter and buffer of the monitored fit equals the reference's; and training moved them."""
    a, b = _state(monitored.model), _state(reference.model)
    assert a.keys() == b.keys()
    assert monitored.trainer.global_step == reference.trainer.global_step
    moved = [k for k in b if not torch.equal(b[k], reference.initial[k])]
    assert moved, "the reference fit did not change any weight: the comparison would prove nothing"
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    worst = max((float((a[k].double() - b[k].double()).abs().max()) for k in differ), default=0.0)
    assert not differ, (
        f"{len(differ)} of {len(a)} tensors differ from the fit without the monitor "
        f"(largest absolute difference {worst:.3g}), e.g. {differ[:4]}"
    )


class _GradientRecorder(Callback):
    """The oracle of ``pl/ratio_step``: the float64 squared norm of the gradients every optimizer steps with.

    Keyed by ``global_step`` at the start of the batch (one optimizer step in automatic
    optimization, several under manual optimization), summed over the optimizers of a batch
    (their parameters are disjoint). Runs after the monitor's own hook: the same gradients.
    """

    def __init__(self) -> None:
        self.grad_norm_sq: dict[int, float] = {}
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        total = sum(float(g.double().square().sum()) for g in grads)
        self.grad_norm_sq[self._step] = self.grad_norm_sq.get(self._step, 0.0) + total


def _assert_step_values(fit: Fit, expected_steps: list[int]) -> None:
    """``pl/gap`` and ``pl/ratio_step`` against the loss and gradients of the run itself (``L* = 0``).

    The loss oracle is the model's own record of its unscaled loss per batch (``raw_losses``); under
    gradient accumulation the objective of a step is the mean over its micro-batches. Tolerances:
    the gap is float32 losses summed in float64 (rel 1e-9); the ratio's squared gradient norm is
    accumulated in float32 by the monitor (``_foreach_norm``) and in float64 here, and a float32 sum
    of ``n`` squares is within ``n·eps32`` relative (n ≤ 2080 elements per tensor: 1.3e-4), so 2e-4.
    """
    by_step: dict[int, list[float]] = {}
    for step, value in fit.model.raw_losses:
        by_step.setdefault(step, []).append(value)
    gap = dict(fit.logged["lplr/pl/gap"])
    ratio = dict(fit.logged["lplr/pl/ratio_step"])
    assert sorted(gap) == expected_steps, f"pl/gap logged at steps {sorted(gap)}, expected {expected_steps}"
    for step in expected_steps:
        loss = sum(by_step[step]) / len(by_step[step])
        assert gap[step] == pytest.approx(loss, rel=1e-9), f"pl/gap at step {step}"
        expected_ratio = fit.grad_norm_sq[step] / (2 * loss)
        assert ratio[step] == pytest.approx(expected_ratio, rel=2e-4), f"pl/ratio_step at step {step}"


def _loader(dataset, batch_size: int = 16, shuffle: bool = True) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def _pair(
    make_model, make_data, tmp_path: Path, logger: str = "csv", monitor_kwargs=None, **kw
) -> tuple[Fit, Fit]:
    """The monitored fit and the same seeded fit without the monitor."""
    reference = _fit(make_model, make_data, monitor=None, **kw)
    recorder = _GradientRecorder()
    monitored = _fit(
        make_model,
        make_data,
        monitor=LPLRMonitor(overhead=None, **(monitor_kwargs or {})),
        root=tmp_path,
        logger=logger,
        callbacks=(recorder,),
        **kw,
    )
    monitored.grad_norm_sq = recorder.grad_norm_sq
    return monitored, reference


# ============================================================================ control
@pytest.mark.slow
def test_control_plain_mlp_tuple_batches(tmp_path):
    """The harness itself: a plain MLP on ``(x, y)`` batches, the case the package is built around."""
    x, y = tp.small_images()
    monitored, reference = _pair(tp.MLPClassifier, lambda: _loader(TensorDataset(x, y)), tmp_path)
    _assert_logged_finite(monitored)
    _assert_bit_identical(monitored, reference)


# ============================================================================ third-party models
@pytest.mark.slow
def test_hf_bert_sequence_classifier_as_in_lightning_tutorial(tmp_path):
    """BERT as Lightning's GLUE tutorial trains it (dict batch, ``forward(**inputs)``, ``ModelOutput``)."""
    monitored, reference = _pair(
        tp.GLUETransformer, lambda: _loader(tp.SyntheticGLUE(), batch_size=8), tmp_path, logger="tensorboard"
    )
    _assert_logged_finite(monitored)
    _assert_bit_identical(monitored, reference)


@pytest.mark.slow
def test_hf_gpt2_causal_lm_padded_dict_batches(tmp_path):
    """GPT-2 causal LM: padded dict batches, ``-100`` labels, ``outputs.loss``, tied ``lm_head``."""
    monitored, reference = _pair(
        tp.CausalLM, lambda: _loader(tp.SyntheticLM(), batch_size=8), tmp_path, logger="tensorboard"
    )
    _assert_logged_finite(monitored)
    _assert_bit_identical(monitored, reference)


@pytest.mark.slow
def test_lightning_demo_transformer_two_argument_forward(tmp_path):
    """``demos.LightningTransformer``: ``forward(inputs, target)``, output ``(batch·seq, vocab)``."""
    monitored, reference = _pair(
        tp.TinyLightningTransformer, lambda: _loader(tp.SyntheticWikiText(), batch_size=8), tmp_path
    )
    _assert_logged_finite(monitored)
    _assert_bit_identical(monitored, reference)


@pytest.mark.slow
def test_resnet18_shaped_cnn_with_batchnorm(tmp_path):
    """resnet18 layout: strided BasicBlocks, BatchNorm, downsample shortcuts, in-place ReLU, momentum."""
    x, y = tp.image_data()
    monitored, reference = _pair(
        lambda: tp.ImageClassifier(tp.ResNet18Like()),
        lambda: _loader(TensorDataset(x, y)),
        tmp_path,
        logger="tensorboard",
    )
    _assert_logged_finite(monitored)
    _assert_bit_identical(monitored, reference)


@pytest.mark.slow
def test_frozen_submodule_and_tied_weights(tmp_path):
    """A frozen encoder and an output projection tied to the embedding."""
    tokens, labels = tp.token_data()
    monitored, reference = _pair(
        tp.TiedFrozenClassifier, lambda: _loader(TensorDataset(tokens, labels)), tmp_path
    )
    _assert_logged_finite(monitored)
    _assert_bit_identical(monitored, reference)
    assert monitored.model.head.weight is monitored.model.embed.weight, "the monitor untied the weights"
    assert all(not p.requires_grad for p in monitored.model.encoder.parameters()), (
        "the monitor unfroze a module"
    )


# ============================================================================ datasets
@pytest.mark.slow
@pytest.mark.parametrize(
    "dataset_cls",
    [tp.PythonRandomAugment, tp.NumpyRandomAugment, tp.OwnGeneratorAugment],
    ids=["python-random", "numpy-global-random", "own-default_rng"],
)
def test_augmenting_dataset_run_unchanged(tmp_path, dataset_cls):
    """``__getitem__`` draws augmentations from an RNG the monitor does not own: the run must not change."""
    x, y = tp.small_images()
    monitored, reference = _pair(tp.MLPClassifier, lambda: _loader(dataset_cls(x, y)), tmp_path)
    _assert_bit_identical(monitored, reference)
    _assert_logged_finite(monitored)


class _StopAtTrainStart(Callback):
    """Raises at ``on_train_start``: measures what Lightning itself draws from a stream before step 0."""

    def on_train_start(self, trainer, pl_module):
        raise _StoppedError


class _StoppedError(Exception):
    pass


class _BatchCounter(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


def test_iterable_dataset_without_probe_is_a_clear_error_that_draws_nothing(tmp_path):
    """No length, no "first m samples" to re-read: the monitor must ask for ``probe=``, not eat the stream."""
    baseline_stream = tp.CountingStream()
    pl.seed_everything(SEED, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=STEPS, logger=False, callbacks=[_StopAtTrainStart()],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    with pytest.raises(_StoppedError):
        trainer.fit(tp.MLPClassifier(), _loader(baseline_stream, shuffle=False))
    lightning_prefetch = baseline_stream.drawn  # Lightning pre-fetches a batch of a length-less loader

    # The same start with the monitor; _StopAtTrainStart runs after the monitor's own on_train_start.
    stream = tp.CountingStream()
    error: BaseException | None = None
    try:
        _fit(
            tp.MLPClassifier,
            lambda: _loader(stream, shuffle=False),
            monitor=LPLRMonitor(overhead=None),
            root=tmp_path,
            callbacks=(_StopAtTrainStart(),),
        )
    except _StoppedError:
        pass  # the monitor raised nothing
    except Exception as err:
        error = err
    drawn = (
        f"{stream.drawn} samples were drawn from the stream by the start of training; Lightning itself "
        f"draws {lightning_prefetch}"
    )
    assert isinstance(error, ValueError) and "probe=" in str(error), (
        f"expected a ValueError naming probe= at the start, got {error!r}; {drawn}"
    )
    assert stream.drawn <= lightning_prefetch, f"the monitor consumed the stream: {drawn}"


@pytest.mark.slow
def test_sixteen_sample_dataset_clips_default_probe(tmp_path):
    """A dataset smaller than the default probe (32): the probe is the whole dataset, no error.

    Oracle: the model is linear (``Flatten → Linear``), whose NTK does not depend on the weights:
    ``K = (XXᵀ + 1) ⊗ I_O``. Its spectrum over exactly the 16 samples, ``Θ = K/16`` in float64,
    must be what the monitor logs at step 0. Tolerance 1e-4 relative to ``λ_max``: the monitor's
    kernel is float32 (entries carry ≈ d·eps ≈ 4e-6 relative error, d = 64) and an eigenvalue moves
    by at most ``‖ΔK‖₂``.
    """
    x, y = tp.small_images(n=16)
    classes = 4

    def make_model():
        model = tp.MLPClassifier()
        model.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))
        return model

    monitored, reference = _pair(make_model, lambda: _loader(TensorDataset(x, y), batch_size=4), tmp_path)
    _assert_logged_finite(monitored)
    _assert_bit_identical(monitored, reference)
    xf = x.reshape(16, -1).double()
    gram = xf @ xf.T + 1.0
    eigs = torch.linalg.eigvalsh(torch.kron(gram, torch.eye(classes, dtype=torch.float64)) / 16)
    logged = {
        k: dict(monitored.logged["lplr/" + k])[0] for k in ("ntk/lambda_min", "ntk/lambda_max", "ntk/trace")
    }
    scale = float(eigs[-1])
    assert logged["ntk/lambda_max"] == pytest.approx(float(eigs[-1]), abs=1e-4 * scale)
    assert logged["ntk/lambda_min"] == pytest.approx(float(eigs[0]), abs=1e-4 * scale)
    assert logged["ntk/trace"] == pytest.approx(float(eigs.sum()), rel=1e-4)


def test_gan_generator_probe_that_does_not_fit_forward_is_a_configuration_error(tmp_path):
    """``forward(z)`` is the generator; the training images (the default probe) are not a ``z``.

    Expected: a clear error before the first optimizer step that names ``probe=`` / ``input_fn=``,
    not a shape error from inside the model.
    """
    x, y = tp.small_images(size=4)
    counter = _BatchCounter()
    with pytest.raises((ValueError, TypeError), match=r"probe=|input_fn=") as info:
        _fit(
            tp.GAN,
            lambda: _loader(TensorDataset(x, y)),
            monitor=LPLRMonitor(overhead=None),
            root=tmp_path,
            max_steps=24,
            callbacks=(counter,),
        )
    assert counter.batches == 0, f"the error came after {counter.batches} training batches, not at the start"
    # The model's own error is quoted as the cause, after the fix that names the arguments.
    assert str(info.value).startswith("LPLRMonitor cannot run GAN.forward on the probe"), str(info.value)


# ============================================================================ training configurations
@pytest.mark.slow
def test_gan_manual_optimization_with_latent_probe(tmp_path):
    """The GAN tutorial's manual two-optimizer loop, with ``probe=`` latent vectors (documented argument).

    ``training_step`` returns nothing (as in the tutorial), so only the NTK keys are required;
    each batch steps both optimizers, so ``global_step`` advances by 2 per batch and the NTK is
    sampled at the schedule's steps that a batch starts on.
    """
    x, y = tp.small_images(size=4)
    z = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    monitored, reference = _pair(
        tp.GAN,
        lambda: _loader(TensorDataset(x, y)),
        tmp_path,
        monitor_kwargs={"probe": z},
        max_steps=2 * STEPS,
    )
    _assert_logged_finite(monitored, ntk_steps=(0, 10), step_count=None)
    _assert_bit_identical(monitored, reference)


@pytest.mark.slow
def test_manual_optimization_two_optimizers_one_objective(tmp_path):
    """Manual optimization, SGD on the body and Adam on the head of one loss, loss returned.

    One returned loss cannot be paired with two optimizers' gradients: the step PL ratio is absent,
    counted under skipped/several_optimizers, never a sum over unrelated gradients.
    """
    x, y = tp.small_images()
    monitored, reference = _pair(
        tp.TwoOptimizerMLP, lambda: _loader(TensorDataset(x, y)), tmp_path, max_steps=2 * STEPS
    )
    _assert_logged_finite(monitored, ntk_steps=(0, 10), step_count=None)
    _assert_bit_identical(monitored, reference)
    gaps = dict(monitored.logged["lplr/pl/gap"])
    assert sorted(gaps) == list(range(0, 2 * STEPS, 2))
    assert "lplr/pl/ratio_step" not in monitored.logged
    assert monitored.logged["lplr/skipped/several_optimizers"][-1][1] == STEPS


@pytest.mark.slow
@pytest.mark.parametrize(
    "trainer_kwargs",
    [{"precision": "bf16-true"}, {"accumulate_grad_batches": 2}, {"gradient_clip_val": 1.0}],
    ids=["bf16-true", "accumulate_grad_batches=2", "gradient_clip_val=1.0"],
)
def test_trainer_configuration(tmp_path, trainer_kwargs):
    """The control MLP under a Trainer option people use: keys logged and the run unchanged."""
    x, y = tp.small_images()
    monitored, reference = _pair(
        tp.MLPClassifier, lambda: _loader(TensorDataset(x, y), batch_size=8), tmp_path, **trainer_kwargs
    )
    _assert_logged_finite(monitored)
    _assert_bit_identical(monitored, reference)
    _assert_step_values(monitored, expected_steps=list(range(STEPS)))
