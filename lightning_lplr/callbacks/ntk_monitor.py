"""``NTKMonitor``: the NTK part of :class:`~lightning_lplr.LPLRMonitor` alone."""

from __future__ import annotations

from lightning_lplr.callbacks.lplr_monitor import LPLRMonitor

__all__ = ["NTKMonitor"]


class NTKMonitor(LPLRMonitor):
    """Sample the empirical NTK of a fixed probe: spectrum, drift, parameter drift, region certificate.

    Takes the arguments of :class:`~lightning_lplr.LPLRMonitor`; the step-level PL and
    rate quantities are off (``loss_fn`` still adds the probe PL ratio and ``μ_NTK``).

    Logged Metrics:
        ``ntk/lambda_min``, ``ntk/lambda_max``, ``ntk/condition_number``, ``ntk/trace``,
        ``ntk/effective_rank``, ``ntk/drift_op``, ``ntk/drift_fro``, ``ntk/lipschitz``,
        ``ntk/eta_beta``, ``param/drift``, ``region/mu_cert``, ``region/inside``,
        ``cost/ntk_seconds``; with ``loss_fn``: ``pl/ratio_probe``, ``pl/mu_ntk``;
        ``skipped/ntk_error`` when a sample fails.

    Example:
        >>> NTKMonitor(ntk_every=100, kind="trace", probe_size=16).kind
        'trace'
    """

    _parts = frozenset({"ntk"})
