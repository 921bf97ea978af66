"""pipeline.report / cli_report: published forecasts read back from Kafka, joined with readings, scored.

The integration tests publish readings (through :func:`pipeline.replay.publish_readings`) and hand-made
forecast messages whose errors are known exactly, to the real broker from conftest.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest

from models.errors import UsageError
from models.reading import Reading
from models.timeutil import format_timestamp, parse_timestamp
from pipeline import cli_report
from pipeline.broker import free_port
from pipeline.kafka_config import KafkaSettings
from pipeline.replay import make_producer, publish_readings
from pipeline.report import (
    ForecastRecord,
    ReportAccumulator,
    ReportError,
    _OriginRuns,
    build_report,
    parse_forecast_record,
    parse_reading_record,
)
from pipeline.topics import TopicError, ensure_topics, partitions_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEP = 1800.0
H = 4
T0 = parse_timestamp("2014-01-01T00:00:00Z")


def _t(k: int) -> float:
    return T0 + k * STEP


def _forecast_doc(stream: str, k: int, values: list[float], version: str = "v1") -> dict:
    return {
        "stream_id": stream,
        "timestamp": format_timestamp(_t(k)),
        "forecast": [float(v) for v in values],
        "forecast_timestamps": [format_timestamp(_t(k + h)) for h in range(1, len(values) + 1)],
        "model": "lstm",
        "model_version": version,
        "readings_seen": k + 1,
    }


def _send(settings: KafkaSettings, topic: str, docs: list[tuple[str, bytes]], **overrides) -> None:
    producer = make_producer(settings, **overrides)
    try:
        for key, value in docs:
            producer.send(topic, key=key.encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rnncast report")
    cli_report.add_arguments(parser)
    return parser.parse_args(argv)


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert cli_report.run(_parse([*argv, "--json"])) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# --- the scenario: three streams, known errors -------------------------------------------------------------
#
# alpha: 300 readings, value k; a forecast at every origin 48..299, forecast = actual + 1 (model v1).
# beta: 200 readings, value 1000 - k, reading 150 missing; a forecast at every origin 48..199 but 150,
#       forecast = actual - 1 (v1 before origin 100, v2 from it).
# gamma: 40 readings, no forecasts (still warming up).
# Every error is exactly 1; persistence's error at horizon h is exactly h (both streams move 1 per step).
# Then 15 re-emitted forecasts (duplicates), 4 readings and 2 forecasts that do not parse, and one reading
# repeating alpha's last timestamp with another value (ignored, as the engine ignores it).

ALPHA_ORIGINS = range(48, 300)
BETA_ORIGINS = [k for k in range(48, 200) if k != 150]


def _publish_scenario(settings: KafkaSettings, readings_topic: str, forecasts_topic: str) -> None:
    ensure_topics(settings, {readings_topic: 3, forecasts_topic: 2})
    readings = []
    for k in range(300):
        readings.append(Reading("alpha", _t(k), float(k)))
        if k < 200 and k != 150:
            readings.append(Reading("beta", _t(k), float(1000 - k)))
        if k < 40:
            readings.append(Reading("gamma", _t(k), 5.0 + (k % 3)))
    assert publish_readings(settings, readings_topic, readings).published == 539
    bad_readings = [
        b"not json",
        json.dumps({"stream_id": "alpha", "timestamp": "yesterday", "value": 1.0}).encode(),
        json.dumps({"stream_id": "alpha", "timestamp": format_timestamp(_t(500)), "value": None}).encode(),
        json.dumps({"timestamp": format_timestamp(_t(500)), "value": 1.0}).encode(),
        json.dumps({"stream_id": "alpha", "timestamp": format_timestamp(_t(299)), "value": -7.0}).encode(),
    ]
    _send(settings, readings_topic, [("alpha", raw) for raw in bad_readings])

    def alpha(k: int) -> tuple[str, dict]:  # actual + 1
        return "alpha", _forecast_doc("alpha", k, [k + h + 1 for h in range(1, H + 1)])

    def beta(k: int) -> tuple[str, dict]:  # actual - 1
        values = [1000 - (k + h) - 1 for h in range(1, H + 1)]
        return "beta", _forecast_doc("beta", k, values, "v1" if k < 100 else "v2")

    forecasts = [alpha(k) for k in ALPHA_ORIGINS] + [beta(k) for k in BETA_ORIGINS]
    # A crash restart re-emits what was already published (same stream_id and timestamp).
    forecasts += [alpha(k) for k in range(100, 110)] + [beta(k) for k in range(60, 65)]
    raw = [(key, json.dumps(doc).encode()) for key, doc in forecasts]
    raw.append(("alpha", b"{}"))
    broken = _forecast_doc("beta", 300, [1.0, 2.0])
    broken["forecast_timestamps"] = broken["forecast_timestamps"][:1]
    raw.append(("beta", json.dumps(broken).encode()))
    _send(settings, forecasts_topic, raw)


def _expected() -> dict:
    alpha = [252 - h for h in range(1, H + 1)]  # origins 48..299-h
    beta = [150 - h for h in range(1, H + 1)]  # origins 48..199-h, minus origin 150 and target 150
    counts = [a + b for a, b in zip(alpha, beta)]
    persistence = [float(h) for h in range(1, H + 1)]
    return {
        "streams": 2,
        "forecasts": len(ALPHA_ORIGINS) + len(BETA_ORIGINS),
        "scored_points": sum(counts),
        "model_versions": ["v1", "v2"],
        "mae": [1.0] * H,
        "persistence_mae": persistence,
        "mae_ratio_vs_persistence": 1.0 / (sum(persistence) / H),
        "horizon": H,
        "scored_forecasts": 251 + 150,
        "duplicates": 15,
        "late_forecasts": 0,
        "reading_streams": 3,
        "readings": 539,
        "ignored_readings": 1,
        "unparsed": 6,
        "unparsed_readings": 4,
        "unparsed_forecasts": 2,
        "models": ["lstm"],
    }


@pytest.fixture
def scenario(kafka_settings: KafkaSettings, unique_topic) -> tuple[str, str]:
    readings_topic, forecasts_topic = unique_topic("readings"), unique_topic("forecasts")
    _publish_scenario(kafka_settings, readings_topic, forecasts_topic)
    return readings_topic, forecasts_topic


def test_report_json_numbers_are_exact(
    scenario: tuple[str, str], kafka_settings: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readings_topic, forecasts_topic = scenario
    out = tmp_path / "report.png"
    doc = _run_json(
        capsys,
        [
            "--bootstrap",
            kafka_settings.bootstrap,
            "--readings-topic",
            readings_topic,
            "--forecasts-topic",
            forecasts_topic,
            "--out",
            str(out),
        ],
    )
    expected = _expected()
    assert expected["scored_points"] == 1588 and expected["mae_ratio_vs_persistence"] == 0.4
    assert {k: doc[k] for k in expected} == expected
    assert doc["stream"] == "alpha"  # the stream with most forecasts
    assert doc["out"] == str(out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind


def test_report_human_output_and_plot_window(
    scenario: tuple[str, str], kafka_settings: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readings_topic, forecasts_topic = scenario
    out = tmp_path / "beta.png"
    argv = [
        "--bootstrap",
        kafka_settings.bootstrap,
        "--readings-topic",
        readings_topic,
        "--forecasts-topic",
        forecasts_topic,
        "--stream",
        "beta",
        "--last",
        "50",
        "--out",
        str(out),
    ]
    assert cli_report.run(_parse(argv)) == 0
    text = capsys.readouterr().out
    assert "2 streams with forecasts (3 with readings), 403 forecasts (15 duplicates), 1,588 scored points" in text
    assert "model_versions: v1, v2" in text
    assert "mae_ratio_vs_persistence 0.400: model beats persistence by 60.0%" in text
    assert f"wrote {out} (stream beta, last 50 readings)" in text
    assert out.read_bytes()[:8] == PNG_MAGIC

    # The same through the library call: the plot keeps beta's last 50 readings and their forecasts only.
    result = build_report(
        kafka_settings,
        readings_topic=readings_topic,
        forecasts_topic=forecasts_topic,
        stream="beta",
        last=50,
        out=None,
    )
    assert result.stream == "beta"
    assert result.plot_timestamps.size == 50
    assert result.plot_timestamps[-1] == _t(199) and result.plot_timestamps[0] == _t(149)  # 150 is missing
    origins = [fc.timestamp for fc in result.plot_forecasts]
    assert origins == [_t(k) for k in BETA_ORIGINS if k >= 149]  # each once, despite duplicates
    assert result.summary()["mae"] == [1.0] * H


def test_report_stays_bounded_on_a_longer_topic(kafka_settings: KafkaSettings, unique_topic, tmp_path: Path) -> None:
    """Readings are paced a little ahead of forecasts, so only a small window is ever held."""
    readings_topic, forecasts_topic = unique_topic("readings"), unique_topic("forecasts")
    ensure_topics(kafka_settings, {readings_topic: 3, forecasts_topic: 2})
    n, streams = 3000, ("s1", "s2", "s3")
    readings = [Reading(s, _t(k), float(k % 97) + i) for k in range(n) for i, s in enumerate(streams)]
    small_batches = make_producer(kafka_settings, batch_size=8 * 1024, linger_ms=0)
    try:  # the broker hands out whole record batches, so the batch size is the pacing granularity
        publish_readings(kafka_settings, readings_topic, readings, producer=small_batches)
    finally:
        small_batches.close(timeout=5)
    docs = []
    for k in range(10, n):
        for i, s in enumerate(streams):
            # error +2 at horizon 1 and -2 elsewhere: MAE exactly 2 at every horizon
            values = [float((k + h) % 97) + i + (2.0 if h == 1 else -2.0) for h in range(1, H + 1)]
            docs.append((s, json.dumps(_forecast_doc(s, k, values)).encode()))
    _send(kafka_settings, forecasts_topic, docs, batch_size=8 * 1024, linger_ms=0)

    result = build_report(
        kafka_settings,
        readings_topic=readings_topic,
        forecasts_topic=forecasts_topic,
        out=tmp_path / "r.png",
        fetch_bytes=8 * 1024,
    )
    assert result.forecasts == 3 * (n - 10)
    assert result.summary()["mae"] == [2.0] * H
    assert result.scored_points == sum(3 * (n - 10 - h) for h in range(1, H + 1))
    assert result.late_forecasts == 0
    total = 3 * n
    assert result.peak_buffered_readings < total // 10, result.peak_buffered_readings
    assert result.peak_pending_forecasts < 3 * (n - 10) // 10, result.peak_pending_forecasts


def test_report_errors_are_one_line(kafka_settings: KafkaSettings, unique_topic, tmp_path: Path) -> None:
    existing, missing = unique_topic("readings"), unique_topic("missing")
    ensure_topics(kafka_settings, {existing: 1})
    base = ["--bootstrap", kafka_settings.bootstrap, "--out", str(tmp_path / "r.png")]

    with pytest.raises(UsageError, match=rf"topic '{missing}' does not exist on Kafka at "):
        cli_report.run(_parse([*base, "--readings-topic", existing, "--forecasts-topic", missing]))
    with pytest.raises(TopicError):
        partitions_for(kafka_settings, missing)  # reading does not create it
    with pytest.raises(UsageError, match=rf"^topics '{missing}' and '{missing}x' do not exist on Kafka at "):
        cli_report.run(_parse([*base, "--readings-topic", missing, "--forecasts-topic", missing + "x"]))

    port = free_port()
    with pytest.raises(UsageError, match=rf"^cannot reach Kafka at 127\.0\.0\.1:{port} \(") as info:
        cli_report.run(_parse(["--bootstrap", f"127.0.0.1:{port}", "--out", str(tmp_path / "r.png")]))
    assert "\n" not in str(info.value)

    with pytest.raises(UsageError, match="folder .* does not exist"):
        cli_report.run(_parse([*base, "--out", str(tmp_path / "nope" / "r.png")]))
    with pytest.raises(UsageError, match="must differ"):
        cli_report.run(_parse([*base, "--readings-topic", existing, "--forecasts-topic", existing]))


def test_report_unknown_stream_and_empty_topics(
    kafka_settings: KafkaSettings, unique_topic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readings_topic, forecasts_topic = unique_topic("readings"), unique_topic("forecasts")
    ensure_topics(kafka_settings, {readings_topic: 2, forecasts_topic: 2})
    base = [
        "--bootstrap",
        kafka_settings.bootstrap,
        "--readings-topic",
        readings_topic,
        "--forecasts-topic",
        forecasts_topic,
        "--out",
        str(tmp_path / "r.png"),
    ]

    doc = _run_json(capsys, base)  # empty topics: zeros, no ratio, still a figure
    assert (doc["streams"], doc["forecasts"], doc["scored_points"], doc["mae"]) == (0, 0, 0, [])
    assert doc["mae_ratio_vs_persistence"] is None and doc["stream"] is None
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC

    publish_readings(kafka_settings, readings_topic, [Reading("only", _t(k), 1.0) for k in range(5)])
    with pytest.raises(ReportError, match=r"stream 'other' is in neither .* \(streams: only\)"):
        cli_report.run(_parse([*base, "--stream", "other"]))
    doc = _run_json(capsys, base)  # readings but no forecasts: the first reading's stream is plotted
    assert (doc["stream"], doc["readings"], doc["forecasts"], doc["reading_streams"]) == ("only", 5, 0, 1)


def test_help_documents_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["--help"])
    out = capsys.readouterr().out
    for option in (
        "--bootstrap",
        "--readings-topic",
        "--forecasts-topic",
        "--stream",
        "--last",
        "--out",
        "--json",
        "--max-lag",
        "RNNCAST_KAFKA_PASSWORD",
    ):
        assert option in out


# --- the accumulator and parsers without a broker -------------------------------------------------------


def _record(stream: str, k: int, values: list[float]) -> ForecastRecord:
    return parse_forecast_record(json.dumps(_forecast_doc(stream, k, values)).encode())


def test_forecasts_before_their_readings_score_the_same() -> None:
    """Arrival order changes when a forecast is scored, not the numbers."""

    def feed(forecasts_first: bool) -> dict:
        acc = ReportAccumulator("a", last=20)
        readings = [("a", _t(k), float(k)) for k in range(30)]
        forecasts = [_record("a", k, [k + h + 0.5 for h in range(1, H + 1)]) for k in range(5, 30)]
        if forecasts_first:
            for fc in forecasts:
                acc.add_forecast(fc)
            assert acc.stats.peak_pending_forecasts == len(forecasts)
            for r in readings:
                acc.add_reading(*r)
        else:
            for r in readings:
                acc.add_reading(*r)
            for fc in forecasts:
                acc.add_forecast(fc)
            assert acc.stats.peak_pending_forecasts == H  # only those reaching past the last reading
        acc.readings_done()
        return acc.result().summary()

    first, after = feed(True), feed(False)
    assert first == after
    assert first["mae"] == [0.5] * H and first["persistence_mae"] == [1.0, 2.0, 3.0, 4.0]
    assert first["scored_points"] == sum(30 - 5 - h for h in range(1, H + 1))


def test_reading_watermark_releases_forecasts_of_streams_without_readings() -> None:
    acc = ReportAccumulator("a", last=10, max_lag_spans=2)
    for k in range(100):
        acc.add_forecast(_record("ghost", k, [1.0] * H))  # e.g. its readings expired from the topic
    assert acc.pending_forecasts == 100
    acc.set_reading_watermark(_t(60))  # readings everywhere have passed t(60): keep 2 spans (8 steps)
    assert acc.pending_forecasts == 100 - (60 - 8 - H)
    acc.readings_done()
    result = acc.result()
    assert (result.forecasts, result.scored_points, acc.pending_forecasts) == (100, 0, 0)


def test_origin_runs_dedupe_exactly_in_any_order() -> None:
    rng = random.Random(7)
    step = 1800 * 1_000_000
    keys = [k * step for k in rng.sample(range(400), 250)] + [k * step + 17 for k in range(5)]  # a few off-grid
    runs, seen = _OriginRuns(step), set()
    for k in keys + rng.sample(keys, 100):
        assert runs.add(k) == (k not in seen)
        seen.add(k)
    assert all(not runs.add(k) for k in seen)
    assert len(runs.starts) < len(seen)  # runs, not one entry per origin


def test_parsers_accept_the_wire_formats_and_reject_the_rest() -> None:
    assert parse_reading_record(b'{"stream_id":"a","timestamp":1388534400,"value":2}') == ("a", T0, 2.0)
    assert parse_reading_record('{"stream_id":"a","timestamp":"2014-01-01T10:00:00+10:00","value":2.5}') == (
        "a",
        T0,
        2.5,
    )
    for bad in (
        b"[]",
        b'{"stream_id":"","timestamp":0,"value":1}',
        b'{"stream_id":"a","value":1}',
        b'{"stream_id":"a","timestamp":0,"value":true}',
        b'{"stream_id":"a","timestamp":0,"value":"1"}',
        b'{"stream_id":"a","timestamp":"2014-01-01T00:00:00","value":1}',
        None,
        b"\xff",
        b'{"stream_id":"a","timestamp":0,"value":NaN}',
        b'{"stream_id":"a","timestamp":0,"value":1' + b"0" * 400 + b"}",
        b'{"stream_id":"a","timestamp":1' + b"0" * 400 + b',"value":1}',
        b"[" * 100000,
    ):
        with pytest.raises(ValueError):
            parse_reading_record(bad)
    fc = _record("a", 3, [1.0, 2.0])
    assert fc.model_version == "v1" and fc.model == "lstm"
    np.testing.assert_array_equal(fc.targets, [_t(4), _t(5)])
    good = _forecast_doc("a", 3, [1.0, 2.0])
    for change in (
        {"forecast": []},
        {"forecast": [1.0, None]},
        {"forecast_timestamps": [format_timestamp(_t(4))]},
        {"forecast_timestamps": [format_timestamp(_t(5)), format_timestamp(_t(4))]},
        {"forecast_timestamps": [format_timestamp(_t(3)), format_timestamp(_t(4))]},
        {"timestamp": "soon"},
        {"forecast": [1.0, 10**400]},
        {"forecast": [1.0, True]},
    ):
        with pytest.raises(ValueError):
            parse_forecast_record(json.dumps({**good, **change}).encode())


def test_forecasts_with_intervals_are_scored_for_coverage_width_and_winkler() -> None:
    acc = ReportAccumulator("a", last=20)
    for k in range(30):
        acc.add_reading("a", _t(k), float(k))
    for k in range(5, 30):
        doc = _forecast_doc("a", k, [k + h + 0.5 for h in range(1, H + 1)])
        values = doc["forecast"]
        doc["intervals"] = {
            "0.8": {"lower": [v - 1.0 for v in values], "upper": [v + 1.0 for v in values]},  # holds the actual
            "0.95": {"lower": [v - 0.25 for v in values], "upper": [v + 0.25 for v in values]},  # 0.25 above it
        }
        acc.add_forecast(parse_forecast_record(json.dumps(doc).encode()))
    acc.readings_done()
    result = acc.result()
    summary = result.summary()
    assert summary["interval_coverage"] == {"0.8": 1.0, "0.95": 0.0}
    assert summary["intervals"]["0.8"]["width"] == [2.0] * H and summary["intervals"]["0.8"]["winkler"] == [2.0] * H
    assert summary["intervals"]["0.95"]["winkler"] == pytest.approx([0.5 + (2 / 0.05) * 0.25] * H)
    assert summary["intervals"]["0.95"]["points"] == [30 - 5 - h for h in range(1, H + 1)]
    from pipeline.report import format_summary

    text = format_summary(result)
    assert "interval coverage (mean over horizons): 0.8: 1.000, 0.95: 0.000" in text


def test_malformed_intervals_make_the_forecast_unparsed() -> None:
    doc = _forecast_doc("a", 5, [1.0] * H)
    for bad, message in (
        ([], "must be an object"),
        ({"x": {}}, "not a number"),
        ({"0.8": {"lower": [1.0] * H}}, "upper must be"),
        ({"0.8": {"lower": [1.0], "upper": [1.0] * H}}, "lower must be"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_forecast_record(json.dumps({**doc, "intervals": bad}).encode())
    assert parse_forecast_record(json.dumps(doc).encode()).intervals is None


def test_report_reads_interval_coverage_from_the_topics(
    kafka_settings: KafkaSettings, unique_topic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Forecasts with intervals on a real broker: ``rnncast report --json`` gives their coverage and scores."""
    readings_topic, forecasts_topic = unique_topic("readings"), unique_topic("forecasts")
    ensure_topics(kafka_settings, {readings_topic: 2, forecasts_topic: 2})
    assert (
        publish_readings(kafka_settings, readings_topic, [Reading("a", _t(k), float(k)) for k in range(60)]).published
        == 60
    )
    docs = []
    for k in range(10, 60):
        doc = _forecast_doc("a", k, [k + h + 0.5 for h in range(1, H + 1)])  # 0.5 above the actual
        # The 0.8 interval holds the actual at even origins only; the 0.95 one always.
        half = 1.0 if k % 2 == 0 else 0.25
        doc["intervals"] = {
            "0.8": {"lower": [v - half for v in doc["forecast"]], "upper": [v + half for v in doc["forecast"]]},
            "0.95": {"lower": [v - 2.0 for v in doc["forecast"]], "upper": [v + 2.0 for v in doc["forecast"]]},
        }
        docs.append(("a", json.dumps(doc).encode()))
    _send(kafka_settings, forecasts_topic, docs)
    doc = _run_json(
        capsys,
        [
            "--bootstrap",
            kafka_settings.bootstrap,
            "--readings-topic",
            readings_topic,
            "--forecasts-topic",
            forecasts_topic,
            "--out",
            str(tmp_path / "r.png"),
        ],
    )
    # Origins 10..59-h are scored at step h: 50 - h of them, even ones first (10, 12, ...).
    expected_08 = [sum(1 for k in range(10, 60 - h) if k % 2 == 0) / (50 - h) for h in range(1, H + 1)]
    assert doc["intervals"]["0.8"]["coverage"] == pytest.approx(expected_08)
    assert doc["interval_coverage"] == pytest.approx({"0.8": sum(expected_08) / H, "0.95": 1.0})
    assert doc["intervals"]["0.95"]["width"] == pytest.approx([4.0] * H)
    assert doc["intervals"]["0.95"]["winkler"] == pytest.approx([4.0] * H)
    assert doc["intervals"]["0.8"]["points"] == [50 - h for h in range(1, H + 1)]
