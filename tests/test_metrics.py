"""The torchmetrics wrappers against the functional reference, alone and in a 2-process gloo pool."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_lplr.functional.pl import envelope_min, envelope_quantile
from lightning_lplr.functional.rate import fit_linear_rate
from lightning_lplr.metrics import LinearRate, PLRatio


def test_pl_ratio_matches_the_functional_reference():
    rng = np.random.default_rng(0)
    grads = rng.uniform(0.1, 2.0, size=30)
    losses = rng.uniform(0.1, 1.0, size=30)
    metric = PLRatio(loss_star=0.05)
    for g, loss in zip(grads, losses, strict=True):
        metric.update(torch.tensor(g), torch.tensor(loss))
    metric.update(1.0, 0.01)  # gap below zero: skipped
    out = metric.compute()
    ratios = grads / (2 * (losses - 0.05))
    assert float(out["envelope_min"]) == pytest.approx(envelope_min(ratios), rel=1e-12)
    assert float(out["envelope_q05"]) == pytest.approx(envelope_quantile(ratios, 0.05), rel=1e-12)
    assert float(out["ratio"]) == pytest.approx(ratios[-1], rel=1e-12)
    assert float(out["skipped"]) == 1.0


def test_linear_rate_matches_the_functional_reference():
    metric = LinearRate()
    gaps = [3.0 * 0.8**t * (1 + 0.01 * math.sin(t)) for t in range(25)]
    for t, g in enumerate(gaps):
        metric.update(t, g)
    out = metric.compute()
    ref = fit_linear_rate(gaps)
    assert float(out["contraction"]) == pytest.approx(ref.contraction, rel=1e-12)
    assert float(out["r2"]) == pytest.approx(ref.r2, rel=1e-12)
    assert float(out["regime"]) == 1.0


def test_bad_quantile_is_named():
    with pytest.raises(ValueError, match=r"quantile=1\.5"):
        PLRatio(quantile=1.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pl_metric = PLRatio()
        rate = LinearRate()
        for t in range(12):
            # Rank r sees loss (1 + r) 0.7^t: the mean over ranks is 1.5 · 0.7^t.
            rate.update(t, (1 + rank) * 0.7**t)
            pl_metric.update(grad_norm_sq=float(t + 1 + rank), loss=1.0)
        out_pl = {k: float(v) for k, v in pl_metric.compute().items()}
        out_rate = {k: float(v) for k, v in rate.compute().items()}
        queue.put((rank, out_pl, out_rate))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_metrics_in_a_two_process_gloo_pool():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_worker, args=(2, _free_port(), queue), nprocs=2, start_method="spawn", join=True)
    results = sorted(queue.get(timeout=60) for _ in range(2))
    for _, out_pl, out_rate in results:
        ratios = [(t + 1 + r) / 2 for r in range(2) for t in range(12)]
        assert out_pl["envelope_min"] == pytest.approx(min(ratios))
        assert out_pl["envelope_q05"] == pytest.approx(envelope_quantile(ratios, 0.05))
        assert out_rate["contraction"] == pytest.approx(0.7, rel=1e-10)
        assert out_rate["num_points"] == 12
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2]
