"""Issue 13 acceptance beyond the model matrix: conventions, precision, small and streaming data, DDP.

Each test is a real Trainer fit checked against an oracle computed here: NTK spectra against a
float64 brute-force Jacobian (``torch.autograd.functional.jacobian``) of the function the
convention says the monitor must differentiate, step quantities against a run without the
feature (one batch instead of accumulated micro-batches, one process instead of two).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_lplr import LPLRMonitor, NTKMonitor, PLMonitor
from lightning_lplr.callbacks import LPLRWarning
from tests import ddp_run
from tests._lightning_models import loader, squared_loss, trainer_kwargs

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are tiny: on a loaded 2-core machine a second torch thread makes each op wait for a
    descheduled partner (measured: a 0.2 s fit takes 1-14 s with two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ============================================================================ harness
def fit(model, data, callbacks, **kw):
    """One fit; returns the messages of the LPLR warnings it raised."""
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(**kw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    return [str(w.message) for w in caught if issubclass(w.category, LPLRWarning)]


class Snapshots(pl.Callback):
    """float64 copies of the trainable weights at the start of the given steps (what a sample sees)."""

    def __init__(self, steps) -> None:
        self.steps, self.weights = set(steps), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            self.weights[trainer.global_step] = {
                k: v.detach().double().clone() for k, v in pl_module.named_parameters() if v.requires_grad
            }


def kernel_oracle(module: nn.Module, weights: dict, call) -> torch.Tensor:
    """Eigenvalues of ``Θ = J Jᵀ / m`` in float64, ``J`` of ``call(module) -> (m, *out)`` at ``weights``."""
    module = module.double()
    names = tuple(weights)

    def outputs(*tensors):
        state = dict(zip(names, tensors, strict=True))
        return call(lambda *a, **k: functional_call(module, state, a, k))

    out = outputs(*weights.values())
    m = out.shape[0]
    jac = torch.autograd.functional.jacobian(lambda *t: outputs(*t).reshape(-1), tuple(weights.values()))
    j = torch.cat([t.reshape(t.shape[0], -1) for t in jac], dim=1)
    return torch.linalg.eigvalsh(j @ j.T) / m


def assert_spectrum(history: dict, step: int, eigs: torch.Tensor, rel: float, head: str = "ntk/") -> None:
    """``λ_min``, ``λ_max`` and the trace of the logged ``Θ`` at ``step`` against oracle eigenvalues.

    An eigenvalue moves by at most ``‖ΔΘ‖₂``, so the extreme ones are compared with an absolute
    tolerance ``rel · λ_max``.
    """
    logged = {key: dict(history[head + key])[step] for key in ("lambda_min", "lambda_max", "trace")}
    scale = float(eigs[-1])
    assert logged["lambda_max"] == pytest.approx(scale, rel=rel), (step, logged)
    assert logged["lambda_min"] == pytest.approx(float(eigs[0]), abs=rel * scale), (step, logged)
    assert logged["trace"] == pytest.approx(float(eigs.sum()), rel=rel), (step, logged)


class MLP(pl.LightningModule):
    """``d → width → out`` tanh MLP on ``(x, y)`` batches with the squared loss, plain SGD."""

    def __init__(self, d=6, width=8, out=2, lr=0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, out))
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return squared_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _data(n=16, d=6, out=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x, torch.tanh(x @ torch.randn(d, out, generator=g, dtype=dtype))


# ============================================================================ gradient accumulation
def test_gradient_accumulation_pairs_the_accumulated_gradient_with_the_mean_micro_batch_loss():
    """4 micro-batches of 4 samples accumulated = one batch of the same 16 samples, at every step.

    With equal micro-batch sizes the mean of the micro-batch losses is the loss of the whole
    batch and the accumulated gradient its gradient, so from the same weights both runs take the
    same step: ``pl/gap`` and ``pl/ratio_step`` must agree at every step. float64 model, so the two
    differ only by summation order: 1e-10 relative. (Pairing the accumulated gradient with the
    last micro-batch's loss, or with the sum of unscaled losses, is off by O(1).)
    """
    x, y = _data()
    runs = {}
    for name, batch, accumulate in (("accumulated", 4, 4), ("one_batch", 16, 1)):
        torch.manual_seed(0)
        monitor = PLMonitor()
        fit(
            MLP().double(),
            loader(x, y, batch_size=batch),
            [monitor],
            max_steps=5,
            accumulate_grad_batches=accumulate,
        )
        runs[name] = monitor.history
    for key in ("pl/gap", "pl/ratio_step"):
        a, b = runs["accumulated"][key], runs["one_batch"][key]
        assert [s for s, _ in a] == [s for s, _ in b] == list(range(5)), key
        for (step, va), (_, vb) in zip(a, b, strict=True):
            assert va == pytest.approx(vb, rel=1e-10), (key, step, va, vb)


# ============================================================================ DDP: world_size > probe_size
def _read_csv(out_dir: Path) -> dict[str, list[tuple[int, float]]]:
    rows = list(csv.DictReader((out_dir / "csv" / "version_0" / "metrics.csv").open()))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("lplr/") and value not in ("", None):
                series.setdefault(key[5:], []).append((int(row["step"]), float(value)))
    return series


def _probe_one_run(out_dir: Path, devices: int) -> dict[str, list[tuple[int, float]]]:
    """``tests/ddp_run.py``'s model and global batches, an NTK of ONE probe sample, 1 or 2 processes."""
    pl.seed_everything(0, verbose=False)
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=120)) if devices > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        callbacks=[NTKMonitor(overhead=None, ntk_every=2, probe_size=1), ddp_run.CloseProcessGroup()],
        max_steps=4,
        logger=CSVLogger(str(out_dir), name="csv", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(ddp_run.Net().double(), datamodule=ddp_run.Data(devices))
    return _read_csv(out_dir)


@pytest.mark.slow
@pytest.mark.ddp
def test_more_ranks_than_probe_samples_log_the_one_process_ntk(tmp_path):
    """2 processes, ``probe_size=1``: rank 1 holds no probe row (a padding block), yet the NTK is logged.

    The 1-process run of the same data, seed and global batch is the oracle; the model is float64
    and the kernel of one sample is the same computation on rank 0 as in one process, so the values
    agree to float64 round-off of 4 steps of all-reduced gradients (1e-9 relative).
    """
    single = _probe_one_run(tmp_path / "one", 1)
    double = _probe_one_run(tmp_path / "two", 2)
    keys = ("ntk/lambda_min", "ntk/lambda_max", "ntk/trace", "ntk/drift_op", "param/drift")
    for key in keys:
        assert [s for s, _ in single.get(key, [])] == [0, 2], (key, sorted(single))
        assert [s for s, _ in double.get(key, [])] == [0, 2], (key, sorted(double))
        for (step, a), (_, b) in zip(single[key], double[key], strict=True):
            assert math.isfinite(b) and b == pytest.approx(a, rel=1e-9, abs=1e-12), (key, step, a, b)
    assert "skipped/ntk_error" not in double or all(v == 0 for _, v in double["skipped/ntk_error"])


# ============================================================================ __init__ arguments
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *[("ntk_every", v) for v in (0, -1, NAN, INF, 1.5, True)],
        *[("step_every", v) for v in (0, -1, NAN, INF, 1.5, True)],
        *[("flush_every", v) for v in (0, -1, NAN, INF, 1.5, True, None)],
        *[("probe_size", v) for v in (0, -1, NAN, INF, 1.5, True)],
        *[("probe_seed", v) for v in (NAN, INF, 1.5, True)],
        *[("chunk_size", v) for v in (0, -1, NAN, INF, 1.5, True)],
        *[("max_memory_bytes", v) for v in (0, -1, NAN, INF, 1.5, True)],
        *[("loss_star", v) for v in (NAN, INF, -INF, True, None)],
        *[("loss_star_margin", v) for v in (NAN, INF, -0.1, True, None)],
        *[("envelope_window", v) for v in (0, -1, NAN, INF, 1.5, True)],
        *[("envelope_quantile", v) for v in (NAN, INF, -0.1, 0.0, 1.0, 1.5, True, None)],
        *[("rate_window", v) for v in (0, 1, -1, NAN, INF, 1.5, True, None)],
        *[("rate_min_points", v) for v in (0, 1, -1, NAN, INF, 1.5, True, 51, None)],
        *[("preset", v) for v in (None, 3, "fast")],
        *[("kind", v) for v in (3, "diagonal", "Full", "loss_gram")],  # loss_gram: without loss_fn
        *[("implementation", v) for v in (None, 3)],
        *[("norm_mode", v) for v in (None, "batch")],
        *[("full_batch", v) for v in ("yes", 1)],
        *[("prefix", v) for v in (None, 3)],
        *[("log_histograms", v) for v in (None, "yes", 1)],
        *[("probe", v) for v in (3, 2.5, "data")],
        *[(name, 3) for name in ("input_fn", "target_fn", "output_fn", "loss_fn")],
    ],
)
def test_every_init_argument_is_checked_and_named(name, value):
    """A bad value of any ``__init__`` argument fails when the monitor is built, naming the argument."""
    with pytest.raises(ValueError, match=rf"^{name}="):
        LPLRMonitor(overhead=None, **{name: value})


