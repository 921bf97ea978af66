"""The naive peers of ``rnncast serve``: what a Beam user without a carried recurrent state writes.

Each stream keeps its last L = 96 readings in Beam state (the job's own shard state,
:mod:`pipeline.shard_state`, keyed by state shard like the job); every reading recomputes the forecast from
that window with the artifact's Keras model. The window is turned into model inputs exactly like
training does (:func:`models.sequences.segment_arrays`): its first S readings fit the window's value
scaler and feed the seasonal base, the remaining ``n - S`` readings are recurrent steps, and the
forecast is the model's output at the last step (so with L = 96, S = 48, each forecast re-runs 48
recurrent steps). A stream forecasts once its window is full (its L-th reading on; ``--min-window``),
as a fixed-window RunInference user would: in steady state every window is full, and that is the
cost the bench measures.

Two strategies, the rest of the graph being the job's own (``pipeline.kafka_source.ReadPartitions``,
``pipeline.forecast_dofn.RouteToShards``, ``pipeline.messages.decode_reading``,
``pipeline.kafka_sink.PublishOutcomes`` and ``CommitOffsets``, ``pipeline.job.prepare``), so only the
serving strategy differs:

* ``--mode per_reading``: one direct Keras call ``model(inputs, training=False)`` per reading.
* ``--mode batched``: RunInference-style: the stateful step emits the due windows, a batching DoFn
  collects them for up to 50 ms or 256 windows (and flushes at the end of each bundle, since a bundle's
  offsets are committed when it finishes) and makes one call of a ``tf.function`` with a fixed input
  signature per batch (windows of equal length share a call).

Like the job, each touched stream's state (here: its encoded window) goes to the changelog at the
sink's commit requests, so the sink does the same work. Same command line as ``rnncast serve`` plus ``--mode``::

    python -m benchmarks.naive_job --mode batched --artifact DIR --bootstrap HOST:PORT \
        --input-topic readings --output-topic forecasts --dlq-topic readings-dlq --group G --metrics-port P
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from models.features import FeatureSpec, input_matrix
from models.reading import Forecast, Reading
from models.scaling import fit_stream_value_scaler
from models.smoothing import Smoothing, SmoothingKernel
from pipeline.messages import (
    Outcome,
    OutcomeBatch,
    Rejection,
    dead_letter_outcome,
    decode_reading,
    encode_forecast,
    is_commit_key,
    record_outcome,
)
from pipeline.shard_state import ShardStore, entries_spec, version_spec

__all__ = ["DEFAULT_WINDOW", "MAX_BATCH", "MAX_BATCH_SECONDS", "WindowModel", "append_reading", "main", "window_inputs"]

DEFAULT_WINDOW = 96
MAX_BATCH = 256
MAX_BATCH_SECONDS = 0.050


def append_reading(window: np.ndarray | None, reading: Reading, length: int) -> tuple[np.ndarray | None, bool]:
    """Appends a reading to a stream's window (rows ``[timestamp, value, covariates...]``).

    Returns:
        ``(window, applied)``; a duplicate or older timestamp leaves the window unchanged
        (``applied`` False), as the job does.
    """
    row = np.array([reading.timestamp, reading.value, *reading.covariates], dtype=np.float64)
    if window is None or len(window) == 0:
        return row[np.newaxis, :], True
    if reading.timestamp <= window[-1, 0]:
        return window, False
    if len(window) < length:
        return np.concatenate([window, row[np.newaxis, :]]), True
    out = np.empty_like(window)
    out[:-1] = window[1:]
    out[-1] = row
    return out, True


def window_inputs(
    spec: FeatureSpec, smoothing: Smoothing, horizon: int, windows: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs for equally long windows, exactly as training builds them.

    Args:
        spec: The artifact's feature spec.
        smoothing: The artifact's smoothing (its warm-up W is the window's first W readings).
        horizon: H.
        windows: B arrays ``[n, 2 + k]`` (timestamp, value, covariates), the same n > W.

    Returns:
        ``(features [B, n-W, F] float32, base [B, n-W, H] float32, mean [B], scale [B], level [B])``,
        the level at the last row (the model's output is relative to it).
    """
    stacked = np.stack(windows)  # [B, n, 2+k]
    batch, n, _ = stacked.shape
    warmup = smoothing.warmup
    if n <= warmup:
        raise ValueError(f"a window needs more than {warmup} readings, got {n}")
    timestamps, values, covariates = stacked[:, :, 0], stacked[:, :, 1], stacked[:, :, 2:]
    params = np.array([fit_stream_value_scaler(v[:warmup]) for v in values])  # [B, 2]
    mean, scale = params[:, 0], params[:, 1]
    scaled = (values - mean[:, None]) / scale[:, None]
    levels, base, errors = SmoothingKernel(smoothing, horizon).run(scaled)  # every window at once
    rows = np.arange(warmup, n)
    steps = len(rows)
    features = input_matrix(
        spec,
        (scaled[:, rows] - levels).reshape(-1),
        covariates[:, rows, :].reshape(batch * steps, -1),
        timestamps[:, rows].reshape(-1),
        errors.reshape(-1),
    ).reshape(batch, steps, -1)
    return features.astype(np.float32), base.astype(np.float32), mean, scale, levels[:, -1]


