"""functional.region against independent values: brute-force norms, Weyl's inequality, hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_lplr.functional.region import (
    parameter_distance,
    region_estimate,
    relative_drift,
    symmetric_operator_distance,
)


def test_parameter_distance_equals_the_norm_of_the_concatenated_difference():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "only_a": torch.ones(2)}
    b = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}
    flat = torch.cat([(a["w"].double() - b["w"].double()).flatten(), a["b"].double() - b["b"].double()])
    assert parameter_distance(a, b) == pytest.approx(float(flat.norm()), rel=1e-12)
    assert parameter_distance(a, a) == 0.0
    assert parameter_distance({"x": torch.ones(2)}, {}) == 0.0


def test_operator_distance_equals_the_largest_singular_value_of_the_difference():
    g = torch.Generator().manual_seed(1)
    j = torch.randn(6, 9, generator=g, dtype=torch.float64)
    k0 = j @ j.T
    e = torch.randn(6, 6, generator=g, dtype=torch.float64)
    k = k0 + 0.05 * (e + e.T)
    oracle = float(torch.linalg.svdvals(k - k0)[0])
    assert symmetric_operator_distance(k, k0) == pytest.approx(oracle, rel=1e-12)
    # A float32 kernel whose rows came from several processes: not exactly symmetric.
    noisy = k.float().clone()
    noisy[0, 1] += 1e-7
    assert symmetric_operator_distance(noisy, k0.float()) == pytest.approx(oracle, rel=1e-5)
    k_nan = k.clone()
    k_nan[0, 0] = math.nan
    assert math.isnan(symmetric_operator_distance(k_nan, k0))
    with pytest.raises(ValueError, match="same shape"):
        symmetric_operator_distance(k, k0[:3, :3])


def test_relative_drift_edge_cases():
    assert relative_drift(1.0, 4.0) == 0.25
    assert relative_drift(0.0, 0.0) == 0.0
    assert relative_drift(2.0, 0.0) == math.inf
    assert math.isnan(relative_drift(math.nan, 1.0))


def test_region_estimate_keeps_the_largest_ratio_and_lower_bounds_lambda_min_by_weyl():
    """With the true path Lipschitz constant, μ_cert ≤ λ_min(Θ_t) (Weyl); the estimate tracks the max."""
    g = torch.Generator().manual_seed(2)
    j0 = torch.randn(5, 30, generator=g, dtype=torch.float64)
    direction = torch.randn(5, 30, generator=g, dtype=torch.float64)
    theta0 = j0.clone()
    lam0 = float(torch.linalg.eigvalsh(j0 @ j0.T)[0])
    lipschitz = 0.0
    for t in (0.01, 0.05, 0.1):
        jt = j0 + t * direction  # a "model" whose Jacobian moves linearly with the parameters
        kt, k0 = jt @ jt.T, j0 @ j0.T
        distance = float(torch.linalg.svdvals(kt - k0)[0])
        radius = parameter_distance({"j": jt}, {"j": theta0})
        est = region_estimate(lam0, distance, radius, lipschitz)
        assert est.lipschitz == pytest.approx(max(lipschitz, distance / radius), rel=1e-12)
        lipschitz = est.lipschitz
        assert est.mu_cert == pytest.approx(lam0 - lipschitz * radius, rel=1e-12)
        assert est.inside == (est.mu_cert > 0)
        # Weyl: λ_min(K_t) ≥ λ_min(K_0) − ‖K_t − K_0‖₂ = λ_min(K_0) − (distance/radius)·radius.
        assert float(torch.linalg.eigvalsh(kt)[0]) >= lam0 - distance - 1e-9
    # A zero radius adds no direction; a NaN distance leaves the constant unchanged.
    assert region_estimate(1.0, 0.5, 0.0, 0.2).lipschitz == 0.2
    assert region_estimate(1.0, math.nan, 1.0, 0.2).lipschitz == 0.2
