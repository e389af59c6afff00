"""The probe set: a fixed batch of training inputs on which the NTK is sampled.

The probe is chosen once per fit and kept for the whole run (and in checkpoints): by default the
first ``size`` samples of the training dataset, or a seeded random subset (a private
``torch.Generator``), or tensors / a dataset / a dataloader the user passes. It is drawn from a
deep copy of the dataset, through the dataset's own transform and the loader's ``collate_fn``,
with every global random generator (torch, Python ``random``, NumPy) restored afterwards, so a
dataset that augments with any of them — or with a generator of its own — hands the training
loop exactly the samples it would have without the monitor.

Inputs may be a tensor, a tuple or a dict of tensors (see :mod:`._model_call` for how each
reaches ``forward``); ``input_fn`` / ``target_fn`` pick them out of a collated batch.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from lightning_lplr.callbacks._isolation import rng_preserved
from lightning_lplr.callbacks._model_call import (
    LABEL_KEYS,
    conventional_inputs,
    conventional_targets,
    tree_map,
    tree_size,
)

__all__ = ["Probe", "default_input_fn", "default_target_fn", "select_probe", "training_probe"]


def default_input_fn(batch: Any) -> Any:
    """The model inputs of a collated batch: a tensor, a tuple's first element, a dict without labels.

    The monitors refine this with the model's ``forward`` signature (several positional inputs,
    the keywords it accepts); this module-free version serves :func:`select_probe` alone.

    Example:
        >>> default_input_fn((torch.zeros(2, 3), torch.ones(2))).shape
        torch.Size([2, 3])
        >>> sorted(default_input_fn({"input_ids": torch.zeros(2, 4), "labels": torch.ones(2)}))
        ['input_ids']
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS and isinstance(v, Tensor)}
        if inputs:
            return inputs
    raise ValueError(
        f"cannot find the model inputs in a batch of type {type(batch).__name__}; pass "
        "input_fn=lambda batch: <the inputs: a tensor, a tuple (positional) or a dict (keywords)>."
    )


def default_target_fn(batch: Any) -> Any:
    """The targets of a collated batch (second element or label entry), or ``None``.

    Example:
        >>> default_target_fn((torch.zeros(2, 3), torch.ones(2))).tolist()
        [1.0, 1.0]
        >>> default_target_fn(torch.zeros(2, 3)) is None
        True
    """
    return conventional_targets(batch)


@dataclass
class Probe:
    """A fixed probe: inputs ``x`` (a tensor, tuple or dict of tensors with ``m`` rows) and targets ``y``."""

    x: Any
    y: Any = None

    @property
    def size(self) -> int:
        """Number of probe samples ``m``."""
        return tree_size(self.x)

    def to(self, device: torch.device | str, *, float32: bool = False) -> Probe:
        """The probe on ``device``; with ``float32``, floating-point tensors of half precision widened."""

        def move(t: Tensor) -> Tensor:
            t = t.to(device)
            return t.float() if float32 and t.dtype in (torch.float16, torch.bfloat16) else t

        return Probe(tree_map(move, self.x), tree_map(move, self.y))

    def rows(self, index: slice | Tensor) -> Any:
        """The inputs of the probe rows ``index``."""
        return tree_map(lambda t: t[index], self.x)


def _take(batches: Iterable[Any], size: int, input_fn: Callable, target_fn: Callable) -> Probe:
    xs: list[Any] = []
    ys: list[Any] = []
    count = 0
    for batch in batches:
        xs.append(tree_map(lambda t: t.detach(), input_fn(batch)))
        ys.append(target_fn(batch))
        count += tree_size(xs[-1])
        if count >= size:
            break
    if count == 0:
        raise ValueError(
            "the probe source yielded no samples; pass a non-empty dataset, dataloader or tensor."
        )
    x = _concat(xs)
    y = None if any(v is None for v in ys) else _concat([tree_map(torch.as_tensor, v) for v in ys])
    return Probe(
        tree_map(lambda t: t[:size].clone(), x),
        None if y is None else tree_map(lambda t: t[:size].clone(), y),
    )


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([p[i] for p in parts]) for i in range(len(first)))
    return first


def _is_streaming(dataset: Any) -> bool:
    return isinstance(dataset, IterableDataset) or not (
        hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    )


