"""The Kafka source: a splittable DoFn over topic partitions (confluent-kafka, manual assignment).

Input elements are ``(topic, partition, start_offset)``; each becomes the restriction
``OffsetRange(start_offset, 2**63 - 1)``. Every call of :meth:`ReadPartitions.process` polls one batch,
claims its records and emits them as one :class:`~pipeline.messages.KafkaBatch` (columns), then defers
the rest of the range (with a short delay when the partition was idle), so the runner checkpoints
after every batch.
The start offset is the group's committed offset, read once when the job starts
(:func:`start_offsets`); this source commits nothing itself (:mod:`pipeline.kafka_sink` does, after
the outputs are acknowledged).

Commit requests: a partition's batch is also a commit request (``commit``) on its first call, when the
partition goes idle after records, every ``commit_interval`` seconds while it stays busy, and at stop; the sink
writes its held state snapshots and releases offsets for commit when one reaches it
(:mod:`pipeline.kafka_sink`).

Stopping (local runner only, :mod:`pipeline.local_runner`): once the job's SIGTERM/SIGINT handler
requested a stop in this process, every partition's next call claims the unread remainder of its
range and returns, so the restriction is done, the pipeline drains what is in flight and finishes.
Distributed runners have their own drain (Dataflow) or stop-with-savepoint (Flink).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration

from pipeline import local_runner
from pipeline.kafka_config import KafkaSettings, client_kwargs, librdkafka_config
from pipeline.kafka_health import ClientHealth, librdkafka_logger
from pipeline.messages import KafkaBatch, SweepRequest
from pipeline.metrics import JobMetrics, default_metrics

__all__ = ["MAX_OFFSET", "ReadPartitions", "start_offsets"]

log = logging.getLogger(__name__)
MAX_OFFSET = 2**63 - 1

_FETCH_MAX_WAIT_MS = 20
_MAX_BUFFERED_BATCHES = 8  # fetched-but-unread records held at most, in units of max_records


def start_offsets(settings: KafkaSettings, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """The group's committed offset per partition, or the partition's first offset if none.

    Args:
        settings: Kafka connection.
        group: Consumer group whose commits to read (no group membership is joined).
        topic: The input topic.
        partitions: Partition ids.

    Returns:
        Partition -> offset to start reading at.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        client_id="rnncast-offsets", group_id=group, enable_auto_commit=False, **client_kwargs(settings)
    )
    try:
        assigned = [TopicPartition(topic, p) for p in partitions]
        earliest = consumer.beginning_offsets(assigned)
        offsets = {}
        for tp in assigned:
            committed = consumer.committed(tp)
            offsets[tp.partition] = max(committed, earliest[tp]) if committed is not None else earliest[tp]
        return offsets
    finally:
        consumer.close()


class _PartitionRange(RestrictionProvider):
    """``(topic, partition, start)`` -> ``OffsetRange(start, MAX_OFFSET)``, never split up front."""

    def initial_restriction(self, element: tuple[str, int, int]) -> OffsetRange:
        return OffsetRange(int(element[2]), MAX_OFFSET)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: Any, restriction: OffsetRange) -> float:
        return 1.0  # unbounded: every partition weighs the same

    def truncate(self, element: Any, restriction: OffsetRange) -> None:
        return None  # draining an unbounded read: drop the remainder


