"""``LinearRateMonitor``: the fitted linear rate of the loss decay and the rate theory predicts."""

from __future__ import annotations

from lightning_lplr.callbacks.lplr_monitor import LPLRMonitor

__all__ = ["LinearRateMonitor"]


class LinearRateMonitor(LPLRMonitor):
    """Fit ``log(L_t − L*) ≈ a + b·t`` over a sliding window and compare with ``1 − 2ημ(1 − ηβ/2)``.

    Takes the arguments of :class:`~lightning_lplr.LPLRMonitor`; no NTK is computed, so
    the prediction uses the PL envelope as ``μ`` and no curvature term (``β`` unknown)
    unless ``loss_fn`` supplies ``μ_NTK``.

    Logged Metrics:
        ``rate/slope``, ``rate/contraction``, ``rate/half_life``, ``rate/r2``,
        ``rate/regime`` (1 linear, 0 undetermined, −1 sublinear), ``rate/contraction_pred``
        (plain SGD only).

    Example:
        >>> LinearRateMonitor(rate_window=100).rate_window
        100
    """

    _parts = frozenset({"rate"})
