"""Lazy package attributes (PEP 562): a name is imported from its module on first use.

Example:
    >>> namespace = {}
    >>> getter = lazy_getattr("os", {"join": "os.path", "path": ""}, namespace)
    >>> getter("join")("a", "b")
    'a/b'
    >>> "join" in namespace  # cached: later lookups skip the getter
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, names: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``name`` from ``names[name]`` on first use.

    Args:
        package: the package's ``__name__`` (for messages and relative module names).
        names: public name → module that defines it (absolute, or relative to ``package`` when it
            has no dot), or ``""`` for a submodule of ``package`` named ``name``.
        namespace: the package's ``globals()``: the value is cached there.

    Returns:
        The ``__getattr__`` function.
    """

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if module == "":
            value = importlib.import_module(f"{package}.{name}")
        else:
            full = module if "." in module else f"{package}.{module}"
            value = getattr(importlib.import_module(full), name)
        namespace[name] = value
        return value

    return getattr_
