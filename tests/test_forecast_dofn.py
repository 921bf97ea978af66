"""The stateful step in Beam, without Kafka: TestStream + TestPipeline (BundleBasedDirectRunner) + assert_that.

Every case compares against the offline engine (``Engine.step`` over the same readings): state carried
per key, dead letters that leave the state alone, restore from a changelog snapshot with the skip rule,
expiry by --state-ttl and by sweep requests, and --max-future.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from models.artifact import load_artifact
from models.reading import Reading
from models.state import decode_state, encode_state
from pipeline.coders import KafkaBatchCoder, OffsetLedgerCoder
from pipeline.forecast_dofn import ForecastDoFn, RouteToShards, ServedModel
from pipeline.messages import (
    KafkaBatch,
    OutcomeBatch,
    SweepRequest,
    commit_key,
    encode_forecast,
    shard_of_key,
    state_shard,
)
from pipeline.metrics import JobMetrics
from pipeline.options import default_state_shards
from pipeline.replay import encode_reading
from pipeline.state_store import StaticRestore, is_marker

import serve_harness as h

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
        out.setdefault(r.stream_id, []).append(
            Reading(r.stream_id, r.timestamp, r.value, tuple(r.covariates[c] for c in columns))
        )
    return out


class Rec(NamedTuple):
    """A record of partition 0 for :func:`_run` (position = offset)."""

    offset: int
    key: bytes | None
    value: bytes | None


@functools.cache
def _covariates() -> tuple[str, ...]:
    return load_artifact(h.trained_artifact()).features.covariate_names


def _inbound(reading: Reading, offset: int) -> Rec:
    """The reading as the record a producer writes (key = stream id, value = its JSON)."""
    return Rec(offset, reading.stream_id.encode(), encode_reading(reading, _covariates()))


def _batches(elements: list[Rec | SweepRequest], batch: int) -> list[KafkaBatch]:
    """``batch`` elements per source batch, as the source emits them (records, then sweeps)."""
    out = []
    for start in range(0, len(elements), batch):
        chunk = elements[start : start + batch]
        records = [e for e in chunk if isinstance(e, Rec)]
        sweeps = tuple(e for e in chunk if isinstance(e, SweepRequest))
        offsets = [r.offset for r in records]
        out.append(
            KafkaBatch(
                "readings",
                0,
                offsets,
                offsets,
                [1_700_000_000_000] * len(records),
                [r.key for r in records],
                [r.value for r in records],
                sweeps,
            )
        )
    return out


def _run(
    elements: list[Rec | SweepRequest],
    expected: Any,
    dofn: ForecastDoFn,
    batch: int = 1,
    snapshots: list[tuple] | None = None,
    shards: int = default_state_shards(None),
) -> None:
    """Feeds the elements in order, ``batch`` per source batch routed by :class:`RouteToShards` (one bundle
    per source batch), and asserts the outcomes' summaries (and the snapshots', if given).

    ``expected``: the list of summaries, or a matcher called with the outcome batches.
    """
    stream = BeamTestStream()
    for source_batch in _batches(elements, batch):
        stream = stream.add_elements(list(RouteToShards(shards).process(source_batch)))
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])
    with BeamTestPipeline(options=options) as pipeline:
        batches = (
            pipeline
            | stream
            | beam.Map(lambda kv: kv).with_output_types(beam.typehints.Tuple[str, Any])
            | beam.ParDo(dofn)
        )
        if callable(expected):
            assert_that(batches, expected)
        else:
            assert_that(batches | beam.FlatMap(_summaries), equal_to(expected))
        if snapshots is not None:
            assert_that(batches | beam.FlatMap(_snapshot_summaries), equal_to(snapshots), label="snapshots")


def _digest(forecast: bytes | None) -> str | None:
    """The forecast's bytes, as a short digest (equal bytes, equal digest; failures stay readable)."""
    return None if forecast is None else hashlib.sha256(forecast).hexdigest()[:16]


