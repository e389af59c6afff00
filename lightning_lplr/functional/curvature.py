"""Output-space curvature of the trained loss: Gauss–Newton sharpness and the kernel-predicted loss curve.

Conventions: a model ``f(θ, x) ∈ R^O`` on a probe of ``m`` samples, outputs flattened
sample-major (sample ``i``, output ``a`` → entry ``i·O + a``, i.e. ``outputs.reshape(-1)`` of
an ``(m, O)`` tensor), ``n = m·O``; ``K = J Jᵀ`` is the ``"full"`` ``(n, n)`` NTK of
:func:`~lightning_lplr.functional.empirical_ntk`, unnormalised. ``loss_fn(outputs, targets)``
is the scalar loss the user trains with (``F.cross_entropy`` with or without label
smoothing, class weights or ``ignore_index``, ``F.mse_loss`` of any reduction, a lambda…),
and ``H = ∇²_f loss`` is its ``(n, n)`` Hessian with respect to the flattened outputs.

Every function here reaches ``H`` through one generic path: Hessian-vector products of
``loss_fn`` with respect to the outputs, reverse-over-reverse with :mod:`torch.func`
(``vjp`` of ``grad``; ``H`` is symmetric so ``vᵀH = Hv``), batched with ``vmap``. Reverse
over reverse is used rather than ``jvp`` of ``grad`` because torch 2.13 has no forward-mode
derivative for ``huber_loss`` and its forward-over-reverse ``mse_loss`` under ``vmap``
fails. All arithmetic is float64: ``loss_fn`` is called on float64 outputs (floating
targets are cast to float64 too), so tensors it captures, such as class weights, must
accept float64 inputs.

The module never forms a ``P × P`` matrix: curvature is computed from ``K`` and ``H`` in
output space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lightning_lplr.functional._arrays import as_float
from lightning_lplr.functional._checks import is_int
from lightning_lplr.functional._tensors import as_float64_tensor, square_kernel
from lightning_lplr.functional.spectrum import KernelLike

__all__ = [
    "DENSE_MAX_SIZE",
    "GaussNewtonSharpness",
    "KernelLossModel",
    "LossFn",
    "gauss_newton_sharpness",
    "has_constant_hessian",
    "kernel_loss_model",
    "kernel_predicted_loss",
    "output_hessian",
    "output_hvp",
]

LossFn = Callable[[Tensor, Any], Tensor]
"""``loss_fn(outputs, targets) -> scalar tensor``, the loss the user trains with."""

DENSE_MAX_SIZE = 512
"""``method="auto"`` of :func:`gauss_newton_sharpness` uses the dense path up to ``n = m·O`` this large.

