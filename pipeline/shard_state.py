"""The streams of one state shard: a dict in memory, mirrored into Beam state as an append-only bag.

The stateful step is keyed by state shard (:func:`~pipeline.messages.state_shard`), so one Beam
element carries many readings of many streams and Beam's per-element and per-key costs are paid per
batch, not per reading. Beam's state of a shard then holds many streams; rewriting all of them after
every element would cost O(streams in the shard), so a shard lives in two Beam states:

* ``entries``, a bag of ``(stream id, encoded value)`` entries. After each element, one entry per stream
  the element changed is appended (an empty value deletes the stream); a stream's latest entry wins.
  When the bag holds more than 1.25 times as many entries as live streams (plus :data:`COMPACT_SLACK`),
  it is rewritten with each stream's latest entry, from the entries' bytes (nothing is re-encoded):
  Beam state then holds at most ~1.25 encoded states per stream, and each appended entry costs about
  five entry copies more, amortised.
* ``version``, a random token written with every change. The DoFn instance keeps the decoded streams
  with the token it wrote last; an element that finds another token (another worker has written the
  key since, or a failed bundle's writes were discarded) rebuilds them from the bag. So Beam state is
  the only truth, and the in-memory dict is a cache of it that is checked once per element.

Values are encoded by the caller's function (for the forecaster, :func:`models.state.encode_state`:
the very bytes the changelog gets), never pickled.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import apache_beam as beam
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

__all__ = ["COMPACT_SLACK", "ShardStore", "ShardView", "decode_entry", "encode_entry", "entries_spec", "version_spec"]

V = TypeVar("V")

COMPACT_SLACK = 256
_ID_LENGTH = struct.Struct("<H")


def entries_spec(name: str) -> BagStateSpec:
    return BagStateSpec(f"{name}_entries", beam.coders.BytesCoder())


def version_spec(name: str) -> ReadModifyWriteStateSpec:
    return ReadModifyWriteStateSpec(f"{name}_version", beam.coders.BytesCoder())


def _compact(entries: Any, added: list[bytes]) -> int:
    """Rewrites the bag with each stream's latest entry (the stored ones, then ``added``); returns its length.

    Works on the entries' bytes: nothing is decoded or re-encoded.
    """
    latest: dict[bytes, bytes] = {}
    for entry in (*entries.read(), *added):
        latest[_entry_id(entry)] = entry
    entries.clear()
    count = 0
    for entry in latest.values():
        if len(entry) > _ID_LENGTH.size + _ID_LENGTH.unpack_from(entry)[0]:  # deletions are dropped
            entries.add(entry)
            count += 1
    return count


def _entry_id(entry: bytes) -> bytes:
    (length,) = _ID_LENGTH.unpack_from(entry)
    return entry[: _ID_LENGTH.size + length]


def encode_entry(stream_id: str, value: bytes | None) -> bytes:
    """``uint16 id length, UTF-8 id, value`` (no value: the stream was deleted)."""
    sid = stream_id.encode("utf-8", "surrogatepass")
    return _ID_LENGTH.pack(len(sid)) + sid + (value or b"")


def decode_entry(entry: bytes) -> tuple[str, bytes | None]:
    (length,) = _ID_LENGTH.unpack_from(entry)
    end = _ID_LENGTH.size + length
    return entry[_ID_LENGTH.size : end].decode("utf-8", "surrogatepass"), entry[end:] or None


class ShardView(Generic[V]):
    """One shard's streams while one element is processed: reads, writes and deletes, with what changed."""

    __slots__ = ("states", "changed", "entry_count", "token")

    def __init__(self, states: dict[str, V], entry_count: int, token: bytes | None) -> None:
        self.states = states
        self.changed: dict[str, V | None] = {}
        self.entry_count = entry_count
        self.token = token  # the version Beam state held when the view was opened

    def get(self, stream_id: str) -> V | None:
        return self.states.get(stream_id)

    def put(self, stream_id: str, value: V) -> None:
        self.states[stream_id] = value
        self.changed[stream_id] = value

    def delete(self, stream_id: str) -> None:
        if self.states.pop(stream_id, None) is not None:
            self.changed[stream_id] = None


class ShardStore(Generic[V]):
    """The shards a DoFn instance has seen: ``open`` before an element, ``close`` after it.

    A view that was opened and not closed (the element failed) is never reused: the next element
    rebuilds the shard from Beam state.

    Args:
        encode: Value -> bytes (never empty).
        decode: Bytes -> value.
    """

    def __init__(self, encode: Callable[[V], bytes], decode: Callable[[bytes], V]) -> None:
        self._encode = encode
        self._decode = decode
        self._closed: dict[str, ShardView[V]] = {}  # shard -> its streams as of the token they carry

    def open(self, shard: str, entries: Any, version: Any) -> ShardView[V]:
        """The shard's streams as Beam state holds them (from memory when the token matches)."""
        token = version.read()
        held = self._closed.pop(shard, None)
        if token is None:
            return ShardView({}, 0, None)
        if held is not None and held.token == token:
            held.changed = {}
            return held
        return self._rebuild(entries.read(), token)

    def close(self, shard: str, view: ShardView[V], entries: Any, version: Any) -> dict[str, bytes | None]:
        """Writes the element's changes to Beam state; returns them encoded (None: deleted)."""
        encoded = {sid: (None if value is None else self._encode(value)) for sid, value in view.changed.items()}
        view.changed = {}
        if encoded:
            added = [encode_entry(sid, data) for sid, data in encoded.items()]
            live = len(view.states)
            if view.entry_count + len(added) > live + live // 4 + COMPACT_SLACK:
                view.entry_count = _compact(entries, added)
            else:
                for entry in added:
                    entries.add(entry)
                view.entry_count += len(added)
            view.token = os.urandom(16)
            version.write(view.token)
        if view.token is not None:
            self._closed[shard] = view
        return encoded

    def _rebuild(self, stored: Iterable[bytes], token: bytes) -> ShardView[V]:
        latest: dict[str, bytes | None] = {}
        count = 0
        for entry in stored:
            sid, data = decode_entry(entry)
            latest[sid] = data
            count += 1
        states = {sid: self._decode(data) for sid, data in latest.items() if data is not None}
        return ShardView(states, count, token)
