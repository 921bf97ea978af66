"""Configuration of ``rnncast serve``: one frozen object for the job, Beam's options for the runner.

:class:`ServeOptions` is built once at the edge (``pipeline/cli_serve.py``) from the command line.
:func:`beam_options` turns the remaining arguments into Beam ``PipelineOptions`` and pins the runner:

* no ``--runner``: ``FnApiRunner``, in memory, one worker. Beam's default ``DirectRunner`` would first
  try to download the Prism runner (fails offline) and its fallback, the ``BundleBasedDirectRunner``,
  cannot run this pipeline's splittable DoFn; the FnApiRunner runs it unbounded, checkpointing the
  source after every batch. One in-process worker is required: the stop signal, the metrics registry
  and the idle-stream index are process-wide.
* ``DirectRunner``/``BundleBasedDirectRunner``/``SwitchingDirectRunner`` are refused with that reason.
* any other runner (``FlinkRunner``, ``DataflowRunner``, ``PortableRunner``, ``PrismRunner``, ...)
  gets ``--streaming`` and every option as given. Options Beam does not know are passed on (in
  uber-jar mode Flink forwards them to the Java runner), with a warning.

With the local runner an option nobody knows is an error, so a misspelt rnncast option
(``--ouput-topic``) cannot be silently ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.kafka_config import KafkaSettings
from pipeline.messages import DEFAULT_STATE_SHARDS
from pipeline.state_store import changelog_topic

__all__ = ["AT_LEAST_ONCE", "COMMIT_INTERVALS", "EXACTLY_ONCE", "GUARANTEES", "DEFAULT_GUARANTEE", "LOCAL_RUNNER", "ServeOptions", "beam_options", "is_local_runner"]

log = logging.getLogger(__name__)
LOCAL_RUNNER = "FnApiRunner"
EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
GUARANTEES = (EXACTLY_ONCE, AT_LEAST_ONCE)
DEFAULT_GUARANTEE = AT_LEAST_ONCE
# --commit-interval by guarantee. With exactly-once a forecast becomes visible (read_committed) only when
# its transaction commits, so the interval bounds its latency; at-least-once publishes at once and the
# interval only paces snapshots and offset commits.
COMMIT_INTERVALS = {AT_LEAST_ONCE: 5.0, EXACTLY_ONCE: 0.2}
_REFUSED_RUNNERS = ("directrunner", "bundlebaseddirectrunner", "switchingdirectrunner", "testdirectrunner")


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``rnncast serve`` needs, validated.

    Attributes:
        artifact: Model artifact directory, a link to one, or a directory of versioned artifact
            directories (see :mod:`pipeline.model_watch`).
        kafka: Kafka connection (the password stays inside a ``Secret``).
        input_topic: Readings topic.
        output_topic: Forecasts topic.
        dlq_topic: Dead-letter topic.
        group: Consumer group: committed offsets and the changelog ``<group>.rnncast-state``.
        partitions: Input partitions to consume (None: all).
        topic_partitions: Partitions of the topics this job creates.
        metrics_host: Interface of the /metrics server.
        metrics_port: Its port (0: any free port).
        metrics_targets_dir: On a distributed runner, where each SDK worker registers its own /metrics
            endpoint for Prometheus' file-based discovery (:class:`~pipeline.metrics.WorkerMetrics`);
            None: a directory under the system's temporary directory, named for the group.
        min_history: Readings before a stream's first forecast (None: the artifact's).
        max_gap: Longest gap, in steps, that is imputed (None: the artifact's).
        state_ttl: Seconds of event time after which a silent stream's state expires (None: never).
        max_future: Seconds a reading may lie after its stream's last reading.
        max_records: Records one source call reads at most (the bundle size per partition).
        state_shards: Keys of the stateful step: streams are spread over this many state shards.
        commit_interval: Seconds between state snapshots + offset commits of a busy partition (with
            exactly-once: between its transactions).
        artifact_poll_seconds: How often ``artifact`` is checked for a new model (0: never).
        guarantee: ``at-least-once`` (outputs first, then state, then offsets) or ``exactly-once`` (all
            three in one Kafka transaction per partition; :mod:`pipeline.transactions`).
    """

    artifact: str
    kafka: KafkaSettings
    input_topic: str = "readings"
    output_topic: str = "forecasts"
    dlq_topic: str = "readings-dlq"
    group: str = "rnncast"
    partitions: tuple[int, ...] | None = None
    topic_partitions: int = 4
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    metrics_targets_dir: str | None = None
    min_history: int | None = None
    max_gap: int | None = None
    state_ttl: float | None = None
    max_future: float = 86_400.0
    max_records: int = 2000
    state_shards: int = DEFAULT_STATE_SHARDS
    commit_interval: float = 5.0
    artifact_poll_seconds: float = 10.0
    guarantee: str = DEFAULT_GUARANTEE

    def __post_init__(self) -> None:
        names = {"--input-topic": self.input_topic, "--output-topic": self.output_topic, "--dlq-topic": self.dlq_topic}
        if len(set(names.values())) < len(names) or self.changelog_topic in names.values():
            raise ValueError(
                f"the input, output, dead-letter and changelog topics must differ: {names} and {self.changelog_topic!r}"
            )
        if self.topic_partitions < 1:
            raise ValueError("--topic-partitions must be at least 1")
        if self.state_ttl is not None and not self.state_ttl > 0:
            raise ValueError("--state-ttl must be positive")
        if not self.artifact_poll_seconds >= 0:
            raise ValueError("--artifact-poll-seconds must be >= 0")
        if self.state_shards < 1:
            raise ValueError("--state-shards must be at least 1")
        if not self.commit_interval > 0:
            raise ValueError("--commit-interval must be positive")
        if not self.max_future > 0:
            raise ValueError("--max-future must be positive")
        if self.guarantee not in GUARANTEES:
            raise ValueError(f"--guarantee must be one of {', '.join(GUARANTEES)}, not {self.guarantee!r}")
        if self.partitions is not None and (not self.partitions or min(self.partitions) < 0):
            raise ValueError("--partitions must list partition numbers >= 0")

    @property
    def worker_targets_dir(self) -> str:
        """:attr:`metrics_targets_dir`, or its default."""
        import tempfile
        from pathlib import Path

        return self.metrics_targets_dir or str(Path(tempfile.gettempdir()) / f"rnncast-workers-{self.group}")

    @property
    def changelog_topic(self) -> str:
        return changelog_topic(self.group)


