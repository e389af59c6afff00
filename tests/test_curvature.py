"""Gauss–Newton sharpness and the kernel-predicted loss curve against float64 brute-force oracles.

Oracles are independent of the code under test: ``J`` from ``torch.autograd.functional.jacobian``,
``H`` from ``torch.autograd.functional.hessian`` of the loss w.r.t. the outputs, ``β`` from
``eigvalsh`` of the ``P × P`` matrix ``Jᵀ H J``, and the loss curve from actual float64 GD.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_lplr.functional.curvature import (
    DENSE_MAX_SIZE,
    GaussNewtonSharpness,
    KernelLossModel,
    gauss_newton_sharpness,
    has_constant_hessian,
    kernel_loss_model,
    kernel_predicted_loss,
    output_hessian,
    output_hvp,
)

# Round-off of the oracle itself: eigvalsh of the P × P float64 matrix is backward stable, error
# ≲ P·ε·‖JᵀHJ‖ ≈ 250 · 2.2e-16 ≈ 6e-14 relative; the dense path has the same order. 1e-8 leaves
# a wide margin for the conditioning of forming JᵀHJ vs K^{1/2}HK^{1/2}, and still fails on
# any mathematical error (a wrong H, a missing factor, |λ| instead of λ).
DENSE_RTOL = 1e-8


class Probe:
    """A small tanh MLP on a probe: its Jacobian (autograd), outputs and full kernel K = J Jᵀ."""

    def __init__(self, m: int, inp: int, hidden: int, out: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.m, self.O = m, out
        shapes = [(hidden, inp), (hidden,), (out, hidden), (out,)]
        self.shapes = shapes
        self.sizes = [math.prod(s) for s in shapes]
        self.theta = torch.randn(sum(self.sizes), generator=gen, dtype=torch.float64) / 2
        self.x = torch.randn(m, inp, generator=gen, dtype=torch.float64)
        self.jac = torch.autograd.functional.jacobian(self.forward, self.theta, vectorize=True)  # (m·O, P)
        self.outputs = self.forward(self.theta).reshape(m, out).detach()
        self.kernel = self.jac @ self.jac.T
        self.labels = torch.arange(m) % out
        self.targets = torch.randn(m, out, generator=gen, dtype=torch.float64)

    def forward(self, theta: Tensor) -> Tensor:
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(theta.split(self.sizes), self.shapes, strict=True))
        return (torch.tanh(self.x @ w1.T + b1) @ w2.T + b2).reshape(-1)

    def brute_force_spectrum(self, targets: object, loss_fn: Callable) -> Tensor:
        """Ascending eigenvalues of the P × P Gauss–Newton matrix Jᵀ H J (float64)."""
        hess = torch.autograd.functional.hessian(
            lambda z: loss_fn(z.reshape(self.m, self.O), targets), self.outputs.reshape(-1), vectorize=True
        )
        gn = self.jac.T @ hess @ self.jac
        return torch.linalg.eigvalsh((gn + gn.T) / 2)


M, OUT = 5, 4


@pytest.fixture(scope="module")
def small() -> Probe:
    return Probe(M, 3, 8, OUT, seed=0)  # n = 20 outputs, P = 68 parameters


def _indefinite(f: Tensor, y: Tensor) -> Tensor:
    """A custom loss whose output Hessian is indefinite and depends on f (not a squared loss)."""
    r = f - y
    return 0.5 * (r[:, 0] ** 2).sum() - 2.0 * (r[:, 1] ** 2).sum() + 0.1 * torch.cos(f).sum()


CLASS_WEIGHTS = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
IGNORED = torch.tensor([0, -100, 2, 3, -100])

LOSSES: dict[str, tuple[str, Callable]] = {
    "mse_sum": ("targets", lambda f, y: F.mse_loss(f, y, reduction="sum")),
    "mse_mean": ("targets", F.mse_loss),
    "half_sq_over_m": ("targets", lambda f, y: 0.5 * ((f - y) ** 2).sum() / f.shape[0]),
    "huber": ("targets", lambda f, y: F.huber_loss(f, y, delta=0.5)),
    "cross_entropy": ("labels", F.cross_entropy),
    "ce_smoothing_weights": (
        "labels",
        lambda f, y: F.cross_entropy(f, y, weight=CLASS_WEIGHTS, label_smoothing=0.1),
    ),
    "ce_ignore_index": ("ignored", lambda f, y: F.cross_entropy(f, y, ignore_index=-100)),
    "indefinite": ("targets", _indefinite),
}


def _targets(probe: Probe, kind: str) -> Tensor:
    return {"targets": probe.targets, "labels": probe.labels, "ignored": IGNORED}[kind]


# ---------------------------------------------------------------------------------------------
# Gauss–Newton sharpness: dense path against the P × P brute force
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOSSES))
def test_dense_sharpness_matches_brute_force(small: Probe, name: str) -> None:
    kind, loss_fn = LOSSES[name]
    targets = _targets(small, kind)
    brute = small.brute_force_spectrum(targets, loss_fn)
    result = gauss_newton_sharpness(small.kernel, small.outputs, targets, loss_fn, method="dense")
    assert isinstance(result, GaussNewtonSharpness)
    assert (result.method, result.iterations, result.converged, result.residual) == ("dense", 0, True, 0.0)
    assert brute[-1] > 0  # P > n, so λ_max(JᵀHJ) = max(β, 0) = β here
    assert result.value == pytest.approx(float(brute[-1]), rel=DENSE_RTOL)
    # "auto" picks the dense path at n = 20 and returns the same number
    assert gauss_newton_sharpness(small.kernel, small.outputs, targets, loss_fn).value == result.value


def test_indefinite_loss_gives_largest_signed_eigenvalue_not_largest_magnitude(small: Probe) -> None:
    brute = small.brute_force_spectrum(small.targets, _indefinite)
    lam_max, lam_min = float(brute[-1]), float(brute[0])
    assert lam_min < 0 < lam_max and abs(lam_min) > 1.5 * lam_max  # the oracle is genuinely indefinite
    for method in ("dense", "lanczos"):
        value = gauss_newton_sharpness(small.kernel, small.outputs, small.targets, _indefinite, method=method)
        assert value.value == pytest.approx(lam_max, rel=DENSE_RTOL)
        assert abs(value.value - abs(lam_min)) > 0.5 * lam_max  # not what power iteration would find


@pytest.mark.parametrize(
    ("name", "closed_form"),
    [
        ("half_sq_over_m", lambda lam, m, o: lam / m),
        ("mse_mean", lambda lam, m, o: 2 * lam / (m * o)),
        ("mse_sum", lambda lam, m, o: 2 * lam),
    ],
)
def test_squared_losses_closed_forms(small: Probe, name: str, closed_form: Callable) -> None:
    _, loss_fn = LOSSES[name]
    lam_max = float(torch.linalg.eigvalsh(small.kernel)[-1])
    for method in ("dense", "lanczos"):
        value = gauss_newton_sharpness(
            small.kernel, small.outputs, small.targets, loss_fn, method=method
        ).value
        assert value == pytest.approx(closed_form(lam_max, M, OUT), rel=1e-10)


def test_precomputed_kernel_eigh_is_used_and_checked(small: Probe) -> None:
    loss_fn = LOSSES["ce_smoothing_weights"][1]
    plain = gauss_newton_sharpness(small.kernel, small.outputs, small.labels, loss_fn, method="dense")
    evals, evecs = torch.linalg.eigh(small.kernel)
    reused = gauss_newton_sharpness(
        small.kernel, small.outputs, small.labels, loss_fn, method="dense", kernel_eigh=(evals, evecs)
    )
    assert reused.value == pytest.approx(plain.value, rel=1e-12)
    # a decomposition of another kernel is used as given: the caller's promise, visible in the value
    scaled = gauss_newton_sharpness(
        small.kernel, small.outputs, small.labels, loss_fn, method="dense", kernel_eigh=(4 * evals, evecs)
    )
    assert scaled.value == pytest.approx(4 * plain.value, rel=1e-12)
    with pytest.raises(ValueError, match=r"kernel_eigh .*torch\.linalg\.eigh\(kernel\)"):
        gauss_newton_sharpness(
            small.kernel, small.outputs, small.labels, loss_fn, kernel_eigh=(evals[:-1], evecs)
        )


# ---------------------------------------------------------------------------------------------
# Lanczos path on a larger problem, full-rank and rank-deficient kernels
# ---------------------------------------------------------------------------------------------

LANCZOS_TOL = 1e-10  # the documented default: converged ⇒ residual ≤ tol · max|Ritz| ≤ tol · ‖B‖


@pytest.fixture(scope="module")
def large_full_rank() -> Probe:
    return Probe(30, 6, 16, 8, seed=1)  # n = 240, P = 248: K has full rank


@pytest.fixture(scope="module")
def large_singular() -> Probe:
    return Probe(30, 6, 4, 8, seed=2)  # n = 240, P = 68: K has rank ≤ 68


@pytest.mark.parametrize("fixture", ["large_full_rank", "large_singular"])
@pytest.mark.parametrize("name", ["mse_mean", "cross_entropy", "indefinite"])
def test_lanczos_within_stated_tolerance(request: pytest.FixtureRequest, fixture: str, name: str) -> None:
    probe: Probe = request.getfixturevalue(fixture)
    kind, loss_fn = LOSSES[name]
    targets = probe.labels if kind == "labels" else probe.targets
    brute = probe.brute_force_spectrum(targets, loss_fn)
    norm_b = float(brute.abs().max())  # ‖B‖ = ‖JᵀHJ‖ (same non-zero spectrum)
    result = gauss_newton_sharpness(probe.kernel, probe.outputs, targets, loss_fn, method="lanczos")
    assert result.method == "lanczos" and result.converged
    assert 1 < result.iterations < probe.kernel.shape[0]
    assert result.residual <= LANCZOS_TOL * norm_b
    # some eigenvalue within `residual`, and it is the top one; plus the oracle's own P·ε round-off
    assert abs(result.value - float(brute[-1])) <= LANCZOS_TOL * norm_b + 1e-12 * norm_b


def test_lanczos_is_deterministic_and_reports_non_convergence(large_full_rank: Probe) -> None:
    p = large_full_rank
    args = (p.kernel, p.outputs, p.labels, F.cross_entropy)
    first = gauss_newton_sharpness(*args, method="lanczos")
    assert gauss_newton_sharpness(*args, method="lanczos") == first
    capped = gauss_newton_sharpness(*args, method="lanczos", max_iter=3)
    assert capped.iterations == 3 and not capped.converged
    assert capped.residual > LANCZOS_TOL * abs(capped.value)
    assert capped.value <= first.value + 1e-12  # Ritz values increase towards λ_max from below


def test_auto_switches_to_lanczos_above_the_dense_size() -> None:
    n = DENSE_MAX_SIZE + 8  # 520 = 130 samples × 4 outputs
    diag = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    diag[n // 3] = 3.0  # a clear gap at the top: Lanczos converges in a few tens of iterations
    outputs, targets = torch.zeros(n // 4, 4), torch.ones(n // 4, 4)
    result = gauss_newton_sharpness(torch.diag(diag), outputs, targets, F.mse_loss)
    assert result.method == "lanczos" and result.converged
    assert result.value == pytest.approx(2 * 3.0 / n, rel=1e-9)  # 2 λ_max(K) / (m·O)


# ---------------------------------------------------------------------------------------------
# NaN handling and errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_non_finite_inputs_give_nan(small: Probe, method: str) -> None:
    bad_kernel = small.kernel.clone()
    bad_kernel[0, 1] = math.nan
    bad_outputs = small.outputs.clone()
    bad_outputs[2, 1] = math.inf
    bad_targets = small.targets.clone()
    bad_targets[0, 0] = math.nan
    for kernel, outputs, targets in [
        (bad_kernel, small.outputs, small.targets),
        (small.kernel, bad_outputs, small.targets),
        (small.kernel, small.outputs, bad_targets),
    ]:
        result = gauss_newton_sharpness(kernel, outputs, targets, F.mse_loss, method=method)
        assert math.isnan(result.value) and math.isnan(result.residual) and not result.converged
        assert result.method == method


def test_errors_name_the_argument_and_the_fix(small: Probe) -> None:
    with pytest.raises(ValueError, match=r"outputs has shape \(5, 3\).*kernel is 20 × 20.*'full'"):
        gauss_newton_sharpness(small.kernel, small.outputs[:, :3], small.targets[:, :3], F.mse_loss)
    with pytest.raises(ValueError, match="method='power' is not one of"):
        gauss_newton_sharpness(small.kernel, small.outputs, small.targets, F.mse_loss, method="power")
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar.*reduction"):
        gauss_newton_sharpness(
            small.kernel, small.outputs, small.targets, lambda f, y: F.mse_loss(f, y, reduction="none")
        )
    with pytest.raises(ValueError, match="3-D"):
        gauss_newton_sharpness(torch.zeros(5, 5, 4), small.outputs, small.targets, F.mse_loss)
    with pytest.raises(ValueError, match="tol=-1"):
        gauss_newton_sharpness(small.kernel, small.outputs, small.targets, F.mse_loss, tol=-1)
    with pytest.raises(ValueError, match="max_iter=0"):
        gauss_newton_sharpness(small.kernel, small.outputs, small.targets, F.mse_loss, max_iter=0)


# ---------------------------------------------------------------------------------------------
# Output Hessian helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ce_smoothing_weights", "ce_ignore_index", "huber", "mse_mean"])
def test_output_hessian_and_hvp_match_autograd(small: Probe, name: str) -> None:
    kind, loss_fn = LOSSES[name]
    targets = _targets(small, kind)
    oracle = torch.autograd.functional.hessian(
        lambda z: loss_fn(z.reshape(M, OUT), targets), small.outputs.reshape(-1)
    )
    hess = output_hessian(small.outputs, targets, loss_fn)
    assert hess.dtype == torch.float64 and hess.shape == (M * OUT, M * OUT)
    torch.testing.assert_close(hess, oracle, rtol=0, atol=1e-14)
    hvp = output_hvp(small.outputs, targets, loss_fn)
    v = torch.randn(3, M * OUT, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(hvp(v), v @ oracle, rtol=0, atol=1e-13)
    torch.testing.assert_close(hvp(v[0]), oracle @ v[0], rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match=r"v has shape \(7,\)"):
        hvp(torch.zeros(7))


def test_output_hessian_non_finite_is_nan(small: Probe) -> None:
    bad = small.outputs.clone()
    bad[0, 0] = math.nan
    assert bool(torch.isnan(output_hessian(bad, small.labels, F.cross_entropy)).all())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mse_sum", True),
        ("mse_mean", True),
        ("half_sq_over_m", True),
        ("cross_entropy", False),
        ("ce_smoothing_weights", False),
        ("indefinite", False),
    ],
)
def test_has_constant_hessian(small: Probe, name: str, expected: bool) -> None:
    kind, loss_fn = LOSSES[name]
    targets = _targets(small, kind)
    assert has_constant_hessian(loss_fn, small.outputs, None, targets) is expected
    far = small.outputs + 3.0 * torch.ones_like(small.outputs).cumsum(0)
    assert has_constant_hessian(loss_fn, small.outputs, far, targets) is expected


def test_has_constant_hessian_masked_weighted_squares_and_edge_cases(small: Probe) -> None:
    mask = (torch.arange(M * OUT).reshape(M, OUT) % 3 != 0).double()

    def masked(f: Tensor, y: Tensor) -> Tensor:
        return (mask * (f - y) ** 2).sum() / mask.sum()

    assert has_constant_hessian(masked, small.outputs, None, small.targets)
    assert has_constant_hessian(lambda f, y: (f * 0).sum(), small.outputs, None, small.targets)  # H = 0
    bad = small.outputs.clone()
    bad[1, 1] = math.nan
    assert not has_constant_hessian(F.mse_loss, bad, None, small.targets)
    with pytest.raises(ValueError, match=r"outputs_b has shape \(5, 3\)"):
        has_constant_hessian(F.mse_loss, small.outputs, small.outputs[:, :3], small.targets)
    with pytest.raises(ValueError, match="num_probes=0"):
        has_constant_hessian(F.mse_loss, small.outputs, None, small.targets, num_probes=0)


# ---------------------------------------------------------------------------------------------
# Kernel-predicted loss: exact for a linear model under float64 full-batch GD
# ---------------------------------------------------------------------------------------------

LIN_M, LIN_D, LIN_O, LIN_T = 8, 5, 3, 40


class LinearProblem:
    """f = X Wᵀ + b: the Jacobian is constant, so GD is exactly linear in output space."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(3)
        self.x = torch.randn(LIN_M, LIN_D, generator=gen, dtype=torch.float64)
        self.y = torch.randn(LIN_M, LIN_O, generator=gen, dtype=torch.float64)
        self.theta0 = torch.randn(LIN_O * LIN_D + LIN_O, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda t: self.forward(t).reshape(-1), self.theta0)
        self.kernel = jac @ jac.T  # (24, 24), rank ≤ 3·(d+1) = 18: part of the residual is unreachable

    def forward(self, theta: Tensor) -> Tensor:
        w = theta[: LIN_O * LIN_D].reshape(LIN_O, LIN_D)
        return self.x @ w.T + theta[LIN_O * LIN_D :]

    def gd_losses(self, loss_fn: Callable, step_sizes: Tensor) -> Tensor:
        theta = self.theta0.clone().requires_grad_(True)
        losses = []
        for eta in [*step_sizes.tolist(), None]:
            loss = loss_fn(self.forward(theta), self.y)
            losses.append(loss.item())
            if eta is None:
                break
            (grad,) = torch.autograd.grad(loss, theta)
            theta = (theta - eta * grad).detach().requires_grad_(True)
        return torch.tensor(losses, dtype=torch.float64)


