"""Helpers for tests of ``rnncast serve``: a trained artifact, the job as a subprocess, topic readers.

Nothing here is mocked: the job is the real command line in its own process, talking to the session's
embedded broker. Topic ends are taken from fetch responses' high watermarks (``consumer.highwater``),
because Tansu 0.6's ListOffsets "latest" can report less than the true end.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.kafka_config import KafkaSettings  # noqa: F401 - re-exported for tests

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "elecdemand.csv"
ARTIFACT_ENV = "RNNCAST_TEST_ARTIFACT"  # reuse an artifact directory instead of training one

_artifact_lock = threading.Lock()
_artifact: Path | None = None


def trained_artifact() -> Path:
    """A small LSTM artifact trained once per test session on ``data/elecdemand.csv`` (about 10 s).

    Set ``$RNNCAST_TEST_ARTIFACT`` to an existing artifact directory to skip training.
    """
    global _artifact
    with _artifact_lock:
        if _artifact is None:
            preset = os.environ.get(ARTIFACT_ENV)
            if preset:
                _artifact = Path(preset)
            else:
                out = Path(tempfile.mkdtemp(prefix="rnncast-serve-art-")) / "artifact"
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pipeline.cli",
                        "train",
                        "--data",
                        str(DATA),
                        "--out",
                        str(out),
                        "--epochs",
                        "1",
                        "--units",
                        "32",
                        "--season",
                        "48",
                    ],  # a day's warm-up: the tests replay days, not weeks
                    cwd=REPO,
                    env=_env(),
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                _artifact = out
        return _artifact


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


# --- the job as a subprocess --------------------------------------------------------------------

_METRICS_URL = re.compile(r"metrics (http://\S+/metrics)")


@dataclass
class ServeProcess:
    """``rnncast serve`` running in its own process (and session, so test signals do not reach it)."""

    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None  # more environment (e.g. the SASL password)
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", *self.args],
            cwd=REPO,
            env={**_env(), **(self.env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics_url(self, timeout: float = 60.0) -> str:
        """The job's /metrics URL, from its startup line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _METRICS_URL.search(self.log)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"serve printed no startup line in {timeout:g}s:\n{self.log[-3000:]}")

    def worker_targets_dir(self, timeout: float = 60.0) -> str:
        """Where the SDK workers of a distributed job register their /metrics, from the startup line."""
        self.metrics_url(timeout)
        match = re.search(r"targets in (\S+)\)", self.log)
        if match is None:
            raise RuntimeError(f"serve names no worker targets directory:\n{self.log[-3000:]}")
        return match.group(1)

    def wait_restored(self, timeout: float = 60.0) -> None:
        """Until the stateful step has read the changelog (the pipeline is running)."""
        deadline = time.monotonic() + timeout
        while "stream states from" not in self.log:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"serve did not start its pipeline in {timeout:g}s:\n{self.log[-3000:]}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait: the exit status (SIGKILL and an error if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"serve did not stop within {timeout:g}s after SIGTERM:\n{self.log[-3000:]}") from None
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


def serve_args(
    artifact: Path,
    bootstrap: str,
    *,
    input_topic: str,
    output_topic: str,
    dlq_topic: str,
    group: str,
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        "--artifact",
        str(artifact),
        "--bootstrap",
        bootstrap,
        "--input-topic",
        input_topic,
        "--output-topic",
        output_topic,
        "--dlq-topic",
        dlq_topic,
        "--group",
        group,
        "--metrics-port",
        "0",
        *extra,
    ]


# --- metrics ------------------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed with prometheus_client's parser: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_sum(urls: Iterable[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample summed over several /metrics endpoints (the SDK workers of a distributed job)."""
    total: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for url in urls:
        for key, value in scrape(url).items():
            total[key] = total.get(key, 0.0) + value
    return total


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- topics -------------------------------------------------------------------------------------


