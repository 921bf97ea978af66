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
    assert sorted((p.horizon_step, p.model_error, p.persistence_error) for p in points) == [
        (1, 3.0, 2.5),
        (2, 1.0, 3.0),
    ]
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
        offline.persistence_abs / offline.counts,
        rtol=0,
        atol=1e-9,
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
        assert sorted((p.horizon_step, p.model_error, p.persistence_error) for p in got) == pytest.approx(
            sorted(expected)
        )
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
    errors = [(5.0, 1.0), (1.0, 1.0), (2.0, 1.0), (3.0, 2.0)]  # (model, persistence) at t = 1..4
    # actual(t) = actual(t-1) + persistence(t); the forecast made at t-1 is actual(t) - model(t)
    actuals = np.cumsum([0.0] + [persistence for _, persistence in errors])
    forecasts = [actuals[t + 1] - model for t, (model, _) in enumerate(errors)] + [0.0]
    for t, (actual, forecast) in enumerate(zip(actuals, forecasts)):
        tracker.record("s", float(t), float(actual), 0.0, 1.0, np.array([forecast]))
    assert tracker.skill() == {"1": pytest.approx((1.0 + 2.0 + 3.0) / (1.0 + 1.0 + 2.0))}


def test_the_bands_have_one_definition():
    from models import metrics as offline
    from pipeline import metrics as online

    assert online.HORIZON_BANDS is offline.HORIZON_BANDS
    for horizon in range(1, 60):
        labels = horizon_band_labels(horizon)
        for _label, columns in offline.horizon_bands(horizon):  # the evaluation's band table
            assert len(set(labels[columns])) == 1


class _PerReading:
    """The tracker's documented rules, one reading at a time, spelled out (pending forecasts by grid step).

    Per stream: a grid anchored at the first reading (or the last off-grid one), the last grid step seen,
    and the forecasts issued at each step. A reading scores the forecasts issued 1..H steps before it
    (finite values only), unless it is not newer than the last one seen; an off-grid reading drops them
    all and anchors a new grid; only the first ``max_streams`` streams that forecast are tracked.
    """

    def __init__(self, horizon: int, step: float, max_streams: int) -> None:
        self.horizon, self.step, self.max_streams = horizon, step, max_streams
        self.streams: dict[str, dict] = {}

    def reset(self, sid: str) -> None:
        self.streams.pop(sid, None)

    def observe(self, sid, t, value, mean, scale, forecast) -> list[tuple[int, float, float]]:
        actual = (value - mean) / scale
        stream = self.streams.get(sid)
        if stream is None:
            if forecast is None or len(self.streams) >= self.max_streams:
                return []
            stream = self.streams[sid] = {"anchor": t, "last": None, "pending": {}}
        steps = (t - stream["anchor"]) / self.step
        position = round(steps)
        if abs(steps - position) >= 1e-6:
            stream.update(anchor=t, last=None, pending={})
            position = 0
        elif stream["last"] is not None and position <= stream["last"]:
            return []
        stream["last"] = position
        points = []
        for h in range(1, self.horizon + 1):
            if position - h in stream["pending"]:
                origin_actual, f = stream["pending"][position - h]
                model = abs(f[h - 1] - actual)
                if np.isfinite(model):
                    points.append((h, model, abs(origin_actual - actual)))
        if forecast is not None:
            stream["pending"][position] = (actual, np.array(forecast, dtype=float))
        return points


@pytest.mark.parametrize("seed", range(8))
def test_batched_scoring_equals_scoring_one_reading_at_a_time(seed):
    """Random streams with gaps, duplicates, older and off-grid readings, resets, NaN and missing forecasts,
    more streams than tracked, flushed at random moments: the flushed rows equal the per-reading rules."""
    rng = np.random.default_rng(seed)
    horizon, step, max_streams = int(rng.integers(1, 7)), 60.0, 5
    batches = []
    tracker = AccuracyTracker(
        horizon,
        step,
        window=10**6,
        max_streams=max_streams,
        on_batch=batches.append,
        buffer_rows=int(rng.integers(1, 200)),
    )
    reference = _PerReading(horizon, step, max_streams)
    clocks = {f"s{k}": float(rng.integers(0, 10**6)) * step for k in range(8)}
    expected = []  # per reading that scores at least one point: {h: (model, persistence)}
    for _ in range(4000):
        sid = str(rng.choice(list(clocks)[: 3 + int(rng.integers(0, 6))]))  # some streams come often
        move = rng.random()
        if move < 0.6:
            clocks[sid] += step
        elif move < 0.75:
            clocks[sid] += step * int(rng.integers(2, horizon + 3))  # a gap, sometimes longer than H
        elif move < 0.82:
            pass  # the same timestamp again
        elif move < 0.88:
            clocks[sid] -= step * int(rng.integers(1, 4))  # older than the last
        elif move < 0.93:
            clocks[sid] += step * float(rng.choice([0.5, 1.37, -0.25]))  # off the grid
        if rng.random() < 0.02:
            tracker.reset_stream(sid)
            reference.reset(sid)
        kind = rng.random()
        forecast = None if kind < 0.15 else rng.normal(size=horizon)
        if forecast is not None and kind < 0.25:
            forecast[rng.random(horizon) < 0.5] = rng.choice([np.nan, np.inf])
        value, mean, scale = rng.normal(), rng.normal(), rng.uniform(0.5, 2.0)
        tracker.record(sid, clocks[sid], value, mean, scale, forecast)
        points = reference.observe(sid, clocks[sid], value, mean, scale, forecast)
        if points:
            expected.append({h: (m, p) for h, m, p in points})
        if rng.random() < 0.01:
            tracker.flush()
    tracker.flush()

    got = []
    for batch in batches:
        for model, persistence, valid in zip(batch.model_errors, batch.persistence_errors, batch.valid):
            if valid.any():  # a row whose forecasts were all non-finite scores nothing
                got.append({h: (model[h - 1], persistence[h - 1]) for h in np.flatnonzero(valid) + 1})
    assert got == expected  # the same floating-point operations: bit for bit, in arrival order
    points = [(h, m, p) for row in expected for h, (m, p) in row.items()]
    counts = np.bincount([h - 1 for h, _, _ in points], minlength=horizon)
    np.testing.assert_array_equal(tracker.counts, counts)
    for sums, index in ((tracker.abs_error_sums, 1), (tracker.persistence_error_sums, 2)):
        weights = [point[index] for point in points]
        np.testing.assert_allclose(sums, np.bincount([h - 1 for h, _, _ in points], weights, horizon), rtol=1e-12)
    assert tracker.tracked_streams == len(reference.streams)


def test_observe_returns_the_points_it_counts():
    tracker = AccuracyTracker(horizon=3, step_seconds=1.0)
    tracker.record("s", 0.0, 1.0, 0.0, 1.0, np.array([1.0, np.nan, 2.0]))
    tracker.record("s", 1.0, 2.0, 0.0, 1.0, np.array([2.0, 2.0, 2.0]))  # buffered, not flushed yet
    points = tracker.observe("s", 2.0, 4.0, 0.0, 1.0, None)
    assert [(p.horizon_step, p.model_error, p.persistence_error) for p in points] == [(1, 2.0, 2.0)]  # h=2: NaN
    assert tracker.counts.tolist() == [2.0, 0.0, 0.0]
