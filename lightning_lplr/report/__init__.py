"""Post-hoc summary of logged runs: ``lightning-lplr report PATH...`` and its building blocks.

Read runs (:mod:`.reader`), summarise them into a JSON document (:mod:`.summary`,
schema in :mod:`.schema`; verdicts and flags in :mod:`.verdict`, thresholds in
:mod:`.regimes`, the post-hoc ``L*`` in :mod:`.posthoc`), render it as text or markdown
(:mod:`.render`) and plot them (:mod:`.plot`, needs matplotlib). The command line is
:func:`.cli.main`. Nothing here imports torch or Lightning, and every name below is
imported on first use (PEP 562): ``from lightning_lplr.report.regimes import LIN_GAP_REL``
loads only that plain-Python module.

Example:
    >>> from lightning_lplr.report import Run, Series, build_report, render_text
    >>> gap = Series.from_pairs((t, 2 * 0.9**t) for t in range(20))
    >>> regime = Series.from_pairs((t, 1.0) for t in range(20))
    >>> doc = build_report([Run("demo", (), ("csv",), {"pl/gap": gap, "rate/regime": regime})])
    >>> print(render_text(doc).splitlines()[3].strip())
    - steps 0 to 19: the gap shrinks by a factor 0.9 per step (half-life 6.579 steps, R² 1, 20 points).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_lplr._lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "SCHEMA_VERSION": "schema",
    "ReportError": "errors",
    "Run": "reader",
    "Series": "reader",
    "build_report": "summary",
    "find_runs": "reader",
    "load_runs": "reader",
    "render_markdown": "render",
    "render_text": "render",
    "report_from_history": "summary",
    "summarize_run": "summary",
    "validate_report": "schema",
}
"""Public name -> the module of :mod:`lightning_lplr.report` that defines it."""

__all__: list[str] = [
    "SCHEMA_VERSION",
    "ReportError",
    "Run",
    "Series",
    "build_report",
    "find_runs",
    "load_runs",
    "render_markdown",
    "render_text",
    "report_from_history",
    "summarize_run",
    "validate_report",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_lplr.report.errors import ReportError
    from lightning_lplr.report.reader import Run, Series, find_runs, load_runs
    from lightning_lplr.report.render import render_markdown, render_text
    from lightning_lplr.report.schema import SCHEMA_VERSION, validate_report
    from lightning_lplr.report.summary import build_report, report_from_history, summarize_run


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