The dense path costs ``n`` Hessian-vector products, a kernel eigendecomposition and two
``n³`` products; Lanczos costs one ``K·v`` and one ``H·v`` per iteration (a few tens of
iterations). On a 2-core CPU the two cost about the same near ``n = 512`` for
cross-entropy; below it the dense path is as fast and exact to round-off.
"""

_EPS = torch.finfo(torch.float64).eps
_METHODS = ("auto", "dense", "lanczos")
_VMAP_ELEMENTS = 1 << 22  # vectors per vmap chunk × n: bounds the batched backward's memory


# ---------------------------------------------------------------------------------------------
# Output-space Hessian-vector products (the one code path to H)
# ---------------------------------------------------------------------------------------------


class _OutputLoss(NamedTuple):
    """``loss_fn`` linearised at the float64 outputs ``f``: value, gradient, and ``v ↦ Hv``."""

    value: float
    grad: Tensor  # (n,) float64
    pullback: Callable[[Tensor], tuple[Tensor, ...]]
    n: int


def _flat_outputs(outputs: Any, argument: str) -> tuple[Tensor, torch.Size]:
    if not isinstance(outputs, Tensor):
        raise TypeError(
            f"{argument} must be a tensor of model outputs, shape (m, O); got {type(outputs).__name__}."
        )
    if outputs.is_complex() or not outputs.is_floating_point():
        raise TypeError(f"{argument} must be a real floating tensor; got dtype {outputs.dtype}.")
    if outputs.numel() == 0:
        raise ValueError(f"{argument} has shape {tuple(outputs.shape)}; it needs at least one entry.")
    return outputs.detach().to(torch.float64).reshape(-1), outputs.shape


def _float64_targets(targets: Any, device: torch.device) -> Any:
    if isinstance(targets, Tensor):
        targets = targets.detach().to(device)
        if targets.is_floating_point():
            targets = targets.to(torch.float64)
    return targets


def _linearise(flat: Tensor, shape: torch.Size, targets: Any, loss_fn: LossFn) -> _OutputLoss:
    """Linearise ``loss_fn`` at ``flat`` (float64, finite) through ``torch.func``."""
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(outputs, targets); got {type(loss_fn).__name__}."
        )
    targets = _float64_targets(targets, flat.device)
    probe = loss_fn(flat.reshape(shape), targets)
    if not isinstance(probe, Tensor) or probe.numel() != 1:
        got = f"shape {tuple(probe.shape)}" if isinstance(probe, Tensor) else type(probe).__name__
        raise ValueError(
            f"loss_fn must return a scalar tensor; got {got}. Use a reduction ('mean' or 'sum'), "
            "not reduction='none'."
        )

    def scalar_loss(z: Tensor) -> Tensor:
        return loss_fn(z.reshape(shape), targets).reshape(())

    grad, pullback = torch.func.vjp(torch.func.grad(scalar_loss), flat)
    return _OutputLoss(float(probe.detach()), grad.detach(), pullback, flat.numel())


def _apply_hessian(lin: _OutputLoss, vectors: Tensor) -> Tensor:
    """``H vᵀ`` for each row ``v`` of ``vectors`` ``(k, n)``: batched with ``vmap``, a loop as fallback."""
    chunk = max(1, _VMAP_ELEMENTS // max(lin.n, 1))
    batched = torch.func.vmap(lambda v: lin.pullback(v)[0])
    out = []
    try:
        for start in range(0, vectors.shape[0], chunk):
            out.append(batched(vectors[start : start + chunk]))
    except (RuntimeError, NotImplementedError):  # an op without a batching rule: one vector at a time
        out = [lin.pullback(v)[0] for v in vectors]
        return torch.stack(out).detach()
    return torch.cat(out).detach()


def _dense_hessian(lin: _OutputLoss, device: torch.device) -> Tensor:
    eye = torch.eye(lin.n, dtype=torch.float64, device=device)
    h = _apply_hessian(lin, eye)
    return (h + h.T) / 2


def output_hvp(outputs: Tensor, targets: Any, loss_fn: LossFn) -> Callable[[Tensor], Tensor]:
    """Hessian-vector products ``v ↦ H v`` of ``loss_fn`` with respect to the flattened outputs.

    ``loss_fn`` is linearised once at ``outputs`` (one forward and one backward pass);
    each product is then one backward pass of that graph (reverse over reverse,
    :func:`torch.func.vjp` of :func:`torch.func.grad`), in float64.

    Args:
        outputs: model outputs on the probe, shape ``(m, O)`` (any shape whose
            ``reshape(-1)`` is sample-major), any float dtype; detached and cast to float64.
        targets: passed to ``loss_fn`` unchanged, except that a floating tensor is cast to
            float64 and moved to the outputs' device.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.

    Returns:
        A function taking ``v`` of shape ``(n,)`` or ``(k, n)`` (``n = outputs.numel()``) and
        returning ``H v`` (``H vᵀ`` per row) as float64 of the same shape. A NaN or infinite
        input gives NaN products.

    Raises:
        ValueError: ``loss_fn`` does not return a scalar, or ``v`` has the wrong size.
        TypeError: ``outputs`` is not a real floating tensor, or ``loss_fn`` is not callable.

    Example:
        >>> hvp = output_hvp(torch.zeros(2, 2), torch.ones(2, 2), lambda f, y: ((f - y) ** 2).sum())
        >>> hvp(torch.tensor([1.0, 0.0, 0.0, 3.0]))
        tensor([2., 0., 0., 6.], dtype=torch.float64)
    """
    flat, shape = _flat_outputs(outputs, "outputs")
    lin = _linearise(flat, shape, targets, loss_fn)

    def hvp(v: Tensor) -> Tensor:
        vec = torch.as_tensor(v, dtype=torch.float64, device=flat.device)
        if vec.shape[-1:] != (lin.n,) or vec.ndim > 2:
            raise ValueError(
                f"v has shape {tuple(vec.shape)}; pass a vector of shape ({lin.n},) or a batch "
                f"({lin.n} = outputs.numel(), outputs flattened sample-major) of shape (k, {lin.n})."
            )
        if vec.ndim == 1:
            return lin.pullback(vec)[0].detach()
        return _apply_hessian(lin, vec)

    return hvp


def output_hessian(outputs: Tensor, targets: Any, loss_fn: LossFn) -> Tensor:
    """Dense float64 Hessian ``H = ∇²_f loss_fn(f, targets)`` with respect to the flattened outputs.

    Built from ``n`` Hessian-vector products (the columns of ``H I``, the same products as
    :func:`output_hvp`) and symmetrised, ``(H + Hᵀ) / 2``. Rows and columns are
    sample-major like the ``"full"`` NTK. ``O(n²)`` memory: meant for ``n`` up to a few
    thousand.

    Args:
        outputs: model outputs on the probe, shape ``(m, O)``.
        targets: as for :func:`output_hvp`.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.

    Returns:
        Float64 tensor of shape ``(n, n)``, ``n = outputs.numel()``, on the outputs'
        device; all NaN when ``outputs`` or the loss value is not finite.

    Raises:
        ValueError: ``loss_fn`` does not return a scalar.
        TypeError: as for :func:`output_hvp`.

    Example:
        >>> import torch.nn.functional as F
        >>> output_hessian(torch.zeros(1, 2), torch.zeros(1, 2), F.mse_loss)
        tensor([[1., 0.],
                [0., 1.]], dtype=torch.float64)
    """
    flat, shape = _flat_outputs(outputs, "outputs")
    lin = _linearise(flat, shape, targets, loss_fn) if bool(torch.isfinite(flat).all()) else None
    if lin is None or not math.isfinite(lin.value):
        n = flat.numel()
        return torch.full((n, n), math.nan, dtype=torch.float64, device=flat.device)
    return _dense_hessian(lin, flat.device)


def _probe_vectors(n: int, num_probes: int, device: torch.device) -> Tensor:
    """Fixed probe directions: the all-ones vector and ``num_probes - 1`` seeded Gaussians."""
    gen = torch.Generator().manual_seed(20240531)
    v = torch.randn(num_probes, n, generator=gen, dtype=torch.float64)
    v[0] = 1.0
    return v.to(device)


def _default_second_point(flat: Tensor) -> Tensor:
    """A deterministic output point at unit-to-output scale from ``flat``."""
    gen = torch.Generator().manual_seed(7)
    step = torch.randn(flat.numel(), generator=gen, dtype=torch.float64).to(flat.device)
    scale = 1.0 + float(flat.abs().max())
    return flat + scale * step


def has_constant_hessian(
    loss_fn: LossFn,
    outputs_a: Tensor,
    outputs_b: Tensor | None,
    targets: Any,
    *,
    num_probes: int = 3,
    rtol: float | None = None,
) -> bool:
    """Whether ``loss_fn`` has the same output Hessian at two output points (a quadratic loss).

    For ``num_probes`` fixed directions ``v`` (the all-ones vector and seeded Gaussians) it
    compares ``H(a) v`` with ``H(b) v`` (the products of :func:`output_hvp`) and returns
    ``True`` when ``‖H(a)v − H(b)v‖ ≤ rtol · max(‖H(a)v‖, ‖H(b)v‖)`` for every ``v`` (two zero
    products count as equal). Squared losses of any reduction (``F.mse_loss`` with
    ``'mean'`` or ``'sum'``, ``½‖f − y‖²/m``, weighted or masked squares) pass;
    cross-entropy does not. A Hessian that changes by less than ``rtol`` between the two
    points is reported constant: pick points that differ at the scale of the outputs
    (``None`` does that).

    The default tolerance ``rtol = √ε₆₄ ≈ 1.5e-8``: a float64 Hessian-vector product
    carries a relative round-off of a small multiple of ``ε₆₄ ≈ 2.2e-16`` times the depth
    of the loss's graph, far below it, while a genuine change of the Hessian above it
    would make a constant-Hessian prediction wrong by more than ``√ε``.

    Args:
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        outputs_a: first output point, shape ``(m, O)``.
        outputs_b: second output point of the same shape, or ``None`` for ``outputs_a``
            plus a fixed Gaussian step of size ``1 + max|outputs_a|`` per entry.
        targets: as for :func:`output_hvp`.
        num_probes: number of probe directions (at least 1).
        rtol: relative tolerance; ``None`` for ``√ε₆₄``.

    Returns:
        ``True`` if the products agree at every probe; ``False`` if not, or if an output
        or a product is not finite (a constant Hessian cannot be certified then).

    Raises:
        ValueError: ``outputs_b`` of a different shape than ``outputs_a``, ``num_probes < 1``,
            a negative or non-finite ``rtol``, or ``loss_fn`` not returning a scalar.

    Example:
        >>> import torch.nn.functional as F
        >>> f0, y = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
        >>> has_constant_hessian(F.mse_loss, f0, None, torch.ones(4, 3))
        True
        >>> has_constant_hessian(F.cross_entropy, f0, None, y)
        False
    """
    flat_a, shape = _flat_outputs(outputs_a, "outputs_a")
    if outputs_b is None:
        flat_b = _default_second_point(flat_a) if bool(torch.isfinite(flat_a).all()) else flat_a
    else:
        flat_b, shape_b = _flat_outputs(outputs_b, "outputs_b")
        if shape_b != shape:
            raise ValueError(
                f"outputs_b has shape {tuple(shape_b)} but outputs_a has shape {tuple(shape)}; pass two "
                "output points of the same probe (or outputs_b=None for a perturbed outputs_a)."
            )
        flat_b = flat_b.to(flat_a.device)
    if not is_int(num_probes) or num_probes < 1:
        raise ValueError(f"num_probes={num_probes!r} must be a positive integer (default 3).")
    tol = math.sqrt(_EPS) if rtol is None else as_float(rtol, "rtol")
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"rtol={rtol!r} must be a finite number ≥ 0, or None for √ε ≈ 1.5e-8.")
    if not (bool(torch.isfinite(flat_a).all()) and bool(torch.isfinite(flat_b).all())):
        return False
    v = _probe_vectors(flat_a.numel(), int(num_probes), flat_a.device)
    ha = _apply_hessian(_linearise(flat_a, shape, targets, loss_fn), v)
    hb = _apply_hessian(_linearise(flat_b, shape, targets, loss_fn), v)
    if not (bool(torch.isfinite(ha).all()) and bool(torch.isfinite(hb).all())):
        return False
    diff = torch.linalg.vector_norm(ha - hb, dim=1)
    scale = torch.maximum(torch.linalg.vector_norm(ha, dim=1), torch.linalg.vector_norm(hb, dim=1))
    return bool((diff <= tol * scale).all())


# ---------------------------------------------------------------------------------------------
# Gauss–Newton sharpness
# ---------------------------------------------------------------------------------------------


class GaussNewtonSharpness(NamedTuple):
    """Result of :func:`gauss_newton_sharpness`; every float is NaN when an input was not finite."""

    value: float
    """``β = λ_max(K^{1/2} H K^{1/2})``."""
    method: str
    """``"dense"`` or ``"lanczos"``: the path that computed it."""
    iterations: int
    """Lanczos iterations (``0`` for the dense path)."""
    converged: bool
    """``True`` for the dense path; for Lanczos, the stopping rule was met within ``max_iter``."""
    residual: float
    """Lanczos: ``‖B y − value·y‖`` of the top Ritz pair (``B = K^{1/2}HK^{1/2}``, ``‖y‖ = 1``), so
    some eigenvalue of ``B`` lies within it of ``value``; ``0.0`` for the dense path."""


def _check_kernel_eigh(kernel_eigh: Any, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    try:
        evals, evecs = kernel_eigh
    except (TypeError, ValueError):
        raise ValueError(
            "kernel_eigh must be a pair (eigenvalues, eigenvectors) as returned by "
            f"torch.linalg.eigh(kernel); got {type(kernel_eigh).__name__}."
        ) from None
    s = as_float64_tensor(evals, "kernel_eigh[0]").reshape(-1).to(device)
    u = as_float64_tensor(evecs, "kernel_eigh[1]").to(device)
    if s.shape != (n,) or u.shape != (n, n):
        raise ValueError(
            f"kernel_eigh has eigenvalues of shape {tuple(s.shape)} and eigenvectors of shape "
            f"{tuple(u.shape)}; the kernel is {n} × {n}, so pass torch.linalg.eigh(kernel) of the same "
            f"kernel (shapes ({n},) and ({n}, {n})) or None to compute it."
        )
    return s, u


def _dense_sharpness(k: Tensor, lin: _OutputLoss, kernel_eigh: tuple[Tensor, Tensor] | None) -> float:
    """``kernel_eigh``: the kernel's checked ``(eigenvalues, eigenvectors)``, or ``None`` to compute them."""
    s, u = torch.linalg.eigh(k) if kernel_eigh is None else kernel_eigh
    if not (bool(torch.isfinite(s).all()) and bool(torch.isfinite(u).all())):
        return math.nan
    g = u * s.clamp_min(0.0).sqrt()  # K^{1/2} = G Uᵀ with G = U diag(√s); GᵀHG is similar to K^{1/2}HK^{1/2}
    h = _dense_hessian(lin, k.device)
    if not bool(torch.isfinite(h).all()):
        return math.nan
    b = g.T @ h @ g
    return float(torch.linalg.eigvalsh((b + b.T) / 2)[-1])


