import dataclasses
import struct

import numpy as np
import pytest

from models.state import STATE_FORMAT_VERSION, StateDecodeError, StreamState, decode_state, encode_state


def sample_state():
    return StreamState(
        readings_seen=123,
        last_timestamp=1.5e9,
        value_mean=4.2,
        value_scale=0.7,
        ring=np.linspace(0, 1, 48),
        ring_fill=48,
        cell_state=np.arange(128, dtype=float) / 7.0,
        one_step_forecast=4.4,
        source_partition=3,
        source_offset=98765,
    )


def test_round_trip_is_exact():
    state = sample_state()
    data = encode_state(state)
    back = decode_state(data)
    assert back == state
    assert back.source_partition == 3 and back.source_offset == 98765
    np.testing.assert_array_equal(back.cell_state, state.cell_state)
    assert encode_state(back) == data


def test_default_lstm_state_fits_in_two_kilobytes():
    assert len(encode_state(sample_state())) <= 2048


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:10], "shorter than"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + (STATE_FORMAT_VERSION + 1).to_bytes(2, "little") + b[6:], "not supported"),
        (lambda b: b + b"\0" * 8, "unknown part"),
        (lambda b: b + b"ACI1", "stray bytes"),
        (lambda b: b + b"ACI1\x02\0\0\0" + b"\0" * 8, "needs 16 bytes"),
    ],
)
def test_corrupt_bytes_are_refused(mutate, message):
    with pytest.raises(StateDecodeError, match=message):
        decode_state(mutate(encode_state(sample_state())))


def test_the_model_key_round_trips_and_format_1_states_still_decode():
    import struct

    state = sample_state().with_source(3, 98765, model_key=0xDEADBEEF12345678)
    assert decode_state(encode_state(state)).model_key == 0xDEADBEEF12345678
    # A state written before the key existed (format 1: the same header without it).
    old = sample_state()
    header = struct.Struct("<4sHqddddHHIqq").pack(
        b"RNCS",
        1,
        old.readings_seen,
        old.last_timestamp,
        old.value_mean,
        old.value_scale,
        old.one_step_forecast,
        old.ring.size,
        old.ring_fill,
        old.cell_state.size,
        old.source_partition,
        old.source_offset,
    )
    back = decode_state(header + old.ring.astype("<f8").tobytes() + old.cell_state.astype("<f8").tobytes())
    # Formats 1 and 2 held the last S values in original units: they decode as the seasonal-naive
    # smoothing's components (scaled), level 0, which the engine continues exactly as before.
    converted = dataclasses.replace(old, ring=(old.ring - old.value_mean) / old.value_scale)
    assert back == converted and back.model_key == 0 and back.level == 0.0


def _format_2_bytes(state) -> bytes:
    header = struct.Struct("<4sHqddddHHIqqQ").pack(
        b"RNCS",
        2,
        state.readings_seen,
        state.last_timestamp,
        state.value_mean,
        state.value_scale,
        state.one_step_forecast,
        state.ring.size,
        state.ring_fill,
        state.cell_state.size,
        state.source_partition,
        state.source_offset,
        state.model_key,
    )
    return header + state.ring.astype("<f8").tobytes() + state.cell_state.astype("<f8").tobytes()


def test_format_2_states_decode_with_their_key_and_a_level_of_zero():
    old = sample_state().with_source(3, 98765, model_key=77)
    back = decode_state(_format_2_bytes(old))
    np.testing.assert_array_equal(back.ring, (old.ring - old.value_mean) / old.value_scale)
    assert back.model_key == 77 and back.level == 0.0
    # A format-2 state still warming up holds raw readings, which stay as they are.
    warming = dataclasses.replace(old, ring_fill=10, value_mean=float("nan"), value_scale=float("nan"))
    np.testing.assert_array_equal(decode_state(_format_2_bytes(warming)).ring, warming.ring)


