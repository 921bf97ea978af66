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

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from models.argtypes import check_number, number, partition_list
from pipeline.kafka_config import KafkaSettings, add_kafka_arguments
from pipeline.state_store import changelog_topic

__all__ = [
    "AT_LEAST_ONCE",
    "COMMIT_INTERVALS",
    "DEFAULT_GUARANTEE",
    "EXACTLY_ONCE",
    "GUARANTEES",
    "LOCAL_RUNNER",
    "STATE_SHARDS_BY_RUNNER",
    "ServeOptions",
    "add_serve_arguments",
    "beam_options",
    "default_state_shards",
    "is_local_runner",
]

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
# --state-shards by runner. On one local worker fewer shards make bigger rounds of readings stepped together
# (benchmarks/README.md, "--state-shards 4 instead of 16"); a distributed runner spreads the shards over its
# workers by key, so it needs several per worker to balance them.
STATE_SHARDS_BY_RUNNER = {"the local runner": 4, "distributed runners": 16}
_REFUSED_RUNNERS = ("directrunner", "bundlebaseddirectrunner", "switchingdirectrunner", "testdirectrunner")


@dataclass(frozen=True)
class Flag:
    """How a :class:`ServeOptions` field appears on ``rnncast serve``'s command line and what it accepts.

    ``minimum``/``strictly`` are checked by argparse for the command line and by
    :meth:`ServeOptions.__post_init__` for values given in code, with the same words
    (:func:`models.argtypes.check_number`).
    """

    name: str
    help: str
    group: str | None = None
    kind: type | None = None
    minimum: float | None = None
    strictly: bool = False
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None
    default_text: str | None = None  # the help's "(default: ...)" where the default is computed or None


def _option(default: Any = MISSING, **flag: Any) -> Any:
    return field(default=default, metadata={"flag": Flag(**flag)})


