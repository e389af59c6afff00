"""DDP benchmark of the monitor's NTK: per-rank time of one NTK sample at world size 1 and 2 (issue 4).

Part 1 — the sharded NTK, exactly as ``LPLRMonitor._kernel`` / ``_gather_rows`` do it, with plain
``torch.multiprocessing.spawn`` and ``torch.distributed`` (gloo, CPU), no Lightning in the loop:

* world size 1 (the callback's single-process path): ``empirical_ntk(fn, x, kind="full")``,
  the symmetric kernel of the whole probe;
* world size 2: rank ``r`` computes the rows of its probe shard
  ``empirical_ntk(fn, x[Probe.shard(r, 2)], x, kind="full")``, the ranks agree that nobody
  failed (Lightning's ``strategy.reduce``: a barrier, then an all-reduce of an error flag), and
  the float64 blocks, padded to the longest shard, are all-gathered
  (``torch.distributed.nn.functional.all_gather`` + ``stack``, as ``strategy.all_gather``) and
  concatenated into the full kernel.

Both world sizes run in the same two worker processes, interleaved round by round
(``ws1_t1, ws2_t1, ws1_t2, ws1_t1_shard`` …): for a world-size-1 configuration rank 0 works
alone while rank 1 waits in a barrier (its CPU time during the wait is recorded as
``idle_rank_cpu_s`` to show that it does not compete). Each rank runs with one torch thread (the
like-for-like comparison); ``ws1_t2`` is world size 1 with two threads, the fair single-process
baseline on a two-core machine. ``ws1_t1_shard`` is rank 0 computing its world-size-2 shard alone
(no communication, no competing rank): the compute a rank would need if it had a core to itself.
Per configuration and rank: compute, sync (error-flag reduce, i.e. waiting for the slower
rank), gather and total time; the wall time of an NTK sample is the slowest rank's total.
The model is an MLP 784-512-512-10 (ReLU) and the probe 256 random inputs: a 2560 × 2560 kernel.
After the timed rounds, two more measurements complete the picture of one NTK sample:
``kernel_metrics`` — what ``LPLRMonitor._ntk_metrics`` then does with the assembled float64
kernel on every rank (``spectrum_stats``, ``kernel_distance`` op and Frobenius, ``‖Θ₀‖₂``),
at world size 1 and 2 (``--metrics-repeats``, default once: ~20 s at this size), which with
the kernel wall gives ``ntk_sample_wall_s``; and ``gather_alternatives_s`` — the all-gather
of one rank's block in float64 as the callback does it, and in float32.

Part 2 — whole-step overhead: a short DDP fit (2 ranks, gloo, Lightning ``DDPStrategy`` in the
same worker processes, which Lightning sees as externally launched) of the same MLP on random
10-class data, without and with ``LPLRMonitor(preset="default")`` at its default cadence
(log-spaced) and at ``ntk_every=50``, interleaved; ratio of the training-loop wall times, and
the in-fit estimate ``loop / (loop − time inside the monitor's hooks)``.

Usage:
    python benchmarks/ddp.py                 # full sizes, about 1.5 minutes on two cores
    python benchmarks/ddp.py --quick         # tiny sizes, a smoke test
    python benchmarks/ddp.py --out benchmarks/results/ddp.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

import _timing
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

FULL = {
    "dims": [784, 512, 512, 10],
    "probe": 256,
    "warmup": 1,
    "repeats": 5,
    "fit_steps": 200,
    "fit_batch": 64,
    "fit_samples": 4096,
    "fit_rounds": 2,
    "fit_every": 50,
    "metrics_repeats": 1,
}
QUICK = {
    "dims": [32, 64, 64, 10],
    "probe": 16,
    "warmup": 1,
    "repeats": 2,
    "fit_steps": 12,
    "fit_batch": 8,
    "fit_samples": 128,
    "fit_rounds": 1,
    "fit_every": 5,
    "metrics_repeats": 1,
}
NTK_CONFIGS = ("ws1_t1", "ws2_t1", "ws1_t2", "ws1_t1_shard")
FIT_VARIANTS = ("none", "lplr_default", "lplr_every")
TARGET_SPEEDUP = 1.6


def mlp(dims: list[int], seed: int = 0) -> nn.Sequential:
    """``Linear-ReLU-…-Linear`` with the given layer sizes (same weights on every rank)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------- part 1
