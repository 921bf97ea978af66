"""Exactly-once output (``serve --guarantee exactly-once``): one Kafka transaction per input partition and commit.

Kafka Streams' first exactly-once design (one transactional producer per input partition), on Beam::

    ForecastDoFn -> KeyByPartition -> PublishTransactions (stateful, keyed by input partition)

All of a partition's outcomes meet one :class:`PublishTransactions` instance (a stateful DoFn is what
makes Beam deliver a key to one instance), which owns one transactional producer for that partition,
``transactional.id`` = :func:`transactional_id` (``<group>.rnncast-txn.<input topic>.<partition>``).

* Each :class:`~pipeline.messages.OutcomeBatch` is a *unit*. A unit is *released* once every record
  before its last one is in a released unit too (the contiguous prefix of the partition, as
  :class:`~pipeline.kafka_sink.OffsetLedger` computes it): its forecasts and dead letters are produced into
  the partition's open transaction at once, its snapshots are held (latest per stream).
* At a commit (a commit request of the partition reached the bundle, or ``--commit-interval`` passed,
  checked at the bundle's end) the held snapshots are produced, the released prefix's end is sent to the
  transaction as the group's input offset (``send_offsets_to_transaction``) and the transaction commits:
  forecasts, dead letters, state and offset become visible to ``read_committed`` consumers together, or
  not at all.

Why only the contiguous prefix: a transaction's offset must cover exactly the records whose outputs it
holds. An output beyond it would be made again after a crash (a dead letter is in no state that could
skip it), and a stream's snapshot taken after a later reading would make the replay skip an earlier one.

Restart: :func:`fence` runs before anything is read (``pipeline.job.prepare``): ``init_transactions`` for
every partition's id aborts the open transaction of a previous incarnation (and fences it: a zombie's
commit fails). Then the committed offsets and the changelog (read_committed) are read: the state of
exactly that offset, so the replay makes the same forecasts, none twice. A second instance with the
same group and partitions fences the first: the first's next commit fails and it exits, naming the cause.
The source sends every partition a commit request when it starts, so an instance initialises all its
producers at start and the later start wins.

The input offsets are committed for the job's group with the consumer-group metadata of a consumer that
never joins it (generation -1): the source assigns partitions itself, and Kafka accepts transactional
offset commits for a group without members (verified on Apache Kafka 4.1.1).

Transactions need a broker that writes transaction markers: :func:`require_transactions` refuses one that
does not (Tansu 0.6: its ``read_committed`` consumers see aborted records; tests/test_transactions.py).

Limit: transactions are not aligned with a distributed runner's own checkpoints. Outputs of a transaction
that a worker failure aborts are made again only by a restart of the job from Kafka (what the local
runner does after a crash); a partition's key moving to another worker while the job runs is detected
and fails the job for that reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from models.state import decode_state
from pipeline.kafka_config import KafkaSettings, client_kwargs, librdkafka_config
from pipeline.kafka_health import ClientHealth, librdkafka_logger
from pipeline.kafka_sink import DeliveryError, Interval, OffsetLedger, OutcomeWriter
from pipeline.messages import Outcome, OutcomeBatch
from pipeline.metrics import JobMetrics, default_metrics

__all__ = [
    "KeyByPartition",
    "PublishTransactions",
    "TransactionError",
    "TransactionsUnsupported",
    "fence",
    "require_transactions",
    "transactional_id",
]

log = logging.getLogger(__name__)

_WRITE_TXN_MARKERS = 27  # the API through which a Kafka transaction coordinator writes commit/abort markers
# An open transaction of a job that died and is never restarted holds read_committed consumers back
# this long (a restart aborts it at once, by fencing). librdkafka requires message.timeout.ms (300 s for
# the at-least-once sink, which rides out broker outages) to be at most this: a record not delivered
# within it fails its transaction, the job exits and a restart replays it.
TRANSACTION_TIMEOUT_MS = 60_000


class TransactionsUnsupported(ValueError):
    """The broker cannot give exactly-once (one line, for the command line)."""


class TransactionError(RuntimeError):
    """A transaction failed (fenced by another instance, or not committed); nothing of it is visible."""


def transactional_id(group: str, topic: str, partition: int) -> str:
    """The transactional.id of one input partition of the job identified by ``group``."""
    return f"{group}.rnncast-txn.{topic}.{partition}"


def require_transactions(settings: KafkaSettings, timeout: float = 30.0) -> None:
    """Refuses a broker whose transactions are not reliable.

    Apache Kafka has listed WriteTxnMarkers in ApiVersions since transactions exist (0.11); a broker without
    it writes no abort markers, and Tansu 0.6, which lacks it, hands aborted records to ``read_committed``
    consumers (measured).

    Raises:
        TransactionsUnsupported: With the reason in one line.
    """
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        client_id="rnncast-admin", request_timeout_ms=int(timeout * 1000), **client_kwargs(settings)
    )
    try:
        apis = {int(key) for key in admin.api_versions()}
    finally:
        admin.close()
    if _WRITE_TXN_MARKERS not in apis:
        raise TransactionsUnsupported(
            f"--guarantee exactly-once: the broker at {settings.bootstrap} does not support reliable transactions "
            f"(it does not offer WriteTxnMarkers; Tansu 0.6 is such a broker, and its read_committed consumers see "
            f"aborted records); use --guarantee at-least-once, or Apache Kafka"
        )


def _producer_config(settings: KafkaSettings, group: str, topic: str, partition: int) -> dict[str, Any]:
    return {
        **librdkafka_config(settings),
        "transactional.id": transactional_id(group, topic, partition),
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        "message.timeout.ms": TRANSACTION_TIMEOUT_MS,
    }


def _describe(err: Exception) -> str:
    error = err.args[0] if err.args else None
    return error.str() if hasattr(error, "str") else str(err)


def fence(settings: KafkaSettings, group: str, topic: str, partitions: list[int], timeout: float = 60.0) -> None:
    """Takes over the transactional ids of ``partitions``: aborts a previous incarnation's open transactions
    and fences it. Run before the committed offsets and the changelog are read.

    Raises:
        TransactionError: If an id cannot be initialised (e.g. not authorised), naming it.
    """
    from confluent_kafka import KafkaException, Producer

    started = time.monotonic()
    for partition in partitions:
        producer = Producer(
            {**_producer_config(settings, group, topic, partition), "client.id": "rnncast-fence"},
            logger=librdkafka_logger(),
        )
        try:
            producer.init_transactions(timeout)
        except KafkaException as err:
            raise TransactionError(
                f"transactional.id {transactional_id(group, topic, partition)!r}: {_describe(err)}"
            ) from None
        finally:
            producer.flush(0)
    log.info(
        "exactly-once: took over the transactional ids of %s partitions %s in %.2f s (open transactions of a "
        "previous instance aborted)",
        topic,
        ",".join(map(str, partitions)),
        time.monotonic() - started,
    )


class KeyByPartition(beam.DoFn):
    """:class:`OutcomeBatch` -> ``(input partition, OutcomeBatch)`` for :class:`PublishTransactions`.

    A batch of the stateful step holds one partition's records (and their streams' snapshots); a batch of
    expired restored states only (no outcomes) is split by each state's source partition.
    """

    def process(self, batch: OutcomeBatch) -> Iterator[tuple[int, OutcomeBatch]]:
        outcomes = batch.outcomes
        if outcomes:
            partition = outcomes[0].partition
            if all(outcome.partition == partition for outcome in outcomes):
                yield partition, batch
                return
            raise ValueError(f"an outcome batch mixes input partitions {sorted({o.partition for o in outcomes})}")
        by_partition: dict[int, dict[str, Any]] = {}
        for stream_id, state in batch.snapshots.items():
            source = decode_state(state) if isinstance(state, bytes) else state
            by_partition.setdefault(source.source_partition, {})[stream_id] = state
        for partition, snapshots in by_partition.items():
            yield partition, OutcomeBatch([], snapshots)


class _Unit(NamedTuple):
    outcomes: list[Outcome]
    snapshots: dict[str, Any]
    intervals: list[Interval]
    end: int  # the largest interval end; -1 without records


def _unit(batch: OutcomeBatch) -> _Unit:
    intervals = [(o.position, o.offset + 1) for o in batch.outcomes if o.offset >= 0]
    return _Unit(batch.outcomes, batch.snapshots, intervals, max((end for _, end in intervals), default=-1))


class _PartitionTransaction:
    """One partition's producer, its open transaction and what waits for it (see the module docstring)."""

    def __init__(self, writer: OutcomeWriter, ready: Future, frontier: int, now: float) -> None:
        self.writer = writer
        self.ready = ready  # init_transactions, run in the background: partitions initialise in parallel
        self.frontier = frontier  # end of the released prefix
        self.committed = frontier  # the offset of the last commit
        self.held: list[_Unit] = []  # units beyond a hole in the prefix
        self.snapshots: dict[str, Any] = {}  # released, not yet produced
        self.open = False
        self.commit_requested = False
        self.last_commit = now

    def add(self, batch: OutcomeBatch) -> None:
        self.held.append(_unit(batch))
        candidates = self.held
        while True:  # the largest set of held units that covers a contiguous prefix of its own
            ledger = OffsetLedger(self.frontier).add(i for unit in candidates for i in unit.intervals)
            ready = [unit for unit in candidates if unit.end <= ledger.committed]
            if len(ready) == len(candidates):
                break
            candidates = ready
        if not candidates:
            return
        released = set(map(id, candidates))
        self.held = [unit for unit in self.held if id(unit) not in released]
        for unit in candidates:
            for outcome in unit.outcomes:
                if outcome.forecast is not None or outcome.dead_letter is not None:
                    self.begin()
                    self.writer.publish(outcome)
                elif outcome.commit:
                    self.commit_requested = True
            self.snapshots.update(unit.snapshots)
        self.frontier = ledger.committed

    def begin(self) -> None:
        if not self.open:
            self.ready.result()
            self.writer.producer.begin_transaction()
            self.open = True

    @property
    def has_work(self) -> bool:
        return self.open or bool(self.snapshots) or self.frontier != self.committed


