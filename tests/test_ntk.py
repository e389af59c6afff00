"""Acceptance tests of ``empirical_ntk``: every implementation against a float64 brute-force oracle.

The oracle is written here, independently of the package: ``torch.autograd.functional.jacobian``
of the flattened batch outputs with respect to one flat parameter vector gives ``J`` with rows
``i·O + a`` (docs/kernels.md), and every kind is derived from ``J``. Implementations are found by
iterating :class:`NTKImplementation`, so a new one is tested without touching this file.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_lplr.functional import _structured, ntk
from lightning_lplr.functional._problem import Problem
from lightning_lplr.functional.ntk import NTKImplementation, NTKKind, empirical_ntk, resolve_implementation
from tests._models import CASES, Case, case, mlp

# torch's own forward-mode decompositions (ntk_vector_products) still call torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

IMPLEMENTATIONS = [impl for impl in NTKImplementation if impl is not NTKImplementation.AUTO]
KINDS = list(NTKKind)
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# float64: the implementations reorder sums of O(10²..10⁴) products, ~1e-14 relative; 1e-10 leaves
# four orders of margin while any real error (a wrong term) is O(1). float32 rounding is ~1e-6.
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def _impl_id(impl: NTKImplementation) -> str:
    return impl.value


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """One intra-op thread: these kernels are tiny, and on a shared 2-core machine a second
    OpenMP thread waiting for a busy core makes them orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------


def _flat_fn(c: Case) -> tuple[Tensor, object]:
    """Flat float64 parameter vector and ``f(vector, x) -> flattened (m·O,) outputs``."""
    model = c.model
    if c.params is not None:
        params = dict(c.params)
    else:
        assert isinstance(model, nn.Module)
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names])

    def f(vec: Tensor, x: Tensor) -> Tensor:
        d = {n: v.reshape(s) for n, v, s in zip(names, torch.split(vec, sizes), shapes, strict=True)}
        out = functional_call(model, d, (x,)) if isinstance(model, nn.Module) else model(d, x)
        return out.reshape(-1)

    return flat, f


def _oracle_jacobian(c: Case, x: Tensor) -> Tensor:
    """``J`` of the batch outputs as ``(m, O, P)``."""
    flat, f = _flat_fn(c)
    jac = torch.autograd.functional.jacobian(lambda v: f(v, x), flat)  # (m·O, P)
    return jac.reshape(x.shape[0], -1, flat.numel())


def _kernels_from(j1: Tensor, j2: Tensor, g1: Tensor, g2: Tensor) -> dict[NTKKind, Tensor]:
    """Every kind from the Jacobians; ``loss_gram`` with the output weights ``g`` (``(m, O)``)."""
    m1, o, p = j1.shape
    m2 = j2.shape[0]
    per_output = torch.einsum("iap,jap->ija", j1, j2)
    p1 = j1.sum(dim=1) / math.sqrt(o)
    p2 = j2.sum(dim=1) / math.sqrt(o)
    a1 = torch.einsum("ia,iap->ip", g1, j1)  # per-sample loss gradients ∇ℓ_i = J_iᵀ g_i
    a2 = torch.einsum("ia,iap->ip", g2, j2)
    return {
        NTKKind.FULL: j1.reshape(m1 * o, p) @ j2.reshape(m2 * o, p).T,
        NTKKind.TRACE: per_output.mean(dim=2),
        NTKKind.DIAGONAL: per_output,
        NTKKind.PSEUDO: p1 @ p2.T,
        NTKKind.LOSS_GRAM: a1 @ a2.T,
    }


