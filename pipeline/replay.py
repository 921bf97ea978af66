"""Publish readings to a Kafka topic, optionally paced: the load generator of rnncast.

A reading is published as JSON, keyed by its stream id (UTF-8), e.g.::

    {"stream_id": "vic", "timestamp": "2014-01-01T00:30:00Z", "value": 3.21,
     "temperature": 21.5, "workday": 0.0}

Covariates are top-level fields named after the CSV columns. Non-finite numbers become
``null`` (JSON has no NaN). The Kafka record timestamp is left to the producer (wall
clock): setting it to the event time would make a real cluster's retention delete
replayed history at once.

:func:`publish_readings` is the core; tests and benchmarks call it directly.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.reading import Reading
from models.timeutil import format_timestamp
from pipeline.kafka_config import KafkaSettings, client_kwargs

if TYPE_CHECKING:
    from models.data import Dataset

__all__ = [
    "PRODUCER_DEFAULTS",
    "EventTimePacer",
    "ReplayError",
    "ReplayStats",
    "TokenBucket",
    "encode_reading",
    "make_producer",
    "publish_readings",
    "readings_from_dataset",
]

# acks=all + idempotence keep per-partition (hence per-stream) order across retries.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "batch_size": 512 * 1024,
    "client_id": "rnncast-replay",
}
_PROGRESS_EVERY = 64
_RESERVED_FIELDS = ("stream_id", "timestamp", "value")

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class ReplayError(RuntimeError):
    """Readings could not be delivered."""


@dataclass(frozen=True)
class ReplayStats:
    """What a replay did.

    Attributes:
        published: Readings acknowledged by the broker.
        seconds: Wall time from the first send to the final flush.
    """

    published: int
    seconds: float

    @property
    def rate(self) -> float:
        """Readings per second (0 when nothing was timed)."""
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """``{"published": n, "seconds": s, "rate": r}`` for ``--json``."""
        return {"published": self.published, "seconds": round(self.seconds, 6), "rate": round(self.rate, 3)}


class TokenBucket:
    """Limits a loop to ``rate`` events per second without sleeping per event.

    A token bucket written in its virtual-schedule form (GCRA): event ``n`` is due at
    ``origin + n / rate``. The caller sleeps only once it is more than ``burst_seconds``
    ahead of schedule, so at high rates it sleeps once per ``rate * burst_seconds``
    events. When the caller falls more than ``max_lag_seconds`` behind (a slow broker),
    the schedule is re-anchored instead of bursting to catch up.

    Args:
        rate: Events per second (> 0).
        burst_seconds: How far ahead of schedule the caller may run before sleeping.
        max_lag_seconds: How far behind schedule it may fall before re-anchoring.
        clock: Monotonic clock (injectable for tests).
        sleep: Sleep function (injectable for tests).
    """

    def __init__(
        self,
        rate: float,
        *,
        burst_seconds: float = 0.02,
        max_lag_seconds: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.rate = float(rate)
        self.burst_seconds = burst_seconds
        self.max_lag_seconds = max_lag_seconds
        self._clock = clock
        self._sleep = sleep
        self._origin: float | None = None
        self._count = 0

    def acquire(self) -> bool:
        """Accounts for one event, sleeping first if the caller is ahead of schedule.

        Returns:
            True if it slept.
        """
        now = self._clock()
        if self._origin is None:
            self._origin = now
        due = self._origin + self._count / self.rate
        self._count += 1
        ahead = due - now
        if ahead > self.burst_seconds:
            self._sleep(ahead)
            return True
        if -ahead > self.max_lag_seconds:
            self._origin = now - (self._count - 1) / self.rate
        return False


class EventTimePacer:
    """Replays event time at ``speedup`` times real speed.

    The first event anchors the schedule: an event stamped ``t`` is due at
    ``wall0 + (t - t0) / speedup``. Sleeps happen only when more than ``slack_seconds``
    ahead. A caller that falls behind is not re-anchored (event-time fidelity wins).

    Args:
        speedup: Event seconds per wall second (> 0); 1800 plays half-hourly data at one
            step per second.
        slack_seconds: Tolerated lead before sleeping.
        clock: Monotonic clock (injectable for tests).
        sleep: Sleep function (injectable for tests).
    """

    def __init__(
        self,
        speedup: float,
        *,
        slack_seconds: float = 0.005,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if not (math.isfinite(speedup) and speedup > 0):
            raise ValueError(f"speedup must be a positive number, got {speedup!r}")
        self.speedup = float(speedup)
        self.slack_seconds = slack_seconds
        self._clock = clock
        self._sleep = sleep
        self._anchor: tuple[float, float] | None = None

    def wait_for(self, event_timestamp: float) -> bool:
        """Sleeps until the event is due.

        Args:
            event_timestamp: The event's time, epoch seconds.

        Returns:
            True if it slept.
        """
        now = self._clock()
        if self._anchor is None:
            self._anchor = (now, event_timestamp)
            return False
        wall0, t0 = self._anchor
        ahead = wall0 + (event_timestamp - t0) / self.speedup - now
        if ahead > self.slack_seconds:
            self._sleep(ahead)
            return True
        return False


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def encode_reading(reading: Reading, covariate_names: Sequence[str] = ()) -> bytes:
    """Serializes a reading to the JSON wire format (compact, UTF-8).

    Args:
        reading: The reading; ``covariates`` align with ``covariate_names``.
        covariate_names: Field names of the covariates.

    Returns:
        The JSON document as bytes.

    Raises:
        ValueError: If the covariates and names differ in length.
    """
    if len(reading.covariates) != len(covariate_names):
        raise ValueError(
            f"reading of {reading.stream_id!r} has {len(reading.covariates)} covariates, "
            f"expected {len(covariate_names)} ({', '.join(covariate_names)})"
        )
    doc: dict[str, Any] = {
        "stream_id": reading.stream_id,
        "timestamp": format_timestamp(reading.timestamp),
        "value": _number(float(reading.value)),
    }
    for name, x in zip(covariate_names, reading.covariates):
        doc[name] = _number(float(x))
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def readings_from_dataset(dataset: Dataset, streams_multiply: int = 1) -> Iterator[Reading]:
    """Yields a dataset's rows as readings in global timestamp order.

    Args:
        dataset: A dataset from :func:`models.data.load_csv`.
        streams_multiply: K >= 1. With K > 1 every stream is cloned K times under the
            ids ``{id}#0`` .. ``{id}#{K-1}`` (clones of a row are adjacent, so the
            global order is kept).

    Yields:
        Readings.
    """
    from models.data import iter_rows

    if streams_multiply < 1:
        raise ValueError(f"streams_multiply must be >= 1, got {streams_multiply}")
    if streams_multiply == 1:
        for timestamp, stream_id, value, covariates in iter_rows(dataset):
            yield Reading(stream_id, timestamp, value, tuple(covariates))
        return
    suffixes = [f"#{k}" for k in range(streams_multiply)]
    for timestamp, stream_id, value, covariates in iter_rows(dataset):
        covariates = tuple(covariates)
        for suffix in suffixes:
            yield Reading(stream_id + suffix, timestamp, value, covariates)


def make_producer(settings: KafkaSettings, **overrides: Any) -> Any:
    """A kafka-python ``KafkaProducer`` with :data:`PRODUCER_DEFAULTS` and the security settings.

    Args:
        settings: Connection settings.
        **overrides: Producer options replacing the defaults.

    Returns:
        The producer (keys and values are bytes).
    """
    from kafka import KafkaProducer

    return KafkaProducer(**{**PRODUCER_DEFAULTS, **overrides, **client_kwargs(settings)})


def publish_readings(
    settings: KafkaSettings,
    topic: str,
    readings: Iterable[Reading],
    rate: float | None = None,
    *,
    speedup: float | None = None,
    covariate_names: Sequence[str] = (),
    limit: int | None = None,
    producer: Any | None = None,
    progress: Callable[[int], object] | None = None,
    flush_timeout: float = 120.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> ReplayStats:
    """Publishes readings in the given order, keyed by stream id, optionally paced.

    The topic must exist (see :func:`pipeline.topics.ensure_topics`).

    Args:
        settings: Connection settings (used when ``producer`` is None).
        topic: Destination topic.
        readings: Readings in the order to publish (normally global timestamp order).
        rate: At most this many readings per second (token bucket); None: unlimited.
        speedup: Pace by event time at this multiple of real time; None: no event-time
            pacing. With both, both limits apply.
        covariate_names: Field names for each reading's covariates.
        limit: Stop after this many readings.
        producer: A kafka-python producer to use (not closed here, only flushed);
            default: :func:`make_producer` (closed on return).
        progress: Called with the number of readings sent since the previous call.
        flush_timeout: Seconds to wait for outstanding acknowledgements at the end.
        clock: Monotonic clock (injectable for tests).
        sleep: Sleep function (injectable for tests).

    Returns:
        The statistics.

    Raises:
        ValueError: On invalid covariates, rate, speedup or limit.
        ReplayError: If any reading was not acknowledged.
    """
    for name in covariate_names:
        if name in _RESERVED_FIELDS:
            raise ValueError(f"covariate name {name!r} collides with a reading field")
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        readings = itertools.islice(readings, limit)
    bucket = TokenBucket(rate, clock=clock, sleep=sleep) if rate is not None else None
    pacer = EventTimePacer(speedup, clock=clock, sleep=sleep) if speedup is not None else None
    owns_producer = producer is None
    if producer is None:
        producer = make_producer(settings)
    names = tuple(covariate_names)
    failures: list[BaseException] = []
    on_error = failures.append
    keys: dict[str, bytes] = {}
    sent = pending = 0
    started = clock()
    try:
        for reading in readings:
            slept = False
            if pacer is not None:
                slept = pacer.wait_for(reading.timestamp)
            if bucket is not None:
                slept = bucket.acquire() or slept
            key = keys.get(reading.stream_id)
            if key is None:
                key = keys[reading.stream_id] = reading.stream_id.encode("utf-8")
            producer.send(topic, value=encode_reading(reading, names), key=key).add_errback(on_error)
            sent += 1
            pending += 1
            if progress is not None and (pending >= _PROGRESS_EVERY or slept):
                progress(pending)
                pending = 0
        try:
            producer.flush(timeout=flush_timeout)
        except Exception as err:  # kafka-python raises KafkaTimeoutError
            raise ReplayError(f"readings to {topic!r} not acknowledged after {flush_timeout:g}s: {err}") from err
    finally:
        if owns_producer:
            producer.close(timeout=5)
    if progress is not None and pending:
        progress(pending)
    seconds = clock() - started
    if failures:
        raise ReplayError(f"{len(failures)} of {sent} readings were not delivered to {topic!r}: {failures[0]}")
    return ReplayStats(published=sent, seconds=seconds)
