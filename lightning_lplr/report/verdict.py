"""Verdicts that never overclaim: the PL claim, ``μ`` and the contraction it implies, and the flags.

Every sentence here is built from the run's logged series, its schema marker
(:mod:`lightning_lplr.reporting.marker`) and the thresholds of :mod:`.regimes`; the same
sentences go to the text, markdown and ``--json`` reports.

**The PL claim.** "A PL inequality held on the sampled steps" is said only when both

1. the lower envelope is positive: the final ``pl/envelope_min`` (the running minimum of the step
   PL ratios ``‖∇L‖²/(2(L − L*))``) is ``> 0``, and
2. the gap ``L − L*`` is credible, on one of these bases (``gap_basis``):

   * ``"loss_star_value"``: the run was logged with a user-given number ``L*`` (marker ``loss_star``);
   * ``"loss_star_fit"``: ``L*`` was fitted online (marker ``loss_star = "fit"``);
   * ``"loss_star_running_min"``: the report recomputed the run with the post-hoc running minimum;
   * ``"linear_regime"``: with ``L* = 0`` (or no marker), the gap decays linearly over the whole
     run — :func:`~lightning_lplr.functional.rate.classify_regime` of all of ``pl/gap`` says
     ``linear``, the fitted line falls by at least a factor :data:`MIN_DECAY` over the steps it
     spans, and the last logged ``rate/regime`` (when logged) is linear — so ``L* = 0`` is
     consistent with the data.

   With ``L* = 0`` and a cross-entropy-type loss (marker ``loss``, see
   :func:`is_unattained_zero_loss`) the gap is never credible: 0 is the infimum of such a loss,
   approached as the logits grow and never attained, and the decay towards it is typically
   sublinear; no PL inequality is claimed.

**μ and the contraction it implies.** The quoted ``μ`` are the final envelope minimum and the
smallest ``pl/mu_ntk``; the contraction ``1 − 2ημ(1 − ηβ/2)``
(:func:`~lightning_lplr.functional.rate.predicted_contraction`) needs the step size ``η``, recovered
as the median of ``ntk/eta_beta / curv/beta`` over the steps where both are logged, and uses the
largest logged ``curv/beta`` (the conservative choice). Without both keys it cannot be quoted. It
stands next to the measured contraction: the report's fit over the longest linear span (else the
whole run) and the last logged ``rate/contraction``.

**Flags** (``code``: when):

* ``eta_beta_unstable``: ``ntk/eta_beta`` reached the stability threshold of the optimizer
  (:func:`~lightning_lplr.report.regimes.stability_threshold`; none for adaptive optimizers);
* ``negative_lambda_min``: a smallest eigenvalue (``ntk/lambda_min`` or a kind's
  ``ntk_*/lambda_min``) below ``−c·ε₃₂·λ_max`` (:func:`~.regimes.negative_eigenvalue_tolerance`):
  a numerical or consistency problem of the kernel computation, not a property of the model;
* ``ntk_drift_left_lazy`` / ``ntk_drift_transitional``: ``ntk/drift_op`` reached the "left" /
  "transitional" threshold of :data:`~.regimes.NTK_DRIFT_OP`;
* ``lin_gap_left_lazy`` / ``lin_gap_transitional``: the same for ``lin/gap_rel``
  (:data:`~.regimes.LIN_GAP_REL`).

Example:
    >>> is_unattained_zero_loss("cross_entropy"), is_unattained_zero_loss("CrossEntropyLoss")
    (True, True)
    >>> is_unattained_zero_loss("mse_loss"), is_unattained_zero_loss(None)
    (False, False)
    >>> describe_marker(None).startswith("no schema marker")
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from lightning_lplr.functional.rate import predicted_contraction
from lightning_lplr.report.numbers import finite_number
from lightning_lplr.report.reader import Run, Series
from lightning_lplr.report.regimes import (
    LEFT,
    LIN_GAP_REL,
    NTK_DRIFT_OP,
    TRANSITIONAL,
    RegimeThresholds,
    negative_eigenvalue_tolerance,
    stability_threshold,
)
from lightning_lplr.reporting.keys import KEY_SEMANTICS_VERSION, KIND_PREFIXES, REGIME_CODES

__all__ = [
    "FLAG_CODES",
    "GAP_BASES",
    "MIN_DECAY",
    "describe_marker",
    "is_unattained_zero_loss",
    "lazy_section",
    "marker_section",
    "negative_lambda_flags",
    "stability_section",
    "verdict_section",
]

MIN_DECAY = 0.5
"""The ``linear_regime`` basis needs the whole-run fitted gap to fall at least by this factor."""
GAP_BASES = ("loss_star_value", "loss_star_fit", "loss_star_running_min", "linear_regime")
"""Why a gap is credible (``verdict.gap_basis``)."""
FLAG_CODES: dict[str, str] = {
    "eta_beta_unstable": "η·β (ntk/eta_beta) reached the stability threshold of the optimizer",
    "negative_lambda_min": "a smallest NTK eigenvalue below the float32 noise tolerance",
    "ntk_drift_left_lazy": "ntk/drift_op reached the 'left the lazy regime' threshold",
    "ntk_drift_transitional": "ntk/drift_op reached the 'transitional' threshold",
    "lin_gap_left_lazy": "lin/gap_rel reached the 'left the lazy regime' threshold",
    "lin_gap_transitional": "lin/gap_rel reached the 'transitional' threshold",
}
"""Every flag code and when it is raised."""

_V1_MEANINGS = (
    "no schema marker: the run was written before key semantics v2, so its keys are read with "
    "v1 meanings (ntk/* may be a trace or pseudo kernel, ntk/eta_beta used λ_max(K)/m)"
)
_SOURCES = {
    "tensorboard": "TensorBoard text record",
    "hparams.yaml": "hparams.yaml",
    "monitor": "the monitor",
}
_LINEAR = REGIME_CODES["linear"]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def is_unattained_zero_loss(name: Any) -> bool:
    """Whether a loss of this name has infimum 0 that it never attains (cross-entropy and kin).

    Cross-entropy, negative log-likelihood, binary cross-entropy (with logits) and the logistic
    loss approach 0 only as the logits grow without bound.

    Args:
        name: the marker's ``loss`` (a function or class name), or ``None``.

    Returns:
        ``True`` for a name containing ``crossentropy``, ``nll``, ``bce`` or ``logistic`` (case,
        ``_`` and ``-`` ignored).
    """
    if not isinstance(name, str):
        return False
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return any(part in flat for part in ("crossentropy", "nll", "bce", "logistic")) or flat == "ce"


def describe_marker(marker: Mapping[str, Any] | None, source: str | None = None) -> str:
    """What the report is reading, in words: ``"key semantics v2, full kernel, norm_mode probe, …"``.

    Args:
        marker: the run's schema marker, ``None`` for a run without one.
        source: where it was read (``"tensorboard"``, ``"hparams.yaml"``, ``"monitor"``).

    Returns:
        One phrase (no final period).
    """
    if marker is None:
        return _V1_MEANINGS
    version = marker.get("key_semantics_version")
    parts = [f"key semantics v{version}"]
    if isinstance(version, int) and version > KEY_SEMANTICS_VERSION:
        parts[0] += (
            f" (newer than this report's v{KEY_SEMANTICS_VERSION}; "
            f"read with v{KEY_SEMANTICS_VERSION} meanings)"
        )
    kind = marker.get("kernel_kind")
    parts.append(f"{kind} kernel" if kind else "no NTK sampled")
    if marker.get("norm_mode"):
        parts.append(f"norm_mode {marker['norm_mode']}")
    parts.append(f"loss {marker['loss']}" if marker.get("loss") else "no loss_fn")
    if marker.get("loss_star") is not None:
        parts.append(f"L* {marker['loss_star']}")
    if marker.get("optimizer"):
        optimizer = f"optimizer {marker['optimizer']}"
        momentum = finite_number(marker.get("momentum"))
        if marker.get("plain_sgd") is True:
            optimizer += " (plain SGD)"
        elif momentum:
            optimizer += f" (momentum {momentum:g})"
        parts.append(optimizer)
    for field, yes, no in (
        ("probe_is_training_set", "probe = training set", "probe ≠ training set"),
        ("full_batch", "full-batch steps", "mini-batch steps"),
    ):
        if isinstance(marker.get(field), bool):
            parts.append(yes if marker[field] else no)
    if marker.get("world_size") is not None:
        parts.append(f"world size {marker['world_size']}")
    if marker.get("monitor"):
        writer = f"written by {marker['monitor']}"
        if marker.get("package_version"):
            writer += f" (lightning_lplr {marker['package_version']})"
        parts.append(writer)
    text = ", ".join(parts)
    return f"{text} (schema marker from {_SOURCES.get(source or '', source)})" if source else text


def _json_scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def marker_section(marker: Mapping[str, Any] | None, source: str | None) -> dict[str, Any]:
    """The ``marker`` object of a run (schema ``Marker``).

    Example:
        >>> marker_section(None, None)["key_semantics_version"]
        1
    """
    version = marker.get("key_semantics_version") if marker is not None else 1
    return {
        "found": marker is not None,
        "source": source if marker is not None else None,
        "key_semantics_version": version if isinstance(version, int) and not isinstance(version, bool) else 1,
        "fields": {str(k): _json_scalar(v) for k, v in sorted((marker or {}).items())},
        "description": describe_marker(marker, source),
    }


def _first_at_or_above(series: Series, threshold: float) -> int | None:
    hit = series.steps[series.values >= threshold]
    return int(hit[0]) if hit.size else None


def _flag(
    code: str,
    severity: str,
    key: str,
    step: int | None,
    value: float | None,
    threshold: float | None,
    message: str,
) -> dict[str, Any]:
    return {
        "code": code,
        "severity": severity,
        "key": key,
        "step": step,
        "value": finite_number(value),
        "threshold": finite_number(threshold),
        "message": message,
    }


def _regime_of(run: Run, thresholds: RegimeThresholds) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    series = run.get(thresholds.key)
    finite = series.finite() if series is not None else None
    if finite is None or not len(finite):
        return dict.fromkeys(
            ("max", "max_step", "final", "first_step_transitional", "first_step_left", "regime")
        ), []
    i_max = int(np.argmax(finite.values))
    peak = float(finite.values[i_max])
    out = {
        "max": finite_number(peak),
        "max_step": int(finite.steps[i_max]),
        "final": finite_number(finite.values[-1]),
        "first_step_transitional": _first_at_or_above(finite, thresholds.lazy_below),
        "first_step_left": _first_at_or_above(finite, thresholds.left_from),
        "regime": thresholds.classify(peak),
    }
    return out, _regime_flags(thresholds, out)


def _regime_flags(thresholds: RegimeThresholds, out: Mapping[str, Any]) -> list[dict[str, Any]]:
    key = thresholds.key
    stem = "ntk_drift" if key == NTK_DRIFT_OP.key else "lin_gap"
    lo, hi = thresholds.lazy_below, thresholds.left_from
    first = f"first ≥ {lo:g} at step {out['first_step_transitional']}"
    if out["regime"] == LEFT:
        message = (
            f"{key} ({thresholds.description}) reached {_fmt(out['max'])} at step {out['max_step']} "
            f"({first}, first ≥ {hi:g} at step {out['first_step_left']}): training left the lazy regime, "
            "so the initial kernel (λ_min(Θ_0), the certificate, the NTK bounds) no longer describes it."
        )
        return [_flag(f"{stem}_left_lazy", "warning", key, out["first_step_left"], out["max"], hi, message)]
    if out["regime"] == TRANSITIONAL:
        message = (
            f"{key} ({thresholds.description}) reached {_fmt(out['max'])} at step {out['max_step']} "
            f"({first}): transitional, between the lazy regime (< {lo:g}) and leaving it (≥ {hi:g})."
        )
        return [
            _flag(
                f"{stem}_transitional", "info", key, out["first_step_transitional"], out["max"], lo, message
            )
        ]
    return []


def lazy_section(run: Run) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``lazy`` object of a run (``lin/gap_rel``, ``ntk/drift_op`` against :mod:`.regimes`), its flags.

    Returns:
        ``({"lin_gap_rel": Regime, "ntk_drift_op": Regime}, flags)``; a ``Regime`` holds ``max``,
        ``max_step``, ``final``, ``first_step_transitional`` (first step at or above the lazy
        threshold), ``first_step_left`` and ``regime`` (of the maximum).
    """
    lin, lin_flags = _regime_of(run, LIN_GAP_REL)
    drift, drift_flags = _regime_of(run, NTK_DRIFT_OP)
    return {"lin_gap_rel": lin, "ntk_drift_op": drift}, drift_flags + lin_flags


