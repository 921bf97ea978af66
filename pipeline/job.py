"""The streaming job: its graph, and running it until a stop signal.

::

    Create[(topic, partition, start offset)]
      -> ReadPartitions      splittable DoFn, one restriction per partition (pipeline/kafka_source.py)
      -> RouteToShards       one element per fetched batch and state shard, by record key (pipeline/forecast_dofn.py)
      -> ForecastDoFn        stateful per shard: decode, Engine.step_many per round, one Outcome per record
    at-least-once (pipeline/kafka_sink.py):
      -> PublishOutcomes     forecasts + dead letters per bundle; per commit request snapshots, then offsets
      -> CommitOffsets       stateful per partition: commits the contiguous completed prefix
    exactly-once (pipeline/transactions.py):
      -> KeyByPartition
      -> PublishTransactions stateful per partition: outputs, snapshots and offsets in one transaction per commit

:func:`prepare` does what must happen before the graph exists (topics, partitions, committed
offsets); :func:`run` runs it with the graceful-stop signal handling (the command line starts the
/metrics server first).
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from pipeline import local_runner
from pipeline.coders import KafkaBatchCoder
from pipeline.forecast_dofn import ForecastDoFn, RouteToShards, ServedModel
from pipeline.kafka_sink import CommitOffsets, PublishOutcomes
from pipeline.kafka_source import ReadPartitions, start_offsets
from pipeline.messages import KafkaBatch
from pipeline.metrics import JobMetrics, WorkerMetrics, clear_worker_targets, default_metrics
from pipeline.options import EXACTLY_ONCE, ServeOptions, is_local_runner
from pipeline.state_store import ChangelogRestore, ensure_changelog
from pipeline.transactions import KeyByPartition, PublishTransactions, fence, require_transactions

__all__ = ["JobLayout", "build_pipeline", "prepare", "publish_and_commit", "read_and_route", "run"]

log = logging.getLogger("rnncast.serve")


@dataclass(frozen=True)
class JobLayout:
    """What :func:`prepare` found out: partitions, where to start, the model's inputs.

    Attributes:
        partitions: Input partitions this job consumes.
        start_offsets: Partition -> first offset to read (committed, or the partition's first).
        covariate_names: Covariates the model needs, in order.
        run_id: Identifies this run in the process (restore cache, idle index).
    """

    partitions: tuple[int, ...]
    start_offsets: dict[int, int]
    covariate_names: tuple[str, ...]
    run_id: str


def prepare(options: ServeOptions, covariate_names: tuple[str, ...]) -> JobLayout:
    """Creates missing topics, picks the partitions and reads the group's committed offsets (with
    exactly-once, after taking over the partitions' transactions: :func:`~pipeline.transactions.fence`).

    Raises:
        ValueError: If ``options.partitions`` names partitions the input topic does not have, or
            (:class:`~pipeline.transactions.TransactionsUnsupported`) exactly-once on a broker without
            reliable transactions.
        pipeline.transactions.TransactionError: If the transactions cannot be taken over.
    """
    from pipeline.topics import ensure_topics, partitions_for

    if options.guarantee == EXACTLY_ONCE:
        require_transactions(options.kafka)
    n = options.topic_partitions
    ensure_topics(options.kafka, {options.input_topic: n, options.output_topic: n, options.dlq_topic: n})
    ensure_changelog(options.kafka, options.changelog_topic, n)
    available = partitions_for(options.kafka, options.input_topic)
    if options.partitions is None:
        partitions = tuple(available)
    else:
        missing = sorted(set(options.partitions) - set(available))
        if missing:
            raise ValueError(
                f"--partitions {','.join(map(str, missing))}: topic {options.input_topic!r} has partitions "
                f"{','.join(map(str, available))}"
            )
        partitions = tuple(sorted(set(options.partitions)))
    if options.guarantee == EXACTLY_ONCE:
        fence(options.kafka, options.group, options.input_topic, list(partitions))
    offsets = start_offsets(options.kafka, options.group, options.input_topic, list(partitions))
    return JobLayout(partitions, offsets, tuple(covariate_names), uuid.uuid4().hex)


def build_pipeline(
    pipeline: beam.Pipeline, options: ServeOptions, layout: JobLayout, metrics: Any = default_metrics
) -> None:
    """Adds the job's transforms to ``pipeline``."""
    model = ServedModel(
        options.artifact,
        options.min_history,
        options.max_gap,
        options.artifact_poll_seconds or None,
        layout.covariate_names,
    )
    restore = ChangelogRestore(
        options.kafka,
        options.changelog_topic,
        layout.partitions,
        dict(layout.start_offsets),
        options.state_ttl,
        layout.run_id,
    )
    outcomes = read_and_route(pipeline, options, layout, metrics) | "Forecast" >> beam.ParDo(
        ForecastDoFn(
            model,
            max_future=options.max_future,
            state_ttl=options.state_ttl,
            restore=restore,
            run_id=layout.run_id,
            metrics=metrics,
        )
    )
    publish_and_commit(outcomes, options, layout, metrics)


def read_and_route(
    pipeline: beam.Pipeline, options: ServeOptions, layout: JobLayout, metrics: Any = default_metrics
) -> Any:
    """The source and the router: a PCollection of ``(shard key, KafkaBatch)`` for the stateful step."""
    beam.coders.registry.register_coder(KafkaBatch, KafkaBatchCoder)
    elements = [(options.input_topic, p, layout.start_offsets[p]) for p in layout.partitions]
    return (
        pipeline
        | "Partitions" >> beam.Create(elements)
        | "ReadKafka"
        >> beam.ParDo(
            ReadPartitions(
                options.kafka,
                max_records=options.max_records,
                state_ttl=options.state_ttl,
                run_id=layout.run_id,
                commit_interval=options.commit_interval,
                group=options.group,
                metrics=metrics,
            )
        ).with_output_types(KafkaBatch)
        | "RouteToShards"
        >> beam.ParDo(RouteToShards(options.state_shards)).with_output_types(beam.typehints.Tuple[str, KafkaBatch])
    )


def publish_and_commit(outcomes: Any, options: ServeOptions, layout: JobLayout, metrics: Any = default_metrics) -> None:
    """The sink and the offset committer after the stateful step's :class:`~pipeline.messages.OutcomeBatch` es."""
    if options.guarantee == EXACTLY_ONCE:
        (
            outcomes
            | "KeyByPartition" >> beam.ParDo(KeyByPartition())
            | "PublishTransactions"
            >> beam.ParDo(
                PublishTransactions(
                    options.kafka,
                    group=options.group,
                    input_topic=options.input_topic,
                    output_topic=options.output_topic,
                    dlq_topic=options.dlq_topic,
                    changelog_topic=options.changelog_topic,
                    start_offsets=layout.start_offsets,
                    commit_interval=options.commit_interval,
                    metrics=metrics,
                )
            )
        )
        return
    (
        outcomes
        | "Publish"
        >> beam.ParDo(
            PublishOutcomes(
                options.kafka,
                output_topic=options.output_topic,
                dlq_topic=options.dlq_topic,
                changelog_topic=options.changelog_topic,
                commit_interval=options.commit_interval,
                metrics=metrics,
            )
        ).with_output_types(beam.typehints.Tuple[int, Any])
        | "CommitOffsets"
        >> beam.ParDo(
            CommitOffsets(
                options.kafka, group=options.group, topic=options.input_topic, start_offsets=layout.start_offsets
            )
        )
    )


class _StopOnSignal:
    """SIGTERM/SIGINT: stop the job. Repeats are only logged.

    On the local runner: the graceful stop (drain, flush, commit; :mod:`pipeline.local_runner`). On a
    distributed runner the job's stages run in workers the signal never reaches, so the launcher
    cancels the job there (:meth:`cancel_on_signal`): what was committed stays committed, and a new
    run continues from the group's committed offsets and the changelog (see deploy/flink/README.md).

    Repeats are not escalated to a hard exit: the same signal is often delivered twice (GNU
    ``timeout`` signals the child and then its process group). SIGKILL is always safe anyway.
    """

    def __init__(self, local: bool, flink_job: tuple[str, str] | None = None) -> None:
        self.received: int | None = None
        self._local = local
        self._flink_job = flink_job  # (flink_master, job name): cancelled through Flink's REST API too
        self._result: Any = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def cancel_on_signal(self, result: Any) -> None:
        """The running job's result: a signal (already received, or later) cancels it."""
        self._result = result
        if self.received is not None:
            self._cancel()

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.info("%s: already stopping", name)
            return
        self.received = signum
        if self._local:
            log.info("%s: draining, flushing and committing, then exiting", name)
            local_runner.request_stop()
        else:
            log.info("%s: cancelling the job (committed offsets and the changelog stay), then exiting", name)
            if self._result is not None:
                self._cancel()

    def _cancel(self) -> None:
        if self._flink_job is not None:
            from pipeline.flink_cluster import cancel_job

            try:
                log.info("cancelled Flink job %s", ",".join(cancel_job(*self._flink_job)) or "(none running)")
            except OSError:
                log.warning("cancelling the job at Flink %s failed", self._flink_job[0], exc_info=True)
        try:
            self._result.cancel()
        except Exception:
            log.warning("cancelling the job failed", exc_info=True)


def _flink_job(pipeline_options: Any, options: ServeOptions, layout: JobLayout) -> tuple[str, str] | None:
    """(flink_master, job name) of a job on a Flink cluster, naming the job if the user did not; None for ``[local]``/``[auto]``."""
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, GoogleCloudOptions

    master = pipeline_options.view_as(FlinkRunnerOptions).flink_master
    if not master or master.startswith("["):
        return None
    names = pipeline_options.view_as(GoogleCloudOptions)
    if not names.job_name:
        names.job_name = f"rnncast-{options.group}-{layout.run_id[:8]}"
    return master, names.job_name


def run(
    options: ServeOptions,
    pipeline_options: Any,
    layout: JobLayout,
    *,
    metrics: JobMetrics,
    metrics_url: str,
    model_name: str,
    model_version: str,
    step_seconds: float,
    runner: str,
) -> int:
    """Runs the job until a stop signal; returns the exit status (0 after a graceful stop).

    Raises:
        Exception: Whatever made the pipeline fail (e.g. outputs not acknowledged); nothing of the
            failed bundle was committed.
    """
    metrics.set_model(model_name, model_version)
    local_runner.reset_stop()
    log.info(
        "serving %s %s: %s partitions %s (group %s, from offsets %s) -> %s, dead letters -> %s, state -> %s; "
        "%s, commit interval %gs; step %gs; runner %s; kafka %s (%s); metrics %s%s",
        model_name,
        model_version,
        options.input_topic,
        ",".join(map(str, layout.partitions)),
        options.group,
        layout.start_offsets,
        options.output_topic,
        options.dlq_topic,
        options.changelog_topic,
        options.guarantee,
        options.commit_interval,
        step_seconds,
        runner,
        options.kafka.bootstrap,
        options.kafka.security_protocol,
        metrics_url,
        "" if is_local_runner(runner) else f" (the SDK workers' own: targets in {options.worker_targets_dir})",
    )
    if options.state_ttl is None or options.state_ttl > options.max_future:
        log.warning(
            "%s: a stream silent for longer than --max-future (%g s) has its readings rejected as "
            "future_timestamp until its state expires%s; set --state-ttl at most --max-future",
            "no --state-ttl" if options.state_ttl is None else f"--state-ttl {options.state_ttl:g} s > --max-future",
            options.max_future,
            " (never, and states of departed streams stay in memory)" if options.state_ttl is None else "",
        )
    local = is_local_runner(runner)
    flink_job = _flink_job(pipeline_options, options, layout) if runner.rsplit(".", 1)[-1] == "FlinkRunner" else None
    if local:
        local_runner.apply_patches()
    else:
        clear_worker_targets(options.worker_targets_dir)  # files of an earlier run's workers
    with _StopOnSignal(local, flink_job) as stopper:
        pipeline = beam.Pipeline(options=pipeline_options)
        factory = default_metrics if local else WorkerMetrics(options.metrics_host, options.worker_targets_dir)
        build_pipeline(pipeline, options, layout, factory)
        if local:
            local_runner.freeze_startup_objects()
        result = pipeline.run()
        if not local:
            stopper.cancel_on_signal(result)
        try:
            result.wait_until_finish()
        except Exception:
            from apache_beam.runners.runner import PipelineState

            if local or stopper.received is None or result.state != PipelineState.CANCELLED:
                raise
        finally:
            if not local:
                clear_worker_targets(options.worker_targets_dir)  # the job's workers are gone
    log.info("stopped after %s", signal.Signals(stopper.received).name if stopper.received else "the input ended")
    return 0
