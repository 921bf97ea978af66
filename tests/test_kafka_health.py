"""pipeline.kafka_health: librdkafka's error and statistics callbacks -> connection metrics (pure logic)."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from pipeline.kafka_health import ClientHealth
from pipeline.metrics import JobMetrics


class _Error:
    """The two methods of confluent_kafka.KafkaError the callback uses."""

    def __init__(self, name: str, text: str) -> None:
        self._name, self._text = name, text

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return self._text


def _stats(**states: tuple[int, str]) -> str:
    return json.dumps(
        {"brokers": {name: {"nodeid": nodeid, "state": state} for name, (nodeid, state) in states.items()}}
    )


@pytest.fixture
def metrics() -> JobMetrics:
    return JobMetrics(CollectorRegistry())


def _value(metrics: JobMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_connected_from_creation_until_all_brokers_are_down(metrics: JobMetrics, caplog) -> None:
    now = [0.0]
    health = ClientHealth("sink", metrics, clock=lambda: now[0])
    assert _value(metrics, "rnncast_kafka_connected", client="sink") == 1
    config = health.config()
    assert config["error_cb"] == health.on_error and config["stats_cb"] == health.on_stats
    assert config["statistics.interval.ms"] == 5000

    with caplog.at_level(logging.WARNING, logger="pipeline.kafka_health"):
        health.on_error(_Error("_TRANSPORT", "127.0.0.1:9092/1: Disconnected"))
        assert _value(metrics, "rnncast_kafka_connected", client="sink") == 1  # one connection is not all
        for _ in range(3):
            health.on_error(_Error("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
        now[0] = 11.0
        health.on_error(_Error("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
    assert _value(metrics, "rnncast_kafka_connected", client="sink") == 0
    assert _value(metrics, "rnncast_kafka_errors_total", client="sink", code="_ALL_BROKERS_DOWN") == 4
    assert _value(metrics, "rnncast_kafka_errors_total", client="sink", code="_TRANSPORT") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("Kafka sink: 1/1 brokers are down (_ALL_BROKERS_DOWN); librdkafka retries by itself") == 2


def test_statistics_set_the_state_from_the_learned_brokers(metrics: JobMetrics) -> None:
    health = ClientHealth("source", metrics)
    health.on_stats(_stats(**{"127.0.0.1:9092/bootstrap": (-1, "UP"), "127.0.0.1:9092/1": (1, "CONNECT")}))
    assert _value(metrics, "rnncast_kafka_connected", client="source") == 0
    health.on_stats(_stats(**{"127.0.0.1:9092/bootstrap": (-1, "DOWN"), "127.0.0.1:9092/1": (1, "UP")}))
    assert _value(metrics, "rnncast_kafka_connected", client="source") == 1
    health.on_stats(_stats(**{"127.0.0.1:9092/bootstrap": (-1, "TRY_CONNECT")}))  # nothing learned yet
    assert _value(metrics, "rnncast_kafka_connected", client="source") == 0
    health.on_stats("not json")  # ignored
    assert _value(metrics, "rnncast_kafka_connected", client="source") == 0


def test_a_late_all_brokers_down_and_success_reports(metrics: JobMetrics) -> None:
    health = ClientHealth("sink", metrics)
    health.on_error(_Error("_ALL_BROKERS_DOWN", "0/2 brokers are down"))  # delivered after the reconnect
    assert _value(metrics, "rnncast_kafka_connected", client="sink") == 1
    assert _value(metrics, "rnncast_kafka_errors_total", client="sink", code="_ALL_BROKERS_DOWN") == 1
    health.on_error(_Error("_ALL_BROKERS_DOWN", "2/2 brokers are down"))
    assert _value(metrics, "rnncast_kafka_connected", client="sink") == 0
    health.reached()  # outputs acknowledged: a broker answered
    assert _value(metrics, "rnncast_kafka_connected", client="sink") == 1


def test_unknown_client_names_are_refused(metrics: JobMetrics) -> None:
    with pytest.raises(ValueError, match="unknown Kafka client"):
        ClientHealth("other", metrics)


def test_repeated_librdkafka_lines_pass_once_per_interval() -> None:
    from pipeline.kafka_health import RepeatFilter

    now = [0.0]
    repeat = RepeatFilter(every=10.0, clock=lambda: now[0])

    def passes(message: str) -> bool:
        return repeat.filter(logging.LogRecord("rnncast.kafka", logging.ERROR, __file__, 1, message, None, None))

    fail = "FAIL [rnncast-serve#producer-1]: 127.0.0.1:{}/bootstrap: Connect failed (after {}ms in state CONNECT)"
    assert passes(fail.format(9092, 0))
    assert not passes(fail.format(9092, 3))  # the same line up to its numbers
    assert passes("another kind of line")
    now[0] = 10.5
    assert passes(fail.format(9092, 1))


def test_client_library_lines_lose_their_tracebacks_and_repeats() -> None:
    import sys

    from pipeline.kafka_health import RepeatFilter

    repeat = RepeatFilter(every=10.0, prefixes=("kafka",), clock=lambda: 0.0)
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        exc_info = sys.exc_info()

    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, exc_info)

    first = record("kafka.net.transport", "Error receiving network data closing socket")
    assert repeat.filter(first) and first.exc_info is None
    assert not repeat.filter(record("kafka.net.transport", "Error receiving network data closing socket"))
    own = record("rnncast.serve", "Error receiving network data closing socket")
    assert repeat.filter(own) and repeat.filter(own) and own.exc_info is not None  # not a client library's
    assert repeat.filter(record("kafkaesque", "x")) and repeat.filter(record("kafkaesque", "x"))
