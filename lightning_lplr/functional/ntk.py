"""The empirical Neural Tangent Kernel, computed with ``torch.func``.

Conventions: for a model ``f(θ, x) ∈ R^O`` and probe inputs ``x_1..x_m``
the Jacobian ``J ∈ R^{(m·O) × P}`` has its rows ordered sample-major (sample ``i``,
output ``a`` → row ``i·O + a``) and its columns over the *trainable* parameters only.
Kernels are unnormalised by ``m``:

=============== =============== ==================================================
kind            shape           definition
=============== =============== ==================================================
``"full"``      ``(m·O, m·O)``  ``J Jᵀ``
``"trace"``     ``(m, m)``      ``Σ_a J_a J_aᵀ / O`` (mean over outputs)
``"diagonal"``  ``(m, m, O)``   per-output kernels ``J_a J_aᵀ``
``"pseudo"``    ``(m, m)``      kernel of ``Σ_a f_a / √O`` (the pNTK)
``"loss_gram"`` ``(m, m)``      ``∇_θℓ_iᵀ ∇_θℓ_j``: kernel of ``⟨g_i, f(θ, x_i)⟩``, ``g_i = ∂ℓ_i/∂f_i``
=============== =============== ==================================================

Inputs are a tensor ``(m, *input_shape)`` or a pytree (tuple, list or dict, nested as needed) of
tensors sharing the leading sample dimension ``m``, e.g. ``{"input_ids": (m, L) int64,
"attention_mask": (m, L)}``. An ``nn.Module`` receives a dict as keyword arguments
(``module(**x)``), a tuple or list as positional arguments (``module(*x)``) and a tensor as its one
argument; a plain callable ``f(params, x)`` receives the pytree as it is. Integer tensors are
inputs like any other (only parameters are differentiated). The output must be a tensor
``(b, *out)``; ``O = prod(out)``.

**Output masks** (``output_mask``: per sample ``i`` the set ``M_i`` of kept outputs, ``k_i = |M_i|``)
exclude outputs, e.g. the padding positions of a language model's ``(m, L, V)`` logits:

* full: the kernel of the kept outputs only, ``(Σ_i k_i, Σ_j k_j)``, rows sample-major over kept
  outputs (sample ``i``'s kept outputs in increasing flat index ``a``, then sample ``i + 1``'s): the
  full kernel with the masked rows and columns deleted;
* trace: ``K_ij = Σ_{a ∈ M_i ∩ M_j} J_ia J_jaᵀ / √(k_i k_j)``, the kernel of the model
  ``f_ia·[a ∈ M_i]/√k_i`` summed over outputs; ``K_ii`` is the mean over the kept outputs of
  ``‖∇f_ia‖²`` as without a mask, where it reduces to ``Σ_a/O``;
* diagonal: ``K_ija = J_ia J_jaᵀ`` where both samples keep ``a``, else ``0``;
* pseudo: the kernel of ``Σ_{a ∈ M_i} f_ia / √k_i``;
* loss_gram: the kernel of ``Σ_{a ∈ M_i} g_ia f_ia``.

The per-sample ``1/√k_i`` (instead of ``1/√O``) keeps a sample's weight independent of how many of
its outputs are masked: a short sequence in a padded batch is not shrunk towards zero, and the
masked trace and pseudo kernels stay positive semi-definite (pair-dependent normalisations such as
``1/|M_i ∩ M_j|`` would not). A sample with no kept output has zero rows.

Several implementations sit behind :class:`NTKImplementation`; every one computes
the same numbers (tested against a float64 brute-force Jacobian), they differ in
time and memory only. ``implementation="auto"`` times them once per model and probe
shape and keeps the fastest; ``max_memory_bytes`` bounds the memory of any of them
(:mod:`lightning_lplr.functional.memory` estimates it and plans a kernel for a budget).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import jacrev, jvp, vjp, vmap

from lightning_lplr.functional import _structured
from lightning_lplr.functional._problem import (
    Inputs,
    ModelFn,
    Problem,
    Target,
    as_inputs,
    full_precision,
    index_samples,
    input_signature,
    move_inputs,
    sample_count,
    split_samples,
    trainable_params,
)
from lightning_lplr.functional.normalization import (
    NormMode,
    NormOverride,
    NormStatistics,
    check_eval_mode,
    mode_value,
    probe_statistics,
)

__all__ = [
    "Inputs",
    "ModelFn",
    "NTKImplementation",
    "NTKKind",
    "NormMode",
    "NormStatistics",
    "OutputMask",
    "clear_auto_cache",
    "empirical_ntk",
    "probe_statistics",
    "resolve_implementation",
    "trainable_params",
]

OutputMask = Tensor | Callable[[Any], Tensor]
"""An output mask: a tensor (``(m, O)`` or broadcastable to ``(m, *out)``) or ``inputs -> tensor``."""


class NTKKind(str, Enum):
    """Which kernel :func:`empirical_ntk` returns (shapes for ``m`` samples, ``O`` outputs)."""

    FULL = "full"
    """``(m·O, m·O)`` kernel ``J Jᵀ`` with sample-major rows. The one PL bounds need."""
    TRACE = "trace"
    """``(m, m)`` mean over outputs of the per-output kernels. ``O×`` smaller than full."""
    DIAGONAL = "diagonal"
    """``(m, m, O)``: one ``(m, m)`` kernel per output, cross-output blocks dropped."""
    PSEUDO = "pseudo"
    """``(m, m)`` kernel of the summed logits ``Σ_a f_a / √O`` (pNTK); about ``O×`` cheaper."""
    LOSS_GRAM = "loss_gram"
    """``(m, m)`` Gram of per-sample loss gradients ``∇_θℓ_iᵀ∇_θℓ_j``, given ``output_weights=g`` with
    ``g_i = ∂ℓ_i/∂f_i``: the kernel of the scalar model ``⟨g_i, f(θ, x_i)⟩`` (``g`` held fixed), as
    cheap as the pseudo kernel (one output per sample, never the full kernel)."""


_SCALAR_KINDS = (NTKKind.PSEUDO, NTKKind.LOSS_GRAM)
"""Kinds computed on one (weighted) output per sample."""


class NTKImplementation(str, Enum):
    """How :func:`empirical_ntk` computes the kernel. All give the same numbers.

    Costs below are for one ``m1 × m2`` block with ``P`` trainable parameters, ``O`` outputs
    (``O = 1`` for ``"pseudo"`` and ``"loss_gram"``), ``Q = O²`` output pairs for ``"full"`` and
    ``Q = O`` for the other kinds, ``A`` activations per sample and ``F`` the cost of one forward pass of one
    sample. ``chunk_size`` (or ``max_memory_bytes``) bounds ``m1`` and ``m2`` per block.

    With ``norm_mode="train"`` the kernel is that of one batch Jacobian ``∂f(θ, X)/∂θ``
    (``m·O × P``, samples mixed by the batch statistics): Jacobian contraction (and structured,
    which falls back to it) builds it from ``m·O`` vector-Jacobian products of the whole batch,
    ``≈ 3·m²·O·F`` plus the ``(m·O)²·P`` contraction, memory ``≈ 2·m·O·P + chunk·O·m·A``;
    NTK-vector products compute ``J Jᵀ e`` for every output ``e`` (``≈ 6·m²·O·F``) and never
    store the Jacobian.
    """

    AUTO = "auto"
    """Time every implementation that fits the memory budget once on a small sub-probe (4 then
    32 samples), extrapolate to the probe size with the fitted power law, keep the fastest.
    The choice is cached per (model architecture, probe shapes, kind, dtype, device, chunking,
    budget); see :func:`resolve_implementation`."""
    JACOBIAN_CONTRACTION = "jacobian_contraction"
    """Materialise per-sample Jacobians with ``vmap(jacrev)`` and contract them with one
    matrix product. Time ``≈ 3·O·(m1 + m2)·F + m1·m2·Q·P`` flops; memory
    ``≈ (m1 + 2·m2)·O·P + m·O·A`` numbers. Fast for small models; the contraction dominates
    for wide ones (MLP 784-512-512-10, 64 samples, full kernel: 274 GFLOP)."""
    NTK_VECTOR_PRODUCTS = "ntk_vector_products"
    """Never store a Jacobian: for every probe output compute ``J(x2) J(x1)ᵀ e`` as a
    vector-Jacobian product followed by a Jacobian-vector product. Time
    ``≈ m1·O·(3 + 3·m2)·F``; memory ``≈ 2·m1·O·P + 4·m1·m2·O·max layer activation`` numbers.
    Pick it when the model is cheap to evaluate and the Jacobian would not fit. Needs forward-mode
    AD of every op (CPU flash attention has none: build HuggingFace models with
    ``attn_implementation="eager"``; ``"auto"`` skips it where it fails).

    Both implementations above ``vmap`` the model over samples; a model that ``vmap`` cannot
    batch (data-dependent control flow such as ``if attention_mask.all():`` in HuggingFace
    attention-mask code) is evaluated sample by sample instead, automatically (same numbers,
    slower)."""
    STRUCTURED = "structured"
    """Per-layer factorisation, never a per-sample parameter gradient where it can be avoided
    (module :mod:`lightning_lplr.functional._structured`). All output cotangents ``δ`` of a
    chunk come from ``O`` batched vector-Jacobian products (``≈ 3·O·m·F``). Then, per
    ``nn.Linear`` / ``nn.Conv2d`` with ``T`` positions, ``d_in`` inputs (patch size) and
    ``d_out`` outputs, the cheaper of: the Gram form ``K = ⟨h_i, h_j⟩·⟨δ_ia, δ_jb⟩`` at
    ``m1·m2·(d_in + Q·d_out)`` flops for ``T = 1`` and ``m1·m2·T·(T·d_in + T·O·d_out + Q·d_out)``
    otherwise, or per-sample gradients at ``(m1 + m2)·O·T·d_out·d_in + m1·m2·Q·d_out·d_in``.
    BatchNorm (eval mode or ``norm_mode="probe"``) affine parameters get their per-sample gradients directly
    (``m·O·A_l``); other single-call modules (LayerNorm, custom layers) from a local product of
    that module alone (``m·O`` module evaluations);
    anything else (tied weights, a module called twice, a plain callable's own tensors)
    falls back to Jacobian contraction restricted to those parameters. Memory
    ``≈ m·(T·d_in + O·T·d_out)`` per Gram layer and ``m·O·P_l`` per gradient layer. Exact for
    any model whose samples are independent (every ``norm_mode`` but ``"train"``, whose batch
    Jacobian this implementation computes by Jacobian contraction). Pick it for dense layers (``T``
    small): MLP above ≈ 0.9 GFLOP, measured ≈ 460× faster than Jacobian contraction on two
    CPU cores. Convolutions with many positions use per-sample gradients, i.e. the Jacobian,
    so a CNN gains only from batching (ResNet-20, 32 samples: ≈ 1.2×)."""


_TRIAL_SIZES = (4, 32)
"""Sub-probe sizes of the timed trial behind ``auto``."""
_TRIAL_KEEP = 4.0
"""After the first trial size, candidates slower than this factor times the best are dropped."""
_BUDGET_MARGIN = 0.9
"""Chunks are sized to this fraction of ``max_memory_bytes`` (allocator slack, estimate error)."""
_AUTO_CACHE_SIZE = 128
_AUTO_CACHE: OrderedDict[tuple[Any, ...], NTKImplementation] = OrderedDict()


def _enum_value(enum_cls: type[Enum], value: Any, argument: str) -> Any:
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)  # type: ignore[attr-defined]
        raise ValueError(f"{argument}={value!r} is not a known {argument}; pass one of {allowed}.") from None


class _Backend(Protocol):
    """An implementation: per-chunk ``features`` then a ``contract`` of two chunks' features.

    ``contract`` returns the kernel block in canonical form: full ``(b1, O, b2, O)``,
    trace ``(b1, b2)``, diagonal ``(b1, b2, O)``, pseudo and loss_gram ``(b1, b2)``; for the
    scalar kinds the backend works on the scalar target so ``O`` is 1 internally. ``features``
    receives a chunk of the target's data (the inputs, or ``(inputs, weights)`` for a weighted
    target, see :class:`~lightning_lplr.functional._problem.Target`). ``configure`` is told the
    block sizes before the first ``features`` call; ``memory_bytes`` estimates the peak memory of
    one block (features of both chunks, temporaries, the block itself).
    """

    def configure(self, b1: int, b2: int) -> None: ...

    def memory_bytes(self, b1: int, b2: int) -> int: ...

    def features(self, data: Any) -> Any: ...

    def contract(self, f1: Any, f2: Any) -> Tensor: ...


def _pairs(kind: NTKKind, outputs: int) -> int:
    return outputs * outputs if kind is NTKKind.FULL else outputs


# ----------------------------------------------------------------------------------------------
# Memory formulas (pure functions of the sizes; the backends and functional.memory use them)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sizes:
    """What the memory formulas need to know about a model, a probe and a target."""

    outputs: int
    """Outputs of the target per sample: ``O``, or 1 for the scalar kinds."""
    parameters: int
    activation_numel: int
    """Per-sample numel of all leaf-module outputs in one forward."""
    max_activation_numel: int
    """Per-sample numel of the largest leaf-module output."""
    itemsize: int
    selected: bool = False
    """Masked full kernel: each block is copied once more when its kept rows are selected."""


def _sizes(problem: Problem, target: Target, selected: bool = False) -> _Sizes:
    return _Sizes(
        target.outputs,
        problem.parameter_count(),
        problem.activation_numel,
        problem.max_activation_numel,
        problem.itemsize,
        selected,
    )


def _jacobian_contraction_bytes(s: _Sizes, kind: NTKKind, b1: int, b2: int) -> int:
    """Peak bytes of one ``b1 × b2`` block by Jacobian contraction."""
    o, p, a = s.outputs, s.parameters, s.activation_numel
    jac = (b1 + 2 * b2) * o * p  # one chunk held while the other is built (dict + concatenation)
    if kind is NTKKind.DIAGONAL:
        jac += (b1 + b2) * o * p  # einsum's permuted copies
    work = max(b1, b2) * a * (1 + o)  # activations and the O-fold vmapped backward
    block = (3 if s.selected else 2) * b1 * b2 * _pairs(kind, o)
    return (jac + work + block) * s.itemsize


def _ntk_vector_products_bytes(s: _Sizes, kind: NTKKind, b1: int, b2: int) -> int:
    """Peak bytes of one ``b1 × b2`` block by NTK-vector products."""
    o, p = s.outputs, s.parameters
    a, amax = s.activation_numel, s.max_activation_numel
    block = (3 if s.selected else 2) * b1 * b2 * o * o
    numbers = 2 * b1 * o * p + 4 * b1 * o * b2 * amax + 2 * b1 * a + block
    return numbers * s.itemsize


def _kernel_numel(kind: NTKKind, m1: int, m2: int, outputs: int, rows1: int, rows2: int) -> int:
    """Entries of the returned kernel (``rows``: kept rows of a full kernel, ``m·O`` unmasked)."""
    if kind is NTKKind.FULL:
        return rows1 * rows2
    if kind is NTKKind.DIAGONAL:
        return m1 * m2 * outputs
    return m1 * m2


def _batch_bytes(s: _Sizes, kind: NTKKind, m: int, chunk: int, impl: NTKImplementation, kernel: int) -> int:
    """Peak bytes of the batch kernel (``norm_mode="train"``) with ``chunk`` samples' rows at once.

    ``kernel`` is the numel of the returned kernel.
    """
    o, p, a = s.outputs, s.parameters, s.activation_numel
    if impl is NTKImplementation.NTK_VECTOR_PRODUCTS:
        # Per column: a parameter cotangent, the batch's forward-mode tangents and a kernel column.
        numbers = chunk * o * (p + 2 * m * a + m * o) + m * a + 2 * kernel
    else:
        # The Jacobian (and its concatenation), the vmapped backward of ``chunk·O`` output rows.
        numbers = 2 * m * o * p + chunk * o * m * a + m * a + 2 * kernel
    return numbers * s.itemsize


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


class _JacobianContraction:
    def __init__(self, problem: Problem, kind: NTKKind, target: Target | None = None) -> None:
        self.problem = problem
        self.kind = kind
        self.target = target or Target(problem, scalar=kind in _SCALAR_KINDS, weighted=False)
        self.outputs = self.target.outputs
        self.selected = False

    def configure(self, b1: int, b2: int) -> None:
        pass

    def memory_bytes(self, b1: int, b2: int) -> int:
        return _jacobian_contraction_bytes(
            _sizes(self.problem, self.target, self.selected), self.kind, b1, b2
        )

    def features(self, data: Any) -> Tensor:
        params, single = self.problem.params, self.target.single
        jac = self.problem.map_samples(lambda d: jacrev(single)(params, d), data)
        b = sample_count(data)
        # (b, O, P) with the parameters concatenated in a fixed order.
        return torch.cat([j.reshape(b, j.shape[1], -1) for j in jac.values()], dim=2)

    def contract(self, j1: Tensor, j2: Tensor) -> Tensor:
        return _contract_jacobians(j1, j2, self.kind)


def _contract_jacobians(j1: Tensor, j2: Tensor, kind: NTKKind) -> Tensor:
    """The kernel block of Jacobians ``(b1, O, P)`` and ``(b2, O, P)`` in canonical form.

    For the scalar kinds (pseudo, loss_gram) ``O = 1``.
    """
    b1, o, p = j1.shape
    b2 = j2.shape[0]
    if kind is NTKKind.FULL:
        return (j1.reshape(b1 * o, p) @ j2.reshape(b2 * o, p).T).reshape(b1, o, b2, o)
    if kind is NTKKind.TRACE:
        return (j1.reshape(b1, o * p) @ j2.reshape(b2, o * p).T) / o
    if kind is NTKKind.DIAGONAL:
        return torch.einsum("iap,jap->ija", j1, j2)
    return j1[:, 0] @ j2[:, 0].T  # pseudo, loss_gram: j has O = 1


class _NTKVectorProducts:
    def __init__(self, problem: Problem, kind: NTKKind, target: Target | None = None) -> None:
        self.problem = problem
        self.kind = kind
        self.target = target or Target(problem, scalar=kind in _SCALAR_KINDS, weighted=False)
        self.outputs = self.target.outputs
        self.selected = False

    def configure(self, b1: int, b2: int) -> None:
        pass

    def memory_bytes(self, b1: int, b2: int) -> int:
        return _ntk_vector_products_bytes(_sizes(self.problem, self.target, self.selected), self.kind, b1, b2)

    def features(self, data: Any) -> Any:
        return data

    def contract(self, d1: Any, d2: Any) -> Tensor:
        params = self.problem.params
        single, batched = self.target.single, self.target.batched

        def row(di: Any) -> Tensor:
            out, vjp_fn = vjp(lambda p: single(p, di), params)

            def column(v: Tensor) -> Tensor:
                (cotangent,) = vjp_fn(v)
                _, tangent_out = jvp(lambda p: batched(p, d2), (params,), (cotangent,))
                return tangent_out  # (b2, O): J(x2) J(xi)ᵀ v

            basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
            return vmap(column)(basis)  # (O, b2, O)

        k = self.problem.map_samples(row, d1)  # (b1, O, b2, O): k[i, a, j, b] = <J_a(x1_i), J_b(x2_j)>
        return _of_kind(k, self.kind)


def _of_kind(k: Tensor, kind: NTKKind) -> Tensor:
    """The ``kind`` kernel of the full blocks ``k[i, a, j, b] = <J_a(x1_i), J_b(x2_j)>`` (full: ``k``)."""
    if kind is NTKKind.FULL:
        return k
    if kind in _SCALAR_KINDS:
        return k[:, 0, :, 0]
    diag = torch.diagonal(k, dim1=1, dim2=3)  # (b1, b2, O)
    return diag.mean(dim=2) if kind is NTKKind.TRACE else diag


_BACKENDS: dict[NTKImplementation, Callable[..., _Backend]] = {
    NTKImplementation.JACOBIAN_CONTRACTION: _JacobianContraction,
    NTKImplementation.NTK_VECTOR_PRODUCTS: _NTKVectorProducts,
    NTKImplementation.STRUCTURED: _structured.Structured,
}
"""``implementation -> factory(problem, kind, target)``."""


def _largest_chunk(estimate: Callable[[int, int], int], m1: int, m2: int, available: int) -> int | None:
    """The largest chunk size whose block estimate fits in ``available`` bytes; ``None`` if 1 does not."""

    def at(c: int) -> int:
        return estimate(min(c, m1), min(c, m2))

    if at(1) > available:
        return None
    lo, hi = 1, max(m1, m2)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if at(mid) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


_MEMINFO = "/proc/meminfo"


def _available_memory(device: torch.device) -> int | None:
    """Memory this process could still allocate on ``device``, in bytes; ``None`` if unknown.

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds reserved but not
    allocated (``mem_get_info()[0] + memory_reserved() − memory_allocated()``). CPU: ``MemAvailable``
    of ``/proc/meminfo`` (else the available physical pages).
    """
    if device.type == "cuda":
        free = int(torch.cuda.mem_get_info(device)[0])
        cached = int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device))
        return free + max(cached, 0)
    with contextlib.suppress(OSError, ValueError), open(_MEMINFO) as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return None


def _plan_chunks(
    estimate: Callable[[int, int], int],
    kernel_bytes: int,
    kind: NTKKind,
    m1: int,
    m2: int,
    chunk_size: int | None,
    budget: int | None,
    what: str,
) -> int | None:
    """The chunk size: ``chunk_size`` if given, else derived from ``budget`` (``None``: no chunking).

    ``estimate(b1, b2)`` is the peak bytes of one block and ``kernel_bytes`` those of the result.
    """
    if chunk_size is not None or budget is None:
        return chunk_size
    available = int(_BUDGET_MARGIN * budget) - kernel_bytes
    chunk = _largest_chunk(estimate, m1, m2, available)
    if chunk is None:
        need = estimate(1, 1) + kernel_bytes
        raise ValueError(
            f"max_memory_bytes={budget} is too small for {what}: "
            f"one sample per chunk needs about {need} bytes "
            f"(the {kind.value} kernel alone takes {kernel_bytes}). Raise "
            "max_memory_bytes, use a smaller probe, kind='pseudo', or another implementation."
        )
    return None if chunk >= max(m1, m2) else chunk


@dataclass
class _Side:
    """One probe of a kernel: the target's data and, for a masked full kernel, the kept outputs."""

    data: Any
    """The inputs, or ``(inputs, weights (m, O))`` for a weighted target."""
    keep: Tensor | None
    """``(m, O)`` bool: the outputs kept in the rows of a masked full kernel; ``None``: all."""
    size: int

    def rows(self, outputs: int) -> int:
        """Rows of this side in a full kernel."""
        return self.size * outputs if self.keep is None else int(self.keep.sum())

    def head(self, n: int) -> _Side:
        """The first ``n`` samples."""
        keep = None if self.keep is None else self.keep[:n]
        return _Side(index_samples(self.data, slice(0, n)), keep, min(n, self.size))


