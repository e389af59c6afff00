"""Networks for the examples: an MLP in standard or NTK parameterisation, and a CIFAR ResNet-20.

The two MLP parameterisations compute the same function distribution at initialisation and differ
in how gradients scale with width:

- ``"standard"``: ``nn.Linear`` with weights ``N(0, g²/fan_in)`` and zero biases, where ``g`` is
  the activation's variance-preserving gain (``√2`` for ReLU-like, ``5/3`` for tanh, ``1`` on the
  output layer);
- ``"ntk"``: :class:`NTKLinear`, weights ``N(0, 1)`` and the layer output scaled in ``forward``:
  ``y = (g/√fan_in) · x Wᵀ + b`` (Jacot et al., 2018). With this scaling the empirical NTK has an
  ``O(1)`` limit as the width grows, and a wide network trained by gradient descent stays close
  to its linearisation: the regime in which the loss decays linearly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "MLP", "BasicBlock", "NTKLinear", "ResNet", "resnet20"]

ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], float]] = {
    "relu": (nn.ReLU, math.sqrt(2.0)),
    "gelu": (nn.GELU, math.sqrt(2.0)),
    "silu": (nn.SiLU, math.sqrt(2.0)),
    "softplus": (nn.Softplus, math.sqrt(2.0)),
    "tanh": (nn.Tanh, 5.0 / 3.0),
    "sigmoid": (nn.Sigmoid, 1.0),
    "identity": (nn.Identity, 1.0),
}
"""Activation name → (module factory, variance-preserving gain used for initialisation/scaling)."""

Parameterization = Literal["standard", "ntk"]


class NTKLinear(nn.Module):
    """A linear layer in NTK parameterisation: ``y = (gain/√in_features) · x Wᵀ + b``.

    ``W`` is initialised ``N(0, 1)`` and ``b`` at zero; the ``1/√fan_in`` factor lives in
    ``forward`` rather than in the initialisation, so a gradient step on ``W`` changes the output
    by ``O(1/√fan_in)`` per entry. The factor scales the layer's input before a plain
    ``nn.Linear`` (``W (c·x) = c·W x``, the same function and the same gradients), so NTK
    implementations that recognise ``nn.Linear`` (the monitors' structured one) apply to it.

    Args:
        in_features: Input size (the fan-in).
        out_features: Output size.
        bias: Whether to add a bias.
        gain: Multiplier of the ``1/√fan_in`` scale (the activation's gain for hidden layers).

    Example:
        >>> layer = NTKLinear(4, 3, gain=2.0)
        >>> x = torch.randn(5, 4)
        >>> bool(torch.allclose(layer(x), x @ layer.weight.T * 2.0 / 4**0.5))
        True
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = 1.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scale = float(gain) / math.sqrt(in_features)
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        with torch.no_grad():
            self.linear.weight.normal_()
            if self.linear.bias is not None:
                self.linear.bias.zero_()

    @property
    def weight(self) -> nn.Parameter:
        """``W`` of shape ``(out_features, in_features)``."""
        return self.linear.weight

    @property
    def bias(self) -> nn.Parameter | None:
        """``b`` of shape ``(out_features,)`` or ``None``."""
        return self.linear.bias

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer to ``x`` of shape ``(..., in_features)``."""
        return self.linear(x * self.scale)

    def extra_repr(self) -> str:
        """Scale (the sizes are shown by the inner ``nn.Linear``)."""
        return f"scale={self.scale:.4g}"


def _linear(fan_in: int, fan_out: int, gain: float, parameterization: str, bias: bool) -> nn.Module:
    if parameterization == "ntk":
        return NTKLinear(fan_in, fan_out, bias=bias, gain=gain)
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    nn.init.normal_(layer.weight, std=gain / math.sqrt(fan_in))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """A fully connected network ``in → width → … → width → out`` (``depth`` hidden layers).

    Inputs of more than two dimensions are flattened after the batch axis.

    Args:
        in_features: Input size.
        width: Hidden width.
        depth: Number of hidden layers (``0`` gives a linear model).
        out_features: Output size ``O``.
        activation: One of :data:`ACTIVATIONS` (``"relu"``, ``"tanh"``, ``"gelu"``, ``"silu"``,
            ``"softplus"``, ``"sigmoid"``, ``"identity"``).
        parameterization: ``"standard"`` or ``"ntk"`` (see the module docstring).
        bias: Whether the layers have biases.

    Raises:
        ValueError: If a size, the activation or the parameterisation is not allowed.

    Example:
        >>> net = MLP(16, width=32, depth=2, out_features=3, activation="tanh", parameterization="ntk")
        >>> tuple(net(torch.randn(5, 16)).shape)
        (5, 3)
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        activation: str = "relu",
        parameterization: Parameterization = "standard",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation={activation!r} is not one of {sorted(ACTIVATIONS)}.")
        if parameterization not in ("standard", "ntk"):
            raise ValueError(f"MLP: parameterization={parameterization!r} must be 'standard' or 'ntk'.")
        for name, value, low in (("in_features", in_features, 1), ("width", width, 1), ("depth", depth, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"MLP: {name} must be an integer >= {low}, got {value!r}.")
        if int(out_features) != out_features or out_features < 1:
            raise ValueError(f"MLP: out_features must be a positive integer, got {out_features!r}.")
        self.activation = activation
        self.parameterization = parameterization
        make_act, gain = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        fan_in, input_gain = in_features, 1.0
        for _ in range(depth):
            layers += [_linear(fan_in, width, input_gain, parameterization, bias), make_act()]
            fan_in, input_gain = width, gain
        layers.append(_linear(fan_in, out_features, input_gain, parameterization, bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x`` of shape ``(N, in_features)`` (or ``(N, …)``, flattened) to ``(N, out_features)``."""
        return self.layers(x.flatten(1) if x.dim() > 2 else x)


# --------------------------------------------------------------------------------------------------
# ResNet-20 for CIFAR
# --------------------------------------------------------------------------------------------------


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class _PadShortcut(nn.Module):
    """Parameter-free shortcut (He et al. 2016, option A): subsample, then zero-pad channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """``conv3×3 → norm → ReLU → conv3×3 → norm``, plus the shortcut, then ReLU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (2 halves the resolution).
        norm: ``"batch"`` or ``"group"``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, out_channels)
        self.shortcut: nn.Module = (
            _PadShortcut(in_channels, out_channels, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(N, C_in, H, W)``."""
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3×3 stem, three stages of basic blocks, pooling and a linear head.

    The stages have ``width``, ``2·width`` and ``4·width`` channels and strides 1, 2, 2; global
    average pooling feeds the linear classifier.

    Args:
        blocks: Blocks per stage.
        num_classes: Output logits.
        width: Channels of the first stage.
        norm: ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm with ``gcd(C, 8)`` groups).
        in_channels: Input channels.

    Raises:
        ValueError: If ``norm`` or a size is not allowed.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (3, 3, 3),
        num_classes: int = 10,
        width: int = 16,
        norm: Literal["batch", "group"] = "batch",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"ResNet: norm={norm!r} must be 'batch' or 'group'.")
        if num_classes < 1 or width < 1 or len(blocks) != 3 or min(blocks) < 1:
            raise ValueError(
                f"ResNet: need num_classes >= 1, width >= 1 and three positive block counts, "
                f"got num_classes={num_classes}, width={width}, blocks={tuple(blocks)}."
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), _norm(norm, width), nn.ReLU()
        )
        stages: list[nn.Module] = []
        channels = width
        for i, count in enumerate(blocks):
            out = width * 2**i
            for j in range(count):
                stages.append(BasicBlock(channels, out, stride=2 if (i > 0 and j == 0) else 1, norm=norm))
                channels = out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        out = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def resnet20(
    num_classes: int = 10,
    norm: Literal["batch", "group"] = "batch",
    width: int = 16,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-20 for 32×32 images (He et al. 2016, §4.2): 3 stages × 3 basic blocks.

    With ``width=16`` and 10 classes it has 0.27M parameters (269 722), the count of the paper.

    Args:
        num_classes: Output logits.
        norm: ``"batch"`` (default) or ``"group"``.
        width: Channels of the first stage (16 in the paper).
        in_channels: Input channels.

    Returns:
        The network.

    Example:
        >>> net = resnet20()
        >>> sum(p.numel() for p in net.parameters())
        269722
    """
    return ResNet((3, 3, 3), num_classes=num_classes, width=width, norm=norm, in_channels=in_channels)
