"""The stateful step in Beam, without Kafka: TestStream + TestPipeline (BundleBasedDirectRunner) + assert_that.

Every case compares against the offline engine (``Engine.step`` over the same readings): state carried
per key, dead letters that leave the state alone, restore from a changelog snapshot with the skip rule,
expiry by --state-ttl and by sweep requests, and --max-future.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to
from prometheus_client import CollectorRegistry

import serve_harness as h
from models.artifact import load_artifact
from models.reading import Reading
from models.state import decode_state, encode_state
from pipeline.coders import InboundCoder, OffsetLedgerCoder, StreamStateCoder
from pipeline.forecast_dofn import DecodeRecords, ForecastDoFn, ServedModel
from pipeline.messages import Inbound, KafkaRecord, SweepRequest, encode_forecast, rejected_key
from pipeline.metrics import JobMetrics
from pipeline.state_store import StaticRestore, is_marker

_REGISTRIES: dict[str, JobMetrics] = {}


class PrivateMetrics:
    """A metrics factory on a private registry per test (picklable by reference)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> JobMetrics:
        if self.name not in _REGISTRIES:
            _REGISTRIES[self.name] = JobMetrics(CollectorRegistry())
        return _REGISTRIES[self.name]


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


@pytest.fixture(scope="module")
def streams(artifact: Path) -> dict[str, list[Reading]]:
    """Two streams of 80 readings each, with the model's covariates."""
    readings, data_covariates = h.dataset_readings(80, 2)
    model_covariates = load_artifact(artifact).features.covariate_names
    columns = [data_covariates.index(c) for c in model_covariates]
    out: dict[str, list[Reading]] = {}
    for r in readings:
        out.setdefault(r.stream_id, []).append(Reading(r.stream_id, r.timestamp, r.value, tuple(r.covariates[c] for c in columns)))
    return out


def _inbound(reading: Reading, offset: int, partition: int = 0) -> tuple[str, Inbound]:
    raw = json.dumps({"stream_id": reading.stream_id, "timestamp": reading.timestamp, "value": reading.value}).encode()
    return reading.stream_id, Inbound(partition, offset, offset, 1_700_000_000_000, reading=reading, raw=raw, key=reading.stream_id.encode())


def _run(elements: list[tuple[str, Inbound]], expected: list[tuple], dofn: ForecastDoFn) -> None:
    """Feeds the elements one bundle each (in order) and asserts the outcomes' summaries."""
    stream = BeamTestStream()
    for element in elements:
        stream = stream.add_elements([element])
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])
    with BeamTestPipeline(options=options) as pipeline:
        outcomes = (
            pipeline
            | stream
            | beam.Map(lambda kv: kv).with_output_types(beam.typehints.Tuple[str, Any])
            | beam.ParDo(dofn)
        )
        assert_that(outcomes | beam.Map(_summary), equal_to(expected))


def _digest(forecast: bytes | None) -> str | None:
    """The forecast's bytes, as a short digest (equal bytes, equal digest; failures stay readable)."""
    return None if forecast is None else hashlib.sha256(forecast).hexdigest()[:16]


def _summary(outcome: Any) -> tuple:
    """(offset, digest of the forecast bytes, dead-letter reason, marker snapshot?) of an Outcome."""
    marker = outcome.snapshot is not None and is_marker(outcome.snapshot)
    return (outcome.offset, _digest(outcome.forecast), outcome.reason, marker)


def _offline(artifact: Path, readings: list[Reading]) -> tuple[list[tuple], list[Any]]:
    """Expected summaries and states of an uninterrupted run over ``readings`` (offsets 0..n-1)."""
    served = load_artifact(artifact)
    engine = served.engine()
    states: dict[str, Any] = {}
    expected, history = [], []
    for offset, reading in enumerate(readings):
        result = engine.step(states.get(reading.stream_id), reading)
        states[reading.stream_id] = result.state.with_source(0, offset)
        forecast = encode_forecast(result.forecast, served.cell, served.version) if result.forecast is not None else None
        expected.append((offset, _digest(forecast), None, False))
        history.append(states[reading.stream_id])
    return expected, history