def _run(
    backend: _Backend,
    target: Target,
    kind: NTKKind,
    side1: _Side,
    side2: _Side | None,
    chunk: int | None,
) -> Tensor:
    m1 = side1.size
    m2 = m1 if side2 is None else side2.size
    backend.configure(min(m1, chunk or m1), min(m2, chunk or m2))
    with full_precision():
        return _assemble(backend, side1, side2, kind, chunk, target)


def resolve_implementation(
    model: nn.Module | ModelFn,
    x1: Inputs,
    x2: Inputs | None = None,
    *,
    params: Mapping[str, Tensor] | None = None,
    kind: NTKKind | str = "full",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    norm_mode: NormMode | str | None = None,
    norm_statistics: Inputs | NormStatistics | None = None,
    output_mask: OutputMask | None = None,
    output_mask2: OutputMask | None = None,
    output_weights: Tensor | None = None,
    output_weights2: Tensor | None = None,
) -> NTKImplementation:
    """The implementation that ``implementation="auto"`` picks for these arguments.

    The arguments mean what they mean in :func:`empirical_ntk`.

    With ``norm_mode="train"`` (one batch Jacobian) nothing is timed: Jacobian contraction when
    the Jacobian fits the budget (else the free memory of the device), NTK-vector products
    otherwise.

    The rule is a measurement, not a guess: every implementation whose memory estimate fits
    the budget (``max_memory_bytes``, else the free memory of the device) is timed on the first
    4 probe samples, those within 4× of the best again on the first 32, and the time at the
    full probe size is extrapolated with the power law through the two measurements (exponent
    clamped to [1, 2]). The fastest wins. The answer is cached per model architecture, probe
    structure and shapes, kind, dtype, device, ``chunk_size`` and budget, so the trial runs once.

    Returns:
        The chosen implementation (never ``AUTO``).

    Raises:
        ValueError: no implementation fits ``max_memory_bytes``, or any argument error of
            :func:`empirical_ntk`.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> chosen = resolve_implementation(net, torch.randn(5, 3))
        >>> chosen in set(NTKImplementation) - {NTKImplementation.AUTO}
        True
    """
    prep = _prepare(
        model,
        params,
        x1,
        x2,
        kind,
        chunk_size,
        max_memory_bytes,
        norm_mode,
        norm_statistics,
        output_mask,
        output_mask2,
        output_weights,
        output_weights2,
    )
    if prep.problem.norm_mode == NormMode.TRAIN.value:
        return _plan_batch(prep, NTKImplementation.AUTO, chunk_size, max_memory_bytes)[0]
    return _resolve(prep, chunk_size, max_memory_bytes)[0]


