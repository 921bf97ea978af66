"""Prediction intervals: conformal calibration, the online adaptation, the interval score, and the engine's use of them."""

from __future__ import annotations

import numpy as np
import pytest

from models.cells import NetworkWeights, RecurrentLayer
from models.data import Dataset, Series
from models.engine import Engine, EngineConfig
from models.evaluation import calibrate_intervals, run_stream
from models.features import FeatureSpec
from models.intervals import (
    DEFAULT_GAMMA,
    IntervalSpec,
    adapt,
    conformal_offsets,
    interval_bounds,
    interval_offsets,
    interval_point_scores,
    parse_levels,
    push,
)
from models.metrics import score_series
from models.online_accuracy import AccuracyTracker
from models.reading import Reading
from models.scaling import ScalerParams
from models.state import decode_state, encode_state


def test_conformal_offsets_take_the_finite_sample_ranks():
    errors = np.tile(np.arange(1.0, 100.0)[:, None], (1, 2))  # 1..99 at both horizons
    errors[::2, 1] = np.nan  # horizon 2 keeps 49 points: 2, 4, ..., 98
    lower, upper, counts = conformal_offsets(errors, (0.8, 0.95))
    assert counts.tolist() == [99, 49]
    # n = 99: ceil(100 * 0.9) = 90th and floor(100 * 0.1) = 10th smallest; 0.95: 98th and 2nd.
    assert (lower[:, 0].tolist(), upper[:, 0].tolist()) == ([10.0, 2.0], [90.0, 98.0])
    # n = 49: ceil(50 * 0.9) = 45th -> 90; floor(50 * 0.1) = 5th -> 10; 0.95: ceil(48.75) = 49th (98), 1st (2).
    assert (lower[:, 1].tolist(), upper[:, 1].tolist()) == ([10.0, 2.0], [90.0, 98.0])


def test_too_few_points_give_the_widest_available_interval():
    lower, upper, counts = conformal_offsets(np.array([[1.0], [3.0], [2.0]]), (0.95,))
    assert (lower[0, 0], upper[0, 0], counts[0]) == (1.0, 3.0, 3)


def test_interval_score_is_the_winkler_score():
    covered, width, score = interval_point_scores(
        np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0]), np.array([0.5, 2.0, -0.5]), 0.8
    )
    assert covered.tolist() == [1.0, 0.0, 0.0]
    assert width.tolist() == [1.0, 1.0, 1.0]
    assert score == pytest.approx([1.0, 1.0 + 10.0 * 1.0, 1.0 + 10.0 * 0.5])  # 2 / (1 - 0.8) = 10


def test_levels_parse_sorted_and_bad_ones_are_named():
    assert parse_levels("0.95, 0.8") == (0.8, 0.95)
    for text, message in (("0.8,x", "'x' is not a number"), ("1.0", "strictly between"), ("0.8,0.8", "repeat")):
        with pytest.raises(ValueError, match=message):
            parse_levels(text)


def spec_for(horizon: int, half: float = 1.0, gamma: float = 0.05, levels=(0.8, 0.95)) -> IntervalSpec:
    widths = np.array([[half], [2 * half]])[: len(levels)] * np.ones(horizon)
    return IntervalSpec.from_offsets(levels, -widths, widths, gamma)


def test_anchors_are_the_middle_steps_of_the_horizon_bands():
    assert spec_for(48).anchors.tolist() == [1, 7, 18, 36]  # bands 1, 2..12, 13..24, 25..48
    assert spec_for(24).anchors.tolist() == [1, 4, 9, 18]
    assert spec_for(1).anchors.tolist() == [1]
    assert spec_for(48).state_size == 2 * 4 + (7 + 18 + 36)  # anchor 1's pending forecast is the state's one-step


def test_push_keeps_the_last_k_forecasts_of_step_k_per_anchor():
    spec = spec_for(12)  # anchors 1, 2, 5, 9
    state = spec.initial_state()
    for t in range(1, 21):
        state = push(state, 100.0 * t + np.arange(1, 13), spec)
    scales = 2 * len(spec.anchors)
    # Register of anchor k > 1 (oldest first): the step-k forecasts issued at t = 21 - k .. 20.
    offset = scales
    for k in spec.anchors.tolist()[1:]:
        assert state[offset : offset + k].tolist() == [100.0 * t + k for t in range(21 - k, 21)]
        offset += k