@pytest.fixture(scope="module")
def linear() -> LinearProblem:
    return LinearProblem()


@pytest.mark.parametrize(
    "loss_fn",
    [lambda f, y: 0.5 * ((f - y) ** 2).sum() / f.shape[0], F.mse_loss],
    ids=["half_sq_over_m", "mse_mean"],
)
@pytest.mark.parametrize("schedule", ["constant", "cosine_with_overshoot"])
def test_kernel_predicted_loss_reproduces_linear_gd(
    linear: LinearProblem, loss_fn: Callable, schedule: str
) -> None:
    outputs0 = linear.forward(linear.theta0).detach()
    beta = gauss_newton_sharpness(linear.kernel, outputs0, linear.y, loss_fn).value
    t = torch.arange(LIN_T, dtype=torch.float64)
    if schedule == "constant":
        steps = torch.full((LIN_T,), 1.5 / beta)  # 1 − ηλ_max = −0.5: an oscillating mode
    else:
        steps = (0.2 + 1.6 * 0.5 * (1 + torch.cos(math.pi * t / LIN_T))) / beta  # from 1.8/β down to 0.2/β
    actual = linear.gd_losses(loss_fn, steps)
    predicted = kernel_predicted_loss(linear.kernel, outputs0, linear.y, loss_fn, steps)
    assert predicted.shape == (LIN_T + 1,)
    assert actual[-1] < 0.5 * actual[0]  # the curve really moves (and stays well above round-off)
    torch.testing.assert_close(predicted, actual, rtol=1e-10, atol=0)


