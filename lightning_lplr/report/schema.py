"""The JSON document of ``lightning-lplr report --json`` and its hand-written validator.

Schema version :data:`SCHEMA_VERSION` (``"1.1"``; the minor number grows when fields
are added, the major number when a field changes meaning or is removed; 1.1 added ``marker``,
``loss_star``, ``verdict``, ``stability``, ``lazy``, ``flags`` and the format ``"history"``). Strict
JSON: a number that is not finite (NaN, ±inf) is written as ``null``. Every object
below has exactly the listed fields; ``number?`` means a number or ``null``.
Steps are optimizer steps as logged; keys are contract keys without the prefix.

Top level::

    schema_version  str           "1.1"
    tool            str           "lightning-lplr"
    tool_version    str           the package version
    prefix          str           the metric prefix read, e.g. "lplr/"
    runs            [Run]

Run::

    name            str           path of the run relative to the path given
    sources         [str]         files read
    formats         [str]         "tensorboard" and/or "csv"; "history" for report_from_history
    keys            [str]         contract keys found, sorted
    missing_keys    [str]         contract keys (docs/keys.md) not logged, sorted
    other_keys      [str]         names under the prefix that are not contract keys
    first_step      int?          smallest step of any key
    last_step       int?          largest step of any key
    series          {key: SeriesStats}   one entry per key in `keys`
    linear_spans    LinearSpans
    overall         Overall
    pl              {envelope_min_final, envelope_q05_final, mu_ntk_min, mu_ntk_max,
                     ratio_step_min, ratio_probe_min: number?}
    ntk             {lambda_min_initial, lambda_min_final, lambda_min_min, lambda_min_max,
                     lambda_max_min, lambda_max_max, drift_op_final, drift_op_max: number?}
    param           {drift_final, drift_max: number?}
    region          Region
    skipped         {key: number}  final value of each nonzero skipped/* counter
    notes           [str]          sentences on what is missing or could not be computed
    marker          Marker         the run's schema marker: what the report is reading
    loss_star       LossStar       the L* of the gaps summarised
    verdict         Verdict        the PL claim, μ and the contractions (lightning_lplr.report.verdict)
    stability       Stability      ntk/eta_beta against the optimizer's threshold
    lazy            {lin_gap_rel, ntk_drift_op: LazyRegime}   against lightning_lplr.report.regimes
    flags           [Flag]         machine-readable problems, each also in words

SeriesStats (finite values only; ``final`` is the value at the last finite step)::

    num_points int, num_finite int, first_step int?, last_step int?,
    initial number?, final number?, min number?, min_step int?, max number?,
    max_step int?, mean number?

LinearSpans (from the logged ``rate/regime`` codes: 1 linear, 0 undetermined,
-1 sublinear; the code at step t judges the fit window ending at t)::

    regime_logged       bool
    num_regime_samples  int      finite regime codes
    num_linear_samples  int
    fraction_linear     number?  num_linear_samples / num_regime_samples
    spans               [Span]   maximal runs of consecutive linear codes

Span::

    start_step int, end_step int, num_regime_samples int,
    fit Fit                       fit_linear_rate of pl/gap over start_step..end_step
    contraction_pred_mean number? mean logged rate/contraction_pred in the span
    contraction_logged_mean number? mean logged rate/contraction in the span

Fit (:func:`lightning_lplr.functional.rate.fit_linear_rate`)::

    slope, intercept, contraction, half_life, r2: number?;  num_points int

Overall (pl/gap over all its steps)::

    regime  "linear" | "sublinear" | "undetermined" | null   classify_regime
    fit     Fit | null

Region::

    num_samples int, num_inside int, inside_fraction number?,
    first_outside_step int?, mu_cert_min number?, mu_cert_min_step int?,
    mu_cert_final number?

Marker (``scalar?`` is a string, number, bool or null)::

    found                  bool
    source                 "tensorboard" | "hparams.yaml" | "monitor" | null
    key_semantics_version  int           1 for a run without a marker
    fields                 {str: scalar?}   the marker as written ({} without one)
    description            str           "key semantics v2, full kernel, ..." or the v1 sentence

LossStar::

    strategy      "zero" | "value" | "fit" | "other" | "running_min"
    source        "marker" | "assumed" (no marker: L* = 0) | "report" (post-hoc)
    value         number?   the L* of the gaps (null when fitted online or unknown)
    margin        number?   M of the post-hoc L* = min L − M·|min L|
    logged        str       the L* the run was logged with ("zero", a number, "fit", "other")
    recomputed    bool      gaps, step ratios, envelope and rate fits recomputed by the report
    dropped_keys  [str]     keys left out because they cannot be recomputed
    note          str?

Verdict::

    pl_inequality_held bool, gap_credible bool,
    gap_basis "loss_star_value" | "loss_star_fit" | "loss_star_running_min" | "linear_regime" | null,
    gap_reason str, statement str,
    mu_envelope_min number?, mu_ntk_min number?, eta number?, beta number?,
    contraction_implied_envelope number?, contraction_implied_mu_ntk number?,
    contraction_measured number?, contraction_measured_start_step int?,
    contraction_measured_end_step int?, contraction_logged_final number?, contraction_note str

Stability::

    eta_beta_max number?, eta_beta_max_step int?, first_step_unstable int?,
    threshold number?, basis str

LazyRegime::

    max number?, max_step int?, final number?, first_step_transitional int?,
    first_step_left int?, regime "lazy" | "transitional" | "left" | null

Flag::

    code      one of lightning_lplr.report.verdict.FLAG_CODES
    severity  "warning" | "info"
    key       str       the key it is about
    step      int?      first step the condition held
    value     number?   the extreme value
    threshold number?   the threshold crossed
    message   str       the same finding in words

Example:
    >>> doc = {"schema_version": SCHEMA_VERSION, "tool": "lightning-lplr", "tool_version": "0",
    ...        "prefix": "lplr/", "runs": []}
    >>> validate_report(doc)
    >>> validate_report({**doc, "runs": [{"name": 3}]})
    Traceback (most recent call last):
    ...
    ValueError: $.runs[0]: fields missing: ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning_lplr.report.verdict import FLAG_CODES, GAP_BASES

__all__ = ["REPORT_SCHEMA", "SCHEMA_VERSION", "validate_report"]

SCHEMA_VERSION = "1.1"
"""Version of the ``--json`` document; see the module docstring for the fields."""


@dataclass(frozen=True)
class _List:
    item: Any


@dataclass(frozen=True)
class _Map:
    value: Any


@dataclass(frozen=True)
class _OneOf:
    choices: tuple[Any, ...]


_NUM = "number?"
_INT = "int"
_OPT_INT = "int?"
_OPT_STR = "str?"

_FIT = {
    "slope": _NUM,
    "intercept": _NUM,
    "contraction": _NUM,
    "half_life": _NUM,
    "r2": _NUM,
    "num_points": _INT,
}
_SERIES_STATS = {
    "num_points": _INT,
    "num_finite": _INT,
    "first_step": _OPT_INT,
    "last_step": _OPT_INT,
    "initial": _NUM,
    "final": _NUM,
    "min": _NUM,
    "min_step": _OPT_INT,
    "max": _NUM,
    "max_step": _OPT_INT,
    "mean": _NUM,
}
_SPAN = {
    "start_step": _INT,
    "end_step": _INT,
    "num_regime_samples": _INT,
    "fit": _FIT,
    "fit_source": _OneOf(("pl/gap", "rate/*")),
    "contraction_pred_mean": _NUM,
    "contraction_logged_mean": _NUM,
}
_LAZY_REGIME = {
    "max": _NUM,
    "max_step": _OPT_INT,
    "final": _NUM,
    "first_step_transitional": _OPT_INT,
    "first_step_left": _OPT_INT,
    "regime": _OneOf(("lazy", "transitional", "left", None)),
}
_RUN = {
    "name": "str",
    "sources": _List("str"),
    "formats": _List(_OneOf(("tensorboard", "csv", "history"))),
    "keys": _List("str"),
    "missing_keys": _List("str"),
    "other_keys": _List("str"),
    "first_step": _OPT_INT,
    "last_step": _OPT_INT,
    "series": _Map(_SERIES_STATS),
    "linear_spans": {
        "regime_logged": "bool",
        "num_regime_samples": _INT,
        "num_linear_samples": _INT,
        "fraction_linear": _NUM,
        "spans": _List(_SPAN),
    },
    "overall": {
        "regime": _OneOf(("linear", "sublinear", "undetermined", None)),
        "fit": _OneOf((_FIT, None)),
    },
    "pl": dict.fromkeys(
        (
            "envelope_min_final",
            "envelope_q05_final",
            "mu_ntk_min",
            "mu_ntk_max",
            "ratio_step_min",
            "ratio_probe_min",
        ),
        _NUM,
    ),
    "ntk": {
        "kind": _OneOf(("full", "trace", "pseudo", "loss_gram", None)),
        **dict.fromkeys(
            (
                "lambda_min_initial",
                "lambda_min_final",
                "lambda_min_min",
                "lambda_min_max",
                "lambda_max_min",
                "lambda_max_max",
                "drift_op_final",
                "drift_op_max",
            ),
            _NUM,
        ),
    },
    "param": {"drift_final": _NUM, "drift_max": _NUM},
    "region": {
        "num_samples": _INT,
        "num_inside": _INT,
        "inside_fraction": _NUM,
        "first_outside_step": _OPT_INT,
        "mu_cert_min": _NUM,
        "mu_cert_min_step": _OPT_INT,
        "mu_cert_final": _NUM,
    },
    "skipped": _Map("number"),
    "notes": _List("str"),
    "marker": {
        "found": "bool",
        "source": _OneOf(("tensorboard", "hparams.yaml", "monitor", None)),
        "key_semantics_version": _INT,
        "fields": _Map("scalar?"),
        "description": "str",
    },
    "loss_star": {
        "strategy": _OneOf(("zero", "value", "fit", "other", "running_min")),
        "source": _OneOf(("marker", "assumed", "report")),
        "value": _NUM,
        "margin": _NUM,
        "logged": "str",
        "recomputed": "bool",
        "dropped_keys": _List("str"),
        "note": _OPT_STR,
    },
    "verdict": {
        "pl_inequality_held": "bool",
        "gap_credible": "bool",
        "gap_basis": _OneOf((*GAP_BASES, None)),
        "gap_reason": "str",
        "statement": "str",
        "mu_envelope_min": _NUM,
        "mu_ntk_min": _NUM,
        "eta": _NUM,
        "beta": _NUM,
        "contraction_implied_envelope": _NUM,
        "contraction_implied_mu_ntk": _NUM,
        "contraction_measured": _NUM,
        "contraction_measured_start_step": _OPT_INT,
        "contraction_measured_end_step": _OPT_INT,
        "contraction_logged_final": _NUM,
        "contraction_note": "str",
    },
    "stability": {
        "eta_beta_max": _NUM,
        "eta_beta_max_step": _OPT_INT,
        "first_step_unstable": _OPT_INT,
        "threshold": _NUM,
        "basis": "str",
    },
    "lazy": {"lin_gap_rel": _LAZY_REGIME, "ntk_drift_op": _LAZY_REGIME},
    "flags": _List(
        {
            "code": _OneOf(tuple(FLAG_CODES)),
            "severity": _OneOf(("warning", "info")),
            "key": "str",
            "step": _OPT_INT,
            "value": _NUM,
            "threshold": _NUM,
            "message": "str",
        }
    ),
}
REPORT_SCHEMA: dict[str, Any] = {
    "schema_version": _OneOf((SCHEMA_VERSION,)),
    "tool": "str",
    "tool_version": "str",
    "prefix": "str",
    "runs": _List(_RUN),
}
"""The schema as data: a dict is an object with exactly these fields; ``"number?"`` a number or null."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


