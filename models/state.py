"""A stream's serving state as an explicit, versioned value with an explicit byte coding (no pickle).

Layout of the encoding (little endian): a fixed header (magic, format version, counters, the
per-stream scaler, array lengths, the source position of the last applied reading), then the
seasonal ring buffer and the recurrent state as raw float64.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import numpy as np

STATE_MAGIC = b"RNCS"
STATE_FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHqddddHHIqq")


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
        ring: the last S values in original units, oldest first (S = season).
        ring_fill: how many entries of ``ring`` are real (< S only while warming up).
        cell_state: all recurrent state vectors of all layers, flattened (zeros while warming up).
        one_step_forecast: the forecast for the next step made at the last reading (original
            units, NaN while warming up); a missing next reading is imputed with it.
        source_partition: Kafka partition of the last applied reading (-1 if none).
        source_offset: Kafka offset of the last applied reading (-1 if none).
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

    @property
    def warming_up(self) -> bool:
        return self.ring_fill < len(self.ring)

    def with_source(self, partition: int, offset: int) -> "StreamState":
        return replace(self, source_partition=partition, source_offset=offset)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StreamState) and encode_state(self) == encode_state(other)

    __hash__ = None  # type: ignore[assignment]


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
    )
    return header + ring.tobytes() + cell.tobytes()


def decode_state(data: bytes) -> StreamState:
    if len(data) < _HEADER.size:
        raise StateDecodeError(f"state is {len(data)} bytes, shorter than its {_HEADER.size}-byte header")
    (magic, version, seen, last_ts, mean, scale, one_step, ring_len, fill, cell_len, partition, offset) = _HEADER.unpack_from(data)
    if magic != STATE_MAGIC:
        raise StateDecodeError("not an rnncast stream state (bad magic)")
    if version != STATE_FORMAT_VERSION:
        raise StateDecodeError(f"stream state format {version} is not supported (expected {STATE_FORMAT_VERSION})")
    expected = _HEADER.size + 8 * (ring_len + cell_len)
    if len(data) != expected:
        raise StateDecodeError(f"stream state is {len(data)} bytes, header says {expected}")
    ring_end = _HEADER.size + 8 * ring_len
    return StreamState(
        readings_seen=seen,
        last_timestamp=last_ts,
        value_mean=mean,
        value_scale=scale,
        ring=np.frombuffer(data, dtype="<f8", count=ring_len, offset=_HEADER.size).astype(np.float64),
        ring_fill=fill,
        cell_state=np.frombuffer(data, dtype="<f8", count=cell_len, offset=ring_end).astype(np.float64),
        one_step_forecast=one_step,
        source_partition=partition,
        source_offset=offset,
    )
