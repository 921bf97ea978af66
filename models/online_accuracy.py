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

With prediction intervals (``levels``), each pending forecast keeps its bounds too, and the same
points score the intervals: covered or not, width and Winkler score (:func:`models.intervals.interval_point_scores`,
the scorer ``rnncast evaluate`` uses), in the stream's scaled units; :meth:`AccuracyTracker.coverage` is the
rolling coverage per band and level.

This is monitoring, not serving state: it is held in memory only, for at most ``max_streams``
streams (the first ones seen), because H forecasts of H values per stream would dwarf the
serving state (48 × 48 floats for the default model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.intervals import interval_point_scores, level_key
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
    # With intervals: [n, L, H] per level (0/1 and scaled units), meaningful where interval_valid.
    covered: np.ndarray | None = None
    width: np.ndarray | None = None
    interval_valid: np.ndarray | None = None  # [n, H] bool: valid and the bounds were finite


_NO_ORIGIN = np.iinfo(np.int64).min // 2


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

    :meth:`record` is the job's per-reading call: it places the reading on its stream's grid and appends
    it to a buffer (a few Python operations, no numpy call but the copy of the forecast). :meth:`flush`
    scores the buffered readings all at once, exactly as if they had been scored one by one, and folds
    them into the per-horizon sums, the rolling windows and ``on_batch``. It runs when the buffer is full,
    when the caller asks, and before every read of the aggregates.

    How the flush can score a batch at once: every tracked stream holds a slot of ``max_streams`` in
    the pending-forecast arrays, and its readings get *positions* on its grid that only grow within a
    slot. A restart (an off-grid reading, :meth:`reset_stream`, a new stream in a freed slot) moves the
    position more than H steps past the slot's last one, so nothing pending before can ever match again:
    no array is cleared and nothing has to be flushed first. A reading at position p is scored by the
    forecasts with origin p - h (h = 1..H) of its slot: those issued before the batch are in the slot's
    ring (position mod H + 1, always the newest there); those issued earlier in the same batch are among
    the H rows of the slot before it in the batch.

    Args:
        horizon: H of the served model.
        step_seconds: The streams' sampling step.
        window: Scored points per band behind :meth:`skill`.
        max_streams: Streams tracked at most (the first ones to issue a forecast).
        on_batch: Called with every :class:`ScoredBatch` when it is flushed (e.g. to feed a histogram).
        buffer_rows: Readings buffered before a flush.
        levels: Levels of the served prediction intervals (empty: none are scored).
    """

    def __init__(
        self,
        horizon: int,
        step_seconds: float,
        window: int = 1000,
        max_streams: int = 1000,
        on_batch=None,
        buffer_rows: int = 4096,
        levels: tuple[float, ...] = (),
    ):
        self.horizon = horizon
        self.levels = tuple(levels)
        self._bound_rows = 2 * len(self.levels)  # lower bounds of every level, then upper bounds
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
        self._capacity = horizon + 1  # origins p-H..p are all a reading at p can need
        steps = self._steps = np.arange(1, horizon + 1, dtype=np.int64)
        # For a reading in ring cell r: the cell of the origin h steps back, and that origin's forecast for h.
        self._origin_cell = (np.arange(self._capacity, dtype=np.int64)[:, None] - steps) % self._capacity  # [C, H]
        self._forecast_cell = self._origin_cell * horizon + (steps - 1)  # [C, H], into one slot's forecasts
        # Pending forecasts by (slot, origin position mod capacity); allocated on first use.
        self._forecasts = np.zeros((0, self._capacity, horizon))
        self._bounds = np.zeros((0, self._capacity, self._bound_rows, horizon))
        self._origin_values = np.zeros((0, self._capacity))
        self._origin_pos = np.zeros((0, self._capacity), dtype=np.int64)
        # Per tracked stream: [slot, anchor timestamp, position of the anchor, last position seen].
        self._streams: dict[str, list] = {}
        self._slot_last: list[int] = []  # per slot: the last position it was given (its next user starts past it)
        self._free_slots: list[int] = []
        self._windows = {b: _Window(window) for b, _, _ in self.band_columns}
        self._abs_error_sums = np.zeros(horizon)
        self._persistence_error_sums = np.zeros(horizon)
        self._counts = np.zeros(horizon)
        self._buffer_rows = buffer_rows
        self._buffer_forecasts = np.zeros((buffer_rows, horizon))
        self._buffer_slots: list[int] = []
        self._buffer_positions: list[int] = []
        self._buffer_actuals: list[float] = []
        self._buffer_with_forecast: list[bool] = []
        self._buffer_bounds = np.zeros((buffer_rows, self._bound_rows, horizon))
        levels_count = len(self.levels)
        self._interval_sums = {name: np.zeros((levels_count, horizon)) for name in ("covered", "width", "winkler")}
        self._interval_counts = np.zeros(horizon)
        # Rolling (covered, width) per band and level, behind coverage() and width().
        self._interval_windows = {(b, j): _Window(window) for b, _, _ in self.band_columns for j in range(levels_count)}

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
    ) -> list[ScoredPoint]:
        """Score what this reading settles, then remember the forecast it produced (if any).

        Flushes: the points returned are the ones counted (a non-finite forecast value scores nothing).
        """
        self.flush()
        self.record(stream_id, timestamp, value, value_mean, value_scale, forecast_scaled, lower, upper)
        batch = self.flush()
        if batch is None:
            return []
        model, persistence = batch.model_errors[-1], batch.persistence_errors[-1]
        return [
            ScoredPoint(h + 1, self._bands[h], float(model[h]), float(persistence[h]))
            for h in np.flatnonzero(batch.valid[-1]).tolist()
        ]

    def record(
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
        """:meth:`observe` without scoring now (the job's hot path): the reading waits in the buffer.

        ``lower``/``upper``: the forecast's interval bounds ``[L, H]`` in original units (scored when the
        tracker has ``levels``; a forecast without them scores no interval).
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            if forecast_scaled is None or len(self._streams) >= self.max_streams:
                return
            slot = self._take_slot()
            position = self._slot_last[slot] + self._capacity
            stream = self._streams[stream_id] = [slot, timestamp, position, position]
        else:
            offset = (timestamp - stream[1]) / self.step_seconds
            steps = round(offset)
            if abs(offset - steps) >= 1e-6:
                # Off the stream's grid: no pending forecast targets this time; start a grid here.
                position = stream[3] + self._capacity
                stream[1] = timestamp
                stream[2] = position
            else:
                position = stream[2] + steps
                if position <= stream[3]:
                    return  # seen already: a re-applied reading scores nothing twice
            stream[3] = position
        row = len(self._buffer_slots)
        if row == self._buffer_rows:
            self.flush()
            row = 0
        if forecast_scaled is not None:
            self._buffer_forecasts[row] = forecast_scaled
            if self._bound_rows:
                bounds = self._buffer_bounds[row]
                if lower is None or upper is None:
                    bounds.fill(np.nan)
                else:
                    levels = len(self.levels)
                    np.subtract(lower, value_mean, out=bounds[:levels])
                    np.subtract(upper, value_mean, out=bounds[levels:])
                    bounds /= value_scale
        self._buffer_with_forecast.append(forecast_scaled is not None)
        self._buffer_slots.append(stream[0])
        self._buffer_positions.append(position)
        self._buffer_actuals.append((value - value_mean) / value_scale)

    def _take_slot(self) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        slot = len(self._slot_last)
        if slot == self._origin_pos.shape[0]:  # grow the arrays (doubling, up to max_streams)
            size = min(max(2 * slot, 16), self.max_streams)
            grown = np.zeros((size, self._capacity, self.horizon))
            grown[:slot] = self._forecasts
            self._forecasts = grown
            grown_bounds = np.zeros((size, self._capacity, self._bound_rows, self.horizon))
            grown_bounds[:slot] = self._bounds
            self._bounds = grown_bounds
            self._origin_values = np.concatenate([self._origin_values, np.zeros((size - slot, self._capacity))])
            self._origin_pos = np.concatenate(
                [self._origin_pos, np.full((size - slot, self._capacity), _NO_ORIGIN, dtype=np.int64)]
            )
        self._slot_last.append(-self._capacity)
        return slot

    def reset_stream(self, stream_id: str) -> None:
        """Forget a stream's pending forecasts (its scaler changed: after a reset or a model swap)."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            slot = stream[0]
            self._slot_last[slot] = stream[3]
            self._free_slots.append(slot)

    def flush(self) -> ScoredBatch | None:
        """Scores the buffered readings, folds them into the sums and windows and hands them to ``on_batch``.

        Returns:
            The buffered readings that scored at least one forecast, in arrival order (None: no such reading).
        """
        n = len(self._buffer_slots)
        if n == 0:
            return None
        horizon, capacity, steps = self.horizon, self._capacity, self._steps
        slot = np.array(self._buffer_slots, dtype=np.int64)
        position = np.array(self._buffer_positions, dtype=np.int64)
        actual = np.array(self._buffer_actuals)
        with_forecast = np.array(self._buffer_with_forecast, dtype=bool)
        forecasts = self._buffer_forecasts[:n]
        buffer_bounds = self._buffer_bounds[:n]
        bound_rows = self._bound_rows
        self._buffer_slots, self._buffer_positions, self._buffer_actuals, self._buffer_with_forecast = [], [], [], []

        # Forecasts issued before this batch: in the slot's ring, if still the newest of their residue.
        ring = position % capacity
        origin = position[:, None] - steps  # [n, H]: the origin h = column + 1 steps back
        cell = self._origin_cell[ring] + (slot * capacity)[:, None]  # [n, H] into the [slots * capacity] arrays
        valid = self._origin_pos.reshape(-1).take(cell) == origin
        model = self._forecasts.reshape(-1).take(self._forecast_cell[ring] + (slot * (capacity * horizon))[:, None])
        model -= actual[:, None]
        persistence = self._origin_values.reshape(-1).take(cell)
        persistence -= actual[:, None]
        bounds = None
        if bound_rows:  # [n, 2L, H]: each pending bound − actual
            bound_index = (cell[:, None, :] * bound_rows + np.arange(bound_rows)[None, :, None]) * horizon + (steps - 1)
            bounds = self._bounds.reshape(-1).take(bound_index)
            bounds -= actual[:, None, None]

        # Forecasts issued earlier in this batch. Sorted by slot (stably), a slot's rows are contiguous
        # and in arrival order, so their positions increase: the origins a row can need are among the H
        # rows before it in its slot's run.
        order = np.argsort(slot, kind="stable")
        sorted_slot = slot[order]
        starts_run = np.r_[True, sorted_slot[1:] != sorted_slot[:-1]]
        run_starts = np.flatnonzero(starts_run)
        run = np.cumsum(starts_run) - 1  # run of each sorted row
        depth = np.arange(n) - run_starts[run]  # rows before it in its run, per sorted row
        back = min(int(depth.max()), horizon)
        if back:
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n)
            earlier = rank[:, None] - steps[:back]  # [n, back]: the sorted rows 1..back before each row
            in_run = steps[:back] <= depth[rank][:, None]
            earlier_row = order[np.maximum(earlier, 0)]  # as arrival rows
            step = position[:, None] - position[earlier_row]  # h from that origin
            in_run &= (step <= horizon) & with_forecast[earlier_row]
            rows, back_index = np.nonzero(in_run)
            origins, columns = earlier_row[rows, back_index], step[rows, back_index] - 1
            model[rows, columns] = forecasts[origins, columns] - actual[rows]
            persistence[rows, columns] = actual[origins] - actual[rows]
            valid[rows, columns] = True
            if bounds is not None:
                bounds[rows, :, columns] = buffer_bounds[origins, :, columns] - actual[rows][:, None]

        # The batch's forecasts enter the rings: per slot, those within H steps of its newest (distinct
        # residues; older ones can never be needed again).
        sorted_forecast_pos = np.where(with_forecast[order], position[order], _NO_ORIGIN)
        newest = np.maximum.reduceat(sorted_forecast_pos, run_starts)[run]
        keep = order[with_forecast[order] & (position[order] > newest - capacity)]
        cells = slot[keep] * capacity + position[keep] % capacity
        self._forecasts.reshape(-1, horizon)[cells] = forecasts[keep]
        if bound_rows:
            self._bounds.reshape(-1, bound_rows, horizon)[cells] = buffer_bounds[keep]
        self._origin_values.reshape(-1)[cells] = actual[keep]
        self._origin_pos.reshape(-1)[cells] = position[keep]

        scored = valid.any(axis=1)
        if not scored.any():
            return None
        model = np.abs(model[scored])
        persistence = np.abs(persistence[scored])
        valid = valid[scored] & np.isfinite(model)  # a non-finite forecast value is no forecast
        model[~valid] = 0.0
        persistence[~valid] = 0.0
        self._abs_error_sums += model.sum(axis=0)
        self._persistence_error_sums += persistence.sum(axis=0)
        self._counts += valid.sum(axis=0)
        for b, first, end in self.band_columns:
            in_band = valid[:, first:end]
            self._windows[b].extend(model[:, first:end][in_band], persistence[:, first:end][in_band])
        batch = ScoredBatch(model, persistence, valid)
        if bounds is not None:
            batch = self._score_intervals(batch, bounds[scored])
        if self.on_batch is not None:
            self.on_batch(batch)
        return batch

    def _score_intervals(self, batch: ScoredBatch, bounds: np.ndarray) -> ScoredBatch:
        """Coverage, width and Winkler score of the scored points' intervals (bounds − actual, [n, 2L, H])."""
        levels = len(self.levels)
        interval_valid = batch.valid & np.all(np.isfinite(bounds), axis=1)
        covered = np.zeros((bounds.shape[0], levels, self.horizon))
        width = np.zeros_like(covered)
        for j, level in enumerate(self.levels):
            hit, size, winkler = interval_point_scores(bounds[:, j], bounds[:, levels + j], 0.0, level)
            hit[~interval_valid] = 0.0
            size[~interval_valid] = 0.0
            winkler[~interval_valid] = 0.0
            covered[:, j], width[:, j] = hit, size
            self._interval_sums["covered"][j] += hit.sum(axis=0)
            self._interval_sums["width"][j] += size.sum(axis=0)
            self._interval_sums["winkler"][j] += winkler.sum(axis=0)
            for b, first, end in self.band_columns:
                in_band = interval_valid[:, first:end]
                self._interval_windows[(b, j)].extend(hit[:, first:end][in_band], size[:, first:end][in_band])
        self._interval_counts += interval_valid.sum(axis=0)
        return ScoredBatch(batch.model_errors, batch.persistence_errors, batch.valid, covered, width, interval_valid)

    def coverage(self) -> dict[str, dict[str, float]]:
        """Rolling coverage (last ``window`` scored points) per band and level: ``{band: {level_key: coverage}}``."""
        return self._rolling(0)

    def width(self) -> dict[str, dict[str, float]]:
        """Rolling mean interval width (scaled units) per band and level."""
        return self._rolling(1)

    def _rolling(self, which: int) -> dict[str, dict[str, float]]:
        self.flush()
        result: dict[str, dict[str, float]] = {}
        for (b, j), window in self._interval_windows.items():
            if window.fill:
                result.setdefault(HORIZON_BANDS[b], {})[level_key(self.levels[j])] = window.sums()[which] / window.fill
        return result

    @property
    def interval_sums(self) -> dict[str, np.ndarray]:
        """Since start, per level and horizon step ``[L, H]``: ``covered``, ``width``, ``winkler`` sums (scaled units)."""
        self.flush()
        return self._interval_sums

    @property
    def interval_counts(self) -> np.ndarray:
        """Points whose interval was scored, per horizon step."""
        self.flush()
        return self._interval_counts

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