def select_probe(
    source: Dataset | DataLoader | Tensor | tuple[Tensor, ...],
    size: int,
    *,
    seed: int | None = None,
    input_fn: Callable[[Any], Any] = default_input_fn,
    target_fn: Callable[[Any], Any] = default_target_fn,
    clip: bool = False,
    streaming_ok: bool = True,
) -> Probe:
    """Choose a fixed probe from a dataset, a dataloader or tensors.

    Every global random generator is the same afterwards as before, and a map-style dataset is
    read through a deep copy (its own generators, if any, do not advance).

    Args:
        source: a map-style or iterable ``Dataset``, a ``DataLoader`` (its dataset is indexed and
            its ``collate_fn`` used; its sampler is not, so shuffling or DDP sharding do not
            matter), a tensor of inputs, or an ``(x, y)`` tuple of tensors.
        size: number of probe samples ``m``.
        seed: ``None`` takes the first ``size`` samples; an int a random subset drawn from a
            private generator seeded with it (map-style datasets and tensors only).
        input_fn: collated batch → model inputs (tensor, tuple or dict).
        target_fn: collated batch → targets or ``None``.
        clip: take ``min(size, len(source))`` samples instead of refusing a larger ``size``.
        streaming_ok: whether an iterable (streaming) dataset may be read; ``False`` refuses it
            before anything is drawn.

    Returns:
        The :class:`Probe` (tensors detached and cloned, on the source's device).

    Raises:
        ValueError: ``size`` below 1, larger than the dataset (without ``clip``), or a streaming
            dataset when ``streaming_ok`` is false — each with the fix.

    Example:
        >>> x = torch.arange(20.0).reshape(10, 2)
        >>> select_probe((x, x.sum(1)), 3).x.tolist()
        [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
        >>> select_probe(x, 30, clip=True).size
        10
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"probe_size={size!r} must be an int >= 1.")
    if isinstance(source, Tensor):
        source = (source,)
    if isinstance(source, tuple):
        n = source[0].shape[0]
        size = _checked_size(size, n, clip)
        index = _indices(n, size, seed)
        batch = tuple(t[index] for t in source)
        return _take([batch if len(batch) > 1 else batch[0]], size, input_fn, target_fn)
    collate: Callable[[list[Any]], Any] = default_collate
    dataset: Any = source
    if isinstance(source, DataLoader):
        dataset = source.dataset
        collate = source.collate_fn or default_collate
    if _is_streaming(dataset):
        if not streaming_ok:
            raise ValueError(
                f"the training data is a streaming dataset ({type(dataset).__name__}: no len or indexing), "
                "so the monitor cannot draw a fixed probe from it without taking samples from the stream. "
                "Pass probe= (a tensor, an (x, y) tuple, a map-style dataset or a loader of held samples)."
            )
        with rng_preserved():
            batches = source if isinstance(source, DataLoader) else (default_collate([s]) for s in dataset)
            return _take(batches, size, input_fn, target_fn)
    n = len(dataset)
    size = _checked_size(size, n, clip)
    index = _indices(n, size, seed)
    with rng_preserved():
        reader = _private_copy(dataset)
        batch = collate([reader[int(i)] for i in index])
        return _take([batch], size, input_fn, target_fn)


def _private_copy(dataset: Any) -> Any:
    """A deep copy of ``dataset`` to read the probe from (its own generators then stay untouched)."""
    try:
        return copy.deepcopy(dataset)
    except Exception as err:  # an unpicklable handle: read the original, generators restored anyway
        warnings.warn(
            f"the probe is read from the training dataset itself ({type(dataset).__name__} cannot be "
            f"deep-copied: {err}); a random generator the dataset keeps of its own may advance. Pass "
            "probe= to avoid it.",
            stacklevel=3,
        )
        return dataset


def _checked_size(size: int, n: int, clip: bool) -> int:
    if size <= n:
        return size
    if clip:
        return n
    raise ValueError(
        f"probe_size={size} is larger than the training dataset ({n} samples); pass probe_size <= {n}."
    )


def _indices(n: int, size: int, seed: int | None) -> Tensor:
    if seed is None:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values


def training_probe(config: Any, trainer: Any, module: Any, journal: Any) -> Probe:
    """The monitor's probe: from ``config.probe``, else the training dataloader (see :func:`select_probe`).

    A default ``probe_size`` larger than the training set is clipped to it (said once); an explicit
    one is an error. Drawing from a streaming training set is refused (``probe=`` is needed).
    """
    source = config.probe
    if source is None:
        source = trainer.train_dataloader
        if isinstance(source, (list, tuple)) and source and isinstance(source[0], DataLoader):
            source = source[0]
        if source is None:
            raise ValueError(
                f"{journal.owner} found no training dataloader to draw the probe from; pass probe=."
            )
    input_fn = config.input_fn or (lambda batch: conventional_inputs(batch, module))
    probe = select_probe(
        source,
        config.probe_size,
        seed=config.probe_seed,
        input_fn=input_fn,
        target_fn=config.target_fn,
        clip=not config.probe_size_explicit,
        streaming_ok=config.probe is not None,
    )
    if probe.size < config.probe_size:
        journal.warn_once(
            "probe_clipped",
            f"{journal.owner}: the training set has {probe.size} samples, fewer than the default "
            f"probe_size={config.probe_size}; the probe is the whole training set.",
        )
    return probe