def _lanczos_sharpness(
    k: Tensor, lin: _OutputLoss, tol: float, max_iter: int, seed: int
) -> tuple[float, int, bool, float]:
    """``λ_max(K^{1/2} H K^{1/2})`` by Lanczos on ``A = H K`` in the ``K``-semi-inner product."""
    n = k.shape[0]
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64).to(k.device)
    u = k @ q
    norm_sq = float(q @ u)
    if not norm_sq > 0.0:  # K = 0 (or q in its null space): B vanishes on everything it can reach
        return 0.0, 0, True, 0.0
    norm = math.sqrt(norm_sq)
    qs, ps = [q / norm], [u / norm]  # q_j, and p_j = K q_j (so ⟨q_i, w⟩_K = p_iᵀ w)
    alphas: list[float] = []
    betas: list[float] = []
    value, residual = math.nan, math.nan
    for j in range(min(max_iter, n)):
        h = lin.pullback(ps[j])[0].detach()  # H K q_j
        if not bool(torch.isfinite(h).all()):
            return math.nan, j + 1, False, math.nan
        alpha = float(ps[j] @ h)
        w = h - alpha * qs[j]
        if j > 0:
            w = w - betas[-1] * qs[j - 1]
        q_mat, p_mat = torch.stack(qs), torch.stack(ps)
        for _ in range(2):  # full reorthogonalisation in the K-inner product, twice is enough
            w = w - q_mat.T @ (p_mat @ w)
        u = k @ w
        beta = math.sqrt(max(float(w @ u), 0.0))
        alphas.append(alpha)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if j > 0:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(t)
        value = float(theta[-1])
        residual = beta * abs(float(s[-1, -1]))
        scale = float(theta.abs().max())
        if residual <= tol * scale or beta <= n * _EPS * scale:
            return value, j + 1, True, residual
        betas.append(beta)
        qs.append(w / beta)
        ps.append(u / beta)
    return value, min(max_iter, n), False, residual


