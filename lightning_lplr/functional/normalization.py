"""Which function's kernel: how normalisation layers behave while an NTK is computed.

A BatchNorm layer in training mode normalises each channel with the statistics of the batch,
so one sample's output depends on every other sample in it; in evaluation mode it uses running
statistics, a function that is not the one being trained and that changes with the running
statistics even when the weights do not. The NTK of a BatchNorm network therefore depends on
which function it is the kernel of. :class:`NormMode` names the three choices; in all three
dropout is off (no randomness, the global RNG untouched):

``"probe"``
    Compute every batch-normalisation layer's batch statistics (mean and *biased* variance, as
    training mode normalises) on the whole probe at the current weights, in one forward with
    running statistics neither used nor updated; then take the per-sample kernel of the
    function with those statistics held constant. The outputs are exactly the training-mode
    outputs of the probe batch, but the derivatives miss the path through the statistics:
    an approximation of the training-mode Jacobian. For instance a bias followed by BatchNorm
    is cancelled by the mean subtraction in training mode (a zero column of the exact Jacobian)
    but not with the statistics held fixed, and the exact Jacobian is orthogonal to any rescaling
    of the weights feeding a BatchNorm (scale invariance), which the probe-mode Jacobian is not.
    In return the kernel stays a per-sample kernel: every implementation (including the
    per-layer ``"structured"`` one) applies, and a block ``K(x1, x2)`` of a few rows ``x1`` of the
    probe against the whole probe ``x2`` equals those rows of the whole kernel provided the
    statistics come from the whole probe (pass them explicitly, see :func:`probe_statistics`).
``"train"``
    The exact Jacobian of the probe batch's outputs in training mode, gradients through the
    statistics included. Samples are mixed, so it is the Jacobian of the batch function
    ``θ ↦ f(θ, X) ∈ R^{m·O}`` (about ``m×`` the cost of a per-sample Jacobian); running statistics
    are not updated. NTK-based PL bounds and curvatures are exact for a BatchNorm network only in
    this mode.
``"eval"``
    Running statistics (BatchNorm in evaluation mode): the previous behaviour, per sample.

SyncBatchNorm is treated as BatchNorm (statistics of the batch in this process, no
communication). LayerNorm, GroupNorm and InstanceNorm never mix samples and are left alone,
except an InstanceNorm that tracks running statistics: it uses its per-instance statistics (as
in training) in the ``"probe"`` and ``"train"`` modes and its running statistics in ``"eval"``.
Other modules run in whatever train/eval mode they are in.

The modes are implemented by overriding, for the duration of each forward call and only there,
the ``training`` flag and the running-statistics buffers that the affected modules read; the
module's own flags and buffers are back in place when the call returns (and no buffer's data is
ever written). The override finds the modules through a global forward hook, so it applies to
a plain callable ``f(params, x)`` that calls modules (e.g. through ``functional_call``) as well
as to an ``nn.Module``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from lightning_lplr.functional._problem import (
    Inputs,
    ModelFn,
    as_inputs,
    call_module,
    full_precision,
    sample_count,
    trainable_params,
)

__all__ = ["NormMode", "NormStatistics", "probe_statistics", "with_norm_mode"]


class NormMode(str, Enum):
    """Which function's kernel the NTK is, for normalisation layers (``empirical_ntk(norm_mode=...)``).

    Dropout is off in every mode. See the module docstring for the exact definitions.
    """

    PROBE = "probe"
    """Batch statistics of the whole probe at the current weights, held constant: a per-sample
    kernel of the function that training evaluates on the probe batch (derivatives through the
    statistics dropped)."""
    TRAIN = "train"
    """The exact training-mode Jacobian of the probe batch, through the statistics (``m×`` cost)."""
    EVAL = "eval"
    """Running statistics (evaluation mode), per sample."""


@dataclass(frozen=True, eq=False)  # tensors: compare the fields explicitly
class NormStatistics:
    """Batch statistics of every batch-normalisation call of one forward, in call order.

    Plain tensors, so they can be broadcast between processes (every rank then uses the same
    statistics) and reused for several kernel blocks of the same probe and weights.

    Attributes:
        means: per call, the channel means ``(C,)`` of the layer input over the batch (and
            positions).
        variances: per call, the biased channel variances ``(C,)`` (what training mode
            normalises with; the running-variance update uses the unbiased one).
        num_samples: size of the batch they were computed on.
    """

    means: tuple[Tensor, ...]
    variances: tuple[Tensor, ...]
    num_samples: int

    def __len__(self) -> int:
        return len(self.means)

    def to(self, device: torch.device | str) -> NormStatistics:
        """The same statistics on ``device``.

        Args:
            device: target device.

        Returns:
            A new :class:`NormStatistics`.

        Example:
            >>> s = NormStatistics((torch.zeros(2),), (torch.ones(2),), num_samples=4)
            >>> s.to("cpu").means[0].device.type
            'cpu'
        """
        means = tuple(t.to(device) for t in self.means)
        return NormStatistics(means, tuple(t.to(device) for t in self.variances), self.num_samples)


_COLLECT = "collect"
"""Internal mode of the statistics pass: ``"train"`` behaviour plus recording the statistics."""


def _has_running_stats(module: nn.Module) -> bool:
    return all(getattr(module, name, None) is not None for name in ("running_mean", "running_var"))


class NormOverride:
    """Overrides normalisation and dropout behaviour during each call of a wrapped model function.

    Internal: built by :func:`~lightning_lplr.functional.empirical_ntk` for a ``norm_mode``. Inside
    a call of the function returned by :meth:`wrap`, a global forward pre-hook sets, for each
    module about to run:

    * dropout: ``training = False``;
    * BatchNorm / SyncBatchNorm: ``training = False`` (so SyncBatchNorm never synchronises and no
      ``num_batches_tracked`` is incremented) and the running-statistics buffers to the probe
      statistics (``"probe"``), to ``None`` (``"train"``: batch statistics, nothing updated) or left
      as they are (``"eval"``);
    * InstanceNorm with running statistics: ``training = True`` and the buffers ``None`` in the
      probe and train modes (per-instance statistics, nothing updated), ``training = False`` in
      eval mode.

    A global forward hook (and, should the forward raise, the end of the call) puts the module's
    own flag and buffer objects back. Forward hooks registered before the call (those of the
    structured implementation) see the overridden state.

    Args:
        mode: a :class:`NormMode` value, or ``"collect"`` for the statistics pass.
        statistics: the statistics of the probe mode.
    """

    def __init__(self, mode: NormMode | str, statistics: NormStatistics | None = None) -> None:
        self.mode = mode.value if isinstance(mode, NormMode) else str(mode)
        if self.mode == NormMode.PROBE.value and statistics is None:
            raise ValueError("NormOverride(mode='probe') needs statistics (see probe_statistics).")
        self.statistics = statistics
        self.collected_means: list[Tensor] = []
        self.collected_variances: list[Tensor] = []
        self._calls = 0
        self._pending: dict[int, list[tuple[nn.Module, bool, dict[str, tuple[Any, Any]]]]] = {}

    @property
    def mixes_samples(self) -> bool:
        """Whether outputs depend on the other samples of the batch (train and collect modes)."""
        return self.mode in (NormMode.TRAIN.value, _COLLECT)

    def wrap(self, call: ModelFn) -> ModelFn:
        """``call`` with the override active during each of its calls.

        Args:
            call: ``f(params, x)``.

        Returns:
            The wrapped function, same signature.
        """

        def wrapped(params: dict[str, Tensor], x: Inputs) -> Any:
            with self.active():
                return call(params, x)

        return wrapped

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Install the override for one forward (statistics of the probe mode are consumed in call order)."""
        self._calls = 0
        self._pending = {}
        pre = register_module_forward_pre_hook(self._pre_hook)
        post = register_module_forward_hook(self._post_hook, always_call=True)
        ok = False
        try:
            yield
            ok = True
        finally:
            pre.remove()
            post.remove()
            for records in reversed(list(self._pending.values())):
                while records:
                    _restore(records.pop())
            self._pending = {}
        if ok and self.mode == NormMode.PROBE.value:
            assert self.statistics is not None
            if self._calls != len(self.statistics):
                raise ValueError(
                    f"the forward ran {self._calls} batch-normalisation calls but the norm statistics hold "
                    f"{len(self.statistics)}: they come from another model (or the model's control flow "
                    "depends on the input). Compute them with probe_statistics() on this model."
                )

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, _DropoutNd):
            if module.training:
                self._push(module, False, {})
            return
        if isinstance(module, _BatchNorm):
            self._batch_norm(module, args)
        elif isinstance(module, _InstanceNorm) and module.track_running_stats:
            if self.mode == NormMode.EVAL.value:
                self._push(module, False, {})
            else:
                self._push(module, True, {"running_mean": None, "running_var": None})

    def _batch_norm(self, module: _BatchNorm, args: tuple[Any, ...]) -> None:
        if self.mode == NormMode.EVAL.value:
            if not _has_running_stats(module):
                raise ValueError(
                    f"norm_mode='eval' but a {type(module).__name__}({module.num_features}) has no running "
                    "statistics (track_running_stats=False); use norm_mode='probe' or 'train'."
                )
            self._push(module, False, {})
            return
        if self.mode != NormMode.PROBE.value:  # train, collect: batch statistics, nothing updated
            if self.mode == _COLLECT:
                h = args[0]
                dims = [0, *range(2, h.ndim)]
                with torch.no_grad():
                    self.collected_means.append(h.detach().mean(dim=dims))
                    self.collected_variances.append(h.detach().var(dim=dims, correction=0))
            self._push(module, False, {"running_mean": None, "running_var": None})
            return
        stats = self.statistics
        assert stats is not None
        k = self._calls
        self._calls += 1
        if k >= len(stats):
            raise ValueError(
                f"the forward runs more batch-normalisation calls than the {len(stats)} of the norm "
                "statistics: they come from another model. Compute them with probe_statistics() on this "
                "model."
            )
        h = args[0]
        mean, var = stats.means[k], stats.variances[k]
        channels = h.shape[1] if h.ndim >= 2 else -1
        if mean.shape != (channels,) or var.shape != (channels,):
            raise ValueError(
                f"norm statistics of batch-normalisation call {k} have shape {tuple(mean.shape)} but the "
                f"layer input has {channels} channels: they come from another model. Compute them with "
                "probe_statistics() on this model."
            )
        if mean.device != h.device:
            mean, var = mean.to(h.device), var.to(h.device)
        self._push(module, False, {"running_mean": mean, "running_var": var})

    def _push(self, module: nn.Module, training: bool, buffers: dict[str, Any]) -> None:
        swapped: dict[str, tuple[Any, Any]] = {}
        for name, value in buffers.items():
            if name in module._buffers:
                swapped[name] = (module._buffers[name], value)
                module._buffers[name] = value
        self._pending.setdefault(id(module), []).append((module, module.training, swapped))
        module.training = training

    def _post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        records = self._pending.get(id(module))
        if records:
            _restore(records.pop())


