"""Loading long-format time-series CSV files (numpy and the standard library only).

File format (see ARCHITECTURE.md): a header naming ``timestamp``, ``stream_id`` and
``value`` in any order; every other column is a numeric covariate, kept in header order.
Rows of different streams may interleave; within a stream timestamps must increase.
Missing readings are simply absent rows: they are reported as :class:`Gap` values and
never filled here (the engine decides how to bridge them).

Every problem raises :class:`DataError`, naming the file, the file's own line number
(header = 1) and, where one is at fault, the column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.timeutil import format_timestamp, parse_timestamp

__all__ = ["DataError", "Gap", "Series", "Dataset", "load_csv", "iter_rows", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("timestamp", "stream_id", "value")

# Relative tolerance for "this difference is a whole number of steps".
_STEP_TOLERANCE = 1e-6


class DataError(ValueError):
    """A problem in an input data file, located by file, line and column.

    Attributes:
        path: The file as given by the caller.
        line: The file's own 1-based line number (header = 1), or ``None`` when the
            problem concerns the whole file (e.g. it does not exist).
        column: The column at fault, or ``None`` for whole-line or whole-file problems.
        message: What is wrong, without the location.
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, column: str | None, message: str):
        self.path = os.fspath(path)
        self.line = line
        self.column = column
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        location = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.column is None:
            return f"{location}: {self.message}"
        return f"{location}: column '{self.column}': {self.message}"

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.column, self.message))


@dataclass(frozen=True)
class Gap:
    """Readings missing from a stream.

    Attributes:
        after_timestamp: Timestamp (epoch seconds) of the last reading before the gap.
        missing_steps: Number of whole steps without a reading (>= 1).
    """

    after_timestamp: float
    missing_steps: int