def gauss_newton_sharpness(
    kernel: KernelLike,
    outputs: Tensor,
    targets: Any,
    loss_fn: LossFn,
    *,
    method: str = "auto",
    kernel_eigh: tuple[Tensor, Tensor] | None = None,
    tol: float = 1e-10,
    max_iter: int = 300,
    seed: int = 0,
) -> GaussNewtonSharpness:
    """Gauss–Newton sharpness ``β = λ_max(Jᵀ H J)`` of ``loss_fn`` on a probe, in output space.

    ``Jᵀ H J`` (``P × P``) and ``B = K^{1/2} H K^{1/2}`` (``n × n``, ``K = J Jᵀ``) have the same
    non-zero eigenvalues, so ``β`` is computed from ``B`` and never from a ``P × P`` matrix.
    ``H`` may be indefinite (a custom loss), so this is the largest *signed* eigenvalue:
    never ``H^{1/2}``, never plain power iteration (which finds the largest ``|λ|``). When
    ``P > rank J`` the ``P × P`` matrix also has zero eigenvalues, so
    ``λ_max(JᵀHJ) = max(β, 0)``; the two differ only when every curvature is negative.
    Cross-entropy, label smoothing, class weights, ``ignore_index``… all follow from the
    Hessian-vector products of ``loss_fn`` (:func:`output_hvp`); closed forms:
    ``½‖f − y‖²/m`` gives ``λ_max(K)/m``, ``F.mse_loss`` (mean over ``m·O`` entries) gives
    ``2 λ_max(K)/(m·O)``, its ``'sum'`` reduction ``2 λ_max(K)``.

    ``β`` at one point is a *local* estimate of the smoothness of the loss along what the
    parameters can reach (the stability indicator ``η·β`` against 2); it bounds the
    smoothness constant only for linear least squares, where ``J`` and ``H`` are constant.

    Paths:

    * ``"dense"`` (float64): ``K = U diag(s) Uᵀ`` (or the ``kernel_eigh`` given), negative
      round-off eigenvalues of ``K`` set to 0, dense ``H`` from ``n`` products, then
      ``eigvalsh`` of ``diag(√s) Uᵀ H U diag(√s)`` (orthogonally similar to ``B``). Exact
      to round-off; ``O(n³)``.
    * ``"lanczos"`` (float64, matrix-free in ``v``): Lanczos on ``A = H K``, which is
      self-adjoint in the ``K``-semi-inner product ``⟨u, w⟩_K = uᵀKw``; in exact arithmetic
      this is Lanczos on ``B`` with ``y = K^{1/2} q``, and it needs no eigendecomposition of
      ``K``: one ``K·v`` and one ``H·v`` per iteration (``O(n²)``), with full
      reorthogonalisation (twice) in the ``K``-inner product, from a seeded Gaussian start.
      Stopping rule: after each iteration ``k``, the top Ritz value ``θ`` of the tridiagonal
      matrix and its residual ``‖By − θy‖ = b_k |s_k|`` (``b_k`` the next off-diagonal
      entry, ``s_k`` the last entry of the Ritz vector); stop when it is at most
      ``tol · max_i |θ_i|`` (relative to ``‖B‖`` as far as seen), or on an invariant
      subspace (``b_k ≤ n·ε·max|θ|``). Some eigenvalue of ``B`` then lies within
      ``residual`` of the value, and Ritz values approach ``λ_max`` from below; from a
      random start it is the top eigenvalue unless the start is almost orthogonal to
      its eigenvector.
      It sees ``B`` on the range of ``K`` only, so for a singular ``K`` with every
      curvature negative it can return a negative value where the dense path returns 0.
      ``kernel_eigh`` is not used.
    * ``"auto"``: dense when ``n ≤`` :data:`DENSE_MAX_SIZE` (512), else Lanczos.

    Args:
        kernel: ``"full"`` ``(n, n)`` kernel ``J Jᵀ`` of the probe, ``n = m·O`` (unnormalised,
            positive semi-definite; symmetrised and used in float64).
        outputs: model outputs on the same probe, shape ``(m, O)``, sample-major when
            flattened.
        targets: passed to ``loss_fn`` (a floating tensor is cast to float64).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``, the loss trained.
        method: ``"auto"``, ``"dense"`` or ``"lanczos"``.
        kernel_eigh: ``torch.linalg.eigh(kernel)`` (eigenvalues ``(n,)``, eigenvectors
            ``(n, n)``) when the caller has it; saves the dense path one eigendecomposition.
        tol: Lanczos relative residual tolerance (default ``1e-10``).
        max_iter: Lanczos iteration cap (capped again at ``n``).
        seed: seed of the Lanczos start vector (results are deterministic).

    Returns:
        :class:`GaussNewtonSharpness` ``(value, method, iterations, converged, residual)``.
        ``value`` and ``residual`` are NaN (and ``converged`` False) when the kernel, the
        outputs, the loss value or a Hessian-vector product is not finite.

    Raises:
        ValueError: a kernel that is not square, ``outputs`` whose number of entries is not
            the kernel's size, a ``kernel_eigh`` of other shapes, an unknown ``method``, a
            ``tol`` that is not finite and ``≥ 0``, ``max_iter < 1``, or ``loss_fn`` not
            returning a scalar.
        TypeError: non-numeric kernel or outputs, ``loss_fn`` not callable.

    Example:
        >>> import torch.nn.functional as F
        >>> k = torch.diag(torch.tensor([4.0, 1.0, 2.0, 3.0]))
        >>> f, y = torch.zeros(2, 2), torch.ones(2, 2)
        >>> gauss_newton_sharpness(k, f, y, F.mse_loss).value  # 2 λ_max(K) / (m·O)
        2.0
        >>> gauss_newton_sharpness(k, f, y, lambda f, y: -((f - y) ** 2).sum()).value  # H = -2I
        -2.0
    """
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not one of {_METHODS}; 'auto' picks by size.")
    tol_value = as_float(tol, "tol")
    if not math.isfinite(tol_value) or tol_value < 0:
        raise ValueError(f"tol={tol!r} must be a finite number ≥ 0 (default 1e-10).")
    if not is_int(max_iter) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r} must be a positive integer (default 300).")
    if not is_int(seed):
        raise ValueError(f"seed={seed!r} must be an integer.")
    k = square_kernel(kernel)
    flat, shape = _flat_outputs(outputs, "outputs")
    n = k.shape[0]
    if flat.numel() != n:
        raise ValueError(
            f"outputs has shape {tuple(shape)} ({flat.numel()} entries) but kernel is {n} × {n}; pass the "
            "'full' (m·O, m·O) kernel of the same probe (empirical_ntk(..., kind='full')) and its (m, O) "
            "outputs."
        )
    chosen = ("dense" if n <= DENSE_MAX_SIZE else "lanczos") if method == "auto" else method
    k = k.to(flat.device)
    checked_eigh = None if kernel_eigh is None else _check_kernel_eigh(kernel_eigh, n, k.device)
    nan = GaussNewtonSharpness(math.nan, chosen, 0, False, math.nan)
    if not (bool(torch.isfinite(k).all()) and bool(torch.isfinite(flat).all())):
        return nan
    k = (k + k.T) / 2
    lin = _linearise(flat, shape, targets, loss_fn)
    if not math.isfinite(lin.value):
        return nan
    if chosen == "dense":
        value = _dense_sharpness(k, lin, checked_eigh)
        if math.isnan(value):
            return nan
        return GaussNewtonSharpness(value, "dense", 0, True, 0.0)
    value, iterations, converged, residual = _lanczos_sharpness(k, lin, tol_value, int(max_iter), int(seed))
    return GaussNewtonSharpness(value, "lanczos", iterations, converged, residual)