def _dofn(artifact: Path, name: str, **kwargs: Any) -> ForecastDoFn:
    return ForecastDoFn(ServedModel(str(artifact)), input_topic="readings", metrics=PrivateMetrics(name), **kwargs)


def test_state_is_carried_per_stream(artifact: Path, streams: dict[str, list[Reading]]) -> None:
    a, b = streams.values()
    readings = [r for pair in zip(a, b) for r in pair]  # interleaved
    expected, _ = _offline(artifact, readings)
    assert sum(1 for e in expected if e[1] is not None) == 2 * (80 - load_artifact(artifact).season)
    _run([_inbound(r, i) for i, r in enumerate(readings)], expected, _dofn(artifact, "carried"))
    metrics = PrivateMetrics("carried")()
    assert metrics.readings._value.get() == len(readings)
    assert metrics.active_streams._value.get() == 2


def test_duplicates_out_of_order_and_future_readings_are_dead_letters_and_leave_the_state(artifact, streams) -> None:
    (a, _) = streams.values()
    clean, _ = _offline(artifact, a)
    elements, expected = [], []
    offset = 0
    for i, reading in enumerate(a):
        elements.append(_inbound(reading, offset))
        expected.append((offset, clean[i][1], None, False))
        offset += 1
        if i == 60:
            bad = [
                (reading, "duplicate"),
                (a[10], "out_of_order"),
                (Reading(reading.stream_id, reading.timestamp + 86_400 + 1800, 1.0, reading.covariates), "future_timestamp"),
            ]
            for bad_reading, reason in bad:
                elements.append(_inbound(bad_reading, offset))
                expected.append((offset, None, reason, False))
                offset += 1
    _run(elements, expected, _dofn(artifact, "dead"))
    metrics = PrivateMetrics("dead")()
    assert metrics.readings._value.get() == len(a)


def test_rejected_records_pass_through_untouched(artifact: Path) -> None:
    letter = b'{"reason":"not_json"}'
    element = (rejected_key(0), Inbound(0, 7, 5, 0, key=b"k", dead_letter=letter, reason="not_json"))
    _run([element], [(7, None, "not_json", False)], _dofn(artifact, "rejected"))


@pytest.mark.parametrize("crash_after", [49, 60])
def test_restore_from_a_snapshot_skips_replayed_readings(artifact, streams, crash_after: int) -> None:
    """After a crash the source replays from the committed offset (here: 40) while the changelog
    holds the state after reading ``crash_after``: readings up to it are skipped, the rest continue
    exactly like the uninterrupted run."""
    (a, _) = streams.values()
    clean, history = _offline(artifact, a)
    snapshot = history[crash_after]
    assert snapshot.source_offset == crash_after
    committed = 40
    elements = [_inbound(r, i) for i, r in enumerate(a) if i >= committed]
    expected = [(i, None, None, False) if i <= crash_after else clean[i] for i in range(committed, len(a))]
    restore = StaticRestore({a[0].stream_id: decode_state(encode_state(snapshot))})
    _run(elements, expected, _dofn(artifact, f"restore{crash_after}", restore=restore))
    metrics = PrivateMetrics(f"restore{crash_after}")()
    assert metrics.skipped_replayed._value.get() == crash_after - committed + 1
    assert metrics.restored_streams._value.get() == 1
    assert metrics.readings._value.get() == len(a) - crash_after - 1


def test_a_snapshot_from_another_partition_is_continued_not_skipped(artifact, streams) -> None:
    (a, _) = streams.values()
    clean, history = _offline(artifact, a)
    moved = history[59].with_source(3, 10_000)  # the topic was re-partitioned: offsets are not comparable
    expected = clean[60:]
    elements = [_inbound(r, i) for i, r in enumerate(a) if i >= 60]
    _run(elements, expected, _dofn(artifact, "moved", restore=StaticRestore({a[0].stream_id: moved})))


