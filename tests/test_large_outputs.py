"""Issue 15 acceptance at the monitor level: large outputs within a memory budget, the kernel that fits.

* A GPT-2 language model with ``seq × vocab = 8192`` outputs per sample trains under the DEFAULT
  ``LPLRMonitor(overhead=None)`` in a subprocess whose peak resident set is measured (``ru_maxrss``: torch's
  CPU allocations are invisible to ``tracemalloc``).
* A 1000-class head at a small ``max_memory_bytes`` follows the documented fallback (full → pseudo
  → pseudo in chunks → fewer probe samples), says which kind it uses and why, and the kernel it logs
  equals a float64 brute-force kernel of that kind on the samples it says it used.
* Under DDP both ranks pick the same kind when their budgets differ.
* ``kind="loss_gram"`` against a float64 Gram of per-sample loss gradients; a masked sequence
  kernel against the brute-force kernel of the kept positions.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
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
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_lplr import LPLRMonitor
from lightning_lplr.callbacks import LPLRWarning
from tests import ddp_run
from tests._lightning_models import loader, trainer_kwargs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are tiny: on a loaded 2-core machine a second torch thread makes each op wait for a
    descheduled partner (measured: a 0.2 s fit takes 1-14 s with two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(model, data, callbacks, **kw):
    """One fit; returns the messages of the LPLR warnings it raised."""
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(**kw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    return [str(w.message) for w in caught if issubclass(w.category, LPLRWarning)]


def _jacobian(fn, weights: dict) -> torch.Tensor:
    """``∂ fn(weights).reshape(-1) / ∂θ`` in float64, ``(rows, P)``."""
    names = tuple(weights)
    jac = torch.autograd.functional.jacobian(
        lambda *t: fn(dict(zip(names, t, strict=True))).reshape(-1), tuple(weights.values())
    )
    return torch.cat([t.reshape(t.shape[0], -1) for t in jac], dim=1)


def _weights(module: nn.Module) -> dict:
    return {k: v.detach().double().clone() for k, v in module.named_parameters()}


def _assert_spectrum(history, head: str, step: int, eigs: torch.Tensor, rel: float) -> None:
    """``λ_max``, ``λ_min`` (absolute, ``rel·λ_max``: Weyl) and the trace of the logged ``Θ``."""
    scale = float(eigs[-1])
    assert dict(history[head + "lambda_max"])[step] == pytest.approx(scale, rel=rel)
    assert dict(history[head + "lambda_min"])[step] == pytest.approx(float(eigs[0]), abs=rel * scale)
    assert dict(history[head + "trace"])[step] == pytest.approx(float(eigs.sum()), rel=rel)


# ============================================================================ GPT-2, 8192 outputs per sample
VOCAB, SEQ = 512, 16  # 8192 outputs per sample


def gpt2_worker(out_path: str) -> None:
    """In a fresh process: a short GPT-2 fit with ``LPLRMonitor(overhead=None)``; JSON of what happened.

    ``overhead=None``: a handful of steps affords no sample within the default 5 % budget.
    """
    import resource

    torch.set_num_threads(1)
    from tests import _third_party as tp

    pl.seed_everything(0, verbose=False)
    model = tp.CausalLM(vocab_size=VOCAB)
    data = DataLoader(tp.SyntheticLM(n=64, seq_len=SEQ, vocab_size=VOCAB), batch_size=8, shuffle=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    monitor = LPLRMonitor(overhead=None)
    root = Path(out_path).parent
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=6,
        callbacks=[monitor],
        logger=CSVLogger(str(root), name="csv", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    result = {
        "peak_rss_bytes": peak,
        "rss_before_fit_bytes": before,
        "outputs_per_sample": VOCAB * SEQ,
        "global_step": trainer.global_step,
        "history": monitor.history,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, LPLRWarning)],
    }
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


@pytest.mark.slow
def test_gpt2_lm_with_8192_outputs_per_sample_trains_within_a_few_gb(tmp_path):
    """The default monitor on a GPT-2 LM (vocab 512 × 16 positions): falls back, says so, stays small.

    Without a plan the default full kernel of 32 samples would be ``(32·8192)²`` float64 = 550 GB
    (plus Θ₀ and copies). With the plan the process must stay under 3 GB peak RSS: the interpreter
    with torch, Lightning and transformers takes about 0.5 GB here, the model and its optimizer
    state a few MB, and a pseudo kernel of 32 samples with its per-sample Jacobians (32 × 43k
    parameters) tens of MB; 3 GB leaves room for allocator slack and still fails at any kernel
    larger than ~10⁴ × 10⁴ float64 (0.8 GB) held with its Θ₀ copy. The spectrum is logged under
    ``ntk_pseudo/`` at the default schedule's steps 0, 1, 3, 5, and the fallback is announced once,
    naming the kind used and the budget.
    """
    out = tmp_path / "result.json"
    code = f"from tests.test_large_outputs import gpt2_worker; gpt2_worker({str(out)!r})"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    peak_gb = result["peak_rss_bytes"] / 2**30
    print(
        f"GPT-2 ({result['outputs_per_sample']} outputs/sample) peak RSS {peak_gb:.2f} GiB, "
        f"{result['rss_before_fit_bytes'] / 2**30:.2f} GiB before the fit"
    )
    assert result["global_step"] == 6
    assert peak_gb < 3.0, f"peak RSS {peak_gb:.2f} GiB"
    history = result["history"]
    assert not any(k.startswith("ntk/") for k in history), sorted(history)
    steps = [s for s, _ in history["ntk_pseudo/lambda_max"]]
    assert steps == [0, 1, 3, 5]
    for key in ("ntk_pseudo/lambda_max", "ntk_pseudo/lambda_min", "ntk_pseudo/trace"):
        assert all(math.isfinite(v) and v >= 0 for _, v in history[key]), (key, history[key])
    announced = [w for w in result["warnings"] if "using pseudo" in w]
    assert len(announced) == 1, result["warnings"]
    assert "full kernel of 32 samples × 8192 outputs" in announced[0] and "budget" in announced[0]


# ============================================================================ a 1000-class head
class Head(pl.LightningModule):
    """``8 → 16 → classes`` tanh MLP, cross-entropy, plain SGD."""

    def __init__(self, classes: int = 1000, budgets: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, classes))
        self.budgets = budgets

    def setup(self, stage: str) -> None:
        """Make this rank's free memory ``budgets[rank]``, as the monitor's default budget reads it."""
        import lightning_lplr.callbacks._kernel as kernel_module
        import lightning_lplr.functional.memory as memory_module

        self._patched = [(module, module.default_budget) for module in (kernel_module, memory_module)]
        budget = self.budgets[self.global_rank] if self.budgets else None
        for module, original in self._patched:
            module.default_budget = original if budget is None else (lambda device, fraction=0.5: budget)

    def teardown(self, stage: str) -> None:
        for module, original in getattr(self, "_patched", []):
            module.default_budget = original

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _classes(n=32, classes=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def pseudo_oracle(module: nn.Module, weights: dict, x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``Θ = K/m``, ``K`` the kernel of ``Σ_a f_a/√O`` (the pNTK), float64."""
    module = module.double()

    def fn(p):
        out = functional_call(module, p, (x.double(),))
        return out.sum(dim=1) / math.sqrt(out.shape[1])

    j = _jacobian(fn, weights)
    return torch.linalg.eigvalsh(j @ j.T) / x.shape[0]


