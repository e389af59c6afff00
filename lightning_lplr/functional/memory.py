"""Memory of an NTK sample before it is computed, and a plan that fits a memory budget.

A monitor keeps, per kernel sample, the kernel :func:`~lightning_lplr.functional.empirical_ntk`
returns, a float64 copy ``Θ₀`` of the first sample (for the drift), and float64 working copies
while it analyses the sample; computing the kernel needs the Jacobian (or the implementation's
features) of the chunks in flight. :func:`estimate_ntk_memory` returns each part from the sizes
alone (:class:`NTKProblemSize`: probe size ``m``, outputs ``O``, parameters ``P``, activations;
:func:`measure_ntk_problem` measures them with one forward of one sample), with the formulas
:func:`~lightning_lplr.functional.empirical_ntk` itself uses to size its chunks under
``max_memory_bytes``. :func:`plan_ntk_memory` walks from the requested kernel to cheaper ones until
the estimate fits a budget, and says why; :func:`default_budget` proposes a budget from the
device's free memory.

Example:
    >>> gpt2 = NTKProblemSize(probe_size=32, outputs=8192, parameters=124_439_808, activation_numel=2_000_000)
    >>> plan = plan_ntk_memory(gpt2, budget_bytes=6 * 10**9)
    >>> plan.kind, plan.chunk_size, plan.probe_size
    ('pseudo', 4, 32)
    >>> print(*plan.reason.replace(" > ", ", > ").split(", "), sep=chr(10))
    the full kernel of 32 samples × 8192 outputs needs at least 10.3 TB (kernel 275 GB
    Θ₀ 550 GB
    analysis copies 1.1 TB
    features of one sample 8.4 TB)
    > budget 6.0 GB: using pseudo in chunks of 4 samples (4.6 GB)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_lplr.functional import ntk
from lightning_lplr.functional._problem import Inputs, ModelFn, Problem, as_inputs, move_inputs, sample_count
from lightning_lplr.functional.normalization import NormMode, NormOverride, mode_value
from lightning_lplr.functional.ntk import NTKImplementation, NTKKind, OutputMask

__all__ = [
    "DEFAULT_BUDGET_FRACTION",
    "NTKMemoryEstimate",
    "NTKPlan",
    "NTKProblemSize",
    "default_budget",
    "estimate_ntk_memory",
    "format_bytes",
    "measure_ntk_problem",
    "plan_ntk_memory",
]

DEFAULT_BUDGET_FRACTION = 0.5
"""Share of the free memory :func:`default_budget` proposes. The NTK is computed between training
steps, when the step's activations and gradients are freed but about to be needed again (on CUDA
they stay reserved by the caching allocator and are counted as free): half leaves the next step,
allocator fragmentation and the estimates' error room."""

_FLOAT64 = 8


