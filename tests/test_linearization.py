"""Linearisation gap against explicit-Jacobian oracles, closed forms and the forward-mode fallbacks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp

from lightning_lplr.functional import (
    ForwardModeError,
    LinearizationGap,
    forward_mode_safe,
    linearization_gap,
    trainable_params,
)
from lightning_lplr.functional.linearization import _linearize, _module_call, _tangent

# torch registers its jvp decompositions with torch.jit.script on the first jvp of the process.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:DeprecationWarning")

F64 = torch.float64
ModelFn = Callable[[dict[str, Tensor], Tensor], Tensor]


def _global_flags() -> tuple[object, ...]:
    """Every global flag forward_mode_safe or linearization_gap touch (or could touch by mistake)."""
    return (
        torch.backends.mha.get_fastpath_enabled(),
        torch.backends.mkldnn.enabled,
        torch.backends.mkldnn.deterministic,
        torch._C._get_onednn_allow_tf32(),
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
        torch.backends.cuda.cudnn_sdp_enabled(),
        tuple(torch._C._get_sdp_priority_order()),
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.is_grad_enabled(),
    )


def _perturbed(params: dict[str, Tensor], scale: float, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


def _oracle(call: ModelFn, theta_0: dict[str, Tensor], theta_t: dict[str, Tensor], x: Tensor):
    """``(f_0, f_t, J_0 δ)`` from an explicit reverse-mode Jacobian ``(N, P)`` over a flat vector."""
    names = list(theta_0)
    shapes = [theta_0[k].shape for k in names]
    sizes = [theta_0[k].numel() for k in names]

    def g(flat: Tensor) -> Tensor:
        parts = flat.split(sizes)
        return call({k: p.reshape(s) for k, p, s in zip(names, parts, shapes, strict=True)}, x).reshape(-1)

    flat_0 = torch.cat([theta_0[k].reshape(-1) for k in names])
    flat_t = torch.cat([theta_t[k].reshape(-1) for k in names])
    jac = torch.autograd.functional.jacobian(g, flat_0, vectorize=True)
    assert jac.shape == (g(flat_0).numel(), flat_0.numel())
    with torch.no_grad():
        return g(flat_0), g(flat_t), jac @ (flat_t - flat_0)


def _mlp(seed: int = 0, dtype: torch.dtype = F64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).to(
        dtype
    )


def _probe(shape: tuple[int, ...], dtype: torch.dtype = F64, seed: int = 1) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Closed forms and oracles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["module", "functional"])
def test_affine_model_has_zero_gap(form: str) -> None:
    # f = W x + b is its own linearisation: f_t − f_0 − J_0 δ is pure rounding. Each of the three
    # float64 evaluations errs per element by ≤ γ_7·(|W||x| + |b|) ≈ 8e-16 of the outputs' scale
    # (inner length 6), while ‖f_t − f_0‖ is of that scale (δ is as large as θ itself): 1e-12
    # relative leaves a margin of 1000.
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    x = _probe((10, 6))
    theta_0 = {k: v.clone() for k, v in trainable_params(lin).items()}
    theta_t = _perturbed(theta_0, 3.0, seed=2)
    if form == "module":
        with torch.no_grad():
            for name, p in lin.named_parameters():
                p.copy_(theta_t[name])
        result = linearization_gap(lin, theta_0, x)
    else:
        result = linearization_gap(lambda p, x: functional_call(lin, p, (x,)), theta_0, x, params_t=theta_t)
    assert isinstance(result, LinearizationGap)
    assert result.reason is None
    assert result.change_norm > 1.0
    assert result.gap <= 1e-12 * result.change_norm
    assert 0.0 <= result.gap_rel <= 1e-12


def test_jvp_matches_explicit_jacobian_oracle() -> None:
    # Forward mode (jvp) against reverse mode (explicit Jacobian times δ), both float64: the two
    # differ only by rounding, ≈ depth·width·u ≈ 1e-14 relative at most (measured 4e-16); the gap
    # (gap_rel ≈ 0.3–0.5 here, so no heavy cancellation) inherits it. 1e-10 relative is a wide margin.
    net = _mlp()
    x = _probe((7, 5))
    call = _module_call(net)
    theta_0 = {k: v.clone() for k, v in trainable_params(net).items()}
    for seed in (2, 3):
        theta_t = _perturbed(theta_0, 0.1, seed=seed)
        f0_o, ft_o, lin_o = _oracle(call, theta_0, theta_t, x)
        _, _, tangent = _tangent(theta_t, theta_0)
        f0, lin = _linearize(call, theta_0, tangent, x)
        assert lin.shape == (7, 3)
        assert torch.linalg.vector_norm(lin.reshape(-1) - lin_o) <= 1e-10 * torch.linalg.vector_norm(lin_o)
        assert torch.equal(f0.reshape(-1), f0_o)

        result = linearization_gap(call, theta_0, x, params_t=theta_t)
        gap_o = float(torch.linalg.vector_norm(ft_o - f0_o - lin_o))
        change_o = float(torch.linalg.vector_norm(ft_o - f0_o))
        assert result.reason is None
        assert 0.02 < gap_o / change_o < 1.0  # a real, resolved gap, not rounding
        assert result.change_norm == pytest.approx(change_o, rel=1e-12)
        assert result.gap == pytest.approx(gap_o, rel=1e-10)
        assert result.gap_rel == pytest.approx(gap_o / change_o, rel=1e-10)


def test_gap_is_the_second_order_taylor_term() -> None:
    # Taylor: f(θ_0 + εv) − f_0 − εJ_0v = ½ε² D²f_0[v, v] + O(ε³). D²f_0[v, v] from
    # forward-over-forward mode; the relative O(ε³)/O(ε²) remainder is ε·‖D³f[v,v,v]‖/(3‖D²f[v,v]‖),
    # and the rounding in the gap is ≈ u·‖f‖/gap ≈ 1e-10 at ε = 1e-3. Measured: |ratio − 1| =
    # 1.7e-3 at ε = 1e-2 and 1.4e-4 at ε = 1e-3 (linear in ε, as the remainder predicts).
    net = _mlp(seed=4)
    x = _probe((7, 5))
    call = _module_call(net)
    theta_0 = {k: v.clone() for k, v in trainable_params(net).items()}
    v = {k: d - theta_0[k] for k, d in _perturbed(theta_0, 1.0, seed=5).items()}

    def directional(p: dict[str, Tensor]) -> Tensor:
        return jvp(lambda q: call(q, x), (p,), (v,))[1]

    second = jvp(directional, (theta_0,), (v,))[1]
    half_norm = 0.5 * float(torch.linalg.vector_norm(second))
    errors = []
    for eps in (1e-2, 1e-3):
        theta_t = {k: theta_0[k] + eps * v[k] for k in theta_0}
        result = linearization_gap(call, theta_0, x, params_t=theta_t)
        errors.append(abs(result.gap / (eps**2 * half_norm) - 1.0))
    assert errors[1] < 1e-3
    assert errors[1] < 0.3 * errors[0]  # the remainder shrinks linearly with ε (measured 0.08)


def _ntk_two_layer(width: int, dim: int) -> tuple[dict[str, Tensor], ModelFn]:
    """``f(x) = aᵀ tanh(W x / √d) / √width`` in NTK parametrisation, N(0, 1) weights."""
    g = torch.Generator().manual_seed(0)
    params = {
        "W": torch.randn(width, dim, generator=g, dtype=F64),
        "a": torch.randn(width, generator=g, dtype=F64),
    }

    def f(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return (torch.tanh(x @ p["W"].T / math.sqrt(dim)) @ p["a"] / math.sqrt(p["a"].numel())).unsqueeze(-1)

    return params, f


def _gradient_descent(f: ModelFn, theta_0: dict[str, Tensor], x: Tensor, y: Tensor, lr: float, steps: int):
    p = {k: v.clone().requires_grad_() for k, v in theta_0.items()}
    for _ in range(steps):
        loss = 0.5 * ((f(p, x) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, list(p.values()))
        with torch.no_grad():
            for value, grad in zip(p.values(), grads, strict=True):
                value.sub_(lr * grad)
    return {k: v.detach() for k, v in p.items()}


def test_wide_network_is_lazy_and_the_gap_grows_with_the_step_size() -> None:
    # In NTK parametrisation J = O(1) while ∂²f/∂θ² = O(1/√width), so after GD moves δ the gap is
    # ≈ ½‖D²f[δ, δ]‖ = O(‖δ‖²/√width) against a change O(‖δ‖): gap_rel = O(‖δ‖/√width), small for
    # a wide net and a short small-step run, growing with the step size. Measured (10 steps, 16
    # points, d = 4, float64): width 2048 → 2.5e-4 (η = 0.1), 1.1e-3 (η = 1), 13 (η = 10, past the
    # stability edge ηλ_max > 2: the outputs oscillate and leave the linear regime); width 128 →
    # 1.1e-3 (η = 0.1), 9.1e-3 (η = 1). Bound at η = 0.1: 1e-3 (4× the measured value).
    dim, m = 4, 16
    x = _probe((m, dim))
    y = torch.sin(2 * x[:, :1])
    rel = {}
    for width in (128, 2048):
        theta_0, f = _ntk_two_layer(width, dim)
        for lr in (0.1, 1.0, 10.0):
            if width == 128 and lr == 10.0:
                continue
            result = linearization_gap(f, theta_0, x, params_t=_gradient_descent(f, theta_0, x, y, lr, 10))
            assert result.reason is None
            rel[width, lr] = result.gap_rel
    assert rel[2048, 0.1] < 1e-3
    assert rel[2048, 0.1] < rel[2048, 1.0] < rel[2048, 10.0]
    assert rel[2048, 10.0] > 1.0
    # the 1/√width scaling behind the bound: 16× wider, ≈ 4× smaller (measured 4.5× and 8.4×)
    assert rel[128, 0.1] > 2 * rel[2048, 0.1]
    assert rel[128, 1.0] > 2 * rel[2048, 1.0]


# ---------------------------------------------------------------------------------------------
# The 0/0 case and the noise floor
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "model"),
    [("module", "mlp"), ("functional", "mlp"), ("module", "encoder"), ("functional", "encoder")],
)
def test_unchanged_parameters_give_zero_gap_and_undefined_ratio(form: str, model: str) -> None:
    # f_t is computed under the same kernels as the jvp's primal f_0 (for the float32 encoder the
    # fast path would otherwise compute f_t with other kernels): θ_t = θ_0 gives f_t = f_0 bit for bit.
    if model == "mlp":
        net, x = _mlp(), _probe((7, 5))
    else:
        torch.manual_seed(0)
        net, x = _encoder(), _probe((3, 5, 8), dtype=torch.float32)
    theta_0 = {k: v.clone() for k, v in trainable_params(net).items()}
    if form == "module":
        result = linearization_gap(net, theta_0, x)
    else:
        result = linearization_gap(_module_call(net), theta_0, x, params_t=theta_0)
    assert result.gap == 0.0
    assert result.change_norm == 0.0
    assert math.isnan(result.gap_rel)
    assert result.reason == "no_change"
    assert result.noise_floor > 0.0


def test_noise_floor_formula_and_rounding_level_changes() -> None:
    # float32: f_0 cached from per-sample evaluation (other BLAS blocking than the batched f_t)
    # differs from it by rounding only (measured ≈ 1× √N·eps·max|f|), which the floor
    # (factor 8) must classify as no change; a real move of 1e-3 must stay defined.
    net = _mlp(dtype=torch.float32)
    x = _probe((64, 5), dtype=torch.float32)
    theta_0 = {k: v.clone() for k, v in trainable_params(net).items()}
    with torch.no_grad():
        f0_per_sample = torch.cat([net(x[i : i + 1]) for i in range(64)])
        f0_batched = net(x)
    result = linearization_gap(net, theta_0, x, f0=f0_per_sample)
    expected_floor = (
        8.0 * math.sqrt(64 * 3) * torch.finfo(torch.float32).eps * float(f0_per_sample.abs().max())
    )
    assert result.noise_floor == pytest.approx(expected_floor, rel=1e-12)
    assert result.change_norm == pytest.approx(float((f0_batched - f0_per_sample).double().norm()), abs=1e-12)
    assert result.change_norm <= result.noise_floor
    assert result.reason == "no_change" and math.isnan(result.gap_rel)

    zero_factor = linearization_gap(net, theta_0, x, f0=f0_batched, noise_factor=0.0)
    assert zero_factor.noise_floor == 0.0 and zero_factor.reason == "no_change"  # 0 ≤ 0: still 0/0

    moved = _perturbed(theta_0, 1e-3, seed=3)
    result = linearization_gap(net, theta_0, x, params_t=moved)
    assert result.reason is None
    assert result.change_norm > 100 * result.noise_floor
    assert 0.0 <= result.gap_rel < 0.05


def test_non_finite_outputs_are_reported_not_raised() -> None:
    net = _mlp()
    x = _probe((7, 5))
    theta_0 = {k: v.clone() for k, v in trainable_params(net).items()}
    theta_t = dict(theta_0)
    theta_t["4.bias"] = theta_0["4.bias"] + torch.tensor([math.inf, 0.0, 0.0], dtype=F64)
    result = linearization_gap(net, theta_0, x, params_t=theta_t)
    assert result.reason == "non_finite"
    assert math.isnan(result.gap) and math.isnan(result.gap_rel)


# ---------------------------------------------------------------------------------------------
# Forward-mode fallbacks: attention, LSTM, BatchNorm
# ---------------------------------------------------------------------------------------------


class _MultiHeadSDPA(nn.Module):
    """Self-attention calling ``F.scaled_dot_product_attention`` on 4-D ``(b, heads, L, d)`` tensors."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(attended.transpose(1, 2).reshape(b, length, dim))