def test_state_ttl_starts_a_silent_stream_afresh(artifact, streams) -> None:
    (a, _) = streams.values()
    season = load_artifact(artifact).season
    shift = 3 * 3600.0  # a 3-hour silence; ttl 2 h (and max-future 1 day): the stream starts over
    later = [Reading(r.stream_id, r.timestamp + shift, r.value, r.covariates) for r in a[60:]]
    readings = a[:60] + later
    fresh, _ = _offline(artifact, later)
    clean, _ = _offline(artifact, a[:60])
    expected = clean + [(60 + i, e[1], None, False) for i, e in enumerate(fresh)]
    assert all(e[1] is None for e in expected[60 : 60 + season])  # warming up again
    _run([_inbound(r, i) for i, r in enumerate(readings)], expected, _dofn(artifact, "ttl", state_ttl=7200.0))
    metrics = PrivateMetrics("ttl")()
    assert metrics.state_expired._value.get() == 1
    assert metrics.stream_resets.labels(reason="ttl")._value.get() == 1


def test_a_sweep_clears_an_idle_stream_and_leaves_a_marker(artifact, streams) -> None:
    (a, _) = streams.values()
    clean, _ = _offline(artifact, a[:55])
    stream_id = a[0].stream_id
    not_yet = (stream_id, Inbound(0, -1, -1, 0, idle_before=a[54].timestamp))  # not idle: ignored
    sweep = (stream_id, Inbound(0, -1, -1, 0, idle_before=a[54].timestamp + 1))
    again = _inbound(a[55], 55)
    expected = clean + [(-1, None, None, True), (55, None, None, False)]
    elements = [_inbound(r, i) for i, r in enumerate(a[:55])] + [not_yet, sweep, again]
    _run(elements, expected, _dofn(artifact, "sweep", state_ttl=3600.0))
    metrics = PrivateMetrics("sweep")()
    assert metrics.state_expired._value.get() == 1
    assert metrics.readings._value.get() == 56


def test_decode_records_keys_readings_and_rejections(artifact: Path) -> None:
    covariates = load_artifact(artifact).features.covariate_names
    good = json.dumps({"stream_id": "s1", "timestamp": "2014-01-01T00:00:00Z", "value": 1.0, **{c: 1.0 for c in covariates}}).encode()
    records = [
        KafkaRecord("readings", 2, 10, 9, 5, b"s1", good),
        KafkaRecord("readings", 2, 11, 11, 5, b"s1", b"{"),
        SweepRequest(2, "s1", 123.0),
    ]
    out = [kv for record in records for kv in DecodeRecords(covariates).process(record)]
    assert out[0][0] == "s1" and out[0][1].reading is not None and (out[0][1].offset, out[0][1].position) == (10, 9)
    assert out[1][0] == rejected_key(2) and out[1][1].reason == "not_json"
    assert json.loads(out[1][1].dead_letter)["offset"] == 11
    assert out[2] == ("s1", Inbound(2, -1, -1, 0, idle_before=123.0))


def test_coders_round_trip_without_pickle(artifact, streams) -> None:
    (a, _) = streams.values()
    _, history = _offline(artifact, a)
    coder = StreamStateCoder()
    for state in history[::7]:
        assert coder.decode(coder.encode(state)) == state
        assert coder.encode(state) == encode_state(state)
    assert coder.is_deterministic()
    ledger = OffsetLedgerCoder()
    assert ledger.decode(ledger.encode((42, ((50, 60), (70, 71))))) == (42, ((50, 60), (70, 71)))
    assert ledger.decode(ledger.encode((0, ()))) == (0, ())


