"""What an NTK sample derives from the probe's outputs: PL ratio, μ_NTK, curvature, lazy-regime evidence.

Given the probe outputs ``f_t`` (and, with ``loss_fn``, the probe loss and ``g = ∂L/∂f``) and the
kernel of the sample, :class:`ProbeQuantities` computes

* ``pl/ratio_probe`` (full-batch PL ratio on the probe) and, for the full kernel, ``pl/mu_ntk``
  (its NTK lower bound ``λ_min(K)‖g‖²/(2Δ)``);
* ``curv/beta``: the Gauss–Newton sharpness ``λ_max(K^{1/2} H K^{1/2})`` of ``loss_fn`` on the
  probe (full kernel only), and ``ntk/eta_beta = η·β``;
* ``lin/gap``, ``lin/gap_rel``: how far ``f_t`` is from the linearisation at ``θ_0``
  (:func:`~lightning_lplr.functional.linearization_gap`, one jvp);
* ``lin/loss_pred``, ``lin/loss_probe``, ``lin/loss_ratio``: the probe loss plain gradient
  descent would reach on the model linearised at the first sample, where that prediction applies
  (a loss with a constant output Hessian, plain full-batch GD, full kernel, the probe is the
  training set); otherwise absent with the reason warned once.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_lplr.callbacks._journal import Journal
from lightning_lplr.callbacks._kernel import kept_loss
from lightning_lplr.functional.curvature import (
    KernelLossModel,
    gauss_newton_sharpness,
    has_constant_hessian,
    kernel_loss_model,
)
from lightning_lplr.functional.linearization import ForwardModeError, linearization_gap
from lightning_lplr.functional.objective import parameter_gradient_norm_sq
from lightning_lplr.functional.pl import ntk_gradient_norm_sq, ntk_pl_bounds, pl_ratio

__all__ = ["ProbeQuantities", "parameter_gradient"]


class ProbeQuantities:
    """Probe PL ratio, ``μ_NTK``, ``β``, linearisation gap and kernel-predicted loss (module docstring)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.reset()

    def reset(self) -> None:
        self.mu_ntk = math.nan
        self.beta = math.nan
        self.probe_loss: tuple[int, float] | None = None
        """``(step, loss_fn on the probe)`` of the latest sample, for the objective check."""
        self._loss_model: Any = None
        self._log_decay: Tensor | None = None
        self._model_step = -1
        self._pending_lrs: list[tuple[int, float]] = []

    # ------------------------------------------------------------------ loss and PL
    def loss_metrics(
        self,
        *,
        step: int,
        lr: float,
        loss_pred: str | None,
        kernel: Tensor | None,
        eigenvalues: Tensor | None,
        grad_norm_sq: Any,
        targets: Any,
        loss_fn: Any,
        outputs: Tensor,
        loss: float,
        g: Tensor,
        loss_star: float,
        mask: Tensor | None,
        reference: tuple[Tensor, Tensor, int] | None = None,
    ) -> dict[str, float]:
        """Probe PL ratio and ``μ_NTK``; with the full kernel ``β``, ``η·β`` and the kernel-predicted loss.

        With a sequence ``mask`` the full kernel holds the kept outputs only: ``g``, the outputs and
        the loss are restricted to them (masked outputs held at their values).
        """
        flat = None if mask is None else _flat_mask(mask, outputs)
        kept_g = g.reshape(-1) if flat is None else g.reshape(-1)[flat]
        metrics = self.pl_metrics(
            step=step,
            loss=loss,
            g=kept_g,
            loss_star=loss_star,
            kernel=kernel,
            eigenvalues=eigenvalues if kernel is not None else None,
            grad_norm_sq=grad_norm_sq,
        )
        if kernel is None:
            return metrics
        kept_outputs, kept_fn = outputs, loss_fn
        if flat is not None:
            kept_outputs, kept_fn = outputs.reshape(-1)[flat], kept_loss(loss_fn, outputs, flat)
            if reference is not None:
                reference = (reference[0], reference[1].reshape(-1)[flat], reference[2])
        metrics.update(self.curvature(kernel, kept_outputs, targets, kept_fn, lr))
        prediction = self.predicted_loss(
            step=step,
            reason=loss_pred,
            kernel=kernel,
            outputs=kept_outputs,
            targets=targets,
            loss_fn=kept_fn,
            loss=loss,
            reference=reference,
        )
        metrics.update(prediction)
        return metrics

    def pl_metrics(
        self,
        *,
        step: int,
        loss: float,
        g: Tensor,
        loss_star: float,
        kernel: Tensor | None,
        eigenvalues: Tensor | None,
        grad_norm_sq: Any,
    ) -> dict[str, float]:
        """``pl/ratio_probe`` and, for the full kernel, ``pl/mu_ntk`` (``grad_norm_sq()``: ``‖∇L‖²``)."""
        g64 = g.reshape(-1).to(torch.float64)
        squared = ntk_gradient_norm_sq(kernel, g64) if kernel is not None else float(grad_norm_sq())
        self.probe_loss = (step, loss)
        gap = loss - loss_star
        metrics = {"pl/ratio_probe": pl_ratio(squared, gap)}
        self.mu_ntk = math.nan
        if kernel is not None and gap > 0:
            self.mu_ntk = ntk_pl_bounds(kernel, g64, gap, kernel_eigenvalues=eigenvalues).lower
            metrics["pl/mu_ntk"] = self.mu_ntk
        return metrics

    def curvature(
        self, kernel: Tensor, outputs: Tensor, targets: Any, loss_fn: Any, lr: float
    ) -> dict[str, float]:
        """``curv/beta`` and ``ntk/eta_beta`` of the full kernel."""
        result = gauss_newton_sharpness(kernel, outputs.detach(), targets, loss_fn)
        self.beta = result.value
        if not result.converged:
            self.journal.warn_once(
                "beta_lanczos",
                f"the Gauss–Newton sharpness did not converge in {result.iterations} Lanczos iterations "
                f"(residual {result.residual:.3g}); curv/beta is logged with that uncertainty.",
            )
        return {"curv/beta": self.beta, "ntk/eta_beta": lr * self.beta}

    # ------------------------------------------------------------------ linearisation
    def linearization(
        self, fn0: Any, theta0: dict[str, Tensor], inputs: Any, params: dict[str, Tensor], outputs: Tensor
    ) -> dict[str, float]:
        """``lin/gap`` and ``lin/gap_rel`` (absent while the outputs have not moved beyond rounding)."""
        try:
            result = linearization_gap(fn0, theta0, inputs, params_t=params, ft=outputs)
        except ForwardModeError as err:
            return self.journal.skip(
                f"lin_{err.reason}", f"the linearisation gap needs forward-mode AD, which failed: {err}"
            )
        metrics = {"lin/gap": result.gap}
        if result.reason is None:
            metrics["lin/gap_rel"] = result.gap_rel
        return metrics

    # ------------------------------------------------------------------ kernel-predicted loss
    def observe_lr(self, step: int, lr: float) -> None:
        """The step size of the optimizer step ``step`` (kept until the kernel model has used it)."""
        self._pending_lrs.append((step, lr))
        if self._loss_model is None and len(self._pending_lrs) > 1_000_000:  # no model ever built
            del self._pending_lrs[:-1]

    def predicted_loss(
        self,
        *,
        step: int,
        reason: str | None,
        kernel: Tensor | None,
        outputs: Tensor,
        targets: Any,
        loss_fn: Any,
        loss: float,
        reference: tuple[Tensor, Tensor, int] | None = None,
    ) -> dict[str, float]:
        """``lin/loss_pred`` (and ``lin/loss_probe``, ``lin/loss_ratio``) at this sample.

        The model is built at the first sample where ``reason`` is ``None``, from ``reference``
        ``(K₀, f₀, step)`` at ``θ_0`` when given, else from this sample's kernel and outputs; later
        samples evaluate it after the step sizes taken since its step.
        """
        if reason is not None:
            self._warn_loss_pred(reason)
            return {}
        if self._loss_model is None:
            assert kernel is not None
            ref_kernel, ref_outputs, ref_step = (
                reference if reference is not None else (kernel, outputs, step)
            )
            if not has_constant_hessian(loss_fn, ref_outputs.detach().double(), None, targets):
                self._warn_loss_pred("the loss has no constant output Hessian (not a squared loss)")
                return {}
            try:
                self._loss_model = kernel_loss_model(  # the Hessian was checked just above
                    ref_kernel, ref_outputs.detach(), targets, loss_fn, check_constant=False
                )
            except ValueError as err:
                self._warn_loss_pred(str(err))
                return {}
            self._model_step, self._log_decay = ref_step, None
        model = self._loss_model
        # The steps taken since the model's reference and before this sample's step.
        lrs = [lr for s, lr in self._pending_lrs if self._model_step <= s < step]
        self._pending_lrs = [(s, lr) for s, lr in self._pending_lrs if s >= step]
        self._log_decay = model.log_decay(lrs, initial=self._log_decay)
        predicted = float(model.loss_from_log_decay(self._log_decay))
        return {
            "lin/loss_pred": predicted,
            "lin/loss_probe": loss,
            "lin/loss_ratio": loss / predicted if predicted > 0 else math.nan,
        }

    def _warn_loss_pred(self, reason: str) -> None:
        self.journal.warn_once(
            "loss_pred",
            f"lin/loss_pred (the probe loss predicted by the initial kernel) is not logged: {reason}. It "
            "applies to a squared loss trained by plain full-batch gradient descent, with the full kernel "
            "of a probe that is the whole training set and loss_fn set to the training objective.",
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        model = self._loss_model
        return {
            "mu_ntk": self.mu_ntk,
            "beta": self.beta,
            "probe_loss": self.probe_loss,
            "loss_model": None if model is None else {k: _cpu(v) for k, v in model._asdict().items()},
            "log_decay": None if self._log_decay is None else self._log_decay.cpu(),
            "model_step": self._model_step,
            "pending_lrs": [list(pair) for pair in self._pending_lrs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu_ntk = state.get("mu_ntk", math.nan)
        self.beta = state.get("beta", math.nan)
        self.probe_loss = state.get("probe_loss")
        model = state.get("loss_model")
        self._loss_model = None if model is None else KernelLossModel(**model)
        self._log_decay = state.get("log_decay")
        self._model_step = state.get("model_step", -1)
        self._pending_lrs = [(int(s), float(lr)) for s, lr in state.get("pending_lrs", [])]


def _cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, Tensor) else value


def parameter_gradient(fn: Any, params: dict[str, Tensor], inputs: Any, targets: Any, loss_fn: Any) -> Any:
    """A thunk for ``‖∇_θ L‖²`` on the probe by autograd (kernels other than the full one)."""
    return lambda: parameter_gradient_norm_sq(fn, params, inputs, targets, loss_fn)


def _flat_mask(mask: Tensor, outputs: Tensor) -> Tensor:
    """The ``(m, L)`` position mask broadcast over the outputs and flattened (sample-major)."""
    shape = mask.shape + (1,) * (outputs.ndim - mask.ndim)
    return mask.reshape(shape).expand(outputs.shape).reshape(-1)
