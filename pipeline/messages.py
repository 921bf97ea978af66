"""The messages of the serving job: JSON wire formats and the records passed between its stages.

Wire formats (UTF-8 JSON, compact):

* reading (input, Kafka key = stream id)::

    {"stream_id": "vic#3", "timestamp": "2014-01-01T00:30:00Z", "value": 3.21, "temperature": 21.5, ...}

  ``timestamp`` is RFC 3339 with ``Z``/an offset, or epoch seconds (number or numeric string).
  Covariates the model needs are top-level numbers named as in the artifact; other fields are ignored.
* forecast (output, Kafka key = stream id)::

    {"stream_id": ..., "timestamp": <the reading's, RFC 3339>, "forecast": [H floats],
     "forecast_timestamps": [H RFC 3339], "model": "lstm", "model_version": "...", "readings_seen": n,
     "intervals": {"0.8": {"lower": [H floats], "upper": [H floats]}, "0.95": {...}}}

  ``intervals`` only when the artifact has prediction intervals (``models/intervals.py``).

* dead letter (output, Kafka key = the input record's key)::

    {"reason": "not_json", "detail": "...", "raw": "<value as text>", "topic": "readings",
     "partition": 0, "offset": 42}

  ``raw`` is the value as text, or base64 with ``"raw_base64": true`` when it is not UTF-8, or null
  when the record had no value. Values above 128 KiB are cut and flagged ``"raw_truncated": true``.

:func:`decode_reading` is total: for any bytes it returns a :class:`~models.reading.Reading` or a
:class:`Rejection` (never raises). Checks run in a fixed order and the first failure is reported:
size, UTF-8, JSON, object, ``stream_id`` (missing / type / rule), Kafka key, ``timestamp``, ``value``,
covariates in the artifact's order. The remaining reason codes (``future_timestamp``, ``out_of_order``,
``duplicate``) need the stream's state and are decided by :mod:`pipeline.forecast_dofn`.

This module imports neither Beam nor Kafka: the stage records below are plain NamedTuples;
:mod:`pipeline.coders` gives the one that crosses Beam's shuffle (:class:`KafkaBatch`) an explicit coder.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from models.intervals import level_key
from models.reading import Forecast, Reading
from models.timeutil import format_timestamp, parse_timestamp

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_STREAM_ID_CHARS",
    "MAX_TIMESTAMP",
    "KafkaBatch",
    "Outcome",
    "OutcomeBatch",
    "Rejection",
    "SweepRequest",
    "commit_key",
    "dead_letter_outcome",
    "decode_reading",
    "encode_dead_letter",
    "encode_forecast",
    "is_commit_key",
    "record_outcome",
    "reserved_covariates",
    "shard_of_key",
    "state_shard",
]

MAX_MESSAGE_BYTES = 1_000_000  # "too_large": more than 1 MB
MAX_STREAM_ID_CHARS = 256
MAX_TIMESTAMP = 253_370_764_800.0  # 9999-01-01T00:00:00Z: leaves a year for forecast target times
MAX_DEAD_LETTER_RAW = 128 * 1024  # escaped (up to 6x), a dead letter stays under the 1 MiB producer limit
_DETAIL_CHARS = 120
_MAX_INT_DIGITS = 300  # longer integer literals are parsed as float (inf if huge): no int->float overflow
_RESERVED_FIELDS = ("stream_id", "timestamp", "value")
# Control characters (C0, DEL, C1) and lone surrogates (unencodable as UTF-8).
_BAD_ID_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class Rejection(NamedTuple):
    """Why a record is not a valid reading: a reason code of ``pipeline.metrics.DEAD_LETTER_REASONS``."""

    reason: str
    detail: str


# --- stage records (source -> decode -> stateful step -> sink) --------------------------------


class SweepRequest(NamedTuple):
    """Ask the stateful step to drop ``stream_id``'s state if its last reading is older than ``idle_before``."""

    partition: int
    stream_id: str
    idle_before: float


