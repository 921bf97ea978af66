"""Delivery and state continuity of ``rnncast serve`` under crashes, hostile input and graceful stops.

* crash: 20,000 readings of 50 streams published live while the job is SIGKILLed at random moments
  (and restarted) 6 times, one of them during start-up; in the end no forecast is missing and every
  forecast, duplicates included, equals the uninterrupted offline run (<= 1e-9). With
  ``--guarantee at-least-once`` duplicates are counted and reported (``pytest -s`` prints them; also in
  junit properties); with ``exactly-once`` a read_committed consumer sees none.
* poison: every kind of bad record interleaved with good readings; one dead letter per bad record with
  the right reason, the good forecasts equal a clean run, and the job never exits.
* graceful stop: SIGTERM in mid-stream, twice, with restarts: no duplicate and no missing forecast.

The protocol's pure part, the offset ledger, is tested first.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from models.artifact import load_artifact
from models.reading import Reading
from pipeline.kafka_sink import OffsetLedger, merge_intervals
from pipeline.metrics import DEAD_LETTER_REASONS

import serve_harness as h

# --- the offset ledger (pure) ---------------------------------------------------------------------


def test_merge_intervals() -> None:
    assert merge_intervals([(5, 6), (0, 1), (1, 3), (2, 4), (7, 9)]) == [(0, 4), (5, 6), (7, 9)]
    assert merge_intervals([]) == []


def test_the_ledger_commits_only_the_contiguous_done_prefix() -> None:
    ledger = OffsetLedger(100)
    ledger = ledger.add([(102, 103), (103, 104)])  # 100 and 101 not done yet
    assert ledger.committed == 100 and ledger.pending == ((102, 104),)
    ledger = ledger.add([(100, 101)])
    assert ledger.committed == 101
    ledger = ledger.add([(101, 102)])
    assert ledger == OffsetLedger(104, ())


def test_the_ledger_crosses_holes_in_the_log_and_ignores_replays() -> None:
    # Record at offset 7 was read from position 5 (offsets 5 and 6 do not exist, e.g. compaction).
    ledger = OffsetLedger(5).add([(5, 8)])
    assert ledger.committed == 8
    assert ledger.add([(5, 6), (6, 8)]) == ledger  # replayed intervals change nothing
    assert OffsetLedger(5).add([(9, 10), (8, 9)]).committed == 5  # [5, 8) still missing


@pytest.mark.parametrize("seed", range(20))
def test_the_ledger_in_any_completion_order(seed: int) -> None:
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(1000), 200))
    positions = [0] + [o + 1 for o in offsets[:-1]]
    intervals = list(zip(positions, [o + 1 for o in offsets]))
    rng.shuffle(intervals)
    ledger = OffsetLedger(0)
    done: set[tuple[int, int]] = set()
    for chunk_start in range(0, len(intervals), 17):
        chunk = intervals[chunk_start : chunk_start + 17]
        ledger = ledger.add(chunk)
        done.update(chunk)
        # Committed = end of the longest chain of done intervals from 0.
        expected = 0
        for start, end in sorted(zip(positions, [o + 1 for o in offsets])):
            if (start, end) not in done:
                break
            expected = end
        assert ledger.committed == expected
    assert ledger == OffsetLedger(offsets[-1] + 1, ())


# --- the job under stress -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact() -> Path:
    return h.trained_artifact()


class Topics:
    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.readings, self.forecasts, self.dlq, self.group = (
            f"readings-{suffix}",
            f"forecasts-{suffix}",
            f"dlq-{suffix}",
            f"g-{suffix}",
        )

    def job(self, artifact: Path, bootstrap: str, log: Path, extra: tuple[str, ...] = ()) -> h.ServeProcess:
        return h.ServeProcess(
            h.serve_args(
                artifact,
                bootstrap,
                input_topic=self.readings,
                output_topic=self.forecasts,
                dlq_topic=self.dlq,
                group=self.group,
                extra=extra,
            ),
            log,
        )


def _report(record_property, name: str, **values: object) -> None:
    for key, value in values.items():
        record_property(f"{name}.{key}", value)
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_sigkill_at_random_moments_loses_nothing_and_changes_nothing(
    broker, artifact: Path, tmp_path: Path, record_property, guarantee: str
) -> None:
    bootstrap = broker.bootstrap
    extra = ("--guarantee", guarantee)
    exactly_once = guarantee == "exactly-once"
    topics = Topics()
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(400, 50)  # 20,000 readings, 50 streams
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = []

    job = topics.job(artifact, bootstrap, tmp_path / "serve-0.log", extra)
    # Paced so that readings keep arriving during all six crashes (about 35 s).
    producer = h.PacedProducer(
        bootstrap, topics.readings, [h.reading_message(r, data_covariates) for r in readings], rate=600
    )
    try:
        job.metrics_url()
        producer.start()
        for attempt in range(6):
            if attempt == 2:
                job.metrics_url()  # a crash during start-up, before the pipeline runs
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                job.wait_restored()
                time.sleep(rng.uniform(0.3, 3.0))
            assert job.alive(), job.log[-3000:]
            published = producer.sent
            job.kill()
            committed_then = sum(
                v or 0 for v in h.committed(bootstrap, topics.group, topics.readings, range(4)).values()
            )
            kills.append((published, committed_then))
            job = topics.job(artifact, bootstrap, tmp_path / f"serve-{attempt + 1}.log", extra)
        producer.finish()
        served_docs = h.forecast_docs(
            h.read_records(
                bootstrap,
                topics.forecasts,
                at_least=len(reference),
                timeout=180,
                settle=2.0,
                read_committed=exactly_once,
            )
        )
        url = job.metrics_url()
        samples = h.scrape(url)
        result = h.compare(served_docs, reference)
        _report(
            record_property,
            f"crash[{guarantee}]",
            seed=seed,
            readings=len(readings),
            expected_forecasts=len(reference),
            published_forecasts=len(served_docs),
            duplicates=result["duplicates"],
            missing=len(result["missing"]),
            differing=result["differing"],
            max_diff=result["max_diff"],
            kills_published_committed=kills,
            restored_streams_last_run=h.metric(samples, "rnncast_restored_streams_total"),
            skipped_replayed_last_run=h.metric(samples, "rnncast_skipped_replayed_total"),
        )
        assert result["missing"] == [] and result["unexpected"] == [], result
        assert result["differing"] == 0 and result["max_diff"] <= 1e-9, result
        if exactly_once:
            assert result["duplicates"] == 0, result
        # Most kills must have left published readings uncommitted (work in flight), or this test proves
        # little. The job commits within tens of ms of a reading, so a kill can land when everything
        # published is committed: measured 1 kill in 18 with 20 ms chunks of the stream, 0 in 18 with 10 ms.
        assert sum(1 for published, committed_then in kills if committed_then < published) >= 4, kills
        assert job.stop() == 0, job.log[-3000:]
        ends = h.end_offsets(bootstrap, topics.readings)
        assert h.committed(bootstrap, topics.group, topics.readings, ends) == ends
    finally:
        if job.alive():
            job.kill()


def _poison(
    rng: random.Random, reading: Reading, last: Reading | None, older: Reading | None, covariates: tuple[str, ...]
):
    """One bad record of a random kind for ``reading``'s stream: (reason, key, value)."""
    key = reading.stream_id.encode()
    good = json.loads(h.reading_message(reading, covariates)[1])

    def doc(**changes: object) -> bytes:
        body = dict(good)
        body.update(changes)
        return json.dumps({k: v for k, v in body.items() if v is not None}).encode()

    kinds = [
        ("not_utf8", key, b"\xc3\x28" + doc()),
        ("not_json", key, doc()[:-3]),
        ("not_object", key, json.dumps([good]).encode()),
        ("missing_field", key, doc(value=None)),
        ("missing_field", key, doc(**{covariates[0]: None})),
        ("bad_type", key, doc(value=str(reading.value))),
        ("bad_type", key, doc(stream_id=[reading.stream_id])),
        ("bad_value", key, doc().replace(b'"value":', b'"value":NaN,"x":')),
        ("bad_value", key, doc().replace(b'"value":', b'"value":-Infinity,"x":')),
        ("too_large", key, doc(blob="y" * 1_000_100)),
        ("bad_stream_id", b"", doc(stream_id="")),
        ("bad_stream_id", b"z" * 257, doc(stream_id="z" * 257)),
        ("bad_timestamp", key, doc(timestamp="31/12/2014")),
        ("bad_timestamp", key, doc(timestamp="1960-01-01T00:00:00Z")),
        ("key_mismatch", b"not-" + key, doc()),
        ("key_mismatch", None, doc()),
    ]
    if last is not None:
        kinds += [
            ("duplicate", key, h.reading_message(last, covariates)[1]),
            (
                "future_timestamp",
                key,
                h.reading_message(
                    Reading(last.stream_id, last.timestamp + 2 * 86_400, last.value, last.covariates), covariates
                )[1],
            ),
        ]
    if older is not None:
        kinds.append(("out_of_order", key, h.reading_message(older, covariates)[1]))
    return rng.choice(kinds)


