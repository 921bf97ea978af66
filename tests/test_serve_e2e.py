"""End to end: ``rnncast serve`` as a subprocess against the session's Tansu broker, no mocks.

Readings of ``data/elecdemand.csv`` cloned into 10 streams are published with hostile records
interleaved; the forecasts topic must hold exactly one forecast per reading after warm-up, equal to
the offline engine over the same readings, the dead-letter topic one record per bad record with its
reason, and /metrics must agree with the topics. Then more readings are published (the job is still
consuming), and SIGTERM stops it with exit status 0 and every offset committed.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from pathlib import Path

import pytest

from models.artifact import load_artifact
from models.timeutil import parse_timestamp
import serve_harness as h

STREAMS = 10
ROWS = 300  # 3,000 readings; forecasts from each stream's 49th reading on
MORE_ROWS = 20


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


def _doc(stream_id: str, timestamp: object = "2014-01-01T00:00:00Z", value: object = 1.0, **extra: object) -> bytes:
    body = {"stream_id": stream_id, "timestamp": timestamp, "value": value, "temperature": 20.0, "workday": 1.0}
    body.update(extra)
    return json.dumps(body).encode()


def _bad_messages(stream: str) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected reason, key, value) of every record that decoding must reject."""
    key = stream.encode()
    missing_covariate = json.dumps({"stream_id": stream, "timestamp": "2014-01-01T00:00:00Z", "value": 1.0, "workday": 1}).encode()
    return [
        ("not_utf8", key, b"\xff\xfe{\"stream_id\": 1}"),
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


def test_serve_end_to_end(broker, artifact: Path, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap
    suffix = uuid.uuid4().hex[:8]
    readings_topic, forecasts_topic, dlq_topic, group = f"readings-{suffix}", f"forecasts-{suffix}", f"dlq-{suffix}", f"g-{suffix}"
    served = load_artifact(artifact)
    covariates = served.features.covariate_names
    readings, data_covariates = h.dataset_readings(ROWS, STREAMS)

    # The valid readings in order, with hostile records interleaved: decoding failures early on, and
    # for stream #1 a duplicate, an out-of-order and a far-future reading once it has 100 readings.
    messages: list[tuple[bytes | None, bytes | None]] = []
    expected_dead = Counter()
    seen_1 = []
    for i, reading in enumerate(readings):
        messages.append(h.reading_message(reading, data_covariates))
        if i == 25:
            for reason, key, value in _bad_messages("vic_demand#3"):
                messages.append((key, value))
                expected_dead[reason] += 1
        if reading.stream_id == "vic_demand#1":
            seen_1.append(reading)
            if len(seen_1) == 100:
                for reason, bad in (("duplicate", seen_1[-1]), ("out_of_order", seen_1[50])):
                    messages.append(h.reading_message(bad, data_covariates))
                    expected_dead[reason] += 1
                future = type(reading)(reading.stream_id, reading.timestamp + 3 * 86_400, reading.value, reading.covariates)
                messages.append(h.reading_message(future, data_covariates))
                expected_dead["future_timestamp"] += 1

    job = h.ServeProcess(
        h.serve_args(artifact, bootstrap, input_topic=readings_topic, output_topic=forecasts_topic,
                     dlq_topic=dlq_topic, group=group, extra=["--topic-partitions", "4"]),
        tmp_path / "serve.log",
    )
    try:
        url = job.metrics_url()
        h.produce(bootstrap, readings_topic, messages)
        reference = h.offline_forecasts(artifact, readings, covariates, data_covariates)
        assert len(reference) == STREAMS * (ROWS - served.season)

        forecasts = h.forecast_docs(h.read_records(bootstrap, forecasts_topic, at_least=len(reference), timeout=120))
        dead = h.read_records(bootstrap, dlq_topic, at_least=sum(expected_dead.values()), timeout=30)
        result = h.compare(forecasts, reference)
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
        for letter, record in zip(letters, dead):
            assert set(letter) >= {"reason", "detail", "raw", "topic", "partition", "offset"}
            assert letter["topic"] == readings_topic and isinstance(letter["offset"], int)
        by_reason = {letter["reason"]: letter for letter in letters}
        assert by_reason["not_utf8"]["raw_base64"] is True
        assert by_reason["too_large"]["raw_truncated"] is True
        assert by_reason["duplicate"]["raw"].startswith('{"stream_id":"vic_demand#1"')

        # /metrics agrees with the topics.
        h.wait_for(lambda: h.metric(h.scrape(url), "rnncast_forecasts_total") >= len(forecasts), 30, what="metrics")
        samples = h.scrape(url)
        assert h.metric(samples, "rnncast_readings_total") == len(readings)
        assert h.metric(samples, "rnncast_forecasts_total") == len(forecasts)
        for reason, count in expected_dead.items():
            assert h.metric(samples, "rnncast_dead_letters_total", reason=reason) == count, reason
        assert sum(v for (name, _), v in samples.items() if name == "rnncast_dead_letters_total") == len(letters)
        assert h.metric(samples, "rnncast_forecast_latency_seconds_count") == len(forecasts)
        assert h.metric(samples, "rnncast_active_streams") == STREAMS
        assert h.metric(samples, "rnncast_model_info", model=served.cell, version=served.version) == 1
        assert h.metric(samples, "rnncast_skipped_replayed_total") == 0
        assert h.metric(samples, "rnncast_step_seconds_count") >= len(readings)
        ends = h.end_offsets(bootstrap, readings_topic)
        assert sum(ends.values()) == len(messages)
        for partition, end in ends.items():
            assert h.metric(samples, "rnncast_consumed_offset", partition=str(partition)) == end
            assert h.metric(samples, "rnncast_consumer_lag", partition=str(partition)) == 0

        # Still consuming: more readings, more forecasts, still exactly one each.
        more, _ = h.dataset_readings(MORE_ROWS, STREAMS, start_row=ROWS)
        h.produce(bootstrap, readings_topic, [h.reading_message(r, data_covariates) for r in more])
        reference = h.offline_forecasts(artifact, readings + more, covariates, data_covariates)
        forecasts = h.forecast_docs(h.read_records(bootstrap, forecasts_topic, at_least=len(reference), timeout=60, settle=1.0))
        result = h.compare(forecasts, reference)
        assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0, result
        assert result["max_diff"] <= 1e-6, result

        # SIGTERM: drain, commit everything, exit 0.
        h.wait_for(lambda: h.committed(bootstrap, group, readings_topic, ends) == h.end_offsets(bootstrap, readings_topic),
                   30, what="offsets committed")
        assert job.stop() == 0, job.log[-3000:]
        assert "stopped after SIGTERM" in job.log
        assert job.log.count("serving ") == 1  # one startup line
    finally:
        if job.alive():
            job.kill()


def test_two_instances_on_disjoint_partitions_and_groups_are_isolated(broker, artifact: Path, tmp_path: Path) -> None:
    """Two jobs of one group split the partitions; a job of another group shares nothing with them."""
    bootstrap = broker.bootstrap
    suffix = uuid.uuid4().hex[:8]
    readings_topic = f"readings-{suffix}"
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(120, STREAMS)
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)

    def job(name: str, group: str, output: str, partitions: str | None) -> h.ServeProcess:
        extra = ["--partitions", partitions] if partitions else []
        return h.ServeProcess(
            h.serve_args(artifact, bootstrap, input_topic=readings_topic, output_topic=output, dlq_topic=f"dlq-{suffix}",
                         group=group, extra=extra),
            tmp_path / f"{name}.log",
        )

    first, second = job("a", f"g-{suffix}", f"out-{suffix}", "0,1"), job("b", f"g-{suffix}", f"out-{suffix}", "2-3")
    try:
        first.wait_restored()
        second.wait_restored()
        h.produce(bootstrap, readings_topic, [h.reading_message(r, data_covariates) for r in readings])
        forecasts = h.forecast_docs(h.read_records(bootstrap, f"out-{suffix}", at_least=len(reference), timeout=90, settle=1.0))
        result = h.compare(forecasts, reference)
        assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0, result
        assert {r.partition for r in h.read_records(bootstrap, f"out-{suffix}")} <= {0, 1, 2, 3}
        assert first.stop() == 0 and second.stop() == 0
        ends = h.end_offsets(bootstrap, readings_topic)
        assert h.committed(bootstrap, f"g-{suffix}", readings_topic, ends) == ends
        assert "partitions 0,1 " in first.log and "partitions 2,3 " in second.log
    finally:
        for process in (first, second):
            if process.alive():
                process.kill()

    # Another group: no committed offsets and no state of the first group's -> it starts from the
    # beginning with empty state and produces the same forecasts again on its own output topic.
    other = job("c", f"other-{suffix}", f"out-other-{suffix}", None)
    try:
        forecasts = h.forecast_docs(h.read_records(bootstrap, f"out-other-{suffix}", at_least=len(reference), timeout=90, settle=1.0))
        result = h.compare(forecasts, reference)
        assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0, result
        assert "restored 0 stream states" in other.log
        assert "from offsets {0: 0, 1: 0, 2: 0, 3: 0}" in other.log
        assert other.stop() == 0
    finally:
        if other.alive():
            other.kill()


# --- the command line ------------------------------------------------------------------------------


def test_the_local_runner_is_pinned_and_beam_options_pass_through() -> None:
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from pipeline.options import beam_options

    local = beam_options([])
    assert local.view_as(StandardOptions).runner == "FnApiRunner"
    assert local.view_as(DirectOptions).direct_running_mode == "in_memory"
    flink = beam_options(["--runner=FlinkRunner", "--flink_master=flink:8081", "--environment_type=EXTERNAL",
                          "--environment_config=localhost:50000", "--parallelism=4"])
    assert flink.view_as(StandardOptions).runner == "FlinkRunner" and flink.view_as(StandardOptions).streaming
    assert flink.get_all_options()["flink_master"] == "flink:8081"
    dataflow = beam_options(["--runner=DataflowRunner", "--project=p", "--region=europe-west1", "--temp_location=gs://b/t"])
    assert dataflow.view_as(StandardOptions).streaming
    for refused in (["--runner=DirectRunner"], ["--runner=BundleBasedDirectRunner"], ["--ouput-topic=x"],
                    ["--direct_num_workers=2"], ["--direct_running_mode=multi_processing"]):
        with pytest.raises(ValueError):
            beam_options(refused)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runner=DirectRunner"], "--runner=DirectRunner is not supported"),
        (["--ouput-topic", "x"], "unrecognized arguments: --ouput-topic"),
        (["--output-topic", "readings"], "must differ"),
        (["--min-history", "3"], "min_history must be at least"),
        (["--partitions", "1,x"], "expected partition numbers"),
        (["--bootstrap", "127.0.0.1:1"], "cannot reach Kafka"),
    ],
)
def test_user_errors_are_one_line(argv: list[str], message: str, artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    try:
        status = main(["serve", "--artifact", str(artifact), *argv])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err, err


def test_a_partition_the_topic_lacks_is_a_user_error(broker, artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    suffix = uuid.uuid4().hex[:8]
    status = main(["serve", "--artifact", str(artifact), "--bootstrap", broker.bootstrap, "--input-topic", f"in-{suffix}",
                   "--output-topic", f"out-{suffix}", "--dlq-topic", f"dlq-{suffix}", "--partitions", "7", "--topic-partitions", "2"])
    assert status == 2
    assert "--partitions 7" in capsys.readouterr().err