class KafkaBatch(NamedTuple):
    """Records of one input partition, in offset order, as columns; one Beam element for all of them.

    The source emits one per call of a partition: the records it read, then the idle streams to sweep,
    and whether this is a commit request (the sink then writes its held state snapshots and releases
    offsets for commit: when the partition goes idle, every ``--commit-interval`` while it is busy,
    and at stop; see :mod:`pipeline.kafka_sink`). :class:`~pipeline.forecast_dofn.RouteToShards` splits
    it by state shard.

    Attributes:
        topic: The input topic.
        partition: Its partition.
        offsets: Each record's offset.
        positions: The consumer position before each record: once a record is done, the group may
            commit ``offset + 1`` provided everything from ``position`` on is done (``position < offset``
            where the log has gaps).
        timestamps_ms: The records' Kafka timestamps (epoch milliseconds).
        keys: The raw keys.
        values: The raw values (None for a Kafka tombstone).
        sweeps: Streams to drop if idle.
        commit: A commit request (after this batch's records).
    """

    topic: str
    partition: int
    offsets: Sequence[int]
    positions: Sequence[int]
    timestamps_ms: Sequence[int]
    keys: Sequence[bytes | None]
    values: Sequence[bytes | None]
    sweeps: tuple[SweepRequest, ...] = ()
    commit: bool = False

    @classmethod
    def commit_request(cls, topic: str, partition: int) -> KafkaBatch:
        """A batch without records that is only a commit request."""
        return cls(topic, partition, (), (), (), (), (), (), True)

    def take(self, indices: Sequence[int], sweeps: tuple[SweepRequest, ...] = ()) -> KafkaBatch:
        """The records at ``indices`` (in that order) with ``sweeps``, and no commit request."""
        return KafkaBatch(
            self.topic,
            self.partition,
            [self.offsets[i] for i in indices],
            [self.positions[i] for i in indices],
            [self.timestamps_ms[i] for i in indices],
            [self.keys[i] for i in indices],
            [self.values[i] for i in indices],
            sweeps,
        )


class Outcome(NamedTuple):
    """What the stateful step made of one input record (offset >= 0) or a commit request (offset -1).

    Attributes:
        partition, offset, position, timestamp_ms: The record's (see :class:`KafkaBatch`).
        key: Kafka key for the forecast or dead letter (the stream id, or the input record's key).
        forecast: Encoded forecast to publish, if any.
        dead_letter: Encoded dead letter to publish, if any.
        reason: The dead letter's reason code.
        commit: A commit request passed on to the sink.
    """

    partition: int
    offset: int
    position: int
    timestamp_ms: int
    key: bytes | None = None
    forecast: bytes | None = None
    dead_letter: bytes | None = None
    reason: str | None = None
    commit: bool = False


class OutcomeBatch(NamedTuple):
    """What the stateful step made of one element (a :class:`KafkaBatch` of one shard): one Beam element for the sink.

    Attributes:
        outcomes: One :class:`Outcome` per input record, in order.
        snapshots: Stream id -> its state after the element, for the changelog: the encoded bytes, or a
            value the sink's ``encode_snapshot`` encodes if it is still the stream's latest when snapshots
            are written.
    """

    outcomes: list[Outcome]
    snapshots: dict[str, Any]


def record_outcome(batch: KafkaBatch, i: int, **fields: Any) -> Outcome:
    """The :class:`Outcome` of record ``i`` of ``batch`` (its position and Kafka key) with ``fields``."""
    return Outcome(
        batch.partition, batch.offsets[i], batch.positions[i], batch.timestamps_ms[i], key=batch.keys[i], **fields
    )


def dead_letter_outcome(batch: KafkaBatch, i: int, reason: str, detail: str) -> Outcome:
    """Record ``i`` of ``batch`` as a dead letter (see :func:`encode_dead_letter`)."""
    letter = encode_dead_letter(reason, detail, batch.values[i], batch.topic, batch.partition, batch.offsets[i])
    return record_outcome(batch, i, dead_letter=letter, reason=reason)


