"""Shared fixtures: one Apache Kafka broker per test session (and a Tansu one for its smoke set).

Fixtures:
    broker: session-scoped :class:`pipeline.kafka_broker.KafkaBroker` (single-node Apache
        Kafka, ``make kafka`` fetches it) on free loopback ports: the broker the job is
        proven on.
    tansu_broker: session-scoped :class:`pipeline.broker.EmbeddedBroker` (Tansu, in memory),
        for the smaller set of tests that keep the embedded default working.
    kafka_settings: :class:`pipeline.kafka_config.KafkaSettings` pointing at ``broker``.
    unique_topic: factory ``unique_topic(prefix="t") -> str`` (uuid suffix, so tests
        sharing the broker never collide).
    read_topic: the :func:`read_topic` helper below.
    elec_30_days_csv: the bundled demand data cut to its first 30 days (a small training set).

Tests that use ``broker`` or ``tansu_broker`` are marked ``integration`` automatically.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.kafka_broker import KafkaBroker
from pipeline.kafka_config import KafkaSettings


def read_topic(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout: float = 20.0,
) -> list[Any]:
    """Reads every record of a topic from the beginning (:func:`pipeline.topic_reader.read_to_end`).

    Args:
        bootstrap: ``host:port`` of the broker.
        topic: Topic to read.
        expected: Read again until at least this many records arrived (or ``timeout``: the records
            read so far are returned and the caller's count assertion reports the shortfall).
            Records beyond are returned too (tests can assert an exact count).
        timeout: Seconds before giving up.

    Returns:
        kafka-python ``ConsumerRecord`` objects sorted by (partition, offset); keys and
        values are raw bytes.

    Raises:
        TimeoutError: If the topic does not appear, or (without ``expected``) its end is not
            reached in time.
    """
    from pipeline.topic_reader import read_to_end

    deadline = time.monotonic() + timeout
    settings = KafkaSettings(bootstrap=bootstrap)
    while True:
        remaining = max(deadline - time.monotonic(), 1.0)
        try:
            records = list(read_to_end(settings, topic, timeout=remaining, client_id="rnncast-tests"))
        except TimeoutError:
            if expected is None:
                raise
            records = []
        if expected is None or len(records) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if {"broker", "tansu_broker"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[KafkaBroker]:
    """One Apache Kafka broker on free 127.0.0.1 ports for the whole session (temporary log).

    Its log cleaner looks for work every 500 ms (Kafka's default is 15 s), so a test that makes a
    compacted topic's segments small sees it cleaned within seconds.
    """
    with KafkaBroker(host="127.0.0.1", port=0, extra_properties={"log.cleaner.backoff.ms": "500"}) as running:
        yield running


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[EmbeddedBroker]:
    """One Tansu broker (in-memory) on a free 127.0.0.1 port, for the Tansu smoke set."""
    with EmbeddedBroker(host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture
def kafka_settings(broker: KafkaBroker) -> KafkaSettings:
    """Plaintext settings for the session broker."""
    return KafkaSettings(bootstrap=broker.bootstrap)


@pytest.fixture
def unique_topic() -> Callable[..., str]:
    """Factory of collision-free topic names: ``unique_topic("readings")``."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture(name="read_topic")
def read_topic_fixture() -> Callable[..., list[Any]]:
    """The :func:`read_topic` helper, as a fixture."""
    return read_topic


@pytest.fixture(scope="session")
def elec_30_days_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/elecdemand.csv`` cut to its first 30 days (1,440 rows), for fast training tests."""
    lines = (Path(__file__).resolve().parent.parent / "data" / "elecdemand.csv").read_text().splitlines()
    path = tmp_path_factory.mktemp("data") / "elec_small.csv"
    path.write_text("\n".join(lines[:1441]) + "\n")
    return path