# ============================================================================ half precision
@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_precision_ntk_is_the_float32_kernel_at_the_half_precision_weights(precision):
    """``bf16-true`` and ``16-true`` (both run on this CPU): the NTK of the float32 function at the
    half-precision weights.

    Oracle: float64 copies of the half weights (exact: a bf16/fp16 value is a float64) on the
    float32 probe inputs (the dataset's first ``m`` samples, also exact in float64), brute-force
    Jacobian. The monitor works in float32: an eigenvalue of a float32 Gram matrix of ``P = 74``
    parameters is off by about ``P·ε₃₂·λ_max`` = 1e-5 relative, so 1e-4; a kernel computed in the
    half precision itself would be off by ``ε_bf16 = 8e-3``.
    """
    x, y = _data(dtype=torch.float32)
    m, steps = 8, (0, 2)
    torch.manual_seed(0)
    model = MLP()
    snaps = Snapshots(steps)
    monitor = LPLRMonitor(overhead=None, ntk_every=2, probe_size=m, loss_fn=squared_loss, rate_min_points=3)
    fit(model, loader(x, y), [snaps, monitor], max_steps=3, precision=precision)
    half = torch.bfloat16 if precision == "bf16-true" else torch.float16
    assert next(model.parameters()).dtype == half
    for step in steps:
        eigs = kernel_oracle(model, snaps.weights[step], lambda f: f(x[:m].double()))
        assert_spectrum(monitor.history, step, eigs, rel=1e-4)
    assert len(monitor.history["pl/ratio_probe"]) == 2
    assert all(math.isfinite(v) for _, v in monitor.history["pl/ratio_step"])


