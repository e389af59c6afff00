"""The structured NTK implementation: per-layer factorisations instead of per-sample Jacobians.

For a layer ``z = h Wᵀ + b`` (``nn.Linear``; ``nn.Conv2d`` is the same on unfolded patches) the
per-sample, per-output gradient of the weight is ``Σ_t δ_{i,a,t} ⊗ h_{i,t}``, where ``h_{i,t}``
is the layer input of sample ``i`` at position ``t`` and ``δ_{i,a,t} = ∂f_a(x_i)/∂z_{i,t}`` the
cotangent at the layer output. Its contribution to the kernel is therefore

    K_W[(i,a),(j,b)] = Σ_{t,s} ⟨h_{i,t}, h_{j,s}⟩ · ⟨δ_{i,a,t}, δ_{j,b,s}⟩

(plus ``Σ_{t,s} ⟨δ_{i,a,t}, δ_{j,b,s}⟩`` for the bias): a Gram of inputs times a Gram of
cotangents, never a per-sample gradient. All cotangents of a chunk come from ``O``
vector-Jacobian products of one batched forward (samples are independent in eval mode): a zero
tensor is added to the output of every handled layer through a forward hook, and the outputs
are differentiated with respect to those zeros.

Per layer, the Gram form or the per-sample gradient form (``einsum`` over positions, then one
matrix product) is used, whichever the cost formula of :func:`_layer_costs` finds cheaper for
the block sizes. Every other trainable parameter still gets an exact answer:

* BatchNorm (and SyncBatchNorm) normalising with fixed statistics (eval mode, or the probe
  statistics of ``norm_mode="probe"``, read from the module as the call sees it): the affine
  parameters' per-sample gradients are the cotangents times the normalised input
  (``Σ_positions δ·x̂`` and ``Σ_positions δ``), computed directly;
* a parameter owned by any other module called once with one batched tensor input (LayerNorm,
  a custom module, a grouped or circular-padded convolution) gets per-sample gradients from a
  *local* vector-Jacobian product of that module alone with the same cotangents (``vmap`` over
  samples and outputs), except, under a ``norm_mode``, a module containing normalisation or
  dropout layers (the replay would run them outside the override);
* anything else (weight tying, a module called twice, a parameter read outside its module,
  a plain callable's own tensors) falls back to Jacobian contraction restricted to those
  parameters.

Modules are found with a global forward hook during the call, matched to the differentiated
tensors by identity, so a plain callable that runs ``functional_call(module, params, ...)`` (as
the monitors do) is factorised too. The assignment (the *plan*) is built once per model and
probe shape from a 3-sample forward and then *verified*: the structured per-sample gradient of
one sample for a random output mix must equal the autograd gradient of that sample alone,
parameter group by parameter group (relative tolerance 1e-3 in float32, 1e-8 in float64); a
group that fails (a weight also read elsewhere, a layout whose first dimension is not the
sample) is moved to the fallback. Every later call checks that the same modules run once each
with the planned tensors, and re-plans otherwise. The result is exact for any model whose
samples are independent; the one blind spot is a parameter also used outside its module whose
extra contribution is below the verification tolerance on the verification sample.

On diagonal blocks of a symmetric kernel the products ``A Aᵀ`` are computed on the upper block
triangle only.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vjp, vmap

from lightning_lplr.functional._problem import (
    Problem,
    Target,
    global_forward_hook,
    index_samples,
    input_signature,
    sample_count,
)

_LINEAR, _CONV2D, _BATCHNORM, _LOCAL = "linear", "conv2d", "batchnorm", "local"
_GRAM, _GRAD = "gram", "grad"
_PLAN_CACHE_SIZE = 32


class _PlanMismatchError(Exception):
    """The model did not behave as its cached plan says: rebuild the plan."""


@dataclass
class _Layer:
    """One module whose trainable parameters get structured (or local) per-sample treatment."""

    index: int
    module_ref: weakref.ReferenceType[nn.Module]
    type: str
    attrs: dict[str, str]
    """Module attribute name -> key in the params dict (trainable, owned directly)."""
    positions: int = 1
    d_in: int = 0
    d_out: int = 0
    out_numel: int = 0
    param_numel: int = 0
    clone_input: bool = False

    @property
    def module(self) -> nn.Module | None:
        return self.module_ref()


@dataclass
class _Plan:
    layers: list[_Layer]
    fallback: list[str]
    activation_numel: int
    """Per-sample numel of all leaf-module outputs (a proxy of activation memory)."""
    by_id: dict[int, _Layer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {}
        for layer in self.layers:
            module = layer.module
            if module is not None:
                self.by_id[id(module)] = layer

    def alive(self) -> bool:
        return all(layer.module is not None for layer in self.layers)


_PLANS: OrderedDict[tuple[Any, ...], _Plan] = OrderedDict()


def clear_plan_cache() -> None:
    """Forget every cached plan (they are rebuilt on the next call)."""
    _PLANS.clear()


def _model_identity(problem: Problem) -> tuple[Any, ...]:
    """Identity of the model object(s): plans hold weak references to modules of exactly these."""
    if problem.module is not None:
        return ("module", id(problem.module))
    fn = problem.call
    code = getattr(fn, "__code__", None)
    if code is None:
        return ("callable", id(fn))
    cells = tuple(id(c.cell_contents) for c in (fn.__closure__ or ()) if _cell_filled(c))
    return ("function", code, cells, id(getattr(fn, "__self__", None)))


def _cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - raises on an empty cell
    except ValueError:
        return False
    return True


def _module_state(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers of ``module`` as it sees them now (swapped-in ones under functional_call)."""
    state = {n: t.detach() for n, t in module.named_parameters(remove_duplicate=False)}
    state.update({n: t for n, t in module.named_buffers(remove_duplicate=False)})
    return state


