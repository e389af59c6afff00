"""The empirical Neural Tangent Kernel, computed with ``torch.func``.

Conventions (DESIGN.md §2): for a model ``f(θ, x) ∈ R^O`` and probe inputs ``x_1..x_m``
the Jacobian ``J ∈ R^{(m·O) × P}`` has its rows ordered sample-major (sample ``i``,
output ``a`` → row ``i·O + a``) and its columns over the *trainable* parameters only.
Kernels are unnormalised by ``m``:

============== =============== =========================================
kind           shape           definition
============== =============== =========================================
``"full"``     ``(m·O, m·O)``  ``J Jᵀ``
``"trace"``    ``(m, m)``      ``Σ_a J_a J_aᵀ / O`` (mean over outputs)
``"diagonal"`` ``(m, m, O)``   per-output kernels ``J_a J_aᵀ``
``"pseudo"``   ``(m, m)``      kernel of ``Σ_a f_a / √O`` (the pNTK)
============== =============== =========================================

Several implementations sit behind :class:`NTKImplementation`; every one computes
the same numbers (tested against a float64 brute-force Jacobian), they differ in
time and memory only. ``implementation="auto"`` times them once per model and probe
shape and keeps the fastest; ``max_memory_bytes`` bounds the memory of any of them.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import jacrev, jvp, vjp, vmap

from lightning_lplr.functional import _structured
from lightning_lplr.functional._problem import ModelFn, Problem, full_precision, trainable_params
from lightning_lplr.functional.normalization import (
    NormMode,
    NormOverride,
    NormStatistics,
    check_eval_mode,
    mode_value,
    probe_statistics,
)

__all__ = [
    "ModelFn",
    "NTKImplementation",
    "NTKKind",
    "NormMode",
    "NormStatistics",
    "clear_auto_cache",
    "empirical_ntk",
    "probe_statistics",
    "resolve_implementation",
    "trainable_params",
]


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


class NTKImplementation(str, Enum):
    """How :func:`empirical_ntk` computes the kernel. All give the same numbers.

    Costs below are for one ``m1 × m2`` block with ``P`` trainable parameters, ``O`` outputs
    (``O = 1`` for ``"pseudo"``), ``Q = O²`` output pairs for ``"full"`` and ``Q = O`` for the
    other kinds, ``A`` activations per sample and ``F`` the cost of one forward pass of one
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
    Pick it when the model is cheap to evaluate and the Jacobian would not fit."""
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


"""TF32 off for the duration (defined in ``_problem``; this name is imported by other modules)."""

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
    trace ``(b1, b2)``, diagonal ``(b1, b2, O)``, pseudo ``(b1, b2)``; for pseudo the
    backend works on the scalar model so ``O`` is 1 internally. ``configure`` is told the
    block sizes before the first ``features`` call; ``memory_bytes`` estimates the peak
    memory of one block (features of both chunks, temporaries, the block itself).
    """

    def configure(self, b1: int, b2: int) -> None: ...

    def memory_bytes(self, b1: int, b2: int) -> int: ...

    def features(self, x: Tensor) -> Any: ...

    def contract(self, f1: Any, f2: Any) -> Tensor: ...


def _pairs(kind: NTKKind, outputs: int) -> int:
    return outputs * outputs if kind is NTKKind.FULL else outputs


class _JacobianContraction:
    def __init__(self, problem: Problem, kind: NTKKind) -> None:
        self.problem = problem
        self.kind = kind
        self.single = problem.pseudo_single if kind is NTKKind.PSEUDO else problem.single
        self.outputs = 1 if kind is NTKKind.PSEUDO else problem.num_outputs

    def configure(self, b1: int, b2: int) -> None:
        pass

    def memory_bytes(self, b1: int, b2: int) -> int:
        o, p, a = self.outputs, self.problem.parameter_count(), self.problem.activation_numel
        jac = (b1 + 2 * b2) * o * p  # one chunk held while the other is built (dict + concatenation)
        if self.kind is NTKKind.DIAGONAL:
            jac += (b1 + b2) * o * p  # einsum's permuted copies
        work = max(b1, b2) * a * (1 + o)  # activations and the O-fold vmapped backward
        return (jac + work + 2 * b1 * b2 * _pairs(self.kind, o)) * self.problem.itemsize

    def features(self, x: Tensor) -> Tensor:
        jac = vmap(jacrev(self.single), in_dims=(None, 0))(self.problem.params, x)
        b = x.shape[0]
        # (b, O, P) with the parameters concatenated in a fixed order.
        return torch.cat([j.reshape(b, j.shape[1], -1) for j in jac.values()], dim=2)

    def contract(self, j1: Tensor, j2: Tensor) -> Tensor:
        return _contract_jacobians(j1, j2, self.kind)