def _resolve(
    prep: _Prepared, chunk_size: int | None, budget: int | None
) -> tuple[NTKImplementation, Tensor | None]:
    """``auto``: the chosen implementation and, when the trial already computed it, the kernel."""
    problem, kind = prep.problem, prep.kind
    m1, m2 = prep.m1, prep.m2
    key = (
        problem.architecture(),
        input_signature(prep.side1.data),
        m1,
        None if prep.side2 is None else m2,
        kind,
        prep.target.weighted,
        prep.selected,
        problem.dtype,
        str(problem.device),
        chunk_size,
        budget,
    )
    cached = _AUTO_CACHE.get(key)
    if cached is not None:
        _AUTO_CACHE.move_to_end(key)
        return cached, None
    limit = budget if budget is not None else _available_memory(problem.device)
    out_bytes = prep.kernel_bytes()
    candidates: list[tuple[NTKImplementation, _Backend, int | None]] = []
    errors: list[str] = []
    for impl in _BACKENDS:
        try:
            backend = prep.backend(impl)
        except Exception as err:  # not applicable to this model
            errors.append(f"{impl.value}: {type(err).__name__}: {err}")
            continue
        chunk = chunk_size
        if limit is not None:
            b1, b2 = min(m1, chunk or m1), min(m2, chunk or m2)
            if chunk is None and (budget is not None or backend.memory_bytes(b1, b2) + out_bytes > limit):
                chunk = _largest_chunk(backend.memory_bytes, m1, m2, int(_BUDGET_MARGIN * limit) - out_bytes)
                if chunk is None:
                    errors.append(f"{impl.value}: estimated memory exceeds {limit} bytes")
                    continue
                chunk = None if chunk >= max(m1, m2) else chunk
            elif chunk is not None and backend.memory_bytes(b1, b2) + out_bytes > limit:
                errors.append(f"{impl.value}: estimated memory exceeds {limit} bytes at chunk_size={chunk}")
                continue
        candidates.append((impl, backend, chunk))
    if not candidates:
        raise ValueError(
            f"no NTK implementation fits max_memory_bytes={budget} for this probe: " + "; ".join(errors)
        )
    chosen, kernel = _timed_trial(prep, candidates)
    _AUTO_CACHE[key] = chosen
    while len(_AUTO_CACHE) > _AUTO_CACHE_SIZE:
        _AUTO_CACHE.popitem(last=False)
    return chosen, kernel


