"""Decode and key the records, then the stateful step: the one adapter between Beam state and the engine.

:class:`DecodeRecords` decodes each record of a :class:`~pipeline.messages.KafkaBatch` with the pure
:func:`~pipeline.messages.decode_reading` and groups the batch by state shard
(:func:`~pipeline.messages.state_shard`): one Beam element per shard and batch, so Beam's per-element
and per-key costs are paid per batch, not per reading. :class:`ForecastDoFn` holds each shard's streams
(:mod:`pipeline.shard_state`), steps each reading once (readings of distinct streams together, with
:meth:`models.engine.Engine.step_many`) and emits one
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from models.engine import APPLIED, Engine, StepResult
from models.state import StreamState, decode_state, encode_state
from pipeline import model_watch
from pipeline.accuracy_monitor import AccuracyMonitor
from pipeline.messages import (
    DEFAULT_STATE_SHARDS,
    CommitRequest,
    Inbound,
    KafkaBatch,
    Outcome,
    OutcomeBatch,
    Rejection,
    SweepRequest,
    decode_reading,
    encode_dead_letter,
    encode_forecast,
    is_rejected_key,
    passed_through,
    rejected_key,
    state_shard,
)
from pipeline.metrics import JobMetrics, default_metrics
from pipeline.shard_state import ShardStore, ShardView, entries_spec, version_spec
from pipeline.state_store import IdleIndex, RestoredStates, idle_index, is_marker, marker_for

__all__ = ["DecodeRecords", "ForecastDoFn", "ServedModel"]

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

    def load(self) -> tuple[Engine, str, str]:
        """Returns (engine, model name for messages, model version) of the model served now."""
        served = model_watch.load_served(model_watch.resolve_artifact(self.artifact), self.spec(), self.covariates, 0)
        return served.engine, served.name, served.version


class DecodeRecords(beam.DoFn):
    """:class:`KafkaBatch` / :class:`SweepRequest` / :class:`CommitRequest` -> ``(key, [Inbound, ...])``.

    A batch's valid readings are grouped by :func:`~pipeline.messages.state_shard` (one element per
    shard, in offset order), its rejected records under the partition's :func:`rejected_key`.
    Stateless; never raises on data.
    """

    def __init__(self, covariate_names: Sequence[str], shards: int = DEFAULT_STATE_SHARDS) -> None:
        self._covariates = tuple(covariate_names)
        self._shards = shards

    def process(self, element: KafkaBatch | SweepRequest | CommitRequest) -> Iterator[tuple[str, list[Inbound]]]:
        if isinstance(element, CommitRequest):
            yield rejected_key(element.partition), [Inbound(element.partition, -1, -1, 0, commit=True)]
            return
        if isinstance(element, SweepRequest):
            yield state_shard(element.stream_id, self._shards), [
                Inbound(element.partition, -1, -1, 0, key=element.stream_id.encode("utf-8"), idle_before=element.idle_before)
            ]
            return
        groups: dict[str, list[Inbound]] = {}
        shards: dict[str, str] = {}  # stream id -> shard key, within this batch
        for record in element.records:
            decoded = decode_reading(record.value, record.key, self._covariates)
            if isinstance(decoded, Rejection):
                letter = encode_dead_letter(
                    decoded.reason, decoded.detail, record.value, record.topic, record.partition, record.offset
                )
                inbound = Inbound(
                    record.partition, record.offset, record.position, record.timestamp_ms,
                    key=record.key, dead_letter=letter, reason=decoded.reason,
                )
                key = rejected_key(record.partition)
            else:
                inbound = Inbound(
                    record.partition, record.offset, record.position, record.timestamp_ms,
                    reading=decoded, raw=record.value, key=record.key,
                )
                key = shards.get(decoded.stream_id)
                if key is None:
                    key = shards[decoded.stream_id] = state_shard(decoded.stream_id, self._shards)
            group = groups.get(key)
            if group is None:
                groups[key] = [inbound]
            else:
                group.append(inbound)
        yield from groups.items()


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
        input_topic: Named in dead letters.
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
        input_topic: str,
        max_future: float = 86_400.0,
        state_ttl: float | None = None,
        restore: Any = None,
        run_id: str | None = None,
        metrics: Any = default_metrics,
        maintain_every: float = 10.0,
    ) -> None:
        self._model = model
        self._input_topic = input_topic
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
        self._accuracy = AccuracyMonitor(self._metrics, self._served.horizon, self._served.step_seconds)
        self._restored: RestoredStates = self._restore.load() if self._restore is not None else RestoredStates()
        self._store: ShardStore[StreamState] = ShardStore(encode_state, decode_state)
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
        element: tuple[str, list[Inbound]],
        entries: Any = beam.DoFn.StateParam(ENTRIES),
        version: Any = beam.DoFn.StateParam(VERSION),
    ) -> Iterator[OutcomeBatch]:
        key, inbounds = element
        served = self._watcher.current
        if served is not self._served:  # a hot swap: from this element on
            self._accuracy.reconfigure(served.horizon, served.step_seconds)
            self._served = served
        if is_rejected_key(key):  # rejected while decoding, or commit requests: the state is not involved
            yield OutcomeBatch([passed_through(inbound) for inbound in inbounds], {})
        else:
            yield self._process_shard(key, inbounds, entries, version)
        if self._state_ttl is not None and len(self._restored) and time.monotonic() >= self._next_maintenance:
            self._next_maintenance = time.monotonic() + self._maintain_every
            expired = self._expire_restored()
            if expired:
                yield OutcomeBatch([], expired)

    def _process_shard(self, shard: str, inbounds: list[Inbound], entries: Any, version: Any) -> OutcomeBatch:
        """The element's records in order; readings of distinct streams are stepped together in rounds.

        A round collects readings until one of a stream already in it arrives (its rules need the state
        the round's step will produce), then the whole round takes one :meth:`Engine.step_many`.
        """
        view = self._store.open(shard, entries, version)
        outcomes: list[Outcome | None] = []
        stepped: set[str] = set()
        markers: dict[str, StreamState] = {}
        round_: list[tuple[int, Inbound, StreamState | None]] = []  # (outcome index, reading, live state)
        in_round: set[str] = set()
        for inbound in inbounds:
            reading = inbound.reading
            if reading is not None:
                if reading.stream_id in in_round:
                    self._step_round(round_, view, outcomes, stepped)
                    round_, in_round = [], set()
                done, live = self._prepare(inbound, view)
                if done is not None:
                    outcomes.append(done)
                else:
                    round_.append((len(outcomes), inbound, live))
                    in_round.add(reading.stream_id)
                    outcomes.append(None)
            elif inbound.idle_before is not None and inbound.key is not None:
                stream_id = inbound.key.decode("utf-8")
                if stream_id in in_round:
                    self._step_round(round_, view, outcomes, stepped)
                    round_, in_round = [], set()
                marker = self._sweep(stream_id, inbound.idle_before, view)
                if marker is not None:
                    markers[stream_id] = marker
        if round_:
            self._step_round(round_, view, outcomes, stepped)
        encoded = self._store.close(shard, view, entries, version)
        snapshots: dict[str, Any] = markers
        for stream_id in stepped:
            snapshots[stream_id] = encoded[stream_id]
        return OutcomeBatch(outcomes, snapshots)  # type: ignore[arg-type]  # every None was filled by its round

    # --- the rules ------------------------------------------------------------------------------

    def _prepare(self, inbound: Inbound, view: ShardView[StreamState]) -> tuple[Outcome | None, StreamState | None]:
        """Rules 1-5 for a reading: ``(outcome, None)`` if it is done without a step, else ``(None, live state)``."""
        reading = inbound.reading
        assert reading is not None
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
            and current.source_partition == inbound.partition
            and inbound.offset <= current.source_offset
        ):
            metrics.skipped_replayed.inc()
            return Outcome(inbound.partition, inbound.offset, inbound.position, inbound.timestamp_ms), None
        live = current if current is not None and not is_marker(current) else None
        if live is not None:
            gap = reading.timestamp - live.last_timestamp
            if gap > self._max_future:
                return self._dead_letter(
                    inbound, "future_timestamp",
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
        round_: list[tuple[int, Inbound, StreamState | None]],
        view: ShardView[StreamState],
        outcomes: list[Outcome | None],
        stepped: set[str],
    ) -> None:
        """Rule 6 for readings of distinct streams: one batched engine step, then each reading's outcome."""
        served = self._served
        started = time.perf_counter()
        results = served.engine.step_many(
            [live for _, _, live in round_], [served.reading(inbound.reading) for _, inbound, _ in round_]
        )
        per_reading = (time.perf_counter() - started) / len(round_)
        observe = self._metrics.step_seconds.observe
        for (index, inbound, live), result in zip(round_, results):
            observe(per_reading)
            outcomes[index] = self._apply(inbound, live, result, view, stepped)

    def _apply(
        self,
        inbound: Inbound,
        live: StreamState | None,
        result: StepResult | Exception,
        view: ShardView[StreamState],
        stepped: set[str],
    ) -> Outcome:
        """Rules 6-7 after the engine: the new state, metrics, online accuracy and the forecast."""
        reading = inbound.reading
        assert reading is not None
        stream_id = reading.stream_id
        if isinstance(result, Exception):  # one bad reading must not stop the job
            log.error(
                "engine step failed for stream %r at %s", stream_id, _format(reading.timestamp),
                exc_info=(type(result), result, result.__traceback__),
            )
            return self._dead_letter(inbound, "bad_value", f"the model could not process this reading: {result}"[:200])
        if result.outcome != APPLIED:
            last = live.last_timestamp if live is not None else float("nan")
            relation = "equals" if result.outcome == "duplicate" else "is older than"
            return self._dead_letter(
                inbound, result.outcome,
                f"timestamp {_format(reading.timestamp)} {relation} the stream's last reading {_format(last)}",
            )
        metrics = self._metrics
        served = self._served
        state = result.state.with_source(inbound.partition, inbound.offset, served.key)
        view.put(stream_id, state)
        stepped.add(stream_id)
        if live is None:
            metrics.active_streams.inc()
        metrics.readings.inc()
        if result.imputed_steps:
            metrics.imputed_steps.inc(result.imputed_steps)
        if result.reset:
            metrics.stream_reset("gap")
            self._accuracy.reset_stream(stream_id)
        if self._index is not None:
            self._index.note(inbound.partition, stream_id, reading.timestamp)
        if not state.warming_up:
            self._accuracy.observe(
                stream_id, reading.timestamp, reading.value, state.value_mean, state.value_scale,
                None if result.forecast is None else result.forecast.scaled,
            )
        forecast = None
        if result.forecast is not None:
            forecast = encode_forecast(result.forecast, served.name, served.version)
        return Outcome(
            inbound.partition, inbound.offset, inbound.position, inbound.timestamp_ms, key=inbound.key, forecast=forecast
        )

    def _dead_letter(self, inbound: Inbound, reason: str, detail: str) -> Outcome:
        letter = encode_dead_letter(reason, detail, inbound.raw, self._input_topic, inbound.partition, inbound.offset)
        return Outcome(
            inbound.partition, inbound.offset, inbound.position, inbound.timestamp_ms,
            key=inbound.key, dead_letter=letter, reason=reason,
        )

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