def read_records(
    bootstrap: str,
    topic: str,
    *,
    at_least: int = 0,
    timeout: float = 60.0,
    settle: float = 0.0,
    read_committed: bool = False,
) -> list[Any]:
    """All records of a topic, from the beginning to its end (by high watermark).

    Waits until at least ``at_least`` records exist (or ``timeout``), then reads to the end; with
    ``settle`` it keeps reading until nothing new arrived for that many seconds (to catch extras).
    ``read_committed``: only records of committed transactions (the end is then the last stable offset:
    nothing may be left open when this reads). Records are sorted by (partition, offset).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap],
        client_id="rnncast-tests",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic!r} did not appear")
            consumer.poll(timeout_ms=50)
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        last_new = time.monotonic()
        while True:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
                last_new = time.monotonic()
            at_end = all(
                consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                for tp in assigned
            )
            now = time.monotonic()
            if at_end and len(records) >= at_least and now - last_new >= settle:
                break
            if now > deadline:
                break
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def committed(bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition, the offset after the last record (by high watermark)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=None, enable_auto_commit=False)
    try:
        assigned = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(assigned)
        for tp in assigned:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + 20
        while any(consumer.highwater(tp) is None for tp in assigned) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100, max_records=1)
        return {tp.partition: consumer.highwater(tp) for tp in assigned}
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Produces (key, value) messages in order (acks=all, idempotent); returns how many."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=[bootstrap],
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    count = 0
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in messages]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=10)
            count += 1
    finally:
        producer.close(timeout=5)
    return count


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


# --- readings and the offline reference -----------------------------------------------------------


def dataset_readings(rows: int, streams: int, start_row: int = 0) -> tuple[list[Any], tuple[str, ...]]:
    """Readings of the first ``rows`` CSV rows (after ``start_row``), each stream cloned ``streams`` times."""
    from models.data import load_csv
    from models.reading import Reading

    dataset = load_csv(DATA)
    (series,) = dataset.series.values()
    readings = []
    for i in range(start_row, start_row + rows):
        covariates = tuple(float(x) for x in series.covariates[i])
        for k in range(streams):
            readings.append(
                Reading(f"{series.stream_id}#{k}", float(series.timestamps[i]), float(series.values[i]), covariates)
            )
    return readings, dataset.covariate_names


def reading_message(reading: Any, covariate_names: Sequence[str]) -> tuple[bytes, bytes]:
    from pipeline.replay import encode_reading

    return reading.stream_id.encode("utf-8"), encode_reading(reading, covariate_names)


def offline_forecasts(
    artifact: Path, readings: Iterable[Any], model_covariates: Sequence[str], data_covariates: Sequence[str]
) -> dict[tuple[str, float], dict[str, Any]]:
    """Engine.step over each stream's readings in order (uninterrupted): (stream, timestamp) -> forecast."""
    from models.artifact import load_artifact
    from models.intervals import level_key
    from models.reading import Reading

    engine = load_artifact(artifact).engine()
    columns = [list(data_covariates).index(name) for name in model_covariates]
    states: dict[str, Any] = {}
    out = {}
    for reading in readings:
        reading = Reading(
            reading.stream_id, reading.timestamp, reading.value, tuple(reading.covariates[c] for c in columns)
        )
        result = engine.step(states.get(reading.stream_id), reading)
        if result.outcome != "applied":
            continue
        states[reading.stream_id] = result.state
        if result.forecast is not None:
            out[(reading.stream_id, reading.timestamp)] = {
                "values": result.forecast.values.tolist(),
                "targets": result.forecast.target_timestamps.tolist(),
                "readings_seen": result.forecast.readings_seen,
            }
            if result.forecast.lower is not None:
                out[(reading.stream_id, reading.timestamp)]["intervals"] = {
                    level_key(level): {"lower": lower, "upper": upper}
                    for level, lower, upper in zip(
                        result.forecast.interval_levels, result.forecast.lower.tolist(), result.forecast.upper.tolist()
                    )
                }
    return out


def forecast_docs(records: Iterable[Any]) -> list[dict[str, Any]]:
    docs = []
    for record in records:
        doc = json.loads(record.value)
        doc["_key"] = record.key
        docs.append(doc)
    return docs