@pytest.mark.parametrize(
    ("budget", "probe_size", "expected"),
    [
        (64 * 2**20, 8, r"using pseudo \("),
        (2**20, 8, r"using pseudo in chunks of \d+ samples"),
        (260_000, 32, r"does not fit either: using pseudo on (\d+) samples in chunks of \d+ samples"),
    ],
    ids=["pseudo", "pseudo-in-chunks", "fewer-samples"],
)
def test_thousand_class_head_falls_back_as_documented(budget, probe_size, expected):
    """``max_memory_bytes`` far below the full kernel of ``m × 1000`` outputs (≥ 2 GB at m = 8): the
    monitor falls back along the documented chain, says once which kind it uses and why (the full
    kernel's need against the budget), logs under ``ntk_pseudo/`` only, and what it logs is the pNTK
    of the samples it names (float64 brute force; the monitor's float32 kernel: 1e-4 relative).
    """
    x, y = _classes()
    torch.manual_seed(0)
    model = Head()
    weights = _weights(model)
    monitor = LPLRMonitor(overhead=None, probe_size=probe_size, ntk_every=10, max_memory_bytes=budget)
    caught = fit(model, loader(x, y), [monitor], max_steps=1)
    plans = [w for w in caught if "full kernel of" in w]
    assert len(plans) == 1, caught
    message = plans[0]
    assert f"full kernel of {probe_size} samples × 1000 outputs needs" in message
    assert "> budget" in message
    match = re.search(expected, message)
    assert match, message
    used = int(match.group(1)) if match.groups() else probe_size
    assert used < probe_size or match.groups() == ()
    assert not any(k.startswith("ntk/") for k in monitor.history), sorted(monitor.history)
    _assert_spectrum(
        monitor.history, "ntk_pseudo/", 0, pseudo_oracle(model.net, _strip(weights), x[:used]), 1e-4
    )


