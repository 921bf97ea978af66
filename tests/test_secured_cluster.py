"""The job on a secured Apache Kafka: SASL_SSL, SCRAM-SHA-512, certificates made by the test, ACLs.

The job's principal ``job`` may read its input, write its outputs, read and write its changelog and use
its group: nothing else (tests/secured_kafka.py). It serves, restores after a stop, and ``rnncast report``
(principal ``reporter``, read-only) reports. A wrong password, a missing group ACL and a missing topic
ACL each end ``serve`` with exit 2 and one line saying so. The passwords appear in no log line, in no
``/metrics`` answer and not in the job's logged options.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from models.artifact import load_artifact
from pipeline.kafka_config import PASSWORD_ENV, KafkaSettings
from pipeline.state_store import ensure_changelog
from pipeline.topics import ensure_topics

import secured_kafka as sk
import serve_harness as h

JOB_PASSWORD = "job-Pa55-e8c1f0"
REPORTER_PASSWORD = "reporter-Pa55-77d2"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("secured")
    broker = sk.secured_broker(directory, {"job": JOB_PASSWORD, "reporter": REPORTER_PASSWORD})
    with broker:
        yield broker, directory


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


def _topics(broker) -> dict[str, str]:
    """A fresh set of the job's topics, created by the administrator (the job may not create topics)."""
    suffix = uuid.uuid4().hex[:8]
    topics = dict(
        input_topic=f"readings-{suffix}",
        output_topic=f"forecasts-{suffix}",
        dlq_topic=f"dlq-{suffix}",
        group=f"g-{suffix}",
    )
    admin = KafkaSettings(bootstrap=broker.bootstrap)
    ensure_topics(admin, {topics["input_topic"]: 4, topics["output_topic"]: 4, topics["dlq_topic"]: 4})
    ensure_changelog(admin, f"{topics['group']}.rnncast-state", 4)
    return topics


def _serve(
    broker,
    directory: Path,
    artifact: Path,
    topics: dict[str, str],
    log: Path,
    password: str,
    extra: tuple[str, ...] = (),
) -> h.ServeProcess:
    args = ["--artifact", str(artifact), *sk.cli_args(broker, directory, "job"), "--metrics-port", "0", *extra]
    for name, value in topics.items():
        args += [f"--{name.replace('_', '-')}", value]
    return h.ServeProcess(args, log, env={PASSWORD_ENV: password})


