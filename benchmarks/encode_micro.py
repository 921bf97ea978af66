"""Micro-benchmark of the forecast message encoder: µs of CPU per ``pipeline.messages.encode_forecast``.

One forecast shaped like the default model's (H = 48, original units around 5 GW with noise), without
and with prediction intervals at the default levels (0.8, 0.95: 4 x 48 more floats). Each case is
encoded ``--calls`` times per repeat; the result is the median over ``--repeats`` of process CPU time
per call, with the fastest repeat next to it.

Usage: ``python -m benchmarks.encode_micro [--calls 20000] [--repeats 7]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from benchmarks.step_micro import HORIZON, STEP_SECONDS, default_shaped_intervals
from models.reading import Forecast
from pipeline.messages import encode_forecast


def sample_forecast(intervals: bool, seed: int = 0) -> Forecast:
    rng = np.random.default_rng(seed)
    scaled = rng.normal(size=HORIZON)
    mean, scale = 5000.0, 800.0
    forecast = Forecast("meter-0042", 1_400_000_000.0, scaled * scale + mean, scaled, STEP_SECONDS, 1000)
    if not intervals:
        return forecast
    spec = default_shaped_intervals()
    return Forecast(
        forecast.stream_id,
        forecast.timestamp,
        forecast.values,
        scaled,
        STEP_SECONDS,
        1000,
        spec.levels,
        (spec.lower + scaled) * scale + mean,
        (spec.upper + scaled) * scale + mean,
    )


def us_per_call(forecast: Forecast, calls: int, repeats: int) -> dict:
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            encode_forecast(forecast, "lstm", "2026-12-03T18:00:00Z")
        samples.append((time.process_time() - started) / calls * 1e6)
    return {"median_us": round(statistics.median(samples), 2), "min_us": round(min(samples), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="encodes per repeat")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (the median is reported)")
    args = parser.parse_args(argv)
    report = {
        "unit": "µs of process CPU per encode_forecast (H = 48)",
        "calls": args.calls,
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "results": {
            "point": us_per_call(sample_forecast(False), args.calls, args.repeats),
            "intervals_0.8_0.95": us_per_call(sample_forecast(True), args.calls, args.repeats),
        },
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
