"""Every network, served unchanged by the streaming job: forecasts equal the offline engine's."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.serve_harness import (
    DATA,
    REPO,
    ServeProcess,
    _env,
    compare,
    dataset_readings,
    forecast_docs,
    offline_forecasts,
    produce,
    read_records,
    reading_message,
    serve_args,
)

CELLS = ["rnn", "gru", "seq2seq", "attention", "birnn"]  # lstm: tests/test_serve_e2e.py
ROWS, STREAMS = 150, 3


@pytest.fixture(scope="module")
def variant_artifacts(tmp_path_factory) -> dict[str, Path]:
    """Tiny artifacts (8 units, 1 epoch on 20 days): the numerics are what is tested, not accuracy."""
    lines = DATA.read_text().splitlines()
    data = tmp_path_factory.mktemp("data") / "elec_20d.csv"
    data.write_text("\n".join(lines[:961]) + "\n")
    out = {}
    for cell in CELLS:
        target = tmp_path_factory.mktemp("art") / cell
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "train",
                "--data",
                str(data),
                "--out",
                str(target),
                "--cell",
                cell,
                "--units",
                "8",
                "--epochs",
                "1",
                "--seed",
                "1",
            ],
            cwd=REPO,
            env=_env(),
            check=True,
            capture_output=True,
            timeout=300,
        )
        out[cell] = target
    return out


@pytest.mark.parametrize("cell", CELLS)
def test_job_serves_variant_exactly_like_the_offline_engine(cell, variant_artifacts, broker, tmp_path):
    artifact = variant_artifacts[cell]
    suffix = uuid.uuid4().hex[:8]
    topics = {"input_topic": f"var-in-{suffix}", "output_topic": f"var-out-{suffix}", "dlq_topic": f"var-dlq-{suffix}"}
    readings, covariates = dataset_readings(rows=ROWS, streams=STREAMS)
    job = ServeProcess(serve_args(artifact, broker.bootstrap, group=f"var-{suffix}", **topics), tmp_path / "serve.log")
    try:
        job.metrics_url()
        job.wait_restored()
        produce(broker.bootstrap, topics["input_topic"], [reading_message(r, covariates) for r in readings])
        expected = offline_forecasts(artifact, readings, covariates, covariates)
        assert len(expected) == STREAMS * (ROWS - 48)
        served = forecast_docs(
            read_records(broker.bootstrap, topics["output_topic"], at_least=len(expected), timeout=120)
        )
    finally:
        job.stop()
    result = compare(served, expected)
    assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0
    assert result["max_diff"] <= 1e-6, result["max_diff"]
    assert {doc["model"] for doc in served} == {cell}