def _contract_jacobians(j1: Tensor, j2: Tensor, kind: NTKKind) -> Tensor:
    """The kernel block of Jacobians ``(b1, O, P)`` and ``(b2, O, P)`` in canonical form (pseudo: O = 1)."""
    b1, o, p = j1.shape
    b2 = j2.shape[0]
    if kind is NTKKind.FULL:
        return (j1.reshape(b1 * o, p) @ j2.reshape(b2 * o, p).T).reshape(b1, o, b2, o)
    if kind is NTKKind.TRACE:
        return (j1.reshape(b1, o * p) @ j2.reshape(b2, o * p).T) / o
    if kind is NTKKind.DIAGONAL:
        return torch.einsum("iap,jap->ija", j1, j2)
    return j1[:, 0] @ j2[:, 0].T  # pseudo: j has O = 1


class _NTKVectorProducts:
    def __init__(self, problem: Problem, kind: NTKKind) -> None:
        self.problem = problem
        self.kind = kind
        self.outputs = 1 if kind is NTKKind.PSEUDO else problem.num_outputs
        if kind is NTKKind.PSEUDO:
            self.single, self.batched = problem.pseudo_single, problem.pseudo_batched
        else:
            self.single, self.batched = problem.single, problem.batched

    def configure(self, b1: int, b2: int) -> None:
        pass

    def memory_bytes(self, b1: int, b2: int) -> int:
        o, p = self.outputs, self.problem.parameter_count()
        a, amax = self.problem.activation_numel, self.problem.max_activation_numel
        numbers = 2 * b1 * o * p + 4 * b1 * o * b2 * amax + 2 * b1 * a + 2 * b1 * b2 * o * o
        return numbers * self.problem.itemsize

    def features(self, x: Tensor) -> Tensor:
        return x

    def contract(self, x1: Tensor, x2: Tensor) -> Tensor:
        params = self.problem.params
        single, batched = self.single, self.batched

        def row(xi: Tensor) -> Tensor:
            out, vjp_fn = vjp(lambda p: single(p, xi), params)

            def column(v: Tensor) -> Tensor:
                (cotangent,) = vjp_fn(v)
                _, tangent_out = jvp(lambda p: batched(p, x2), (params,), (cotangent,))
                return tangent_out  # (b2, O): J(x2) J(xi)ᵀ v

            basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
            return vmap(column)(basis)  # (O, b2, O)

        k = vmap(row)(x1)  # (b1, O, b2, O): k[i, a, j, b] = <J_a(x1_i), J_b(x2_j)>
        if self.kind is NTKKind.FULL:
            return k
        if self.kind is NTKKind.PSEUDO:
            return k[:, 0, :, 0]
        diag = torch.diagonal(k, dim1=1, dim2=3)  # (b1, b2, O)
        return diag.mean(dim=2) if self.kind is NTKKind.TRACE else diag


_BACKENDS: dict[NTKImplementation, Callable[[Problem, NTKKind], _Backend]] = {
    NTKImplementation.JACOBIAN_CONTRACTION: _JacobianContraction,
    NTKImplementation.NTK_VECTOR_PRODUCTS: _NTKVectorProducts,
    NTKImplementation.STRUCTURED: _structured.Structured,
}


def _output_bytes(problem: Problem, kind: NTKKind, m1: int, m2: int) -> int:
    o = problem.num_outputs
    numbers = {NTKKind.FULL: m1 * m2 * o * o, NTKKind.DIAGONAL: m1 * m2 * o}.get(kind, m1 * m2)
    return numbers * problem.itemsize


