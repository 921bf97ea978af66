"""pipeline.replay / cli_replay (and the Kafka settings they use): CSV rows -> JSON readings."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import pytest

from models.data import load_csv
from models.reading import Reading
from pipeline.cli import UsageError, main
from pipeline.kafka_config import (
    PASSWORD_ENV,
    KafkaSettings,
    Secret,
    add_kafka_arguments,
    client_kwargs,
    librdkafka_config,
    settings_from_args,
)
from pipeline.replay import (
    EventTimePacer,
    ReplayError,
    TokenBucket,
    encode_reading,
    publish_readings,
    readings_from_dataset,
)

REPO = Path(__file__).resolve().parents[1]
ELECDEMAND = REPO / "data" / "elecdemand.csv"

# Two streams, one covariate, interleaved rows; "b" has a gap (no 01:30 reading).
SMALL_CSV = """timestamp,stream_id,value,temperature
2014-01-01T00:30:00Z,a,1.5,20.0
2014-01-01T00:30:00Z,b,10.5,21.0
2014-01-01T01:00:00Z,a,1.6,20.5
2014-01-01T01:00:00Z,b,10.6,21.5
2014-01-01T01:30:00Z,a,1.7,21.0
2014-01-01T02:00:00Z,a,1.8,21.5
2014-01-01T02:00:00Z,b,10.8,22.5
"""


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    path = tmp_path / "small.csv"
    path.write_text(SMALL_CSV)
    return path


def _replay(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["replay", *args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1])


def _decoded(records) -> list[tuple[str, dict]]:
    return [(r.key.decode(), json.loads(r.value)) for r in records]


# --- encoding and sources (no broker) ----------------------------------------------------


def test_encode_reading_wire_format() -> None:
    reading = Reading("vic", 1388536200.0, 3.21, (21.5, 1.0))
    doc = json.loads(encode_reading(reading, ("temperature", "workday")))
    assert doc == {
        "stream_id": "vic",
        "timestamp": "2014-01-01T00:30:00Z",
        "value": 3.21,
        "temperature": 21.5,
        "workday": 1.0,
    }
    assert list(doc) == ["stream_id", "timestamp", "value", "temperature", "workday"]


def test_encode_reading_writes_non_finite_as_null() -> None:
    doc = json.loads(encode_reading(Reading("s", 0.0, math.nan, (math.inf,)), ("c",)))
    assert doc["value"] is None and doc["c"] is None


def test_encode_reading_checks_covariate_count() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        encode_reading(Reading("s", 0.0, 1.0, (1.0,)), ("a", "b"))


def test_readings_from_dataset_keeps_global_order(small_csv: Path) -> None:
    readings = list(readings_from_dataset(load_csv(small_csv)))
    assert [(r.stream_id, r.value) for r in readings] == [
        ("a", 1.5),
        ("b", 10.5),
        ("a", 1.6),
        ("b", 10.6),
        ("a", 1.7),
        ("a", 1.8),
        ("b", 10.8),
    ]
    assert readings[0].covariates == (20.0,)
    assert [r.timestamp for r in readings] == sorted(r.timestamp for r in readings)


def test_readings_from_dataset_streams_multiply(small_csv: Path) -> None:
    readings = list(readings_from_dataset(load_csv(small_csv), streams_multiply=3))
    assert len(readings) == 21
    assert [r.stream_id for r in readings[:6]] == ["a#0", "a#1", "a#2", "b#0", "b#1", "b#2"]
    assert {r.stream_id for r in readings} == {f"{s}#{k}" for s in "ab" for k in range(3)}
    with pytest.raises(ValueError):
        list(readings_from_dataset(load_csv(small_csv), streams_multiply=0))


# --- pacing (fake clock) -----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_token_bucket_paces_without_sleeping_per_event() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10_000, clock=clock, sleep=clock.sleep)
    for _ in range(10_000):
        bucket.acquire()
    elapsed = clock.now - 100.0
    assert 0.97 <= elapsed <= 1.0  # 10k events at 10k/s, the last one is due at 0.9999 s
    assert 10 <= len(clock.sleeps) <= 100  # one sleep per ~20 ms of events, not per event


def test_token_bucket_does_not_burst_after_a_stall() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        bucket.acquire()
    clock.now += 5.0  # the broker stalled for 5 s
    bucket.acquire()
    start, slept = clock.now, len(clock.sleeps)
    for _ in range(100):
        bucket.acquire()
    assert clock.now - start >= 0.95  # back to 100/s, no 500-event catch-up burst
    assert len(clock.sleeps) > slept


def test_event_time_pacer_follows_event_time() -> None:
    clock = FakeClock()
    pacer = EventTimePacer(1800, clock=clock, sleep=clock.sleep)
    for step in range(5):  # half-hourly events at 1800x: one per second
        pacer.wait_for(1388536200.0 + 1800 * step)
    assert clock.now - 100.0 == pytest.approx(4.0)


@pytest.mark.parametrize("cls", [TokenBucket, EventTimePacer])
@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan])
def test_pacers_reject_bad_speeds(cls, bad: float) -> None:
    with pytest.raises(ValueError):
        cls(bad)


class _FailingFuture:
    def add_errback(self, callback) -> None:
        callback(RuntimeError("broker said no"))


class _FailingProducer:
    def __init__(self) -> None:
        self.flushed = False

    def send(self, topic, value, key):
        return _FailingFuture()

    def flush(self, timeout=None) -> None:
        self.flushed = True


def test_publish_readings_reports_undelivered_readings() -> None:
    producer = _FailingProducer()
    readings = [Reading("s", float(i), 1.0) for i in range(3)]
    with pytest.raises(ReplayError, match="3 of 3 readings were not delivered.*broker said no"):
        publish_readings(KafkaSettings("127.0.0.1:9"), "t", readings, producer=producer)
    assert producer.flushed


# --- against the broker ------------------------------------------------------------------


def test_replay_small_csv(small_csv: Path, broker, unique_topic, read_topic, capsys) -> None:
    topic = unique_topic("replay")
    summary = _replay(capsys, "--data", str(small_csv), "--bootstrap", broker.bootstrap, "--topic", topic)
    assert summary["published"] == 7
    assert set(summary) == {"published", "seconds", "rate"}
    records = read_topic(broker.bootstrap, topic, expected=7)
    assert len(records) == 7
    assert len({r.partition for r in records if r.key == b"a"}) == 1
    decoded = _decoded(records)
    for key, doc in decoded:
        assert key == doc["stream_id"]
        assert set(doc) == {"stream_id", "timestamp", "value", "temperature"}
    per_stream = {s: [d["timestamp"] for k, d in decoded if k == s] for s in "ab"}
    assert per_stream["a"] == [
        "2014-01-01T00:30:00Z",
        "2014-01-01T01:00:00Z",
        "2014-01-01T01:30:00Z",
        "2014-01-01T02:00:00Z",
    ]
    assert per_stream["b"] == ["2014-01-01T00:30:00Z", "2014-01-01T01:00:00Z", "2014-01-01T02:00:00Z"]
    first_b = next(d for k, d in decoded if k == "b")
    assert first_b == {"stream_id": "b", "timestamp": "2014-01-01T00:30:00Z", "value": 10.5, "temperature": 21.0}


def test_replay_creates_the_topic_with_the_requested_partitions(small_csv, kafka_settings, unique_topic, capsys):
    from pipeline.topics import partitions_for

    topic = unique_topic("parts")
    _replay(
        capsys, "--data", str(small_csv), "--bootstrap", kafka_settings.bootstrap, "--topic", topic, "--partitions", "3"
    )
    assert partitions_for(kafka_settings, topic) == [0, 1, 2]


def test_replay_streams_multiply_and_limit(small_csv, broker, unique_topic, read_topic, capsys) -> None:
    topic = unique_topic("multiply")
    summary = _replay(
        capsys,
        "--data",
        str(small_csv),
        "--bootstrap",
        broker.bootstrap,
        "--topic",
        topic,
        "--streams-multiply",
        "4",
        "--limit",
        "10",
    )
    assert summary["published"] == 10
    decoded = _decoded(read_topic(broker.bootstrap, topic, expected=10))
    assert len(decoded) == 10
    # The first 10 of 28: a#0..3, b#0..3 at 00:30, then a#0, a#1 at 01:00.
    assert sorted(k for k, _ in decoded) == sorted(
        [f"a#{k}" for k in range(4)] + [f"b#{k}" for k in range(4)] + ["a#0", "a#1"]
    )
    for key, doc in decoded:
        assert doc["stream_id"] == key


def test_replay_rate_is_roughly_obeyed(small_csv, tmp_path, broker, unique_topic, read_topic, capsys) -> None:
    rows = ["timestamp,stream_id,value"] + [f"{1388534400 + 1800 * i},s{i % 3},{i}" for i in range(60)]
    path = tmp_path / "sixty.csv"
    path.write_text("\n".join(rows) + "\n")
    topic = unique_topic("rate")
    started = time.monotonic()
    summary = _replay(capsys, "--data", str(path), "--bootstrap", broker.bootstrap, "--topic", topic, "--rate", "100")
    elapsed = time.monotonic() - started
    assert summary["published"] == 60
    assert elapsed >= 0.45  # 60 readings at 100/s: the last is due after 0.59 s
    assert summary["rate"] <= 150
    assert len(read_topic(broker.bootstrap, topic, expected=60)) == 60


def test_replay_speedup_paces_by_event_time(small_csv, broker, unique_topic, capsys) -> None:
    # 90 minutes of event time at 10800x: ~0.5 s.
    started = time.monotonic()
    _replay(
        capsys,
        "--data",
        str(small_csv),
        "--bootstrap",
        broker.bootstrap,
        "--topic",
        unique_topic("speedup"),
        "--speedup",
        "10800",
    )
    assert time.monotonic() - started >= 0.4


def test_publish_readings_directly(kafka_settings, unique_topic, read_topic) -> None:
    from pipeline.topics import ensure_topics

    topic = unique_topic("direct")
    ensure_topics(kafka_settings, {topic: 2})
    readings = (Reading(f"s{i % 5}", 1388534400.0 + 1800 * (i // 5), float(i), (float(-i),)) for i in range(500))
    progress: list[int] = []
    stats = publish_readings(kafka_settings, topic, readings, covariate_names=("neg",), progress=progress.append)
    assert stats.published == 500 and sum(progress) == 500
    assert stats.seconds > 0 and stats.rate > 0
    decoded = _decoded(read_topic(kafka_settings.bootstrap, topic, expected=500))
    assert len(decoded) == 500
    for stream in {k for k, _ in decoded}:
        values = [d["value"] for k, d in decoded if k == stream]
        assert values == sorted(values)
    assert all(d["neg"] == -d["value"] for _, d in decoded)


@pytest.mark.skipif(not ELECDEMAND.exists(), reason="data/elecdemand.csv is not in this checkout")
def test_replay_a_slice_of_elecdemand(tmp_path, broker, unique_topic, read_topic, capsys) -> None:
    lines = ELECDEMAND.read_text().splitlines()
    path = tmp_path / "elecdemand-slice.csv"
    path.write_text("\n".join(lines[: 1 + 500]) + "\n")
    dataset = load_csv(path)
    topic = unique_topic("elec")
    summary = _replay(capsys, "--data", str(path), "--bootstrap", broker.bootstrap, "--topic", topic)
    assert summary["published"] == dataset.num_rows == 500
    decoded = _decoded(read_topic(broker.bootstrap, topic, expected=500))
    assert len(decoded) == 500
    for key, doc in decoded:
        assert key in dataset.series
        assert set(doc) == {"stream_id", "timestamp", "value", *dataset.covariate_names}
    for stream in dataset.series:
        stamps = [d["timestamp"] for k, d in decoded if k == stream]
        assert stamps == sorted(stamps)


# --- user errors -------------------------------------------------------------------------


def test_replay_bad_csv_is_one_line_error(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,stream_id,value\n2014-01-01T00:30:00Z,a,not-a-number\n")
    assert main(["replay", "--data", str(bad), "--bootstrap", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {bad}:2: column 'value'")


def test_replay_unreachable_broker_is_one_line_error(small_csv, capsys) -> None:
    # Port 9 (discard) on loopback: nothing listens there.
    assert main(["replay", "--data", str(small_csv), "--bootstrap", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach Kafka at 127.0.0.1:9") and err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--rate", "0"],
        ["--speedup", "-1"],
        ["--rate", "5", "--speedup", "5"],
        ["--streams-multiply", "0"],
        ["--limit", "-1"],
        ["--partitions", "0"],
    ],
)
def test_replay_rejects_bad_options(small_csv, args, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay", "--data", str(small_csv), *args])
    assert info.value.code == 2


# --- Kafka settings: secrets stay secret -------------------------------------------------

PASSWORD = "hunter2-s3cr3t"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_kafka_arguments(parser)
    return parser.parse_args(argv)


def test_secret_never_shows() -> None:
    secret = Secret(PASSWORD)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % secret):  # noqa: UP031 - %-formatting must hide it too
        assert PASSWORD not in text
    assert secret.get_secret_value() == PASSWORD
    assert Secret(PASSWORD) == secret


def test_settings_repr_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings("broker-1:9093,broker-2:9093", "SASL_SSL", "SCRAM-SHA-512", "svc", PASSWORD)
    assert isinstance(settings.sasl_password, Secret)
    with caplog.at_level(logging.INFO):
        logging.getLogger("rnncast.test").info("settings %s %r %s", settings, settings, settings.redacted())
    for text in (repr(settings), str(settings), caplog.text, json.dumps(settings.redacted())):
        assert PASSWORD not in text
    assert "svc" in repr(settings)
    kwargs = client_kwargs(settings)
    assert kwargs["sasl_plain_password"] == PASSWORD  # the client still gets it
    assert kwargs["bootstrap_servers"] == ["broker-1:9093", "broker-2:9093"]
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"


def test_librdkafka_clients_get_the_same_connection_and_security(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    settings = KafkaSettings(
        "broker-1:9093,broker-2:9093",
        "SASL_SSL",
        "SCRAM-SHA-512",
        "svc",
        PASSWORD,
        ssl_cafile=str(ca),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    assert librdkafka_config(settings) == {
        "bootstrap.servers": "broker-1:9093,broker-2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
    }
    assert librdkafka_config(KafkaSettings("127.0.0.1:9092")) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
    }


def test_password_comes_from_env_or_file(tmp_path: Path) -> None:
    base = ["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN", "--sasl-username", "u"]
    from_env = settings_from_args(_parse(base), environ={PASSWORD_ENV: PASSWORD})
    assert from_env.sasl_password == Secret(PASSWORD)
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    from_file = settings_from_args(
        _parse([*base, "--sasl-password-file", str(secret_file)]), environ={PASSWORD_ENV: PASSWORD}
    )
    assert from_file.sasl_password == Secret("from-file")


@pytest.mark.parametrize("option", ["--sasl-password", "--sasl-password=", "--sasl-password-file"])
def test_a_password_on_the_command_line_is_never_echoed(
    option: str, small_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse expands the prefix --sasl-password to --sasl-password-file: the "file" then
    # does not exist, and the error must not repeat it.
    argv = [option + PASSWORD] if option.endswith("=") else [option, PASSWORD]
    sasl = ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN", "--sasl-username", "u"]
    assert main(["replay", "--data", str(small_csv), *sasl, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the file given to --sasl-password-file")
    assert PASSWORD not in err


def test_plaintext_ignores_an_exported_password() -> None:
    settings = settings_from_args(_parse(["--bootstrap", "127.0.0.1:9092"]), environ={PASSWORD_ENV: PASSWORD})
    assert settings.sasl_password is None
    assert client_kwargs(settings) == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--security-protocol", "SASL_SSL", "--sasl-username", "u"], "needs --sasl-mechanism"),
        (["--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN"], "needs --sasl-username"),
        (["--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN", "--sasl-username", "u"], PASSWORD_ENV),
        (["--sasl-username", "u"], "SASL options need"),
        (["--bootstrap", "nohost"], "not host:port"),
        (["--security-protocol", "SSL", "--ssl-cafile", "/nonexistent/ca.pem"], "no such file"),
    ],
)
def test_inconsistent_settings_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        settings_from_args(_parse(argv), environ={})
    assert PASSWORD not in str(info.value)


def test_settings_are_frozen() -> None:
    settings = KafkaSettings("127.0.0.1:9092")
    with pytest.raises(AttributeError):
        settings.bootstrap = "elsewhere:1"  # type: ignore[misc]


def test_every_kafka_client_of_the_pipeline_gets_the_security_settings() -> None:
    """Each client constructed in pipeline/ is given client_kwargs(...) or librdkafka_config(...) in its call
    (directly, or through a helper of its module that does)."""
    import re

    constructors = re.compile(r"\b(KafkaConsumer|KafkaProducer|KafkaAdminClient|Consumer|Producer)\(")
    calls = 0
    missing = []
    for path in sorted((Path(__file__).resolve().parent.parent / "pipeline").glob("*.py")):
        if path.name == "broker.py":  # the embedded broker's own loopback readiness check
            continue
        text = path.read_text()
        # A module's own config helpers count when their body renders the settings (one level deep).
        settings_calls = ["client_kwargs(", "librdkafka_config("]
        for helper in re.finditer(r"^def (\w+)\(.*?(?=^\S)", text, re.S | re.M):
            if any(name in helper.group(0) for name in settings_calls[:2]):
                settings_calls.append(f"{helper.group(1)}(")
        for match in constructors.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            if (
                text[text.rfind("\n", 0, match.start()) + 1 : match.start()]
                .lstrip()
                .startswith(("#", "def ", "class "))
            ):
                continue
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls += 1
            call = text[match.start() : end + 1]
            if not any(name in call for name in settings_calls):
                missing.append(f"{path.name}:{line}")
    assert calls >= 8 and not missing, (calls, missing)
