"""The broker fails: unreachable when the job starts, lost while it runs (``rnncast serve``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import serve_harness as h
from pipeline.broker import EmbeddedBroker, free_port


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


def _wait_for(condition, timeout: float, what: str, proc: h.ServeProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not proc.alive():
            raise AssertionError(f"serve exited with {proc.proc.returncode} while waiting for {what}:\n{proc.log[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g}s:\n{proc.log[-3000:]}")
        time.sleep(0.1)


def test_unreachable_at_start_exits_2_with_one_line_after_the_timeout(artifact: Path, tmp_path: Path) -> None:
    port = free_port()
    args = h.serve_args(artifact, f"127.0.0.1:{port}", input_topic="in", output_topic="out", dlq_topic="dlq",
                        group="g", extra=["--connect-timeout", "3"])
    job = h.ServeProcess(args, tmp_path / "serve.log")
    assert job.proc.wait(timeout=120) == 2
    job.kill()
    log = job.log
    assert "Traceback" not in log
    assert f"waiting for Kafka at 127.0.0.1:{port} (" in log and "(--connect-timeout)" in log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot reach Kafka at 127.0.0.1:{port} after 3s ({errors[0].split(' (', 1)[1]}"]
    assert "Connection refused" in errors[0]


def test_the_job_waits_for_a_broker_that_comes_later(artifact: Path, tmp_path: Path, unique_topic) -> None:
    port = free_port()
    suffix = unique_topic("late")
    args = h.serve_args(artifact, f"127.0.0.1:{port}", input_topic=f"in-{suffix}", output_topic=f"out-{suffix}",
                        dlq_topic=f"dlq-{suffix}", group=suffix, extra=["--connect-timeout", "300"])
    job = h.ServeProcess(args, tmp_path / "serve.log")
    try:
        _wait_for(lambda: "waiting for Kafka at" in job.log, 120, "waiting line", job)
        with EmbeddedBroker(port=port):
            job.wait_restored(timeout=180)  # it reached the broker, made its topics and started its pipeline
            assert f"Kafka at 127.0.0.1:{port} is reachable" in job.log
            assert job.stop() == 0
    finally:
        if job.alive():
            job.kill()
    assert "Traceback" not in job.log
