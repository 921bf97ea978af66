"""The step engine: one recurrent step per reading, as a pure state transition (numpy only).

``Engine.step(state | None, reading) -> StepResult`` is the whole serving logic: the offline
evaluation and the streaming job call exactly this, so they produce the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from models.cells import NetworkWeights
from models.features import FeatureSpec, input_vector
from models.reading import Forecast, Reading
from models.scaling import fit_stream_value_scaler
from models.state import StreamState

APPLIED = "applied"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"


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


class Engine:
    """Serves one artifact: weights, features and serving semantics."""

    def __init__(self, weights: NetworkWeights, features: FeatureSpec, config: EngineConfig):
        self.weights = weights
        self.features = features
        self.config = config
        self.horizon = weights.horizon
        # base[h-1] = value at t+h−S·ceil(h/S) = ring[(h−1) mod S]  (ring holds t−S+1 .. t, oldest first)
        self._base_index = np.arange(self.horizon) % config.season

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
        missing = self.missing_steps(state.last_timestamp, reading.timestamp)
        if missing > self.config.max_gap:
            return StepResult(self._warm_up(self.init_state(), reading, missing=0), None, APPLIED, reset=True)
        if state.warming_up:
            return StepResult(self._warm_up(state, reading, missing), None, APPLIED, imputed_steps=missing)
        covariates = np.asarray(reading.covariates, dtype=np.float64)
        for k in range(missing, 0, -1):
            state = self._impute(state, covariates, reading.timestamp - k * self.config.step_seconds)
        state, scaled = self._advance(state, reading.value, covariates, reading.timestamp)
        state = replace(state, readings_seen=state.readings_seen + 1)
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
        return StepResult(state, forecast, APPLIED, imputed_steps=missing)

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
        self, state: StreamState, value: float, covariates: np.ndarray, timestamp: float
    ) -> tuple[StreamState, np.ndarray]:
        """One recurrent step on ``value`` at ``timestamp``; returns the state and the scaled forecast."""
        value_scaled = (value - state.value_mean) / state.value_scale
        x = input_vector(self.features, value_scaled, covariates, timestamp)
        head, cell_state = self.weights.step(x[np.newaxis, :], state.cell_state[np.newaxis, :])
        ring = np.empty_like(state.ring)
        ring[:-1] = state.ring[1:]
        ring[-1] = value
        base = (ring[self._base_index] - state.value_mean) / state.value_scale
        forecast = base + head[0] + self.weights.skip(x[np.newaxis, :], base[np.newaxis, :])[0]
        new_state = StreamState(
            readings_seen=state.readings_seen,
            last_timestamp=timestamp,
            value_mean=state.value_mean,
            value_scale=state.value_scale,
            ring=ring,
            ring_fill=state.ring_fill,
            cell_state=cell_state[0],
            one_step_forecast=float(forecast[0] * state.value_scale + state.value_mean),
        )
        return new_state, forecast

    def _impute(self, state: StreamState, covariates: np.ndarray, timestamp: float) -> StreamState:
        """Feed the model its own one-step forecast for a missing step."""
        new_state, _ = self._advance(state, state.one_step_forecast, covariates, timestamp)
        return new_state
