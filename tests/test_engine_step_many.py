"""``Engine.step_many`` is ``Engine.step`` for many streams at once: same results, reading for reading."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.engine import APPLIED, MIN_BATCH, Engine, EngineConfig, StepResult
from models.features import FeatureSpec
from models.reading import Reading
from models.scaling import ScalerParams
from models.smoothing import Smoothing
from models.state import StreamState
from tests.model_helpers import VARIANTS, random_weights, small_variant_engine

STEP = 60.0
MAX_GAP = 2
START = 1_400_000_000.0
TOLERANCE = dict(rtol=1e-12, atol=1e-12)
# What a stream's next reading is, relative to its last one (every branch of Engine.step).
STEADY_EVENTS = ("next", "early", "jitter")  # missing steps round to 0: the batched path when warmed up
EVENTS = (
    *STEADY_EVENTS,
    "next",
    "next",
    "next",
    "half_step",
    "short_gap",
    "long_gap",
    "duplicate",
    "out_of_order",
    "nan_value",
    "inf_timestamp",
    "bad_covariates",
    "absent",
)


def plain_engine(
    cell: str,
    layers: int = 1,
    season: int = 4,
    horizon: int = 3,
    covariates: int = 1,
    calendar: bool = True,
    smoothing: Smoothing | None = None,
) -> Engine:
    """A plain stack; ``min_history`` one past the warm-up, so that a steady step can be forecast-less."""
    features = FeatureSpec(
        covariate_names=tuple(f"c{i}" for i in range(covariates)),
        covariate_scaler=ScalerParams(mean=(0.5, -1.0)[:covariates], scale=(2.0, 0.5)[:covariates]),
        calendar=calendar,
        one_step_error=smoothing is not None,
    )
    weights = random_weights(cell, layers, 5, features.size, horizon, seed=layers)
    warmup = smoothing.warmup if smoothing is not None else season
    config = EngineConfig(
        season=season, step_seconds=STEP, min_history=warmup + 2, max_gap=MAX_GAP, smoothing=smoothing
    )
    return Engine(weights, features, config)


def reading_for(
    stream_id: str, state: StreamState | None, event: str, round_index: int, rng, covariates: int = 1
) -> Reading:
    """The reading ``event`` describes for a stream whose state is ``state``."""
    last = state.last_timestamp if state is not None and state.readings_seen > 0 else START + round_index * STEP
    timestamp = {
        "next": last + STEP,
        "early": last + 0.4 * STEP,
        "jitter": last + 1.4 * STEP,
        "half_step": last + 1.5 * STEP,  # round(1.5) = 2: one missing step
        "short_gap": last + (1 + MAX_GAP) * STEP,
        "long_gap": last + (2 + MAX_GAP) * STEP,
        "duplicate": last,
        "out_of_order": last - STEP,
        "inf_timestamp": math.inf,
    }.get(event, last + STEP)
    value = 10.0 + math.sin(timestamp / 600.0) + 0.1 * float(rng.normal()) if math.isfinite(timestamp) else 1.0
    values = tuple(rng.normal(size=covariates + (event == "bad_covariates")).tolist())
    if event == "nan_value":
        value = math.nan
    return Reading(stream_id, timestamp, value, values)


def step_or_error(engine: Engine, state: StreamState | None, reading: Reading) -> StepResult | Exception:
    try:
        return engine.step(state, reading)
    except Exception as err:
        return err


def assert_close(got, expected, what: str) -> None:
    assert type(got) is type(expected), what
    if isinstance(expected, (float, np.ndarray)):
        assert np.shape(got) == np.shape(expected), what
        np.testing.assert_allclose(got, expected, err_msg=what, **TOLERANCE)
    else:
        assert got == expected, what


def assert_same(got: StepResult | Exception, expected: StepResult | Exception) -> None:
    """``got`` is ``expected`` in every field, floats within 1e-12; an exception of the same type and message."""
    if isinstance(expected, Exception):
        assert type(got) is type(expected) and str(got) == str(expected)
        return
    assert isinstance(got, StepResult)
    assert (got.outcome, got.imputed_steps, got.reset) == (expected.outcome, expected.imputed_steps, expected.reset)
    for field in dataclasses.fields(StreamState):
        assert_close(getattr(got.state, field.name), getattr(expected.state, field.name), f"state.{field.name}")
    assert (got.forecast is None) == (expected.forecast is None)
    if expected.forecast is not None:
        for field in dataclasses.fields(expected.forecast):
            assert_close(
                getattr(got.forecast, field.name), getattr(expected.forecast, field.name), f"forecast.{field.name}"
            )


def what_happened(result: StepResult | Exception) -> str:
    if isinstance(result, Exception):
        return "error"
    if result.outcome != APPLIED:
        return result.outcome
    if result.reset:
        return "reset"
    if result.imputed_steps:
        return "imputed"
    return "forecast" if result.forecast is not None else "no_forecast"


def play(engine: Engine, rounds: list[list[str]], seed: int = 0) -> Counter:
    """Steps one world with ``step_many`` and one with ``step``, stream ``k`` getting ``rounds[r][k]`` in round r.

    Asserts that both worlds agree after every round; returns how often each branch was taken.
    """
    rng = np.random.default_rng(seed)
    streams = len(rounds[0])
    many: list[StreamState | None] = [None] * streams
    sequential: list[StreamState | None] = [None] * streams
    seen: Counter = Counter()
    for round_index, events in enumerate(rounds):
        present = [k for k in rng.permutation(streams).tolist() if events[k] != "absent"]
        covariates = len(engine.features.covariate_names)
        readings = [reading_for(f"s{k}", many[k], events[k], round_index, rng, covariates) for k in present]
        results = engine.step_many([many[k] for k in present], readings)
        assert len(results) == len(readings)
        for k, reading, result in zip(present, readings, results):
            expected = step_or_error(engine, sequential[k], reading)
            assert_same(result, expected)
            seen[what_happened(expected)] += 1
            if isinstance(result, StepResult):
                many[k], sequential[k] = result.state, expected.state
    return seen


def random_rounds(streams: int, count: int, seed: int) -> list[list[str]]:
    return np.random.default_rng(seed).choice(EVENTS, size=(count, streams)).tolist()


ALL_BRANCHES = {"forecast", "no_forecast", "imputed", "reset", "duplicate", "out_of_order", "error"}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("season,horizon", [(4, 3), (3, 5)])
def test_step_many_equals_step_over_many_mixed_rounds(cell, layers, season, horizon):
    seen = play(plain_engine(cell, layers, season, horizon), random_rounds(16, 80, seed=layers), seed=layers)
    assert ALL_BRANCHES <= set(seen)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(
    "smoothing", [Smoothing((4,), 0.3, (0.2,)), Smoothing((2, 6), 0.1, (0.5, 0.25))], ids=["one_cycle", "two_cycles"]
)
def test_step_many_equals_step_with_smoothing(cell, smoothing):
    engine = plain_engine(cell, season=smoothing.seasons[0], horizon=5, smoothing=smoothing)
    seen = play(engine, random_rounds(12, 60, seed=5), seed=5)
    assert ALL_BRANCHES <= set(seen)


@pytest.mark.parametrize("covariates,calendar", [(0, True), (2, False)])
def test_step_many_equals_step_for_other_feature_sets(covariates, calendar):
    engine = plain_engine("lstm", covariates=covariates, calendar=calendar)
    assert ALL_BRANCHES <= set(play(engine, random_rounds(10, 50, seed=3), seed=3))


@pytest.mark.parametrize("variant", VARIANTS)
def test_step_many_equals_step_for_the_variants(variant):
    seen = play(small_variant_engine(variant, max_gap=MAX_GAP), random_rounds(12, 60, seed=7), seed=7)
    assert ALL_BRANCHES <= set(seen)


ENGINE = plain_engine("lstm", 2)


@settings(max_examples=40, deadline=None)
@given(
    rounds=st.integers(1, 6).flatmap(
        lambda streams: st.lists(
            st.lists(st.sampled_from(EVENTS), min_size=streams, max_size=streams), min_size=1, max_size=25
        )
    ),
    seed=st.integers(0, 2**16),
)
def test_step_many_equals_step_for_any_schedule(rounds, seed):
    play(ENGINE, rounds, seed)


class RecordingNetwork:
    """A real network that records the batch size of every ``step`` (it has no single-stream methods)."""

    def __init__(self, network):
        self._network = network
        self.horizon = network.horizon
        self.state_size = network.state_size
        self.batch_sizes: list[int] = []

    def zero_state(self, batch=1):
        return self._network.zero_state(batch)

    def step(self, x, flat_state):
        self.batch_sizes.append(x.shape[0])
        return self._network.step(x, flat_state)

    def skip(self, x, base):
        return self._network.skip(x, base)

    def to_arrays(self):
        return self._network.to_arrays()


def warmed_up(engine: Engine, streams: int, readings: int, covariates: int = 1) -> list[StreamState]:
    rng = np.random.default_rng(0)
    states = []
    for k in range(streams):
        state = None
        for i in range(readings):
            state = engine.step(state, reading_for(f"s{k}", state, "next", i, rng, covariates)).state
        states.append(state)
    return states


class RecordingFastNetwork(RecordingNetwork):
    """A :class:`RecordingNetwork` with the in-place batch methods of a plain stack, recorded as ``("many", n)``."""

    def step_many(self, x, flat_state):
        self.batch_sizes.append(("many", x.shape[0]))
        return self._network.step_many(x, flat_state)

    def skip_many(self, x, base):
        return self._network.skip_many(x, base)


def recording(engine: Engine, network_type: type = RecordingNetwork) -> tuple[Engine, RecordingNetwork]:
    network = network_type(engine.weights)
    return Engine(network, engine.features, engine.config), network


ENGINES = {
    "gru": lambda: plain_engine("gru"),
    "lstm_no_covariates": lambda: plain_engine("lstm", covariates=0),
    "rnn_no_calendar": lambda: plain_engine("rnn", covariates=2, calendar=False),
    **{variant: lambda variant=variant: small_variant_engine(variant, max_gap=MAX_GAP) for variant in VARIANTS},
}


@pytest.mark.parametrize("make_engine", ENGINES.values(), ids=ENGINES.keys())
def test_steady_readings_share_one_batched_step_and_the_rest_go_one_by_one(make_engine):
    engine, network = recording(make_engine())
    covariates = len(engine.features.covariate_names)
    events = ["next", "duplicate", "early", "short_gap", "nan_value", "jitter", "long_gap", "next", "bad_covariates"]
    states = warmed_up(engine, len(events), engine.config.min_history, covariates)
    rng = np.random.default_rng(1)
    readings = [
        reading_for(f"s{k}", state, event, 0, rng, covariates) for k, (state, event) in enumerate(zip(states, events))
    ]
    network.batch_sizes.clear()
    results = engine.step_many(states, readings)
    steady = sum(event in STEADY_EVENTS for event in events)
    assert steady >= MIN_BATCH
    # the batch, then one step of one per imputed step and per applied non-steady reading
    assert network.batch_sizes == [steady, 1, 1, 1]
    for state, reading, result in zip(states, readings, results):
        assert_same(result, step_or_error(engine, state, reading))
    assert [type(result).__name__ for result in results].count("ValueError") == 2


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_plain_stack_steps_the_batch_in_place(cell):
    engine, network = recording(plain_engine(cell, layers=2), RecordingFastNetwork)
    states = warmed_up(engine, 7, engine.config.min_history)
    readings = [reading_for(f"s{k}", state, "next", 0, np.random.default_rng(k)) for k, state in enumerate(states)]
    network.batch_sizes.clear()
    results = engine.step_many(states, readings)
    assert network.batch_sizes == [("many", 7)]
    for state, reading, result in zip(states, readings, results):
        assert_same(result, engine.step(state, reading))


def test_fewer_steady_readings_than_min_batch_go_one_by_one():
    engine, network = recording(plain_engine("lstm"))
    states = warmed_up(engine, MIN_BATCH - 1, engine.config.min_history)
    readings = [reading_for(f"s{k}", state, "next", 0, np.random.default_rng(k)) for k, state in enumerate(states)]
    network.batch_sizes.clear()
    results = engine.step_many(states, readings)
    assert network.batch_sizes == [1] * (MIN_BATCH - 1)
    for state, reading, result in zip(states, readings, results):
        assert_same(result, engine.step(state, reading))


def test_every_result_owns_its_arrays():
    engine = plain_engine("lstm")
    states = warmed_up(engine, 6, engine.config.min_history)
    readings = [reading_for(f"s{k}", state, "next", 0, np.random.default_rng(k)) for k, state in enumerate(states)]
    results = engine.step_many(states, readings)
    arrays = [a for r in results for a in (r.state.ring, r.state.cell_state, r.forecast.values, r.forecast.scaled)]
    arrays += [a for s in states for a in (s.ring, s.cell_state)]
    for i, a in enumerate(arrays):
        assert a.base is None
        assert not any(np.shares_memory(a, b) for b in arrays[i + 1 :])


@pytest.mark.parametrize(
    "corrupt,error",
    [
        (lambda state: dataclasses.replace(state, cell_state=state.cell_state[:-3]), ValueError),  # a smaller model's
        (lambda state: dataclasses.replace(state, value_scale=0.0), ZeroDivisionError),  # bytes no engine wrote
    ],
    ids=["other_model", "zero_scale"],
)
def test_a_state_step_rejects_fails_alone_in_a_steady_batch(corrupt, error):
    engine, network = recording(plain_engine("lstm"))
    states = warmed_up(engine, 6, engine.config.min_history)
    states[2] = corrupt(states[2])
    readings = [reading_for(f"s{k}", state, "next", 0, np.random.default_rng(k)) for k, state in enumerate(states)]
    network.batch_sizes.clear()
    results = engine.step_many(states, readings)
    assert network.batch_sizes[0] == 5  # the other five still share one batched step
    with pytest.raises(error):
        engine.step(states[2], readings[2])
    assert isinstance(results[2], error)
    for state, reading, result in zip(states, readings, results):
        assert_same(result, step_or_error(engine, state, reading))


def test_a_value_that_is_not_a_number_fails_alone_at_its_index():
    engine = plain_engine("gru")
    states = warmed_up(engine, 5, engine.config.min_history)
    readings = [reading_for(f"s{k}", state, "next", 0, np.random.default_rng(k)) for k, state in enumerate(states)]
    readings[1] = dataclasses.replace(readings[1], value="12.5")  # type: ignore[arg-type]
    results = engine.step_many(states, readings)
    assert isinstance(results[1], TypeError)
    for state, reading, result in zip(states, readings, results):
        assert_same(result, step_or_error(engine, state, reading))


def test_states_that_are_not_float64_are_stepped_as_step_steps_them():
    engine = plain_engine("lstm")
    states = [
        dataclasses.replace(state, ring=state.ring.astype(np.float32), cell_state=state.cell_state.astype(np.float32))
        for state in warmed_up(engine, 5, engine.config.min_history)
    ]
    readings = [reading_for(f"s{k}", state, "next", 0, np.random.default_rng(k)) for k, state in enumerate(states)]
    for state, reading, result in zip(states, readings, engine.step_many(states, readings)):
        expected = engine.step(state, reading)
        assert result.state.ring.dtype == expected.state.ring.dtype == np.float32
        assert_same(result, expected)


def test_a_repeated_stream_is_rejected():
    engine = plain_engine("rnn")
    rng = np.random.default_rng(0)
    readings = [
        reading_for("a", None, "next", 0, rng),
        reading_for("b", None, "next", 0, rng),
        reading_for("a", None, "next", 1, rng),
    ]
    with pytest.raises(ValueError, match="distinct streams"):
        engine.step_many([None] * 3, readings)
    with pytest.raises(ValueError, match="2 states for 3 readings"):
        engine.step_many([None] * 2, readings)


def test_no_readings_no_results():
    assert plain_engine("gru").step_many([], []) == []


@pytest.mark.parametrize("cell,season,horizon", [("lstm", 4, 3), ("gru", 3, 5), ("rnn", 4, 9)])
def test_step_many_equals_step_with_prediction_intervals(cell, season, horizon):
    """Interval bounds and the adaptation state (log-scales, pending anchor forecasts) batch like the rest."""
    from tests.model_helpers import random_intervals

    plain = plain_engine(cell, 1, season, horizon)
    engine = Engine(plain.weights, plain.features, plain.config, random_intervals(horizon))
    seen = play(engine, random_rounds(16, 80, seed=5), seed=5)
    assert ALL_BRANCHES <= set(seen)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(
    "smoothing", [Smoothing((4,), 0.3, (0.2,)), Smoothing((2, 6), 0.1, (0.5, 0.25))], ids=["one_cycle", "two_cycles"]
)
def test_step_many_equals_step_with_smoothing_and_prediction_intervals(cell, smoothing):
    """Both per-stream adaptations at once: level, seasonal components, log-scales and pending forecasts."""
    from tests.model_helpers import random_intervals

    plain = plain_engine(cell, season=smoothing.seasons[0], horizon=5, smoothing=smoothing)
    engine = Engine(plain.weights, plain.features, plain.config, random_intervals(5))
    seen = play(engine, random_rounds(12, 80, seed=9), seed=9)
    assert ALL_BRANCHES <= set(seen)
