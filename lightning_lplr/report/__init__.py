"""Post-hoc summary of logged runs: ``lightning-lplr report PATH...`` and its building blocks.

Read runs (:mod:`.reader`), summarise them into a JSON document (:mod:`.summary`,
schema in :mod:`.schema`), render it as text or markdown (:mod:`.render`) and plot
them (:mod:`.plot`, needs matplotlib). The command line is :func:`.cli.main`.

Example:
    >>> from lightning_lplr.report import Run, Series, build_report, render_text
    >>> gap = Series.from_pairs((t, 2 * 0.9**t) for t in range(20))
    >>> regime = Series.from_pairs((t, 1.0) for t in range(20))
    >>> doc = build_report([Run("demo", (), ("csv",), {"pl/gap": gap, "rate/regime": regime})])
    >>> print(render_text(doc).splitlines()[2].strip())
    - steps 0 to 19: the gap shrinks by a factor 0.9 per step (half-life 6.579 steps, R² 1, 20 points).
"""

from lightning_lplr.report.errors import ReportError
from lightning_lplr.report.reader import Run, Series, find_runs, load_runs
from lightning_lplr.report.render import render_markdown, render_text
from lightning_lplr.report.schema import SCHEMA_VERSION, validate_report
from lightning_lplr.report.summary import build_report, summarize_run

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
    "summarize_run",
    "validate_report",
]