def compare(served: list[dict[str, Any]], reference: dict[tuple[str, float], dict[str, Any]]) -> dict[str, Any]:
    """Counts missing, duplicated, unexpected forecasts and the largest difference to the reference.

    The difference covers the prediction intervals too (``interval_max_diff`` alone): a forecast that
    lacks the reference's intervals, or has other levels, differs infinitely.
    """
    from models.timeutil import parse_timestamp

    counts = Counter()
    max_diff = 0.0
    interval_max_diff = 0.0
    differing = 0
    for doc in served:
        key = (doc["stream_id"], parse_timestamp(doc["timestamp"]))
        counts[key] += 1
        expected = reference.get(key)
        if expected is None:
            continue
        diff = max(abs(a - b) for a, b in zip(doc["forecast"], expected["values"]))
        if len(doc["forecast"]) != len(expected["values"]) or doc["readings_seen"] != expected["readings_seen"]:
            diff = float("inf")
        interval_diff = _interval_diff(doc.get("intervals"), expected.get("intervals"))
        interval_max_diff = max(interval_max_diff, interval_diff)
        diff = max(diff, interval_diff)
        max_diff = max(max_diff, diff)
        if diff > 1e-9:
            differing += 1
    return {
        "missing": sorted(set(reference) - set(counts)),
        "unexpected": sorted(set(counts) - set(reference)),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "max_diff": max_diff,
        "interval_max_diff": interval_max_diff,
        "differing": differing,
    }


def _interval_diff(served: dict[str, Any] | None, expected: dict[str, Any] | None) -> float:
    if expected is None:
        return 0.0 if served is None else float("inf")
    if served is None or set(served) != set(expected):
        return float("inf")
    diff = 0.0
    for level, bounds in expected.items():
        for side in ("lower", "upper"):
            got, want = served[level][side], bounds[side]
            if len(got) != len(want):
                return float("inf")
            diff = max(diff, max(_number_diff(a, b) for a, b in zip(got, want)))
    return diff


def _number_diff(got: float | None, want: float | None) -> float:
    """|got - want|; a null or NaN on either side differs infinitely (max() would skip a NaN difference)."""
    if got is None or want is None or not (math.isfinite(got) and math.isfinite(want)):
        return 0.0 if got == want else float("inf")
    return abs(got - want)


class PacedProducer(threading.Thread):
    """Publishes messages in the background at about ``rate`` per second (a live input stream)."""

    def __init__(
        self, bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]], rate: float
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages, self.rate = bootstrap, topic, list(messages), rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = None
        try:
            producer = KafkaProducer(
                bootstrap_servers=[self.bootstrap],
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_request_size=4 * 1024 * 1024,
            )
            # 100 small chunks a second: a nearly continuous stream, so a fast job still has published
            # readings in flight at most moments (chunks every 100 ms left it idle and fully committed
            # most of the time).
            chunk = max(1, int(self.rate / 100))
            started = time.monotonic()
            for i in range(0, len(self.messages), chunk):
                futures = [producer.send(self.topic, key=k, value=v) for k, v in self.messages[i : i + chunk]]
                producer.flush(timeout=60)
                for future in futures:
                    future.get(timeout=10)
                self.sent += len(futures)
                ahead = started + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as err:
            self.error = err
        finally:
            if producer is not None:
                producer.close(timeout=5)

    def finish(self, timeout: float = 120.0) -> None:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.sent == len(self.messages), f"published {self.sent} of {len(self.messages)}"


# --- the serve contract's input: valid readings with hostile records interleaved ------------------


def _doc(stream_id: str, timestamp: object = "2014-01-01T00:00:00Z", value: object = 1.0, **extra: object) -> bytes:
    body = {"stream_id": stream_id, "timestamp": timestamp, "value": value, "temperature": 20.0, "workday": 1.0}
    body.update(extra)
    return json.dumps(body).encode()


