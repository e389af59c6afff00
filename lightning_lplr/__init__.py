"""lightning_lplr: see whether training sits in a locally Polyak-Lojasiewicz region.

Add one callback to a Lightning ``Trainer`` and the empirical NTK spectrum, NTK and
parameter drift, empirical PL ratio with its lower envelope, and the fitted linear
rate of the loss decay are logged to every logger of the run. The math lives in
:mod:`lightning_lplr.functional` and can be called on plain tensors.

Every name below is imported on first use (PEP 562), so ``import lightning_lplr`` (and the
``lightning-lplr report`` command) does not pay for Lightning until a callback is touched.

Example:
    >>> from lightning_lplr import LPLRMonitor
    >>> LPLRMonitor().kind
    'full'
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from lightning_lplr._lazy import lazy_getattr

try:
    __version__: str = version("lightning-lplr")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

_LAZY: dict[str, str] = {
    "PRESETS": "lightning_lplr.callbacks",
    "LPLRMonitor": "lightning_lplr.callbacks",
    "LPLRWarning": "lightning_lplr.callbacks",
    "LinearRateMonitor": "lightning_lplr.callbacks",
    "NTKMonitor": "lightning_lplr.callbacks",
    "PLMonitor": "lightning_lplr.callbacks",
}
_SUBMODULES = ("callbacks", "functional", "metrics", "report", "reporting", "schedules")

__all__: list[str] = [
    "PRESETS",
    "LPLRMonitor",
    "LPLRWarning",
    "LinearRateMonitor",
    "NTKMonitor",
    "PLMonitor",
    "__version__",
    "functional",
    "schedules",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_lplr import functional, schedules
    from lightning_lplr.callbacks import (
        PRESETS,
        LinearRateMonitor,
        LPLRMonitor,
        LPLRWarning,
        NTKMonitor,
        PLMonitor,
    )


__getattr__ = lazy_getattr(__name__, {**_LAZY, **dict.fromkeys(_SUBMODULES, "")}, globals())


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBMODULES})
