"""The job's online accuracy equals ``rnncast evaluate``'s scoring on the same readings.

Three streams, each a different stretch of ``data/elecdemand.csv`` (1,200 readings, so three different
scalers), go through the real job (one input partition, so the job applies them in the order they were
published). Offline, each stream goes through :func:`models.evaluation.run_engine` and
:func:`models.metrics.score_series` with ``test_from`` = its first timestamp, the scoring behind
``rnncast evaluate``. The job's ``rnncast_forecast_abs_error`` is in each stream's scaled units, so the
offline side divides each stream's absolute errors by that stream's scale: per horizon band the counts
must be equal and the sums agree to 1e-6 (relative), for the model and for persistence. The skill gauges
must equal a tracker fed the same readings in the same order, and so must the interval coverage and
width gauges (the tracker's interval scoring equals ``score_series``': tests/test_intervals.py).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from models.artifact import load_artifact
from models.data import Series, load_csv
from models.evaluation import run_engine
from models.metrics import HORIZON_BANDS, horizon_band, score_series
from models.online_accuracy import AccuracyTracker
from models.reading import Reading
from models.scaling import fit_stream_value_scaler

import serve_harness as h

ROWS = 1200
STARTS = (0, 4000, 9000)  # row of each stream's first reading


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


def _streams() -> tuple[dict[str, Series], tuple[str, ...]]:
    dataset = load_csv(h.DATA)
    (series,) = dataset.series.values()
    out = {}
    for k, start in enumerate(STARTS):
        rows = slice(start, start + ROWS)
        out[f"slice#{k}"] = Series(
            f"slice#{k}", series.timestamps[rows], series.values[rows], series.covariates[rows], series.step_seconds, ()
        )
    return out, dataset.covariate_names


def test_the_jobs_accuracy_metrics_equal_the_offline_evaluation(
    broker, artifact: Path, tmp_path: Path, record_property
) -> None:
    served = load_artifact(artifact)
    engine = served.engine()
    horizon, season, step = served.horizon, served.season, served.step_seconds
    streams, data_covariates = _streams()
    columns = [data_covariates.index(c) for c in served.features.covariate_names]

    # Published round-robin across the streams.
    readings = [
        Reading(sid, float(s.timestamps[i]), float(s.values[i]), tuple(float(x) for x in s.covariates[i]))
        for i in range(ROWS)
        for sid, s in streams.items()
    ]

    # Offline: rnncast evaluate's engine run and scoring, per stream, errors divided by the stream's scale.
    expected = {(band, f): [0, 0.0] for band in HORIZON_BANDS for f in ("model", "persistence")}
    for sid, series in streams.items():
        forecasts = run_engine(engine, sid, series, columns)
        score = score_series(series.timestamps, series.values, forecasts, step, season, float(series.timestamps[0]))
        _, scale = fit_stream_value_scaler(series.values[:season])
        for h_ in range(1, horizon + 1):
            band = horizon_band(h_, horizon)
            for forecaster, sums in (("model", score.model_abs), ("persistence", score.persistence_abs)):
                expected[band, forecaster][0] += int(score.counts[h_ - 1])
                expected[band, forecaster][1] += float(sums[h_ - 1]) / scale

    # The skill gauges: a tracker fed as the job feeds it (state after each applied reading, in order).
    assert engine.intervals is not None  # trained with the default --interval-levels
    tracker = AccuracyTracker(horizon, step, levels=engine.intervals.levels)
    states: dict = {}
    for r in readings:
        result = engine.step(
            states.get(r.stream_id), Reading(r.stream_id, r.timestamp, r.value, tuple(r.covariates[c] for c in columns))
        )
        states[r.stream_id] = state = result.state
        if not state.warming_up:
            forecast = result.forecast
            tracker.observe(
                r.stream_id,
                r.timestamp,
                r.value,
                state.value_mean,
                state.value_scale,
                None if forecast is None else forecast.scaled,
                None if forecast is None else forecast.lower,
                None if forecast is None else forecast.upper,
            )
    expected_skill = tracker.skill()
    expected_coverage, expected_width = tracker.coverage(), tracker.width()
    assert set(expected_coverage) == set(HORIZON_BANDS)

    suffix = uuid.uuid4().hex[:8]
    topics = dict(
        input_topic=f"readings-{suffix}",
        output_topic=f"forecasts-{suffix}",
        dlq_topic=f"dlq-{suffix}",
        group=f"g-{suffix}",
    )
    # One partition and one state shard: the job then scores readings in the input order, which the
    # rolling skill window depends on (the error sums do not).
    job = h.ServeProcess(
        h.serve_args(artifact, broker.bootstrap, **topics, extra=["--topic-partitions", "1", "--state-shards", "1"]),
        tmp_path / "serve.log",
    )
    try:
        url = job.metrics_url()
        h.produce(broker.bootstrap, topics["input_topic"], [h.reading_message(r, data_covariates) for r in readings])
        total = sum(n for (band, f), (n, _) in expected.items() if f == "model")

        def scored() -> float:
            samples = h.scrape(url)
            return sum(
                h.metric(samples, "rnncast_forecast_abs_error_count", horizon=band, model="model")
                for band in HORIZON_BANDS
            )

        h.wait_for(lambda: scored() >= total, 60, what=f"{total} scored points")
        samples = h.scrape(url)
        assert h.metric(samples, "rnncast_readings_total") == len(readings)
        worst = 0.0
        measured = {}
        for (band, forecaster), (count, total_error) in expected.items():
            got_count = h.metric(samples, "rnncast_forecast_abs_error_count", horizon=band, model=forecaster)
            got_sum = h.metric(samples, "rnncast_forecast_abs_error_sum", horizon=band, model=forecaster)
            assert got_count == count, (band, forecaster, got_count, count)
            if count:
                relative = abs(got_sum - total_error) / total_error
                worst = max(worst, relative)
                measured[f"{band}/{forecaster}"] = (round(got_sum / got_count, 6), relative)
                assert relative <= 1e-6, (band, forecaster, got_sum, total_error)
        for band, skill in expected_skill.items():
            got = h.metric(samples, "rnncast_model_skill", horizon=band)
            assert got == pytest.approx(skill, rel=1e-9), (band, got, skill)
        for band, levels in expected_coverage.items():
            for level, coverage in levels.items():
                got = h.metric(samples, "rnncast_interval_coverage", horizon=band, level=level)
                assert got == pytest.approx(coverage, rel=1e-9), (band, level, got, coverage)
                got = h.metric(samples, "rnncast_interval_width", horizon=band, level=level)
                assert got == pytest.approx(expected_width[band][level], rel=1e-9), (band, level, got)
                assert h.metric(samples, "rnncast_interval_nominal", level=level) == float(level)
        record_property(
            "accuracy_agreement",
            {
                "points": total,
                "worst_relative_diff": worst,
                "mae_scaled": measured,
                "skill": expected_skill,
                "interval_coverage": expected_coverage,
            },
        )
        print(
            f"scored points {total}; worst relative difference {worst:.2e}; per band (MAE scaled, rel diff): {measured}"
        )
        assert job.stop() == 0
    finally:
        if job.alive():
            job.kill()
