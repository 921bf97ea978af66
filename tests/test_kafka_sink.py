"""PublishOutcomes against the real broker: forecasts per bundle; snapshots and offsets per commit request."""

from __future__ import annotations

import numpy as np
import pytest

from models.state import StreamState, decode_state
from pipeline.kafka_sink import PublishOutcomes
from pipeline.messages import Outcome, OutcomeBatch
from pipeline.topics import ensure_topics


def _state(offset: int, value: float) -> StreamState:
    return StreamState(
        readings_seen=offset + 1,
        last_timestamp=1800.0 * offset,
        value_mean=1.0,
        value_scale=2.0,
        ring=np.full(4, value),
        ring_fill=4,
        cell_state=np.full(3, value),
        source_partition=0,
        source_offset=offset,
    )


def _reading(offset: int, state: StreamState) -> OutcomeBatch:
    return OutcomeBatch([Outcome(0, offset, offset, 1_000, key=b"a", forecast=b'{"n":%d}' % offset)], {"a": state})


_COMMIT = OutcomeBatch([Outcome(0, -1, -1, 0, commit=True)], {})


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sink(kafka_settings, unique_topic):
    topics = {name: unique_topic(name) for name in ("forecasts", "dlq", "changelog")}
    ensure_topics(kafka_settings, {topic: 1 for topic in topics.values()})
    clock = _Clock()
    publisher = PublishOutcomes(
        kafka_settings,
        output_topic=topics["forecasts"],
        dlq_topic=topics["dlq"],
        changelog_topic=topics["changelog"],
        commit_interval=60.0,
        clock=clock,
    )
    publisher.setup()
    yield publisher, topics, clock
    publisher.teardown()


def _bundle(publisher: PublishOutcomes, batches: list[OutcomeBatch]) -> list[tuple[int, tuple]]:
    publisher.start_bundle()
    for batch in batches:
        publisher.process(batch)
    return [value.value for value in publisher.finish_bundle()]


def test_snapshots_and_offsets_wait_for_a_commit_request(sink, kafka_settings, read_topic) -> None:
    publisher, topics, _ = sink
    first, second = _state(0, 1.0), _state(1, 2.0)
    assert _bundle(publisher, [_reading(0, first)]) == []
    assert _bundle(publisher, [_reading(1, second)]) == []
    assert [r.value for r in read_topic(kafka_settings.bootstrap, topics["forecasts"], expected=2)] == [
        b'{"n":0}',
        b'{"n":1}',
    ]
    assert read_topic(kafka_settings.bootstrap, topics["changelog"]) == []

    released = _bundle(publisher, [_COMMIT])

    assert released == [(0, ((0, 2),))]
    changelog = read_topic(kafka_settings.bootstrap, topics["changelog"], expected=1)
    assert [r.key for r in changelog] == [b"a"]  # one record: the stream's latest state only
    assert decode_state(changelog[0].value) == second
    assert _bundle(publisher, [_COMMIT]) == []  # nothing held any more


def test_the_interval_writes_without_a_request(sink, kafka_settings, read_topic) -> None:
    publisher, topics, clock = sink
    assert _bundle(publisher, [_reading(0, _state(0, 1.0))]) == []
    clock.now += 61.0
    released = _bundle(publisher, [_reading(1, _state(1, 2.0))])
    assert released == [(0, ((0, 2),))]
    assert (
        decode_state(read_topic(kafka_settings.bootstrap, topics["changelog"], expected=1)[0].value).source_offset == 1
    )


def test_changelog_keys_land_where_kafka_python_puts_them(kafka_settings, unique_topic, read_topic) -> None:
    """The changelog is compacted per key: the snapshots (librdkafka) and the tombstones written at restore
    (kafka-python) of a stream must share a partition, so both clients must hash keys alike (murmur2)."""
    from kafka.partitioner.default import murmur2

    topics = {name: unique_topic(name) for name in ("forecasts", "dlq", "changelog")}
    ensure_topics(kafka_settings, {topics["forecasts"]: 1, topics["dlq"]: 1, topics["changelog"]: 4})
    publisher = PublishOutcomes(
        kafka_settings,
        output_topic=topics["forecasts"],
        dlq_topic=topics["dlq"],
        changelog_topic=topics["changelog"],
    )
    publisher.setup()
    try:
        streams = [f"vic_demand#{i}" for i in range(40)]
        batch = OutcomeBatch(
            [Outcome(0, i, i, 1) for i in range(len(streams))], {s: _state(i, 1.0) for i, s in enumerate(streams)}
        )
        _bundle(publisher, [batch, _COMMIT])
    finally:
        publisher.teardown()
    records = read_topic(kafka_settings.bootstrap, topics["changelog"], expected=len(streams))
    assert sorted(r.key.decode() for r in records) == sorted(streams)
    for record in records:
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 4, record.key
    assert len({r.partition for r in records}) > 1