def _is_plain(module: nn.Module, base: type[nn.Module], *methods: str) -> bool:
    """``module`` is a ``base`` whose listed methods are not overridden."""
    return isinstance(module, base) and all(
        getattr(type(module), name) is getattr(base, name) for name in methods
    )


def _patches(module: nn.Conv2d, h: Tensor) -> Tensor:
    """Unfolded input patches ``(b, C_in·kh·kw, T)`` exactly as the convolution sees them."""
    padding: Any = module.padding
    if isinstance(padding, str):
        if padding == "same":
            h = F.pad(h, module._reversed_padding_repeated_twice)
        padding = 0
    return F.unfold(h, module.kernel_size, module.dilation, padding, module.stride)


# ----------------------------------------------------------------------------------------------
# Per-layer per-sample gradients (grad mode, verification) and Gram features
# ----------------------------------------------------------------------------------------------


def _normalised(module: nn.modules.batchnorm._BatchNorm, h: Tensor, state: dict[str, Tensor]) -> Tensor:
    """``(h - running_mean) / sqrt(running_var + eps)`` as ``(b, C, positions)``.

    ``state`` holds the buffers the module saw during the call (the probe statistics under
    ``norm_mode="probe"``).
    """
    b, c = h.shape[0], h.shape[1]
    mean = state["running_mean"].view(1, c, 1)
    inv = torch.rsqrt(state["running_var"] + module.eps).view(1, c, 1)
    return (h.reshape(b, c, -1) - mean) * inv


def _layer_grads(
    layer: _Layer, h: Tensor, delta: Tensor, state: dict[str, Tensor] | None
) -> dict[str, Tensor]:
    """Per-sample, per-output gradients ``key -> (b, O, *param_shape)`` of one layer's parameters.

    ``h`` is the layer input of the chunk and ``delta`` the cotangents at its output, ``(O, b, *out)``.
    """
    module = layer.module
    assert module is not None
    o, b = delta.shape[0], delta.shape[1]
    grads: dict[str, Tensor] = {}
    if layer.type == _LINEAR:
        hh = h.reshape(b, -1, layer.d_in)
        dd = delta.reshape(o, b, -1, layer.d_out)
        if "weight" in layer.attrs:
            grads[layer.attrs["weight"]] = torch.einsum("aito,itk->iaok", dd, hh)
        if "bias" in layer.attrs:
            grads[layer.attrs["bias"]] = dd.sum(dim=2).transpose(0, 1)
        return grads
    if layer.type == _CONV2D:
        assert isinstance(module, nn.Conv2d)
        dd = delta.reshape(o, b, layer.d_out, -1)
        if "weight" in layer.attrs:
            g = torch.einsum("aict,ikt->iack", dd, _patches(module, h))
            grads[layer.attrs["weight"]] = g.reshape(b, o, *module.weight.shape)
        if "bias" in layer.attrs:
            grads[layer.attrs["bias"]] = dd.sum(dim=3).transpose(0, 1)
        return grads
    assert state is not None
    if layer.type == _BATCHNORM:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        dd = delta.reshape(o, b, layer.d_out, -1)
        if "weight" in layer.attrs:
            grads[layer.attrs["weight"]] = torch.einsum("aics,ics->iac", dd, _normalised(module, h, state))
        if "bias" in layer.attrs:
            grads[layer.attrs["bias"]] = dd.sum(dim=3).transpose(0, 1)
        return grads
    # Local: vector-Jacobian products of the module alone, per sample and per output.
    direct = {a: state[a] for a in layer.attrs}
    rest = {n: t for n, t in state.items() if n not in layer.attrs}

    def per_sample(hi: Tensor, di: Tensor) -> dict[str, Tensor]:
        _, vjp_fn = vjp(lambda p: functional_call(module, {**rest, **p}, (hi.unsqueeze(0),)), direct)
        return vmap(lambda d: vjp_fn(d.unsqueeze(0))[0])(di)

    local = vmap(per_sample)(h, delta.transpose(0, 1))  # attr -> (b, O, *shape)
    return {layer.attrs[a]: g for a, g in local.items()}