def _strip(weights: dict) -> dict:
    return {k.removeprefix("net."): v for k, v in weights.items()}


# ======================================================================= DDP: the same kind on every rank
class _Report(pl.Callback):
    """Each rank writes the kernel its monitor planned (kind, chunking, probe size) to ``rank<r>.json``."""

    def __init__(self, monitor: LPLRMonitor, out_dir: str) -> None:
        self.monitor, self.out_dir = monitor, out_dir

    def on_train_end(self, trainer, pl_module):
        ntk = self.monitor._ntk
        plan = {"kind": ntk.kind, "chunk_size": ntk.chunk_size, "probe_size": ntk.probe.size}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(plan))


def _budget_run(out_dir: Path, budgets: tuple[int, ...]) -> tuple[list[dict], dict]:
    pl.seed_everything(0, verbose=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    devices = len(budgets)
    x, y = _classes(classes=50)
    monitor = LPLRMonitor(overhead=None, probe_size=8, ntk_every=2)
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=120)) if devices > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        callbacks=[monitor, _Report(monitor, str(out_dir)), ddp_run.CloseProcessGroup()],
        max_steps=3,
        logger=CSVLogger(str(out_dir), name="csv", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Head(classes=50, budgets=budgets), DataLoader(TensorDataset(x, y), batch_size=16))
    plans = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(devices)]
    keys = set(next(csv.reader((out_dir / "csv" / "version_0" / "metrics.csv").open())))
    return plans, keys


RICH, POOR = 10**9, 10**6
"""Budgets for a 50-class head with m = 8: the full kernel (≥ 5.1 MB) fits the first, only the
pseudo kernel (0.1 MB) the second. Checked below on one process each, so the test knows the two
budgets alone lead to different kinds."""


@pytest.mark.slow
@pytest.mark.ddp
def test_ranks_with_different_budgets_pick_the_same_kind(tmp_path):
    """Rank 0 could afford the full kernel, rank 1 only the pseudo one: both use pseudo (the smallest
    budget over the ranks), and the run logs ``ntk_pseudo/`` keys only."""
    alone = {
        name: _budget_run(tmp_path / name, (b,))[0][0]["kind"] for name, b in (("rich", RICH), ("poor", POOR))
    }
    assert alone == {"rich": "full", "poor": "pseudo"}
    plans, keys = _budget_run(tmp_path / "ddp", (RICH, POOR))
    assert plans[0] == plans[1], plans
    assert plans[0]["kind"] == "pseudo" and plans[0]["probe_size"] == 8
    assert "lplr/ntk_pseudo/lambda_max" in keys and "lplr/ntk/lambda_max" not in keys, sorted(keys)


# ============================================================================ loss_gram
class Classifier(pl.LightningModule):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_loss_gram_equals_the_gram_of_per_sample_loss_gradients():
    """``kind="loss_gram"`` with ``loss_fn=F.cross_entropy`` (mean over the probe).

    As documented, the kernel is ``G_ij = ∇_θℓ_iᵀ∇_θℓ_j`` with ``ℓ_i`` sample i's share of the probe
    loss the monitor evaluates (``g = ∂L/∂f`` of ``L = mean_i CE_i``: ``ℓ_i = CE_i/m``), logged as
    ``Θ = G/m`` under ``ntk_loss_gram/``. Oracle: ``m`` float64 autograd gradients of ``CE_i``, one
    per sample. Its row sums give ``‖∇L‖²`` = ``1ᵀG1``, the probe gradient norm (checked too, as the
    logged probe PL ratio with ``L* = 0``). Tolerance 1e-4 relative (float32 kernel).
    """
    m = 8
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 5, (16,), generator=g)
    torch.manual_seed(0)
    model = Classifier()
    weights = _weights(model)
    monitor = LPLRMonitor(
        overhead=None, kind="loss_gram", loss_fn=F.cross_entropy, probe_size=m, ntk_every=10
    )
    fit(model, loader(x, y), [monitor], max_steps=1)
    net = model.net.double()
    names = tuple(_strip(weights))
    grads = []
    for i in range(m):
        p = {k: v.clone().requires_grad_(True) for k, v in _strip(weights).items()}
        loss = F.cross_entropy(functional_call(net, p, (x[i : i + 1].double(),)), y[i : i + 1])
        grads.append(torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, [p[n] for n in names])]))
    per_sample = torch.stack(grads) / m  # ∇(CE_i / m)
    gram = per_sample @ per_sample.T
    eigs = torch.linalg.eigvalsh(gram) / m
    _assert_spectrum(monitor.history, "ntk_loss_gram/", 0, eigs, 1e-4)
    probe_loss = float(F.cross_entropy(functional_call(net, _strip(weights), (x[:m].double(),)), y[:m]))
    ratio = dict(monitor.history["pl/ratio_probe"])[0]
    assert ratio == pytest.approx(float(gram.sum()) / (2 * probe_loss), rel=1e-4)
    assert not any(k.startswith("ntk/") for k in monitor.history)