def _weights(x: Tensor, o: int, seed: int) -> Tensor:
    """Fixed float64 output weights ``(m, O)`` standing in for loss gradients (for kind="loss_gram")."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape[0], o, generator=gen, dtype=torch.float64)


@functools.cache
def _case_weights(name: str) -> tuple[Tensor, Tensor]:
    c = case(name, torch.float64)
    o = _oracle_jacobian(c, c.x1[:1]).shape[1]
    return _weights(c.x1, o, 1), _weights(c.x2, o, 2)


def _extra(name: str, kind: NTKKind, cross: bool, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """The keyword arguments a kind needs beyond the probes: ``output_weights`` for loss_gram."""
    if kind is not NTKKind.LOSS_GRAM:
        return {}
    g1, g2 = _case_weights(name)
    extra = {"output_weights": g1.to(dtype)}
    if cross:
        extra["output_weights2"] = g2.to(dtype)
    return extra


@functools.cache
def _oracle(name: str, cross: bool) -> dict[NTKKind, Tensor]:
    c = case(name, torch.float64)
    j1 = _oracle_jacobian(c, c.x1)
    j2 = _oracle_jacobian(c, c.x2) if cross else j1
    g1, g2 = _case_weights(name)
    return _kernels_from(j1, j2, g1, g2 if cross else g1)


def _assert_close(got: Tensor, expected: Tensor, tol: float, what: str) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    err = (got.double() - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} × max |K| = {scale:.3e}"


# --------------------------------------------------------------------------------------------
# Every implementation × kind × model × dtype against the oracle
# --------------------------------------------------------------------------------------------


# float32 on the models and those that exercise every structured code path once
# (Linear Gram, Conv2d, BatchNorm, local, fallback); float64 on all of them.
FLOAT32_CASES = (
    "mlp10",
    "scalar_mlp",
    "cnn_bn",
    "resnet",
    "frozen_layer",
    "custom_modules",
    "module_params",
    "callable",
)
ORACLE_PARAMS = [(n, torch.float64) for n in CASES] + [(n, torch.float32) for n in FLOAT32_CASES]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_impl_id)
@pytest.mark.parametrize(
    ("name", "dtype"), ORACLE_PARAMS, ids=[f"{n}-{str(d)[6:]}" for n, d in ORACLE_PARAMS]
)
def test_matches_oracle(
    name: str, implementation: NTKImplementation, kind: NTKKind, dtype: torch.dtype
) -> None:
    c = case(name, dtype)
    extra = _extra(name, kind, False, dtype)
    got = empirical_ntk(c.model, c.x1, params=c.params, kind=kind, implementation=implementation, **extra)
    assert got.dtype == dtype  # float64 in -> float64 out (and float32 stays float32)
    _assert_close(got, _oracle(name, False)[kind], TOL[dtype], f"{name}/{implementation.value}/{kind.value}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_impl_id)
@pytest.mark.parametrize("name", ["mlp10", "cnn_bn", "sequence"])
def test_cross_kernel_and_chunking(name: str, implementation: NTKImplementation, kind: NTKKind) -> None:
    c = case(name)
    expected = _oracle(name, True)[kind]
    ex, ex_sym = _extra(name, kind, True), _extra(name, kind, False)
    cross = empirical_ntk(
        c.model, c.x1, c.x2, params=c.params, kind=kind, implementation=implementation, **ex
    )
    _assert_close(cross, expected, TOL[torch.float64], "cross kernel")
    # The cross kernel is the off-diagonal block of the joint kernel of the concatenated probe.
    joint_ex = {"output_weights": torch.cat([ex["output_weights"], ex["output_weights2"]])} if ex else {}
    joint = empirical_ntk(
        c.model,
        torch.cat([c.x1, c.x2]),
        params=c.params,
        kind=kind,
        implementation=implementation,
        **joint_ex,
    )
    m1 = c.x1.shape[0]
    if kind is NTKKind.FULL:
        o = joint.shape[0] // (m1 + c.x2.shape[0])
        block = joint[: m1 * o, m1 * o :]
    else:
        block = joint[:m1, m1:]
    _assert_close(cross, block, TOL[torch.float64], "cross vs joint block")
    # Chunk sizes that do and do not divide m1 = 7 and m2 = 3: chunked equals unchunked.
    sym = empirical_ntk(c.model, c.x1, params=c.params, kind=kind, implementation=implementation, **ex_sym)
    for chunk in (2, 5):
        sym_chunked = empirical_ntk(
            c.model,
            c.x1,
            params=c.params,
            kind=kind,
            implementation=implementation,
            chunk_size=chunk,
            **ex_sym,
        )
        _assert_close(sym_chunked, sym, TOL[torch.float64], f"symmetric chunk_size={chunk}")
        cross_chunked = empirical_ntk(
            c.model,
            c.x1,
            c.x2,
            params=c.params,
            kind=kind,
            implementation=implementation,
            chunk_size=chunk,
            **ex,
        )
        _assert_close(cross_chunked, cross, TOL[torch.float64], f"cross chunk_size={chunk}")


def test_oracle_is_symmetric_psd_and_consistent() -> None:
    """Guards the oracle itself: full is PSD, trace is the mean of diagonal, diagonal blocks of full."""
    k = _oracle("mlp10", False)
    full, diag = k[NTKKind.FULL], k[NTKKind.DIAGONAL]
    assert torch.allclose(full, full.T)
    assert torch.linalg.eigvalsh(full).min() > -1e-10 * full.abs().max()
    m, o = diag.shape[0], diag.shape[2]
    blocks = full.reshape(m, o, m, o)
    assert torch.allclose(torch.diagonal(blocks, dim1=1, dim2=3), diag)
    assert torch.allclose(k[NTKKind.TRACE], diag.mean(dim=2))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_impl_id)
def test_scalar_output_kinds_coincide(implementation: NTKImplementation) -> None:
    """With one output, full = trace = diagonal[..., 0] = pseudo = loss_gram with unit weights."""
    c = case("scalar_mlp")
    m = c.x1.shape[0]
    ones = {"output_weights": torch.ones(m, dtype=torch.float64)}
    got = {
        k: empirical_ntk(
            c.model, c.x1, kind=k, implementation=implementation, **(ones if k is NTKKind.LOSS_GRAM else {})
        )
        for k in KINDS
    }
    assert got[NTKKind.FULL].shape == (m, m)
    assert got[NTKKind.DIAGONAL].shape == (m, m, 1)
    ref = got[NTKKind.FULL]
    for k in (NTKKind.TRACE, NTKKind.PSEUDO, NTKKind.LOSS_GRAM):
        _assert_close(got[k], ref, 1e-12, f"scalar {k.value} vs full")
    _assert_close(got[NTKKind.DIAGONAL][..., 0], ref, 1e-12, "scalar diagonal vs full")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_impl_id)
def test_linear_model_closed_form(implementation: NTKImplementation) -> None:
    """``f(x) = W x + b`` has ``J Jᵀ = (X Xᵀ + 1) ⊗ I_O`` exactly."""
    torch.manual_seed(1)
    lin = nn.Linear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = torch.kron(x @ x.T + 1, torch.eye(3, dtype=torch.float64))
    got = empirical_ntk(lin, x, implementation=implementation)
    _assert_close(got, expected, 1e-12, "linear closed form")
    trace = empirical_ntk(lin, x, kind="trace", implementation=implementation)
    _assert_close(trace, x @ x.T + 1, 1e-12, "linear closed form, trace")


def test_auto_matches_oracle() -> None:
    c = case("cnn_bn")
    got = empirical_ntk(c.model, c.x1, implementation="auto")
    _assert_close(got, _oracle("cnn_bn", False)[NTKKind.FULL], TOL[torch.float64], "auto")


# --------------------------------------------------------------------------------------------
# Bad input: clear errors that name the argument
# --------------------------------------------------------------------------------------------


@pytest.fixture
def lin() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_unknown_kind_names_argument_and_choices(lin: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"kind='eigen'") as info:
        empirical_ntk(lin, torch.randn(2, 3), kind="eigen")
    for allowed in ("'full'", "'trace'", "'diagonal'", "'pseudo'", "'loss_gram'"):
        assert allowed in str(info.value)


def test_unknown_implementation_names_argument_and_choices(lin: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"implementation='fastest'") as info:
        empirical_ntk(lin, torch.randn(2, 3), implementation="fastest")
    for impl in NTKImplementation:
        assert repr(impl.value) in str(info.value)


def test_mismatched_probe_shapes(lin: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"x1 and x2.*\(2, 3\).*\(2, 4\)"):
        empirical_ntk(lin, torch.randn(2, 3), torch.randn(2, 4))


def test_no_trainable_parameters(lin: nn.Module) -> None:
    lin.requires_grad_(False)
    with pytest.raises(ValueError, match=r"no trainable parameters.*requires_grad"):
        empirical_ntk(lin, torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"no trainable parameters"):
        empirical_ntk(lin, torch.randn(2, 3), params={})


def test_non_tensor_output_names_the_fix() -> None:
    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"logits": self.lin(x)}

    with pytest.raises(TypeError, match=r"returned a dict, not a tensor.*\['logits'\]"):
        empirical_ntk(DictOut(), torch.randn(2, 3))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True], ids=lambda v: f"chunk_size={v!r}")
def test_bad_chunk_size(lin: nn.Module, bad: object) -> None:
    with pytest.raises(ValueError, match=rf"chunk_size={bad!r}.*positive int"):
        empirical_ntk(lin, torch.randn(2, 3), chunk_size=bad)  # type: ignore[arg-type]


def test_callable_without_params_and_bad_params() -> None:
    with pytest.raises(ValueError, match=r"params=None.*plain callable"):
        empirical_ntk(lambda p, x: x, torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"params\['w'\] is a float"):
        empirical_ntk(lambda p, x: x * p["w"], torch.randn(2, 3), params={"w": 1.0})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"x1 must be a tensor"):
        empirical_ntk(nn.Linear(3, 2), [[1.0, 2.0, 3.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x1 has shape \(0, 3\)"):
        empirical_ntk(nn.Linear(3, 2), torch.randn(0, 3))


# --------------------------------------------------------------------------------------------
# Side effects: train/eval flags, .grad, parameters and buffers untouched
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_impl_id)
def test_module_state_untouched(implementation: NTKImplementation) -> None:
    torch.manual_seed(0)
    model = mlp(out=3)
    model.train()
    model[2].eval()  # mixed flags must come back exactly as they were
    flags = [m.training for m in model.modules()]
    grad_obj = torch.ones_like(model[0].weight)
    model[0].weight.grad = grad_obj
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    empirical_ntk(model, torch.randn(4, 5), kind="full", implementation=implementation)
    assert [m.training for m in model.modules()] == flags
    assert model[0].weight.grad is grad_obj and torch.equal(grad_obj, torch.ones_like(grad_obj))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert not model._forward_hooks and not model[0]._forward_hooks


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_impl_id)
def test_batchnorm_buffers_untouched(implementation: NTKImplementation) -> None:
    c = case("cnn_bn")
    buffers = {n: b.clone() for n, b in c.model.named_buffers()}
    empirical_ntk(c.model, c.x1, implementation=implementation, kind="trace")
    assert all(torch.equal(b, buffers[n]) for n, b in c.model.named_buffers())
    assert not c.model.training


def test_sample_mixing_modes_are_rejected() -> None:
    c = case("cnn_bn")
    c.model.train()
    buffers = {n: b.clone() for n, b in c.model.named_buffers()}
    with pytest.raises(ValueError, match=r"model has modules that mix.*1 \(BatchNorm2d\).*model\.eval\(\)"):
        empirical_ntk(c.model, c.x1)
    assert all(torch.equal(b, buffers[n]) for n, b in c.model.named_buffers())  # no forward ran
    drop = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"1 \(Dropout\)"):
        empirical_ntk(drop, torch.randn(3, 3))
    drop.eval()
    assert empirical_ntk(drop, torch.randn(3, 3)).shape == (6, 6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_impl_id)
def test_rng_and_no_grad_context(implementation: NTKImplementation) -> None:
    """Callable under ``torch.no_grad()``; the global RNG is not consumed."""
    c = case("cnn_bn")
    state = torch.get_rng_state()
    with torch.no_grad():
        got = empirical_ntk(c.model, c.x1, kind="trace", implementation=implementation)
    assert torch.equal(torch.get_rng_state(), state)
    _assert_close(got, _oracle("cnn_bn", False)[NTKKind.TRACE], TOL[torch.float64], "under no_grad")


# --------------------------------------------------------------------------------------------
# The structured implementation: what it recognises, both per-layer forms, fallbacks
# --------------------------------------------------------------------------------------------


def _plan_of(c: Case) -> dict[str, str]:
    """``param key -> how the structured implementation treats it``."""
    problem = Problem(c.model, c.params, c.x1, None)
    plan = _structured.Structured(problem, NTKKind.FULL).plan
    where = {k: layer.type for layer in plan.layers for k in layer.attrs.values()}
    where.update({k: "fallback" for k in plan.fallback})
    assert set(where) == set(problem.params)
    return where


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mlp10", {"0.": "linear", "2.": "linear", "4.": "linear"}),
        ("cnn_bn", {"0.": "conv2d", "1.": "batchnorm", "3.": "conv2d", "4.": "batchnorm", "7.": "linear"}),
        ("custom_modules", {"a.": "local", "norm.": "local", "b.": "local", "c.": "linear"}),
        # enc.weight is read by the parent as the decoder (caught by the verification),
        # l1.weight is l2.weight (one tensor in two modules): all exact through the fallback.
        ("tied", {"enc.": "fallback", "l1.": "fallback", "l2.": "fallback"}),
        ("reused", {"inp.": "linear", "shared.": "fallback", "out.": "linear"}),
        ("sequence", {"proj.": "linear", "mix.": "linear", "head.": "linear"}),
        ("conv_zoo", {"0.": "conv2d", "2.": "local", "4.": "local", "6.": "conv2d", "8.": "linear"}),
        ("module_params", {"0.": "linear", "2.": "linear", "4.": "linear"}),
        ("inplace", {"l1.": "linear", "shift.": "local", "l2.": "linear"}),
        ("callable", {"": "fallback"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_structured_plan(name: str, expected: dict[str, str]) -> None:
    where = _plan_of(case(name))
    for key, how in where.items():
        prefix = max((p for p in expected if key.startswith(p)), key=len)
        assert how == expected[prefix], f"{name}: {key} is {how}, expected {expected[prefix]}"


def test_structured_sees_modules_inside_a_plain_callable() -> None:
    """A callable wrapping ``functional_call`` (as the monitors pass it) still gets the factorisation."""
    c = case("cnn_bn")
    module = c.model

    def fn(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(module, p, (x,))

    params = {n: p.detach() for n, p in module.named_parameters()}
    where = _plan_of(Case(fn, params, c.x1, c.x2))
    assert (
        where["0.weight"] == "conv2d" and where["1.weight"] == "batchnorm" and where["7.weight"] == "linear"
    )
    got = empirical_ntk(fn, c.x1, params=params, implementation="structured")
    _assert_close(got, _oracle("cnn_bn", False)[NTKKind.FULL], TOL[torch.float64], "callable of a module")


@pytest.mark.parametrize("mode", ["gram", "grad"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("name", ["mlp10", "sequence", "conv_zoo", "frozen_layer"])
def test_structured_both_layer_forms(
    name: str, kind: NTKKind, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linear/Conv2d layers in the Gram form and the per-sample-gradient form (forced), T = 1 and T > 1."""

    def forced(self: object, layer: _structured._Layer, b1: int, b2: int) -> str:
        return mode if layer.type in ("linear", "conv2d") else "grad"

    monkeypatch.setattr(_structured.Structured, "_mode", forced)
    c = case(name)
    ex = _extra(name, kind, True)
    got = empirical_ntk(c.model, c.x1, c.x2, kind=kind, implementation="structured", chunk_size=4, **ex)
    _assert_close(got, _oracle(name, True)[kind], TOL[torch.float64], f"{name} {mode}")


