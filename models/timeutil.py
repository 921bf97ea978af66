"""Timestamp parsing and formatting (standard library only).

Inside rnncast a timestamp is a float of epoch seconds (UTC). At the edges we accept
RFC 3339 strings that carry ``Z`` or an explicit offset, or epoch seconds (a number or a
numeric string), and we write RFC 3339 with ``Z``. Both functions run once per streamed
message, so they avoid ``strptime`` and keep no caches.
"""

from __future__ import annotations

import math
import numbers
import re
from datetime import date, datetime, timedelta

__all__ = ["parse_timestamp", "format_timestamp"]

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1)
_SECONDS_PER_DAY = 86_400

# RFC 3339 date-time; a space instead of "T" is accepted (RFC 3339 section 5.6 note).
# The offset is optional here only so that a missing one gets its own error message.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?",
    re.ASCII,
)
# float() alone would also accept "nan", "inf", "1_000" and non-ASCII digits.
_EPOCH_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)

_EXPECTED = "expected RFC 3339 with 'Z' or an offset (e.g. '2014-01-01T00:30:00Z') or epoch seconds"


def parse_timestamp(value: object) -> float:
    """Converts an RFC 3339 string or epoch seconds to float epoch seconds (UTC).

    Args:
        value: An RFC 3339 date-time such as ``"2014-01-01T00:30:00Z"``,
            ``"2014-01-01 10:30:00.25+10:00"``; or epoch seconds as an ``int``/``float``
            or a numeric string such as ``"1388536200"``. Surrounding whitespace is ignored.

    Returns:
        Seconds since 1970-01-01T00:00:00Z.

    Raises:
        ValueError: If the value is not one of the accepted forms, has no UTC offset,
            names an invalid date or time (leap seconds included), or is a non-finite number.
    """
    if isinstance(value, str):
        return _parse_text(value)
    if isinstance(value, bool):  # a JSON true/false is not a time
        raise ValueError(f"invalid timestamp {value!r} of type bool: {_EXPECTED}")
    if isinstance(value, numbers.Real):
        return _finite_seconds(float(value), value)
    raise ValueError(f"invalid timestamp {value!r} of type {type(value).__name__}: {_EXPECTED}")


def format_timestamp(seconds: object) -> str:
    """Formats epoch seconds as RFC 3339 in UTC with a ``Z`` suffix.

    The value is rounded to the microsecond; the fractional part is written only when it
    is non-zero, without trailing zeros (``...T00:30:00Z``, ``...T00:30:00.25Z``).

    Args:
        seconds: Epoch seconds (UTC).

    Returns:
        The RFC 3339 string.

    Raises:
        ValueError: If ``seconds`` is not a finite real number or falls outside years 1-9999.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise ValueError(f"cannot format {seconds!r}: epoch seconds must be a number")
    seconds = _finite_seconds(float(seconds), seconds)
    whole = math.floor(seconds)
    micros = round((seconds - whole) * 1_000_000)
    if micros == 1_000_000:
        whole += 1
        micros = 0
    days, rest = divmod(whole, _SECONDS_PER_DAY)
    try:
        text = (_EPOCH + timedelta(days=days, seconds=rest)).isoformat()
    except OverflowError:
        raise ValueError(f"cannot format {seconds!r}: outside years 1-9999") from None
    if micros:
        return f"{text}.{micros:06d}".rstrip("0") + "Z"
    return text + "Z"


# Parsed "YYYY-MM-DDTHH:MM:SSZ" strings: streams on the same clock send the same ones. Dropped whole when
# full (bounded memory).
_PARSED: dict[str, float] = {}
_PARSED_CACHE_SIZE = 1 << 12


def _parse_text(text: str) -> float:
    cached = _PARSED.get(text)
    if cached is not None:
        return cached
    if (
        len(text) == 20
        and text[19] == "Z"
        and text[10] == "T"
        and text[4] == "-"
        and text[7] == "-"
        and text[13] == ":"
        and text[16] == ":"
    ):
        # Fast path for the common exact shape (cheaper than the general parser); fromisoformat checks the digits.
        try:
            seconds = datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass  # the general path below says what is wrong
        else:
            if len(_PARSED) >= _PARSED_CACHE_SIZE:
                _PARSED.clear()
            _PARSED[text] = seconds
            return seconds
    stripped = text.strip()
    match = _RFC3339.fullmatch(stripped)
    if match is None:
        if not stripped:
            raise ValueError("empty timestamp")
        if _EPOCH_NUMBER.fullmatch(stripped):
            return _finite_seconds(float(stripped), text)
        raise ValueError(f"invalid timestamp {text!r}: {_EXPECTED}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if zulu is None and sign is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset: RFC 3339 requires 'Z' or an offset such as '+10:00'")
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError as err:
        raise ValueError(f"invalid date in timestamp {text!r}: {err}") from None
    hours, minutes, secs = int(hour), int(minute), int(second)
    if hours > 23 or minutes > 59 or secs > 59:
        raise ValueError(
            f"invalid time of day in timestamp {text!r} (hour 0-23, minute 0-59, second 0-59; "
            "leap seconds are not supported)"
        )
    total = days * _SECONDS_PER_DAY + hours * 3600 + minutes * 60 + secs
    if sign is not None:
        offset_hours, offset_minutes = int(off_h), int(off_m)
        if offset_hours > 23 or offset_minutes > 59:
            raise ValueError(f"invalid UTC offset in timestamp {text!r}")
        offset = offset_hours * 3600 + offset_minutes * 60
        total += -offset if sign == "+" else offset
    if fraction is None:
        return float(total)
    return total + float(fraction)


def _finite_seconds(seconds: float, original: object) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"invalid timestamp {original!r}: epoch seconds must be finite")
    return seconds
