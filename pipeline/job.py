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

from pipeline.coders import KafkaBatchCoder
from pipeline.forecast_dofn import ForecastDoFn, RouteToShards, ServedModel
from pipeline.kafka_sink import CommitOffsets, PublishOutcomes
from pipeline.kafka_source import ReadPartitions, request_stop, reset_stop, start_offsets
from pipeline.messages import KafkaBatch
from pipeline.metrics import JobMetrics, default_metrics
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


def build_pipeline(pipeline: beam.Pipeline, options: ServeOptions, layout: JobLayout, metrics: Any = default_metrics) -> None:
    """Adds the job's transforms to ``pipeline``."""
    model = ServedModel(
        options.artifact, options.min_history, options.max_gap, options.artifact_poll_seconds or None,
        layout.covariate_names,
    )
    restore = ChangelogRestore(
        options.kafka, options.changelog_topic, layout.partitions, dict(layout.start_offsets), options.state_ttl, layout.run_id
    )
    outcomes = read_and_route(pipeline, options, layout, metrics) | "Forecast" >> beam.ParDo(
        ForecastDoFn(
            model, max_future=options.max_future, state_ttl=options.state_ttl,
            restore=restore, run_id=layout.run_id, metrics=metrics,
        )
    )
    publish_and_commit(outcomes, options, layout, metrics)


def read_and_route(pipeline: beam.Pipeline, options: ServeOptions, layout: JobLayout, metrics: Any = default_metrics) -> Any:
    """The source and the router: a PCollection of ``(shard key, KafkaBatch)`` for the stateful step."""
    beam.coders.registry.register_coder(KafkaBatch, KafkaBatchCoder)
    elements = [(options.input_topic, p, layout.start_offsets[p]) for p in layout.partitions]
    return (
        pipeline
        | "Partitions" >> beam.Create(elements)
        | "ReadKafka" >> beam.ParDo(
            ReadPartitions(
                options.kafka, max_records=options.max_records, state_ttl=options.state_ttl,
                run_id=layout.run_id, commit_interval=options.commit_interval, group=options.group, metrics=metrics,
            )
        ).with_output_types(KafkaBatch)
        | "RouteToShards" >> beam.ParDo(RouteToShards(options.state_shards)).with_output_types(
            beam.typehints.Tuple[str, KafkaBatch]
        )
    )


def publish_and_commit(outcomes: Any, options: ServeOptions, layout: JobLayout, metrics: Any = default_metrics) -> None:
    """The sink and the offset committer after the stateful step's :class:`~pipeline.messages.OutcomeBatch` es."""
    if options.guarantee == EXACTLY_ONCE:
        (
            outcomes
            | "KeyByPartition" >> beam.ParDo(KeyByPartition())
            | "PublishTransactions" >> beam.ParDo(
                PublishTransactions(
                    options.kafka, group=options.group, input_topic=options.input_topic,
                    output_topic=options.output_topic, dlq_topic=options.dlq_topic,
                    changelog_topic=options.changelog_topic, start_offsets=layout.start_offsets,
                    commit_interval=options.commit_interval, metrics=metrics,
                )
            )
        )
        return
    (
        outcomes
        | "Publish" >> beam.ParDo(
            PublishOutcomes(
                options.kafka, output_topic=options.output_topic, dlq_topic=options.dlq_topic,
                changelog_topic=options.changelog_topic, commit_interval=options.commit_interval, metrics=metrics,
            )
        ).with_output_types(beam.typehints.Tuple[int, Any])
        | "CommitOffsets" >> beam.ParDo(
            CommitOffsets(options.kafka, group=options.group, topic=options.input_topic, start_offsets=layout.start_offsets)
        )
    )