def test_layer_cost_formula_picks_the_cheaper_form() -> None:
    """Gram for wide Linear layers with T = 1; per-sample gradients for convolutions with many positions."""
    problem = Problem(mlp(784, 512, 10), None, torch.randn(3, 784), None)
    backend = _structured.Structured(problem, NTKKind.FULL)
    backend.configure(64, 64)
    assert set(backend.modes.values()) == {"gram"}
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 32 * 32, 10))
    problem = Problem(conv, None, torch.randn(3, 3, 32, 32), None)
    backend = _structured.Structured(problem, NTKKind.FULL)
    backend.configure(32, 32)
    assert [backend.modes[layer.index] for layer in backend.plan.layers] == ["grad", "gram"]


# --------------------------------------------------------------------------------------------
# Memory budget and auto
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_impl_id)
def test_memory_budget_chunks_without_changing_the_kernel(
    implementation: NTKImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = case("mlp10")
    chunks: list[int | None] = []
    real = ntk._assemble

    def spy(
        backend: object, x1: Tensor, x2: Tensor | None, kind: NTKKind, chunk: int | None, *a: object
    ) -> Tensor:
        chunks.append(chunk)
        return real(backend, x1, x2, kind, chunk, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(ntk, "_assemble", spy)
    full = empirical_ntk(c.model, c.x1, implementation=implementation)
    backend = ntk._BACKENDS[implementation](Problem(c.model, None, c.x1, None), NTKKind.FULL)
    out_bytes = 7 * 7 * 100 * 8
    # Room for blocks of 3 samples, not of 4 (chunks are sized to a fraction of the budget).
    budget = math.ceil((backend.memory_bytes(3, 3) + out_bytes) / ntk._BUDGET_MARGIN)
    got = empirical_ntk(c.model, c.x1, implementation=implementation, max_memory_bytes=budget)
    _assert_close(got, full, 1e-12, "budgeted")
    assert chunks == [None, 3]


def test_memory_budget_errors() -> None:
    c = case("mlp10")
    with pytest.raises(ValueError, match=r"max_memory_bytes=0 must be a positive int"):
        empirical_ntk(c.model, c.x1, max_memory_bytes=0)
    with pytest.raises(ValueError, match=r"max_memory_bytes=100 is too small.*one sample per chunk"):
        empirical_ntk(c.model, c.x1, implementation="structured", max_memory_bytes=100)
    with pytest.raises(ValueError, match=r"no NTK implementation fits max_memory_bytes=100"):
        empirical_ntk(c.model, c.x1, implementation="auto", max_memory_bytes=100)


def test_auto_times_once_and_respects_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    ntk.clear_auto_cache()
    c = case("mlp10")
    trials: list[list[NTKImplementation]] = []
    real = ntk._timed_trial

    def spy(prep: object, candidates: list) -> object:
        trials.append([impl for impl, _, _ in candidates])
        return real(prep, candidates)  # type: ignore[arg-type]

    monkeypatch.setattr(ntk, "_timed_trial", spy)
    first = resolve_implementation(c.model, c.x1)
    assert first in IMPLEMENTATIONS
    assert resolve_implementation(case("mlp10").model, c.x1) is first  # same architecture: cached
    assert len(trials) == 1 and set(trials[0]) == set(IMPLEMENTATIONS)
    # A budget that only the structured implementation can meet (one sample per chunk).
    problem = Problem(c.model, None, c.x1, None)
    est = {i: ntk._BACKENDS[i](problem, NTKKind.FULL).memory_bytes(1, 1) for i in IMPLEMENTATIONS}
    s = NTKImplementation.STRUCTURED
    assert est[s] < min(v for i, v in est.items() if i is not s)
    budget = math.ceil((est[s] + 7 * 7 * 100 * 8) / ntk._BUDGET_MARGIN)
    chosen = resolve_implementation(c.model, c.x1, max_memory_bytes=budget)
    assert chosen is s and trials[-1] == [s]
    _assert_close(
        empirical_ntk(c.model, c.x1, max_memory_bytes=budget),
        _oracle("mlp10", False)[NTKKind.FULL],
        1e-10,
        "auto",
    )


# --------------------------------------------------------------------------------------------
# The benchmark's smoke test
# --------------------------------------------------------------------------------------------


def test_benchmark_quick_json_schema(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ntk.json"
    cmd = [sys.executable, str(root / "benchmarks" / "ntk.py"), "--quick", "--repeats", "1", "--threads", "1"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert json.loads(proc.stdout) == data
    assert {"environment", "settings", "cases", "targets"} <= set(data)
    names = {c["spec"]["name"] for c in data["cases"]}
    assert names == {"mlp", "resnet20"}
    expected_impls = {i.value for i in NTKImplementation} | {"autograd_loop"}
    for c in data["cases"]:
        for kind, results in c["kinds"].items():
            assert kind in {"full", "trace"}
            assert set(results) == expected_impls
            for r in results.values():
                assert r["median_s"] > 0 and r["repeats"] >= 1
                assert r["max_rel_diff_vs_reference"] < 1e-4  # every implementation agrees
                for key in (
                    "time_ratio_to_jacobian_contraction",
                    "speedup_vs_jacobian_contraction",
                    "peak_rss_delta_bytes",
                    "cold_call_s",
                ):
                    assert key in r
            assert results["jacobian_contraction"]["time_ratio_to_jacobian_contraction"] == 1.0
    assert {(t["case"], t["kind"]) for t in data["targets"]} == {
        ("mlp", "full"),
        ("mlp", "trace"),
        ("resnet20", "full"),
    }
