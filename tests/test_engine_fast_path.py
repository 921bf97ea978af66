"""The engine's fast paths are bit-identical to the batch path they replace: one stream, and a batch in place."""

import dataclasses

import numpy as np
import pytest

from models.cells import step_stack, step_stack_many, step_stack_one
from models.engine import Engine, EngineConfig
from models.features import FeatureSpec, InputColumnsBuilder, InputRowBuilder, input_matrix, input_vector
from models.reading import Reading
from models.scaling import ScalerParams
from models.state import StreamState, encode_state, serving_state
from tests.model_helpers import random_weights, readings

CELLS = ["rnn", "lstm", "gru"]


class BatchOnly:
    """A network that only has the batch methods of the ``Network`` protocol (as the variants)."""

    def __init__(self, network):
        self._network = network
        self.horizon = network.horizon
        self.state_size = network.state_size

    def zero_state(self, batch=1):
        return self._network.zero_state(batch)

    def step(self, x, flat_state):
        return self._network.step(x, flat_state)

    def skip(self, x, base):
        return self._network.skip(x, base)

    def to_arrays(self):
        return self._network.to_arrays()


def spec(covariates=2, calendar=True):
    return FeatureSpec(
        covariate_names=tuple(f"c{i}" for i in range(covariates)),
        covariate_scaler=ScalerParams(mean=(1.5, -0.25)[:covariates], scale=(2.0, 0.3)[:covariates]),
        calendar=calendar,
    )


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_step_one_is_bit_identical_to_a_batch_of_one(cell, layers):
    weights = random_weights(cell, layers, 6, 7, 5, seed=layers)
    rng = np.random.default_rng(3)
    state = rng.normal(size=weights.state_size)
    for _ in range(20):
        x = rng.normal(size=7)
        head, new_state = weights.step_one(x, state)
        batch_head, batch_state = weights.step(x[np.newaxis], state[np.newaxis])
        np.testing.assert_array_equal(head, batch_head[0])
        np.testing.assert_array_equal(new_state, batch_state[0])
        out, stack_state = step_stack_one(weights.layers, x, state)
        batch_out, _ = step_stack(weights.layers, x[np.newaxis], state[np.newaxis])
        np.testing.assert_array_equal(out, batch_out[0])
        np.testing.assert_array_equal(stack_state, new_state)
        base = rng.normal(size=5)
        np.testing.assert_array_equal(weights.skip_one(x, base), weights.skip(x[np.newaxis], base[np.newaxis])[0])
        assert not np.shares_memory(new_state, state)
        state = new_state


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("units", [6, 64])
def test_step_many_is_bit_identical_to_the_batch_step(cell, layers, units):
    weights = random_weights(cell, layers, units, 7, 5, seed=layers)
    rng = np.random.default_rng(units)
    for n in (1, 2, 3, 8, 17, 64):
        state = rng.normal(size=(n, weights.state_size))
        for _ in range(4):
            x = rng.normal(scale=2.0, size=(n, 7))
            head, new_state = weights.step_many(x, state)
            batch_head, batch_state = weights.step(x, state)
            np.testing.assert_array_equal(head, batch_head)
            np.testing.assert_array_equal(new_state, batch_state)
            out, stack_state = step_stack_many(weights.layers, x, state)
            batch_out, _ = step_stack(weights.layers, x, state)
            np.testing.assert_array_equal(out, batch_out)
            np.testing.assert_array_equal(stack_state, new_state)
            base = rng.normal(size=(n, 5))
            np.testing.assert_array_equal(weights.skip_many(x, base), weights.skip(x, base))
            assert not np.shares_memory(new_state, state) and not np.shares_memory(head, new_state)
            state = new_state


def test_step_many_rejects_a_state_of_another_width():
    weights = random_weights("lstm", 2, 4, 3, 2)
    x, state = np.zeros((5, 3)), np.zeros((5, weights.state_size))
    for wrong in (state[:, :-1], np.zeros((5, weights.state_size + 1)), state[0]):
        with pytest.raises(ValueError, match="flat state"):
            weights.step_many(x, wrong)


