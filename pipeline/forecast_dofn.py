"""Decode and key the records, then the stateful step: the one adapter between Beam state and the engine.

:class:`DecodeRecords` turns each :class:`~pipeline.messages.KafkaRecord` into ``(key, Inbound)`` with
the pure :func:`~pipeline.messages.decode_reading`; :class:`ForecastDoFn` reads the stream's state,
calls :meth:`models.engine.Engine.step` once, writes the state back and emits exactly one
:class:`~pipeline.messages.Outcome` per input record (a forecast, a dead letter, or nothing to publish),
so the sink can account for every offset.

Rules of the stateful step, in order, for a reading at (partition, offset):

1. Beam state empty: seed it from the changelog snapshot restored at start, if any (once per stream).
2. The state's ``source_partition`` is this partition and ``offset <= source_offset``: the reading is
   already in the state (a replay after a restart) -> skipped, counted in ``skipped_replayed_total``.
3. ``timestamp > last + --max-future`` -> dead letter ``future_timestamp``; the state is untouched.
4. ``timestamp - last > --state-ttl`` -> the old state expires and the stream starts fresh.
5. The state was made by a model the served one cannot continue (a hot swap, or a restored state of
   another model; :meth:`~pipeline.model_watch.Served.can_continue`) and the reading is newer -> the
   stream starts fresh (``stream_resets_total{reason="model_swap"}``).
6. ``Engine.step``: ``duplicate``/``out_of_order`` -> dead letter, state untouched; otherwise the new
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
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from models.engine import APPLIED, Engine
from models.state import StreamState
from pipeline import model_watch
from pipeline.accuracy_monitor import AccuracyMonitor
from pipeline.coders import StreamStateCoder
from pipeline.messages import (
    CommitRequest,
    Inbound,
    KafkaRecord,
    Outcome,
    Rejection,
    SweepRequest,
    decode_reading,
    encode_dead_letter,
    encode_forecast,
    rejected_key,
)
from pipeline.metrics import JobMetrics, default_metrics
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
    """:class:`KafkaRecord` / :class:`SweepRequest` / :class:`CommitRequest` -> ``(key, Inbound)``.

    Stateless; never raises on data.
    """

    def __init__(self, covariate_names: Sequence[str]) -> None:
        self._covariates = tuple(covariate_names)

    def process(self, record: KafkaRecord | SweepRequest | CommitRequest) -> Iterator[tuple[str, Inbound]]:
        if isinstance(record, CommitRequest):
            yield rejected_key(record.partition), Inbound(record.partition, -1, -1, 0, commit=True)
            return
        if isinstance(record, SweepRequest):
            yield record.stream_id, Inbound(record.partition, -1, -1, 0, idle_before=record.idle_before)
            return
        decoded = decode_reading(record.value, record.key, self._covariates)
        if isinstance(decoded, Rejection):
            letter = encode_dead_letter(
                decoded.reason, decoded.detail, record.value, record.topic, record.partition, record.offset
            )
            yield rejected_key(record.partition), Inbound(
                record.partition, record.offset, record.position, record.timestamp_ms,
                key=record.key, dead_letter=letter, reason=decoded.reason,
            )
        else:
            yield decoded.stream_id, Inbound(
                record.partition, record.offset, record.position, record.timestamp_ms,
                reading=decoded, raw=record.value, key=record.key,
            )


def _format(seconds: float) -> str:
    from models.timeutil import format_timestamp

    try:
        return format_timestamp(seconds)
    except ValueError:
        return repr(seconds)


class ForecastDoFn(beam.DoFn):
    """The stateful step (see the module docstring for its rules).

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

    STREAM_STATE = ReadModifyWriteStateSpec("stream_state", StreamStateCoder())

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
        element: tuple[str, Inbound],
        stream_state: Any = beam.DoFn.StateParam(STREAM_STATE),
    ) -> Iterator[Outcome]:
        key, inbound = element
        served = self._watcher.current
        if served is not self._served:  # a hot swap: from this element on
            self._accuracy.reconfigure(served.horizon, served.step_seconds)
            self._served = served
        if inbound.commit:
            yield Outcome(inbound.partition, -1, -1, 0, commit=True)
        elif inbound.dead_letter is not None:  # rejected while decoding: the state is not involved
            yield Outcome(
                inbound.partition, inbound.offset, inbound.position, inbound.timestamp_ms,
                key=inbound.key, dead_letter=inbound.dead_letter, reason=inbound.reason,
            )
        elif inbound.reading is not None:
            yield self._step(key, inbound, stream_state)
        else:
            swept = self._sweep(key, inbound, stream_state)
            if swept is not None:
                yield swept
        if self._state_ttl is not None and len(self._restored) and time.monotonic() >= self._next_maintenance:
            self._next_maintenance = time.monotonic() + self._maintain_every
            yield from self._expire_restored()

    # --- the rules ------------------------------------------------------------------------------

    def _step(self, stream_id: str, inbound: Inbound, stream_state: Any) -> Outcome:
        reading = inbound.reading
        assert reading is not None
        metrics = self._metrics
        served = self._served
        current: StreamState | None = stream_state.read()
        if current is None:
            current = self._restored.pop(stream_id)
            if current is not None:
                stream_state.write(current)  # from now on Beam state holds it, whatever this reading does
                if not is_marker(current):
                    metrics.restored_streams.inc()
                    metrics.active_streams.inc()
        if (
            current is not None
            and current.source_partition == inbound.partition
            and inbound.offset <= current.source_offset
        ):
            metrics.skipped_replayed.inc()
            return Outcome(inbound.partition, inbound.offset, inbound.position, inbound.timestamp_ms)
        live = current if current is not None and not is_marker(current) else None
        if live is not None:
            gap = reading.timestamp - live.last_timestamp
            if gap > self._max_future:
                return self._dead_letter(
                    inbound, "future_timestamp",
                    f"timestamp {_format(reading.timestamp)} is more than {self._max_future:g} s after the "
                    f"stream's last reading {_format(live.last_timestamp)}",
                )
            if self._state_ttl is not None and gap > self._state_ttl:
                metrics.state_expired.inc()
                metrics.stream_reset("ttl")
                metrics.active_streams.dec()
                self._accuracy.reset_stream(stream_id)
                live = None
        if live is not None and not served.can_continue(live) and reading.timestamp > live.last_timestamp:
            metrics.stream_reset("model_swap")
            metrics.active_streams.dec()
            self._accuracy.reset_stream(stream_id)
            live = None
        started = time.perf_counter()
        try:
            result = served.engine.step(live, served.reading(reading))
        except Exception as err:  # noqa: BLE001 - one bad reading must not stop the job
            log.exception("engine step failed for stream %r at %s", stream_id, _format(reading.timestamp))
            return self._dead_letter(inbound, "bad_value", f"the model could not process this reading: {err}"[:200])
        metrics.step_seconds.observe(time.perf_counter() - started)
        if result.outcome != APPLIED:
            last = live.last_timestamp if live is not None else float("nan")
            relation = "equals" if result.outcome == "duplicate" else "is older than"
            return self._dead_letter(
                inbound, result.outcome,
                f"timestamp {_format(reading.timestamp)} {relation} the stream's last reading {_format(last)}",
            )
        state = result.state.with_source(inbound.partition, inbound.offset, served.key)
        stream_state.write(state)
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
            inbound.partition, inbound.offset, inbound.position, inbound.timestamp_ms,
            key=inbound.key, stream_id=stream_id, forecast=forecast, snapshot=state,
        )

    def _dead_letter(self, inbound: Inbound, reason: str, detail: str) -> Outcome:
        letter = encode_dead_letter(reason, detail, inbound.raw, self._input_topic, inbound.partition, inbound.offset)
        return Outcome(
            inbound.partition, inbound.offset, inbound.position, inbound.timestamp_ms,
            key=inbound.key, dead_letter=letter, reason=reason,
        )

    def _sweep(self, stream_id: str, inbound: Inbound, stream_state: Any) -> Outcome | None:
        """Clears an idle stream's state; the changelog gets a marker (its source position)."""
        current: StreamState | None = stream_state.read()
        if current is None or is_marker(current) or inbound.idle_before is None:
            return None
        if current.last_timestamp >= inbound.idle_before:
            return None  # a reading arrived since the sweep was requested
        stream_state.clear()
        self._accuracy.reset_stream(stream_id)
        self._metrics.state_expired.inc()
        self._metrics.active_streams.dec()
        return Outcome(inbound.partition, -1, -1, 0, stream_id=stream_id, snapshot=marker_for(current))

    def _expire_restored(self) -> Iterator[Outcome]:
        """Restored states whose streams have not shown up and are now idle become markers."""
        if self._index is None or self._state_ttl is None:
            return
        for stream_id, marker in self._restored.expire(self._index.newest(), self._state_ttl):
            self._metrics.state_expired.inc()
            yield Outcome(marker.source_partition, -1, -1, 0, stream_id=stream_id, snapshot=marker)
