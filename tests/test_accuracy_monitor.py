"""The job's online accuracy signal without the job: tracker -> histogram and skill gauges."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from models.online_accuracy import AccuracyTracker, horizon_band_labels
from pipeline.accuracy_monitor import AccuracyMonitor
from pipeline.metrics import ABS_ERROR_BUCKETS, JobMetrics


def _sample(metrics: JobMetrics, suffix: str, band: str, forecaster: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(
        f"rnncast_forecast_abs_error_{suffix}", {"horizon": band, "model": forecaster, **labels}
    )
    return 0.0 if value is None else value


def test_scored_points_reach_the_histogram_and_the_skill_gauges() -> None:
    rng = np.random.default_rng(3)
    horizon, step = 8, 60.0
    metrics = JobMetrics(CollectorRegistry())
    monitor = AccuracyMonitor(metrics, horizon, step, flush_seconds=3600.0)  # flushed by hand below
    reference = AccuracyTracker(horizon, step)
    points: list = []
    for i in range(2000):
        sid = f"s{i % 3}"
        t = (i // 3) * step
        args = (sid, t, float(rng.normal()), 0.5, 2.0, rng.normal(size=horizon) * (0.1 if i % 5 else 10))
        monitor.observe(*args)
        points += reference.observe(*args)
        if i == 1000:
            monitor.flush()
    assert _sample(metrics, "count", "1", "model") > 0  # flushed at i == 1000
    monitor.flush()
    labels = horizon_band_labels(horizon)
    for band in set(labels):
        mine = [p for p in points if p.band == band]
        for forecaster, errors in (
            ("model", [p.model_error for p in mine]),
            ("persistence", [p.persistence_error for p in mine]),
        ):
            assert _sample(metrics, "count", band, forecaster) == len(errors)
            assert _sample(metrics, "sum", band, forecaster) == pytest.approx(sum(errors), rel=1e-12)
            for bound in ABS_ERROR_BUCKETS:
                le = str(float(bound))
                assert _sample(metrics, "bucket", band, forecaster, le=le) == sum(e <= bound for e in errors)
        assert metrics.model_skill.labels(horizon=band)._value.get() == pytest.approx(
            reference.skill()[band], rel=1e-12
        )


def test_non_finite_forecast_values_are_not_scored_and_a_new_horizon_starts_over() -> None:
    metrics = JobMetrics(CollectorRegistry())
    monitor = AccuracyMonitor(metrics, 2, 1.0, flush_seconds=0.0)
    monitor.observe("s", 0.0, 1.0, 0.0, 1.0, np.array([np.nan, 1.0]))
    monitor.observe("s", 1.0, 1.0, 0.0, 1.0, np.array([1.0, 1.0]))
    assert _sample(metrics, "count", "1", "model") == 0
    monitor.observe("s", 2.0, 1.0, 0.0, 1.0, None)
    assert _sample(metrics, "count", "1", "model") == 1
    monitor.reconfigure(3, 1.0)
    assert monitor.tracker.horizon == 3 and monitor.tracker.tracked_streams == 0


def _interval_series(metrics: JobMetrics) -> set[tuple[str, tuple]]:
    """(metric name, sorted labels) of every exported interval series."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in metrics.registry.collect()
        if family.name.startswith("rnncast_interval_")
        for sample in family.samples
    }


def test_a_swap_to_other_interval_levels_removes_the_old_levels_series() -> None:
    horizon = 4
    metrics = JobMetrics(CollectorRegistry())

    def feed(monitor: AccuracyMonitor, levels: tuple[float, ...], start: int) -> None:
        half = np.array([[0.5 + j] * horizon for j in range(len(levels))])
        for t in range(start, start + 3 * horizon):
            scaled = np.full(horizon, 0.1 * (t % 3))
            monitor.observe("s", float(t), 0.2, 0.0, 1.0, scaled, scaled - half, scaled + half)
        monitor.flush()

    monitor = AccuracyMonitor(metrics, horizon, 1.0, flush_seconds=3600.0, levels=(0.8, 0.95))
    feed(monitor, (0.8, 0.95), 0)
    before = _interval_series(metrics)
    assert {dict(labels)["level"] for _, labels in before} == {"0.8", "0.95"}
    assert ("rnncast_interval_nominal", (("level", "0.8"),)) in before

    monitor.reconfigure(horizon, 1.0, (0.95, 0.99))  # 0.8 is no longer served; 0.95 still is
    after = _interval_series(metrics)
    assert {dict(labels)["level"] for _, labels in after} == {"0.95"}
    assert after == {(name, labels) for name, labels in before if dict(labels)["level"] == "0.95"}
    feed(monitor, (0.95, 0.99), 100)
    assert {dict(labels)["level"] for _, labels in _interval_series(metrics)} == {"0.95", "0.99"}

    monitor.reconfigure(horizon, 1.0, ())  # a model without intervals: no interval series at all
    assert _interval_series(metrics) == set()
    monitor.reconfigure(horizon, 1.0, ())  # nothing changed: nothing to do
    assert _interval_series(metrics) == set()