class PublishTransactions(beam.DoFn):
    """Stateful, keyed by input partition: a partition's outcomes, state snapshots and input offset in one
    transaction per commit (see the module docstring).

    Args:
        settings: Kafka connection (with its security settings).
        group: The job's consumer group: its offsets, and the prefix of the transactional ids.
        input_topic: The readings topic (offsets, transactional ids).
        output_topic, dlq_topic, changelog_topic: Where forecasts, dead letters and snapshots go.
        start_offsets: Where this run started reading each partition (the committed offsets).
        commit_interval: Seconds after which a partition with released work commits even without a request.
        timeout: Seconds for transaction calls (init, offsets, commit).
        metrics: Factory of the job's metrics.
        clock: Wall clock in epoch seconds (latency metric, commit interval).
    """

    RELEASED = ReadModifyWriteStateSpec("released_offset", VarIntCoder())

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group: str,
        input_topic: str,
        output_topic: str,
        dlq_topic: str,
        changelog_topic: str,
        start_offsets: Mapping[int, int],
        commit_interval: float = 0.2,
        timeout: float = 60.0,
        metrics: Any = default_metrics,
        clock: Any = time.time,
    ) -> None:
        self._settings = settings
        self._group = group
        self._input_topic = input_topic
        self._topics = {"output_topic": output_topic, "dlq_topic": dlq_topic, "changelog_topic": changelog_topic}
        self._start_offsets = dict(start_offsets)
        self._commit_interval = commit_interval
        self._timeout = timeout
        self._metrics_factory = metrics
        self._clock = clock

    def setup(self) -> None:
        from confluent_kafka import Consumer

        self._metrics: JobMetrics = self._metrics_factory()
        self._transactions: dict[int, _PartitionTransaction] = {}
        # Transaction calls wait for the broker with the GIL released: partitions' inits and commits overlap.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="rnncast-txn")
        # Never subscribed: its group metadata says "no member, generation -1", a simple consumer's commit.
        consumer = Consumer(
            {**librdkafka_config(self._settings), "group.id": self._group, "enable.auto.commit": False},
            logger=librdkafka_logger(),
        )
        try:
            self._group_metadata = consumer.consumer_group_metadata()
        finally:
            consumer.close()

    def teardown(self) -> None:
        for partition, txn in getattr(self, "_transactions", {}).items():
            if txn.open:  # not committed: nothing of it becomes visible; a restart replays it
                try:
                    txn.writer.producer.abort_transaction(5)
                except Exception:
                    log.debug("aborting the transaction of partition %s failed", partition, exc_info=True)
        self._transactions = {}
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def _transaction(self, partition: int, released: Any) -> _PartitionTransaction:
        txn = self._transactions.get(partition)
        if txn is not None:
            return txn
        if released.read() is not None:
            raise TransactionError(
                f"partition {partition}'s transactions moved to another worker while the job ran; outputs of its "
                f"open transaction were aborted: restart the job (exactly-once resumes from Kafka)"
            )
        writer = OutcomeWriter(
            self._settings,
            **self._topics,
            extra_config=_producer_config(self._settings, self._group, self._input_topic, partition),
            health=ClientHealth("sink", self._metrics),
        )
        ready = self._pool.submit(self._init, writer, partition)
        txn = self._transactions[partition] = _PartitionTransaction(
            writer, ready, self._start_offsets[partition], self._clock()
        )
        return txn

    def _init(self, writer: OutcomeWriter, partition: int) -> None:
        started = time.monotonic()
        try:
            writer.producer.init_transactions(self._timeout)
        except Exception as err:
            raise TransactionError(
                f"transactional.id {transactional_id(self._group, self._input_topic, partition)!r}: {_describe(err)}"
            ) from None
        log.info("partition %s: transactional producer ready in %.2f s", partition, time.monotonic() - started)

    def process(self, element: tuple[int, OutcomeBatch], released: Any = beam.DoFn.StateParam(RELEASED)) -> None:
        partition, batch = element
        txn = self._transaction(partition, released)
        before = txn.frontier
        txn.add(batch)
        if txn.frontier != before or released.read() is None:
            released.write(txn.frontier)

    def finish_bundle(self) -> None:
        now = self._clock()
        commits = []
        for partition, txn in self._transactions.items():
            if not txn.has_work:
                txn.commit_requested = False
            elif txn.commit_requested or now - txn.last_commit >= self._commit_interval:
                commits.append(self._pool.submit(self._commit, partition, txn))
        for commit in commits:
            commit.result()  # the first failure fails the bundle

    def _commit(self, partition: int, txn: _PartitionTransaction) -> None:
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        writer = txn.writer
        producer = writer.producer
        tid = transactional_id(self._group, self._input_topic, partition)
        started = time.monotonic()
        try:
            txn.ready.result()
            txn.begin()
            writer.write_snapshots(txn.snapshots)
            producer.send_offsets_to_transaction(
                [TopicPartition(self._input_topic, partition, txn.frontier)], self._group_metadata, self._timeout
            )
            producer.commit_transaction(self._timeout)
        except KafkaException as err:
            error = err.args[0] if err.args else None
            # A fenced producer's commit says "fenced"; a produce() after the fence only says "Fatal error".
            if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
                raise TransactionError(
                    f"partition {partition}: transactional.id {tid!r} is fenced or failed fatally ({_describe(err)}): "
                    f"another instance of group {self._group!r} took over this partition; this instance stops"
                ) from None
            raise TransactionError(
                f"partition {partition}: the transaction was not committed: {_describe(err)}"
            ) from None
        sent, failed, first_error = writer.delivery.take()
        if failed:  # commit_transaction fails first; kept as a second line of defence
            raise DeliveryError(f"{failed} of {sent} records of a committed transaction failed: {first_error}")
        txn.open = False
        txn.commit_requested = False
        txn.committed = txn.frontier
        txn.last_commit = self._clock()
        writer.observe(self._metrics, txn.last_commit)
        if writer.health is not None:
            writer.health.reached()
        log.debug("partition %s: committed up to %s in %.3f s", partition, txn.frontier, time.monotonic() - started)