def _summaries(batch: OutcomeBatch) -> list[tuple]:
    """(offset, digest of the forecast bytes, dead-letter reason, False) per outcome, and
    (-1, None, None, True) per changelog marker of the batch."""
    out = [(o.offset, _digest(o.forecast), o.reason, False) for o in batch.outcomes]
    return out + [(-1, None, None, True) for s in batch.snapshots.values() if not isinstance(s, bytes) and is_marker(s)]


def _snapshot_summaries(batch: OutcomeBatch) -> list[tuple]:
    """(stream id, encoded state) of the batch's changelog snapshots that are states (not markers)."""
    return [(stream_id, s) for stream_id, s in batch.snapshots.items() if isinstance(s, bytes)]


def _offline(artifact: Path, readings: list[Reading]) -> tuple[list[tuple], list[Any]]:
    """Expected summaries and states of an uninterrupted run over ``readings`` (offsets 0..n-1)."""
    served = load_artifact(artifact)
    engine = served.engine()
    states: dict[str, Any] = {}
    expected, history = [], []
    for offset, reading in enumerate(readings):
        result = engine.step(states.get(reading.stream_id), reading)
        states[reading.stream_id] = result.state.with_source(0, offset)
        forecast = (
            encode_forecast(result.forecast, served.cell, served.version) if result.forecast is not None else None
        )
        expected.append((offset, _digest(forecast), None, False))
        history.append(states[reading.stream_id])
    return expected, history


def _dofn(artifact: Path, name: str, **kwargs: Any) -> ForecastDoFn:
    return ForecastDoFn(ServedModel(str(artifact)), metrics=PrivateMetrics(name), **kwargs)


def test_state_is_carried_per_stream(artifact: Path, streams: dict[str, list[Reading]]) -> None:
    a, b = streams.values()
    readings = [r for pair in zip(a, b) for r in pair]  # interleaved
    expected, _ = _offline(artifact, readings)
    assert sum(1 for e in expected if e[1] is not None) == 2 * (80 - load_artifact(artifact).season)
    _run([_inbound(r, i) for i, r in enumerate(readings)], expected, _dofn(artifact, "carried"))
    metrics = PrivateMetrics("carried")()
    assert metrics.readings._value.get() == len(readings)
    assert metrics.active_streams._value.get() == 2


