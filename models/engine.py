"""The step engine: one recurrent step per reading, as a pure state transition (numpy only).

``Engine.step(state | None, reading) -> StepResult`` is the whole serving logic: the offline
evaluation and the streaming job call exactly this, so they produce the same numbers.
``Engine.step_many`` is the same transition for readings of many distinct streams at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.cells import NetworkWeights
from models.features import FeatureSpec, InputRowBuilder, input_matrix
from models.reading import Forecast, Reading
from models.scaling import fit_stream_value_scaler
from models.state import StreamState, serving_state

APPLIED = "applied"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
# Fewer steady readings than this in a step_many call go through Engine.step one by one: below it
# the batch's fixed cost (stacking, one numpy call per operation) is more than the per-call overhead
# it saves (benchmarks/step_many_micro.py).
MIN_BATCH = 4


@dataclass(frozen=True)
class EngineConfig:
    """Serving semantics that are not weights.

    Attributes:
        season: S, steps per season; the first S readings of a stream are its warm-up.
        step_seconds: sampling step of the streams.
        min_history: readings a stream needs before forecasts are emitted (at least S + 1).
        max_gap: gaps up to this many missing steps are imputed; longer gaps reset the stream.
    """

    season: int
    step_seconds: float
    min_history: int
    max_gap: int = 4

    def __post_init__(self) -> None:
        if self.season < 1:
            raise ValueError("season must be at least 1")
        if self.min_history < self.season + 1:
            raise ValueError(f"min_history must be at least season + 1 = {self.season + 1}")
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


def _forecast(
    stream_id: str, timestamp: float, values: np.ndarray, scaled: np.ndarray, step_seconds: float, readings_seen: int
) -> Forecast:
    """``Forecast(...)`` for the batched path, filled as :func:`_applied` fills a result (same fields, same values)."""
    forecast = _new_instance(Forecast)
    fields = forecast.__dict__
    fields["stream_id"] = stream_id
    fields["timestamp"] = timestamp
    fields["values"] = values
    fields["scaled"] = scaled
    fields["step_seconds"] = step_seconds
    fields["readings_seen"] = readings_seen
    return forecast


class Engine:
    """Serves one artifact: weights, features and serving semantics."""

    def __init__(self, weights: NetworkWeights, features: FeatureSpec, config: EngineConfig):
        self.weights = weights
        self.features = features
        self.config = config
        self.horizon = weights.horizon
        # base[h-1] = value at t+h−S·ceil(h/S) = ring[(h−1) mod S]  (ring holds t−S+1 .. t, oldest first)
        self._base_index = np.arange(self.horizon) % config.season
        # H <= S (the usual case): the base is the first H ring entries, a view instead of a gather.
        self._base_slice = slice(0, self.horizon) if self.horizon <= config.season else None
        self._input_row = InputRowBuilder(features)
        self._covariate_count = len(features.covariate_names)
        # The per-reading path works on one stream's 1-D arrays; networks without the single-stream
        # methods (the variants) go through their batch methods with a batch of one.
        self._step_one = getattr(weights, "step_one", None) or self._batch_step_one
        self._skip_one = getattr(weights, "skip_one", None) or self._batch_skip_one

    def _batch_step_one(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        head, new_state = self.weights.step(x[np.newaxis, :], flat_state[np.newaxis, :])
        return head[0], new_state[0]

    def _batch_skip_one(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return self.weights.skip(x[np.newaxis, :], base[np.newaxis, :])[0]

    def init_state(self) -> StreamState:
        season = self.config.season
        return StreamState(
            readings_seen=0,
            last_timestamp=float("nan"),
            value_mean=float("nan"),
            value_scale=float("nan"),
            ring=np.zeros(season),
            ring_fill=0,
            cell_state=np.zeros(self.weights.state_size),
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
        if missing < 0:  # = missing_steps(), inlined
            missing = 0
        if missing > self.config.max_gap:
            return StepResult(self._warm_up(self.init_state(), reading, missing=0), None, APPLIED, reset=True)
        if state.warming_up:
            return StepResult(self._warm_up(state, reading, missing), None, APPLIED, imputed_steps=missing)
        covariates = reading.covariates
        for k in range(missing, 0, -1):
            state = self._impute(state, covariates, reading.timestamp - k * self.config.step_seconds)
        state, scaled = self._advance(state, reading.value, covariates, reading.timestamp, state.readings_seen + 1)
        forecast = None
        if state.readings_seen >= self.config.min_history:
            forecast = Forecast(
                stream_id=reading.stream_id,
                timestamp=reading.timestamp,
                values=scaled * state.value_scale + state.value_mean,
                scaled=scaled,
                step_seconds=self.config.step_seconds,
                readings_seen=state.readings_seen,
            )
        return _applied(state, forecast, missing)

    def step_many(
        self, states: Sequence[StreamState | None], readings: Sequence[Reading]
    ) -> list[StepResult | Exception]:
        """:meth:`step` for readings of distinct streams at once: entry i is ``step(states[i], readings[i])``.

        The readings that continue a warmed-up stream by exactly one step (the steady state of a
        live job) share one batched recurrent step, which amortises numpy's per-call overhead; every
        other reading (new stream, warm-up, gap, duplicate, out of order, non-finite) goes through
        :meth:`step`. The results equal :meth:`step`'s field for field, float arrays within 1e-12
        (batched matrix products may round the last bits differently), and each owns its arrays.

        Precondition: the readings belong to distinct streams (a stream's next state depends on its
        previous one, so two readings of one stream cannot be stepped together).

        Returns:
            One entry per reading, in order: its :class:`StepResult`, or the exception :meth:`step`
            raised for it (e.g. ``ValueError`` for a non-finite value), so that one bad reading does
            not fail the others; the caller dead-letters it as it would a failed :meth:`step`.

        Raises:
            ValueError: the sequences differ in length or a stream id repeats.
        """
        if len(states) != len(readings):
            raise ValueError(f"step_many got {len(states)} states for {len(readings)} readings")
        if len({reading.stream_id for reading in readings}) != len(readings):
            raise ValueError("step_many needs readings of distinct streams; a stream id repeats")
        results: list[StepResult | Exception | None] = [None] * len(readings)
        if len(readings) >= MIN_BATCH:
            steady = [i for i, (state, reading) in enumerate(zip(states, readings)) if self._is_steady(state, reading)]
            if len(steady) >= MIN_BATCH:
                batch = self._advance_many([states[i] for i in steady], [readings[i] for i in steady])
                for i, result in zip(steady, batch or ()):
                    results[i] = result
        return [
            self._step_or_error(state, reading) if result is None else result
            for state, reading, result in zip(states, readings, results)
        ]

    def _step_or_error(self, state: StreamState | None, reading: Reading) -> StepResult | Exception:
        try:
            return self.step(state, reading)
        except Exception as err:  # noqa: BLE001 - the caller dead-letters it; the other readings go on
            return err

    def _is_steady(self, state: StreamState | None, reading: Reading) -> bool:
        """Whether :meth:`step` would do exactly one plain :meth:`_advance` (no warm-up, gap or rejection).

        ``q < 1.5`` is ``round(q) - 1 <= 0`` (no missing step; round(1.5) is 2), without ``round``'s
        OverflowError on an infinite ``q``: that reading is left to :meth:`step`, which raises it. A
        zero scale (only a corrupt decoded state has one) is left to it too: its Python-float
        division raises ZeroDivisionError where numpy's would return inf.
        """
        if state is None or state.readings_seen == 0 or state.ring_fill < len(state.ring):
            return False
        timestamp, last = reading.timestamp, state.last_timestamp
        return (
            math.isfinite(reading.value)
            and math.isfinite(timestamp)
            and timestamp > last
            and (timestamp - last) / self.config.step_seconds < 1.5
            and len(reading.covariates) == self._covariate_count
            and state.value_scale != 0
        )

    def _advance_many(self, states: list[StreamState], readings: list[Reading]) -> list[StepResult] | None:
        """:meth:`_advance` and :meth:`step`'s forecast for steady readings of distinct streams, batched.

        The same floating-point operations as the per-reading path, on [n, ·] arrays. Returns None
        when the batch cannot be built or stepped (e.g. a state of a model of another shape, a
        covariate that is not a number): :meth:`step` then redoes these readings one by one, so
        each error lands on its own reading.
        """
        try:
            mean = np.array([state.value_mean for state in states])
            scale = np.array([state.value_scale for state in states])
            values = np.array([reading.value for reading in readings], dtype=np.float64)
            covariates = np.array([reading.covariates for reading in readings], dtype=np.float64)
            timestamps = np.array([reading.timestamp for reading in readings], dtype=np.float64)
            x = input_matrix(self.features, (values - mean) / scale, covariates, timestamps)
            head, cell_states = self.weights.step(x, np.array([state.cell_state for state in states]))
            old_rings = np.array([state.ring for state in states])
            rings = np.empty_like(old_rings)
            rings[:, :-1] = old_rings[:, 1:]
            rings[:, -1] = values
            base = rings[:, self._base_slice] if self._base_slice is not None else rings[:, self._base_index]
            base = base - mean[:, np.newaxis]
            base /= scale[:, np.newaxis]
            scaled = base + head
            scaled += self.weights.skip(x, base)
        except Exception:  # noqa: BLE001 - step() redoes these readings and reports each one's error
            return None
        original = scaled * scale[:, np.newaxis] + mean[:, np.newaxis]
        one_step = (scaled[:, 0] * scale + mean).tolist()
        return self._steady_results(states, readings, rings, cell_states, one_step, original, scaled)

    def _steady_results(
        self,
        states: list[StreamState],
        readings: list[Reading],
        rings: np.ndarray,
        cell_states: np.ndarray,
        one_step: list[float],
        original: np.ndarray,
        scaled: np.ndarray,
    ) -> list[StepResult]:
        """Each stream's result from its rows of the batch, as :meth:`step` builds it.

        Every array is a copy of its row: a view would keep the whole batch alive for as long as any
        one stream of it keeps its state (an idle stream, for hours).
        """
        min_history, step_seconds = self.config.min_history, self.config.step_seconds
        results = []
        for i, (state, reading) in enumerate(zip(states, readings)):
            readings_seen = state.readings_seen + 1
            new_state = serving_state(
                readings_seen,
                reading.timestamp,
                state.value_mean,
                state.value_scale,
                rings[i].copy(),
                state.ring_fill,
                cell_states[i].copy(),
                one_step[i],
            )
            forecast = None
            if readings_seen >= min_history:
                forecast = _forecast(
                    reading.stream_id, reading.timestamp, original[i].copy(), scaled[i].copy(), step_seconds, readings_seen
                )
            results.append(_applied(new_state, forecast, 0))
        return results

    def missing_steps(self, last_timestamp: float, timestamp: float) -> int:
        return max(int(round((timestamp - last_timestamp) / self.config.step_seconds)) - 1, 0)

    def _warm_up(self, state: StreamState, reading: Reading, missing: int) -> StreamState:
        """Collect the first S values; a short gap repeats the last value (no model exists yet)."""
        ring = state.ring.copy()
        fill = state.ring_fill
        for value in [ring[-1]] * missing + [reading.value]:
            ring[:-1] = ring[1:]
            ring[-1] = value
            fill = min(fill + 1, len(ring))
        mean, scale, one_step = float("nan"), float("nan"), float("nan")
        if fill == len(ring):
            mean, scale = fit_stream_value_scaler(ring)
            one_step = float(ring[self._base_index[0]])  # the seasonal naive, until the model has spoken
        return StreamState(
            readings_seen=state.readings_seen + 1,
            last_timestamp=reading.timestamp,
            value_mean=mean,
            value_scale=scale,
            ring=ring,
            ring_fill=fill,
            cell_state=state.cell_state,
            one_step_forecast=one_step,
        )

    def _advance(
        self, state: StreamState, value: float, covariates: Sequence[float], timestamp: float, readings_seen: int
    ) -> tuple[StreamState, np.ndarray]:
        """One recurrent step on ``value`` at ``timestamp``; returns the state and the scaled forecast.

        ``readings_seen`` is the new state's count (imputed steps do not count as readings).
        """
        mean, scale = state.value_mean, state.value_scale
        x = self._input_row((value - mean) / scale, covariates, timestamp)
        head, cell_state = self._step_one(x, state.cell_state)
        old_ring = state.ring
        ring = np.empty_like(old_ring)
        ring[:-1] = old_ring[1:]
        ring[-1] = value
        base = ring[self._base_slice] if self._base_slice is not None else ring[self._base_index]
        base = base - mean
        base /= scale
        forecast = base + head
        forecast += self._skip_one(x, base)
        new_state = serving_state(
            readings_seen=readings_seen,
            last_timestamp=timestamp,
            value_mean=mean,
            value_scale=scale,
            ring=ring,
            ring_fill=state.ring_fill,
            cell_state=cell_state,
            one_step_forecast=float(forecast[0]) * scale + mean,
        )
        return new_state, forecast

    def _impute(self, state: StreamState, covariates: Sequence[float], timestamp: float) -> StreamState:
        """Feed the model its own one-step forecast for a missing step."""
        new_state, _ = self._advance(state, state.one_step_forecast, covariates, timestamp, state.readings_seen)
        return new_state
