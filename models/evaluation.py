"""Offline evaluation exactly as the job serves: every reading through the step engine, in order.

Each stream starts from no state at its first reading and carries its state to the end, like the
streaming job; only forecasts issued in the test part are scored, against persistence and the
seasonal naive on the same points (:mod:`models.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from models.data import Dataset, Series
from models.engine import Engine
from models.metrics import combine_scores, score_series
from models.reading import Reading


@dataclass(frozen=True)
class StreamForecasts:
    stream_id: str
    series: Series
    forecasts: np.ndarray  # [n, H], NaN rows where no forecast was issued
    test_from: float


def covariate_columns(engine: Engine, dataset: Dataset) -> list[int]:
    """Columns of the dataset that feed the model's covariates, by name."""
    missing = [c for c in engine.features.covariate_names if c not in dataset.covariate_names]
    if missing:
        raise ValueError(
            f"{dataset.path}: the model needs covariate column(s) {', '.join(missing)}; "
            f"the file has {', '.join(dataset.covariate_names) or 'none'}"
        )
    return [dataset.covariate_names.index(c) for c in engine.features.covariate_names]


def run_engine(engine: Engine, stream_id: str, series: Series, columns: list[int], on_reading: Callable[[], None] | None = None) -> np.ndarray:
    """Forecasts issued at each reading of one stream, state carried from its first reading."""
    forecasts = np.full((len(series.timestamps), engine.horizon), np.nan)
    covariates = series.covariates[:, columns]
    state = None
    for i, (timestamp, value) in enumerate(zip(series.timestamps.tolist(), series.values.tolist())):
        result = engine.step(state, Reading(stream_id, timestamp, value, tuple(covariates[i].tolist())))
        state = result.state
        if result.forecast is not None:
            forecasts[i] = result.forecast.values
        if on_reading is not None:
            on_reading()
    return forecasts


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
    for sid, series in dataset.series.items():
        forecasts = run_engine(engine, sid, series, columns, on_reading)
        scores.append(
            score_series(series.timestamps, series.values, forecasts, series.step_seconds, season, boundaries[sid])
        )
        streams.append(StreamForecasts(sid, series, forecasts, boundaries[sid]))
    return combine_scores(scores, engine.horizon, season), streams
