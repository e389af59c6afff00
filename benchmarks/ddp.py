"""DDP benchmark of the monitor's NTK: per-rank time of one NTK sample at world size 1 and 2 (issue 4).

Part 1 — one NTK sample exactly as the callback takes it: ``NTKPart.sample`` (the sharded kernel
of ``kernel_block`` and ``gathered``, then its two eigendecompositions split over the ranks by
``_spectra``, then the probe PL ratio and ``μ_NTK``), on plain ``torch.multiprocessing.spawn``
workers joined in a gloo group. The callback reaches the collectives through an injected
``Collective``; here ``StrategyCollective`` wraps a small adapter with Lightning's
``DDPStrategy`` semantics on that group (``reduce``: a barrier then an all-reduce;
``all_gather``: ``torch.distributed.nn.functional.all_gather`` then ``stack``), so the code
timed is the callback's own, not a copy.

Configurations, interleaved round by round (``ws1_t1, ws2_t1, ws1_t2`` …):

* ``ws1_t1``: world size 1, one thread — rank 0 alone (rank 1 waits in a barrier; its CPU time
  during the wait is recorded as ``idle_rank_cpu_s`` to show that it does not compete);
* ``ws2_t1``: world size 2, one thread per rank — the like-for-like comparison on two cores;
* ``ws1_t2``: world size 1 with two threads, the fair single-process baseline on two cores.

The model is an MLP 784-512-512-10 (ReLU), the probe 256 random inputs with random labels and
``loss_fn=cross_entropy``: a 2560 × 2560 full kernel. The sample is not the first of the run
(``Θ₀`` is the kernel at slightly moved parameters), so the drift ``‖Θ−Θ₀‖₂`` is computed as in
every later sample. Per configuration and rank: the phases ``kernel_s`` (compute, error-flag
reduce, all-gather), ``spectra_s`` (the eigendecompositions and their exchange) and the sample's
``total_s``; the wall time of a sample is the slowest rank's total.

Part 2 — whole-step overhead: a short DDP fit (2 ranks, gloo, Lightning ``DDPStrategy`` in the
same worker processes, which Lightning sees as externally launched) of the same MLP on random
10-class data, without and with ``LPLRMonitor(preset="default")`` at its default cadence
(log-spaced) and at ``ntk_every=50``, interleaved; ratio of the training-loop wall times, and
the in-fit estimate ``loop / (loop − time inside the monitor's hooks)``.

Usage:
    python benchmarks/ddp.py                 # full sizes, about 2 minutes on two cores
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
}
NTK_CONFIGS = ("ws1_t1", "ws2_t1", "ws1_t2")
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
class _Strategy:
    """Lightning ``DDPStrategy``'s collectives on the benchmark's gloo group (what the callback calls)."""

    def __init__(self, world: int) -> None:
        self.world = world

    def reduce(self, tensor: Tensor, reduce_op: str = "mean") -> Tensor:
        out = tensor.clone()
        dist.barrier()  # as lightning.fabric's _sync_ddp: barrier, then all_reduce
        dist.all_reduce(out)
        return out / self.world if reduce_op == "mean" else out

    def all_gather(self, tensor: Tensor) -> Tensor:
        from torch.distributed.nn.functional import all_gather

        with torch.no_grad():
            return torch.stack(all_gather(tensor.contiguous()))


class _Module(nn.Module):
    """The network with the ``device`` attribute of a ``LightningModule`` the sample reads."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _timed(record: dict[str, float], key: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record[key] = record.get(key, 0.0) + time.perf_counter() - start

    return wrapper


def _spin_up_threads() -> None:
    """Run one small parallel op so that a thread-count change is not paid inside a timed region."""
    a = torch.ones(256, 256)
    for _ in range(3):
        a = a @ a / 256.0