def test_adapt_moves_each_log_scale_by_the_aci_rule():
    spec = spec_for(3, half=1.0, gamma=0.1)  # bands 1, 2, 3: anchors 1, 2, 3
    state = spec.initial_state()
    nothing = adapt(state, 5.0, np.nan, spec)  # nothing pending
    assert np.all(np.isnan(nothing[6:])) and np.all(nothing[:6] == 0.0)
    for _ in range(3):
        state = push(state, np.zeros(3), spec)
    # Every anchor's pending forecast is 0: an actual of 1.5 misses the 0.8 interval (±1), not the 0.95 (±2).
    after = adapt(state, 1.5, 0.0, spec)
    bands = len(spec.anchors)
    np.testing.assert_allclose(after[:bands], 0.1 * (1 - 0.2))
    np.testing.assert_allclose(after[bands : 2 * bands], -0.1 * 0.05)
    lower, upper = interval_offsets(after, spec)
    np.testing.assert_allclose(upper[0], np.exp(0.08) * 1.0)
    np.testing.assert_allclose(lower[1], -np.exp(-0.005) * 2.0)


def test_adapt_for_one_stream_equals_adapt_for_many_bit_for_bit():
    """The one-stream path (Python floats) and the batched path (numpy): same log-scales, NaN and limits included."""
    rng = np.random.default_rng(11)
    spec = spec_for(12, half=0.5, gamma=0.3)
    states = rng.normal(size=(200, spec.state_size))
    states[:, : spec._scales] = rng.uniform(-5.2, 5.2, size=(200, spec._scales))  # some at and past the limits
    states[rng.random(states.shape) < 0.1] = np.nan  # nothing pending in some registers
    states[:, : spec._scales] = np.nan_to_num(states[:, : spec._scales])
    actual, one_step = rng.normal(size=200), rng.normal(size=200)
    one_step[::7] = np.nan
    many = adapt(states, actual, one_step, spec)
    for i in range(200):
        one = adapt(states[i], actual[i], one_step[i], spec)
        np.testing.assert_array_equal(one, many[i])
    assert not np.array_equal(many[:, : spec._scales], states[:, : spec._scales])  # it did move them
    assert np.all(np.abs(many[:, : spec._scales]) <= 5.0)


def test_interval_bounds_are_the_offsets_around_the_forecast_in_original_units_exactly():
    """The engine's one-array form equals (scaled + offset) * scale + mean bit for bit, one stream or many."""
    rng = np.random.default_rng(3)
    spec = spec_for(12, half=0.7, gamma=0.1)
    states = np.stack([spec.initial_state() for _ in range(5)])
    states[:, : spec._scales] = rng.uniform(-1, 1, size=(5, spec._scales))
    scaled = rng.normal(size=(5, 12))
    mean, scale = rng.normal(size=5) * 100, rng.uniform(1, 50, size=5)
    batch = interval_bounds(states, scaled, mean, scale, spec)
    assert batch.shape == (5, 2, 2, 12)
    for i in range(5):
        lower, upper = interval_offsets(states[i], spec)
        one = interval_bounds(states[i], scaled[i], mean[i], scale[i], spec)
        for got in (one, batch[i]):
            np.testing.assert_array_equal(got[0], (lower + scaled[i]) * scale[i] + mean[i])
            np.testing.assert_array_equal(got[1], (upper + scaled[i]) * scale[i] + mean[i])


def test_each_anchor_misses_at_the_nominal_rate_in_the_long_run():
    """Whatever the calibration: errors 3x wider than calibrated are still missed at 1 - level."""
    rng = np.random.default_rng(1)
    spec = spec_for(12, half=1.0, gamma=DEFAULT_GAMMA)
    state = spec.initial_state()
    bands = len(spec.anchors)
    misses, scored = np.zeros((2, bands)), 0
    for t in range(40_000):
        actual = rng.normal(scale=3.0)
        if t >= 20_000:
            pending = np.r_[0.0, state[spec._oldest]]
            half = np.exp(state[: 2 * bands].reshape(2, bands)) * spec._anchor_half
            misses += np.abs(actual - pending) > half
            scored += 1
        state = push(adapt(state, actual, 0.0, spec), np.zeros(12), spec)
    np.testing.assert_allclose(misses / scored, [[0.2] * bands, [0.05] * bands], atol=0.015)


