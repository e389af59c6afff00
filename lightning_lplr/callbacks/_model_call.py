"""How the monitor calls the user's model on the probe: the ecosystem's conventions, precision, cache.

Batches and inputs (what ``input_fn`` may return, and what the defaults pick):

* a tensor is passed as the one argument, ``forward(x)``;
* a tuple or list is passed positionally, ``forward(*inputs)``;
* a dict is passed as keyword arguments, ``forward(**inputs)``.

Without ``input_fn`` a tuple/list batch ``(x, y, …)`` gives ``x`` when ``forward`` takes one
positional input and its first ``k`` elements when it takes ``k`` (Lightning's demo Transformer
has ``forward(inputs, target)``); a dict batch gives the dict without its label keys
(:data:`LABEL_KEYS`), restricted to the keywords ``forward`` accepts — a HuggingFace batch
``{input_ids, attention_mask, labels}`` becomes ``forward(input_ids=…, attention_mask=…)``. The
targets are the batch's second element or its label entry.

Outputs: a tensor is used as it is; a tuple or list gives its first element; a mapping (a
HuggingFace ``ModelOutput``) or a dataclass gives its ``logits``, else its first tensor. An output
whose leading dimension is a multiple ``k·b`` of the batch size ``b`` (a language model flattening
``(b, T, V)`` to ``(b·T, V)``) is reshaped to ``(b, k·…)`` after checking, on the probe, that its
rows are sample-major.

Precision: under ``bf16-true`` / ``16-true`` the NTK is that of the float32 function at the
half-precision weights: float32 copies of the parameters, floating-point buffers and
floating-point probe inputs (integer inputs such as ``input_ids`` stay integers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_lplr.functional.normalization import probe_statistics

__all__ = [
    "LABEL_KEYS",
    "ModelCall",
    "bind_model",
    "check_model",
    "conventional_inputs",
    "conventional_targets",
    "output_tensor",
    "reference_call",
    "reference_state",
    "tree_map",
    "tree_size",
]

LABEL_KEYS = ("labels", "label", "label_ids", "target", "targets", "y")
"""Keys of a dict batch that hold targets: never passed to ``forward``."""


def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """``fn`` applied to every tensor of a tensor / tuple / list / dict (other leaves kept)."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def tree_size(tree: Any) -> int:
    """The leading (sample) dimension of the first tensor of ``tree``.

    Raises:
        ValueError: ``tree`` holds no tensor.
    """
    if isinstance(tree, Tensor):
        return int(tree.shape[0])
    values = tree.values() if isinstance(tree, Mapping) else tree if isinstance(tree, (tuple, list)) else ()
    for value in values:
        try:
            return tree_size(value)
        except ValueError:
            continue
    raise ValueError(f"the probe inputs hold no tensor (got {type(tree).__name__}).")


def _positional_inputs(forward: Callable[..., Any]) -> tuple[int, set[str] | None]:
    """How many positional inputs ``forward`` requires, and the keywords it accepts (``None``: any)."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return 1, None
    required = 0
    keywords: set[str] | None = set()
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            required += 1
        if p.kind is p.VAR_KEYWORD:
            keywords = None
        elif keywords is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            keywords.add(p.name)
    return max(required, 1), keywords


def conventional_inputs(batch: Any, module: nn.Module) -> Any:
    """The model inputs of a collated batch by the conventions above.

    Raises:
        ValueError: a batch whose inputs cannot be found; the message says to pass ``input_fn``.
    """
    if isinstance(batch, Tensor):
        return batch
    required, keywords = _positional_inputs(module.forward)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        if required > 1 and len(batch) >= required:
            return tuple(batch[:required])
        return batch[0]
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS and isinstance(v, Tensor)}
        if keywords is not None:
            accepted = {k: v for k, v in inputs.items() if k in keywords}
            if not accepted and len(inputs) == 1:
                return next(iter(inputs.values()))  # {"x": x} for forward(self, inputs)
            inputs = accepted
        if inputs:
            return inputs
        raise ValueError(
            f"the batch is a dict with keys {sorted(map(str, batch))}; none of them (label keys {LABEL_KEYS} "
            f"aside) is an input that {type(module).__name__}.forward accepts. Pass "
            "input_fn=lambda batch: <the inputs: a tensor, a tuple (positional) or a dict (keywords)>."
        )
    raise ValueError(
        f"cannot find the model inputs in a batch of type {type(batch).__name__}; pass "
        "input_fn=lambda batch: <the inputs: a tensor, a tuple (positional) or a dict (keywords)>."
    )


def conventional_targets(batch: Any) -> Any:
    """The targets of a collated batch (its second element or label entry), or ``None``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    return None


