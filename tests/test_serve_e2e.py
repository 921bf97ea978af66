"""End to end: ``rnncast serve`` as a subprocess against the session's Tansu broker, no mocks.

Readings of ``data/elecdemand.csv`` cloned into 10 streams are published with hostile records
interleaved; the forecasts topic must hold exactly one forecast per reading after warm-up, equal to
the offline engine over the same readings, the dead-letter topic one record per bad record with its
reason, and /metrics must agree with the topics. Then more readings are published (the job is still
consuming), and SIGTERM stops it with exit status 0 and every offset committed.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from models.artifact import load_artifact

import serve_harness as h

STREAMS = 10
ROWS = 300  # 3,000 readings; forecasts from each stream's 49th reading on
MORE_ROWS = 20


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


def test_serve_end_to_end(broker, artifact: Path, tmp_path: Path) -> None:
    h.serve_contract(broker.bootstrap, artifact, tmp_path, rows=ROWS, streams=STREAMS, more_rows=MORE_ROWS)


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
            h.serve_args(
                artifact,
                bootstrap,
                input_topic=readings_topic,
                output_topic=output,
                dlq_topic=f"dlq-{suffix}",
                group=group,
                extra=extra,
            ),
            tmp_path / f"{name}.log",
        )

    first, second = job("a", f"g-{suffix}", f"out-{suffix}", "0,1"), job("b", f"g-{suffix}", f"out-{suffix}", "2-3")
    try:
        first.wait_restored()
        second.wait_restored()
        h.produce(bootstrap, readings_topic, [h.reading_message(r, data_covariates) for r in readings])
        forecasts = h.forecast_docs(
            h.read_records(bootstrap, f"out-{suffix}", at_least=len(reference), timeout=90, settle=1.0)
        )
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
        forecasts = h.forecast_docs(
            h.read_records(bootstrap, f"out-other-{suffix}", at_least=len(reference), timeout=90, settle=1.0)
        )
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
    flink = beam_options(
        [
            "--runner=FlinkRunner",
            "--flink_master=flink:8081",
            "--environment_type=EXTERNAL",
            "--environment_config=localhost:50000",
            "--parallelism=4",
        ]
    )
    assert flink.view_as(StandardOptions).runner == "FlinkRunner" and flink.view_as(StandardOptions).streaming
    assert flink.get_all_options()["flink_master"] == "flink:8081"
    dataflow = beam_options(
        ["--runner=DataflowRunner", "--project=p", "--region=europe-west1", "--temp_location=gs://b/t"]
    )
    assert dataflow.view_as(StandardOptions).streaming
    for refused in (
        ["--runner=DirectRunner"],
        ["--runner=BundleBasedDirectRunner"],
        ["--ouput-topic=x"],
        ["--direct_num_workers=2"],
        ["--direct_running_mode=multi_processing"],
    ):
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
        (["--bootstrap", "127.0.0.1:1", "--connect-timeout", "0"], "cannot reach Kafka"),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str], message: str, artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    try:
        status = main(["serve", "--artifact", str(artifact), *argv])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err, err


def test_a_partition_the_topic_lacks_is_a_user_error(
    broker, artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    suffix = uuid.uuid4().hex[:8]
    status = main(
        [
            "serve",
            "--artifact",
            str(artifact),
            "--bootstrap",
            broker.bootstrap,
            "--input-topic",
            f"in-{suffix}",
            "--output-topic",
            f"out-{suffix}",
            "--dlq-topic",
            f"dlq-{suffix}",
            "--partitions",
            "7",
            "--topic-partitions",
            "2",
        ]
    )
    assert status == 2
    assert "--partitions 7" in capsys.readouterr().err
