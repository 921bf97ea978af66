"""``rnncast replay``: publish a CSV's rows as JSON readings to a Kafka topic."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from models.argtypes import int_at_least, positive_float
from pipeline.kafka_config import add_kafka_arguments, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``replay`` options."""
    parser.add_argument("--data", required=True, type=Path, metavar="CSV", help="long-format CSV to replay")
    add_kafka_arguments(parser)
    parser.add_argument("--topic", default="readings", help="destination topic (default: %(default)s)")
    parser.add_argument(
        "--partitions",
        type=int_at_least(1),
        default=4,
        help="partitions if the topic has to be created (default: %(default)s)",
    )
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--rate", type=positive_float, metavar="N", help="publish at most N readings per second")
    pacing.add_argument(
        "--speedup",
        type=positive_float,
        metavar="X",
        help="pace by event time, X times faster than real time (1800: one half-hour step per second)",
    )
    parser.add_argument(
        "--streams-multiply",
        type=int_at_least(1),
        default=1,
        metavar="K",
        help="clone every stream K times as '{id}#0'..'{id}#K-1' (load testing; default: 1 = no cloning)",
    )
    parser.add_argument("--limit", type=int_at_least(0), metavar="N", help="stop after N readings")
    parser.add_argument(
        "--step",
        type=positive_float,
        metavar="SECONDS",
        help="sampling step of every stream (default: inferred per stream)",
    )
    parser.add_argument(
        "--json", action="store_true", help='print {"published", "seconds", "rate"} as JSON; no progress bar'
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Loads the CSV, creates the topic if needed and publishes every reading."""
    from pipeline.cli import UsageError

    settings = settings_from_args(args)
    from pipeline.kafka_config import unreachable
    from pipeline.topics import validate_topic_name

    try:
        validate_topic_name(args.topic)
    except ValueError as err:
        raise UsageError(str(err)) from None

    from models.data import DataError, load_csv

    try:
        dataset = load_csv(args.data, step_seconds=args.step)
    except DataError as err:
        raise UsageError(str(err)) from None

    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
    from tqdm import tqdm

    from pipeline.replay import ReplayError, publish_readings, readings_from_dataset
    from pipeline.topics import TopicError, ensure_topics

    reason = unreachable(settings)
    if reason:
        raise UsageError(f"cannot reach Kafka at {settings.bootstrap} ({reason})")
    total = dataset.num_rows * args.streams_multiply
    if args.limit is not None:
        total = min(total, args.limit)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    bar = tqdm(
        total=total,
        unit="readings",
        file=sys.stderr,
        disable=args.json or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    try:
        try:
            ensure_topics(settings, {args.topic: args.partitions})
        except (KafkaConnectionError, KafkaTimeoutError) as err:
            raise UsageError(f"cannot reach Kafka at {settings.bootstrap}: {err}") from None
        stats = publish_readings(
            settings,
            args.topic,
            readings_from_dataset(dataset, args.streams_multiply),
            args.rate,
            speedup=args.speedup,
            covariate_names=dataset.covariate_names,
            limit=args.limit,
            progress=bar.update,
        )
    except (KafkaError, ReplayError, TopicError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(stats.as_dict()))
    else:
        print(
            f"published {stats.published} readings to {args.topic} at {settings.bootstrap} "
            f"in {stats.seconds:.2f} s ({stats.rate:,.0f}/s)"
        )
    return 0
