"""The probe objective: its value, its gradient w.r.t. the model outputs and w.r.t. the parameters.

For a probe loss ``L(f(θ, X), Y)`` the output gradient ``g = ∂L/∂f`` (shape of the outputs)
is what the NTK identities use (``‖∇_θ L‖² = gᵀ K g``); the parameter gradient norm is the
same quantity computed directly, for kernels that are not the full one.

Example:
    >>> out = torch.tensor([[1.0, 2.0]])
    >>> value, g = output_gradient(lambda f, y: 0.5 * ((f - y) ** 2).sum(), out, torch.zeros(1, 2))
    >>> value, g.tolist()
    (2.5, [[1.0, 2.0]])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["LossFn", "output_gradient", "parameter_gradient_norm_sq"]

LossFn = Callable[[Tensor, Any], Tensor]
"""``loss_fn(outputs, targets) -> scalar``: the objective on a batch of model outputs."""


def output_gradient(loss_fn: LossFn, outputs: Tensor, targets: Any) -> tuple[float, Tensor]:
    """The loss value and its gradient with respect to the outputs.

    Args:
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        outputs: model outputs ``(m, *out)``; detached here, never modified.
        targets: whatever ``loss_fn`` takes as targets.

    Returns:
        ``(loss, g)``: the loss as a float and ``g = ∂L/∂f`` with the shape and dtype of ``outputs``.

    Raises:
        ValueError: ``loss_fn`` does not return a one-element tensor (the message says what it returned).
    """
    with torch.enable_grad():
        f = outputs.detach().requires_grad_(True)
        loss = loss_fn(f, targets)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn returned {shape}; it must return the scalar objective, e.g. "
                "loss_fn=torch.nn.functional.cross_entropy (reduction 'mean' or 'sum')."
            )
        (g,) = torch.autograd.grad(loss.reshape(()), f)
    return float(loss.detach()), g


def parameter_gradient_norm_sq(
    model_fn: Callable[[dict[str, Tensor], Any], Tensor],
    params: Mapping[str, Tensor],
    inputs: Any,
    targets: Any,
    loss_fn: LossFn,
) -> float:
    """``‖∇_θ L(f(θ, X), Y)‖²`` by one reverse pass through ``torch.func.grad``, summed in float64.

    Args:
        model_fn: ``model_fn(params, inputs) -> outputs``.
        params: the parameters to differentiate (detached; never modified).
        inputs: the probe inputs as ``model_fn`` takes them.
        targets: the probe targets.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.

    Returns:
        The squared gradient norm as a float.

    Example:
        >>> w = {"w": torch.tensor([2.0])}
        >>> parameter_gradient_norm_sq(lambda p, x: p["w"] * x, w, torch.ones(1), None, lambda f, y: f.sum())
        1.0
    """
    grads = torch.func.grad(lambda p: loss_fn(model_fn(p, inputs), targets).reshape(()))(dict(params))
    total = torch.zeros((), dtype=torch.float64)
    for value in grads.values():
        total = total + value.detach().to(torch.float64).square().sum().cpu()
    return float(total)