# ============================================================================ small and streaming data
class Linear(MLP):
    """``f(x) = W x + b``: its NTK ``(XXᵀ + 1) ⊗ I`` does not depend on the weights."""

    def __init__(self, d=6, out=2) -> None:
        super().__init__(d=d, out=out)
        self.net = nn.Linear(d, out)


def test_default_probe_clips_to_a_sixteen_sample_dataset_with_one_warning():
    """16 samples, default ``probe_size`` (32): the probe is the whole dataset, said once.

    Oracle: the linear model's ``trace(Θ) = O·Σ_i (‖x_i‖² + 1)/16`` over exactly the 16 samples
    (float32 kernel of 6-dimensional inputs: 1e-5 relative).
    """
    x, y = _data(dtype=torch.float32)
    monitor = LPLRMonitor(overhead=None)
    caught = fit(Linear(), loader(x, y, batch_size=4), [monitor], max_steps=2)
    clipped = [w for w in caught if "16" in w and "probe_size=32" in w]
    assert len(clipped) == 1, caught
    expected = 2 * float(((x.double() ** 2).sum(1) + 1).sum()) / 16
    assert dict(monitor.history["ntk/trace"])[0] == pytest.approx(expected, rel=1e-5)


def test_explicit_probe_size_larger_than_the_dataset_is_an_error_naming_probe_size():
    x, y = _data(dtype=torch.float32)
    trainer = pl.Trainer(callbacks=[LPLRMonitor(overhead=None, probe_size=17)], **trainer_kwargs(max_steps=2))
    with pytest.raises(ValueError, match=r"probe_size=17"):
        trainer.fit(Linear(), loader(x, y, batch_size=4))
    assert trainer.global_step == 0


class CountingStream(IterableDataset):
    """An endless stream counting its ``__iter__`` calls and the samples it hands out."""

    def __init__(self) -> None:
        self.iterations = 0
        self.drawn = 0

    def __iter__(self):
        self.iterations += 1
        g = torch.Generator().manual_seed(self.iterations)
        while True:
            self.drawn += 1
            x = torch.randn(6, generator=g)
            yield x, torch.tanh(x[:2])