@settings(max_examples=300, deadline=None)
@given(
    partition=st.integers(0, 2**31 - 1), offset=st.integers(-1, 2**62), timestamp_ms=st.integers(-1, 2**62),
    stream_id=st.text(max_size=12), timestamp=st.floats(allow_nan=False), value=st.floats(allow_nan=False),
    covariates=st.lists(st.floats(allow_nan=False), max_size=4).map(tuple),
    raw=st.none() | st.binary(max_size=40), key=st.none() | st.binary(max_size=12),
    dead_letter=st.none() | st.binary(max_size=30), reason=st.none() | st.text(max_size=12),
    idle_before=st.none() | st.floats(allow_nan=False), with_reading=st.booleans(), commit=st.booleans(),
)
def test_the_shuffle_coder_round_trips_every_inbound(
    partition, offset, timestamp_ms, stream_id, timestamp, value, covariates, raw, key, dead_letter, reason,
    idle_before, with_reading, commit,
) -> None:
    reading = Reading(stream_id, timestamp, value, covariates) if with_reading else None
    inbound = Inbound(partition, offset, offset, timestamp_ms, reading, raw, key, dead_letter, reason, idle_before, commit)
    coder = InboundCoder()
    assert coder.decode(coder.encode(inbound)) == inbound
    assert coder.is_deterministic() and coder.encode(inbound) == coder.encode(inbound)


def test_the_job_shuffles_inbound_records_with_the_explicit_coder(artifact: Path) -> None:
    from pipeline.job import JobLayout, read_and_decode
    from pipeline.kafka_config import KafkaSettings
    from pipeline.options import ServeOptions

    options = ServeOptions(artifact=str(artifact), kafka=KafkaSettings(bootstrap="127.0.0.1:1"))
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    decoded = read_and_decode(pipeline, options, JobLayout((0,), {0: 0}, (), "x"))
    assert decoded.element_type == beam.typehints.Tuple[str, Inbound]
    assert beam.coders.registry.get_coder(decoded.element_type).key_coder() == beam.coders.StrUtf8Coder()
    assert beam.coders.registry.get_coder(decoded.element_type).value_coder() == InboundCoder()


def test_the_job_graph_never_imports_tensorflow(artifact: Path) -> None:
    """Building the serving pipeline (and loading the model) keeps TensorFlow and Keras out."""
    code = f"""
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline.job import JobLayout, build_pipeline
from pipeline.options import ServeOptions
from pipeline.kafka_config import KafkaSettings
from pipeline.forecast_dofn import ServedModel
ServedModel({str(artifact)!r}).load()
options = ServeOptions(artifact={str(artifact)!r}, kafka=KafkaSettings(bootstrap="127.0.0.1:1"))
pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
build_pipeline(pipeline, options, JobLayout((0, 1), {{0: 0, 1: 0}}, ("temperature", "workday"), "x"))
pipeline.to_runner_api()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=h.REPO, env=h._env(), timeout=120)


def test_a_restored_state_of_another_model_starts_afresh(artifact, streams) -> None:
    """The changelog's state was made by a model the served one cannot continue (its key differs): the
    stream restarts its warm-up instead of feeding the network a state it cannot read."""
    from pipeline.model_watch import compatibility_key

    (a, _) = streams.values()
    _, history = _offline(artifact, a)
    key = compatibility_key(load_artifact(artifact))
    fresh, _ = _offline(artifact, a[60:])
    expected = [(60 + i, e[1], None, False) for i, e in enumerate(fresh)]
    foreign = history[59].with_source(0, 59, key ^ 1)
    _run([_inbound(r, i) for i, r in enumerate(a) if i >= 60], expected,
         _dofn(artifact, "foreign", restore=StaticRestore({a[0].stream_id: foreign})))
    metrics = PrivateMetrics("foreign")()
    assert metrics.stream_resets.labels(reason="model_swap")._value.get() == 1
    assert metrics.active_streams._value.get() == 1

    clean, _ = _offline(artifact, a)
    own = history[59].with_source(0, 59, key)
    _run([_inbound(r, i) for i, r in enumerate(a) if i >= 60], clean[60:],
         _dofn(artifact, "own", restore=StaticRestore({a[0].stream_id: own})))
    assert PrivateMetrics("own")().stream_resets.labels(reason="model_swap")._value.get() == 0
