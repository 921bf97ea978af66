"""``rnncast broker``: run a local broker (Tansu, or Apache Kafka) in the foreground until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys

from models.argtypes import int_at_least


def _topic_spec(text: str) -> tuple[str, int]:
    name, _, partitions = text.partition(":")
    try:
        count = int(partitions) if partitions else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME[:PARTITIONS], got {text!r}") from None
    if not name or count < 1:
        raise argparse.ArgumentTypeError(f"expected NAME[:PARTITIONS] with PARTITIONS >= 1, got {text!r}")
    return name, count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``broker`` options."""
    parser.add_argument(
        "--engine",
        choices=("tansu", "kafka"),
        default="tansu",
        help="tansu: the embedded in-memory broker (starts in milliseconds); kafka: a single-node "
        "Apache Kafka (KRaft), its jars fetched by `make kafka` (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int_at_least(0), default=9092, help="TCP port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--advertised-host",
        metavar="HOST",
        help="host name clients are told to connect to (default: --host)",
    )
    parser.add_argument(
        "--topic",
        dest="topics",
        action="append",
        type=_topic_spec,
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create this topic at start-up unless it exists (repeatable; Tansu keeps topics in memory only)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="kafka only: keep the broker's configuration and log here, so topics survive a restart "
        "(default: a temporary directory, removed on stop)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not copy the broker's own log lines to stderr")


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def run(args: argparse.Namespace) -> int:
    """Starts the broker, prints its bootstrap address on stdout, and waits.

    Returns 0 after Ctrl-C or SIGTERM, 1 if the broker dies by itself.
    """
    from pipeline.broker import BrokerError, BrokerProcess, EmbeddedBroker
    from pipeline.cli import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.host in ("0.0.0.0", "::") and not args.advertised_host:
        raise UsageError(f"--host {args.host} listens everywhere: give --advertised-host for clients to use")
    log_stream = None if args.quiet else sys.stderr
    broker: BrokerProcess
    if args.engine == "kafka":
        from pipeline.kafka_broker import KafkaBroker, find_kafka_lib

        try:
            find_kafka_lib()
        except BrokerError as err:
            raise UsageError(str(err)) from None
        broker = KafkaBroker(
            args.host, args.port, advertised_host=args.advertised_host, data_dir=args.data_dir, log_stream=log_stream
        )
        name, storage = "Apache Kafka", f"log in {args.data_dir}" if args.data_dir else "temporary log"
    else:
        if args.data_dir:
            raise UsageError("--data-dir needs --engine kafka: Tansu keeps topics in memory only")
        broker = EmbeddedBroker(args.host, args.port, advertised_host=args.advertised_host, log_stream=log_stream)
        name, storage = "Tansu", "in-memory"
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            broker.start()
        except BrokerError as err:
            first_line = str(err).splitlines()[0]
            if "address already in use" in first_line:
                raise UsageError(first_line) from None
            print(f"error: {err}", file=sys.stderr)
            return 1
        if args.topics:
            from pipeline.kafka_config import KafkaSettings
            from pipeline.topics import ensure_topics

            try:
                ensure_topics(KafkaSettings(bootstrap=broker.bootstrap), dict(args.topics))
            except ValueError as err:
                raise UsageError(str(err)) from None
        print(broker.bootstrap, flush=True)
        print(f"{name} broker ready at {broker.bootstrap} ({storage}); Ctrl-C to stop", file=sys.stderr, flush=True)
        status = broker.wait()
        print(f"error: {broker.engine} exited by itself with status {status}\n{broker.log_tail()}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Terminated):
        return 0
    finally:
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
