"""``empirical_ntk`` on pytree probes and with output masks, against float64 brute-force oracles.

Two models take several inputs: ``TimeConditioned.forward(x, t)`` (a tuple probe) and ``TinyLM``,
a HuggingFace-shaped causal language model ``forward(input_ids=..., attention_mask=...)`` whose
logits are ``(m, L, V)`` (a dict probe with int64 leaves). Like HuggingFace's mask code, TinyLM
branches on its data (``if attention_mask.all():``), which ``vmap`` cannot batch: the
implementations must fall back to a loop over samples. A tiny real GPT-2 and BERT from
``transformers`` close the file.

The oracles are written here, independently of the package: the calling convention spelled out
(a tuple positionally, a dict as keyword arguments), ``torch.autograd.functional.jacobian`` of the
flattened batch outputs with respect to one flat parameter vector, and the masked kernels from
their definitions (the masked full kernel by an explicit ``autograd.grad`` loop over the kept
outputs only). Tolerance 1e-10 relative to ``max |K|`` in float64 (reordered sums of ~10³
products are ~1e-13 relative; any wrong term is O(1)).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_lplr.functional import ntk
from lightning_lplr.functional._problem import Problem
from lightning_lplr.functional.normalization import probe_statistics
from lightning_lplr.functional.ntk import NTKImplementation, NTKKind, empirical_ntk, resolve_implementation

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

IMPLS = [i for i in NTKImplementation if i is not NTKImplementation.AUTO]
KINDS = list(NTKKind)
TOL = 1e-10
M, L, V = 4, 5, 7


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """One intra-op thread: tiny kernels on a shared 2-core machine (see tests/test_ntk.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Models and probes
# --------------------------------------------------------------------------------------------


class TimeConditioned(nn.Module):
    """``forward(x, t)``: a time-conditioned regressor (as in diffusion models), 3 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.time = nn.Linear(1, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.out(torch.tanh(self.inp(x) + self.time(t[:, None])))


class TinyLM(nn.Module):
    """A causal LM shaped like HuggingFace's: keyword inputs, int64 ids, logits ``(b, L, V)``."""

    def __init__(self, vocab: int = V, d: int = 8, length: int = L) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.3 * torch.randn(length, d))
        self.qkv = nn.Linear(d, 3 * d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        length = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos[:length]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        allowed = torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
        if not attention_mask.all():  # data-dependent control flow, as in HuggingFace's mask code
            allowed = allowed & attention_mask.bool()[:, None, :]
        h = h + torch.softmax(scores.masked_fill(~allowed, -1e4), dim=-1) @ v
        return self.head(torch.tanh(self.norm(h)))


def time_case() -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    model = TimeConditioned().double()
    x = (torch.randn(M + 2, 4, dtype=torch.float64), torch.rand(M + 2, dtype=torch.float64))
    return model, x


def lm_case() -> tuple[nn.Module, dict[str, Tensor]]:
    torch.manual_seed(1)
    model = TinyLM().double()
    ids = torch.randint(0, V, (M, L))
    mask = torch.ones(M, L, dtype=torch.long)
    mask[0, 3:] = 0  # right padding
    mask[2, 4:] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


CASES = {"tuple_forward_x_t": time_case, "dict_tiny_lm": lm_case}


# --------------------------------------------------------------------------------------------
# The oracles
# --------------------------------------------------------------------------------------------


def _call(model: nn.Module, params: dict[str, Tensor], x: Any) -> Tensor:
    """The documented convention, written out: a dict as keyword arguments, a tuple positionally."""
    if isinstance(x, dict):
        return functional_call(model, params, (), x)
    return functional_call(model, params, tuple(x))


def _flat(model: nn.Module) -> tuple[Tensor, Any]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    tensors = dict(model.named_parameters())
    shapes = [tensors[n].shape for n in names]
    sizes = [tensors[n].numel() for n in names]
    flat = torch.cat([tensors[n].detach().reshape(-1) for n in names])

    def unflat(vec: Tensor) -> dict[str, Tensor]:
        return {n: v.reshape(s) for n, v, s in zip(names, torch.split(vec, sizes), shapes, strict=True)}

    return flat, unflat


def oracle_jacobian(model: nn.Module, x: Any) -> Tensor:
    """``J`` of the batch outputs, ``(m, O, P)``."""
    flat, unflat = _flat(model)
    jac = torch.autograd.functional.jacobian(lambda v: _call(model, unflat(v), x).reshape(-1), flat)
    m = next(iter(x.values())).shape[0] if isinstance(x, dict) else x[0].shape[0]
    return jac.reshape(m, -1, flat.numel())


def masked_kernels(
    j1: Tensor, j2: Tensor, keep1: Tensor, keep2: Tensor, g1: Tensor, g2: Tensor
) -> dict[NTKKind, Tensor]:
    """Every kind from its masked definition (``keep``: ``(m, O)`` bool; ``g``: loss gradients)."""
    k1, k2 = keep1.double(), keep2.double()
    n1, n2 = k1.sum(1), k2.sum(1)
    per_output = torch.einsum("iap,jap->ija", j1, j2) * k1[:, None, :] * k2[None, :, :]
    norm = torch.sqrt(n1[:, None] * n2[None, :])
    s1 = torch.einsum("ia,iap->ip", k1, j1) / n1.sqrt()[:, None]
    s2 = torch.einsum("ia,iap->ip", k2, j2) / n2.sqrt()[:, None]
    a1 = torch.einsum("ia,iap->ip", g1 * k1, j1)
    a2 = torch.einsum("ia,iap->ip", g2 * k2, j2)
    p = j1.shape[2]
    return {
        NTKKind.FULL: j1.reshape(-1, p)[keep1.reshape(-1)] @ j2.reshape(-1, p)[keep2.reshape(-1)].T,
        NTKKind.TRACE: per_output.sum(2) / norm,
        NTKKind.DIAGONAL: per_output,
        NTKKind.PSEUDO: s1 @ s2.T,
        NTKKind.LOSS_GRAM: a1 @ a2.T,
    }


def weights(m: int, o: int, seed: int = 0) -> Tensor:
    return torch.randn(m, o, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@functools.cache
def oracle(name: str) -> tuple[Tensor, Tensor]:
    """``(J, g)`` of a case's probe (``g``: fixed output weights for loss_gram)."""
    model, x = CASES[name]()
    j = oracle_jacobian(model, x)
    return j, weights(j.shape[0], j.shape[1])


def unmasked(name: str) -> dict[NTKKind, Tensor]:
    j, g = oracle(name)
    keep = torch.ones(j.shape[:2], dtype=torch.bool)
    return masked_kernels(j, j, keep, keep, g, g)


def assert_close(got: Tensor, expected: Tensor, what: str, tol: float = TOL) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    err = (got - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} × max |K| = {scale:.3e}"


def extra(kind: NTKKind, g: Tensor) -> dict[str, Tensor]:
    return {"output_weights": g} if kind is NTKKind.LOSS_GRAM else {}


def test_oracle_convention_and_masked_definitions() -> None:
    """Guards the oracles: the written-out convention calls the module as documented, and the masked
    definitions with every output kept reduce to the unmasked kinds (trace = mean, pseudo = Σ/√O)."""
    model, x = lm_case()
    direct = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
    assert torch.equal(_call(model, dict(model.named_parameters()), x), direct)
    k = unmasked("dict_tiny_lm")
    j, _ = oracle("dict_tiny_lm")
    o = j.shape[1]
    assert_close(k[NTKKind.TRACE], torch.einsum("iap,jap->ij", j, j) / o, "trace = mean over outputs")
    s = j.sum(1) / math.sqrt(o)
    assert_close(k[NTKKind.PSEUDO], s @ s.T, "pseudo = Σ_a f_a / √O")


# --------------------------------------------------------------------------------------------
# Pytree probes: every implementation × kind
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("implementation", IMPLS, ids=lambda i: i.value)
@pytest.mark.parametrize("name", list(CASES))
def test_pytree_probe_matches_oracle(name: str, implementation: NTKImplementation, kind: NTKKind) -> None:
    model, x = CASES[name]()
    _, g = oracle(name)
    got = empirical_ntk(model, x, kind=kind, implementation=implementation, **extra(kind, g))
    assert got.dtype == torch.float64
    assert_close(got, unmasked(name)[kind], f"{name}/{implementation.value}/{kind.value}")


@pytest.mark.parametrize("implementation", [*IMPLS, NTKImplementation.AUTO], ids=lambda i: i.value)
@pytest.mark.parametrize("name", list(CASES))
def test_pytree_rows_chunks_and_budget(name: str, implementation: NTKImplementation) -> None:
    """Rows of the probe against the whole probe (as the monitor shards it), chunking and a budget."""
    model, x = CASES[name]()
    _, g = oracle(name)
    rows = slice(1, 3)
    x_rows = {k: v[rows] for k, v in x.items()} if isinstance(x, dict) else tuple(v[rows] for v in x)
    m = g.shape[0]
    o = g.shape[1]
    for kind in (NTKKind.FULL, NTKKind.PSEUDO, NTKKind.LOSS_GRAM):
        expected = unmasked(name)[kind]
        expected_rows = expected[rows.start * o : rows.stop * o] if kind is NTKKind.FULL else expected[rows]
        ex = {"output_weights": g[rows], "output_weights2": g} if kind is NTKKind.LOSS_GRAM else {}
        block = empirical_ntk(model, x_rows, x, kind=kind, implementation=implementation, **ex)
        assert_close(block, expected_rows, f"rows, {kind.value}")
        chunked = empirical_ntk(
            model, x, kind=kind, implementation=implementation, chunk_size=3, **extra(kind, g)
        )
        assert_close(chunked, expected, f"chunk_size=3, {kind.value}")
    problem = Problem(model, None, x, None)
    backend = ntk._BACKENDS[NTKImplementation.JACOBIAN_CONTRACTION](problem, NTKKind.FULL)
    budget = math.ceil((backend.memory_bytes(2, 2) + (m * o) ** 2 * 8) / ntk._BUDGET_MARGIN)
    budgeted = empirical_ntk(model, x, implementation=implementation, max_memory_bytes=budget)
    assert_close(budgeted, unmasked(name)[NTKKind.FULL], "max_memory_bytes")


def test_list_probe_and_plain_callable() -> None:
    """A list is passed positionally like a tuple; a plain callable receives the pytree as it is."""
    model, x = time_case()
    expected = unmasked("tuple_forward_x_t")[NTKKind.FULL]
    assert_close(empirical_ntk(model, list(x)), expected, "list probe")
    params = {n: p.detach() for n, p in model.named_parameters()}
    seen: list[type] = []

    def fn(p: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        seen.append(type(batch))
        return functional_call(model, p, (batch["x"], batch["t"]))

    for impl in IMPLS:
        got = empirical_ntk(fn, {"x": x[0], "t": x[1]}, params=params, implementation=impl)
        assert_close(got, expected, f"plain callable, {impl.value}")
    assert set(seen) == {dict}


def test_tinylm_needs_the_sample_loop() -> None:
    """vmap cannot batch TinyLM's data-dependent branch: the problem switches to a loop over samples
    (and a model vmap can batch stays on vmap)."""
    model, x = lm_case()
    problem = Problem(model, None, x, None)
    problem.map_samples(lambda d: problem.single(problem.params, d), x)
    assert problem.loop_samples
    model2, x2 = time_case()
    problem2 = Problem(model2, None, x2, None)
    problem2.map_samples(lambda d: problem2.single(problem2.params, d), x2)
    assert not problem2.loop_samples


def test_auto_caches_per_input_structure(monkeypatch: pytest.MonkeyPatch) -> None:
    ntk.clear_auto_cache()
    model, x = time_case()
    trials: list[int] = []
    real = ntk._timed_trial

    def spy(prep: object, candidates: list) -> object:
        trials.append(1)
        return real(prep, candidates)  # type: ignore[arg-type]

    monkeypatch.setattr(ntk, "_timed_trial", spy)
    first = resolve_implementation(model, x)
    assert resolve_implementation(model, (x[0] + 1, x[1])) is first and len(trials) == 1
    resolve_implementation(model, list(x))  # another structure: a new trial
    assert len(trials) == 2


class TimeConditionedBN(nn.Module):
    """``forward(x, t)`` with BatchNorm (kept in training mode) and its single-tensor twin below."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.out(torch.tanh(self.bn(self.inp(torch.cat([x, t[:, None]], dim=1)))))


class Concatenated(nn.Module):
    def __init__(self, inner: TimeConditionedBN) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, xt: Tensor) -> Tensor:
        return self.inner(xt[:, :4], xt[:, 4])


@pytest.mark.parametrize("implementation", IMPLS, ids=lambda i: i.value)
def test_norm_modes_with_pytree_equal_the_tensor_path(implementation: NTKImplementation) -> None:
    """Every norm_mode on a tuple probe equals the same network fed one concatenated tensor;
    norm_statistics accept the tuple probe (rows against the whole probe)."""
    torch.manual_seed(2)
    net = TimeConditionedBN().double()
    twin = Concatenated(net)
    x, t = torch.randn(6, 4, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    xt = torch.cat([x, t[:, None]], dim=1)
    for mode in ("probe", "train", "eval"):
        for kind in (NTKKind.FULL, NTKKind.PSEUDO):
            got = empirical_ntk(net, (x, t), kind=kind, implementation=implementation, norm_mode=mode)
            ref = empirical_ntk(twin, xt, kind=kind, implementation=implementation, norm_mode=mode)
            assert_close(got, ref, f"{mode}/{kind.value}")
    whole = empirical_ntk(net, (x, t), implementation=implementation, norm_mode="probe")
    for stats in ((x, t), probe_statistics(net, (x, t))):
        rows = empirical_ntk(
            net,
            (x[:2], t[:2]),
            (x, t),
            implementation=implementation,
            norm_mode="probe",
            norm_statistics=stats,
        )
        assert_close(rows, whole[:4], "probe rows")
    assert net.training and int(net.bn.num_batches_tracked) == 0


def test_pytree_errors_name_the_argument() -> None:
    model, x = time_case()
    with pytest.raises(ValueError, match=r"x1 holds tensors with different leading \(sample\) sizes"):
        empirical_ntk(model, (x[0], x[1][:3]))
    with pytest.raises(TypeError, match=r"x1 must be a tensor .* or a tuple/list/dict.*holds a str"):
        empirical_ntk(model, (x[0], "t"))
    with pytest.raises(ValueError, match=r"x1 and x2 must share their structure"):
        empirical_ntk(model, x, {"x": x[0], "t": x[1]})
    with pytest.raises(ValueError, match=r"x1 and x2 must share.*\(6, 4\).*\(6, 5\)"):
        empirical_ntk(model, x, (torch.randn(6, 5, dtype=torch.float64), x[1]))
    with pytest.raises(TypeError, match=r"norm_statistics must be a tensor of inputs.*structure of x1"):
        empirical_ntk(model, x, norm_mode="probe", norm_statistics=x[0])


# --------------------------------------------------------------------------------------------
# Output masks
# --------------------------------------------------------------------------------------------


def lm_keep(mask: Tensor) -> Tensor:
    """The per-position mask broadcast over the vocabulary, ``(m, L·V)``."""
    return mask.bool()[:, :, None].expand(-1, -1, V).reshape(mask.shape[0], -1)


def brute_force_masked_full(model: nn.Module, x: dict[str, Tensor], keep: Tensor) -> Tensor:
    """The kernel of the unmasked outputs: one ``autograd.grad`` per kept output, nothing else."""
    flat, unflat = _flat(model)
    vec = flat.clone().requires_grad_(True)
    rows = []
    for i in range(keep.shape[0]):
        xi = {k: v[i : i + 1] for k, v in x.items()}
        out = _call(model, unflat(vec), xi).reshape(-1)
        for a in torch.nonzero(keep[i]).reshape(-1).tolist():
            (grad,) = torch.autograd.grad(out[a], vec, retain_graph=True)
            rows.append(grad)
    jac = torch.stack(rows)
    return jac @ jac.T


@functools.cache
def masked_oracle() -> dict[NTKKind, Tensor]:
    model, x = lm_case()
    j, g = oracle("dict_tiny_lm")
    keep = lm_keep(x["attention_mask"])
    k = masked_kernels(j, j, keep, keep, g, g)
    brute = brute_force_masked_full(model, x, keep)
    assert_close(k[NTKKind.FULL], brute, "oracle: masked J Jᵀ = kernel of the kept outputs")
    return k


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("implementation", IMPLS, ids=lambda i: i.value)
def test_masked_kernels_match_oracle(implementation: NTKImplementation, kind: NTKKind) -> None:
    """Padding positions of an LM masked: full = kernel of the unmasked positions (brute force)."""
    model, x = lm_case()
    _, g = oracle("dict_tiny_lm")
    mask = x["attention_mask"]
    got = empirical_ntk(
        model, x, kind=kind, implementation=implementation, output_mask=mask, **extra(kind, g)
    )
    expected = masked_oracle()[kind]
    assert_close(got, expected, f"masked {implementation.value}/{kind.value}")
    if kind is NTKKind.FULL:
        assert got.shape == (int(mask.sum()) * V,) * 2  # sample-major over the kept outputs


@pytest.mark.parametrize("implementation", IMPLS, ids=lambda i: i.value)
def test_masked_rows_callable_and_chunks(implementation: NTKImplementation) -> None:
    """Rows against the probe with tensor masks, a callable mask, chunk sizes: the same masked kernel."""
    model, x = lm_case()
    _, g = oracle("dict_tiny_lm")
    mask = x["attention_mask"]
    expected = masked_oracle()
    rows_x = {k: v[:2] for k, v in x.items()}
    n_rows = int(mask[:2].sum()) * V
    for kind in KINDS:
        ex = {"output_weights": g[:2], "output_weights2": g} if kind is NTKKind.LOSS_GRAM else {}
        kw: dict[str, Any] = {"kind": kind, "implementation": implementation}
        block = empirical_ntk(model, rows_x, x, output_mask=mask[:2], output_mask2=mask, **kw, **ex)
        want = expected[kind][:n_rows] if kind is NTKKind.FULL else expected[kind][:2]
        assert_close(block, want, f"rows {kind.value}")
        by_callable = empirical_ntk(
            model, rows_x, x, output_mask=lambda inp: inp["attention_mask"], **kw, **ex
        )
        assert_close(by_callable, want, f"callable rows {kind.value}")
        chunked = empirical_ntk(model, x, output_mask=mask, chunk_size=3, **kw, **extra(kind, g))
        assert_close(chunked, expected[kind], f"chunked {kind.value}")


def test_mask_shapes_and_an_empty_sample() -> None:
    """(m, O) flat, (m, L) int, (m, L, 1) bool are the same mask; a sample with nothing kept has no
    rows in full and zero rows in the (m, m) kinds."""
    model, x = lm_case()
    mask = x["attention_mask"]
    flat = lm_keep(mask)
    ref = empirical_ntk(model, x, output_mask=flat, implementation="structured")
    for form in (mask, mask.bool()[:, :, None], flat.double()):
        assert torch.equal(empirical_ntk(model, x, output_mask=form, implementation="structured"), ref)
    empty = mask.clone()
    empty[1] = 0
    full = empirical_ntk(model, x, output_mask=empty, implementation="structured")
    assert full.shape[0] == int(empty.sum()) * V
    for kind in ("trace", "pseudo"):
        k = empirical_ntk(model, x, kind=kind, output_mask=empty, implementation="jacobian_contraction")
        assert torch.all(k[1] == 0) and torch.all(k[:, 1] == 0) and bool(torch.isfinite(k).all())


def test_masked_batch_kernel_in_train_mode() -> None:
    """norm_mode='train' (one batch Jacobian): the masked full kernel is the unmasked one's kept rows."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    keep = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) > 0.4
    for impl in ("jacobian_contraction", "ntk_vector_products"):
        whole = empirical_ntk(net, x, norm_mode="train", implementation=impl)
        got = empirical_ntk(net, x, norm_mode="train", implementation=impl, output_mask=keep)
        assert_close(got, whole[keep.reshape(-1)][:, keep.reshape(-1)], f"train mode {impl}")


def test_mask_errors_name_the_argument() -> None:
    model, x = lm_case()
    mask = x["attention_mask"]
    with pytest.raises(ValueError, match=r"output_mask has shape \(4, 3\); expected \(m, O\) = \(4, 35\)"):
        empirical_ntk(model, x, output_mask=mask[:, :3])
    with pytest.raises(ValueError, match=r"output_mask has values other than 0 and 1"):
        empirical_ntk(model, x, output_mask=mask * 2)
    with pytest.raises(ValueError, match=r"output_mask is given but output_mask2 is None"):
        empirical_ntk(model, x, x, output_mask=mask)
    with pytest.raises(ValueError, match=r"output_mask2 is given but x2 is None"):
        empirical_ntk(model, x, output_mask2=mask)
    with pytest.raises(ValueError, match=r"output_mask is a callable.*drop output_mask2"):
        empirical_ntk(model, x, x, output_mask=lambda inp: inp["attention_mask"], output_mask2=mask)
    with pytest.raises(TypeError, match=r"output_mask\(inputs\) must be a tensor"):
        empirical_ntk(model, x, output_mask=lambda inp: None)


# --------------------------------------------------------------------------------------------
# Real HuggingFace models (tiny configs): GPT-2 with padding masked, BERT through the sample loop
# --------------------------------------------------------------------------------------------


class LogitsOf(nn.Module):
    """What a monitor's output adapter does: ``model(**inputs).logits`` (or the first token's state)."""

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.field)
        return out if self.field == "logits" else out[:, 0]


@pytest.fixture(scope="module")
def hf() -> Any:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


def test_huggingface_gpt2_masked_and_bert(hf: Any) -> None:
    torch.manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = hf.GPT2Config(
            n_embd=8, n_layer=1, n_head=2, vocab_size=6, n_positions=8, bos_token_id=0, eos_token_id=0
        )
        gpt2 = LogitsOf(hf.GPT2LMHeadModel(cfg), "logits").double().eval()
        bert_cfg = hf.BertConfig(
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            vocab_size=6,
            max_position_embeddings=8,
        )
        bert = LogitsOf(hf.BertModel(bert_cfg), "last_hidden_state").double().eval()
    ids = torch.randint(0, 6, (3, 4))
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[0, 2:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    j = oracle_jacobian(gpt2, x)  # (3, 4·6, P), the tied embedding counted once
    keep = mask.bool()[:, :, None].expand(-1, -1, 6).reshape(3, -1)
    g = weights(3, j.shape[1])
    want = masked_kernels(j, j, keep, keep, g, g)
    for impl in ("jacobian_contraction", "structured"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no vmap batching rule for CPU attention kernels (slow, exact)
            full = empirical_ntk(gpt2, x, implementation=impl, output_mask=mask)
            gram = empirical_ntk(
                gpt2, x, kind="loss_gram", implementation=impl, output_mask=mask, output_weights=g
            )
            pseudo = empirical_ntk(bert, x, kind="pseudo", implementation=impl)
        assert_close(full, want[NTKKind.FULL], f"gpt2 masked full {impl}")
        assert_close(gram, want[NTKKind.LOSS_GRAM], f"gpt2 masked loss_gram {impl}")
        jb = oracle_jacobian(bert, x)
        s = jb.sum(1) / math.sqrt(jb.shape[1])
        assert_close(pseudo, s @ s.T, f"bert pseudo {impl}")