def _gather_rows(block: Tensor, rank: int, world: int, probe: Any, m: int) -> Tensor:
    """``LPLRMonitor._gather_rows`` on plain torch.distributed (same padding, collective, slicing)."""
    from torch.distributed.nn.functional import all_gather

    own = probe.shard(rank, world)
    per_row = block.shape[0] // (own.stop - own.start)
    longest = -(-m // world) * per_row
    padded = torch.zeros((longest, *block.shape[1:]), dtype=block.dtype, device=block.device)
    padded[: block.shape[0]] = block
    with torch.no_grad():
        gathered = torch.stack(all_gather(padded.contiguous()))
    parts = []
    for r in range(world):
        sl = probe.shard(r, world)
        parts.append(gathered[r, : (sl.stop - sl.start) * per_row])
    return torch.cat(parts)


def _ntk_sample(config: str, rank: int, ctx: dict[str, Any]) -> dict[str, float]:
    """One NTK sample of ``config`` on this rank; returns its phase times (or the idle rank's CPU)."""
    from lightning_lplr.functional import empirical_ntk

    fn, params, x, probe = ctx["fn"], ctx["params"], ctx["x"], ctx["probe"]
    kw = {"params": params, "kind": "full", "implementation": ctx["implementation"]}
    world = 2 if config.startswith("ws2") else 1
    threads = 2 if config.endswith("_t2") else 1
    dist.barrier()
    if world == 1 and rank != 0:
        cpu = time.process_time()
        dist.barrier()  # wait while rank 0 computes alone
        return {"idle_cpu_s": time.process_time() - cpu}
    torch.set_num_threads(threads)
    _spin_up_threads()
    start, cpu_start = time.perf_counter(), time.process_time()
    if config == "ws1_t1_shard":
        block = empirical_ntk(fn, x[probe.shard(0, 2)], x, **kw)
    elif world == 1:
        block = empirical_ntk(fn, x, **kw)
    else:
        block = empirical_ntk(fn, x[probe.shard(rank, world)], x, **kw)
    computed, compute_cpu = time.perf_counter(), time.process_time() - cpu_start
    sync = gather = 0.0
    if world == 1:
        kernel = block.to(torch.float64)
    else:
        failed = torch.tensor(0.0)
        dist.barrier()  # Lightning's strategy.reduce = barrier + all_reduce
        dist.all_reduce(failed)
        synced = time.perf_counter()
        kernel = _gather_rows(block.to(torch.float64), rank, world, probe, x.shape[0])
        gather = time.perf_counter() - synced
        sync = synced - computed
    end = time.perf_counter()
    torch.set_num_threads(1)
    m_o = x.shape[0] * ctx["outputs"]
    if tuple(kernel.shape) != ((m_o // 2, m_o) if config == "ws1_t1_shard" else (m_o, m_o)):
        raise RuntimeError(f"{config}: unexpected kernel shape {tuple(kernel.shape)}")
    if world == 1 and rank == 0:
        dist.barrier()  # release the idle rank
    return {
        "compute_s": computed - start,
        "compute_cpu_s": compute_cpu,
        "sync_s": sync,
        "gather_s": gather,
        "total_s": end - start,
    }


def _spin_up_threads() -> None:
    """Run one small parallel op so that a thread-count change is not paid inside a timed region."""
    a = torch.ones(256, 256)
    for _ in range(3):
        a = a @ a / 256.0


def _metrics_phase(config: str, rank: int, ctx: dict[str, Any]) -> dict[str, float]:
    """What ``LPLRMonitor._ntk_metrics`` computes from the assembled kernel, on every rank.

    ``spectrum_stats`` (eigenvalues), ``kernel_distance`` op and Frobenius against the first
    kernel, and ``‖Θ₀‖₂`` (``matrix_norm(ord=2)``, recomputed at every sample by the callback).
    At world size 2 both ranks do this on the same full kernel at the same time.
    """
    from lightning_lplr.functional.spectrum import kernel_distance, spectrum_stats

    world = 2 if config.startswith("ws2") else 1
    dist.barrier()
    if world == 1 and rank != 0:
        dist.barrier()
        return {}
    kernel, kernel0, m = ctx["kernel"], ctx["kernel0"], ctx["x"].shape[0]
    times: dict[str, float] = {}
    t = time.perf_counter()
    spectrum_stats(kernel, normalize=m)
    times["spectrum_s"] = time.perf_counter() - t
    t = time.perf_counter()
    kernel_distance(kernel, kernel0, norm="op")
    times["drift_op_s"] = time.perf_counter() - t
    t = time.perf_counter()
    kernel_distance(kernel, kernel0, norm="fro")
    times["drift_fro_s"] = time.perf_counter() - t
    t = time.perf_counter()
    float(torch.linalg.matrix_norm(kernel0.double() / m, ord=2))
    times["theta0_norm_s"] = time.perf_counter() - t
    times["metrics_s"] = sum(times.values())
    if world == 1:
        dist.barrier()
    return times


def _gather_alternatives(rank: int, ctx: dict[str, Any], repeats: int) -> dict[str, float]:
    """All-gather time of this rank's padded block: as the callback does it and two alternatives."""
    from torch.distributed.nn.functional import all_gather

    block = ctx["block"]
    out: dict[str, float] = {}
    for name in ("float64_strategy_all_gather", "float32_strategy_all_gather", "float32_dist_all_gather"):
        tensor = block.to(torch.float64 if name.startswith("float64") else torch.float32).contiguous()
        times = []
        for _ in range(repeats):
            dist.barrier()
            t = time.perf_counter()
            if "strategy" in name:
                with torch.no_grad():
                    torch.stack(all_gather(tensor))
            else:
                parts = [torch.empty_like(tensor) for _ in range(2)]
                dist.all_gather(parts, tensor)
                torch.stack(parts)
            times.append(time.perf_counter() - t)
        out[name] = _timing.median(times)
    return out


def _part_ntk(rank: int, cfg: dict[str, Any]) -> dict[str, Any]:
    from torch.func import functional_call

    from lightning_lplr.callbacks.probe import Probe
    from lightning_lplr.functional import empirical_ntk
    from lightning_lplr.functional.ntk import resolve_implementation

    torch.set_num_threads(1)
    net = mlp(cfg["dims"]).eval()
    params = {k: v.detach() for k, v in net.named_parameters()}

    def fn(p: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(net, p, (inputs,))

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(cfg["probe"], cfg["dims"][0], generator=gen)
    probe = Probe(x)
    ctx = {
        "fn": fn,
        "params": params,
        "x": x,
        "probe": probe,
        "implementation": cfg["implementation"],
        "outputs": cfg["dims"][-1],
    }
    records: dict[str, list[dict[str, float]]] = {c: [] for c in NTK_CONFIGS}
    for r in range(cfg["warmup"] + cfg["repeats"]):
        for config in NTK_CONFIGS:
            rec = _ntk_sample(config, rank, ctx)
            if r >= cfg["warmup"]:
                records[config].append(rec)
    kw = {"params": params, "kind": "full", "implementation": cfg["implementation"]}
    shard = probe.shard(rank, 2)
    ctx["block"] = empirical_ntk(fn, x[shard], x, **kw)
    gather_alt = _gather_alternatives(rank, ctx, max(2, cfg["repeats"]))
    metrics: dict[str, list[dict[str, float]]] = {"ws1_t1": [], "ws2_t1": []}
    if cfg["metrics_repeats"] > 0:
        # the reference kernel Θ₀ at slightly different parameters (a drifted run), float64
        torch.manual_seed(4)
        moved = {k: v + 0.01 * v.std() * torch.randn_like(v) for k, v in params.items()}
        ctx["kernel0"] = empirical_ntk(fn, x, **{**kw, "params": moved}).to(torch.float64)
        ctx["kernel"] = empirical_ntk(fn, x, **kw).to(torch.float64)
        for _ in range(cfg["metrics_repeats"]):
            for config in metrics:
                rec = _metrics_phase(config, rank, ctx)
                if rec:
                    metrics[config].append(rec)
    resolved: dict[str, str] = {}
    if cfg["implementation"] == "auto":  # what auto settled on (cached: no new trial)
        resolved["ws1"] = resolve_implementation(fn, x, params=params, kind="full").value
        resolved["ws2"] = resolve_implementation(fn, x[shard], x, params=params, kind="full").value
    else:
        resolved = {"ws1": cfg["implementation"], "ws2": cfg["implementation"]}
    return {
        "records": records,
        "implementation": resolved,
        "gather_alternatives": gather_alt,
        "metrics": metrics,
    }


# ---------------------------------------------------------------------------------------- part 2
def _part_fit(rank: int, cfg: dict[str, Any], workdir: str) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_lplr import LPLRMonitor

    _timing.quiet_lightning()
    dims = cfg["dims"]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(cfg["fit_samples"], dims[0], generator=gen)
    y = torch.randint(0, dims[-1], (cfg["fit_samples"],), generator=gen)
    probe_m = 32 if not cfg["quick"] else 8

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(dims, seed=3)

        def forward(self, inputs: Tensor) -> Tensor:
            return self.net(inputs)

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            xb, yb = batch
            return F.cross_entropy(self(xb), yb)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    def monitor(variant: str) -> LPLRMonitor | None:
        if variant == "none":
            return None
        every = None if variant == "lplr_default" else cfg["fit_every"]
        return LPLRMonitor(
            preset="default",
            ntk_every=every,
            probe=(x[:probe_m], y[:probe_m]),
            probe_size=probe_m,
            loss_fn=F.cross_entropy,
            implementation=cfg["implementation"],
        )

    results: dict[str, list[dict[str, Any]]] = {v: [] for v in FIT_VARIANTS}
    # Round 0 is a short warm-up of every variant (not recorded): first-iteration costs and
    # implementation="auto"'s one-time timed trial of the sharded NTK shapes.
    for round_index in range(cfg["fit_rounds"] + 1):
        for variant in FIT_VARIANTS:
            clock = _timing.make_fit_clock()
            mon = monitor(variant)
            timer = _timing.HookTimer(mon) if mon is not None else None
            callbacks: list[Any] = [clock] + ([mon] if mon is not None else [])
            steps = cfg["fit_steps"] if round_index > 0 else max(4, cfg["fit_steps"] // 10)
            trainer = pl.Trainer(
                accelerator="cpu",
                devices=2,
                strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=300)),
                max_steps=steps,
                callbacks=callbacks,
                logger=TensorBoardLogger(workdir, name=f"{variant}_{round_index}"),
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
                num_sanity_val_steps=0,
            )
            loader = DataLoader(TensorDataset(x, y), batch_size=cfg["fit_batch"], shuffle=True)
            started = time.perf_counter()
            trainer.fit(Net(), train_dataloaders=loader)
            fit_s = time.perf_counter() - started
            if round_index == 0:
                continue
            ntk_costs = [v for _, v in mon.history.get("cost/ntk_seconds", [])] if mon is not None else []
            results[variant].append(
                {
                    "fit_s": fit_s,
                    "train_s": clock.train_s,
                    "train_cpu_s": clock.train_cpu_s,
                    "steps": clock.steps,
                    "monitor_s": timer.in_loop_s if timer is not None else 0.0,
                    "monitor_cpu_s": timer.in_loop_cpu_s if timer is not None else 0.0,
                    "monitor_by_hook_s": dict(timer.by_hook) if timer is not None else {},
                    "ntk_samples": len(ntk_costs),
                    "ntk_seconds_sum": sum(ntk_costs),
                    "ntk_seconds": ntk_costs,
                }
            )
    return results


# ---------------------------------------------------------------------------------------- driver
def _worker(rank: int, cfg: dict[str, Any], port: int, fit_port: int, outdir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    out: dict[str, Any] = {"rank": rank}
    started = time.perf_counter()
    import lightning_lplr  # noqa: F401 - imports Lightning (seconds): keep it out of the parts' times

    out["import_s"] = time.perf_counter() - started
    _timing.quiet_lightning()
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=300),
    )
    started = time.perf_counter()
    out["ntk"] = _part_ntk(rank, cfg)
    out["ntk_part_s"] = time.perf_counter() - started
    dist.barrier()
    dist.destroy_process_group()
    if not cfg["skip_fit"]:
        # Lightning treats the processes as externally launched (LOCAL_RANK set) and initialises
        # its own process group from these variables.
        os.environ.update(
            {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(fit_port),
                "LOCAL_RANK": str(rank),
                "NODE_RANK": "0",
                "WORLD_SIZE": "2",
            }
        )
        started = time.perf_counter()
        out["fit"] = _part_fit(rank, cfg, os.path.join(outdir, "logs"))
        out["fit_part_s"] = time.perf_counter() - started
        if dist.is_initialized():
            # Tear Lightning's gloo group down now: left to interpreter exit, it can abort the
            # worker ("terminate called without an active exception").
            dist.destroy_process_group()
    Path(outdir, f"rank{rank}.json").write_text(json.dumps(out), encoding="utf-8")
    # Everything is written: skip interpreter finalization, where gloo's teardown can abort.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _phase_summary(records: list[dict[str, float]]) -> dict[str, Any]:
    keys = ("compute_s", "compute_cpu_s", "sync_s", "gather_s", "total_s")
    return {k: _timing.summarize(r[k] for r in records) for k in keys}


def _analyse_ntk(ranks: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    recs = [r["ntk"]["records"] for r in ranks]
    configs: dict[str, Any] = {}
    walls: dict[str, list[float]] = {}
    computes: dict[str, list[float]] = {}
    for config in NTK_CONFIGS:
        world = 2 if config.startswith("ws2") else 1
        per_rank = {str(r): _phase_summary(recs[r][config]) for r in range(world)}
        n = len(recs[0][config])
        wall = [max(recs[r][config][i]["total_s"] for r in range(world)) for i in range(n)]
        compute = [max(recs[r][config][i]["compute_s"] for r in range(world)) for i in range(n)]
        walls[config], computes[config] = wall, compute
        call = {
            "ws1_t1": "empirical_ntk(fn, x) [symmetric, the callback's world-size-1 path]",
            "ws2_t1": "empirical_ntk(fn, x[shard], x) + barrier/all_reduce(flag) + all_gather",
            "ws1_t2": "empirical_ntk(fn, x) with 2 threads",
            "ws1_t1_shard": "empirical_ntk(fn, x[shard 0 of 2], x) alone, no communication",
        }[config]
        configs[config] = {
            "world_size": world,
            "threads_per_rank": 2 if config.endswith("_t2") else 1,
            "call": call,
            "per_rank": per_rank,
            "wall_s": _timing.summarize(wall),
        }
    idle = [rec["idle_cpu_s"] for c in NTK_CONFIGS if not c.startswith("ws2") for rec in recs[1][c]]
    med = {c: _timing.median(walls[c]) for c in NTK_CONFIGS}
    speedup = {
        "ws2_vs_ws1_t1": _timing.safe_ratio(med["ws1_t1"], med["ws2_t1"]),
        "ws2_vs_ws1_t1_paired": _timing.paired_ratio(walls["ws1_t1"], walls["ws2_t1"]),
        "ws2_vs_ws1_t2": _timing.safe_ratio(med["ws1_t2"], med["ws2_t1"]),
        "compute_only_ws2_vs_ws1_t1": _timing.safe_ratio(
            _timing.median(computes["ws1_t1"]), _timing.median(computes["ws2_t1"])
        ),
        "ideal_if_no_contention": _timing.safe_ratio(med["ws1_t1"], med["ws1_t1_shard"]),
        "target": TARGET_SPEEDUP,
    }
    speedup["meets_target"] = bool(speedup["ws2_vs_ws1_t1"] >= TARGET_SPEEDUP)
    metrics: dict[str, Any] = {}
    sample_wall: dict[str, float] = {}
    for config in ("ws1_t1", "ws2_t1"):
        per_rank = [r["ntk"]["metrics"][config] for r in ranks]
        per_rank = [p for p in per_rank if p]
        if not per_rank:
            continue
        keys = per_rank[0][0].keys()
        metrics[config] = {
            k: _timing.summarize(max(p[i][k] for p in per_rank) for i in range(len(per_rank[0])))
            for k in keys
        }
        sample_wall[config] = med[config] + metrics[config]["metrics_s"]["median"]
    if len(sample_wall) == 2:
        speedup["whole_sample_ws2_vs_ws1_t1"] = _timing.safe_ratio(
            sample_wall["ws1_t1"], sample_wall["ws2_t1"]
        )
    dims = cfg["dims"]
    n_params = sum(a * b + b for a, b in itertools.pairwise(dims))
    m_o = cfg["probe"] * dims[-1]
    return {
        "model": "MLP " + "-".join(map(str, dims)) + " (ReLU)",
        "parameters": n_params,
        "probe_size": cfg["probe"],
        "kind": "full",
        "kernel_shape": [m_o, m_o],
        "gathered_bytes_per_rank": (-(-cfg["probe"] // 2)) * dims[-1] * m_o * 8,
        "implementation_requested": cfg["implementation"],
        "implementation_resolved": {str(r["rank"]): r["ntk"]["implementation"] for r in ranks},
        "warmup_rounds": cfg["warmup"],
        "repeats": cfg["repeats"],
        "order_per_round": list(NTK_CONFIGS),
        "configs": configs,
        "speedup": speedup,
        "kernel_metrics": {
            "what": "spectrum_stats + kernel_distance(op) + kernel_distance(fro) + matrix_norm(Θ₀, ord=2) "
            "on the assembled float64 kernel, as LPLRMonitor._ntk_metrics does on every rank (slowest rank)",
            "by_config": metrics,
        },
        "ntk_sample_wall_s": {
            "what": "median kernel wall (compute + sync + gather) + median kernel-metrics time = one NTK "
            "sample as cost/ntk_seconds counts it (without logging)",
            **sample_wall,
        },
        "gather_alternatives_s": {str(r["rank"]): r["ntk"]["gather_alternatives"] for r in ranks},
        "idle_rank_cpu_s": _timing.summarize(idle),
    }


def _analyse_fit(ranks: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    rank0 = ranks[0]["fit"]
    variants: dict[str, Any] = {}
    loops = {v: [max(r["fit"][v][i]["train_s"] for r in ranks) for i in range(len(rank0[v]))] for v in rank0}
    cpus = {v: [x["train_cpu_s"] for x in rank0[v]] for v in rank0}
    for v, runs in rank0.items():
        variants[v] = {
            "train_s": _timing.summarize(loops[v]),
            "train_cpu_s": _timing.summarize(cpus[v]),
            "fit_s": _timing.summarize(x["fit_s"] for x in runs),
            "monitor_in_loop_s": _timing.summarize(x["monitor_s"] for x in runs),
            "monitor_by_hook_s": {
                k: _timing.median([x["monitor_by_hook_s"].get(k, 0.0) for x in runs])
                for k in sorted({k for x in runs for k in x["monitor_by_hook_s"]})
                if _timing.median([x["monitor_by_hook_s"].get(k, 0.0) for x in runs]) >= 1e-3
            },
            "ntk_samples": runs[0]["ntk_samples"] if runs else 0,
            "ntk_seconds_per_sample": _timing.summarize(s for x in runs for s in x["ntk_seconds"]),
            "steps": runs[0]["steps"] if runs else 0,
        }
    ratios = {}
    for v in FIT_VARIANTS[1:]:
        hooks_cpu = [
            x["train_cpu_s"] / (x["train_cpu_s"] - x["monitor_cpu_s"])
            for x in rank0[v]
            if x["train_cpu_s"] > x["monitor_cpu_s"]
        ]
        hooks = [
            x["train_s"] / (x["train_s"] - x["monitor_s"]) for x in rank0[v] if x["train_s"] > x["monitor_s"]
        ]
        ratios[v] = {
            "wall": _timing.safe_ratio(_timing.median(loops[v]), _timing.median(loops["none"])),
            "wall_paired": _timing.paired_ratio(loops[v], loops["none"]),
            "hooks": _timing.median(hooks),
            "cpu": _timing.safe_ratio(_timing.median(cpus[v]), _timing.median(cpus["none"])),
            "hooks_cpu": _timing.median(hooks_cpu),
        }
    return {
        "model": "MLP " + "-".join(map(str, cfg["dims"])) + " (ReLU), cross-entropy, SGD lr 0.05",
        "world_size": 2,
        "backend": "gloo",
        "threads_per_rank": 1,
        "steps": cfg["fit_steps"],
        "batch_per_rank": cfg["fit_batch"],
        "rounds": cfg["fit_rounds"],
        "monitor": "LPLRMonitor(preset='default', probe=32 training samples, loss_fn=cross_entropy)",
        "cadence": {
            "lplr_default": "preset default: log_spaced(per_decade=5, max_interval=1000), every step <= 4",
            "lplr_every": f"ntk_every={cfg['fit_every']}",
        },
        "variants": variants,
        "ratios": ratios,
        "note": "wall = median loop time / median loop time of 'none' (slowest rank); wall_paired = median "
        "of per-round ratios; hooks = loop / (loop - time inside the monitor's hooks on rank 0); cpu, "
        "hooks_cpu: the same with rank 0's CPU time (blind to time spent waiting in collectives).",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update(
        quick=args.quick,
        implementation=args.implementation,
        skip_fit=args.skip_fit,
    )
    if args.repeats:
        cfg["repeats"] = args.repeats
    if args.probe:
        cfg["probe"] = args.probe
    if args.metrics_repeats is not None:
        cfg["metrics_repeats"] = args.metrics_repeats
    if args.fit_steps:
        cfg["fit_steps"] = args.fit_steps
    result: dict[str, Any] = {
        "benchmark": "ddp",
        "schema_version": _timing.SCHEMA_VERSION,
        "quick": args.quick,
        "environment": _timing.environment(),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lplr_bench_ddp_") as outdir:
        mp.spawn(_worker, args=(cfg, _free_port(), _free_port(), outdir), nprocs=2, join=True)
        ranks = [json.loads(Path(outdir, f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    result["ntk"] = _analyse_ntk(ranks, cfg)
    result["fit"] = None if args.skip_fit else _analyse_fit(ranks, cfg)
    result["parts_s"] = {
        "worker_imports": ranks[0]["import_s"],
        "ntk": ranks[0]["ntk_part_s"],
        "fit": ranks[0].get("fit_part_s", math.nan),
    }
    result["wall_seconds"] = time.perf_counter() - started
    result["load_average_at_end"] = _timing.load_average()
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--implementation", default="auto", help="empirical_ntk implementation (default auto)")
    p.add_argument("--repeats", type=int, default=0, help="timed NTK rounds (default 5, quick 2)")
    p.add_argument("--probe", type=int, default=0, help="probe samples (default 256, quick 16)")
    p.add_argument("--fit-steps", type=int, default=0, help="steps of the DDP fit (default 200)")
    p.add_argument(
        "--metrics-repeats",
        type=int,
        default=None,
        help="timed repeats of the kernel metrics (eigen/SVD) phase, 0 skips it (default 1)",
    )
    p.add_argument("--skip-fit", action="store_true", help="only the NTK part")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = run(args)
    _timing.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
