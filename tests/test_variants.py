"""The variant forecasters (seq2seq, attention, birnn): numpy equals Keras, serving equals training.

One contract, every variant: Keras parity on a random sequence (<= 1e-5), the training graph equals
the saved graph on the rows it scores, safe-mode save/load, the engine's stream semantics with the
state round-tripping through its byte coding, and, after real training, the served stream equal to
the trained Keras model.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.engine import APPLIED
from models.features import calendar_features
from models.networks import NETWORK_TYPES, VARIANT_TYPES, network_from_arrays, network_hyperparameters
from models.reading import Reading
from models.scaling import fit_stream_value_scaler
from models.smoothing import SmoothingKernel
from models.state import decode_state, encode_state
from tests.model_helpers import VARIANTS, random_variant, readings, run, small_variant_engine

ROOT = Path(__file__).resolve().parent.parent
STEPS = 520  # as tests/test_parity.py
FAST = ["--units", "8", "--epochs", "2", "--seed", "3"]

# (variant, encoder cell, layers, calendar)
KERAS_CASES = [
    ("seq2seq", "lstm", 1, True),
    ("seq2seq", "gru", 2, True),
    ("seq2seq", "rnn", 1, False),
    ("attention", "lstm", 1, True),
    ("attention", "gru", 2, True),
    ("attention", "rnn", 1, True),
    ("birnn", "lstm", 1, True),
    ("birnn", "gru", 2, True),
    ("birnn", "rnn", 1, False),
]


def _case_id(case):
    variant, cell, layers, calendar = case
    return f"{variant}-{cell}-{layers}layer{'' if calendar else '-nocalendar'}"


def _random_keras_variant(variant, cell, layers, calendar, scored_from=0, seed=0):
    keras = pytest.importorskip("keras")
    from models.keras_variants import build_variant, resolve_spec

    n_features, horizon = (7 if calendar else 3), 6
    spec = resolve_spec(variant, season=5, step_seconds=1800.0, units=12, calendar=calendar, encoder_cell=cell)
    keras.utils.set_random_seed(seed)
    serving, training = build_variant(spec, layers, 12, n_features, horizon, scored_from=scored_from)
    rng = np.random.default_rng(seed)
    # Head, skip and readout start at zero (training starts from the baseline); give every weight a value.
    for weight in serving.weights:
        weight.assign(rng.normal(scale=0.3, size=weight.shape).astype("float32"))
    x = rng.normal(size=(2, STEPS, n_features)).astype("float32")
    if calendar:
        angles = rng.uniform(0, 2 * np.pi, size=(2, STEPS, 2))
        x[..., -4:] = np.stack(
            [np.sin(angles[..., 0]), np.cos(angles[..., 0]), np.sin(angles[..., 1]), np.cos(angles[..., 1])], -1
        )
    base = rng.normal(size=(2, STEPS, horizon)).astype("float32")
    return spec, serving, training, x, base


def _serve_sequence(network, x, base):
    state = network.zero_state(x.shape[0])
    out = np.empty(base.shape, dtype=np.float64)
    for t in range(x.shape[1]):
        step_x = x[:, t, :].astype(np.float64)
        step_base = base[:, t, :].astype(np.float64)
        head, state = network.step(step_x, state)
        out[:, t] = step_base + head + network.skip(step_x, step_base)
    return out


@pytest.mark.parametrize("case", KERAS_CASES, ids=_case_id)
def test_numpy_variant_matches_keras_predict(case):
    from models.keras_variants import extract_variant

    spec, serving, _, x, base = _random_keras_variant(*case)
    expected = serving.predict([x, base], verbose=0)
    network = extract_variant(serving, spec)
    # Through the artifact path: arrays + manifest hyperparameters -> the registry's loader.
    network = network_from_arrays(spec.cell, network.to_arrays(), json.loads(json.dumps(spec.manifest())))
    assert np.max(np.abs(_serve_sequence(network, x, base) - expected)) <= 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_graph_equals_serving_graph_on_scored_rows(variant):
    _, serving, training, x, base = _random_keras_variant(variant, "lstm", 1, True, scored_from=37)
    full = serving.predict([x, base], verbose=0)
    scored = training.predict([x, base[:, 37:]], verbose=0)
    assert scored.shape == full[:, 37:].shape
    np.testing.assert_allclose(scored, full[:, 37:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_saves_and_loads_in_safe_mode(variant, tmp_path):
    keras = pytest.importorskip("keras")
    import zipfile

    _, serving, _, x, base = _random_keras_variant(variant, "gru", 2, True)
    path = tmp_path / "model.keras"
    serving.save(path)
    assert "Lambda" not in zipfile.ZipFile(path).read("config.json").decode()
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(loaded.predict([x, base], verbose=0), serving.predict([x, base], verbose=0))


def test_registry_covers_every_cell():
    assert NETWORK_TYPES == ("rnn", "lstm", "gru", "seq2seq", "attention", "birnn")
    assert VARIANT_TYPES == VARIANTS
    with pytest.raises(ValueError, match="unknown cell"):
        network_from_arrays("transformer", {}, {})


@pytest.mark.parametrize("variant", VARIANTS)
def test_arrays_round_trip_through_the_registry(variant):
    network = random_variant(variant, 7, 3)
    hyper = network_hyperparameters(network)
    back = network_from_arrays(variant, network.to_arrays(), hyper)
    assert network_hyperparameters(back) == hyper
    x = np.random.default_rng(1).normal(size=(2, 7))
    state = np.random.default_rng(2).normal(size=(2, network.state_size))
    for a, b in zip(network.step(x, state), back.step(x, state)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="missing"):
        network_from_arrays(variant, network.to_arrays(), {})


def test_seq2seq_target_calendar_is_the_calendar_of_the_target_times():
    from models.variants.seq2seq import calendar_rotation, future_calendars

    step, horizon = 1800.0, 96
    origins = 1.3e9 + 977.0 * np.arange(50)
    targets = future_calendars(calendar_features(origins), calendar_rotation(horizon, step))
    assert targets.shape == (50, horizon, 4)
    for h in range(horizon):
        np.testing.assert_allclose(targets[:, h], calendar_features(origins + (h + 1) * step), atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_projected_steps_equal_the_plain_cells(cell):
    from models.cells import step_stack
    from models.variants.sequence import run_stack
    from tests.model_helpers import random_weights

    layers = random_weights(cell, 2, 5, 7, 3).layers
    xs = np.random.default_rng(4).normal(size=(3, 11, 7))
    state = np.zeros((3, sum(layer.units * layer.state_count for layer in layers)))
    for k in range(11):
        out, state = step_stack(layers, xs[:, k], state)
    np.testing.assert_allclose(run_stack(layers, xs), out, rtol=0, atol=1e-13)


def test_attention_state_holds_the_last_w_encoder_outputs():
    from models.cells import step_stack

    network = random_variant("attention", 7, 3, window=4)
    rng = np.random.default_rng(0)
    state = network.zero_state(1)
    outputs = []
    for _ in range(6):
        x = rng.normal(size=(1, 7))
        hidden, _ = step_stack(network.encoder, x, state[:, : network.encoder_state_size])
        outputs.append(hidden[0])
        _, state = network.step(x, state)
    memory = state[0, network.encoder_state_size :].reshape(4, network.units)
    np.testing.assert_array_equal(memory, np.array(outputs[-4:]))


def test_birnn_state_holds_the_last_l_inputs_and_the_backward_pass_reads_them_newest_first():
    network = random_variant("birnn", 7, 3, window=4)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(6, 7))
    state = network.zero_state(1)
    for x in xs:
        _, state = network.step(x[None], state)
    window = state[0, network.forward_state_size :].reshape(4, 7)
    np.testing.assert_array_equal(window, xs[-4:])
    # Reversing the window changes the backward summary: direction matters.
    assert not np.allclose(network.backward_summary(window[None]), network.backward_summary(window[::-1][None]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_warm_up_then_one_forecast_per_reading(variant):
    engine = small_variant_engine(variant, season=4, horizon=3)
    state, results = run(engine, readings(10))
    assert [r.forecast is not None for r in results] == [False] * 4 + [True] * 6
    forecast = results[-1].forecast
    assert forecast.values.shape == (3,) and np.all(np.isfinite(forecast.values))
    np.testing.assert_allclose(forecast.values, forecast.scaled * state.value_scale + state.value_mean)


@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_cold_start_state_size(variant):
    engine = small_variant_engine(variant, window=4)
    state = engine.init_state()
    assert state.cell_state.shape == (engine.weights.state_size,) and not state.cell_state.any()
    expected = {"seq2seq": 10, "attention": 10 + 4 * 5, "birnn": 10 + 4 * engine.features.size}[variant]
    assert engine.weights.state_size == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_state_round_trips_through_bytes_mid_stream(variant):
    engine = small_variant_engine(variant)
    items = readings(20)
    _, uninterrupted = run(engine, items)
    state, _ = run(engine, items[:9])
    data = encode_state(state)
    assert len(data) == len(encode_state(engine.init_state()))
    restored = decode_state(data)
    assert restored == state
    _, resumed = run(engine, items[9:], restored)
    for a, b in zip(uninterrupted[9:], resumed):
        np.testing.assert_array_equal(a.forecast.values, b.forecast.values)


@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_rejects_non_finite_values(variant):
    engine = small_variant_engine(variant)
    state, _ = run(engine, readings(6))
    with pytest.raises(ValueError, match="non-finite"):
        engine.step(state, Reading("s", 1e6, float("nan"), (0.0,)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_imputes_short_gaps_with_its_own_forecast(variant):
    engine = small_variant_engine(variant, max_gap=2)
    items = readings(12)
    state, _ = run(engine, items[:8])
    result = engine.step(state, items[10])
    assert result.outcome == APPLIED and result.imputed_steps == 2
    manual = engine.step(state, Reading("s", items[8].timestamp, state.one_step_forecast, items[10].covariates)).state
    manual = engine.step(manual, Reading("s", items[9].timestamp, manual.one_step_forecast, items[10].covariates)).state
    np.testing.assert_allclose(result.forecast.values, engine.step(manual, items[10]).forecast.values, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_is_equivariant_for_unseen_magnitudes(variant):
    engine = small_variant_engine(variant)
    items = readings(30)
    _, base = run(engine, items)
    _, scaled = run(engine, [Reading("big", r.timestamp, 1000.0 * r.value, r.covariates) for r in items])
    for a, b in zip(base, scaled):
        if a.forecast is not None:
            np.testing.assert_allclose(b.forecast.values, 1000.0 * a.forecast.values, rtol=1e-9)


VARIANT_MODULES = [
    "networks.py",
    "variants/__init__.py",
    "variants/seq2seq.py",
    "variants/attention.py",
    "variants/birnn.py",
]


@pytest.mark.parametrize("module", VARIANT_MODULES)
def test_variant_numerics_are_pure(module):
    tree = ast.parse((ROOT / "models" / module).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"tensorflow", "keras", "apache_beam", "kafka", "prometheus_client", "pipeline", "pickle"}


# --- trained artifacts -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(elec_30_days_csv, tmp_path_factory):
    from pipeline.cli import main

    out = {}
    for variant in VARIANTS:
        target = tmp_path_factory.mktemp("art") / variant
        assert main(["train", "--data", str(elec_30_days_csv), "--out", str(target), "--cell", variant, *FAST]) == 0
        out[variant] = target
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifest_records_the_variant(trained, variant):
    manifest = json.loads((trained[variant] / "manifest.json").read_text())
    assert manifest["cell"] == variant and manifest["parity"]["max_abs_diff"] <= 1e-5
    # The float64 twin of the trained model computes the same function as the numpy engine.
    assert manifest["parity"]["float64_max_abs_diff"] <= 1e-9
    assert manifest["state_floats"] == load_artifact_weights(trained[variant]).state_size
    network = manifest["network"]
    assert network["encoder_cell"] == "lstm"
    expected = {
        "seq2seq": {"decoder_units": 4, "step_seconds": 1800.0, "calendar": True},
        "attention": {"attention": "luong_general", "window": 48},
        "birnn": {"window": 48, "backward_units": 4},
    }[variant]
    assert expected.items() <= network.items()
    assert manifest["training"]["config"]["cell"] == variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_engine_equals_keras_on_the_stream(trained, elec_30_days_csv, variant):
    """Serving (numpy, one step per reading, all memory in the state) equals the trained Keras model."""
    from models.artifact import load_artifact, load_keras_model
    from models.data import load_csv
    from models.evaluation import run_engine
    from models.sequences import contiguous_segments, segment_arrays

    artifact = load_artifact(trained[variant])
    assert (
        type(artifact.weights).__name__
        == {"seq2seq": "Seq2SeqNetwork", "attention": "AttentionNetwork", "birnn": "BiRNNNetwork"}[variant]
    )
    series = load_csv(elec_30_days_csv).series["vic_demand"]
    forecasts = run_engine(artifact.engine(), "vic_demand", series, [0, 1])
    model = load_keras_model(artifact)  # safe_mode=True, Lambda refused
    segment = contiguous_segments("vic_demand", series.timestamps, series.values, series.covariates, 1800)[0]
    arrays = segment_arrays(segment, artifact.features, artifact.season, artifact.horizon, smoothing=artifact.smoothing)
    predicted = model.predict(
        {"features": arrays.inputs[None].astype("float32"), "base": arrays.base[None].astype("float32")}, verbose=0
    )[0]
    # Keras forecasts relative to the smoothed level at each origin; serving adds the level back.
    warmup = artifact.smoothing.warmup
    mean, scale = fit_stream_value_scaler(series.values[:warmup])
    levels, _, _ = SmoothingKernel(artifact.smoothing, artifact.horizon).run((series.values - mean) / scale)
    served_scaled = (forecasts[warmup:] - mean) / scale - levels[:, None]
    assert served_scaled.shape == predicted.shape and np.isfinite(served_scaled).all()
    assert np.max(np.abs(served_scaled - predicted)) <= 1e-5


def load_artifact_weights(path):
    from models.artifact import load_artifact

    return load_artifact(path).weights


@pytest.mark.parametrize("variant", VARIANTS)
def test_evaluate_json_for_variants(trained, elec_30_days_csv, variant, capsys):
    from pipeline.cli import main

    assert main(["evaluate", "--artifact", str(trained[variant]), "--data", str(elec_30_days_csv), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["horizon"] == 48 and len(report["model"]["mae"]) == 48
    assert set(report["summary"]) >= {"mae_ratio_vs_persistence", "mae_ratio_vs_seasonal_naive"}


def test_keras_reference_engine_says_it_does_not_step_variants(trained, elec_30_days_csv, capsys):
    from pipeline.cli import main

    assert (
        main(
            ["evaluate", "--artifact", str(trained["attention"]), "--data", str(elec_30_days_csv), "--engine", "keras"]
        )
        == 2
    )
    assert "plain rnn/lstm/gru" in capsys.readouterr().err


def test_serving_a_variant_never_imports_tensorflow(trained):
    code = (
        "import sys; from models.artifact import load_artifact;"
        f"a = load_artifact({str(trained['birnn'])!r}); a.engine();"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cell", "lstm", "--window", "10"], "--window applies to --cell birnn"),
        (["--cell", "birnn", "--attention-window", "10"], "--attention-window applies to --cell attention"),
        (["--cell", "attention", "--attention-window", "0"], "must be at least 1"),
        (["--cell", "gru", "--encoder-cell", "rnn"], "--encoder-cell applies to"),
    ],
)
def test_variant_flags_given_to_the_wrong_cell_are_usage_errors(elec_30_days_csv, tmp_path, capsys, flags, message):
    from pipeline.cli import main

    assert main(["train", "--data", str(elec_30_days_csv), "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
