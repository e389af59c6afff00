"""A model reduced to ``fn(params, x_batch) -> (b, O)``: what every NTK implementation works on.

Shared by :mod:`lightning_lplr.functional.ntk` and :mod:`lightning_lplr.functional._structured`
(neither imports the other's private names), so the module graph has no cycle.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.module import register_module_forward_hook

if TYPE_CHECKING:  # pragma: no cover - the override module imports this one
    from lightning_lplr.functional.normalization import NormOverride

__all__ = ["PLAN_SAMPLES", "ModelFn", "Problem", "full_precision", "global_forward_hook", "trainable_params"]

ModelFn = Callable[[dict[str, Tensor], Tensor], Tensor]
"""A functional model ``f(params, x) -> outputs`` over a batch ``x``."""

PLAN_SAMPLES = 3
"""Samples in the forward that discovers and verifies a structured plan (>= 2 exposes batch mixing)."""


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Switch TF32 off for the duration (kernels must be exact float32 or float64)."""
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    old_precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_matmul
        torch.backends.cudnn.allow_tf32 = old_cudnn
        torch.set_float32_matmul_precision(old_precision)


@contextlib.contextmanager
def global_forward_hook(hook: Callable[..., Any]) -> Iterator[None]:
    """Install ``hook(module, args, kwargs, output)`` on every module call for the duration."""
    handle = register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies (views, no data copied) of a module's trainable parameters.

    Args:
        model: any ``nn.Module``.

    Returns:
        Dict ``name -> tensor`` over the parameters with ``requires_grad=True``, in
        ``named_parameters`` order, each detached from autograd.

    Example:
        >>> sorted(trainable_params(nn.Linear(3, 2)))
        ['bias', 'weight']
    """
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _sample_mixing_modules(module: nn.Module) -> list[str]:
    """Submodules whose output for one sample depends on the others or on the RNG."""
    bad = []
    for name, m in module.named_modules():
        mixes = isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
        random = isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
        if mixes or random:
            bad.append(f"{name or '<root>'} ({type(m).__name__})")
    return bad


class Problem:
    """A model reduced to ``fn(params, x_batch) -> (b, O)`` plus the parameters to differentiate.

    ``norm``: the normalisation override of a ``norm_mode`` (``None``: the model as it is, which
    must then treat samples independently). ``call`` stays the user's function (its identity keys
    caches); every evaluation goes through the override.
    """

    def __init__(
        self,
        model: nn.Module | ModelFn,
        params: Mapping[str, Tensor] | None,
        x1: Tensor,
        x2: Tensor | None,
        norm: NormOverride | None = None,
    ) -> None:
        if isinstance(model, nn.Module):
            module = model
            if params is None:
                params = trainable_params(module)

            def call(p: dict[str, Tensor], x: Tensor) -> Any:
                return functional_call(module, p, (x,))

            self.module: nn.Module | None = module
        elif callable(model):
            if params is None:
                raise ValueError(
                    "params=None but model is a plain callable f(params, x); "
                    "pass params=dict(name -> tensor)."
                )
            call = model  # type: ignore[assignment]
            self.module = None
        else:
            raise TypeError(
                f"model must be an nn.Module or a callable f(params, x); got {type(model).__name__}."
            )
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict name -> tensor; got {type(params).__name__}.")
        for name, value in params.items():
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"params[{name!r}] is a {type(value).__name__}; every value must be a tensor."
                )
        self.params: dict[str, Tensor] = {k: v.detach() for k, v in params.items()}
        if not self.params:
            raise ValueError(
                "model has no trainable parameters (none with requires_grad=True): the NTK is empty. "
                "Unfreeze at least one parameter or pass params= explicitly."
            )
        first = next(iter(self.params.values()))
        self.device = first.device
        self.dtype = first.dtype
        self.itemsize = first.element_size()
        for arg, x in (("x1", x1), ("x2", x2)):
            if x is None:
                continue
            if not isinstance(x, Tensor):
                raise TypeError(f"{arg} must be a tensor of shape (m, *input_shape); got {type(x).__name__}.")
            if x.ndim < 1 or x.shape[0] == 0:
                raise ValueError(
                    f"{arg} has shape {tuple(x.shape)}; it needs a leading sample dimension with m >= 1."
                )
        if x2 is not None and x1.shape[1:] != x2.shape[1:]:
            raise ValueError(
                f"x1 and x2 must share their trailing (per-sample) shape; got x1 {tuple(x1.shape)} and "
                f"x2 {tuple(x2.shape)}. Pass probes of the same input shape."
            )
        if self.module is not None and norm is None:
            mixing = _sample_mixing_modules(self.module)
            if mixing:
                raise ValueError(
                    f"model has modules that mix or randomise samples: {', '.join(mixing)}. "
                    "The empirical NTK "
                    "is a per-sample quantity, and a forward in this mode would also update running "
                    "statistics. Call model.eval() first (and model.train() afterwards)."
                )
        self.call = call
        self.norm = norm
        self.norm_mode: str | None = None if norm is None else norm.mode
        self._forward: ModelFn = call if norm is None else norm.wrap(call)
        self.sample = x1[:PLAN_SAMPLES].to(self.device)
        # One evaluation on a single sample (on the plan sample where the batch mixes samples:
        # batch statistics need more than one) fixes the output size, checks the output type and
        # measures activations (leaf-module outputs) for the memory estimates.
        n = self.sample.shape[0] if norm is not None and norm.mixes_samples else 1
        sizes: list[int] = []

        def measure(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if isinstance(output, Tensor) and next(module.children(), None) is None:
                sizes.append(output.numel() // n)

        with torch.no_grad(), global_forward_hook(measure):
            out = self._forward(self.params, self.sample[:n])
        if not isinstance(out, Tensor):
            raise TypeError(
                f"the model returned a {type(out).__name__}, not a tensor; the NTK needs the model output as "
                "a tensor of shape (batch, *out). Wrap the model, e.g. lambda p, x: f(p, x)['logits']."
            )
        if out.ndim == 0 or out.shape[0] != n:
            raise ValueError(
                f"the model output for a batch of {n} has shape {tuple(out.shape)}; "
                f"expected ({n}, *out) or ({n},)."
            )
        self.num_outputs = int(math.prod(out.shape[1:]))
        self.activation_numel = max(sum(sizes), self.num_outputs, 1)
        self.max_activation_numel = max([*sizes, self.num_outputs, 1])

    def batched(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs of a batch, flattened to ``(b, O)``."""
        out = self._forward(p, x)
        return out.reshape(out.shape[0], -1)

    def single(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs of one sample (no batch dimension), flattened to ``(O,)``."""
        return self.batched(p, x.unsqueeze(0)).reshape(-1)

    def pseudo_batched(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        """The pNTK's scalar model ``Σ_a f_a / √O`` as ``(b, 1)``."""
        return self.batched(p, x).sum(dim=1, keepdim=True) / math.sqrt(self.num_outputs)

    def pseudo_single(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.pseudo_batched(p, x.unsqueeze(0)).reshape(-1)

    def parameter_count(self) -> int:
        return sum(v.numel() for v in self.params.values())

    def architecture(self) -> tuple[Any, ...]:
        """A hashable description of the model's structure (not of its values) for caches."""
        sig = tuple((k, tuple(v.shape), v.dtype) for k, v in self.params.items())
        if self.module is not None:
            modules = tuple((n, type(m).__qualname__, m.training) for n, m in self.module.named_modules())
            return ("module", type(self.module).__qualname__, modules, sig, self.norm_mode)
        code = getattr(self.call, "__code__", None)
        return ("callable", code if code is not None else type(self.call).__qualname__, sig, self.norm_mode)
