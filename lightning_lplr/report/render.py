"""Render the report document (:mod:`.summary`) as plain text or markdown.

Both renderers work from the JSON document alone, so ``--json`` output saved
earlier can be rendered again (a document of schema 1.0, without marker, verdict and
flags, renders without those lines). Numbers are shown with four significant digits,
contraction factors with six (``0.99931`` and ``0.9993`` differ by a factor two in
half-life).

Example:
    >>> fmt(0.123456), fmt(None), fmt_rho(0.9999312)
    ('0.1235', 'n/a', '0.999931')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_lplr.report.regimes import REGIME_THRESHOLDS
from lightning_lplr.report.summary import missing_notes
from lightning_lplr.reporting.keys import KIND_PREFIXES

__all__ = ["fmt", "fmt_rho", "render_markdown", "render_text"]


def fmt(value: float | int | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; ``"n/a"`` for ``None``."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}"


def fmt_rho(value: float | None) -> str:
    """A contraction factor with six significant digits; ``"n/a"`` for ``None``."""
    return fmt(value, 6)


def _steps(start: int | None, end: int | None) -> str:
    return f"step {start}" if start == end else f"steps {start} to {end}"


def _span_sentence(span: dict[str, Any]) -> str:
    fit = span["fit"]
    where = _steps(span["start_step"], span["end_step"])
    if fit["contraction"] is None:
        text = (
            f"{where}: too few pl/gap points to fit a rate ({fit['num_points']} usable, "
            f"{span['num_regime_samples']} regime samples)"
        )
    else:
        source = (
            f"{fit['num_points']} points"
            if span.get("fit_source", "pl/gap") == "pl/gap"
            else f"median of {fit['num_points']} logged rate/* window fits"
        )
        text = (
            f"{where}: the gap shrinks by a factor {fmt_rho(fit['contraction'])} per step "
            f"(half-life {fmt(fit['half_life'])} steps, R² {fmt(fit['r2'])}, {source})"
        )
    if span["contraction_pred_mean"] is not None:
        text += f"; predicted {fmt_rho(span['contraction_pred_mean'])} (mean of rate/contraction_pred)"
    return text + "."


def _rate_lines(run: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    ls = run["linear_spans"]
    if ls["num_regime_samples"]:
        spans = ls["spans"]
        share = (
            f"{ls['num_linear_samples']} of {ls['num_regime_samples']} regime samples linear "
            f"({100 * ls['fraction_linear']:.0f}%)"
        )
        if spans:
            plural = "span" if len(spans) == 1 else "spans"
            lines.append(f"Linear convergence: the loss decays linearly in {len(spans)} {plural}, {share}.")
            lines.extend(f"  - {_span_sentence(span)}" for span in spans)
        else:
            lines.append(f"Linear convergence: no linear span, {share}.")
    overall = run["overall"]
    if overall["fit"] is not None:
        fit = overall["fit"]
        if fit["contraction"] is None:
            lines.append(f"Whole run: too few usable pl/gap points to fit a rate ({fit['num_points']}).")
        else:
            series = run["series"]["pl/gap"]
            lines.append(
                f"Whole run ({_steps(series['first_step'], series['last_step'])}): regime "
                f"{overall['regime']}; a single linear fit of pl/gap gives {fmt_rho(fit['contraction'])} "
                f"per step (R² {fmt(fit['r2'])}, {fit['num_points']} points)."
            )
    return lines


def _between(lo: float | None, hi: float | None) -> str:
    return f"constant at {fmt(lo)}" if fmt(lo) == fmt(hi) else f"between {fmt(lo)} and {fmt(hi)}"


def _pl_line(run: dict[str, Any]) -> str | None:
    pl = run["pl"]
    envelope = []
    if pl["envelope_min_final"] is not None:
        envelope.append(f"running minimum pl/envelope_min {fmt(pl['envelope_min_final'])}")
    if pl["envelope_q05_final"] is not None:
        envelope.append(f"low quantile pl/envelope_q05 {fmt(pl['envelope_q05_final'])}")
    parts = []
    if envelope:
        parts.append("final " + " and ".join(envelope))
    if pl["mu_ntk_min"] is not None:
        parts.append(f"NTK lower bound pl/mu_ntk {_between(pl['mu_ntk_min'], pl['mu_ntk_max'])}")
    return "PL lower envelope: " + "; ".join(parts) + "." if parts else None


def _verdict_lines(run: dict[str, Any]) -> list[str]:
    verdict = run.get("verdict")
    if verdict is None:
        return []
    lines = [f"Verdict: {verdict['statement']}"]
    mus = []
    if verdict["mu_envelope_min"] is not None:
        mus.append(f"μ = {fmt(verdict['mu_envelope_min'])} (envelope minimum)")
    if verdict["mu_ntk_min"] is not None:
        mus.append(f"μ_NTK = {fmt(verdict['mu_ntk_min'])} (smallest pl/mu_ntk)")
    implied = []
    if verdict["contraction_implied_envelope"] is not None:
        implied.append(f"{fmt_rho(verdict['contraction_implied_envelope'])} from the envelope")
    if verdict["contraction_implied_mu_ntk"] is not None:
        implied.append(f"{fmt_rho(verdict['contraction_implied_mu_ntk'])} from μ_NTK")
    measured = []
    if verdict["contraction_measured"] is not None:
        where = _steps(verdict["contraction_measured_start_step"], verdict["contraction_measured_end_step"])
        measured.append(f"{fmt_rho(verdict['contraction_measured'])} (fit of pl/gap over {where})")
    if verdict["contraction_logged_final"] is not None:
        measured.append(f"last logged rate/contraction {fmt_rho(verdict['contraction_logged_final'])}")
    if not (mus or measured):
        return lines
    text = "μ and the rate: " + (", ".join(mus) if mus else "no μ logged")
    if implied:
        text += "; implied contraction 1 − 2ημ(1 − ηβ/2) " + " and ".join(implied)
    if measured:
        text += "; measured " + ", ".join(measured)
    lines.append(f"{text}. {verdict['contraction_note']}")
    return lines


def _lazy_line(run: dict[str, Any]) -> str | None:
    lazy = run.get("lazy")
    if lazy is None:
        return None
    parts = []
    for name, key, entry in (
        ("NTK drift", "ntk/drift_op", lazy["ntk_drift_op"]),
        ("linearisation gap", "lin/gap_rel", lazy["lin_gap_rel"]),
    ):
        if entry["max"] is None:
            continue
        thresholds = REGIME_THRESHOLDS[key]
        text = f"{name} {key} max {fmt(entry['max'])} at step {entry['max_step']}"
        crossings = [
            f"first ≥ {limit:g} at step {step}"
            for limit, step in (
                (thresholds.lazy_below, entry["first_step_transitional"]),
                (thresholds.left_from, entry["first_step_left"]),
            )
            if step is not None
        ]
        if crossings:
            text += ", " + ", ".join(crossings)
        bounds = f"lazy below {thresholds.lazy_below:g}, left from {thresholds.left_from:g}"
        parts.append(f"{text}: {entry['regime']} ({bounds})")
    return "Lazy regime: " + "; ".join(parts) + "." if parts else None


def _stability_line(run: dict[str, Any]) -> str | None:
    stability = run.get("stability")
    if stability is None or stability["eta_beta_max"] is None:
        return None
    text = (
        f"Step size: η·β (ntk/eta_beta) max {fmt(stability['eta_beta_max'])} at step "
        f"{stability['eta_beta_max_step']}"
    )
    if stability["threshold"] is None:
        return f"{text}; indicative only ({stability['basis']})."
    verdict = "below" if stability["first_step_unstable"] is None else "reached"
    return f"{text}; {verdict} the stability threshold {fmt(stability['threshold'])} ({stability['basis']})."


def _reading_lines(run: dict[str, Any]) -> list[str]:
    lines = []
    marker = run.get("marker")
    if marker is not None:
        lines.append(f"Reading: {marker['description']}.")
    loss_star = run.get("loss_star")
    if loss_star is not None and loss_star["strategy"] == "running_min" and loss_star["recomputed"]:
        lines.append(
            f"L*: post-hoc running minimum {fmt(loss_star['value'], 6)} (lowest loss − "
            f"{fmt(loss_star['margin'])}·|lowest loss|; logged with L* {loss_star['logged']}); the gaps, "
            "step PL ratios, envelope and rate fits below are recomputed with it."
        )
    return lines


def _flag_lines(run: dict[str, Any]) -> list[str]:
    flags = run.get("flags") or []
    if not flags:
        return []
    return [f"Flags ({len(flags)}):"] + [
        f"  - [{flag['severity']}] {flag['code']}: {flag['message']}" for flag in flags
    ]


def _ntk_line(run: dict[str, Any]) -> str | None:
    ntk = run["ntk"]
    head = KIND_PREFIXES[ntk.get("kind") or "full"]
    parts = []
    if ntk["lambda_min_min"] is not None:
        parts.append(
            f"smallest eigenvalue {head}lambda_min {_between(ntk['lambda_min_min'], ntk['lambda_min_max'])} "
            f"(initial {fmt(ntk['lambda_min_initial'])}, "
            f"final {fmt(ntk['lambda_min_final'])})"
        )
    if ntk["lambda_max_min"] is not None:
        parts.append(
            f"largest eigenvalue between {fmt(ntk['lambda_max_min'])} and {fmt(ntk['lambda_max_max'])}"
        )
    if ntk["drift_op_final"] is not None:
        parts.append(
            f"relative drift {head}drift_op final {fmt(ntk['drift_op_final'])} "
            f"(max {fmt(ntk['drift_op_max'])})"
        )
    kind = "" if ntk.get("kind") in (None, "full") else f" ({ntk['kind']} kernel)"
    return f"NTK{kind}: " + "; ".join(parts) + "." if parts else None


def _param_line(run: dict[str, Any]) -> str | None:
    param = run["param"]
    if param["drift_final"] is None:
        return None
    return (
        f"Parameter drift ‖θ_t − θ_0‖ (param/drift): final {fmt(param['drift_final'])} "
        f"(max {fmt(param['drift_max'])})."
    )


def _region_line(run: dict[str, Any]) -> str | None:
    region = run["region"]
    parts = []
    if region["num_samples"]:
        parts.append(
            f"inside at {region['num_inside']} of {region['num_samples']} samples "
            f"({100 * region['inside_fraction']:.1f}%)"
        )
        if region["first_outside_step"] is None:
            parts.append("never outside")
        else:
            parts.append(f"first outside at step {region['first_outside_step']}")
    if region["mu_cert_min"] is not None:
        parts.append(
            f"smallest region/mu_cert {fmt(region['mu_cert_min'])} at step "
            f"{region['mu_cert_min_step']} (final {fmt(region['mu_cert_final'])})"
        )
    head = (
        "Region estimate (λ_min(Θ_0) − L̂·r_t with an empirical Lipschitz constant L̂: "
        "an estimate, not a certificate)"
    )
    return head + ": " + "; ".join(parts) + "." if parts else None


def _skipped_line(run: dict[str, Any]) -> str | None:
    if not run["skipped"]:
        return None
    items = ", ".join(f"{key} = {fmt(value, 12)}" for key, value in sorted(run["skipped"].items()))
    return f"Skipped samples: {items}."


def _header(run: dict[str, Any]) -> str:
    span = f"steps {run['first_step']} to {run['last_step']}" if run["first_step"] is not None else "no steps"
    return f"Run '{run['name']}' ({'+'.join(run['formats'])}; {span}; {len(run['keys'])} LPLR keys)"


def render_text(document: dict[str, Any]) -> str:
    """The plain-text report: one block of sentences per run.

    Args:
        document: the report document (:func:`.summary.build_report`).

    Returns:
        The text, ending with a newline.
    """
    blocks = []
    for run in document["runs"]:
        notes: dict[str, list[str]] = {}
        for section, sentence in missing_notes(run):
            notes.setdefault(section, []).append(sentence)
        known = {sentence for sentences in notes.values() for sentence in sentences}
        lines = [_header(run)]
        lines.extend(f"  {line}" for line in _reading_lines(run))
        sections = (
            ("rate", _rate_lines(run)),
            ("pl", [_pl_line(run), *_verdict_lines(run)]),
            ("ntk", [_ntk_line(run), _lazy_line(run), _stability_line(run)]),
            ("param", [_param_line(run)]),
            ("region", [_region_line(run)]),
        )
        for section, section_lines in sections:
            found = [f"  {line}" for line in section_lines if line]
            missing = [f"  {line}" for line in notes.get(section, [])]
            # What cannot be said about the rate comes first; elsewhere what is known leads.
            lines.extend(missing + found if section == "rate" else found + missing)
        lines.extend(f"  {line}" for line in _flag_lines(run))
        # The reader's and L*'s notes: those missing_notes does not produce.
        lines.extend(f"  {note}" for note in run["notes"] if note not in known)
        skipped = _skipped_line(run)
        if skipped:
            lines.append(f"  {skipped}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _range(lo: float | None, hi: float | None) -> str:
    return "n/a" if lo is None else f"{fmt(lo)} – {fmt(hi)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return out


def render_markdown(document: dict[str, Any]) -> str:
    """A markdown report: a summary table over runs, then each run's linear spans and notes.

    Args:
        document: the report document (:func:`.summary.build_report`).

    Returns:
        Markdown text ending with a newline.
    """
    lines = ["# LPLR report", ""]
    summary_rows = []
    for run in document["runs"]:
        ls, pl, ntk, region = run["linear_spans"], run["pl"], run["ntk"], run["region"]
        spans = ls["spans"]
        if not ls["regime_logged"]:
            span_text = "n/a"
        else:
            span_text = ", ".join(f"{s['start_step']}–{s['end_step']}" for s in spans) or "none"
        rho = (
            "; ".join(f"{fmt_rho(s['fit']['contraction'])} (R² {fmt(s['fit']['r2'])})" for s in spans)
            or "n/a"
        )
        pred = "; ".join(fmt_rho(s["contraction_pred_mean"]) for s in spans) or "n/a"
        inside = "n/a" if region["inside_fraction"] is None else f"{100 * region['inside_fraction']:.1f}%"
        verdict = run.get("verdict")
        held = "n/a" if verdict is None else ("yes" if verdict["pl_inequality_held"] else "no")
        flags = ", ".join(flag["code"] for flag in run.get("flags") or []) or "none"
        summary_rows.append(
            [
                run["name"],
                span_text,
                rho,
                pred,
                f"{fmt(pl['envelope_min_final'])} / {fmt(pl['envelope_q05_final'])}",
                _range(ntk["lambda_min_min"], ntk["lambda_min_max"]),
                fmt(ntk["drift_op_final"]),
                fmt(run["param"]["drift_final"]),
                inside,
                fmt(region["mu_cert_min"]),
                held,
                flags,
            ]
        )
    lines += _table(
        [
            "run",
            "linear spans (steps)",
            "ρ fitted (R²)",
            "ρ predicted",
            "PL envelope min / q05 (final)",
            "NTK λ_min range",
            "NTK drift (final)",
            "param drift (final)",
            "inside region",
            "min μ_cert",
            "PL held",
            "flags",
        ],
        summary_rows,
    )
    for run in document["runs"]:
        lines += ["", f"## {run['name']}", ""]
        reading = _reading_lines(run) + _verdict_lines(run)
        for line in (_lazy_line(run), _stability_line(run)):
            if line:
                reading.append(line)
        for line in reading:
            lines += [line, ""]
        flags = run.get("flags") or []
        if flags:
            lines += [f"- **{flag['severity']}** `{flag['code']}`: {flag['message']}" for flag in flags]
            lines.append("")
        spans = run["linear_spans"]["spans"]
        if spans:
            rows = [
                [
                    f"{s['start_step']}–{s['end_step']}",
                    fmt_rho(s["fit"]["contraction"]),
                    fmt(s["fit"]["half_life"]),
                    fmt(s["fit"]["r2"]),
                    str(s["fit"]["num_points"]),
                    fmt_rho(s["contraction_pred_mean"]),
                    fmt_rho(s["contraction_logged_mean"]),
                ]
                for s in spans
            ]
            lines += _table(
                [
                    "steps",
                    "ρ fitted",
                    "half-life (steps)",
                    "R²",
                    "points",
                    "ρ predicted (mean)",
                    "ρ logged (mean)",
                ],
                rows,
            )
        elif run["linear_spans"]["regime_logged"]:
            lines.append("No linear span in the logged regime codes.")
        overall = run["overall"]
        if overall["fit"] is not None and overall["fit"]["contraction"] is not None:
            lines += [
                "",
                f"Whole run: regime **{overall['regime']}**, ρ = {fmt_rho(overall['fit']['contraction'])} "
                f"(R² {fmt(overall['fit']['r2'])}).",
            ]
        extra = [*run["notes"]]
        if run["skipped"]:
            extra.append(_skipped_line(run) or "")
        if extra:
            lines.append("")
            lines += [f"- {note}" for note in extra]
    return "\n".join(lines) + "\n"
