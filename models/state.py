"""A stream's serving state as an explicit, versioned value with an explicit byte coding (no pickle).

Layout of the encoding (little endian): a fixed header (magic, format version, counters, the
per-stream scaler, array lengths, the source position of the last applied reading, the key of the
model that produced the state), then the seasonal ring buffer and the recurrent state as raw float64.

Format 2 added ``model_key``; format 1 states (no key) still decode, with ``model_key = 0`` (unknown).
Format 4 added the smoothed ``level`` to the header, keeps the ring as the smoothing's seasonal
components in scaled units (:mod:`models.smoothing`) and appends *parts* after the recurrent state:
each a 4-byte tag, a uint32 count and that many float64. The one part so far is ``ACI1``, the
stream's interval adaptation (:mod:`models.intervals`); a state without it (formats 1 and 2, or a
model without intervals) decodes with none. Formats 1 and 2 held the last S values in original
units, which decode as the components of the seasonal-naive smoothing those models used (level 0).
Format 3 was never released (two development branches used the number for different layouts, the
level alone or the parts alone) and is refused rather than guessed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

STATE_MAGIC = b"RNCS"
STATE_FORMAT_VERSION = 4
_HEADER = struct.Struct("<4sHqddddHHIqqQd")
_HEADER_V2 = struct.Struct("<4sHqddddHHIqqQ")
_PART = struct.Struct("<4sI")
INTERVAL_PART = b"ACI1"
_KNOWN_PARTS = frozenset({INTERVAL_PART})
NO_INTERVALS = np.zeros(0)
NO_INTERVALS.setflags(write=False)
_HEADER_V1 = struct.Struct("<4sHqddddHHIqq")
UNKNOWN_MODEL = 0
_new_instance = object.__new__


class StateDecodeError(ValueError):
    """Bytes that are not a stream state this version can read."""


@dataclass(frozen=True)
class StreamState:
    """Everything the engine remembers about one stream.

    Attributes:
        readings_seen: real readings applied since the stream (re)started, warm-up included.
        last_timestamp: event time of the last applied reading (epoch seconds).
        value_mean: per-stream value scaler, NaN while warming up.
        value_scale: per-stream value scaler, NaN while warming up.
        ring: while warming up, the first readings in original units (at the end, oldest first);
            then the smoothing's seasonal components of every cycle in scaled units, each cycle's
            oldest first (S = the season: the last S values, scaled).
        ring_fill: readings held while warming up; ``len(ring)`` once warmed up.
        cell_state: all recurrent state vectors of all layers, flattened (zeros while warming up).
        one_step_forecast: the forecast for the next step made at the last reading (original
            units, NaN while warming up); a missing next reading is imputed with it.
        source_partition: Kafka partition of the last applied reading (-1 if none).
        source_offset: Kafka offset of the last applied reading (-1 if none).
        model_key: compatibility key (64 bits) of the model that produced ``cell_state``, so that a
            state is only ever continued by a model that can read it (0: unknown, e.g. a format-1
            state or a state built outside the job). See ``pipeline.model_watch.compatibility_key``.
        level: the smoothed level in scaled units (0 while warming up, and for seasonal-naive models).
        interval_state: the stream's interval adaptation, log-scales and pending anchor forecasts
            (empty: no intervals; see :mod:`models.intervals`).
    """

    readings_seen: int
    last_timestamp: float
    value_mean: float
    value_scale: float
    ring: np.ndarray
    ring_fill: int
    cell_state: np.ndarray
    one_step_forecast: float = float("nan")
    source_partition: int = -1
    source_offset: int = -1
    model_key: int = UNKNOWN_MODEL
    level: float = 0.0
    interval_state: np.ndarray = field(default_factory=lambda: NO_INTERVALS)

    @property
    def warming_up(self) -> bool:
        return self.ring_fill < len(self.ring)

    def with_source(self, partition: int, offset: int, model_key: int | None = None) -> StreamState:
        """This state with the source position of its last reading (and the model's key, if given).

        Equal to ``dataclasses.replace``; copies the fields' dict instead (the job calls this once per
        reading, and ``replace`` re-runs the generated ``__init__``: ~2 µs).
        """
        state = _new_instance(StreamState)
        fields = state.__dict__
        fields.update(self.__dict__)
        fields["source_partition"] = partition
        fields["source_offset"] = offset
        if model_key is not None:
            fields["model_key"] = model_key
        return state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StreamState) and encode_state(self) == encode_state(other)

    __hash__ = None  # type: ignore[assignment]


def serving_state(
    readings_seen: int,
    last_timestamp: float,
    value_mean: float,
    value_scale: float,
    ring: np.ndarray,
    ring_fill: int,
    cell_state: np.ndarray,
    one_step_forecast: float,
    level: float = 0.0,
    interval_state: np.ndarray = NO_INTERVALS,
) -> StreamState:
    """``StreamState(...)`` as the engine builds it once per reading (source and model key at their defaults).

    Equal to the keyword constructor, field for field; it fills the instance's ``__dict__`` directly
    instead of going through the frozen dataclass's ``object.__setattr__`` once per field, which costs
    about 1 µs per reading. The instance is as immutable as any other afterwards.
    """
    state = _new_instance(StreamState)
    fields = state.__dict__
    fields["readings_seen"] = readings_seen
    fields["last_timestamp"] = last_timestamp
    fields["value_mean"] = value_mean
    fields["value_scale"] = value_scale
    fields["ring"] = ring
    fields["ring_fill"] = ring_fill
    fields["cell_state"] = cell_state
    fields["one_step_forecast"] = one_step_forecast
    fields["source_partition"] = -1
    fields["source_offset"] = -1
    fields["model_key"] = UNKNOWN_MODEL
    fields["level"] = level
    fields["interval_state"] = interval_state
    return state


def encode_state(state: StreamState) -> bytes:
    ring = np.ascontiguousarray(state.ring, dtype="<f8")
    cell = np.ascontiguousarray(state.cell_state, dtype="<f8")
    header = _HEADER.pack(
        STATE_MAGIC,
        STATE_FORMAT_VERSION,
        state.readings_seen,
        state.last_timestamp,
        state.value_mean,
        state.value_scale,
        state.one_step_forecast,
        ring.size,
        state.ring_fill,
        cell.size,
        state.source_partition,
        state.source_offset,
        state.model_key,
        state.level,
    )
    parts = b""
    if len(state.interval_state):
        scales = np.ascontiguousarray(state.interval_state, dtype="<f8")
        parts = _PART.pack(INTERVAL_PART, scales.size) + scales.tobytes()
    return header + ring.tobytes() + cell.tobytes() + parts


def decode_state(data: bytes) -> StreamState:
    if len(data) < 6:
        raise StateDecodeError(f"state is {len(data)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, version = struct.unpack_from("<4sH", data)
    if magic != STATE_MAGIC:
        raise StateDecodeError("not an rnncast stream state (bad magic)")
    if version not in (1, 2, STATE_FORMAT_VERSION):
        raise StateDecodeError(
            f"stream state format {version} is not supported (expected 1, 2 or {STATE_FORMAT_VERSION};"
            " format 3 was an unreleased development format)"
        )
    header = {1: _HEADER_V1, 2: _HEADER_V2, STATE_FORMAT_VERSION: _HEADER}[version]
    if len(data) < header.size:
        raise StateDecodeError(f"state is {len(data)} bytes, shorter than its {header.size}-byte header")
    fields = header.unpack_from(data)
    (_, _, seen, last_ts, mean, scale, one_step, ring_len, fill, cell_len, partition, offset) = fields[:12]
    model_key = fields[12] if version >= 2 else UNKNOWN_MODEL
    level = fields[13] if version >= 4 else 0.0
    expected = header.size + 8 * (ring_len + cell_len)
    ring_end = header.size + 8 * ring_len
    interval_state = NO_INTERVALS
    if version >= 4:
        parts = _decode_parts(data, expected)
        if INTERVAL_PART in parts:
            interval_state = parts[INTERVAL_PART]
    elif len(data) != expected:
        raise StateDecodeError(f"stream state is {len(data)} bytes, header says {expected}")
    ring = np.frombuffer(data, dtype="<f8", count=ring_len, offset=header.size).astype(np.float64)
    if version < 4 and fill >= ring_len and ring_len:
        ring = (ring - mean) / scale  # the last S values -> the seasonal-naive smoothing's components
    return StreamState(
        readings_seen=seen,
        last_timestamp=last_ts,
        value_mean=mean,
        value_scale=scale,
        ring=ring,
        ring_fill=fill,
        cell_state=np.frombuffer(data, dtype="<f8", count=cell_len, offset=ring_end).astype(np.float64),
        one_step_forecast=one_step,
        source_partition=partition,
        source_offset=offset,
        model_key=model_key,
        level=level,
        interval_state=interval_state,
    )


def _decode_parts(data: bytes, offset: int) -> dict[bytes, np.ndarray]:
    """The tagged float64 parts from ``offset`` to the end (a part's tag may appear once)."""
    parts: dict[bytes, np.ndarray] = {}
    while offset < len(data):
        if len(data) - offset < _PART.size:
            raise StateDecodeError(f"stream state has {len(data) - offset} stray bytes after its parts")
        tag, count = _PART.unpack_from(data, offset)
        if tag not in _KNOWN_PARTS:
            raise StateDecodeError(f"stream state has an unknown part {tag!r} at byte {offset}")
        offset += _PART.size
        if len(data) - offset < 8 * count:
            raise StateDecodeError(f"stream state part {tag!r} needs {8 * count} bytes, {len(data) - offset} left")
        if tag in parts:
            raise StateDecodeError(f"stream state part {tag!r} appears twice")
        parts[tag] = np.frombuffer(data, dtype="<f8", count=count, offset=offset).astype(np.float64)
        offset += 8 * count
    if offset != len(data):
        raise StateDecodeError(f"stream state is {len(data)} bytes, its parts end at {offset}")
    return parts