def stability_section(
    run: Run, marker: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``stability`` object of a run (``ntk/eta_beta`` against its threshold) and its flag."""
    threshold, basis = stability_threshold(marker)
    out: dict[str, Any] = {
        "eta_beta_max": None,
        "eta_beta_max_step": None,
        "first_step_unstable": None,
        "threshold": threshold,
        "basis": basis,
    }
    series = run.get("ntk/eta_beta")
    finite = series.finite() if series is not None else None
    if finite is None or not len(finite):
        return out, []
    i_max = int(np.argmax(finite.values))
    out.update(eta_beta_max=finite_number(finite.values[i_max]), eta_beta_max_step=int(finite.steps[i_max]))
    if threshold is None:
        return out, []
    first = _first_at_or_above(finite, threshold)
    out["first_step_unstable"] = first
    if first is None:
        return out, []
    message = (
        f"η·β (ntk/eta_beta) reached {_fmt(out['eta_beta_max'])} at step {out['eta_beta_max_step']} (first ≥ "
        f"{threshold:g} at step {first}), past the stability threshold {threshold:g} ({basis}): the step "
        "overshoots along the sharpest direction of the loss."
    )
    return out, [
        _flag("eta_beta_unstable", "warning", "ntk/eta_beta", first, out["eta_beta_max"], threshold, message)
    ]


def negative_lambda_flags(run: Run) -> list[dict[str, Any]]:
    """One ``negative_lambda_min`` flag per ``*/lambda_min`` key below its float32 noise tolerance."""
    flags = []
    for prefix in KIND_PREFIXES.values():
        key = prefix + "lambda_min"
        series = run.get(key)
        finite = series.finite() if series is not None else None
        if finite is None or not len(finite) or not np.any(finite.values < 0):
            continue
        top = run.get(prefix + "lambda_max")
        top = top.finite() if top is not None else None
        tolerance = np.zeros(len(finite))
        if top is not None and len(top):
            fallback = negative_eigenvalue_tolerance(float(np.max(np.abs(top.values))))
            tolerance = np.full(len(finite), fallback)
            _, i_lo, i_hi = np.intersect1d(finite.steps, top.steps, return_indices=True)
            tolerance[i_lo] = [negative_eigenvalue_tolerance(v) for v in top.values[i_hi].tolist()]
            how = "c·ε₃₂·λ_max, the float32 rounding noise of a Gram matrix"
        else:
            how = f"no {prefix}lambda_max was logged, so no float32 tolerance could be applied"
        bad = finite.values < -tolerance
        if not np.any(bad):
            continue
        worst = int(np.argmin(np.where(bad, finite.values, np.inf)))
        first = int(finite.steps[bad][0])
        message = (
            f"{key} is negative beyond float tolerance at {int(bad.sum())} of {len(finite)} samples "
            f"(first at step {first}; lowest {_fmt(float(finite.values[worst]))} at step "
            f"{int(finite.steps[worst])}, tolerance {_fmt(float(tolerance[worst]))} = {how}). "
            "A kernel J Jᵀ is positive semi-definite: this is a "
            "numerical or consistency problem of the kernel computation, not a property of the model."
        )
        lowest, bound = float(finite.values[worst]), -float(tolerance[worst])
        flags.append(_flag("negative_lambda_min", "warning", key, first, lowest, bound, message))
    return flags


def _eta(run: Run) -> tuple[float | None, float | None, str | None]:
    """``(η, β_max, note)`` from ``ntk/eta_beta`` and ``curv/beta``."""
    eta_beta, beta = run.get("ntk/eta_beta"), run.get("curv/beta")
    if eta_beta is None or beta is None:
        missing = " and ".join(k for k, s in (("ntk/eta_beta", eta_beta), ("curv/beta", beta)) if s is None)
        return None, None, f"{missing} not logged, so the step size η is unknown"
    eb, b = eta_beta.finite(), beta.finite()
    _, i_eb, i_b = np.intersect1d(eb.steps, b.steps, return_indices=True)
    ok = b.values[i_b] > 0
    if not np.any(ok):
        return None, None, "ntk/eta_beta and curv/beta share no step with a positive β, so η is unknown"
    etas = eb.values[i_eb][ok] / b.values[i_b][ok]
    eta = float(np.median(etas))
    positive = b.values[b.values > 0]
    note = None
    if eta > 0 and float(np.max(etas) - np.min(etas)) > 1e-3 * abs(eta):
        low, high = _fmt(float(np.min(etas))), _fmt(float(np.max(etas)))
        note = f"η varied between {low} and {high}; the median is used"
    return eta, float(np.max(positive)), note


def _measured(doc: Mapping[str, Any]) -> tuple[float | None, int | None, int | None]:
    spans = [s for s in doc["linear_spans"]["spans"] if s["fit"]["contraction"] is not None]
    if spans:
        longest = max(spans, key=lambda s: (s["end_step"] - s["start_step"], s["fit"]["num_points"]))
        return longest["fit"]["contraction"], longest["start_step"], longest["end_step"]
    fit = doc["overall"]["fit"]
    if fit is not None and fit["contraction"] is not None:
        series = doc["series"]["pl/gap"]
        return fit["contraction"], series["first_step"], series["last_step"]
    return None, None, None


def _linear_basis(run: Run, doc: Mapping[str, Any]) -> tuple[bool, str]:
    overall = doc["overall"]
    fit = overall["fit"]
    if fit is None or fit["contraction"] is None:
        return False, "pl/gap gives no whole-run fit"
    if overall["regime"] != "linear":
        return False, f"the whole-run decay of pl/gap is {overall['regime']}, not linear"
    gap = doc["series"]["pl/gap"]
    span = (gap["last_step"] or 0) - (gap["first_step"] or 0)
    decay = math.exp(fit["slope"] * span) if fit["slope"] is not None else math.nan
    if not decay <= MIN_DECAY:
        return (
            False,
            f"the fitted gap falls only by a factor {_fmt(decay)} over the run (needs ≤ {MIN_DECAY:g})",
        )
    regime = run.get("rate/regime")
    codes = regime.finite() if regime is not None else None
    if codes is not None and len(codes) and round(float(codes.values[-1])) != _LINEAR:
        last = {v: k for k, v in REGIME_CODES.items()}.get(float(round(codes.values[-1])), "unknown")
        return False, f"the last logged rate/regime (step {int(codes.steps[-1])}) is {last}, not linear"
    return True, (
        f"the gap decays linearly over the whole run (the fitted gap falls by a factor {_fmt(decay)}), "
        "so L* = 0 is consistent with it"
    )


def verdict_section(
    run: Run, doc: Mapping[str, Any], marker: Mapping[str, Any] | None, loss_star: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``verdict`` object of a run (schema ``Verdict``): the PL claim, ``μ``, the contractions.

    Args:
        run: the run (after any post-hoc ``L*``).
        doc: its summary so far (``series``, ``linear_spans``, ``overall``, ``pl``).
        marker: its schema marker or ``None``.
        loss_star: its ``loss_star`` object (:func:`lightning_lplr.report.posthoc.logged_loss_star`
            or the post-hoc one).
    """
    strategy = loss_star["strategy"]
    loss = marker.get("loss") if marker is not None else None
    if strategy == "zero" and is_unattained_zero_loss(loss):
        credible, basis = False, None
        reason = (
            f"L* = 0 is the infimum of the {loss} loss, approached as the logits grow and never "
            "attained, and the decay towards it is typically sublinear"
        )
    elif strategy == "value":
        credible, basis = True, "loss_star_value"
        reason = f"L* = {_fmt(loss_star['value'], 6)} was given"
    elif strategy == "fit":
        credible, basis = True, "loss_star_fit"
        reason = "L* was fitted online"
    elif strategy == "running_min" and loss_star.get("recomputed"):
        credible, basis = True, "loss_star_running_min"
        reason = f"L* = {_fmt(loss_star['value'], 6)} is the post-hoc running minimum"
    else:
        credible, reason = _linear_basis(run, doc)
        basis = "linear_regime" if credible else None

    envelope = doc["pl"]["envelope_min_final"]
    mu_ntk = doc["pl"]["mu_ntk_min"]
    held = bool(credible and envelope is not None and envelope > 0)
    if envelope is None:
        statement = "No PL lower envelope (pl/envelope_min) was logged, so no PL inequality is claimed."
    elif envelope <= 0:
        statement = (
            f"The PL lower envelope pl/envelope_min is {_fmt(envelope)}, not positive: "
            "no PL inequality is certified."
        )
    elif held:
        statement = (
            f"A PL inequality held on the sampled steps: the lower envelope pl/envelope_min is positive "
            f"(μ ≥ {_fmt(envelope)}) and the gap is credible: {reason}."
        )
    else:
        fix = (
            "log the run with its true L* (the monitor's loss_star=<number>) or rerun the report with "
            "--loss-star running_min"
            if strategy != "running_min"
            else "the post-hoc L* could not be applied"
        )
        statement = (
            f"The lower envelope pl/envelope_min is positive ({_fmt(envelope)}), but no PL inequality "
            f"is claimed: {reason}, so the gap L − L* may not measure the distance to the optimum ({fix})."
        )

    eta, beta, eta_note = _eta(run)
    measured, start, end = _measured(doc)
    logged = run.get("rate/contraction")
    logged_final = logged.finite() if logged is not None else None
    logged_value = float(logged_final.values[-1]) if logged_final is not None and len(logged_final) else None
    implied_env = implied_ntk = None
    if eta is not None and eta >= 0:
        implied_env = (
            finite_number(predicted_contraction(eta, envelope, beta)) if envelope is not None else None
        )
        implied_ntk = finite_number(predicted_contraction(eta, mu_ntk, beta)) if mu_ntk is not None else None
    if eta is None:
        note = f"The contraction 1 − 2ημ(1 − ηβ/2) implied by μ cannot be quoted: {eta_note}."
    else:
        note = (
            f"η = {_fmt(eta)} (median of ntk/eta_beta / curv/beta) and β = {_fmt(beta)} (largest curv/beta)"
            + (f"; {eta_note}" if eta_note else "")
            + "."
        )
        if any(value is not None and value >= 1 for value in (implied_env, implied_ntk)):
            note += " An implied contraction ≥ 1 guarantees no decrease at this η·β."
        if marker is None or marker.get("plain_sgd") is not True:
            optimizer = marker.get("optimizer") if marker is not None else None
            note += (
                " The formula is for plain gradient descent; "
                + (f"this run used {optimizer} (not plain SGD)" if optimizer else "the optimizer is unknown")
                + ", so it is indicative only."
            )
    return {
        "pl_inequality_held": held,
        "gap_credible": bool(credible),
        "gap_basis": basis,
        "gap_reason": reason,
        "statement": statement,
        "mu_envelope_min": envelope,
        "mu_ntk_min": mu_ntk,
        "eta": finite_number(eta),
        "beta": finite_number(beta),
        "contraction_implied_envelope": implied_env,
        "contraction_implied_mu_ntk": implied_ntk,
        "contraction_measured": finite_number(measured),
        "contraction_measured_start_step": start,
        "contraction_measured_end_step": end,
        "contraction_logged_final": finite_number(logged_value),
        "contraction_note": note,
    }
