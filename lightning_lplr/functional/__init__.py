"""Pure math on tensors and callables: NTK, spectrum, PL ratios and rates. No Lightning import."""

from lightning_lplr.functional.ntk import (
    ModelFn,
    NTKImplementation,
    NTKKind,
    empirical_ntk,
    resolve_implementation,
    trainable_params,
)

__all__: list[str] = [
    "ModelFn",
    "NTKImplementation",
    "NTKKind",
    "empirical_ntk",
    "resolve_implementation",
    "trainable_params",
]
