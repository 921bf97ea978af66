"""The step engine: one recurrent step per reading, as a pure state transition (numpy only).

``Engine.step(state | None, reading) -> StepResult`` is the whole serving logic: the offline
evaluation and the streaming job call exactly this, so they produce the same numbers.
``Engine.step_many`` is the same transition for readings of many distinct streams at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.cells import NetworkWeights
from models.features import FeatureSpec, InputColumnsBuilder, InputRowBuilder
from models.intervals import IntervalSpec, adapt, interval_bounds, push
from models.reading import Forecast, Reading
from models.scaling import fit_stream_value_scaler
from models.smoothing import Smoothing, SmoothingKernel
from models.state import NO_INTERVALS, StreamState, serving_state

APPLIED = "applied"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
# Fewer steady readings than this in a step_many call go through Engine.step one by one: below it
# the batch's fixed cost (stacking, one numpy call per operation) is more than the per-call overhead
# it saves (benchmarks/step_many_micro.py: at 2 readings the two paths cost the same, at 3 the batch
# is 25% cheaper per reading, for rnn, lstm and gru alike).
MIN_BATCH = 3


@dataclass(frozen=True)
class EngineConfig:
    """Serving semantics that are not weights.

    Attributes:
        season: S, steps per season (the seasonal naive's); the first season of readings is the
            warm-up unless the smoothing has a longer cycle.
        step_seconds: sampling step of the streams.
        min_history: readings a stream needs before forecasts are emitted (at least warm-up + 1).
        max_gap: gaps up to this many missing steps are imputed; longer gaps reset the stream.
        smoothing: the level and seasonal cycles the network corrects (None: the seasonal naive
            around a level frozen at the warm-up's mean, as models trained before smoothing).
    """

    season: int
    step_seconds: float
    min_history: int
    max_gap: int = 4
    smoothing: Smoothing | None = None

    @property
    def resolved_smoothing(self) -> Smoothing:
        return self.smoothing if self.smoothing is not None else Smoothing.seasonal_naive(self.season)

    def __post_init__(self) -> None:
        if self.season < 1:
            raise ValueError("season must be at least 1")
        warmup = self.resolved_smoothing.warmup
        if self.min_history < warmup + 1:
            raise ValueError(f"min_history must be at least the warm-up + 1 = {warmup + 1}")
        if self.max_gap < 0:
            raise ValueError("max_gap must be >= 0")


@dataclass(frozen=True)
class StepResult:
    """What one reading did: the new state, the forecast if one is due, and what happened."""

    state: StreamState
    forecast: Forecast | None
    outcome: str  # APPLIED, DUPLICATE or OUT_OF_ORDER (the last two leave the state untouched)
    imputed_steps: int = 0
    reset: bool = False


_new_instance = object.__new__


def _applied(state: StreamState, forecast: Forecast | None, imputed_steps: int) -> StepResult:
    """``StepResult(state, forecast, APPLIED, imputed_steps=imputed_steps)`` for the per-reading path.

    Fills the frozen instance's ``__dict__`` directly (as :func:`models.state.serving_state` does):
    the generated ``__init__`` pays one ``object.__setattr__`` per field.
    """
    result = _new_instance(StepResult)
    fields = result.__dict__
    fields["state"] = state
    fields["forecast"] = forecast
    fields["outcome"] = APPLIED
    fields["imputed_steps"] = imputed_steps
    fields["reset"] = False
    return result


class Engine:
    """Serves one artifact: weights, features, serving semantics and (optionally) prediction intervals."""

    def __init__(
        self,
        weights: NetworkWeights,
        features: FeatureSpec,
        config: EngineConfig,
        intervals: IntervalSpec | None = None,
    ):
        self.weights = weights
        self.features = features
        self.config = config
        self.horizon = weights.horizon
        self.smoothing = config.resolved_smoothing
        self._smoothing = SmoothingKernel(self.smoothing, self.horizon)
        self.ring_size = self.smoothing.ring_size
        self.warmup = self.smoothing.warmup
        if intervals is not None and intervals.horizon != self.horizon:
            raise ValueError(f"interval offsets cover {intervals.horizon} steps, the network forecasts {self.horizon}")
        self.intervals = intervals
        # The interval adaptation a stream starts with (and restarts with, or gets when its state has none).
        self._initial_intervals = NO_INTERVALS if intervals is None else intervals.initial_state()
        self._input_row = InputRowBuilder(features)
        self._covariate_count = len(features.covariate_names)
        # The per-reading path works on one stream's 1-D arrays; networks without the single-stream
        # methods (the variants) go through their batch methods with a batch of one.
        self._step_one = getattr(weights, "step_one", None) or self._batch_step_one
        self._skip_one = getattr(weights, "skip_one", None) or self._batch_skip_one
        # The batched path likewise takes the in-place batch methods where the network has them.
        self._step_many = getattr(weights, "step_many", None) or weights.step
        self._skip_many = getattr(weights, "skip_many", None) or weights.skip
        self._state_size = weights.state_size
        self._input_rows = InputColumnsBuilder(features)

    def _batch_step_one(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        head, new_state = self.weights.step(x[np.newaxis, :], flat_state[np.newaxis, :])
        return head[0], new_state[0]

    def _batch_skip_one(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return self.weights.skip(x[np.newaxis, :], base[np.newaxis, :])[0]

    def init_state(self) -> StreamState:
        return StreamState(
            readings_seen=0,
            last_timestamp=float("nan"),
            value_mean=float("nan"),
            value_scale=float("nan"),
            ring=np.zeros(self.ring_size),
            ring_fill=0,
            cell_state=np.zeros(self.weights.state_size),
            interval_state=self._initial_intervals,
        )

    def step(self, state: StreamState | None, reading: Reading) -> StepResult:
        if not (math.isfinite(reading.value) and math.isfinite(reading.timestamp)):
            raise ValueError(f"reading of {reading.stream_id!r} has a non-finite value or timestamp")
        if state is None or state.readings_seen == 0:
            return StepResult(self._warm_up(self.init_state(), reading, missing=0), None, APPLIED)
        if reading.timestamp == state.last_timestamp:
            return StepResult(state, None, DUPLICATE)
        if reading.timestamp < state.last_timestamp:
            return StepResult(state, None, OUT_OF_ORDER)
        missing = int(round((reading.timestamp - state.last_timestamp) / self.config.step_seconds)) - 1
        if missing < 0:
            missing = 0
        if missing > self.config.max_gap:
            return StepResult(self._warm_up(self.init_state(), reading, missing=0), None, APPLIED, reset=True)
        if state.warming_up:
            return StepResult(self._warm_up(state, reading, missing), None, APPLIED, imputed_steps=missing)
        covariates = reading.covariates
        if len(state.interval_state) != len(self._initial_intervals):
            # Another model's adaptation, or none (an older format): start from the calibrated interval.
            state = dataclasses.replace(state, interval_state=self._initial_intervals)
        for k in range(missing, 0, -1):
            state = self._impute(state, covariates, reading.timestamp - k * self.config.step_seconds)
        interval_state = None
        if self.intervals is not None:
            mean, scale = state.value_mean, state.value_scale
            # The warm-up's one-step forecast is the smoothing's alone, not the model's: not scored.
            one_step = (state.one_step_forecast - mean) / scale if state.readings_seen > self.warmup else math.nan
            interval_state = adapt(state.interval_state, (reading.value - mean) / scale, one_step, self.intervals)
        state, scaled = self._advance(
            state, reading.value, covariates, reading.timestamp, state.readings_seen + 1, interval_state
        )
        forecast = None
        if state.readings_seen >= self.config.min_history:
            mean, scale = state.value_mean, state.value_scale
            forecast = Forecast(
                stream_id=reading.stream_id,
                timestamp=reading.timestamp,
                values=scaled * scale + mean,
                scaled=scaled,
                step_seconds=self.config.step_seconds,
                readings_seen=state.readings_seen,
            )
            if self.intervals is not None:
                bounds = interval_bounds(state.interval_state, scaled, mean, scale, self.intervals)
                fields = forecast.__dict__
                fields["interval_levels"] = self.intervals.levels
                fields["lower"] = bounds[0]
                fields["upper"] = bounds[1]
        return _applied(state, forecast, missing)

    def step_many(
        self, states: Sequence[StreamState | None], readings: Sequence[Reading]
    ) -> list[StepResult | Exception]:
        """:meth:`step` for readings of distinct streams at once: entry i is ``step(states[i], readings[i])``.

        The readings that continue a warmed-up stream by exactly one step (the steady state of a
        live job) share one batched recurrent step, which amortises numpy's per-call overhead; every
        other reading (new stream, warm-up, gap, duplicate, out of order, non-finite, a state of
        another model) goes through :meth:`step`. The results equal :meth:`step`'s field for field,
        float arrays within 1e-12 (batched matrix products may round the last bits differently), and
        each owns its arrays.

        Precondition: the readings belong to distinct streams (a stream's next state depends on its
        previous one, so two readings of one stream cannot be stepped together).

        Returns:
            One entry per reading, in order: its :class:`StepResult`, or the exception :meth:`step`
            raised for it (e.g. ``ValueError`` for a non-finite value), so that one bad reading does
            not fail the others; the caller dead-letters it as it would a failed :meth:`step`.

        Raises:
            ValueError: the sequences differ in length or a stream id repeats.
        """
        count = len(readings)
        if len(states) != count:
            raise ValueError(f"step_many got {len(states)} states for {count} readings")
        if len({reading.stream_id for reading in readings}) != count:
            raise ValueError("step_many needs readings of distinct streams; a stream id repeats")
        steady, scalars = self._steady(states, readings) if count >= MIN_BATCH else ((), ())
        if len(steady) >= MIN_BATCH:
            if len(steady) == count:  # a live job's usual round
                batch = self._advance_many(states, readings, scalars)
                if batch is not None:
                    return batch
            else:
                batch = self._advance_many([states[i] for i in steady], [readings[i] for i in steady], scalars)
                if batch is not None:
                    results: list[StepResult | Exception | None] = [None] * count
                    for i, result in zip(steady, batch):
                        results[i] = result
                    return [
                        self._step_or_error(state, reading) if result is None else result
                        for state, reading, result in zip(states, readings, results)
                    ]
        return [self._step_or_error(state, reading) for state, reading in zip(states, readings)]

    def _step_or_error(self, state: StreamState | None, reading: Reading) -> StepResult | Exception:
        try:
            return self.step(state, reading)
        except Exception as err:
            return err

    def _steady(
        self, states: Sequence[StreamState | None], readings: Sequence[Reading]
    ) -> tuple[list[int], list[tuple]]:
        """The readings for which :meth:`step` would do exactly one plain :meth:`_advance` of a state of this model.

        Returns their indices and, gathered in the same pass, each one's ``(value, timestamp, value
        mean, value scale, *covariates)`` for :meth:`_advance_many`. A steady reading continues a
        warmed-up state whose ring and recurrent state have this model's sizes (a state of another
        model goes to :meth:`step` alone, which rejects it), is finite, comes one step after it and
        has the model's covariate count. ``q < 1.5`` is ``round(q) - 1 <= 0`` (no missing step;
        round(1.5) is 2), without ``round``'s OverflowError on an infinite ``q``: that reading is
        left to :meth:`step`, which raises it. A zero scale (only a corrupt decoded state has one) is
        left to it too: its Python-float division raises ZeroDivisionError where numpy's would
        return inf. So is whatever cannot even be checked (a value that is not a number): :meth:`step`
        reports it at its index.
        """
        ring_size, state_size, covariate_count = self.ring_size, self._state_size, self._covariate_count
        step_seconds = self.config.step_seconds
        interval_size = len(self._initial_intervals)
        isfinite = math.isfinite
        steady: list[int] = []
        scalars: list[tuple] = []
        for i, (state, reading) in enumerate(zip(states, readings)):
            if state is None:
                continue
            try:
                value, timestamp, last, scale, covariates = (
                    reading.value,
                    reading.timestamp,
                    state.last_timestamp,
                    state.value_scale,
                    reading.covariates,
                )
                if (
                    state.readings_seen != 0
                    and state.ring_fill >= ring_size
                    and len(state.ring) == ring_size
                    and len(state.cell_state) == state_size
                    and isfinite(value)
                    and isfinite(timestamp)
                    and timestamp > last
                    and (timestamp - last) / step_seconds < 1.5
                    and len(covariates) == covariate_count
                    and scale != 0
                    and len(state.interval_state) == interval_size
                ):
                    steady.append(i)
                    scalars.append((value, timestamp, state.value_mean, scale, *covariates))
            except Exception:
                continue
        return steady, scalars

    def _advance_many(
        self, states: Sequence[StreamState], readings: Sequence[Reading], scalars: Sequence[tuple]
    ) -> list[StepResult] | None:
        """:meth:`_advance` and :meth:`step`'s forecast for steady readings of distinct streams, batched.

        The same floating-point operations as the per-reading path, on [n, ·] arrays, with in-place
        arithmetic where the network has it (:meth:`NetworkWeights.step_many`); the feature rows are
        built feature-major, [F, n], so that each feature is one contiguous row, and ``x`` is their
        transpose (a Fortran-ordered [n, F], which the matrix products take as it is). Returns None
        when the batch cannot be built or stepped (e.g. a covariate that is not a number, states
        whose arrays are not float64 or not 1-D): :meth:`step` then redoes these readings one by one,
        so each error lands on its own reading.
        """
        try:
            # value, timestamp, mean, scale, covariates...: one contiguous row each, [4 + C, n]
            columns = np.array(scalars, dtype=np.float64).T.copy()
            values, mean, scale = columns[0], columns[2], columns[3]
            flat_state = np.array([state.cell_state for state in states])
            old_rings = np.array([state.ring for state in states])
            if flat_state.dtype != np.float64 or old_rings.dtype != np.float64 or old_rings.ndim != 2:
                return None  # states built outside the engine: step() keeps their dtype
            old_levels = np.array([state.level for state in states], dtype=np.float64)
            z = np.subtract(values, mean)
            z /= scale
            levels, rings, errors = self._smoothing.update(old_levels, old_rings, z)
            x = self._input_rows(columns, levels, errors).T
            head, cell_states = self._step_many(x, flat_state)
            mean, scale = mean[:, np.newaxis], scale[:, np.newaxis]
            base = self._smoothing.base(rings)
            scaled = np.add(base, head)
            scaled += self._skip_many(x, base)
            scaled += levels[:, np.newaxis]
        except Exception:
            return None
        original = np.multiply(scaled, scale)
        original += mean
        interval_states = bounds = None
        if self.intervals is not None:
            interval_states, bounds = self._steady_intervals(states, values, mean[:, 0], scale[:, 0], scaled)
        return self._steady_results(
            states, readings, rings, cell_states, original, scaled, levels.tolist(), interval_states, bounds
        )

    def _steady_intervals(
        self, states: Sequence[StreamState], values: np.ndarray, mean: np.ndarray, scale: np.ndarray, scaled: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step`'s interval adaptation and bounds for the steady readings, batched: [n, D], [n, 2, L, H]."""
        spec = self.intervals
        old = np.array([state.interval_state for state in states]).reshape(len(states), -1)
        actual = (values - mean) / scale
        warmup = self.warmup
        one_step = np.array([state.one_step_forecast if state.readings_seen > warmup else math.nan for state in states])
        one_step = (one_step - mean) / scale
        interval_states = push(adapt(old, actual, one_step, spec), scaled, spec)
        return interval_states, interval_bounds(interval_states, scaled, mean, scale, spec)

    def _steady_results(
        self,
        states: Sequence[StreamState],
        readings: Sequence[Reading],
        rings: np.ndarray,
        cell_states: np.ndarray,
        original: np.ndarray,
        scaled: np.ndarray,
        smoothed_levels: list[float],
        interval_states: np.ndarray | None = None,
        bounds: np.ndarray | None = None,
    ) -> list[StepResult]:
        """Each stream's result from its rows of the batch, as :meth:`step` builds it.

        Every array is a copy of its row: a view would keep the whole batch alive for as long as any
        one stream of it keeps its state (an idle stream, for hours). The forecast and the result
        are filled as :func:`_applied` fills a result, inline (a call per object and reading is
        measurable here).
        """
        min_history, step_seconds = self.config.min_history, self.config.step_seconds
        levels = () if self.intervals is None else self.intervals.levels
        new = _new_instance
        results = []
        append = results.append
        for i, (state, reading, ring, cell_state, values, scaled_row, one_step, level) in enumerate(
            zip(states, readings, rings, cell_states, original, scaled, original[:, 0].tolist(), smoothed_levels)
        ):
            readings_seen = state.readings_seen + 1
            timestamp = reading.timestamp
            new_state = serving_state(
                readings_seen,
                timestamp,
                state.value_mean,
                state.value_scale,
                ring.copy(),
                state.ring_fill,
                cell_state.copy(),
                one_step,
                level,
                NO_INTERVALS if interval_states is None else interval_states[i].copy(),
            )
            forecast = None
            if readings_seen >= min_history:
                forecast = new(Forecast)
                fields = forecast.__dict__
                fields["stream_id"] = reading.stream_id
                fields["timestamp"] = timestamp
                fields["values"] = values.copy()
                fields["scaled"] = scaled_row.copy()
                fields["step_seconds"] = step_seconds
                fields["readings_seen"] = readings_seen
                fields["interval_levels"] = levels
                if bounds is None:
                    fields["lower"] = fields["upper"] = None
                else:
                    own = bounds[i].copy()  # one copy for both bounds: lower and upper are its two halves
                    fields["lower"] = own[0]
                    fields["upper"] = own[1]
            result = new(StepResult)
            fields = result.__dict__
            fields["state"] = new_state
            fields["forecast"] = forecast
            fields["outcome"] = APPLIED
            fields["imputed_steps"] = 0
            fields["reset"] = False
            append(result)
        return results

    def _warm_up(self, state: StreamState, reading: Reading, missing: int) -> StreamState:
        """Collect the first W values (in ``ring[:W]``); a short gap repeats the last value (no model exists yet).

        After the W-th: the stream's scaler from them, and the smoothing's components (level 0).
        """
        ring = state.ring.copy()
        fill, warmup = state.ring_fill, self.warmup
        window = ring[:warmup]
        for value in [window[-1]] * missing + [reading.value]:
            window[:-1] = window[1:]
            window[-1] = value
            fill = min(fill + 1, warmup)
        mean, scale, one_step = float("nan"), float("nan"), float("nan")
        if fill == warmup:
            mean, scale = fit_stream_value_scaler(window)
            ring = self.smoothing.initial_ring((window - mean) / scale)
            fill = len(ring)
            # the smoothed forecast, until the model has spoken
            one_step = float(self._smoothing.base(ring)[0]) * scale + mean
        return StreamState(
            readings_seen=state.readings_seen + 1,
            last_timestamp=reading.timestamp,
            value_mean=mean,
            value_scale=scale,
            ring=ring,
            ring_fill=fill,
            cell_state=state.cell_state,
            one_step_forecast=one_step,
            interval_state=state.interval_state,
        )

    def _advance(
        self,
        state: StreamState,
        value: float,
        covariates: Sequence[float],
        timestamp: float,
        readings_seen: int,
        interval_state: np.ndarray | None = None,
    ) -> tuple[StreamState, np.ndarray]:
        """One recurrent step on ``value`` at ``timestamp``; returns the state and the scaled forecast.

        ``readings_seen`` is the new state's count (imputed steps do not count as readings);
        ``interval_state`` the interval adaptation after scoring ``value`` (None: the state's own); the
        forecast made here joins its pending forecasts.
        """
        mean, scale = state.value_mean, state.value_scale
        # 0-d level and reading, 1-D ring: the batch recursion on one stream, arrays of its own
        new_level, ring, new_error = self._smoothing.update(
            np.array(state.level), state.ring, np.array((value - mean) / scale)
        )
        level, error = float(new_level), float(new_error)
        x = self._input_row((value - mean) / scale - level, covariates, timestamp, error)
        head, cell_state = self._step_one(x, state.cell_state)
        base = self._smoothing.base(ring)
        forecast = base + head
        forecast += self._skip_one(x, base)
        forecast += level
        if interval_state is None:
            interval_state = state.interval_state
        if self.intervals is not None:
            interval_state = push(interval_state, forecast, self.intervals)
        new_state = serving_state(
            readings_seen=readings_seen,
            last_timestamp=timestamp,
            value_mean=mean,
            value_scale=scale,
            ring=ring,
            ring_fill=state.ring_fill,
            cell_state=cell_state,
            one_step_forecast=float(forecast[0]) * scale + mean,
            level=level,
            interval_state=interval_state,
        )
        return new_state, forecast

    def _impute(self, state: StreamState, covariates: Sequence[float], timestamp: float) -> StreamState:
        """Feed the model its own one-step forecast for a missing step."""
        new_state, _ = self._advance(state, state.one_step_forecast, covariates, timestamp, state.readings_seen)
        return new_state