def _timed_trial(
    prep: _Prepared, candidates: list[tuple[NTKImplementation, _Backend, int | None]]
) -> tuple[NTKImplementation, Tensor | None]:
    m1, m2 = prep.m1, prep.m2
    if len(candidates) == 1:
        return candidates[0][0], None
    sizes = sorted({min(m1, s) for s in _TRIAL_SIZES})
    times: dict[NTKImplementation, list[float]] = {}
    warm: dict[NTKImplementation, float] = {}
    results: dict[NTKImplementation, Tensor] = {}
    alive = list(candidates)
    last_error: BaseException | None = None
    for step, size in enumerate([1, *sizes]):
        survivors = []
        side = prep.side1.head(size)
        for impl, backend, chunk in alive:
            c = None if chunk is None or chunk >= size else chunk
            try:
                start = time.perf_counter()
                k = _run(backend, prep.target, prep.kind, side, None, c)
                elapsed = time.perf_counter() - start
            except Exception as err:  # e.g. an op without forward-mode AD: not applicable here
                last_error = err
                continue
            if step > 0:  # step 0 is the warm-up (plans, lazy initialisation)
                times.setdefault(impl, []).append(elapsed)
            else:
                warm[impl] = elapsed
            if size == m1 and prep.side2 is None:
                results[impl] = k
            survivors.append((impl, backend, chunk))
        if not survivors:
            assert last_error is not None
            raise last_error
        if step == 0:  # the warm-up includes one-time costs: only drop the hopeless
            best = min(warm[s[0]] for s in survivors)
            survivors = [s for s in survivors if warm[s[0]] <= 2 * _TRIAL_KEEP * best]
        elif step < len(sizes):
            best = min(times[impl][-1] for impl, _, _ in survivors)
            survivors = [s for s in survivors if times[s[0]][-1] <= _TRIAL_KEEP * best]
        alive = survivors
    target = math.sqrt(m1 * m2)

    def predicted(impl: NTKImplementation) -> float:
        t = times[impl]
        if len(t) == 1 or len(sizes) == 1:
            return t[-1] * (target / sizes[-1]) ** 2
        exponent = math.log(max(t[-1], 1e-9) / max(t[-2], 1e-9)) / math.log(sizes[-1] / sizes[-2])
        return t[-1] * (target / sizes[-1]) ** min(2.0, max(1.0, exponent))

    finalists = [impl for impl, _, _ in alive]
    chosen = min(finalists, key=predicted)
    return chosen, results.get(chosen)


