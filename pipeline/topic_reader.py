"""Reading a topic from its start to its current end: the one definition of "the end" of a partition.

Where Apache Kafka and Tansu (the embedded development broker) differ for rnncast, in one place:

* End offsets: Kafka's ListOffsets "latest" is the log end; Tansu 0.6 answers the last record
  batch's base offset + 1, less than the end. Fetch responses carry the high watermark, which is
  right on both, so :func:`read_to_end` reads to the larger of the two.
* Consumer groups: joining one (``subscribe()``) takes tens of seconds on Tansu; the job assigns
  its partitions itself, as Beam's KafkaIO does on any broker, and commits without membership.
* Held fetches: Kafka answers a fetch held for data as soon as data arrives; Tansu waits its full
  ``fetch.wait.max.ms``, so the job's source keeps that at 20 ms (``pipeline/kafka_source.py``).
* Log compaction and a log that survives a restart: Kafka only (Tansu keeps everything in memory).
* Transactions: Tansu's ``read_committed`` may return aborted data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pipeline.kafka_config import KafkaSettings, client_kwargs

__all__ = ["read_to_end"]


def read_to_end(
    settings: KafkaSettings,
    topic: str,
    *,
    timeout: float = 60.0,
    client_id: str = "rnncast-reader",
    max_poll_records: int = 5000,
    read_committed: bool = False,
) -> Iterator[Any]:
    """Yields every record of ``topic`` (all partitions, assigned by hand, no group) up to its end.

    Records come in fetch order per partition (kafka-python ``ConsumerRecord``, raw bytes). The end
    of a partition is the larger of ListOffsets "latest" and the high watermark of the fetch
    responses (see the module docstring), so records produced while reading may be included.

    ``read_committed``: records of aborted transactions are skipped; the end is then where no
    transaction is open (a transaction left open would hold it back until it times out).

    Raises:
        TimeoutError: If the topic does not appear, or its end is not reached, within ``timeout``.
    """
    from kafka import KafkaConsumer, TopicPartition

    deadline = time.monotonic() + timeout
    consumer = KafkaConsumer(
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        **client_kwargs(settings),
    )
    try:
        ids = consumer.partitions_for_topic(topic)
        while not ids:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic!r} did not appear within {timeout:g}s")
            consumer.poll(timeout_ms=50)  # lets kafka-python refresh its metadata
            ids = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        listed = consumer.end_offsets(assigned)
        while True:
            ends = {tp: max(listed[tp], consumer.highwater(tp) or 0) for tp in assigned}
            if all(consumer.position(tp) >= end for tp, end in ends.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"did not reach the end of {topic!r} within {timeout:g}s")
            for records in consumer.poll(timeout_ms=200).values():
                yield from records
    finally:
        consumer.close()
