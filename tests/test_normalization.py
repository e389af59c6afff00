"""``empirical_ntk(norm_mode=...)``: each mode against a float64 oracle of its own definition.

The model is a small BatchNorm CNN (Conv2d → BatchNorm2d → ReLU → Flatten → Dropout → Linear →
BatchNorm1d, three outputs) kept in *training* mode, as it is while it trains. The oracles are
written here, independently of the package:

* ``"probe"``: the network written out as explicit tensor operations; the statistics of both
  BatchNorm layers are computed on the whole probe at θ (layer by layer, with the first layer
  normalised by its batch statistics), detached, and the Jacobian of the batch outputs with
  those constants is taken with ``torch.autograd.functional.jacobian`` (the samples are then
  independent, so it stacks the per-sample Jacobians);
* ``"train"``: ``torch.autograd.functional.jacobian`` of the whole batch's outputs of a deep copy
  of the module in training mode (buffer copies, so nothing is updated), dropout off;
* ``"eval"``: the explicit network with the running statistics.

Every kind is derived from the oracle ``J`` (rows ``i·O + a``). Tolerance: 1e-10 relative to
``max |K|`` in float64 (reordered sums of ~10² products are ~1e-14 relative; a wrong term is O(1)).
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_lplr.functional import _structured
from lightning_lplr.functional._problem import Problem
from lightning_lplr.functional.normalization import NormOverride, NormStatistics, probe_statistics
from lightning_lplr.functional.ntk import NTKImplementation, NTKKind, empirical_ntk, resolve_implementation

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

IMPLS = [i for i in NTKImplementation if i is not NTKImplementation.AUTO]
KINDS = list(NTKKind)
TOL = 1e-10
EPS = 1e-5
M = 6  # probe size


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """One intra-op thread: tiny kernels on a shared 2-core machine (see tests/test_ntk.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# The model and the oracles
# --------------------------------------------------------------------------------------------


def bn_cnn(track_running_stats: bool = True, sync: bool = False) -> nn.Module:
    """The BatchNorm CNN in float64 and in training mode, non-trivial affine and running statistics."""
    torch.manual_seed(0)
    norm2d: type[nn.Module] = nn.SyncBatchNorm if sync else nn.BatchNorm2d
    norm1d: type[nn.Module] = nn.SyncBatchNorm if sync else nn.BatchNorm1d
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3),  # 0: (2, 5, 5) -> (3, 3, 3)
        norm2d(3, eps=EPS, track_running_stats=track_running_stats),  # 1
        nn.ReLU(),  # 2
        nn.Flatten(),  # 3
        nn.Dropout(0.3),  # 4: active in training mode; every norm_mode switches it off
        nn.Linear(27, 3),  # 5
        norm1d(3, eps=EPS, track_running_stats=track_running_stats),  # 6
    ).double()
    with torch.no_grad():
        for bn in (net[1], net[6]):
            bn.weight.normal_(1.0, 0.3)
            bn.bias.normal_(0.0, 0.3)
            mean, var = torch.randn_like(bn.weight) * 0.5, torch.rand_like(bn.weight) * 1.5 + 0.5
            if track_running_stats:  # the same parameters either way
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
    return net.train()


def probe(seed: int = 1, m: int = M) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, 2, 5, 5, generator=g, dtype=torch.float64)


def _bn(h: Tensor, w: Tensor, b: Tensor, stats: tuple[Tensor, Tensor] | None, record: list | None) -> Tensor:
    dims = [0, *range(2, h.ndim)]
    if stats is None:
        stats = (h.mean(dim=dims), ((h - h.mean(dim=dims, keepdim=True)) ** 2).mean(dim=dims))
        if record is not None:
            record.append(tuple(t.detach() for t in stats))
    shape = (1, -1) + (1,) * (h.ndim - 2)
    mean, var = stats
    return (h - mean.view(shape)) / torch.sqrt(var.view(shape) + EPS) * w.view(shape) + b.view(shape)


def explicit_forward(
    p: dict[str, Tensor], x: Tensor, stats: list | None = None, record: list | None = None
) -> Tensor:
    """The CNN (dropout off) as tensor operations; ``stats=None``: batch statistics (differentiable)."""
    s = stats or [None, None]
    h = F.conv2d(x, p["0.weight"], p["0.bias"])
    h = torch.relu(_bn(h, p["1.weight"], p["1.bias"], s[0], record)).flatten(1)
    h = h @ p["5.weight"].T + p["5.bias"]
    return _bn(h, p["6.weight"], p["6.bias"], s[1], record)