# ============================================================================ masked sequence kernels
V, L, D = 6, 5, 4


class TokenModel(pl.LightningModule):
    """HuggingFace-shaped: ``forward(input_ids, attention_mask=None)`` → logits ``(b, L, V)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.mix = nn.Linear(D, D)
        self.head = nn.Linear(D, V)

    def forward(self, input_ids, attention_mask=None):
        h = torch.tanh(self.embed(input_ids))
        context = torch.cumsum(h, dim=1) / torch.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]
        return self.head(torch.tanh(h + self.mix(context)))  # position t sees tokens 0..t

    def training_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"])
        return F.cross_entropy(logits.reshape(-1, V), batch["labels"].reshape(-1), ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class PaddedTokens(Dataset):
    """Right-padded sequences: ``attention_mask`` 0 on padding, labels ``-100`` on padding and on
    position 1 of every other sequence (an ignored label inside the attended part)."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(3)
        ids = torch.randint(1, V, (n, L), generator=g)
        lengths = torch.tensor([L, 3, 4, 2, L, 3, 4, L])[:n]
        self.mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
        self.ids = ids * self.mask
        self.labels = self.ids.masked_fill(self.mask == 0, -100)
        self.labels[::2, 1] = -100

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def test_masked_sequence_kernel_is_the_kernel_of_the_kept_positions():
    """Padding (``attention_mask == 0``) and ignored labels (``-100``) leave the full kernel.

    Oracle: float64 Jacobian of all ``m·L·V`` logits, rows of the kept positions (every vocabulary
    entry of each kept position) selected, ``Θ = J_k J_kᵀ / m``. float64 model: 1e-9 relative. The
    unmasked kernel differs (checked), so the test sees whether the mask was applied.
    """
    m = 6
    data = PaddedTokens()
    torch.manual_seed(0)
    model = TokenModel().double()
    weights = _weights(model)
    monitor = LPLRMonitor(overhead=None, probe_size=m, ntk_every=10)
    fit(model, DataLoader(data, batch_size=8), [monitor], max_steps=1)
    ids, keep = data.ids[:m], (data.mask[:m] != 0) & (data.labels[:m] != -100)
    j = _jacobian(lambda p: functional_call(model, p, (ids,)), weights)  # rows (i, t, v) sample-major
    rows = keep[:, :, None].expand(m, L, V).reshape(-1)
    masked = torch.linalg.eigvalsh(j[rows] @ j[rows].T) / m
    unmasked = torch.linalg.eigvalsh(j @ j.T) / m
    assert int(rows.sum()) < m * L * V
    assert float(unmasked.sum()) > float(masked.sum()) * (1 + 1e-3)
    _assert_spectrum(monitor.history, "ntk/", 0, masked, 1e-9)


def test_theta0_placement_follows_the_budget():
    """θ₀ on the device unless it takes more than 10 % of the budget there; "cpu"/"device" force it."""
    from lightning_lplr.callbacks._kernel import theta0_device

    cuda = torch.device("cuda")
    params = {"w": torch.zeros(1000)}  # 4 kB as float32
    assert theta0_device("auto", params, 100_000, cuda) == cuda  # 4 % of the budget
    assert theta0_device("auto", params, 10_000, cuda) == torch.device("cpu")  # 40 %
    assert theta0_device("device", params, 10, cuda) == cuda
    assert theta0_device("cpu", params, 10**12, cuda) == torch.device("cpu")
    assert theta0_device("device", params, None, torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="theta0='gpu' is not one of"):
        LPLRMonitor(theta0="gpu")
