"""Micro-benchmark of the job's online accuracy tracking: µs of CPU per applied reading.

1,000 streams, H = 48, 30-minute steps, readings round-robin over the streams (one step of every stream,
then the next), every reading with a forecast, as the stateful step feeds the tracker at saturation. Each
stream first gets H + 1 untimed warm-up readings, so every timed reading scores all H pending forecasts
(the steady state). Then ``--readings`` readings are timed (process CPU time), in bundles of
``--bundle`` readings (the job's ``--batch-size``) with a flush at each bundle's end:

* ``tracker``: :meth:`AccuracyTracker.record` per reading + :meth:`AccuracyTracker.flush` per bundle;
* ``monitor``: :meth:`AccuracyMonitor.observe` per reading + :meth:`AccuracyMonitor.flush` per bundle
  (``finish_bundle``), into a real :class:`~pipeline.metrics.JobMetrics` (Prometheus histogram, skill).

Each is repeated ``--repeats`` times from a fresh tracker; the result is the median µs per reading
(flushes included), with the fastest repeat next to it. No broker, no model.

Usage: ``python -m benchmarks.accuracy_micro [--readings 100000] [--streams 1000] [--bundle 1000]``;
prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
from prometheus_client import CollectorRegistry

from models.online_accuracy import AccuracyTracker
from pipeline.accuracy_monitor import AccuracyMonitor
from pipeline.metrics import JobMetrics

HORIZON = 48
STEP_SECONDS = 1800.0
START = 1_400_000_000.0


def readings(streams: int, steps: int, seed: int = 0) -> list[tuple]:
    """``steps`` round-robin rounds over ``streams`` streams: observe()'s arguments, forecasts as row views."""
    rng = np.random.default_rng(seed)
    n = streams * steps
    forecasts = rng.normal(size=(n, HORIZON))
    values = rng.normal(100.0, 10.0, size=n).tolist()
    means = rng.normal(100.0, 1.0, size=streams).tolist()
    scales = rng.uniform(5.0, 15.0, size=streams).tolist()
    ids = [f"stream#{k}" for k in range(streams)]
    return [
        (ids[k], START + (i // streams) * STEP_SECONDS, values[i], means[k], scales[k], forecasts[i])
        for i in range(n)
        for k in (i % streams,)
    ]


def _time(feed, flush, warm: list[tuple], timed: list[tuple], bundle: int) -> float:
    for args in warm:
        feed(*args)
    flush()
    started = time.process_time()
    for first in range(0, len(timed), bundle):
        for args in timed[first : first + bundle]:
            feed(*args)
        flush()
    return (time.process_time() - started) / len(timed) * 1e6


def us_per_reading(kind: str, streams: int, warm: list[tuple], timed: list[tuple], bundle: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        if kind == "tracker":
            tracker = AccuracyTracker(HORIZON, STEP_SECONDS, max_streams=streams)
            runs.append(_time(tracker.record, tracker.flush, warm, timed, bundle))
        else:
            monitor = AccuracyMonitor(JobMetrics(CollectorRegistry()), HORIZON, STEP_SECONDS, max_streams=streams)
            runs.append(_time(monitor.observe, monitor.flush, warm, timed, bundle))
    return {"us_per_reading": round(statistics.median(runs), 3), "fastest": round(min(runs), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000, help="timed readings (default: %(default)s)")
    parser.add_argument("--streams", type=int, default=1000, help="streams (default: %(default)s)")
    parser.add_argument("--bundle", type=int, default=1000, help="readings per flush (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (default: %(default)s)")
    args = parser.parse_args(argv)
    warm_steps = HORIZON + 1
    timed_steps = -(-args.readings // args.streams)
    all_readings = readings(args.streams, warm_steps + timed_steps)
    warm = all_readings[: warm_steps * args.streams]
    timed = all_readings[warm_steps * args.streams :][: args.readings]
    result = {
        "what": "microseconds of CPU per applied reading: record/observe + the flush at each bundle's end, amortised",
        "streams": args.streams,
        "horizon": HORIZON,
        "readings": len(timed),
        "bundle": args.bundle,
        "warm_up_readings": len(warm),
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    for kind in ("tracker", "monitor"):
        result[kind] = us_per_reading(kind, args.streams, warm, timed, args.bundle, args.repeats)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