def _flat(net: nn.Module) -> tuple[Tensor, list[str], list[torch.Size]]:
    params = {n: p.detach() for n, p in net.named_parameters()}
    names = list(params)
    return torch.cat([params[n].reshape(-1) for n in names]), names, [params[n].shape for n in names]


def _unflat(vec: Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, Tensor]:
    sizes = [math.prod(s) for s in shapes]
    return {n: v.reshape(s) for n, v, s in zip(names, torch.split(vec, sizes), shapes, strict=True)}


def oracle_jacobian(net: nn.Module, x: Tensor, mode: str) -> Tensor:
    """``J`` as ``(m, O, P)`` of the mode's own definition."""
    flat, names, shapes = _flat(net)
    if mode == "train":
        twin = copy.deepcopy(net).train()
        twin[4].p = 0.0  # dropout off

        def f(v: Tensor) -> Tensor:
            return functional_call(twin, _unflat(v, names, shapes), (x,)).reshape(-1)

    elif mode == "probe":
        record: list = []
        with torch.no_grad():
            explicit_forward(_unflat(flat, names, shapes), x, None, record)

        def f(v: Tensor) -> Tensor:
            return explicit_forward(_unflat(v, names, shapes), x, record).reshape(-1)

    else:
        running = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in (net[1], net[6])]

        def f(v: Tensor) -> Tensor:
            return explicit_forward(_unflat(v, names, shapes), x, running).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, flat)
    return jac.reshape(x.shape[0], -1, flat.numel())


def kernels_from(j: Tensor) -> dict[NTKKind, Tensor]:
    m, o, p = j.shape
    per_output = torch.einsum("iap,jap->ija", j, j)
    ps = j.sum(dim=1) / math.sqrt(o)
    a = torch.einsum("ia,iap->ip", loss_weights(m, o), j)  # loss gradients J_iᵀ g_i
    return {
        NTKKind.FULL: j.reshape(m * o, p) @ j.reshape(m * o, p).T,
        NTKKind.TRACE: per_output.mean(dim=2),
        NTKKind.DIAGONAL: per_output,
        NTKKind.PSEUDO: ps @ ps.T,
        NTKKind.LOSS_GRAM: a @ a.T,
    }


