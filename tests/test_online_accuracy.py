"""The job's online accuracy equals the offline evaluation on the same readings."""

from dataclasses import replace

import numpy as np
import pytest

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


class _Reference:
    """The tracker's rule written the obvious way (a list of pending forecasts per stream)."""

    def __init__(self, horizon: int, step: float) -> None:
        self.horizon, self.step, self.pending = horizon, step, {}

    def observe(self, sid, t, value, mean, scale, forecast):
        actual = (value - mean) / scale
        if sid not in self.pending and forecast is None:
            return []
        pending = self.pending.setdefault(sid, [])
        points = []
        for origin, origin_value, f in pending:
            steps = (t - origin) / self.step
            h = int(round(steps))
            if 1 <= h <= self.horizon and abs(steps - h) < 1e-6:
                points.append((h, abs(f[h - 1] - actual), abs(origin_value - actual)))
        if forecast is not None:
            pending.append((t, actual, np.asarray(forecast, dtype=float)))
        return points


def test_equals_the_obvious_rule_with_gaps_resets_and_several_streams():
    rng = np.random.default_rng(7)
    horizon, step = 6, 60.0
    tracker = AccuracyTracker(horizon, step, window=10**6, buffer_rows=16)
    reference = _Reference(horizon, step)
    clocks = {"a": 0.0, "b": 30.0, "c": 1e9}
    all_points = []
    for _ in range(3000):
        sid = str(rng.choice(list(clocks)))
        clocks[sid] += step * int(rng.choice([1, 1, 1, 1, 2, 3, 7]))  # gaps of 1, 2 and 6 missing steps
        if rng.random() < 0.01:
            clocks[sid] += 0.37 * step  # off the grid: a new grid starts there
        if rng.random() < 0.005:
            tracker.reset_stream(sid)
            reference.pending.pop(sid, None)
        forecast = None if rng.random() < 0.1 else rng.normal(size=horizon)
        value, mean, scale = rng.normal(), rng.normal(), rng.uniform(0.5, 2.0)
        got = tracker.observe(sid, clocks[sid], value, mean, scale, forecast)
        expected = reference.observe(sid, clocks[sid], value, mean, scale, forecast)
        assert sorted((p.horizon_step, p.model_error, p.persistence_error) for p in got) == pytest.approx(sorted(expected))
        all_points += expected
    counts = np.bincount([h - 1 for h, _, _ in all_points], minlength=horizon)
    np.testing.assert_array_equal(tracker.counts, counts)
    sums = np.bincount([h - 1 for h, _, _ in all_points], weights=[m for _, m, _ in all_points], minlength=horizon)
    np.testing.assert_allclose(tracker.abs_error_sums, sums, rtol=1e-12)
    bands = horizon_band_labels(horizon)
    for band, skill in tracker.skill().items():
        model = sum(m for h, m, _ in all_points if bands[h - 1] == band)
        persistence = sum(p for h, _, p in all_points if bands[h - 1] == band)
        assert skill == pytest.approx(model / persistence, rel=1e-12)


def test_a_reading_observed_again_scores_nothing_twice():
    tracker = AccuracyTracker(horizon=2, step_seconds=10.0)
    tracker.observe("s", 0.0, 1.0, 0.0, 1.0, np.array([2.0, 3.0]))
    assert len(tracker.observe("s", 10.0, 1.5, 0.0, 1.0, np.array([1.0, 1.0]))) == 1
    assert tracker.observe("s", 10.0, 1.5, 0.0, 1.0, np.array([1.0, 1.0])) == []  # a retried bundle
    assert tracker.observe("s", 5.0, 1.5, 0.0, 1.0, None) == []
    assert tracker.counts.sum() == 1


def test_skill_is_over_the_last_window_points_of_each_band():
    tracker = AccuracyTracker(horizon=1, step_seconds=1.0, window=3, buffer_rows=2)
    tracker.observe("s", 0.0, 0.0, 0.0, 1.0, np.array([0.0]))
    errors = [(5.0, 1.0), (1.0, 1.0), (2.0, 1.0), (3.0, 2.0)]  # (model, persistence) at t = 1..4
    previous = 0.0
    for t, (model, persistence) in enumerate(errors, start=1):
        # actual = previous + persistence; the forecast made at t-1 was actual - model
        actual = previous + persistence
        tracker._streams["s"].forecasts[(t - 1) % 2, 0] = actual - model
        tracker.observe("s", float(t), actual, 0.0, 1.0, np.array([0.0]))
        previous = actual
    assert tracker.skill() == {"1": pytest.approx((1.0 + 2.0 + 3.0) / (1.0 + 1.0 + 2.0))}


def test_the_bands_have_one_definition():
    from models import metrics as offline
    from pipeline import metrics as online

    assert online.horizon_band is offline.horizon_band and online.HORIZON_BANDS == offline.HORIZON_BANDS
    for horizon in range(1, 60):
        labels = horizon_band_labels(horizon)
        for label, columns in offline.horizon_bands(horizon):  # the evaluation's band table
            assert len(set(labels[columns])) == 1
