"""Least-squares lines, one or many rows at once: the fit behind every rate and ``L*`` estimate."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["LineFit", "LineFits", "fit_line", "fit_lines", "row_sum"]


class LineFit(NamedTuple):
    slope: float
    intercept: float
    r2: float
    sse: float


def fit_line(x: np.ndarray, y: np.ndarray) -> LineFit:
    """Least squares ``y ≈ intercept + slope·x`` (centred for conditioning); needs ≥ 2 distinct x.

    ``r2 = 1 − SSE/SST``. When ``y`` is constant up to round-off (``SST`` at the level
    of float64 resolution) the constant line fits exactly: ``slope = 0``, ``r2 = 1``.
    One row of :func:`fit_lines`, so the scalar and row-wise fits are the same arithmetic.
    """
    fits = fit_lines(x[None, :], y[None, :], np.ones((1, x.shape[0]), dtype=bool))
    return LineFit(*(float(v[0]) for v in fits))


def row_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


class LineFits(NamedTuple):
    slope: np.ndarray
    intercept: np.ndarray
    r2: np.ndarray
    sse: np.ndarray


def fit_lines(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> LineFits:
    """Row-wise :func:`fit_line` over the entries ``keep`` marks (weights 0/1, centred sums).

    Row ``b`` is ``fit_line(x[b, keep[b]], y[b, keep[b]])`` (which calls this with one row),
    with NaN fields where that returns NaN (fewer than two points, or all at one ``x``).
    """
    weight = keep.astype(np.float64)
    x = np.where(keep, x, 0.0)
    y = np.where(keep, y, 0.0)
    n = weight.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_mean = x.sum(axis=1) / n
        y_mean = y.sum(axis=1) / n
        dx = (x - x_mean[:, None]) * weight
        dy = (y - y_mean[:, None]) * weight
        sxx = row_sum(dx, dx)
        sst = row_sum(dy, dy)
        x_min = np.min(x, axis=1, where=keep, initial=math.inf)
        x_max = np.max(x, axis=1, where=keep, initial=-math.inf)
        degenerate = (n < 2) | ~(sxx > 0) | (x_min == x_max)
        resolution = 64 * np.finfo(np.float64).eps * np.max(np.abs(y), axis=1, where=keep, initial=1.0)
        constant = ~degenerate & (sst <= n * resolution**2)
        slope = row_sum(dx, dy) / sxx
        residual = dy - slope[:, None] * dx
        sse = row_sum(residual, residual)
        r2 = 1.0 - sse / sst
        r2 = np.where(r2 > 0, r2, 0.0)  # python's max(0.0, r2), NaN included
        intercept = y_mean - slope * x_mean
    slope = np.where(constant, 0.0, slope)
    intercept = np.where(constant, y_mean, intercept)
    r2 = np.where(constant, 1.0, r2)
    sse = np.where(constant, 0.0, sse)
    return LineFits(*(np.where(degenerate, math.nan, v) for v in (slope, intercept, r2, sse)))
