"""The ceiling of the client stack: a bare consume -> produce loop.

No Beam, no JSON decoding, no model: every record read from the input topic's assigned
partitions (manual ``assign()``, from the beginning) is answered with one record of a fixed
payload (a real forecast message, so the output bytes match what the job writes), keyed like
the input. ``--client confluent`` (the default) uses the job's own client stack: confluent-kafka
(librdkafka) with the sink's producer settings; ``--client kafka-python`` the pure-Python
client the job used before (kafka-python 3.0.12, the same producer settings in its terms). Like the job it commits its position
to ``--group`` (no group membership) after the outputs are acknowledged, here every
``--commit-every`` seconds, which is how the bench sees its progress. It stops on SIGTERM/SIGINT
after flushing and committing, and exits 0.

    python -m benchmarks.pipe --bootstrap HOST:PORT --input-topic readings \
        --output-topic forecasts --payload-file forecast.json --group G [--partitions 0,1]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from pipeline.kafka_config import KafkaSettings, client_kwargs
from pipeline.replay import make_producer

__all__ = ["main", "run_pipe"]

# The sink's producer settings (pipeline.kafka_sink.SINK_PRODUCER_CONFIG) in kafka-python's terms.
KAFKA_PYTHON_PRODUCER_CONFIG = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 20,
    "batch_size": 256 * 1024,
    "client_id": "rnncast-bench-pipe",
}


def run_pipe(
    settings: KafkaSettings,
    input_topic: str,
    output_topic: str,
    payload: bytes,
    partitions: list[int] | None = None,
    stop: threading.Event | None = None,
    group: str | None = None,
    commit_every: float = 0.5,
    client: str = "confluent",
) -> int:
    """Copies records until ``stop`` is set; returns how many were forwarded."""
    if client == "confluent":
        return _run_confluent(settings, input_topic, output_topic, payload, partitions, stop, group, commit_every)
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    stop = stop or threading.Event()
    consumer = KafkaConsumer(
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
        fetch_max_bytes=16 * 1024 * 1024,
        client_id="rnncast-bench-pipe",
        **client_kwargs(settings),
    )
    producer = make_producer(settings, **KAFKA_PYTHON_PRODUCER_CONFIG)
    try:
        if partitions is None:
            found = None
            while not found and not stop.is_set():
                found = consumer.partitions_for_topic(input_topic)
                if not found:
                    consumer.poll(timeout_ms=100)
            partitions = sorted(found or ())
        assignment = [TopicPartition(input_topic, p) for p in partitions]
        consumer.assign(assignment)
        consumer.seek_to_beginning(*assignment)
        send = producer.send
        forwarded = 0
        committed = {tp: -1 for tp in assignment}
        next_commit = time.monotonic() + commit_every

        def commit() -> None:
            positions = {tp: consumer.position(tp) for tp in assignment}
            producer.flush(timeout=60)
            changed = {tp: OffsetAndMetadata(off, "", -1) for tp, off in positions.items() if off != committed[tp]}
            if changed and group is not None:
                consumer.commit(changed)
                committed.update({tp: o.offset for tp, o in changed.items()})

        while not stop.is_set():
            for records in consumer.poll(timeout_ms=100).values():
                for record in records:
                    send(output_topic, value=payload, key=record.key)
                forwarded += len(records)
            if time.monotonic() >= next_commit:
                commit()
                next_commit = time.monotonic() + commit_every
        commit()
        return forwarded
    finally:
        producer.close(timeout=10)
        consumer.close()


def _run_confluent(
    settings: KafkaSettings,
    input_topic: str,
    output_topic: str,
    payload: bytes,
    partitions: list[int] | None,
    stop: threading.Event | None,
    group: str | None,
    commit_every: float,
) -> int:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from pipeline.kafka_config import librdkafka_config
    from pipeline.kafka_sink import SINK_PRODUCER_CONFIG

    stop = stop or threading.Event()
    config = librdkafka_config(settings)
    consumer = Consumer(
        {
            **config,
            "group.id": group or "rnncast-bench-pipe",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,
            "client.id": "rnncast-bench-pipe",
        }
    )
    producer = Producer({**config, **SINK_PRODUCER_CONFIG, "client.id": "rnncast-bench-pipe"})
    try:
        if partitions is None:
            found = None
            while not found and not stop.is_set():
                found = consumer.list_topics(input_topic, timeout=5).topics.get(input_topic)
                found = sorted(found.partitions) if found is not None and found.error is None else None
            partitions = found or []
        consumer.assign([TopicPartition(input_topic, p, 0) for p in partitions])
        produce = producer.produce
        forwarded = 0
        positions: dict[int, int] = {}
        committed: dict[int, int] = {}
        next_commit = time.monotonic() + commit_every

        def commit() -> None:
            producer.flush(60)
            changed = [TopicPartition(input_topic, p, o) for p, o in positions.items() if committed.get(p) != o]
            if changed and group is not None:
                consumer.commit(offsets=changed, asynchronous=False)
                committed.update((tp.partition, tp.offset) for tp in changed)

        while not stop.is_set():
            records = consumer.consume(2000, 0) or consumer.consume(1, 0.1)
            for record in records:
                if record.error() is not None:
                    continue
                produce(output_topic, payload, record.key())
                positions[record.partition()] = record.offset() + 1
            forwarded += len(records)
            producer.poll(0)
            if time.monotonic() >= next_commit:
                commit()
                next_commit = time.monotonic() + commit_every
        commit()
        return forwarded
    finally:
        producer.flush(10)
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--payload-file", type=Path, required=True, help="bytes written as every output record")
    parser.add_argument("--partitions", default=None, help="comma-separated input partitions (default: all)")
    parser.add_argument("--group", default=None, help="consumer group to commit positions to (no membership)")
    parser.add_argument("--commit-every", type=float, default=0.5, help="seconds between flush + commit")
    parser.add_argument(
        "--client",
        choices=("confluent", "kafka-python"),
        default="confluent",
        help="Kafka client library (default: %(default)s, the job's own)",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    partitions = [int(p) for p in args.partitions.split(",")] if args.partitions else None
    forwarded = run_pipe(
        KafkaSettings(bootstrap=args.bootstrap),
        args.input_topic,
        args.output_topic,
        args.payload_file.read_bytes(),
        partitions,
        stop,
        args.group,
        args.commit_every,
        args.client,
    )
    print(f"pipe forwarded {forwarded} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