def test_poison_records_go_to_the_dead_letter_topic_and_change_nothing(
    broker, artifact: Path, tmp_path: Path, record_property
) -> None:
    bootstrap = broker.bootstrap
    topics = Topics()
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(150, 20)
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    rng = random.Random(7)
    messages, expected = [], Counter()
    history: dict[str, list[Reading]] = {}
    for reading in readings:
        past = history.setdefault(reading.stream_id, [])
        if rng.random() < 0.08:
            reason, key, value = _poison(
                rng, reading, past[-1] if past else None, past[-5] if len(past) >= 5 else None, data_covariates
            )
            messages.append((key, value))
            expected[reason] += 1
        messages.append(h.reading_message(reading, data_covariates))
        past.append(reading)
    assert set(expected) == set(DEAD_LETTER_REASONS), expected  # every kind at least once

    job = topics.job(artifact, bootstrap, tmp_path / "serve.log")
    try:
        url = job.metrics_url()
        h.produce(bootstrap, topics.readings, messages)
        served_docs = h.forecast_docs(
            h.read_records(bootstrap, topics.forecasts, at_least=len(reference), timeout=120, settle=1.0)
        )
        letters = [
            json.loads(r.value)
            for r in h.read_records(bootstrap, topics.dlq, at_least=sum(expected.values()), timeout=60, settle=1.0)
        ]
        result = h.compare(served_docs, reference)
        got = Counter(letter["reason"] for letter in letters)
        _report(record_property, "poison", injected=dict(expected), dead_letters=dict(got), forecasts=len(served_docs))
        assert got == expected
        assert result["missing"] == [] and result["unexpected"] == [] and result["duplicates"] == 0, result
        assert result["differing"] == 0, result
        assert job.alive()
        h.wait_for(lambda: h.metric(h.scrape(url), "rnncast_forecasts_total") == len(served_docs), 20, what="metrics")
        samples = h.scrape(url)
        for reason, count in expected.items():
            assert h.metric(samples, "rnncast_dead_letters_total", reason=reason) == count, reason
        assert h.metric(samples, "rnncast_readings_total") == len(readings)
        assert job.stop() == 0
    finally:
        if job.alive():
            job.kill()