class _StopOnSignal:
    """SIGTERM/SIGINT: graceful stop (drain, flush, commit). Repeats are only logged.

    Repeats are not escalated to a hard exit: the same signal is often delivered twice (GNU
    ``timeout`` signals the child and then its process group). SIGKILL is always safe anyway.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.info("%s: already stopping", name)
            return
        self.received = signum
        log.info("%s: draining, flushing and committing, then exiting", name)
        request_stop()


def _stop_monitoring_info_growth() -> None:
    """Works around unbounded memory growth of Beam 2.77's FnApiRunner in an unbounded pipeline.

    After every bundle the FnApiRunner sets each stage's monitoring infos to
    ``consolidate_monitoring_infos(itertools.chain(new, previous))``, and that function returns a
    lazy generator: every bundle nests one more generator around all earlier bundles' results, so
    nothing is ever freed (and each consolidation gets slower). With a source that checkpoints
    several times a second the job grew by 7-10 MB a minute even when idle. Materializing the
    consolidated infos as a list keeps one small list per stage (measured: RSS flat, and Beam's
    own metrics unchanged).
    """
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    original = getattr(fn_runner, "consolidate_monitoring_infos", None)
    if original is None:  # a newer Beam: nothing to patch (watch the job's memory over a few idle minutes)
        log.warning("Beam's FnApiRunner changed: the monitoring-info workaround was not applied")
    elif not getattr(original, "_rnncast_materialized", False):

        def consolidate_to_list(monitoring_infos: Any) -> list[Any]:
            return list(original(monitoring_infos))

        consolidate_to_list._rnncast_materialized = True  # type: ignore[attr-defined]
        fn_runner.consolidate_monitoring_infos = consolidate_to_list


def _cheap_state_cache_sizing() -> None:
    """Stops Beam's state cache from walking objects to size each state write (local runner).

    Beam 2.77's ``statecache.get_deep_size`` calls ``objsize.get_deep_size`` with its default
    ``exclude_modules_globals``, which first walks the globals of every loaded module (~1,500 in this
    job) to exclude them: ~0.66 ms per committed state, a third of the job's CPU at saturation when
    states were kept per stream (py-spy, benchmarks/README.md). Our states hold no module globals, so
    that walk is skipped; and the job's cached values, lists of bytes (a shard's bag entries, its
    version token), are sized from ``sys.getsizeof`` of each item, which is what objsize would find.
    Every cached append re-sizes the whole list, so this matters more the larger a shard's bag grows.
    """
    import sys

    from apache_beam.runners.worker import statecache

    original = statecache.get_deep_size
    if getattr(original, "_rnncast_cheap", False):
        return

    def walked_size(*objs: Any) -> int:
        return statecache.objsize.get_deep_size(
            *objs,
            get_size_func=statecache._size_func,
            get_referents_func=statecache._get_referents_func,
            filter_func=statecache._filter_func,
            exclude_modules_globals=False,
        )

    getsizeof = sys.getsizeof

    def get_deep_size(*objs: Any) -> int:
        if len(objs) == 1 and type(objs[0]) is list and all(type(item) is bytes for item in objs[0]):
            return getsizeof(objs[0]) + sum(map(getsizeof, objs[0]))
        return walked_size(*objs)

    get_deep_size._rnncast_cheap = True  # type: ignore[attr-defined]
    statecache.get_deep_size = get_deep_size


def _no_state_sampler_thread() -> None:
    """Stops every bundle from starting and joining a Beam state-sampler thread (local runner).

    Each bundle of each stage starts a ``StateSampler`` thread that sleeps in growing steps (2 ms x
    1.2 per step, up to 200 ms) and joins it at the bundle's end, so every bundle waits for the rest
    of the sampler's current sleep and then for the GIL to let the thread exit: with three stages per
    source checkpoint that was the largest item of the main thread's time at half load (py-spy
    ``--idle``: 14% in ``Thread.join`` of the sampler; still 11% with a 5 ms cap on the sleep). The
    sampler only feeds Beam's per-step time counters and stuck-bundle ("lull") logging, which this
    job does not export; without the thread those counters stay at zero. Everything else about the
    tracker (current state, transitions) is unchanged.
    """
    from apache_beam.runners.worker import statesampler

    sampler = statesampler.StateSampler
    if getattr(sampler.start, "_rnncast_threadless", False):
        return
    if not all(hasattr(sampler, name) for name in ("start", "stop", "stop_if_still_running", "reset")):
        log.warning("Beam's StateSampler changed: the sampler-thread workaround was not applied")
        return

    def start(self: Any) -> None:
        self.tracked_thread = threading.current_thread()
        statesampler.set_current_tracker(self)
        self.started = True

    def stop(self: Any) -> None:
        statesampler.set_current_tracker(None)
        self.finished = True

    start._rnncast_threadless = True  # type: ignore[attr-defined]
    sampler.start = start
    sampler.stop = stop


def _freeze_startup_objects() -> None:
    """Moves everything alive before the pipeline starts out of the garbage collector's reach.

    The job's imports (Beam, kafka-python, numpy, prometheus) leave >110,000 objects that live as long as
    the process; every full collection re-scanned them: 55-70 ms pauses every few seconds at half load
    (gc.callbacks probe), a visible part of the p99 latency. ``gc.freeze()`` (the documented
    pre-fork/long-lived-server idiom) keeps them out of later collections: full collections then took
    under 20 ms. Cycles created later are still collected.
    """
    import gc

    gc.collect()
    gc.freeze()


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
    reset_stop()
    log.info(
        "serving %s %s: %s partitions %s (group %s, from offsets %s) -> %s, dead letters -> %s, state -> %s; "
        "%s, commit interval %gs; step %gs; runner %s; kafka %s (%s); metrics %s",
        model_name, model_version, options.input_topic, ",".join(map(str, layout.partitions)), options.group,
        layout.start_offsets, options.output_topic, options.dlq_topic, options.changelog_topic, options.guarantee,
        options.commit_interval, step_seconds, runner,
        options.kafka.bootstrap, options.kafka.security_protocol, metrics_url,
    )
    if options.state_ttl is None or options.state_ttl > options.max_future:
        log.warning(
            "%s: a stream silent for longer than --max-future (%g s) has its readings rejected as "
            "future_timestamp until its state expires%s; set --state-ttl at most --max-future",
            "no --state-ttl" if options.state_ttl is None else f"--state-ttl {options.state_ttl:g} s > --max-future",
            options.max_future,
            " (never, and states of departed streams stay in memory)" if options.state_ttl is None else "",
        )
    if is_local_runner(runner):
        _stop_monitoring_info_growth()
        _cheap_state_cache_sizing()
        _no_state_sampler_thread()
    with _StopOnSignal() as stopper:
        pipeline = beam.Pipeline(options=pipeline_options)
        build_pipeline(pipeline, options, layout)
        if is_local_runner(runner):
            _freeze_startup_objects()
        result = pipeline.run()
        result.wait_until_finish()
    log.info("stopped after %s", signal.Signals(stopper.received).name if stopper.received else "the input ended")
    return 0
