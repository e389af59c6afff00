"""Checkpoint helpers: tensors moved between devices, normalisation statistics as plain data.

Lightning loads checkpoints with ``weights_only=True``: only tensors and plain Python containers
may be in a callback's state, so :class:`~lightning_lplr.functional.NormStatistics` is stored as
a dict and rebuilt on load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_lplr.functional.normalization import NormStatistics

__all__ = ["moved", "plain", "unplain"]


def moved(value: Any, device: torch.device | str) -> Any:
    """``value`` (tensors, dicts, tuples, normalisation statistics) with every tensor on ``device``."""
    if isinstance(value, (Tensor, NormStatistics)):
        return value.to(device)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(moved(v, device) for v in value)
    return value


def plain(state0: dict[str, Any]) -> dict[str, Any]:
    """``state0`` with its statistics as plain lists (checkpoints load with ``weights_only=True``)."""
    stats = state0.get("statistics")
    if not isinstance(stats, NormStatistics):
        return state0
    plain = {"means": list(stats.means), "variances": list(stats.variances), "num_samples": stats.num_samples}
    return {**state0, "statistics": plain}


def unplain(state0: dict[str, Any]) -> dict[str, Any]:
    stats = state0.get("statistics")
    if not isinstance(stats, dict):
        return state0
    restored = NormStatistics(tuple(stats["means"]), tuple(stats["variances"]), int(stats["num_samples"]))
    return {**state0, "statistics": restored}