@dataclass(frozen=True, eq=False)
class Series:
    """One stream's readings, sorted by strictly increasing timestamp.

    The arrays are read-only. Equality is identity (arrays have no single truth value).

    Attributes:
        stream_id: The stream's identifier.
        timestamps: float64 [n] epoch seconds.
        values: float64 [n] target values.
        covariates: float64 [n, k] covariates in ``Dataset.covariate_names`` order.
        step_seconds: Sampling step in seconds.
        gaps: Missing stretches, in time order.
    """

    stream_id: str
    timestamps: np.ndarray
    values: np.ndarray
    covariates: np.ndarray
    step_seconds: float
    gaps: tuple[Gap, ...] = ()

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def missing_steps(self) -> int:
        """Total number of missing steps over all gaps."""
        return sum(gap.missing_steps for gap in self.gaps)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded CSV file.

    Attributes:
        path: The file as given to :func:`load_csv`.
        covariate_names: Covariate columns in header order.
        series: Streams by id, in order of first appearance in the file.
        sha256: Hex SHA-256 of the file's bytes (recorded in model manifests).
    """

    path: str
    covariate_names: tuple[str, ...]
    series: dict[str, Series] = field(default_factory=dict)
    sha256: str = ""

    @property
    def num_rows(self) -> int:
        """Total number of readings over all streams."""
        return sum(len(s) for s in self.series.values())

    def describe(self) -> str:
        """Returns a short human-readable summary: streams, rows, steps and gaps."""
        covariates = ", ".join(self.covariate_names) if self.covariate_names else "none"
        streams = len(self.series)
        lines = [
            f"{self.path} (sha256 {self.sha256[:12]})",
            f"{streams} stream{'s' if streams != 1 else ''}, {self.num_rows:,} rows, covariates: {covariates}",
        ]
        lines.extend(f"  {_describe_series(s)}" for s in self.series.values())
        return "\n".join(lines)


def load_csv(path: str | os.PathLike[str], step_seconds: float | None = None) -> Dataset:
    """Loads and validates a long-format CSV file.

    Args:
        path: The CSV file.
        step_seconds: The sampling step of every stream. ``None`` infers it per stream as
            the most common difference between consecutive timestamps.

    Returns:
        The dataset, with one :class:`Series` per stream in order of first appearance.

    Raises:
        DataError: For any problem with the file's presence, encoding or contents.
        ValueError: If ``step_seconds`` is given but not a positive finite number.
    """
    if step_seconds is not None and not (math.isfinite(step_seconds) and step_seconds > 0):
        raise ValueError(f"step_seconds must be a positive finite number, got {step_seconds!r}")
    shown = os.fspath(path)
    raw = _read_bytes(shown)
    text = _decode(shown, raw)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = _read_header(shown, reader)
    streams = _read_rows(shown, reader, header)
    series = {sid: _build_series(shown, acc, step_seconds) for sid, acc in streams.items()}
    _raise_first_irregular(shown, streams, series)
    return Dataset(
        path=shown,
        covariate_names=header.covariate_names,
        series=series,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def iter_rows(dataset: Dataset) -> Iterator[tuple[float, str, float, tuple[float, ...]]]:
    """Yields every reading in global timestamp order, as a streaming source would.

    Ties between streams are broken by the streams' order of first appearance.

    Args:
        dataset: A loaded dataset.

    Yields:
        ``(timestamp, stream_id, value, covariates)`` with plain Python floats.
    """
    all_series = list(dataset.series.values())
    if not all_series:
        return
    timestamps = np.concatenate([s.timestamps for s in all_series])
    stream_index = np.concatenate([np.full(len(s), i) for i, s in enumerate(all_series)])
    position = np.concatenate([np.arange(len(s)) for s in all_series])
    order = np.lexsort((stream_index, timestamps))
    columns = [
        (s.stream_id, s.timestamps.tolist(), s.values.tolist(), [tuple(r) for r in s.covariates.tolist()])
        for s in all_series
    ]
    for i, p in zip(stream_index[order].tolist(), position[order].tolist()):
        stream_id, ts, vs, cs = columns[i]
        yield ts[p], stream_id, vs[p], cs[p]


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    names: tuple[str, ...]
    timestamp: int
    stream_id: int
    value: int
    covariates: tuple[int, ...]

    @property
    def covariate_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.covariates)


@dataclass
class _StreamRows:
    """Accumulates one stream's rows while the file is read."""

    stream_id: str
    timestamps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    covariates: list[list[float]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise DataError(path, None, None, "file does not exist") from None
    except IsADirectoryError:
        raise DataError(path, None, None, "is a directory, not a CSV file") from None
    except OSError as err:
        raise DataError(path, None, None, f"cannot read file: {err.strerror or err}") from None


def _decode(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # tolerate the BOM spreadsheets write
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(path, line, None, f"file is not UTF-8 (invalid byte at offset {err.start})") from None


def _read_header(path: str, reader: Any) -> _Header:
    try:
        row = next(reader, None)
    except csv.Error as err:
        raise DataError(path, 1, None, f"malformed CSV header: {err}") from None
    if row is None:
        raise DataError(path, 1, None, "empty file: expected a header with columns timestamp, stream_id, value")
    if not any(cell.strip() for cell in row):
        raise DataError(path, 1, None, "blank first line: expected a header with columns timestamp, stream_id, value")
    names = tuple(cell.strip() for cell in row)
    seen: set[str] = set()
    for name in names:
        if not name:
            raise DataError(path, 1, None, "header has an empty column name")
        if name in seen:
            raise DataError(path, 1, name, "duplicate column name in header")
        seen.add(name)
    missing = [name for name in REQUIRED_COLUMNS if name not in seen]
    if missing:
        raise DataError(
            path,
            1,
            missing[0],
            f"missing required column (missing: {', '.join(missing)}; header has: {', '.join(names)})",
        )
    index = {name: i for i, name in enumerate(names)}
    return _Header(
        names=names,
        timestamp=index["timestamp"],
        stream_id=index["stream_id"],
        value=index["value"],
        covariates=tuple(i for i, name in enumerate(names) if name not in REQUIRED_COLUMNS),
    )


def _read_rows(path: str, reader: Any, header: _Header) -> dict[str, _StreamRows]:
    streams: dict[str, _StreamRows] = {}
    n_fields = len(header.names)
    ts_i, sid_i, value_i = header.timestamp, header.stream_id, header.value
    covariate_columns = [(i, header.names[i]) for i in header.covariates]
    end_line = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(path, reader.line_num, None, f"malformed CSV: {err}") from None
        # A quoted field may span lines: report the line where the row starts.
        line, end_line = end_line + 1, reader.line_num
        if not row:
            continue  # blank line
        if len(row) != n_fields:
            raise DataError(path, line, None, f"expected {n_fields} fields, got {len(row)}")
        stream_id = row[sid_i].strip()
        if not stream_id:
            raise DataError(path, line, "stream_id", "empty stream id")
        try:
            timestamp = parse_timestamp(row[ts_i])
        except ValueError as err:
            raise DataError(path, line, "timestamp", str(err)) from None
        value = _parse_number(path, line, "value", row[value_i])
        covariates = [_parse_number(path, line, name, row[i]) for i, name in covariate_columns]
        rows = streams.get(stream_id)
        if rows is None:
            rows = streams[stream_id] = _StreamRows(stream_id)
        elif timestamp <= rows.timestamps[-1]:
            _raise_order_error(path, line, stream_id, timestamp, rows)
        rows.timestamps.append(timestamp)
        rows.values.append(value)
        rows.covariates.append(covariates)
        rows.lines.append(line)
    if not streams:
        raise DataError(path, end_line + 1, None, "no data rows after the header")
    return streams


def _parse_number(path: str, line: int, column: str, text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        if not text.strip():
            raise DataError(path, line, column, "empty field: expected a number") from None
        raise DataError(path, line, column, f"not a number: {text!r}") from None
    if not math.isfinite(number):
        raise DataError(
            path,
            line,
            column,
            f"{text.strip()!r} is not a finite number (leave missing readings out instead of writing NaN)",
        )
    return number


def _raise_order_error(path: str, line: int, stream_id: str, timestamp: float, rows: _StreamRows) -> None:
    previous, previous_line = rows.timestamps[-1], rows.lines[-1]
    if timestamp == previous:
        raise DataError(
            path,
            line,
            "timestamp",
            f"duplicate timestamp {format_timestamp(timestamp)} in stream {stream_id!r} "
            f"(already on line {previous_line})",
        )
    raise DataError(
        path,
        line,
        "timestamp",
        f"timestamp {format_timestamp(timestamp)} is earlier than {format_timestamp(previous)} "
        f"on line {previous_line} in stream {stream_id!r}: timestamps must increase within a stream",
    )


# --- steps and gaps ----------------------------------------------------------------------


def _build_series(path: str, rows: _StreamRows, step_seconds: float | None) -> Series:
    timestamps = _frozen(np.asarray(rows.timestamps, dtype=np.float64))
    values = _frozen(np.asarray(rows.values, dtype=np.float64))
    covariates = _frozen(np.asarray(rows.covariates, dtype=np.float64).reshape(len(timestamps), -1))
    stream_id = rows.stream_id
    diffs = np.diff(timestamps)
    if step_seconds is None:
        if diffs.size == 0:
            raise DataError(
                path,
                rows.lines[0],
                None,
                f"stream {stream_id!r} has a single row, so its step cannot be inferred: "
                "give the step explicitly (step_seconds / --step)",
            )
        step_seconds = _most_common_difference(diffs)
    steps = np.rint(diffs / step_seconds)
    gap_at = np.nonzero(steps > 1)[0]
    gaps = tuple(Gap(float(timestamps[i]), int(steps[i]) - 1) for i in gap_at)
    return Series(stream_id, timestamps, values, covariates, float(step_seconds), gaps)


def _most_common_difference(diffs: np.ndarray) -> float:
    # Rounding to the microsecond merges differences that only differ by float noise;
    # ties go to the smallest difference, as larger ones are usually gaps.
    rounded = np.round(diffs, 6)
    unique, counts = np.unique(rounded, return_counts=True)
    return float(unique[np.argmax(counts)])


def _irregular_index(series: Series) -> int | None:
    diffs = np.diff(series.timestamps)
    steps = np.rint(diffs / series.step_seconds)
    # Epoch floats resolve ~0.24 us near 2014, so sub-second steps also need an absolute
    # allowance of a few units in the last place of the timestamps themselves.
    tolerance = _STEP_TOLERANCE * diffs + 4 * np.spacing(np.abs(series.timestamps[1:]))
    off_grid = (steps < 1) | (np.abs(diffs - steps * series.step_seconds) > tolerance)
    bad = np.nonzero(off_grid)[0]
    return int(bad[0]) + 1 if bad.size else None


def _raise_first_irregular(path: str, streams: dict[str, _StreamRows], series: dict[str, Series]) -> None:
    """Raises for the irregular difference that appears first in the file, if any."""
    first: tuple[int, str, int] | None = None
    for stream_id, s in series.items():
        index = _irregular_index(s)
        if index is not None:
            line = streams[stream_id].lines[index]
            if first is None or line < first[0]:
                first = (line, stream_id, index)
    if first is None:
        return
    line, stream_id, index = first
    s, rows = series[stream_id], streams[stream_id]
    difference = s.timestamps[index] - s.timestamps[index - 1]
    raise DataError(
        path,
        line,
        "timestamp",
        f"irregular sampling in stream {stream_id!r}: {format_timestamp(s.timestamps[index])} is "
        f"{difference:g} s after the previous reading (line {rows.lines[index - 1]}), "
        f"not a whole multiple of the step {s.step_seconds:g} s",
    )


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _describe_series(series: Series) -> str:
    span = f"{format_timestamp(series.timestamps[0])} .. {format_timestamp(series.timestamps[-1])}"
    if not series.gaps:
        gaps = "no gaps"
    else:
        largest = max(series.gaps, key=lambda g: g.missing_steps)
        gaps = (
            f"{len(series.gaps)} gap{'s' if len(series.gaps) != 1 else ''}, "
            f"{series.missing_steps} missing step{'s' if series.missing_steps != 1 else ''} "
            f"(largest {largest.missing_steps} after {format_timestamp(largest.after_timestamp)})"
        )
    return f"{series.stream_id}: {len(series):,} rows, {span}, step {series.step_seconds:g} s, {gaps}"
