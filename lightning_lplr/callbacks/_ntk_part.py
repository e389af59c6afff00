"""The NTK part of a monitor: the probe, the kernel at scheduled steps, its spectrum, drift and region.

At each sample the part evaluates the probe once (outputs, and with ``loss_fn`` the probe loss
and its output gradient), computes the probe kernel (row-sharded over ranks, see
:mod:`._collective`), its spectrum and drift from the first sample under the kind's own key
prefix, the parameter drift, and for the full kernel the region estimate
(:mod:`lightning_lplr.functional.region`); :mod:`._probe_quantities` adds the PL ratio on the
probe, ``μ_NTK``, the curvature ``β``, the linearisation gap and the kernel-predicted loss.
Everything runs on detached parameters through ``torch.func.functional_call`` on the plain
module (never the DDP wrapper), with modes and every RNG restored (:mod:`._isolation`), in
float32 whatever the training precision, under the configured ``norm_mode``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_lplr.callbacks._budget import NTKBudget
from lightning_lplr.callbacks._checkpoint import moved
from lightning_lplr.callbacks._collective import Collective, any_failed, split_spectra
from lightning_lplr.callbacks._config import NTKConfig
from lightning_lplr.callbacks._isolation import compute_context, float32_state, preserved
from lightning_lplr.callbacks._journal import Journal
from lightning_lplr.callbacks._kernel import (
    gathered,
    kernel_block,
    plan_kernel,
    reference_kernel,
    theta0_device,
)
from lightning_lplr.callbacks._model_call import (
    ModelCall,
    bind_model,
    cache_off,
    check_model,
    reference_call,
    reference_state,
    tree_map,
)
from lightning_lplr.callbacks._probe_quantities import ProbeQuantities, parameter_gradient
from lightning_lplr.callbacks._reference import Reference
from lightning_lplr.callbacks._step_parts import GapSeries
from lightning_lplr.callbacks.probe import Probe, training_probe
from lightning_lplr.functional.linearization import load_forward_mode
from lightning_lplr.functional.normalization import probe_statistics, with_norm_mode
from lightning_lplr.functional.ntk import trainable_params
from lightning_lplr.functional.objective import output_gradient
from lightning_lplr.functional.region import parameter_distance, region_estimate, relative_drift
from lightning_lplr.functional.spectrum import kernel_distance, spectrum_from_eigenvalues
from lightning_lplr.reporting.keys import KIND_PREFIXES
from lightning_lplr.schedules import every_n_steps

__all__ = ["NTKPart"]

_HALF = (torch.float16, torch.bfloat16)


class NTKPart:
    """Probe, kernel samples and what is derived from them (see the module docstring).

    Args:
        config: the monitor's checked NTK configuration.
        kernel: whether the kernel is computed (``False``: only the probe PL ratio, for a
            ``PLMonitor`` with ``loss_fn``).
        gaps: the ``L*`` strategy of the probe losses.
        journal: the monitor's skip counters and warnings.
    """

    def __init__(self, config: NTKConfig, *, kernel: bool, gaps: GapSeries, journal: Journal) -> None:
        self.config = config
        self.schedule = config.ntk_every
        self.with_kernel = kernel
        self.gaps = gaps
        self.journal = journal
        self.quantities = ProbeQuantities(journal)
        self.budget: NTKBudget | None = None
        if kernel and config.overhead is not None:
            candidates = config.ntk_every if config.ntk_every_explicit else every_n_steps(1)
            self.budget = NTKBudget(config.overhead, candidates)
        self.reset()

    def reset(self) -> None:
        """Forget the run (a new fit without a checkpoint)."""
        self.probe: Probe | None = None
        self.ref = Reference()
        """``θ_0``, ``Θ_0`` and what was kept with them: what drift and linearisation refer to."""
        self.probe_losses: deque[tuple[int, float]] = deque(maxlen=self.gaps.window.maxlen)
        self.last_step = -1
        self.eigenvalues: Tensor | None = None
        """Eigenvalues of ``Θ`` at the latest sample (for histograms), or ``None``."""
        self._call: ModelCall | None = None
        self._half = False
        self._kernel_eigs: Tensor | None = None
        self._failures = 0
        self._backoff = 0
        if self.budget is not None:
            self.budget.reset()
        self.kind = self.config.kind
        """The kernel kind sampled: the configured one, unless it does not fit the memory budget."""
        self.chunk_size = self.config.chunk_size
        self.mask: Tensor | None = None
        """``(m, L)`` kept positions of sequence outputs (padding, ignored labels out), or ``None``."""
        self.quantities.reset()

    @property
    def mu_ntk(self) -> float:
        return self.quantities.mu_ntk

    @property
    def beta(self) -> float:
        return self.quantities.beta

    # ------------------------------------------------------------------ schedule and setup
    def wants(self, step: int) -> bool:
        """Whether to sample at ``step`` (call it at every step, on every rank).

        With an overhead budget the planner decides (:mod:`._budget`, rank 0's decision on every
        rank); without, a scheduled step, and the first step of a fit. A failed sample is retried
        only at a later such step: the next one after the first failure, then skipping 1, 3, 7, …
        of them after 2, 3, 4, … failures in a row (exponential back-off), so a model on which the
        NTK cannot be computed costs a handful of attempts, not one per step.
        """
        if self.with_kernel and self.budget is not None:
            candidate = self.budget.decide(step)
        elif self.with_kernel:
            candidate = bool(self.schedule(step)) or (self.ref.kernel0 is None and self.last_step < 0)
        else:
            candidate = self.config.loss_fn is not None and bool(self.schedule(step))
        if step == self.last_step:
            return False
        if candidate and self._backoff > 0:
            self._backoff -= 1
            return False
        return candidate

    def needs_reference(self, step: int) -> bool:
        """Whether ``Θ_0`` must first be computed at ``θ_0`` (a budgeted first sample comes later)."""
        first = self.budget is not None and self.ref.kernel0 is None and self.ref.theta0 is not None
        return first and self.ref.step < step

    def reference(self, pl_module: pl.LightningModule, collective: Collective) -> None:
        """``Θ_0`` and the outputs ``f_0`` at ``θ_0`` (kept at the start), on every rank.

        Under a budget the first sample comes later than step 0; the drift, the region estimate
        and the kernel-predicted loss still refer to the initialisation. A failure leaves ``Θ_0``
        unset: the sample then takes its own kernel as the reference, as without a budget.
        """
        assert self.probe is not None and self._call is not None and self.ref.theta0 is not None
        theta0 = {k: v.to(pl_module.device) for k, v in self.ref.theta0.items()}
        with self._isolated(pl_module):
            at_theta0 = reference_call(self._call, self.ref.state0)
            found = reference_kernel(
                at_theta0,
                self.probe,
                theta0,
                collective,
                self._settings(),
                self.ref.state0,
                self.config.loss_fn,
            )
        if found is not None:
            self.ref.kernel0, self.ref.lambda_min0, self.ref.lambda_max0, self.ref.outputs0 = found
        if self.with_kernel:
            load_forward_mode()  # the linearization gap's first jvp, else charged to a sample

    def _failed(self, failed: bool) -> None:
        """Record whether the sample just taken failed (sets the back-off of :meth:`wants`)."""
        self._failures = self._failures + 1 if failed else 0
        self._backoff = 2 ** (self._failures - 1) - 1 if failed else 0

    def on_train_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, collective: Collective
    ) -> None:
        """Choose the probe (rank zero's choice on every rank), keep ``θ_0``, check the model runs on it."""
        device = pl_module.device
        params = self.bind(pl_module)
        if self.probe is None:
            self.probe = collective.broadcast(
                training_probe(self.config, trainer, pl_module, self.journal), src=0
            )
        self.probe = self.probe.to(device, float32=self._half)
        assert self._call is not None
        with self._isolated(pl_module), torch.no_grad():
            check_model(
                self._call, self.probe, self._params(pl_module), self.journal.owner, self.config.probe
            )
        if self.with_kernel:
            self._plan(pl_module, collective)
        where = theta0_device(self.config.theta0, params, self.config.max_memory_bytes, device)
        if self.ref.theta0 is None:
            self.ref.theta0 = {k: v.to(where, copy=True) for k, v in float32_state(params).items()}
            self.ref.step = trainer.global_step
            with self._isolated(pl_module):
                self.ref.state0 = reference_state(
                    self._call, self.probe, self._params(pl_module), self._half, self.config.norm_mode
                )
        else:
            self.ref.theta0 = {k: v.to(where) for k, v in self.ref.theta0.items()}
            self.ref.state0 = moved(self.ref.state0, device)
        if self.ref.kernel0 is not None:
            self.ref.kernel0 = self.ref.kernel0.cpu()  # Θ_0 stays on the CPU (moved per sample where needed)
        if self.ref.outputs0 is not None:
            self.ref.outputs0 = self.ref.outputs0.to(device)

    def _plan(self, pl_module: pl.LightningModule, collective: Collective) -> None:
        """Which outputs count (sequence masks) and which kernel fits the memory budget; said once."""
        assert self.probe is not None and self._call is not None
        with self._isolated(pl_module), torch.no_grad():
            plan, self.mask = plan_kernel(
                self.config, self._call, self.probe, self._params(pl_module), collective, pl_module.device
            )
        owner = self.journal.owner
        if isinstance(plan, str):  # not even two samples fit: monitor without a kernel
            self.with_kernel = False
            self.journal.warn_once("ntk_memory", f"{owner} samples no NTK in this run: {plan}")
            return
        self.kind, self.chunk_size = plan.kind, plan.chunk_size
        if plan.probe_size < self.probe.size:
            self.probe = Probe(
                self.probe.rows(slice(0, plan.probe_size)), _rows(self.probe.y, plan.probe_size)
            )
            self.mask = None if self.mask is None else self.mask[: plan.probe_size]
        if plan.reason:
            self.journal.warn_once("ntk_memory", f"{owner}: {plan.reason}.")

    def bind(self, pl_module: nn.Module) -> dict[str, Tensor]:
        """Call ``pl_module`` from now on (float32 copies of buffers under half precision); its parameters."""
        self._call, self._half = bind_model(pl_module, self.config.output_fn)
        return trainable_params(pl_module)

    def _params(self, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        params = trainable_params(pl_module)
        return float32_state(params) if self._half else params

    def _isolated(self, pl_module: pl.LightningModule) -> contextlib.ExitStack:
        """Modes and RNG restored, gradients on, autocast off, cache off, eval mode (dropout off)."""
        stack = contextlib.ExitStack()
        for context in (preserved(pl_module), compute_context(pl_module), cache_off(pl_module)):
            stack.enter_context(context)
        pl_module.eval()
        return stack

    # ------------------------------------------------------------------ one sample
    def sample(
        self,
        pl_module: pl.LightningModule,
        step: int,
        collective: Collective,
        lr: float,
        loss_pred: str | None,
    ) -> dict[str, float]:
        """Everything measured at ``step`` (keys without prefix); every rank must call it.

        ``loss_pred``: ``None`` when the kernel-predicted loss applies to the run, else why not.
        """
        self.last_step = step
        started = time.perf_counter()
        self.eigenvalues = self._kernel_eigs = None
        config = self.config
        assert self.probe is not None and self._call is not None
        with self._isolated(pl_module):
            params = self._params(pl_module)
            x, y = self.probe.x, self.probe.y
            # Everything a rank computes on its own first; then all ranks agree on failures
            # before any collective, so a fault on one rank never leaves the others waiting.
            error: BaseException | None = None
            statistics = block = outputs = loss = g = None
            try:
                if config.norm_mode == "probe":
                    statistics = probe_statistics(self._call, x, params=params)
                fn = with_norm_mode(self._call, config.norm_mode, statistics)
                with torch.no_grad():
                    outputs = fn(params, x)
                if config.loss_fn is not None and y is not None:
                    loss, g = output_gradient(config.loss_fn, outputs, y)
                if self.with_kernel:
                    block = kernel_block(
                        self._call, self.probe, params, collective, self._settings(), statistics, g
                    )
            except Exception as err:  # the user's run must go on, whatever the sample hit (OOM included)
                error = err
            if any_failed(collective, error is not None, pl_module.device):
                self._failed(True)
                error = error or RuntimeError("the NTK sample failed on another rank")
                return self.journal.skip(
                    "ntk_error", f"the NTK sample raised {type(error).__name__}: {error}"
                )
            assert outputs is not None
            kernel = None if block is None else gathered(block, collective, self.probe.size, config.norm_mode)
            metrics: dict[str, float] = {}
            if kernel is not None:
                metrics.update(self._kernel_metrics(kernel, params, collective))
            full = kernel is not None and self.kind == "full" and self._kernel_eigs is not None
            if config.loss_fn is not None and y is None:
                self.journal.warn_once(
                    "no_targets", "loss_fn is set but the probe has no targets; pass target_fn=."
                )
            elif loss is not None and g is not None:
                full_kernel = kernel if full else None
                self.probe_losses.append((step, loss))
                loss_star = self.gaps.star(self.probe_losses)
                metrics.update(
                    self._guarded(
                        lambda: self.quantities.loss_metrics(
                            step=step,
                            lr=lr,
                            loss_pred=loss_pred,
                            kernel=full_kernel,
                            eigenvalues=self._kernel_eigs,
                            grad_norm_sq=parameter_gradient(fn, params, x, y, config.loss_fn),
                            targets=y,
                            loss_fn=config.loss_fn,
                            outputs=outputs,
                            loss=loss,
                            g=g,
                            loss_star=loss_star,
                            mask=self.mask,
                            reference=None
                            if self.ref.outputs0 is None or self.ref.kernel0 is None
                            else (self.ref.kernel0, self.ref.outputs0, self.ref.step),
                        )
                    )
                )
            if self.with_kernel:
                metrics.update(self._guarded(lambda: self._linearization(params, outputs)))
        self._failed(self.with_kernel and self.eigenvalues is None)  # no spectrum: the kernel failed
        metrics["cost/ntk_seconds"] = time.perf_counter() - started
        return metrics

    def _guarded(self, compute: Any) -> dict[str, float]:
        """``compute()``'s metrics, or a counted skip if it raises (it holds no collective)."""
        try:
            return compute()
        except Exception as err:
            return self.journal.skip(
                "ntk_error", f"a quantity of the NTK sample raised {type(err).__name__}: {err}"
            )

    def _settings(self) -> dict[str, Any]:
        """How the kernel is computed: the planned kind and chunking, the configured rest."""
        config = self.config
        return {
            "kind": self.kind,
            "implementation": config.implementation,
            "chunk_size": self.chunk_size,
            "max_memory_bytes": config.max_memory_bytes,
            "norm_mode": config.norm_mode,
            "mask": self.mask,
        }

    def _spectra(self, collective: Collective, kernel: Tensor) -> tuple[Tensor, float]:
        """Eigenvalues of ``K`` and ``‖K − K_0‖₂`` (split over ranks 0 and 1, see :func:`split_spectra`)."""
        return split_spectra(collective, kernel, self.ref.kernel0)

    def _kernel_metrics(
        self, kernel: Tensor, params: dict[str, Tensor], collective: Collective
    ) -> dict[str, float]:
        """Spectrum and drift under the kind's prefix; parameter drift; the region estimate (full kernel)."""
        assert self.probe is not None and self.ref.theta0 is not None
        m = self.probe.size
        if not bool(torch.isfinite(kernel).all()):  # the same kernel on every rank: all skip together
            return self.journal.skip("ntk_error", "the NTK has non-finite entries")
        eigs, distance = self._spectra(collective, kernel)
        stats = spectrum_from_eigenvalues(eigs / m)
        if not math.isfinite(stats.lambda_max):
            return self.journal.skip("ntk_error", "the NTK eigen solver did not converge")
        self.eigenvalues = stats.eigenvalues
        self._kernel_eigs = eigs
        if self.ref.kernel0 is None:
            self.ref.kernel0 = kernel.detach().to("cpu", copy=True)  # Θ_0 on the CPU
            self.ref.lambda_min0, self.ref.lambda_max0 = stats.lambda_min, stats.lambda_max
        # ‖Θ_0‖₂ = max |λ(Θ_0)|: the extreme eigenvalues of the first sample, kept.
        norm0 = max(abs(self.ref.lambda_min0), abs(self.ref.lambda_max0))
        head = KIND_PREFIXES[self.kind]
        metrics = {
            head + "lambda_min": stats.lambda_min,
            head + "lambda_max": stats.lambda_max,
            head + "condition_number": stats.condition_number,
            head + "trace": stats.trace,
            head + "effective_rank": stats.effective_rank,
            head + "drift_op": relative_drift(distance / m, norm0),
            head + "drift_fro": kernel_distance(kernel, self.ref.kernel0, norm="fro"),
            "param/drift": parameter_distance(params, self.ref.theta0),
        }
        if self.kind == "full":
            region = region_estimate(
                self.ref.lambda_min0, distance / m, metrics["param/drift"], self.ref.lipschitz
            )
            self.ref.lipschitz = region.lipschitz
            metrics.update(
                {
                    "ntk/lipschitz": region.lipschitz,
                    "region/mu_cert": region.mu_cert,
                    "region/inside": float(region.inside),
                }
            )
        return metrics

    def _linearization(self, params: dict[str, Tensor], outputs: Tensor) -> dict[str, float]:
        """``lin/gap`` and ``lin/gap_rel`` against the model linearised at ``θ_0`` (with its statistics)."""
        assert self.probe is not None and self.ref.theta0 is not None
        assert self._call is not None
        at_theta0 = reference_call(self._call, self.ref.state0)
        fn0 = with_norm_mode(at_theta0, self.config.norm_mode, self.ref.state0.get("statistics"))
        return self.quantities.linearization(fn0, self.ref.theta0, self.probe.x, params, outputs)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        probe = self.probe
        return {
            "probe_x": None if probe is None else moved(probe.x, "cpu"),
            "probe_y": None if probe is None or probe.y is None else moved(probe.y, "cpu"),
            **self.ref.state_dict(),
            "probe_losses": list(self.probe_losses),
            "last_ntk_step": self.last_step,
            "budget": None if self.budget is None else self.budget.state_dict(),
            "quantities": self.quantities.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = state.get("probe_x")
        self.probe = None if x is None else Probe(x, state.get("probe_y"))
        self.ref.load_state_dict(state)
        self.probe_losses = deque(state.get("probe_losses", []), maxlen=self.gaps.window.maxlen)
        self.last_step = state.get("last_ntk_step", -1)
        if self.budget is not None and state.get("budget") is not None:
            self.budget.load_state_dict(state["budget"])
        self.quantities.load_state_dict(state.get("quantities", state))


def _rows(value: Any, n: int) -> Any:
    """The first ``n`` rows of a tensor / pytree (``None`` stays ``None``)."""
    return None if value is None else tree_map(lambda t: t[:n], value)
