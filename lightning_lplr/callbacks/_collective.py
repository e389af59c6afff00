"""How several processes share one NTK sample: an injected collective and the protocol on top of it.

The protocol (every function here is entered by every rank, in the same order, or none):

1. **Row sharding** (:func:`shards`): the probe's ``m`` samples are split into contiguous row
   blocks, one per rank, sizes differing by at most one. With more ranks than samples the extra
   ranks compute a *padding* block (row 0, discarded), so every rank holds a block of the same
   shape for the gather.
2. **Failure agreement** (:func:`any_failed`): a rank whose computation raised (out of memory
   included) says so; if any did, every rank skips the sample together and nobody waits in a
   gather that will never come.
3. **Gather** (:func:`gather_rows`): blocks are padded to the longest, all-gathered in their own
   dtype and the real rows concatenated in rank order: every rank ends with the whole kernel.
4. **Split eigendecompositions** (:func:`split_spectra`): rank 0 computes the eigenvalues of
   ``K`` while rank 1 computes ``‖K − K_0‖₂``; one all-gather of ``n + 1`` numbers hands both
   to every rank. A failure becomes NaN, so every rank still meets at the gather.

The collective is an interface (:class:`Collective`) with three implementations: the Trainer's
strategy (:class:`StrategyCollective`), a single process (:class:`LocalCollective`), and an
in-memory group of threads (:class:`InMemoryGroup`) with which the protocol is tested without
processes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from lightning_lplr.functional.region import symmetric_operator_distance
from lightning_lplr.functional.spectrum import eigenvalues

__all__ = [
    "Collective",
    "InMemoryGroup",
    "LocalCollective",
    "StrategyCollective",
    "any_failed",
    "gather_rows",
    "shards",
    "split_spectra",
]

T = TypeVar("T")


class Collective(Protocol):
    """What the protocol needs of a process group."""

    @property
    def world_size(self) -> int: ...

    @property
    def rank(self) -> int: ...

    def all_gather(self, tensor: Tensor) -> Tensor:
        """``(world_size, *tensor.shape)``: every rank's tensor (same shape on every rank)."""
        ...

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every rank."""
        ...

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """``op`` in ``"sum"``, ``"mean"``, ``"max"``, ``"min"`` of every rank's tensor."""
        ...


class LocalCollective:
    """One process: every operation is the identity."""

    world_size = 1
    rank = 0

    def all_gather(self, tensor: Tensor) -> Tensor:
        return tensor.unsqueeze(0)

    def broadcast(self, obj: T, src: int = 0) -> T:
        return obj

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        return tensor


class StrategyCollective:
    """The collectives of a Lightning strategy (``trainer.strategy``), through its public methods."""

    def __init__(self, strategy: Any, world_size: int, rank: int) -> None:
        self.strategy = strategy
        self.world_size = world_size
        self.rank = rank

    def all_gather(self, tensor: Tensor) -> Tensor:
        gathered = self.strategy.all_gather(tensor)
        return gathered if self.world_size > 1 else gathered.unsqueeze(0)

    def broadcast(self, obj: T, src: int = 0) -> T:
        return self.strategy.broadcast(obj, src=src)

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        if op == "max":
            return self.all_gather(tensor).amax(dim=0)
        if op == "min":
            return self.all_gather(tensor).amin(dim=0)
        return self.strategy.reduce(tensor, reduce_op=op)