def _restore(record: tuple[nn.Module, bool, dict[str, tuple[Any, Any]]]) -> None:
    module, training, swapped = record
    module.training = training
    for name, (old, new) in swapped.items():
        if module._buffers.get(name) is new:  # else someone (functional_call's exit) already put one back
            module._buffers[name] = old


def check_eval_mode(module: nn.Module) -> None:
    """Raise if ``norm_mode='eval'`` cannot apply to ``module`` (a BatchNorm without running statistics).

    Args:
        module: the model.

    Raises:
        ValueError: naming the offending submodules.
    """
    bad = [
        f"{name or '<root>'} ({type(m).__name__})"
        for name, m in module.named_modules()
        if isinstance(m, _BatchNorm) and not _has_running_stats(m)
    ]
    if bad:
        raise ValueError(
            f"norm_mode='eval' but these BatchNorm modules have no running statistics "
            f"(track_running_stats=False): {', '.join(bad)}. Use norm_mode='probe' or 'train'."
        )


def probe_statistics(
    model: nn.Module | ModelFn, x: Inputs, *, params: Mapping[str, Tensor] | None = None
) -> NormStatistics:
    """Batch statistics of every batch-normalisation layer on the batch ``x`` (the ``"probe"`` mode's).

    One forward of the whole batch without gradients, in which every BatchNorm (and
    SyncBatchNorm, without communication) normalises with the statistics of the batch, as in
    training, while its running statistics are neither used nor updated; dropout is off. The
    mean and biased variance of each BatchNorm call's input are recorded in call order. Module
    flags, buffers and the RNG are unchanged afterwards.

    Pass the result as ``norm_statistics=`` of
    :func:`~lightning_lplr.functional.empirical_ntk` with ``norm_mode="probe"`` to compute a block
    of rows ``x1`` of the probe against the whole probe with the statistics of the whole probe
    (every rank of a data-parallel job can compute them itself, or receive them by broadcast).

    Args:
        model: an ``nn.Module`` or a callable ``f(params, x)`` (then ``params`` is required).
        x: the batch, shape ``(m, *input_shape)``, or a tuple/list/dict of such tensors (passed
            to a module as positional or keyword arguments, as in
            :func:`~lightning_lplr.functional.empirical_ntk`); for a BatchNorm over features alone
            (``BatchNorm1d`` on ``(m, C)``) ``m >= 2``.
        params: parameters to evaluate at (for a module: overriding its trainable parameters,
            names as in ``named_parameters``); ``None`` for the module's own.

    Returns:
        The statistics (detached, on the device and in the dtype of the layer inputs); empty
        for a model without BatchNorm.

    Raises:
        ValueError: ``params`` missing for a callable.
        TypeError: ``model`` is neither a module nor a callable, or ``x`` is not a tensor (or a
            pytree of tensors).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
        >>> x = torch.randn(8, 3)
        >>> stats = probe_statistics(net, x)
        >>> len(stats), stats.num_samples
        (1, 8)
        >>> h = net[0](x).detach()
        >>> bool(torch.allclose(stats.means[0], h.mean(0)))
        True
        >>> bool(torch.allclose(stats.variances[0], h.var(0, correction=0)))
        True
        >>> int(net[1].num_batches_tracked)  # running statistics untouched
        0
    """
    x = as_inputs(x, "x")
    if isinstance(model, nn.Module):
        module = model
        p = dict(trainable_params(module) if params is None else params)

        def call(q: dict[str, Tensor], xb: Inputs) -> Any:
            return call_module(module, q, xb)

    elif callable(model):
        if params is None:
            raise ValueError(
                "params=None but model is a plain callable f(params, x); pass params=dict(name -> tensor)."
            )
        p = dict(params)
        call = model  # type: ignore[assignment]
    else:
        raise TypeError(f"model must be an nn.Module or a callable f(params, x); got {type(model).__name__}.")
    override = NormOverride(_COLLECT)
    with torch.no_grad(), full_precision():
        override.wrap(call)({k: v.detach() for k, v in p.items()}, x)
    return NormStatistics(
        tuple(override.collected_means), tuple(override.collected_variances), num_samples=sample_count(x)
    )


