"""Time and peak memory of every empirical-NTK implementation, side by side (issue 7).

Cases (``--quick`` shrinks every size for a smoke test):

* ``mlp``: MLP 784-512-512-10 (ReLU), 64 probe samples, ``full`` and ``trace`` kernels;
* ``resnet20``: ResNet-20-style CNN (CIFAR 32×32×3 input, widths 16/32/64, BatchNorm in eval
  mode, about 0.27M parameters), 32 probe samples, ``full`` kernel.

Each case lists every :class:`~lightning_lplr.functional.NTKImplementation` (``auto`` included,
timed in its steady state after its one-time trial) and ``autograd_loop``: the naive baseline
with one ``torch.autograd.grad`` per (sample, output) row of ``J``, then ``J Jᵀ``.
``ntk_vector_products`` on the ResNet takes minutes (about 111 s per call on this CPU) and is only
run with ``--all``.

Method:

* Every case runs in a fresh subprocess (``--quick``: in this process). There, for each
  implementation in turn, the first (cold) call is measured for memory: the peak resident set
  (``VmHWM``) is reset through ``/proc/self/clear_refs`` just before the call and the peak
  minus the resident set before the call is reported as ``peak_rss_delta_bytes``. Large tensors
  are ``mmap``-ed by the allocator and returned to the system when freed, so earlier
  implementations do not hide later ones' allocations. (Python's ``tracemalloc`` does not see
  torch's CPU tensors; this RSS delta covers everything the call touches.) Where
  ``clear_refs`` is unavailable the field is ``null``.
* Then timed rounds: every implementation once per round, the order rotated round by round,
  ``--repeats`` rounds (an implementation whose cold call took more than 20 s is timed once, one
  under 0.5 s five times per round: short calls are the most exposed to stalls on a shared CPU).
  Reported: the median, and the ratio of medians to ``jacobian_contraction``
  (``time_ratio_to_jacobian_contraction`` < 1 means faster; ``speedup_vs_jacobian_contraction``
  is its inverse) plus the median of per-round (paired) speedups.
* Every kernel is compared with ``jacobian_contraction``'s (max abs difference relative to the
  largest entry).

``--scaling`` adds structured (and Jacobian contraction where its Jacobian fits in 3 GB) at probe
sizes 16…256 and widths 128…1024 for the MLP. ``--memory`` runs, each in its own subprocess,
cases whose unchunked peak exceeds a ``max_memory_bytes`` budget, with and without the budget,
and checks the peak stays within the budget (+10 %); the model is built before the baseline is
taken, so the budget is compared with memory beyond the model.

Usage::

    python benchmarks/ntk.py --out benchmarks/results/ntk.json [--scaling] [--memory] [--all]
    python benchmarks/ntk.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import _timing

_timing.ensure_importable()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from lightning_lplr.functional.ntk import NTKImplementation, empirical_ntk, trainable_params  # noqa: E402

LOOP = "autograd_loop"
REFERENCE = NTKImplementation.JACOBIAN_CONTRACTION.value
SLOW_S = 20.0
FAST_S, FAST_INNER = 0.5, 5
"""Implementations whose cold call took under FAST_S seconds are timed FAST_INNER times per round."""
TARGETS = [
    ("mlp", "full", NTKImplementation.STRUCTURED.value, 300.0),
    ("mlp", "trace", NTKImplementation.STRUCTURED.value, 200.0),
    ("resnet20", "full", NTKImplementation.STRUCTURED.value, 2.0),
]
"""(case, kind, implementation, required speed-up over jacobian_contraction) from issue 7."""


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


def mlp(width: int = 512, depth: int = 2, inputs: int = 784, outputs: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan_in = inputs
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, outputs))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _ResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016): 3 stages × 3 basic blocks, widths w, 2w, 4w."""

    def __init__(self, width: int = 16, classes: int = 10, blocks: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers = []
        cin = width
        for stage, w in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                layers.append(_BasicBlock(cin, w, 2 if (j == 0 and stage > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(out.mean(dim=(2, 3)))


def build(spec: dict[str, Any]) -> tuple[nn.Module, Tensor]:
    """The model (eval mode, BatchNorm statistics made non-trivial) and probe of a case spec."""
    torch.manual_seed(0)
    if spec["model"] == "mlp":
        model: nn.Module = mlp(spec["width"], spec["depth"], spec["inputs"], spec["outputs"])
        x = torch.randn(spec["m"], spec["inputs"])
    else:
        model = _ResNet20(spec["width"], spec["outputs"], spec["blocks"])
        x = torch.randn(spec["m"], 3, spec["image"], spec["image"])
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return model.eval(), x


# ------------------------------------------------------------------------------------------------
# The naive baseline
# ------------------------------------------------------------------------------------------------


def autograd_loop(model: nn.Module, x: Tensor, kind: str) -> Tensor:
    """One ``torch.autograd.grad`` per (sample, output) row of ``J``, then ``J Jᵀ`` (or the trace kernel)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1]).reshape(-1)
        for a in range(out.numel()):
            grads = torch.autograd.grad(out[a], params, retain_graph=a + 1 < out.numel())
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)  # (m·O, P), sample-major
    if kind == "full":
        return jac @ jac.T
    m = x.shape[0]
    j3 = jac.reshape(m, -1, jac.shape[1])
    return torch.einsum("iap,jap->ij", j3, j3) / j3.shape[1]


def compute(model: nn.Module, x: Tensor, kind: str, impl: str, budget: int | None = None) -> Tensor:
    if impl == LOOP:
        return autograd_loop(model, x, kind)
    return empirical_ntk(model, x, kind=kind, implementation=impl, max_memory_bytes=budget)


# ------------------------------------------------------------------------------------------------
# Measurement (inside a worker)
# ------------------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def measure_peak(fn: Any) -> tuple[Any, float, int | None]:
    """Run ``fn()`` once: its result, wall time and peak RSS above the RSS before the call."""
    ok = _reset_peak()
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    delta = None if not ok or before is None or peak is None else max(0, peak - before)
    return result, elapsed, delta


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Memory (cold call) then interleaved timing of every implementation of one case."""
    torch.set_num_threads(spec["threads"])
    model, x = build(spec)
    params = trainable_params(model)
    out: dict[str, Any] = {
        "spec": spec,
        "parameters": sum(p.numel() for p in params.values()),
        "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "kinds": {},
    }
    # Lazy initialisation (MKL, torch.func) outside every measurement.
    for impl in spec["impls"]:
        if impl != LOOP:
            compute(model, x[:2], spec["kinds"][0], NTKImplementation.JACOBIAN_CONTRACTION.value)
            break
    for kind in spec["kinds"]:
        impls = list(spec["impls"])
        kernels: dict[str, Tensor] = {}
        res: dict[str, dict[str, Any]] = {}
        for impl in impls:
            kernel, cold, peak = measure_peak(lambda impl=impl, kind=kind: compute(model, x, kind, impl))
            kernels[impl] = kernel
            res[impl] = {"cold_call_s": cold, "peak_rss_delta_bytes": peak, "times_s": []}
        reference = kernels.get(REFERENCE, next(iter(kernels.values())))
        scale = reference.abs().max().item()
        for impl, kernel in kernels.items():
            res[impl]["max_rel_diff_vs_reference"] = (kernel - reference).abs().max().item() / scale
        del kernels, reference
        for r in range(spec["repeats"]):
            order = impls[r % len(impls) :] + impls[: r % len(impls)]
            for impl in order:
                cold = res[impl]["cold_call_s"]
                if r > 0 and cold > SLOW_S:
                    continue
                for _ in range(FAST_INNER if cold < FAST_S else 1):
                    start = time.perf_counter()
                    compute(model, x, kind, impl)
                    res[impl]["times_s"].append(time.perf_counter() - start)
        ref_times = res.get(REFERENCE, {}).get("times_s", [])
        ref_median = statistics.median(ref_times) if ref_times else math.nan
        for _impl, r in res.items():
            r["median_s"] = statistics.median(r["times_s"])
            r["repeats"] = len(r["times_s"])
            r["time_ratio_to_jacobian_contraction"] = _timing.safe_ratio(r["median_s"], ref_median)
            r["speedup_vs_jacobian_contraction"] = _timing.safe_ratio(ref_median, r["median_s"])
            n = min(len(r["times_s"]), len(ref_times))
            r["paired_speedup_vs_jacobian_contraction"] = _timing.paired_ratio(
                ref_times[:n], r["times_s"][:n]
            )
        out["kinds"][kind] = res
    return out


def run_budget(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one implementation with and without ``max_memory_bytes`` (fresh process)."""
    torch.set_num_threads(spec["threads"])
    model, x = build(spec)
    kind, impl, budget = spec["kinds"][0], spec["impl"], spec["budget"]
    compute(model, x[:2], kind, impl)  # lazy initialisation (and auto's trial on a tiny probe)
    kernel, elapsed, peak = measure_peak(lambda: compute(model, x, kind, impl, budget))
    del kernel
    return {
        "spec": spec,
        "budget_bytes": budget,
        "peak_rss_delta_bytes": peak,
        "seconds": elapsed,
        "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }


# ------------------------------------------------------------------------------------------------
# Orchestration
# ------------------------------------------------------------------------------------------------


def _implementations(include_slow: bool, model: str) -> list[str]:
    impls = [i.value for i in NTKImplementation if i is not NTKImplementation.AUTO]
    impls.append(NTKImplementation.AUTO.value)
    if model == "resnet20" and not include_slow:
        impls.remove(NTKImplementation.NTK_VECTOR_PRODUCTS.value)
    return [*impls, LOOP]


def case_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    q = args.quick
    common = {"threads": args.threads, "repeats": args.repeats}
    mlp_spec = {
        "model": "mlp",
        "width": 16 if q else 512,
        "depth": 2,
        "inputs": 20 if q else 784,
        "outputs": 3 if q else 10,
        "m": 8 if q else 64,
        "kinds": ["full", "trace"],
    }
    resnet_spec = {
        "model": "resnet20",
        "width": 4 if q else 16,
        "outputs": 3 if q else 10,
        "blocks": 1 if q else 3,
        "image": 8 if q else 32,
        "m": 4 if q else 32,
        "kinds": ["full"],
    }
    specs = []
    for name, spec in (("mlp", mlp_spec), ("resnet20", resnet_spec)):
        spec = {**common, **spec, "name": name}
        spec["impls"] = _implementations(args.all or q, spec["model"])
        specs.append(spec)
    return specs


def scaling_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    q = args.quick
    probes = [4, 8] if q else [16, 32, 64, 128, 256]
    widths = [8, 16] if q else [128, 256, 512, 1024]
    base = {
        "model": "mlp",
        "depth": 2,
        "inputs": 20 if q else 784,
        "outputs": 3 if q else 10,
        "threads": args.threads,
        "repeats": max(1, min(args.repeats, 3)),
        "kinds": ["full", "trace"],
    }
    specs = []
    for m in probes:
        specs.append({**base, "name": f"mlp_m{m}", "width": 16 if q else 512, "m": m, "sweep": "probe"})
    for w in widths:
        specs.append({**base, "name": f"mlp_w{w}", "width": w, "m": 8 if q else 64, "sweep": "width"})
    for spec in specs:
        p = spec["width"] * (spec["inputs"] + 1) + (spec["depth"] - 1) * spec["width"] * (spec["width"] + 1)
        p += spec["outputs"] * (spec["width"] + 1)
        jac_bytes = 3 * spec["m"] * spec["outputs"] * p * 4
        spec["impls"] = [NTKImplementation.STRUCTURED.value]
        if jac_bytes <= 3 * 1024**3:
            spec["impls"].append(REFERENCE)
    return specs


def memory_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    q = args.quick
    common = {"threads": args.threads, "repeats": 1}
    mlp_spec = {
        "model": "mlp",
        "width": 64 if q else 512,
        "depth": 2,
        "inputs": 100 if q else 784,
        "outputs": 10,
        "m": 32 if q else 64,
        "kinds": ["full"],
    }
    resnet_spec = {
        "model": "resnet20",
        "width": 4 if q else 16,
        "outputs": 10,
        "blocks": 1 if q else 3,
        "image": 8 if q else 32,
        "m": 8 if q else 32,
        "kinds": ["full"],
    }
    mib = 1024**2
    cases = [
        ("mlp", mlp_spec, REFERENCE, (4 if q else 400) * mib),
        ("mlp", mlp_spec, NTKImplementation.AUTO.value, (4 if q else 400) * mib),
        ("resnet20", resnet_spec, NTKImplementation.STRUCTURED.value, (4 if q else 300) * mib),
        ("resnet20", resnet_spec, REFERENCE, (4 if q else 300) * mib),
    ]
    specs = []
    for name, spec, impl, budget in cases:
        for b in (None, budget):
            specs.append({**common, **spec, "name": name, "impl": impl, "budget": b})
    return specs


def _in_subprocess(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run(
        [sys.executable, __file__, "--_worker", mode, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        return {"spec": spec, "error": proc.stderr.strip().splitlines()[-5:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run(mode: str, spec: dict[str, Any], in_process: bool) -> dict[str, Any]:
    if in_process:
        return run_case(spec) if mode == "case" else run_budget(spec)
    return _in_subprocess(mode, spec)


def _summaries(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {c["spec"]["name"]: c for c in cases if "kinds" in c}
    rows = []
    for name, kind, impl, required in TARGETS:
        res = by_name.get(name, {}).get("kinds", {}).get(kind, {}).get(impl, {})
        measured = res.get("speedup_vs_jacobian_contraction", math.nan)
        rows.append(
            {
                "case": name,
                "kind": kind,
                "implementation": impl,
                "metric": "speedup_vs_jacobian_contraction",
                "required": required,
                "measured": measured,
                "paired": res.get("paired_speedup_vs_jacobian_contraction", math.nan),
                "met": bool(measured >= required) if math.isfinite(measured) else False,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, in-process: a smoke test")
    parser.add_argument("--scaling", action="store_true", help="probe-size and width sweeps (MLP)")
    parser.add_argument("--memory", action="store_true", help="max_memory_bytes cases, peak vs budget")
    parser.add_argument("--all", action="store_true", help="include ntk_vector_products on the ResNet")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per case (default 5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--no-main", action="store_true", help="only --scaling/--memory")
    parser.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        mode, spec = args._worker[0], json.loads(args._worker[1])
        result = run_case(spec) if mode == "case" else run_budget(spec)
        sys.stdout.write(json.dumps(_timing._finite_or_none(result)) + "\n")
        return result
    if args.quick:
        args.repeats = min(args.repeats, 2)
    in_process = args.quick
    result: dict[str, Any] = {
        **_timing.header("ntk", args.quick),
        "settings": {
            "quick": args.quick,
            "repeats": args.repeats,
            "threads": args.threads,
            "memory_method": "peak RSS (VmHWM after clear_refs) minus RSS before the call, fresh "
            "process per case" + (" (in-process: --quick)" if in_process else ""),
        },
        "cases": [] if args.no_main else [_run("case", spec, in_process) for spec in case_specs(args)],
    }
    result["targets"] = _summaries(result["cases"])
    if args.scaling:
        result["scaling"] = [_run("case", spec, in_process) for spec in scaling_specs(args)]
    if args.memory:
        rows = []
        for spec in memory_specs(args):
            r = _run("budget", spec, in_process)
            if r.get("budget_bytes") and r.get("peak_rss_delta_bytes") is not None:
                r["peak_over_budget"] = r["peak_rss_delta_bytes"] / r["budget_bytes"]
                r["within_budget_10pct"] = r["peak_over_budget"] <= 1.10
            rows.append(r)
        result["memory"] = rows
    result["environment"]["load_average_at_end"] = _timing.load_average()
    _timing.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