@pytest.mark.parametrize("batch", [7, 64])
def test_batches_of_many_readings_per_stream_step_like_one_at_a_time(artifact, streams, batch: int) -> None:
    """Elements with several readings of each stream (a backlog) give the same forecasts, and each
    element's snapshot of a stream is its state after the element's last reading of it."""
    a, b = streams.values()
    readings = [r for pair in zip(a, b) for r in pair]
    from pipeline.model_watch import compatibility_key

    expected, history = _offline(artifact, readings)
    key = compatibility_key(load_artifact(artifact))
    last_in_batch: dict[tuple[int, str], bytes] = {}
    for offset, reading in enumerate(readings):
        last_in_batch[(offset // batch, reading.stream_id)] = encode_state(history[offset].with_source(0, offset, key))
    snapshots = [(stream_id, state) for (_, stream_id), state in last_in_batch.items()]
    _run([_inbound(r, i) for i, r in enumerate(readings)], expected, _dofn(artifact, f"batch{batch}"), batch, snapshots)
    assert PrivateMetrics(f"batch{batch}")().readings._value.get() == len(readings)


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
                (
                    Reading(reading.stream_id, reading.timestamp + 86_400 + 1800, 1.0, reading.covariates),
                    "future_timestamp",
                ),
            ]
            for bad_reading, reason in bad:
                elements.append(_inbound(bad_reading, offset))
                expected.append((offset, None, reason, False))
                offset += 1
    _run(elements, expected, _dofn(artifact, "dead"))
    metrics = PrivateMetrics("dead")()
    assert metrics.readings._value.get() == len(a)


def test_rounds_of_many_streams_step_together_like_the_offline_engine(artifact, streams) -> None:
    """Six streams in one shard, 60 records per element: each round steps six streams at once
    (Engine.step_many's batched path); forecasts equal the offline engine's within 1e-12 relative."""
    (a, _) = streams.values()
    readings = [
        Reading(f"{r.stream_id}/{k}", r.timestamp, r.value * (1 + k / 10), r.covariates) for r in a for k in range(6)
    ]
    served = load_artifact(artifact)
    engine, states, expected = served.engine(), {}, {}
    for offset, reading in enumerate(readings):
        result = engine.step(states.get(reading.stream_id), reading)
        states[reading.stream_id] = result.state
        expected[offset] = None if result.forecast is None else result.forecast.values

    def matches(batches: list[OutcomeBatch]) -> None:
        got = {o.offset: o.forecast for b in batches for o in b.outcomes}
        assert sorted(got) == sorted(expected)
        for offset, values in expected.items():
            assert (got[offset] is None) == (values is None), offset
            if values is not None:
                forecast = json.loads(got[offset])["forecast"]
                assert forecast == pytest.approx(list(values), rel=1e-12, abs=1e-12), offset

    _run([_inbound(r, i) for i, r in enumerate(readings)], matches, _dofn(artifact, "rounds"), batch=60, shards=1)
    assert PrivateMetrics("rounds")().readings._value.get() == len(readings)


def test_undecodable_records_become_dead_letters_where_they_land(artifact: Path, streams) -> None:
    (a, _) = streams.values()
    records = [Rec(7, b"k", b"{"), Rec(8, None, b"[1]"), Rec(9, b"x", None), _inbound(a[0], 10)]
    expected = [
        (7, None, "not_json", False),
        (8, None, "not_object", False),
        (9, None, "not_json", False),
        (10, None, None, False),
    ]
    _run(records, expected, _dofn(artifact, "rejected"), batch=4)
    metrics = PrivateMetrics("rejected")()
    assert metrics.readings._value.get() == 1


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
    not_yet = SweepRequest(0, stream_id, a[54].timestamp)  # not idle: ignored
    sweep = SweepRequest(0, stream_id, a[54].timestamp + 1)
    again = _inbound(a[55], 55)
    expected = clean + [(-1, None, None, True), (55, None, None, False)]
    elements = [_inbound(r, i) for i, r in enumerate(a[:55])] + [not_yet, sweep, again]
    _run(elements, expected, _dofn(artifact, "sweep", state_ttl=3600.0))
    metrics = PrivateMetrics("sweep")()
    assert metrics.state_expired._value.get() == 1
    assert metrics.readings._value.get() == 56


def test_route_to_shards_splits_a_batch_by_record_key() -> None:
    streams = [f"s{i}".encode() for i in range(40)]
    keys: list[bytes | None] = [*streams, b"s1", None, b"s0"]
    n = len(keys)
    batch = KafkaBatch(
        "readings",
        2,
        list(range(10, 10 + n)),
        list(range(9, 9 + n)),
        [5] * n,
        keys,
        [b"v%d" % i for i in range(n)],
        (SweepRequest(2, "s3", 123.0), SweepRequest(2, "gone", 7.0)),
        commit=True,
    )
    out = list(RouteToShards(4).process(batch))

    assert out[-1] == (commit_key(2), KafkaBatch.commit_request("readings", 2))
    routed = dict(out[:-1])
    assert len(routed) == len(out) - 1 <= 4
    seen = []
    for shard, part in routed.items():
        assert not part.commit and (part.topic, part.partition) == ("readings", 2)
        assert all(shard_of_key(k, 4) == shard for k in part.keys)
        assert list(part.offsets) == sorted(part.offsets)  # log order kept
        assert all(state_shard(s.stream_id, 4) == shard for s in part.sweeps)
        for j, offset in enumerate(part.offsets):
            i = offset - 10
            assert (part.positions[j], part.keys[j], part.values[j]) == (batch.positions[i], keys[i], batch.values[i])
            seen.append(offset)
    assert sorted(seen) == list(batch.offsets)  # every record exactly once
    assert sorted(s.stream_id for part in routed.values() for s in part.sweeps) == ["gone", "s3"]
    assert state_shard("s0", 4) == shard_of_key(b"s0", 4)  # a valid reading lands in its stream's shard


def test_state_shards_are_stable_and_spread_streams() -> None:
    assert state_shard("vic_demand#3", 16) == f"shard-{zlib.crc32(b'vic_demand#3') % 16}"
    counts: dict[str, int] = {}
    for i in range(1600):
        shard = state_shard(f"meter-{i}", 16)
        counts[shard] = counts.get(shard, 0) + 1
    assert len(counts) == 16 and min(counts.values()) > 60  # ~100 each


def test_ledger_coder_round_trips() -> None:
    ledger = OffsetLedgerCoder()
    assert ledger.decode(ledger.encode((42, ((50, 60), (70, 71))))) == (42, ((50, 60), (70, 71)))
    assert ledger.decode(ledger.encode((0, ()))) == (0, ())


_optional_bytes = st.none() | st.binary(max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=12),
    partition=st.integers(0, 2**31 - 1),
    records=st.lists(
        st.tuples(
            st.integers(-1, 2**62),
            st.integers(-1, 2**62),
            st.integers(-(2**62), 2**62),
            _optional_bytes,
            _optional_bytes,
        ),
        max_size=20,
    ),
    sweeps=st.lists(st.tuples(st.text(max_size=12), st.floats(allow_nan=False)), max_size=3),
    commit=st.booleans(),
)
def test_the_shuffle_coder_round_trips_every_batch(topic, partition, records, sweeps, commit) -> None:
    columns = [list(column) for column in zip(*records)] if records else [[], [], [], [], []]
    batch = KafkaBatch(topic, partition, *columns, tuple(SweepRequest(partition, s, t) for s, t in sweeps), commit)
    coder = KafkaBatchCoder()
    decoded = coder.decode(coder.encode(batch))
    assert decoded == batch._replace(
        **{f: list(getattr(batch, f)) for f in ("offsets", "positions", "timestamps_ms", "keys", "values")}
    )
    assert coder.is_deterministic() and coder.encode(batch) == coder.encode(decoded)
    assert coder.estimate_size(batch) >= sum(len(v) for v in batch.values if v)


