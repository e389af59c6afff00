"""The markdown summary a monitor writes to TensorBoard at the end of fit."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["summary_markdown"]


def summary_markdown(summary: Mapping[str, float], skips: Mapping[str, int]) -> str:
    """A short markdown table of the run's latest values (``summary``: key without prefix → value)."""

    def fmt(key: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"

    regime = {1.0: "linear", 0.0: "undetermined", -1.0: "sublinear"}.get(
        summary.get("rate/regime", math.nan), "n/a"
    )
    lines = [
        "| quantity | value |",
        "|---|---|",
        f"| regime (last window) | {regime} |",
        f"| contraction per step, measured | {fmt('rate/contraction')} (R² {fmt('rate/r2')}) |",
        f"| contraction per step, predicted | {fmt('rate/contraction_pred')} |",
        f"| PL envelope min / q05 | {fmt('pl/envelope_min')} / {fmt('pl/envelope_q05')} |",
        f"| μ_NTK (last) | {fmt('pl/mu_ntk')} |",
        f"| NTK λ_min (last, lowest) | {fmt('ntk/lambda_min')}, {fmt('ntk/lambda_min_lowest')} |",
        f"| NTK drift (op) | {fmt('ntk/drift_op')} |",
        f"| parameter drift | {fmt('param/drift')} |",
        f"| certificate μ_cert (last) | {fmt('region/mu_cert')} |",
        f"| fraction of NTK samples inside region | {fmt('region/inside_fraction')} |",
        f"| skipped samples | {', '.join(f'{k}: {v}' for k, v in skips.items())} |",
    ]
    return "\n".join(lines)
