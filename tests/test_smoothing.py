"""The smoothing recursion (models/smoothing.py): its legacy case, its hand-checkable steps, and that the
engine serves exactly what training computes."""

from __future__ import annotations

import numpy as np
import pytest

from models.engine import Engine, EngineConfig
from models.features import FeatureSpec
from models.reading import Reading
from models.scaling import ScalerParams, fit_stream_value_scaler
from models.sequences import Segment, segment_arrays
from models.smoothing import Smoothing, SmoothingKernel, fit_smoothing
from tests.model_helpers import random_weights


def test_seasonal_naive_smoothing_is_the_seasonal_naive_around_a_frozen_level():
    z = np.random.default_rng(0).normal(size=40)
    levels, base, errors = SmoothingKernel(Smoothing.seasonal_naive(8), horizon=10).run(z)
    assert np.all(levels == 0.0)
    for i, t in enumerate(range(8, 40)):
        # base[h-1] = z at t + h - 8 * ceil(h / 8)
        expected = [z[t + h - 8 * -(-h // 8)] for h in range(1, 11)]
        np.testing.assert_array_equal(base[i], expected)
        assert errors[i] == z[t] - z[t - 8]


def test_one_step_by_hand():
    smoothing = Smoothing((2, 4), alpha=0.5, gammas=(0.25, 0.5))
    kernel = SmoothingKernel(smoothing, horizon=3)
    warm = np.array([1.0, 3.0, 1.0, 7.0])
    ring = smoothing.initial_ring(warm)
    # day profile = mean over the two cycles: [1, 5]; week = what is left: [0, -2, 0, 2]
    np.testing.assert_array_equal(ring, [1.0, 5.0, 0.0, -2.0, 0.0, 2.0])
    level, new_ring, error = kernel.update(np.zeros(1), ring[None, :], np.array([3.0]))
    # prediction l + s1_{t-2} + s2_{t-4} = 0 + 1 + 0 = 1, error 2
    assert error[0] == 2.0 and level[0] == 1.0
    np.testing.assert_array_equal(new_ring[0], [5.0, 1.5, -2.0, 0.0, 2.0, 1.0])
    # base for h = 1..3: s1[(h-1) % 2] + s2[(h-1) % 4]
    np.testing.assert_array_equal(kernel.base(new_ring)[0], [5.0 - 2.0, 1.5 + 0.0, 5.0 + 2.0])


def test_seasons_must_divide_the_longest_and_come_with_one_gamma_each():
    with pytest.raises(ValueError, match="divide"):
        Smoothing((48, 100), 0.1, (0.1, 0.1))
    with pytest.raises(ValueError, match="one gamma per season"):
        Smoothing((48, 336), 0.1, (0.1,))


def test_fit_smoothing_prefers_adapting_to_a_level_shift():
    rng = np.random.default_rng(1)
    cycle = np.sin(np.arange(24) / 24 * 2 * np.pi)
    z = np.tile(cycle, 30) + 0.05 * rng.normal(size=720)
    z[360:] += 3.0  # a level shift the frozen seasonal naive only catches a day late
    chosen, info = fit_smoothing([z], (24,), horizon=6)
    naive = next(c for c in info["candidates"] if c["alpha"] == 0.0 and c["gamma"] == 1.0)
    assert info["mae"] < naive["mae"]
    assert (chosen.alpha, chosen.gammas[0]) != (0.0, 1.0)


@pytest.mark.parametrize(
    "smoothing", [Smoothing((4,), 0.2, (0.3,)), Smoothing((3, 6), 0.1, (0.4, 0.2))], ids=["one", "two"]
)
def test_the_engine_serves_what_training_computes(smoothing):
    """Per reading: the engine's features and base equal segment_arrays' rows (targets relative to the same level)."""
    horizon = 4
    spec = FeatureSpec(("c",), ScalerParams((1.0,), (2.0,)), calendar=True, one_step_error=True)
    weights = random_weights("lstm", 1, 5, spec.size, horizon, seed=2)
    engine = Engine(weights, spec, EngineConfig(smoothing.seasons[0], 60.0, smoothing.warmup + 1, smoothing=smoothing))
    rng = np.random.default_rng(3)
    n = 50
    timestamps = 1.6e9 + 60.0 * np.arange(n)
    values = 10 + np.sin(np.arange(n)) + rng.normal(size=n)
    covariates = rng.normal(size=(n, 1))
    rows = segment_arrays(
        Segment("s", timestamps, values, covariates), spec, smoothing.seasons[0], horizon, smoothing=smoothing
    )
    mean, scale = fit_stream_value_scaler(values[: smoothing.warmup])
    levels, _, _ = SmoothingKernel(smoothing, horizon).run((values - mean) / scale)
    state, flat = None, weights.zero_state(1)
    for i in range(n):
        result = engine.step(state, Reading("s", float(timestamps[i]), float(values[i]), (float(covariates[i, 0]),)))
        state = result.state
        if i < smoothing.warmup:
            assert result.forecast is None
            continue
        row = i - smoothing.warmup
        x = rows.inputs[row][None, :]
        head, flat = weights.step(x, flat)
        expected = rows.base[row] + head[0] + weights.skip(x, rows.base[row][None, :])[0] + levels[row]
        np.testing.assert_allclose(result.forecast.scaled, expected, atol=1e-12)
        assert state.level == pytest.approx(levels[row], abs=1e-15)
