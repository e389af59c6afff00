"""The linearisation gap: how far a network's outputs have left its first-order Taylor model.

For a model ``f(θ, X)`` on a fixed probe ``X``, parameters ``θ_0`` (initialisation) and
``θ_t`` (now), the linearisation at ``θ_0`` predicts

``f_lin,t = f_0 + J_0 (θ_t − θ_0)``,  ``f_0 = f(θ_0, X)``,  ``J_0 = ∂f/∂θ (θ_0, X)``,

and the gap measures what it misses (Frobenius norms over the whole probe output):

- ``lin/gap = ‖f_t − f_lin,t‖``
- ``lin/gap_rel = ‖f_t − f_lin,t‖ / ‖f_t − f_0‖``

``gap_rel`` near 0: the network has moved like its linearisation (the lazy / NTK regime, in
which the empirical NTK is constant and gradient descent on a PL loss behaves like kernel
regression); near 1 and above: the first-order model no longer describes the change (feature
learning, or simply far from ``θ_0``). For small moves ``δ = θ_t − θ_0`` Taylor's theorem gives
``f_t − f_lin,t = ½ D²f_0[δ, δ] + O(‖δ‖³)``, so ``gap_rel`` grows linearly in the step size.

``J_0 (θ_t − θ_0)`` is one forward-mode product (``torch.func.jvp`` at ``θ_0`` with tangent
``θ_t − θ_0``): about three forward passes of time, no Jacobian stored.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_lplr.functional._problem import ModelFn, full_precision, trainable_params

__all__ = [
    "DEFAULT_NOISE_FACTOR",
    "ForwardModeError",
    "LinearizationGap",
    "forward_mode_safe",
    "linearization_gap",
    "load_forward_mode",
]

DEFAULT_NOISE_FACTOR = 8.0
"""Default ``noise_factor`` of :func:`linearization_gap` (see its *Noise floor* section)."""

REASON_NO_CHANGE = "no_change"
REASON_NON_FINITE = "non_finite"
REASON_NO_FORWARD_AD_FORMULA = "no_forward_ad_formula"
REASON_CUSTOM_FUNCTION = "custom_function"
REASON_INPLACE_ON_CAPTURED = "inplace_on_captured"


class LinearizationGap(NamedTuple):
    """Result of :func:`linearization_gap` (Python floats, norms accumulated in float64)."""

    gap: float
    """``‖f_t − f_lin,t‖``: Frobenius norm over the whole probe output (NaN if ``reason`` is
    ``"non_finite"``)."""
    gap_rel: float
    """``gap / change_norm``; NaN when ``reason`` is set."""
    change_norm: float
    """``‖f_t − f_0‖``: how far the outputs moved."""
    noise_floor: float
    """``noise_factor · √N · eps · max|f_0|``: changes at or below it are rounding noise. It is
    also the resolution of ``gap`` (``gap_rel`` is resolved down to ``noise_floor / change_norm``)."""
    reason: str | None
    """``None`` when ``gap_rel`` is defined, else ``"no_change"`` (``change_norm ≤ noise_floor``:
    0/0) or ``"non_finite"`` (an output or the jvp holds NaN/inf)."""


class ForwardModeError(RuntimeError):
    """The jvp failed even under :func:`forward_mode_safe`; a callback can count ``reason`` and carry on.

    Attributes:
        reason: a short key for counting: ``"no_forward_ad_formula"`` (an operator has no
            forward-mode derivative; ``op`` names it), ``"custom_function"`` (an
            ``autograd.Function`` without a ``jvp`` / ``setup_context``) or
            ``"inplace_on_captured"`` (the model writes in place into a tensor it closes over,
            e.g. BatchNorm in train mode updating its running statistics in a functional model).
        op: the operator named by the error, when there is one.

    The original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, reason: str, op: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.op = op


