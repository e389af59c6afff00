"""The logged key contract (DESIGN.md §4). Renaming a key is a breaking change.

Every key is logged as ``prefix + key`` with the default prefix ``"lplr/"``.
``rate/regime`` is a string in the design; loggers take numbers, so it is logged as
:data:`REGIME_CODES` (``1`` linear, ``-1`` sublinear, ``0`` undetermined).

Example:
    >>> full_key("ntk/lambda_min")
    'lplr/ntk/lambda_min'
    >>> full_key("pl/gap", prefix="probe/")
    'probe/pl/gap'
"""

from __future__ import annotations

__all__ = [
    "ALL_KEYS",
    "COST_KEYS",
    "DEFAULT_PREFIX",
    "NTK_KEYS",
    "PARAM_KEYS",
    "PL_KEYS",
    "RATE_KEYS",
    "REGIME_CODES",
    "REGION_KEYS",
    "SKIP_KEYS",
    "full_key",
]

DEFAULT_PREFIX = "lplr/"

NTK_KEYS: tuple[str, ...] = (
    "ntk/lambda_min",
    "ntk/lambda_max",
    "ntk/condition_number",
    "ntk/trace",
    "ntk/effective_rank",
    "ntk/drift_op",
    "ntk/drift_fro",
    "ntk/lipschitz",
    "ntk/eta_beta",
)
PARAM_KEYS: tuple[str, ...] = ("param/drift",)
PL_KEYS: tuple[str, ...] = (
    "pl/ratio_step",
    "pl/ratio_probe",
    "pl/envelope_min",
    "pl/envelope_q05",
    "pl/mu_ntk",
    "pl/gap",
)
RATE_KEYS: tuple[str, ...] = (
    "rate/slope",
    "rate/contraction",
    "rate/half_life",
    "rate/r2",
    "rate/contraction_pred",
    "rate/regime",
)
REGION_KEYS: tuple[str, ...] = ("region/mu_cert", "region/inside")
COST_KEYS: tuple[str, ...] = ("cost/ntk_seconds",)
SKIP_KEYS: tuple[str, ...] = (
    "skipped/nonfinite_loss",
    "skipped/nonpositive_gap",
    "skipped/ntk_error",
)
"""Counters of samples a monitor skipped, by cause (an addition to DESIGN.md §4)."""

ALL_KEYS: tuple[str, ...] = NTK_KEYS + PARAM_KEYS + PL_KEYS + RATE_KEYS + REGION_KEYS + COST_KEYS

REGIME_CODES: dict[str, float] = {"linear": 1.0, "undetermined": 0.0, "sublinear": -1.0}


def full_key(key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The logged name of a contract key under ``prefix``."""
    return f"{prefix}{key}"
