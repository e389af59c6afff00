"""``functional.memory``: estimates against the tensors actually allocated, the planner on injected sizes.

Measured memory: a ``TorchDispatchMode`` sees every tensor an operation returns and tracks its
storage until it is freed (weak references), so the peak of live bytes during one
``empirical_ntk`` call is the peak of what the computation allocated (model and probe excluded,
as in the estimate). Kernel bytes must match exactly. The features estimate is a formula of the
dominant tensors (Jacobians, activations, blocks), so it is held to a stated factor: within
``[0.8, 5]`` of the measured peak for Jacobian contraction and NTK-vector products (0.8: the chunk
planner keeps a 10 % margin and small temporaries are not modelled; 5: the formulas count
buffers that autograd may free early), and an upper bound for ``"structured"`` (estimated with
Jacobian contraction's formula; its per-layer factorisation needs less).

Planner and budget tests use injected numbers only, never this machine's free memory.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_lplr.functional import ntk
from lightning_lplr.functional.memory import (
    DEFAULT_BUDGET_FRACTION,
    NTKProblemSize,
    default_budget,
    estimate_ntk_memory,
    format_bytes,
    measure_ntk_problem,
    plan_ntk_memory,
)
from lightning_lplr.functional.ntk import empirical_ntk
from tests.test_ntk_inputs import V, lm_case

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class PeakMemory(TorchDispatchMode):
    """Peak bytes of the storages that operations return, while they are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        for t in pytree.tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            try:
                storage = t.untyped_storage()
                key = storage.data_ptr()
            except RuntimeError:  # a functorch wrapper: its physical tensor is seen on its own
                continue
            self.live.setdefault(key, (StorageWeakRef(storage), storage.nbytes()))
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def mlp_case() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, 10)
    ), torch.randn(12, 20)


def cnn_case() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    return net, torch.randn(12, 3, 8, 8)


def lm_float() -> tuple[nn.Module, dict[str, Tensor]]:
    model, x = lm_case()
    return model.float(), x


CASES = {"mlp": mlp_case, "cnn": cnn_case, "tiny_lm": lm_float}


