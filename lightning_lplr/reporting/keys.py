"""The logged key contract. Renaming a key, or changing what it means, is a breaking change.

Every key is logged as ``prefix + key`` with the default prefix ``"lplr/"``.
``rate/regime`` is a string in the math; loggers take numbers, so it is logged as
:data:`REGIME_CODES` (``1`` linear, ``-1`` sublinear, ``0`` undetermined).

The semantics of the keys carry a version, :data:`KEY_SEMANTICS_VERSION`, written once per
run in the schema marker (see :mod:`lightning_lplr.reporting.marker`) so that a reader
knows which meaning a run's keys have. Version history:

* ``1``: ``ntk/*`` held the spectrum of whatever kernel kind was sampled; ``ntk/eta_beta`` was
  ``η·λ_max(K)/m`` whatever the loss; no ``curv/*`` or ``lin/*`` keys.
* ``2``: ``ntk/*`` is the full kernel only, ``ntk_trace/*``, ``ntk_pseudo/*`` and
  ``ntk_loss_gram/*`` hold the other kinds; ``curv/beta`` is the Gauss–Newton sharpness of the
  loss actually trained and ``ntk/eta_beta`` is ``η·curv/beta``; ``lin/*`` added;
  ``skipped/contraction_pred_<reason>`` counts why ``rate/contraction_pred`` is absent.

Example:
    >>> full_key("ntk/lambda_min")
    'lplr/ntk/lambda_min'
    >>> full_key("pl/gap", prefix="probe/")
    'probe/pl/gap'
    >>> kind_key("ntk/lambda_min", "pseudo")
    'ntk_pseudo/lambda_min'
"""

from __future__ import annotations

__all__ = [
    "ALL_KEYS",
    "CONTRACTION_PRED_REASONS",
    "COST_KEYS",
    "CURV_KEYS",
    "DEFAULT_PREFIX",
    "HISTOGRAM_KEYS",
    "KEY_SEMANTICS_VERSION",
    "KIND_PREFIXES",
    "KIND_SPECTRUM_KEYS",
    "LIN_KEYS",
    "LIN_REASONS",
    "NTK_KEYS",
    "PAIRS_DIR_NAME",
    "PARAM_KEYS",
    "PL_KEYS",
    "RATE_KEYS",
    "REGIME_CODES",
    "REGION_KEYS",
    "SKIP_KEYS",
    "SPECTRUM_KEYS",
    "full_key",
    "kind_key",
]

DEFAULT_PREFIX = "lplr/"
PAIRS_DIR_NAME = "lplr_pairs"
"""The directory below a TensorBoard run's ``log_dir`` holding one sub-run per paired series
(written by the monitors, skipped by the report: never a run of its own)."""
KEY_SEMANTICS_VERSION = 2

SPECTRUM_KEYS: tuple[str, ...] = (
    "ntk/lambda_min",
    "ntk/lambda_max",
    "ntk/condition_number",
    "ntk/trace",
    "ntk/effective_rank",
    "ntk/drift_op",
    "ntk/drift_fro",
)
"""Spectrum and drift of the sampled kernel (``Θ = K/m``); under ``ntk/`` for the full kernel."""
NTK_KEYS: tuple[str, ...] = (*SPECTRUM_KEYS, "ntk/lipschitz", "ntk/eta_beta")
KIND_PREFIXES: dict[str, str] = {
    "full": "ntk/",
    "trace": "ntk_trace/",
    "pseudo": "ntk_pseudo/",
    "loss_gram": "ntk_loss_gram/",
}
"""Where each kernel kind's spectrum keys live: only the full kernel's are ``ntk/*``."""
KIND_SPECTRUM_KEYS: tuple[str, ...] = tuple(
    prefix + key.split("/", 1)[1]
    for kind, prefix in KIND_PREFIXES.items()
    if kind != "full"
    for key in SPECTRUM_KEYS
)
HISTOGRAM_KEYS: tuple[str, ...] = tuple(prefix + "eigenvalues" for prefix in KIND_PREFIXES.values())
"""TensorBoard histograms of the eigenvalues of ``Θ`` at each NTK sample, one tag per kernel kind."""
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
CURV_KEYS: tuple[str, ...] = ("curv/beta",)
LIN_KEYS: tuple[str, ...] = ("lin/gap", "lin/gap_rel", "lin/loss_pred", "lin/loss_probe", "lin/loss_ratio")
COST_KEYS: tuple[str, ...] = ("cost/ntk_seconds",)

CONTRACTION_PRED_REASONS: tuple[str, ...] = (
    "not_plain_sgd",
    "weight_decay",
    "several_lrs",
    "several_optimizers",
    "clipping",
    "not_full_batch",
    "probe_not_training_set",
    "no_loss_fn",
    "loss_mismatch",
    "no_full_kernel",
    "no_mu",
    "unstable_step",
    "mu_above_beta",
)
"""Why ``rate/contraction_pred`` is absent; each counted as ``skipped/contraction_pred_<reason>``."""

LIN_REASONS: tuple[str, ...] = ("no_forward_ad_formula", "custom_function", "inplace_on_captured")
"""Why ``lin/gap`` is absent (forward-mode AD failed even with the fallbacks), ``skipped/lin_<reason>``."""

SKIP_KEYS: tuple[str, ...] = (
    "skipped/nonfinite_loss",
    "skipped/nonpositive_gap",
    "skipped/ntk_error",
    "skipped/several_optimizers",
    "skipped/loss_star_unidentified",
    *(f"skipped/lin_{reason}" for reason in LIN_REASONS),
    *(f"skipped/contraction_pred_{reason}" for reason in CONTRACTION_PRED_REASONS),
)
"""Cumulative counters of what a monitor skipped, by cause."""

ALL_KEYS: tuple[str, ...] = (
    NTK_KEYS
    + KIND_SPECTRUM_KEYS
    + PARAM_KEYS
    + PL_KEYS
    + RATE_KEYS
    + REGION_KEYS
    + CURV_KEYS
    + LIN_KEYS
    + COST_KEYS
)

REGIME_CODES: dict[str, float] = {"linear": 1.0, "undetermined": 0.0, "sublinear": -1.0}


def full_key(key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The logged name of a contract key under ``prefix``."""
    return f"{prefix}{key}"


def kind_key(key: str, kind: str) -> str:
    """The contract key of spectrum quantity ``key`` (an ``ntk/…`` key) for kernel ``kind``."""
    return KIND_PREFIXES[kind] + key.split("/", 1)[1]
