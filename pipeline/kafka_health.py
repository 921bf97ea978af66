"""Connection health of the job's librdkafka clients, for ``/metrics`` and the log.

librdkafka reconnects by itself and keeps undelivered records queued (up to ``message.timeout.ms``),
so a lost broker does not stop the job; it only has to be visible. :class:`ClientHealth` supplies a
client's ``error_cb`` and ``stats_cb``: errors are counted by name in ``rnncast_kafka_errors_total``
and logged (once per name per 10 s); ``_ALL_BROKERS_DOWN`` sets ``rnncast_kafka_connected`` to 0 at
once, and the statistics (every 5 s) set it from the brokers' connection states. Both callbacks run
only inside the client's poll/consume/flush calls, so an idle client would keep a stale value: the
clients also report success (:meth:`ClientHealth.reached`: records fetched, outputs acknowledged),
and an ``_ALL_BROKERS_DOWN`` delivered after the reconnect ("0/1 brokers are down") is not taken
as an outage.

librdkafka's own log lines (logger ``rnncast.kafka``) and kafka-python's (``kafka.*``, with
tracebacks of connection resets) repeat every reconnect attempt, several a second while a broker
is down; :class:`RepeatFilter` lets each kind through once per 10 s.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from pipeline.metrics import JobMetrics

__all__ = ["LIBRDKAFKA_LOGGER", "ClientHealth", "RepeatFilter", "librdkafka_logger"]

log = logging.getLogger(__name__)
STATS_INTERVAL_MS = 5000
_LOG_EVERY = 10.0
LIBRDKAFKA_LOGGER = "rnncast.kafka"
_DIGITS = re.compile(r"\d+")
_DOWN_COUNT = re.compile(r"(\d+)/(\d+) brokers are down")


class RepeatFilter(logging.Filter):
    """Passes a log line unless one equal to it up to its numbers passed less than ``every`` seconds ago.

    Args:
        every: Seconds between two equal lines.
        prefixes: Only records of loggers named so (or below) are filtered, and their tracebacks
            dropped (a client library's connection errors say what failed in the message); others
            pass unchanged. None: every record.
        clock: Monotonic seconds.
    """

    def __init__(
        self, every: float = _LOG_EVERY, prefixes: tuple[str, ...] | None = None, clock: Any = time.monotonic
    ) -> None:
        super().__init__()
        self._every = every
        self._prefixes = prefixes
        self._clock = clock
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self._prefixes is not None:
            if not any(record.name == p or record.name.startswith(p + ".") for p in self._prefixes):
                return True
            record.exc_info = None
            record.exc_text = None
        key = _DIGITS.sub("#", f"{record.name} {record.getMessage()}")[:300]
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last < self._every:
            return False
        if len(self._seen) > 1000:  # bounded: forget everything now and then
            self._seen.clear()
        self._seen[key] = now
        return True


def librdkafka_logger() -> logging.Logger:
    """The logger given to the job's librdkafka clients, with a :class:`RepeatFilter` (installed once)."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger


class ClientHealth:
    """``error_cb``/``stats_cb`` of one client (``source`` or ``sink``) feeding the job's metrics.

    Args:
        client: The client's label, one of :data:`pipeline.metrics.KAFKA_CLIENTS`.
        metrics: The job's metrics.
        clock: Monotonic seconds (log throttling).
    """

    def __init__(self, client: str, metrics: JobMetrics, clock: Any = time.monotonic) -> None:
        self._client = client
        self._metrics = metrics
        self._clock = clock
        self._logged: dict[str, float] = {}
        metrics.set_kafka_connected(client, True)  # created after the job reached Kafka at start

    def config(self) -> dict[str, Any]:
        """The librdkafka settings that install the callbacks."""
        return {"error_cb": self.on_error, "stats_cb": self.on_stats, "statistics.interval.ms": STATS_INTERVAL_MS}

    def on_error(self, error: Any) -> None:
        """librdkafka's error callback (a ``confluent_kafka.KafkaError``)."""
        code = error.name()
        self._metrics.kafka_error(self._client, code)
        if code == "_ALL_BROKERS_DOWN":
            counts = _DOWN_COUNT.search(error.str())
            if counts is None or int(counts.group(1)) >= int(counts.group(2)):
                self._metrics.set_kafka_connected(self._client, False)
        now = self._clock()
        if now >= self._logged.get(code, -_LOG_EVERY) + _LOG_EVERY:
            self._logged[code] = now
            log.warning("Kafka %s: %s (%s); librdkafka retries by itself", self._client, error.str(), code)

    def reached(self) -> None:
        """The client just heard from a broker (records fetched, outputs acknowledged)."""
        self._metrics.set_kafka_connected(self._client, True)

    def on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics callback: connected when any real broker (not a bootstrap address) is UP."""
        try:
            brokers = json.loads(stats_json).get("brokers", {})
        except ValueError:
            return
        learned = [b for b in brokers.values() if b.get("nodeid", -1) >= 0]
        states = learned or list(brokers.values())
        connected = any(b.get("state") == "UP" for b in states)
        self._metrics.set_kafka_connected(self._client, connected)
