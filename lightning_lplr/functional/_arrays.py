"""Numbers and series in any form (floats, numpy, tensors) as float64 numpy arrays. Never imports torch.

A value is a tensor only if torch is already imported (a tensor cannot exist otherwise), so the
report, which uses these helpers, stays free of torch.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from torch import Tensor

__all__ = ["as_float", "as_float_array", "as_float_ndarray", "as_tensor", "sorted_quantile"]


def as_tensor(value: Any) -> Tensor | None:
    """``value`` when it is a ``torch.Tensor``, else ``None``; never imports torch.

    A tensor can only exist once torch is imported, so torch absent from ``sys.modules``
    means ``value`` is not one.
    """
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None)
    if tensor_type is not None and isinstance(value, tensor_type):
        return value
    return None


def as_float_ndarray(values: Any, argument: str, ndim: int = 1, hint: str = "") -> np.ndarray:
    """``values`` as an ``ndim``-D float64 numpy array (tensors on any device, sequences of 0-d tensors).

    ``hint`` is appended to the error raised for a wrong number of dimensions.
    """
    tensor = as_tensor(values)
    if tensor is not None:
        arr = tensor.detach().to("cpu", sys.modules["torch"].float64).numpy()
    else:
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            try:
                arr = np.asarray([float(v) for v in values], dtype=np.float64)
            except (TypeError, ValueError):
                raise TypeError(
                    f"{argument} must be a {ndim}-D sequence of numbers, a numpy array or a tensor; "
                    f"got {type(values).__name__}."
                ) from None
    if arr.ndim != ndim:
        raise ValueError(f"{argument} must be {ndim}-D; got shape {arr.shape}.{hint}")
    return arr


def as_float_array(values: Any, argument: str) -> np.ndarray:
    """``values`` as a 1-D float64 numpy array (tensors on any device, sequences of 0-d tensors)."""
    return as_float_ndarray(values, argument, ndim=1)


def as_float(value: Any, argument: str) -> float:
    """A python float from a number, a numpy scalar or a one-element tensor."""
    tensor = as_tensor(value)
    if tensor is not None:
        if tensor.numel() != 1:
            raise ValueError(f"{argument} must be a scalar; got a tensor of shape {tuple(tensor.shape)}.")
        return float(tensor.detach().item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be a number; got {type(value).__name__}.") from None


def sorted_quantile(values: list[float], q: float) -> float:
    """``np.quantile(values, q)`` (method ``"linear"``) of an already sorted list, in O(1).

    Mirrors numpy bit for bit: virtual index ``(n − 1)·q``, its floor and fraction
    ``γ``, and numpy's ``_lerp``: ``a + γ(b − a)``, or ``b − (1 − γ)(b − a)`` for ``γ ≥ 0.5``.
    ``nan`` for an empty list.

    Example:
        >>> sorted_quantile([1.0, 2.0, 4.0], 0.75)
        3.0
    """
    n = len(values)
    if n == 0:
        return math.nan
    index = (n - 1) * q
    if index >= n - 1:
        return values[-1]
    below = math.floor(index)
    gamma = index - below
    a, b = values[below], values[below + 1]
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