class ReadPartitions(beam.DoFn):
    """Splittable DoFn: ``(topic, partition, start)`` -> a :class:`KafkaBatch` per call (records, sweeps, commit request).

    Args:
        settings: Kafka connection (with its security settings).
        max_records: Records per call at most (the batch the runner checkpoints after).
        poll_timeout: Seconds a call waits for records before deferring.
        idle_delay: Seconds before an idle partition is polled again.
        state_ttl: --state-ttl; with ``run_id``, idle streams are swept (see :mod:`pipeline.state_store`).
        run_id: The run whose :class:`~pipeline.state_store.IdleIndex` to ask.
        sweep_every: Seconds between sweeps of one partition.
        commit_interval: Seconds between commit requests of a partition that stays busy.
        group: The job's consumer group, given to librdkafka (which requires one; with Kafka ACLs the
            job is then allowed one group): this consumer never joins it and never commits to it.
        metrics: Factory of the job's metrics.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        max_records: int = 2000,
        poll_timeout: float = 0.05,
        idle_delay: float = 0.02,
        state_ttl: float | None = None,
        run_id: str | None = None,
        sweep_every: float = 5.0,
        commit_interval: float = 5.0,
        group: str = "rnncast",
        metrics: Any = default_metrics,
    ) -> None:
        self._settings = settings
        self._group = group
        self._max_records = max_records
        self._poll_timeout = poll_timeout
        self._idle_delay = idle_delay
        self._state_ttl = state_ttl
        self._run_id = run_id
        self._sweep_every = sweep_every
        self._commit_interval = commit_interval
        self._metrics_factory = metrics

    def setup(self) -> None:
        self._consumer: Any = None  # one consumer for every partition this instance reads
        self._buffers: dict[tuple[str, int], collections.deque] = {}  # fetched, not yet emitted
        self._positions: dict[tuple[str, int], int] = {}  # where each partition's restriction will continue
        self._next_sweep: dict[int, float] = {}
        self._commit_due: dict[int, float] = {}  # partitions with records not yet followed by a commit request
        self._announced: set[int] = set()  # partitions that had their first commit request
        self._metrics: JobMetrics = self._metrics_factory()

    def teardown(self) -> None:
        consumer = getattr(self, "_consumer", None)
        if consumer is not None:
            self._consumer = None
            try:
                consumer.close()
            except Exception:
                log.debug("closing the consumer failed", exc_info=True)

    def _records(self, topic: str, partition: int, start: int) -> list[Any]:
        """Up to ``max_records`` records of the partition from ``start`` on (fewer, or none, if none came in time).

        One librdkafka consumer serves all partitions of this instance; its fetching runs in C threads,
        outside Python's GIL. A poll's records of other partitions wait in their buffers for those
        partitions' next call.
        """
        from confluent_kafka import Consumer, TopicPartition

        if self._consumer is None:
            self._health = ClientHealth("source", self._metrics)
            self._consumer = Consumer(
                {
                    **librdkafka_config(self._settings),
                    "client.id": "rnncast-source",
                    "group.id": self._group,  # required by librdkafka; never joined or committed to
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    # Bounded prefetch per partition (librdkafka's default queue is 64 MB each).
                    "queued.max.messages.kbytes": 8 * 1024,
                    "fetch.max.bytes": 4 * 1024 * 1024,
                    "max.partition.fetch.bytes": 1024 * 1024,
                    # How long the broker may hold a fetch when no data is there. Kafka answers a held
                    # fetch as soon as data arrives; Tansu 0.6 does not, so new readings would wait for the
                    # rest of the client's default 500 ms (benchmarks/README.md). Idle partitions cost a
                    # fetch per 20 ms.
                    "fetch.wait.max.ms": _FETCH_MAX_WAIT_MS,
                    **self._health.config(),
                },
                logger=librdkafka_logger(),
            )
        consumer = self._consumer
        key = (topic, partition)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = collections.deque()
            consumer.incremental_assign([TopicPartition(topic, partition, start)])
            self._positions[key] = start
        elif self._positions.get(key) != start:
            consumer.seek(TopicPartition(topic, partition, start))
            buffer.clear()
            self._positions[key] = start
        if not buffer and sum(map(len, self._buffers.values())) < _MAX_BUFFERED_BATCHES * self._max_records:
            # consume(n, timeout) waits for n messages or the timeout: take what is there, and wait
            # only while there is nothing at all.
            messages = consumer.consume(self._max_records, 0) or consumer.consume(1, self._poll_timeout)
            fetched = False
            for message in messages:
                if message.error() is not None:
                    log.warning("reading %s[%s]: %s", message.topic(), message.partition(), message.error())
                    continue
                fetched = True
                polled = (message.topic(), message.partition())
                if polled in self._positions:
                    self._buffers[polled].append(message)
            if fetched:
                self._health.reached()
        count = min(len(buffer), self._max_records)
        return [buffer.popleft() for _ in range(count)]

    def process(
        self,
        element: tuple[str, int, int],
        tracker: OffsetRestrictionTracker = beam.DoFn.RestrictionParam(_PartitionRange()),  # noqa: B008 - Beam's idiom
    ) -> Iterator[KafkaBatch]:
        topic, partition, _ = element
        restriction = tracker.current_restriction()
        if local_runner.stop_requested():
            # Claiming the last offset of the range completes the restriction without reading it:
            # the runner then treats this partition as finished and the pipeline can drain.
            tracker.try_claim(restriction.stop - 1)
            self._commit_due.pop(partition, None)
            yield KafkaBatch.commit_request(topic, partition)
            return
        from confluent_kafka import TopicPartition

        key = (topic, partition)
        messages = self._records(topic, partition, restriction.start)
        position = restriction.start
        offsets: list[int] = []
        positions: list[int] = []
        timestamps_ms: list[int] = []
        keys: list[bytes | None] = []
        values: list[bytes | None] = []
        for message in messages:
            offset = message.offset()
            if offset < position:
                continue  # already claimed (cannot happen after a seek; defensive)
            if not tracker.try_claim(offset):
                self._positions.pop(key, None)  # the runner split the range: seek next time
                break
            offsets.append(offset)
            positions.append(position)
            timestamps_ms.append(message.timestamp()[1])
            keys.append(message.key())
            values.append(message.value())
            position = offset + 1
        else:
            self._positions[key] = position
        if key not in self._positions:
            if offsets:
                yield KafkaBatch(topic, partition, offsets, positions, timestamps_ms, keys, values)
            return
        _, highwater = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        if highwater >= 0:
            self._metrics.set_partition(partition, position, max(highwater - position, 0))
        sweeps = self._sweeps(partition)
        commit = self._commit_request(partition, bool(messages))
        if offsets or sweeps or commit:
            yield KafkaBatch(topic, partition, offsets, positions, timestamps_ms, keys, values, sweeps, commit)
        tracker.defer_remainder(None if messages else Duration.of(self._idle_delay))

    def _commit_request(self, partition: int, busy: bool) -> bool:
        # A partition's first call is a commit request too: with exactly-once the sink then sets up the
        # partition's transactional producer when the job starts (see pipeline/transactions.py).
        first = partition not in self._announced
        self._announced.add(partition)
        now = time.monotonic()
        due = self._commit_due.get(partition)
        if due is None:
            if busy:
                self._commit_due[partition] = now + self._commit_interval
        elif not busy or now >= due:
            del self._commit_due[partition]
            return True
        return first

    def _sweeps(self, partition: int) -> tuple[SweepRequest, ...]:
        if self._state_ttl is None or self._run_id is None:
            return ()
        now = time.monotonic()
        if now < self._next_sweep.get(partition, 0.0):
            return ()
        self._next_sweep[partition] = now + self._sweep_every
        from pipeline.state_store import idle_index

        idle_before, idle = idle_index(self._run_id).take_idle(partition, self._state_ttl)
        return tuple(SweepRequest(partition, stream_id, idle_before) for stream_id in idle)