def clear_auto_cache() -> None:
    """Forget the choices of ``implementation="auto"`` and the structured plans (re-measured next call).

    Example:
        >>> clear_auto_cache()
    """
    _AUTO_CACHE.clear()
    _structured.clear_plan_cache()


def _assemble(
    backend: _Backend,
    side1: _Side,
    side2: _Side | None,
    kind: NTKKind,
    chunk_size: int | None,
    target: Target,
) -> Tensor:
    symmetric = side2 is None
    s2 = side1 if side2 is None else side2
    m1, m2 = side1.size, s2.size
    o = target.problem.num_outputs
    c1 = split_samples(side1.data, chunk_size or m1)
    keep1 = None if side1.keep is None else list(torch.split(side1.keep, chunk_size or m1))
    if symmetric:
        c2, keep2 = c1, keep1
    else:
        c2 = split_samples(s2.data, chunk_size or m2)
        keep2 = None if s2.keep is None else list(torch.split(s2.keep, chunk_size or m2))
    counts1 = [sample_count(c) for c in c1]
    counts2 = [sample_count(c) for c in c2]

    def offsets(counts: list[int], keeps: list[Tensor] | None) -> list[int]:
        """Start of each chunk in the kernel's rows (plus the end)."""
        sizes = counts if kind is not NTKKind.FULL else [n * o for n in counts]
        if kind is NTKKind.FULL and keeps is not None:
            sizes = [int(k.sum()) for k in keeps]
        starts = [0]
        for n in sizes:
            starts.append(starts[-1] + n)
        return starts

    off1 = offsets(counts1, keep1)
    off2 = off1 if symmetric else offsets(counts2, keep2)
    shape = {
        NTKKind.FULL: (off1[-1], off2[-1]),
        NTKKind.DIAGONAL: (m1, m2, o),
    }.get(kind, (m1, m2))
    problem = target.problem
    out = torch.empty(shape, dtype=problem.dtype, device=problem.device)
    for i, da in enumerate(c1):
        fa = backend.features(da)
        rows = slice(off1[i], off1[i + 1])
        for j, db in enumerate(c2):
            if symmetric and j < i:
                continue  # filled by the mirror of block (j, i)
            cols = slice(off2[j], off2[j + 1])
            fb = fa if (symmetric and i == j) else backend.features(db)
            block = backend.contract(fa, fb)
            del fb
            if kind is NTKKind.FULL:
                block = _select(
                    block.reshape(counts1[i] * o, counts2[j] * o),
                    None if keep1 is None else keep1[i],
                    None if keep2 is None else keep2[j],
                )
            out[rows, cols] = block
            if symmetric and j > i:
                out[cols, rows] = block.permute(1, 0, 2) if kind is NTKKind.DIAGONAL else block.T
            del block
        del fa
    return out


def _select(block: Tensor, keep1: Tensor | None, keep2: Tensor | None) -> Tensor:
    """The rows and columns of a full kernel block ``(b1·O, b2·O)`` whose outputs are kept."""
    if keep1 is not None:
        block = block[keep1.reshape(-1)]
    if keep2 is not None:
        block = block[:, keep2.reshape(-1)]
    return block


# ----------------------------------------------------------------------------------------------
# norm_mode="train": the kernel of one batch Jacobian
# ----------------------------------------------------------------------------------------------


def _plan_batch(
    prep: _Prepared,
    implementation: NTKImplementation,
    chunk_size: int | None,
    budget: int | None,
) -> tuple[NTKImplementation, int | None]:
    """Implementation (Jacobian contraction or NTK-vector products) and chunk size of the batch kernel."""
    problem, kind, m = prep.problem, prep.kind, prep.m1
    sizes = _sizes(problem, prep.target, prep.selected)
    kernel = prep.kernel_bytes() // problem.itemsize

    def need(chunk: int, impl: NTKImplementation) -> int:
        return _batch_bytes(sizes, kind, m, chunk, impl, kernel)

    if implementation is NTKImplementation.STRUCTURED:  # no per-layer factorisation of a batch Jacobian
        implementation = NTKImplementation.JACOBIAN_CONTRACTION
    if implementation is NTKImplementation.AUTO:
        limit = budget if budget is not None else _available_memory(problem.device)
        jac = NTKImplementation.JACOBIAN_CONTRACTION
        fits = limit is None or need(chunk_size or 1, jac) <= _BUDGET_MARGIN * limit
        implementation = jac if fits else NTKImplementation.NTK_VECTOR_PRODUCTS
    if chunk_size is not None or budget is None:
        return implementation, chunk_size
    chunk = _largest_chunk(lambda c, _: need(c, implementation), m, m, int(_BUDGET_MARGIN * budget))
    if chunk is None:
        other = (
            ""
            if implementation is NTKImplementation.NTK_VECTOR_PRODUCTS
            else "implementation='ntk_vector_products' (never stores the Jacobian), "
        )
        raise ValueError(
            f"max_memory_bytes={budget} is too small for norm_mode='train' with "
            f"implementation={implementation.value!r}: one sample's output rows at a time need about "
            f"{need(1, implementation)} bytes. Raise max_memory_bytes, use a smaller probe, {other}or "
            "norm_mode='probe'."
        )
    return implementation, None if chunk >= m else chunk


def _batch_kernel(prep: _Prepared, implementation: NTKImplementation, chunk: int | None) -> Tensor:
    """The kernel of the batch Jacobian ``∂f(θ, X)/∂θ`` (train mode) in the shapes of ``empirical_ntk``."""
    problem, kind, target = prep.problem, prep.kind, prep.target
    data, keep, m = prep.side1.data, prep.side1.keep, prep.m1
    params = problem.params
    batched = target.batched
    o = target.outputs
    step = (chunk or m) * o
    if implementation is NTKImplementation.NTK_VECTOR_PRODUCTS:
        _, vjp_fn = vjp(lambda p: batched(p, data), params)

        def column(v: Tensor) -> Tensor:
            (cotangent,) = vjp_fn(v)
            return jvp(lambda p: batched(p, data), (params,), (cotangent,))[1]  # J Jᵀ v as (m, O)

        basis = torch.eye(m * o, dtype=problem.dtype, device=problem.device).reshape(m * o, m, o)
        columns = torch.cat([vmap(column)(basis[s : s + step]) for s in range(0, m * o, step)])
        # Row r of `columns` is K[:, r].
        k = _of_kind(columns.reshape(m * o, m * o).T.reshape(m, o, m, o), kind)
    else:
        rows = None if chunk is None else step
        jac = jacrev(lambda p: batched(p, data).reshape(-1), chunk_size=rows)(params)
        j = torch.cat([t.reshape(m, o, -1) for t in jac.values()], dim=2)
        del jac
        k = _contract_jacobians(j, j, kind)
    return _select(k.reshape(m * o, m * o), keep, keep) if kind is NTKKind.FULL else k


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """The checked arguments of one kernel: the model, the kind, the target and both probes."""

    problem: Problem
    kind: NTKKind
    target: Target
    side1: _Side
    side2: _Side | None

    @property
    def m1(self) -> int:
        return self.side1.size

    @property
    def m2(self) -> int:
        return self.m1 if self.side2 is None else self.side2.size

    @property
    def selected(self) -> bool:
        """A masked full kernel (blocks are reduced to their kept rows)."""
        return self.side1.keep is not None or (self.side2 is not None and self.side2.keep is not None)

    def kernel_bytes(self) -> int:
        o = self.problem.num_outputs
        rows1 = self.side1.rows(o)
        rows2 = rows1 if self.side2 is None else self.side2.rows(o)
        return _kernel_numel(self.kind, self.m1, self.m2, o, rows1, rows2) * self.problem.itemsize

    def backend(self, implementation: NTKImplementation) -> _Backend:
        backend = _BACKENDS[implementation](self.problem, self.kind, self.target)
        backend.selected = self.selected  # type: ignore[attr-defined]
        return backend