def test_graceful_stop_in_mid_stream_has_no_duplicates_and_no_gaps(
    broker, artifact: Path, tmp_path: Path, record_property
) -> None:
    bootstrap = broker.bootstrap
    topics = Topics()
    served = load_artifact(artifact)
    readings, data_covariates = h.dataset_readings(300, 25)  # 7,500 readings
    reference = h.offline_forecasts(artifact, readings, served.features.covariate_names, data_covariates)
    producer = h.PacedProducer(
        bootstrap, topics.readings, [h.reading_message(r, data_covariates) for r in readings], rate=1500
    )
    job = topics.job(artifact, bootstrap, tmp_path / "serve-0.log")
    stops = []
    try:
        job.wait_restored()
        producer.start()
        for attempt in range(2):
            time.sleep(1.5)
            stops.append((producer.sent, len(h.read_records(bootstrap, topics.forecasts))))
            assert job.stop() == 0, job.log[-3000:]
            assert "stopped after SIGTERM" in job.log
            job = topics.job(artifact, bootstrap, tmp_path / f"serve-{attempt + 1}.log")
            job.wait_restored()
        producer.finish()
        served_docs = h.forecast_docs(
            h.read_records(bootstrap, topics.forecasts, at_least=len(reference), timeout=120, settle=2.0)
        )
        result = h.compare(served_docs, reference)
        _report(
            record_property,
            "graceful",
            stops=stops,
            forecasts=len(served_docs),
            duplicates=result["duplicates"],
            missing=len(result["missing"]),
        )
        assert result["duplicates"] == 0 and result["missing"] == [] and result["unexpected"] == [], result
        assert result["differing"] == 0, result
        assert any(done < published for published, done in stops), stops  # stopped with work in flight
        assert job.stop() == 0
    finally:
        if job.alive():
            job.kill()