@dataclass
class WindowModel:
    """The Keras model of an artifact, called on windows.

    Attributes:
        model: The Keras model (``features [B,T,F]``, ``base [B,T,H]`` -> ``[B,T,H]``).
        spec: Feature spec of the artifact.
        smoothing: The artifact's smoothing (level and cycles).
        horizon: H.
        step_seconds: Sampling step.
        compiled: For batches: a ``tf.function`` with a fixed input signature
            (``[None, None, F]``, ``[None, None, H]``), traced once.
    """

    model: object
    spec: FeatureSpec
    smoothing: Smoothing
    horizon: int
    step_seconds: float
    compiled: object | None = None

    @classmethod
    def from_artifact(cls, artifact, *, compile_batches: bool = False) -> WindowModel:
        from models.artifact import load_keras_model

        model = load_keras_model(artifact)
        compiled = None
        if compile_batches:
            import tensorflow as tf

            features = tf.TensorSpec([None, None, artifact.features.size], tf.float32)
            base = tf.TensorSpec([None, None, artifact.horizon], tf.float32)
            compiled = tf.function(lambda f, b: model([f, b], training=False), input_signature=[features, base])
        return cls(model, artifact.features, artifact.smoothing, artifact.horizon, artifact.step_seconds, compiled)

    def forecast_one(self, stream_id: str, window: np.ndarray, readings_seen: int) -> Forecast:
        """One direct Keras call ``model(inputs, training=False)`` for one window."""
        features, base, mean, scale, level = window_inputs(self.spec, self.smoothing, self.horizon, [window])
        out = np.asarray(self.model([features, base], training=False))
        return self._forecast(
            stream_id, window, out[0, -1].astype(np.float64) + level[0], mean[0], scale[0], readings_seen
        )

    def forecast_batch(self, items: Sequence[tuple[str, np.ndarray, int]]) -> list[Forecast]:
        """Forecasts for many windows: windows of equal length share one model call."""
        by_length: dict[int, list[int]] = {}
        for i, (_, window, _) in enumerate(items):
            by_length.setdefault(len(window), []).append(i)
        results: list[Forecast | None] = [None] * len(items)
        for indices in by_length.values():
            features, base, mean, scale, level = window_inputs(
                self.spec, self.smoothing, self.horizon, [items[i][1] for i in indices]
            )
            call = self.compiled if self.compiled is not None else (lambda f, b: self.model([f, b], training=False))
            out = np.asarray(call(features, base))[:, -1, :].astype(np.float64)
            for j, i in enumerate(indices):
                stream_id, window, seen = items[i]
                results[i] = self._forecast(stream_id, window, out[j] + level[j], mean[j], scale[j], seen)
        return results  # type: ignore[return-value]

    def _forecast(
        self, stream_id: str, window: np.ndarray, scaled: np.ndarray, mean: float, scale: float, seen: int
    ) -> Forecast:
        return Forecast(
            stream_id=stream_id,
            timestamp=float(window[-1, 0]),
            values=scaled * scale + mean,
            scaled=scaled,
            step_seconds=self.step_seconds,
            readings_seen=seen,
        )


def forecast_due(readings_seen: int, season: int, min_history: int | None, min_window: int) -> bool:
    """Whether a stream forecasts now: its window holds ``min_window`` readings (and at least the
    job's ``min_history``)."""
    return readings_seen >= max(min_history or season + 1, season + 1, min_window)