def _prepare(
    model: Any,
    params: Any,
    x1: Any,
    x2: Any,
    kind: Any,
    chunk_size: int | None,
    max_memory_bytes: int | None,
    norm_mode: Any = None,
    norm_statistics: Any = None,
    output_mask: Any = None,
    output_mask2: Any = None,
    output_weights: Any = None,
    output_weights2: Any = None,
) -> _Prepared:
    """The checked arguments shared by :func:`empirical_ntk` and :func:`resolve_implementation`."""
    kind = _enum_value(NTKKind, kind, "kind")
    _check_positive("chunk_size", chunk_size)
    _check_positive("max_memory_bytes", max_memory_bytes)
    x1 = as_inputs(x1, "x1")
    x2 = None if x2 is None else as_inputs(x2, "x2")
    _check_output_arguments(kind, x2 is not None, output_mask, output_mask2, output_weights, output_weights2)
    norm = _norm_override(model, params, x1, x2, mode_value(norm_mode), norm_statistics)
    problem = Problem(model, params, x1, x2, norm=norm)
    x1 = move_inputs(x1, problem.device)
    x2 = None if x2 is None else move_inputs(x2, problem.device)
    keep1 = _output_mask(output_mask, x1, problem, "output_mask")
    keep2 = g2 = None
    if x2 is not None:
        keep2 = _output_mask(
            output_mask if callable(output_mask) else output_mask2, x2, problem, "output_mask2"
        )
        g2 = (
            None
            if output_weights2 is None
            else _output_weights(output_weights2, x2, problem, "output_weights2")
        )
    g1 = None if output_weights is None else _output_weights(output_weights, x1, problem, "output_weights")
    o = problem.num_outputs

    def weights(keep: Tensor | None, g: Tensor | None) -> Tensor | None:
        if kind is NTKKind.LOSS_GRAM:
            assert g is not None
            return g if keep is None else g * keep
        if keep is None or kind is NTKKind.FULL:
            return None
        kept = keep.to(problem.dtype)
        if kind is NTKKind.DIAGONAL:
            return kept
        count = kept.sum(dim=1, keepdim=True)
        # trace: the backends divide by O, so √(O/k_i) per side gives Σ_{a kept} J_ia J_jaᵀ / √(k_i k_j).
        scale = torch.sqrt((o if kind is NTKKind.TRACE else 1.0) / count.clamp(min=1.0))
        return kept * torch.where(count > 0, scale, torch.zeros_like(scale))

    w1, w2 = weights(keep1, g1), (weights(keep2, g2) if x2 is not None else None)
    weighted = w1 is not None
    target = Target(problem, scalar=kind in _SCALAR_KINDS, weighted=weighted)
    full = kind is NTKKind.FULL
    m1 = sample_count(x1)
    side1 = _Side((x1, w1) if weighted else x1, keep1 if full else None, m1)
    side2 = None
    if x2 is not None:
        side2 = _Side((x2, w2) if weighted else x2, keep2 if full else None, sample_count(x2))
    return _Prepared(problem, kind, target, side1, side2)


def _check_output_arguments(
    kind: NTKKind, cross: bool, mask: Any, mask2: Any, weights: Any, weights2: Any
) -> None:
    """Which of the mask and weight arguments go together (checked before any forward)."""
    if weights is not None and kind is not NTKKind.LOSS_GRAM:
        raise ValueError(
            f"output_weights is given but kind={kind.value!r}; the weights define kind='loss_gram' "
            "(the Gram of per-sample loss gradients). Pass kind='loss_gram' or drop output_weights."
        )
    if kind is NTKKind.LOSS_GRAM and weights is None:
        raise ValueError(
            "kind='loss_gram' needs output_weights=g, the per-sample loss gradients g_i = ∂ℓ_i/∂f_i with the "
            "shape of the model outputs (m, *out), e.g. softmax(logits) - one_hot(y) for cross-entropy."
        )
    if not cross:
        for name, value in (("output_mask2", mask2), ("output_weights2", weights2)):
            if value is not None:
                raise ValueError(
                    f"{name} is given but x2 is None; it describes the second probe x2. Drop {name} "
                    f"(output_{name[7:-1]} covers x1 and the symmetric kernel)."
                )
        return
    if kind is NTKKind.LOSS_GRAM and weights2 is None:
        raise ValueError(
            "kind='loss_gram' with x2 needs output_weights2, the loss gradients of the x2 samples (m2, *out)."
        )
    if callable(mask) and not isinstance(mask, Tensor):
        if mask2 is not None:
            raise ValueError(
                "output_mask is a callable, applied to x2 as well; drop output_mask2 (or pass tensors for "
                "both)."
            )
    elif (mask is None) != (mask2 is None):
        given, missing = ("output_mask", "output_mask2") if mask2 is None else ("output_mask2", "output_mask")
        raise ValueError(
            f"{given} is given but {missing} is None; with x2, pass a mask for each probe (a mask of all "
            "True keeps every output) or a callable output_mask=lambda inputs: mask, applied to both."
        )


def _output_mask(mask: Any, x: Inputs, problem: Problem, argument: str) -> Tensor | None:
    """``(m, O)`` bool of the kept outputs, or ``None`` for no mask."""
    if mask is None:
        return None
    source = argument
    if callable(mask) and not isinstance(mask, Tensor):
        mask = mask(x)
        source = "output_mask(inputs)"
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{source} must be a tensor (bool, or 0/1 values) or a callable returning one; got "
            f"{type(mask).__name__}."
        )
    m, out, o = sample_count(x), problem.output_shape, problem.num_outputs
    keep = mask.detach().to(problem.device)
    if keep.dtype != torch.bool:
        if keep.is_complex() or not bool(((keep == 0) | (keep == 1)).all()):
            raise ValueError(
                f"{source} has values other than 0 and 1; pass a bool mask (True keeps the output), e.g. "
                "attention_mask.bool() or labels != -100."
            )
        keep = keep != 0
    shape = tuple(keep.shape)
    if shape == (m, o):
        return keep
    if keep.ndim >= 1 and shape[0] == m and keep.ndim - 1 <= len(out):
        padded = keep.reshape(*shape, *([1] * (len(out) - keep.ndim + 1)))
        with contextlib.suppress(RuntimeError):
            return padded.expand(m, *out).reshape(m, o)
    raise ValueError(
        f"{source} has shape {shape}; expected (m, O) = {(m, o)} or a shape that broadcasts to the outputs "
        f"(m, *out) = {(m, *out)} with missing trailing dimensions broadcast (e.g. (m, L) for logits "
        "(m, L, V))."
    )


