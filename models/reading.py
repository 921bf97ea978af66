"""The values that flow through the engine: a reading in, a forecast out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reading:
    """One sensor reading. ``timestamp`` is event time in epoch seconds (UTC)."""

    stream_id: str
    timestamp: float
    value: float
    covariates: tuple[float, ...] = ()


@dataclass(frozen=True)
class Forecast:
    """A multi-step forecast issued at ``timestamp`` for ``timestamp + h·step``, h = 1..H."""

    stream_id: str
    timestamp: float
    values: np.ndarray  # [H], original units
    scaled: np.ndarray  # [H], the stream's scaled units (for scale-free error metrics)
    step_seconds: float
    readings_seen: int
    # Prediction intervals (models/intervals.py), original units: row j is the central interval of
    # level interval_levels[j]; None when the model has no intervals.
    interval_levels: tuple[float, ...] = ()
    lower: np.ndarray | None = None  # [L, H]
    upper: np.ndarray | None = None  # [L, H]

    @property
    def target_timestamps(self) -> np.ndarray:
        return self.timestamp + self.step_seconds * np.arange(1, len(self.values) + 1)
