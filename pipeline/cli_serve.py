"""``rnncast serve``: the streaming forecasting job (Apache Beam), from Kafka readings to Kafka forecasts."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.kafka_config import add_kafka_arguments, settings_from_args

_EPILOG = """\
Any other argument is a Beam pipeline option, e.g. --runner=FlinkRunner --flink_master=HOST:8081
--environment_type=EXTERNAL --environment_config=localhost:50000. Without --runner the job runs on
Beam's local FnApiRunner in this process. The job runs until SIGTERM or SIGINT, then drains what is in
flight, flushes, commits its offsets and exits 0. Stream state survives crashes through the changelog
topic <group>.rnncast-state. --guarantee at-least-once publishes forecasts at once and may publish some
again after a crash; exactly-once writes each partition's forecasts, dead letters, state and input
offsets in one Kafka transaction per commit interval (consumers read with isolation.level=read_committed
and see each forecast once; needs Apache Kafka, not Tansu).
"""


def _partition_list(text: str) -> tuple[int, ...]:
    """``"0,2,5-7"`` -> ``(0, 2, 5, 6, 7)``."""
    partitions: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise ValueError
                partitions.update(range(low, high + 1))
            else:
                partitions.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected partition numbers like 0,1 or 0-3, got {text!r}") from None
    if not partitions or min(partitions) < 0:
        raise argparse.ArgumentTypeError(f"expected partition numbers >= 0, got {text!r}")
    return tuple(sorted(partitions))


def _number(kind: type, minimum: float, *, strictly: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum or (strictly and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strictly else '>='} {minimum:g}, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``serve`` options; unknown arguments are Beam pipeline options."""
    from pipeline.messages import DEFAULT_STATE_SHARDS
    from pipeline.options import COMMIT_INTERVALS, DEFAULT_GUARANTEE, GUARANTEES

    parser.allow_abbrev = False  # "--part" must not silently mean --partitions; Beam options pass through
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--artifact", required=True, type=Path, metavar="PATH",
        help="the model: an artifact directory (from rnncast train), a symbolic link to one (e.g. current), or a "
        "directory of versioned artifact directories (the newest valid one by manifest 'created', then name); "
        "watched while the job runs: a new model there is loaded and swapped in without a restart",
    )
    add_kafka_arguments(parser)
    topics = parser.add_argument_group("topics")
    topics.add_argument("--input-topic", default="readings", help="readings topic (default: %(default)s)")
    topics.add_argument("--output-topic", default="forecasts", help="forecasts topic (default: %(default)s)")
    topics.add_argument("--dlq-topic", default="readings-dlq", help="dead-letter topic (default: %(default)s)")
    topics.add_argument(
        "--group", default="rnncast",
        help="consumer group: its committed offsets and its state changelog <group>.rnncast-state (default: %(default)s)",
    )
    topics.add_argument(
        "--partitions", type=_partition_list, metavar="LIST",
        help="input partitions to consume, e.g. 0,1 or 0-3 (default: all); instances with disjoint lists run side by side",
    )
    topics.add_argument(
        "--topic-partitions", type=_number(int, 1), default=4, metavar="N",
        help="partitions of the topics created when missing (default: %(default)s)",
    )
    serving = parser.add_argument_group("serving")
    serving.add_argument("--min-history", type=_number(int, 1), metavar="N", help="readings before a stream's first forecast (default: the artifact's)")
    serving.add_argument("--max-gap", type=_number(int, 0), metavar="N", help="missing steps imputed; longer gaps restart the stream (default: the artifact's)")
    serving.add_argument(
        "--state-ttl", type=_number(float, 0, strictly=True), metavar="SECONDS",
        help="a stream silent for longer (event time) starts fresh and its state is dropped (default: never)",
    )
    serving.add_argument(
        "--max-future", type=_number(float, 0, strictly=True), default=86_400.0, metavar="SECONDS",
        help="readings further after their stream's last reading are dead letters (default: %(default)g)",
    )
    serving.add_argument(
        "--batch-size", type=_number(int, 1), default=2000, metavar="N",
        help="records read from a partition at a time: a bundle's forecasts and dead letters are flushed together; "
        "larger batches amortise Beam's per-bundle and per-stream costs under load (default: %(default)s)",
    )
    serving.add_argument(
        "--state-shards", type=_number(int, 1), default=DEFAULT_STATE_SHARDS, metavar="N",
        help="streams are spread over N keys of the stateful step (by a hash of the stream id); each batch of "
        "records becomes one element per shard, so Beam's per-element costs are paid per batch and the readings "
        "of a shard's streams are stepped together. More shards: more parallelism on a distributed runner (at "
        "least its number of workers), but smaller elements and rounds (default: %(default)s, best measured on "
        "one local worker)",
    )
    serving.add_argument(
        "--guarantee", choices=GUARANTEES, default=DEFAULT_GUARANTEE,
        help="at-least-once: forecasts are published at once, a crash may publish some again (identical); "
        "exactly-once: forecasts, dead letters, state snapshots and input offsets of a partition go into one "
        "Kafka transaction per commit interval, read_committed consumers see each forecast once, after its "
        "commit (needs a broker with reliable transactions: Apache Kafka, not Tansu) (default: %(default)s)",
    )
    serving.add_argument(
        "--commit-interval", type=_number(float, 0, strictly=True), metavar="SECONDS",
        help="while a partition is busy, state snapshots are written and offsets committed this often (and "
        "whenever it goes idle, and at stop); with exactly-once this is how often its transaction commits, "
        "so it bounds how long a forecast stays invisible. Longer means less changelog traffic, more readings "
        "replayed (never applied twice) after a crash (default: "
        + ", ".join(f"{interval:g} with {guarantee}" for guarantee, interval in COMMIT_INTERVALS.items()) + ")",
    )
    serving.add_argument(
        "--artifact-poll-seconds", type=_number(float, 0), default=10.0, metavar="SECONDS",
        help="how often --artifact is checked for a new model; an invalid one is refused and the current model "
        "keeps serving; 0: never (default: %(default)g)",
    )
    parser.add_argument(
        "--connect-timeout", type=_number(float, 0), default=60.0, metavar="SECONDS",
        help="when Kafka cannot be reached at start, retry this long (logging why) before exiting 2; "
        "0 fails at once. Once running, the job rides out broker outages by itself (default: %(default)g)",
    )
    monitoring = parser.add_argument_group("monitoring")
    monitoring.add_argument("--metrics-host", default="127.0.0.1", help="interface of the /metrics server (default: %(default)s)")
    monitoring.add_argument("--metrics-port", type=_number(int, 0), default=9108, help="port of the /metrics server, 0 for any (default: %(default)s)")
    monitoring.add_argument(
        "--metrics-targets-dir", metavar="DIR",
        help="distributed runners (Flink): each SDK worker serves its own /metrics on --metrics-host and a free port, "
        "and registers it here as a Prometheus file_sd target file (default: rnncast-workers-GROUP in the temporary "
        "directory)",
    )
    parser.set_defaults(accepts_extra_args=True)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. under pytest)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


