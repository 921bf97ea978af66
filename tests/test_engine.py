"""The step engine's stream semantics, for every cell type (one contract, every implementation)."""

import numpy as np
import pytest

from models.engine import APPLIED, DUPLICATE, OUT_OF_ORDER
from models.reading import Reading
from models.state import decode_state, encode_state
from tests.model_helpers import readings, run, small_engine

CELLS = ["rnn", "lstm", "gru"]


@pytest.mark.parametrize("cell", CELLS)
def test_warm_up_then_one_forecast_per_reading(cell):
    engine = small_engine(cell, season=4, horizon=3)
    state, results = run(engine, readings(10))
    assert [r.forecast is not None for r in results] == [False] * 4 + [True] * 6
    forecast = results[-1].forecast
    assert forecast.values.shape == (3,)
    assert np.all(np.isfinite(forecast.values))
    assert forecast.readings_seen == 10
    np.testing.assert_allclose(forecast.target_timestamps, 540.0 + 60.0 * np.arange(1, 4))
    np.testing.assert_allclose(forecast.values, forecast.scaled * state.value_scale + state.value_mean)


@pytest.mark.parametrize("cell", CELLS)
def test_cold_start_state_shapes(cell):
    engine = small_engine(cell)
    state = engine.init_state()
    assert state.warming_up and state.readings_seen == 0
    assert state.cell_state.shape == (engine.weights.state_size,)
    assert engine.weights.state_size == 5 * (2 if cell == "lstm" else 1)


@pytest.mark.parametrize("cell", CELLS)
def test_state_round_trips_through_bytes_mid_stream(cell):
    engine = small_engine(cell)
    items = readings(20)
    _, uninterrupted = run(engine, items)
    state, _ = run(engine, items[:9])
    restored = decode_state(encode_state(state))
    assert restored == state
    _, resumed = run(engine, items[9:], restored)
    for a, b in zip(uninterrupted[9:], resumed):
        np.testing.assert_array_equal(a.forecast.values, b.forecast.values)


@pytest.mark.parametrize("cell", CELLS)
def test_non_finite_values_are_rejected(cell):
    engine = small_engine(cell)
    state, _ = run(engine, readings(6))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="non-finite"):
            engine.step(state, Reading("s", 1e6, bad, (0.0,)))


def test_duplicate_and_out_of_order_leave_state_untouched():
    engine = small_engine()
    state, _ = run(engine, readings(8))
    same = engine.step(state, Reading("s", state.last_timestamp, 99.0, (0.0,)))
    older = engine.step(state, Reading("s", state.last_timestamp - 120.0, 99.0, (0.0,)))
    assert same.outcome == DUPLICATE and same.state is state and same.forecast is None
    assert older.outcome == OUT_OF_ORDER and older.state is state and older.forecast is None


def test_short_gap_is_imputed_with_the_models_own_forecast():
    engine = small_engine(max_gap=2)
    items = readings(12)
    state, _ = run(engine, items[:8])
    predicted_next = state.one_step_forecast
    result = engine.step(state, items[10])  # steps 8 and 9 missing
    assert result.outcome == APPLIED and result.imputed_steps == 2 and not result.reset
    # Imputing step 8 with its one-step forecast is the same as receiving that value.
    manual = engine.step(state, Reading("s", items[8].timestamp, predicted_next, items[10].covariates)).state
    manual = engine.step(manual, Reading("s", items[9].timestamp, manual.one_step_forecast, items[10].covariates)).state
    expected = engine.step(manual, items[10])
    np.testing.assert_allclose(result.forecast.values, expected.forecast.values, rtol=0, atol=1e-12)
    assert result.state.readings_seen == 9  # imputed steps are not readings


def test_long_gap_resets_and_warms_up_again():
    engine = small_engine(season=4, max_gap=2)
    state, _ = run(engine, readings(8))
    result = engine.step(state, Reading("s", state.last_timestamp + 60.0 * 4, 5.0, (0.0,)))
    assert result.reset and result.forecast is None
    assert result.state.readings_seen == 1 and result.state.warming_up


def test_scaling_rule_makes_forecasts_equivariant_for_unseen_magnitudes():
    """A stream 1000x larger is served exactly like the original (per-stream scaling)."""
    engine = small_engine()
    items = readings(30)
    _, base = run(engine, items)
    big = [Reading("big", r.timestamp, 1000.0 * r.value, r.covariates) for r in items]
    _, scaled = run(engine, big)
    for a, b in zip(base, scaled):
        if a.forecast is not None:
            np.testing.assert_allclose(b.forecast.values, 1000.0 * a.forecast.values, rtol=1e-9)
            np.testing.assert_allclose(b.forecast.scaled, a.forecast.scaled, atol=1e-9)