def loss_weights(m: int, o: int) -> Tensor:
    """Fixed output weights standing in for per-sample loss gradients (``kind="loss_gram"``)."""
    return torch.randn(m, o, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def kind_kwargs(kind: NTKKind, m: int = M, o: int = 3) -> dict[str, Tensor]:
    return {"output_weights": loss_weights(m, o)} if kind is NTKKind.LOSS_GRAM else {}


@functools.cache
def oracle(mode: str, track: bool = True) -> dict[NTKKind, Tensor]:
    return kernels_from(oracle_jacobian(bn_cnn(track), probe(), mode))


def assert_close(got: Tensor, expected: Tensor, what: str, tol: float = TOL) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    err = (got - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} × max |K| = {scale:.3e}"


Snapshot = tuple[dict[str, bool], dict[tuple[str, str], object], dict[str, Tensor], Tensor]


def snapshot(net: nn.Module) -> Snapshot:
    """Flags, the objects in every module's buffer slots (``None`` included), buffer values, the RNG state."""
    flags = {n: m.training for n, m in net.named_modules()}
    slots = {(n, b): v for n, m in net.named_modules() for b, v in m._buffers.items()}
    values = {n: b.clone() for n, b in net.named_buffers()}
    return flags, slots, values, torch.get_rng_state()


def assert_untouched(net: nn.Module, before: Snapshot) -> None:
    flags, slots, values, rng = before
    assert {n: m.training for n, m in net.named_modules()} == flags, "a train/eval flag changed"
    now = {(n, b): v for n, m in net.named_modules() for b, v in m._buffers.items()}
    assert now.keys() == slots.keys()
    for key, obj in slots.items():
        assert now[key] is obj, f"buffer slot {key} holds another object"
    for name, value in values.items():
        assert torch.equal(dict(net.named_buffers())[name], value), f"buffer {name} changed"
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG was consumed"


def test_oracles_agree_where_they_must() -> None:
    """Guards the oracles: explicit batch-statistics network = torch's training mode (so the explicit
    network is the CNN), and the probe/train outputs coincide (only derivatives differ)."""
    net, x = bn_cnn(), probe()
    twin = copy.deepcopy(net).train()
    twin[4].p = 0.0
    p = {n: q.detach() for n, q in net.named_parameters()}
    assert_close(explicit_forward(p, x), twin(x).detach(), "explicit vs torch train forward")
    flat, names, shapes = _flat(net)
    j_explicit = torch.autograd.functional.jacobian(
        lambda v: explicit_forward(_unflat(v, names, shapes), x).reshape(-1), flat
    )
    assert_close(j_explicit.reshape(M, 3, -1), oracle_jacobian(net, x, "train"), "explicit vs torch train J")
    assert not torch.allclose(oracle("probe")[NTKKind.FULL], oracle("train")[NTKKind.FULL])


# --------------------------------------------------------------------------------------------
# Each mode × implementation × kind against its oracle; nothing left changed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["probe", "train", "eval"])
@pytest.mark.parametrize("implementation", [*IMPLS, NTKImplementation.AUTO], ids=lambda i: i.value)
def test_mode_matches_its_oracle(mode: str, implementation: NTKImplementation) -> None:
    net, x = bn_cnn(), probe()
    before = snapshot(net)
    for kind in KINDS:
        got = empirical_ntk(
            net, x, kind=kind, implementation=implementation, norm_mode=mode, **kind_kwargs(kind)
        )
        assert got.dtype == torch.float64
        assert_close(got, oracle(mode)[kind], f"{mode}/{implementation.value}/{kind.value}")
    assert_untouched(net, before)


def test_structured_uses_the_analytic_batchnorm_path_in_probe_mode() -> None:
    """Both BatchNorm layers are factorised analytically (with the probe statistics), none falls back."""
    net, x = bn_cnn(), probe()
    stats = probe_statistics(net, x)
    problem = Problem(net, None, x, None, norm=NormOverride("probe", stats))
    backend = _structured.Structured(problem, NTKKind.FULL)
    assert sorted(layer.type for layer in backend.plan.layers) == [
        "batchnorm",
        "batchnorm",
        "conv2d",
        "linear",
    ]
    assert backend.plan.fallback == []


@pytest.mark.parametrize("implementation", IMPLS, ids=lambda i: i.value)
def test_row_shards_equal_rows_of_the_probe_kernel(implementation: NTKImplementation) -> None:
    """Rows x1 ⊂ probe against the whole probe, statistics of the whole probe: the rows of the kernel."""
    net, x = bn_cnn(), probe()
    stats = probe_statistics(net, x)
    for kind in (NTKKind.FULL, NTKKind.TRACE, NTKKind.PSEUDO):
        whole = empirical_ntk(net, x, kind=kind, implementation=implementation, norm_mode="probe")
        per_row = whole.shape[0] // M
        for rows, given in ((slice(0, 2), x), (slice(2, 5), stats), (slice(5, 6), x)):
            block = empirical_ntk(
                net,
                x[rows],
                x,
                kind=kind,
                implementation=implementation,
                norm_mode="probe",
                norm_statistics=given,
            )
            expected = whole[rows.start * per_row : rows.stop * per_row]
            assert_close(block, expected, f"{implementation.value}/{kind.value} rows {rows}")


def test_train_mode_chunking_and_budget() -> None:
    net, x = bn_cnn(), probe()
    expected = oracle("train")[NTKKind.FULL]
    for impl in ("jacobian_contraction", "ntk_vector_products"):
        for chunk in (1, 4):
            got = empirical_ntk(net, x, implementation=impl, norm_mode="train", chunk_size=chunk)
            assert_close(got, expected, f"{impl} chunk_size={chunk}")
        got = empirical_ntk(net, x, implementation=impl, norm_mode="train", max_memory_bytes=2**20)
        assert_close(got, expected, f"{impl} max_memory_bytes")
    with pytest.raises(ValueError, match=r"max_memory_bytes=1000 is too small for norm_mode='train'"):
        empirical_ntk(net, x, implementation="jacobian_contraction", norm_mode="train", max_memory_bytes=1000)
    assert resolve_implementation(net, x, norm_mode="train") is NTKImplementation.JACOBIAN_CONTRACTION
    # Estimates (float64): Jacobian contraction ≈ 76 kB (the 18 × 153 Jacobian twice, 44 kB, plus the
    # vmapped backward of one sample's rows), NTK-vector products ≈ 57 kB; 90 % of 70 kB fits only the latter.
    tight = resolve_implementation(net, x, norm_mode="train", max_memory_bytes=70_000)
    assert tight is NTKImplementation.NTK_VECTOR_PRODUCTS
    got = empirical_ntk(net, x, norm_mode="train", max_memory_bytes=70_000)
    assert_close(got, expected, "auto under a budget")


# --------------------------------------------------------------------------------------------
# Which function: running statistics do not matter in the probe mode (lr = 0), they do in eval
# --------------------------------------------------------------------------------------------


def test_probe_kernel_ignores_running_statistics_eval_kernel_does_not() -> None:
    net, x = bn_cnn(), probe()
    other = copy.deepcopy(net)
    with torch.no_grad():
        other(probe(seed=7, m=16) * 3 + 1)  # a training-mode step's forward: new running statistics
    assert not torch.allclose(other[1].running_mean, net[1].running_mean)
    for impl in IMPLS:
        k_net = empirical_ntk(net, x, implementation=impl, norm_mode="probe")
        k_other = empirical_ntk(other, x, implementation=impl, norm_mode="probe")
        assert torch.equal(k_net, k_other), impl.value
        e_net = empirical_ntk(net, x, implementation=impl, norm_mode="eval")
        e_other = empirical_ntk(other, x, implementation=impl, norm_mode="eval")
        assert (e_net - e_other).norm() > 1e-3 * e_net.norm(), impl.value


# --------------------------------------------------------------------------------------------
# Variants: no running statistics, SyncBatchNorm, a plain callable, norms that do not mix
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLS, ids=lambda i: i.value)
def test_batchnorm_without_running_statistics(implementation: NTKImplementation) -> None:
    net, x = bn_cnn(track_running_stats=False), probe()
    before = snapshot(net)
    for mode in ("probe", "train"):
        got = empirical_ntk(net, x, implementation=implementation, norm_mode=mode)
        assert_close(got, oracle(mode, False)[NTKKind.FULL], f"{mode} without running statistics")
    # Without running statistics the probe and train functions equal those of the tracked network.
    assert_close(oracle("probe", False)[NTKKind.FULL], oracle("probe")[NTKKind.FULL], "probe: tracking")
    with pytest.raises(ValueError, match=r"norm_mode='eval'.*no running statistics.*1 \(BatchNorm2d\)"):
        empirical_ntk(net, x, implementation=implementation, norm_mode="eval")
    assert_untouched(net, before)


