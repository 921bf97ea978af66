"""Online accuracy: score issued forecasts when their target readings arrive (pure, numpy only).

The job keeps, per stream, the forecasts issued in the last H steps. When a reading arrives at
time T, every pending forecast with a target at T is scored, next to the persistence baseline
(the value at the forecast's origin). Errors are in the stream's scaled units, so streams of any
magnitude share one histogram; ``skill`` is the rolling model MAE ÷ persistence MAE per horizon band
(> 1 means the model loses to persistence: the drift alarm).

On the same readings this is exactly the offline scoring of :func:`models.metrics.score_series`
divided by the stream's scale: a forecast issued at ``t`` is scored at the reading of ``t + h·step``
(``h = 1..H``); targets that never arrive (gaps) are not scored. (One difference: a non-finite
forecast value, a numerical failure, is left out here point by point, where the offline scoring
leaves out the forecast's whole row.)

A reading whose timestamp is not newer than the last one the tracker saw for its stream is ignored:
re-applying a reading (a retried bundle) never scores anything twice.

This is monitoring, not serving state: it is held in memory only, for at most ``max_streams``
streams (the first ones seen), because H forecasts of H values per stream would dwarf the
serving state (48 × 48 floats for the default model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.metrics import HORIZON_BANDS, horizon_band

__all__ = ["HORIZON_BANDS", "AccuracyTracker", "ScoredBatch", "ScoredPoint", "horizon_band", "horizon_band_labels"]


def horizon_band_labels(horizon: int) -> list[str]:
    """Band label (:func:`models.metrics.horizon_band`) for each horizon step 1..H."""
    return [horizon_band(h, horizon) for h in range(1, horizon + 1)]


@dataclass(frozen=True)
class ScoredPoint:
    horizon_step: int  # h, 1..H
    band: str
    model_error: float  # |forecast − actual|, scaled units
    persistence_error: float  # |value at origin − actual|, scaled units


@dataclass(frozen=True)
class ScoredBatch:
    """Rows of scored readings, buffered: row ``i`` is one reading, column ``h - 1`` forecast step h.

    ``valid[i, h-1]`` says whether the forecast issued h steps before that reading was scored there;
    elsewhere the two error arrays hold no meaning.
    """

    model_errors: np.ndarray  # [n, H] |forecast − actual|, scaled units
    persistence_errors: np.ndarray  # [n, H] |value at origin − actual|, scaled units
    valid: np.ndarray  # [n, H] bool


_NO_ORIGIN = np.iinfo(np.int64).min // 2


class _Stream:
    """One stream's last ``capacity`` forecasts, by origin slot (grid position mod capacity).

    Grid positions count steps from ``anchor`` (the first reading the tracker saw of the stream).
    """

    __slots__ = ("anchor", "forecasts", "origin_values", "origin_pos", "last_pos")

    def __init__(self, anchor: float, capacity: int, horizon: int) -> None:
        self.anchor = anchor
        self.forecasts = np.zeros((capacity, horizon))
        self.origin_values = np.zeros(capacity)
        self.origin_pos = np.full(capacity, _NO_ORIGIN, dtype=np.int64)
        self.last_pos = _NO_ORIGIN


class _Window:
    """The last ``size`` (model error, persistence error) pairs of one band."""

    __slots__ = ("model", "persistence", "next", "fill")

    def __init__(self, size: int) -> None:
        self.model = np.zeros(size)
        self.persistence = np.zeros(size)
        self.next = 0
        self.fill = 0

    def extend(self, model: np.ndarray, persistence: np.ndarray) -> None:
        size = self.model.size
        k = model.size
        if k == 0:
            return
        if k >= size:
            self.model[:] = model[-size:]
            self.persistence[:] = persistence[-size:]
            self.next, self.fill = 0, size
            return
        end = self.next + k
        if end <= size:
            self.model[self.next : end] = model
            self.persistence[self.next : end] = persistence
        else:
            first = size - self.next
            self.model[self.next :] = model[:first]
            self.persistence[self.next :] = persistence[:first]
            self.model[: k - first] = model[first:]
            self.persistence[: k - first] = persistence[first:]
        self.next = end % size
        self.fill = min(self.fill + k, size)

    def sums(self) -> tuple[float, float]:
        return float(np.sum(self.model[: self.fill])), float(np.sum(self.persistence[: self.fill]))


class AccuracyTracker:
    """Scores each stream's forecasts against the readings that arrive later.

    :meth:`record` is the job's per-reading call (a few vector operations); the per-horizon sums, the
    rolling windows and ``on_batch`` are updated from a buffer of scored rows, ``buffer_rows`` readings
    at a time or on :meth:`flush` (every reader of the aggregates flushes first).

    Args:
        horizon: H of the served model.
        step_seconds: The streams' sampling step.
        window: Scored points per band behind :meth:`skill`.
        max_streams: Streams tracked at most (the first ones to issue a forecast).
        on_batch: Called with every :class:`ScoredBatch` when it is flushed (e.g. to feed a histogram).
        buffer_rows: Scored readings buffered before a flush.
    """

    def __init__(
        self, horizon: int, step_seconds: float, window: int = 1000, max_streams: int = 1000,
        on_batch=None, buffer_rows: int = 1024,
    ):
        self.horizon = horizon
        self.step_seconds = step_seconds
        self.max_streams = max_streams
        self.on_batch = on_batch
        self._bands = horizon_band_labels(horizon)
        band_index = [HORIZON_BANDS.index(b) for b in self._bands]
        self.band_index = np.asarray(band_index, dtype=np.intp)  # [H]: band of each step
        # Bands are contiguous ranges of steps: (band, first column, end column).
        self.band_columns = [
            (b, band_index.index(b), len(band_index) - band_index[::-1].index(b)) for b in dict.fromkeys(band_index)
        ]
        self._capacity = horizon + 1  # origins g-H..g are all a reading at g can need
        steps = np.arange(1, horizon + 1, dtype=np.int64)
        self._steps = steps
        slots = np.arange(self._capacity, dtype=np.int64)[:, None]
        # For a reading in slot r: the slot of the origin h steps back, and that origin's forecast for h.
        self._origin_slot = (slots - steps[None, :]) % self._capacity  # [C, H]
        self._forecast_index = self._origin_slot * horizon + (steps[None, :] - 1)  # [C, H], into forecasts.ravel()
        self._streams: dict[str, _Stream] = {}
        self._windows = {b: _Window(window) for b, _, _ in self.band_columns}
        self._abs_error_sums = np.zeros(horizon)
        self._persistence_error_sums = np.zeros(horizon)
        self._counts = np.zeros(horizon)
        self._buffer_model = np.zeros((buffer_rows, horizon))
        self._buffer_persistence = np.zeros((buffer_rows, horizon))
        self._buffer_valid = np.zeros((buffer_rows, horizon), dtype=bool)
        self._buffered = 0

    def observe(
        self, stream_id: str, timestamp: float, value: float, value_mean: float, value_scale: float,
        forecast_scaled: np.ndarray | None,
    ) -> list[ScoredPoint]:
        """Score what this reading settles, then remember the forecast it produced (if any)."""
        if not self.record(stream_id, timestamp, value, value_mean, value_scale, forecast_scaled):
            return []
        row = self._buffered - 1
        return [
            ScoredPoint(
                h, self._bands[h - 1], abs(float(self._buffer_model[row, h - 1])),
                abs(float(self._buffer_persistence[row, h - 1])),
            )
            for h in (np.flatnonzero(self._buffer_valid[row]) + 1).tolist()
        ]

    def record(
        self, stream_id: str, timestamp: float, value: float, value_mean: float, value_scale: float,
        forecast_scaled: np.ndarray | None,
    ) -> bool:
        """:meth:`observe` without building one object per point (the job's hot path).

        Returns:
            True if the reading scored at least one forecast.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            if len(self._streams) >= self.max_streams or forecast_scaled is None:
                return False
            stream = self._streams[stream_id] = _Stream(timestamp, self._capacity, self.horizon)
        offset = (timestamp - stream.anchor) / self.step_seconds
        position = round(offset)
        if abs(offset - position) >= 1e-6:
            # Off the stream's grid: no pending forecast targets this time; start a grid here.
            stream = self._streams[stream_id] = _Stream(timestamp, self._capacity, self.horizon)
            position = 0
        elif position <= stream.last_pos:
            return False  # seen already: a re-applied reading scores nothing twice
        stream.last_pos = position
        actual = (value - value_mean) / value_scale
        slot = position % self._capacity
        origin_slot = self._origin_slot[slot]
        valid = stream.origin_pos.take(origin_slot) == position - self._steps
        scored = bool(valid.any())
        if scored:
            if self._buffered == self._buffer_valid.shape[0]:
                self.flush()
            row = self._buffered
            self._buffered = row + 1
            np.subtract(stream.forecasts.take(self._forecast_index[slot]), actual, out=self._buffer_model[row])
            np.subtract(stream.origin_values.take(origin_slot), actual, out=self._buffer_persistence[row])
            self._buffer_valid[row] = valid
        if forecast_scaled is not None:
            stream.forecasts[slot] = forecast_scaled
            stream.origin_values[slot] = actual
            stream.origin_pos[slot] = position
        return scored

    def flush(self) -> ScoredBatch | None:
        """Folds the buffered rows into the sums and windows and hands them to ``on_batch``."""
        n = self._buffered
        if n == 0:
            return None
        self._buffered = 0
        model = np.abs(self._buffer_model[:n])
        persistence = np.abs(self._buffer_persistence[:n])
        valid = self._buffer_valid[:n] & np.isfinite(model)  # a non-finite forecast value is no forecast
        model[~valid] = 0.0
        persistence[~valid] = 0.0
        self._abs_error_sums += model.sum(axis=0)
        self._persistence_error_sums += persistence.sum(axis=0)
        self._counts += valid.sum(axis=0)
        for b, first, end in self.band_columns:
            in_band = valid[:, first:end]
            self._windows[b].extend(model[:, first:end][in_band], persistence[:, first:end][in_band])
        batch = ScoredBatch(model, persistence, valid)
        if self.on_batch is not None:
            self.on_batch(batch)
        return batch

    def reset_stream(self, stream_id: str) -> None:
        """Forget a stream's pending forecasts (its scaler changed: after a reset or a model swap)."""
        self._streams.pop(stream_id, None)

    def skill(self) -> dict[str, float]:
        """Rolling model MAE ÷ persistence MAE per band (bands with no points are left out)."""
        self.flush()
        result = {}
        for b, window in self._windows.items():
            if window.fill:
                model, persistence = window.sums()
                if persistence > 0:
                    result[HORIZON_BANDS[b]] = model / persistence
        return result

    def mae(self) -> np.ndarray:
        """Model MAE per horizon step since start (scaled units; NaN where nothing was scored)."""
        self.flush()
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._abs_error_sums / self._counts

    @property
    def abs_error_sums(self) -> np.ndarray:
        """Sum of the model's absolute errors per horizon step (scaled units)."""
        self.flush()
        return self._abs_error_sums

    @property
    def persistence_error_sums(self) -> np.ndarray:
        self.flush()
        return self._persistence_error_sums

    @property
    def counts(self) -> np.ndarray:
        """Scored points per horizon step."""
        self.flush()
        return self._counts

    @property
    def tracked_streams(self) -> int:
        return len(self._streams)
