"""``rnncast demo``: the local streaming demo (what ``make run`` starts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.argtypes import int_at_least, positive_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start the embedded broker and the streaming job on an artifact, replay a CSV at a steady "
        "rate and show readings/s, forecasts/s, dead letters and the latest forecasts live. "
        "Ctrl-C stops everything it started."
    )
    parser.add_argument(
        "--artifact", default="artifacts/default", help="artifact directory (default: artifacts/default)"
    )
    parser.add_argument(
        "--data", default="data/elecdemand.csv", help="CSV to replay (default: the bundled demand data)"
    )
    parser.add_argument(
        "--rate", type=positive_float, default=500.0, help="readings per second to replay (default: 500)"
    )
    parser.add_argument(
        "--streams-multiply", type=int_at_least(1), default=10, help="clone each stream K times (default: 10)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int_at_least(0),
        default=9108,
        help="the job's Prometheus port (default: 9108; 0 = any free)",
    )
    parser.add_argument("--duration", type=positive_float, help="stop by itself after this many seconds")


def run(args: argparse.Namespace) -> int:
    from models.errors import UsageError
    from pipeline.demo import run_demo

    if not (Path(args.artifact) / "manifest.json").is_file():
        raise UsageError(
            f"{args.artifact}: no artifact (train one: rnncast train --data {args.data} --out {args.artifact})"
        )
    return run_demo(
        Path(args.artifact), Path(args.data), args.rate, args.streams_multiply, args.metrics_port, args.duration
    )