@pytest.mark.parametrize("mode", ["probe", "train", "eval"])
def test_sync_batchnorm_is_batchnorm_in_one_process(mode: str) -> None:
    assert not torch.distributed.is_initialized()
    net, x = bn_cnn(sync=True), probe()
    before = snapshot(net)
    for impl in IMPLS:
        got = empirical_ntk(net, x, implementation=impl, norm_mode=mode)
        assert_close(got, oracle(mode)[NTKKind.FULL], f"SyncBatchNorm {mode}/{impl.value}")
    assert_untouched(net, before)


@pytest.mark.parametrize("mode", ["probe", "train", "eval"])
def test_plain_callable(mode: str) -> None:
    """``f(params, x)`` calling the module through ``functional_call`` (as the monitors do), also with the
    module's buffers passed explicitly: same kernels, the module restored."""
    net, x = bn_cnn(), probe()
    params = {n: p.detach() for n, p in net.named_parameters()}
    buffers = dict(net.named_buffers())
    before = snapshot(net)

    def fn(p: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(net, p, (xb,)) * 1.0

    def fn_buffers(p: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(net, {**p, **buffers}, (xb,))

    for f in (fn, fn_buffers):
        for impl in IMPLS:
            got = empirical_ntk(f, x, params=params, implementation=impl, norm_mode=mode)
            assert_close(got, oracle(mode)[NTKKind.FULL], f"callable {mode}/{impl.value}")
    assert_untouched(net, before)


def test_norms_that_do_not_mix_samples_are_unchanged() -> None:
    """GroupNorm, LayerNorm and InstanceNorm: every mode gives the per-sample kernel of the network;
    an InstanceNorm tracking running statistics uses its instance statistics in probe/train modes."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.InstanceNorm2d(4, affine=True),
        nn.Conv2d(4, 3, 3),
        nn.Flatten(),
        nn.LayerNorm(3),
        nn.Linear(3, 2),
    ).double()
    x = probe()
    reference = empirical_ntk(net.eval(), x, implementation="jacobian_contraction")
    net.train()
    before = snapshot(net)
    for mode in ("probe", "train", "eval"):
        for impl in IMPLS:
            got = empirical_ntk(net, x, implementation=impl, norm_mode=mode)
            assert_close(got, reference, f"{mode}/{impl.value}")
    assert_untouched(net, before)
    tracked = copy.deepcopy(net)
    tracked[3] = nn.InstanceNorm2d(4, affine=True, track_running_stats=True).double()
    tracked[3].load_state_dict(net[3].state_dict(), strict=False)
    with torch.no_grad():
        tracked[3].running_mean.fill_(0.5)
        tracked[3].running_var.fill_(2.0)
    before = snapshot(tracked)
    for mode in ("probe", "train"):
        got = empirical_ntk(tracked, x, implementation="structured", norm_mode=mode)
        assert_close(got, reference, f"tracked InstanceNorm {mode}")
    running = empirical_ntk(tracked, x, implementation="structured", norm_mode="eval")
    assert (running - reference).norm() > 1e-3 * reference.norm()
    assert_untouched(tracked, before)


# --------------------------------------------------------------------------------------------
# The probe-vs-train gap, measured; what is structural, asserted
# --------------------------------------------------------------------------------------------


def test_probe_versus_train_gap() -> None:
    """Measures how far the probe-mode kernel is from the exact training-mode kernel on the CNN and
    asserts two structural facts of training mode that the probe mode does not share:

    * BatchNorm's mean subtraction cancels the bias before it: its training-mode kernel is zero;
    * the head is a BatchNorm, so ``Σ_i f_a(x_i) = m·β_a`` for every θ: the vector ``1 ⊗ e_a`` is an
      eigenvector of the training-mode full kernel with eigenvalue ``m`` exactly.
    """
    net, x = bn_cnn(), probe()
    k_probe = empirical_ntk(net, x, norm_mode="probe", implementation="structured")
    k_train = empirical_ntk(net, x, norm_mode="train")
    ev_probe, ev_train = torch.linalg.eigvalsh(k_probe), torch.linalg.eigvalsh(k_train)
    gap_min = abs(ev_probe[0] - ev_train[0]).item() / ev_train[0].item()
    gap_max = abs(ev_probe[-1] - ev_train[-1]).item() / ev_train[-1].item()
    gap_fro = ((k_probe - k_train).norm() / k_train.norm()).item()
    print(
        f"\nprobe vs train on the BatchNorm CNN (m={M}, O=3): "
        f"λ_min {ev_probe[0]:.4g} vs {ev_train[0]:.4g} (rel. diff {gap_min:.3g}); "
        f"λ_max {ev_probe[-1]:.4g} vs {ev_train[-1]:.4g} (rel. diff {gap_max:.3g}); "
        f"‖K_probe − K_train‖_F / ‖K_train‖_F = {gap_fro:.3g}"
    )
    assert gap_fro > 1e-6  # the modes are different functions' kernels (the measured gap is far larger)

    bias = {"0.bias": net[0].bias.detach()}
    b_train = empirical_ntk(net, x, params=bias, norm_mode="train")
    b_probe = empirical_ntk(net, x, params=bias, norm_mode="probe")
    assert b_probe.abs().max() > 1e-3
    assert b_train.abs().max() <= TOL * b_probe.abs().max()

    o = 3
    for a in range(o):
        u = torch.zeros(M, o, dtype=torch.float64)
        u[:, a] = 1.0
        u = u.reshape(-1)
        residual = (k_train @ u - M * u).norm() / (M * u.norm())
        assert residual <= TOL * k_train.abs().max() / M, f"output {a}: residual {residual:.2e}"
        assert (k_probe @ u - M * u).norm() / (M * u.norm()) > 1e-3  # not a property of the probe mode


# --------------------------------------------------------------------------------------------
# Statistics and errors
# --------------------------------------------------------------------------------------------


def test_probe_statistics_are_the_training_batch_statistics() -> None:
    net, x = bn_cnn(), probe()
    before = snapshot(net)
    stats = probe_statistics(net, x)
    record: list = []
    with torch.no_grad():
        explicit_forward({n: p.detach() for n, p in net.named_parameters()}, x, None, record)
    assert isinstance(stats, NormStatistics) and len(stats) == 2 and stats.num_samples == M
    for (mean, var), got_mean, got_var in zip(record, stats.means, stats.variances, strict=True):
        assert_close(got_mean, mean, "mean")
        assert_close(got_var, var, "biased variance")
    assert_untouched(net, before)
    params = {n: p.detach() * 1.5 for n, p in net.named_parameters()}
    assert not torch.allclose(probe_statistics(net, x, params=params).means[1], stats.means[1])


def test_errors_name_the_argument_and_the_fix() -> None:
    net, x = bn_cnn(), probe()
    with pytest.raises(ValueError, match=r"norm_mode='batch' is not a known norm_mode.*'probe'"):
        empirical_ntk(net, x, norm_mode="batch")
    with pytest.raises(ValueError, match=r"norm_mode='probe' with x2 needs.*norm_statistics="):
        empirical_ntk(net, x[:2], x, norm_mode="probe")
    with pytest.raises(ValueError, match=r"norm_mode='train'.*x2 must be None"):
        empirical_ntk(net, x[:2], x, norm_mode="train")
    for mode in (None, "train", "eval"):
        with pytest.raises(ValueError, match=r"norm_statistics is given but norm_mode="):
            empirical_ntk(net, x, norm_mode=mode, norm_statistics=x)
    with pytest.raises(TypeError, match=r"norm_statistics must be a tensor of inputs or a NormStatistics"):
        empirical_ntk(net, x, norm_mode="probe", norm_statistics=[x])
    foreign = probe_statistics(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(50)).double(), x)
    with pytest.raises(ValueError, match=r"shape \(50,\) but the layer input has 3 channels"):
        empirical_ntk(net, x, norm_mode="probe", norm_statistics=foreign)
    short = NormStatistics(probe_statistics(net, x).means[:1], probe_statistics(net, x).variances[:1], M)
    with pytest.raises(ValueError, match=r"more batch-normalisation calls than the 1"):
        empirical_ntk(net, x, norm_mode="probe", norm_statistics=short)
    with pytest.raises(ValueError, match=r"model has modules that mix"):  # norm_mode=None: as before
        empirical_ntk(net, x)


class _Boom(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("boom")


class _ScaledNorm(nn.Module):
    """A module owning a parameter and containing BatchNorm and dropout (structured: no local replay)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.5, 0.5, 2.0], dtype=torch.float64))
        self.norm = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.norm(x)) * self.scale