@dataclass
class _Gram:
    """Gram-form features of one Linear/Conv2d layer for a chunk."""

    h: Tensor | None
    """``(b, T, d_in)`` inputs (patches), ``None`` when the weight is not trainable."""
    delta: Tensor
    """``(b, O, T, d_out)`` output cotangents, contiguous."""
    bias: bool


@dataclass
class _Features:
    parts: list[Tensor]
    """``(b, O, P_l)`` per-sample gradients of grad-mode, BatchNorm, local and fallback parameters."""
    grams: list[_Gram]
    batch: int


def _gram_features(layer: _Layer, h: Tensor, delta: Tensor) -> _Gram:
    module = layer.module
    o, b = delta.shape[0], delta.shape[1]
    if layer.type == _LINEAR:
        hh = h.reshape(b, -1, layer.d_in) if "weight" in layer.attrs else None
        dd = delta.reshape(o, b, -1, layer.d_out)
    else:
        assert isinstance(module, nn.Conv2d)
        hh = _patches(module, h).transpose(1, 2) if "weight" in layer.attrs else None
        dd = delta.reshape(o, b, layer.d_out, -1).transpose(2, 3)
    return _Gram(hh, dd.transpose(0, 1).contiguous(), "bias" in layer.attrs)


def _layer_costs(layer: _Layer, b1: int, b2: int, outputs: int, pairs: int) -> dict[str, tuple[float, float]]:
    """``mode -> (flops, peak numbers)`` of one Linear/Conv2d layer for a ``b1 × b2`` block.

    ``outputs`` is ``O`` (1 for pseudo) and ``pairs`` the output pairs kept: ``O²`` for the full
    kernel, ``O`` for trace/diagonal. With ``T`` positions, ``d_in`` inputs (patch size for a
    convolution) and ``d_out`` outputs:

    * Gram, ``T = 1``: ``b1·b2·(d_in + pairs·d_out)`` (input Gram, cotangent Gram, product);
    * Gram, ``T > 1``: ``b1·b2·T·(T·d_in + T·O·d_out + pairs·d_out)`` (input Gram, its product
      with the cotangents, contraction with the other side's cotangents);
    * per-sample gradients: ``(b1 + b2)·O·T·d_out·d_in + b1·b2·pairs·d_out·d_in``.
    """
    t, din, dout, o = layer.positions, layer.d_in, layer.d_out, outputs
    wdin = din if "weight" in layer.attrs else 0
    if t == 1:
        gram_flops = b1 * b2 * (wdin + pairs * dout)
        gram_mem = 2 * b1 * b2 * pairs
    else:
        gram_flops = b1 * b2 * t * (t * wdin + t * o * dout + pairs * dout)
        gram_mem = 2 * b1 * b2 * t * t + 2 * b1 * b2 * t * o * dout + 2 * b1 * b2 * pairs
    p = dout * (din + 1)
    grad_flops = (b1 + b2) * o * t * p + b1 * b2 * pairs * p
    grad_mem = 2 * (b1 + b2) * o * p
    return {_GRAM: (float(gram_flops), float(gram_mem)), _GRAD: (float(grad_flops), float(grad_mem))}