def test_the_job_shuffles_batches_with_the_explicit_coder(artifact: Path) -> None:
    from pipeline.job import JobLayout, read_and_route
    from pipeline.kafka_config import KafkaSettings
    from pipeline.options import ServeOptions

    options = ServeOptions(artifact=str(artifact), kafka=KafkaSettings(bootstrap="127.0.0.1:1"))
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    routed = read_and_route(pipeline, options, JobLayout((0,), {0: 0}, (), "x"))
    assert routed.element_type == beam.typehints.Tuple[str, KafkaBatch]
    assert beam.coders.registry.get_coder(routed.element_type).key_coder() == beam.coders.StrUtf8Coder()
    assert beam.coders.registry.get_coder(routed.element_type).value_coder() == KafkaBatchCoder()
    assert (
        beam.coders.registry.get_coder(routed.producer.inputs[0].element_type) == KafkaBatchCoder()
    )  # the source's output


def test_the_job_graph_never_imports_tensorflow(artifact: Path) -> None:
    """Building the serving pipeline (and loading the model) keeps TensorFlow and Keras out."""
    code = f"""
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline.job import JobLayout, build_pipeline
from pipeline.options import ServeOptions
from pipeline.kafka_config import KafkaSettings
from pipeline import model_watch
from pipeline.forecast_dofn import ServedModel
model = ServedModel({str(artifact)!r})
model_watch.load_served(model_watch.resolve_artifact(model.artifact), model.spec(), model.covariates, 0)
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
    _run(
        [_inbound(r, i) for i, r in enumerate(a) if i >= 60],
        expected,
        _dofn(artifact, "foreign", restore=StaticRestore({a[0].stream_id: foreign})),
    )
    metrics = PrivateMetrics("foreign")()
    assert metrics.stream_resets.labels(reason="model_swap")._value.get() == 1
    assert metrics.active_streams._value.get() == 1

    clean, _ = _offline(artifact, a)
    own = history[59].with_source(0, 59, key)
    _run(
        [_inbound(r, i) for i, r in enumerate(a) if i >= 60],
        clean[60:],
        _dofn(artifact, "own", restore=StaticRestore({a[0].stream_id: own})),
    )
    assert PrivateMetrics("own")().stream_resets.labels(reason="model_swap")._value.get() == 0