def output_tensor(out: Any) -> Tensor:
    """The output tensor of a model output by the conventions above.

    Raises:
        TypeError: no tensor found; the message says to pass ``output_fn``.
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return output_tensor(out[0])
    if isinstance(out, Mapping):
        values = dict(out)
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        values = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    else:
        values = {}
    if isinstance(values.get("logits"), Tensor):
        return values["logits"]
    for value in values.values():
        if isinstance(value, Tensor):
            return value
    raise TypeError(
        f"the model returned a {type(out).__name__} in which no output tensor was found; pass "
        "output_fn=lambda out: <the output tensor, shape (batch, ...)> to the monitor."
    )


@contextlib.contextmanager
def cache_off(module: nn.Module) -> Iterator[None]:
    """Switch ``config.use_cache`` off on every submodule that has one (HuggingFace), restored after."""
    changed: list[Any] = []
    for m in module.modules():
        config = getattr(m, "config", None)
        if getattr(config, "use_cache", None) is True and all(c is not config for c in changed):
            config.use_cache = False
            changed.append(config)
    try:
        yield
    finally:
        for config in changed:
            config.use_cache = True


class ModelCall:
    """``f(params, inputs) -> (b, *out)``: the user's module called by the conventions above.

    Args:
        module: the plain ``LightningModule`` (never the DDP wrapper).
        output_fn: the user's output adapter, or ``None`` for :func:`output_tensor`.
        buffers: buffers to call the module with (float32 copies under half precision), or ``None``.
    """

    def __init__(
        self, module: nn.Module, output_fn: Callable[[Any], Tensor] | None, buffers: dict[str, Tensor] | None
    ) -> None:
        self.module = module
        self.output_fn = output_fn
        self.buffers = buffers or {}
        self.rows_per_sample = 1

    def __call__(self, params: dict[str, Tensor], inputs: Any) -> Tensor:
        state = {**self.buffers, **params}
        if isinstance(inputs, Mapping):
            out = functional_call(self.module, state, (), dict(inputs))
        elif isinstance(inputs, (tuple, list)):
            out = functional_call(self.module, state, tuple(inputs))
        else:
            out = functional_call(self.module, state, (inputs,))
        tensor = self.output_fn(out) if self.output_fn is not None else output_tensor(out)
        if self.rows_per_sample > 1:
            return tensor.reshape(tree_size(inputs), -1)
        return tensor

    def calibrate(self, params: dict[str, Tensor], inputs: Any) -> None:
        """Find how many output rows one sample has, and check that a batch's rows are sample-major.

        Raises:
            ValueError: the output's rows are not a multiple of the samples, or not sample-major.
        """
        self.rows_per_sample = 1
        b = tree_size(inputs)
        out = self(params, inputs)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"output_fn returned a {type(out).__name__}; it must return the output tensor (batch, ...)."
            )
        if out.ndim == 0 or out.shape[0] == b:
            return
        if out.shape[0] % b:
            raise ValueError(
                f"the model output has {out.shape[0]} rows for a probe batch of {b} samples; pass "
                "output_fn=lambda out: <a tensor of shape (batch, ...)> to the monitor."
            )
        self.rows_per_sample = out.shape[0] // b
        batched = self(params, inputs)
        first = self(params, tree_map(lambda t: t[:1], inputs))
        if b > 1 and not torch.allclose(batched[:1], first, rtol=1e-4, atol=1e-5):
            self.rows_per_sample = 1
            raise ValueError(
                f"the model output has {out.shape[0]} rows for {b} samples, and they are not sample-major "
                "(row blocks of one sample each); pass output_fn=lambda out: <(batch, ...) tensor>."
            )


_HALF = (torch.float16, torch.bfloat16)


def bind_model(module: nn.Module, output_fn: Callable[[Any], Tensor] | None) -> tuple[ModelCall, bool]:
    """The monitor's call of ``module``, and whether it trains in half precision (then float32 buffers)."""
    half = any(p.dtype in _HALF for p in module.parameters() if p.requires_grad)
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    floats = {k: (v.float() if v.dtype in _HALF else v) for k, v in buffers.items()} if half else None
    return ModelCall(module, output_fn, floats), half


def check_model(call: ModelCall, probe: Any, params: dict[str, Tensor], owner: str, explicit: Any) -> None:
    """The model must run on the probe and return a tensor: a configuration error at the start otherwise.

    Raises:
        ValueError: naming ``probe=``, ``input_fn=`` and ``output_fn=``, with the model's error as cause.
    """
    try:
        call.calibrate(params, probe.rows(slice(0, 2)))
    except Exception as err:
        source = "probe=" if explicit is not None else "the training data"
        raise ValueError(
            f"{owner} cannot run {type(call.module).__name__}.forward on the probe ({type(err).__name__}: "
            f"{err}). The probe comes from {source}: pass probe= with inputs forward accepts, input_fn= to "
            "pick them out of a batch, or output_fn= to pick the output tensor."
        ) from err


def reference_state(
    call: ModelCall, probe: Any, params: dict[str, Tensor], half: bool, norm_mode: str | None
) -> dict[str, Any]:
    """What the model at ``θ_0`` needs besides ``θ_0``: its buffers, and the probe statistics there."""
    buffers = {k: v.detach().clone() for k, v in call.module.named_buffers()}
    state: dict[str, Any] = {
        "buffers": {k: (v.float() if half and v.dtype in _HALF else v) for k, v in buffers.items()}
    }
    if norm_mode == "probe":
        state["statistics"] = probe_statistics(call, probe.x, params=params)
    return state


def reference_call(call: ModelCall, state0: dict[str, Any]) -> Callable[[dict[str, Tensor], Any], Tensor]:
    """``f(θ, inputs)`` with the buffers (running statistics) kept at ``θ_0``."""
    buffers0 = state0.get("buffers", {})

    def at_theta0(params: dict[str, Tensor], inputs: Any) -> Tensor:
        return call({**buffers0, **params}, inputs)

    return at_theta0