def test_kernel_loss_model_fields_batches_and_incremental_form(linear: LinearProblem) -> None:
    outputs0 = linear.forward(linear.theta0).detach()
    model = kernel_loss_model(linear.kernel, outputs0, linear.y, F.mse_loss)
    assert isinstance(model, KernelLossModel)
    assert model.loss_star == 0.0  # derived: the minimum of a squared loss over all outputs
    assert model.loss0 == pytest.approx(F.mse_loss(outputs0, linear.y).item(), rel=1e-15)
    assert bool((model.eigenvalues >= 0).all())
    assert 0.5 * float(model.weights.sum()) == pytest.approx(model.loss0, rel=1e-13)
    # H = 2/(m·O) I, so λ(H^{1/2} K H^{1/2}) = 2 λ(K) / (m·O)
    lam_k = torch.linalg.eigvalsh(linear.kernel)
    torch.testing.assert_close(
        model.eigenvalues, (2 * lam_k / (LIN_M * LIN_O)).clamp_min(0), rtol=0, atol=1e-12
    )
    steps = torch.rand(2, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    both = model.curve(steps)
    assert both.shape == (2, 11)
    torch.testing.assert_close(both[1], model.curve(steps[1]), rtol=1e-15, atol=0)
    s = model.log_decay(steps[0, :4])
    s = model.log_decay(steps[0, 4:], initial=s)
    assert float(model.loss_from_log_decay(s)) == pytest.approx(float(both[0, -1]), rel=1e-13)
    with pytest.raises(ValueError, match=r"initial has shape \(3,\)"):
        model.log_decay(steps[0], initial=torch.zeros(3))


def test_curve_against_direct_products_with_zero_and_negative_factors() -> None:
    lam = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    weights = torch.tensor([0.3, 1.0, 2.0, 0.5], dtype=torch.float64)
    model = KernelLossModel(lam, weights, 0.25, 0.25 + 0.5 * float(weights.sum()))
    steps = torch.tensor([0.5, 1.0, 0.75, 0.1], dtype=torch.float64)  # 1−ηλ hits 0 (1·1) and −2 (0.75·4)
    expected = []
    for t in range(len(steps) + 1):
        prod = torch.ones(4, dtype=torch.float64)
        for eta in steps[:t]:
            prod = prod * (1 - eta * lam) ** 2
        expected.append(0.25 + 0.5 * float((prod * weights).sum()))
    torch.testing.assert_close(
        model.curve(steps), torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0
    )
    # after η = 0.5, 1.0 the λ = 1 and λ = 2 modes are exactly 0 (1 − 1·1 and 1 − 0.5·2); λ = 4 has (−1·−3)²
    assert float(model.curve(steps)[2]) == pytest.approx(0.25 + 0.5 * (0.3 + 9 * 0.5), rel=1e-15)
    with pytest.raises(ValueError, match="step_sizes holds a NaN"):
        model.curve(torch.tensor([0.1, math.nan]))


def test_kernel_loss_model_loss_star_and_rejections(linear: LinearProblem) -> None:
    outputs0 = linear.forward(linear.theta0).detach()

    def offset(f: Tensor, y: Tensor) -> Tensor:
        return 0.5 * ((f - y) ** 2).sum() + 3.0

    assert kernel_loss_model(linear.kernel, outputs0, linear.y, offset).loss_star == pytest.approx(
        3.0, rel=1e-12
    )
    given = kernel_loss_model(linear.kernel, outputs0, linear.y, F.mse_loss, loss_star=0.5)
    assert float(given.curve([])[0]) == pytest.approx(0.5 + F.mse_loss(outputs0, linear.y).item(), rel=1e-13)
    # a float32 NTK of this rank-deficient (18 of 24) kernel has negative round-off eigenvalues: accepted
    from_float32 = kernel_loss_model(linear.kernel.float(), outputs0, linear.y, F.mse_loss)
    assert bool((from_float32.eigenvalues >= 0).all())
    with pytest.raises(ValueError, match="Hessian that changes with the outputs"):
        kernel_loss_model(linear.kernel, outputs0, torch.arange(LIN_M) % LIN_O, F.cross_entropy)

    def concave_part(f: Tensor, y: Tensor) -> Tensor:
        r = f - y
        return (r[:, 0] ** 2).sum() - 0.5 * (r[:, 1] ** 2).sum()

    with pytest.raises(ValueError, match="negative eigenvalue"):
        kernel_loss_model(linear.kernel, outputs0, linear.y, concave_part)
    with pytest.raises(ValueError, match="kernel0 is not positive semi-definite"):
        kernel_loss_model(-linear.kernel, outputs0, linear.y, F.mse_loss)
    with pytest.raises(ValueError, match=r"outputs0 has shape \(8, 2\)"):
        kernel_loss_model(linear.kernel, outputs0[:, :2], linear.y[:, :2], F.mse_loss)
    bad = outputs0.clone()
    bad[0, 0] = math.nan
    assert bool(
        torch.isnan(kernel_predicted_loss(linear.kernel, bad, linear.y, F.mse_loss, [0.1, 0.1])).all()
    )
