"""Render the report document (:mod:`.summary`) as plain text or markdown.

Both renderers work from the JSON document alone, so ``--json`` output saved
earlier can be rendered again. Numbers are shown with four significant digits,
contraction factors with six (``0.99931`` and ``0.9993`` differ by a factor two in
half-life).

Example:
    >>> fmt(0.123456), fmt(None), fmt_rho(0.9999312)
    ('0.1235', 'n/a', '0.999931')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_lplr.report.summary import missing_notes

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
        text = (
            f"{where}: the gap shrinks by a factor {fmt_rho(fit['contraction'])} per step "
            f"(half-life {fmt(fit['half_life'])} steps, R² {fmt(fit['r2'])}, {fit['num_points']} points)"
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
        lows = [v for v in (pl["envelope_min_final"], pl["envelope_q05_final"]) if v is not None]
        verdict = (
            "positive, so a PL inequality held on the sampled steps"
            if min(lows) > 0
            else "not positive, so no PL inequality is certified"
        )
        parts.append("final " + " and ".join(envelope) + f" ({verdict})")
    if pl["mu_ntk_min"] is not None:
        parts.append(f"NTK lower bound pl/mu_ntk {_between(pl['mu_ntk_min'], pl['mu_ntk_max'])}")
    return "PL lower envelope: " + "; ".join(parts) + "." if parts else None


def _ntk_line(run: dict[str, Any]) -> str | None:
    ntk = run["ntk"]
    parts = []
    if ntk["lambda_min_min"] is not None:
        parts.append(
            f"smallest eigenvalue ntk/lambda_min {_between(ntk['lambda_min_min'], ntk['lambda_min_max'])} "
            f"(initial {fmt(ntk['lambda_min_initial'])}, "
            f"final {fmt(ntk['lambda_min_final'])})"
        )
    if ntk["lambda_max_min"] is not None:
        parts.append(
            f"largest eigenvalue between {fmt(ntk['lambda_max_min'])} and {fmt(ntk['lambda_max_max'])}"
        )
    if ntk["drift_op_final"] is not None:
        parts.append(
            f"relative drift ntk/drift_op final {fmt(ntk['drift_op_final'])} (max {fmt(ntk['drift_op_max'])})"
        )
    return "NTK: " + "; ".join(parts) + "." if parts else None


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
            f"smallest certificate region/mu_cert {fmt(region['mu_cert_min'])} at step "
            f"{region['mu_cert_min_step']} (final {fmt(region['mu_cert_final'])})"
        )
    return "Region certificate: " + "; ".join(parts) + "." if parts else None


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
        lines = [_header(run)]
        sections = (
            ("rate", _rate_lines(run)),
            ("pl", [_pl_line(run)]),
            ("ntk", [_ntk_line(run)]),
            ("param", [_param_line(run)]),
            ("region", [_region_line(run)]),
        )
        for section, section_lines in sections:
            found = [f"  {line}" for line in section_lines if line]
            missing = [f"  {line}" for line in notes.get(section, [])]
            # What cannot be said about the rate comes first; elsewhere what is known leads.
            lines.extend(missing + found if section == "rate" else found + missing)
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
        ],
        summary_rows,
    )
    for run in document["runs"]:
        lines += ["", f"## {run['name']}", ""]
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
