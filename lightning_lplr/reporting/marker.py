"""The run's schema marker: what a monitor assumed, written once per run, read by the report.

A marker is a flat JSON object. The monitor writes it at the start of training as a text record
``<prefix>schema`` to TensorBoard loggers and through ``log_hyperparams`` (keys
``<prefix>schema/<field>``) to every other logger, so CSV (``hparams.yaml``), MLflow and the like
keep it too. The report reads it to say which key semantics it is reading; a run without one was
written before key-semantics version 2.

This module is plain Python (no torch, no Lightning): the report imports it.

Example:
    >>> marker = make_marker(monitor="LPLRMonitor", prefix="lplr/", kernel_kind="full")
    >>> parse_marker(encode_marker(marker))["key_semantics_version"]
    2
    >>> flatten_marker(marker, "lplr/")["lplr/schema/kernel_kind"]
    'full'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lightning_lplr.reporting.keys import KEY_SEMANTICS_VERSION

__all__ = [
    "MARKER_FIELDS",
    "encode_marker",
    "flatten_marker",
    "make_marker",
    "marker_tag",
    "parse_marker",
    "unflatten_marker",
]

MARKER_FIELDS: dict[str, str] = {
    "key_semantics_version": "version of the meaning of the logged keys (see lightning_lplr.reporting.keys)",
    "package_version": "lightning_lplr version that wrote the run",
    "monitor": "class name of the monitor",
    "prefix": "prefix of the monitor's keys",
    "kernel_kind": "NTK kind sampled: full, trace, pseudo or loss_gram (None when no NTK is sampled)",
    "norm_mode": "which function's kernel for normalisation layers: probe, train or eval",
    "loss": "name of loss_fn (None without one)",
    "loss_star": "L* strategy: zero, a number, or fit",
    "optimizer": "class name of the (first) optimizer",
    "momentum": "heavy-ball momentum of the first parameter group (0 for none)",
    "plain_sgd": "plain SGD: no momentum, Nesterov or weight decay, one learning rate",
    "probe_is_training_set": "the probe is the whole training set",
    "full_batch": "every optimizer step sees the whole training set",
    "world_size": "number of processes",
}
"""Every field a marker may hold, with its meaning (``None`` where unknown)."""


def marker_tag(prefix: str) -> str:
    """The tag / key of the marker's text record under ``prefix``."""
    return f"{prefix}schema"


def make_marker(**fields: Any) -> dict[str, Any]:
    """A marker with the current key-semantics version and the given fields.

    Raises:
        ValueError: a field not in :data:`MARKER_FIELDS` (the allowed names are listed).
    """
    unknown = sorted(set(fields) - set(MARKER_FIELDS))
    if unknown:
        raise ValueError(f"unknown marker fields {unknown}; allowed: {sorted(MARKER_FIELDS)}.")
    marker: dict[str, Any] = {"key_semantics_version": KEY_SEMANTICS_VERSION}
    marker.update(fields)
    return marker


def encode_marker(marker: Mapping[str, Any]) -> str:
    """The marker as one line of JSON (sorted keys)."""
    return json.dumps(dict(marker), sort_keys=True, default=str)


def parse_marker(text: str) -> dict[str, Any] | None:
    """The marker encoded in ``text``, or ``None`` when ``text`` is not a marker."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(value, dict) or "key_semantics_version" not in value:
        return None
    return value


def flatten_marker(marker: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{<prefix>schema/<field>: value}``: the form ``log_hyperparams`` keeps in every logger."""
    head = marker_tag(prefix) + "/"
    return {head + key: value for key, value in marker.items()}


def unflatten_marker(params: Mapping[str, Any], prefix: str) -> dict[str, Any] | None:
    """The marker held in flat hyper-parameters (as :func:`flatten_marker` wrote them), or ``None``."""
    head = marker_tag(prefix) + "/"
    marker = {key[len(head) :]: value for key, value in params.items() if key.startswith(head)}
    return marker if "key_semantics_version" in marker else None