_SMALL_PART = 2048
"""Per-sample gradient blocks narrower than this are concatenated into one before contraction."""


# ----------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------


class Structured:
    """``NTKImplementation.STRUCTURED``: see the module docstring for the method.

    Example:
        >>> from lightning_lplr.functional import empirical_ntk
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5)).eval()
        >>> x = torch.randn(6, 3, 4, 4)
        >>> k = empirical_ntk(net, x, implementation="structured")
        >>> reference = empirical_ntk(net, x, implementation="jacobian_contraction")
        >>> k.shape, bool(torch.allclose(k, reference, rtol=1e-4, atol=1e-4))
        (torch.Size([30, 30]), True)
    """

    def __init__(self, problem: Problem, kind: Any, target: Target | None = None) -> None:
        self.problem = problem
        self.kind = str(getattr(kind, "value", kind))
        scalar = self.kind in ("pseudo", "loss_gram")
        self.target = target or Target(problem, scalar=scalar, weighted=False)
        self.outputs = self.target.outputs
        self.pairs = self.outputs**2 if self.kind == "full" else self.outputs
        self.selected = False
        """A masked full kernel: each block is copied once more when its kept rows are selected."""
        self.plan = self._plan()
        self.modes: dict[int, str] = {}
        n = sample_count(problem.sample)
        self.configure(n, n)

    # -- plan ------------------------------------------------------------------------------

    def _plan_key(self) -> tuple[Any, ...]:
        p = self.problem
        sig = tuple((k, tuple(v.shape), v.dtype, str(v.device)) for k, v in p.params.items())
        return (_model_identity(p), sig, input_signature(p.sample), p.norm_mode)

    def _plan(self, rebuild: bool = False) -> _Plan:
        key = self._plan_key()
        plan = None if rebuild else _PLANS.get(key)
        if plan is None or not plan.alive():
            plan = _build_plan(self.problem)
            _PLANS[key] = plan
            while len(_PLANS) > _PLAN_CACHE_SIZE:
                _PLANS.popitem(last=False)
        _PLANS.move_to_end(key)
        return plan

    def configure(self, b1: int, b2: int) -> None:
        """Choose Gram or per-sample-gradient form per Linear/Conv2d layer for ``b1 × b2`` blocks."""
        self.modes = {layer.index: self._mode(layer, b1, b2) for layer in self.plan.layers}

    def _mode(self, layer: _Layer, b1: int, b2: int) -> str:
        if layer.type not in (_LINEAR, _CONV2D):
            return _GRAD
        costs = _layer_costs(layer, b1, b2, self.outputs, self.pairs)
        return min(costs, key=lambda mode: costs[mode][0])

    def memory_bytes(self, b1: int, b2: int) -> int:
        """Estimated peak bytes of one ``b1 × b2`` block (features of both chunks, temporaries, block)."""
        o = self.outputs
        fb = sum(self.problem.params[k].numel() for k in self.plan.fallback)
        act = self.problem.activation_numel
        planned = sum(layer.out_numel for layer in self.plan.layers)
        b = max(b1, b2)
        # Building a chunk: activations, the O output cotangents of every planned layer, and the
        # fallback Jacobian (result, concatenation, vmapped backward).
        building = b * act + o * b * planned + (2 * b * o * fb + b * o * act if fb else 0)
        per_sample = o * fb  # features kept per sample until the block is contracted
        temps = 0.0
        for layer in self.plan.layers:
            if layer.type not in (_LINEAR, _CONV2D):
                per_sample += o * layer.param_numel
                continue
            if self._mode(layer, b1, b2) == _GRAD:
                per_sample += o * layer.d_out * (layer.d_in + 1)
                temps = max(temps, b * layer.positions * layer.d_in)  # unfolded patches
            else:
                per_sample += layer.positions * (layer.d_in + o * layer.d_out)
                temps = max(temps, _layer_costs(layer, b1, b2, o, self.pairs)[_GRAM][1])
        block = (3 if self.selected else 2) * b1 * b2 * self.pairs
        return int((building + (b1 + b2) * per_sample + temps + block) * self.problem.itemsize)

    # -- features --------------------------------------------------------------------------

    def features(self, data: Any) -> _Features:
        """Features of a chunk of the target's data (inputs, or ``(inputs, weights)``)."""
        for attempt in range(3):
            try:
                return self._features(data)
            except _PlanMismatchError:
                if attempt == 2:
                    raise
                self.plan = self._plan(rebuild=True)
                n = sample_count(data)
                self.configure(n, n)
        raise AssertionError("unreachable")  # pragma: no cover

    def _features(self, data: Any) -> _Features:
        p = self.problem
        x, w = self.target.split(data)
        b, o = sample_count(x), self.outputs
        plan = self.plan
        grams: list[_Gram] = []
        parts: list[Tensor] = []
        if plan.layers:
            out, inputs, zeros, states = _hooked_forward(p, plan, x)
            out = self.target.apply(out, w)
            basis = torch.eye(o, dtype=out.dtype, device=out.device).unsqueeze(1).expand(o, b, o)
            order = list(zeros)
            cot = torch.autograd.grad(
                out, [zeros[i] for i in order], grad_outputs=basis, is_grads_batched=True, allow_unused=True
            )
            deltas = {
                i: (
                    g
                    if g is not None
                    else torch.zeros((o, *zeros[i].shape), dtype=out.dtype, device=out.device)
                )
                for i, g in zip(order, cot, strict=True)
            }
            del out, zeros, cot
            for layer in plan.layers:
                i = layer.index
                if self.modes[i] == _GRAM:
                    grams.append(_gram_features(layer, inputs[i], deltas[i]))
                else:
                    g = _layer_grads(layer, inputs[i], deltas[i], states.get(i))
                    parts.extend(v.reshape(b, o, -1) for v in g.values())
                del deltas[i], inputs[i]
        if plan.fallback:
            parts.append(self._fallback_jacobian(data))
        small = [t for t in parts if t.shape[2] < _SMALL_PART]
        if len(small) > 1:
            parts = [t for t in parts if t.shape[2] >= _SMALL_PART] + [torch.cat(small, dim=2)]
        return _Features(parts, grams, b)

    def _fallback_jacobian(self, data: Any) -> Tensor:
        """``(b, O, P_fallback)`` by ``vmap(jacrev)`` restricted to the fallback parameters."""
        p = self.problem
        single = self.target.single
        keys = self.plan.fallback
        sub = {k: p.params[k] for k in keys}

        def f(q: dict[str, Tensor], di: Any) -> Tensor:
            return single({**p.params, **q}, di)

        jac = p.map_samples(lambda di: jacrev(f)(sub, di), data)
        b = sample_count(data)
        return torch.cat([jac[k].reshape(b, self.outputs, -1) for k in keys], dim=2)

    # -- contraction -----------------------------------------------------------------------

    def contract(self, f1: _Features, f2: _Features) -> Tensor:
        o, b1, b2 = self.outputs, f1.batch, f2.batch
        same = f1 is f2
        like = f1.parts[0] if f1.parts else f1.grams[0].delta
        if self.kind == "full":
            k = torch.zeros(b1, o, b2, o, dtype=like.dtype, device=like.device)
            k2 = k.view(b1 * o, b2 * o)
            for g1, g2 in zip(f1.parts, f2.parts, strict=True):
                _addmm_nt(k2, g1.reshape(b1 * o, -1), g2.reshape(b2 * o, -1), same)
            for r1, r2 in zip(f1.grams, f2.grams, strict=True):
                _gram_full(k, r1, r2, same)
            return k
        if self.kind == "diagonal":
            kd = torch.zeros(b1, b2, o, dtype=like.dtype, device=like.device)
            for g1, g2 in zip(f1.parts, f2.parts, strict=True):
                kd += torch.einsum("iap,jap->ija", g1, g2)
            for r1, r2 in zip(f1.grams, f2.grams, strict=True):
                _gram_diag(kd, r1, r2)
            return kd
        ks = torch.zeros(b1, b2, dtype=like.dtype, device=like.device)  # summed over outputs
        for g1, g2 in zip(f1.parts, f2.parts, strict=True):
            _addmm_nt(ks, g1.reshape(b1, -1), g2.reshape(b2, -1), same)
        for r1, r2 in zip(f1.grams, f2.grams, strict=True):
            _gram_sum(ks, r1, r2, same)
        return ks / o if self.kind == "trace" else ks