def _configure_logging() -> None:
    """rnncast's INFO lines and everyone's warnings to stderr (once; other handlers are left alone)."""
    from pipeline.kafka_health import RepeatFilter

    root = logging.getLogger()
    if not any(isinstance(f, _DropNoise) for handler in root.handlers for f in handler.filters):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_DropNoise())
        handler.addFilter(RepeatFilter(prefixes=("kafka",)))  # kafka-python's lines during a broker outage
        root.addHandler(handler)
    for name in ("rnncast", "pipeline", "models"):
        logging.getLogger(name).setLevel(logging.INFO)


def _not_authorized(err: BaseException, options: "ServeOptions") -> str | None:  # noqa: F821
    """One line naming what the job's principal may not do, if ``err`` (or a cause of it) is a Kafka ACL refusal."""
    from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

    from pipeline.topics import TopicError
    from pipeline.transactions import TransactionError

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, GroupAuthorizationFailedError):
            return f"not authorized to use consumer group {options.group!r} (the principal needs READ on it)"
        if isinstance(cause, TopicAuthorizationFailedError):
            return str(err) if isinstance(err, TopicError) else f"not authorized for a topic of this job: {cause}"
        if isinstance(cause, TransactionError) and "authorization" in str(cause).lower():
            return f"not authorized: {cause} (exactly-once needs WRITE and DESCRIBE on these transactional ids)"
        cause = cause.__cause__
    return None


def _wait_for_kafka(settings, timeout: float, reason: str) -> str | None:
    """Retries the bootstrap servers for ``timeout`` seconds; returns None once one answers, else the last reason."""
    import time

    from pipeline.kafka_config import unreachable

    log = logging.getLogger("rnncast.serve")
    deadline = time.monotonic() + timeout
    next_line = 0.0
    while reason:
        now = time.monotonic()
        if now >= deadline:
            return reason
        if now >= next_line:  # the first failure, then one line per 10 s
            log.warning("waiting for Kafka at %s (%s); retrying for %.0f s more (--connect-timeout)",
                        settings.bootstrap, reason, deadline - now)
            next_line = now + 10.0
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        reason = unreachable(settings, timeout=min(3.0, max(deadline - time.monotonic(), 0.1)))
    log.info("Kafka at %s is reachable", settings.bootstrap)
    return None