def _output_weights(g: Any, x: Inputs, problem: Problem, argument: str) -> Tensor:
    """``(m, O)`` per-sample output weights in the parameters' dtype."""
    if not isinstance(g, Tensor):
        raise TypeError(
            f"{argument} must be a tensor of the outputs' shape (m, *out); got {type(g).__name__}."
        )
    m, out, o = sample_count(x), problem.output_shape, problem.num_outputs
    if tuple(g.shape) not in ((m, *out), (m, o)):
        raise ValueError(
            f"{argument} has shape {tuple(g.shape)}; expected the outputs' shape (m, *out) = {(m, *out)} "
            f"(or flattened (m, O) = {(m, o)}): one loss gradient per sample and output."
        )
    w = g.detach().to(device=problem.device, dtype=problem.dtype).reshape(m, o)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{argument} has non-finite entries; the loss gradients must be finite.")
    return w


def _norm_override(
    model: Any, params: Any, x1: Inputs, x2: Inputs | None, mode: NormMode | None, statistics: Any
) -> NormOverride | None:
    """The normalisation override of ``mode`` (``None``: none), probe statistics computed or checked."""
    if mode is None or mode is not NormMode.PROBE:
        if statistics is not None:
            raise ValueError(
                f"norm_statistics is given but norm_mode={None if mode is None else mode.value!r}; "
                "statistics are used only with norm_mode='probe'. Pass norm_mode='probe' or drop "
                "norm_statistics."
            )
        if mode is None:
            return None
        if mode is NormMode.TRAIN and x2 is not None:
            raise ValueError(
                "norm_mode='train' computes the kernel of one batch (the Jacobian of its outputs through the "
                "batch statistics), so x2 must be None; pass the whole probe as x1."
            )
        if mode is NormMode.EVAL and isinstance(model, nn.Module):
            check_eval_mode(model)
        return NormOverride(mode)
    if statistics is None:
        if x2 is not None:
            raise ValueError(
                "norm_mode='probe' with x2 needs the batch whose statistics define the function: pass "
                "norm_statistics=<the whole probe inputs> or norm_statistics=probe_statistics(model, probe)."
            )
        statistics = x1
    if not isinstance(statistics, NormStatistics):
        inputs = _same_structure(statistics, x1)
        if inputs is None:
            raise TypeError(
                "norm_statistics must be a tensor of inputs or a NormStatistics from probe_statistics() "
                f"(inputs: a batch with the structure of x1); got {type(statistics).__name__}."
            )
        source = params
        if source is None:
            source = trainable_params(model) if isinstance(model, nn.Module) else {}
        first = next((v for v in source.values() if isinstance(v, Tensor)), None) if source else None
        if first is not None:
            inputs = move_inputs(inputs, first.device)
        statistics = probe_statistics(model, inputs, params=params)
    return NormOverride(mode, statistics)


def _same_structure(candidate: Any, x: Inputs) -> Inputs | None:
    """``candidate`` as a batch if it has the structure of ``x``, else ``None``."""
    try:
        inputs = as_inputs(candidate, "norm_statistics")
    except (TypeError, ValueError):
        return None
    return inputs if input_signature(inputs)[0] == input_signature(x)[0] else None


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        what = "chunking" if name == "chunk_size" else "no memory budget"
        raise ValueError(f"{name}={value!r} must be a positive int (or None for {what}).")


