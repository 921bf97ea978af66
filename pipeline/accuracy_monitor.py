"""The job's online accuracy signal: :class:`models.online_accuracy.AccuracyTracker` fed by the stateful
step, exported as ``rnncast_forecast_abs_error{horizon,model}`` and ``rnncast_model_skill{horizon}``, and
for a model with prediction intervals ``rnncast_interval_coverage{horizon,level}`` and
``rnncast_interval_width{horizon,level}`` (rolling, per band, the tracker's windows). A swap to a model
with other levels (or none) removes the series of the levels it no longer serves.

After every applied reading of a running stream (not warming up) the stateful step calls
:meth:`AccuracyMonitor.observe` with the stream's frozen scaler and the forecast's scaled vector. The
tracker scores the forecasts issued 1..H steps earlier against this reading, in the stream's scaled
units, next to persistence (the value at the forecast's origin). Per reading that is a few Python
operations and the copy of the forecast into a buffer; the buffered readings are scored all at once,
vectorised, and folded into the histogram and the skill gauges in batches: when the buffer is full,
at most every ``flush_seconds`` and at the end of every bundle.

What is kept where (monitoring, not serving state):

* in memory only, per process, for at most ``max_streams`` streams (the first ones that forecast);
* a stream reset (gap longer than ``--max-gap``, ``--state-ttl``, an incompatible model swap, a
  sweep) forgets the stream's pending forecasts: its scaler changed, old and new errors don't mix;
* a reading is scored once per process: one that is not newer than the last reading the tracker saw
  of its stream (a retried bundle) scores nothing;
* after a restart the tracker starts empty, like every Prometheus counter of the process: readings
  skipped as already applied (``rnncast_skipped_replayed_total``) are not observed; readings applied
  again after the restored snapshot are observed once, by the new process, and score only forecasts
  made in it, so each stream's first H readings after a restart score fewer points. Nothing is ever
  double counted within one counter's life; ``rate()``/``increase()`` handle the reset.
* the skill gauge is per process (with several DoFn instances in one process, the last to flush wins).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from models.intervals import level_key
from models.online_accuracy import HORIZON_BANDS, AccuracyTracker, ScoredBatch

__all__ = ["AccuracyMonitor"]


class AccuracyMonitor:
    """Online accuracy of the served model, recorded in ``metrics`` (a :class:`~pipeline.metrics.JobMetrics`).

    Args:
        metrics: Where to record.
        horizon: H of the served model.
        step_seconds: The streams' step.
        window: Scored points per band behind ``rnncast_model_skill`` (the last ``window``).
        max_streams: Streams tracked at most.
        flush_seconds: Longest time scored points wait before they reach the metrics.
    """

    def __init__(
        self,
        metrics: Any,
        horizon: int,
        step_seconds: float,
        *,
        window: int = 1000,
        max_streams: int = 1000,
        flush_seconds: float = 0.5,
        levels: tuple[float, ...] = (),
    ) -> None:
        self._metrics = metrics
        self._levels = tuple(levels)
        self._window = window
        self._max_streams = max_streams
        self._flush_seconds = flush_seconds
        self._next_flush = time.monotonic() + flush_seconds
        self._tracker = self._new_tracker(horizon, step_seconds)

    def _new_tracker(self, horizon: int, step_seconds: float) -> AccuracyTracker:
        return AccuracyTracker(
            horizon,
            step_seconds,
            window=self._window,
            max_streams=self._max_streams,
            on_batch=self._record_batch,
            levels=self._levels,
        )

    @property
    def tracker(self) -> AccuracyTracker:
        return self._tracker

    def observe(
        self,
        stream_id: str,
        timestamp: float,
        value: float,
        value_mean: float,
        value_scale: float,
        forecast_scaled: np.ndarray | None,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> None:
        """One applied reading of a running stream, and the forecast it produced (None: none) with its bounds."""
        self._tracker.record(stream_id, timestamp, value, value_mean, value_scale, forecast_scaled, lower, upper)
        if time.monotonic() >= self._next_flush:
            self.flush()

    def reset_stream(self, stream_id: str) -> None:
        self._tracker.reset_stream(stream_id)

    def reconfigure(self, horizon: int, step_seconds: float, levels: tuple[float, ...] = ()) -> None:
        """A model with another horizon, step or interval levels is served: every stream's pending forecasts are dropped."""
        levels = tuple(levels)
        if (horizon, step_seconds, levels) != (self._tracker.horizon, self._tracker.step_seconds, self._levels):
            self.flush()
            self._levels = levels
            self._tracker = self._new_tracker(horizon, step_seconds)
            self._metrics.keep_interval_levels([level_key(level) for level in levels])

    def flush(self) -> None:
        """Moves what was scored into the histogram and refreshes the skill gauges."""
        self._next_flush = time.monotonic() + self._flush_seconds
        if self._tracker.flush() is None:
            return
        for band, skill in self._tracker.skill().items():
            self._metrics.set_skill(band, skill)
        if self._levels:
            widths = self._tracker.width()
            for band, coverage in self._tracker.coverage().items():
                for level, value in coverage.items():
                    self._metrics.set_interval(band, level, value, widths[band][level])

    def _record_batch(self, batch: ScoredBatch) -> None:
        for b, first, end in self._tracker.band_columns:
            valid = batch.valid[:, first:end]
            if not valid.any():
                continue
            band = HORIZON_BANDS[b]
            self._metrics.add_errors(band, "model", batch.model_errors[:, first:end][valid])
            self._metrics.add_errors(band, "persistence", batch.persistence_errors[:, first:end][valid])
