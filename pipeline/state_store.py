"""Stream state outside Beam: the changelog topic, restoring from it, and the idle-stream index.

The changelog (Kafka Streams' design): topic ``<group>.rnncast-state``, compacted, key = stream id,
value = :func:`models.state.encode_state` of the stream's state after the last reading applied in a
bundle. Every state carries ``source_partition``/``source_offset`` of that reading, which is what makes
replays idempotent: a replayed reading at or below it is skipped.

Besides full snapshots the changelog holds *markers*: a state with ``readings_seen == 0`` and empty
arrays, written when a stream's state expires. A marker still carries the source position, so readings
replayed after a crash are skipped rather than applied to a fresh state. At start, markers (and
expired snapshots) below the group's committed offset can never be replayed again; they are deleted
with tombstones, which keeps the compacted changelog to live streams plus recent expiries.

:class:`IdleIndex` is how idle streams' state gets cleared without timers on the local runner:
the stateful step records each stream's last event time; the source (same process) periodically takes
the streams that lag their partition's newest reading by more than ``--state-ttl`` and sends a
:class:`~pipeline.messages.SweepRequest` for each through the pipeline (on its next batch), so the
stateful step can drop that stream from its shard. The index lives in process memory, keyed by the job's run id.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from models.state import StateDecodeError, StreamState, decode_state
from pipeline.kafka_config import KafkaSettings, client_kwargs

__all__ = [
    "CHANGELOG_SUFFIX",
    "ChangelogRestore",
    "IdleIndex",
    "RestoredStates",
    "StaticRestore",
    "changelog_topic",
    "ensure_changelog",
    "idle_index",
    "is_marker",
    "marker_for",
    "read_changelog",
]

log = logging.getLogger(__name__)
CHANGELOG_SUFFIX = ".rnncast-state"


def changelog_topic(group: str) -> str:
    """The changelog topic of a consumer group: ``<group>.rnncast-state``."""
    return f"{group}{CHANGELOG_SUFFIX}"


def is_marker(state: StreamState) -> bool:
    """True for an expiry marker: no stream state, only the source position of its last reading."""
    return state.readings_seen == 0


def marker_for(state: StreamState) -> StreamState:
    """The marker left when ``state`` expires (keeps ``last_timestamp`` and the source position)."""
    return StreamState(
        readings_seen=0,
        last_timestamp=state.last_timestamp,
        value_mean=math.nan,
        value_scale=math.nan,
        ring=np.zeros(0),
        ring_fill=0,
        cell_state=np.zeros(0),
        source_partition=state.source_partition,
        source_offset=state.source_offset,
    )


def ensure_changelog(settings: KafkaSettings, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Creates the changelog topic (``cleanup.policy=compact``) unless it exists, and waits for it."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from pipeline.topics import ensure_topics, validate_topic_name

    validate_topic_name(topic)
    admin = KafkaAdminClient(
        client_id="rnncast-admin", request_timeout_ms=int(timeout * 1000), **client_kwargs(settings)
    )
    try:
        existing = {
            t["name"] for t in admin.describe_topics([topic]) if t.get("error_code", 0) == 0 and t.get("partitions")
        }
        if topic not in existing:
            try:
                admin.create_topics(
                    [NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})],
                    timeout_ms=int(timeout * 1000),
                )
                log.info("created changelog topic %s (compacted, %d partitions)", topic, partitions)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    ensure_topics(settings, {topic: partitions}, timeout=timeout)


def read_changelog(settings: KafkaSettings, topic: str, timeout: float = 120.0) -> dict[str, bytes | None]:
    """Reads a whole topic and returns the latest value per key (None for a tombstone).

    Only committed records count (``read_committed``): with exactly-once, snapshots of an aborted
    transaction were never part of the job's state (and the job took its transactional ids over first,
    so none of its transactions is open here).

    Raises:
        TimeoutError: If the end is not reached within ``timeout`` seconds.
    """
    from pipeline.topic_reader import read_to_end

    latest: dict[str, bytes | None] = {}
    for record in read_to_end(settings, topic, timeout=timeout, client_id="rnncast-restore", read_committed=True):
        if record.key is not None:
            latest[record.key.decode("utf-8", "replace")] = record.value
    return latest


class RestoredStates:
    """States read at start, handed to the stateful step once per stream (``pop``), thread-safe.

    Expired snapshots become markers (:meth:`expire`); markers stay until their stream shows up.
    """

    def __init__(self, states: Mapping[str, StreamState] | None = None) -> None:
        self._states: dict[str, StreamState] = dict(states or {})
        self._lock = threading.Lock()

    def pop(self, stream_id: str) -> StreamState | None:
        if not self._states:  # the common case once everything was restored: no lock
            return None
        with self._lock:
            return self._states.pop(stream_id, None)

    def __len__(self) -> int:
        return len(self._states)

    def high_water(self) -> dict[int, float]:
        """Newest ``last_timestamp`` per source partition among the held states."""
        newest: dict[int, float] = {}
        with self._lock:
            for state in self._states.values():
                p = state.source_partition
                if state.last_timestamp > newest.get(p, -math.inf):
                    newest[p] = state.last_timestamp
        return newest

    def expire(self, high_water: Mapping[int, float], ttl: float) -> list[tuple[str, StreamState]]:
        """Turns snapshots older than their partition's ``high_water - ttl`` into markers.

        Returns:
            (stream id, marker) of every snapshot that expired, to be written to the changelog.
        """
        expired = []
        with self._lock:
            for stream_id, state in self._states.items():
                newest = high_water.get(state.source_partition)
                if not is_marker(state) and newest is not None and state.last_timestamp < newest - ttl:
                    expired.append((stream_id, marker_for(state)))
            self._states.update(expired)
        return expired


class StaticRestore:
    """A fixed set of states (tests, or no changelog)."""

    def __init__(self, states: Mapping[str, StreamState] | None = None) -> None:
        self._states = dict(states or {})

    def load(self) -> RestoredStates:
        return RestoredStates(self._states)


@dataclass(frozen=True)
class ChangelogRestore:
    """Reads the changelog once per process (cached by ``run_id``) and keeps this job's streams.

    Attributes:
        settings: Kafka connection.
        topic: The changelog topic.
        partitions: Input partitions this job consumes; other partitions' streams are left alone.
        start_offsets: Where this run starts reading each partition (the committed offsets).
        state_ttl: --state-ttl in seconds, or None.
        run_id: Identifies this run of the job in the process.
    """

    settings: KafkaSettings
    topic: str
    partitions: tuple[int, ...]
    start_offsets: Mapping[int, int]
    state_ttl: float | None
    run_id: str

    def load(self) -> RestoredStates:
        with _CACHE_LOCK:
            restored = _RESTORED.get(self.run_id)
            if restored is None:
                restored = _RESTORED[self.run_id] = self._load()
            return restored

    def _load(self) -> RestoredStates:
        started = time.monotonic()
        latest = read_changelog(self.settings, self.topic)
        states: dict[str, StreamState] = {}
        stale: list[str] = []
        undecodable = 0
        for stream_id, value in latest.items():
            if value is None:
                continue
            try:
                state = decode_state(value)
            except StateDecodeError as err:
                undecodable += 1
                log.error(
                    "changelog %s: state of stream %r is unreadable (%s); it starts fresh", self.topic, stream_id, err
                )
                continue
            if state.source_partition not in self.partitions:
                continue  # another instance's stream
            below_start = state.source_offset < self.start_offsets.get(state.source_partition, 0)
            if is_marker(state) and below_start:
                stale.append(stream_id)  # its readings can never be replayed again
                continue
            states[stream_id] = state
        restored = RestoredStates(states)
        if self.state_ttl is not None:
            for stream_id, marker in restored.expire(restored.high_water(), self.state_ttl):
                if marker.source_offset < self.start_offsets.get(marker.source_partition, 0):
                    restored.pop(stream_id)
                    stale.append(stream_id)
        if stale:
            self._delete(stale)
        idle_index(self.run_id).seed(restored.high_water())
        log.info(
            "restored %d stream states from %s in %.2f s (%d deleted as expired, %d unreadable)",
            len(restored),
            self.topic,
            time.monotonic() - started,
            len(stale),
            undecodable,
        )
        return restored

    def _delete(self, stream_ids: Iterable[str]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(client_id="rnncast-restore", acks="all", linger_ms=5, **client_kwargs(self.settings))
        try:
            for stream_id in stream_ids:
                producer.send(self.topic, key=stream_id.encode("utf-8"), value=None)
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=5)


_RESTORED: dict[str, RestoredStates] = {}
_CACHE_LOCK = threading.RLock()  # load() -> _load() -> idle_index() re-enters


@dataclass
class IdleIndex:
    """Last event time of every stream with live state, per input partition (see the module docstring)."""

    _last: dict[int, dict[str, float]] = field(default_factory=dict)
    _newest: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def seed(self, newest: Mapping[int, float]) -> None:
        """Starts each partition's newest event time (from restored states)."""
        with self._lock:
            for partition, t in newest.items():
                if t > self._newest.get(partition, -math.inf):
                    self._newest[partition] = t

    def note(self, partition: int, stream_id: str, timestamp: float) -> None:
        """A reading of ``stream_id`` at ``timestamp`` was applied."""
        with self._lock:
            self._last.setdefault(partition, {})[stream_id] = timestamp
            if timestamp > self._newest.get(partition, -math.inf):
                self._newest[partition] = timestamp

    def forget(self, partition: int, stream_id: str) -> None:
        with self._lock:
            self._last.get(partition, {}).pop(stream_id, None)

    def newest(self) -> dict[int, float]:
        with self._lock:
            return dict(self._newest)

    def take_idle(self, partition: int, ttl: float) -> tuple[float, list[str]]:
        """Removes and returns the streams of ``partition`` idle for more than ``ttl`` of event time.

        Returns:
            (idle_before, stream ids): the streams whose last reading is before ``idle_before``.
        """
        with self._lock:
            newest = self._newest.get(partition)
            last = self._last.get(partition)
            if newest is None or not last:
                return -math.inf, []
            idle_before = newest - ttl
            idle = [sid for sid, t in last.items() if t < idle_before]
            for sid in idle:
                del last[sid]
            return idle_before, idle

    def __len__(self) -> int:
        with self._lock:
            return sum(len(streams) for streams in self._last.values())


_INDEXES: dict[str, IdleIndex] = {}


def idle_index(run_id: str) -> IdleIndex:
    """The process-wide :class:`IdleIndex` of a run."""
    with _CACHE_LOCK:
        index = _INDEXES.get(run_id)
        if index is None:
            index = _INDEXES[run_id] = IdleIndex()
        return index
