"""The NTK part of a monitor: the probe, the kernel at scheduled steps, its spectrum, drift and region.

At each sample the part computes the probe kernel (row-sharded over ranks, see
:mod:`._collective`), its spectrum, the drift from the first sample, the parameter drift and the
region estimate (:mod:`lightning_lplr.functional.region`), and with ``loss_fn`` the full-batch
PL ratio on the probe and its NTK lower bound ``μ_NTK``. Everything runs on detached
parameters through ``torch.func.functional_call`` on the plain module (never the DDP wrapper),
with modes and every RNG restored (:mod:`._isolation`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader

from lightning_lplr.callbacks._collective import Collective, any_failed, gather_rows, shards, split_spectra
from lightning_lplr.callbacks._config import NTKConfig
from lightning_lplr.callbacks._isolation import compute_context, preserved
from lightning_lplr.callbacks._journal import Journal
from lightning_lplr.callbacks._step_parts import GapSeries
from lightning_lplr.callbacks.probe import Probe, select_probe
from lightning_lplr.functional.ntk import empirical_ntk, trainable_params
from lightning_lplr.functional.objective import output_gradient, parameter_gradient_norm_sq
from lightning_lplr.functional.pl import ntk_gradient_norm_sq, ntk_pl_bounds, pl_ratio
from lightning_lplr.functional.region import parameter_distance, region_estimate, relative_drift
from lightning_lplr.functional.spectrum import kernel_distance, spectrum_from_eigenvalues, spectrum_stats

__all__ = ["NTKPart"]


class NTKPart:
    """Probe, kernel samples and what is derived from them (see the module docstring).

    Args:
        config: the monitor's checked NTK configuration (``kind``, ``probe_size``, ``ntk_every``, ``probe``,
            ``probe_seed``, ``input_fn``, ``target_fn``, ``output_fn``, ``loss_fn``,
            ``implementation``, ``chunk_size``, ``max_memory_bytes``).
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
        self.reset()

    def reset(self) -> None:
        """Forget the run (a new fit without a checkpoint)."""
        self.probe: Probe | None = None
        self.theta0: dict[str, Tensor] | None = None
        self.kernel0: Tensor | None = None
        self.lambda_min0 = math.nan
        self.lambda_max0 = math.nan
        self.lipschitz = 0.0
        self.probe_losses: deque[tuple[int, float]] = deque(maxlen=self.gaps.window.maxlen)
        self.last_step = -1
        self.beta = math.nan
        self.mu_ntk = math.nan
        self.eigenvalues: Tensor | None = None
        """Eigenvalues of ``Θ`` at the latest sample (for histograms), or ``None``."""
        self._kernel_eigs: Tensor | None = None

    # ------------------------------------------------------------------ schedule and setup
    def wants(self, step: int) -> bool:
        """Whether to sample at ``step`` (the first sample of a run is always taken)."""
        if step == self.last_step:
            return False
        if self.with_kernel:
            return self.kernel0 is None or bool(self.schedule(step))
        return self.config.loss_fn is not None and bool(self.schedule(step))

    def needs_probe(self) -> bool:
        return self.with_kernel or self.config.loss_fn is not None

    def on_train_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, collective: Collective
    ) -> None:
        """Choose the probe (rank zero's choice on every rank), keep ``θ_0``, move state to the device."""
        device = pl_module.device
        if self.needs_probe():
            if self.probe is None:
                self.probe = collective.broadcast(self._select_probe(trainer), src=0)
            self.probe = self.probe.to(device)
            self._check_output(pl_module)
        if self.theta0 is None:
            self.theta0 = {k: v.clone() for k, v in trainable_params(pl_module).items()}
        else:
            self.theta0 = {k: v.to(device) for k, v in self.theta0.items()}
        if self.kernel0 is not None:
            self.kernel0 = self.kernel0.to(device)

    def _select_probe(self, trainer: pl.Trainer) -> Probe:
        config = self.config
        source = config.probe
        if source is None:
            source = trainer.train_dataloader
            if isinstance(source, (list, tuple)) and source and isinstance(source[0], DataLoader):
                source = source[0]
            if source is None:
                raise ValueError(
                    f"{self.journal.owner} found no training dataloader to draw the probe from; pass probe=."
                )
        return select_probe(
            source,
            config.probe_size,
            seed=config.probe_seed,
            input_fn=config.input_fn,
            target_fn=config.target_fn,
        )

    def model_fn(self, pl_module: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
        """``f(params, x)`` of the plain module, with ``output_fn`` applied."""
        output_fn = self.config.output_fn

        def fn(params: dict[str, Tensor], x: Tensor) -> Tensor:
            out = functional_call(pl_module, params, (x,))
            return output_fn(out) if output_fn is not None else out

        return fn

    def _check_output(self, pl_module: pl.LightningModule) -> None:
        assert self.probe is not None
        with preserved(pl_module), torch.no_grad():
            pl_module.eval()
            out = self.model_fn(pl_module)(trainable_params(pl_module), self.probe.x[:1])
        if not isinstance(out, Tensor):
            raise ValueError(
                f"the model returned a {type(out).__name__}, not a tensor, so the NTK cannot be formed; pass "
                "output_fn=lambda out: out['logits'] (or whatever picks the output tensor) to the monitor."
            )

    # ------------------------------------------------------------------ one sample
    def sample(
        self, pl_module: pl.LightningModule, step: int, collective: Collective, lr: float
    ) -> dict[str, float]:
        """Everything measured at ``step`` (keys without prefix); every rank must call it."""
        self.last_step = step
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        self.eigenvalues = None
        with preserved(pl_module), compute_context(pl_module):
            pl_module.eval()
            kernel = self._kernel(pl_module, collective) if self.with_kernel else None
            if self.with_kernel and kernel is None:
                return {"skipped/ntk_error": float(self.journal.skips["ntk_error"])}
            if kernel is not None:
                metrics.update(self._ntk_metrics(pl_module, kernel, collective, lr))
            if self.config.loss_fn is not None:
                metrics.update(self._probe_pl_metrics(pl_module, kernel, step))
        metrics["cost/ntk_seconds"] = time.perf_counter() - started
        return metrics

    def _kernel(self, pl_module: pl.LightningModule, collective: Collective) -> Tensor | None:
        """The probe kernel on every rank, or ``None`` when any rank failed (all ranks skip together)."""
        assert self.probe is not None
        config = self.config
        x = self.probe.x
        world = collective.world_size
        rows, _ = shards(x.shape[0], world)[collective.rank]
        error: BaseException | None = None
        block: Tensor | None = None
        try:
            kwargs = {
                "params": trainable_params(pl_module),
                "kind": config.kind,
                "implementation": config.implementation,
                "chunk_size": config.chunk_size,
                "max_memory_bytes": config.max_memory_bytes,
            }
            fn = self.model_fn(pl_module)
            block = empirical_ntk(fn, x, **kwargs) if world == 1 else empirical_ntk(fn, x[rows], x, **kwargs)
        except Exception as err:  # the user's run must go on, whatever the NTK hit (OOM included)
            error = err
        if any_failed(collective, error is not None, pl_module.device):
            error = error or RuntimeError("the NTK computation failed on another rank")
            self.journal.skip("ntk_error", f"the NTK computation raised {type(error).__name__}: {error}")
            return None
        assert block is not None
        if world == 1:
            return block.to(torch.float64)
        # Gather in the kernel's own dtype (float32 moves half the bytes), then widen.
        return gather_rows(collective, block, x.shape[0]).to(torch.float64)

    def _spectra(self, collective: Collective, kernel: Tensor) -> tuple[Tensor, float]:
        """Eigenvalues of ``K`` and ``‖K − K_0‖₂`` (split over ranks 0 and 1, see :func:`split_spectra`)."""
        return split_spectra(collective, kernel, self.kernel0)

    def _ntk_metrics(
        self, pl_module: pl.LightningModule, kernel: Tensor, collective: Collective, lr: float
    ) -> dict[str, float]:
        assert self.probe is not None and self.theta0 is not None
        m = self.probe.size
        if not bool(torch.isfinite(kernel).all()):  # the same kernel on every rank: all skip together
            return self.journal.skip("ntk_error", "the NTK has non-finite entries")
        eigs, distance = self._spectra(collective, kernel)
        stats = spectrum_from_eigenvalues(eigs / m)
        if not math.isfinite(stats.lambda_max):
            return self.journal.skip("ntk_error", "the NTK eigen solver did not converge")
        self.eigenvalues = stats.eigenvalues
        self._kernel_eigs = eigs
        if self.kernel0 is None:
            self.kernel0 = kernel.detach().clone()
            self.lambda_min0, self.lambda_max0 = stats.lambda_min, stats.lambda_max
        if math.isnan(self.lambda_max0):  # not yet known (e.g. an old checkpoint)
            stats0 = spectrum_stats(self.kernel0, normalize=m)
            self.lambda_min0, self.lambda_max0 = stats0.lambda_min, stats0.lambda_max
        # ‖Θ_0‖₂ = max |λ(Θ_0)|: the extreme eigenvalues of the first sample, kept.
        extremes = [abs(v) for v in (self.lambda_min0, self.lambda_max0) if math.isfinite(v)]
        norm0 = max(extremes) if extremes else math.nan
        drift_op = relative_drift(distance / m, norm0)
        radius = parameter_distance(trainable_params(pl_module), self.theta0)
        region = region_estimate(self.lambda_min0, distance / m, radius, self.lipschitz)
        self.lipschitz = region.lipschitz
        self.beta = stats.lambda_max
        return {
            "ntk/lambda_min": stats.lambda_min,
            "ntk/lambda_max": stats.lambda_max,
            "ntk/condition_number": stats.condition_number,
            "ntk/trace": stats.trace,
            "ntk/effective_rank": stats.effective_rank,
            "ntk/drift_op": drift_op,
            "ntk/drift_fro": kernel_distance(kernel, self.kernel0, norm="fro"),
            "ntk/lipschitz": region.lipschitz,
            "ntk/eta_beta": lr * stats.lambda_max,
            "param/drift": radius,
            "region/mu_cert": region.mu_cert,
            "region/inside": float(region.inside),
        }

    def _probe_pl_metrics(
        self, pl_module: pl.LightningModule, kernel: Tensor | None, step: int
    ) -> dict[str, float]:
        assert self.probe is not None and self.config.loss_fn is not None
        if self.probe.y is None:
            self.journal.warn_once(
                "no_targets", "loss_fn is set but the probe has no targets; pass target_fn=."
            )
            return {}
        fn = self.model_fn(pl_module)
        params = trainable_params(pl_module)
        x, y = self.probe.x, self.probe.y
        with torch.no_grad():
            out = fn(params, x)
        loss_value, g = output_gradient(self.config.loss_fn, out, y)
        full = kernel is not None and self.config.kind == "full"
        g64 = g.reshape(-1).to(torch.float64)
        if full:
            assert kernel is not None
            grad_norm_sq = ntk_gradient_norm_sq(kernel, g64)
        else:
            grad_norm_sq = parameter_gradient_norm_sq(fn, params, x, y, self.config.loss_fn)
        self.probe_losses.append((step, loss_value))
        gap = loss_value - self.gaps.star(self.probe_losses)
        metrics = {"pl/ratio_probe": pl_ratio(grad_norm_sq, gap)}
        if full and gap > 0:
            assert kernel is not None
            self.mu_ntk = ntk_pl_bounds(kernel, g64, gap, kernel_eigenvalues=self._kernel_eigs).lower
            metrics["pl/mu_ntk"] = self.mu_ntk
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        probe = self.probe
        return {
            "probe_x": None if probe is None else probe.x.cpu(),
            "probe_y": None if probe is None or probe.y is None else probe.y.cpu(),
            "theta0": None if self.theta0 is None else {k: v.cpu() for k, v in self.theta0.items()},
            "kernel0": None if self.kernel0 is None else self.kernel0.cpu(),
            "lambda_min0": self.lambda_min0,
            "lambda_max0": self.lambda_max0,
            "lipschitz": self.lipschitz,
            "probe_losses": list(self.probe_losses),
            "last_ntk_step": self.last_step,
            "beta": self.beta,
            "mu_ntk": self.mu_ntk,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = state.get("probe_x")
        self.probe = None if x is None else Probe(x, state.get("probe_y"))
        self.theta0 = state.get("theta0")
        self.kernel0 = state.get("kernel0")
        self.lambda_min0 = state.get("lambda_min0", math.nan)
        self.lambda_max0 = state.get("lambda_max0", math.nan)
        self.lipschitz = state.get("lipschitz", 0.0)
        self.probe_losses = deque(state.get("probe_losses", []), maxlen=self.gaps.window.maxlen)
        self.last_step = state.get("last_ntk_step", -1)
        self.beta = state.get("beta", math.nan)
        self.mu_ntk = state.get("mu_ntk", math.nan)
