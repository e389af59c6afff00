"""Eigen statistics of empirical NTKs, kernel distances and kernel alignment.

Conventions (``docs/kernels.md``): kernels come from
:func:`~lightning_lplr.functional.empirical_ntk` unnormalised by the number of probe
samples ``m``; pass ``normalize=m`` to get the spectrum of the per-sample kernel
``Θ = J Jᵀ / m``. Every eigen computation runs in float64 on the symmetrised kernel
``(K + Kᵀ) / 2``, eigenvalues in ascending order.

A kernel with a NaN or an infinity (a diverged model) is not an error here: its
eigenvalues and statistics are all NaN, and monitors count the sample as skipped.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lightning_lplr.functional._tensors import as_float64_tensor, square_kernel

__all__ = [
    "KernelLike",
    "SpectrumStats",
    "eigenvalues",
    "kernel_alignment",
    "kernel_distance",
    "operator_norm",
    "spectrum_from_eigenvalues",
    "spectrum_stats",
]

KernelLike = Tensor | np.ndarray | Sequence[Sequence[float]]
"""A kernel given as a torch tensor, a numpy array or nested sequences of floats."""

_NORMS = ("op", "fro")


def _check_normalize(normalize: float | None) -> float | None:
    if normalize is None:
        return None
    bad = isinstance(normalize, bool) or not isinstance(normalize, numbers.Real)
    if bad or not math.isfinite(normalize) or normalize <= 0:
        raise ValueError(
            f"normalize={normalize!r} must be a positive finite number (normalize=m gives the "
            "per-sample kernel Θ = J Jᵀ / m) or None for the raw kernel."
        )
    return float(normalize)


def _symmetrised(kernel: Any, normalize: float | None) -> tuple[Tensor | None, int, torch.device]:
    """``(K + Kᵀ) / 2 / normalize`` in float64, or ``None`` when ``K`` is not finite."""
    k = square_kernel(kernel)
    scale = _check_normalize(normalize)
    n = k.shape[0]
    if not bool(torch.isfinite(k).all()):
        return None, n, k.device
    sym = (k + k.T) / 2
    if scale is not None:
        sym = sym / scale
    return sym, n, k.device


def eigenvalues(kernel: KernelLike, *, normalize: float | None = None) -> Tensor:
    """Eigenvalues of a square kernel, ascending, in float64.

    The kernel is symmetrised, ``(K + Kᵀ) / 2``, and divided by ``normalize`` when
    given, then passed to :func:`torch.linalg.eigvalsh`.

    Args:
        kernel: ``(n, n)`` kernel: a ``"trace"`` or ``"pseudo"`` ``(m, m)`` kernel or a
            ``"full"`` ``(m·O, m·O)`` kernel of :func:`empirical_ntk`. Tensor (any
            float dtype, any device), numpy array or nested sequences.
        normalize: divide the kernel by this positive number; ``normalize=m`` gives
            the spectrum of ``Θ = J Jᵀ / m``. ``None`` (default) keeps it raw.

    Returns:
        Float64 tensor of shape ``(n,)``, ascending, on the kernel's device. If the
        kernel holds a NaN or an infinity the result is ``n`` NaNs (documented, no
        exception), which monitors count as a skipped sample; likewise if the eigen
        solver fails to converge.

    Raises:
        ValueError: a 3-D ``(m, m, O)`` ``"diagonal"`` kernel (pass one output slice
            ``k[..., a]`` or a trace kernel), a non-square or empty kernel, or a
            ``normalize`` that is not a positive finite number.
        TypeError: a kernel that is not numeric.

    Example:
        >>> eigenvalues(torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
        tensor([1., 3.], dtype=torch.float64)
        >>> eigenvalues([[2.0, 0.0], [0.0, 4.0]], normalize=2)
        tensor([1., 2.], dtype=torch.float64)
        >>> eigenvalues([[float("nan"), 0.0], [0.0, 1.0]])
        tensor([nan, nan], dtype=torch.float64)
    """
    sym, n, device = _symmetrised(kernel, normalize)
    if sym is None:
        return torch.full((n,), math.nan, dtype=torch.float64, device=device)
    try:
        return torch.linalg.eigvalsh(sym)
    except torch.linalg.LinAlgError:  # pragma: no cover - eigvalsh on finite symmetric input
        return torch.full((n,), math.nan, dtype=torch.float64, device=device)


class SpectrumStats(NamedTuple):
    """Summary of a kernel spectrum; every float is NaN when the kernel was not finite."""

    eigenvalues: Tensor
    """Float64 eigenvalues, ascending, shape ``(n,)``."""
    lambda_min: float
    """Smallest eigenvalue (may be slightly negative from round-off for a PSD kernel)."""
    lambda_max: float
    """Largest eigenvalue."""
    condition_number: float
    """``λ_max / λ_min``; ``inf`` when ``λ_min ≤ 0``."""
    trace: float
    """Sum of the eigenvalues (the trace of the normalised kernel)."""
    effective_rank: float
    """Entropy effective rank ``exp(H(p))``, ``p = λ⁺ / Σ λ⁺`` (Roy & Vetterli, 2007)."""


def _effective_rank(eigs: Tensor) -> float:
    positive = eigs.clamp(min=0)
    total = positive.sum()
    if not bool(total > 0):
        return 0.0
    p = positive / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def spectrum_stats(kernel: KernelLike, *, normalize: float | None = None) -> SpectrumStats:
    """Eigenvalues of a kernel and the statistics the monitors log.

    With ``λ_1 ≤ … ≤ λ_n`` the eigenvalues of ``(K + Kᵀ) / (2·normalize)``:

    * ``condition_number = λ_n / λ_1``, and ``inf`` when ``λ_1 ≤ 0`` (a singular or,
      through round-off, slightly indefinite kernel);
    * ``trace = Σ λ_i``;
    * ``effective_rank = exp(H(p))`` with ``p_i = λ_i⁺ / Σ_j λ_j⁺`` over the
      eigenvalues clamped at zero, ``H(p) = −Σ p_i log p_i`` (``0 log 0 = 0``), the
      entropy effective rank of O. Roy and M. Vetterli, "The effective rank: a
      measure of effective dimensionality", EUSIPCO 2007. It is ``n`` for a multiple
      of the identity, ``1`` for a rank-one kernel, and ``0.0`` when no eigenvalue is
      positive.

    Args:
        kernel: square kernel, as for :func:`eigenvalues`.
        normalize: as for :func:`eigenvalues` (``normalize=m`` for ``Θ = J Jᵀ / m``).

    Returns:
        :class:`SpectrumStats`. When the kernel holds a NaN or an infinity all its
        floats are NaN and ``eigenvalues`` is ``n`` NaNs (documented, no exception).

    Raises:
        ValueError: as for :func:`eigenvalues`.

    Example:
        >>> s = spectrum_stats(torch.diag(torch.tensor([1.0, 2.0, 4.0])))
        >>> s.lambda_min, s.lambda_max, s.condition_number, s.trace
        (1.0, 4.0, 4.0, 7.0)
        >>> round(spectrum_stats(torch.eye(5)).effective_rank, 12)
        5.0
        >>> round(spectrum_stats(torch.ones(4, 4)).effective_rank, 12)
        1.0
    """
    return spectrum_from_eigenvalues(eigenvalues(kernel, normalize=normalize))


def spectrum_from_eigenvalues(eigs: Tensor) -> SpectrumStats:
    """:func:`spectrum_stats` of a kernel whose ascending float64 eigenvalues are already known.

    For a caller that needs the eigenvalues anyway, or got them from another process.

    Args:
        eigs: ascending eigenvalues, as :func:`eigenvalues` returns them (any NaN: all
            statistics NaN).

    Returns:
        :class:`SpectrumStats`, equal to ``spectrum_stats`` of the kernel.

    Example:
        >>> spectrum_from_eigenvalues(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)).condition_number
        4.0
    """
    if bool(torch.isnan(eigs).any()):
        nan = math.nan
        return SpectrumStats(eigs, nan, nan, nan, nan, nan)
    lam_min = float(eigs[0])
    lam_max = float(eigs[-1])
    condition = lam_max / lam_min if lam_min > 0 else math.inf
    return SpectrumStats(
        eigenvalues=eigs,
        lambda_min=lam_min,
        lambda_max=lam_max,
        condition_number=condition,
        trace=float(eigs.sum()),
        effective_rank=_effective_rank(eigs),
    )


def _pair(k1: Any, k2: Any, name1: str, name2: str) -> tuple[Tensor, Tensor]:
    a = as_float64_tensor(k1, name1)
    b = as_float64_tensor(k2, name2)
    if a.shape != b.shape:
        raise ValueError(
            f"{name1} and {name2} must have the same shape; got {name1} {tuple(a.shape)} and "
            f"{name2} {tuple(b.shape)}. Compare kernels of the same kind on the same probe."
        )
    if a.numel() == 0:
        raise ValueError(f"{name1} and {name2} are empty (shape {tuple(a.shape)}).")
    return a, b.to(a.device)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.nan if num == 0 else math.inf


def kernel_distance(kernel: KernelLike, reference: KernelLike, *, norm: str = "op") -> float:
    """Relative distance ``‖K − K₀‖ / ‖K₀‖`` of a kernel from a reference, in float64.

    This is the NTK drift (``docs/keys.md``), ``‖Θ_t − Θ_0‖₂ / ‖Θ_0‖₂``; the ratio does
    not depend on a common normalisation of both kernels.

    Args:
        kernel: the kernel ``K``, shape ``(n, n)``.
        reference: the reference ``K₀`` (e.g. the kernel at initialisation), same shape.
        norm: ``"op"`` for the operator (spectral) norm, the largest singular value;
            ``"fro"`` for the Frobenius norm (this one also accepts a 3-D
            ``"diagonal"`` kernel).

    Returns:
        The relative distance as a float; ``nan`` when either kernel holds a NaN or an
        infinity, or when both ``K₀`` and ``K − K₀`` are zero; ``inf`` when ``K₀`` is
        zero and ``K`` is not.

    Raises:
        ValueError: ``norm`` not one of ``"op"``, ``"fro"``; shapes that differ (both
            named); a kernel that is not a matrix for ``norm="op"``.

    Example:
        >>> k0 = torch.eye(3)
        >>> kernel_distance(2 * k0, k0)
        1.0
        >>> kernel_distance(k0, k0, norm="fro")
        0.0
    """
    if norm not in _NORMS:
        allowed = ", ".join(repr(n) for n in _NORMS)
        raise ValueError(f"norm={norm!r} is not a known norm; pass one of {allowed}.")
    k, k0 = _pair(kernel, reference, "kernel", "reference")
    if norm == "op" and k.ndim != 2:
        raise ValueError(
            f"norm='op' needs (n, n) matrices; got shape {tuple(k.shape)}. Use norm='fro' or pass a "
            "'trace' / 'full' kernel."
        )
    if not (bool(torch.isfinite(k).all()) and bool(torch.isfinite(k0).all())):
        return math.nan
    diff = k - k0
    if norm == "fro":
        return _ratio(float(torch.linalg.vector_norm(diff)), float(torch.linalg.vector_norm(k0)))
    return _ratio(_operator_norm(diff), _operator_norm(k0))


def _operator_norm(matrix: Tensor) -> float:
    """Spectral norm; for a symmetric matrix (every kernel) ``max |λ|`` from ``eigvalsh``.

    ``eigvalsh`` is several times cheaper than the SVD behind ``matrix_norm(ord=2)``
    (a 2560² kernel: about 1 s against 6 s on two CPU cores).
    """
    if matrix.shape[0] == matrix.shape[1] and torch.allclose(matrix, matrix.T, rtol=1e-10, atol=0.0):
        return float(torch.linalg.eigvalsh(matrix).abs().max()) if matrix.numel() else 0.0
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def operator_norm(matrix: KernelLike) -> float:
    """Operator (spectral) norm of a matrix in float64: ``max |λ|`` for a symmetric one.

    Args:
        matrix: ``(n, k)`` tensor, numpy array or nested sequences.

    Returns:
        The largest singular value as a float; NaN when the matrix holds a NaN or an infinity.

    Example:
        >>> operator_norm(torch.tensor([[1.0, 0.0], [0.0, -3.0]]))
        3.0
    """
    m = as_float64_tensor(matrix, "matrix")
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D; got shape {tuple(m.shape)}.")
    if not bool(torch.isfinite(m).all()):
        return math.nan
    return _operator_norm(m)


def kernel_alignment(k1: KernelLike, k2: KernelLike) -> float:
    """Kernel alignment ``⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F)``, in float64.

    The cosine of the angle between two kernels seen as vectors (N. Cristianini et al.,
    "On kernel-target alignment", NeurIPS 2001): ``1`` for proportional kernels, at
    most ``1`` in absolute value, and for PSD kernels between ``0`` and ``1``.

    Args:
        k1: first kernel, any shape (usually ``(n, n)``).
        k2: second kernel, same shape.

    Returns:
        The alignment as a float; ``nan`` when either kernel is zero or holds a NaN or
        an infinity.

    Raises:
        ValueError: the shapes differ (both named).

    Example:
        >>> kernel_alignment(torch.eye(2), 3 * torch.eye(2))
        1.0
        >>> kernel_alignment(torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        0.0
    """
    a, b = _pair(k1, k2, "k1", "k2")
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return math.nan
    den = float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b))
    if not den > 0:
        return math.nan
    return float((a * b).sum()) / den
