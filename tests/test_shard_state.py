"""ShardStore: a shard's streams in memory, mirrored into an append-only Beam bag, with Beam state the only truth.

Beam's state is modelled here by a small transactional fake (pure logic): writes of an element become
visible when its bundle commits, and a failed bundle's writes are discarded, as on every Beam runner.
The real runner is exercised by tests/test_forecast_dofn.py and the job's tests.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.shard_state import COMPACT_SLACK, ShardStore, decode_entry, encode_entry


class _Committed:
    """Beam state of one key as the runner holds it."""

    def __init__(self) -> None:
        self.bag: list[bytes] = []
        self.version: bytes | None = None


class _Bag:
    def __init__(self, committed: _Committed) -> None:
        self._committed = committed
        self._cleared = False
        self._added: list[bytes] = []
        self.reads = 0

    def read(self) -> list[bytes]:
        self.reads += 1
        return ([] if self._cleared else list(self._committed.bag)) + self._added

    def add(self, value: bytes) -> None:
        self._added.append(value)

    def clear(self) -> None:
        self._cleared, self._added = True, []

    def commit(self) -> None:
        if self._cleared:
            self._committed.bag = []
        self._committed.bag.extend(self._added)


class _Value:
    def __init__(self, committed: _Committed) -> None:
        self._committed = committed
        self._written: list[bytes] = []

    def read(self) -> bytes | None:
        return self._written[-1] if self._written else self._committed.version

    def write(self, value: bytes) -> None:
        self._written.append(value)

    def commit(self) -> None:
        if self._written:
            self._committed.version = self._written[-1]


def _element(store: ShardStore, committed: _Committed, changes: dict[str, bytes | None], commit: bool = True) -> _Bag:
    """One element of the shard: apply ``changes`` (None: delete), then commit or discard the bundle."""
    bag, version = _Bag(committed), _Value(committed)
    view = store.open("shard-0", bag, version)
    for stream_id, value in changes.items():
        if value is None:
            view.delete(stream_id)
        else:
            view.put(stream_id, value)
    store.close("shard-0", view, bag, version)
    if commit:
        bag.commit()
        version.commit()
    return bag


def _truth(committed: _Committed) -> dict[str, bytes]:
    """What a fresh worker rebuilds from the committed Beam state."""
    fresh = ShardStore(bytes, bytes)
    bag = _Bag(committed)
    return dict(fresh.open("shard-0", bag, _Value(committed)).states)


def _seen_by(store: ShardStore, committed: _Committed) -> dict[str, bytes]:
    """The streams a worker uses for its next element (an element that changes nothing)."""
    bag, version = _Bag(committed), _Value(committed)
    view = store.open("shard-0", bag, version)
    states = dict(view.states)
    store.close("shard-0", view, bag, version)
    return states


def test_entries_round_trip_and_deletions_have_no_value() -> None:
    assert decode_entry(encode_entry("vic#1", b"state")) == ("vic#1", b"state")
    assert decode_entry(encode_entry("vic#1", None)) == ("vic#1", None)
    assert decode_entry(encode_entry("\u00e9\U0001f600", b"\x00")) == ("\u00e9\U0001f600", b"\x00")


def test_changes_reach_beam_state_and_another_worker_sees_them() -> None:
    store, committed = ShardStore(bytes, bytes), _Committed()
    _element(store, committed, {"a": b"1", "b": b"1"})
    _element(store, committed, {"a": b"2", "c": b"1"})
    _element(store, committed, {"b": None})
    assert _truth(committed) == {"a": b"2", "c": b"1"}
    assert len(committed.bag) == 5  # appended, one entry per changed stream and element


def test_the_in_memory_streams_are_reused_only_while_the_token_matches() -> None:
    store, committed = ShardStore(bytes, bytes), _Committed()
    _element(store, committed, {"a": b"1"})
    assert _element(store, committed, {"a": b"2"}).reads == 0  # same worker, nothing else wrote: no read

    other = ShardStore(bytes, bytes)  # another worker writes the key
    _element(other, committed, {"a": b"3"})
    bag = _element(store, committed, {"b": b"1"})
    assert bag.reads == 1  # the token differs: rebuilt from Beam state
    assert _truth(committed) == {"a": b"3", "b": b"1"}


def test_a_failed_bundle_leaves_nothing_behind_in_memory() -> None:
    store, committed = ShardStore(bytes, bytes), _Committed()
    _element(store, committed, {"a": b"1"})
    _element(store, committed, {"a": b"2", "b": b"9"}, commit=False)  # closed, then the bundle failed
    assert _element(store, committed, {}).reads == 1
    assert _truth(committed) == {"a": b"1"}

    bag, version = _Bag(committed), _Value(committed)
    view = store.open("shard-0", bag, version)
    view.put("a", b"5")  # the element raised before close: never committed
    _element(store, committed, {"c": b"1"})
    assert _truth(committed) == {"a": b"1", "c": b"1"}


def test_the_bag_is_compacted_and_keeps_only_the_latest_states() -> None:
    store, committed = ShardStore(bytes, bytes), _Committed()
    rng = random.Random(5)
    expected: dict[str, bytes] = {}
    for i in range(400):
        changes: dict[str, bytes | None] = {}
        for _ in range(rng.randint(1, 30)):
            stream_id = f"s{rng.randint(0, 60)}"
            changes[stream_id] = None if rng.random() < 0.1 else str(i).encode()
        for stream_id, value in changes.items():
            if value is None:
                expected.pop(stream_id, None)
            else:
                expected[stream_id] = value
        _element(store, committed, changes)
        assert len(committed.bag) <= len(expected) + len(expected) // 4 + COMPACT_SLACK + 30
    assert _truth(committed) == expected


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from("abcdef"), st.none() | st.binary(min_size=1, max_size=4), max_size=4),
            st.booleans(),
            st.booleans(),
        ),
        max_size=25,
    )
)
def test_beam_state_always_equals_the_committed_changes(steps) -> None:
    """Any mix of elements, failed bundles and workers: Beam state holds exactly what committed."""
    stores = [ShardStore(bytes, bytes), ShardStore(bytes, bytes)]
    committed, expected = _Committed(), {}
    for changes, commit, second_worker in steps:
        store = stores[int(second_worker)]
        before = _truth(committed)
        _element(store, committed, changes, commit)
        if commit:
            for stream_id, value in changes.items():
                if value is None:
                    before.pop(stream_id, None)
                else:
                    before[stream_id] = value
            expected = before
        assert _truth(committed) == expected
        assert _seen_by(stores[0], committed) == _seen_by(stores[1], committed) == expected