class _StopAtTrainStart(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        raise _StoppedError


class _StoppedError(Exception):
    pass


def test_streaming_dataset_without_probe_is_a_value_error_naming_probe_and_draws_nothing():
    """An ``IterableDataset`` has no "first m samples" to re-read: ``probe=`` is required, and the
    monitor must refuse before touching the stream. Oracle: what Lightning itself does to the stream
    by ``on_train_start`` (one ``__iter__``, one pre-fetched batch), measured without the monitor.
    """
    baseline = CountingStream()
    trainer = pl.Trainer(callbacks=[_StopAtTrainStart()], **trainer_kwargs(max_steps=2))
    with pytest.raises(_StoppedError):
        trainer.fit(MLP(), DataLoader(baseline, batch_size=4))
    stream = CountingStream()
    trainer = pl.Trainer(
        callbacks=[LPLRMonitor(overhead=None), _StopAtTrainStart()], **trainer_kwargs(max_steps=2)
    )
    with pytest.raises(ValueError, match=r"probe="):
        trainer.fit(MLP(), DataLoader(stream, batch_size=4))
    assert (stream.iterations, stream.drawn) == (baseline.iterations, baseline.drawn)
    assert trainer.global_step == 0


# ============================================================================ batch conventions
class TwoInputs(pl.LightningModule):
    """``forward(a, b)``: ``f = W₂ tanh(W₁a + V b)``; ``b=None`` drops the ``V b`` term."""

    def __init__(self, da=4, db=3, width=6, out=2) -> None:
        super().__init__()
        self.wa, self.wb = nn.Linear(da, width), nn.Linear(db, width, bias=False)
        self.head = nn.Linear(width, out)

    def features(self, a, b=None):
        h = self.wa(a) + (0 if b is None else self.wb(b))
        return torch.tanh(h)

    def forward(self, a, b=None):
        return self.head(self.features(a, b))

    def training_step(self, batch, batch_idx):
        a, b, y = batch
        return squared_loss(self(a, b), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _two_input_data(n=8):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, 4, generator=g, dtype=torch.float64)
    b = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return a, b, torch.randn(n, 2, generator=g, dtype=torch.float64)


def _first_sample(model, data, monitor, snaps=None):
    """One optimizer step, so one NTK sample at step 0 (the initial weights)."""
    snaps = snaps or Snapshots((0,))
    fit(model, data, [snaps, monitor], max_steps=1)
    return snaps.weights[0]


class DictBatches(Dataset):
    """HuggingFace-style items ``{"a", "b", "labels"}``."""

    def __init__(self, a, b, y) -> None:
        self.a, self.b, self.y = a, b, y

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        return {"a": self.a[i], "b": self.b[i], "labels": self.y[i]}


class KeywordModel(TwoInputs):
    """``forward(a, b, labels=None)`` as HuggingFace models take it: labels switch on a loss path."""

    def forward(self, a, b, labels=None):
        if labels is not None and not self.training:
            raise AssertionError("the monitor passed the labels to forward")
        return super().forward(a, b)

    def training_step(self, batch, batch_idx):
        return squared_loss(self(**batch), batch["labels"])


def test_dict_batch_is_passed_as_keywords_without_its_labels():
    """``{"a", "b", "labels"}`` batches: ``forward(a=…, b=…)``; the NTK is that of ``f(a, b)``."""
    a, b, y = _two_input_data()
    torch.manual_seed(0)
    model = KeywordModel().double()
    monitor = NTKMonitor(overhead=None, probe_size=8, ntk_every=10)
    weights = _first_sample(model, DataLoader(DictBatches(a, b, y), batch_size=8), monitor)
    eigs = kernel_oracle(model, weights, lambda f: f(a=a, b=b))
    assert_spectrum(monitor.history, 0, eigs, rel=1e-9)


def test_tuple_batch_is_passed_positionally_to_a_two_argument_forward():
    """``(a, b, y)`` batches and ``forward(a, b)`` (two required positional inputs): ``f(a, b)``."""
    a, b, y = _two_input_data()
    torch.manual_seed(0)

    class Positional(TwoInputs):
        def forward(self, a, b):
            return super().forward(a, b)

    model = Positional().double()
    monitor = NTKMonitor(overhead=None, probe_size=8, ntk_every=10)
    weights = _first_sample(model, DataLoader(TensorDataset(a, b, y), batch_size=8), monitor)
    eigs = kernel_oracle(model, weights, lambda f: f(a, b))
    assert_spectrum(monitor.history, 0, eigs, rel=1e-9)
    with_b_dropped = kernel_oracle(model, weights, lambda f: f(a, torch.zeros_like(b)))
    assert not torch.allclose(eigs, with_b_dropped, rtol=1e-3)  # the oracle tells the two apart


@pytest.mark.parametrize("returns", ["tensor", "tuple", "dict"])
def test_input_fn_may_return_a_tensor_a_tuple_or_a_dict(returns):
    """``input_fn`` → tensor: ``forward(a)``; tuple: ``forward(a, b)``; dict: ``forward(a=…, b=…)``."""
    a, b, y = _two_input_data()
    input_fn = {
        "tensor": lambda batch: batch[0],
        "tuple": lambda batch: (batch[0], batch[1]),
        "dict": lambda batch: {"a": batch[0], "b": batch[1]},
    }[returns]
    torch.manual_seed(0)
    model = TwoInputs().double()
    monitor = NTKMonitor(overhead=None, probe_size=8, ntk_every=10, input_fn=input_fn)
    weights = _first_sample(model, DataLoader(TensorDataset(a, b, y), batch_size=8), monitor)
    call = (lambda f: f(a)) if returns == "tensor" else (lambda f: f(a, b))
    assert_spectrum(monitor.history, 0, kernel_oracle(model, weights, call), rel=1e-9)


# ============================================================================ output conventions
def _model_output_class():
    from transformers.utils import ModelOutput

    @dataclasses.dataclass
    class Output(ModelOutput):
        hidden: torch.Tensor | None = None
        logits: torch.Tensor | None = None

    return Output


@dataclasses.dataclass
class PlainOutput:
    hidden: torch.Tensor
    logits: torch.Tensor


class WrappedOutput(TwoInputs):
    """Returns the logits wrapped, next to a decoy tensor (the hidden features) that comes first."""

    def __init__(self, wrap: str) -> None:
        super().__init__()
        self.wrap = wrap

    def forward(self, a, b=None):
        hidden = self.features(a, b)
        logits = self.head(hidden)
        if self.wrap == "model_output":
            return _model_output_class()(hidden=hidden, logits=logits)
        if self.wrap == "dataclass":
            return PlainOutput(hidden=hidden, logits=logits)
        if self.wrap == "dict":
            return {"hidden": hidden, "logits": logits}
        return (logits, hidden)

    def training_step(self, batch, batch_idx):
        a, _, y = batch
        out = self(a)
        logits = out[0] if isinstance(out, tuple) else out["logits"] if isinstance(out, dict) else out.logits
        return squared_loss(logits, y)


@pytest.mark.parametrize("wrap", ["model_output", "dataclass", "dict", "tuple"])
def test_wrapped_outputs_give_their_logits(wrap):
    """``ModelOutput`` / dataclass / dict → ``logits`` (not the first tensor); tuple → its first element."""
    a, b, y = _two_input_data()
    torch.manual_seed(0)
    model = WrappedOutput(wrap).double()
    monitor = NTKMonitor(overhead=None, probe_size=8, ntk_every=10)
    weights = _first_sample(model, DataLoader(TensorDataset(a, b, y), batch_size=8), monitor)
    eigs = kernel_oracle(model, weights, lambda f: _logits(f(a)))
    assert_spectrum(monitor.history, 0, eigs, rel=1e-9)


def _logits(out):
    return out[0] if isinstance(out, tuple) else out["logits"] if isinstance(out, dict) else out.logits


# ============================================================================ use_cache
@pytest.mark.slow
def test_use_cache_is_off_during_a_sample_restored_after_and_the_run_unchanged():
    """A tiny GPT-2 whose config has ``use_cache=True``: off in every monitor call, on in training,
    ``True`` after the fit, and the final weights bit-identical to the same seeded fit without the monitor.
    """
    from tests import _third_party as tp

    def run(with_monitor: bool):
        pl.seed_everything(0, verbose=False)
        model = tp.CausalLM(vocab_size=32)
        assert model.model.config.use_cache is True
        seen: list[tuple[bool, bool]] = []
        model.model.register_forward_pre_hook(
            lambda mod, args: seen.append((mod.training, bool(mod.config.use_cache)))
        )
        callbacks = (
            [LPLRMonitor(overhead=None, probe_size=2, kind="pseudo", ntk_every=2)] if with_monitor else []
        )
        data = DataLoader(tp.SyntheticLM(n=16, seq_len=8, vocab_size=32), batch_size=8, shuffle=True)
        monitor_warnings = fit(model, data, callbacks, max_steps=4)
        return model, seen, callbacks, monitor_warnings

    model, seen, (monitor,), _ = run(True)
    reference, *_ = run(False)
    monitor_calls = [cache for training, cache in seen if not training]
    training_calls = [cache for training, cache in seen if training]
    assert monitor_calls and not any(monitor_calls), "use_cache was on during a monitor call"
    assert len(training_calls) == 4 and all(training_calls), "the monitor left use_cache off in training"
    assert model.model.config.use_cache is True
    assert len(monitor.history["ntk_pseudo/lambda_max"]) == 2
    state, ref = model.state_dict(), reference.state_dict()
    assert state.keys() == ref.keys()
    assert all(torch.equal(state[k], ref[k]) for k in state), "the monitor changed the run"
