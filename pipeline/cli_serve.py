"""``rnncast serve``: the streaming forecasting job (Apache Beam), from Kafka readings to Kafka forecasts."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.kafka_config import settings_from_args

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``serve`` options (generated from :class:`~pipeline.options.ServeOptions`); unknown
    arguments are Beam pipeline options."""
    from pipeline.options import add_serve_arguments

    parser.allow_abbrev = False  # "--part" must not silently mean --partitions; Beam options pass through
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_serve_arguments(parser)
    parser.set_defaults(accepts_extra_args=True)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. under pytest)."""

    @property  # type: ignore[override]
    def stream(self):
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


def _not_authorized(err: BaseException, options: ServeOptions) -> str | None:  # noqa: F821
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
            log.warning(
                "waiting for Kafka at %s (%s); retrying for %.0f s more (--connect-timeout)",
                settings.bootstrap,
                reason,
                deadline - now,
            )
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
    from pipeline.options import ServeOptions, beam_options

    try:
        pipeline_options = beam_options(getattr(args, "extra_args", []))
        from apache_beam.options.pipeline_options import StandardOptions

        options = ServeOptions.from_args(args, settings, runner=pipeline_options.view_as(StandardOptions).runner)
        from pipeline.topics import validate_topic_name

        for topic in (options.input_topic, options.output_topic, options.dlq_topic, options.changelog_topic):
            validate_topic_name(topic)
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
        raise UsageError(
            f"{args.artifact}: covariates named {reserved_covariates(covariates)} collide with reading fields"
        )

    from kafka.errors import KafkaError

    from pipeline.kafka_config import login_failure, unreachable
    from pipeline.topics import TopicError
    from pipeline.transactions import TransactionError

    reason = unreachable(settings)
    if reason and options.connect_timeout > 0:
        reason = _wait_for_kafka(settings, options.connect_timeout, reason)
    if reason:
        waited = f" after {options.connect_timeout:g}s" if options.connect_timeout > 0 else ""
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
        raise UsageError(
            f"cannot serve metrics on {options.metrics_host}:{options.metrics_port}: {err.strerror or err}"
        ) from None
    try:
        return job.run(
            options,
            pipeline_options,
            layout,
            metrics=metrics,
            metrics_url=server.url,
            model_name=artifact.cell,
            model_version=artifact.version,
            step_seconds=artifact.step_seconds,
            runner=runner,
        )
    except TransactionError as err:  # fenced by another instance, or a commit failed: nothing of it is visible
        logging.getLogger("rnncast.serve").error("the job stopped: %s", err)
        return 1
    except Exception:
        logging.getLogger("rnncast.serve").exception("the job failed")
        return 1
    finally:
        server.stop()
