"""Beam coders for the job's state and shuffle: explicit byte formats, never pickle.

(Stream states are bytes in Beam state already: :mod:`pipeline.shard_state` entries holding
:func:`models.state.encode_state`, the same bytes the changelog gets.)

* :class:`OffsetLedgerCoder` — the per-partition commit ledger of :mod:`pipeline.kafka_sink`.
* :class:`InboundCoder` — the :class:`~pipeline.messages.Inbound` records that cross the shuffle into the
  stateful step (Beam's default would pickle them: slower, and not a format anyone can read).
"""

from __future__ import annotations

import struct
from typing import Any

from apache_beam.coders import Coder

from models.reading import Reading
from pipeline.messages import Inbound

__all__ = ["InboundCoder", "OffsetLedgerCoder"]


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


_INBOUND_HEADER = struct.Struct("<qqqqB")  # partition, offset, position, timestamp_ms, which fields follow
_READING = struct.Struct("<ddH")  # timestamp, value, number of covariates
_LENGTH = struct.Struct("<I")
_FLOAT = struct.Struct("<d")
_HAS_READING, _HAS_RAW, _HAS_KEY, _HAS_DEAD_LETTER, _HAS_REASON, _HAS_IDLE_BEFORE, _COMMIT = (1 << i for i in range(7))


class InboundCoder(Coder):
    """Encodes an :class:`Inbound`: a fixed header, then each present field (lengths as uint32, floats as float64).

    Stream ids, reasons and the rest round-trip exactly (strings as UTF-8 with ``surrogatepass``, so
    even ids that decoding rejects would survive; floats bit for bit).
    """

    def encode(self, value: Inbound) -> bytes:
        flags = 0
        parts = [b""]
        reading = value.reading
        if reading is not None:
            flags |= _HAS_READING
            stream_id = reading.stream_id.encode("utf-8", "surrogatepass")
            covariates = reading.covariates
            parts += (_LENGTH.pack(len(stream_id)), stream_id, _READING.pack(reading.timestamp, reading.value, len(covariates)))
            if covariates:
                parts.append(struct.pack(f"<{len(covariates)}d", *covariates))
        for flag, field in ((_HAS_RAW, value.raw), (_HAS_KEY, value.key), (_HAS_DEAD_LETTER, value.dead_letter)):
            if field is not None:
                flags |= flag
                parts += (_LENGTH.pack(len(field)), field)
        if value.reason is not None:
            flags |= _HAS_REASON
            reason = value.reason.encode("utf-8")
            parts += (_LENGTH.pack(len(reason)), reason)
        if value.idle_before is not None:
            flags |= _HAS_IDLE_BEFORE
            parts.append(_FLOAT.pack(value.idle_before))
        if value.commit:
            flags |= _COMMIT
        parts[0] = _INBOUND_HEADER.pack(value.partition, value.offset, value.position, value.timestamp_ms, flags)
        return b"".join(parts)

    def decode(self, encoded: bytes) -> Inbound:
        partition, offset, position, timestamp_ms, flags = _INBOUND_HEADER.unpack_from(encoded)
        at = _INBOUND_HEADER.size
        reading = None
        if flags & _HAS_READING:
            (length,) = _LENGTH.unpack_from(encoded, at)
            at += _LENGTH.size
            stream_id = encoded[at : at + length].decode("utf-8", "surrogatepass")
            at += length
            timestamp, reading_value, count = _READING.unpack_from(encoded, at)
            at += _READING.size
            covariates = struct.unpack_from(f"<{count}d", encoded, at) if count else ()
            at += 8 * count
            reading = Reading(stream_id, timestamp, reading_value, covariates)
        fields: list[bytes | None] = []
        for flag in (_HAS_RAW, _HAS_KEY, _HAS_DEAD_LETTER, _HAS_REASON):
            if flags & flag:
                (length,) = _LENGTH.unpack_from(encoded, at)
                at += _LENGTH.size
                fields.append(encoded[at : at + length])
                at += length
            else:
                fields.append(None)
        raw, key, dead_letter, reason = fields
        idle_before = _FLOAT.unpack_from(encoded, at)[0] if flags & _HAS_IDLE_BEFORE else None
        return Inbound(
            partition, offset, position, timestamp_ms, reading, raw, key, dead_letter,
            None if reason is None else reason.decode("utf-8"), idle_before, bool(flags & _COMMIT),
        )

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return Inbound

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))
