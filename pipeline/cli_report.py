"""``rnncast report``: read the published forecasts and the readings back from Kafka, score, plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.argtypes import int_at_least, positive_float
from pipeline.kafka_config import add_kafka_arguments, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``report`` options."""
    parser.description = (
        "Read the forecasts topic and the readings topic back from Kafka (all partitions, from the beginning "
        "to the end offsets at the start), join every forecast with the readings at its target times and "
        "write a PNG: forecast vs actual for one stream, and MAE per horizon of the published forecasts vs "
        "persistence (the reading's own value at the forecast's origin). Forecasts that carry prediction "
        "intervals also get their coverage, mean width and interval (Winkler) score per horizon band and level. "
        "Duplicated forecasts (same stream_id and timestamp) count once; records that do not parse are counted "
        "and skipped."
    )
    add_kafka_arguments(parser)
    parser.add_argument(
        "--readings-topic", default="readings", metavar="TOPIC", help="topic of the readings (default: %(default)s)"
    )
    parser.add_argument(
        "--forecasts-topic", default="forecasts", metavar="TOPIC", help="topic of the forecasts (default: %(default)s)"
    )
    parser.add_argument(
        "--stream",
        metavar="ID",
        help="stream to plot (default: the one with most forecasts, which costs one more pass over the "
        "forecasts topic)",
    )
    parser.add_argument(
        "--last",
        type=int_at_least(1),
        default=336,
        metavar="N",
        help="plot the stream's last N readings (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("report.png"), metavar="PNG", help="figure to write (default: %(default)s)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"streams", "forecasts", "scored_points", "model_versions", "mae", "persistence_mae", '
        '"mae_ratio_vs_persistence", "interval_coverage", "intervals", "unparsed", ...} as JSON instead of a table',
    )
    parser.add_argument(
        "--max-lag",
        type=positive_float,
        default=8.0,
        metavar="SPANS",
        help="forecasts trailing the forecasts topic's event-time frontier by more than this many forecast "
        "spans are counted as late and not scored; more costs memory (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Builds the report; prints JSON (``--json``) or a summary table."""
    settings = settings_from_args(args)
    from kafka.errors import KafkaError

    from pipeline.report import build_report, format_summary

    try:
        result = build_report(
            settings,
            readings_topic=args.readings_topic,
            forecasts_topic=args.forecasts_topic,
            stream=args.stream,
            last=args.last,
            out=args.out,
            max_lag_spans=args.max_lag,
        )
    except KafkaError as err:
        print(f"error: reading from Kafka at {settings.bootstrap} failed: {err}", file=sys.stderr)
        return 1
    if args.json:
        doc = result.summary()
        doc["out"] = str(args.out)
        print(json.dumps(doc, allow_nan=False))
    else:
        print(format_summary(result, str(args.out)))
    return 0
