"""The state changelog is a compacted topic: the log cleaner keeps one snapshot per live stream.

Apache Kafka only (Tansu 0.6 does not compact). The job creates ``<group>.rnncast-state`` with
``cleanup.policy=compact``; the test then makes the cleaner run within seconds (1 s segments, dirty
ratio 0.01; the session broker checks every 500 ms) and shows (1) the topic's retained records and
bytes stay bounded by the live streams (one snapshot each) while the snapshots written keep growing
with uptime, and
(2) a job SIGKILLed while readings arrive restores from the compacted log exactly: no forecast
missing, none differing from the uninterrupted offline run.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from pipeline.state_store import changelog_topic

import serve_harness as h

STREAMS = 20
_FAST_CLEANER = {"segment.ms": "1000", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0"}


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


def _topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=[bootstrap], client_id="rnncast-tests")
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    (entries,) = [v for by_name in described.values() for v in by_name.values()]
    return {key: str(entry["value"] if isinstance(entry, dict) else entry) for key, entry in entries.items()}


def _alter_topic(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=[bootstrap], client_id="rnncast-tests")
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    finally:
        admin.close()


def _retained(broker, topic: str) -> tuple[int, int, int]:
    """(records in the topic now, bytes of its log segments on disk, records ever written)."""
    records = h.read_records(broker.bootstrap, topic, timeout=120)
    on_disk = sum(f.stat().st_size for f in broker.log_dir.glob(f"{topic}-*/*.log"))
    written = sum(h.end_offsets(broker.bootstrap, topic).values())
    return len(records), on_disk, written


def _wait_compacted(broker, topic: str, bound: int, timeout: float = 300.0) -> tuple[int, int, int]:
    """Until at most ``bound`` records are retained (or ``timeout``): the numbers then.

    The cleaner never touches a partition's active segment, and a segment rolls only when a record
    is appended after ``segment.ms``: a tombstone of a key no stream has is appended to every
    partition each round, so what the job wrote last becomes cleanable. Restores ignore tombstones.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], acks="all")
    deadline = time.monotonic() + timeout
    try:
        while True:
            retained = _retained(broker, topic)
            if retained[0] <= bound or time.monotonic() > deadline:
                return retained
            for partition in sorted(producer.partitions_for(topic)):
                producer.send(topic, key=b"rnncast-test-roll", value=None, partition=partition)
            producer.flush(timeout=60)
            time.sleep(1.5)  # past segment.ms, so the next round's append rolls the segment
    finally:
        producer.close(timeout=5)


def test_compacted_changelog_is_bounded_by_streams_and_restores_exactly(
    broker, artifact: Path, tmp_path: Path, record_property
) -> None:
    from models.artifact import load_artifact

    suffix = uuid.uuid4().hex[:8]
    readings_topic, forecasts_topic, group = f"readings-{suffix}", f"forecasts-{suffix}", f"g-{suffix}"
    changelog = changelog_topic(group)
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(300, STREAMS)  # 6,000 readings
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    messages = [h.reading_message(r, data_covariates) for r in readings]
    first, second = messages[: 150 * STREAMS], messages[150 * STREAMS :]

    def job(n: int) -> h.ServeProcess:
        return h.ServeProcess(
            h.serve_args(
                artifact,
                broker.bootstrap,
                input_topic=readings_topic,
                output_topic=forecasts_topic,
                dlq_topic=f"dlq-{suffix}",
                group=group,
                extra=["--commit-interval", "0.3"],
            ),
            tmp_path / f"serve-{n}.log",
        )

    running = job(0)
    try:
        running.wait_restored(timeout=300)
        assert _topic_configs(broker.bootstrap, changelog)["cleanup.policy"] == "compact"  # as the job made it
        _alter_topic(broker.bootstrap, changelog, {"cleanup.policy": "compact", **_FAST_CLEANER})

        producer = h.PacedProducer(broker.bootstrap, readings_topic, first, rate=100)  # about 30 s
        producer.start()
        producer.finish(timeout=600)
        h.read_records(broker.bootstrap, forecasts_topic, at_least=1, timeout=300)
        # One snapshot per stream survives cleaning, plus a roll tombstone or two per partition.
        bound = STREAMS + 2 * 4
        after_first = _wait_compacted(broker, changelog, bound)

        # Second half, with a SIGKILL while it arrives: the restart restores from the compacted log.
        producer = h.PacedProducer(broker.bootstrap, readings_topic, second, rate=100)
        producer.start()
        h.wait_for(lambda: producer.sent >= len(second) // 3, 300, what="a third of the second half published")
        running.kill()
        running = job(1)
        running.wait_restored(timeout=300)
        producer.finish(timeout=600)
        served_docs = h.forecast_docs(
            h.read_records(broker.bootstrap, forecasts_topic, at_least=len(reference), timeout=600, settle=2.0)
        )
        result = h.compare(served_docs, reference)
        after_second = _wait_compacted(broker, changelog, bound)
        values = dict(
            streams=STREAMS,
            readings=len(readings),
            duplicates=result["duplicates"],
            missing=len(result["missing"]),
            differing=result["differing"],
            max_diff=result["max_diff"],
            written_after_first=after_first[2],
            retained_after_first=after_first[0],
            bytes_on_disk_after_first=after_first[1],
            written_after_second=after_second[2],
            retained_after_second=after_second[0],
            bytes_on_disk_after_second=after_second[1],
            bytes_per_stream=round(after_second[1] / STREAMS),
        )
        for key, value in values.items():
            record_property(f"compaction.{key}", value)
        print("\ncompaction: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        assert result["missing"] == [] and result["unexpected"] == [], result
        assert result["differing"] == 0 and result["max_diff"] <= 1e-9, result
        restored = [line for line in running.log.splitlines() if "stream states from" in line]
        assert restored and f"restored {STREAMS} stream states" in restored[0], restored
        # Many snapshots per stream were written; the cleaner left about one each, after either half.
        assert after_first[2] >= 10 * STREAMS and after_second[2] > after_first[2], (after_first, after_second)
        assert after_first[0] <= bound and after_second[0] <= bound, (after_first, after_second)
        assert running.stop() == 0, running.log[-3000:]
    finally:
        if running.alive():
            running.kill()
