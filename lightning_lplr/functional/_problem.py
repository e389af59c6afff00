"""A model reduced to ``fn(params, x_batch) -> (b, O)``: what every NTK implementation works on.

Shared by :mod:`lightning_lplr.functional.ntk` and :mod:`lightning_lplr.functional._structured`
(neither imports the other's private names), so the module graph has no cycle.

Inputs are *pytrees*: a tensor, or a tuple, list or dict (nested as deep as needed; any other
mapping, e.g. a tokenizer's ``BatchEncoding``, is read as a dict) whose leaves are tensors sharing
the leading sample dimension ``m``. Integer leaves (token ids, masks) are inputs like any other;
only parameters are ever differentiated. An ``nn.Module`` receives a dict as keyword arguments
(``module(**x)``), a tuple or list as positional arguments (``module(*x)``) and a tensor as its
one argument; a plain callable ``f(params, x)`` receives the pytree as it is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.module import register_module_forward_hook

if TYPE_CHECKING:  # pragma: no cover - the override module imports this one
    from lightning_lplr.functional.normalization import NormOverride

__all__ = [
    "PLAN_SAMPLES",
    "Inputs",
    "ModelFn",
    "Problem",
    "Target",
    "as_inputs",
    "call_module",
    "full_precision",
    "global_forward_hook",
    "index_samples",
    "input_signature",
    "move_inputs",
    "sample_count",
    "split_samples",
    "trainable_params",
]

Inputs = Any
"""A batch of model inputs: a tensor ``(m, ...)`` or a tuple/list/dict pytree of such tensors."""

ModelFn = Callable[[dict[str, Tensor], Any], Tensor]
"""A functional model ``f(params, x) -> outputs`` over a batch ``x`` (a tensor or a pytree of tensors)."""

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


# ----------------------------------------------------------------------------------------------
# Input pytrees
# ----------------------------------------------------------------------------------------------


def as_inputs(x: Any, argument: str = "x") -> Inputs:
    """``x`` checked as a batch of inputs: a tensor or a pytree of tensors with one leading size ``m``.

    Mappings that are not dicts (a tokenizer's ``BatchEncoding``) become dicts, recursively.

    Args:
        x: a tensor ``(m, ...)``, or a tuple, list or dict of them (nested as needed).
        argument: the argument's name, for error messages.

    Returns:
        ``x`` (mappings as dicts).

    Raises:
        TypeError: a leaf that is not a tensor.
        ValueError: a leaf without a leading dimension, ``m = 0``, or leaves of different ``m``.

    Example:
        >>> x = as_inputs({"ids": torch.zeros(4, 7, dtype=torch.long), "mask": torch.ones(4, 7)})
        >>> sample_count(x)
        4
    """
    x = _plain_mappings(x)
    leaves = pytree.tree_leaves(x)
    if not leaves:
        raise ValueError(f"{argument} holds no tensor; pass a tensor (m, ...) or a tuple/list/dict of them.")
    sizes = set()
    for leaf in leaves:
        if not isinstance(leaf, Tensor):
            raise TypeError(
                f"{argument} must be a tensor of shape (m, *input_shape) or a tuple/list/dict of such "
                f"tensors; it holds a {type(leaf).__name__}. Drop non-tensor entries (e.g. None values)."
            )
        if leaf.ndim < 1 or leaf.shape[0] == 0:
            what = "shape" if isinstance(x, Tensor) else "a tensor of shape"
            raise ValueError(
                f"{argument} has {what} {tuple(leaf.shape)}; it needs a leading sample dimension with m >= 1."
            )
        sizes.add(int(leaf.shape[0]))
    if len(sizes) > 1:
        shapes = [tuple(t.shape) for t in leaves]
        raise ValueError(
            f"{argument} holds tensors with different leading (sample) sizes: {shapes}; every tensor of one "
            "probe must have the same number of samples m in dimension 0."
        )
    return x


def _plain_mappings(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        return {k: _plain_mappings(v) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple: keep its type
        return type(x)(*(_plain_mappings(v) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_plain_mappings(v) for v in x)
    return x


def sample_count(x: Inputs) -> int:
    """The number of samples ``m`` of a checked batch (leading size of its first leaf).

    Args:
        x: a batch accepted by :func:`as_inputs`.

    Returns:
        ``m``.

    Example:
        >>> sample_count((torch.zeros(3, 2), torch.zeros(3)))
        3
    """
    return int(pytree.tree_leaves(x)[0].shape[0])


def index_samples(x: Inputs, index: Any) -> Inputs:
    """Every leaf indexed by ``index`` in its sample dimension (``t[index]``).

    Args:
        x: a batch.
        index: an int (drops the sample dimension), a slice or an index tensor.

    Returns:
        The indexed batch, same structure.

    Example:
        >>> index_samples({"a": torch.arange(6).reshape(3, 2)}, slice(1, 3))["a"].tolist()
        [[2, 3], [4, 5]]
    """
    return pytree.tree_map(lambda t: t[index], x)


def split_samples(x: Inputs, size: int) -> list[Inputs]:
    """Consecutive chunks of at most ``size`` samples (``torch.split`` on every leaf).

    Args:
        x: a batch.
        size: chunk size.

    Returns:
        The chunks, each with the structure of ``x``.

    Example:
        >>> [sample_count(c) for c in split_samples((torch.zeros(5, 2), torch.zeros(5)), 2)]
        [2, 2, 1]
    """
    m = sample_count(x)
    return [index_samples(x, slice(s, s + size)) for s in range(0, m, size)]


def move_inputs(x: Inputs, device: torch.device | str) -> Inputs:
    """Every leaf on ``device`` (dtypes unchanged).

    Args:
        x: a batch.
        device: target device.

    Returns:
        The batch on ``device``.

    Example:
        >>> move_inputs((torch.zeros(2),), "cpu")[0].device.type
        'cpu'
    """
    return pytree.tree_map(lambda t: t.to(device), x)


def input_signature(x: Inputs) -> tuple[Any, ...]:
    """A hashable description of a batch without its sample count: structure, per-sample shapes, dtypes.

    Args:
        x: a batch.

    Returns:
        ``(structure, ((shape[1:], dtype), ...))``.

    Example:
        >>> input_signature(torch.zeros(4, 3)) == input_signature(torch.ones(9, 3))
        True
    """
    leaves, spec = pytree.tree_flatten(x)
    return (str(spec), tuple((tuple(t.shape[1:]), t.dtype) for t in leaves))


def call_module(module: nn.Module, params: Mapping[str, Tensor], x: Inputs) -> Any:
    """``module`` called on the batch ``x`` with ``params`` swapped in (``functional_call``).

    The calling convention of every function of this package: a dict is passed as keyword
    arguments (``module(**x)``), a tuple or list as positional arguments (``module(*x)``),
    anything else (a tensor) as the one argument.

    Args:
        module: the model.
        params: parameters (and/or buffers) to use, by name.
        x: the inputs.

    Returns:
        Whatever the module returns.

    Example:
        >>> class Add(nn.Module):
        ...     def forward(self, a: Tensor, b: Tensor) -> Tensor:
        ...         return a + b
        >>> call_module(Add(), {}, {"a": torch.ones(2), "b": torch.ones(2)}).tolist()
        [2.0, 2.0]
    """
    if isinstance(x, dict):
        return functional_call(module, dict(params), (), x)
    if isinstance(x, (tuple, list)):
        return functional_call(module, dict(params), tuple(x))
    return functional_call(module, dict(params), (x,))


def _unsqueeze(x: Inputs) -> Inputs:
    return pytree.tree_map(lambda t: t.unsqueeze(0), x)


def _is_vmap_limitation(err: BaseException) -> bool:
    """An error that ``vmap`` over samples raises but a loop over samples would not."""
    text = str(err)
    return isinstance(err, RuntimeError) and ("vmap" in text or "atching rule" in text)


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
    caches); every evaluation goes through the override. ``x1`` and ``x2`` are checked batches
    (see :func:`as_inputs`): the same structure and per-sample shapes.
    """

    def __init__(
        self,
        model: nn.Module | ModelFn,
        params: Mapping[str, Tensor] | None,
        x1: Inputs,
        x2: Inputs | None,
        norm: NormOverride | None = None,
    ) -> None:
        if isinstance(model, nn.Module):
            module = model
            if params is None:
                params = trainable_params(module)

            def call(p: dict[str, Tensor], x: Inputs) -> Any:
                return call_module(module, p, x)

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
        x1 = as_inputs(x1, "x1")
        if x2 is not None:
            x2 = as_inputs(x2, "x2")
            if input_signature(x1)[0] != input_signature(x2)[0] or [
                t.shape[1:] for t in pytree.tree_leaves(x1)
            ] != [t.shape[1:] for t in pytree.tree_leaves(x2)]:
                raise ValueError(
                    f"x1 and x2 must share their structure and trailing (per-sample) shapes; got x1 "
                    f"{_describe(x1)} and x2 {_describe(x2)}. Pass probes of the same input shape."
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
        self.loop_samples = False
        """Set when ``vmap`` over samples fails (data-dependent control flow): loop over samples instead."""
        self.sample = move_inputs(index_samples(x1, slice(0, PLAN_SAMPLES)), self.device)
        # One evaluation on a single sample (on the plan sample where the batch mixes samples:
        # batch statistics need more than one) fixes the output size, checks the output type and
        # measures activations (leaf-module outputs) for the memory estimates.
        n = sample_count(self.sample) if norm is not None and norm.mixes_samples else 1
        sizes: list[int] = []

        def measure(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if isinstance(output, Tensor) and next(module.children(), None) is None:
                sizes.append(output.numel() // n)

        with torch.no_grad(), global_forward_hook(measure):
            out = self._forward(self.params, index_samples(self.sample, slice(0, n)))
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
        self.output_shape: tuple[int, ...] = tuple(out.shape[1:])
        """Per-sample output shape ``out`` of the model (``O`` is its number of elements)."""
        self.num_outputs = int(math.prod(out.shape[1:]))
        self.activation_numel = max(sum(sizes), self.num_outputs, 1)
        self.max_activation_numel = max([*sizes, self.num_outputs, 1])

    def batched(self, p: dict[str, Tensor], x: Inputs) -> Tensor:
        """Outputs of a batch, flattened to ``(b, O)``."""
        out = self._forward(p, x)
        return out.reshape(out.shape[0], -1)

    def single(self, p: dict[str, Tensor], x: Inputs) -> Tensor:
        """Outputs of one sample (no batch dimension), flattened to ``(O,)``."""
        return self.batched(p, _unsqueeze(x)).reshape(-1)

    def map_samples(self, fn: Callable[[Any], Any], data: Any) -> Any:
        """``fn`` applied to every sample of ``data`` (a batch pytree), results stacked.

        ``vmap`` over the samples; a model whose forward ``vmap`` cannot batch (data-dependent
        control flow such as ``if mask.all():``, an op without a batching rule) is run sample by
        sample instead, for the rest of this problem's life.
        """
        if not self.loop_samples:
            try:
                return vmap(fn)(data)
            except RuntimeError as err:
                if not _is_vmap_limitation(err):
                    raise
                self.loop_samples = True
        results = [fn(index_samples(data, i)) for i in range(sample_count(data))]
        return pytree.tree_map(lambda *ts: torch.stack(ts), *results)

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


def _describe(x: Inputs) -> str:
    if isinstance(x, Tensor):
        return str(tuple(x.shape))
    return str(pytree.tree_map(lambda t: tuple(t.shape), x))


class Target:
    """The function of the parameters whose kernel a backend computes for one kernel kind.

    The model's outputs ``f(θ, x_i) ∈ R^O`` (``problem.batched``), then per sample

    * ``weighted``: multiplied elementwise by weights ``w_i ∈ R^O`` that travel with the inputs:
      the data a backend receives is the pair ``(x, w)`` with ``w`` of shape ``(b, O)``, so chunks,
      ``vmap`` and sample loops carry the weights along;
    * ``scalar``: summed to one output, ``Σ_a w_ia f_ia`` (weighted) or ``Σ_a f_ia / √O`` (the pNTK).

    Args:
        problem: the model.
        scalar: one output per sample (pseudo, loss-gradient Gram).
        weighted: data is ``(x, w)``.
    """

    def __init__(self, problem: Problem, *, scalar: bool, weighted: bool) -> None:
        self.problem = problem
        self.scalar = scalar
        self.weighted = weighted
        self.outputs = 1 if scalar else problem.num_outputs

    def split(self, data: Any) -> tuple[Inputs, Tensor | None]:
        """``(x, w)`` of the data (``w`` is ``None`` when not weighted)."""
        if self.weighted:
            x, w = data
            return x, w
        return data, None

    def apply(self, out: Tensor, w: Tensor | None) -> Tensor:
        """Model outputs ``(b, O)`` -> target outputs ``(b, outputs)``."""
        if w is not None:
            out = out * w
            return out.sum(dim=1, keepdim=True) if self.scalar else out
        if self.scalar:
            return out.sum(dim=1, keepdim=True) / math.sqrt(self.problem.num_outputs)
        return out

    def batched(self, p: dict[str, Tensor], data: Any) -> Tensor:
        """Target outputs of a batch, ``(b, outputs)``."""
        x, w = self.split(data)
        return self.apply(self.problem.batched(p, x), w)

    def single(self, p: dict[str, Tensor], data: Any) -> Tensor:
        """Target outputs of one sample (no batch dimension), ``(outputs,)``."""
        return self.batched(p, _unsqueeze(data)).reshape(-1)
