"""Spectrum statistics, kernel distances and alignment against numpy oracles and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_lplr.functional import (
    SpectrumStats,
    eigenvalues,
    empirical_ntk,
    kernel_alignment,
    kernel_distance,
    operator_norm,
    spectrum_from_eigenvalues,
    spectrum_stats,
)

# Both torch.linalg.eigvalsh and numpy.linalg.eigvalsh are backward-stable LAPACK
# symmetric eigensolvers in float64: each eigenvalue is off by at most about
# n·eps·‖A‖₂ (Weyl), so for n ≤ 40 an absolute tolerance of 1e-12·λ_max is ~50x
# that bound and still 4 orders below any real disagreement.
EIG_ATOL_REL = 1e-12


def _random_psd(n: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((n, rank))
    return b @ b.T


@pytest.mark.parametrize("n", [1, 5, 40], ids=lambda n: f"n={n}")
@pytest.mark.parametrize("rank_fraction", [1.0, 0.5], ids=["full-rank", "half-rank"])
def test_eigenvalues_match_numpy_on_random_psd(n: int, rank_fraction: float) -> None:
    a = _random_psd(n, max(1, int(n * rank_fraction)), seed=n)
    expected = np.linalg.eigvalsh(a)
    got = eigenvalues(torch.from_numpy(a))
    assert got.dtype == torch.float64 and got.shape == (n,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=EIG_ATOL_REL * expected[-1])
    assert bool((got[1:] >= got[:-1]).all()), "eigenvalues must be ascending"


def test_eigenvalues_symmetrise_cast_and_normalize() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 6))  # not symmetric: the symmetric part is what counts
    expected = np.linalg.eigvalsh((a + a.T) / 2)
    scale = max(1.0, abs(expected).max())
    np.testing.assert_allclose(eigenvalues(a).numpy(), expected, rtol=0, atol=EIG_ATOL_REL * scale)
    np.testing.assert_allclose(eigenvalues(a.tolist()).numpy(), expected, rtol=0, atol=EIG_ATOL_REL * scale)
    np.testing.assert_allclose(
        eigenvalues(torch.from_numpy(a), normalize=4).numpy(), expected / 4, rtol=0, atol=EIG_ATOL_REL * scale
    )
    # float32 input is promoted: the result is float64 (values equal the float32 matrix's in float64).
    a32 = torch.from_numpy(a).float()
    got = eigenvalues(a32)
    assert got.dtype == torch.float64
    sym64 = (a32.double() + a32.double().T) / 2
    np.testing.assert_allclose(got.numpy(), np.linalg.eigvalsh(sym64.numpy()), rtol=0, atol=1e-12 * scale)


def test_spectrum_stats_closed_forms() -> None:
    s = spectrum_stats(torch.diag(torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)), normalize=0.5)
    assert isinstance(s, SpectrumStats)
    assert (s.lambda_min, s.lambda_max, s.trace) == pytest.approx((1.0, 16.0, 21.0), rel=1e-14)
    assert s.condition_number == pytest.approx(16.0, rel=1e-14)
    assert all(type(v) is float for v in s[1:])
    # λ_min = 0 (singular) and λ_min < 0 (indefinite) give an infinite condition number.
    assert spectrum_stats(torch.diag(torch.tensor([0.0, 1.0]))).condition_number == math.inf
    assert spectrum_stats(torch.diag(torch.tensor([-1e-12, 1.0]))).condition_number == math.inf
    # Trace of a random PSD matrix equals np.trace.
    a = _random_psd(7, 7, seed=3)
    assert spectrum_stats(a).trace == pytest.approx(np.trace(a), rel=1e-12)


@pytest.mark.parametrize("n", [1, 3, 10], ids=lambda n: f"n={n}")
def test_effective_rank_identity_is_n_and_rank_one_is_one(n: int) -> None:
    # Closed forms: p uniform → H = log n → exp(H) = n; rank one → p = e_1 → 1.
    # Only round-off of eigvalsh and exp(log n) enters: 1e-12 relative.
    assert spectrum_stats(torch.eye(n, dtype=torch.float64)).effective_rank == pytest.approx(n, rel=1e-12)
    assert spectrum_stats(7.0 * torch.eye(n)).effective_rank == pytest.approx(n, rel=1e-12)
    v = torch.arange(1.0, n + 1, dtype=torch.float64)
    assert spectrum_stats(torch.outer(v, v)).effective_rank == pytest.approx(1.0, rel=1e-12)


def test_effective_rank_entropy_closed_form_and_edge_cases() -> None:
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, exp(H) = 2^1.5; a negative eigenvalue is clamped at 0.
    k = torch.diag(torch.tensor([-0.5, 1.0, 1.0, 2.0], dtype=torch.float64))
    assert spectrum_stats(k).effective_rank == pytest.approx(2**1.5, rel=1e-12)
    assert spectrum_stats(torch.zeros(3, 3)).effective_rank == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_kernel_gives_nan_stats_without_raising(bad: float) -> None:
    k = torch.eye(4, dtype=torch.float64)
    k[1, 2] = bad
    eigs = eigenvalues(k)
    assert eigs.shape == (4,) and eigs.dtype == torch.float64 and bool(torch.isnan(eigs).all())
    s = spectrum_stats(k, normalize=4)
    assert bool(torch.isnan(s.eigenvalues).all())
    assert all(math.isnan(v) for v in s[1:])


def test_diagonal_kind_kernel_is_rejected_with_advice() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    k_diag = empirical_ntk(model, torch.randn(4, 3, dtype=torch.float64), kind="diagonal")
    assert k_diag.shape == (4, 4, 2)
    with pytest.raises(ValueError, match=r"\(4, 4, 2\).*diagonal.*kernel\[\.\.\., a\].*'trace'"):
        eigenvalues(k_diag)
    with pytest.raises(ValueError, match="diagonal"):
        spectrum_stats(k_diag)
    # One output slice is a valid (m, m) kernel.
    assert eigenvalues(k_diag[..., 0]).shape == (4,)


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [((3, 4), r"square.*\(3, 4\)"), ((5,), r"square.*\(5,\)"), ((0, 0), r"\(0, 0\).*at least one")],
    ids=["3x4", "vector", "empty"],
)
def test_non_square_kernel_raises_naming_shape(shape: tuple[int, ...], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        eigenvalues(torch.ones(shape))


@pytest.mark.parametrize("normalize", [0, -2.0, math.nan, math.inf, True], ids=str)
def test_bad_normalize_raises(normalize: float) -> None:
    with pytest.raises(ValueError, match=rf"normalize={normalize!r}.*positive finite"):
        eigenvalues(torch.eye(2), normalize=normalize)


@pytest.mark.parametrize("norm", ["op", "fro"])
def test_kernel_distance_self_zero_and_double_one(norm: str) -> None:
    k = torch.from_numpy(_random_psd(8, 8, seed=5))
    assert kernel_distance(k, k, norm=norm) == 0.0
    # ‖2K − K‖ / ‖K‖ = 1 in any norm; only round-off of the norms enters.
    assert kernel_distance(2 * k, k, norm=norm) == pytest.approx(1.0, rel=1e-12)
    assert kernel_distance(k, 2 * k, norm=norm) == pytest.approx(0.5, rel=1e-12)


def test_kernel_distance_op_and_fro_closed_forms() -> None:
    # K0 = I₂, K = diag(2, 1): K − K0 = diag(1, 0); op: 1/1, fro: 1/√2.
    k0 = torch.eye(2, dtype=torch.float64)
    k = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert kernel_distance(k, k0, norm="op") == pytest.approx(1.0, rel=1e-14)
    assert kernel_distance(k, k0, norm="fro") == pytest.approx(1 / math.sqrt(2), rel=1e-14)
    # Against numpy on random kernels.
    a, b = _random_psd(6, 6, seed=7), _random_psd(6, 6, seed=8)
    assert kernel_distance(a, b) == pytest.approx(np.linalg.norm(a - b, 2) / np.linalg.norm(b, 2), rel=1e-12)
    expected_fro = np.linalg.norm(a - b, "fro") / np.linalg.norm(b, "fro")
    assert kernel_distance(a, b, norm="fro") == pytest.approx(expected_fro, rel=1e-12)
    # A 3-D diagonal kernel has a Frobenius but no operator distance.
    assert kernel_distance(2 * torch.ones(2, 2, 3), torch.ones(2, 2, 3), norm="fro") == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"norm='op'.*\(2, 2, 3\)"):
        kernel_distance(torch.ones(2, 2, 3), torch.ones(2, 2, 3))


def test_kernel_distance_degenerate_values() -> None:
    z = torch.zeros(2, 2)
    assert math.isnan(kernel_distance(z, z))
    assert kernel_distance(torch.eye(2), z) == math.inf
    bad = torch.eye(2)
    bad[0, 0] = math.nan
    assert math.isnan(kernel_distance(bad, torch.eye(2)))


def test_kernel_distance_bad_norm_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"norm='nuc'.*'op', 'fro'"):
        kernel_distance(torch.eye(2), torch.eye(2), norm="nuc")
    with pytest.raises(ValueError, match=r"kernel \(2, 2\) and reference \(3, 3\)"):
        kernel_distance(torch.eye(2), torch.eye(3))


def test_kernel_alignment() -> None:
    a, b = _random_psd(6, 3, seed=11), _random_psd(6, 6, seed=12)
    expected = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert kernel_alignment(a, b) == pytest.approx(expected, rel=1e-12)
    assert kernel_alignment(torch.from_numpy(a), 5 * torch.from_numpy(a)) == pytest.approx(1.0, rel=1e-12)
    assert kernel_alignment(a, -a) == pytest.approx(-1.0, rel=1e-12)
    assert kernel_alignment(np.diag([1.0, 0.0]), np.diag([0.0, 1.0])) == 0.0
    # Cauchy–Schwarz; PSD kernels have a non-negative Frobenius product.
    assert 0.0 <= kernel_alignment(a, b) <= 1.0
    assert math.isnan(kernel_alignment(np.zeros((2, 2)), np.eye(2)))
    with pytest.raises(ValueError, match=r"k1 \(2, 2\) and k2 \(2, 3\)"):
        kernel_alignment(np.eye(2), np.ones((2, 3)))


def test_spectrum_from_eigenvalues_equals_spectrum_stats():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(12, 7, generator=g, dtype=torch.float64)
    k = a @ a.T
    direct = spectrum_stats(k, normalize=3)
    reused = spectrum_from_eigenvalues(eigenvalues(k, normalize=3))
    assert torch.equal(direct.eigenvalues, reused.eigenvalues)
    assert direct[1:] == reused[1:]
    nan_stats = spectrum_from_eigenvalues(torch.tensor([float("nan"), 1.0], dtype=torch.float64))
    assert all(math.isnan(v) for v in nan_stats[1:])


def test_operator_norm_is_the_largest_singular_value():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(9, 9, generator=g, dtype=torch.float64)
    sym = a + a.T
    for m in (sym, a, a[:, :4]):
        assert operator_norm(m) == pytest.approx(float(torch.linalg.matrix_norm(m, ord=2)), rel=1e-12)
    assert math.isnan(operator_norm(torch.tensor([[math.inf, 0.0], [0.0, 1.0]])))
    with pytest.raises(ValueError, match="matrix must be 2-D"):
        operator_norm(torch.ones(2, 2, 2))