def test_a_manifest_block_round_trips_and_bad_ones_are_refused():
    spec = spec_for(4)
    back = IntervalSpec.from_json(spec.to_json(np.array([5, 5, 5, 5])), 4)
    np.testing.assert_array_equal(back.lower, spec.lower)
    np.testing.assert_array_equal(back.upper, spec.upper)
    assert back.levels == spec.levels and back.gamma == spec.gamma
    with pytest.raises(ValueError, match="one float per horizon step"):
        IntervalSpec.from_json(spec.to_json(), 5)
    with pytest.raises(ValueError, match="malformed"):
        IntervalSpec.from_json({}, 4)


@pytest.mark.parametrize(
    "keys, message",
    [
        (["1.5"], "interval level 1.5 must be a number strictly between 0 and 1"),
        (["0"], "interval level 0.0 must be a number strictly between 0 and 1"),
        (["nan"], "interval level nan must be a number strictly between 0 and 1"),
        (["0.8", "0.80"], "interval levels repeat: 0.8, 0.8"),
        (["high"], "malformed 'intervals' block"),
        ([], "'intervals' offsets must have one float per horizon step"),
    ],
)
def test_a_manifest_with_bad_levels_is_refused_with_the_level_named(keys, message):
    doc = {"gamma": 0.02, "levels": {key: {"lower": [-1.0, -1.0], "upper": [1.0, 1.0]} for key in keys}}
    with pytest.raises(ValueError, match=message):
        IntervalSpec.from_json(doc, 2)


@pytest.mark.parametrize("gamma", [-0.1, float("inf"), float("nan")])
def test_a_manifest_with_a_bad_gamma_is_refused(gamma):
    doc = spec_for(2).to_json()
    doc["gamma"] = gamma
    with pytest.raises(ValueError, match="adaptation step must be >= 0"):
        IntervalSpec.from_json(doc, 2)


def test_a_manifest_with_non_finite_or_crossed_offsets_is_refused():
    doc = spec_for(2).to_json()
    doc["levels"]["0.8"]["lower"][1] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        IntervalSpec.from_json(doc, 2)
    doc = spec_for(2).to_json()
    doc["levels"]["0.8"]["lower"][0] = 5.0
    with pytest.raises(ValueError, match="upper offset below its lower offset"):
        IntervalSpec.from_json(doc, 2)


# --- the engine ---------------------------------------------------------------------------------

SEASON, HORIZON, STEP = 24, 12, 3600.0
START = 1_400_000_000.0


def seasonal_naive_engine(intervals: IntervalSpec | None = None) -> Engine:
    """A network whose every weight is zero: the engine forecasts the seasonal naive (its base)."""
    features = FeatureSpec((), ScalerParams((), ()), calendar=False)
    units = 2
    weights = NetworkWeights(
        layers=(RecurrentLayer("rnn", np.zeros((features.size, units)), np.zeros((units, units)), np.zeros(units)),),
        head_kernel=np.zeros((units, HORIZON)),
        head_bias=np.zeros(HORIZON),
        skip_kernel=np.zeros((features.size + HORIZON, HORIZON)),
        skip_bias=np.zeros(HORIZON),
    )
    return Engine(weights, features, EngineConfig(SEASON, STEP, SEASON + 1), intervals)


def shifted_stream(n: int, shift_at: int, factor: float, seed: int = 0) -> Series:
    """A daily cycle with noise proportional to the level; the level jumps by ``factor`` at ``shift_at``."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    level = np.where(t < shift_at, 10.0, 10.0 * factor)
    values = level * (1.0 + 0.3 * np.sin(2 * np.pi * t / SEASON) + 0.05 * rng.normal(size=n))
    return Series("s", START + STEP * t, values, np.zeros((n, 0)), STEP)


def calibrated(series: Series, until: int, gamma: float) -> IntervalSpec:
    dataset = Dataset("synthetic", (), {"s": series})
    spec, _ = calibrate_intervals(
        seasonal_naive_engine(),
        dataset,
        {"s": float(series.timestamps[SEASON])},
        {"s": float(series.timestamps[until])},
        (0.8, 0.95),
        gamma,
    )
    return spec


def live_coverage(engine: Engine, series: Series, window: int) -> np.ndarray:
    """After each reading: the tracker's rolling coverage per level, averaged over the horizon bands."""
    tracker = AccuracyTracker(HORIZON, STEP, window=window, levels=engine.intervals.levels)
    state = None
    out = np.full((len(series.values), len(engine.intervals.levels)), np.nan)
    for i, (timestamp, value) in enumerate(zip(series.timestamps.tolist(), series.values.tolist())):
        result = engine.step(state, Reading("s", timestamp, value))
        state = result.state
        if state.warming_up:
            continue
        forecast = result.forecast
        tracker.observe(
            "s",
            timestamp,
            value,
            state.value_mean,
            state.value_scale,
            None if forecast is None else forecast.scaled,
            None if forecast is None else forecast.lower,
            None if forecast is None else forecast.upper,
        )
        coverage = tracker.coverage()
        if coverage:
            out[i] = [np.mean([bands[key] for bands in coverage.values()]) for key in ("0.8", "0.95")]
    return out


