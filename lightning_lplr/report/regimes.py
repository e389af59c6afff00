"""Thresholds that turn logged numbers into words: lazy regime, float32 noise, step-size stability.

Defined once here, in plain Python (no numpy, torch or Lightning), so that the report, the
monitors, the examples and the docs quote the same numbers.

**Lazy (kernel) regime.** Two logged measures say how far training has left the linearised
model around initialisation, each read against two thresholds:

=================  ===========  ==============  ===========
key                lazy         transitional    left
=================  ===========  ==============  ===========
``lin/gap_rel``    ``< 0.1``    ``0.1 – 0.5``   ``≥ 0.5``
``ntk/drift_op``   ``< 0.1``    ``0.1 – 1``     ``≥ 1``
=================  ===========  ==============  ===========

``lin/gap_rel = ‖f_t − f_lin,t‖ / ‖f_t − f_0‖`` is the share of the change of the network's
outputs on the probe that the linearised model ``f_0 + J_0(θ_t − θ_0)`` does not explain: below
0.1 the linear model explains at least 90 % of it (lazy); from 0.5 on, half of the change or more
is non-linear, and the kernel picture no longer describes the trajectory (left). ``ntk/drift_op
= ‖Θ_t − Θ_0‖₂ / ‖Θ_0‖₂`` is the relative change of the kernel in operator norm: below 0.1 its
eigenvalues have moved by less than 10 % of ``λ_max(Θ_0)`` (Weyl), so the initial kernel's
spectrum still describes the current one; at 1 the change is as large as the initial kernel itself,
so ``λ_min(Θ_0)`` says nothing about ``λ_min(Θ_t)`` any more (left). The drift threshold for
"left" is larger than the gap's because a kernel can rotate a lot (operator-norm change of order
one) while the function it integrates stays close to linear early on; the gap measures the
function directly.

**Negative smallest eigenvalue.** ``J Jᵀ`` is positive semi-definite, so a negative ``λ_min``
is rounding noise of the kernel computed in float32 (parameters are always float32 for the
kernel), or a numerical / consistency problem when it is larger than that noise; it is never a
property of the model. The noise bound is :func:`negative_eigenvalue_tolerance`,
``c · ε₃₂ · λ_max`` with ``ε₃₂ = 2⁻²³`` and ``c =`` :data:`GRAM_NOISE_FACTOR` ``= 1000``. How
``c`` was chosen: for a float32 Gram matrix ``K̂ = fl(J Jᵀ)`` the eigenvalue error is at most
``‖K̂ − K‖₂`` (Weyl), and ``‖K̂ − K‖₂ / (ε₃₂ λ_max)`` was measured on this package's CPU build
against the float64 product, for random Jacobians with ``m·O`` from 32 to 2560 rows and
``P`` from 8 to 2·10⁵ columns (Gaussian, shifted-mean and low-rank rows) and for the package's
own ``empirical_ntk`` (structured and Jacobian-contraction implementations, MLPs with 46 to
74 000 parameters): at most 11 (Gaussian rows, ``P = 2·10⁵``; at most 1 for the MLP kernels),
and the negative ``λ_min`` of rank-deficient kernels at most 1.9 ``ε₃₂ λ_max``. The worst case
(nearly orthogonal rows) grows like ``≈ 0.025 √P``, which stays below 1000 up to ``P ≈ 10⁹``
parameters; below the tolerance a negative value is noise and is not flagged.

**Step-size stability.** ``ntk/eta_beta = η·β`` with ``β`` the Gauss–Newton sharpness of the
trained loss on the probe is compared with the threshold of the optimizer that ran (see
:func:`stability_threshold`): 2 for plain gradient descent on the training set (a quadratic
with curvature ``β`` diverges along its sharpest direction when ``ηβ > 2``), ``2(1 + μ_m)`` for
heavy-ball momentum ``μ_m`` (the stability limit of the heavy-ball iteration on a quadratic).
For adaptive optimizers (Adam, RMSprop, …) the effective step is preconditioned, so ``η·β`` is
indicative only and no threshold applies; nor does one when the probe is not the training set
(the sharpness of another objective).

Example:
    >>> LIN_GAP_REL.classify(0.05), LIN_GAP_REL.classify(0.2), LIN_GAP_REL.classify(0.5)
    ('lazy', 'transitional', 'left')
    >>> NTK_DRIFT_OP.classify(0.99), NTK_DRIFT_OP.classify(1.0)
    ('transitional', 'left')
    >>> round(negative_eigenvalue_tolerance(2.0), 10)
    0.0002384186
    >>> stability_threshold({"optimizer": "SGD", "plain_sgd": True, "probe_is_training_set": True})
    StabilityThreshold(threshold=2.0, basis='plain gradient descent on the training set')
    >>> stability_threshold({"optimizer": "SGD", "momentum": 0.9, "probe_is_training_set": True}).threshold
    3.8
    >>> stability_threshold({"optimizer": "Adam"}).threshold is None
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from lightning_lplr.report.numbers import finite_number

__all__ = [
    "FLOAT32_EPS",
    "GRAM_NOISE_FACTOR",
    "LAZY",
    "LEFT",
    "LIN_GAP_REL",
    "NTK_DRIFT_OP",
    "REGIME_THRESHOLDS",
    "TRANSITIONAL",
    "RegimeThresholds",
    "StabilityThreshold",
    "negative_eigenvalue_tolerance",
    "stability_threshold",
]

LAZY = "lazy"
TRANSITIONAL = "transitional"
LEFT = "left"


@dataclass(frozen=True)
class RegimeThresholds:
    """The two thresholds of a lazy-regime measure: ``lazy < lazy_below ≤ transitional < left_from ≤ left``.

    Attributes:
        key: the logged key (without prefix) the thresholds apply to.
        lazy_below: values below it are lazy.
        left_from: values at or above it have left the lazy regime.
        description: what the key measures, in words.
    """

    key: str
    lazy_below: float
    left_from: float
    description: str

    def classify(self, value: float | None) -> str | None:
        """``"lazy"``, ``"transitional"`` or ``"left"``; ``None`` for ``None`` or a non-finite value."""
        if value is None or not math.isfinite(value):
            return None
        if value < self.lazy_below:
            return LAZY
        return LEFT if value >= self.left_from else TRANSITIONAL


LIN_GAP_REL = RegimeThresholds(
    key="lin/gap_rel",
    lazy_below=0.1,
    left_from=0.5,
    description="relative linearisation gap ‖f_t − f_lin,t‖ / ‖f_t − f_0‖",
)
NTK_DRIFT_OP = RegimeThresholds(
    key="ntk/drift_op",
    lazy_below=0.1,
    left_from=1.0,
    description="relative NTK drift ‖Θ_t − Θ_0‖₂ / ‖Θ_0‖₂",
)
REGIME_THRESHOLDS: dict[str, RegimeThresholds] = {t.key: t for t in (LIN_GAP_REL, NTK_DRIFT_OP)}
"""Logged key → its lazy-regime thresholds."""

FLOAT32_EPS = 2.0**-23
"""Machine epsilon of float32 (``numpy.finfo(numpy.float32).eps``)."""
GRAM_NOISE_FACTOR = 1000.0
"""``c`` of the float32 Gram-noise tolerance ``c · ε₃₂ · λ_max`` (measurements in the module docstring)."""


def negative_eigenvalue_tolerance(lambda_max: float) -> float:
    """How negative an eigenvalue of a float32 Gram matrix with largest eigenvalue ``lambda_max`` may be.

    Args:
        lambda_max: the largest eigenvalue of the same kernel (its magnitude is used).

    Returns:
        ``GRAM_NOISE_FACTOR · FLOAT32_EPS · |lambda_max|``; ``nan`` when ``lambda_max`` is not finite.

    Example:
        >>> negative_eigenvalue_tolerance(1.0) == 1000 * 2.0**-23
        True
    """
    value = float(lambda_max)
    return GRAM_NOISE_FACTOR * FLOAT32_EPS * abs(value) if math.isfinite(value) else math.nan


class StabilityThreshold(NamedTuple):
    """The ``η·β`` above which the step is unstable, and why; ``threshold`` is ``None`` where none applies."""

    threshold: float | None
    basis: str


def stability_threshold(marker: Mapping[str, Any] | None) -> StabilityThreshold:
    """The stability threshold of ``ntk/eta_beta`` for the optimizer a run's schema marker describes.

    Args:
        marker: the run's schema marker (:mod:`lightning_lplr.reporting.marker`); ``None`` for a run
            without one.

    Returns:
        ``StabilityThreshold(2.0, …)`` for plain SGD with probe = training set,
        ``StabilityThreshold(2(1 + μ_m), …)`` for SGD with heavy-ball momentum ``μ_m`` and probe =
        training set, and ``StabilityThreshold(None, reason)`` otherwise (``η·β`` indicative only).

    Example:
        >>> stability_threshold(None).basis
        'no schema marker: the optimizer and what ntk/eta_beta measured are unknown'
    """
    if marker is None:
        return StabilityThreshold(
            None, "no schema marker: the optimizer and what ntk/eta_beta measured are unknown"
        )
    optimizer = marker.get("optimizer")
    name = str(optimizer) if optimizer is not None else "unknown"
    if optimizer is None or name.lower() != "sgd":
        return StabilityThreshold(
            None, f"optimizer {name}: an adaptive or other step, η·β is indicative only"
        )
    if marker.get("probe_is_training_set") is not True:
        return StabilityThreshold(
            None, "the probe is not the whole training set: η·β is the sharpness of another objective"
        )
    momentum = finite_number(marker.get("momentum")) or 0.0
    if marker.get("plain_sgd") is True and momentum == 0.0:
        return StabilityThreshold(2.0, "plain gradient descent on the training set")
    if momentum > 0.0:
        return StabilityThreshold(
            2.0 * (1.0 + momentum), f"heavy-ball momentum {momentum:g} on the training set: 2(1 + μ_m)"
        )
    return StabilityThreshold(
        None, "SGD with weight decay, Nesterov or several learning rates: η·β is indicative only"
    )