_SCALARS = {
    "str": lambda v: isinstance(v, str),
    "str?": lambda v: v is None or isinstance(v, str),
    "scalar?": lambda v: v is None or isinstance(v, (str, bool)) or _is_number(v),
    "bool": lambda v: isinstance(v, bool),
    "int": _is_int,
    "int?": lambda v: v is None or _is_int(v),
    "number": _is_number,
    "number?": lambda v: v is None or _is_number(v),
}


def _matches(value: Any, spec: Any) -> bool:
    try:
        _check(value, spec, "$")
    except ValueError:
        return False
    return True


def _check(value: Any, spec: Any, path: str) -> None:
    if isinstance(spec, str):
        if not _SCALARS[spec](value):
            raise ValueError(f"{path}: expected {spec}, got {value!r}")
    elif isinstance(spec, _OneOf):
        for choice in spec.choices:
            if isinstance(choice, (dict, _List, _Map)):
                if _matches(value, choice):
                    return
            elif value == choice and type(value) is type(choice):
                return
        raise ValueError(f"{path}: {value!r} is not one of the allowed values")
    elif isinstance(spec, _List):
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__}")
        for index, item in enumerate(value):
            _check(item, spec.item, f"{path}[{index}]")
    elif isinstance(spec, _Map):
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: key {key!r} is not a string")
            _check(item, spec.value, f"{path}.{key}")
    elif isinstance(spec, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__}")
        missing = sorted(set(spec) - set(value))
        if missing:
            raise ValueError(f"{path}: fields missing: {', '.join(missing)}")
        extra = sorted(set(value) - set(spec))
        if extra:
            raise ValueError(f"{path}: unexpected fields: {', '.join(map(str, extra))}")
        for key, item_spec in spec.items():
            _check(value[key], item_spec, f"{path}.{key}")
    else:  # pragma: no cover - a bug in the schema itself
        raise TypeError(f"bad schema node {spec!r}")


def validate_report(document: Any) -> None:
    """Check a parsed ``--json`` document against :data:`REPORT_SCHEMA`.

    Args:
        document: the output of ``json.loads`` on the report.

    Raises:
        ValueError: the first mismatch, with its JSON path (``$.runs[0].pl.mu_ntk_min``).
    """
    _check(document, REPORT_SCHEMA, "$")
