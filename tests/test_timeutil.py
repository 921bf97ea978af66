"""Tests for models.timeutil."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.timeutil import format_timestamp, parse_timestamp

T0 = 1388536200.0  # 2014-01-01T00:30:00Z


@pytest.mark.parametrize(
    "text",
    [
        "2014-01-01T00:30:00Z",
        "2014-01-01t00:30:00z",
        "2014-01-01 00:30:00Z",
        "2014-01-01T00:30:00+00:00",
        "2014-01-01T00:30:00-00:00",
        "2014-01-01T10:30:00+10:00",
        "2013-12-31T19:00:00-05:30",
        "  2014-01-01T00:30:00Z\n",
        "1388536200",
        "1388536200.0",
        "1.3885362e9",
    ],
)
def test_parse_equivalent_forms(text: str) -> None:
    assert parse_timestamp(text) == T0


@pytest.mark.parametrize("number", [T0, int(T0), np.float64(T0), np.int64(int(T0))])
def test_parse_numbers(number: object) -> None:
    value = parse_timestamp(number)
    assert value == T0 and type(value) is float


def test_parse_fractional_seconds() -> None:
    assert parse_timestamp("2014-01-01T00:30:00.25Z") == T0 + 0.25
    assert parse_timestamp("2014-01-01T10:30:00.000001+10:00") == pytest.approx(T0 + 1e-6, abs=1e-7)
    assert parse_timestamp("2014-01-01T00:30:00.123456789Z") == pytest.approx(T0 + 0.123456789, abs=1e-6)


def test_parse_before_epoch() -> None:
    assert parse_timestamp("1969-12-31T23:59:59.5Z") == -0.5
    assert parse_timestamp("-0.5") == -0.5


def test_missing_offset_is_rejected_with_clear_message() -> None:
    with pytest.raises(ValueError, match="has no UTC offset"):
        parse_timestamp("2014-01-01T00:30:00")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty timestamp"),
        ("   ", "empty timestamp"),
        ("yesterday", "expected RFC 3339"),
        ("2014-01-01", "expected RFC 3339"),
        ("2014-01-01T00:30Z", "expected RFC 3339"),
        ("2014-01-01T00:30:00+1000", "expected RFC 3339"),
        ("2014-01-01T00:30:00+10", "expected RFC 3339"),
        ("2014-W01-1T00:30:00Z", "expected RFC 3339"),
        ("20140101T003000Z", "expected RFC 3339"),
        ("2014-02-30T00:00:00Z", "invalid date"),
        ("2014-13-01T00:00:00Z", "invalid date"),
        ("2014-01-01T24:00:00Z", "invalid time of day"),
        ("2016-12-31T23:59:60Z", "leap seconds"),
        ("2014-01-01T00:30:00+24:00", "invalid UTC offset"),
        ("nan", "expected RFC 3339"),
        ("inf", "expected RFC 3339"),
        ("1e999", "must be finite"),
        ("1_388_536_200", "expected RFC 3339"),
        ("\u0661\u0662", "expected RFC 3339"),
        (float("nan"), "must be finite"),
        (float("inf"), "must be finite"),
        (-float("inf"), "must be finite"),
        (True, "of type bool"),
        (None, "of type NoneType"),
        (b"1388536200", "of type bytes"),
    ],
)
def test_parse_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_timestamp(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (T0, "2014-01-01T00:30:00Z"),
        (int(T0), "2014-01-01T00:30:00Z"),
        (0, "1970-01-01T00:00:00Z"),
        (T0 + 0.5, "2014-01-01T00:30:00.5Z"),
        (T0 + 0.000001, "2014-01-01T00:30:00.000001Z"),
        (T0 + 0.9999999, "2014-01-01T00:30:01Z"),  # rounds to the microsecond
        (-0.25, "1969-12-31T23:59:59.75Z"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_timestamp(seconds) == text


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e20, "0", None, True])
def test_format_errors(bad: object) -> None:
    with pytest.raises(ValueError):
        format_timestamp(bad)  # type: ignore[arg-type]


WHOLE_SECONDS = st.integers(min_value=-2_000_000_000, max_value=4_000_000_000)


@given(WHOLE_SECONDS)
def test_whole_seconds_round_trip_exactly(seconds: int) -> None:
    text = format_timestamp(seconds)
    assert text.endswith("Z") and "." not in text
    assert parse_timestamp(text) == seconds
    # The fast path (exact "...Z" shape) agrees with the general path.
    assert parse_timestamp(text[:-1] + "+00:00") == seconds


@given(WHOLE_SECONDS, st.integers(min_value=0, max_value=999_999))
def test_microsecond_strings_round_trip_exactly(seconds: int, micros: int) -> None:
    text = format_timestamp(seconds)
    if micros:
        text = text[:-1] + f".{micros:06d}".rstrip("0") + "Z"
    assert format_timestamp(parse_timestamp(text)) == text


@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
def test_float_round_trip_within_a_microsecond(seconds: float) -> None:
    assert abs(parse_timestamp(format_timestamp(seconds)) - seconds) <= 5.1e-7


@given(WHOLE_SECONDS, st.integers(min_value=-23, max_value=23), st.integers(min_value=0, max_value=59))
def test_offsets_shift_local_time(seconds: int, hours: int, minutes: int) -> None:
    offset = hours * 3600 + (minutes * 60 if hours >= 0 else -minutes * 60)
    local = format_timestamp(seconds + offset)[:-1]
    sign = "-" if offset < 0 else "+"
    text = f"{local}{sign}{abs(hours):02d}:{minutes:02d}"
    assert parse_timestamp(text) == seconds
