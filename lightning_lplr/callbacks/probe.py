"""The probe set: a fixed batch of training inputs on which the NTK is sampled.

The probe is chosen once per fit and kept for the whole run (and in checkpoints):
by default the first ``size`` samples of the training dataset, or a seeded random
subset (a private ``torch.Generator``; the global RNG is never touched), or tensors /
a dataloader the user passes. Batches that are dicts or tuples are split into
inputs and targets by ``input_fn`` / ``target_fn``; the defaults understand a bare
tensor, a ``(x, y, ...)`` tuple or list, and a dict with an ``"x"``/``"input"``/
``"inputs"`` and ``"y"``/``"target"``/``"targets"``/``"label"``/``"labels"`` key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

__all__ = ["Probe", "default_input_fn", "default_target_fn", "select_probe"]

_INPUT_KEYS = ("x", "input", "inputs")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")


def default_input_fn(batch: Any) -> Tensor:
    """The model input of a collated batch.

    Args:
        batch: a tensor, a ``(x, y, ...)`` tuple/list, or a dict with an input key.

    Raises:
        ValueError: the batch structure is not understood; the message says to pass ``input_fn``.

    Example:
        >>> default_input_fn((torch.zeros(2, 3), torch.ones(2))).shape
        torch.Size([2, 3])
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in _INPUT_KEYS:
            if key in batch and isinstance(batch[key], Tensor):
                return batch[key]
        raise ValueError(
            f"the batch is a dict with keys {sorted(map(str, batch))}, none of which is a known input key "
            f"{_INPUT_KEYS}; pass input_fn=lambda batch: batch['<your input key>'] to the monitor."
        )
    raise ValueError(
        f"cannot find the model input in a batch of type {type(batch).__name__}; pass "
        "input_fn=lambda batch: <the input tensor> to the monitor."
    )


def default_target_fn(batch: Any) -> Tensor | None:
    """The targets of a collated batch, or ``None`` when there are none.

    Example:
        >>> default_target_fn((torch.zeros(2, 3), torch.ones(2))).tolist()
        [1.0, 1.0]
        >>> default_target_fn(torch.zeros(2, 3)) is None
        True
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    if isinstance(batch, Mapping):
        for key in _TARGET_KEYS:
            if key in batch and isinstance(batch[key], Tensor):
                return batch[key]
    return None


@dataclass
class Probe:
    """A fixed probe: inputs ``x`` of shape ``(m, *input_shape)`` and optional targets ``y``."""

    x: Tensor
    y: Tensor | None = None

    @property
    def size(self) -> int:
        """Number of probe samples ``m``."""
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Probe:
        """The probe on ``device``."""
        return Probe(self.x.to(device), None if self.y is None else self.y.to(device))

    def shard(self, rank: int, world_size: int) -> slice:
        """The rows of the probe rank ``rank`` of ``world_size`` computes (contiguous, sizes differ by ≤ 1).

        Example:
            >>> p = Probe(torch.zeros(10, 2))
            >>> [p.shard(r, 3) for r in range(3)]
            [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
        """
        base, extra = divmod(self.size, world_size)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (1 if rank < extra else 0))


def _take(batches: Iterable[Any], size: int, input_fn: Callable, target_fn: Callable) -> Probe:
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    have_targets = True
    count = 0
    for batch in batches:
        x = input_fn(batch)
        y = target_fn(batch)
        if not isinstance(x, Tensor):
            raise TypeError(f"input_fn returned a {type(x).__name__}; it must return the input tensor.")
        xs.append(x.detach())
        if y is None:
            have_targets = False
        else:
            ys.append(torch.as_tensor(y).detach())
        count += x.shape[0]
        if count >= size:
            break
    if count == 0:
        raise ValueError(
            "the probe source yielded no samples; pass a non-empty dataset, dataloader or tensor."
        )
    x = torch.cat(xs)[:size]
    y = torch.cat(ys)[:size] if have_targets and ys else None
    return Probe(x.clone(), None if y is None else y.clone())


def select_probe(
    source: Dataset | DataLoader | Tensor | tuple[Tensor, ...],
    size: int,
    *,
    seed: int | None = None,
    input_fn: Callable[[Any], Tensor] = default_input_fn,
    target_fn: Callable[[Any], Tensor | None] = default_target_fn,
) -> Probe:
    """Choose a fixed probe from a dataset, a dataloader or tensors.

    The global RNG state is the same afterwards as before (dataloaders that shuffle
    draw from it when iterated, so it is saved and restored).

    Args:
        source: a map-style or iterable ``Dataset``, a ``DataLoader``, a tensor of
            inputs, or an ``(x, y)`` tuple of tensors.
        size: number of probe samples ``m``; must not exceed a sized source.
        seed: ``None`` takes the first ``size`` samples; an int takes a random subset
            drawn from a private generator seeded with it (map-style datasets and tensors only).
        input_fn: batch → input tensor.
        target_fn: batch → target tensor or ``None``.

    Returns:
        The :class:`Probe` (tensors detached and cloned, on the source's device).

    Raises:
        ValueError: ``size`` below 1 or larger than the dataset, with the fix.

    Example:
        >>> x = torch.arange(20.0).reshape(10, 2)
        >>> select_probe((x, x.sum(1)), 3).x.tolist()
        [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
        >>> select_probe(x, 3, seed=0).size
        3
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"probe_size={size!r} must be an int >= 1.")
    if isinstance(source, Tensor):
        source = (source,)
    if isinstance(source, tuple):
        n = source[0].shape[0]
        _check_size(size, n)
        index = _indices(n, size, seed)
        batch = tuple(t[index] for t in source)
        return _take([batch if len(batch) > 1 else batch[0]], size, input_fn, target_fn)
    rng_state = torch.get_rng_state()
    try:
        if isinstance(source, DataLoader):
            # Index the dataset, not the loader: a loader's sampler may shuffle or, under DDP, shard it.
            if isinstance(source.dataset, IterableDataset):
                return _take(source, size, input_fn, target_fn)
            source = source.dataset
        if isinstance(source, IterableDataset):
            return _take((default_collate([s]) for s in source), size, input_fn, target_fn)
        n = len(source)  # type: ignore[arg-type]
        _check_size(size, n)
        index = _indices(n, size, seed)
        batch = default_collate([source[int(i)] for i in index])
        return _take([batch], size, input_fn, target_fn)
    finally:
        torch.set_rng_state(rng_state)


def _check_size(size: int, n: int) -> None:
    if size > n:
        raise ValueError(
            f"probe_size={size} is larger than the training dataset ({n} samples); pass probe_size <= {n}."
        )


def _indices(n: int, size: int, seed: int | None) -> Tensor:
    if seed is None:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values