@contextlib.contextmanager
def forward_mode_safe() -> Iterator[None]:
    """Route the layers that lack forward-mode derivatives on CPU to kernels that have them.

    Inside the block (every flag is restored on exit, also on error):

    - scaled-dot-product attention uses the math backend only
      (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``); the CPU flash kernel, picked for
      4-D ``(batch, heads, length, dim)`` inputs, has no forward-mode derivative;
    - oneDNN (mkldnn) is disabled, so float32 ``nn.LSTM`` does not use ``mkldnn_rnn_layer``
      (no forward-mode derivative); only the ``enabled`` flag is changed, oneDNN's
      determinism and TF32 settings are left alone. Convolutions then use the native
      kernels (measured about 1.6× slower on two CPU cores);
    - the ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` fast path is disabled
      (``torch.backends.mha.set_fastpath_enabled(False)``): forward mode does not make inputs
      require grad, so the fused ``_native_multi_head_attention`` /
      ``_transformer_encoder_layer_fwd`` kernels, which have no forward-mode derivative, would run.

    The math these layers compute is unchanged; only the kernels differ. The math attention
    backend stores the ``L × L`` attention weights of every head (the fused kernels do not), on
    any device.

    Example:
        >>> import torch
        >>> before = torch.backends.mha.get_fastpath_enabled()
        >>> with forward_mode_safe():
        ...     torch.backends.mha.get_fastpath_enabled(), torch.backends.mkldnn.enabled
        (False, False)
        >>> torch.backends.mha.get_fastpath_enabled() == before
        True
    """
    old_fastpath = torch.backends.mha.get_fastpath_enabled()
    old_mkldnn = torch.backends.mkldnn.set_flags(False, None, None, None)
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mkldnn.set_flags(*old_mkldnn)
        torch.backends.mha.set_fastpath_enabled(old_fastpath)


_FORWARD_AD_OP = re.compile(r"forward AD with (\S+) that does not support it")


def _classify(err: BaseException) -> ForwardModeError | None:
    """A :class:`ForwardModeError` for the known forward-mode failures, else ``None``."""
    text = str(err)
    hint = "the linearisation gap needs forward-mode AD through the whole model"
    if isinstance(err, NotImplementedError):
        match = _FORWARD_AD_OP.search(text)
        if match:
            op = match.group(1)
            return ForwardModeError(
                f"{op} has no forward-mode derivative even under forward_mode_safe(); {hint}: replace "
                "the layer by one built from differentiable primitives.",
                reason=REASON_NO_FORWARD_AD_FORMULA,
                op=op,
            )
        if "jvp function for custom autograd.Function" in text:
            return ForwardModeError(
                f"a custom autograd.Function has no jvp; {hint}: define its jvp staticmethod.",
                reason=REASON_CUSTOM_FUNCTION,
                op="autograd.Function",
            )
    if isinstance(err, RuntimeError):
        if "autograd.Function with functorch transforms" in text:
            return ForwardModeError(
                f"a custom autograd.Function lacks setup_context/jvp; {hint}: see "
                "https://pytorch.org/docs/stable/notes/extending.func.html.",
                reason=REASON_CUSTOM_FUNCTION,
                op="autograd.Function",
            )
        if "mutate a captured Tensor" in text:
            return ForwardModeError(
                f"the model writes in place into a tensor it closes over (BatchNorm in train mode "
                f"updating running statistics?); {hint}: pass the nn.Module itself (its buffers are "
                "then copied per call), put the normalisation layers in eval mode, or pass the buffers "
                "through model_fn's params.",
                reason=REASON_INPLACE_ON_CAPTURED,
            )
    return None


def _module_call(module: nn.Module) -> ModelFn:
    """``f(params, x)`` over ``module`` with fresh copies of its buffers (never mutated)."""
    random = [
        f"{name or '<root>'} ({type(m).__name__})"
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]
    if random:
        raise ValueError(
            f"model has dropout in train mode ({', '.join(random)}): f_t, f_0 and the jvp would use "
            "different masks; call model.eval() (or set p=0) for the duration."
        )

    def call(params: dict[str, Tensor], x: Tensor) -> Tensor:
        state = {name: b.clone() for name, b in module.named_buffers()}
        state.update(params)
        return functional_call(module, state, (x,))

    return call


def load_forward_mode() -> None:
    """Load what forward-mode AD loads on its first use in a process, so that it is paid now.

    The first ``torch.func.jvp`` of a process registers torch's jvp decompositions
    (measured 0.1–0.2 s on two CPU cores); every later one skips that. A caller that times
    its jvps (the monitor's NTK budget) calls this inside its one-time setup, so the first
    measured jvp costs what the later ones do. Idempotent and cheap after the first call.

    Example:
        >>> load_forward_mode()
        >>> load_forward_mode()  # the second call does nothing measurable
    """
    x = torch.zeros(())
    jvp(torch.sin, (x,), (x,))