def _ntk_sample(config: str, rank: int, ctx: dict[str, Any]) -> dict[str, float]:
    """One NTK sample (``NTKPart.sample``) of ``config`` on this rank: its phase times (or idle CPU)."""
    world = 2 if config.startswith("ws2") else 1
    threads = 2 if config.endswith("_t2") else 1
    dist.barrier()
    if world == 1 and rank != 0:
        cpu = time.process_time()
        dist.barrier()  # wait while rank 0 computes alone
        return {"idle_cpu_s": time.process_time() - cpu}
    part, module, collective = ctx["part"], ctx["module"], ctx["collectives"][world]
    record: dict[str, float] = {}
    from lightning_lplr.callbacks import _ntk_part as ntk_part

    # The kernel phase: this rank's block, then the gather (module functions the part calls).
    ntk_part.kernel_block = _timed(record, "kernel_s", ctx["block_fn"])
    ntk_part.gathered = _timed(record, "kernel_s", ctx["gather_fn"])
    part._spectra = _timed(record, "spectra_s", ctx["spectra_fn"])
    torch.set_num_threads(threads)
    _spin_up_threads()
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = part.sample(module, 1, collective, lr=0.1, loss_pred="not timed")
    record["total_s"] = time.perf_counter() - start
    record["cpu_s"] = time.process_time() - cpu_start
    torch.set_num_threads(1)
    if "ntk/lambda_min" not in metrics or "pl/mu_ntk" not in metrics:
        raise RuntimeError(f"{config}: the NTK sample was skipped: {metrics}")
    record["lambda_min"] = metrics["ntk/lambda_min"]
    record["drift_op"] = metrics["ntk/drift_op"]
    if world == 1 and rank == 0:
        dist.barrier()  # release the idle rank
    return record