def empirical_ntk(
    model: nn.Module | ModelFn,
    x1: Inputs,
    x2: Inputs | None = None,
    *,
    params: Mapping[str, Tensor] | None = None,
    kind: NTKKind | str = "full",
    implementation: NTKImplementation | str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    norm_mode: NormMode | str | None = None,
    norm_statistics: Inputs | NormStatistics | None = None,
    output_mask: OutputMask | None = None,
    output_mask2: OutputMask | None = None,
    output_weights: Tensor | None = None,
    output_weights2: Tensor | None = None,
) -> Tensor:
    """Empirical NTK ``J(x1) J(x2)ᵀ`` of a model at its current (or given) parameters.

    The model is evaluated through ``torch.func.functional_call`` on detached
    parameters, so nothing the optimizer sees is touched and no ``.grad`` is
    written; train/eval flags, buffers and the global RNG are left as they were.

    Inputs may be pytrees (see the module docstring): a dict reaches an ``nn.Module`` as keyword
    arguments, a tuple or list as positional arguments; a plain callable gets the pytree as is.

    Which function's kernel, for normalisation layers (``norm_mode``, see :class:`NormMode`):

    * ``None`` (default): the model as it is. The NTK is then a per-sample quantity: a module
      with BatchNorm in training mode (or without running statistics) or active dropout is
      rejected, call ``model.eval()`` first. A plain callable is evaluated as given, so it must
      treat samples independently too.
    * ``"probe"``: BatchNorm normalises with the batch statistics of ``norm_statistics`` (default:
      of ``x1``) at these parameters, held constant; the per-sample kernel of that function.
      For rows ``x1`` of a probe against the whole probe ``x2``, pass the whole probe (or its
      :func:`probe_statistics`) as ``norm_statistics``: the block then equals those rows of
      the whole kernel.
    * ``"train"``: the exact Jacobian of the batch ``x1``'s outputs in training mode, through
      the batch statistics (``x2`` must be ``None``; about ``m×`` the cost; ``"structured"``
      computes it by Jacobian contraction, ``"auto"`` picks Jacobian contraction or, when the
      Jacobian does not fit in memory, NTK-vector products).
    * ``"eval"``: BatchNorm with its running statistics, per sample.

    In the three modes dropout is off and the module may be in training mode: the
    modes are applied during each forward only, running statistics are never updated, and
    flags and buffers are as before afterwards. SyncBatchNorm is treated as BatchNorm.

    Args:
        model: an ``nn.Module`` (its ``requires_grad=True`` parameters are
            differentiated; frozen parameters and buffers are used as they are) or a
            callable ``f(params, x)`` over a batch, in which case ``params`` is required. Its
            output must be a tensor ``(b, *out)``.
        x1: probe inputs: a tensor ``(m1, *input_shape)`` or a tuple/list/dict of tensors with
            the leading sample dimension ``m1`` (e.g. ``{"input_ids": ..., "attention_mask": ...}``).
        x2: second probe with the structure and per-sample shapes of ``x1``, ``m2`` samples;
            ``None`` for the symmetric kernel of ``x1`` with itself (computed once per block
            pair and mirrored).
        params: dict ``name -> tensor`` of the parameters to differentiate,
            overriding the module's (for a module, names as in ``named_parameters``).
        kind: ``"full"``, ``"trace"``, ``"diagonal"``, ``"pseudo"`` or ``"loss_gram"``; see
            :class:`NTKKind`.
        implementation: see :class:`NTKImplementation`; ``"auto"`` times the candidates
            once (see :func:`resolve_implementation`) and caches the choice.
        chunk_size: process at most this many samples of each probe at a time, to
            bound memory. The result does not depend on it.
        max_memory_bytes: memory budget of the computation in bytes (the returned kernel,
            the features of the chunks in flight and the temporaries; not the model and
            the probe themselves). When ``chunk_size`` is ``None`` the chunk size is
            derived from it with the implementation's memory estimate; ``"auto"`` skips
            implementations that cannot fit it. ``None``: no budget. With
            ``norm_mode="train"`` the chunk is the number of samples whose output rows are
            differentiated at once (the batch Jacobian itself is kept whole by Jacobian
            contraction and never stored by NTK-vector products).
        norm_mode: ``None``, ``"probe"``, ``"train"`` or ``"eval"``; see above and :class:`NormMode`.
        norm_statistics: ``norm_mode="probe"`` only: the inputs whose batch statistics define
            the function (a batch with the structure of ``x1``, e.g. the whole probe), or
            statistics already computed by :func:`probe_statistics` (e.g. broadcast from another
            rank). ``None``: those of ``x1``, allowed only when ``x2`` is ``None``.
        output_mask: the outputs of ``x1`` to keep (see the module docstring for what each kind
            becomes): a tensor of bools (or 0/1) of shape ``(m1, O)`` or of a shape that
            broadcasts to the outputs ``(m1, *out)`` once missing trailing dimensions are added
            (``(m1, L)`` for logits ``(m1, L, V)``: a per-position mask over the vocabulary), or a
            callable ``inputs -> such a tensor`` applied to ``x1`` and to ``x2`` (e.g.
            ``lambda x: x["attention_mask"].bool()``). For ``kind="full"`` masked outputs are
            computed and then dropped: a mask shrinks the kernel, not the Jacobian.
        output_mask2: the tensor mask of ``x2`` (required with a tensor ``output_mask`` and
            ``x2``; not with a callable one).
        output_weights: ``kind="loss_gram"`` only (and required there): ``g`` of the outputs'
            shape ``(m1, *out)`` (or ``(m1, O)``), ``g_i = ∂ℓ_i/∂f(θ, x_i)``. The kernel is then
            ``G_ij = ∇_θℓ_iᵀ∇_θℓ_j`` for whatever per-sample losses ``ℓ_i`` these gradients
            describe: for a summed loss ``L = Σ_i ℓ_i``, ``g = ∂L/∂f`` row by row and
            ``‖∇_θL‖² = 1ᵀ G 1``; for a mean-reduced loss the caller chooses whether to keep the
            ``1/m`` in ``g`` (``G`` then describes ``ℓ_i/m``). ``g`` is held fixed, so ``G``
            costs one backward pass per sample, like the pseudo kernel. With ``output_mask``,
            masked outputs' weights are set to zero.
        output_weights2: the loss gradients of ``x2`` (required with ``kind="loss_gram"`` and ``x2``).

    Returns:
        The kernel, with the dtype of the parameters (float64 in, float64 out) on
        their device: ``(m1·O, m2·O)`` for full (``(Σ kept outputs of x1, Σ kept of x2)`` with a
        mask), ``(m1, m2)`` for trace, pseudo and loss_gram, ``(m1, m2, O)`` for diagonal, rows
        sample-major.

    Raises:
        ValueError: unknown ``kind`` or ``implementation``, mismatched input shapes or structures,
            no trainable parameters, a non-positive ``chunk_size`` or
            ``max_memory_bytes``, a budget too small for one sample per chunk, a
            module in a sample-mixing mode (BatchNorm in training mode, active dropout)
            with ``norm_mode=None``, an unknown ``norm_mode``, ``norm_statistics`` outside the
            probe mode or from another model, ``x2`` without ``norm_statistics`` in the probe
            mode or with ``norm_mode="train"``, ``norm_mode="eval"`` with a BatchNorm that
            has no running statistics, a mask or weights of the wrong shape or values,
            ``output_weights`` missing for (or given without) ``kind="loss_gram"``, a second
            probe's mask or weights missing (or given without ``x2``).
        TypeError: a model output that is not a tensor, inputs that are not tensors (or pytrees
            of tensors), ``norm_statistics``, a mask or weights of another type.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> lin = nn.Linear(3, 2).double()
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> k = empirical_ntk(lin, x)
        >>> k.shape
        torch.Size([8, 8])
        >>> expected = torch.kron(x @ x.T + 1, torch.eye(2, dtype=torch.float64))
        >>> torch.allclose(k, expected)
        True
        >>> empirical_ntk(lin, x, kind="trace").shape
        torch.Size([4, 4])
        >>> k_s = empirical_ntk(lin, x, implementation="structured", max_memory_bytes=2**20)
        >>> torch.allclose(k_s, expected)
        True

        Masks keep rows of the full kernel; the Gram of per-sample loss gradients:

        >>> keep = torch.tensor([[True, False], [True, True], [False, True], [True, True]])
        >>> rows = keep.reshape(-1)
        >>> torch.allclose(empirical_ntk(lin, x, output_mask=keep), expected[rows][:, rows])
        True
        >>> y = torch.tensor([0, 1, 1, 0])
        >>> g = torch.softmax(lin(x), dim=1).detach() - nn.functional.one_hot(y, 2)  # ∂ CE_i / ∂ f_i
        >>> gram = empirical_ntk(lin, x, kind="loss_gram", output_weights=g)
        >>> loss = nn.functional.cross_entropy(lin(x), y, reduction="sum")
        >>> grad = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(lin.parameters()))])
        >>> torch.allclose(gram.sum(), grad.square().sum())  # 1ᵀ G 1 = ‖∇ Σ_i ℓ_i‖²
        True

        Pytree inputs: a dict reaches a module as keyword arguments.

        >>> class TwoInputs(nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.lin = nn.Linear(3, 2).double()
        ...     def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        ...         return self.lin(x) * scale[:, None]
        >>> empirical_ntk(TwoInputs(), {"x": x, "scale": torch.ones(4, dtype=torch.float64)}).shape
        torch.Size([8, 8])

        A BatchNorm network in training mode, rows of the probe against the whole probe:

        >>> net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).double()
        >>> probe = torch.randn(8, 3, dtype=torch.float64)
        >>> k = empirical_ntk(net, probe, norm_mode="probe")
        >>> rows = empirical_ntk(net, probe[:3], probe, norm_mode="probe", norm_statistics=probe)
        >>> torch.allclose(rows, k[:6]), net.training, int(net[1].num_batches_tracked)
        (True, True, 0)
        >>> empirical_ntk(net, probe, norm_mode="train").shape
        torch.Size([16, 16])
    """
    implementation = _enum_value(NTKImplementation, implementation, "implementation")
    prep = _prepare(
        model,
        params,
        x1,
        x2,
        kind,
        chunk_size,
        max_memory_bytes,
        norm_mode,
        norm_statistics,
        output_mask,
        output_mask2,
        output_weights,
        output_weights2,
    )
    if prep.problem.norm_mode == NormMode.TRAIN.value:
        impl, chunk = _plan_batch(prep, implementation, chunk_size, max_memory_bytes)
        with full_precision():
            return _batch_kernel(prep, impl, chunk)
    if implementation is NTKImplementation.AUTO:
        implementation, kernel = _resolve(prep, chunk_size, max_memory_bytes)
        if kernel is not None and max_memory_bytes is None and chunk_size is None:
            return kernel
    backend = prep.backend(implementation)
    chunk = _plan_chunks(
        backend.memory_bytes,
        prep.kernel_bytes(),
        prep.kind,
        prep.m1,
        prep.m2,
        chunk_size,
        max_memory_bytes,
        f"implementation={implementation.value!r}",
    )
    return _run(backend, prep.target, prep.kind, prep.side1, prep.side2, chunk)