# --- state coding ---------------------------------------------------------------------------------

_WINDOW_HEADER = struct.Struct("<4sqII")
_WINDOW_MAGIC = b"NVWN"


def encode_window(readings_seen: int, window: np.ndarray) -> bytes:
    """``(readings_seen, window [n, c])`` as a header plus raw float64 (no pickle)."""
    rows, cols = window.shape
    return _WINDOW_HEADER.pack(_WINDOW_MAGIC, readings_seen, rows, cols) + np.ascontiguousarray(window, "<f8").tobytes()


def encode_window_snapshot(snapshot: tuple[int, np.ndarray]) -> bytes:
    """:func:`encode_window` of a ``(readings_seen, window)`` pair, as the shard state holds it."""
    return encode_window(*snapshot)


def decode_window(data: bytes) -> tuple[int, np.ndarray]:
    magic, seen, rows, cols = _WINDOW_HEADER.unpack_from(data)
    if magic != _WINDOW_MAGIC:
        raise ValueError("not a naive window state")
    window = np.frombuffer(data, "<f8", count=rows * cols, offset=_WINDOW_HEADER.size).reshape(rows, cols).copy()
    return seen, window


# --- the Beam job -----------------------------------------------------------------------------------


class Due(NamedTuple):
    """A reading whose forecast is due, waiting for its (batched) model call."""

    pending: Outcome  # the record's outcome, without the forecast yet
    stream_id: str
    window: np.ndarray
    readings_seen: int


class DueBatch(NamedTuple):
    """An element's outcomes that need no model call, and the due readings that wait for one."""

    outcomes: list[Outcome]
    snapshots: dict[str, bytes]
    due: list[Due]


class NaiveWindowDoFn(beam.DoFn):
    """Stateful per state shard, like the job: append each reading to its stream's window; forecast from
    the whole window. The windows live in the job's own shard state (:mod:`pipeline.shard_state`)."""

    ENTRIES = entries_spec("windows")
    VERSION = version_spec("windows")

    def __init__(
        self,
        artifact: str,
        mode: str,
        min_history: int | None,
        window: int = DEFAULT_WINDOW,
        min_window: int | None = None,
        covariates: tuple[str, ...] | None = None,
    ) -> None:
        self._artifact = artifact
        self._decoded = covariates
        self._mode = mode
        self._min_history = min_history
        self._length = window
        self._min_window = window if min_window is None else min_window

    def setup(self) -> None:
        from models.artifact import load_artifact

        artifact = load_artifact(self._artifact)
        self._model = WindowModel.from_artifact(artifact) if self._mode == "per_reading" else None
        self._season = artifact.smoothing.warmup
        self._name, self._version = artifact.cell, artifact.version
        self._store = ShardStore(encode_window_snapshot, decode_window)
        self._covariates = self._decoded if self._decoded is not None else artifact.features.covariate_names

    def process(self, element, entries=beam.DoFn.StateParam(ENTRIES), version=beam.DoFn.StateParam(VERSION)):
        key, batch = element
        if is_commit_key(key):
            yield OutcomeBatch([Outcome(batch.partition, -1, -1, 0, commit=True)], {})
            return
        view = self._store.open(key, entries, version)
        outcomes, due, stepped = [], [], set()
        for i, raw in enumerate(batch.values):  # sweeps: not used by the bench
            reading = decode_reading(raw, batch.keys[i], self._covariates)
            if isinstance(reading, Rejection):
                outcomes.append(dead_letter_outcome(batch, i, reading.reason, reading.detail))
                continue
            stream_id = reading.stream_id
            seen, window = view.get(stream_id) or (0, None)
            window, applied = append_reading(window, reading, self._length)
            if not applied:  # duplicate / out of order: no forecast, state untouched
                outcomes.append(record_outcome(batch, i))
                continue
            seen += 1
            view.put(stream_id, (seen, window))
            stepped.add(stream_id)
            if not forecast_due(seen, self._season, self._min_history, self._min_window):
                outcomes.append(record_outcome(batch, i))
            elif self._model is not None:
                forecast = self._model.forecast_one(stream_id, window, seen)
                outcomes.append(record_outcome(batch, i, forecast=encode_forecast(forecast, self._name, self._version)))
            else:
                due.append(Due(record_outcome(batch, i), stream_id, window, seen))
        encoded = self._store.close(key, view, entries, version)
        snapshots = {stream_id: encoded[stream_id] for stream_id in stepped}
        yield DueBatch(outcomes, snapshots, due) if self._model is None else OutcomeBatch(outcomes, snapshots)


