"""The embedded Tansu broker (the default of ``rnncast broker``, ``make run`` and ``rnncast demo``) keeps working.

The integration tests run against Apache Kafka; this smaller set runs the main paths against one
Tansu broker per session: replay publishes readings, and the job serves them end to end (forecasts
equal to the offline engine, no duplicate) and stops gracefully. The broker's own lifecycle on Tansu
is in tests/test_broker.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.cli import main

import serve_harness as h

STREAMS = 4
ROWS = 120


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


def test_replay_on_tansu(tansu_broker: EmbeddedBroker, tmp_path: Path, unique_topic, read_topic, capsys) -> None:
    lines = (h.DATA).read_text().splitlines()[:31]
    path = tmp_path / "slice.csv"
    path.write_text("\n".join(lines) + "\n")
    topic = unique_topic("replay")
    assert main(["replay", "--data", str(path), "--bootstrap", tansu_broker.bootstrap, "--topic", topic, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["published"] == 30
    records = read_topic(tansu_broker.bootstrap, topic, expected=30)
    assert len(records) == 30
    # One stream (vic_demand): one partition, in the CSV's order.
    assert [json.loads(r.value)["value"] for r in records] == [float(line.split(",")[2]) for line in lines[1:]]


def test_serve_end_to_end_on_tansu(tansu_broker: EmbeddedBroker, artifact: Path, tmp_path: Path) -> None:
    from models.artifact import load_artifact

    bootstrap = tansu_broker.bootstrap
    suffix = uuid.uuid4().hex[:8]
    readings_topic, forecasts_topic, group = f"readings-{suffix}", f"forecasts-{suffix}", f"g-{suffix}"
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(ROWS, STREAMS)
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    assert len(reference) == STREAMS * (ROWS - served.season)
    job = h.ServeProcess(
        h.serve_args(
            artifact,
            bootstrap,
            input_topic=readings_topic,
            output_topic=forecasts_topic,
            dlq_topic=f"dlq-{suffix}",
            group=group,
        ),
        tmp_path / "serve.log",
    )
    try:
        url = job.metrics_url(timeout=300)
        h.produce(bootstrap, readings_topic, [h.reading_message(r, data_covariates) for r in readings])
        forecasts = h.forecast_docs(h.read_records(bootstrap, forecasts_topic, at_least=len(reference), timeout=300))
        result = h.compare(forecasts, reference)
        assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0, result
        assert result["differing"] == 0 and result["max_diff"] <= 1e-9, result
        assert h.metric(h.scrape(url), "rnncast_readings_total") == len(readings)
        assert job.stop(timeout=300) == 0, job.log[-3000:]
        ends = h.end_offsets(bootstrap, readings_topic)
        committed = h.committed(bootstrap, group, readings_topic, ends)
        assert {p: offset or 0 for p, offset in committed.items()} == ends  # an empty partition has no commit
    finally:
        if job.alive():
            job.kill()
    assert "Traceback" not in job.log