def test_state_restored_when_the_forward_raises() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.2), _Boom()).double().train()
    x = torch.randn(5, 4, dtype=torch.float64)
    before = snapshot(net)
    for mode in ("probe", "train", "eval"):
        with pytest.raises(RuntimeError, match="boom"):
            empirical_ntk(net, x, norm_mode=mode)
        assert_untouched(net, before)
    bad = nn.Sequential(nn.BatchNorm2d(3)).double().train()  # BatchNorm2d on 2-d input: raises inside it
    before = snapshot(bad)
    with pytest.raises(ValueError, match="expected 4D input"):
        empirical_ntk(bad, x[:, :3], norm_mode="eval")
    assert_untouched(bad, before)


def test_structured_with_a_custom_module_holding_normalisation_and_dropout() -> None:
    """Its own parameter goes to the fallback (a local replay would run outside the override)."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Tanh(), _ScaledNorm(), nn.Linear(3, 2))
    net = net.double().train()
    x = torch.randn(6, 4, dtype=torch.float64)
    before = snapshot(net)
    stats = probe_statistics(net, x)
    problem = Problem(net, None, x, None, norm=NormOverride("probe", stats))
    backend = _structured.Structured(problem, NTKKind.FULL)
    assert backend.plan.fallback == ["3.scale"]
    got = empirical_ntk(net, x, implementation="structured", norm_mode="probe")
    reference = empirical_ntk(net, x, implementation="jacobian_contraction", norm_mode="probe")
    assert_close(got, reference, "structured with a custom module holding BatchNorm and dropout")
    assert_untouched(net, before)
