"""Online accuracy: score issued forecasts when their target readings arrive (pure, numpy only).

The job keeps, per stream, the forecasts issued in the last H steps. When a reading arrives at
time T, every pending forecast with a target at T is scored, next to the persistence baseline
(the value at the forecast's origin). Errors are in the stream's scaled units, so streams of any
magnitude share one histogram; ``skill`` is the rolling model MAE ÷ persistence MAE per horizon band
(> 1 means the model loses to persistence: the drift alarm).

This is monitoring, not serving state: it is held in memory only, for at most ``max_streams``
streams (the first ones seen), because H forecasts of H values per stream would dwarf the
serving state (48 × 48 floats for the default model).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


def horizon_band_labels(horizon: int) -> list[str]:
    """Band label for each horizon step 1..H: "1", "le_q" (≤ ⌈H/4⌉), "le_half" (≤ ⌈H/2⌉), "le_full"."""
    quarter, half = -(-horizon // 4), -(-horizon // 2)
    labels = []
    for h in range(1, horizon + 1):
        labels.append("1" if h == 1 else "le_q" if h <= quarter else "le_half" if h <= half else "le_full")
    return labels


@dataclass(frozen=True)
class ScoredPoint:
    horizon_step: int  # h, 1..H
    band: str
    model_error: float  # |forecast − actual|, scaled units
    persistence_error: float  # |value at origin − actual|, scaled units


@dataclass
class _Pending:
    origin: float
    origin_value_scaled: float
    forecast_scaled: np.ndarray


class AccuracyTracker:
    """Scores each stream's forecasts against the readings that arrive later."""

    def __init__(self, horizon: int, step_seconds: float, window: int = 1000, max_streams: int = 1000):
        self.horizon = horizon
        self.step_seconds = step_seconds
        self.max_streams = max_streams
        self._bands = horizon_band_labels(horizon)
        self._pending: dict[str, deque[_Pending]] = {}
        self._rolling = {band: deque(maxlen=window) for band in dict.fromkeys(self._bands)}
        self.abs_error_sums = np.zeros(horizon)
        self.persistence_error_sums = np.zeros(horizon)
        self.counts = np.zeros(horizon)

    def observe(
        self, stream_id: str, timestamp: float, value: float, value_mean: float, value_scale: float,
        forecast_scaled: np.ndarray | None,
    ) -> list[ScoredPoint]:
        """Score what this reading settles, then remember the forecast it produced (if any)."""
        pending = self._pending.get(stream_id)
        if pending is None:
            if len(self._pending) >= self.max_streams or forecast_scaled is None:
                return []
            pending = self._pending[stream_id] = deque()
        actual = (value - value_mean) / value_scale
        scored = []
        while pending and timestamp - pending[0].origin > self.horizon * self.step_seconds:
            pending.popleft()
        for item in pending:
            steps = (timestamp - item.origin) / self.step_seconds
            h = int(round(steps))
            if 1 <= h <= self.horizon and abs(steps - h) < 1e-6:
                point = ScoredPoint(
                    h,
                    self._bands[h - 1],
                    abs(float(item.forecast_scaled[h - 1]) - actual),
                    abs(item.origin_value_scaled - actual),
                )
                scored.append(point)
                self._rolling[point.band].append((point.model_error, point.persistence_error))
                self.abs_error_sums[h - 1] += point.model_error
                self.persistence_error_sums[h - 1] += point.persistence_error
                self.counts[h - 1] += 1
        if forecast_scaled is not None:
            pending.append(_Pending(timestamp, actual, np.asarray(forecast_scaled, dtype=np.float64)))
        return scored

    def reset_stream(self, stream_id: str) -> None:
        """Forget a stream's pending forecasts (its scaler changed: after a reset or a model swap)."""
        self._pending.pop(stream_id, None)

    def skill(self) -> dict[str, float]:
        """Rolling model MAE ÷ persistence MAE per band (bands with no points are left out)."""
        result = {}
        for band, points in self._rolling.items():
            if points:
                model, persistence = np.sum(np.asarray(points), axis=0)
                if persistence > 0:
                    result[band] = float(model / persistence)
        return result

    def mae(self) -> np.ndarray:
        """Model MAE per horizon step since start (scaled units; NaN where nothing was scored)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.abs_error_sums / self.counts

    @property
    def tracked_streams(self) -> int:
        return len(self._pending)
