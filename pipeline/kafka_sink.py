"""The Kafka sink and the offset committer: outputs first, then state, then offsets.

:class:`PublishOutcomes`

1. produces every forecast and dead letter of a bundle (confluent-kafka/librdkafka, ``acks=all``,
   idempotent), flushes at the bundle's end and checks every acknowledgement;
2. holds the latest state of every stream touched since the last snapshot write, with the offset
   intervals of the records done since then;
3. when a commit request arrives in a bundle (the source marks a :class:`~pipeline.messages.KafkaBatch`
   as one when a partition goes idle, every ``--commit-interval`` while it is busy, and at stop), or
   the interval has passed since the last write, at the end of that bundle it produces the held
   states to the changelog, flushes and checks again, and only then emits, per input partition, the
   offset intervals completed since the last write.

:class:`CommitOffsets` (stateful, keyed by partition) keeps an :class:`OffsetLedger` per partition and
commits the group's offset as far as the completed intervals reach without a hole. So an offset is
committed only after the forecast or dead letter of its record — and a snapshot that contains its
reading — were acknowledged by the broker; a crash anywhere replays from the committed offset and the
snapshots' source positions make the replay skip what the state already holds.

Writing snapshots per commit interval rather than per bundle is Kafka Streams' ``commit.interval.ms``:
a stream that got many readings in the interval costs one changelog record, and states are encoded
only when written. The price is a longer replay after a crash (up to an interval of readings, each
re-emitting a byte-identical forecast); a graceful stop writes everything (its commit requests).
The held states live in the DoFn instance between bundles: losing them (a crash) loses only
uncommitted progress. On a distributed runner the commit requests of one partition may reach another
worker; there the interval alone paces the writes.

Each record's interval is ``[position, offset + 1)`` where ``position`` is the consumer position before
it (see :class:`~pipeline.messages.KafkaBatch`), so holes in the log (compaction, transaction markers)
do not stall the commits, and the ledger needs no knowledge of which offsets exist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from models.state import encode_state
from pipeline.coders import OffsetLedgerCoder
from pipeline.kafka_config import KafkaSettings, client_kwargs, librdkafka_config
from pipeline.kafka_health import ClientHealth, librdkafka_logger
from pipeline.messages import OutcomeBatch
from pipeline.metrics import JobMetrics, default_metrics

__all__ = ["CommitOffsets", "DeliveryError", "OffsetLedger", "OutcomeWriter", "PublishOutcomes", "merge_intervals"]

log = logging.getLogger(__name__)

Interval = tuple[int, int]

# acks=all + idempotence: no reordering or duplicates from the producer's own retries.
# librdkafka's queue holds a bundle's outputs plus the held snapshots (one per stream) until a flush.
# linger.ms 20: fewer, larger produce requests cost the broker and librdkafka less, while the flush at
# each bundle's end still sends at once; longer left the bundle thread waiting in that flush (the
# measurements: benchmarks/README.md, "Sink linger.ms").
SINK_PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 20,
    "client.id": "rnncast-serve",
    "queue.buffering.max.messages": 2_000_000,
    # Keyed records land where kafka-python and Java clients put them (the changelog's tombstones,
    # written by kafka-python at restore, must meet the snapshots of the same key).
    "partitioner": "murmur2_random",
    # While no broker answers (an outage, a restart) records wait in librdkafka's queue and are retried;
    # only after this long do they fail, and with them the bundle (the job then exits 1).
    "message.timeout.ms": 300_000,
}
# Waiting on acknowledgements: a bit longer than message.timeout.ms, so undeliverable records are
# reported by librdkafka itself before this deadline.
FLUSH_TIMEOUT = 330.0
_FLUSH_LOG_EVERY = 10.0


class DeliveryError(RuntimeError):
    """Outputs were not acknowledged; the bundle fails and nothing of it is committed."""


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with overlapping or touching ``[start, end)`` intervals merged."""
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


