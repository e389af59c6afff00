"""Argument checks shared by the functional core and the callbacks' configuration.

Every check raises a ``ValueError`` that names the argument, shows the bad value and says
what to pass instead, so a bad configuration fails in ``__init__`` rather than mid-run.
Plain Python: no torch, no Lightning.

Example:
    >>> check_int("probe_size", 32, minimum=1)
    32
    >>> check_float("loss_star_margin", float("nan"), minimum=0.0)
    Traceback (most recent call last):
    ...
    ValueError: loss_star_margin=nan must be a finite number >= 0.0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = [
    "check_callable",
    "check_choice",
    "check_float",
    "check_int",
    "is_int",
    "is_real",
]

T = TypeVar("T")


def is_real(value: Any) -> bool:
    """A real number that is not a ``bool`` (numpy scalars included).

    Example:
        >>> is_real(1.5), is_real(True), is_real("1")
        (True, False, False)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """An integer that is not a ``bool`` (numpy integers included).

    Example:
        >>> is_int(3), is_int(3.0), is_int(False)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _bounds(minimum: float | None, maximum: float | None, strict: bool) -> str:
    low = ">" if strict else ">="
    high = "<" if strict else "<="
    if minimum is not None and maximum is not None:
        return f" in {'(' if strict else '['}{minimum}, {maximum}{')' if strict else ']'}"
    if minimum is not None:
        return f" {low} {minimum}"
    if maximum is not None:
        return f" {high} {maximum}"
    return ""


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
    hint: str = "",
) -> Any:
    """``value`` if it is an int within ``[minimum, maximum]`` (or ``None`` when allowed).

    Raises:
        ValueError: naming ``name``, the value and the allowed range (plus ``hint``).
    """
    if value is None and allow_none:
        return None
    ok = is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        none = " or None" if allow_none else ""
        tail = f" {hint}" if hint else ""
        raise ValueError(f"{name}={value!r} must be an int{_bounds(minimum, maximum, False)}{none}.{tail}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    allow_none: bool = False,
    hint: str = "",
) -> Any:
    """``value`` as a float if it is a finite real within the bounds (or ``None`` when allowed).

    ``strict`` excludes the bounds themselves.

    Raises:
        ValueError: naming ``name``, the value and the allowed range (plus ``hint``).
    """
    if value is None and allow_none:
        return None
    ok = is_real(value) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) > minimum if strict else float(value) >= minimum
    if ok and maximum is not None:
        ok = float(value) < maximum if strict else float(value) <= maximum
    if not ok:
        none = " or None" if allow_none else ""
        raise ValueError(
            f"{name}={value!r} must be a finite number{_bounds(minimum, maximum, strict)}{none}."
            f"{' ' + hint if hint else ''}"
        )
    return float(value)


def check_choice(name: str, value: T, choices: Iterable[Any], *, hint: str = "") -> T:
    """``value`` if it is one of ``choices``.

    Raises:
        ValueError: naming ``name``, the value and every allowed choice (plus ``hint``).

    Example:
        >>> check_choice("kind", "full", ("full", "pseudo"))
        'full'
    """
    allowed = tuple(choices)
    if isinstance(value, bool) or value not in allowed:
        listed = ", ".join(repr(c) for c in allowed)
        raise ValueError(f"{name}={value!r} is not one of {listed}.{' ' + hint if hint else ''}")
    return value


def check_callable(name: str, value: Any, *, allow_none: bool = True, signature: str = "") -> Any:
    """``value`` if it is callable (or ``None`` when allowed).

    Raises:
        ValueError: naming ``name``, the value and the expected ``signature``.
    """
    if value is None and allow_none:
        return None
    if not callable(value):
        raise ValueError(f"{name}={value!r} must be a callable{' ' + signature if signature else ''}.")
    return value