def _part_ntk(rank: int, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch.nn.functional as F
    from torch.func import functional_call

    from lightning_lplr import LPLRMonitor
    from lightning_lplr.callbacks import _ntk_part as ntk_part
    from lightning_lplr.callbacks._collective import LocalCollective, StrategyCollective, shards
    from lightning_lplr.callbacks.probe import Probe
    from lightning_lplr.functional import empirical_ntk, spectrum_stats
    from lightning_lplr.functional.ntk import resolve_implementation

    torch.set_num_threads(1)
    net = mlp(cfg["dims"]).eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(cfg["probe"], cfg["dims"][0], generator=gen)
    y = torch.randint(0, cfg["dims"][-1], (cfg["probe"],), generator=gen)
    monitor = LPLRMonitor(
        kind="full",
        probe_size=cfg["probe"],
        implementation=cfg["implementation"],
        loss_fn=F.cross_entropy,
        log_histograms=False,
    )
    part = monitor._ntk
    part.probe = Probe(x, y)
    part.ref.theta0 = {f"net.{k}": v.clone() for k, v in params.items()}
    # Θ₀ at slightly moved parameters: a later sample of a run whose kernel has drifted.
    torch.manual_seed(4)
    moved = {f"net.{k}": v + 0.01 * v.std() * torch.randn_like(v) for k, v in params.items()}
    module = _Module(net)
    part.bind(module)
    collectives = {1: LocalCollective(), 2: StrategyCollective(_Strategy(2), 2, rank)}

    def fn(p: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(module, p, (inputs,))

    kernel0 = empirical_ntk(fn, x, params=moved, kind="full").to(torch.float64)
    stats0 = spectrum_stats(kernel0, normalize=cfg["probe"])
    part.ref.kernel0, part.ref.lambda_min0, part.ref.lambda_max0 = (
        kernel0,
        stats0.lambda_min,
        stats0.lambda_max,
    )
    ctx = {
        "part": part,
        "module": module,
        "collectives": collectives,
        "block_fn": ntk_part.kernel_block,
        "gather_fn": ntk_part.gathered,
        "spectra_fn": part._spectra,
    }
    records: dict[str, list[dict[str, float]]] = {c: [] for c in NTK_CONFIGS}
    for r in range(cfg["warmup"] + cfg["repeats"]):
        for config in NTK_CONFIGS:
            rec = _ntk_sample(config, rank, ctx)
            if r >= cfg["warmup"]:
                records[config].append(rec)
    shard = shards(cfg["probe"], 2)[rank][0]
    trainable = {f"net.{k}": v for k, v in params.items()}
    resolved: dict[str, str] = {}
    if cfg["implementation"] == "auto":  # what auto settled on (cached: no new trial)
        resolved["ws1"] = resolve_implementation(fn, x, params=trainable, kind="full").value
        resolved["ws2"] = resolve_implementation(fn, x[shard], x, params=trainable, kind="full").value
    else:
        resolved = {"ws1": cfg["implementation"], "ws2": cfg["implementation"]}
    return {"records": records, "implementation": resolved}


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
            overhead=None,  # this part measures the DDP cost of the schedules, not the budget
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


_PHASES = ("kernel_s", "spectra_s", "total_s", "cpu_s")


def _phase_summary(records: list[dict[str, float]]) -> dict[str, Any]:
    return {k: _timing.summarize(r[k] for r in records) for k in _PHASES}


def _analyse_ntk(ranks: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    recs = [r["ntk"]["records"] for r in ranks]
    configs: dict[str, Any] = {}
    walls: dict[str, dict[str, list[float]]] = {}
    for config in NTK_CONFIGS:
        world = 2 if config.startswith("ws2") else 1
        n = len(recs[0][config])
        # the slowest rank per round and phase
        walls[config] = {
            k: [max(recs[r][config][i][k] for r in range(world)) for i in range(n)]
            for k in ("kernel_s", "spectra_s", "total_s")
        }
        configs[config] = {
            "world_size": world,
            "threads_per_rank": 2 if config.endswith("_t2") else 1,
            "per_rank": {str(r): _phase_summary(recs[r][config]) for r in range(world)},
            "wall_s": _timing.summarize(walls[config]["total_s"]),
            "kernel_wall_s": _timing.summarize(walls[config]["kernel_s"]),
            "spectra_wall_s": _timing.summarize(walls[config]["spectra_s"]),
        }
    # The same numbers at either world size (the DDP tests check this to 1e-5 on real fits).
    lam = {c: recs[0][c][0]["lambda_min"] for c in NTK_CONFIGS}
    drift = {c: recs[0][c][0]["drift_op"] for c in NTK_CONFIGS}
    idle = [rec["idle_cpu_s"] for c in NTK_CONFIGS if not c.startswith("ws2") for rec in recs[1][c]]

    def ratio(base: str, phase: str = "total_s") -> float:
        return _timing.safe_ratio(_timing.median(walls[base][phase]), _timing.median(walls["ws2_t1"][phase]))

    speedup = {
        "ntk_sample_ws2_vs_ws1_t1": ratio("ws1_t1"),
        "ntk_sample_ws2_vs_ws1_t1_paired": _timing.paired_ratio(
            walls["ws1_t1"]["total_s"], walls["ws2_t1"]["total_s"]
        ),
        "ntk_sample_ws2_vs_ws1_t2": ratio("ws1_t2"),
        "kernel_ws2_vs_ws1_t1": ratio("ws1_t1", "kernel_s"),
        "spectra_ws2_vs_ws1_t1": ratio("ws1_t1", "spectra_s"),
        "target": TARGET_SPEEDUP,
    }
    speedup["meets_target"] = bool(speedup["ntk_sample_ws2_vs_ws1_t1"] >= TARGET_SPEEDUP)
    dims = cfg["dims"]
    n_params = sum(a * b + b for a, b in itertools.pairwise(dims))
    m_o = cfg["probe"] * dims[-1]
    return {
        "model": "MLP " + "-".join(map(str, dims)) + " (ReLU)",
        "parameters": n_params,
        "probe_size": cfg["probe"],
        "kind": "full",
        "kernel_shape": [m_o, m_o],
        "gathered_bytes_per_rank": (-(-cfg["probe"] // 2)) * dims[-1] * m_o * 4,
        "implementation_requested": cfg["implementation"],
        "implementation_resolved": {str(r["rank"]): r["ntk"]["implementation"] for r in ranks},
        "what": "NTKPart.sample: kernel (compute, error-flag reduce, all-gather of the rows "
        "in float32) + spectra (eigenvalues of K on rank 0, ‖K−K₀‖₂ on rank 1, all-gather of n+1 "
        "floats) + the probe PL ratio and μ_NTK; wall = slowest rank",
        "warmup_rounds": cfg["warmup"],
        "repeats": cfg["repeats"],
        "order_per_round": list(NTK_CONFIGS),
        "configs": configs,
        "speedup": speedup,
        "same_values": {"lambda_min": lam, "drift_op": drift},
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
    if args.fit_steps:
        cfg["fit_steps"] = args.fit_steps
    result: dict[str, Any] = _timing.header("ddp", args.quick)
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
    p.add_argument("--skip-fit", action="store_true", help="only the NTK part")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    result = run(args)
    _timing.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