@dataclass(frozen=True)
class OffsetLedger:
    """What may be committed on one partition.

    Attributes:
        committed: Everything before this offset is done (the offset to commit).
        pending: Done intervals beyond ``committed``, waiting for the hole before them to fill.
    """

    committed: int
    pending: tuple[Interval, ...] = ()

    def add(self, intervals: Iterable[Interval]) -> OffsetLedger:
        committed = self.committed
        pending = []
        for start, end in merge_intervals([*self.pending, *intervals]):
            if start <= committed:
                committed = max(committed, end)
            else:
                pending.append((start, end))
        return OffsetLedger(committed, tuple(pending))


class PublishOutcomes(beam.DoFn):
    """Produces a bundle's outputs (:class:`~pipeline.messages.OutcomeBatch` es); on a commit request, its held
    snapshots, then ``(partition, intervals)``.

    Args:
        settings: Kafka connection (with its security settings).
        output_topic: Forecasts topic.
        dlq_topic: Dead-letter topic.
        changelog_topic: State changelog topic.
        commit_interval: Seconds after which held snapshots are written at a bundle's end even without
            a commit request.
        encode_snapshot: Turns a held snapshot into the changelog record's value (bytes pass as they are).
        flush_timeout: Seconds to wait for acknowledgements before failing the bundle.
        metrics: Factory of the job's metrics.
        clock: Wall clock in epoch seconds (latency metric, commit interval).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        output_topic: str,
        dlq_topic: str,
        changelog_topic: str,
        commit_interval: float = 5.0,
        encode_snapshot: Callable[[Any], bytes] = encode_state,
        flush_timeout: float = FLUSH_TIMEOUT,
        metrics: Any = default_metrics,
        clock: Any = time.time,
    ) -> None:
        self._settings = settings
        self._output_topic = output_topic
        self._dlq_topic = dlq_topic
        self._changelog_topic = changelog_topic
        self._commit_interval = commit_interval
        self._encode_snapshot = encode_snapshot
        self._flush_timeout = flush_timeout
        self._metrics_factory = metrics
        self._clock = clock

    def setup(self) -> None:
        self._metrics: JobMetrics = self._metrics_factory()
        self._writer = OutcomeWriter(
            self._settings,
            output_topic=self._output_topic,
            dlq_topic=self._dlq_topic,
            changelog_topic=self._changelog_topic,
            encode_snapshot=self._encode_snapshot,
            flush_timeout=self._flush_timeout,
            health=ClientHealth("sink", self._metrics),
        )
        self._snapshots: dict[str, Any] = {}  # stream id -> latest state not yet in the changelog
        self._done: dict[int, list[Interval]] = {}  # partition -> intervals done since the last write
        self._last_write = self._clock()

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            self._writer = None
            writer.producer.flush(5)

    def start_bundle(self) -> None:
        self._commit_requested = False

    def process(self, batch: OutcomeBatch) -> None:
        writer = self._writer
        for outcome in batch.outcomes:
            writer.publish(outcome)
            if outcome.offset >= 0:
                self._done.setdefault(outcome.partition, []).append((outcome.position, outcome.offset + 1))
            elif outcome.commit:
                self._commit_requested = True
        if batch.snapshots:
            self._snapshots.update(batch.snapshots)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        writer = self._writer
        if writer.delivery.sent:
            writer.flush("forecasts and dead letters")
            writer.observe(self._metrics, self._clock())
        if not (self._commit_requested or self._clock() - self._last_write >= self._commit_interval):
            return
        self._last_write = self._clock()
        if self._snapshots:
            writer.write_snapshots(self._snapshots)
            writer.flush("state snapshots")
        done, self._done = self._done, {}
        for partition, intervals in done.items():
            yield WindowedValue((partition, tuple(merge_intervals(intervals))), MIN_TIMESTAMP, [GlobalWindow()])


class OutcomeWriter:
    """One librdkafka producer writing outcomes' forecasts and dead letters, and state snapshots; checks every
    acknowledgement. Both sinks (:class:`PublishOutcomes`, and the transactional one in
    :mod:`pipeline.transactions`) write through it.

    Forecasts go to the input record's partition (co-partitioned with the readings) when the forecasts
    topic has that partition; otherwise the key decides (murmur2, as Java clients).

    Args:
        settings: Kafka connection (with its security settings).
        output_topic, dlq_topic, changelog_topic: Where forecasts, dead letters and snapshots go.
        encode_snapshot: Turns a held snapshot into the changelog record's value (bytes pass as they are).
        flush_timeout: Seconds :meth:`flush` waits for acknowledgements.
        extra_config: More librdkafka settings (e.g. ``transactional.id``).
        health: The connection-health callbacks; told when outputs were acknowledged.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        output_topic: str,
        dlq_topic: str,
        changelog_topic: str,
        encode_snapshot: Callable[[Any], bytes] = encode_state,
        flush_timeout: float = FLUSH_TIMEOUT,
        extra_config: Mapping[str, Any] | None = None,
        health: ClientHealth | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.health = health
        self.producer = Producer(
            {
                **SINK_PRODUCER_CONFIG,
                **librdkafka_config(settings),
                **(health.config() if health else {}),
                **(extra_config or {}),
            },
            logger=librdkafka_logger(),
        )
        self._output_topic = output_topic
        self._dlq_topic = dlq_topic
        self._changelog_topic = changelog_topic
        self._encode_snapshot = encode_snapshot
        self._flush_timeout = flush_timeout
        self.delivery = _DeliveryCheck()
        metadata = self.producer.list_topics(output_topic, timeout=30).topics.get(output_topic)
        self._output_partitions = len(metadata.partitions) if metadata is not None and metadata.error is None else 0
        self._forecast_times_ms: list[int] = []
        self._reasons: dict[str, int] = {}

    def publish(self, outcome: Any) -> None:
        """Produces the outcome's forecast and dead letter, if any (and remembers them for :meth:`observe`)."""
        if outcome.forecast is not None:
            if outcome.partition < self._output_partitions:
                self.send(self._output_topic, outcome.key, outcome.forecast, outcome.partition)
            else:
                self.send(self._output_topic, outcome.key, outcome.forecast)
            self._forecast_times_ms.append(outcome.timestamp_ms)
        if outcome.dead_letter is not None:
            self.send(self._dlq_topic, outcome.key, outcome.dead_letter)
            reason = outcome.reason or "bad_value"
            self._reasons[reason] = self._reasons.get(reason, 0) + 1

    def write_snapshots(self, snapshots: dict[str, Any]) -> None:
        """Produces every held snapshot to the changelog, emptying ``snapshots``."""
        while snapshots:  # popped as produced: librdkafka holds its own copy (peak memory at 100k streams)
            stream_id, state = snapshots.popitem()
            value = state if isinstance(state, bytes) else self._encode_snapshot(state)
            self.send(self._changelog_topic, stream_id.encode("utf-8"), value)

    def send(self, topic: str, key: bytes | None, value: bytes, *partition: int) -> None:
        try:
            self.producer.produce(topic, value, key, *partition, on_delivery=self.delivery)
        except BufferError:  # librdkafka's queue is full: wait for some acknowledgements, once
            self.producer.poll(1.0)
            self.producer.produce(topic, value, key, *partition, on_delivery=self.delivery)
        self.delivery.sent += 1

    def observe(self, metrics: JobMetrics, visible_at: float) -> None:
        """Counts the forecasts and dead letters published since the last call; latency up to ``visible_at``."""
        if self._forecast_times_ms:
            metrics.forecasts.inc(len(self._forecast_times_ms))
            sent = np.asarray(self._forecast_times_ms, dtype=np.float64) / 1000.0
            metrics.observe_forecast_latencies(np.maximum(visible_at - sent, 0.0))
            self._forecast_times_ms = []
        for reason, count in self._reasons.items():
            metrics.dead_letter(reason, count)
        self._reasons = {}

    def flush(self, what: str) -> None:
        """Waits for every acknowledgement; raises :class:`DeliveryError` if one is missing or failed."""
        deadline = time.monotonic() + self._flush_timeout
        remaining = self.producer.flush(min(_FLUSH_LOG_EVERY, self._flush_timeout))
        while remaining and time.monotonic() < deadline:
            log.warning(
                "waiting for Kafka to acknowledge %d %s (retried until acknowledged or %g s)",
                remaining,
                what,
                SINK_PRODUCER_CONFIG["message.timeout.ms"] / 1000,
            )
            remaining = self.producer.flush(max(0.0, min(_FLUSH_LOG_EVERY, deadline - time.monotonic())))
        sent, failed, first_error = self.delivery.take()
        if remaining:
            raise DeliveryError(f"{remaining} of {sent} {what} not acknowledged within {self._flush_timeout:g} s")
        if failed:
            raise DeliveryError(f"{failed} of {sent} {what} were not acknowledged: {first_error}")
        if sent and self.health is not None:
            self.health.reached()