def test_idle_streams_are_swept_and_their_state_leaves_memory_and_the_changelog(
    broker, artifact: Path, tmp_path: Path, record_property
) -> None:
    """Stream churn with --state-ttl: 10 streams stop after 60 readings while 10 others go on for 3 days
    of event time; the job drops the silent streams' Beam state (a sweep), writes markers to the
    changelog, and the next start deletes the markers it no longer needs."""
    bootstrap = broker.bootstrap
    topics = Topics()
    readings, data_covariates = h.dataset_readings(200, 20)
    churned = {f"vic_demand#{k}" for k in range(10)}
    kept = [r for i, r in enumerate(readings) if r.stream_id not in churned or i < 60 * 20]
    ttl = 6 * 3600.0
    args = ["--state-ttl", str(ttl)]

    def start(name: str) -> h.ServeProcess:
        return h.ServeProcess(
            h.serve_args(
                artifact,
                bootstrap,
                input_topic=topics.readings,
                output_topic=topics.forecasts,
                dlq_topic=topics.dlq,
                group=topics.group,
                extra=args,
            ),
            tmp_path / f"{name}.log",
        )

    job = start("first")
    try:
        url = job.metrics_url()
        h.produce(bootstrap, topics.readings, [h.reading_message(r, data_covariates) for r in kept])
        h.wait_for(lambda: h.metric(h.scrape(url), "rnncast_readings_total") == len(kept), 60, what="all readings")
        h.wait_for(lambda: h.metric(h.scrape(url), "rnncast_state_expired_total") == len(churned), 30, what="sweeps")
        samples = h.scrape(url)
        assert h.metric(samples, "rnncast_active_streams") == 20 - len(churned)
        assert job.stop() == 0
    finally:
        if job.alive():
            job.kill()
    from models.state import decode_state
    from pipeline.state_store import is_marker, read_changelog

    changelog = {
        k: decode_state(v)
        for k, v in read_changelog(h.KafkaSettings(bootstrap=bootstrap), f"{topics.group}.rnncast-state").items()
        if v
    }
    assert {k for k, s in changelog.items() if is_marker(s)} == churned
    assert len(changelog) == 20

    again = start("second")
    try:
        again.wait_restored()
        assert (
            f"restored {20 - len(churned)} stream states" in again.log
            and f"({len(churned)} deleted as expired" in again.log
        )
        assert again.stop() == 0
    finally:
        if again.alive():
            again.kill()
    changelog = read_changelog(h.KafkaSettings(bootstrap=bootstrap), f"{topics.group}.rnncast-state")
    assert {k for k, v in changelog.items() if v is None} == churned  # tombstones
    _report(record_property, "churn", swept=len(churned), kept=20 - len(churned))


def test_changelog_restore_keeps_its_partitions_and_the_markers_it_still_needs(broker, unique_topic) -> None:
    import numpy as np

    from models.state import StreamState, encode_state
    from pipeline.kafka_config import KafkaSettings
    from pipeline.state_store import ChangelogRestore, ensure_changelog, is_marker, marker_for, read_changelog

    settings = KafkaSettings(bootstrap=broker.bootstrap)
    topic = unique_topic("g") + ".rnncast-state"
    ensure_changelog(settings, topic, 2)

    def state(partition: int, offset: int, last: float) -> StreamState:
        return StreamState(60, last, 1.0, 1.0, np.ones(48), 48, np.zeros(4), 1.0, partition, offset)

    records = {
        "mine": state(0, 500, 1000.0),
        "mine-gone": None,  # written, then deleted
        "other-instance": state(2, 10, 1000.0),  # partition 2 belongs to another instance
        "old-marker": marker_for(state(0, 90, 100.0)),  # below the committed offset 100: never replayed again
        "recent-marker": marker_for(state(1, 150, 100.0)),  # above it: replays up to 150 must be skipped
    }
    messages = [(b"mine-gone", encode_state(state(0, 5, 10.0)))]
    messages += [(k.encode(), None if v is None else encode_state(v)) for k, v in records.items()]
    h.produce(broker.bootstrap, topic, messages)

    restored = ChangelogRestore(settings, topic, (0, 1), {0: 100, 1: 100}, None, "restore-test").load()
    assert len(restored) == 2
    assert restored.pop("mine") == records["mine"]
    recent = restored.pop("recent-marker")
    assert is_marker(recent) and recent.source_offset == 150
    assert restored.pop("other-instance") is None and restored.pop("old-marker") is None
    assert read_changelog(settings, topic)["old-marker"] is None  # deleted with a tombstone
