"""Logger fan-out, TensorBoard layout, and the logged key contract."""

from lightning_lplr.reporting.keys import ALL_KEYS, DEFAULT_PREFIX, REGIME_CODES, full_key

__all__: list[str] = ["ALL_KEYS", "DEFAULT_PREFIX", "REGIME_CODES", "full_key"]
