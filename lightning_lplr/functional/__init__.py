"""Pure math on tensors and callables: NTK, spectrum, PL ratios, rates, region, curvature. No Lightning.

Names are imported on first use (PEP 562): ``from lightning_lplr.functional import fit_linear_rate``
loads only the module that defines it, and nothing here ever imports Lightning. Every public name of a
public module (ntk, spectrum, pl, rate, region, objective, curvature, linearization, normalization)
is exported here (a test keeps this list complete).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "ArrayLike": "rate",
    "DEFAULT_NOISE_FACTOR": "linearization",
    "DENSE_MAX_SIZE": "curvature",
    "ExponentialFit": "pl",
    "ForwardModeError": "linearization",
    "GaussNewtonSharpness": "curvature",
    "KernelLike": "spectrum",
    "KernelLossModel": "curvature",
    "LinearRateFit": "rate",
    "LinearRateFits": "rate",
    "LinearizationGap": "linearization",
    "LossFn": "curvature",
    "LowerEnvelope": "pl",
    "ModelFn": "ntk",
    "NTKImplementation": "ntk",
    "NTKKind": "ntk",
    "NTKPLBounds": "pl",
    "NormMode": "normalization",
    "NormStatistics": "normalization",
    "Regime": "rate",
    "RegionEstimate": "region",
    "RowsLike": "rate",
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
    "forward_mode_safe": "linearization",
    "gauss_newton_sharpness": "curvature",
    "has_constant_hessian": "curvature",
    "kernel_alignment": "spectrum",
    "kernel_distance": "spectrum",
    "kernel_loss_model": "curvature",
    "kernel_predicted_loss": "curvature",
    "linearization_gap": "linearization",
    "ntk_gradient_norm_sq": "pl",
    "ntk_pl_bounds": "pl",
    "operator_norm": "spectrum",
    "output_gradient": "objective",
    "output_hessian": "curvature",
    "output_hvp": "curvature",
    "parameter_distance": "region",
    "parameter_gradient_norm_sq": "objective",
    "pl_ratio": "pl",
    "predicted_contraction": "rate",
    "probe_statistics": "normalization",
    "region_estimate": "region",
    "relative_drift": "region",
    "resolve_implementation": "ntk",
    "spectrum_from_eigenvalues": "spectrum",
    "spectrum_stats": "spectrum",
    "stability_indicator": "rate",
    "suboptimality_gap": "pl",
    "symmetric_operator_distance": "region",
    "trainable_params": "ntk",
    "with_norm_mode": "normalization",
}
"""Public name -> the module of :mod:`lightning_lplr.functional` that defines it."""

__all__: list[str] = [
    "DEFAULT_NOISE_FACTOR",
    "DENSE_MAX_SIZE",
    "ArrayLike",
    "ExponentialFit",
    "ForwardModeError",
    "GaussNewtonSharpness",
    "KernelLike",
    "KernelLossModel",
    "LinearRateFit",
    "LinearRateFits",
    "LinearizationGap",
    "LossFn",
    "LowerEnvelope",
    "ModelFn",
    "NTKImplementation",
    "NTKKind",
    "NTKPLBounds",
    "NormMode",
    "NormStatistics",
    "Regime",
    "RegionEstimate",
    "RowsLike",
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
    "forward_mode_safe",
    "gauss_newton_sharpness",
    "has_constant_hessian",
    "kernel_alignment",
    "kernel_distance",
    "kernel_loss_model",
    "kernel_predicted_loss",
    "linearization_gap",
    "ntk_gradient_norm_sq",
    "ntk_pl_bounds",
    "operator_norm",
    "output_gradient",
    "output_hessian",
    "output_hvp",
    "parameter_distance",
    "parameter_gradient_norm_sq",
    "pl_ratio",
    "predicted_contraction",
    "probe_statistics",
    "region_estimate",
    "relative_drift",
    "resolve_implementation",
    "spectrum_from_eigenvalues",
    "spectrum_stats",
    "stability_indicator",
    "suboptimality_gap",
    "symmetric_operator_distance",
    "trainable_params",
    "with_norm_mode",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_lplr.functional.curvature import (
        DENSE_MAX_SIZE,
        GaussNewtonSharpness,
        KernelLossModel,
        LossFn,
        gauss_newton_sharpness,
        has_constant_hessian,
        kernel_loss_model,
        kernel_predicted_loss,
        output_hessian,
        output_hvp,
    )
    from lightning_lplr.functional.linearization import (
        DEFAULT_NOISE_FACTOR,
        ForwardModeError,
        LinearizationGap,
        forward_mode_safe,
        linearization_gap,
    )
    from lightning_lplr.functional.normalization import (
        NormMode,
        NormStatistics,
        probe_statistics,
        with_norm_mode,
    )
    from lightning_lplr.functional.ntk import (
        ModelFn,
        NTKImplementation,
        NTKKind,
        clear_auto_cache,
        empirical_ntk,
        resolve_implementation,
        trainable_params,
    )
    from lightning_lplr.functional.objective import (
        output_gradient,
        parameter_gradient_norm_sq,
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
        ArrayLike,
        LinearRateFit,
        LinearRateFits,
        Regime,
        RowsLike,
        SublinearFit,
        classify_regime,
        classify_regime_rows,
        fit_linear_rate,
        fit_linear_rate_rows,
        fit_sublinear_rate,
        predicted_contraction,
        stability_indicator,
    )
    from lightning_lplr.functional.region import (
        RegionEstimate,
        parameter_distance,
        region_estimate,
        relative_drift,
        symmetric_operator_distance,
    )
    from lightning_lplr.functional.spectrum import (
        KernelLike,
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
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
