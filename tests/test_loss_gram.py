"""``kind="loss_gram"``: the Gram of per-sample loss gradients against brute-force autograd.

The oracle is the definition, computed without the package: every per-sample loss ``ℓ_i`` is
differentiated on its own with ``torch.autograd.grad`` (float64), the gradients are stacked into
``A`` (``m × P``) and ``G = A Aᵀ``. The package gets only ``g_i = ∂ℓ_i/∂f_i`` (from autograd on the
outputs). Cases: a cross-entropy classifier and a causal LM with ignored labels (``-100``) at its
padding positions. Identity checked as well: ``1ᵀ G 1 = ‖∇_θ Σ_i ℓ_i‖²``. Tolerance 1e-10
relative in float64 (sums of ~10³ products reordered; a wrong term is O(1)).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_lplr.functional.ntk import NTKImplementation, empirical_ntk
from tests.test_ntk_inputs import TinyLM, lm_case

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

IMPLS = [i for i in NTKImplementation if i is not NTKImplementation.AUTO]
TOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_close(got: Tensor, expected: Tensor, what: str, tol: float = TOL) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    err = (got - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} × max |G| = {scale:.3e}"


def per_sample_gradients(model: nn.Module, losses: list[Tensor]) -> Tensor:
    """``A``: row ``i`` is ``∇_θ ℓ_i`` (every trainable parameter, flattened, named order)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def output_gradients(out: Tensor, loss_of_outputs: object) -> Tensor:
    """``g = ∂(Σ_i ℓ_i)/∂f``; row ``i`` is ``∂ℓ_i/∂f_i`` since ``ℓ_i`` depends on ``f_i`` only."""
    f = out.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of_outputs(f).sum(), f)  # type: ignore[operator]
    return g


# --------------------------------------------------------------------------------------------
# Cross-entropy classifier
# --------------------------------------------------------------------------------------------


def classifier() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 5)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    return net, x, y


@pytest.mark.parametrize("implementation", [*IMPLS, NTKImplementation.AUTO], ids=lambda i: i.value)
def test_cross_entropy_gram_matches_per_sample_gradients(implementation: NTKImplementation) -> None:
    net, x, y = classifier()
    out = net(x)
    losses = F.cross_entropy(out, y, reduction="none")
    a = per_sample_gradients(net, list(losses))
    g = output_gradients(out, lambda f: F.cross_entropy(f, y, reduction="none"))
    assert_close(g, torch.softmax(out, 1).detach() - F.one_hot(y, 5), "g = softmax - one_hot")
    gram = empirical_ntk(net, x, kind="loss_gram", output_weights=g, implementation=implementation)
    assert_close(gram, a @ a.T, f"CE Gram {implementation.value}")
    # 1ᵀ G 1 = ‖∇_θ Σ_i ℓ_i‖², the squared full-batch gradient of the sum-reduced loss.
    total = per_sample_gradients(net, [losses.sum()])[0]
    assert abs(gram.sum().item() - total.square().sum().item()) <= TOL * total.square().sum().item()
    # Rows against the whole probe (the monitor's sharding) need the weights of both sides.
    rows = empirical_ntk(
        net,
        x[:2],
        x,
        kind="loss_gram",
        output_weights=g[:2],
        output_weights2=g,
        implementation=implementation,
    )
    assert_close(rows, (a @ a.T)[:2], "rows")
    # A mean-reduced loss: g/m describes ℓ_i/m, so G scales by 1/m².
    mean = empirical_ntk(net, x, kind="loss_gram", output_weights=g / 6, implementation=implementation)
    assert_close(mean, a @ a.T / 36, "mean-reduced")


def test_float32_gram_and_chunks() -> None:
    """float32 parameters: float32 Gram within float32 rounding; chunking does not change it."""
    net, x, y = classifier()
    a = per_sample_gradients(net, list(F.cross_entropy(net(x), y, reduction="none")))
    g = output_gradients(net(x), lambda f: F.cross_entropy(f, y, reduction="none"))
    net32 = net.float()
    for impl in IMPLS:
        got = empirical_ntk(net32, x.float(), kind="loss_gram", output_weights=g.float(), implementation=impl)
        assert got.dtype == torch.float32
        assert_close(got.double(), a @ a.T, f"float32 {impl.value}", tol=1e-5)
        chunked = empirical_ntk(
            net32, x.float(), kind="loss_gram", output_weights=g.float(), implementation=impl, chunk_size=4
        )
        assert_close(chunked, got, "chunked", tol=1e-6)


# --------------------------------------------------------------------------------------------
# Language model with masked positions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLS, ids=lambda i: i.value)
def test_masked_lm_gram_matches_per_sample_gradients(implementation: NTKImplementation) -> None:
    """ℓ_i = Σ_t CE(logits_it, label_it) over the labels ≠ -100 (padding and the first token ignored)."""
    model, x = lm_case()
    assert isinstance(model, TinyLM)
    ids, mask = x["input_ids"], x["attention_mask"]
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[:, 0] = -100

    def per_sample(f: Tensor) -> Tensor:
        ce = F.cross_entropy(
            f.reshape(-1, f.shape[-1]), labels.reshape(-1), reduction="none", ignore_index=-100
        )
        return ce.reshape(labels.shape).sum(1)

    out = model(**x)
    a = per_sample_gradients(model, list(per_sample(out)))
    g = output_gradients(out, per_sample)
    assert torch.all(g[labels == -100] == 0)
    expected = a @ a.T
    kept = labels != -100
    for kw in ({}, {"output_mask": kept}):  # the mask only zeroes weights that are zero already
        gram = empirical_ntk(
            model, x, kind="loss_gram", output_weights=g, implementation=implementation, **kw
        )
        assert_close(gram, expected, f"masked LM {implementation.value} {sorted(kw)}")
    total = per_sample_gradients(model, [per_sample(out).sum()])[0].square().sum().item()
    assert abs(gram.sum().item() - total) <= TOL * total
    # A mask also zeroes nonzero weights: the Gram of the losses restricted to the kept positions.
    dense = output_gradients(out, lambda f: F.cross_entropy(f.transpose(1, 2), ids, reduction="none").sum(1))
    masked = empirical_ntk(
        model, x, kind="loss_gram", output_weights=dense, output_mask=kept, implementation=implementation
    )
    assert_close(masked, expected, "mask applied to dense weights")


def test_loss_gram_argument_errors() -> None:
    net, x, _ = classifier()
    g = torch.zeros(6, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"kind='loss_gram' needs output_weights=g"):
        empirical_ntk(net, x, kind="loss_gram")
    with pytest.raises(ValueError, match=r"output_weights is given but kind='pseudo'"):
        empirical_ntk(net, x, kind="pseudo", output_weights=g)
    with pytest.raises(ValueError, match=r"output_weights has shape \(6, 4\); expected the outputs' shape"):
        empirical_ntk(net, x, kind="loss_gram", output_weights=g[:, :4])
    with pytest.raises(ValueError, match=r"output_weights has non-finite entries"):
        empirical_ntk(net, x, kind="loss_gram", output_weights=g + float("nan"))
    with pytest.raises(ValueError, match=r"with x2 needs output_weights2"):
        empirical_ntk(net, x, x, kind="loss_gram", output_weights=g)
    with pytest.raises(ValueError, match=r"output_weights2 is given but x2 is None"):
        empirical_ntk(net, x, kind="loss_gram", output_weights=g, output_weights2=g)
    with pytest.raises(TypeError, match=r"output_weights must be a tensor"):
        empirical_ntk(net, x, kind="loss_gram", output_weights=[[0.0] * 5] * 6)  # type: ignore[arg-type]
