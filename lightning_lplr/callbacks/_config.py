"""Configuration of the monitors: presets, and every argument checked in ``__init__``.

A bad argument fails when the monitor is built, with a message naming it, never at step 50.
The checks themselves are those of :mod:`lightning_lplr.functional._checks`, shared with the
functional core.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_lplr.callbacks.probe import default_target_fn
from lightning_lplr.functional._checks import check_callable, check_choice, check_float, check_int, is_real
from lightning_lplr.functional.ntk import NTKImplementation
from lightning_lplr.schedules import Schedule, as_schedule, log_spaced

__all__ = [
    "LPLR_ARGUMENTS",
    "MONITOR_KINDS",
    "PRESETS",
    "NTKConfig",
    "Preset",
    "StepConfig",
    "reject_ignored",
]

MONITOR_KINDS = ("full", "trace", "pseudo", "loss_gram")
NORM_MODES = ("probe", "train", "eval")
LOSS_STAR_STRATEGIES = ("zero", "running_min", "fit")


@dataclass(frozen=True)
class Preset:
    """A cost/detail trade-off for the NTK part of the monitors."""

    kind: str
    probe_size: int
    ntk_every: Schedule


PRESETS: dict[str, Preset] = {
    "cheap": Preset(
        kind="pseudo", probe_size=16, ntk_every=log_spaced(per_decade=2, dense_until=0, max_interval=2000)
    ),
    "default": Preset(
        kind="full", probe_size=32, ntk_every=log_spaced(per_decade=3, dense_until=0, max_interval=1000)
    ),
    "full": Preset(kind="full", probe_size=64, ntk_every=log_spaced(per_decade=10, max_interval=200)),
}
"""``cheap``: pNTK of 16 samples at steps 0, 1, 4, 10, 32, 100, 317, … and at least every
2000 steps. ``default``: full kernel of 32 samples at steps 0, 1, 3, 5, 10, 22, 47, 100, 216,
465, 1000 and then every 1000 steps. ``full``: full kernel of 64 samples, every step up to 4,
~10 per decade and at least every 200 steps."""


def check_loss_star(loss_star: Any) -> str | float:
    """``loss_star`` if it is a strategy name or a finite number.

    Raises:
        ValueError: anything else, naming the strategies.
    """
    if is_real(loss_star):
        if not math.isfinite(float(loss_star)):
            raise ValueError(
                f"loss_star={loss_star!r} must be finite: pass the known optimal loss as a float, or "
                "'zero' / 'fit'."
            )
        return float(loss_star)
    return check_choice(
        "loss_star", loss_star, LOSS_STAR_STRATEGIES, hint="Pass one of these or a float (the known optimum)."
    )


def check_probe(probe: Any) -> None:
    """``probe`` must be ``None``, a dataset, a dataloader, a tensor of inputs or a tuple of tensors.

    Raises:
        ValueError: anything else (a number, a string, a tuple holding something else), with the fix.
    """
    if probe is None or isinstance(probe, (Tensor, DataLoader, Dataset)):
        return
    if isinstance(probe, tuple):
        ok = bool(probe) and all(isinstance(t, Tensor) for t in probe)
    else:  # a map-style dataset that is not a torch Dataset (a list of samples, say)
        ok = (
            not isinstance(probe, (str, bytes))
            and hasattr(probe, "__len__")
            and hasattr(probe, "__getitem__")
        )
    if not ok:
        raise ValueError(
            f"probe={probe!r} must be a Dataset, a DataLoader, a tensor of inputs or an (x, y) tuple of "
            "tensors; pass None to draw the probe from the training set."
        )


@dataclass(frozen=True)
class NTKConfig:
    """What the NTK part samples, on what probe, how (checked by :meth:`build`)."""

    preset: str = "default"
    kind: str | None = None
    probe_size: int | None = None
    ntk_every: Any = None
    probe: Dataset | DataLoader | Tensor | tuple[Tensor, ...] | None = None
    probe_seed: int | None = None
    input_fn: Callable[[Any], Tensor] | None = None
    target_fn: Callable[[Any], Tensor | None] | None = None
    output_fn: Callable[[Any], Tensor] | None = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    implementation: str = "structured"
    chunk_size: int | None = None
    max_memory_bytes: int | None = None
    norm_mode: str = "probe"
    full_batch: bool | None = None
    overhead: float | None = 0.05
    theta0: str = "auto"
    ntk_every_explicit: bool = False
    """Whether the user chose ``ntk_every`` (then its steps are the budget's candidates)."""
    probe_size_explicit: bool = False
    """Whether the user chose ``probe_size`` (then a larger one than the dataset is an error)."""

    @classmethod
    def build(cls, arguments: Mapping[str, Any]) -> NTKConfig:
        """Check the NTK arguments among a monitor's ``arguments`` and resolve the preset.

        ``kind``, ``probe_size`` and ``ntk_every`` left ``None`` come from the preset;
        ``target_fn`` defaults to :func:`~lightning_lplr.callbacks.probe.default_target_fn`; an
        ``input_fn`` left ``None`` is resolved against the model's ``forward`` at fit start.
        """
        kw = _fields_of(cls, arguments)
        kw["probe_size_explicit"] = kw.get("probe_size") is not None
        kw["ntk_every_explicit"] = kw.get("ntk_every") is not None
        check_float(
            "overhead",
            kw.get("overhead", 0.05),
            minimum=0.0,
            strict=True,
            allow_none=True,
            hint="It is the NTK time allowed per second of training (0.05: 5 %); None samples at every "
            "step of ntk_every.",
        )
        preset = PRESETS[check_choice("preset", kw.get("preset", "default"), PRESETS, hint="e.g. 'cheap'.")]
        for name in ("kind", "probe_size", "ntk_every"):
            if kw.get(name) is None:
                kw[name] = getattr(preset, name)
        kw["ntk_every"] = as_schedule(kw["ntk_every"], "ntk_every")
        kw["target_fn"] = kw.get("target_fn") or default_target_fn
        check_choice(
            "kind",
            kw["kind"],
            MONITOR_KINDS,
            hint="(A 'diagonal' kernel has no single spectrum; use empirical_ntk(kind='diagonal') directly.)",
        )
        check_choice(
            "implementation", kw.get("implementation", "structured"), [m.value for m in NTKImplementation]
        )
        if kw["kind"] == "loss_gram" and kw.get("loss_fn") is None:
            raise ValueError(
                "kind='loss_gram' is the Gram of per-sample loss gradients: it needs loss_fn=, e.g. "
                "loss_fn=torch.nn.functional.cross_entropy (and probe targets)."
            )
        check_int("probe_size", kw["probe_size"], minimum=1)
        check_int("probe_seed", kw.get("probe_seed"), allow_none=True)
        check_int("chunk_size", kw.get("chunk_size"), minimum=1, allow_none=True)
        check_int("max_memory_bytes", kw.get("max_memory_bytes"), minimum=1, allow_none=True, hint="(bytes)")
        for name in ("input_fn", "target_fn", "output_fn"):
            check_callable(name, kw.get(name), signature=f"{name}(batch_or_output)")
        check_callable("loss_fn", kw.get("loss_fn"), signature="loss_fn(outputs, targets) -> scalar")
        if kw["kind"] == "loss_gram" and kw.get("loss_fn") is None:
            raise ValueError(
                "kind='loss_gram' is the Gram of the probe's per-sample loss gradients: pass loss_fn= "
                "(the loss you train with), or another kind."
            )
        check_choice("norm_mode", kw.get("norm_mode", "probe"), NORM_MODES, hint="See docs/normalization.md.")
        check_choice("theta0", kw.get("theta0", "auto"), ("auto", "device", "cpu"), hint="Where θ_0 is kept.")
        if kw.get("full_batch") is not None and not isinstance(kw["full_batch"], bool):
            raise ValueError(f"full_batch={kw['full_batch']!r} must be None (detect), True or False.")
        check_probe(kw.get("probe"))
        return cls(**kw)


@dataclass(frozen=True)
class StepConfig:
    """The step-level quantities: schedule, batching, ``L*``, envelope and rate windows."""

    step_every: Any = 1
    flush_every: int = 50
    loss_star: str | float = "zero"
    loss_star_margin: float = 1e-3
    envelope_window: int | None = None
    envelope_quantile: float = 0.05
    rate_window: int = 50
    rate_min_points: int = 10

    @classmethod
    def build(cls, arguments: Mapping[str, Any]) -> StepConfig:
        """Check the step-level arguments among a monitor's ``arguments`` (the others keep defaults)."""
        kw = {**{f.name: f.default for f in fields(cls)}, **_fields_of(cls, arguments)}
        kw["step_every"] = as_schedule(kw["step_every"], "step_every")
        check_int("flush_every", kw["flush_every"], minimum=1, hint="(steps per batch of writes)")
        kw["loss_star"] = check_loss_star(kw["loss_star"])
        if kw["loss_star"] == "running_min":
            warnings.warn(
                "loss_star='running_min' is deprecated online: while the loss falls, the running minimum "
                "includes the current step, so the gap is margin·L and the PL ratios are inflated by "
                "1/margin. Use loss_star='fit' or the known optimum as a float; the report recomputes a "
                "post-hoc running minimum (lightning-lplr report --loss-star running_min).",
                FutureWarning,
                stacklevel=4,
            )
        check_float("loss_star_margin", kw["loss_star_margin"], minimum=0.0)
        check_int("envelope_window", kw["envelope_window"], minimum=1, allow_none=True)
        check_float("envelope_quantile", kw["envelope_quantile"], minimum=0.0, maximum=1.0, strict=True)
        check_int("rate_window", kw["rate_window"], minimum=2, hint="(steps in the rate fit)")
        check_int("rate_min_points", kw["rate_min_points"], minimum=2, maximum=kw["rate_window"])
        return cls(**kw)


def _fields_of(cls: type, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``arguments`` that are fields of dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in arguments.items() if k in names}


LPLR_ARGUMENTS = frozenset(
    {
        "preset",
        "ntk_every",
        "step_every",
        "flush_every",
        "probe",
        "probe_size",
        "probe_seed",
        "input_fn",
        "target_fn",
        "output_fn",
        "loss_fn",
        "kind",
        "implementation",
        "chunk_size",
        "max_memory_bytes",
        "loss_star",
        "loss_star_margin",
        "envelope_window",
        "envelope_quantile",
        "rate_window",
        "rate_min_points",
        "prefix",
        "log_histograms",
        "norm_mode",
        "full_batch",
        "overhead",
        "theta0",
    }
)
"""Every argument of :class:`~lightning_lplr.LPLRMonitor` (a test keeps it equal to the signature)."""


def reject_ignored(owner: str, ignored: Mapping[str, Any]) -> None:
    """Warn about arguments another monitor takes but ``owner`` ignores; refuse unknown ones.

    One release of deprecation: an argument of :class:`~lightning_lplr.LPLRMonitor` that this
    monitor ignores is a ``FutureWarning`` now and will be a ``TypeError`` in the next release.

    Raises:
        TypeError: an argument no monitor takes.
    """
    unknown = sorted(set(ignored) - LPLR_ARGUMENTS)
    if unknown:
        raise TypeError(f"{owner}.__init__() got unexpected keyword arguments {unknown}.")
    if ignored:
        warnings.warn(
            f"{owner} ignores {sorted(ignored)}: they configure another part of LPLRMonitor. Remove them "
            f"(or use LPLRMonitor); passing them to {owner} will be an error in the next release.",
            FutureWarning,
            stacklevel=3,
        )