def _commit_interval_defaults() -> str:
    return ", ".join(f"{interval:g} with {guarantee}" for guarantee, interval in COMMIT_INTERVALS.items())


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``rnncast serve`` needs, validated: the one place each option's default, check and help live.

    ``rnncast serve``'s options are generated from these fields (:func:`add_serve_arguments`), and
    :meth:`from_args` builds the object back; code that builds one directly gets the same defaults and
    checks. ``kafka`` has its own options (:func:`pipeline.kafka_config.add_kafka_arguments`).

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
        min_history: Readings before a stream's first forecast (None: the artifact's).
        max_gap: Longest gap, in steps, that is imputed (None: the artifact's).
        state_ttl: Seconds of event time after which a silent stream's state expires (None: never).
        max_future: Seconds a reading may lie after its stream's last reading.
        max_records: Records one source call reads at most (the bundle size per partition).
        state_shards: Keys of the stateful step: streams are spread over this many state shards
            (None: :func:`default_state_shards` for the runner).
        guarantee: ``at-least-once`` (outputs first, then state, then offsets) or ``exactly-once`` (all
            three in one Kafka transaction per partition; :mod:`pipeline.transactions`).
        commit_interval: Seconds between state snapshots + offset commits of a busy partition (with
            exactly-once: between its transactions); None: :data:`COMMIT_INTERVALS` of the guarantee.
        artifact_poll_seconds: How often ``artifact`` is checked for a new model (0: never).
        connect_timeout: Seconds to keep retrying an unreachable Kafka at start.
        metrics_host: Interface of the /metrics server.
        metrics_port: Its port (0: any free port).
        metrics_targets_dir: On a distributed runner, where each SDK worker registers its own /metrics
            endpoint for Prometheus' file-based discovery (:class:`~pipeline.metrics.WorkerMetrics`);
            None: a directory under the system's temporary directory, named for the group.
    """

    artifact: str = _option(
        name="--artifact",
        kind=Path,
        metavar="PATH",
        help="the model: an artifact directory (from rnncast train), a symbolic link to one (e.g. current), or a "
        "directory of versioned artifact directories (the newest valid one by manifest 'created', then name); "
        "watched while the job runs: a new model there is loaded and swapped in without a restart",
    )
    kafka: KafkaSettings = field(default=None)  # type: ignore[assignment]  # required; its own options
    input_topic: str = _option("readings", name="--input-topic", group="topics", help="readings topic")
    output_topic: str = _option("forecasts", name="--output-topic", group="topics", help="forecasts topic")
    dlq_topic: str = _option("readings-dlq", name="--dlq-topic", group="topics", help="dead-letter topic")
    group: str = _option(
        "rnncast",
        name="--group",
        group="topics",
        help="consumer group: its committed offsets and its state changelog <group>.rnncast-state",
    )
    partitions: tuple[int, ...] | None = _option(
        None,
        name="--partitions",
        group="topics",
        parse=partition_list,
        metavar="LIST",
        default_text="all",
        help="input partitions to consume, e.g. 0,1 or 0-3; instances with disjoint lists run side by side",
    )
    topic_partitions: int = _option(
        4,
        name="--topic-partitions",
        group="topics",
        kind=int,
        minimum=1,
        metavar="N",
        help="partitions of the topics created when missing",
    )
    min_history: int | None = _option(
        None,
        name="--min-history",
        group="serving",
        kind=int,
        minimum=1,
        metavar="N",
        default_text="the artifact's",
        help="readings before a stream's first forecast",
    )
    max_gap: int | None = _option(
        None,
        name="--max-gap",
        group="serving",
        kind=int,
        minimum=0,
        metavar="N",
        default_text="the artifact's",
        help="missing steps imputed; longer gaps restart the stream",
    )
    state_ttl: float | None = _option(
        None,
        name="--state-ttl",
        group="serving",
        kind=float,
        minimum=0,
        strictly=True,
        metavar="SECONDS",
        default_text="never",
        help="a stream silent for longer (event time) starts fresh and its state is dropped",
    )
    max_future: float = _option(
        86_400.0,
        name="--max-future",
        group="serving",
        kind=float,
        minimum=0,
        strictly=True,
        metavar="SECONDS",
        help="readings further after their stream's last reading are dead letters",
    )
    max_records: int = _option(
        2000,
        name="--batch-size",
        group="serving",
        kind=int,
        minimum=1,
        metavar="N",
        help="records read from a partition at a time: a bundle's forecasts and dead letters are flushed together; "
        "larger batches amortise Beam's per-bundle and per-stream costs under load",
    )
    state_shards: int | None = _option(
        None,
        name="--state-shards",
        group="serving",
        kind=int,
        minimum=1,
        metavar="N",
        default_text=", ".join(f"{n} on {where}" for where, n in STATE_SHARDS_BY_RUNNER.items()),
        help="streams are spread over N keys of the stateful step (by a hash of the stream id); each batch of "
        "records becomes one element per shard, so Beam's per-element costs are paid per batch and the readings "
        "of a shard's streams are stepped together. More shards: more parallelism on a distributed runner (at "
        "least its number of workers), but smaller elements and rounds",
    )
    guarantee: str = _option(
        DEFAULT_GUARANTEE,
        name="--guarantee",
        group="serving",
        choices=GUARANTEES,
        help="at-least-once: forecasts are published at once, a crash may publish some again (identical); "
        "exactly-once: forecasts, dead letters, state snapshots and input offsets of a partition go into one "
        "Kafka transaction per commit interval, read_committed consumers see each forecast once, after its "
        "commit (needs a broker with reliable transactions: Apache Kafka, not Tansu)",
    )
    commit_interval: float | None = _option(
        None,
        name="--commit-interval",
        group="serving",
        kind=float,
        minimum=0,
        strictly=True,
        metavar="SECONDS",
        default_text=_commit_interval_defaults(),
        help="while a partition is busy, state snapshots are written and offsets committed this often (and "
        "whenever it goes idle, and at stop); with exactly-once this is how often its transaction commits, "
        "so it bounds how long a forecast stays invisible. Longer means less changelog traffic, more readings "
        "replayed (never applied twice) after a crash",
    )
    artifact_poll_seconds: float = _option(
        10.0,
        name="--artifact-poll-seconds",
        group="serving",
        kind=float,
        minimum=0,
        metavar="SECONDS",
        help="how often --artifact is checked for a new model; an invalid one is refused and the current model "
        "keeps serving; 0: never",
    )
    connect_timeout: float = _option(
        60.0,
        name="--connect-timeout",
        kind=float,
        minimum=0,
        metavar="SECONDS",
        help="when Kafka cannot be reached at start, retry this long (logging why) before exiting 2; "
        "0 fails at once. Once running, the job rides out broker outages by itself",
    )
    metrics_host: str = _option(
        "127.0.0.1", name="--metrics-host", group="monitoring", help="interface of the /metrics server"
    )
    metrics_port: int = _option(
        9108,
        name="--metrics-port",
        group="monitoring",
        kind=int,
        minimum=0,
        help="port of the /metrics server, 0 for any",
    )
    metrics_targets_dir: str | None = _option(
        None,
        name="--metrics-targets-dir",
        group="monitoring",
        metavar="DIR",
        default_text="rnncast-workers-GROUP in the temporary directory",
        help="distributed runners (Flink): each SDK worker serves its own /metrics on --metrics-host and a free port, "
        "and registers it here as a Prometheus file_sd target file",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.kafka, KafkaSettings):
            raise ValueError("ServeOptions needs the Kafka settings")
        object.__setattr__(self, "artifact", str(self.artifact))
        for item in fields(self):
            flag = item.metadata.get("flag")
            value = getattr(self, item.name)
            if flag is None or value is None:
                continue
            if flag.kind is not None and flag.kind is not Path:
                reason = check_number(value, flag.minimum, strictly=flag.strictly)
                if reason:
                    raise ValueError(f"{flag.name} {reason}")
            if flag.choices is not None and value not in flag.choices:
                raise ValueError(f"{flag.name} must be one of {', '.join(flag.choices)}, not {value!r}")
        if self.commit_interval is None:
            object.__setattr__(self, "commit_interval", COMMIT_INTERVALS[self.guarantee])
        names = {"--input-topic": self.input_topic, "--output-topic": self.output_topic, "--dlq-topic": self.dlq_topic}
        if len(set(names.values())) < len(names) or self.changelog_topic in names.values():
            raise ValueError(
                f"the input, output, dead-letter and changelog topics must differ: {names} and {self.changelog_topic!r}"
            )
        if self.partitions is not None and (not self.partitions or min(self.partitions) < 0):
            raise ValueError("--partitions must list partition numbers >= 0")

    @classmethod
    def from_args(cls, args: argparse.Namespace, kafka: KafkaSettings, *, runner: str | None = None) -> ServeOptions:
        """The options parsed by :func:`add_serve_arguments` (``state_shards`` resolved for ``runner``)."""
        values = {item.name: getattr(args, item.name) for item in fields(cls) if "flag" in item.metadata}
        if values["state_shards"] is None:
            values["state_shards"] = default_state_shards(runner)
        return cls(kafka=kafka, **values)

    @property
    def worker_targets_dir(self) -> str:
        """:attr:`metrics_targets_dir`, or its default."""
        import tempfile

        return self.metrics_targets_dir or str(Path(tempfile.gettempdir()) / f"rnncast-workers-{self.group}")

    @property
    def changelog_topic(self) -> str:
        return changelog_topic(self.group)


def default_state_shards(runner: str | None) -> int:
    """``--state-shards`` when not given: :data:`STATE_SHARDS_BY_RUNNER` for this runner."""
    return STATE_SHARDS_BY_RUNNER["the local runner" if is_local_runner(runner) else "distributed runners"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one option per :class:`ServeOptions` field (and the Kafka connection options), in field order."""
    groups: dict[str | None, Any] = {None: parser}
    for item in fields(ServeOptions):
        if item.name == "kafka":
            add_kafka_arguments(parser)
            continue
        flag: Flag = item.metadata["flag"]
        target = groups.get(flag.group)
        if target is None:
            target = groups[flag.group] = parser.add_argument_group(flag.group)
        kwargs: dict[str, Any] = {"dest": item.name, "metavar": flag.metavar, "help": flag.help}
        if item.default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = item.default
            shown = (
                flag.default_text
                if flag.default_text is not None
                else f"{item.default:g}"
                if isinstance(item.default, float)
                else item.default
            )
            kwargs["help"] = f"{flag.help} (default: {shown})".replace("%", "%%")
        if flag.parse is not None:
            kwargs["type"] = flag.parse
        elif flag.kind is Path:
            kwargs["type"] = Path
        elif flag.kind is not None:
            kwargs["type"] = number(flag.kind, flag.minimum, strictly=flag.strictly)
        if flag.choices is not None:
            kwargs["choices"] = flag.choices
        target.add_argument(flag.name, **kwargs)


def is_local_runner(runner: str | None) -> bool:
    return runner is None or runner.rsplit(".", 1)[-1].lower() in ("fnapirunner",)


def _unknown_args(flags: Sequence[str]) -> list[str]:
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(flags))
    return [arg for arg in unknown if arg.startswith("-")]


def beam_options(flags: Sequence[str]) -> PipelineOptions:  # noqa: F821
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