def loss_weights(model: nn.Module, x: Any) -> Tensor:
    out = model(**x) if isinstance(x, dict) else model(x)
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------
# Estimates against what is allocated
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["full", "trace", "diagonal", "pseudo", "loss_gram"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_kernel_theta0_and_analysis_bytes_are_exact(kind: str, masked: bool) -> None:
    model, x = lm_float()
    mask = x["attention_mask"] if masked else None
    size = measure_ntk_problem(model, x, output_mask=mask)
    extra = {"output_weights": loss_weights(model, x)} if kind == "loss_gram" else {}
    k = empirical_ntk(model, x, kind=kind, output_mask=mask, implementation="structured", **extra)
    est = estimate_ntk_memory(size, kind=kind, implementation="structured")
    assert est.kernel_bytes == k.numel() * k.element_size()
    assert est.theta0_bytes == k.numel() * 8  # the float64 copy Θ₀
    assert est.analysis_bytes == 2 * k.numel() * 8  # float64 widening of a float32 kernel + a workspace
    if kind == "full" and masked:
        assert size.kept_outputs == int(mask.sum()) * V == k.shape[0]


@pytest.mark.parametrize("chunk", [None, 4], ids=["whole", "chunk4"])
@pytest.mark.parametrize("kind", ["full", "trace", "pseudo"])
@pytest.mark.parametrize("implementation", ["jacobian_contraction", "ntk_vector_products", "structured"])
@pytest.mark.parametrize("name", list(CASES))
def test_features_estimate_against_measured_peak(
    name: str, implementation: str, kind: str, chunk: int | None
) -> None:
    model, x = CASES[name]()
    size = measure_ntk_problem(model, x)
    empirical_ntk(model, x, kind=kind, implementation=implementation, chunk_size=chunk)  # plans, lazy init
    with PeakMemory() as peak:
        k = empirical_ntk(model, x, kind=kind, implementation=implementation, chunk_size=chunk)
    est = estimate_ntk_memory(size, kind=kind, implementation=implementation, chunk_size=chunk)
    ratio = est.ntk_bytes / peak.peak
    assert peak.peak >= k.numel() * k.element_size()  # the tracker saw the kernel itself
    if implementation == "structured":
        assert ratio >= 0.8, f"structured allocated {peak.peak} > its bound {est.ntk_bytes}"
    else:
        assert 0.8 <= ratio <= 5.0, f"estimate {est.ntk_bytes} vs measured {peak.peak} (×{ratio:.2f})"


def test_measure_ntk_problem_counts() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    size = measure_ntk_problem(net, torch.randn(10, 3, dtype=torch.float64))
    # P = 3·8 + 8 + 8·2 + 2; activations = 8 (Linear) + 8 (Tanh) + 2 (Linear) per sample.
    assert (size.probe_size, size.outputs, size.parameters) == (10, 2, 50)
    assert (size.activation_numel, size.max_activation_numel, size.dtype) == (18, 8, torch.float64)
    assert size.kept_outputs is None and size.rows == 20
    model, x = lm_case()
    masked = measure_ntk_problem(model, x, output_mask=lambda inp: inp["attention_mask"])
    assert masked.outputs == 5 * V and masked.kept_outputs == int(x["attention_mask"].sum()) * V


def test_estimate_grows_with_the_chunk_and_train_mode_differs() -> None:
    size = NTKProblemSize(probe_size=64, outputs=10, parameters=100_000, activation_numel=500)
    sizes = [estimate_ntk_memory(size, chunk_size=c).features_bytes for c in (1, 2, 8, 32, 64)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert estimate_ntk_memory(size, chunk_size=64) == estimate_ntk_memory(size, chunk_size=None)
    train = estimate_ntk_memory(size, norm_mode="train", implementation="ntk_vector_products")
    assert (
        train.kernel_bytes == (640**2) * 4
        and train.features_bytes != estimate_ntk_memory(size).features_bytes
    )


# --------------------------------------------------------------------------------------------
# The planner, on injected sizes
# --------------------------------------------------------------------------------------------

GPT2 = NTKProblemSize(probe_size=32, outputs=16 * 512, parameters=124_439_808, activation_numel=2_000_000)
"""GPT-2-small-like: 32 probe sequences, logits of L = 16 positions × V = 512 (O = L·V = 8192)."""
HEAD = NTKProblemSize(probe_size=64, outputs=1000, parameters=11_689_512, activation_numel=2_300_000)
"""A ResNet-18-like 1000-class classifier."""


def _fits(plan: Any) -> bool:
    e = plan.estimate
    return e.ntk_bytes <= ntk._BUDGET_MARGIN * (plan.budget_bytes - e.theta0_bytes - e.analysis_bytes)


def test_gpt2_like_never_full() -> None:
    for budget in (6 * 10**9, 60 * 10**9, 10**12):
        plan = plan_ntk_memory(GPT2, budget)
        assert plan.kind == "pseudo" and plan.probe_size == 32 and _fits(plan)
        assert plan.reason.startswith("the full kernel of 32 samples × 8192 outputs needs at least")
        assert f"> budget {format_bytes(budget)}: using pseudo" in plan.reason
    small = plan_ntk_memory(GPT2, 6 * 10**9)
    assert small.chunk_size is not None and small.estimate.total_bytes <= 6 * 10**9
    # The full kernel's own entries already exceed the budget: kernel + Θ₀ = (32·8192)²·(4 + 8) bytes.
    assert estimate_ntk_memory(GPT2, chunk_size=1).kernel_bytes == (32 * 8192) ** 2 * 4


def test_classifier_head_full_then_pseudo() -> None:
    big = plan_ntk_memory(HEAD, 10**12)
    assert big.kind == "full" and big.chunk_size is not None and _fits(big)
    assert "needs 9.7 TB at once > budget 1.0 TB: using full in chunks of" in big.reason
    # The chunk is the largest that fits: one more sample per chunk does not.
    more = estimate_ntk_memory(HEAD, chunk_size=big.chunk_size + 1, implementation="auto")
    assert more.ntk_bytes > ntk._BUDGET_MARGIN * (10**12 - more.theta0_bytes - more.analysis_bytes)
    small = plan_ntk_memory(HEAD, 4 * 10**9)
    assert (small.kind, small.probe_size) == ("pseudo", 64) and _fits(small)
    assert "using pseudo" in small.reason
    fits = plan_ntk_memory(NTKProblemSize(64, 10, 50_000, 200), 10**9)
    assert (fits.kind, fits.chunk_size, fits.probe_size) == ("full", None, 64)
    assert fits.reason.endswith("using it as requested")


@pytest.mark.parametrize("budget", [10**7, 10**8, 10**9, 10**10, 10**11, 10**12, 10**13])
def test_fallback_never_picks_trace(budget: int) -> None:
    for size in (GPT2, HEAD, NTKProblemSize(256, 100, 1_000_000, 5_000)):
        try:
            plan = plan_ntk_memory(size, budget)
        except ValueError:
            continue
        assert plan.kind in ("full", "pseudo") and _fits(plan)


def test_fewer_probe_samples_then_impossible() -> None:
    many = NTKProblemSize(probe_size=200_000, outputs=10, parameters=1_000, activation_numel=100)
    plan = plan_ntk_memory(many, 10**11)
    assert plan.kind == "pseudo" and 2 <= plan.probe_size < 200_000 and _fits(plan)
    assert f"using pseudo on {plan.probe_size} samples" in plan.reason
    one_more = many.with_probe_size(plan.probe_size + 1)
    least = estimate_ntk_memory(one_more, kind="pseudo", implementation="auto", chunk_size=1)
    assert least.ntk_bytes > ntk._BUDGET_MARGIN * (10**11 - least.theta0_bytes - least.analysis_bytes)
    with pytest.raises(
        ValueError, match=r"even pseudo on 2 probe samples one at a time needs .* raise the budget"
    ):
        plan_ntk_memory(GPT2, 10**6)


def test_loss_gram_and_masks_keep_their_kind() -> None:
    gram = plan_ntk_memory(GPT2, 6 * 10**9, kind="loss_gram")
    assert gram.kind == "loss_gram" and _fits(gram)
    unmasked = NTKProblemSize(32, 400, 100_000, 1_000)
    masked = NTKProblemSize(32, 400, 100_000, 1_000, kept_outputs=32 * 100)
    budget = 2 * 10**9
    assert plan_ntk_memory(unmasked, budget).kind == "pseudo"
    plan = plan_ntk_memory(masked, budget)
    assert plan.kind == "full" and "(3200 kept in all)" in plan.reason


@pytest.mark.parametrize("implementation", ["jacobian_contraction", "ntk_vector_products"])
def test_plan_drives_empirical_ntk(implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's chunk is the chunk ``empirical_ntk`` derives from ``plan.max_memory_bytes``."""
    model, x = mlp_case()
    size = measure_ntk_problem(model, x)
    whole = estimate_ntk_memory(size, implementation=implementation)
    budget = whole.total_bytes - whole.features_bytes // 2  # the whole probe at once does not fit
    plan = plan_ntk_memory(size, budget, implementation=implementation)
    assert plan.kind == "full" and plan.chunk_size is not None
    chunks: list[int | None] = []
    real = ntk._assemble

    def spy(backend: Any, s1: Any, s2: Any, kind: Any, chunk: int | None, target: Any) -> Tensor:
        chunks.append(chunk)
        return real(backend, s1, s2, kind, chunk, target)

    monkeypatch.setattr(ntk, "_assemble", spy)
    empirical_ntk(model, x, implementation=implementation, max_memory_bytes=plan.max_memory_bytes)
    assert chunks == [plan.chunk_size]


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"probe_size=0 must be a positive int"):
        NTKProblemSize(0, 1, 1, 1)
    with pytest.raises(ValueError, match=r"kept_outputs=-1 must be a non-negative int"):
        NTKProblemSize(1, 1, 1, 1, kept_outputs=-1)
    with pytest.raises(ValueError, match=r"budget_bytes=0 must be a positive int"):
        plan_ntk_memory(HEAD, 0)
    with pytest.raises(ValueError, match=r"kind='eigen' is not a known kind"):
        estimate_ntk_memory(HEAD, kind="eigen")
    with pytest.raises(ValueError, match=r"fraction=1.5 must be a number in \(0, 1\]"):
        default_budget("cpu", fraction=1.5)


# --------------------------------------------------------------------------------------------
# The default budget, from injected free-memory numbers
# --------------------------------------------------------------------------------------------


def test_default_budget_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * gib)
    # free 10 GiB + cached-but-unallocated 2 GiB, times the fraction.
    assert default_budget("cuda:0") == int(12 * gib * DEFAULT_BUDGET_FRACTION)
    assert default_budget(torch.device("cuda", 0), fraction=0.25) == 3 * gib


def test_default_budget_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
    )
    monkeypatch.setattr(ntk, "_MEMINFO", str(meminfo))
    assert default_budget("cpu") == int(8_000_000 * 1024 * DEFAULT_BUDGET_FRACTION)
    assert default_budget("cpu", fraction=1) == 8_000_000 * 1024
    monkeypatch.setattr(ntk, "_MEMINFO", str(tmp_path / "missing"))
    monkeypatch.setattr(ntk.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert default_budget("cpu") is None
    assert math.isclose(DEFAULT_BUDGET_FRACTION, 0.5)