def _addmm_nt(out: Tensor, a: Tensor, b: Tensor, same: bool) -> None:
    """``out += a bᵀ``; for ``a`` and ``b`` the same rows, only the upper block triangle is multiplied."""
    n = a.shape[0]
    if not same or n < 128 or a.shape[1] < 256:
        out.addmm_(a, b.T)
        return
    blocks = 4 if n >= 512 else 2
    size = -(-n // blocks)
    bounds = [(s, min(n, s + size)) for s in range(0, n, size)]
    for p, (p0, p1) in enumerate(bounds):
        for q0, q1 in bounds[p:]:
            blk = a[p0:p1] @ a[q0:q1].T
            out[p0:p1, q0:q1] += blk
            if q0 != p0:
                out[q0:q1, p0:p1] += blk.T


def _input_factor(g1: _Gram, g2: _Gram, same: bool) -> Tensor:
    """``(b1·T, b2·T)``: ``⟨h_{i,t}, h_{j,s}⟩`` (weight) ``+ 1`` (bias)."""
    d1, d2 = g1.delta, g2.delta
    rows, cols = d1.shape[0] * d1.shape[2], d2.shape[0] * d2.shape[2]
    if g1.h is not None and g2.h is not None:
        factor = torch.zeros(rows, cols, dtype=d1.dtype, device=d1.device)
        _addmm_nt(factor, g1.h.reshape(rows, -1), g2.h.reshape(cols, -1), same)
        if g1.bias:
            factor += 1
        return factor
    return torch.ones(rows, cols, dtype=d1.dtype, device=d1.device)


def _positions_product(factor: Tensor, g2: _Gram, b1: int) -> Tensor:
    """``C[j,i,t,b,o] = Σ_s F[i,t,j,s] δ2[j,b,s,o]`` as ``(b2, b1, T, O, d)``."""
    b2, o, t, d = g2.delta.shape
    f = factor.view(b1 * t, b2, t).permute(1, 0, 2)  # (b2, b1·T, T)
    d2 = g2.delta.permute(0, 2, 1, 3).reshape(b2, t, o * d)  # (b2, T, O·d)
    return torch.bmm(f, d2).view(b2, b1, t, o, d)


def _gram_full(k: Tensor, g1: _Gram, g2: _Gram, same: bool) -> None:
    """``k[i,a,j,b] += Σ_{t,s} F[i,t,j,s] ⟨δ1[i,a,t], δ2[j,b,s]⟩`` in place (``k``: ``(b1, O, b2, O)``)."""
    b1, o, t, d = g1.delta.shape
    b2 = g2.delta.shape[0]
    factor = _input_factor(g1, g2, same)
    if t == 1:
        dd = torch.zeros(b1 * o, b2 * o, dtype=k.dtype, device=k.device)
        _addmm_nt(dd, g1.delta.view(b1 * o, d), g2.delta.view(b2 * o, d), same)
        k.addcmul_(dd.view(b1, o, b2, o), factor.view(b1, 1, b2, 1))
        return
    c = _positions_product(factor, g2, b1)
    lhs = g1.delta.view(b1, o, t * d)
    rhs = c.permute(1, 2, 4, 0, 3).reshape(b1, t * d, b2 * o)
    k += torch.bmm(lhs, rhs).view(b1, o, b2, o)


def _gram_sum(ks: Tensor, g1: _Gram, g2: _Gram, same: bool) -> None:
    """``ks[i,j] += Σ_a Σ_{t,s} F[i,t,j,s] ⟨δ1[i,a,t], δ2[j,a,s]⟩`` in place."""
    b1, o, t, d = g1.delta.shape
    b2 = g2.delta.shape[0]
    factor = _input_factor(g1, g2, same)
    if t == 1:
        dd = torch.zeros(b1, b2, dtype=ks.dtype, device=ks.device)
        _addmm_nt(dd, g1.delta.view(b1, o * d), g2.delta.view(b2, o * d), same)
        ks.addcmul_(dd, factor)
        return
    ks += torch.einsum("iato,jitao->ij", g1.delta, _positions_product(factor, g2, b1))


def _gram_diag(kd: Tensor, g1: _Gram, g2: _Gram) -> None:
    """``kd[i,j,a] += Σ_{t,s} F[i,t,j,s] ⟨δ1[i,a,t], δ2[j,a,s]⟩`` in place."""
    b1, t = g1.delta.shape[0], g1.delta.shape[2]
    b2 = g2.delta.shape[0]
    factor = _input_factor(g1, g2, False)
    if t == 1:
        dd = torch.einsum("iao,jao->ija", g1.delta[:, :, 0], g2.delta[:, :, 0])
        kd.addcmul_(dd, factor.view(b1, b2, 1))
        return
    kd += torch.einsum("iato,jitao->ija", g1.delta, _positions_product(factor, g2, b1))


# ----------------------------------------------------------------------------------------------
# Hooked forward, plan discovery and verification
# ----------------------------------------------------------------------------------------------


def _hooked_forward(
    problem: Problem, plan: _Plan, x: Tensor
) -> tuple[Tensor, dict[int, Tensor], dict[int, Tensor], dict[int, dict[str, Tensor]]]:
    """Batched outputs ``(b, O)`` with a zero added at every planned layer output.

    Returns the outputs, the layer inputs, the zeros (differentiate w.r.t. them for the output
    cotangents) and, for local layers, the module state seen during the call.
    """
    params = problem.params
    structured = {id(params[k]) for layer in plan.layers for k in layer.attrs.values()}
    inputs: dict[int, Tensor] = {}
    versions: dict[int, int] = {}
    zeros: dict[int, Tensor] = {}
    states: dict[int, dict[str, Tensor]] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        layer = plan.by_id.get(id(module))
        if layer is None or layer.module is not module:
            if any(t is not None and id(t) in structured for t in module._parameters.values()):
                raise _PlanMismatchError("an unplanned module uses a planned parameter")
            return None
        i = layer.index
        if i in zeros:
            raise _PlanMismatchError("a planned module was called twice")
        for attr, key in layer.attrs.items():
            if module._parameters.get(attr) is not params[key]:
                raise _PlanMismatchError("a planned module does not use the planned parameter")
        h = args[0]
        inputs[i] = h.detach().clone() if layer.clone_input else h.detach()
        versions[i] = h._version
        if layer.type in (_LOCAL, _BATCHNORM):
            states[i] = _module_state(module)
        z = torch.zeros_like(output, requires_grad=True)
        zeros[i] = z
        return output + z

    with torch.enable_grad(), global_forward_hook(hook):
        out = problem.batched(params, x)
    if len(zeros) != len(plan.layers):
        raise _PlanMismatchError("a planned module was not called")
    for layer in plan.layers:
        i = layer.index
        if not layer.clone_input and inputs[i]._version != versions[i]:
            layer.clone_input = True  # its input was modified in place after the layer: keep a copy
            raise _PlanMismatchError("a layer input was modified in place")
    return out, inputs, zeros, states


@dataclass
class _Call:
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    attrs: dict[str, str]
    running_stats: bool
    """A BatchNorm that normalised with running statistics in this call (eval mode, buffers set)."""


def _plain_batch_norm(module: nn.Module) -> bool:
    """BatchNorm (or SyncBatchNorm, whose eval-mode forward is BatchNorm's) with an unmodified forward."""
    forwards = (nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward)
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and type(module).forward in forwards


_OVERRIDDEN = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
)
"""Modules whose behaviour a normalisation override changes during a call: never replayed locally."""


