"""Offline evaluation exactly as the job serves: every reading through the step engine, in order.

Each stream starts from no state at its first reading and carries its state to the end, like the
streaming job; only forecasts issued in the test part are scored, against persistence and the
seasonal naive on the same points (:mod:`models.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.data import Dataset, Series
from models.engine import Engine
from models.intervals import IntervalSpec, conformal_offsets
from models.metrics import aligned_actuals, combine_scores, score_series
from models.reading import Reading


@dataclass(frozen=True)
class StreamRun:
    """What the engine issued at each reading of one stream (NaN rows where no forecast was issued)."""

    forecasts: np.ndarray  # [n, H], original units
    scales: np.ndarray  # [n], the stream's value scale at each forecast (NaN where none)
    lower: np.ndarray | None  # [n, L, H] interval bounds, original units (None: the engine has no intervals)
    upper: np.ndarray | None


@dataclass(frozen=True)
class StreamForecasts:
    stream_id: str
    series: Series
    forecasts: np.ndarray  # [n, H], NaN rows where no forecast was issued
    test_from: float
    lower: np.ndarray | None = None  # [n, L, H]
    upper: np.ndarray | None = None


def covariate_columns(engine: Engine, dataset: Dataset) -> list[int]:
    """Columns of the dataset that feed the model's covariates, by name."""
    missing = [c for c in engine.features.covariate_names if c not in dataset.covariate_names]
    if missing:
        raise ValueError(
            f"{dataset.path}: the model needs covariate column(s) {', '.join(missing)}; "
            f"the file has {', '.join(dataset.covariate_names) or 'none'}"
        )
    return [dataset.covariate_names.index(c) for c in engine.features.covariate_names]


def run_engine(
    engine: Engine, stream_id: str, series: Series, columns: list[int], on_reading: Callable[[], None] | None = None
) -> np.ndarray:
    """Forecasts issued at each reading of one stream, state carried from its first reading."""
    return run_stream(engine, stream_id, series, columns, on_reading).forecasts


def run_stream(
    engine: Engine, stream_id: str, series: Series, columns: list[int], on_reading: Callable[[], None] | None = None
) -> StreamRun:
    """:func:`run_engine` with the forecasts' scales and interval bounds."""
    n, horizon = len(series.timestamps), engine.horizon
    forecasts = np.full((n, horizon), np.nan)
    scales = np.full(n, np.nan)
    levels = 0 if engine.intervals is None else len(engine.intervals.levels)
    lower = np.full((n, levels, horizon), np.nan) if levels else None
    upper = np.full((n, levels, horizon), np.nan) if levels else None
    covariates = series.covariates[:, columns]
    state = None
    for i, (timestamp, value) in enumerate(zip(series.timestamps.tolist(), series.values.tolist())):
        result = engine.step(state, Reading(stream_id, timestamp, value, tuple(covariates[i].tolist())))
        state = result.state
        forecast = result.forecast
        if forecast is not None:
            forecasts[i] = forecast.values
            scales[i] = state.value_scale
            if lower is not None:
                lower[i] = forecast.lower
                upper[i] = forecast.upper
        if on_reading is not None:
            on_reading()
    return StreamRun(forecasts, scales, lower, upper)


def calibrate_intervals(
    engine: Engine,
    dataset: Dataset,
    validation_from: dict[str, float],
    test_from: dict[str, float],
    levels: tuple[float, ...],
    gamma: float,
) -> tuple[IntervalSpec, np.ndarray]:
    """Split-conformal interval offsets from the engine's forecasts on the validation part.

    Each stream is served from its first reading, as in :func:`evaluate`; a forecast issued at or after
    ``validation_from`` whose target is before ``test_from`` contributes its signed error in the
    stream's scaled units. The engine's own intervals (if any) play no part.

    Returns:
        The interval spec and the number of calibration points per horizon step.

    Raises:
        ValueError: If some horizon step has no calibration point (the validation part is too short).
    """
    columns = covariate_columns(engine, dataset)
    errors = []
    for sid, series in dataset.series.items():
        run = run_stream(engine, sid, series, columns)
        origins = np.flatnonzero(
            (series.timestamps >= validation_from[sid]) & (series.timestamps < test_from[sid]) & np.isfinite(run.scales)
        )
        actual = aligned_actuals(series.timestamps, series.values, series.step_seconds, engine.horizon, origins)
        target_times = series.timestamps[origins][:, None] + series.step_seconds * np.arange(1, engine.horizon + 1)
        actual[target_times >= test_from[sid]] = np.nan
        errors.append((actual - run.forecasts[origins]) / run.scales[origins][:, None])
    stacked = np.concatenate(errors) if errors else np.zeros((0, engine.horizon))
    lower, upper, counts = conformal_offsets(stacked, levels)
    if np.any(counts == 0):
        raise ValueError(
            f"no validation forecast reaches horizon step {int(np.argmin(counts)) + 1}: the validation part is "
            "too short to calibrate prediction intervals (use --interval-levels none, or more data)"
        )
    return IntervalSpec.from_offsets(levels, lower, upper, gamma), counts


def test_boundaries(dataset: Dataset, test_fraction: float | None, test_from: float | None) -> dict[str, float]:
    """Per-stream start of the test part: a fixed time, or the last ``test_fraction`` of each stream."""
    boundaries = {}
    for sid, series in dataset.series.items():
        if test_from is not None:
            boundaries[sid] = float(test_from)
        else:
            n = len(series.timestamps)
            index = int(np.floor(n * (1 - float(test_fraction))))
            boundaries[sid] = float(series.timestamps[index]) if index < n else np.inf
    return boundaries


def evaluate(
    engine: Engine,
    dataset: Dataset,
    season: int,
    test_fraction: float | None = 0.3,
    test_from: float | None = None,
    on_reading: Callable[[], None] | None = None,
) -> tuple[dict, list[StreamForecasts]]:
    columns = covariate_columns(engine, dataset)
    boundaries = test_boundaries(dataset, test_fraction, test_from)
    scores, streams = [], []
    levels = () if engine.intervals is None else engine.intervals.levels
    for sid, series in dataset.series.items():
        run = run_stream(engine, sid, series, columns, on_reading)
        scores.append(
            score_series(
                series.timestamps,
                series.values,
                run.forecasts,
                series.step_seconds,
                season,
                boundaries[sid],
                levels,
                run.lower,
                run.upper,
            )
        )
        streams.append(StreamForecasts(sid, series, run.forecasts, boundaries[sid], run.lower, run.upper))
    return combine_scores(scores, engine.horizon, season), streams
