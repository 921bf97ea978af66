"""Route the records to state shards, then the stateful step: the one adapter between Beam state and the engine.

:class:`RouteToShards` splits each :class:`~pipeline.messages.KafkaBatch` by state shard (by the records'
keys, :func:`~pipeline.messages.shard_of_key`): one Beam element per shard and batch, so Beam's
per-element and per-key costs are paid per batch, not per reading. :class:`ForecastDoFn` holds each
shard's streams (:mod:`pipeline.shard_state`), decodes each record with the pure
:func:`~pipeline.messages.decode_reading` (a rejection is a dead letter), steps each reading once
(readings of distinct streams together, with :meth:`models.engine.Engine.step_many`) and emits one
:class:`~pipeline.messages.OutcomeBatch` per element: exactly one :class:`~pipeline.messages.Outcome` per
input record (a forecast, a dead letter, or nothing to publish), so the sink can account for every
offset, and the changed streams' snapshots for the changelog.

Rules of the stateful step, in order, for a reading at (partition, offset):

1. No state for the stream: seed it from the changelog snapshot restored at start, if any (once per stream).
2. The state's ``source_partition`` is this partition and ``offset <= source_offset``: the reading is
   already in the state (a replay after a restart) -> skipped, counted in ``skipped_replayed_total``.
3. ``timestamp > last + --max-future`` -> dead letter ``future_timestamp``; the state is untouched.
4. ``timestamp - last > --state-ttl`` -> the old state expires and the stream starts fresh.
5. The state was made by a model the served one cannot continue (a hot swap, or a restored state of
   another model; :meth:`~pipeline.model_watch.Served.can_continue`) and the reading is newer -> the
   stream starts fresh (``stream_resets_total{reason="model_swap"}``).
6. ``Engine.step`` (batched over the distinct streams of a round: :meth:`~models.engine.Engine.step_many`):
   ``duplicate``/``out_of_order`` -> dead letter, state untouched; otherwise the new
   state (with this reading's source position and the model's compatibility key) is written and a
   forecast emitted once due, carrying the ``model_version`` that produced it.
7. Online accuracy: a running stream's reading scores the forecasts issued before it
   (:mod:`pipeline.accuracy_monitor`); every reset above forgets the stream's pending forecasts.

The served model is :attr:`~pipeline.model_watch.ModelWatcher.current`, read once per element: a hot
swap (:mod:`pipeline.model_watch`) takes effect between elements.

Idle streams (``--state-ttl``): see :mod:`pipeline.state_store` for how sweep requests reach this step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from models.engine import APPLIED, StepResult
from models.reading import Reading
from models.state import StreamState, decode_state, encode_state
from pipeline import model_watch
from pipeline.accuracy_monitor import AccuracyMonitor
from pipeline.messages import (
    KafkaBatch,
    Outcome,
    OutcomeBatch,
    Rejection,
    SweepRequest,
    commit_key,
    dead_letter_outcome,
    decode_reading,
    encode_forecast,
    is_commit_key,
    shard_of_key,
    state_shard,
)
from pipeline.metrics import JobMetrics, default_metrics
from pipeline.shard_state import ShardStore, ShardView, entries_spec, version_spec
from pipeline.state_store import IdleIndex, RestoredStates, idle_index, is_marker, marker_for

__all__ = ["ForecastDoFn", "RouteToShards", "ServedModel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """What to serve, as a small picklable description; :meth:`load` reads the artifact (numpy only).

    Attributes:
        artifact: --artifact: an artifact directory, a link to one, or a directory of versions
            (:func:`~pipeline.model_watch.resolve_artifact`).
        min_history: --min-history (None: the artifact's default).
        max_gap: --max-gap (None: the artifact's default).
        poll_seconds: --artifact-poll-seconds: how often the location is checked for a new model
            (None or 0: never).
        covariates: The covariates the job decodes, in order (None: the model's own).
    """

    artifact: str
    min_history: int | None = None
    max_gap: int | None = None
    poll_seconds: float | None = None
    covariates: tuple[str, ...] | None = None

    def spec(self) -> model_watch.ModelSpec:
        return model_watch.ModelSpec(self.artifact, self.min_history, self.max_gap, self.poll_seconds, self.covariates)


class RouteToShards(beam.DoFn):
    """:class:`KafkaBatch` -> ``(shard key, KafkaBatch)``: one element per state shard of the batch's
    records (by their Kafka keys, :func:`~pipeline.messages.shard_of_key`, in offset order) and sweeps,
    then ``(commit_key, KafkaBatch.commit_request(...))`` if the batch is a commit request.

    Stateless, and it never looks inside a value: decoding happens in the stateful step, so the
    shuffle carries the records' raw bytes (cheaper to code than decoded readings).
    """

    def __init__(self, shards: int) -> None:
        self._shards = shards

    def process(self, batch: KafkaBatch) -> Iterator[tuple[str, KafkaBatch]]:
        indices: dict[str, list[int]] = {}
        shard_of: dict[bytes | None, str] = {}  # key -> shard, within this batch
        for i, key in enumerate(batch.keys):
            shard = shard_of.get(key)
            if shard is None:
                shard = shard_of[key] = shard_of_key(key, self._shards)
            records = indices.get(shard)
            if records is None:
                indices[shard] = [i]
            else:
                records.append(i)
        sweeps: dict[str, list[SweepRequest]] = {}
        for sweep in batch.sweeps:
            sweeps.setdefault(state_shard(sweep.stream_id, self._shards), []).append(sweep)
        for shard in {**indices, **sweeps}:
            yield shard, batch.take(indices.get(shard, ()), tuple(sweeps.get(shard, ())))
        if batch.commit:
            yield commit_key(batch.partition), KafkaBatch.commit_request(batch.topic, batch.partition)


def _format(seconds: float) -> str:
    from models.timeutil import format_timestamp

    try:
        return format_timestamp(seconds)
    except ValueError:
        return repr(seconds)


class ForecastDoFn(beam.DoFn):
    """The stateful step, keyed by state shard (see the module docstring for its rules).

    Args:
        model: What to serve.
        max_future: --max-future, seconds.
        state_ttl: --state-ttl, seconds, or None (states never expire).
        restore: Object with ``load() -> RestoredStates`` (:class:`~pipeline.state_store.ChangelogRestore`
            in the job, :class:`~pipeline.state_store.StaticRestore` in tests), or None.
        run_id: The run whose :class:`~pipeline.state_store.IdleIndex` to feed (None: no sweeping).
        metrics: Factory of the job's metrics.
        maintain_every: Seconds between expiry checks of the restored-but-unclaimed states.
    """

    ENTRIES = entries_spec("streams")
    VERSION = version_spec("streams")

    def __init__(
        self,
        model: ServedModel,
        *,
        max_future: float = 86_400.0,
        state_ttl: float | None = None,
        restore: Any = None,
        run_id: str | None = None,
        metrics: Any = default_metrics,
        maintain_every: float = 10.0,
    ) -> None:
        self._model = model
        self._max_future = max_future
        self._state_ttl = state_ttl
        self._restore = restore
        self._run_id = run_id
        self._metrics_factory = metrics
        self._maintain_every = maintain_every

    def setup(self) -> None:
        self._metrics: JobMetrics = self._metrics_factory()
        self._watcher = model_watch.acquire(self._model.spec(), self._metrics)
        self._served: model_watch.Served = self._watcher.current
        self._accuracy = AccuracyMonitor(
            self._metrics, self._served.horizon, self._served.step_seconds, levels=_interval_levels(self._served)
        )
        self._restored: RestoredStates = self._restore.load() if self._restore is not None else RestoredStates()
        self._store: ShardStore[StreamState] = ShardStore(encode_state, decode_state)
        # Readings are decoded with the job's covariates (the first model's unless given); a swapped-in
        # model reads them through Served.reading.
        covariates = self._model.covariates
        self._covariates = covariates if covariates is not None else self._served.engine.features.covariate_names
        # Streams are indexed for sweeping only when states can expire.
        sweeping = self._run_id is not None and self._state_ttl is not None
        self._index: IdleIndex | None = idle_index(self._run_id) if sweeping else None
        self._next_maintenance = time.monotonic() + self._maintain_every

    def finish_bundle(self) -> None:
        self._accuracy.flush()

    def teardown(self) -> None:
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            self._watcher = None
            model_watch.release(watcher)

    def process(
        self,
        element: tuple[str, KafkaBatch],
        entries: Any = beam.DoFn.StateParam(ENTRIES),
        version: Any = beam.DoFn.StateParam(VERSION),
    ) -> Iterator[OutcomeBatch]:
        key, batch = element
        served = self._watcher.current
        if served is not self._served:  # a hot swap: from this element on
            self._accuracy.reconfigure(served.horizon, served.step_seconds, _interval_levels(served))
            self._served = served
        if is_commit_key(key):  # a commit request on its way to the sink: the state is not involved
            yield OutcomeBatch([Outcome(batch.partition, -1, -1, 0, commit=True)], {})
        else:
            yield self._process_shard(key, batch, entries, version)
        if self._state_ttl is not None and len(self._restored) and time.monotonic() >= self._next_maintenance:
            self._next_maintenance = time.monotonic() + self._maintain_every
            expired = self._expire_restored()
            if expired:
                yield OutcomeBatch([], expired)

    def _process_shard(self, shard: str, batch: KafkaBatch, entries: Any, version: Any) -> OutcomeBatch:
        """The shard's records in order, then its sweeps; readings of distinct streams are stepped together.

        Each record is decoded here (a rejection is a dead letter). Readings are collected into a round
        until one of a stream already in it arrives (its rules need the state the round's step will
        produce); then the whole round takes one :meth:`Engine.step_many`.
        """
        view = self._store.open(shard, entries, version)
        self._applied = 0  # readings applied by this element's rounds (rnncast_readings_total)
        outcomes: list[Outcome | None] = []
        stepped: set[str] = set()
        round_: list[tuple[int, int, Reading, StreamState | None]] = []  # (outcome index, record, reading, live)
        in_round: set[str] = set()
        covariates = self._covariates
        keys = batch.keys
        for i, raw in enumerate(batch.values):
            reading = decode_reading(raw, keys[i], covariates)
            if isinstance(reading, Rejection):
                outcomes.append(dead_letter_outcome(batch, i, reading.reason, reading.detail))
                continue
            if reading.stream_id in in_round:
                self._step_round(round_, batch, view, outcomes, stepped)
                round_, in_round = [], set()
            done, live = self._prepare(batch, i, reading, view)
            if done is not None:
                outcomes.append(done)
            else:
                round_.append((len(outcomes), i, reading, live))
                in_round.add(reading.stream_id)
                outcomes.append(None)
        if round_:
            self._step_round(round_, batch, view, outcomes, stepped)
        if self._applied:
            self._metrics.readings.inc(self._applied)
        markers: dict[str, StreamState] = {}
        for sweep in batch.sweeps:
            marker = self._sweep(sweep.stream_id, sweep.idle_before, view)
            if marker is not None:
                markers[sweep.stream_id] = marker
                stepped.discard(sweep.stream_id)
        encoded = self._store.close(shard, view, entries, version)
        snapshots: dict[str, Any] = markers
        for stream_id in stepped:
            snapshots[stream_id] = encoded[stream_id]
        return OutcomeBatch(outcomes, snapshots)  # type: ignore[arg-type]  # every None was filled by its round

    # --- the rules ------------------------------------------------------------------------------

    def _prepare(
        self, batch: KafkaBatch, i: int, reading: Reading, view: ShardView[StreamState]
    ) -> tuple[Outcome | None, StreamState | None]:
        """Rules 1-5 for record ``i``: ``(outcome, None)`` if it is done without a step, else ``(None, live state)``."""
        stream_id = reading.stream_id
        metrics = self._metrics
        current = view.get(stream_id)
        if current is None:
            current = self._restored.pop(stream_id)
            if current is not None:
                view.put(stream_id, current)  # from now on Beam state holds it, whatever this reading does
                if not is_marker(current):
                    metrics.restored_streams.inc()
                    metrics.active_streams.inc()
        if (
            current is not None
            and current.source_partition == batch.partition
            and batch.offsets[i] <= current.source_offset
        ):
            metrics.skipped_replayed.inc()
            return Outcome(batch.partition, batch.offsets[i], batch.positions[i], batch.timestamps_ms[i]), None
        live = current if current is not None and not is_marker(current) else None
        if live is not None:
            gap = reading.timestamp - live.last_timestamp
            if gap > self._max_future:
                return dead_letter_outcome(
                    batch,
                    i,
                    "future_timestamp",
                    f"timestamp {_format(reading.timestamp)} is more than {self._max_future:g} s after the "
                    f"stream's last reading {_format(live.last_timestamp)}",
                ), None
            if self._state_ttl is not None and gap > self._state_ttl:
                metrics.state_expired.inc()
                metrics.stream_reset("ttl")
                metrics.active_streams.dec()
                self._accuracy.reset_stream(stream_id)
                live = None
        if live is not None and not self._served.can_continue(live) and reading.timestamp > live.last_timestamp:
            metrics.stream_reset("model_swap")
            metrics.active_streams.dec()
            self._accuracy.reset_stream(stream_id)
            live = None
        return None, live

    def _step_round(
        self,
        round_: list[tuple[int, int, Reading, StreamState | None]],
        batch: KafkaBatch,
        view: ShardView[StreamState],
        outcomes: list[Outcome | None],
        stepped: set[str],
    ) -> None:
        """Rule 6 for readings of distinct streams: one batched engine step, then each reading's outcome."""
        served = self._served
        started = time.perf_counter()
        results = served.engine.step_many([live for *_, live in round_], [served.reading(r) for _, _, r, _ in round_])
        self._metrics.step_seconds.observe((time.perf_counter() - started) / len(round_))
        for (index, i, reading, live), result in zip(round_, results):
            outcomes[index] = self._apply(batch, i, reading, live, result, view, stepped)

    def _apply(
        self,
        batch: KafkaBatch,
        i: int,
        reading: Reading,
        live: StreamState | None,
        result: StepResult | Exception,
        view: ShardView[StreamState],
        stepped: set[str],
    ) -> Outcome:
        """Rules 6-7 after the engine: the new state, metrics, online accuracy and the forecast."""
        stream_id = reading.stream_id
        if isinstance(result, Exception):  # one bad reading must not stop the job
            log.error(
                "engine step failed for stream %r at %s",
                stream_id,
                _format(reading.timestamp),
                exc_info=(type(result), result, result.__traceback__),
            )
            return dead_letter_outcome(
                batch, i, "bad_value", f"the model could not process this reading: {result}"[:200]
            )
        if result.outcome != APPLIED:
            last = live.last_timestamp if live is not None else float("nan")
            relation = "equals" if result.outcome == "duplicate" else "is older than"
            return dead_letter_outcome(
                batch,
                i,
                result.outcome,
                f"timestamp {_format(reading.timestamp)} {relation} the stream's last reading {_format(last)}",
            )
        metrics = self._metrics
        served = self._served
        partition, offset = batch.partition, batch.offsets[i]
        state = result.state.with_source(partition, offset, served.key)
        view.put(stream_id, state)
        stepped.add(stream_id)
        self._applied += 1
        if live is None:
            metrics.active_streams.inc()
        if result.imputed_steps:
            metrics.imputed_steps.inc(result.imputed_steps)
        if result.reset:
            metrics.stream_reset("gap")
            self._accuracy.reset_stream(stream_id)
        if self._index is not None:
            self._index.note(partition, stream_id, reading.timestamp)
        if not state.warming_up:
            forecast = result.forecast
            if forecast is None:
                self._accuracy.observe(
                    stream_id, reading.timestamp, reading.value, state.value_mean, state.value_scale, None
                )
            else:
                self._accuracy.observe(
                    stream_id,
                    reading.timestamp,
                    reading.value,
                    state.value_mean,
                    state.value_scale,
                    forecast.scaled,
                    forecast.lower,
                    forecast.upper,
                )
        forecast = None
        if result.forecast is not None:
            forecast = encode_forecast(result.forecast, served.name, served.version)
        return Outcome(partition, offset, batch.positions[i], batch.timestamps_ms[i], batch.keys[i], forecast)

    def _sweep(self, stream_id: str, idle_before: float, view: ShardView[StreamState]) -> StreamState | None:
        """Drops an idle stream's state; returns the changelog's marker for it (its source position)."""
        current = view.get(stream_id)
        if current is None or is_marker(current):
            return None
        if current.last_timestamp >= idle_before:
            return None  # a reading arrived since the sweep was requested
        view.delete(stream_id)
        self._accuracy.reset_stream(stream_id)
        self._metrics.state_expired.inc()
        self._metrics.active_streams.dec()
        return marker_for(current)

    def _expire_restored(self) -> dict[str, StreamState]:
        """Restored states whose streams have not shown up and are now idle become markers."""
        if self._index is None or self._state_ttl is None:
            return {}
        expired = dict(self._restored.expire(self._index.newest(), self._state_ttl))
        self._metrics.state_expired.inc(len(expired))
        return expired


def _interval_levels(served: model_watch.Served) -> tuple[float, ...]:
    """The levels of the served model's prediction intervals (empty: it has none)."""
    intervals = served.engine.intervals
    return () if intervals is None else intervals.levels
