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
time and memory only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

__all__ = [
    "ModelFn",
    "NTKImplementation",
    "NTKKind",
    "empirical_ntk",
    "resolve_implementation",
    "trainable_params",
]

ModelFn = Callable[[dict[str, Tensor], Tensor], Tensor]
"""A functional model ``f(params, x) -> outputs`` over a batch ``x``."""


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

    Choose by cost, with ``P`` parameters, ``m`` probe samples and ``O`` outputs:
    """

    AUTO = "auto"
    """Pick one of the others by the documented rule in :func:`resolve_implementation`."""
    JACOBIAN_CONTRACTION = "jacobian_contraction"
    """Materialise per-sample Jacobians (``m·O·P`` numbers) with ``vmap(jacrev)`` and
    contract them with one matrix product. Fast when ``m·O·P`` fits in memory; use
    ``chunk_size`` to bound it."""
    NTK_VECTOR_PRODUCTS = "ntk_vector_products"
    """Never store a Jacobian: for every probe output compute ``J(x2) J(x1)ᵀ e`` as a
    vector-Jacobian product followed by a Jacobian-vector product. Memory ``O(P)`` per
    product instead of ``O(m·O·P)``; time grows with ``m²·O`` forward passes. Pick it
    when the Jacobian does not fit in memory and the model is cheap to evaluate."""


_JACOBIAN_BYTES_LIMIT = 2 * 1024**3
"""``auto`` keeps Jacobian contraction while the Jacobians take at most this many bytes."""


def _enum_value(enum_cls: type[Enum], value: Any, argument: str) -> Any:
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)  # type: ignore[attr-defined]
        raise ValueError(
            f"{argument}={value!r} is not a known {argument}; pass one of {allowed}."
        ) from None


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies (views, no data copied) of a module's trainable parameters.

    Args:
        model: any ``nn.Module``.

    Returns:
        Dict ``name -> tensor`` over the parameters with ``requires_grad=True``, in
        ``named_parameters`` order, each detached from autograd.

    Example:
        >>> sorted(trainable_params(nn.Linear(3, 2)))
        ['bias', 'weight']
    """
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """Switch TF32 off for the duration (kernels must be exact float32 or float64)."""
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    old_precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_matmul
        torch.backends.cudnn.allow_tf32 = old_cudnn
        torch.set_float32_matmul_precision(old_precision)