# ---------------------------------------------------------------------------------------------
# Kernel-predicted loss curve (constant-Hessian losses, plain GD, linearised model)
# ---------------------------------------------------------------------------------------------


def _step_sizes(step_sizes: Any, device: torch.device) -> Tensor:
    eta = as_float64_tensor(step_sizes, "step_sizes").to(device)
    if eta.ndim not in (1, 2):
        raise ValueError(
            f"step_sizes has shape {tuple(eta.shape)}; pass the per-step learning rates η_0..η_(T-1) as a "
            "(T,) array, or several schedules as a (B, T) array."
        )
    if not bool(torch.isfinite(eta).all()):
        raise ValueError("step_sizes holds a NaN or an infinity; pass finite learning rates.")
    return eta


class KernelLossModel(NamedTuple):
    """The linearised-GD loss model of :func:`kernel_loss_model`: ``L_t = L* + ½ Σ_i w_i Π_s (1 − η_s λ_i)²``.

    Evaluate it with :meth:`curve` (many steps at once), or incrementally with
    :meth:`log_decay` and :meth:`loss_from_log_decay` (``O(n)`` per step). Every field is
    NaN when the inputs were not finite, and so is every prediction.
    """

    eigenvalues: Tensor
    """``λ_i`` of ``H^{1/2} K₀ H^{1/2}``, shape ``(n,)``, float64, ascending, ``≥ 0``."""
    weights: Tensor
    """``w_i = ⟨v_i, H^{1/2} r₀⟩²``, shape ``(n,)``, float64 (``½ Σ w_i = L(f₀) − L*``)."""
    loss_star: float
    """``L*``: the loss the prediction tends to when every ``λ_i > 0`` decays."""
    loss0: float
    """``loss_fn`` at ``f₀`` (the prediction at ``t = 0`` when ``L*`` was derived)."""

    def log_decay(self, step_sizes: Any, initial: Tensor | None = None) -> Tensor:
        """``S_i = Σ_s log (1 − η_s λ_i)²`` over the given steps, added to ``initial``.

        Args:
            step_sizes: learning rates ``η_s`` of the steps taken, shape ``(T,)`` (``T ≥ 0``).
            initial: ``S`` after earlier steps (a previous return value), or ``None`` for 0.

        Returns:
            Float64 tensor of shape ``(n,)``; ``-inf`` where a factor ``1 − ηλ`` was 0.

        Raises:
            ValueError: ``step_sizes`` not 1-D or not finite, or ``initial`` of another shape.
        """
        eta = _step_sizes(step_sizes, self.eigenvalues.device)
        if eta.ndim != 1:
            raise ValueError(f"step_sizes has shape {tuple(eta.shape)}; log_decay takes one (T,) history.")
        terms = 2.0 * torch.log(torch.abs(1.0 - eta[:, None] * self.eigenvalues[None, :]))
        total = terms.sum(dim=0)
        if initial is None:
            return total
        start = torch.as_tensor(initial, dtype=torch.float64, device=total.device)
        if start.shape != total.shape:
            raise ValueError(
                f"initial has shape {tuple(start.shape)}; pass a previous log_decay(...) of this model, "
                f"shape {tuple(total.shape)}."
            )
        return start + total

    def loss_from_log_decay(self, log_decay: Tensor) -> Tensor:
        """``L* + ½ Σ_i w_i exp(S_i)`` for ``S`` of shape ``(..., n)`` (log-sum-exp, no underflow of terms).

        Args:
            log_decay: ``S`` from :meth:`log_decay`, shape ``(n,)`` or batched ``(..., n)``.

        Returns:
            Float64 tensor of shape ``(...)`` (0-d for one history); ``inf`` when the
            linearised dynamics diverged beyond float64 range.
        """
        s = torch.as_tensor(log_decay, dtype=torch.float64, device=self.weights.device)
        log_w = torch.log(self.weights)  # -inf for a zero weight: that term drops out
        return self.loss_star + 0.5 * torch.exp(torch.logsumexp(s + log_w, dim=-1))

    def curve(self, step_sizes: Any) -> Tensor:
        """The predicted loss ``L_0..L_T`` after each step of a learning-rate history.

        ``Π_{s<t}(1 − η_s λ_i)²`` is computed as ``exp(Σ_s log (1 − η_s λ_i)²)`` (cumulative
        sums in log space), so a factor of exactly 0 gives 0 and a negative factor
        (``ηλ > 1``) enters squared.

        Args:
            step_sizes: ``η_0..η_(T-1)``, shape ``(T,)``; or ``(B, T)`` for ``B`` schedules.
                A constant rate ``η`` is ``torch.full((T,), η)``.

        Returns:
            Float64 tensor of shape ``(T + 1,)`` (or ``(B, T + 1)``): entry ``t`` is the
            loss after ``t`` steps. Uses ``O(B·T·n)`` memory.

        Raises:
            ValueError: ``step_sizes`` not 1-D/2-D or not finite.
        """
        eta = _step_sizes(step_sizes, self.eigenvalues.device)
        terms = 2.0 * torch.log(torch.abs(1.0 - eta[..., :, None] * self.eigenvalues))
        zero = torch.zeros((*terms.shape[:-2], 1, terms.shape[-1]), dtype=torch.float64, device=terms.device)
        cumulative = torch.cat([zero, torch.cumsum(terms, dim=-2)], dim=-2)
        return self.loss_from_log_decay(cumulative)