def test_the_level_round_trips_and_unknown_formats_are_refused():
    state = dataclasses.replace(sample_state(), level=-0.125)
    assert decode_state(encode_state(state)).level == -0.125
    data = bytearray(encode_state(state))
    data[4:6] = struct.pack("<H", STATE_FORMAT_VERSION + 1)
    with pytest.raises(StateDecodeError, match=f"format {STATE_FORMAT_VERSION + 1} is not supported"):
        decode_state(bytes(data))


def test_with_source_equals_dataclasses_replace() -> None:
    import dataclasses

    state = sample_state()
    assert state.with_source(3, 98765) == dataclasses.replace(state, source_partition=3, source_offset=98765)
    stamped = state.with_source(2, 7, model_key=42)
    assert stamped == dataclasses.replace(state, source_partition=2, source_offset=7, model_key=42)
    assert (stamped.source_partition, stamped.source_offset, stamped.model_key) == (2, 7, 42)
    assert (
        state.source_offset != 7 and stamped.ring is state.ring
    )  # a new value; the arrays are shared, as replace does
    with pytest.raises(dataclasses.FrozenInstanceError):
        stamped.source_offset = 8  # type: ignore[misc]


def test_the_interval_part_round_trips_exactly_and_format_2_states_still_decode():
    import struct

    state = StreamState(**{**sample_state().__dict__, "interval_state": np.array([0.125, -1.0 / 3.0])})
    data = encode_state(state)
    back = decode_state(data)
    np.testing.assert_array_equal(back.interval_state, state.interval_state)
    assert back == state and encode_state(back) == data
    assert len(data) == len(encode_state(sample_state())) + 8 + 16  # tag, count, two float64
    # A state written before intervals existed (format 2: the same header, nothing after the cell state).
    old = sample_state()
    header = struct.Struct("<4sHqddddHHIqqQ").pack(
        b"RNCS",
        2,
        old.readings_seen,
        old.last_timestamp,
        old.value_mean,
        old.value_scale,
        old.one_step_forecast,
        old.ring.size,
        old.ring_fill,
        old.cell_state.size,
        old.source_partition,
        old.source_offset,
        7,
    )
    back = decode_state(header + old.ring.astype("<f8").tobytes() + old.cell_state.astype("<f8").tobytes())
    assert back.model_key == 7 and back.interval_state.size == 0
    with pytest.raises(StateDecodeError, match="header says"):
        decode_state(header + old.ring.astype("<f8").tobytes() + old.cell_state.astype("<f8").tobytes() + b"ACI1")


def test_an_interval_part_may_not_repeat():
    state = StreamState(**{**sample_state().__dict__, "interval_state": np.array([0.5])})
    data = encode_state(state)
    with pytest.raises(StateDecodeError, match="twice"):
        decode_state(data + data[-16:])


def test_format_4_carries_the_level_and_the_interval_part_together():
    state = StreamState(**{**sample_state().__dict__, "level": -0.375, "interval_state": np.array([0.25, np.nan, 1.5])})
    data = encode_state(state)
    assert struct.unpack_from("<H", data, 4)[0] == STATE_FORMAT_VERSION == 4
    back = decode_state(data)
    assert back.level == -0.375 and back == state and encode_state(back) == data
    np.testing.assert_array_equal(back.interval_state, state.interval_state)
    assert len(data) == len(encode_state(dataclasses.replace(state, interval_state=np.zeros(0)))) + 8 + 3 * 8


def test_the_unreleased_format_3_layouts_are_refused():
    """Both development layouts numbered 3 (level in the header; ACI1 part after a format-2 header)."""
    state = StreamState(**{**sample_state().__dict__, "interval_state": np.array([0.5])})
    with_level = bytearray(encode_state(dataclasses.replace(state, interval_state=np.zeros(0))))
    with_level[4:6] = struct.pack("<H", 3)
    with_part = bytearray(_format_2_bytes(state) + b"ACI1" + struct.pack("<I", 1) + struct.pack("<d", 0.5))
    with_part[4:6] = struct.pack("<H", 3)
    for data in (with_level, with_part):
        with pytest.raises(StateDecodeError, match="format 3 is not supported.*unreleased"):
            decode_state(bytes(data))