def run(args: argparse.Namespace) -> int:
    """Validates the options, prepares topics and offsets, and runs the job until stopped."""
    from pipeline.cli import UsageError

    _configure_logging()
    settings = settings_from_args(args)

    from models.artifact import ArtifactError, load_artifact
    from pipeline.messages import reserved_covariates
    from pipeline.options import COMMIT_INTERVALS, ServeOptions, beam_options

    try:
        options = ServeOptions(
            artifact=str(args.artifact), kafka=settings, input_topic=args.input_topic, output_topic=args.output_topic,
            dlq_topic=args.dlq_topic, group=args.group, partitions=args.partitions, topic_partitions=args.topic_partitions,
            metrics_host=args.metrics_host, metrics_port=args.metrics_port,
            metrics_targets_dir=args.metrics_targets_dir, min_history=args.min_history,
            max_gap=args.max_gap, state_ttl=args.state_ttl, max_future=args.max_future,
            max_records=args.batch_size, state_shards=args.state_shards, artifact_poll_seconds=args.artifact_poll_seconds,
            commit_interval=COMMIT_INTERVALS[args.guarantee] if args.commit_interval is None else args.commit_interval,
            guarantee=args.guarantee,
        )
        from pipeline.topics import validate_topic_name

        for topic in (options.input_topic, options.output_topic, options.dlq_topic, options.changelog_topic):
            validate_topic_name(topic)
        pipeline_options = beam_options(getattr(args, "extra_args", []))
    except ValueError as err:
        raise UsageError(str(err)) from None
    from pipeline.model_watch import resolve_artifact

    try:
        artifact = load_artifact(resolve_artifact(args.artifact))
        artifact.engine(args.min_history, args.max_gap)  # validates --min-history/--max-gap against the model
    except ArtifactError as err:
        raise UsageError(str(err)) from None
    except ValueError as err:
        raise UsageError(f"{args.artifact}: {err}") from None
    covariates = tuple(artifact.features.covariate_names)
    if reserved_covariates(covariates):
        raise UsageError(f"{args.artifact}: covariates named {reserved_covariates(covariates)} collide with reading fields")

    from kafka.errors import KafkaError

    from pipeline.kafka_config import login_failure, unreachable
    from pipeline.topics import TopicError
    from pipeline.transactions import TransactionError

    reason = unreachable(settings)
    if reason and args.connect_timeout > 0:
        reason = _wait_for_kafka(settings, args.connect_timeout, reason)
    if reason:
        waited = f" after {args.connect_timeout:g}s" if args.connect_timeout > 0 else ""
        raise UsageError(f"cannot reach Kafka at {settings.bootstrap}{waited} ({reason})")
    reason = login_failure(settings)
    if reason:
        raise UsageError(f"Kafka at {settings.bootstrap}: {reason}")
    from pipeline import job
    from pipeline.options import LOCAL_RUNNER

    try:
        layout = job.prepare(options, covariates)
    except ValueError as err:
        raise UsageError(str(err)) from None
    except (KafkaError, TopicError, TransactionError) as err:
        denied = _not_authorized(err, options)
        if denied:
            raise UsageError(f"Kafka at {settings.bootstrap}: {denied}") from None
        print(f"error: Kafka at {settings.bootstrap}: {err}", file=sys.stderr)
        return 1
    from apache_beam.options.pipeline_options import StandardOptions

    from pipeline.metrics import default_metrics, start_metrics_server

    runner = pipeline_options.view_as(StandardOptions).runner or LOCAL_RUNNER
    metrics = default_metrics()
    try:
        server = start_metrics_server(metrics, host=options.metrics_host, port=options.metrics_port)
    except OSError as err:
        raise UsageError(f"cannot serve metrics on {options.metrics_host}:{options.metrics_port}: {err.strerror or err}") from None
    try:
        return job.run(
            options, pipeline_options, layout, metrics=metrics, metrics_url=server.url, model_name=artifact.cell,
            model_version=artifact.version, step_seconds=artifact.step_seconds, runner=runner,
        )
    except TransactionError as err:  # fenced by another instance, or a commit failed: nothing of it is visible
        logging.getLogger("rnncast.serve").error("the job stopped: %s", err)
        return 1
    except Exception:  # noqa: BLE001 - a failed pipeline: log why, exit 1 (the committed offsets are safe)
        logging.getLogger("rnncast.serve").exception("the job failed")
        return 1
    finally:
        server.stop()