@dataclass(frozen=True)
class NTKProblemSize:
    """The sizes that decide an NTK sample's memory.

    Attributes:
        probe_size: ``m``, samples in the probe.
        outputs: ``O``, model outputs per sample (before masking; the Jacobian has them all).
        parameters: ``P``, trainable parameters.
        activation_numel: per-sample number of elements of all leaf-module outputs in one
            forward (what backpropagation keeps).
        max_activation_numel: per-sample elements of the largest single leaf-module output
            (``None``: ``activation_numel``, an upper bound).
        kept_outputs: rows of a masked full kernel, ``Σ_i k_i`` over the probe (``None``: ``m·O``,
            no mask).
        dtype: dtype of the parameters (and so of the kernel).
    """

    probe_size: int
    outputs: int
    parameters: int
    activation_numel: int
    max_activation_numel: int | None = None
    kept_outputs: int | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for name in ("probe_size", "outputs", "parameters", "activation_numel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int.")
        for name in ("max_activation_numel", "kept_outputs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}={value!r} must be a non-negative int or None.")
        if not isinstance(self.dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype; got {type(self.dtype).__name__}.")

    @property
    def rows(self) -> int:
        """Rows of the full kernel: ``kept_outputs``, else ``m·O``."""
        return self.probe_size * self.outputs if self.kept_outputs is None else self.kept_outputs

    def with_probe_size(self, probe_size: int) -> NTKProblemSize:
        """The same problem on ``probe_size`` samples (kept outputs scaled proportionally, rounded up).

        Args:
            probe_size: the new ``m``.

        Returns:
            A new :class:`NTKProblemSize`.

        Example:
            >>> NTKProblemSize(8, 10, 100, 50, kept_outputs=60).with_probe_size(4).kept_outputs
            30
        """
        kept = (
            None if self.kept_outputs is None else math.ceil(self.kept_outputs * probe_size / self.probe_size)
        )
        return dataclasses.replace(self, probe_size=probe_size, kept_outputs=kept)


@dataclass(frozen=True)
class NTKMemoryEstimate:
    """Bytes of one NTK sample, by part (see :func:`estimate_ntk_memory`).

    Attributes:
        kind: the kernel kind.
        implementation: the implementation estimated.
        probe_size: ``m``.
        chunk_size: samples per chunk (``None``: the whole probe at once).
        kernel_bytes: the kernel :func:`~lightning_lplr.functional.empirical_ntk` returns (exact).
        theta0_bytes: the float64 copy ``Θ₀`` of the first sample a monitor keeps.
        analysis_bytes: float64 working copies while a sample is analysed: the kernel widened
            to float64 (nothing when it is float64 already) and one kernel-sized float64
            workspace (the eigensolver's copy, or ``Θ − Θ₀``).
        features_bytes: the peak of one block of the computation: Jacobians (or features) of
            the chunks in flight, activations of their forward and backward passes, the block.
    """

    kind: str
    implementation: str
    probe_size: int
    chunk_size: int | None
    kernel_bytes: int
    theta0_bytes: int
    analysis_bytes: int
    features_bytes: int

    @property
    def ntk_bytes(self) -> int:
        """What ``empirical_ntk``'s ``max_memory_bytes`` bounds: the kernel and the features in flight."""
        return self.kernel_bytes + self.features_bytes

    @property
    def total_bytes(self) -> int:
        """Everything of one sample: kernel, ``Θ₀``, analysis copies and features in flight."""
        return self.kernel_bytes + self.theta0_bytes + self.analysis_bytes + self.features_bytes


@dataclass(frozen=True)
class NTKPlan:
    """What :func:`plan_ntk_memory` chose.

    Attributes:
        kind: the kernel kind to compute.
        chunk_size: pass as ``empirical_ntk(chunk_size=...)`` (``None``: no chunking).
        probe_size: samples to keep in the probe (the first ``probe_size`` of it).
        estimate: the memory estimate of that choice.
        budget_bytes: the budget planned for.
        reason: a human-readable account of the choice.
    """

    kind: str
    chunk_size: int | None
    probe_size: int
    estimate: NTKMemoryEstimate
    budget_bytes: int
    reason: str

    @property
    def max_memory_bytes(self) -> int:
        """The budget left to ``empirical_ntk`` once ``Θ₀`` and the analysis copies are set aside.

        Passing it as ``max_memory_bytes`` (instead of ``chunk_size``) lets ``implementation="auto"``
        size the chunks of whichever implementation it picks.
        """
        e = self.estimate
        return max(1, self.budget_bytes - e.theta0_bytes - e.analysis_bytes)


# ----------------------------------------------------------------------------------------------
# Estimates
# ----------------------------------------------------------------------------------------------


def _kind(kind: Any) -> NTKKind:
    return ntk._enum_value(NTKKind, kind, "kind")


def _implementation(implementation: Any) -> NTKImplementation:
    return ntk._enum_value(NTKImplementation, implementation, "implementation")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _kernel_numel(size: NTKProblemSize, kind: NTKKind) -> int:
    m, o = size.probe_size, size.outputs
    return ntk._kernel_numel(kind, m, m, o, size.rows, size.rows)


def _block_bytes(
    size: NTKProblemSize, kind: NTKKind, implementation: NTKImplementation, train: bool, kernel_numel: int
) -> Any:
    """``(b1, b2) -> peak bytes of one block`` (``train``: ``b1`` is the batch kernel's chunk)."""
    sizes = ntk._Sizes(
        outputs=1 if kind in ntk._SCALAR_KINDS else size.outputs,
        parameters=size.parameters,
        activation_numel=size.activation_numel,
        max_activation_numel=size.max_activation_numel or size.activation_numel,
        itemsize=_itemsize(size.dtype),
        selected=size.kept_outputs is not None and kind is NTKKind.FULL,
    )
    m = size.probe_size
    jc, nvp = NTKImplementation.JACOBIAN_CONTRACTION, NTKImplementation.NTK_VECTOR_PRODUCTS

    def one(impl: NTKImplementation, b1: int, b2: int) -> int:
        if train:
            kernel = kernel_numel * sizes.itemsize
            return ntk._batch_bytes(sizes, kind, m, b1, impl, kernel_numel) - kernel
        if impl is nvp:
            return ntk._ntk_vector_products_bytes(sizes, kind, b1, b2)
        return ntk._jacobian_contraction_bytes(sizes, kind, b1, b2)  # structured: approximated by it

    def estimate(b1: int, b2: int) -> int:
        if implementation is NTKImplementation.AUTO:
            return min(one(jc, b1, b2), one(nvp, b1, b2))
        return one(implementation, b1, b2)

    return estimate


def estimate_ntk_memory(
    size: NTKProblemSize,
    *,
    kind: NTKKind | str = "full",
    implementation: NTKImplementation | str = "jacobian_contraction",
    chunk_size: int | None = None,
    norm_mode: NormMode | str | None = None,
) -> NTKMemoryEstimate:
    """The bytes of one NTK sample, by part, from the sizes alone.

    The features estimate is the formula :func:`~lightning_lplr.functional.empirical_ntk` sizes its
    chunks with: Jacobian contraction ``≈ (b1 + 2·b2)·O·P + b·A·(1 + O) + 2·b1·b2·Q`` numbers,
    NTK-vector products ``≈ 2·b1·O·P + 4·b1·b2·O·A_max + 2·b1·A + 2·b1·b2·O²`` (``b``: chunk size,
    ``O = 1`` for pseudo and loss_gram, ``Q`` the output pairs of the kind); ``"structured"`` is
    approximated by Jacobian contraction's (its per-layer factorisation usually needs less, see
    :class:`~lightning_lplr.functional.NTKImplementation`), ``"auto"`` by the smaller of the two (it
    only considers implementations that fit). With ``norm_mode="train"`` the batch-Jacobian
    formulas apply (the chunk is then the number of samples whose output rows are differentiated
    at once).

    Args:
        size: the problem's sizes.
        kind: the kernel kind.
        implementation: the implementation.
        chunk_size: samples per chunk (``None``: the whole probe).
        norm_mode: ``None``, ``"probe"``, ``"eval"`` (per-sample kernels) or ``"train"`` (one batch Jacobian).

    Returns:
        The estimate; ``kernel_bytes`` is exact.

    Raises:
        ValueError: an unknown kind, implementation or norm_mode, or a non-positive ``chunk_size``.

    Example:
        >>> size = NTKProblemSize(4, outputs=3, parameters=100, activation_numel=20, dtype=torch.float64)
        >>> est = estimate_ntk_memory(size, kind="full")
        >>> est.kernel_bytes, est.theta0_bytes, est.analysis_bytes  # 12 × 12 entries, float64
        (1152, 1152, 1152)
        >>> est.total_bytes == est.kernel_bytes + est.theta0_bytes + est.analysis_bytes + est.features_bytes
        True
    """
    kind_ = _kind(kind)
    impl = _implementation(implementation)
    ntk._check_positive("chunk_size", chunk_size)
    train = mode_value(norm_mode) is NormMode.TRAIN
    m = size.probe_size
    numel = _kernel_numel(size, kind_)
    itemsize = _itemsize(size.dtype)
    block = _block_bytes(size, kind_, impl, train, numel)
    b = min(m, chunk_size or m)
    widened = 0 if size.dtype == torch.float64 else numel * _FLOAT64
    return NTKMemoryEstimate(
        kind=kind_.value,
        implementation=impl.value,
        probe_size=m,
        chunk_size=None if chunk_size is None or chunk_size >= m else chunk_size,
        kernel_bytes=numel * itemsize,
        theta0_bytes=numel * _FLOAT64,
        analysis_bytes=widened + numel * _FLOAT64,
        features_bytes=int(block(b, b)),
    )


# ----------------------------------------------------------------------------------------------
# The planner
# ----------------------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """A byte count in decimal units, three significant digits at most.

    Args:
        n: bytes.

    Returns:
        E.g. ``"550 GB"``, ``"6.0 GB"``, ``"12 B"``.

    Example:
        >>> format_bytes(549_755_813_888), format_bytes(6e9), format_bytes(1536), format_bytes(12)
        ('550 GB', '6.0 GB', '1.5 kB', '12 B')
    """
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if abs(v) >= 100 else f"{v:.1f} {unit}"
    return f"{int(n)} B"


def plan_ntk_memory(
    size: NTKProblemSize,
    budget_bytes: int,
    *,
    kind: NTKKind | str = "full",
    implementation: NTKImplementation | str = "auto",
    norm_mode: NormMode | str | None = None,
    min_probe_size: int = 2,
) -> NTKPlan:
    """The cheapest change to the requested kernel whose estimated total fits ``budget_bytes``.

    A configuration fits when the kernel and the features in flight fit the share of the budget
    that ``Θ₀`` and the analysis copies leave, with the margin ``empirical_ntk`` keeps (it sizes
    chunks to 90 % of ``max_memory_bytes``). Walks, stopping at the first that fits:

    1. the requested kind on the whole probe at once;
    2. the requested kind in chunks (the largest chunk that fits: only the features shrink);
    3. for ``"full"``, ``"trace"`` and ``"diagonal"``: the pseudo kernel, at once, then in chunks
       (never ``"trace"`` as a fallback: it costs ``m·O`` backward passes, ``O×`` the pseudo
       kernel's ``m``, and keeps nothing the pseudo kernel lacks for the spectrum);
    4. fewer probe samples (the largest probe that fits, at least ``min_probe_size``) with the
       last kind, in chunks.

    ``"pseudo"`` and ``"loss_gram"`` requests only go through 1, 2 and 4.

    Args:
        size: the problem's sizes (:func:`measure_ntk_problem`, or numbers).
        budget_bytes: the memory allowed for one sample (e.g. :func:`default_budget`).
        kind: the requested kind.
        implementation: the implementation that will run (``"auto"``: whichever fits).
        norm_mode: as in :func:`estimate_ntk_memory`.
        min_probe_size: the smallest probe worth computing.

    Returns:
        The plan, with its estimate and reason.

    Raises:
        ValueError: a non-positive budget, an unknown argument, or nothing fits even
            ``min_probe_size`` samples one at a time (the message gives the estimate).

    Example:
        >>> head = NTKProblemSize(64, outputs=1000, parameters=11_689_512, activation_numel=2_300_000)
        >>> plan_ntk_memory(head, budget_bytes=10**12).kind  # the Jacobian in chunks of 5 samples
        'full'
        >>> small = plan_ntk_memory(head, budget_bytes=4 * 10**9)
        >>> small.kind, small.chunk_size, small.probe_size
        ('pseudo', 22, 64)
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1:
        raise ValueError(f"budget_bytes={budget_bytes!r} must be a positive int (bytes).")
    if isinstance(min_probe_size, bool) or not isinstance(min_probe_size, int) or min_probe_size < 1:
        raise ValueError(f"min_probe_size={min_probe_size!r} must be a positive int.")
    requested = _kind(kind)
    impl = _implementation(implementation)
    m = size.probe_size
    margin = ntk._BUDGET_MARGIN

    def estimate(sz: NTKProblemSize, k: NTKKind, chunk: int | None) -> NTKMemoryEstimate:
        return estimate_ntk_memory(sz, kind=k, implementation=impl, chunk_size=chunk, norm_mode=norm_mode)

    def fits(e: NTKMemoryEstimate) -> bool:
        return e.ntk_bytes <= margin * (budget_bytes - e.theta0_bytes - e.analysis_bytes)

    def largest_chunk(sz: NTKProblemSize, k: NTKKind) -> int | None:
        """The largest chunk that fits (``None``: not even one sample)."""
        base = estimate(sz, k, None)
        available = int(margin * (budget_bytes - base.theta0_bytes - base.analysis_bytes)) - base.kernel_bytes
        train = mode_value(norm_mode) is NormMode.TRAIN
        block = _block_bytes(sz, k, impl, train, _kernel_numel(sz, k))
        return ntk._largest_chunk(block, sz.probe_size, sz.probe_size, available)

    first = estimate(size, requested, None)
    kept = size.kept_outputs is not None and requested is NTKKind.FULL
    outputs = f"{size.outputs} outputs" + (f" ({size.kept_outputs} kept in all)" if kept else "")
    what = f"the {requested.value} kernel of {m} samples × {outputs}"
    budget = f"budget {format_bytes(budget_bytes)}"

    def plan(e: NTKMemoryEstimate, reason: str) -> NTKPlan:
        return NTKPlan(e.kind, e.chunk_size, e.probe_size, e, budget_bytes, reason)

    def using(e: NTKMemoryEstimate, where: str = "") -> str:
        chunks = "" if e.chunk_size is None else f" in chunks of {e.chunk_size} samples"
        return f"using {e.kind}{where}{chunks} ({format_bytes(e.total_bytes)})"

    if fits(first):
        return plan(
            first, f"{what} needs {format_bytes(first.total_bytes)} ≤ {budget}: using it as requested"
        )
    at_once = f"{what} needs {format_bytes(first.total_bytes)} at once > {budget}"
    chunk = largest_chunk(size, requested)
    if chunk is not None:
        e = estimate(size, requested, chunk)
        return plan(e, f"{at_once}: {using(e)}")
    least = estimate(size, requested, 1)
    parts = (
        f"kernel {format_bytes(least.kernel_bytes)}, Θ₀ {format_bytes(least.theta0_bytes)}, analysis copies "
        f"{format_bytes(least.analysis_bytes)}, features of one sample {format_bytes(least.features_bytes)}"
    )
    why = f"{what} needs at least {format_bytes(least.total_bytes)} ({parts}) > {budget}"
    last = requested
    if requested in (NTKKind.FULL, NTKKind.TRACE, NTKKind.DIAGONAL):
        last = NTKKind.PSEUDO
        whole = estimate(size, last, None)
        if fits(whole):
            return plan(whole, f"{why}: {using(whole)}")
        chunk = largest_chunk(size, last)
        if chunk is not None:
            e = estimate(size, last, chunk)
            return plan(e, f"{why}: {using(e)}")
    lo, hi = min_probe_size, m - 1
    if lo > hi or largest_chunk(size.with_probe_size(lo), last) is None:
        smallest = estimate(size.with_probe_size(min(lo, m)), last, 1)
        raise ValueError(
            f"{why}, and even {last.value} on {min(lo, m)} probe samples one at a time needs "
            f"{format_bytes(smallest.total_bytes)} (a sample's features and kernel may use {margin:.0%} of "
            "what the budget leaves after Θ₀ and the analysis copies): raise the budget, or shrink the "
            "model's outputs (output_mask) or the probe."
        )
    while lo < hi:  # the largest probe whose one-sample-chunk configuration fits
        mid = (lo + hi + 1) // 2
        if largest_chunk(size.with_probe_size(mid), last) is not None:
            lo = mid
        else:
            hi = mid - 1
    smaller = size.with_probe_size(lo)
    chunk = largest_chunk(smaller, last)
    assert chunk is not None
    e = estimate(smaller, last, chunk)
    return plan(
        e, f"{why}; {last.value} of all {m} samples does not fit either: {using(e, f' on {lo} samples')}"
    )


# ----------------------------------------------------------------------------------------------
# Measured sizes and the default budget
# ----------------------------------------------------------------------------------------------


def measure_ntk_problem(
    model: nn.Module | ModelFn,
    x: Inputs,
    *,
    params: Mapping[str, Tensor] | None = None,
    output_mask: OutputMask | None = None,
    norm_mode: NormMode | str | None = None,
) -> NTKProblemSize:
    """The sizes of an NTK problem, from one forward of one sample (three with a ``norm_mode``).

    Args:
        model: as in :func:`~lightning_lplr.functional.empirical_ntk`.
        x: the whole probe (a tensor or a pytree of tensors); only its first samples are evaluated.
        params: as in ``empirical_ntk``.
        output_mask: as in ``empirical_ntk``; sets ``kept_outputs``.
        norm_mode: ``None`` for a model that must treat samples independently; any mode measures
            with batch statistics on the first samples (sizes do not depend on the mode).

    Returns:
        The sizes, with the parameters' dtype.

    Raises:
        ValueError: any argument error of ``empirical_ntk`` about the model, the probe or the mask.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> s = measure_ntk_problem(net, torch.randn(10, 3))
        >>> s.probe_size, s.outputs, s.parameters, s.activation_numel
        (10, 2, 50, 18)
    """
    x = as_inputs(x, "x")
    norm = None if mode_value(norm_mode) is None else NormOverride(NormMode.TRAIN)
    problem = Problem(model, params, x, None, norm=norm)
    keep = ntk._output_mask(output_mask, move_inputs(x, problem.device), problem, "output_mask")
    return NTKProblemSize(
        probe_size=sample_count(x),
        outputs=problem.num_outputs,
        parameters=problem.parameter_count(),
        activation_numel=problem.activation_numel,
        max_activation_numel=problem.max_activation_numel,
        kept_outputs=None if keep is None else int(keep.sum()),
        dtype=problem.dtype,
    )


def default_budget(device: torch.device | str, fraction: float = DEFAULT_BUDGET_FRACTION) -> int | None:
    """A memory budget for one NTK sample: ``fraction`` of what the process could still allocate.

    CUDA: ``torch.cuda.mem_get_info`` free memory plus what PyTorch's caching allocator holds
    reserved but unallocated (``memory_reserved − memory_allocated``, reusable without the
    driver). CPU: ``MemAvailable`` of ``/proc/meminfo``, capped by what the process may still
    map under its address-space limit (``RLIMIT_AS`` minus ``VmSize``) and by its cgroup's
    ``memory.max − memory.current`` (containers, batch schedulers). See
    :data:`DEFAULT_BUDGET_FRACTION` for the default fraction.

    Args:
        device: the device the kernel is computed on.
        fraction: share of the free memory, in ``(0, 1]``.

    Returns:
        Bytes, or ``None`` where the platform does not report free memory.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]``.

    Example:
        >>> budget = default_budget("cpu")
        >>> budget is None or budget > 0
        True
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1], e.g. {DEFAULT_BUDGET_FRACTION}.")
    dev = torch.device(device)
    available = ntk._available_memory(dev)
    if dev.type != "cuda":
        limits = [v for v in (available, _address_space_left(), _cgroup_left()) if v is not None]
        available = min(limits) if limits else None
    return None if available is None else int(available * fraction)


def _address_space_left() -> int | None:
    """``RLIMIT_AS`` (soft) minus the process's current ``VmSize``; ``None`` when unlimited or unknown."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY or limit < 0:
            return None
        with open("/proc/self/status") as fh:
            size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        return max(limit - size, 0)
    except (ImportError, OSError, ValueError, StopIteration):
        return None


def _cgroup_left() -> int | None:
    """The cgroup v2 ``memory.max − memory.current`` of this process; ``None`` without a limit."""
    try:
        with open("/proc/self/cgroup") as fh:
            path = next(line.strip().split(":", 2)[2] for line in fh if line.startswith("0::"))
        base = f"/sys/fs/cgroup{path}"
        with open(f"{base}/memory.max") as fh:
            text = fh.read().strip()
        if text == "max":
            return None
        with open(f"{base}/memory.current") as fh:
            current = int(fh.read().strip())
        return max(int(text) - current, 0)
    except (OSError, ValueError, StopIteration):
        return None
