"""Pure math on tensors and callables: NTK, spectrum, PL ratios, rates. No Lightning import.

Names are imported on first use (PEP 562): ``from lightning_lplr.functional import fit_linear_rate``
loads only the module that defines it, and nothing here ever imports Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "ExponentialFit": "pl",
    "LinearRateFit": "rate",
    "LinearRateFits": "rate",
    "LowerEnvelope": "pl",
    "ModelFn": "ntk",
    "NTKImplementation": "ntk",
    "NTKKind": "ntk",
    "NTKPLBounds": "pl",
    "NormMode": "normalization",
    "NormStatistics": "normalization",
    "Regime": "rate",
    "SpectrumStats": "spectrum",
    "SublinearFit": "rate",
    "classify_regime": "rate",
    "classify_regime_rows": "rate",
    "clear_auto_cache": "ntk",
    "eigenvalues": "spectrum",
    "empirical_ntk": "ntk",
    "envelope_min": "pl",
    "envelope_quantile": "pl",
    "estimate_loss_star": "pl",
    "fit_exponential_offset": "pl",
    "fit_linear_rate": "rate",
    "fit_linear_rate_rows": "rate",
    "fit_sublinear_rate": "rate",
    "kernel_alignment": "spectrum",
    "kernel_distance": "spectrum",
    "ntk_gradient_norm_sq": "pl",
    "ntk_pl_bounds": "pl",
    "operator_norm": "spectrum",
    "pl_ratio": "pl",
    "predicted_contraction": "rate",
    "probe_statistics": "normalization",
    "resolve_implementation": "ntk",
    "spectrum_from_eigenvalues": "spectrum",
    "spectrum_stats": "spectrum",
    "stability_indicator": "rate",
    "suboptimality_gap": "pl",
    "trainable_params": "ntk",
}
"""Public name -> the module of :mod:`lightning_lplr.functional` that defines it."""

__all__: list[str] = [
    "ExponentialFit",
    "LinearRateFit",
    "LinearRateFits",
    "LowerEnvelope",
    "ModelFn",
    "NTKImplementation",
    "NTKKind",
    "NTKPLBounds",
    "NormMode",
    "NormStatistics",
    "Regime",
    "SpectrumStats",
    "SublinearFit",
    "classify_regime",
    "classify_regime_rows",
    "clear_auto_cache",
    "eigenvalues",
    "empirical_ntk",
    "envelope_min",
    "envelope_quantile",
    "estimate_loss_star",
    "fit_exponential_offset",
    "fit_linear_rate",
    "fit_linear_rate_rows",
    "fit_sublinear_rate",
    "kernel_alignment",
    "kernel_distance",
    "ntk_gradient_norm_sq",
    "ntk_pl_bounds",
    "operator_norm",
    "pl_ratio",
    "predicted_contraction",
    "probe_statistics",
    "resolve_implementation",
    "spectrum_from_eigenvalues",
    "spectrum_stats",
    "stability_indicator",
    "suboptimality_gap",
    "trainable_params",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_lplr.functional.normalization import NormMode, NormStatistics, probe_statistics
    from lightning_lplr.functional.ntk import (
        ModelFn,
        NTKImplementation,
        NTKKind,
        clear_auto_cache,
        empirical_ntk,
        resolve_implementation,
        trainable_params,
    )
    from lightning_lplr.functional.pl import (
        ExponentialFit,
        LowerEnvelope,
        NTKPLBounds,
        envelope_min,
        envelope_quantile,
        estimate_loss_star,
        fit_exponential_offset,
        ntk_gradient_norm_sq,
        ntk_pl_bounds,
        pl_ratio,
        suboptimality_gap,
    )
    from lightning_lplr.functional.rate import (
        LinearRateFit,
        LinearRateFits,
        Regime,
        SublinearFit,
        classify_regime,
        classify_regime_rows,
        fit_linear_rate,
        fit_linear_rate_rows,
        fit_sublinear_rate,
        predicted_contraction,
        stability_indicator,
    )
    from lightning_lplr.functional.spectrum import (
        SpectrumStats,
        eigenvalues,
        kernel_alignment,
        kernel_distance,
        operator_norm,
        spectrum_from_eigenvalues,
        spectrum_stats,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


_LAZY.update(
    {
        "DEFAULT_NOISE_FACTOR": "linearization",
        "ForwardModeError": "linearization",
        "LinearizationGap": "linearization",
        "forward_mode_safe": "linearization",
        "linearization_gap": "linearization",
    }
)
__all__ += [
    "DEFAULT_NOISE_FACTOR",
    "ForwardModeError",
    "LinearizationGap",
    "forward_mode_safe",
    "linearization_gap",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_lplr.functional.linearization import (
        DEFAULT_NOISE_FACTOR,
        ForwardModeError,
        LinearizationGap,
        forward_mode_safe,
        linearization_gap,
    )