class BatchForecasts(beam.DoFn):
    """Collects due windows for up to 50 ms or 256 windows (or the bundle's end); one model call each."""

    def __init__(self, artifact: str, max_batch: int = MAX_BATCH, max_seconds: float = MAX_BATCH_SECONDS) -> None:
        self._artifact = artifact
        self._max_batch = max_batch
        self._max_seconds = max_seconds

    def setup(self) -> None:
        from models.artifact import load_artifact

        artifact = load_artifact(self._artifact)
        self._model = WindowModel.from_artifact(artifact, compile_batches=True)
        self._name, self._version = artifact.cell, artifact.version

    def start_bundle(self) -> None:
        self._pending: list[Due] = []
        self._since = 0.0

    def process(self, element):
        if isinstance(element, OutcomeBatch):
            yield element
            return
        yield OutcomeBatch(element.outcomes, element.snapshots)
        if element.due and not self._pending:
            self._since = time.monotonic()
        self._pending.extend(element.due)
        while len(self._pending) >= self._max_batch:
            yield self._call(self._max_batch)
        if self._pending and time.monotonic() - self._since >= self._max_seconds:
            yield self._call(len(self._pending))

    def finish_bundle(self):
        if self._pending:
            yield WindowedValue(self._call(len(self._pending)), MIN_TIMESTAMP, [GlobalWindow()])

    def _call(self, count: int) -> OutcomeBatch:
        """One model call for the first ``count`` pending windows."""
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._since = time.monotonic()
        forecasts = self._model.forecast_batch([(d.stream_id, d.window, d.readings_seen) for d in batch])
        outcomes = [
            d.pending._replace(forecast=encode_forecast(forecast, self._name, self._version))
            for d, forecast in zip(batch, forecasts)
        ]
        return OutcomeBatch(outcomes, {})


def build_pipeline(
    pipeline, options, layout, mode: str, metrics=None, window: int = DEFAULT_WINDOW, min_window: int | None = None
) -> None:
    """The job's graph (``pipeline.job.build_pipeline``) with the stateful step swapped for a naive one."""
    from pipeline.job import publish_and_commit, read_and_route
    from pipeline.metrics import default_metrics

    metrics = metrics or default_metrics
    # Referenced through the importable module (not __main__), so Beam pickles the DoFns by reference.
    from benchmarks.naive_job import BatchForecasts, NaiveWindowDoFn

    stepped = read_and_route(pipeline, options, layout, metrics) | "NaiveForecast" >> beam.ParDo(
        NaiveWindowDoFn(options.artifact, mode, options.min_history, window, min_window, layout.covariate_names)
    )
    if mode == "batched":
        stepped = stepped | "Batch" >> beam.ParDo(BatchForecasts(options.artifact))
    publish_and_commit(stepped, options, layout, metrics)


def main(argv: list[str] | None = None) -> int:
    """``rnncast serve``'s own command line and run path (``pipeline.cli_serve.run``: options, topics,
    offsets, /metrics, graceful stop), with the graph's stateful step swapped for the naive one."""
    import argparse
    import functools

    from pipeline import cli_serve, job
    from pipeline.cli import UsageError

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.naive_job", description="naive window-recompute peer of rnncast serve"
    )
    cli_serve.add_arguments(parser)
    parser.add_argument("--mode", choices=("per_reading", "batched"), required=True)
    parser.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW, help="L: readings kept per stream (default: %(default)s)"
    )
    parser.add_argument("--min-window", type=int, help="readings before a stream forecasts (default: L, a full window)")
    args = parser.parse_args(argv)
    args.extra_args = []
    naive = functools.partial(_build_for_job, mode=args.mode, window=args.window, min_window=args.min_window)
    job.build_pipeline = naive  # job.run builds the graph through this module attribute
    try:
        return cli_serve.run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _build_for_job(pipeline, options, layout, metrics=None, *, mode: str, window: int, min_window: int | None) -> None:
    build_pipeline(pipeline, options, layout, mode, metrics, window=window, min_window=min_window)


if __name__ == "__main__":
    sys.exit(main())