def _kernel_eps(kernel: Any) -> float:
    """Machine epsilon of the kernel as given (a float32 NTK carries float32 round-off)."""
    if isinstance(kernel, Tensor) and kernel.is_floating_point():
        return float(torch.finfo(kernel.dtype).eps)
    if isinstance(kernel, np.ndarray) and np.issubdtype(kernel.dtype, np.floating):
        return float(np.finfo(kernel.dtype).eps)
    return _EPS


def kernel_loss_model(
    kernel0: KernelLike,
    outputs0: Tensor,
    targets: Any,
    loss_fn: LossFn,
    *,
    loss_star: float | None = None,
    check_constant: bool = True,
) -> KernelLossModel:
    """Linearised plain-GD loss model from the NTK at ``θ₀``, for a loss with a constant output Hessian.

    For a quadratic loss ``L(f) = ½ (f − f*)ᵀ H (f − f*) + L*`` (squared losses of any
    reduction, masks and weights included; ``H`` PSD) and the model linearised at ``θ₀``
    with kernel ``K₀``, plain GD ``θ_{t+1} = θ_t − η_t ∇_θ L`` moves the outputs by
    ``f_{t+1} − f* = (I − η_t K₀ H)(f_t − f*)``. With ``z = H^{1/2}(f − f*)`` and ``λ_i, v_i``
    the eigenpairs of ``H^{1/2} K₀ H^{1/2}`` this is diagonal, and

    ``L_t = L* + ½ Σ_i Π_{s<t} (1 − η_s λ_i)² ⟨v_i, H^{1/2} r₀⟩²``,  ``r₀ = f₀ − f*``.

    ``f*`` is not needed: ``H^{1/2} r₀ = (H^{1/2})⁺ g₀`` from the gradient ``g₀ = H r₀`` of
    ``loss_fn`` at ``f₀`` (pseudo-inverse on the range of ``H``), and the derived
    ``L* = L(f₀) − ½ ‖H^{1/2} r₀‖²`` is the minimum of the quadratic over all outputs (0 for
    squared losses; it is set to exactly 0 when within ``4·n·ε`` times the larger of the two
    terms, their round-off). The prediction is exact for a model linear in ``θ`` trained full
    batch on the probe itself with this loss; for a network it is the kernel-regime
    prediction, and its gap to the measured loss is what it is for.

    Tolerances (``ε`` of float64 unless stated): ``H``'s eigenvalues within
    ``n·ε·‖H‖`` of 0 are treated as 0 (below: ``ValueError``, ``H`` not PSD); eigenvalues of
    ``H^{1/2}K₀H^{1/2}`` down to ``−n·ε_K·‖H‖·‖K₀‖_F`` (``ε_K`` of the kernel's dtype, so a
    float32 NTK's round-off passes) are set to 0 (below: ``ValueError``, ``K₀`` not PSD).
    A gradient with a component outside the range of ``H`` beyond ``√ε·‖g₀‖`` means the
    quadratic is unbounded below (``ValueError``).

    Args:
        kernel0: ``"full"`` ``(n, n)`` kernel ``J₀ J₀ᵀ`` at ``θ₀`` of the probe (the training set).
        outputs0: outputs at ``θ₀``, shape ``(m, O)``.
        targets: passed to ``loss_fn`` (a floating tensor is cast to float64).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor`` with a constant Hessian.
        loss_star: ``None`` (default) derives ``L*`` as above; a float replaces it (then the
            prediction at ``t = 0`` is ``loss_star + L(f₀) − L*_derived``).
        check_constant: verify with :func:`has_constant_hessian` (``outputs0`` against a
            perturbed point) that ``H`` is constant; costs ``6`` Hessian-vector products.

    Returns:
        :class:`KernelLossModel`; all fields NaN when ``kernel0``, ``outputs0`` or the loss
        value is not finite.

    Raises:
        ValueError: shape mismatch between ``kernel0`` and ``outputs0``, a loss whose
            Hessian is not constant (``check_constant``) or not PSD, a gradient outside
            the range of ``H``, a ``kernel0`` that is not PSD, or a non-finite ``loss_star``.

    Example:
        >>> model = kernel_loss_model(torch.eye(2), torch.zeros(2, 1), torch.ones(2, 1),
        ...                           lambda f, y: ((f - y) ** 2).sum() / 2)
        >>> model.eigenvalues, float(model.weights.sum()), model.loss_star, model.loss0
        (tensor([1., 1.], dtype=torch.float64), 2.0, 0.0, 1.0)
        >>> model.curve(torch.tensor([0.5, 0.5]))  # each step halves the residual
        tensor([1.0000, 0.2500, 0.0625], dtype=torch.float64)
    """
    kernel_eps = _kernel_eps(kernel0)
    k = square_kernel(kernel0, "kernel0")
    flat, shape = _flat_outputs(outputs0, "outputs0")
    n = k.shape[0]
    if flat.numel() != n:
        raise ValueError(
            f"outputs0 has shape {tuple(shape)} ({flat.numel()} entries) but kernel0 is {n} × {n}; pass the "
            "'full' (m·O, m·O) kernel at θ₀ of the same probe and its (m, O) outputs."
        )
    if loss_star is not None:
        star_value = as_float(loss_star, "loss_star")
        if not math.isfinite(star_value):
            raise ValueError(f"loss_star={loss_star!r} must be finite; pass a float or None to derive it.")
    device = flat.device
    nan_vec = torch.full((n,), math.nan, dtype=torch.float64, device=device)
    nan_model = KernelLossModel(nan_vec, nan_vec.clone(), math.nan, math.nan)
    k = k.to(device)
    if not (bool(torch.isfinite(k).all()) and bool(torch.isfinite(flat).all())):
        return nan_model
    lin = _linearise(flat, shape, targets, loss_fn)
    if not math.isfinite(lin.value):
        return nan_model
    if check_constant and not has_constant_hessian(loss_fn, outputs0, None, targets):
        raise ValueError(
            "loss_fn has an output Hessian that changes with the outputs (e.g. cross-entropy); the "
            "kernel-predicted loss needs a quadratic loss such as F.mse_loss or ½‖f − y‖²/m. "
            "Pass check_constant=False only if you know the Hessian is constant."
        )
    h = _dense_hessian(lin, device)
    h_vals, h_vecs = torch.linalg.eigh(h)
    h_norm = float(h_vals.abs().max())
    h_tol = n * _EPS * h_norm
    if float(h_vals[0]) < -h_tol:
        raise ValueError(
            f"loss_fn's output Hessian has a negative eigenvalue {float(h_vals[0]):.3e} (tolerance "
            f"{h_tol:.1e}); the kernel-predicted loss needs a convex quadratic loss (squared losses)."
        )
    positive = h_vals > h_tol
    h_pos = torch.where(positive, h_vals, torch.zeros_like(h_vals))
    g_coords = h_vecs.T @ lin.grad
    g_norm = float(torch.linalg.vector_norm(lin.grad))
    outside = float(torch.linalg.vector_norm(g_coords[~positive]))
    if outside > math.sqrt(_EPS) * g_norm:
        raise ValueError(
            f"the gradient of loss_fn at outputs0 has a component {outside:.3e} (of {g_norm:.3e}) outside "
            "the range of its Hessian: the quadratic is unbounded below and has no kernel-predicted curve."
        )
    safe = torch.where(positive, h_vals, torch.ones_like(h_vals))
    inv_sqrt = torch.where(positive, safe.rsqrt(), torch.zeros_like(h_vals))
    z0 = h_vecs @ (inv_sqrt * g_coords)  # H^{1/2} r₀ = (H^{1/2})⁺ g₀
    h_sqrt = (h_vecs * h_pos.sqrt()) @ h_vecs.T
    a = h_sqrt @ k @ h_sqrt
    lam, v = torch.linalg.eigh((a + a.T) / 2)
    a_tol = n * kernel_eps * h_norm * float(torch.linalg.matrix_norm(k))
    if float(lam[0]) < -a_tol:
        raise ValueError(
            f"kernel0 is not positive semi-definite: H^(1/2) K0 H^(1/2) has eigenvalue {float(lam[0]):.3e} "
            f"(tolerance {a_tol:.1e}); pass the 'full' kernel J Jᵀ at θ₀."
        )
    lam = lam.clamp_min(0.0)
    weights = (v.T @ z0) ** 2
    half_sq = 0.5 * float(z0 @ z0)
    if loss_star is None:
        star_value = lin.value - half_sq
        if abs(star_value) <= 4 * n * _EPS * max(abs(lin.value), half_sq):
            star_value = 0.0
    return KernelLossModel(lam, weights, star_value, lin.value)


