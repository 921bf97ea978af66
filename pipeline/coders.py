"""Beam coders for the job's state: explicit byte formats, never pickle.

* :class:`StreamStateCoder` — a stream's :class:`~models.state.StreamState`, in the engine's own
  versioned format (:func:`models.state.encode_state`); the same bytes go to the changelog topic.
* :class:`OffsetLedgerCoder` — the per-partition commit ledger of :mod:`pipeline.kafka_sink`.
"""

from __future__ import annotations

import struct
from typing import Any

from apache_beam.coders import Coder

from models.state import StreamState, decode_state, encode_state

__all__ = ["OffsetLedgerCoder", "StreamStateCoder"]


class StreamStateCoder(Coder):
    """Encodes a :class:`StreamState` with :func:`encode_state` (struct header + raw float64)."""

    def encode(self, value: StreamState) -> bytes:
        return encode_state(value)

    def decode(self, encoded: bytes) -> StreamState:
        return decode_state(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return StreamState

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


_LEDGER_HEADER = struct.Struct("<qI")
_INTERVAL = struct.Struct("<qq")


class OffsetLedgerCoder(Coder):
    """Encodes ``(committed_position, ((start, end), ...))``: int64 position, uint32 count, int64 pairs."""

    def encode(self, value: Any) -> bytes:
        committed, intervals = value
        parts = [_LEDGER_HEADER.pack(committed, len(intervals))]
        parts.extend(_INTERVAL.pack(start, end) for start, end in intervals)
        return b"".join(parts)

    def decode(self, encoded: bytes) -> tuple[int, tuple[tuple[int, int], ...]]:
        committed, count = _LEDGER_HEADER.unpack_from(encoded)
        intervals = tuple(
            _INTERVAL.unpack_from(encoded, _LEDGER_HEADER.size + i * _INTERVAL.size) for i in range(count)
        )
        return committed, intervals

    def is_deterministic(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))