@pytest.mark.parametrize("covariates,calendar", [(2, True), (0, True), (1, False)])
def test_batch_input_rows_equal_input_matrix_and_the_per_reading_rows(covariates, calendar):
    features = spec(covariates, calendar)
    rng = np.random.default_rng(covariates)
    timestamps = np.array([0.0, 1_400_000_123.5, -86_400.0 * 3 - 17.0, *rng.uniform(0, 2e9, size=60)])
    n = len(timestamps)
    values, means, scales = rng.normal(size=n), rng.normal(size=n), rng.uniform(0.1, 3.0, size=n)
    covs = rng.normal(size=(n, covariates))
    columns = np.vstack([values, timestamps, means, scales, covs.T])  # [4 + C, n], as Engine.step_many builds it
    rows = InputColumnsBuilder(features)(columns)
    assert rows.shape == (features.size, n)
    np.testing.assert_array_equal(rows.T, input_matrix(features, (values - means) / scales, covs, timestamps))
    build = InputRowBuilder(features)
    for k in range(n):
        value = (float(values[k]) - float(means[k])) / float(scales[k])
        np.testing.assert_array_equal(rows[:, k], build(value, tuple(covs[k].tolist()), float(timestamps[k])))


@pytest.mark.parametrize("covariates,calendar", [(2, True), (0, True), (1, False)])
def test_input_row_equals_input_vector(covariates, calendar):
    features = spec(covariates, calendar)
    build = InputRowBuilder(features)
    rng = np.random.default_rng(0)
    for timestamp in [0.0, 1_400_000_123.5, -86_400.0 * 3 - 17.0, *rng.uniform(0, 2e9, size=50)]:
        covs = tuple(rng.normal(size=covariates))
        value = float(rng.normal())
        np.testing.assert_array_equal(
            build(value, covs, timestamp), input_vector(features, value, np.asarray(covs), timestamp)
        )


def test_input_row_rejects_a_wrong_covariate_count():
    with pytest.raises(ValueError, match="covariates"):
        InputRowBuilder(spec(2))(0.0, (1.0,), 0.0)


def test_serving_state_equals_the_keyword_constructor():
    args = dict(
        readings_seen=7,
        last_timestamp=60.0,
        value_mean=1.0,
        value_scale=2.0,
        ring=np.arange(3.0),
        ring_fill=3,
        cell_state=np.ones(4),
        one_step_forecast=0.5,
    )
    fast, slow = serving_state(**args), StreamState(**args)
    assert vars(fast).keys() == {f.name for f in dataclasses.fields(StreamState)}
    assert all(vars(fast)[k] is vars(slow)[k] for k in ("ring", "cell_state"))
    assert encode_state(fast) == encode_state(slow) and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.readings_seen = 8  # type: ignore[misc]
    assert dataclasses.replace(fast, source_offset=3).source_offset == 3


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("season,horizon", [(4, 3), (3, 7)])
def test_engine_fast_path_equals_the_batch_path(cell, season, horizon):
    features = spec(1)
    weights = random_weights(cell, 2, 5, features.size, horizon, seed=1)
    config = EngineConfig(season=season, step_seconds=60.0, min_history=season + 1, max_gap=2)
    fast, batch = Engine(weights, features, config), Engine(BatchOnly(weights), features, config)
    items = readings(60)
    # gaps (imputed and reset), a duplicate and an out-of-order reading
    items = items[:12] + items[14:20] + [items[19], items[17]] + items[25:40] + items[44:]
    fast_state = batch_state = None
    for reading in items:
        a, b = fast.step(fast_state, reading), batch.step(batch_state, reading)
        assert (a.outcome, a.imputed_steps, a.reset) == (b.outcome, b.imputed_steps, b.reset)
        assert encode_state(a.state) == encode_state(b.state)
        assert (a.forecast is None) == (b.forecast is None)
        if a.forecast is not None:
            np.testing.assert_array_equal(a.forecast.values, b.forecast.values)
            np.testing.assert_array_equal(a.forecast.scaled, b.forecast.scaled)
            assert a.forecast.readings_seen == b.forecast.readings_seen
        fast_state, batch_state = a.state, b.state


def test_applied_step_result_is_a_normal_frozen_result():
    features = spec(1)
    engine = Engine(random_weights("lstm", 1, 5, features.size, 3), features, EngineConfig(4, 60.0, 5))
    state = None
    for reading in readings(6):
        result = engine.step(state, reading)
        state = result.state
    assert vars(result).keys() == {f.name for f in dataclasses.fields(result)}
    assert (result.outcome, result.imputed_steps, result.reset) == ("applied", 0, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.reset = True  # type: ignore[misc]
    with pytest.raises(ValueError, match="covariates"):
        engine.step(state, Reading("s", 360.0, 1.0, (0.0, 1.0)))
