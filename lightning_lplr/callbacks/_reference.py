"""The reference point of a run: ``θ_0``, ``Θ_0`` and what was kept with them.

The NTK drift, the parameter drift, the region estimate, the linearisation gap and the
kernel-predicted loss all refer to the start of the fit: the parameters ``θ_0`` (a float32 copy,
on the device or in host memory, see ``theta0=``), the step they were kept at, the buffers and
probe normalisation statistics there (the function whose linearisation the gap measures), the
kernel ``Θ_0`` (float64, in host memory) with its extreme eigenvalues, the probe outputs ``f_0``
when ``Θ_0`` was computed at ``θ_0`` after the fact (budgeted runs), and the empirical Lipschitz
constant ``L̂`` of the region estimate, which grows with the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from lightning_lplr.callbacks._checkpoint import moved, plain, unplain

__all__ = ["Reference"]


@dataclass
class Reference:
    """What drift and linearisation refer to (see the module docstring); checkpointed with the run."""

    theta0: dict[str, Tensor] | None = None
    step: int = 0
    """The global step ``θ_0`` was kept at."""
    state0: dict[str, Any] = field(default_factory=dict)
    """Buffers and normalisation statistics at ``θ_0``."""
    kernel0: Tensor | None = None
    lambda_min0: float = math.nan
    lambda_max0: float = math.nan
    outputs0: Tensor | None = None
    """The probe outputs at ``θ_0`` when ``Θ_0`` was computed there after the fact, else ``None``."""
    lipschitz: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers on the CPU (keys as in earlier checkpoints)."""
        return {
            "theta0": None if self.theta0 is None else {k: v.cpu() for k, v in self.theta0.items()},
            "theta0_step": self.step,
            "state0": plain(moved(self.state0, "cpu")),
            "kernel0": None if self.kernel0 is None else self.kernel0.cpu(),
            "lambda_min0": self.lambda_min0,
            "lambda_max0": self.lambda_max0,
            "outputs0": None if self.outputs0 is None else self.outputs0.cpu(),
            "lipschitz": self.lipschitz,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta0 = state.get("theta0")
        self.step = state.get("theta0_step", 0)
        self.state0 = unplain(state.get("state0") or {})
        self.kernel0 = state.get("kernel0")
        self.lambda_min0 = state.get("lambda_min0", math.nan)
        self.lambda_max0 = state.get("lambda_max0", math.nan)
        self.outputs0 = state.get("outputs0")
        self.lipschitz = state.get("lipschitz", 0.0)
