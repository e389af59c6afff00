"""The installed version of the package, read from its metadata.

Read here rather than from ``lightning_lplr.__version__`` so the command line works
even where an editable install exposes ``lightning_lplr`` as a namespace package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["tool_version"]


def tool_version() -> str:
    """The version of the ``lightning-lplr`` distribution, ``"0.0.0+unknown"`` when not installed."""
    try:
        return version("lightning-lplr")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0.0.0+unknown"