def mode_value(norm_mode: Any) -> NormMode | None:
    """``norm_mode`` checked: ``None`` or a :class:`NormMode`.

    Args:
        norm_mode: ``None``, a :class:`NormMode` or its string value.

    Returns:
        ``None`` or the :class:`NormMode`.

    Raises:
        ValueError: an unknown value.

    Example:
        >>> mode_value("probe")
        <NormMode.PROBE: 'probe'>
    """
    if norm_mode is None:
        return None
    try:
        return NormMode(norm_mode)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in NormMode)
        raise ValueError(
            f"norm_mode={norm_mode!r} is not a known norm_mode; pass None or one of {allowed}."
        ) from None


def with_norm_mode(
    fn: ModelFn, norm_mode: NormMode | str | None, statistics: NormStatistics | None = None
) -> ModelFn:
    """``fn`` evaluated as the kernel of ``norm_mode`` sees it (the same function ``empirical_ntk`` uses).

    With ``"probe"`` every BatchNorm normalises with ``statistics`` (see :func:`probe_statistics`),
    with ``"train"`` with the statistics of the batch it is given (nothing updated), with ``"eval"``
    with its running statistics; dropout is off in all three. ``None`` returns ``fn`` unchanged.

    Args:
        fn: ``f(params, x)``.
        norm_mode: ``None``, ``"probe"``, ``"train"`` or ``"eval"``.
        statistics: the probe statistics (``"probe"`` only).

    Returns:
        ``f(params, x)`` with the override active during each call.

    Example:
        >>> from torch.func import functional_call
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
        >>> x = torch.randn(8, 3)
        >>> def f(p, xb):
        ...     return functional_call(net, p, (xb,))
        >>> out = with_norm_mode(f, "train")(trainable_params(net), x)
        >>> bool(torch.allclose(out.mean(0), torch.zeros(4), atol=1e-6))  # batch statistics
        True
    """
    mode = mode_value(norm_mode)
    if mode is None:
        return fn
    return NormOverride(mode, statistics).wrap(fn)
