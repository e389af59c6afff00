"""lightning_lplr: see whether training sits in a locally Polyak-Lojasiewicz region.

Add one callback to a Lightning ``Trainer`` and the empirical NTK spectrum, NTK and
parameter drift, empirical PL ratio with its lower envelope, and the fitted linear
rate of the loss decay are logged to every logger of the run. The math lives in
:mod:`lightning_lplr.functional` and can be called on plain tensors.

Example:
    >>> from lightning_lplr import LPLRMonitor
    >>> LPLRMonitor().kind
    'full'
"""

from importlib.metadata import PackageNotFoundError, version

from lightning_lplr import functional, schedules
from lightning_lplr.callbacks import (
    PRESETS,
    LinearRateMonitor,
    LPLRMonitor,
    LPLRWarning,
    NTKMonitor,
    PLMonitor,
)

try:
    __version__: str = version("lightning-lplr")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

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