# Documented in README ("Prediction intervals"): with the tracker's rolling window of WINDOW scored
# points per band, live coverage is back within 5 points of nominal RECOVERY readings after the shift.
SHIFT_AT, READINGS, WINDOW, RECOVERY = 3000, 7000, 1000, 600


def test_after_a_level_shift_adaptive_coverage_recovers_and_static_coverage_does_not():
    series = shifted_stream(READINGS, SHIFT_AT, factor=3.0)
    adaptive = live_coverage(seasonal_naive_engine(calibrated(series, SHIFT_AT, DEFAULT_GAMMA)), series, WINDOW)
    static = live_coverage(seasonal_naive_engine(calibrated(series, SHIFT_AT, 0.0)), series, WINDOW)
    nominal = np.array([0.8, 0.95])
    before = slice(SHIFT_AT - 200, SHIFT_AT)
    assert np.all(np.abs(adaptive[before] - nominal) <= 0.05)  # calibrated before the shift, both methods
    assert np.all(np.abs(static[before] - nominal) <= 0.05)
    assert np.all(adaptive[SHIFT_AT + 200] < nominal - 0.1)  # the shift is felt...
    recovered = slice(SHIFT_AT + RECOVERY, READINGS)
    worst = np.max(np.abs(adaptive[recovered] - nominal), axis=0)
    assert np.all(worst <= 0.05), worst  # ...and the adaptive intervals are back within 5 points for good
    assert np.all(static[recovered] < nominal - 0.2)  # the static ones never come back


def test_a_stream_restored_from_its_coded_state_continues_its_intervals_exactly():
    series = shifted_stream(600, 300, factor=2.0, seed=3)
    engine = seasonal_naive_engine(calibrated(series, 250, DEFAULT_GAMMA))
    state, restored = None, None
    for timestamp, value in zip(series.timestamps.tolist(), series.values.tolist()):
        reading = Reading("s", timestamp, value)
        result = engine.step(state, reading)
        if restored is not None:
            again = engine.step(restored, reading)
            np.testing.assert_array_equal(again.state.interval_state, result.state.interval_state)
            if result.forecast is not None:
                np.testing.assert_array_equal(again.forecast.lower, result.forecast.lower)
                np.testing.assert_array_equal(again.forecast.upper, result.forecast.upper)
        state = result.state
        restored = decode_state(encode_state(state))  # a crash after every reading
    assert np.any(state.interval_state[:4] != 0.0)  # the stream did adapt


