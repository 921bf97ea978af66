"""The wire formats: decoding is total (any bytes -> a reading or exactly one reason), encodings are
valid JSON and deterministic."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from models.reading import Forecast, Reading
from models.timeutil import format_timestamp, parse_timestamp
from pipeline.messages import (
    MAX_DEAD_LETTER_RAW,
    MAX_MESSAGE_BYTES,
    MAX_STREAM_ID_CHARS,
    MAX_TIMESTAMP,
    Rejection,
    commit_key,
    decode_reading,
    decode_reading_with_json,
    encode_dead_letter,
    encode_forecast,
    state_shard,
)
from pipeline.metrics import DEAD_LETTER_REASONS
from pipeline.replay import encode_reading

COVARIATES = ("temperature", "workday")
STATEFUL_REASONS = {"future_timestamp", "out_of_order", "duplicate"}
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_total(value: bytes | None, key: bytes | None) -> Reading | Rejection:
    result = decode_reading(value, key, COVARIATES)
    assert isinstance(result, (Reading, Rejection))
    if isinstance(result, Rejection):
        assert result.reason in DEAD_LETTER_REASONS and result.reason not in STATEFUL_REASONS
        assert isinstance(result.detail, str) and len(result.detail) <= 200
    else:
        assert 0 < len(result.stream_id) <= MAX_STREAM_ID_CHARS
        assert key == result.stream_id.encode("utf-8")
        assert 0 <= result.timestamp < MAX_TIMESTAMP
        assert math.isfinite(result.value) and len(result.covariates) == len(COVARIATES)
        assert all(math.isfinite(x) for x in result.covariates)
    return result


@PROPERTY
@given(value=st.one_of(st.none(), st.binary(max_size=400)), key=st.one_of(st.none(), st.binary(max_size=20)))
def test_any_bytes_decode_to_a_reading_or_one_reason(value: bytes | None, key: bytes | None) -> None:
    _check_total(value, key)


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_timestamps = st.one_of(
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.text(max_size=30),
    st.booleans(),
    st.none(),
)


@PROPERTY
@given(
    stream_id=st.one_of(st.text(max_size=300), _json_values),
    timestamp=_timestamps,
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), _json_values),
    covariates=st.dictionaries(st.sampled_from(COVARIATES + ("other",)), _json_values | st.floats(), max_size=3),
    drop=st.sets(st.sampled_from(["stream_id", "timestamp", "value"])),
    key_matches=st.booleans(),
)
def test_any_reading_shaped_json_decodes_to_a_reading_or_one_reason(
    stream_id, timestamp, value, covariates, drop, key_matches
) -> None:
    doc = {"stream_id": stream_id, "timestamp": timestamp, "value": value, **covariates}
    for name in drop:
        doc.pop(name)
    text = json.dumps(doc, allow_nan=True)  # NaN/Infinity literals on purpose
    key = stream_id.encode("utf-8", "surrogatepass") if key_matches and isinstance(stream_id, str) else b"k"
    _check_total(text.encode("utf-8", "surrogatepass"), key)


@PROPERTY
@given(
    stream_id=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=MAX_STREAM_ID_CHARS),
    micros=st.integers(min_value=0, max_value=4_000_000_000 * 10**6),
    value=st.floats(allow_nan=False, allow_infinity=False),
    temperature=st.floats(allow_nan=False, allow_infinity=False),
    workday=st.sampled_from([0.0, 1.0]),
)
def test_replayed_readings_decode_to_themselves(
    stream_id: str, micros: int, value: float, temperature: float, workday: float
) -> None:
    assume(not any(0x7F <= ord(c) <= 0x9F for c in stream_id))
    reading = Reading(stream_id, micros / 1e6, value, (temperature, workday))
    decoded = _check_total(encode_reading(reading, COVARIATES), stream_id.encode("utf-8"))
    assert decoded == Reading(
        stream_id, parse_timestamp(format_timestamp(reading.timestamp)), value, (temperature, workday)
    )


def _doc(**fields: object) -> bytes:
    body = {"stream_id": "s1", "timestamp": "2014-01-01T00:30:00Z", "value": 3.5, "temperature": 20.0, "workday": 1}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not _DROP}).encode()


_DROP = object()


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"\xff\xfe{}", b"s1", "not_utf8"),
        (b"\xed\xa0\x80", b"s1", "not_utf8"),  # an encoded surrogate is not UTF-8
        (b"", b"s1", "not_json"),
        (None, b"s1", "not_json"),
        (b"\xef\xbb\xbf{}", b"s1", "not_json"),  # BOM
        (b"{'stream_id': 's1'}", b"s1", "not_json"),
        (b"NaN", b"s1", "not_json"),
        (b"[" * 100_000, b"s1", "not_json"),
        (b"[1, 2]", b"s1", "not_object"),
        (b'"text"', b"s1", "not_object"),
        (b"null", b"s1", "not_object"),
        (_doc(stream_id=_DROP), b"s1", "missing_field"),
        (_doc(timestamp=_DROP), b"s1", "missing_field"),
        (_doc(value=_DROP), b"s1", "missing_field"),
        (_doc(temperature=_DROP), b"s1", "missing_field"),
        (_doc(stream_id=7), b"7", "bad_type"),
        (_doc(value="3.5"), b"s1", "bad_type"),
        (_doc(value=True), b"s1", "bad_type"),
        (_doc(timestamp=[1]), b"s1", "bad_type"),
        (_doc(workday="yes"), b"s1", "bad_type"),
        (_doc(value=None), b"s1", "bad_value"),
        (_doc().replace(b'"value": 3.5', b'"value": NaN'), b"s1", "bad_value"),
        (_doc().replace(b'"value": 3.5', b'"value": -Infinity'), b"s1", "bad_value"),
        (_doc().replace(b'"value": 3.5', b'"value": 1e309'), b"s1", "bad_value"),
        (_doc().replace(b'"value": 3.5', b'"value": ' + b"9" * 5000), b"s1", "bad_value"),
        (_doc().replace(b'"temperature": 20.0', b'"temperature": Infinity'), b"s1", "bad_value"),
        (_doc(padding="x" * MAX_MESSAGE_BYTES), b"s1", "too_large"),
        (_doc(stream_id=""), b"", "bad_stream_id"),
        (_doc(stream_id="s" * (MAX_STREAM_ID_CHARS + 1)), b"s" * (MAX_STREAM_ID_CHARS + 1), "bad_stream_id"),
        (_doc(stream_id="a\nb"), b"a\nb", "bad_stream_id"),
        (_doc(stream_id="\x00rejected:0"), b"\x00rejected:0", "bad_stream_id"),
        (_doc(stream_id="a\ud800"), b"x", "bad_stream_id"),
        (_doc(timestamp="yesterday"), b"s1", "bad_timestamp"),
        (_doc(timestamp="2014-01-01T00:30:00"), b"s1", "bad_timestamp"),  # no offset
        (_doc(timestamp="2014-02-30T00:00:00Z"), b"s1", "bad_timestamp"),
        (_doc(timestamp="1969-12-31T23:59:59Z"), b"s1", "bad_timestamp"),
        (_doc(timestamp=-1), b"s1", "bad_timestamp"),
        (_doc(timestamp=1e300), b"s1", "bad_timestamp"),
        (_doc().replace(b'"2014-01-01T00:30:00Z"', b"1" + b"0" * 400), b"s1", "bad_timestamp"),
        (_doc(), b"s2", "key_mismatch"),
        (_doc(), None, "key_mismatch"),
    ],
)
def test_reason_codes(value: bytes | None, key: bytes | None, reason: str) -> None:
    result = _check_total(value, key)
    assert isinstance(result, Rejection) and result.reason == reason, result


def test_valid_forms() -> None:
    expected = Reading("s1", 1388536200.0, 3.5, (20.0, 1.0))
    assert decode_reading(_doc(), b"s1", COVARIATES) == expected
    assert decode_reading(_doc(timestamp=1388536200), b"s1", COVARIATES) == expected
    assert decode_reading(_doc(timestamp="1388536200"), b"s1", COVARIATES) == expected
    assert decode_reading(_doc(timestamp="2014-01-01T10:30:00+10:00"), b"s1", COVARIATES) == expected
    assert decode_reading(_doc(extra={"ignored": [1, None]}), b"s1", COVARIATES) == expected
    assert decode_reading(_doc(value=3), b"s1", ()) == Reading("s1", 1388536200.0, 3.0, ())


def test_the_commit_key_is_never_a_stream_or_shard_key() -> None:
    result = decode_reading(_doc(stream_id=commit_key(0)), commit_key(0).encode(), COVARIATES)
    assert isinstance(result, Rejection) and result.reason == "bad_stream_id"
    assert all(commit_key(p) != state_shard(commit_key(p), n) for p in range(4) for n in (1, 16))


@PROPERTY
@given(
    raw=st.one_of(
        st.none(), st.binary(max_size=600), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
    )
)
def test_dead_letters_are_json_and_keep_the_raw_value(raw: bytes | None) -> None:
    doc = json.loads(encode_dead_letter("not_json", "detail", raw, "readings", 3, 42))
    assert {k: doc[k] for k in ("reason", "detail", "topic", "partition", "offset")} == {
        "reason": "not_json",
        "detail": "detail",
        "topic": "readings",
        "partition": 3,
        "offset": 42,
    }
    if raw is None:
        assert doc["raw"] is None
    elif doc.get("raw_base64"):
        assert base64.b64decode(doc["raw"]) == raw
    else:
        assert doc["raw"].encode("utf-8") == raw


@pytest.mark.parametrize(
    "raw", [b"\x00" * (2 * MAX_MESSAGE_BYTES), b"\xff" * (2 * MAX_MESSAGE_BYTES), "é".encode() * MAX_MESSAGE_BYTES]
)
def test_dead_letters_of_huge_values_stay_under_a_megabyte(raw: bytes) -> None:
    encoded = encode_dead_letter("too_large", "d", raw, "readings", 0, 1)
    assert len(encoded) < 1_000_000
    doc = json.loads(encoded)
    assert doc["raw_truncated"] is True
    prefix = base64.b64decode(doc["raw"]) if doc.get("raw_base64") else doc["raw"].encode("utf-8")
    assert raw.startswith(prefix) and len(prefix) >= MAX_DEAD_LETTER_RAW - 3


def _forecast(values: list[float], timestamp: float = 1388536200.0, stream_id: str = "vic#1") -> Forecast:
    array = np.array(values, dtype=np.float64)
    return Forecast(stream_id, timestamp, array, array, 1800.0, 77)


@PROPERTY
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=60),
    micros=st.integers(min_value=0, max_value=200_000_000_000 * 10**6),
    stream_id=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
)
def test_forecasts_are_deterministic_json_with_exact_numbers(values: list[float], micros: int, stream_id: str) -> None:
    first = encode_forecast(_forecast(values, micros / 1e6, stream_id), "lstm", "v1")
    again = encode_forecast(_forecast(list(values), micros / 1e6, stream_id), "lstm", "v1")
    assert first == again  # same floats, same bytes
    doc = json.loads(first)
    assert doc["forecast"] == values  # every float reads back exactly
    assert doc["stream_id"] == stream_id and doc["model"] == "lstm" and doc["model_version"] == "v1"
    assert doc["readings_seen"] == 77
    forecast = _forecast(values, micros / 1e6, stream_id)
    assert doc["timestamp"] == format_timestamp(forecast.timestamp)
    assert doc["forecast_timestamps"] == [format_timestamp(t) for t in forecast.target_timestamps.tolist()]


def test_non_finite_forecast_values_become_null() -> None:
    doc = json.loads(encode_forecast(_forecast([1.0, math.nan, math.inf]), "lstm", "v1"))
    assert doc["forecast"] == [1.0, None, None]


_JSON_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=10**9).map(lambda n: n * 10**300 if n % 7 == 0 else n),
)


@PROPERTY
@given(
    stream_id=st.text(min_size=0, max_size=8),
    timestamp=st.one_of(_JSON_NUMBERS, st.sampled_from(["2014-01-02T00:30:00Z", "2014-01-02 00:30", "yesterday"])),
    value=st.one_of(_JSON_NUMBERS, st.none(), st.booleans(), st.text(max_size=3)),
    temperature=_JSON_NUMBERS,
    extra=st.dictionaries(st.text(max_size=4), st.one_of(_JSON_NUMBERS, st.text(max_size=4)), max_size=3),
    key_matches=st.booleans(),
)
def test_the_fast_parser_decodes_exactly_like_the_json_reference(
    stream_id: str, timestamp: object, value: object, temperature: object, extra: dict, key_matches: bool
) -> None:
    doc = {
        **extra,
        "stream_id": stream_id,
        "timestamp": timestamp,
        "value": value,
        "temperature": temperature,
        "workday": 1,
    }
    try:
        raw = json.dumps(doc).encode("utf-8")
    except (ValueError, OverflowError):
        return
    key = stream_id.encode("utf-8", "surrogatepass") if key_matches else b"other"
    assert decode_reading(raw, key, COVARIATES) == decode_reading_with_json(raw.decode("utf-8"), key, COVARIATES)


def test_forecasts_with_intervals_carry_them_per_level_and_without_them_do_not() -> None:
    values = np.array([1.0, 2.0, 3.0])
    lower = np.array([[0.5, 1.25, 2.0], [0.1, 0.9, 1.5]])
    upper = np.array([[1.5, 2.75, 4.0], [1.9, 3.1, 4.5]])
    plain = _forecast(values.tolist())
    with_intervals = Forecast("vic#1", 1388536200.0, values, values, 1800.0, 77, (0.8, 0.95), lower, upper)
    doc = json.loads(encode_forecast(with_intervals, "lstm", "v1"))
    assert doc["intervals"] == {
        "0.8": {"lower": [0.5, 1.25, 2.0], "upper": [1.5, 2.75, 4.0]},
        "0.95": {"lower": [0.1, 0.9, 1.5], "upper": [1.9, 3.1, 4.5]},
    }
    # Every other field is what a forecast without intervals has: consumers that ignore it are unaffected.
    assert {k: v for k, v in doc.items() if k != "intervals"} == json.loads(encode_forecast(plain, "lstm", "v1"))
    assert "intervals" not in json.loads(encode_forecast(plain, "lstm", "v1"))


@pytest.mark.parametrize("layout", ["contiguous", "fortran", "strided", "float32", "views_of_one_array"])
def test_interval_and_forecast_numbers_do_not_depend_on_the_arrays_layout(layout: str) -> None:
    """encode_forecast hands contiguous float64 arrays to orjson as they are and lists otherwise: same digits."""
    rng = np.random.default_rng(7)
    values = rng.normal(size=6) * 1000.0
    bounds = rng.normal(size=(2, 2, 6)) * 1000.0
    bounds[0, 1, 2] = np.nan  # a numerical failure is written as null either way
    reference = Forecast("s", 1388536200.0, values.tolist(), values, 1800.0, 9, (0.8, 0.95), bounds[0], bounds[1])
    if layout == "fortran":
        lower, upper, shown = np.asfortranarray(bounds[0]), np.asfortranarray(bounds[1]), values
    elif layout == "strided":
        wide = np.repeat(bounds, 2, axis=-1)
        lower, upper, shown = wide[0][:, ::2], wide[1][:, ::2], np.repeat(values, 2)[::2]
    elif layout == "float32":
        lower, upper, shown = bounds[0].astype(np.float32), bounds[1].astype(np.float32), values.astype(np.float32)
    elif layout == "views_of_one_array":
        lower, upper, shown = bounds.copy()[0], bounds.copy()[1], values
    else:
        lower, upper, shown = bounds[0].copy(), bounds[1].copy(), values
    forecast = Forecast("s", 1388536200.0, shown, values, 1800.0, 9, (0.8, 0.95), lower, upper)
    doc = json.loads(encode_forecast(forecast, "lstm", "v1"))
    # float32 arrays are written as the float64 values they hold (not float32's shortest digits).
    assert doc["forecast"] == np.asarray(shown, dtype=np.float64).tolist()
    for j, key in enumerate(("0.8", "0.95")):
        for name, array in (("lower", lower), ("upper", upper)):
            expected = [None if np.isnan(x) else x for x in np.asarray(array, dtype=np.float64)[j].tolist()]
            assert doc["intervals"][key][name] == expected
    if layout in ("fortran", "strided", "views_of_one_array"):
        assert encode_forecast(forecast, "lstm", "v1") == encode_forecast(reference, "lstm", "v1")
