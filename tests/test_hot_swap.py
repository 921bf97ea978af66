"""Hot swap in the real job: ``serve --artifact current`` while ``current`` is repointed.

Three trained artifacts: A (the session's), B (same architecture, another seed: compatible), C (other
units: incompatible), and D, a copy of B with one byte of its model changed. The job starts on
``current -> A``; 4 streams are published phase by phase, ``current`` repointed between phases:

=========  ===========  ==================================================================
rows       current      expected
=========  ===========  ==================================================================
0..99      A            warm-up, then forecasts by A
100..149   B            forecasts by B continuing A's states (no reset, readings_seen goes on)
150..249   C            every stream restarts its warm-up (reset model_swap), then C's forecasts
250..269   D (tampered) refused once; C keeps serving
=========  ===========  ==================================================================

Every forecast must equal the offline engines run the same way and carry the version that produced
it. Then the job is stopped and restarted on A: the restored states are C's, so each stream restarts
its warm-up (the changelog keeps the model's key with the state).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from models.artifact import load_artifact
from models.reading import Reading
from models.timeutil import parse_timestamp

import serve_harness as h

STREAMS = 4
PHASES = ((0, 100, "a"), (100, 150, "b"), (150, 250, "c"), (250, 270, "d"))


def _point(link: Path, target: Path) -> None:
    """Repoints ``link`` atomically, as an operator would (``ln -s new current.tmp && mv -T current.tmp current``)."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """a, b (compatible with a), c (incompatible), d (b, tampered), under one versions directory."""
    root = tmp_path_factory.mktemp("swap")
    small = root / "small.csv"  # the first 2,000 rows: quicker to train on
    with open(h.DATA) as src:
        small.write_text("".join(line for _, line in zip(range(2001), src)))
    jobs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "train",
                "--data",
                str(small),
                "--out",
                str(root / name),
                "--epochs",
                "1",
                "--season",
                "48",
                *args,
            ],
            cwd=h.REPO,
            env=h._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, args in (("b", ["--units", "32", "--seed", "1"]), ("c", ["--units", "16"]))
    }
    base = h.trained_artifact()  # lstm, 32 units, seed 0 (trains meanwhile if this session has not yet)
    for proc in jobs.values():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode(errors="replace")
    shutil.copytree(base, root / "a")
    shutil.copytree(root / "b", root / "d")
    model = bytearray((root / "d" / "model.keras").read_bytes())
    model[len(model) // 2] ^= 0xFF
    (root / "d" / "model.keras").write_bytes(bytes(model))
    return {name: root / name for name in "abcd"}


def _offline(
    versions: dict[str, Path], readings: list[Reading], columns: list[int]
) -> dict[tuple[str, float], tuple[str, list[float], int]]:
    """(stream, timestamp) -> (version, forecast, readings_seen), serving each phase's model as the job must."""
    engines = {name: load_artifact(path).engine() for name, path in versions.items() if name != "d"}
    version = {name: load_artifact(path).version for name, path in versions.items() if name != "d"}
    states: dict[str, object] = {}
    out = {}
    rows = {}
    for r in readings:
        row = rows[r.stream_id] = rows.get(r.stream_id, -1) + 1
        name = next(name for first, end, name in PHASES if first <= row < end)
        name = "c" if name == "d" else name  # refused: c keeps serving
        if row == 150:
            states.pop(r.stream_id, None)  # c cannot continue a's/b's states
        result = engines[name].step(
            states.get(r.stream_id), Reading(r.stream_id, r.timestamp, r.value, tuple(r.covariates[c] for c in columns))
        )
        states[r.stream_id] = result.state
        if result.forecast is not None:
            out[(r.stream_id, r.timestamp)] = (
                version[name],
                result.forecast.values.tolist(),
                result.forecast.readings_seen,
            )
    return out


