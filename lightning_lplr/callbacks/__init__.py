"""Lightning callbacks: when to sample, on what probe, where to log, what to persist."""

from lightning_lplr.callbacks._config import PRESETS, Preset
from lightning_lplr.callbacks._journal import LPLRWarning
from lightning_lplr.callbacks.lplr_monitor import LPLRMonitor
from lightning_lplr.callbacks.ntk_monitor import NTKMonitor
from lightning_lplr.callbacks.pl_monitor import PLMonitor
from lightning_lplr.callbacks.probe import Probe, select_probe
from lightning_lplr.callbacks.rate_monitor import LinearRateMonitor

__all__: list[str] = [
    "PRESETS",
    "LPLRMonitor",
    "LPLRWarning",
    "LinearRateMonitor",
    "NTKMonitor",
    "PLMonitor",
    "Preset",
    "Probe",
    "select_probe",
]