class _LastStateLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(x)[0])


def _encoder() -> nn.Module:
    return nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()


def _mha() -> nn.Module:
    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: Tensor) -> Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    return SelfAttention().eval()


# (factory, dtype, operator that has no forward-mode derivative without the fallbacks, or None)
FALLBACK_CASES = {
    "transformer_encoder_layer": (_encoder, F64, "aten::_transformer_encoder_layer_fwd"),
    "multihead_attention": (_mha, F64, "aten::_native_multi_head_attention"),
    "sdpa_4d": (_MultiHeadSDPA, F64, "_scaled_dot_product_flash_attention_for_cpu"),
    "lstm_float64": (_LastStateLSTM, F64, None),  # mkldnn RNN runs for float32 only
    "lstm_float32": (_LastStateLSTM, torch.float32, "mkldnn_rnn_layer"),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_fallbacks_are_needed_and_match_the_oracle(case: str) -> None:
    factory, dtype, failing_op = FALLBACK_CASES[case]
    torch.manual_seed(0)
    model = factory().to(dtype)
    x = _probe((3, 5, 8), dtype=dtype)
    call = _module_call(model)
    theta_0 = {k: v.clone() for k, v in trainable_params(model).items()}
    theta_t = _perturbed(theta_0, 0.2, seed=2)
    _, _, tangent = _tangent(theta_t, theta_0)
    flags = _global_flags()

    def bare_jvp() -> Tensor:
        return jvp(lambda p: call(p, x), (theta_0,), (tangent,))[1]

    if failing_op is None:
        bare_jvp()  # works without the fallbacks
    else:
        with pytest.raises(NotImplementedError, match=f"forward AD with {failing_op} "):
            bare_jvp()
    assert _global_flags() == flags

    # Oracle in float64 on a float64 copy (reverse mode, default kernels).
    model_64 = factory().double()
    model_64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    call_64 = _module_call(model_64.train(model.training))
    f0_o, ft_o, lin_o = _oracle(
        call_64,
        {k: v.double() for k, v in theta_0.items()},
        {k: v.double() for k, v in theta_t.items()},
        x.double(),
    )
    _, lin = _linearize(call, theta_0, tangent, x)
    result = linearization_gap(call, theta_0, x, params_t=theta_t)
    assert _global_flags() == flags
    assert result.reason is None
    if dtype == F64:  # as in the MLP oracle test
        rel_tol = 1e-10
        assert result.gap == pytest.approx(float((ft_o - f0_o - lin_o).norm()), rel=rel_tol)
    else:
        # float32 forward and tangent over 5 recurrent steps (gates: dot products of length 14):
        # a few eps32 per step, amplified by the recurrence; measured 9e-8 (0.7·eps32) for the
        # tangent, 1e-8 for the change. 1e-5 (≈ 80·eps32) is 100× the measurement.
        rel_tol = 1e-5
    error = torch.linalg.vector_norm(lin.double().reshape(-1) - lin_o) / torch.linalg.vector_norm(lin_o)
    assert error <= rel_tol
    assert result.change_norm == pytest.approx(float((ft_o - f0_o).norm()), rel=rel_tol)


def test_three_dimensional_sdpa_needs_no_fallback() -> None:
    # On CPU, 3-D (batch, L, d) inputs are not eligible for the flash kernel: the math path runs
    # and forward mode works without forward_mode_safe (only 4-D multi-head inputs fail).
    q, k, v = (_probe((2, 5, 8), seed=s) for s in (1, 2, 3))
    _, tangent = jvp(lambda a: F.scaled_dot_product_attention(a, k, v), (q,), (torch.ones_like(q),))
    assert torch.isfinite(tangent).all() and tangent.abs().sum() > 0


def test_batchnorm_train_mode() -> None:
    # nn.Module form: buffers are copied per call, so the jvp goes through the batch statistics
    # (exactly the train-mode function) and the running statistics are untouched. The functional
    # form that closes over the module's buffers fails with a countable reason.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)).double().train()
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    x = _probe((10, 4))
    theta_0 = {k: v.clone() for k, v in trainable_params(net).items()}
    theta_t = _perturbed(theta_0, 0.2, seed=2)
    flags = _global_flags()

    result = linearization_gap(net, theta_0, x, params_t=theta_t)
    assert net.training
    assert all(torch.equal(v, buffers[k]) for k, v in net.named_buffers())
    f0_o, ft_o, lin_o = _oracle(_module_call(net), theta_0, theta_t, x)
    assert result.gap == pytest.approx(float((ft_o - f0_o - lin_o).norm()), rel=1e-10)

    with pytest.raises(ForwardModeError) as info:
        linearization_gap(lambda p, x: functional_call(net, p, (x,)), theta_0, x, params_t=theta_t)
    assert info.value.reason == "inplace_on_captured"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert _global_flags() == flags


class _SinNoJvp(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.sin()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return grad * x.cos()


@pytest.mark.parametrize(
    ("body", "reason", "op"),
    [
        (
            lambda h: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(h, h, h)[0],
            "no_forward_ad_formula",
            "_scaled_dot_product_flash_attention_for_cpu",
        ),
        (_SinNoJvp.apply, "custom_function", "autograd.Function"),
    ],
    ids=["flash_kernel_called_directly", "custom_function_without_jvp"],
)
def test_unfixable_layers_raise_a_countable_error(
    body: Callable[[Tensor], Tensor], reason: str, op: str
) -> None:
    lin = nn.Linear(4, 4).double()
    theta_0 = {k: v.clone() for k, v in trainable_params(lin).items()}

    def model(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return body(functional_call(lin, p, (x,)))

    flags = _global_flags()
    with pytest.raises(ForwardModeError) as info:
        linearization_gap(model, theta_0, _probe((1, 1, 3, 4)), params_t=_perturbed(theta_0, 0.1, seed=2))
    assert (info.value.reason, info.value.op) == (reason, op)
    assert _global_flags() == flags


def test_forward_mode_safe_restores_non_default_flags_even_on_error() -> None:
    flags = _global_flags()
    old_mkldnn = torch.backends.mkldnn.set_flags(False, None, None, None)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        changed = _global_flags()
        with forward_mode_safe():
            assert torch.backends.mha.get_fastpath_enabled() is False
            assert torch.backends.mkldnn.enabled is False
            assert torch.backends.cuda.math_sdp_enabled()
            assert not torch.backends.cuda.flash_sdp_enabled()
            assert not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert _global_flags() == changed
    finally:
        torch.backends.mkldnn.set_flags(*old_mkldnn)
        torch.backends.mha.set_fastpath_enabled(True)
    assert _global_flags() == flags
    with pytest.raises(KeyError, match="boom"), forward_mode_safe():
        raise KeyError("boom")
    assert _global_flags() == flags


# ---------------------------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------------------------


def test_argument_errors_name_the_argument_and_the_fix() -> None:
    net = _mlp()
    x = _probe((7, 5))
    theta_0 = {k: v.clone() for k, v in trainable_params(net).items()}
    call = _module_call(net)
    with pytest.raises(ValueError, match="params_t=None"):
        linearization_gap(call, theta_0, x)
    with pytest.raises(ValueError, match=r"missing from params_0: \['4.bias'\]"):
        linearization_gap(net, {k: v for k, v in theta_0.items() if k != "4.bias"}, x)
    bad_shape = dict(theta_0, **{"0.bias": torch.zeros(3, dtype=F64)})
    with pytest.raises(ValueError, match=r"params_0\['0.bias'\] has shape \(3,\)"):
        linearization_gap(net, bad_shape, x)
    with pytest.raises(ValueError, match=r"noise_factor=-1\.0"):
        linearization_gap(net, theta_0, x, noise_factor=-1.0)
    with pytest.raises(ValueError, match=r"ft has shape \(6, 3\)"):
        linearization_gap(net, theta_0, x, ft=torch.zeros(6, 3, dtype=F64))
    with pytest.raises(TypeError, match="not a Tensor"):
        linearization_gap(lambda p, x: (call(p, x),), theta_0, x, params_t=theta_0)
    with pytest.raises(TypeError, match=r"nn\.Module or a callable"):
        linearization_gap(3, theta_0, x)  # type: ignore[arg-type]
    dropout = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5)).train()
    with pytest.raises(ValueError, match=r"dropout in train mode \(1 \(Dropout\)\)"):
        linearization_gap(dropout, trainable_params(dropout), x.float())


def test_load_forward_mode_pays_the_one_time_setup_in_a_fresh_process() -> None:
    """After ``load_forward_mode()`` the jvp decompositions are registered (what the first jvp
    of a process otherwise loads, 0.1-0.2 s, which the NTK budget would charge to a sample)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lightning_lplr.functional import load_forward_mode\n"
        "name = 'torch._decomp.decompositions_for_jvp'\n"
        "before = name in sys.modules\n"
        "load_forward_mode()\n"
        "print(before, name in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