def test_models_are_swapped_without_a_restart_and_a_tampered_one_is_refused(
    broker, versions: dict[str, Path], tmp_path: Path, record_property
) -> None:
    a, b, c = (load_artifact(versions[name]) for name in "abc")
    assert (a.cell, a.manifest["units"]) == (b.cell, b.manifest["units"]) and c.manifest["units"] != a.manifest["units"]
    readings, data_covariates = h.dataset_readings(280, STREAMS)
    columns = [data_covariates.index(name) for name in a.features.covariate_names]
    expected = _offline(versions, readings[: 270 * STREAMS], columns)
    link = tmp_path / "current"
    _point(link, versions["a"])
    suffix = uuid.uuid4().hex[:8]
    topics = dict(
        input_topic=f"readings-{suffix}",
        output_topic=f"forecasts-{suffix}",
        dlq_topic=f"dlq-{suffix}",
        group=f"g-{suffix}",
    )
    args = h.serve_args(
        link, broker.bootstrap, **topics, extra=["--topic-partitions", "1", "--artifact-poll-seconds", "0.2"]
    )

    def publish(first: int, end: int) -> None:
        h.produce(
            broker.bootstrap,
            topics["input_topic"],
            [h.reading_message(r, data_covariates) for r in readings[first * STREAMS : end * STREAMS]],
        )

    def serving(url: str, artifact) -> bool:
        return h.metric(h.scrape(url), "rnncast_model_info", model=artifact.cell, version=artifact.version) == 1

    job = h.ServeProcess(args, tmp_path / "serve.log")
    try:
        url = job.metrics_url()
        assert serving(url, a)
        published = 0
        for (first, end, name), target in zip(PHASES, (a, b, c, None)):
            _point(link, versions[name])
            if target is not None:
                h.wait_for(lambda target=target: serving(url, target), 20, what=f"serving {name}")
            else:  # d: refused
                h.wait_for(
                    lambda: h.metric(h.scrape(url), "rnncast_model_swaps_total", result="refused") == 1,
                    20,
                    what=f"the refusal of {name}",
                )
            publish(first, end)
            published += (end - first) * STREAMS
            due = sum(1 for (sid, t) in expected if t <= readings[end * STREAMS - 1].timestamp)
            h.wait_for(
                lambda due=due: h.metric(h.scrape(url), "rnncast_forecasts_total") >= due, 30, what=f"{due} forecasts"
            )
        samples = h.scrape(url)
        assert h.metric(samples, "rnncast_readings_total") == published
        assert h.metric(samples, "rnncast_model_swaps_total", result="loaded") == 2
        assert h.metric(samples, "rnncast_model_swaps_total", result="refused") == 1
        assert h.metric(samples, "rnncast_stream_resets_total", reason="model_swap") == STREAMS
        assert h.metric(samples, "rnncast_stream_resets_total", reason="gap") == 0
        assert serving(url, c) and sum(1 for (name, _) in samples if name == "rnncast_model_info") == 1
        assert job.log.count("refusing the model artifact") == 1
        assert "does not match the manifest" in job.log

        docs = h.forecast_docs(
            h.read_records(broker.bootstrap, topics["output_topic"], at_least=len(expected), timeout=30)
        )
        assert len(docs) == len(expected)
        worst = 0.0
        by_version: dict[str, int] = {}
        for doc in docs:
            version, values, seen = expected[(doc["stream_id"], parse_timestamp(doc["timestamp"]))]
            assert (doc["model_version"], doc["readings_seen"]) == (version, seen), doc
            worst = max(worst, max(abs(x - y) for x, y in zip(doc["forecast"], values)))
            by_version[version] = by_version.get(version, 0) + 1
        assert worst <= 1e-9
        assert by_version == {a.version: 52 * STREAMS, b.version: 50 * STREAMS, c.version: 72 * STREAMS}
        record_property("forecasts_by_version", by_version)
        assert job.stop() == 0
    finally:
        if job.alive():
            job.kill()

    # Restarted on a: the changelog holds c's states, which a cannot continue.
    _point(link, versions["a"])
    again = h.ServeProcess(args, tmp_path / "again.log")
    try:
        url = again.metrics_url()
        publish(270, 280)
        h.wait_for(lambda: h.metric(h.scrape(url), "rnncast_readings_total") == 10 * STREAMS, 30, what="the readings")
        samples = h.scrape(url)
        assert h.metric(samples, "rnncast_restored_streams_total") == STREAMS
        assert h.metric(samples, "rnncast_stream_resets_total", reason="model_swap") == STREAMS
        assert h.metric(samples, "rnncast_forecasts_total") == 0  # warming up again
        assert again.stop() == 0
    finally:
        if again.alive():
            again.kill()
