"""The probe kernel of a sample: which kind fits the memory budget, which outputs count, how ranks share it.

* :func:`plan_kernel` estimates the kernel's, the Jacobian's and ``Θ₀``'s bytes from the probe,
  the output size and the parameter count (:func:`~lightning_lplr.functional.plan_ntk_memory`)
  against a budget — ``max_memory_bytes``, else a fraction of the device's free memory
  (:func:`~lightning_lplr.functional.default_budget`); under DDP the smallest over the ranks, so
  every rank picks the same kind — and falls back full → pseudo → chunked pseudo → fewer probe
  samples, saying once which kind it uses and why.
* :func:`sequence_mask`: for sequence outputs ``(m, L, …)``, positions that are padding
  (``attention_mask == 0`` in a dict probe) or ignored labels (``-100``) are left out of the
  kernel. To monitor one position's logits instead, pass ``output_fn=lambda out: out.logits[:, -1]``.
* :func:`kept_loss`: the loss as a function of the kept outputs only (masked outputs held at
  their values), so curvature and PL bounds match the masked kernel's rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_lplr.callbacks._collective import Collective, any_failed, gather_rows, shards, split_spectra
from lightning_lplr.callbacks.probe import Probe
from lightning_lplr.functional.memory import (
    default_budget,
    format_bytes,
    measure_ntk_problem,
    plan_ntk_memory,
)
from lightning_lplr.functional.normalization import with_norm_mode
from lightning_lplr.functional.ntk import empirical_ntk
from lightning_lplr.functional.objective import output_gradient
from lightning_lplr.functional.spectrum import spectrum_from_eigenvalues

__all__ = [
    "KernelPlan",
    "gathered",
    "kept_loss",
    "kernel_block",
    "plan_kernel",
    "reference_kernel",
    "sequence_mask",
    "theta0_device",
]

THETA0_SHARE = 0.1
"""``theta0="auto"`` keeps ``θ_0`` on the CPU when it would take more than this share of the budget."""

IGNORE_INDEX = -100
"""The label value PyTorch's and HuggingFace's losses ignore."""


@dataclass(frozen=True)
class KernelPlan:
    """What the NTK part computes for this run."""

    kind: str
    chunk_size: int | None
    probe_size: int
    max_memory_bytes: int | None
    reason: str


def sequence_mask(probe: Probe, outputs: Tensor) -> Tensor | None:
    """The ``(m, L)`` mask of the kept positions of sequence outputs, or ``None`` (nothing to mask).

    Example:
        >>> mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
        >>> probe = Probe({"input_ids": torch.zeros(2, 3), "attention_mask": mask})
        >>> sequence_mask(probe, torch.zeros(2, 3, 5)).tolist()
        [[True, True, False], [True, True, True]]
    """
    m = probe.size
    if outputs.ndim < 3 or outputs.shape[0] != m:
        return None
    mask: Tensor | None = None
    x, y = probe.x, probe.y
    attention = x.get("attention_mask") if isinstance(x, Mapping) else None
    if isinstance(attention, Tensor) and attention.shape == outputs.shape[:2]:
        mask = attention != 0
    if isinstance(y, Tensor) and not y.is_floating_point() and y.shape == outputs.shape[:2]:
        labelled = y != IGNORE_INDEX
        mask = labelled if mask is None else mask & labelled
    if mask is None or bool(mask.all()):
        return None
    return mask.to(outputs.device)


def kept_loss(
    loss_fn: Callable[[Tensor, Any], Tensor], outputs: Tensor, flat_mask: Tensor
) -> Callable[[Tensor, Any], Tensor]:
    """``loss_fn`` as a function of the kept outputs ``z`` (the others held at ``outputs``' values).

    Example:
        >>> out = torch.tensor([[1.0, 2.0]])
        >>> f = kept_loss(lambda o, y: (o**2).sum(), out, torch.tensor([False, True]))
        >>> float(f(torch.tensor([3.0]), None))
        10.0
    """
    base = outputs.detach().reshape(-1)
    index = flat_mask.reshape(-1).nonzero().squeeze(1)

    def loss(z: Tensor, targets: Any) -> Tensor:
        full = base.to(z.dtype).index_put((index,), z.reshape(-1))
        return loss_fn(full.reshape(outputs.shape), targets)

    return loss


def plan_kernel(
    config: Any,
    call: Any,
    probe: Probe,
    params: dict[str, Tensor],
    collective: Collective,
    device: torch.device,
) -> tuple[KernelPlan | str, Tensor | None]:
    """The kernel kind, chunking and probe size that fit the memory budget (the same on every rank).

    Returns:
        The plan, or the reason no kernel fits (not even two probe samples, one at a time); and the
        sequence mask of the probe's outputs (:func:`sequence_mask`).
    """
    mask = sequence_mask(probe, call(params, probe.x))
    budget = config.max_memory_bytes or default_budget(device)
    if collective.world_size > 1 and budget is not None:
        budget = int(collective.all_reduce(torch.tensor(float(budget), device=device), "min"))
    if budget is None:  # the free memory is unknown: compute what was asked
        return KernelPlan(config.kind, config.chunk_size, probe.size, config.max_memory_bytes, ""), mask
    size = measure_ntk_problem(call, probe.x, params=params, output_mask=mask, norm_mode=config.norm_mode)
    try:
        plan = plan_ntk_memory(
            size, budget, kind=config.kind, implementation=config.implementation, norm_mode=config.norm_mode
        )
    except ValueError as err:
        return str(err), mask
    chunk = config.chunk_size if config.chunk_size is not None else plan.chunk_size
    reason = plan.reason if (plan.kind != config.kind or plan.probe_size < probe.size) else ""
    if reason:
        reason = f"{reason} (memory budget {format_bytes(budget)})"
    return KernelPlan(plan.kind, chunk, plan.probe_size, config.max_memory_bytes, reason), mask


def reference_kernel(
    at_theta0: Any,
    probe: Probe,
    theta0: dict[str, Tensor],
    collective: Collective,
    settings: dict[str, Any],
    state0: dict[str, Any],
    loss_fn: Any,
) -> tuple[Tensor, float, float, Tensor] | None:
    """``(Θ_0 on the CPU, λ_min(Θ_0), λ_max(Θ_0), f_0)`` at ``θ_0`` on every rank, or ``None`` on a failure.

    Every rank computes its block, then all agree on failures before the gather (see
    :mod:`._collective`).
    """
    norm_mode, statistics = settings["norm_mode"], state0.get("statistics")
    error: BaseException | None = None
    block = outputs = None
    try:
        with torch.no_grad():
            outputs = with_norm_mode(at_theta0, norm_mode, statistics)(theta0, probe.x)
        g = None
        if settings["kind"] == "loss_gram" and loss_fn is not None:
            g = output_gradient(loss_fn, outputs, probe.y)[1]
        block = kernel_block(at_theta0, probe, theta0, collective, settings, statistics, g)
    except Exception as err:  # the run goes on: the first sample becomes the reference
        error = err
    if any_failed(
        collective, error is not None, outputs.device if outputs is not None else torch.device("cpu")
    ):
        return None
    assert block is not None and outputs is not None
    kernel0 = gathered(block, collective, probe.size, norm_mode)
    eigs, _ = split_spectra(collective, kernel0, None)
    stats = spectrum_from_eigenvalues(eigs / probe.size)
    if not math.isfinite(stats.lambda_max):
        return None
    return kernel0.cpu(), stats.lambda_min, stats.lambda_max, outputs.detach()


def whole(collective: Collective, norm_mode: str) -> bool:
    """One process, or ``norm_mode='train'`` (a batch Jacobian, not sharded): each rank computes all."""
    return collective.world_size == 1 or norm_mode == "train"


def kernel_block(
    call: Any,
    probe: Probe,
    params: dict[str, Tensor],
    collective: Collective,
    settings: dict[str, Any],
    statistics: Any,
    g: Tensor | None,
) -> Tensor:
    """This rank's rows of the probe kernel against the whole probe (all of it in one process).

    Args:
        call: the model function ``f(params, inputs)``.
        probe: the probe.
        params: the parameters to differentiate.
        collective: the process group.
        settings: ``kind``, ``implementation``, ``chunk_size``, ``max_memory_bytes``, ``norm_mode``, ``mask``.
        statistics: the whole probe's normalisation statistics (``norm_mode='probe'``).
        g: ``∂L/∂f`` on the probe (the per-sample weights of ``kind='loss_gram'``).

    Raises:
        ValueError: ``kind='loss_gram'`` without ``g``.
    """
    kind, mask = settings["kind"], settings["mask"]
    if kind == "loss_gram" and g is None:
        raise ValueError("kind='loss_gram' needs loss_fn and probe targets (the per-sample loss gradients).")
    kwargs: dict[str, Any] = {
        "params": params,
        "kind": kind,
        "implementation": settings["implementation"],
        "chunk_size": settings["chunk_size"],
        "max_memory_bytes": settings["max_memory_bytes"],
        "norm_mode": settings["norm_mode"],
    }
    weights = g if kind == "loss_gram" else None
    if whole(collective, settings["norm_mode"]):
        if mask is not None:
            kwargs["output_mask"] = mask
        if weights is not None:
            kwargs["output_weights"] = weights
        return empirical_ntk(call, probe.x, **kwargs)
    rows, _ = shards(probe.size, collective.world_size)[collective.rank]
    if statistics is not None:
        kwargs["norm_statistics"] = statistics
    if mask is not None:
        kwargs.update(output_mask=mask[rows], output_mask2=mask)
    if weights is not None:
        kwargs.update(output_weights=weights[rows], output_weights2=weights)
    return empirical_ntk(call, probe.rows(rows), probe.x, **kwargs)


def gathered(block: Tensor, collective: Collective, m: int, norm_mode: str) -> Tensor:
    """The whole kernel in float64 on every rank (rows gathered in their own dtype, then widened)."""
    if whole(collective, norm_mode):
        return block.to(torch.float64)
    return gather_rows(collective, block, m).to(torch.float64)


def theta0_device(
    choice: str, params: dict[str, Tensor], budget: int | None, device: torch.device
) -> torch.device:
    """Where ``θ_0`` (a copy of the trainable parameters) is kept: ``"device"``, ``"cpu"`` or ``"auto"``.

    ``"auto"`` keeps it on the training device unless it would take more than
    :data:`THETA0_SHARE` of the memory budget there (``max_memory_bytes``, else the device's free
    memory); on the CPU it is moved per sample where needed (the parameter drift, the
    linearisation gap), at the cost of one host-to-device copy per sample.

    Example:
        >>> theta0_device("auto", {"w": torch.zeros(3)}, None, torch.device("cpu"))
        device(type='cpu')
    """
    if choice == "cpu" or device.type == "cpu":
        return torch.device("cpu")
    if choice == "device":
        return device
    size = sum(v.numel() * 4 for v in params.values())  # float32 copies
    budget = budget if budget is not None else default_budget(device)
    return torch.device("cpu") if budget is not None and size > THETA0_SHARE * budget else device