def _serve_once(
    broker, directory: Path, artifact: Path, topics: dict[str, str], password: str
) -> subprocess.CompletedProcess:
    args = ["--artifact", str(artifact), *sk.cli_args(broker, directory, "job"), "--metrics-port", "0"]
    for name, value in topics.items():
        args += [f"--{name.replace('_', '-')}", value]
    env = {**h._env(), PASSWORD_ENV: password}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve", *args],
        cwd=h.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_job_serves_restores_and_reports_with_only_its_acls(
    secured, artifact: Path, tmp_path: Path, record_property
) -> None:
    broker, directory = secured
    topics = _topics(broker)
    sk.grant(broker, "job", sk.job_grants(**topics))
    sk.grant(
        broker,
        "reporter",
        [("TOPIC", topics["input_topic"], "LITERAL", "READ"), ("TOPIC", topics["output_topic"], "LITERAL", "READ")],
    )
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(150, 6)
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    messages = [h.reading_message(r, data_covariates) for r in readings]
    half = len(messages) // 2
    logs, scrapes = [], []
    in_first_half = sum(1 for key in reference if key[1] <= readings[half - 1].timestamp)

    for run, part in enumerate((messages[:half], messages[half:])):
        job = _serve(broker, directory, artifact, topics, tmp_path / f"serve-{run}.log", JOB_PASSWORD)
        try:
            url = job.metrics_url(120)
            job.wait_restored(120)
            if run == 1:
                assert "restored 6 stream states" in job.log, job.log[-3000:]
            h.produce(broker.bootstrap, topics["input_topic"], part)  # the administrator publishes readings
            expected = in_first_half if run == 0 else len(reference) - in_first_half
            h.wait_for(
                lambda url=url, expected=expected: h.metric(h.scrape(url), "rnncast_forecasts_total") >= expected,
                120,
                what="forecasts",
            )
            scrapes.append(urlopen_text(url))
            assert job.stop() == 0, job.log[-3000:]
        finally:
            if job.alive():
                job.kill()
        logs.append(job.log)
    docs = h.forecast_docs(
        h.read_records(broker.bootstrap, topics["output_topic"], at_least=len(reference), timeout=60, settle=1.0)
    )
    result = h.compare(docs, reference)
    assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0, result
    assert result["differing"] == 0, result

    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "report",
            *sk.cli_args(broker, directory, "reporter"),
            "--readings-topic",
            topics["input_topic"],
            "--forecasts-topic",
            topics["output_topic"],
            "--json",
            "--out",
            str(tmp_path / "report.png"),
        ],
        cwd=h.REPO,
        env={**h._env(), PASSWORD_ENV: REPORTER_PASSWORD},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads(report.stdout)
    assert summary["forecasts"] == len(reference), summary
    record_property("secured.forecasts", len(docs))
    for text in (*logs, *scrapes, report.stdout, report.stderr):
        assert JOB_PASSWORD not in text and REPORTER_PASSWORD not in text
    assert "SASL_SSL" in logs[0]  # the logged options say how it connected, without the secret


def urlopen_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


def test_a_wrong_password_is_one_line_naming_the_authentication_failure(secured, artifact: Path) -> None:
    broker, directory = secured
    topics = _topics(broker)
    sk.grant(broker, "job", sk.job_grants(**topics))
    done = _serve_once(broker, directory, artifact, topics, "not-the-" + JOB_PASSWORD)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and "authentication failed as 'job' (SCRAM-SHA-512)" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and JOB_PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize("missing", ["group", "output topic"])
def test_a_missing_acl_is_one_line_naming_the_group_or_topic(secured, artifact: Path, missing: str) -> None:
    broker, directory = secured
    topics = _topics(broker)
    grants = sk.job_grants(**topics)
    if missing == "group":
        grants = [g for g in grants if g[0] != "GROUP"]
        needle = f"not authorized to use consumer group {topics['group']!r}"
    else:
        grants = [g for g in grants if g[1] != topics["output_topic"]]
        needle = f"not authorized for topic {topics['output_topic']!r}"
    sk.grant(broker, "job", grants)
    done = _serve_once(broker, directory, artifact, topics, JOB_PASSWORD)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and needle in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and JOB_PASSWORD not in done.stderr + done.stdout


def test_exactly_once_needs_only_its_transactional_ids_more(secured, artifact: Path, tmp_path: Path) -> None:
    broker, directory = secured
    topics = _topics(broker)
    sk.grant(broker, "job", sk.job_grants(**topics, exactly_once=True))
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(80, 4)
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    job = _serve(
        broker, directory, artifact, topics, tmp_path / "serve.log", JOB_PASSWORD, ("--guarantee", "exactly-once")
    )
    try:
        job.wait_restored(120)
        h.produce(broker.bootstrap, topics["input_topic"], [h.reading_message(r, data_covariates) for r in readings])
        docs = h.forecast_docs(
            h.read_records(
                broker.bootstrap,
                topics["output_topic"],
                at_least=len(reference),
                timeout=120,
                settle=1.0,
                read_committed=True,
            )
        )
        result = h.compare(docs, reference)
        assert result["missing"] == [] and result["duplicates"] == 0 and result["differing"] == 0, result
        assert job.stop() == 0, job.log[-3000:]
    finally:
        if job.alive():
            job.kill()
    assert JOB_PASSWORD not in job.log
