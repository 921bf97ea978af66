"""A real Prometheus scrapes the real job and evaluates the project's recording and alerting rules."""

from __future__ import annotations

import time
import uuid

import pytest

from pipeline.metrics import METRIC_NAMES
from tests.prometheus_server import PrometheusServer
from tests.serve_harness import (
    PacedProducer,
    ServeProcess,
    dataset_readings,
    reading_message,
    scrape,
    serve_args,
    trained_artifact,
    wait_for,
)


@pytest.fixture
def running_job(broker, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "input_topic": f"prom-in-{suffix}",
        "output_topic": f"prom-out-{suffix}",
        "dlq_topic": f"prom-dlq-{suffix}",
    }
    job = ServeProcess(
        serve_args(trained_artifact(), broker.bootstrap, group=f"prom-{suffix}", **topics), tmp_path / "serve.log"
    )
    try:
        url = job.metrics_url()
        job.wait_restored()
        yield job, url, topics
    finally:
        job.stop()


def value(result: list[dict]) -> float:
    assert result, "empty query result"
    return float(result[0]["value"][1])


def test_prometheus_scrapes_the_job_and_rules_evaluate(broker, running_job, tmp_path):
    job, metrics_url, topics = running_job
    target = metrics_url.removeprefix("http://").removesuffix("/metrics")
    readings, covariates = dataset_readings(rows=120, streams=5)
    prometheus = PrometheusServer(tmp_path / "prometheus", target)
    try:
        # Let Prometheus see the counters at zero first, so rates over the replay are defined.
        wait_for(
            lambda: bool(prometheus.query('rnncast_readings_total{job="rnncast"} == 0')), 30, what="a first scrape"
        )
        producer = PacedProducer(
            broker.bootstrap, topics["input_topic"], [reading_message(r, covariates) for r in readings], rate=200.0
        )
        producer.start()
        producer.finish()
        expected_forecasts = 5 * (120 - 48)
        wait_for(
            lambda: scrape(metrics_url).get(("rnncast_forecasts_total", ()), 0) >= expected_forecasts,
            120,
            what="all forecasts",
        )

        def scraped_forecasts() -> float:
            result = prometheus.query('rnncast_forecasts_total{job="rnncast"}')
            return value(result) if result else -1.0

        wait_for(lambda: scraped_forecasts() == expected_forecasts, 60, what="Prometheus to scrape the final count")
        assert value(prometheus.query('up{job="rnncast"}')) == 1.0
        assert value(prometheus.query("rnncast_readings_total")) == len(readings)

        # Every exported metric family reached Prometheus (histograms by their _count series).
        names = {m for m in prometheus.api("label/__name__/values") if m.startswith("rnncast_")}
        for name in METRIC_NAMES:
            if name == "rnncast_model_skill":
                continue  # only exported once forecasts have been scored against later readings
            assert name in names or f"{name}_count" in names, name

        # Recording rules are evaluated by Prometheus itself; wait for an evaluation after the data.
        def recorded_rate() -> float:
            result = prometheus.query("rnncast:readings:rate1m")
            return value(result) if result else 0.0

        wait_for(lambda: recorded_rate() > 0, 30, what="the recording rule to see the readings")
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert {r["name"] for r in rules if r["type"] == "alerting"} >= {
            "RnncastDown",
            "RnncastNoReadings",
            "RnncastDeadLetterRateHigh",
            "RnncastLatencyP99High",
            "RnncastConsumerLagGrowing",
            "RnncastModelLosesToPersistence",
        }
        time.sleep(2.5)  # at least one more rule evaluation with data present
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        unhealthy = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
        assert not unhealthy, unhealthy
        firing = [r["name"] for r in rules if r["type"] == "alerting" and r["state"] == "firing"]
        assert "RnncastDown" not in firing
    finally:
        prometheus.stop()