class _Problem:
    """A model reduced to ``fn(params, x_batch) -> (b, O)`` plus the parameters to differentiate."""

    def __init__(
        self,
        model: nn.Module | ModelFn,
        params: Mapping[str, Tensor] | None,
        x1: Tensor,
        x2: Tensor | None,
    ) -> None:
        if isinstance(model, nn.Module):
            module = model
            if params is None:
                params = trainable_params(module)

            def call(p: dict[str, Tensor], x: Tensor) -> Any:
                return functional_call(module, p, (x,))

            self.module: nn.Module | None = module
        elif callable(model):
            if params is None:
                raise ValueError(
                    "params=None but model is a plain callable f(params, x); pass params=dict(name -> tensor)."
                )
            call = model  # type: ignore[assignment]
            self.module = None
        else:
            raise TypeError(
                f"model must be an nn.Module or a callable f(params, x); got {type(model).__name__}."
            )
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict name -> tensor; got {type(params).__name__}.")
        self.params: dict[str, Tensor] = {k: v.detach() for k, v in params.items()}
        if not self.params:
            raise ValueError(
                "model has no trainable parameters (none with requires_grad=True): the NTK is empty. "
                "Unfreeze at least one parameter or pass params= explicitly."
            )
        for name, value in self.params.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"params[{name!r}] is a {type(value).__name__}; every value must be a tensor.")
        first = next(iter(self.params.values()))
        self.device = first.device
        for arg, x in (("x1", x1), ("x2", x2)):
            if x is None:
                continue
            if not isinstance(x, Tensor):
                raise TypeError(f"{arg} must be a tensor of shape (m, *input_shape); got {type(x).__name__}.")
            if x.ndim < 1 or x.shape[0] == 0:
                raise ValueError(
                    f"{arg} has shape {tuple(x.shape)}; it needs a leading sample dimension with m >= 1."
                )
        if x2 is not None and x1.shape[1:] != x2.shape[1:]:
            raise ValueError(
                f"x1 and x2 must share their trailing (per-sample) shape; got x1 {tuple(x1.shape)} and "
                f"x2 {tuple(x2.shape)}. Pass probes of the same input shape."
            )
        self._call = call
        # One evaluation on a single sample fixes the output size and checks the output type.
        with torch.no_grad():
            out = call(self.params, x1[:1].to(self.device))
        if not isinstance(out, Tensor):
            raise TypeError(
                f"the model returned a {type(out).__name__}, not a tensor; the NTK needs the model output as "
                "a tensor of shape (batch, *out). Wrap the model, e.g. lambda p, x: f(p, x)['logits']."
            )
        if out.ndim == 0 or out.shape[0] != 1:
            raise ValueError(
                f"the model output for a batch of 1 has shape {tuple(out.shape)}; expected (1, *out) or (1,)."
            )
        self.num_outputs = int(math.prod(out.shape[1:]))

    def batched(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs of a batch, flattened to ``(b, O)``."""
        out = self._call(p, x)
        return out.reshape(out.shape[0], -1)

    def single(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs of one sample (no batch dimension), flattened to ``(O,)``."""
        return self.batched(p, x.unsqueeze(0)).reshape(-1)

    def pseudo_batched(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        """The pNTK's scalar model ``Σ_a f_a / √O`` as ``(b, 1)``."""
        return self.batched(p, x).sum(dim=1, keepdim=True) / math.sqrt(self.num_outputs)

    def pseudo_single(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.pseudo_batched(p, x.unsqueeze(0)).reshape(-1)

    def parameter_count(self) -> int:
        return sum(v.numel() for v in self.params.values())


class _Backend(Protocol):
    """An implementation: per-chunk ``features`` then a ``contract`` of two chunks' features.

    ``contract`` returns the kernel block in canonical form: full ``(b1, O, b2, O)``,
    trace ``(b1, b2)``, diagonal ``(b1, b2, O)``, pseudo ``(b1, b2)``; for pseudo the
    backend works on the scalar model so ``O`` is 1 internally.
    """

    def features(self, x: Tensor) -> Any: ...

    def contract(self, f1: Any, f2: Any) -> Tensor: ...


class _JacobianContraction:
    def __init__(self, problem: _Problem, kind: NTKKind) -> None:
        self.problem = problem
        self.kind = kind
        self.single = problem.pseudo_single if kind is NTKKind.PSEUDO else problem.single

    def features(self, x: Tensor) -> Tensor:
        jac = vmap(jacrev(self.single), in_dims=(None, 0))(self.problem.params, x)
        b = x.shape[0]
        # (b, O, P) with the parameters concatenated in a fixed order.
        return torch.cat([j.reshape(b, j.shape[1], -1) for j in jac.values()], dim=2)

    def contract(self, j1: Tensor, j2: Tensor) -> Tensor:
        b1, o, p = j1.shape
        b2 = j2.shape[0]
        if self.kind is NTKKind.FULL:
            return (j1.reshape(b1 * o, p) @ j2.reshape(b2 * o, p).T).reshape(b1, o, b2, o)
        if self.kind is NTKKind.TRACE:
            return (j1.reshape(b1, o * p) @ j2.reshape(b2, o * p).T) / o
        if self.kind is NTKKind.DIAGONAL:
            return torch.einsum("iap,jap->ija", j1, j2)
        return j1[:, 0] @ j2[:, 0].T  # pseudo: j has O = 1


class _NTKVectorProducts:
    def __init__(self, problem: _Problem, kind: NTKKind) -> None:
        self.problem = problem
        self.kind = kind
        if kind is NTKKind.PSEUDO:
            self.single, self.batched = problem.pseudo_single, problem.pseudo_batched
        else:
            self.single, self.batched = problem.single, problem.batched

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


_BACKENDS: dict[NTKImplementation, Callable[[_Problem, NTKKind], _Backend]] = {
    NTKImplementation.JACOBIAN_CONTRACTION: _JacobianContraction,
    NTKImplementation.NTK_VECTOR_PRODUCTS: _NTKVectorProducts,
}


def resolve_implementation(
    problem: _Problem, kind: NTKKind, m1: int, m2: int, chunk_size: int | None
) -> NTKImplementation:
    """The rule behind ``implementation="auto"``.

    Jacobian contraction is the fastest general method as long as the per-chunk
    Jacobians (``b·O·P`` numbers for each of the two chunks in flight) fit in
    2 GiB; beyond that NTK-vector products, whose memory does not grow with ``P·m``.
    """
    outputs = 1 if kind is NTKKind.PSEUDO else problem.num_outputs
    b1 = min(m1, chunk_size or m1)
    b2 = min(m2, chunk_size or m2)
    itemsize = next(iter(problem.params.values())).element_size()
    jac_bytes = (b1 + b2) * outputs * problem.parameter_count() * itemsize
    if jac_bytes <= _JACOBIAN_BYTES_LIMIT:
        return NTKImplementation.JACOBIAN_CONTRACTION
    return NTKImplementation.NTK_VECTOR_PRODUCTS


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
            if kind is NTKKind.FULL:
                out[sl1, :, sl2, :] = block
            else:
                out[sl1, sl2] = block
            if symmetric and j > i:
                if kind is NTKKind.FULL:
                    out[sl2, :, sl1, :] = _mirror(block, kind)
                else:
                    out[sl2, sl1] = _mirror(block, kind)
        start1 += xa.shape[0]
    if kind is NTKKind.FULL:
        return out.reshape(m1 * o, m2 * o)
    return out


def empirical_ntk(
    model: nn.Module | ModelFn,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    params: Mapping[str, Tensor] | None = None,
    kind: NTKKind | str = "full",
    implementation: NTKImplementation | str = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Empirical NTK ``J(x1) J(x2)ᵀ`` of a model at its current (or given) parameters.

    The model is evaluated through ``torch.func.functional_call`` on detached
    parameters, so nothing the optimizer sees is touched and no ``.grad`` is
    written. The module is evaluated in whatever train/eval mode it is in: call it
    in eval mode when it has BatchNorm or dropout (train-mode BatchNorm mixes the
    samples of a batch and updates running statistics).

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
        implementation: see :class:`NTKImplementation`; ``"auto"`` applies the rule
            of :func:`resolve_implementation`.
        chunk_size: process at most this many samples of each probe at a time, to
            bound memory. The result does not depend on it.

    Returns:
        The kernel, with the dtype of the parameters (float64 in, float64 out) on
        their device: ``(m1·O, m2·O)`` for full, ``(m1, m2)`` for trace and pseudo,
        ``(m1, m2, O)`` for diagonal, rows sample-major.

    Raises:
        ValueError: unknown ``kind`` or ``implementation``, mismatched input shapes,
            no trainable parameters, or a non-positive ``chunk_size``.
        TypeError: a model output that is not a tensor, or inputs that are not tensors.

    Example:
        >>> torch.manual_seed(0)
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
    """
    kind = _enum_value(NTKKind, kind, "kind")
    implementation = _enum_value(NTKImplementation, implementation, "implementation")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int (or None for no chunking).")
    problem = _Problem(model, params, x1, x2)
    x1 = x1.to(problem.device)
    x2 = None if x2 is None else x2.to(problem.device)
    if implementation is NTKImplementation.AUTO:
        implementation = resolve_implementation(
            problem, kind, x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0], chunk_size
        )
    backend = _BACKENDS[implementation](problem, kind)
    dtype = next(iter(problem.params.values())).dtype
    with _full_precision():
        return _assemble(backend, x1, x2, kind, chunk_size, problem.num_outputs, dtype)