def kernel_predicted_loss(
    kernel0: KernelLike,
    outputs0: Tensor,
    targets: Any,
    loss_fn: LossFn,
    step_sizes: Any,
    *,
    loss_star: float | None = None,
    check_constant: bool = True,
) -> Tensor:
    """The kernel-predicted loss curve of plain GD for a constant-Hessian loss (discrete steps).

    ``kernel_loss_model(kernel0, outputs0, targets, loss_fn, ...).curve(step_sizes)``: see
    :func:`kernel_loss_model` for the model, its assumptions and tolerances, and
    :meth:`KernelLossModel.curve` for the evaluation. To evaluate several schedules or
    steps incrementally, build the model once and keep it.

    Args:
        kernel0: ``"full"`` ``(n, n)`` kernel at ``θ₀``.
        outputs0: outputs at ``θ₀``, shape ``(m, O)``.
        targets: passed to ``loss_fn``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor`` with a constant Hessian.
        step_sizes: ``η_0..η_(T-1)``, shape ``(T,)``, or ``(B, T)`` for ``B`` schedules.
        loss_star: ``None`` to derive ``L*``; see :func:`kernel_loss_model`.
        check_constant: verify that the Hessian is constant.

    Returns:
        Float64 tensor of shape ``(T + 1,)`` (or ``(B, T + 1)``): the predicted loss after
        ``0..T`` steps; NaN when an input is not finite.

    Raises:
        ValueError: as for :func:`kernel_loss_model` and :meth:`KernelLossModel.curve`.

    Example:
        >>> import torch.nn.functional as F
        >>> kernel_predicted_loss(torch.eye(2), torch.zeros(2, 1), torch.ones(2, 1), F.mse_loss, [0.5, 0.5])
        tensor([1.0000, 0.2500, 0.0625], dtype=torch.float64)
    """
    model = kernel_loss_model(
        kernel0, outputs0, targets, loss_fn, loss_star=loss_star, check_constant=check_constant
    )
    return model.curve(step_sizes)
