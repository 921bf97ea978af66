"""Scaling rules with explicit, serialisable parameters (fitted offline, only loaded when serving).

Two rules:

* Covariates share physical units across streams, so one global scaler is fitted on the
  training part.
* The value is scaled **per stream** from the stream's own first ``season`` readings. A global
  value scaler would be wrong for any new stream of a different magnitude; this rule needs nothing
  from training, so it serves streams never seen in training, and training applies it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# A stream that is nearly constant during its warm-up (a sensor at rest, a quiet first day) still
# needs a usable scale: at least 5% of its level, or later excursions become huge inputs.
_RELATIVE_SCALE_FLOOR = 0.05
_ABSOLUTE_SCALE_FLOOR = 1e-6


@dataclass(frozen=True)
class ScalerParams:
    """Per-column standardisation ``(x - mean) / scale``."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray((x - np.asarray(self.mean)) / np.asarray(self.scale))

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z * np.asarray(self.scale) + np.asarray(self.mean))

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScalerParams:
        return cls(mean=tuple(float(v) for v in data["mean"]), scale=tuple(float(v) for v in data["scale"]))


def fit_scaler(x: np.ndarray) -> ScalerParams:
    """Fit a column-wise standardiser on training rows ``x`` [n, k] (k may be 0)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("fit_scaler expects a 2-D array")
    if x.shape[1] == 0:
        return ScalerParams(mean=(), scale=())
    mean = x.mean(axis=0)
    scale = np.array([_floored_scale(s, m) for s, m in zip(x.std(axis=0), mean)])
    return ScalerParams(mean=tuple(float(v) for v in mean), scale=tuple(float(v) for v in scale))


def fit_stream_value_scaler(first_values: np.ndarray) -> tuple[float, float]:
    """The per-stream value scaler ``(mean, scale)`` from a stream's first season of readings."""
    values = np.asarray(first_values, dtype=np.float64)
    mean = float(values.mean())
    return mean, _floored_scale(float(values.std()), mean)


def _floored_scale(std: float, mean: float) -> float:
    return float(max(std, _RELATIVE_SCALE_FLOOR * abs(mean), _ABSOLUTE_SCALE_FLOOR))