def _check_output(out: Any, name: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(
            f"{name} is a {type(out).__name__}, not a Tensor; wrap the model so that it returns one "
            "tensor, e.g. lambda p, x: functional_call(lstm, p, (x,))[0]."
        )
    if not out.is_floating_point():
        raise TypeError(f"{name} has dtype {out.dtype}; the model outputs must be floating point.")
    return out


def _tangent(
    params_t: Mapping[str, Tensor], params_0: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """``(θ_t, θ_0, θ_t − θ_0)``, detached, in ``θ_t``'s dtype and device."""
    missing = sorted(set(params_t) - set(params_0))
    extra = sorted(set(params_0) - set(params_t))
    if missing or extra:
        raise ValueError(
            f"params_0 and params_t must have the same names; missing from params_0: {missing[:5]}, "
            f"missing from params_t: {extra[:5]}; store θ_0 for exactly the parameters you pass "
            "(e.g. trainable_params(model) at initialisation)."
        )
    theta_t, theta_0, tangent = {}, {}, {}
    for name, value in params_t.items():
        p_t = value.detach()
        p_0 = params_0[name].detach()
        if p_0.shape != p_t.shape:
            raise ValueError(
                f"params_0[{name!r}] has shape {tuple(p_0.shape)} but params_t[{name!r}] has "
                f"{tuple(p_t.shape)}; θ_0 must come from the same architecture."
            )
        if not p_t.is_floating_point():
            raise ValueError(
                f"params_t[{name!r}] has dtype {p_t.dtype}; pass floating-point parameters only."
            )
        p_0 = p_0.to(device=p_t.device, dtype=p_t.dtype)
        theta_t[name], theta_0[name], tangent[name] = p_t, p_0, p_t - p_0
    return theta_t, theta_0, tangent


def _linearize(
    call: ModelFn, theta_0: dict[str, Tensor], tangent: dict[str, Tensor], x: Tensor
) -> tuple[Tensor, Tensor]:
    """``(f(θ_0, x), J_0 · tangent)`` from one jvp under :func:`forward_mode_safe`."""
    try:
        with forward_mode_safe():
            f0, lin = jvp(lambda p: call(p, x), (theta_0,), (tangent,))
    except (NotImplementedError, RuntimeError) as err:
        known = _classify(err)
        if known is None:
            raise
        raise known from err
    return _check_output(f0, "model output"), lin


def linearization_gap(
    model: nn.Module | ModelFn,
    params_0: Mapping[str, Tensor],
    x: Tensor,
    *,
    params_t: Mapping[str, Tensor] | None = None,
    f0: Tensor | None = None,
    ft: Tensor | None = None,
    noise_factor: float = DEFAULT_NOISE_FACTOR,
) -> LinearizationGap:
    r"""Distance of the outputs at ``θ_t`` from the linearisation of the model at ``θ_0``.

    ``f_lin,t = f_0 + J_0 (θ_t − θ_0)`` comes from one ``torch.func.jvp`` at ``θ_0`` with
    tangent ``θ_t − θ_0`` (no Jacobian stored), run under :func:`forward_mode_safe` with TF32
    off. The jvp runs in ``params_t``'s dtype and device (``params_0`` is cast to them);
    the differences and norms are accumulated in float64. ``f_t`` (when not given) is computed
    under the same flags as the jvp, so ``θ_t = θ_0`` gives ``f_t = f_0`` bit for bit.

    **Noise floor.** ``gap_rel`` is 0/0 while ``‖f_t − f_0‖`` is rounding noise. Each output
    element is stored rounded to the dtype, ``|fl(f_i) − f_i| ≤ u·|f_i| ≤ u·max|f|`` with the
    unit roundoff ``u = eps/2``, so two evaluations of the same outputs differ per element by up
    to ``eps·max|f|`` from the final rounding alone, and over the ``N`` output elements by up to
    ``√N · eps · max|f_0|`` in Frobenius norm. The forward pass adds its own rounding (different
    kernels or batch blocking for ``f_t`` and a cached ``f_0``): float32 models measured
    between 0.3 and 1.8 times this bound (MLPs of depth 3–16 and width up to 2048, a 4-layer
    Transformer encoder, a small CNN; batched against per-sample and against float64 evaluation).
    Hence ``noise_floor = noise_factor · √N · eps · max|f_0|`` with a default factor of 8
    (4× margin over the worst measured); relative to ``‖f_0‖`` it is ``noise_factor · eps ·
    max|f_0| / rms(f_0)``. ``eps`` is the machine epsilon of the least precise of the parameters'
    and outputs' dtypes. At ``change_norm ≤ noise_floor`` ``gap_rel`` is NaN with reason
    ``"no_change"``. Above it, ``gap`` itself carries noise of about ``noise_floor``.

    Args:
        model: an ``nn.Module`` (called as ``functional_call(model, params, (x,))`` with fresh
            copies of its buffers, so running statistics are never updated; its mode is used as
            it is and never changed; dropout in train mode raises) or a functional model
            ``model(params, x) -> Tensor`` of shape ``(m, *out)``, as
            ``torch.func.functional_call(module, params, (x,))`` gives.
        params_0: ``θ_0`` as ``name -> tensor``, e.g. ``trainable_params(model)`` cloned at
            initialisation. Names must match ``params_t``.
        x: the probe inputs ``X``, shape ``(m, *in)``.
        params_t: ``θ_t``; defaults to ``trainable_params(model)`` for an ``nn.Module`` and is
            required for a functional model. Keyword-only, so ``θ_t`` and ``θ_0`` cannot be
            swapped by position.
        f0: cached ``f(θ_0, X)``. Forward mode computes ``f(θ_0, X)`` alongside the tangent
            anyway, so this saves no work; pass it only to pin the reference outputs.
        ft: cached ``f(θ_t, X)`` (computed in eval mode, without TF32); saves one forward pass.
        noise_factor: multiple of ``√N · eps · max|f_0|`` below which ``‖f_t − f_0‖`` counts as
            rounding noise; ``≥ 0``.

    Returns:
        :class:`LinearizationGap` ``(gap, gap_rel, change_norm, noise_floor, reason)`` of Python
        floats; ``gap_rel`` is NaN exactly when ``reason`` is not ``None``.

    Raises:
        ForwardModeError: the jvp fails even under :func:`forward_mode_safe`; its ``reason``
            (``"no_forward_ad_formula"``, ``"custom_function"``, ``"inplace_on_captured"``) is a
            key to count. Other errors of the model propagate unchanged.
        ValueError: ``params_t`` missing for a functional model, names or shapes of ``params_0`` and
            ``params_t`` differ, ``f0``/``ft`` shapes differ from the model's output, a negative
            or non-finite ``noise_factor``, or dropout in train mode in an ``nn.Module``.
        TypeError: ``model`` is neither an ``nn.Module`` nor callable, or it returns something
            other than one floating-point tensor.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()
        >>> theta0 = {k: v.detach().clone() for k, v in net.named_parameters()}
        >>> x = torch.randn(8, 3, dtype=torch.float64)
        >>> linearization_gap(net, theta0, x).reason  # θ_t = θ_0: 0/0
        'no_change'
        >>> with torch.no_grad():
        ...     for p in net.parameters():
        ...         _ = p.add_(0.01 * torch.randn_like(p))
        >>> result = linearization_gap(net, theta0, x)
        >>> result.gap_rel < 0.05, result.reason
        (True, None)
    """
    if not (math.isfinite(noise_factor) and noise_factor >= 0):
        raise ValueError(f"noise_factor={noise_factor!r} must be finite and >= 0; the default is 8.0.")
    if isinstance(model, nn.Module):
        call = _module_call(model)
        if params_t is None:
            params_t = trainable_params(model)
    elif callable(model):
        call = model
        if params_t is None:
            raise ValueError(
                "params_t=None but model is a functional model f(params, x); pass params_t=θ_t "
                "(name -> tensor)."
            )
    else:
        raise TypeError(f"model is a {type(model).__name__}; pass an nn.Module or a callable f(params, x).")

    theta_t, theta_0, tangent = _tangent(params_t, params_0)
    with torch.no_grad(), full_precision():
        f0_primal, lin = _linearize(call, theta_0, tangent, x)
        if ft is None:
            with forward_mode_safe():
                ft = _check_output(call(theta_t, x), "model output")
    base = f0_primal if f0 is None else _check_output(f0, "f0")
    ft = _check_output(ft, "ft")
    for name, given in (("f0", base), ("ft", ft)):
        if tuple(given.shape) != tuple(f0_primal.shape):
            raise ValueError(
                f"{name} has shape {tuple(given.shape)} but the model's output on x has "
                f"{tuple(f0_primal.shape)}; pass the outputs on the same probe."
            )

    dtypes = {ft.dtype, base.dtype, lin.dtype, *(p.dtype for p in theta_t.values())}
    eps = max(torch.finfo(d).eps for d in dtypes)
    f0_64 = base.detach().to(dtype=torch.float64).reshape(-1)
    change = ft.detach().to(device=f0_64.device, dtype=torch.float64).reshape(-1) - f0_64
    residual = change - lin.detach().to(device=f0_64.device, dtype=torch.float64).reshape(-1)
    gap = float(torch.linalg.vector_norm(residual))
    change_norm = float(torch.linalg.vector_norm(change))
    peak = float(f0_64.abs().max()) if f0_64.numel() else 0.0
    noise_floor = noise_factor * math.sqrt(f0_64.numel()) * eps * peak

    finite = all(math.isfinite(v) for v in (gap, change_norm, noise_floor))
    if not finite:
        return LinearizationGap(math.nan, math.nan, change_norm, noise_floor, REASON_NON_FINITE)
    if change_norm <= noise_floor:
        return LinearizationGap(gap, math.nan, change_norm, noise_floor, REASON_NO_CHANGE)
    return LinearizationGap(gap, gap / change_norm, change_norm, noise_floor, None)
