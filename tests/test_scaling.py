import numpy as np

from models.features import FeatureSpec, calendar_features, input_matrix, input_vector
from models.scaling import ScalerParams, fit_scaler, fit_stream_value_scaler


def test_scaler_round_trip_and_json():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(100, 2))
    params = fit_scaler(x)
    np.testing.assert_allclose(params.inverse(params.transform(x)), x)
    assert ScalerParams.from_json(params.to_json()) == params
    np.testing.assert_allclose(params.transform(x).mean(axis=0), 0.0, atol=1e-12)


def test_constant_stream_gets_a_usable_scale():
    mean, scale = fit_stream_value_scaler(np.full(48, 5.0))
    assert mean == 5.0 and scale > 0


def test_calendar_features_known_instants():
    # 2014-01-06T06:00:00Z is a Monday, a quarter into the day.
    monday_six = 1388988000.0
    tod_sin, tod_cos, dow_sin, dow_cos = calendar_features(np.array([monday_six]))[0]
    assert abs(tod_sin - 1.0) < 1e-12 and abs(tod_cos) < 1e-12
    angle = 2 * np.pi * (0.25 / 7)
    assert abs(dow_sin - np.sin(angle)) < 1e-12 and abs(dow_cos - np.cos(angle)) < 1e-12


def test_vector_equals_matrix_row():
    spec = FeatureSpec(("t",), ScalerParams((20.0,), (5.0,)), True)
    ts = np.array([1.4e9, 1.4e9 + 1800])
    matrix = input_matrix(spec, np.array([0.5, -0.5]), np.array([[25.0], [15.0]]), ts)
    np.testing.assert_array_equal(input_vector(spec, -0.5, np.array([15.0]), ts[1]), matrix[1])
    assert spec.names == ("value", "t", "time_of_day_sin", "time_of_day_cos", "day_of_week_sin", "day_of_week_cos")