class InMemoryGroup:
    """``world_size`` collectives that threads of one process share (for tests of the protocol).

    Example:
        >>> group = InMemoryGroup(2)
        >>> out = group.run(lambda c: c.all_reduce(torch.tensor(float(c.rank + 1)), "sum"))
        >>> [float(v) for v in out]
        [3.0, 3.0]
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size)
        self._slots: list[Any] = [None] * world_size

    def member(self, rank: int) -> _Member:
        """The collective of rank ``rank``."""
        return _Member(self, rank)

    def run(self, fn: Callable[[_Member], T]) -> list[T]:
        """Run ``fn(collective)`` on one thread per rank; each rank's result, in rank order.

        Raises:
            RuntimeError: a rank raised (its exception is chained).
        """
        results: list[Any] = [None] * self.world_size
        errors: list[BaseException | None] = [None] * self.world_size

        def target(rank: int) -> None:
            try:
                results[rank] = fn(self.member(rank))
            except BaseException as err:  # reported below, after every thread ended
                errors[rank] = err
                self._barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for rank, err in enumerate(errors):
            if err is not None and not isinstance(err, threading.BrokenBarrierError):
                raise RuntimeError(f"rank {rank} raised {type(err).__name__}: {err}") from err
        return results

    def _exchange(self, rank: int, value: Any) -> list[Any]:
        self._slots[rank] = value
        self._barrier.wait()
        values = list(self._slots)
        self._barrier.wait()  # nobody overwrites a slot before everyone has read it
        return values


class _Member:
    def __init__(self, group: InMemoryGroup, rank: int) -> None:
        self.group = group
        self.rank = rank
        self.world_size = group.world_size

    def all_gather(self, tensor: Tensor) -> Tensor:
        values = self.group._exchange(self.rank, tensor.clone())
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) != 1:
            raise RuntimeError(f"all_gather needs equal shapes on every rank; got {sorted(shapes)}")
        return torch.stack(values)

    def broadcast(self, obj: T, src: int = 0) -> T:
        return self.group._exchange(self.rank, obj)[src]

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        stacked = self.all_gather(tensor)
        if op == "sum":
            return stacked.sum(dim=0)
        if op == "mean":
            return stacked.mean(dim=0)
        if op == "min":
            return stacked.amin(dim=0)
        return stacked.amax(dim=0)


def shards(m: int, world_size: int) -> list[tuple[slice, bool]]:
    """Each rank's rows of an ``m``-sample probe and whether they are padding (to be discarded).

    Contiguous blocks whose sizes differ by at most one; ranks beyond ``m`` get row 0 as padding.

    Example:
        >>> shards(5, 2)
        [(slice(0, 3, None), False), (slice(3, 5, None), False)]
        >>> shards(1, 2)
        [(slice(0, 1, None), False), (slice(0, 1, None), True)]
    """
    out: list[tuple[slice, bool]] = []
    base, extra = divmod(m, world_size)
    for rank in range(world_size):
        start = rank * base + min(rank, extra)
        size = base + (1 if rank < extra else 0)
        out.append((slice(start, start + size), False) if size else (slice(0, 1), True))
    return out


def any_failed(collective: Collective, failed: bool, device: torch.device) -> bool:
    """Whether any rank failed (one all-reduce; every rank must call it)."""
    if collective.world_size == 1:
        return failed
    flag = collective.all_reduce(torch.tensor(float(failed), device=device), "sum")
    return float(flag) > 0


def gather_rows(collective: Collective, block: Tensor, m: int) -> Tensor:
    """The whole kernel from each rank's row block (see :func:`shards`), on every rank.

    ``block`` holds ``rows·r`` kernel rows for the rank's ``rows`` samples (``r`` is ``O`` for a
    full kernel, 1 otherwise); padding ranks pass the block of their padding row.
    """
    world = collective.world_size
    layout = shards(m, world)
    own, _ = layout[collective.rank]
    per_row = block.shape[0] // (own.stop - own.start)
    longest = max(s.stop - s.start for s, _ in layout) * per_row
    padded = torch.zeros((longest, *block.shape[1:]), dtype=block.dtype, device=block.device)
    padded[: block.shape[0]] = block
    gathered = collective.all_gather(padded)  # (world, longest, ...)
    parts = [gathered[r, : (s.stop - s.start) * per_row] for r, (s, pad) in enumerate(layout) if not pad]
    return torch.cat(parts)


def split_spectra(collective: Collective, kernel: Tensor, kernel0: Tensor | None) -> tuple[Tensor, float]:
    """Ascending eigenvalues of ``kernel`` and ``‖kernel − kernel0‖₂`` (``0`` without ``kernel0``).

    One process computes both; with several, rank 0 the first and rank 1 the second at the same
    time. Any error gives NaNs, and every rank still meets at the gather.
    """
    world, rank = collective.world_size, collective.rank
    n = kernel.shape[0]
    eigs: Tensor | None = None
    drift = 0.0 if kernel0 is None else math.nan
    try:
        if world == 1 or rank == 0:
            eigs = eigenvalues(kernel)
        if kernel0 is not None and (world == 1 or rank == 1):
            drift = symmetric_operator_distance(kernel, kernel0)
    except Exception:  # e.g. out of memory: NaN results, and every rank still meets below
        eigs = torch.full((n,), math.nan, dtype=torch.float64, device=kernel.device)
        drift = math.nan
    if world == 1:
        assert eigs is not None
        return eigs, drift
    buffer = torch.full((n + 1,), math.nan, dtype=torch.float64, device=kernel.device)
    if eigs is not None:
        buffer[:n] = eigs
    buffer[n] = drift
    gathered = collective.all_gather(buffer)  # (world, n + 1)
    return gathered[0, :n].clone(), float(gathered[0 if kernel0 is None else 1, n])