def bad_messages(stream: str) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected reason, key, value) of every record that decoding must reject."""
    key = stream.encode()
    missing_covariate = json.dumps(
        {"stream_id": stream, "timestamp": "2014-01-01T00:00:00Z", "value": 1.0, "workday": 1}
    ).encode()
    return [
        ("not_utf8", key, b'\xff\xfe{"stream_id": 1}'),
        ("not_json", key, b'{"stream_id": "x", '),
        ("not_json", key, None),
        ("not_object", key, b"[1, 2, 3]"),
        ("missing_field", key, json.dumps({"stream_id": stream, "timestamp": "2014-01-01T00:00:00Z"}).encode()),
        ("missing_field", key, missing_covariate),
        ("bad_type", key, _doc(stream, value="3.5")),
        ("bad_type", key, _doc(stream, temperature=True)),
        ("bad_value", key, _doc(stream).replace(b'"value": 1.0', b'"value": NaN')),
        ("bad_value", key, _doc(stream).replace(b'"value": 1.0', b'"value": 1e309')),
        ("too_large", key, _doc(stream, padding="x" * 1_000_001)),
        ("bad_stream_id", b"", _doc("")),
        ("bad_stream_id", b"s" * 300, _doc("s" * 300)),
        ("bad_timestamp", key, _doc(stream, timestamp="yesterday")),
        ("bad_timestamp", key, _doc(stream, timestamp="1969-12-31T23:59:59Z")),
        ("key_mismatch", b"someone-else", _doc(stream)),
    ]


def contract_messages(
    readings: Sequence[Any], data_covariates: Sequence[str]
) -> tuple[list[tuple[bytes | None, bytes | None]], Counter]:
    """The valid readings in order, with hostile records interleaved, and the dead letters they must cause.

    Decoding failures early on (after the 26th reading), and for stream #1 a duplicate, an out-of-order
    and a far-future reading once it has 100 readings.
    """
    messages: list[tuple[bytes | None, bytes | None]] = []
    expected_dead: Counter = Counter()
    seen_1 = []
    for i, reading in enumerate(readings):
        messages.append(reading_message(reading, data_covariates))
        if i == 25:
            for reason, key, value in bad_messages("vic_demand#3"):
                messages.append((key, value))
                expected_dead[reason] += 1
        if reading.stream_id == "vic_demand#1":
            seen_1.append(reading)
            if len(seen_1) == 100:
                for reason, bad in (("duplicate", seen_1[-1]), ("out_of_order", seen_1[50])):
                    messages.append(reading_message(bad, data_covariates))
                    expected_dead[reason] += 1
                future = type(reading)(
                    reading.stream_id, reading.timestamp + 3 * 86_400, reading.value, reading.covariates
                )
                messages.append(reading_message(future, data_covariates))
                expected_dead["future_timestamp"] += 1
    return messages, expected_dead


def serve_contract(
    bootstrap: str,
    artifact: Path,
    tmp_path: Path,
    *,
    rows: int,
    streams: int,
    more_rows: int,
    extra: Sequence[str] = (),
    worker_metrics: bool = False,
) -> None:
    """The serve end-to-end contract (tests/test_serve_e2e.py), for any runner given by ``extra``.

    The job reads ``rows`` CSV rows cloned into ``streams`` streams with hostile records interleaved:
    the forecasts topic must hold exactly one forecast per reading after warm-up, equal to the offline
    engine; the dead-letter topic one record per bad record with its reason; /metrics must agree with
    the topics (with ``worker_metrics``, the sum over the SDK workers' own endpoints: a distributed
    runner). Then ``more_rows`` more are published (still consuming), every offset gets committed,
    and SIGTERM stops the job with exit status 0.
    """
    import math

    from models.artifact import load_artifact
    from models.timeutil import parse_timestamp
    from pipeline.metrics import worker_targets

    ROWS, STREAMS, MORE_ROWS = rows, streams, more_rows
    suffix = uuid.uuid4().hex[:8]
    readings_topic, forecasts_topic, dlq_topic, group = (
        f"readings-{suffix}",
        f"forecasts-{suffix}",
        f"dlq-{suffix}",
        f"g-{suffix}",
    )
    served = load_artifact(artifact)
    covariates = served.features.covariate_names
    readings, data_covariates = dataset_readings(ROWS, STREAMS)

    messages, expected_dead = contract_messages(readings, data_covariates)

    job = ServeProcess(
        serve_args(
            artifact,
            bootstrap,
            input_topic=readings_topic,
            output_topic=forecasts_topic,
            dlq_topic=dlq_topic,
            group=group,
            extra=["--topic-partitions", "4", *extra],
        ),
        tmp_path / "serve.log",
    )
    try:
        url = job.metrics_url()
        targets_dir = job.worker_targets_dir() if worker_metrics else None

        def scrape_job() -> dict:
            if targets_dir is None:
                return scrape(url)
            return scrape_sum(worker_targets(targets_dir))

        produce(bootstrap, readings_topic, messages)
        reference = offline_forecasts(artifact, readings, covariates, data_covariates)
        assert len(reference) == STREAMS * (ROWS - served.season)

        forecasts = forecast_docs(read_records(bootstrap, forecasts_topic, at_least=len(reference), timeout=120))
        dead = read_records(bootstrap, dlq_topic, at_least=sum(expected_dead.values()), timeout=30)
        result = compare(forecasts, reference)
        assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0, result
        assert result["max_diff"] <= 1e-6, result
        # The trained artifact has prediction intervals (train's default levels): every forecast carries them,
        # so max_diff above compared them too.
        assert served.intervals is not None and served.intervals.levels == (0.8, 0.95)
        assert all(set(doc["intervals"]) == {"0.8", "0.95"} for doc in forecasts)

        # Fields and timestamps of every forecast.
        for doc in forecasts:
            assert doc["_key"] == doc["stream_id"].encode()
            assert doc["model"] == served.cell and doc["model_version"] == served.version
            assert doc["timestamp"].endswith("Z")
            t = parse_timestamp(doc["timestamp"])
            assert len(doc["forecast"]) == len(doc["forecast_timestamps"]) == served.horizon
            assert [parse_timestamp(x) for x in doc["forecast_timestamps"]] == [
                t + served.step_seconds * k for k in range(1, served.horizon + 1)
            ]
            assert all(isinstance(x, float) and math.isfinite(x) for x in doc["forecast"])

        # One dead letter per bad record, with its reason and where it came from.
        letters = [json.loads(r.value) for r in dead]
        assert Counter(letter["reason"] for letter in letters) == expected_dead
        for letter in letters:
            assert set(letter) >= {"reason", "detail", "raw", "topic", "partition", "offset"}
            assert letter["topic"] == readings_topic and isinstance(letter["offset"], int)
        by_reason = {letter["reason"]: letter for letter in letters}
        assert by_reason["not_utf8"]["raw_base64"] is True
        assert by_reason["too_large"]["raw_truncated"] is True
        assert by_reason["duplicate"]["raw"].startswith('{"stream_id":"vic_demand#1"')

        # /metrics agrees with the topics.
        wait_for(lambda: metric(scrape_job(), "rnncast_forecasts_total") >= len(forecasts), 30, what="metrics")
        samples = scrape_job()
        assert metric(samples, "rnncast_readings_total") == len(readings)
        assert metric(samples, "rnncast_forecasts_total") == len(forecasts)
        for reason, count in expected_dead.items():
            assert metric(samples, "rnncast_dead_letters_total", reason=reason) == count, reason
        assert sum(v for (name, _), v in samples.items() if name == "rnncast_dead_letters_total") == len(letters)
        assert metric(samples, "rnncast_forecast_latency_seconds_count") == len(forecasts)
        assert metric(samples, "rnncast_active_streams") == STREAMS
        processes = 1 if targets_dir is None else len(worker_targets(targets_dir))
        assert metric(samples, "rnncast_model_info", model=served.cell, version=served.version) == processes
        assert metric(samples, "rnncast_skipped_replayed_total") == 0
        assert metric(samples, "rnncast_step_seconds_count") >= len(readings)
        ends = end_offsets(bootstrap, readings_topic)
        assert sum(ends.values()) == len(messages)
        for partition, end in ends.items():
            assert metric(samples, "rnncast_consumed_offset", partition=str(partition)) == end
            assert metric(samples, "rnncast_consumer_lag", partition=str(partition)) == 0

        # Still consuming: more readings, more forecasts, still exactly one each.
        more, _ = dataset_readings(MORE_ROWS, STREAMS, start_row=ROWS)
        produce(bootstrap, readings_topic, [reading_message(r, data_covariates) for r in more])
        reference = offline_forecasts(artifact, readings + more, covariates, data_covariates)
        forecasts = forecast_docs(
            read_records(bootstrap, forecasts_topic, at_least=len(reference), timeout=60, settle=1.0)
        )
        result = compare(forecasts, reference)
        assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0, result
        assert result["max_diff"] <= 1e-6, result

        # SIGTERM: drain, commit everything, exit 0.
        wait_for(
            lambda: committed(bootstrap, group, readings_topic, ends) == end_offsets(bootstrap, readings_topic),
            30,
            what="offsets committed",
        )
        assert job.stop() == 0, job.log[-3000:]
        assert "stopped after SIGTERM" in job.log
        assert job.log.count("serving ") == 1  # one startup line
    finally:
        if job.alive():
            job.kill()
