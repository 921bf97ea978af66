"""The broker fails: unreachable when the job starts, lost while it runs (``rnncast serve``)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.kafka_broker import KafkaBroker

import serve_harness as h


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


def _wait_for(condition, timeout: float, what: str, proc: h.ServeProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not proc.alive():
            raise AssertionError(
                f"serve exited with {proc.proc.returncode} while waiting for {what}:\n{proc.log[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g}s:\n{proc.log[-3000:]}")
        time.sleep(0.1)


def test_unreachable_at_start_exits_2_with_one_line_after_the_timeout(artifact: Path, tmp_path: Path) -> None:
    port = free_port()
    args = h.serve_args(
        artifact,
        f"127.0.0.1:{port}",
        input_topic="in",
        output_topic="out",
        dlq_topic="dlq",
        group="g",
        extra=["--connect-timeout", "3"],
    )
    job = h.ServeProcess(args, tmp_path / "serve.log")
    assert job.proc.wait(timeout=120) == 2
    job.kill()
    log = job.log
    assert "Traceback" not in log
    assert f"waiting for Kafka at 127.0.0.1:{port} (" in log and "(--connect-timeout)" in log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot reach Kafka at 127.0.0.1:{port} after 3s ({errors[0].split(' (', 1)[1]}"]
    assert "Connection refused" in errors[0]


def test_the_job_waits_for_a_broker_that_comes_later(artifact: Path, tmp_path: Path, unique_topic) -> None:
    port = free_port()
    suffix = unique_topic("late")
    args = h.serve_args(
        artifact,
        f"127.0.0.1:{port}",
        input_topic=f"in-{suffix}",
        output_topic=f"out-{suffix}",
        dlq_topic=f"dlq-{suffix}",
        group=suffix,
        extra=["--connect-timeout", "300"],
    )
    job = h.ServeProcess(args, tmp_path / "serve.log")
    try:
        _wait_for(lambda: "waiting for Kafka at" in job.log, 120, "waiting line", job)
        with EmbeddedBroker(port=port):
            job.wait_restored(timeout=180)  # it reached the broker, made its topics and started its pipeline
            assert f"Kafka at 127.0.0.1:{port} is reachable" in job.log
            assert job.stop() == 0
    finally:
        if job.alive():
            job.kill()
    assert "Traceback" not in job.log


class RetryingProducer(threading.Thread):
    """Publishes readings at about ``rate`` per second through broker outages (librdkafka retries them).

    Idempotent and acks=all, so retries neither duplicate nor reorder a stream's readings; the same
    murmur2 partitioner as the Java and kafka-python clients.
    """

    def __init__(self, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages, self.rate = bootstrap, topic, messages, rate
        self.sent = 0
        self.failed: list[str] = []
        self.error: BaseException | None = None

    def _delivered(self, error, message) -> None:
        if error is not None:
            self.failed.append(str(error))

    def run(self) -> None:
        from confluent_kafka import Producer

        try:
            producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "acks": "all",
                    "enable.idempotence": True,
                    "linger.ms": 5,
                    "partitioner": "murmur2_random",
                    "message.timeout.ms": 600_000,
                },
                logger=logging.getLogger("tests.outage.producer"),
            )  # its reconnect lines go to pytest's log capture
            started = time.monotonic()
            for key, value in self.messages:
                while True:
                    try:
                        producer.produce(self.topic, value, key, on_delivery=self._delivered)
                        break
                    except BufferError:
                        producer.poll(0.5)
                producer.poll(0)
                self.sent += 1
                ahead = started + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            remaining = producer.flush(600)
            if remaining:
                self.failed.append(f"{remaining} readings not acknowledged after 600 s")
        except BaseException as err:
            self.error = err

    def finish(self, timeout: float = 900.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error
        assert self.failed == [], self.failed[:5]


def _connected(url: str) -> dict[str, float]:
    samples = h.scrape(url)
    return {client: h.metric(samples, "rnncast_kafka_connected", client=client) for client in ("source", "sink")}


@pytest.mark.integration
def test_the_job_rides_out_a_killed_and_restarted_broker(artifact: Path, tmp_path: Path, record_property) -> None:
    from models.artifact import load_artifact

    suffix = uuid.uuid4().hex[:8]
    readings_topic, forecasts_topic = f"readings-{suffix}", f"forecasts-{suffix}"
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(240, 40)  # 9,600 readings, 40 streams
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    broker = KafkaBroker(data_dir=tmp_path / "kafka", startup_timeout=600)
    job = None
    try:
        broker.start()
        bootstrap = broker.bootstrap
        job = h.ServeProcess(
            h.serve_args(
                artifact,
                bootstrap,
                input_topic=readings_topic,
                output_topic=forecasts_topic,
                dlq_topic=f"dlq-{suffix}",
                group=f"g-{suffix}",
            ),
            tmp_path / "serve.log",
        )
        url = job.metrics_url(timeout=300)
        job.wait_restored(timeout=300)
        messages = [h.reading_message(r, data_covariates) for r in readings]
        producer = RetryingProducer(bootstrap, readings_topic, messages, rate=300)  # about 32 s of readings
        producer.start()
        _wait_for(lambda: h.metric(h.scrape(url), "rnncast_forecasts_total") > 0, 300, "first forecasts", job)

        killed_at_sent = producer.sent
        broker.kill()
        # Each client reports from inside its own calls; on the local runner a sink waiting for
        # acknowledgements holds up the source's polls, so one client at 0 is what an outage shows.
        _wait_for(lambda: min(_connected(url).values()) == 0, 120, "rnncast_kafka_connected 0", job)
        time.sleep(12)  # the outage itself: the broker stays down 12 s (plus its restart)
        down_for = time.monotonic()
        broker.start()
        down_for = time.monotonic() - down_for + 12
        assert broker.bootstrap == bootstrap  # same port from the data dir

        producer.finish()
        served_docs = h.forecast_docs(
            h.read_records(bootstrap, forecasts_topic, at_least=len(reference), timeout=600, settle=2.0)
        )
        assert job.alive(), job.log[-3000:]
        _wait_for(lambda: _connected(url) == {"source": 1, "sink": 1}, 120, "rnncast_kafka_connected 1", job)
        samples = h.scrape(url)
        result = h.compare(served_docs, reference)
        errors = {
            f"{c}:{code}": h.metric(samples, "rnncast_kafka_errors_total", client=c, code=code)
            for c in ("source", "sink")
            for code in ("_ALL_BROKERS_DOWN", "_TRANSPORT")
        }
        values = dict(
            readings=len(readings),
            expected_forecasts=len(reference),
            published_forecasts=len(served_docs),
            duplicates=result["duplicates"],
            missing=len(result["missing"]),
            differing=result["differing"],
            max_diff=result["max_diff"],
            readings_sent_at_kill=killed_at_sent,
            broker_down_s=round(down_for, 1),
            kafka_errors=errors,
        )
        for key, value in values.items():
            record_property(f"outage.{key}", value)
        print("\noutage: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        assert result["missing"] == [] and result["unexpected"] == [], result
        assert result["differing"] == 0 and result["max_diff"] <= 1e-9, result
        assert 0 < killed_at_sent < len(readings)  # the broker died mid-stream
        assert job.stop(timeout=300) == 0, job.log[-3000:]
        ends = h.end_offsets(bootstrap, readings_topic)
        assert h.committed(bootstrap, f"g-{suffix}", readings_topic, ends) == ends
        assert "Traceback" not in job.log
    finally:
        if job is not None and job.alive():
            job.kill()
        broker.stop()
