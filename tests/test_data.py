"""Tests for models.data: the CSV contract, its error messages and the bundled datasets."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from models.data import DataError, Gap, iter_rows, load_csv
from models.timeutil import parse_timestamp

REPO = Path(__file__).resolve().parent.parent
T0 = 1388534400.0  # 2014-01-01T00:00:00Z
HEADER = "timestamp,stream_id,value"


def write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        load_csv(path, **kwargs)  # type: ignore[arg-type]
    return info.value


def assert_error(path: Path, line: int | None, column: str | None, fragment: str, **kwargs: object) -> None:
    err = load_error(path, **kwargs)
    assert (err.path, err.line, err.column) == (str(path), line, column)
    assert fragment in err.message
    if line is None:
        assert str(err) == f"{path}: {err.message}"
    elif column is None:
        assert str(err) == f"{path}:{line}: {err.message}"
    else:
        assert str(err) == f"{path}:{line}: column '{column}': {err.message}"


# --- DataError -----------------------------------------------------------------------------


def test_data_error_str_formats() -> None:
    assert str(DataError("a.csv", 3, "value", "bad")) == "a.csv:3: column 'value': bad"
    assert str(DataError("a.csv", 3, None, "bad")) == "a.csv:3: bad"
    assert str(DataError(Path("a.csv"), None, None, "bad")) == "a.csv: bad"


def test_data_error_is_a_value_error_and_pickles() -> None:
    err = DataError("a.csv", 3, "value", "bad")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.line, copy.column, copy.message) == ("a.csv", 3, "value", "bad")


# --- one test per error kind -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_error(tmp_path / "nope.csv", None, None, "does not exist")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert_error(tmp_path, None, None, "is a directory")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,caf\xe9,1\n".encode("latin-1"))
    assert_error(path, 3, None, "not UTF-8")


def test_empty_file(tmp_path: Path) -> None:
    assert_error(write(tmp_path, ""), 1, None, "empty file")


def test_blank_first_line(tmp_path: Path) -> None:
    assert_error(write(tmp_path, f"\n{HEADER}\n2014-01-01T00:00:00Z,a,1\n"), 1, None, "blank first line")


def test_header_only_has_no_data_rows(tmp_path: Path) -> None:
    assert_error(write(tmp_path, f"{HEADER}\n"), 2, None, "no data rows")


def test_header_and_blank_lines_have_no_data_rows(tmp_path: Path) -> None:
    assert_error(write(tmp_path, f"{HEADER}\n\n\n"), 4, None, "no data rows")


def test_missing_required_column(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,stream,value\n2014-01-01T00:00:00Z,a,1\n")
    assert_error(path, 1, "stream_id", "missing required column")


def test_duplicate_column_name(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,stream_id,value,t,t\n2014-01-01T00:00:00Z,a,1,2,3\n")
    assert_error(path, 1, "t", "duplicate column name")


def test_wrong_number_of_fields(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,a,1,9\n")
    assert_error(path, 3, None, "expected 3 fields, got 4")


def test_unparseable_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01 half past,a,1\n")
    assert_error(path, 3, "timestamp", "expected RFC 3339")


def test_timestamp_without_offset(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00,a,1\n")
    assert_error(path, 2, "timestamp", "has no UTC offset")


def test_unparseable_value(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,a,1.2.3\n")
    assert_error(path, 3, "value", "not a number: '1.2.3'")


def test_empty_value(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,\n")
    assert_error(path, 2, "value", "empty field")


def test_unparseable_covariate(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER},temp\n2014-01-01T00:00:00Z,a,1,warm\n")
    assert_error(path, 2, "temp", "not a number: 'warm'")


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-Infinity", "1e999"])
def test_non_finite_value(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,a,{bad}\n")
    assert_error(path, 3, "value", "not a finite number")


def test_non_finite_covariate(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER},temp\n2014-01-01T00:00:00Z,a,1,NaN\n")
    assert_error(path, 2, "temp", "not a finite number")


def test_empty_stream_id(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z, ,1\n")
    assert_error(path, 3, "stream_id", "empty stream id")


def test_duplicate_timestamp_within_stream(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:00:00Z,b,1\n2014-01-01T10:00:00+10:00,a,2\n",
    )
    assert_error(path, 4, "timestamp", "duplicate timestamp 2014-01-01T00:00:00Z in stream 'a' (already on line 2)")


def test_decreasing_timestamp_within_stream(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"{HEADER}\n2014-01-01T00:30:00Z,a,1\n2014-01-01T00:00:00Z,b,1\n2014-01-01T00:00:00Z,a,2\n",
    )
    assert_error(path, 4, "timestamp", "earlier than 2014-01-01T00:30:00Z on line 2 in stream 'a'")


def test_irregular_sampling(tmp_path: Path) -> None:
    rows = ["2014-01-01T00:00:00Z", "2014-01-01T00:30:00Z", "2014-01-01T01:00:00Z", "2014-01-01T01:40:00Z"]
    path = write(tmp_path, HEADER + "\n" + "".join(f"{t},a,1\n" for t in rows))
    assert_error(path, 5, "timestamp", "irregular sampling in stream 'a'")


def test_irregular_sampling_reports_first_line_across_streams(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"{HEADER}\n"
        "2014-01-01T00:00:00Z,a,1\n2014-01-01T00:00:00Z,b,1\n"
        "2014-01-01T01:00:00Z,a,1\n2014-01-01T01:00:00Z,b,1\n"
        "2014-01-01T02:00:00Z,a,1\n2014-01-01T02:10:00Z,b,1\n"
        "2014-01-01T03:20:00Z,a,1\n",
    )
    assert_error(path, 7, "timestamp", "irregular sampling in stream 'b'")


def test_difference_smaller_than_given_step_is_irregular(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,a,1\n")
    assert_error(path, 3, "timestamp", "not a whole multiple of the step 3600 s", step_seconds=3600)


def test_single_row_stream_needs_a_step(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,a,1\n2014-01-01T00:30:00Z,b,1\n")
    assert_error(path, 4, None, "stream 'b' has a single row")
    assert len(load_csv(path, step_seconds=1800).series["b"]) == 1


def test_malformed_csv_quoting(tmp_path: Path) -> None:
    path = write(tmp_path, f'{HEADER}\n2014-01-01T00:00:00Z,"a"x,1\n')
    assert_error(path, 2, None, "malformed CSV")


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_invalid_step_argument(tmp_path: Path, bad: float) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n")
    with pytest.raises(ValueError, match="step_seconds"):
        load_csv(path, step_seconds=bad)


# --- valid files ---------------------------------------------------------------------------


def test_multi_stream_interleaved_with_covariates_in_header_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "workday,value,timestamp,stream_id,temperature\n"
        "0,1.5,2014-01-01T00:00:00Z,b,20\n"
        "0,10,2014-01-01T00:00:00Z,a,21\n"
        "1,2.5,2014-01-01T00:30:00Z,b,22\n"
        "\n"
        "1,11,2014-01-01T01:00:00Z,a,23\n"
        "1,3.5,2014-01-01T01:00:00Z,b,24\n",
    )
    data = load_csv(path)
    assert data.covariate_names == ("workday", "temperature")
    assert list(data.series) == ["b", "a"]
    b, a = data.series["b"], data.series["a"]
    np.testing.assert_array_equal(b.timestamps, [T0, T0 + 1800, T0 + 3600])
    np.testing.assert_array_equal(b.values, [1.5, 2.5, 3.5])
    np.testing.assert_array_equal(b.covariates, [[0, 20], [1, 22], [1, 24]])
    assert b.timestamps.dtype == b.values.dtype == b.covariates.dtype == np.float64
    assert (len(b), len(a)) == (3, 2) and data.num_rows == 5
    assert (b.step_seconds, a.step_seconds) == (1800.0, 3600.0)
    assert b.gaps == () and a.gaps == ()
    assert a.stream_id == "a"


def test_no_covariates_gives_empty_second_axis(tmp_path: Path) -> None:
    data = load_csv(write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,a,2\n"))
    assert data.covariate_names == ()
    assert data.series["a"].covariates.shape == (2, 0)


def test_arrays_are_read_only(tmp_path: Path) -> None:
    series = load_csv(write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,a,2\n")).series["a"]
    with pytest.raises(ValueError):
        series.values[0] = 5.0


def test_step_is_most_common_difference_and_larger_ones_are_gaps(tmp_path: Path) -> None:
    minutes = [0, 15, 30, 45, 90, 105, 120, 180]
    rows = "".join(f"{int(T0) + m * 60},s,{i}\n" for i, m in enumerate(minutes))
    series = load_csv(write(tmp_path, HEADER + "\n" + rows)).series["s"]
    assert series.step_seconds == 900.0
    assert series.gaps == (Gap(T0 + 45 * 60, 2), Gap(T0 + 120 * 60, 3))
    assert series.missing_steps == 5
    # Gaps are reported, never filled.
    assert len(series) == len(minutes)
    np.testing.assert_array_equal(series.values, np.arange(len(minutes)))


def test_step_tie_goes_to_the_smaller_difference(tmp_path: Path) -> None:
    rows = "".join(f"{int(T0) + s},s,1\n" for s in (0, 600, 1800))
    assert load_csv(write(tmp_path, HEADER + "\n" + rows)).series["s"].step_seconds == 600.0


def test_given_step_overrides_inference(tmp_path: Path) -> None:
    rows = "".join(f"{int(T0) + s},s,1\n" for s in (0, 3600, 7200, 7500))
    with pytest.raises(DataError):
        load_csv(write(tmp_path, HEADER + "\n" + rows))
    series = load_csv(tmp_path / "d.csv", step_seconds=300).series["s"]
    assert series.step_seconds == 300.0
    assert series.gaps == (Gap(T0, 11), Gap(T0 + 3600, 11))


def test_epoch_second_timestamps_and_fractional_steps(tmp_path: Path) -> None:
    rows = "".join(f"{T0 + i * 0.1!r},s,{i}\n" for i in range(50))
    series = load_csv(write(tmp_path, HEADER + "\n" + rows)).series["s"]
    assert series.step_seconds == pytest.approx(0.1)
    assert series.gaps == ()
    assert series.timestamps[0] == T0


def test_mixed_timestamp_forms_and_offsets(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n{int(T0) + 1800},a,2\n2014-01-01T11:00:00+10:00,a,3\n")
    np.testing.assert_array_equal(load_csv(path).series["a"].timestamps, [T0, T0 + 1800, T0 + 3600])


def test_bom_crlf_and_whitespace_in_header(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(
        b"\xef\xbb\xbftimestamp, stream_id ,value\r\n2014-01-01T00:00:00Z,a,1\r\n2014-01-01T00:30:00Z,a,2\r\n"
    )
    assert len(load_csv(path).series["a"]) == 2


def test_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path, f"{HEADER}\n2014-01-01T00:00:00Z,a,1\n2014-01-01T00:30:00Z,a,2\n")
    assert load_csv(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_csv(path).path == str(path)


def test_iter_rows_global_order_ties_by_stream_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"{HEADER},c\n"
        "2014-01-01T01:00:00Z,b,1,10\n"
        "2014-01-01T00:00:00Z,a,2,20\n"
        "2014-01-01T02:00:00Z,b,3,30\n"
        "2014-01-01T01:00:00Z,a,4,40\n",
    )
    rows = list(iter_rows(load_csv(path)))
    assert rows == [
        (T0, "a", 2.0, (20.0,)),
        (T0 + 3600, "b", 1.0, (10.0,)),
        (T0 + 3600, "a", 4.0, (40.0,)),
        (T0 + 7200, "b", 3.0, (30.0,)),
    ]
    assert all(type(r[0]) is float and type(r[2]) is float for r in rows)


def test_describe_mentions_streams_rows_step_and_gaps(tmp_path: Path) -> None:
    rows = "".join(f"{int(T0) + m * 60},s,1\n" for m in (0, 30, 60, 150))
    text = load_csv(write(tmp_path, HEADER + "\n" + rows)).describe()
    assert "1 stream, 4 rows" in text
    assert "step 1800 s" in text
    assert "1 gap, 2 missing steps" in text


# --- bundled datasets ----------------------------------------------------------------------


def test_elecdemand_loads_quickly_with_expected_shape() -> None:
    start = time.perf_counter()
    data = load_csv(REPO / "data" / "elecdemand.csv")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert data.covariate_names == ("temperature", "workday")
    assert list(data.series) == ["vic_demand"]
    series = data.series["vic_demand"]
    assert len(series) == 17_520
    assert series.step_seconds == 1800.0
    assert series.gaps == ()
    assert series.timestamps[0] == parse_timestamp("2014-01-01T00:00:00Z")
    assert series.timestamps[-1] == parse_timestamp("2014-12-31T23:30:00Z")
    assert 2.5 < series.values.min() < series.values.max() < 10.0  # GW
    assert set(np.unique(series.covariates[:, 1])) == {0.0, 1.0}


def test_water_flow_loads_with_its_gaps() -> None:
    data = load_csv(REPO / "data" / "water-flow.csv")
    assert data.covariate_names == ()
    series = data.series["water_flow"]
    assert len(series) == 1_268
    assert series.step_seconds == 3600.0
    assert series.timestamps[0] == parse_timestamp("2022-03-20T11:00:00+01:00")
    assert len(series.gaps) == 10
    assert series.missing_steps == 111
    assert (series.timestamps[-1] - series.timestamps[0]) / 3600 + 1 == 1_268 + 111
