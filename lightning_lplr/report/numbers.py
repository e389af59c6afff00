"""Plain Python (no numpy, torch or Lightning): how the report reads one number from a run.

Kept apart from :mod:`.reader` (numpy) so that :mod:`.regimes`, which the monitors import while
training, stays plain Python.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite_number"]


def finite_number(value: Any) -> float | None:
    """A finite float, or ``None`` (JSON ``null``) for NaN, ±inf, ``None``, a bool or a non-number.

    Example:
        >>> finite_number("0.5"), finite_number(float("nan")), finite_number(True)
        (0.5, None, None)
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
