"""Smoke tests of the benchmark harness (``make bench``): no timing assertions.

The pure parts (the naive peers' window inputs, their state coding, the profile summary) are checked
directly; one tiny end-to-end run of ``python -m benchmarks.run --quick`` (4 streams, a few hundred
readings, every job started for real against the embedded broker) checks the JSON's shape and that
its numbers are positive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.features import FeatureSpec
from models.reading import Reading
from models.scaling import ScalerParams
from models.sequences import Segment, segment_arrays
from models.smoothing import Smoothing

REPO = Path(__file__).resolve().parents[1]


def _spec(one_step_error: bool = False) -> FeatureSpec:
    return FeatureSpec(
        covariate_names=("temperature",),
        covariate_scaler=ScalerParams(mean=(15.0,), scale=(5.0,)),
        calendar=True,
        one_step_error=one_step_error,
    )


def _readings(n: int, stream: str = "s#0") -> list[Reading]:
    rng = np.random.default_rng(1)
    t0 = 1_388_534_400.0
    return [
        Reading(stream, t0 + 1800.0 * i, 3.0 + np.sin(i / 7) + 0.1 * rng.standard_normal(), (15 + i % 11,))
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "smoothing", [Smoothing.seasonal_naive(8), Smoothing((4, 8), 0.1, (0.3, 0.2))], ids=["seasonal_naive", "two_cycles"]
)
def test_naive_window_inputs_equal_the_training_rows(smoothing) -> None:
    from benchmarks.naive_job import append_reading, window_inputs

    spec = _spec(one_step_error=not smoothing.is_seasonal_naive)
    warmup, horizon, length = smoothing.warmup, 5, 16
    windows = []
    window = None
    for reading in _readings(40):
        window, applied = append_reading(window, reading, length)
        assert applied
        windows.append(window)
    assert len(windows[-1]) == length and windows[-1][-1, 0] == _readings(40)[-1].timestamp
    full = windows[-3:]  # three full windows at once, as a batch
    features, base, mean, scale, level = window_inputs(spec, smoothing, horizon, full)
    assert features.shape == (3, length - warmup, spec.size) and base.shape == (3, length - warmup, horizon)
    for i, w in enumerate(full):
        rows = segment_arrays(Segment("s#0", w[:, 0], w[:, 1], w[:, 2:]), spec, warmup, horizon, smoothing=smoothing)
        np.testing.assert_allclose(features[i], rows.inputs, atol=1e-5)
        np.testing.assert_allclose(base[i], rows.base, atol=1e-5)
        scaled = (w[:, 1] - mean[i]) / scale[i]
        # the training target of the last row is relative to the same level the window forecast adds back
        np.testing.assert_allclose(scaled[-1] - level[i], rows.inputs[-1, 0], atol=1e-12)


def test_naive_window_ignores_repeated_and_older_readings() -> None:
    from benchmarks.naive_job import append_reading

    first, second = _readings(2)
    window, _ = append_reading(None, second, 4)
    same, applied = append_reading(window, second, 4)
    assert not applied and same is window
    _, applied = append_reading(window, first, 4)
    assert not applied


def test_naive_window_state_coding_round_trips() -> None:
    from benchmarks.naive_job import decode_window, encode_window

    window = np.arange(12, dtype=float).reshape(4, 3)
    seen, decoded = decode_window(encode_window(95, window))
    assert seen == 95 and np.array_equal(decoded, window)


def test_profile_summary_groups_stacks_by_category() -> None:
    from benchmarks.run import summarize_profile

    raw = "\n".join(
        [
            "main (pipeline/cli.py:10);commit (apache_beam/runners/worker/bundle_processor.py:1);"
            "get_deep_size (objsize/traverse.py:205) 30",
            "main (pipeline/cli.py:10);step (models/engine.py:98);_lstm_step (models/cells.py:55) 10",
            "main (pipeline/cli.py:10);decode_reading (pipeline/messages.py:237) 10",
        ]
    )
    summary = summarize_profile(raw, rate=100, readings=50)
    shares = {c["what"]: c["share"] for c in summary["categories"]}
    assert shares["Beam state cache: objsize sizing of each committed state"] == 0.6
    assert shares["numpy step (Engine.step)"] == 0.2
    assert summary["cpu_us_per_reading"] == pytest.approx(50 / 100 / 50 * 1e6)


def _artifact(tmp: Path) -> Path:
    """A small trained artifact: the serve tests' one when present, else a 1-epoch model here."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import serve_harness

        return serve_harness.trained_artifact()
    except ImportError:
        out = tmp / "artifact"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "train",
                "--data",
                str(REPO / "data" / "elecdemand.csv"),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--units",
                "32",
                "--season",
                "48",
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=300,
        )
        return out


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


@pytest.mark.slow
@pytest.mark.integration
def test_quick_bench_run_writes_the_documented_json(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path)
    out = tmp_path / "results"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--artifact", str(artifact), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads((out / "latest.json").read_text())
    table = (out / "latest.md").read_text()
    assert "| rnncast |" in table and "| target |" in table and "| rnncast |" in run.stdout

    assert _positive(report["pipe"]["readings_per_s"]) and _positive(report["pipe_kafka_python"]["readings_per_s"])
    rnncast = report["rnncast"]
    for key in (
        "readings_per_s",
        "p50_latency_ms",
        "p99_latency_ms",
        "peak_rss_mb",
        "state_bytes_per_stream",
        "rss_mb_at_100k_streams",
    ):
        assert _positive(rnncast[key]), (key, rnncast.get(key))
    for job in ("naive_per_reading", "naive_batched"):
        assert _positive(report[job]["readings_per_s"]) and _positive(report[job]["p99_latency_ms"]), report[job]
    assert _positive(report["two_instances"]["readings_per_s"])
    guarantees = report["guarantees"]  # both --guarantee values on Apache Kafka, in the same run
    for job in ("rnncast_at_least_once", "rnncast_exactly_once"):
        row = guarantees[job]
        assert _positive(row["readings_per_s"]) and _positive(row["p99_visible_latency_ms"]), (job, row)
    assert _positive(guarantees["cost"]["readings_per_s_ratio"]) and "| rnncast_exactly_once |" in table
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["packages"]["apache-beam"] and machine["date"]
    assert set(report["targets"]) == {
        "rnncast_vs_pipe",
        "rnncast_vs_pipe_kafka_python",
        "rnncast_vs_naive_per_reading",
        "rnncast_vs_naive_batched",
        "p99_below_naive",
        "p99_at_half_load",
        "state_bytes",
        "rss_at_100k_streams",
        "two_instances_scaling",
    }
    for name, target in report["targets"].items():
        assert target["pass"] in (True, False), (name, target)
        assert _positive(target["value"]), (name, target)
