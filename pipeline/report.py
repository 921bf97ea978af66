"""``rnncast report``: score the forecasts the job actually published against the readings.

Reads the forecasts topic and the readings topic back from Kafka (every partition, manual ``assign()``,
from the beginning up to the end offsets seen at the start), joins each forecast with the readings at its
target times and draws one PNG: forecast vs actual for one stream, and the MAE per horizon of the live
forecasts against the persistence baseline (the reading's own value at the forecast's origin).

Wire formats (JSON, UTF-8):

* reading: ``{"stream_id", "timestamp" (RFC 3339 or epoch seconds), "value", ...}``
* forecast: ``{"stream_id", "timestamp" (RFC 3339 of the reading that produced it), "forecast": [H],
  "forecast_timestamps": [H RFC 3339], "model", "model_version", "readings_seen"[, "intervals": {"<level>":
  {"lower": [H], "upper": [H]}, ...}]}``

Prediction intervals, when the forecasts carry them, are scored on the same points: coverage per level and
horizon, mean width and interval (Winkler) score (:func:`models.intervals.interval_point_scores`, the
scorer ``rnncast evaluate`` uses), in the readings' units.

What is scored. A point ``(forecast, h)`` is scored when the stream has a reading at the forecast's origin
(the persistence value) and one at its ``h``-th target time; the model and persistence are scored on exactly
the same points, as in :mod:`models.metrics`. Records that do not parse are counted (``unparsed``) and
skipped. A forecast whose ``(stream_id, timestamp)`` was already seen (the job re-emits forecasts after a
crash restart) is counted once, the first copy winning. Per stream, a reading whose timestamp is not after
the stream's latest reading is ignored, as the serving engine ignores it (``ignored_readings``).

Bounded memory. Nothing is kept per record. Both topics are consumed together, paced by event time
(partitions that run ahead are paused): readings are kept about one to two forecast spans *ahead* of the
forecasts, so a forecast usually finds all its targets already read and is scored on arrival. Each stream
keeps only the readings that forecasts still to come can need (from its latest forecast origin on, and
never more than ``max_lag`` forecast spans behind the forecasts' event-time frontier), the forecasts still
waiting for a target, and its seen forecast origins as runs on its step grid; the plotted stream also keeps
its last ``N`` readings and their forecasts. Error sums are per horizon, pooled over all streams. A
forecast that arrives after the readings it needs were dropped (more than ``max_lag`` spans behind the
frontier of the forecasts topic) is counted as ``late_forecasts`` and not scored.

Choosing the plotted stream (the one with most distinct forecasts) needs a count before the join, so without
``--stream`` the forecasts topic is read twice (the first pass keeps one counter per stream).

Tansu notes: its ListOffsets ("latest") answers the base offset of the last record batch plus one, not the
log end, so the end of each partition is taken as the larger of that answer and the high watermark of the
first fetch response; and it ignores the per-partition fetch size but honours the per-request one, which
is therefore what bounds each poll.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import numbers
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import UsageError
from models.intervals import interval_point_scores
from models.metrics import horizon_bands
from models.timeutil import format_timestamp, parse_timestamp
from pipeline.kafka_config import KafkaSettings, client_kwargs

__all__ = [
    "ForecastRecord",
    "PlotForecast",
    "ReportAccumulator",
    "ReportError",
    "ReportResult",
    "build_report",
    "format_summary",
    "parse_forecast_record",
    "parse_reading_record",
    "plot_report",
    "read_report",
]

_US = 1_000_000
_NEG_INF = -math.inf
_POS_INF = math.inf
_TS_CACHE_LIMIT = 1 << 16


class ReportError(UsageError):
    """The report cannot be made for a reason the user can fix (broker unreachable, no such topic)."""


# --- parsing -----------------------------------------------------------------------------------------


def _key(seconds: float) -> int:
    """Epoch seconds -> integer microseconds, the join key (immune to float rounding of fractions)."""
    return round(seconds * _US)


def _finite_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} is not finite: {value!r}")
    return number


def _stream_id(doc: Any) -> str:
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    stream = doc.get("stream_id")
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream_id must be a non-empty string, got {stream!r}")
    return stream


def parse_reading_record(raw: bytes | str | None) -> tuple[str, float, float]:
    """Decodes a reading message.

    Args:
        raw: The Kafka record value (UTF-8 JSON).

    Returns:
        ``(stream_id, timestamp in epoch seconds, value)``.

    Raises:
        ValueError: If it is not JSON, lacks a field, or has an unparseable timestamp or a non-finite value.
    """
    if raw is None:
        raise ValueError("empty record")
    try:
        doc = json.loads(raw)
        stream = _stream_id(doc)
        return stream, parse_timestamp(doc.get("timestamp")), _finite_number(doc.get("value"), "value")
    except (OverflowError, RecursionError) as err:  # a huge integer; nesting too deep
        raise ValueError(f"unreadable reading: {type(err).__name__}") from None


@dataclass(frozen=True)
class ForecastRecord:
    """One decoded forecast message.

    Attributes:
        stream_id: The stream.
        timestamp: Origin (the reading that produced it), epoch seconds.
        values: Forecast values, float64 ``[H]``.
        targets: Target times, epoch seconds, float64 ``[H]``, strictly increasing and after ``timestamp``.
        model: The ``model`` field, if a string.
        model_version: The ``model_version`` field, if a string.
    """

    stream_id: str
    timestamp: float
    values: np.ndarray
    targets: np.ndarray
    model: str | None = None
    model_version: str | None = None
    intervals: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # level -> (lower [H], upper [H])


class _TimestampCache:
    """Parses timestamps, remembering recent strings (consecutive forecasts share H-1 target times)."""

    def __init__(self, limit: int = _TS_CACHE_LIMIT) -> None:
        self._cache: dict[str, float] = {}
        self._limit = limit

    def __call__(self, text: Any) -> float:
        if isinstance(text, str):
            hit = self._cache.get(text)
            if hit is not None:
                return hit
            if len(self._cache) >= self._limit:
                self._cache.clear()
            seconds = self._cache[text] = parse_timestamp(text)
            return seconds
        return parse_timestamp(text)


def parse_forecast_record(
    raw: bytes | str | None, parse_ts: Callable[[Any], float] = parse_timestamp
) -> ForecastRecord:
    """Decodes a forecast message.

    Args:
        raw: The Kafka record value (UTF-8 JSON).
        parse_ts: Timestamp parser (a caching one in the reader).

    Returns:
        The forecast.

    Raises:
        ValueError: If a field is missing or malformed: ``forecast`` must be a non-empty list of finite
            numbers and ``forecast_timestamps`` as long, strictly increasing and after ``timestamp``.
    """
    if raw is None:
        raise ValueError("empty record")
    try:
        return _parse_forecast(json.loads(raw), parse_ts)
    except (OverflowError, RecursionError) as err:  # a huge integer; nesting too deep
        raise ValueError(f"unreadable forecast: {type(err).__name__}") from None


def _parse_forecast(doc: Any, parse_ts: Callable[[Any], float]) -> ForecastRecord:
    stream = _stream_id(doc)
    origin = parse_ts(doc.get("timestamp"))
    values = doc.get("forecast")
    targets = doc.get("forecast_timestamps")
    if not isinstance(values, list) or not values:
        raise ValueError("forecast must be a non-empty list")
    if not isinstance(targets, list) or len(targets) != len(values):
        raise ValueError("forecast_timestamps must be a list as long as forecast")
    if not all(type(v) is float or type(v) is int for v in values):  # not bool, str, None
        raise ValueError("forecast values must be numbers")
    vals = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(vals)):
        raise ValueError("forecast values must be finite")
    tgts = np.array([parse_ts(t) for t in targets], dtype=np.float64)
    if not (tgts[0] > origin and np.all(np.diff(tgts) > 0)):
        raise ValueError("forecast_timestamps must be strictly increasing and after timestamp")
    model = doc.get("model")
    version = doc.get("model_version")
    return ForecastRecord(
        stream,
        origin,
        vals,
        tgts,
        model if isinstance(model, str) else None,
        version if isinstance(version, str) else None,
        _parse_intervals(doc.get("intervals"), len(values)),
    )


def _parse_intervals(doc: Any, horizon: int) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The ``intervals`` field: level -> (lower, upper), each H finite numbers (absent: None)."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError("intervals must be an object")
    out = {}
    for level, bounds in doc.items():
        try:
            nominal = float(level)
        except ValueError:
            raise ValueError(f"interval level {level!r} is not a number") from None
        if not 0 < nominal < 1:
            raise ValueError(f"interval level {level} is not between 0 and 1")
        if not isinstance(bounds, dict):
            raise ValueError(f"intervals[{level!r}] must be an object")
        sides = []
        for side in ("lower", "upper"):
            values = bounds.get(side)
            if (
                not isinstance(values, list)
                or len(values) != horizon
                or not all(type(v) is float or type(v) is int for v in values)
            ):
                raise ValueError(f"intervals[{level!r}].{side} must be {horizon} numbers")
            sides.append(np.array(values, dtype=np.float64))
        out[level] = (sides[0], sides[1])
    return out


# --- per-stream join state -----------------------------------------------------------------------------


class _OriginRuns:
    """The set of forecast origins seen for one stream, as runs on its step grid (exact, O(gaps) memory).

    Origins that do not fit the grid are kept one by one (irregular streams cost one entry per forecast).
    """

    __slots__ = ("step", "starts", "ends", "odd")

    def __init__(self, step: int) -> None:
        self.step = max(int(step), 1)
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.odd: set[int] = set()

    def add(self, k: int) -> bool:
        """Adds origin ``k``; returns False if it was already there."""
        starts, ends, step = self.starts, self.ends, self.step
        if ends and k > ends[-1]:  # the common case: the next origin
            if k == ends[-1] + step:
                ends[-1] = k
                return True
            if (k - ends[-1]) % step:
                return self._add_odd(k)
            starts.append(k)
            ends.append(k)
            return True
        i = bisect.bisect_right(starts, k) - 1
        if i >= 0 and k <= ends[i]:
            if (k - starts[i]) % step == 0:
                return False
            return self._add_odd(k)
        nxt = i + 1
        if i >= 0 and k == ends[i] + step:
            ends[i] = k
            if nxt < len(starts) and starts[nxt] == k + step:  # close the gap: merge two runs
                ends[i] = ends[nxt]
                del starts[nxt], ends[nxt]
            return True
        if nxt < len(starts) and starts[nxt] == k + step:
            starts[nxt] = k
            return True
        if (i >= 0 and (k - starts[i]) % step) or (nxt < len(starts) and (starts[nxt] - k) % step):
            return self._add_odd(k)
        starts.insert(nxt, k)
        ends.insert(nxt, k)
        return True

    def _add_odd(self, k: int) -> bool:
        if k in self.odd:
            return False
        self.odd.add(k)
        return True


class _Pending:
    __slots__ = ("record", "origin", "target_keys")

    def __init__(self, record: ForecastRecord, origin: int, target_keys: list[int]) -> None:
        self.record = record
        self.origin = origin
        self.target_keys = target_keys


class _Stream:
    __slots__ = (
        "readings",
        "last_reading",
        "pruned_upto",
        "prune_at",
        "origins",
        "frontier",
        "pending",
        "pending_heap",
        "forecasts",
        "reading_count",
    )

    def __init__(self) -> None:
        self.readings: OrderedDict[int, float] = OrderedDict()
        self.last_reading: int | None = None
        self.pruned_upto: float = _NEG_INF  # readings with a key <= this were dropped
        self.prune_at = 64
        self.origins: _OriginRuns | None = None
        self.frontier: float = _NEG_INF  # latest forecast origin seen
        self.pending: dict[int, _Pending] = {}
        self.pending_heap: list[tuple[int, int]] = []  # (last target key, origin key)
        self.forecasts = 0
        self.reading_count = 0


@dataclass
class PlotForecast:
    """A forecast of the plotted stream: origin ``timestamp``, ``values`` at ``targets`` (epoch seconds)."""

    timestamp: float
    values: np.ndarray
    targets: np.ndarray


@dataclass
class ReportResult:
    """Everything the report shows.

    Attributes:
        streams: Streams with at least one forecast.
        reading_streams: Streams with at least one reading.
        forecasts: Distinct forecasts (duplicates counted once).
        duplicates: Forecast messages whose ``(stream_id, timestamp)`` had been seen before.
        readings: Readings used (parsed and in order).
        ignored_readings: Readings whose timestamp was not after the stream's latest reading.
        unparsed_readings: Reading messages that did not parse.
        unparsed_forecasts: Forecast messages that did not parse.
        late_forecasts: Forecasts that arrived after the readings they needed had been dropped.
        scored_forecasts: Forecasts with at least one scored horizon.
        scored_points: Scored ``(forecast, horizon)`` points.
        model_versions: Distinct ``model_version`` values, sorted.
        models: Distinct ``model`` values, sorted.
        counts: Scored points per horizon, ``[H]``.
        model_abs: Sum of ``|forecast - actual|`` per horizon.
        persistence_abs: Sum of ``|value at origin - actual|`` per horizon.
        step_seconds: The most common ``first target - origin`` (for axis labels), or None.
        stream: The plotted stream, or None if there is nothing to plot.
        plot_timestamps: Its last N readings' times (epoch seconds).
        plot_values: Their values.
        plot_forecasts: Its distinct forecasts whose origin lies in that window, in origin order.
        readings_topic: Topic names and bootstrap, for the title.
        forecasts_topic: See ``readings_topic``.
        bootstrap: See ``readings_topic``.
        peak_buffered_readings: Largest number of readings held at once (all streams; memory check).
        peak_pending_forecasts: Largest number of forecasts held waiting for targets at once.
    """

    streams: int = 0
    reading_streams: int = 0
    forecasts: int = 0
    duplicates: int = 0
    readings: int = 0
    ignored_readings: int = 0
    unparsed_readings: int = 0
    unparsed_forecasts: int = 0
    late_forecasts: int = 0
    scored_forecasts: int = 0
    scored_points: int = 0
    model_versions: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    model_abs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    persistence_abs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    step_seconds: float | None = None
    stream: str | None = None
    plot_timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    plot_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    plot_forecasts: list[PlotForecast] = field(default_factory=list)
    readings_topic: str = ""
    forecasts_topic: str = ""
    bootstrap: str = ""
    peak_buffered_readings: int = 0
    peak_pending_forecasts: int = 0
    # Per interval level (as the forecasts name it): [H] sums of covered, width, winkler and points.
    intervals: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        """Longest forecast horizon seen."""
        return int(self.counts.size)

    @property
    def unparsed(self) -> int:
        """Reading and forecast messages that did not parse."""
        return self.unparsed_readings + self.unparsed_forecasts

    @property
    def mae(self) -> np.ndarray:
        """Model MAE per horizon (NaN where nothing was scored)."""
        return _divide(self.model_abs, self.counts)

    @property
    def persistence_mae(self) -> np.ndarray:
        """Persistence MAE per horizon (NaN where nothing was scored)."""
        return _divide(self.persistence_abs, self.counts)

    @property
    def mae_ratio_vs_persistence(self) -> float:
        """Mean model MAE over scored horizons / mean persistence MAE over the same (as ``evaluate``)."""
        scored = self.counts > 0
        if not np.any(scored):
            return math.nan
        p = float(np.mean(self.persistence_mae[scored]))
        return float(np.mean(self.mae[scored])) / p if p > 0 else math.nan

    def interval_coverage(self) -> dict[str, float]:
        """Per level: empirical coverage averaged over the horizons with scored points (as ``evaluate``)."""
        out = {}
        for level, sums in self.intervals.items():
            scored = sums["points"] > 0
            out[level] = (
                float(np.mean(sums["covered"][scored] / sums["points"][scored])) if np.any(scored) else math.nan
            )
        return out

    def summary(self) -> dict[str, Any]:
        """The ``--json`` document (NaN written as ``null``)."""
        intervals = {
            level: {
                "coverage": _json_floats(_divide(sums["covered"], sums["points"])),
                "width": _json_floats(_divide(sums["width"], sums["points"])),
                "winkler": _json_floats(_divide(sums["winkler"], sums["points"])),
                "points": [int(x) for x in sums["points"]],
            }
            for level, sums in self.intervals.items()
        }
        return {
            "interval_coverage": {level: _json_float(c) for level, c in self.interval_coverage().items()},
            "intervals": intervals,
            "streams": self.streams,
            "forecasts": self.forecasts,
            "scored_points": self.scored_points,
            "model_versions": list(self.model_versions),
            "mae": _json_floats(self.mae),
            "persistence_mae": _json_floats(self.persistence_mae),
            "mae_ratio_vs_persistence": _json_float(self.mae_ratio_vs_persistence),
            "horizon": self.horizon,
            "scored_forecasts": self.scored_forecasts,
            "duplicates": self.duplicates,
            "late_forecasts": self.late_forecasts,
            "reading_streams": self.reading_streams,
            "readings": self.readings,
            "ignored_readings": self.ignored_readings,
            "unparsed": self.unparsed,
            "unparsed_readings": self.unparsed_readings,
            "unparsed_forecasts": self.unparsed_forecasts,
            "models": list(self.models),
            "stream": self.stream,
        }


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _json_floats(a: np.ndarray) -> list[float | None]:
    return [_json_float(float(x)) for x in a]


class ReportAccumulator:
    """The join and the running error sums, fed one decoded record at a time (no Kafka here).

    Correct for any arrival order of the two topics; memory stays small when the caller keeps readings a
    little ahead of forecasts in event time (as :func:`read_report` does) and reports the forecasts'
    event-time frontier with :meth:`set_forecast_watermark`.

    Args:
        plot_stream: Stream whose last ``last`` readings and their forecasts are kept for the plot; None:
            the stream of the first reading.
        last: Readings kept for the plot.
        max_lag_spans: Readings more than this many forecast spans behind the forecast watermark are
            dropped even if the stream's own forecasts have not reached them.
    """

    def __init__(self, plot_stream: str | None = None, last: int = 336, max_lag_spans: float = 8.0) -> None:
        if last < 1:
            raise ValueError(f"last must be >= 1, got {last}")
        if not max_lag_spans > 0:
            raise ValueError(f"max_lag_spans must be > 0, got {max_lag_spans}")
        self._streams: dict[str, _Stream] = {}
        self._plot_stream = plot_stream
        self._last = int(last)
        self._max_lag_spans = float(max_lag_spans)
        self._ring: deque[tuple[int, float]] = deque(maxlen=self._last)
        self._plot_fc: deque[tuple[int, ForecastRecord]] = deque()
        self._counts = np.zeros(0)
        self._model_abs = np.zeros(0)
        self._pers_abs = np.zeros(0)
        # Per interval level: [H] sums of covered, width, Winkler score and the points they cover.
        self._intervals: dict[str, dict[str, np.ndarray]] = {}
        self._versions: set[str] = set()
        self._models: set[str] = set()
        self._steps: dict[int, int] = {}
        self.span_us = 0  # the longest forecast span seen (last target - origin)
        self._watermark: float = _NEG_INF
        self._pending_all: list[tuple[int, int, str]] = []  # (last target key, origin key, stream), lazy
        self._readings_done = False
        self._buffered = 0
        self._pending = 0
        self.stats = ReportResult()

    # -- inputs --

    @property
    def plot_stream(self) -> str | None:
        """The stream kept for the plot (None until known)."""
        return self._plot_stream

    @property
    def buffered_readings(self) -> int:
        """Readings held now, all streams (the plot's ring not included)."""
        return self._buffered

    @property
    def pending_forecasts(self) -> int:
        """Forecasts held now, waiting for a target reading."""
        return self._pending

    def _stream(self, stream_id: str) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None:
            st = self._streams[stream_id] = _Stream()
        return st

    def unparsed_reading(self) -> None:
        self.stats.unparsed_readings += 1

    def unparsed_forecast(self) -> None:
        self.stats.unparsed_forecasts += 1

    def add_reading(self, stream_id: str, timestamp: float, value: float) -> None:
        """Takes one reading (ignored unless after the stream's latest reading)."""
        st = self._stream(stream_id)
        k = _key(timestamp)
        if st.last_reading is not None and k <= st.last_reading:
            self.stats.ignored_readings += 1
            return
        st.last_reading = k
        st.reading_count += 1
        self.stats.readings += 1
        if self._plot_stream is None:
            self._plot_stream = stream_id
        if stream_id == self._plot_stream:
            self._ring.append((k, value))
            start = self._ring[0][0]
            while self._plot_fc and self._plot_fc[0][0] < start:
                self._plot_fc.popleft()
        st.readings[k] = value
        self._buffered += 1
        if self._buffered > self.stats.peak_buffered_readings:
            self.stats.peak_buffered_readings = self._buffered
        heap = st.pending_heap
        while heap and heap[0][0] <= k:
            _, origin = heapq.heappop(heap)
            pending = st.pending.pop(origin)  # the global heap's entry goes stale; it is skipped there
            self._pending -= 1
            self._score(st, pending.record, origin, pending.target_keys)
        if len(st.readings) >= st.prune_at:
            self._prune(st)

    def add_forecast(self, record: ForecastRecord) -> None:
        """Takes one forecast: counts it (once), scores it now or when its targets have been read."""
        st = self._stream(record.stream_id)
        origin = _key(record.timestamp)
        target_keys = np.rint(record.targets * _US).astype(np.int64).tolist()  # == _key() elementwise
        self._grow(len(target_keys))
        if st.origins is None:
            st.origins = _OriginRuns(target_keys[0] - origin)
        if not st.origins.add(origin):
            self.stats.duplicates += 1
            return
        st.forecasts += 1
        self.stats.forecasts += 1
        if st.forecasts == 1:
            self.stats.streams += 1
        if record.model_version is not None:
            self._versions.add(record.model_version)
        if record.model is not None:
            self._models.add(record.model)
        step = target_keys[0] - origin
        if len(self._steps) < 64 or step in self._steps:
            self._steps[step] = self._steps.get(step, 0) + 1
        span = target_keys[-1] - origin
        if span > self.span_us:
            self.span_us = span
        if origin > st.frontier:
            st.frontier = origin
        if record.stream_id == self._plot_stream and (not self._ring or origin >= self._ring[0][0]):
            self._plot_fc.append((origin, record))
        if origin <= st.pruned_upto and origin not in st.readings:
            self.stats.late_forecasts += 1  # its origin reading (if any) was dropped: cannot be scored
            return
        if self._readings_done or (st.last_reading is not None and st.last_reading >= target_keys[-1]):
            self._score(st, record, origin, target_keys)
            return
        st.pending[origin] = _Pending(record, origin, target_keys)
        heapq.heappush(st.pending_heap, (target_keys[-1], origin))
        heapq.heappush(self._pending_all, (target_keys[-1], origin, record.stream_id))
        self._pending += 1
        if self._pending > self.stats.peak_pending_forecasts:
            self.stats.peak_pending_forecasts = self._pending

    def set_forecast_watermark(self, seconds: float) -> None:
        """The event time the forecasts topic has been read to (min over its unfinished partitions).

        ``math.inf`` once it is read to the end: readings are then kept only for waiting forecasts.
        """
        self._watermark = seconds if math.isinf(seconds) else float(_key(seconds))

    def set_reading_watermark(self, seconds: float) -> None:
        """The event time the readings topic has been read to (min over its unfinished partitions).

        Forecasts whose last target lies more than ``max_lag`` spans before it are scored with what was
        read (their missing targets will not come); this bounds the forecasts kept for streams that have
        no readings (e.g. a readings topic with a shorter retention).
        """
        if math.isinf(seconds):
            if seconds > 0:
                self.readings_done()
            return
        limit = _key(seconds) - self._max_lag_spans * max(self.span_us, 1)
        heap = self._pending_all
        while heap and heap[0][0] < limit:
            _, origin, stream_id = heapq.heappop(heap)
            st = self._streams[stream_id]
            pending = st.pending.pop(origin, None)
            if pending is None:
                continue  # already scored when its last target was read
            self._pending -= 1
            self._score(st, pending.record, origin, pending.target_keys)
            st.pending_heap = [entry for entry in st.pending_heap if entry[1] != origin]
            heapq.heapify(st.pending_heap)

    def readings_done(self) -> None:
        """No more readings will come: every waiting forecast is scored with what was read."""
        if self._readings_done:
            return
        self._readings_done = True
        for st in self._streams.values():
            for origin, pending in sorted(st.pending.items(), key=lambda item: item[0]):
                self._score(st, pending.record, origin, pending.target_keys)
            self._pending -= len(st.pending)
            st.pending.clear()
            st.pending_heap.clear()
        self._pending_all.clear()

    # -- internals --

    def _prune(self, st: _Stream) -> None:
        # Keep what forecasts still to come can need: from the stream's own forecast frontier on (its
        # forecasts come in origin order; re-emitted ones are duplicates), but never more than max_lag spans
        # behind the forecasts topic's frontier; and whatever a waiting forecast needs.
        lag = self._max_lag_spans * max(self.span_us, 1)
        cutoff = max(st.frontier, self._watermark - lag)
        if st.pending:
            cutoff = min(cutoff, min(st.pending))
        readings = st.readings
        dropped = 0
        while readings:
            k = next(iter(readings))
            if k >= cutoff:
                break
            readings.popitem(last=False)
            dropped += 1
            st.pruned_upto = k
        self._buffered -= dropped
        st.prune_at = len(readings) + 64  # a prune costs O(dropped + waiting forecasts)

    def _grow(self, horizon: int) -> None:
        if horizon > self._counts.size:
            extra = horizon - self._counts.size
            self._counts = np.concatenate([self._counts, np.zeros(extra)])
            self._model_abs = np.concatenate([self._model_abs, np.zeros(extra)])
            self._pers_abs = np.concatenate([self._pers_abs, np.zeros(extra)])
            for sums in self._intervals.values():
                for name in sums:
                    sums[name] = np.concatenate([sums[name], np.zeros(extra)])

    def _score(self, st: _Stream, record: ForecastRecord, origin: int, target_keys: list[int]) -> None:
        base = st.readings.get(origin)
        if base is None:
            return
        get = st.readings.get
        actual = np.array([get(k, math.nan) for k in target_keys], dtype=np.float64)
        ok = np.isfinite(actual)
        n = int(np.count_nonzero(ok))
        if n == 0:
            return
        a = actual[ok]
        idx = np.flatnonzero(ok)
        self._counts[idx] += 1.0
        self._model_abs[idx] += np.abs(record.values[ok] - a)
        self._pers_abs[idx] += np.abs(base - a)
        self.stats.scored_points += n
        self.stats.scored_forecasts += 1
        if record.intervals:
            self._score_intervals(record.intervals, actual, ok)

    def _score_intervals(
        self, intervals: dict[str, tuple[np.ndarray, np.ndarray]], actual: np.ndarray, ok: np.ndarray
    ) -> None:
        for level, (lower, upper) in intervals.items():
            sums = self._intervals.get(level)
            if sums is None:
                sums = self._intervals[level] = {
                    name: np.zeros(self._counts.size) for name in ("covered", "width", "winkler", "points")
                }
            valid = ok & np.isfinite(lower) & np.isfinite(upper)
            covered, width, winkler = interval_point_scores(lower[valid], upper[valid], actual[valid], float(level))
            idx = np.flatnonzero(valid)
            sums["covered"][idx] += covered
            sums["width"][idx] += width
            sums["winkler"][idx] += winkler
            sums["points"][idx] += 1.0

    # -- output --

    def stream_ids(self) -> list[str]:
        return sorted(self._streams)

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def result(self) -> ReportResult:
        """The totals and the plot data (call after :meth:`readings_done`)."""
        out = self.stats
        out.reading_streams = sum(1 for st in self._streams.values() if st.reading_count)
        out.model_versions = sorted(self._versions)
        out.models = sorted(self._models)
        out.counts = self._counts.copy()
        out.model_abs = self._model_abs.copy()
        out.persistence_abs = self._pers_abs.copy()
        out.intervals = {
            level: {name: a.copy() for name, a in sums.items()}
            for level, sums in sorted(self._intervals.items(), key=lambda item: float(item[0]))
        }
        if self._steps:
            step_us = max(self._steps.items(), key=lambda kv: (kv[1], -kv[0]))[0]
            out.step_seconds = step_us / _US
        out.stream = self._plot_stream
        out.plot_timestamps = np.array([k / _US for k, _ in self._ring], dtype=np.float64)
        out.plot_values = np.array([v for _, v in self._ring], dtype=np.float64)
        start = self._ring[0][0] if self._ring else _NEG_INF
        fcs = sorted(((o, r) for o, r in self._plot_fc if o >= start), key=lambda item: item[0])
        out.plot_forecasts = [PlotForecast(r.timestamp, r.values, r.targets) for _, r in fcs]
        return out


# --- Kafka ---------------------------------------------------------------------------------------------


def _check_topics(settings: KafkaSettings, topics: Iterable[str]) -> dict[str, list[int]]:
    from pipeline.kafka_config import unreachable
    from pipeline.topics import TopicError, partitions_for, validate_topic_name

    for topic in topics:
        try:
            validate_topic_name(topic)
        except ValueError as err:
            raise ReportError(str(err)) from None
    reason = unreachable(settings)
    if reason:
        raise ReportError(f"cannot reach Kafka at {settings.bootstrap} ({reason})")
    from kafka.errors import KafkaError

    found: dict[str, list[int]] = {}
    missing = []
    for topic in topics:
        try:
            found[topic] = partitions_for(settings, topic)
        except TopicError:
            missing.append(topic)
        except KafkaError as err:
            raise ReportError(f"cannot read topic metadata from Kafka at {settings.bootstrap}: {err}") from None
    if missing:
        names = " and ".join(repr(t) for t in missing)
        verb = "topic {} does not exist" if len(missing) == 1 else "topics {} do not exist"
        raise ReportError(f"{verb.format(names)} on Kafka at {settings.bootstrap}")
    return found


class _Reader:
    """Reads partitions from their beginning to the end seen at the start (manual assignment, no group).

    The end of a partition is the larger of ListOffsets' answer and the high watermark of the first fetch
    response (Tansu answers the last batch's base offset + 1). Ends are remembered across passes, so both
    passes over the forecasts topic stop at the same offsets.

    Every poll returns *all* the records fetched so far (the consumer's ``max_poll_records`` is unbounded;
    memory is bounded by the fetch sizes instead): kafka-python 3.0.12 parks the rest of a partly returned
    batch when its partition is paused and, once its in-line slot has been used, never restores it, so
    that partition would stall forever after a resume.

    Args:
        consumer: A kafka-python consumer without a group.
        idle_timeout: Seconds without any record before giving up.
    """

    def __init__(self, consumer: Any, idle_timeout: float) -> None:
        self.consumer = consumer
        self.idle_timeout = idle_timeout
        self.ends: dict[Any, int] = {}
        self.fixed: set[Any] = set()

    def _fix_end(self, tp: Any) -> None:
        if tp not in self.fixed:
            high = self.consumer.highwater(tp)
            if high is not None:
                self.ends[tp] = max(self.ends[tp], int(high))
                self.fixed.add(tp)

    def run(
        self,
        kinds: dict[Any, str],
        handle: Callable[[str, Any], float | None],
        pace: Callable[[dict[Any, float], set[Any]], set[Any]] | None = None,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        """Consumes every partition in ``kinds`` to its end.

        Args:
            kinds: TopicPartition -> kind (``"readings"`` or ``"forecasts"``).
            handle: ``handle(kind, value)`` -> the record's event time (epoch seconds) or None.
            pace: ``pace(clocks, active)`` -> the unfinished partitions that may be fetched now, given each
                partition's latest event time.
            on_done: Called with a kind once all its partitions are read to their end.
        """
        consumer = self.consumer
        tps = list(kinds)
        consumer.assign(tps)
        consumer.resume(*tps)
        new = [tp for tp in tps if tp not in self.ends]
        if new:
            listed = consumer.end_offsets(new)
            self.ends.update({tp: int(listed[tp]) for tp in new})
        begins = consumer.beginning_offsets(tps)
        active: set[Any] = set()
        for tp in tps:
            consumer.seek(tp, int(begins[tp]))
            if self.ends[tp] > int(begins[tp]):
                active.add(tp)
            else:
                self.fixed.add(tp)  # an empty partition (Tansu too answers begin == end only then)
                consumer.pause(tp)
        clocks: dict[Any, float] = {tp: _NEG_INF for tp in tps}
        left = {kind: 0 for kind in kinds.values()}
        for tp in active:
            left[kinds[tp]] += 1
        if on_done is not None:
            for kind in sorted(k for k, n in left.items() if n == 0):
                on_done(kind)
        paused: set[Any] = set()
        last_progress = time.monotonic()
        while active:
            if pace is not None:
                want = active - pace(clocks, active)
                if want - paused:
                    consumer.pause(*(want - paused))
                if paused - want:
                    consumer.resume(*(paused - want))
                paused = want
            batches = consumer.poll(timeout_ms=200)
            for tp, records in batches.items():
                if tp not in active:
                    continue
                self._fix_end(tp)
                end, kind = self.ends[tp], kinds[tp]
                for record in records:
                    if record.offset >= end and tp in self.fixed:
                        break
                    seconds = handle(kind, record.value)
                    if seconds is not None and seconds > clocks[tp]:
                        clocks[tp] = seconds
                if records:
                    last_progress = time.monotonic()
            for tp in list(active):
                self._fix_end(tp)
                if tp in self.fixed and consumer.position(tp) >= self.ends[tp]:
                    active.discard(tp)
                    paused.discard(tp)
                    consumer.pause(tp)  # records written after the start are not wanted
                    left[kinds[tp]] -= 1
                    if left[kinds[tp]] == 0 and on_done is not None:
                        on_done(kinds[tp])
            if active and time.monotonic() - last_progress > self.idle_timeout:
                where = ", ".join(
                    f"{tp.topic}[{tp.partition}] at offset {consumer.position(tp)} of {self.ends[tp]}"
                    for tp in sorted(active, key=lambda t: (t.topic, t.partition))[:4]
                )
                raise ReportError(f"no records from Kafka for {self.idle_timeout:g}s while reading {where}")
        consumer.pause(*tps)


def _fast_crc32c() -> bool:
    """Whether kafka-python has a C CRC-32C (the ``crc32c`` package).

    Without it, verifying record batch CRCs in pure Python costs more than everything else the report does
    (about 0.6 ms per kB); a read-only report then skips the check (TCP already checksums the transfer,
    and a damaged payload fails to parse and is counted as ``unparsed``).
    """
    try:
        from kafka.record import util
    except ImportError:
        return False
    return getattr(util, "crc32c_c", None) is not None


def _choose_stream(counts: dict[str, int]) -> str | None:
    """The stream with most forecasts; ties go to the smallest id."""
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def read_report(
    settings: KafkaSettings,
    *,
    readings_topic: str = "readings",
    forecasts_topic: str = "forecasts",
    stream: str | None = None,
    last: int = 336,
    max_lag_spans: float = 8.0,
    fetch_bytes: int = 1024 * 1024,
    idle_timeout: float = 30.0,
) -> ReportResult:
    """Reads both topics from Kafka and scores the forecasts (no plotting).

    Args:
        settings: Kafka connection settings.
        readings_topic: Topic of the readings.
        forecasts_topic: Topic of the forecasts.
        stream: Stream to keep for the plot; default: the stream with most distinct forecasts (ties: the
            smallest id; this costs a first pass over the forecasts topic), or the first reading's stream
            when there are no forecasts.
        last: Readings of that stream kept for the plot (its last ``last``).
        max_lag_spans: How far (in forecast spans) a forecast may trail the forecasts topic's event-time
            frontier and still be scored; more costs memory.
        fetch_bytes: Bytes per fetch response (``fetch_max_bytes`` and ``max_partition_fetch_bytes``; a
            record batch larger than this still comes whole). Smaller: tighter pacing, less memory.
        idle_timeout: Seconds without any record before giving up.

    Returns:
        The result.

    Raises:
        ReportError: If Kafka cannot be reached, a topic does not exist, reading stalls, or ``stream`` is
            in neither topic.
        kafka.errors.KafkaError: On other Kafka failures.
    """
    if last < 1:
        raise ReportError(f"--last must be >= 1, got {last}")
    if not max_lag_spans > 0:
        raise ReportError(f"--max-lag must be > 0, got {max_lag_spans}")
    if readings_topic == forecasts_topic:
        raise ReportError(f"the readings and forecasts topics must differ (both are {readings_topic!r})")
    partitions = _check_topics(settings, [readings_topic, forecasts_topic])

    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    try:
        consumer = KafkaConsumer(
            client_id="rnncast-report",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
            check_crcs=_fast_crc32c(),
            # Memory per poll is bounded by the fetch sizes, not by a record count (see _Reader).
            max_poll_records=2**31 - 1,
            # Tansu ignores the per-partition limit but honours the per-request one.
            max_partition_fetch_bytes=int(fetch_bytes),
            fetch_max_bytes=int(fetch_bytes),
            **client_kwargs(settings),
        )
    except KafkaError as err:
        raise ReportError(f"cannot connect to Kafka at {settings.bootstrap} ({err})") from None
    try:
        reader = _Reader(consumer, idle_timeout)
        r_tps = [TopicPartition(readings_topic, p) for p in partitions[readings_topic]]
        f_tps = [TopicPartition(forecasts_topic, p) for p in partitions[forecasts_topic]]
        r_set, f_set = set(r_tps), set(f_tps)
        parse_ts = _TimestampCache()

        if stream is None:
            counts: dict[str, int] = {}
            origins: dict[str, _OriginRuns] = {}

            def count(kind: str, value: Any) -> float | None:
                try:
                    fc = parse_forecast_record(value, parse_ts)
                except (ValueError, TypeError):
                    return None
                origin = _key(fc.timestamp)
                runs = origins.get(fc.stream_id)
                if runs is None:
                    runs = origins[fc.stream_id] = _OriginRuns(_key(fc.targets[0]) - origin)
                if runs.add(origin):
                    counts[fc.stream_id] = counts.get(fc.stream_id, 0) + 1
                return None

            reader.run({tp: "forecasts" for tp in f_tps}, count)
            stream = _choose_stream(counts)
            del counts, origins

        acc = ReportAccumulator(stream, last, max_lag_spans)

        def handle(kind: str, value: Any) -> float | None:
            if kind == "readings":
                try:
                    sid, ts, reading = parse_reading_record(value)
                except (ValueError, TypeError):
                    acc.unparsed_reading()
                    return None
                acc.add_reading(sid, ts, reading)
                return ts
            try:
                fc = parse_forecast_record(value, parse_ts)
            except (ValueError, TypeError):
                acc.unparsed_forecast()
                return None
            acc.add_forecast(fc)
            return fc.timestamp

        def pace(clocks: dict[Any, float], active: set[Any]) -> set[Any]:
            # Readings run one to two forecast spans ahead of the forecasts, so that a forecast finds its
            # targets already read; whichever side is further behind is always allowed to move.
            span = acc.span_us / _US
            r = min((clocks[tp] for tp in active if tp in r_set), default=_POS_INF)
            f = min((clocks[tp] for tp in active if tp in f_set), default=_POS_INF)
            acc.set_forecast_watermark(f)
            acc.set_reading_watermark(r)
            allowed = set()
            for tp in active:
                limit = r - span if tp in f_set else f + 2 * span
                if clocks[tp] <= limit:
                    allowed.add(tp)
            return allowed

        def done(kind: str) -> None:
            if kind == "readings":
                acc.readings_done()
            else:
                acc.set_forecast_watermark(_POS_INF)

        kinds = {tp: "readings" for tp in r_tps}
        kinds.update({tp: "forecasts" for tp in f_tps})
        reader.run(kinds, handle, pace, done)
        acc.readings_done()
        if stream is not None and not acc.has_stream(stream):
            ids = acc.stream_ids()
            listed = ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
            raise ReportError(
                f"stream {stream!r} is in neither {readings_topic!r} nor {forecasts_topic!r}"
                + (f" (streams: {listed})" if ids else " (both are empty)")
            )
        result = acc.result()
    except (KafkaConnectionError, KafkaTimeoutError) as err:
        raise ReportError(f"lost Kafka at {settings.bootstrap} while reading ({err})") from None
    finally:
        consumer.close()
    result.readings_topic = readings_topic
    result.forecasts_topic = forecasts_topic
    result.bootstrap = settings.bootstrap
    return result


def build_report(
    settings: KafkaSettings,
    *,
    readings_topic: str = "readings",
    forecasts_topic: str = "forecasts",
    stream: str | None = None,
    last: int = 336,
    out: str | os.PathLike[str] | None = "report.png",
    max_lag_spans: float = 8.0,
    fetch_bytes: int = 1024 * 1024,
    idle_timeout: float = 30.0,
) -> ReportResult:
    """Reads both topics, scores the forecasts and writes the PNG.

    Args:
        settings: Kafka connection settings.
        readings_topic: Topic of the readings.
        forecasts_topic: Topic of the forecasts.
        stream: Stream to plot (default: the one with most forecasts).
        last: Readings of that stream to plot.
        out: PNG to write (replaced atomically); None: no figure.
        max_lag_spans: See :func:`read_report`.
        fetch_bytes: See :func:`read_report`.
        idle_timeout: See :func:`read_report`.

    Returns:
        The result (``result.summary()`` is the ``--json`` document).

    Raises:
        ReportError: See :func:`read_report`; also if ``out``'s folder does not exist.
    """
    if out is not None:
        folder = Path(out).resolve().parent
        if not folder.is_dir():
            raise ReportError(f"cannot write {os.fspath(out)}: folder {folder} does not exist")
    result = read_report(
        settings,
        readings_topic=readings_topic,
        forecasts_topic=forecasts_topic,
        stream=stream,
        last=last,
        max_lag_spans=max_lag_spans,
        fetch_bytes=fetch_bytes,
        idle_timeout=idle_timeout,
    )
    if out is not None:
        try:
            plot_report(result, out)
        except OSError as err:
            raise ReportError(f"cannot write {os.fspath(out)}: {err.strerror or err}") from None
    return result


# --- text and figure ---------------------------------------------------------------------------------


def _fmt(x: float, spec: str = ".4g") -> str:
    return "n/a" if not math.isfinite(x) else format(x, spec)


def _verdict(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "no scored points: cannot compare with persistence"
    pct = abs(1.0 - ratio) * 100.0
    if ratio < 1.0:
        return f"model beats persistence by {pct:.1f}%"
    return f"model LOSES to persistence by {pct:.1f}%"


def _versions_text(result: ReportResult, limit: int = 3) -> str:
    versions = result.model_versions
    if not versions:
        return "model_version: none seen"
    text = ", ".join(versions[:limit])
    if len(versions) > limit:
        text += f" (+{len(versions) - limit} more)"
    return f"model_version{'s' if len(versions) > 1 else ''}: {text}"


def format_summary(result: ReportResult, out: str | None = None) -> str:
    """The human-readable summary printed without ``--json`` (no trailing newline)."""
    lines = [
        f"{result.streams:,} stream{'s' if result.streams != 1 else ''} with forecasts "
        f"({result.reading_streams:,} with readings), {result.forecasts:,} forecasts "
        f"({result.duplicates:,} duplicates), {result.scored_points:,} scored points; {_versions_text(result)}",
    ]
    skipped = []
    if result.unparsed:
        skipped.append(f"{result.unparsed:,} unparsed records")
    if result.ignored_readings:
        skipped.append(f"{result.ignored_readings:,} out-of-order or repeated readings")
    if result.late_forecasts:
        skipped.append(f"{result.late_forecasts:,} forecasts too late to score (raise --max-lag)")
    if skipped:
        lines.append("skipped: " + ", ".join(skipped))
    mae, pers = result.mae, result.persistence_mae
    bands = horizon_bands(result.horizon)
    if bands and np.any(result.counts > 0):
        lines.append("")
        lines.append(f"{'horizons':<10}{'MAE':>12}{'persistence':>13}{'ratio':>8}{'points':>10}")
        for label, sl in bands:
            scored = result.counts[sl] > 0
            m = float(np.mean(mae[sl][scored])) if np.any(scored) else math.nan
            p = float(np.mean(pers[sl][scored])) if np.any(scored) else math.nan
            r = m / p if p > 0 else math.nan
            lines.append(f"{label:<10}{_fmt(m):>12}{_fmt(p):>13}{_fmt(r, '.3f'):>8}{int(result.counts[sl].sum()):>10,}")
    if bands and result.intervals:
        lines.append("")
        lines.append(f"{'horizons':<10}{'level':>7}{'coverage':>10}{'width':>12}{'Winkler':>12}{'points':>10}")
        for label, sl in bands:
            for level, sums in result.intervals.items():
                points = sums["points"][sl]
                scored = points > 0

                def mean(name: str, sums: dict = sums, sl: slice = sl, points=points, scored=scored) -> float:
                    return float(np.mean(sums[name][sl][scored] / points[scored])) if np.any(scored) else math.nan

                lines.append(
                    f"{label:<10}{level:>7}{_fmt(mean('covered'), '.3f'):>10}{_fmt(mean('width')):>12}"
                    f"{_fmt(mean('winkler')):>12}{int(points.sum()):>10,}"
                )
        lines.append(
            "interval coverage (mean over horizons): "
            + ", ".join(f"{level}: {_fmt(c, '.3f')}" for level, c in result.interval_coverage().items())
        )
    lines.append("")
    ratio = result.mae_ratio_vs_persistence
    lines.append(f"mae_ratio_vs_persistence {_fmt(ratio, '.3f')}: {_verdict(ratio)}")
    if out is not None:
        lines.append(f"wrote {out} (stream {result.stream or 'none'}, last {result.plot_timestamps.size} readings)")
    return "\n".join(lines)


def _step_label(step_seconds: float | None) -> str:
    if not step_seconds:
        return "steps"
    if step_seconds % 86400 == 0:
        return f"steps of {int(step_seconds // 86400)} d"
    if step_seconds % 3600 == 0:
        return f"steps of {int(step_seconds // 3600)} h"
    if step_seconds % 60 == 0:
        return f"steps of {int(step_seconds // 60)} min"
    return f"steps of {step_seconds:g} s"


def _with_breaks(t: np.ndarray, v: np.ndarray, step: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Inserts NaN where consecutive times are more than 1.5 steps apart, so lines break at gaps."""
    if t.size < 2:
        return t, v
    diffs = np.diff(t)
    gap = 1.5 * (step if step else float(np.median(diffs)))
    cut = np.flatnonzero(diffs > gap) + 1
    if cut.size == 0:
        return t, v
    return np.insert(t, cut, t[cut - 1] + diffs[cut - 1] / 2), np.insert(v, cut, np.nan)


def _dates(seconds: np.ndarray) -> np.ndarray:
    return (np.asarray(seconds, dtype=np.float64) * 1e6).astype("datetime64[us]")


def _utc(seconds: float) -> str:
    return format_timestamp(float(seconds)).replace("T", " ").replace("Z", "")[:16]


def _path_origins(forecasts: list[PlotForecast], max_paths: int, window: float) -> list[PlotForecast]:
    """The latest forecast, then earlier ones spaced so that paths neither overlap nor crowd the window.

    Consecutive chosen origins are at least ``max(span, window / max_paths)`` apart, where ``span`` is the
    later forecast's own span, so each path is followed by a stretch of plain actuals.
    """
    chosen: list[PlotForecast] = []
    for fc in reversed(forecasts):
        if chosen:
            later = chosen[-1]
            gap = max(float(later.targets[-1] - later.timestamp), window / max(max_paths, 1))
            if later.timestamp - fc.timestamp < gap or fc.targets[-1] > later.timestamp:
                continue
        chosen.append(fc)
        if len(chosen) >= max_paths:
            break
    return chosen[::-1]


def plot_report(result: ReportResult, path: str | os.PathLike[str], *, max_paths: int = 4, dpi: int = 110) -> str:
    """Writes the two-panel report figure as a PNG (replacing ``path`` atomically).

    Panel 1: the plotted stream's last N readings (black), the 1-step-ahead forecasts placed at their
    target times (blue) and a few full H-step forecast paths, the latest one reaching past the last reading.
    Panel 2: MAE per horizon of the published forecasts and of persistence, pooled over all streams.

    Args:
        result: From :func:`read_report`.
        path: Output PNG.
        max_paths: At most this many full forecast paths.
        dpi: Resolution.

    Returns:
        The path written, as a string.
    """
    import matplotlib
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    step = result.step_seconds
    fig = Figure(figsize=(12, 8.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, height_ratios=[3, 2])
    fig.suptitle(
        f"rnncast report: {result.streams:,} stream{'s' if result.streams != 1 else ''} with forecasts "
        f"({result.reading_streams:,} with readings), {result.forecasts:,} forecasts, "
        f"{result.scored_points:,} scored points\n{_versions_text(result)}   "
        f"[{result.forecasts_topic} vs {result.readings_topic} @ {result.bootstrap}]",
        fontsize="medium",
    )

    # Panel 1: one stream, forecast vs actual.
    ts, vals, fcs = result.plot_timestamps, result.plot_values, result.plot_forecasts
    if ts.size:
        t_line, v_line = _with_breaks(ts, vals, step)
        ax1.plot(_dates(t_line), v_line, color="black", lw=1.4, label="actual", zorder=3)
        x_max = ts[-1]
        if fcs:
            one_t = np.array([fc.targets[0] for fc in fcs])
            one_v = np.array([fc.values[0] for fc in fcs])
            order = np.argsort(one_t, kind="stable")
            t1, v1 = _with_breaks(one_t[order], one_v[order], step)
            ax1.plot(_dates(t1), v1, color="tab:blue", lw=1.0, alpha=0.85, label="forecast, 1 step ahead", zorder=2)
            paths = _path_origins(fcs, max_paths, float(ts[-1] - ts[0]))
            colors = matplotlib.colormaps["autumn"](np.linspace(0.0, 0.8, max(len(paths), 1)))
            lookup = dict(zip(_keys(ts), vals))
            for i, fc in enumerate(paths):
                start = lookup.get(_key(fc.timestamp))
                pt = fc.targets if start is None else np.concatenate([[fc.timestamp], fc.targets])
                pv = fc.values if start is None else np.concatenate([[start], fc.values])
                label = f"forecast, full {fc.values.size}-step path" if i == 0 else None
                ax1.plot(_dates(pt), pv, color=colors[i], lw=1.8, label=label, zorder=4)
                ax1.plot(_dates(pt[:1]), pv[:1], "o", color=colors[i], ms=4, zorder=5)
                x_max = max(x_max, float(fc.targets[-1]))
            if x_max > ts[-1]:
                ax1.axvspan(
                    _dates(ts[-1:])[0],
                    _dates(np.array([x_max]))[0],
                    color="0.92",
                    zorder=0,
                    label="after the last reading",
                )
            one_err = [abs(fc.values[0] - lookup[_key(fc.targets[0])]) for fc in fcs if _key(fc.targets[0]) in lookup]
            err_txt = f", 1-step MAE here {_fmt(float(np.mean(one_err)))}" if one_err else ""
        else:
            err_txt = ", no forecasts in this window"
        ax1.set_title(
            f"stream {result.stream}: last {ts.size} readings, {_utc(ts[0])} to {_utc(ts[-1])} UTC"
            f" ({len(fcs)} forecasts{err_txt})",
            fontsize="medium",
        )
        locator = mdates.AutoDateLocator()
        ax1.xaxis.set_major_locator(locator)
        ax1.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax1.legend(loc="upper left", fontsize="small")
    else:
        ax1.set_title(f"stream {result.stream}: no readings" if result.stream else "no readings", fontsize="medium")
        ax1.text(0.5, 0.5, "nothing to plot", ha="center", va="center", transform=ax1.transAxes, color="0.4")
    ax1.set_xlabel("time (UTC)")
    ax1.set_ylabel("value")
    ax1.grid(True, alpha=0.3)

    # Panel 2: MAE per horizon, all streams.
    scored = result.counts > 0
    if np.any(scored):
        h = np.arange(1, result.horizon + 1)
        ax2.plot(h, result.mae, color="tab:blue", lw=2.0, marker=".", label="published forecasts")
        ax2.plot(
            h,
            result.persistence_mae,
            color="tab:gray",
            lw=1.4,
            ls="--",
            marker=".",
            label="persistence (value at the origin)",
        )
        ax2.set_xlim(0.5, result.horizon + 0.5)
        ax2.set_ylim(bottom=0)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ratio = result.mae_ratio_vs_persistence
        ax2.set_title(
            f"MAE per horizon, all streams ({result.scored_forecasts:,} forecasts scored against readings): "
            f"MAE / persistence = {_fmt(ratio, '.3f')}, {_verdict(ratio)}",
            fontsize="medium",
        )
        ax2.legend(loc="upper left", fontsize="small")
    else:
        ax2.set_title("MAE per horizon", fontsize="medium")
        ax2.text(
            0.5,
            0.5,
            "no forecast could be matched with readings yet",
            ha="center",
            va="center",
            transform=ax2.transAxes,
            color="0.4",
        )
    ax2.set_xlabel(f"horizon ({_step_label(step)})")
    ax2.set_ylabel("MAE")
    ax2.grid(True, alpha=0.3)

    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return os.fspath(path)


def _keys(seconds: np.ndarray) -> list[int]:
    return [_key(float(s)) for s in seconds]
