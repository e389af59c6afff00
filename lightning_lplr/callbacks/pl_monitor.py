"""``PLMonitor``: the empirical Polyak–Łojasiewicz ratio and its lower envelope."""

from __future__ import annotations

from lightning_lplr.callbacks.lplr_monitor import LPLRMonitor

__all__ = ["PLMonitor"]


class PLMonitor(LPLRMonitor):
    """Step-level PL ratio ``‖∇L‖²/(2(L − L*))`` with its running-min and low-quantile envelope.

    Takes the arguments of :class:`~lightning_lplr.LPLRMonitor`; no NTK is computed.
    The loss comes from ``training_step``'s output and the gradient norm from
    ``on_before_optimizer_step`` (unscaled under AMP, averaged under DDP), so no extra
    pass is made. With ``loss_fn`` it also evaluates the full-batch PL ratio on the
    probe at ``ntk_every`` (the unbiased one under mini-batch SGD).

    Logged Metrics:
        ``pl/gap``, ``pl/ratio_step``, ``pl/envelope_min``, ``pl/envelope_q05``; with
        ``loss_fn``: ``pl/ratio_probe``; ``skipped/nonfinite_loss``, ``skipped/nonpositive_gap``.

    Example:
        >>> PLMonitor(loss_star="running_min").loss_star
        'running_min'
    """

    _parts = frozenset({"pl"})
