"""Topic administration: create what is missing, look up partitions.

kafka-python is imported inside the functions so that importing this module (and the CLI
modules that use it) stays cheap.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pipeline.kafka_config import KafkaSettings, client_kwargs

__all__ = ["TopicError", "ensure_topics", "partitions_for", "validate_topic_name"]

log = logging.getLogger(__name__)
_LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


class TopicError(RuntimeError):
    """A topic could not be created, found or described."""


def validate_topic_name(name: str) -> str:
    """Checks Kafka's topic naming rules.

    Args:
        name: Candidate topic name.

    Returns:
        The name, unchanged.

    Raises:
        ValueError: If it is empty, longer than 249 characters, ``.``/``..``, or uses a
            character outside ``[A-Za-z0-9._-]``.
    """
    if not _LEGAL_TOPIC.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"invalid topic name {name!r}: use 1-249 characters from [A-Za-z0-9._-]")
    return name


@contextmanager
def _admin(settings: KafkaSettings, timeout: float) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        client_id="rnncast-admin",
        request_timeout_ms=int(timeout * 1000),
        bootstrap_timeout_ms=int(min(timeout, 10.0) * 1000),
        **client_kwargs(settings),
    )
    try:
        yield admin
    finally:
        admin.close()


def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    """Partition count of each topic that exists and is healthy (others are absent)."""
    counts = {}
    for topic in admin.describe_topics(names):
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            counts[topic["name"]] = len(topic["partitions"])
    return counts


def ensure_topics(
    settings: KafkaSettings,
    topics: Mapping[str, int],
    replication: int = 1,
    *,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Creates the topics that do not exist yet and waits until metadata shows them.

    Existing topics are left as they are; one with fewer partitions than asked for is
    logged as a warning but not changed (adding partitions would move keys).

    Args:
        settings: Connection settings.
        topics: Topic name -> number of partitions.
        replication: Replication factor for new topics (1 for Tansu).
        timeout: Seconds allowed for the whole operation.

    Returns:
        Topic name -> its actual number of partitions.

    Raises:
        ValueError: On an invalid topic name, or a partition count or replication below 1.
        TopicError: If a topic cannot be created or does not show up in time.
    """
    for name, partitions in topics.items():
        validate_topic_name(name)
        if int(partitions) < 1:
            raise ValueError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
    if replication < 1:
        raise ValueError(f"replication must be >= 1, got {replication}")
    if not topics:
        return {}
    from kafka.errors import KafkaError, TopicAlreadyExistsError, TopicAuthorizationFailedError

    names = list(topics)
    deadline = time.monotonic() + timeout
    with _admin(settings, timeout) as admin:
        existing = _partition_counts(admin, names)
        for name in names:
            if name in existing:
                continue
            try:
                admin.create_topics(
                    {name: {"num_partitions": int(topics[name]), "replication_factor": replication}},
                    timeout_ms=int(timeout * 1000),
                )
                log.info("created topic %s with %d partitions", name, topics[name])
            except TopicAlreadyExistsError:
                pass  # created concurrently by someone else
            except TopicAuthorizationFailedError as err:
                raise TopicError(
                    f"not authorized for topic {name!r}: this principal may neither see it (DESCRIBE, which READ "
                    f"or WRITE imply) nor create it (CREATE)"
                ) from err
            except KafkaError as err:
                raise TopicError(f"cannot create topic {name!r}: {err}") from err
        remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
        try:
            admin.wait_for_topics(names, timeout_ms=remaining_ms)
        except KafkaError as err:
            raise TopicError(f"topics not ready after {timeout:g}s: {err}") from err
        counts = _partition_counts(admin, names)
    for name in names:
        if counts.get(name, 0) < int(topics[name]):
            log.warning(
                "topic %s has %d partitions, fewer than the %d asked for; left unchanged",
                name,
                counts.get(name, 0),
                topics[name],
            )
    return counts


def partitions_for(settings: KafkaSettings, topic: str, *, timeout: float = 10.0) -> list[int]:
    """The partition ids of a topic, sorted.

    Args:
        settings: Connection settings.
        topic: Topic name.
        timeout: Seconds allowed for the metadata request.

    Returns:
        Partition ids, e.g. ``[0, 1, 2, 3]``.

    Raises:
        TopicError: If the topic does not exist.
    """
    validate_topic_name(topic)
    with _admin(settings, timeout) as admin:
        described = admin.describe_topics([topic])
    for entry in described:
        if entry.get("name") == topic and entry.get("error_code", 0) == 0 and entry.get("partitions"):
            return sorted(int(p["partition_index"]) for p in entry["partitions"])
    raise TopicError(f"topic {topic!r} does not exist")
