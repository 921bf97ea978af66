"""Training smoke test, artifact safety, stream-level parity and the evaluate command."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from models.artifact import ArtifactError, load_artifact, load_keras_model
from models.data import load_csv
from models.evaluation import run_engine
from models.scaling import fit_stream_value_scaler
from models.sequences import contiguous_segments, segment_arrays
from models.smoothing import SmoothingKernel
from pipeline.cli import main

FAST = ["--units", "8", "--epochs", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def artifact_dir(elec_30_days_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "lstm"
    assert main(["train", "--data", str(elec_30_days_csv), "--out", str(out), *FAST]) == 0
    return out


def test_artifact_manifest_is_complete(artifact_dir, elec_30_days_csv):
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    for key in (
        "cell",
        "layers",
        "units",
        "horizon",
        "season",
        "step_seconds",
        "features",
        "version",
        "model_sha256",
        "weights_sha256",
        "validation",
        "training",
        "serving",
    ):
        assert key in manifest, key
    assert manifest["cell"] == "lstm" and manifest["horizon"] == 48 and manifest["season"] == 48
    assert manifest["step_seconds"] == 1800
    assert manifest["features"]["names"][:3] == ["value", "temperature", "workday"]
    assert manifest["training"]["data_sha256"] == load_csv(elec_30_days_csv).sha256
    assert manifest["parity"]["max_abs_diff"] <= 1e-5
    assert not list(artifact_dir.glob("*.pkl")) and not list(artifact_dir.glob("*.h5"))


def test_same_seed_same_model(artifact_dir, elec_30_days_csv, tmp_path):
    again = tmp_path / "again"
    assert main(["train", "--data", str(elec_30_days_csv), "--out", str(again), *FAST]) == 0
    a = json.loads((artifact_dir / "manifest.json").read_text())
    b = json.loads((again / "manifest.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]


def test_engine_equals_keras_on_the_stream(artifact_dir, elec_30_days_csv):
    """Serving (numpy, one step per reading) equals the trained Keras model over the same readings."""
    artifact = load_artifact(artifact_dir)
    dataset = load_csv(elec_30_days_csv)
    series = dataset.series["vic_demand"]
    engine = artifact.engine()
    forecasts = run_engine(engine, "vic_demand", series, [0, 1])
    model = load_keras_model(artifact)
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


def test_reference_engine_agrees_with_numpy_engine(artifact_dir, elec_30_days_csv):
    from models.reference_engine import reference_engine

    artifact = load_artifact(artifact_dir)
    series = load_csv(elec_30_days_csv).series["vic_demand"]
    short = type(series)(
        series.stream_id, series.timestamps[:300], series.values[:300], series.covariates[:300], series.step_seconds, ()
    )
    numpy_out = run_engine(artifact.engine(), "vic_demand", short, [0, 1])
    keras_out = run_engine(reference_engine(artifact), "vic_demand", short, [0, 1])
    rows = np.isfinite(numpy_out).all(axis=1)
    assert rows.sum() == 300 - artifact.season
    scale = series.values[: artifact.season].std()
    assert np.max(np.abs(numpy_out[rows] - keras_out[rows])) / scale <= 1e-5


def test_evaluate_json_shape(artifact_dir, elec_30_days_csv, capsys):
    assert main(["evaluate", "--artifact", str(artifact_dir), "--data", str(elec_30_days_csv), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["horizon"] == 48 and report["season"] == 48 and report["test_points"] > 0
    for part, keys in (
        ("model", ("mae", "rmse", "mase")),
        ("persistence", ("mae", "rmse")),
        ("seasonal_naive", ("mae", "rmse")),
    ):
        for key in keys:
            assert len(report[part][key]) == 48
    ratios = report["summary"]
    assert set(ratios) >= {"mae_ratio_vs_persistence", "mae_ratio_vs_seasonal_naive"}
    expected = np.mean(report["model"]["mae"]) / np.mean(report["persistence"]["mae"])
    assert abs(ratios["mae_ratio_vs_persistence"] - expected) < 1e-12


def test_evaluate_plot(artifact_dir, elec_30_days_csv, tmp_path):
    out = tmp_path / "eval.png"
    assert main(["evaluate", "--artifact", str(artifact_dir), "--data", str(elec_30_days_csv), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _copy(artifact_dir, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(artifact_dir, target)
    return target


def test_tampered_weights_are_refused(artifact_dir, tmp_path):
    art = _copy(artifact_dir, tmp_path)
    data = bytearray((art / "weights.npz").read_bytes())
    data[-40] ^= 0xFF
    (art / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        load_artifact(art)


def test_tampered_keras_model_is_refused(artifact_dir, tmp_path):
    art = _copy(artifact_dir, tmp_path)
    with open(art / "model.keras", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        load_artifact(art)


@pytest.mark.parametrize("name", ["model.h5", "state.pkl", "extra.pickle"])
def test_hdf5_and_pickles_are_refused(artifact_dir, tmp_path, name):
    art = _copy(artifact_dir, tmp_path)
    (art / name).write_bytes(b"whatever")
    with pytest.raises(ArtifactError, match="refusing"):
        load_artifact(art)


def test_lambda_layers_are_refused(artifact_dir, tmp_path):
    import hashlib

    art = _copy(artifact_dir, tmp_path)
    path = art / "model.keras"
    with zipfile.ZipFile(path) as src:
        entries = {name: src.read(name) for name in src.namelist()}
    config = json.loads(entries["config.json"])
    config["config"]["layers"].append({"class_name": "Lambda", "config": {"name": "evil"}})
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["model_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))
    artifact = load_artifact(art)
    with pytest.raises(ArtifactError, match="Lambda"):
        load_keras_model(artifact)


def test_cli_reports_data_errors_with_location(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,stream_id,value\n2014-01-01T00:00:00Z,a,1.0\n2014-01-01T00:30:00Z,a,oops\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: column 'value'" in err and "Traceback" not in err


def test_cli_reports_missing_artifact(tmp_path, elec_30_days_csv, capsys):
    assert main(["evaluate", "--artifact", str(tmp_path / "nope"), "--data", str(elec_30_days_csv)]) == 2
    assert "not an artifact directory" in capsys.readouterr().err


def test_train_explains_regular_closures_instead_of_too_short_data(tmp_path, capsys):
    """The demand cut to business hours (every night and weekend closed) cannot be trained on yet: say why."""
    source = Path(__file__).resolve().parent.parent / "data" / "elecdemand-business.csv"
    lines = source.read_text().splitlines()
    cut = tmp_path / "business.csv"
    cut.write_text("\n".join(lines[:2801]) + "\n")  # 100 weekdays of 07:00-21:00
    assert main(["train", "--data", str(cut), "--out", str(tmp_path / "out"), "--epochs", "1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: no training windows: 2,800 rows")
    err = err[0]
    assert "gap-free pieces of at most 28 readings" in err
    assert "start after the reading at 20:30 UTC: regular closures" in err


def test_several_seasons_and_the_smoothing_choice_are_recorded(artifact_dir):
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    smoothing = manifest["smoothing"]
    assert smoothing["seasons"] == [manifest["season"]]  # 30 days: too short for a weekly cycle by default
    assert manifest["serving"]["min_history"] == manifest["season"] + 1
    assert "chosen_by" in manifest["smoothing_choice"] and len(manifest["smoothing_choice"]["candidates"]) > 1
    assert "one_step_error" in manifest["features"]["names"]


def test_season_flag_takes_several_cycles_and_refuses_ones_that_do_not_divide(tmp_path, elec_30_days_csv, capsys):
    assert (
        main(
            [
                "train",
                "--data",
                str(elec_30_days_csv),
                "--out",
                str(tmp_path / "o"),
                "--season",
                "48,100",
                "--epochs",
                "1",
            ]
        )
        == 2
    )
    assert "--season 48,100: each season must divide the longest" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse: usage and the error on stderr, exit 2
        main(["train", "--data", str(elec_30_days_csv), "--out", str(tmp_path / "o"), "--season", "48,x"])
    assert exited.value.code == 2 and "not a comma-separated list" in capsys.readouterr().err


def test_evaluate_scores_a_statistical_peer_on_the_same_origins(artifact_dir, elec_30_days_csv, capsys):
    assert (
        main(
            [
                "evaluate",
                "--artifact",
                str(artifact_dir),
                "--data",
                str(elec_30_days_csv),
                "--json",
                "--peer",
                "holt_winters",
                "--peer-origins",
                "3",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    peer = report["peer"]
    assert peer["peer"] == "holt_winters" and peer["origins"] == 3
    assert len(peer["model_mae"]) == len(peer["peer_mae"]) == report["horizon"]
    assert all(np.isfinite(peer["peer_mae"])) and np.isfinite(peer["model_vs_peer"])
    # the text report names the peer beside the table
    assert (
        main(
            [
                "evaluate",
                "--artifact",
                str(artifact_dir),
                "--data",
                str(elec_30_days_csv),
                "--peer",
                "holt_winters",
                "--peer-origins",
                "2",
            ]
        )
        == 0
    )
    assert "strong peer holt_winters (statsforecast" in capsys.readouterr().out


def test_interval_calibration_uses_the_served_smoothed_model(artifact_dir, elec_30_days_csv):
    """The manifest's conformal offsets are the quantiles of the errors of the engine the artifact serves
    (its smoothing included), not of the seasonal-naive base the network was built around."""
    import dataclasses

    from models.engine import Engine
    from models.evaluation import calibrate_intervals

    artifact = load_artifact(artifact_dir)
    manifest = artifact.manifest
    assert not artifact.smoothing.is_seasonal_naive  # the fixture's model smooths
    dataset = load_csv(elec_30_days_csv)
    block = manifest["intervals"]
    levels = tuple(sorted(float(k) for k in block["levels"]))
    split = (manifest["training"]["validation_from"], manifest["training"]["test_from"])

    def offsets(engine):
        spec, counts = calibrate_intervals(engine, dataset, *split, levels, block["gamma"])
        return spec.to_json(counts)

    assert offsets(artifact.engine()) == block
    naive = dataclasses.replace(artifact.engine_config(), smoothing=None)
    assert offsets(Engine(artifact.weights, artifact.features, naive))["levels"] != block["levels"]


def test_default_cycles_follow_the_gap_free_history_not_the_stream_length() -> None:
    """water-flow holds 7.5 weeks of hours but its gaps cut it into pieces of at most 503 readings:
    a week cycle could not warm up in any training window, so the default is the day alone."""
    from models.data import load_csv
    from models.training import common_step, default_seasons, split_dataset, warmable_training_rows

    dataset = load_csv(Path(__file__).resolve().parent.parent / "data" / "water-flow.csv")
    step = common_step(dataset)
    split = split_dataset(dataset, 0.3, 0.15)
    rows = warmable_training_rows(dataset, split.validation_from, step)
    (series,) = dataset.series.values()
    assert int(sum(series.timestamps < split.validation_from[series.stream_id])) >= 4 * 168  # long enough by length
    assert rows < 4 * 168
    assert default_seasons(step, rows) == (24,)
    assert default_seasons(step, 4 * 168) == (24, 168)
