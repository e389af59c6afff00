"""lightning_lplr: see whether training sits in a locally Polyak-Lojasiewicz region.

Add one callback to a Lightning ``Trainer`` and the empirical NTK spectrum, NTK and
parameter drift, empirical PL ratio with its lower envelope, and the fitted linear
rate of the loss decay are logged to every logger of the run. The math lives in
:mod:`lightning_lplr.functional` and can be called on plain tensors.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("lightning-lplr")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__: list[str] = ["__version__"]
