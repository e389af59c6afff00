"""Small models shared by the NTK tests: each case builds a model, its probe and its parameters.

Every factory builds the model in float64 from a fixed seed and returns a :class:`Case`; the
float32 variant is the same case cast with :meth:`Case.to`, so both dtypes see identical values.
The zoo covers what the structured NTK implementation has to recognise or fall back on:
``nn.Linear`` with and without extra position dims, ``nn.Conv2d`` (plain, ``padding='same'``,
grouped, circular padding), BatchNorm in eval mode, a frozen layer, a custom parameterised
module, a module called twice, weight tying (a shared ``Parameter`` and a weight read by the
parent), explicit ``params`` for a module and a plain callable ``f(params, x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Case:
    """A model (module or plain callable), the params to pass (``None``: the module's own) and probes."""

    model: nn.Module | Callable[[dict[str, Tensor], Tensor], Tensor]
    params: dict[str, Tensor] | None
    x1: Tensor
    x2: Tensor

    def to(self, dtype: torch.dtype) -> Case:
        """A copy of the case in ``dtype`` (modules are deep-copied; their train/eval flags kept)."""
        model = self.model
        if isinstance(model, nn.Module):
            model = _copy_module(model).to(dtype)
        params = None if self.params is None else {k: v.to(dtype) for k, v in self.params.items()}
        return Case(model, params, self.x1.to(dtype), self.x2.to(dtype))


def _copy_module(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def _randomise_batchnorm(module: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so BN is not the identity."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)


def mlp(in_features: int = 5, hidden: int = 12, out: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, out),
    )


class ScalarMLP(nn.Module):
    """An MLP whose output has shape ``(batch,)``: one output per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(out=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 4),
    )


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """ResNet-20-style CNN (3×3 stem, basic blocks with BatchNorm, global pooling), shrunk for tests."""

    def __init__(self, widths: tuple[int, ...] = (4, 8), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0])
        )
        blocks = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.stem(x)))
        return self.fc(out.mean(dim=(2, 3)))


class ScaledLinear(nn.Module):
    """A custom parameterised module (NTK parameterisation): ``F.linear(x, W·s, b)``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.scale = 1.0 / math.sqrt(cin)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class Affine(nn.Module):
    """Elementwise ``x·γ + β``: a custom module with parameters and a child-free forward."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(1 + 0.2 * torch.randn(features))
        self.beta = nn.Parameter(0.2 * torch.randn(features))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma + self.beta


class CustomModules(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = ScaledLinear(5, 8)
        self.norm = nn.LayerNorm(8)
        self.b = Affine(8)
        self.c = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.tanh(self.b(self.norm(self.a(x)))))


class Tied(nn.Module):
    """Weight tying both ways: one ``Parameter`` in two Linear modules, and a weight read by the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 8)
        self.l1 = nn.Linear(8, 8)
        self.l2 = nn.Linear(8, 8)
        self.l2.weight = self.l1.weight

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.enc(x))
        h = torch.tanh(self.l2(torch.tanh(self.l1(h))))
        return F.linear(h, self.enc.weight.t())  # decoder tied to the encoder: (b, 5)


class Reused(nn.Module):
    """The same Linear module applied twice (its parameters enter the output through two calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 7)
        self.shared = nn.Linear(7, 7)
        self.out = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.out(h)


class Sequence(nn.Module):
    """Linear layers on ``(b, T, features)`` inputs: the kernel sums over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.mix = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(3 * 6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mix(torch.tanh(self.proj(x)))
        return self.head(torch.tanh(h).flatten(1))


class Shift(nn.Module):
    """``x + β``: a custom module that does not save its input for backward."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(0.3 * torch.randn(features))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.beta


class InPlace(nn.Module):
    """A layer input modified in place after the layer ran (the structured NTK must keep a copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(5, 6)
        self.shift = Shift(6)
        self.l2 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.l1(x)
        y = torch.sin(self.shift(h))
        h.mul_(2.0)  # legal for autograd (nothing saved h), but changes the shift's recorded input
        return self.l2(torch.tanh(h)) + y[:, :3]


def conv_zoo() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding="same"),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Tanh(),
        nn.Conv2d(4, 4, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), padding_mode="circular"),
        nn.Tanh(),
        nn.Conv2d(4, 5, 2, stride=2, dilation=1),
        nn.Flatten(),
        nn.Linear(5 * 2 * 1, 3),
    )


def _plain_callable(params: dict[str, Tensor], x: Tensor) -> Tensor:
    h = torch.tanh(x @ params["w1"].T + params["b1"])
    return h @ params["w2"].T + torch.sin(params["c"])


def _build(name: str) -> Case:
    torch.manual_seed(0)
    dt = torch.float64
    m1, m2 = 7, 3
    if name == "mlp10":
        model: nn.Module = mlp()
        shape: tuple[int, ...] = (5,)
    elif name == "scalar_mlp":
        model, shape = ScalarMLP(), (5,)
    elif name == "cnn_bn":
        model, shape = small_cnn(), (3, 6, 6)
    elif name == "resnet":
        model, shape = TinyResNet(), (3, 8, 8)
    elif name == "frozen_layer":
        model, shape = mlp(out=4), (5,)
        model[2].requires_grad_(False)
    elif name == "custom_modules":
        model, shape = CustomModules(), (5,)
    elif name == "tied":
        model, shape = Tied(), (5,)
    elif name == "reused":
        model, shape = Reused(), (5,)
    elif name == "sequence":
        model, shape = Sequence(), (3, 4)
    elif name == "conv_zoo":
        model, shape = conv_zoo(), (3, 5, 4)
    elif name == "module_params":
        model, shape = mlp(out=3), (5,)
    elif name == "inplace":
        model, shape = InPlace(), (5,)
    elif name == "callable":
        params = {
            "w1": torch.randn(6, 5, dtype=dt),
            "b1": torch.randn(6, dtype=dt),
            "w2": torch.randn(3, 6, dtype=dt),
            "c": torch.randn(3, dtype=dt),
        }
        return Case(_plain_callable, params, torch.randn(m1, 5, dtype=dt), torch.randn(m2, 5, dtype=dt))
    else:  # pragma: no cover - a typo in a test
        raise KeyError(name)
    model = model.to(dt)
    _randomise_batchnorm(model)
    model.eval()
    params = None
    if name == "module_params":
        # Different values from the module's own: the kernel must use these.
        params = {n: p.detach() + 0.3 * torch.randn_like(p) for n, p in model.named_parameters()}
    return Case(model, params, torch.randn(m1, *shape, dtype=dt), torch.randn(m2, *shape, dtype=dt))


CASES = (
    "mlp10",
    "scalar_mlp",
    "cnn_bn",
    "resnet",
    "frozen_layer",
    "custom_modules",
    "tied",
    "reused",
    "sequence",
    "conv_zoo",
    "module_params",
    "inplace",
    "callable",
)
"""Names of the test cases, usable as readable parametrize ids."""

_CACHE: dict[str, Case] = {}


def case(name: str, dtype: torch.dtype = torch.float64) -> Case:
    """The case ``name`` in ``dtype`` (built once, then copied)."""
    if name not in _CACHE:
        _CACHE[name] = _build(name)
    base = _CACHE[name]
    return base.to(dtype)
