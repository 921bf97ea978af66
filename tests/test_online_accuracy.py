"""The job's online accuracy equals the offline evaluation on the same readings."""

from dataclasses import replace

import numpy as np

from models.data import load_csv
from models.metrics import score_series
from models.online_accuracy import AccuracyTracker, horizon_band_labels
from models.reading import Reading
from tests.model_helpers import small_engine


def test_band_labels():
    assert horizon_band_labels(48)[:2] == ["1", "le_q"]
    assert horizon_band_labels(48).count("le_q") == 11
    assert horizon_band_labels(48)[-1] == "le_full"
    assert horizon_band_labels(1) == ["1"]


def test_hand_checked_scores():
    tracker = AccuracyTracker(horizon=2, step_seconds=10.0)
    assert tracker.observe("s", 0.0, 1.0, 0.0, 1.0, np.array([2.0, 3.0])) == []
    points = tracker.observe("s", 10.0, 1.5, 0.0, 1.0, np.array([1.0, 1.0]))
    assert [(p.horizon_step, p.model_error, p.persistence_error) for p in points] == [(1, 0.5, 0.5)]
    points = tracker.observe("s", 20.0, 4.0, 0.0, 1.0, None)
    assert sorted((p.horizon_step, p.model_error, p.persistence_error) for p in points) == [(1, 3.0, 2.5), (2, 1.0, 3.0)]
    assert tracker.skill() == {"1": (0.5 + 3.0) / (0.5 + 2.5), "le_full": 1.0 / 3.0}


def test_online_mae_matches_offline_scoring():
    """Same engine, same readings: the tracker's MAE (scaled) equals score_series' MAE / scale."""
    engine = small_engine("lstm", season=4, horizon=3, covariates=2)
    engine.config = replace(engine.config, step_seconds=1800.0)  # the data's step
    series = load_csv("data/elecdemand.csv").series["vic_demand"]
    n = 800
    tracker = AccuracyTracker(horizon=3, step_seconds=1800.0)
    state = None
    forecasts = np.full((n, 3), np.nan)
    for i in range(n):
        reading = Reading("s", float(series.timestamps[i]), float(series.values[i]), tuple(series.covariates[i]))
        result = engine.step(state, reading)
        state = result.state
        scaled = None if result.forecast is None else result.forecast.scaled
        if result.forecast is not None:
            forecasts[i] = result.forecast.values
        if not state.warming_up:
            tracker.observe("s", reading.timestamp, reading.value, state.value_mean, state.value_scale, scaled)
    offline = score_series(series.timestamps[:n], series.values[:n], forecasts, 1800.0, 4, float(series.timestamps[0]))
    offline_mae = offline.model_abs / offline.counts
    np.testing.assert_array_equal(tracker.counts, offline.counts)
    np.testing.assert_allclose(tracker.mae() * state.value_scale, offline_mae, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        tracker.persistence_error_sums / tracker.counts * state.value_scale,
        offline.persistence_abs / offline.counts, rtol=0, atol=1e-9,
    )


def test_stream_cap_bounds_memory():
    tracker = AccuracyTracker(horizon=2, step_seconds=1.0, max_streams=2)
    for sid in "abc":
        tracker.observe(sid, 0.0, 1.0, 0.0, 1.0, np.zeros(2))
    assert tracker.tracked_streams == 2