def is_local_runner(runner: str | None) -> bool:
    return runner is None or runner.rsplit(".", 1)[-1].lower() in ("fnapirunner",)


def _unknown_args(flags: Sequence[str]) -> list[str]:
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - what PipelineOptions itself does
    _, unknown = parser.parse_known_args(list(flags))
    return [arg for arg in unknown if arg.startswith("-")]


def beam_options(flags: Sequence[str]) -> "PipelineOptions":  # noqa: F821
    """Beam ``PipelineOptions`` from the arguments rnncast did not consume, with the runner pinned.

    Raises:
        ValueError: On a refused runner, a local-runner setting that cannot work, or (local runner)
            an argument nobody recognises. The message names the argument.
    """
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    flags = list(flags)
    try:
        options = PipelineOptions(flags)
        standard = options.view_as(StandardOptions)
        direct = options.view_as(DirectOptions)
    except SystemExit:  # argparse rejected a value, e.g. --direct_num_workers=x (it printed why)
        raise ValueError(f"invalid Beam pipeline option in {' '.join(flags)}") from None
    runner = standard.runner
    if runner is not None and runner.rsplit(".", 1)[-1].lower() in _REFUSED_RUNNERS:
        raise ValueError(
            f"--runner={runner} is not supported: Beam's DirectRunner first tries to download the Prism "
            f"runner and its bundle-based fallback cannot run this job's Kafka source; omit --runner for "
            f"the local {LOCAL_RUNNER}, or name a distributed runner"
        )
    unknown = _unknown_args(flags)
    if is_local_runner(runner):
        if unknown:
            raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
        if direct.direct_running_mode not in (None, "in_memory") or (direct.direct_num_workers or 1) != 1:
            raise ValueError(
                "the local runner must run in memory with one worker (--direct_running_mode=in_memory, "
                "--direct_num_workers=1): stopping, metrics and state sweeping are per process"
            )
        standard.runner = LOCAL_RUNNER
        direct.direct_running_mode = "in_memory"
        direct.direct_num_workers = 1
    else:
        standard.streaming = True
        if unknown:
            log.warning("passing options Beam does not know to %s: %s", runner, " ".join(unknown))
    return options