def state_shard(stream_id: str, shards: int) -> str:
    """The key under which a stream's readings reach the stateful step: one of ``shards`` state shards.

    CRC-32 of the UTF-8 id (the same in every process and on every runner, unlike ``hash``), so a
    stream always meets its own state, whichever partition its readings come from.
    """
    return shard_of_key(stream_id.encode("utf-8", "surrogatepass"), shards)


def shard_of_key(key: bytes | None, shards: int) -> str:
    """:func:`state_shard` of a record by its Kafka key, before decoding: a valid reading's key is its
    stream id's UTF-8, so it lands in its stream's shard; an invalid one is dead-lettered wherever it lands."""
    return f"shard-{zlib.crc32(key or b'') % shards}"


def commit_key(partition: int) -> str:
    """The key under which a partition's commit requests pass the stateful step (to reach the sink).

    It starts with a control character, unlike every :func:`state_shard` key, so it never meets a
    state; there is one per partition.
    """
    return f"\x00commit:{partition}"


def is_commit_key(key: str) -> bool:
    return key.startswith("\x00commit:")


# --- decoding ---------------------------------------------------------------------------------


def _parse_constant(name: str) -> float:
    # NaN, Infinity and -Infinity are not JSON, but Python's parser accepts them: they become NaN
    # here so that the field they are in fails as "bad_value" (and fields we ignore stay ignored).
    return float("nan")


