"""The DDP protocol of an NTK sample, on an in-memory group of threads and against one process."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_lplr.callbacks._collective import (
    InMemoryGroup,
    LocalCollective,
    any_failed,
    gather_rows,
    shards,
    split_spectra,
)
from lightning_lplr.functional.ntk import empirical_ntk


@pytest.mark.parametrize(("m", "world"), [(10, 3), (12, 2), (3, 3), (1, 2), (2, 5)])
def test_shards_cover_every_row_once_and_pad_the_extra_ranks(m, world):
    layout = shards(m, world)
    assert len(layout) == world
    rows = [i for s, pad in layout if not pad for i in range(s.start, s.stop)]
    assert rows == list(range(m))
    sizes = [s.stop - s.start for s, pad in layout if not pad]
    assert max(sizes) - min(sizes) <= 1
    assert all(s == slice(0, 1) for s, pad in layout if pad)
    assert sum(pad for _, pad in layout) == max(0, world - m)


@pytest.mark.parametrize(
    ("m", "world", "kind"), [(7, 2, "full"), (5, 3, "trace"), (2, 3, "full"), (1, 2, "pseudo")]
)
def test_row_sharded_kernel_equals_the_one_process_kernel(m, world, kind):
    """Each rank computes its rows against the whole probe; the gather gives the same kernel everywhere."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(m, 4, dtype=torch.float64)
    reference = empirical_ntk(net, x, kind=kind, implementation="jacobian_contraction")

    # Blocks are computed before the threads start: the NTK installs global forward hooks, which
    # threads of one process would share (ranks are processes in a real run).
    blocks = [
        empirical_ntk(net, x[rows], x, kind=kind, implementation="jacobian_contraction")
        for rows, _ in shards(m, world)
    ]

    def rank_fn(c):
        return gather_rows(c, blocks[c.rank], m)

    for kernel in InMemoryGroup(world).run(rank_fn):
        assert torch.allclose(kernel, reference, rtol=1e-12, atol=1e-12)


def test_a_failure_on_one_rank_is_seen_by_every_rank():
    out = InMemoryGroup(3).run(lambda c: any_failed(c, c.rank == 2, torch.device("cpu")))
    assert out == [True, True, True]
    out = InMemoryGroup(2).run(lambda c: any_failed(c, False, torch.device("cpu")))
    assert out == [False, False]
    assert any_failed(LocalCollective(), True, torch.device("cpu"))


def test_split_spectra_match_one_process_and_survive_an_error():
    g = torch.Generator().manual_seed(3)
    j = torch.randn(6, 10, generator=g, dtype=torch.float64)
    k0 = j @ j.T
    k = k0 + torch.diag(torch.linspace(-0.5, 0.2, 6, dtype=torch.float64))
    eigs1, drift1 = split_spectra(LocalCollective(), k, k0)
    assert torch.allclose(eigs1, torch.linalg.eigvalsh(k), rtol=1e-12)
    assert drift1 == pytest.approx(0.5, rel=1e-12)
    for eigs, drift in InMemoryGroup(2).run(lambda c: split_spectra(c, k, k0)):
        assert torch.equal(eigs, eigs1) and drift == drift1
    # Without a reference the drift is 0; a NaN kernel gives NaN eigenvalues on every rank.
    assert split_spectra(LocalCollective(), k, None)[1] == 0.0
    bad = k.clone()
    bad[0, 0] = math.nan
    for eigs, _ in InMemoryGroup(2).run(lambda c: split_spectra(c, bad, k0)):
        assert bool(torch.isnan(eigs).all())


def test_in_memory_group_reports_a_rank_that_raised():
    def boom(c):
        if c.rank == 1:
            raise ValueError("rank one fails")
        return c.all_reduce(torch.ones(()))

    with pytest.raises(RuntimeError, match="rank 1 raised ValueError"):
        InMemoryGroup(2).run(boom)