class _DeliveryCheck:
    """librdkafka's delivery callback: counts what was produced and what failed since the last take()."""

    __slots__ = ("sent", "failed", "first_error")

    def __init__(self) -> None:
        self.sent = self.failed = 0
        self.first_error: Any = None

    def __call__(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failed += 1
            if self.first_error is None:  # named with its topic: an ACL refusal says which one
                self.first_error = f"{message.topic()}: {error.str() if hasattr(error, 'str') else error}"

    def take(self) -> tuple[int, int, Any]:
        taken = (self.sent, self.failed, self.first_error)
        self.sent = self.failed = 0
        self.first_error = None
        return taken


class CommitOffsets(beam.DoFn):
    """Stateful per partition: folds completed intervals into the ledger, commits at bundle end.

    Commits go to the group with kafka-python's ``commit()`` and no group membership (the job assigns
    its partitions itself), like a Kafka "simple consumer".

    Args:
        settings: Kafka connection.
        group: Consumer group to commit for.
        topic: The input topic.
        start_offsets: Where this run started reading each partition (the ledger's origin).
    """

    LEDGER = ReadModifyWriteStateSpec("offset_ledger", OffsetLedgerCoder())

    def __init__(self, settings: KafkaSettings, *, group: str, topic: str, start_offsets: Mapping[int, int]) -> None:
        self._settings = settings
        self._group = group
        self._topic = topic
        self._start_offsets = dict(start_offsets)

    def setup(self) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            client_id="rnncast-committer",
            group_id=self._group,
            enable_auto_commit=False,
            **client_kwargs(self._settings),
        )

    def teardown(self) -> None:
        consumer = getattr(self, "_consumer", None)
        if consumer is not None:
            consumer.close()

    def start_bundle(self) -> None:
        self._to_commit: dict[int, int] = dict(getattr(self, "_pending_retry", {}))

    def process(self, element: tuple[int, tuple[Interval, ...]], ledger: Any = beam.DoFn.StateParam(LEDGER)) -> None:
        partition, intervals = element
        stored = ledger.read()
        current = OffsetLedger(*stored) if stored is not None else OffsetLedger(self._start_offsets[partition])
        updated = current.add(intervals)
        ledger.write((updated.committed, updated.pending))
        if updated.committed != current.committed or stored is None or partition in self._to_commit:
            self._to_commit[partition] = updated.committed

    def finish_bundle(self) -> None:
        if not self._to_commit:
            return
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        offsets = {
            TopicPartition(self._topic, p): OffsetAndMetadata(offset, "", -1) for p, offset in self._to_commit.items()
        }
        try:
            self._consumer.commit(offsets)
        except KafkaError as err:
            # Not fatal: outputs and state are safe; a restart would only replay more. The ledger keeps
            # the position, and the next bundle that advances the partition commits it again.
            log.warning(
                "committing offsets %s failed (%s); will retry with the next bundle", dict(self._to_commit), err
            )
            self._pending_retry = dict(self._to_commit)
            return
        self._pending_retry = {}
        log.debug("committed %s", dict(self._to_commit))
