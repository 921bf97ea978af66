"""pipeline.kafka_broker and ``rnncast broker --engine kafka``: a single-node Apache Kafka."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import kafka_broker
from pipeline.broker import BrokerError
from pipeline.kafka_broker import KafkaBroker, find_kafka_lib, kafka_version
from pipeline.kafka_config import KafkaSettings, client_kwargs
from pipeline.topics import partitions_for
from tests.conftest import read_topic
from tests.test_broker import _CLI, _children, _gone, _listening_addresses

_ROOT = Path(__file__).resolve().parents[1]


def test_the_pinned_version_is_the_fetched_one() -> None:
    assert kafka_version() == "4.1.1"
    lib = find_kafka_lib()
    assert (lib / "kafka_2.13-4.1.1.jar").is_file()
    assert (lib / "log4j-core-2.24.3.jar").is_file()  # not in Kafka's POM: added by ours


def test_missing_jars_say_to_run_make_kafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNCAST_KAFKA_LIB", str(tmp_path))
    with pytest.raises(BrokerError, match=r"jars are not in .*: run `make kafka`$"):
        find_kafka_lib()
    with pytest.raises(BrokerError, match="run `make kafka`"):
        KafkaBroker().start()
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_jars_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "RNNCAST_KAFKA_LIB": str(tmp_path)}
    done = subprocess.run(
        [*_CLI, "broker", "--engine", "kafka", "--port", "0"], capture_output=True, text=True, env=env, cwd=_ROOT
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: the Apache Kafka") and done.stderr.count("\n") == 1
    assert "make kafka" in done.stderr and done.stdout == ""


def test_cli_data_dir_needs_the_kafka_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["broker", "--data-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--data-dir needs --engine kafka" in err and err.count("\n") == 1


def test_server_properties_from_the_arguments(tmp_path: Path) -> None:
    broker = KafkaBroker(
        port=19092,
        data_dir=tmp_path,
        extra_listeners={"SASL_SSL": "SASL_SSL"},
        extra_properties={"log.cleaner.backoff.ms": "200", "num.partitions": "3"},
    )
    broker._ports = {"PLAINTEXT": 19092, "CONTROLLER": 19093, "SASL_SSL": 19094}
    lines = broker._server_properties().splitlines()
    props = dict(line.split("=", 1) for line in lines)
    assert props["listeners"] == ("PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,SASL_SSL://127.0.0.1:19094")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092,SASL_SSL://127.0.0.1:19094"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert props["log.cleaner.backoff.ms"] == "200"
    assert props["num.partitions"] == "3"  # extra properties override the defaults
    assert props["log.dirs"] == str(tmp_path.resolve() / "log")
    with pytest.raises(ValueError, match="listener name"):
        KafkaBroker(extra_listeners={"CONTROLLER": "PLAINTEXT"})


@pytest.mark.integration
def test_cli_kafka_runs_until_sigterm_and_its_log_survives_a_restart(tmp_path: Path, unique_topic) -> None:
    from kafka import KafkaProducer

    data_dir = tmp_path / "kafka"
    topic = unique_topic("kept")
    proc = subprocess.Popen(
        [
            *_CLI,
            "broker",
            "--engine",
            "kafka",
            "--port",
            "0",
            "--quiet",
            "--data-dir",
            str(data_dir),
            "--topic",
            f"{topic}:2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=_ROOT,
    )
    try:
        bootstrap = proc.stdout.readline().strip()
        assert bootstrap.startswith("127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else bootstrap
        java = _children(proc.pid)
        assert len(java) == 1
        assert _listening_addresses(int(bootstrap.rsplit(":", 1)[1])) == {"0100007F"}
        settings = KafkaSettings(bootstrap=bootstrap)
        assert partitions_for(settings, topic) == [0, 1]
        producer = KafkaProducer(acks="all", **client_kwargs(settings))
        try:
            for i in range(50):
                producer.send(topic, key=f"k{i % 5}".encode(), value=str(i).encode())
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _gone(java[0])
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and f"Apache Kafka broker ready at {bootstrap} (log in {data_dir})" in stderr

    # The same data directory again, through the class, with one more listener: same
    # address (the port is kept in the data dir), same records.
    with KafkaBroker(data_dir=data_dir, extra_listeners={"SECOND": "PLAINTEXT"}) as again:
        assert again.bootstrap == bootstrap
        second = again.bootstrap_for("SECOND")
        assert second != bootstrap
        records = read_topic(second, topic, timeout=60)
        assert sorted(int(r.value) for r in records) == list(range(50))
    assert data_dir.is_dir() and (data_dir / "log" / "meta.properties").is_file()


@pytest.mark.integration
def test_kill_then_restart_keeps_acknowledged_records(tmp_path: Path, unique_topic) -> None:
    from kafka import KafkaProducer

    from pipeline.topics import ensure_topics

    topic = unique_topic("crash")
    with KafkaBroker(data_dir=tmp_path) as broker:
        settings = KafkaSettings(bootstrap=broker.bootstrap)
        ensure_topics(settings, {topic: 1})
        producer = KafkaProducer(acks="all", **client_kwargs(settings))
        try:
            for i in range(20):
                producer.send(topic, value=str(i).encode()).get(timeout=60)
        finally:
            producer.close(timeout=5)
        pid, bootstrap = broker.pid, broker.bootstrap
        assert broker.kill() == -signal.SIGKILL
        assert _gone(pid)
        broker.start()
        assert broker.bootstrap == bootstrap  # the port of the data dir's first run
        assert read_topic(broker.bootstrap, topic, timeout=60)[-1].value == b"19"
        assert len(read_topic(broker.bootstrap, topic, timeout=60)) == 20
    assert tmp_path.is_dir()  # a given data dir is never removed


def test_temporary_data_dir_is_removed_after_a_failed_format(tmp_path: Path, monkeypatch) -> None:
    fake_java = tmp_path / "bin" / "java"
    fake_java.parent.mkdir()
    fake_java.write_text("#!/bin/sh\necho 'format refused' >&2\nexit 3\n")
    fake_java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    made = []
    real_mkdtemp = kafka_broker.tempfile.mkdtemp
    monkeypatch.setattr(kafka_broker.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    with pytest.raises(BrokerError, match=r"format of .* exited with 3\nformat refused"):
        KafkaBroker().start()
    assert made and not Path(made[0]).exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_cluster_ids_never_look_like_options() -> None:
    ids = {kafka_broker._cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
