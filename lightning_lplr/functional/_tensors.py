"""Kernels in any form (tensors, numpy arrays, nested sequences) as checked float64 tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_float64_tensor", "square_kernel"]


def as_float64_tensor(kernel: Any, argument: str) -> Tensor:
    """``kernel`` as a detached float64 tensor (on its own device when it is a tensor)."""
    if isinstance(kernel, Tensor):
        if kernel.is_complex():
            raise TypeError(f"{argument} is a complex tensor; pass a real kernel.")
        return kernel.detach().to(torch.float64)
    try:
        return torch.as_tensor(np.asarray(kernel, dtype=np.float64))
    except (TypeError, ValueError):
        raise TypeError(
            f"{argument} must be a tensor, a numpy array or nested sequences of floats; "
            f"got {type(kernel).__name__}."
        ) from None


def square_kernel(kernel: Any, argument: str = "kernel") -> Tensor:
    """Validate a square ``(n, n)`` kernel and return it as a float64 tensor."""
    k = as_float64_tensor(kernel, argument)
    if k.ndim == 3:
        raise ValueError(
            f"{argument} has shape {tuple(k.shape)}: a 3-D (m, m, O) kernel of kind 'diagonal' has one "
            f"kernel per output and no single spectrum. Pass one output slice {argument}[..., a], or a "
            "'trace' / 'pseudo' (m, m) or 'full' (m·O, m·O) kernel."
        )
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{argument} must be a square (n, n) matrix; got shape {tuple(k.shape)}.")
    if k.shape[0] == 0:
        raise ValueError(f"{argument} has shape {tuple(k.shape)}; it needs at least one row and column.")
    return k