def test_the_online_tracker_scores_intervals_as_evaluate_does():
    """Coverage and width per horizon from the live tracker equal score_series' on the same readings."""
    series = shifted_stream(900, 500, factor=2.0, seed=7)
    engine = seasonal_naive_engine(calibrated(series, 450, DEFAULT_GAMMA))
    run = run_stream(engine, "s", series, [])
    offline = score_series(
        series.timestamps,
        series.values,
        run.forecasts,
        STEP,
        SEASON,
        float(series.timestamps[0]),
        engine.intervals.levels,
        run.lower,
        run.upper,
    )
    tracker = AccuracyTracker(HORIZON, STEP, levels=engine.intervals.levels, buffer_rows=64)
    state = None
    for timestamp, value in zip(series.timestamps.tolist(), series.values.tolist()):
        result = engine.step(state, Reading("s", timestamp, value))
        state = result.state
        if not state.warming_up:
            forecast = result.forecast
            tracker.record(
                "s",
                timestamp,
                value,
                state.value_mean,
                state.value_scale,
                None if forecast is None else forecast.scaled,
                None if forecast is None else forecast.lower,
                None if forecast is None else forecast.upper,
            )
    np.testing.assert_array_equal(tracker.interval_counts, offline.counts)
    model = offline.interval_sums["model"]
    np.testing.assert_array_equal(tracker.interval_sums["covered"], model["covered"])
    np.testing.assert_allclose(tracker.interval_sums["width"] * state.value_scale, model["width"], rtol=1e-9)
    np.testing.assert_allclose(tracker.interval_sums["winkler"] * state.value_scale, model["winkler"], rtol=1e-9)
    assert np.all(np.isnan(offline.interval_sums["baseline"]["winkler"]))  # nothing before test_from: no baseline


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--interval-levels", "0.8,abc"], "error: --interval-levels: interval level 'abc' is not a number"),
        (
            ["--interval-levels", "0.8,1.5"],
            "error: --interval-levels: interval level 1.5 must be a number strictly between 0 and 1",
        ),
        (
            ["--interval-levels", "nan"],
            "error: --interval-levels: interval level nan must be a number strictly between 0 and 1",
        ),
        (["--interval-gamma", "-0.1"], "error: --interval-gamma must be a finite number >= 0, got -0.1"),
        (["--interval-gamma", "inf"], "error: --interval-gamma must be a finite number >= 0, got inf"),
    ],
)
def test_train_refuses_bad_interval_flags_in_one_line(flags, message, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["train", "--data", "data/water-flow.csv", "--out", str(tmp_path / "a"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message and not (tmp_path / "a").exists()


def test_an_artifact_without_intervals_serves_point_forecasts_only():
    engine = seasonal_naive_engine()  # what an artifact trained before intervals existed loads to
    series = shifted_stream(60, 1000, factor=1.0)
    run = run_stream(engine, "s", series, [])
    assert run.lower is None and run.upper is None and np.isfinite(run.forecasts[-1]).all()
    state = None
    for timestamp, value in zip(series.timestamps.tolist(), series.values.tolist()):
        result = engine.step(state, Reading("s", timestamp, value))
        state = result.state
    assert result.forecast.lower is None and result.forecast.interval_levels == ()
    assert state.interval_state.size == 0 and b"ACI1" not in encode_state(state)


def test_a_smoothed_stream_with_intervals_restores_exactly_and_scores_from_its_first_model_forecast():
    """Smoothing (level, two cycles) and intervals together: a crash after every reading changes nothing, and
    the warm-up's one-step forecast (the smoothing's, not the model's) is not scored."""
    from models.smoothing import Smoothing
    from tests.model_helpers import random_intervals, random_weights

    smoothing = Smoothing((SEASON, 2 * SEASON), 0.2, (0.3, 0.1))
    features = FeatureSpec((), ScalerParams((), ()), calendar=True, one_step_error=True)
    weights = random_weights("lstm", 1, 6, features.size, HORIZON, seed=4)
    config = EngineConfig(SEASON, STEP, smoothing.warmup + 1, smoothing=smoothing)
    engine = Engine(weights, features, config, random_intervals(HORIZON, gamma=0.05, seed=2))
    series = shifted_stream(400, 200, factor=2.0, seed=5)
    state, restored = None, None
    for i, (timestamp, value) in enumerate(zip(series.timestamps.tolist(), series.values.tolist())):
        reading = Reading("s", timestamp, value)
        result = engine.step(state, reading)
        if i == smoothing.warmup:  # the first model forecast: no scored miss may have moved a log-scale yet
            assert result.state.interval_state[:8].tolist() == engine.intervals.initial_state()[:8].tolist()
        if restored is not None:
            again = engine.step(restored, reading)
            assert encode_state(again.state) == encode_state(result.state)
            if result.forecast is not None:
                np.testing.assert_array_equal(again.forecast.values, result.forecast.values)
                np.testing.assert_array_equal(again.forecast.lower, result.forecast.lower)
                np.testing.assert_array_equal(again.forecast.upper, result.forecast.upper)
        state = result.state
        restored = decode_state(encode_state(state))  # a crash after every reading
    assert state.level != 0.0 and np.any(state.interval_state[:8] != 0.0)  # both adapted