def _chunk_for_budget(backend: _Backend, m1: int, m2: int, available: int) -> int | None:
    """The largest chunk size whose block estimate fits in ``available`` bytes; ``None`` if 1 does not."""

    def estimate(c: int) -> int:
        return backend.memory_bytes(min(c, m1), min(c, m2))

    if estimate(1) > available:
        return None
    lo, hi = 1, max(m1, m2)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(mid) <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _available_memory(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes (CUDA: ``mem_get_info``; CPU: ``MemAvailable``)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return None


def _plan_chunks(
    backend: _Backend,
    problem: Problem,
    kind: NTKKind,
    m1: int,
    m2: int,
    chunk_size: int | None,
    budget: int | None,
    what: str,
) -> int | None:
    """The chunk size: ``chunk_size`` if given, else derived from ``budget`` (``None``: no chunking)."""
    if chunk_size is not None or budget is None:
        return chunk_size
    available = int(_BUDGET_MARGIN * budget) - _output_bytes(problem, kind, m1, m2)
    chunk = _chunk_for_budget(backend, m1, m2, available)
    if chunk is None:
        need = backend.memory_bytes(1, 1) + _output_bytes(problem, kind, m1, m2)
        raise ValueError(
            f"max_memory_bytes={budget} is too small for {what}: "
            f"one sample per chunk needs about {need} bytes "
            f"(the {kind.value} kernel alone takes {_output_bytes(problem, kind, m1, m2)}). Raise "
            "max_memory_bytes, use a smaller probe, kind='trace' or 'pseudo', or another implementation."
        )
    return None if chunk >= max(m1, m2) else chunk


def _run(
    backend: _Backend, problem: Problem, kind: NTKKind, x1: Tensor, x2: Tensor | None, chunk: int | None
) -> Tensor:
    m1 = x1.shape[0]
    m2 = m1 if x2 is None else x2.shape[0]
    backend.configure(min(m1, chunk or m1), min(m2, chunk or m2))
    with full_precision():
        return _assemble(backend, x1, x2, kind, chunk, problem.num_outputs, problem.dtype)


def resolve_implementation(
    model: nn.Module | ModelFn,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    params: Mapping[str, Tensor] | None = None,
    kind: NTKKind | str = "full",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    norm_mode: NormMode | str | None = None,
    norm_statistics: Tensor | NormStatistics | None = None,
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
    shapes, kind, dtype, device, ``chunk_size`` and budget, so the trial runs once.

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
    problem, kind, x1, x2 = _prepare(
        model, params, x1, x2, kind, chunk_size, max_memory_bytes, norm_mode, norm_statistics
    )
    if problem.norm_mode == NormMode.TRAIN.value:
        auto = NTKImplementation.AUTO
        return _plan_batch(problem, kind, x1.shape[0], auto, chunk_size, max_memory_bytes)[0]
    return _resolve(problem, kind, x1, x2, chunk_size, max_memory_bytes)[0]


def _resolve(
    problem: Problem,
    kind: NTKKind,
    x1: Tensor,
    x2: Tensor | None,
    chunk_size: int | None,
    budget: int | None,
) -> tuple[NTKImplementation, Tensor | None]:
    """``auto``: the chosen implementation and, when the trial already computed it, the kernel."""
    m1 = x1.shape[0]
    m2 = m1 if x2 is None else x2.shape[0]
    key = (
        problem.architecture(),
        tuple(x1.shape),
        None if x2 is None else tuple(x2.shape),
        x1.dtype,
        kind,
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
    out_bytes = _output_bytes(problem, kind, m1, m2)
    candidates: list[tuple[NTKImplementation, _Backend, int | None]] = []
    errors: list[str] = []
    for impl, factory in _BACKENDS.items():
        try:
            backend = factory(problem, kind)
        except Exception as err:  # not applicable to this model
            errors.append(f"{impl.value}: {type(err).__name__}: {err}")
            continue
        chunk = chunk_size
        if limit is not None:
            b1, b2 = min(m1, chunk or m1), min(m2, chunk or m2)
            if chunk is None and (budget is not None or backend.memory_bytes(b1, b2) + out_bytes > limit):
                chunk = _chunk_for_budget(backend, m1, m2, int(_BUDGET_MARGIN * limit) - out_bytes)
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
    chosen, kernel = _timed_trial(problem, kind, x1, x2, candidates)
    _AUTO_CACHE[key] = chosen
    while len(_AUTO_CACHE) > _AUTO_CACHE_SIZE:
        _AUTO_CACHE.popitem(last=False)
    return chosen, kernel


def _timed_trial(
    problem: Problem,
    kind: NTKKind,
    x1: Tensor,
    x2: Tensor | None,
    candidates: list[tuple[NTKImplementation, _Backend, int | None]],
) -> tuple[NTKImplementation, Tensor | None]:
    m1 = x1.shape[0]
    m2 = m1 if x2 is None else x2.shape[0]
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
        for impl, backend, chunk in alive:
            xs = x1[:size]
            c = None if chunk is None or chunk >= size else chunk
            try:
                start = time.perf_counter()
                k = _run(backend, problem, kind, xs, None, c)
                elapsed = time.perf_counter() - start
            except Exception as err:  # e.g. an op without forward-mode AD: not applicable here
                last_error = err
                continue
            if step > 0:  # step 0 is the warm-up (plans, lazy initialisation)
                times.setdefault(impl, []).append(elapsed)
            else:
                warm[impl] = elapsed
            if size == m1 and x2 is None:
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


def _mirror(block: Tensor, kind: NTKKind) -> Tensor:
    """The (j, i) block of a symmetric kernel from its (i, j) block."""
    if kind is NTKKind.FULL:
        return block.permute(2, 3, 0, 1)
    if kind is NTKKind.DIAGONAL:
        return block.permute(1, 0, 2)
    return block.T


def _assemble(
    backend: _Backend,
    x1: Tensor,
    x2: Tensor | None,
    kind: NTKKind,
    chunk_size: int | None,
    num_outputs: int,
    dtype: torch.dtype,
) -> Tensor:
    symmetric = x2 is None
    xs2 = x1 if x2 is None else x2
    m1, m2 = x1.shape[0], xs2.shape[0]
    c1 = list(torch.split(x1, chunk_size or m1))
    c2 = c1 if symmetric else list(torch.split(xs2, chunk_size or m2))
    o = num_outputs
    shape = {
        NTKKind.FULL: (m1, o, m2, o),
        NTKKind.TRACE: (m1, m2),
        NTKKind.DIAGONAL: (m1, m2, o),
        NTKKind.PSEUDO: (m1, m2),
    }[kind]
    out = torch.empty(shape, dtype=dtype, device=x1.device)
    start1 = 0
    for i, xa in enumerate(c1):
        fa = backend.features(xa)
        sl1 = slice(start1, start1 + xa.shape[0])
        start2 = 0
        for j, xb in enumerate(c2):
            sl2 = slice(start2, start2 + xb.shape[0])
            start2 += xb.shape[0]
            if symmetric and j < i:
                continue  # filled by the mirror of block (j, i)
            fb = fa if (symmetric and i == j) else backend.features(xb)
            block = backend.contract(fa, fb)
            del fb
            if kind is NTKKind.FULL:
                out[sl1, :, sl2, :] = block
            else:
                out[sl1, sl2] = block
            if symmetric and j > i:
                if kind is NTKKind.FULL:
                    out[sl2, :, sl1, :] = _mirror(block, kind)
                else:
                    out[sl2, sl1] = _mirror(block, kind)
            del block
        del fa
        start1 += xa.shape[0]
    if kind is NTKKind.FULL:
        return out.reshape(m1 * o, m2 * o)
    return out


# ----------------------------------------------------------------------------------------------
# norm_mode="train": the kernel of one batch Jacobian
# ----------------------------------------------------------------------------------------------


def _batch_memory_bytes(problem: Problem, kind: NTKKind, m: int, chunk: int, impl: NTKImplementation) -> int:
    """Peak bytes of the batch kernel with ``chunk`` samples' output rows differentiated at once."""
    o = 1 if kind is NTKKind.PSEUDO else problem.num_outputs
    p, a = problem.parameter_count(), problem.activation_numel
    kernel = _output_bytes(problem, kind, m, m) // problem.itemsize
    if impl is NTKImplementation.NTK_VECTOR_PRODUCTS:
        # Per column: a parameter cotangent, the batch's forward-mode tangents and a kernel column.
        numbers = chunk * o * (p + 2 * m * a + m * o) + m * a + 2 * kernel
    else:
        # The Jacobian (and its concatenation), the vmapped backward of ``chunk·O`` output rows.
        numbers = 2 * m * o * p + chunk * o * m * a + m * a + 2 * kernel
    return numbers * problem.itemsize


def _plan_batch(
    problem: Problem,
    kind: NTKKind,
    m: int,
    implementation: NTKImplementation,
    chunk_size: int | None,
    budget: int | None,
) -> tuple[NTKImplementation, int | None]:
    """Implementation (Jacobian contraction or NTK-vector products) and chunk size of the batch kernel."""
    if implementation is NTKImplementation.STRUCTURED:  # no per-layer factorisation of a batch Jacobian
        implementation = NTKImplementation.JACOBIAN_CONTRACTION
    if implementation is NTKImplementation.AUTO:
        limit = budget if budget is not None else _available_memory(problem.device)
        jac = NTKImplementation.JACOBIAN_CONTRACTION
        need = _batch_memory_bytes(problem, kind, m, chunk_size or 1, jac)
        fits = limit is None or need <= _BUDGET_MARGIN * limit
        implementation = jac if fits else NTKImplementation.NTK_VECTOR_PRODUCTS
    if chunk_size is not None or budget is None:
        return implementation, chunk_size
    available = int(_BUDGET_MARGIN * budget)
    if _batch_memory_bytes(problem, kind, m, 1, implementation) > available:
        need = _batch_memory_bytes(problem, kind, m, 1, implementation)
        other = (
            ""
            if implementation is NTKImplementation.NTK_VECTOR_PRODUCTS
            else "implementation='ntk_vector_products' (never stores the Jacobian), "
        )
        raise ValueError(
            f"max_memory_bytes={budget} is too small for norm_mode='train' with "
            f"implementation={implementation.value!r}: one sample's output rows at a time need about {need} "
            f"bytes. Raise max_memory_bytes, use a smaller probe, {other}or norm_mode='probe'."
        )
    lo, hi = 1, m
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _batch_memory_bytes(problem, kind, m, mid, implementation) <= available:
            lo = mid
        else:
            hi = mid - 1
    return implementation, None if lo >= m else lo


def _batch_kernel(
    problem: Problem, kind: NTKKind, x: Tensor, implementation: NTKImplementation, chunk: int | None
) -> Tensor:
    """The kernel of the batch Jacobian ``∂f(θ, X)/∂θ`` (train mode) in the shapes of ``empirical_ntk``."""
    m = x.shape[0]
    params = problem.params
    batched = problem.pseudo_batched if kind is NTKKind.PSEUDO else problem.batched
    o = 1 if kind is NTKKind.PSEUDO else problem.num_outputs
    step = (chunk or m) * o
    if implementation is NTKImplementation.NTK_VECTOR_PRODUCTS:
        _, vjp_fn = vjp(lambda p: batched(p, x), params)

        def column(v: Tensor) -> Tensor:
            (cotangent,) = vjp_fn(v)
            return jvp(lambda p: batched(p, x), (params,), (cotangent,))[1]  # J Jᵀ v as (m, O)

        basis = torch.eye(m * o, dtype=problem.dtype, device=problem.device).reshape(m * o, m, o)
        columns = torch.cat([vmap(column)(basis[s : s + step]) for s in range(0, m * o, step)])
        k = columns.reshape(m * o, m * o).T.reshape(m, o, m, o)  # row r of `columns` is K[:, r]
        if kind is NTKKind.FULL:
            return k.reshape(m * o, m * o)
        if kind is NTKKind.PSEUDO:
            return k[:, 0, :, 0]
        diag = torch.diagonal(k, dim1=1, dim2=3)  # (m, m, O)
        return diag.mean(dim=2) if kind is NTKKind.TRACE else diag
    jac = jacrev(lambda p: batched(p, x).reshape(-1), chunk_size=None if chunk is None else step)(params)
    j = torch.cat([t.reshape(m, o, -1) for t in jac.values()], dim=2)
    del jac
    k = _contract_jacobians(j, j, kind)
    return k.reshape(m * o, m * o) if kind is NTKKind.FULL else k


def _prepare(
    model: Any,
    params: Any,
    x1: Tensor,
    x2: Tensor | None,
    kind: Any,
    chunk_size: int | None,
    max_memory_bytes: int | None,
    norm_mode: Any = None,
    norm_statistics: Any = None,
) -> tuple[Problem, NTKKind, Tensor, Tensor | None]:
    """The checked arguments shared by :func:`empirical_ntk` and :func:`resolve_implementation`."""
    kind = _enum_value(NTKKind, kind, "kind")
    _check_positive("chunk_size", chunk_size)
    _check_positive("max_memory_bytes", max_memory_bytes)
    norm = _norm_override(model, params, x1, x2, mode_value(norm_mode), norm_statistics)
    problem = Problem(model, params, x1, x2, norm=norm)
    x1 = x1.to(problem.device)
    x2 = None if x2 is None else x2.to(problem.device)
    return problem, kind, x1, x2


def _norm_override(
    model: Any, params: Any, x1: Tensor, x2: Tensor | None, mode: NormMode | None, statistics: Any
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
    if isinstance(statistics, Tensor):
        source = params
        if source is None:
            source = trainable_params(model) if isinstance(model, nn.Module) else {}
        first = next((v for v in source.values() if isinstance(v, Tensor)), None) if source else None
        if first is not None:
            statistics = statistics.to(first.device)
        statistics = probe_statistics(model, statistics, params=params)
    elif not isinstance(statistics, NormStatistics):
        raise TypeError(
            f"norm_statistics must be a tensor of inputs or a NormStatistics from probe_statistics(); "
            f"got {type(statistics).__name__}."
        )
    return NormOverride(mode, statistics)


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        what = "chunking" if name == "chunk_size" else "no memory budget"
        raise ValueError(f"{name}={value!r} must be a positive int (or None for {what}).")


def empirical_ntk(
    model: nn.Module | ModelFn,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    params: Mapping[str, Tensor] | None = None,
    kind: NTKKind | str = "full",
    implementation: NTKImplementation | str = "auto",
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    norm_mode: NormMode | str | None = None,
    norm_statistics: Tensor | NormStatistics | None = None,
) -> Tensor:
    """Empirical NTK ``J(x1) J(x2)ᵀ`` of a model at its current (or given) parameters.

    The model is evaluated through ``torch.func.functional_call`` on detached
    parameters, so nothing the optimizer sees is touched and no ``.grad`` is
    written; train/eval flags, buffers and the global RNG are left as they were.

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
            callable ``f(params, x)`` over a batch, in which case ``params`` is required.
        x1: probe inputs, shape ``(m1, *input_shape)``.
        x2: second probe, shape ``(m2, *input_shape)``; ``None`` for the symmetric
            kernel of ``x1`` with itself (computed once per block pair and mirrored).
        params: dict ``name -> tensor`` of the parameters to differentiate,
            overriding the module's (for a module, names as in ``named_parameters``).
        kind: ``"full"``, ``"trace"``, ``"diagonal"`` or ``"pseudo"``; see :class:`NTKKind`.
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
            the function (a tensor ``(m, *input_shape)``, e.g. the whole probe), or statistics
            already computed by :func:`probe_statistics` (e.g. broadcast from another rank).
            ``None``: those of ``x1``, allowed only when ``x2`` is ``None``.

    Returns:
        The kernel, with the dtype of the parameters (float64 in, float64 out) on
        their device: ``(m1·O, m2·O)`` for full, ``(m1, m2)`` for trace and pseudo,
        ``(m1, m2, O)`` for diagonal, rows sample-major.

    Raises:
        ValueError: unknown ``kind`` or ``implementation``, mismatched input shapes,
            no trainable parameters, a non-positive ``chunk_size`` or
            ``max_memory_bytes``, a budget too small for one sample per chunk, a
            module in a sample-mixing mode (BatchNorm in training mode, active dropout)
            with ``norm_mode=None``, an unknown ``norm_mode``, ``norm_statistics`` outside the
            probe mode or from another model, ``x2`` without ``norm_statistics`` in the probe
            mode or with ``norm_mode="train"``, or ``norm_mode="eval"`` with a BatchNorm that
            has no running statistics.
        TypeError: a model output that is not a tensor, inputs that are not tensors, or
            ``norm_statistics`` of another type.

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
    problem, kind, x1, x2 = _prepare(
        model, params, x1, x2, kind, chunk_size, max_memory_bytes, norm_mode, norm_statistics
    )
    m1 = x1.shape[0]
    m2 = m1 if x2 is None else x2.shape[0]
    if problem.norm_mode == NormMode.TRAIN.value:
        impl, chunk = _plan_batch(problem, kind, m1, implementation, chunk_size, max_memory_bytes)
        with full_precision():
            return _batch_kernel(problem, kind, x1, impl, chunk)
    if implementation is NTKImplementation.AUTO:
        implementation, kernel = _resolve(problem, kind, x1, x2, chunk_size, max_memory_bytes)
        if kernel is not None and max_memory_bytes is None and chunk_size is None:
            return kernel.reshape(m1 * problem.num_outputs, -1) if kind is NTKKind.FULL else kernel
    backend = _BACKENDS[implementation](problem, kind)
    chunk = _plan_chunks(
        backend,
        problem,
        kind,
        m1,
        m2,
        chunk_size,
        max_memory_bytes,
        f"implementation={implementation.value!r}",
    )
    return _run(backend, problem, kind, x1, x2, chunk)
