"""NTK stability and the locally-PL region estimate: drift, an empirical Lipschitz constant, a radius.

Conventions, for per-sample kernels ``Θ_t = K_t / m`` on a fixed probe and parameters ``θ_t``:

* parameter drift ``r_t = ‖θ_t − θ_0‖₂`` (every trainable parameter, float64 accumulation);
* NTK drift ``‖Θ_t − Θ_0‖₂ / ‖Θ_0‖₂`` (operator norm; :func:`symmetric_operator_distance` gives
  the numerator of symmetric kernels with one ``eigvalsh``);
* empirical NTK Lipschitz constant ``L̂ = max_s ‖Θ_s − Θ_0‖₂ / r_s`` over the samples so far: a
  *lower* bound of the true Lipschitz constant of ``θ ↦ Θ(θ)`` on the path, since it only sees
  the sampled points;
* region estimate ``μ_cert = λ_min(Θ_0) − L̂·r_t``: by Weyl's inequality
  ``λ_min(Θ_t) ≥ λ_min(Θ_0) − ‖Θ_t − Θ_0‖₂``, so were ``L̂`` the true constant, ``μ_cert > 0``
  would certify a PL region of radius ``r_t``. Because ``L̂`` is empirical it is an *estimate*,
  not a certificate (the logged key keeps its name ``region/mu_cert``).

Example:
    >>> est = region_estimate(lambda_min0=0.5, distance_op=0.1, radius=2.0)
    >>> est.lipschitz, est.mu_cert, est.inside
    (0.05, 0.4, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "RegionEstimate",
    "parameter_distance",
    "region_estimate",
    "relative_drift",
    "symmetric_operator_distance",
]


def parameter_distance(params: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """``‖θ − θ_0‖₂`` over the names both mappings hold, accumulated in float64 on the CPU.

    Args:
        params: name → tensor (the current parameters).
        reference: name → tensor (e.g. the parameters at initialisation), on any device.

    Returns:
        The Euclidean distance as a float (``0.0`` when no name is shared).

    Example:
        >>> parameter_distance({"w": torch.tensor([3.0, 4.0])}, {"w": torch.zeros(2)})
        5.0
    """
    total = torch.zeros((), dtype=torch.float64)
    for name, value in params.items():
        ref = reference.get(name)
        if ref is None:
            continue
        diff = value.detach().to(torch.float64) - ref.detach().to(device=value.device, dtype=torch.float64)
        total = total + diff.square().sum().cpu()
    return float(total.sqrt())


def symmetric_operator_distance(kernel: Tensor, reference: Tensor) -> float:
    """``‖K − K_0‖₂`` of two symmetric kernels: ``max |λ|`` of the symmetrised difference, float64.

    Kernels assembled from rows gathered across processes may differ from their transposes in
    the last bit; the difference is symmetrised (``(D + Dᵀ)/2``) before ``eigvalsh``, which is
    5–8× cheaper than the SVD a general operator norm needs.

    Args:
        kernel: ``(n, n)`` symmetric kernel.
        reference: ``(n, n)`` symmetric reference kernel.

    Returns:
        The operator-norm distance; NaN when either holds a non-finite entry.

    Raises:
        ValueError: shapes that differ or are not square.

    Example:
        >>> symmetric_operator_distance(torch.eye(2) * 3, torch.eye(2))
        2.0
    """
    if kernel.shape != reference.shape or kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(
            f"kernel {tuple(kernel.shape)} and reference {tuple(reference.shape)} must be square matrices "
            "of the same shape; compare kernels of the same kind on the same probe."
        )
    diff = kernel.to(torch.float64) - reference.to(device=kernel.device, dtype=torch.float64)
    if not bool(torch.isfinite(diff).all()):
        return math.nan
    if diff.numel() == 0:
        return 0.0
    lam = torch.linalg.eigvalsh((diff + diff.T) / 2)
    return float(torch.maximum(lam[0].abs(), lam[-1].abs()))


def relative_drift(distance: float, reference_norm: float) -> float:
    """``distance / reference_norm``: ``0`` when both are zero, ``inf`` when only the norm is.

    Example:
        >>> relative_drift(0.5, 2.0), relative_drift(0.0, 0.0), relative_drift(1.0, 0.0)
        (0.25, 0.0, inf)
    """
    if not (math.isfinite(distance) and math.isfinite(reference_norm)):
        return math.nan
    if reference_norm > 0:
        return distance / reference_norm
    return 0.0 if distance == 0 else math.inf


class RegionEstimate(NamedTuple):
    """The region estimate at one sample (see the module docstring)."""

    lipschitz: float
    """``L̂``: the largest ``‖Θ_s − Θ_0‖₂ / r_s`` seen so far, this sample included."""
    mu_cert: float
    """``λ_min(Θ_0) − L̂·r_t``."""
    inside: bool
    """``mu_cert > 0``."""


def region_estimate(
    lambda_min0: float, distance_op: float, radius: float, lipschitz_so_far: float = 0.0
) -> RegionEstimate:
    """Update the empirical Lipschitz constant with one sample and estimate the region there.

    Args:
        lambda_min0: ``λ_min(Θ_0)``.
        distance_op: ``‖Θ_t − Θ_0‖₂`` at this sample (normalised like ``lambda_min0``).
        radius: ``r_t = ‖θ_t − θ_0‖₂``; a zero radius leaves ``L̂`` unchanged (no direction seen).
        lipschitz_so_far: ``L̂`` before this sample (``0`` at the first).

    Returns:
        :class:`RegionEstimate`; a non-finite ``distance_op`` leaves ``L̂`` unchanged.

    Example:
        >>> region_estimate(1.0, 0.0, 0.0).mu_cert
        1.0
    """
    lipschitz = lipschitz_so_far
    if radius > 0 and math.isfinite(distance_op):
        lipschitz = max(lipschitz, distance_op / radius)
    mu_cert = lambda_min0 - lipschitz * radius
    return RegionEstimate(lipschitz, mu_cert, bool(mu_cert > 0))