def _build_plan(problem: Problem) -> _Plan:
    xs = problem.sample
    b = sample_count(xs)
    params = problem.params
    key_of = {id(t): k for k, t in params.items()}
    calls: list[_Call] = []
    activations = 0

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        nonlocal activations
        if isinstance(output, Tensor) and next(module.children(), None) is None:
            activations += output.numel()
        attrs = {a: key_of[id(t)] for a, t in module._parameters.items() if t is not None and id(t) in key_of}
        if attrs:
            # Read the mode now: a normalisation override sets it for the duration of the call only.
            running = (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and not module.training
                and module.running_mean is not None
                and module.running_var is not None
            )
            calls.append(_Call(module, args, kwargs, output, attrs, running))

    with torch.no_grad(), global_forward_hook(hook):
        problem.batched(params, xs)
    module_calls = Counter(id(c.module) for c in calls)
    key_uses = Counter(k for c in calls for k in c.attrs.values())
    layers: list[_Layer] = []
    for c in calls:
        if module_calls[id(c.module)] != 1 or any(key_uses[k] != 1 for k in c.attrs.values()):
            continue
        if (
            c.kwargs
            or len(c.args) != 1
            or not isinstance(c.args[0], Tensor)
            or not isinstance(c.output, Tensor)
        ):
            continue
        h, out = c.args[0], c.output
        if h.ndim < 2 or h.shape[0] != b or out.ndim < 1 or out.shape[0] != b or not out.is_floating_point():
            continue
        layer = _Layer(
            index=len(layers),
            module_ref=weakref.ref(c.module),
            type=_LOCAL,
            attrs=dict(c.attrs),
            out_numel=out[0].numel(),
            param_numel=sum(params[k].numel() for k in c.attrs.values()),
        )
        m = c.module
        if _is_plain(m, nn.Linear, "forward") and h.shape[-1] == m.in_features:
            assert isinstance(m, nn.Linear)
            layer.type, layer.d_in, layer.d_out = _LINEAR, m.in_features, m.out_features
            layer.positions = h[0].numel() // m.in_features
        elif (
            _is_plain(m, nn.Conv2d, "forward", "_conv_forward")
            and isinstance(m, nn.Conv2d)
            and m.groups == 1
            and m.padding_mode == "zeros"
            and h.ndim == 4
            and out.ndim == 4
        ):
            layer.type, layer.d_out = _CONV2D, m.out_channels
            layer.d_in = m.in_channels * math.prod(m.kernel_size)
            layer.positions = out.shape[2] * out.shape[3]
        elif _plain_batch_norm(m) and c.running_stats and h.ndim >= 2:
            assert isinstance(m, nn.modules.batchnorm._BatchNorm)
            layer.type, layer.d_out = _BATCHNORM, m.num_features
        elif problem.norm is not None and any(isinstance(s, _OVERRIDDEN) for s in m.modules()):
            # A local replay runs the module outside the forward, where the override is not active.
            continue
        layers.append(layer)
    layers = _verified(problem, _Plan(layers, [], 0))
    handled = {k for layer in layers for k in layer.attrs.values()}
    fallback = [k for k in params if k not in handled]
    return _Plan(layers, fallback, max(1, activations // b))


def _verified(problem: Problem, plan: _Plan) -> list[_Layer]:
    """The layers whose structured per-sample gradient matches autograd on one sample."""
    if not plan.layers:
        return []
    xs = problem.sample
    params = problem.params
    dtype = problem.dtype
    gen = torch.Generator().manual_seed(1234)  # never the global RNG
    u = torch.randn(1, problem.num_outputs, generator=gen, dtype=torch.float64).to(
        dtype=dtype, device=problem.device
    )
    try:
        out, inputs, zeros, states = _hooked_forward(problem, plan, xs)
    except _PlanMismatchError:  # an input modified in place: the layer now keeps a copy, try once more
        try:
            out, inputs, zeros, states = _hooked_forward(problem, plan, xs)
        except _PlanMismatchError:
            return []
    cot_out = torch.zeros_like(out)
    cot_out[:1] = u
    order = list(zeros)
    cot = torch.autograd.grad(out, [zeros[i] for i in order], grad_outputs=cot_out, allow_unused=True)
    deltas = {i: (torch.zeros_like(zeros[i]) if g is None else g) for i, g in zip(order, cot, strict=True)}
    keys = [k for layer in plan.layers for k in layer.attrs.values()]
    _, vjp_fn = vjp(
        lambda q: problem.batched({**params, **q}, index_samples(xs, slice(0, 1))),
        {k: params[k] for k in keys},
    )
    (truth,) = vjp_fn(u)
    rtol = 1e-3 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8
    kept = []
    for layer in plan.layers:
        i = layer.index
        try:
            got = _layer_grads(layer, inputs[i][:1], deltas[i][:1].unsqueeze(0), states.get(i))
        except Exception:  # a module the local path cannot replay (in-place buffers, ...): fall back
            continue
        ok = True
        for key in layer.attrs.values():
            g, t = got[key].reshape(-1), truth[key].reshape(-1)
            err = (g - t).norm().item()
            if not math.isfinite(err) or err > rtol * (t.norm().item() + g.norm().item()) + 1e-30:
                ok = False
        if ok:
            kept.append(layer)
    for n, layer in enumerate(kept):
        layer.index = n
    return kept