def _parse_int(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_INT_DIGITS else float(text)


_DECODER = json.JSONDecoder(parse_constant=_parse_constant, parse_int=_parse_int)


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


def _short(value: object) -> str:
    return _clip(repr(value))


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(doc: dict, name: str) -> float | Rejection:
    if name not in doc:
        return Rejection("missing_field", f"field {name!r} is missing")
    raw = doc[name]
    if raw is None:
        return Rejection("bad_value", f"{name} is null (not a finite number)")
    if not _is_number(raw):
        return Rejection("bad_type", f"{name} must be a number, got {_type_name(raw)} {_short(raw)}")
    number = float(raw)
    if not math.isfinite(number):
        return Rejection("bad_value", f"{name} is not a finite number")
    return number


def decode_reading(value: bytes | None, key: bytes | None, covariate_names: Sequence[str] = ()) -> Reading | Rejection:
    """Decodes and validates one Kafka record as a reading. Never raises.

    Args:
        value: The record's value.
        key: The record's key; it must equal the UTF-8 stream id.
        covariate_names: Covariates the model needs, in its order.

    Returns:
        The reading (covariates in ``covariate_names`` order), or the first reason it is not one.
    """
    if value is None:
        return Rejection("not_json", "the record has no value (Kafka tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        return Rejection("too_large", f"{len(value)} bytes, more than the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejection("not_utf8", f"invalid UTF-8 at byte {err.start}")
    # Fast path: orjson (faster than json; benchmarks/README.md). Whatever it rejects, and every record that turns out
    # not to be a valid reading, goes through Python's json parser, whose reasons and details are
    # the reference; where both parse, a valid reading comes out the same (orjson differs only on
    # integers beyond 64 bits, which it reads as the same float that float() gives).
    try:
        fast = orjson.loads(value)
    except orjson.JSONDecodeError:
        return decode_reading_with_json(text, key, covariate_names)
    result = _validate(fast, key, covariate_names) if isinstance(fast, dict) else None
    if isinstance(result, Reading):
        return result
    return decode_reading_with_json(text, key, covariate_names)


def decode_reading_with_json(text: str, key: bytes | None, covariate_names: Sequence[str] = ()) -> Reading | Rejection:
    """:func:`decode_reading` of a UTF-8-decoded value with Python's json parser only (the reference)."""
    try:
        doc = _DECODER.decode(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        return Rejection("not_json", _clip(str(err)) if isinstance(err, ValueError) else "nested too deeply")
    if isinstance(doc, float) and math.isnan(doc):
        return Rejection("not_json", "NaN and Infinity are not JSON")
    if not isinstance(doc, dict):
        return Rejection("not_object", f"expected a JSON object, got {_type_name(doc)}")
    return _validate(doc, key, covariate_names)


def _validate(doc: dict, key: bytes | None, covariate_names: Sequence[str]) -> Reading | Rejection:
    if "stream_id" not in doc:
        return Rejection("missing_field", "field 'stream_id' is missing")
    stream_id = doc["stream_id"]
    if not isinstance(stream_id, str):
        return Rejection("bad_type", f"stream_id must be a string, got {_type_name(stream_id)}")
    if not stream_id:
        return Rejection("bad_stream_id", "stream_id is empty")
    if len(stream_id) > MAX_STREAM_ID_CHARS:
        return Rejection("bad_stream_id", f"stream_id has {len(stream_id)} characters, more than {MAX_STREAM_ID_CHARS}")
    if _BAD_ID_CHARS.search(stream_id):
        return Rejection(
            "bad_stream_id", f"stream_id {_short(stream_id)} contains control characters or lone surrogates"
        )
    if key is None or key != stream_id.encode("utf-8"):
        shown = "no key" if key is None else f"key {_short(key)}"
        return Rejection("key_mismatch", f"{shown} differs from stream_id {_short(stream_id)}")

    if "timestamp" not in doc:
        return Rejection("missing_field", "field 'timestamp' is missing")
    raw_time = doc["timestamp"]
    if not (isinstance(raw_time, str) or _is_number(raw_time)):
        return Rejection("bad_type", f"timestamp must be a string or a number, got {_type_name(raw_time)}")
    try:
        timestamp = parse_timestamp(raw_time)
    except (ValueError, OverflowError) as err:
        return Rejection("bad_timestamp", _clip(str(err)))
    if timestamp < 0:
        return Rejection("bad_timestamp", f"timestamp {_short(raw_time)} is before 1970")
    if timestamp >= MAX_TIMESTAMP:
        return Rejection("bad_timestamp", f"timestamp {_short(raw_time)} is after 9998")

    reading_value = _number(doc, "value")
    if isinstance(reading_value, Rejection):
        return reading_value
    covariates = []
    for name in covariate_names:
        covariate = _number(doc, name)
        if isinstance(covariate, Rejection):
            return covariate
        covariates.append(covariate)
    return Reading(stream_id, timestamp, reading_value, tuple(covariates))


# --- encoding ---------------------------------------------------------------------------------

# Forecast target times overlap from one reading to the next (and across streams on the same
# clock), so formatting is cached; the cache is dropped whole when it fills (bounded memory).
_FORMATTED: dict[float, str] = {}
_FORMAT_CACHE_SIZE = 1 << 16


def _format_cached(seconds: float) -> str:
    text = _FORMATTED.get(seconds)
    if text is None:
        if len(_FORMATTED) >= _FORMAT_CACHE_SIZE:
            _FORMATTED.clear()
        text = _FORMATTED[seconds] = format_timestamp(seconds)
    return text


def _dumps(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


_json_string = json.encoder.encode_basestring  # the C escaper json.dumps(ensure_ascii=False) uses
# Joined target times by (timestamp, step, horizon): streams on the same clock share them.
_TARGETS: dict[tuple[float, float, int], str] = {}
_TARGETS_CACHE_SIZE = 1 << 12


def _target_times(timestamp: float, step: float, horizon: int) -> str:
    key = (timestamp, step, horizon)
    text = _TARGETS.get(key)
    if text is None:
        if len(_TARGETS) >= _TARGETS_CACHE_SIZE:
            _TARGETS.clear()
        # Same arithmetic as Forecast.target_timestamps (float64: t + step * h), without numpy.
        text = _TARGETS[key] = '","'.join([_format_cached(timestamp + step * h) for h in range(1, horizon + 1)])
    return text


def _numbers(values: Any) -> Any:
    """What orjson writes as a JSON array of floats: a C-contiguous float64 array as it is (no list of
    Python floats in between, the same digits), anything else as a list of Python numbers (orjson
    would write a float32 array with float32's shortest digits, not float64's)."""
    if isinstance(values, np.ndarray):
        if values.dtype == np.float64 and values.flags.c_contiguous:
            return values
        return values.tolist()
    return list(values)


_LEVEL_KEYS: dict[tuple[float, ...], tuple[str, ...]] = {}


def _level_keys(levels: tuple[float, ...]) -> tuple[str, ...]:
    """:func:`models.intervals.level_key` of each level, cached (a job serves one or two sets of levels)."""
    keys = _LEVEL_KEYS.get(levels)
    if keys is None:
        if len(_LEVEL_KEYS) >= 64:
            _LEVEL_KEYS.clear()
        keys = _LEVEL_KEYS[levels] = tuple(level_key(level) for level in levels)
    return keys


def encode_forecast(forecast: Forecast, model: str, model_version: str) -> bytes:
    """The forecast message. Same floats give the same bytes.

    Written by hand: it is the hottest encoder of the job. The numbers are written by ``orjson``
    (about 20x faster than ``repr`` for the 48 floats of the default model): the shortest decimal
    that reads back as exactly the same float64, as ``repr`` (``0.00001`` where ``repr`` writes
    ``1e-05``). A non-finite forecast value (a numerical failure) is written as ``null``. A forecast
    with prediction intervals gets ``"intervals": {"<level>": {"lower": [H], "upper": [H]}, ...}`` last
    (levels as :func:`models.intervals.level_key` writes them, ascending).
    """
    timestamp = float(forecast.timestamp)
    values = forecast.values
    numbers = orjson.dumps(_numbers(values), option=orjson.OPT_SERIALIZE_NUMPY).decode("ascii")
    intervals = ""
    if forecast.lower is not None:
        intervals = ',"intervals":' + orjson.dumps(
            {
                key: {"lower": _numbers(lower), "upper": _numbers(upper)}
                for key, lower, upper in zip(_level_keys(forecast.interval_levels), forecast.lower, forecast.upper)
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        ).decode("ascii")
    text = (
        f'{{"stream_id":{_json_string(forecast.stream_id)},"timestamp":"{_format_cached(timestamp)}",'
        f'"forecast":{numbers},"forecast_timestamps":["{_target_times(timestamp, float(forecast.step_seconds), len(values))}"],'
        f'"model":{_json_string(model)},"model_version":{_json_string(model_version)},'
        f'"readings_seen":{int(forecast.readings_seen)}{intervals}}}'
    )
    return text.encode("utf-8")


def encode_dead_letter(reason: str, detail: str, raw: bytes | None, topic: str, partition: int, offset: int) -> bytes:
    """The dead-letter message for a record (see the module docstring for the fields)."""
    doc: dict[str, object] = {"reason": reason, "detail": detail}
    truncated = raw is not None and len(raw) > MAX_DEAD_LETTER_RAW
    if raw is None:
        doc["raw"] = None
    else:
        text = _utf8_prefix(raw[:MAX_DEAD_LETTER_RAW]) if truncated else _utf8(raw)
        if text is not None:
            doc["raw"] = text
        else:
            doc["raw"] = base64.b64encode(raw[:MAX_DEAD_LETTER_RAW]).decode("ascii")
            doc["raw_base64"] = True
    if truncated:
        doc["raw_truncated"] = True
    doc.update(topic=topic, partition=partition, offset=offset)
    return _dumps(doc)


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _utf8_prefix(raw: bytes) -> str | None:
    """``raw`` as text, allowing a character cut in two at its end (at most 3 bytes of it)."""
    for cut in range(4):
        text = _utf8(raw[: len(raw) - cut])
        if text is not None:
            return text
    return None


def reserved_covariates(covariate_names: Sequence[str]) -> list[str]:
    """Covariate names that collide with the reading's own fields (an unusable artifact)."""
    return [name for name in covariate_names if name in _RESERVED_FIELDS]
