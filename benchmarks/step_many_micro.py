"""Micro-benchmark of the batched serving step: µs of CPU per reading, ``Engine.step_many`` vs ``Engine.step``.

The engine is the one ``benchmarks.step_micro`` times for ``lstm_1x64`` (64 units, H = S = 48, two
covariates, calendar features, 30-minute steps, random weights from a fixed seed), plus
the same with prediction intervals (``lstm_1x64_intervals``, levels 0.8 and 0.95) and
``artifacts/default`` when it exists. For each batch size B, B distinct streams are warmed up past
``min_history``; then ``--rounds`` rounds of one steady-state reading per stream (every one yields a
forecast) are stepped ``--repeats`` times from the same states, once as one ``step_many`` call per
round and once as B sequential ``step`` calls. The result is the median over the repeats of process
CPU time per reading. No TensorFlow, no broker.

BLAS threads matter here: from 16 rows on, OpenBLAS splits the batch's matrix products over its
threads, whose spinning counts as process CPU (and varies run to run), so the report records
``OPENBLAS_NUM_THREADS``; ``OPENBLAS_NUM_THREADS=1`` measures the engine itself.

Usage: ``[OPENBLAS_NUM_THREADS=1] python -m benchmarks.step_many_micro [--readings 4096] [--repeats 7]``;
prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np

from benchmarks.step_micro import (
    DEFAULT_ARTIFACT,
    default_shaped_intervals,
    default_shaped_spec,
    fixed_stream,
    random_network,
)
from models.engine import MIN_BATCH, Engine
from models.reading import Reading
from models.state import StreamState

BATCH_SIZES = (1, 4, 8, 16, 32, 64, 256)  # the job's rounds are mostly 8-20 streams


def streams(count: int, length: int, n_covariates: int, step_seconds: float) -> list[list[Reading]]:
    """``count`` distinct streams (own ids, own noise), ``length`` readings each."""
    return [
        [
            dataclasses.replace(reading, stream_id=f"bench-{k}")
            for reading in fixed_stream(length, n_covariates, step_seconds, seed=k)
        ]
        for k in range(count)
    ]


def warmed_states(engine: Engine, series: list[list[Reading]], warm: int) -> list[StreamState]:
    states = []
    for readings in series:
        state = None
        for reading in readings[:warm]:
            state = engine.step(state, reading).state
        states.append(state)
    return states


def median_us(run_once, readings: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        run_once()
        samples.append((time.process_time() - started) / readings * 1e6)
    return round(statistics.median(samples), 2)


def compare(engine: Engine, n_covariates: int, batch: int, readings: int, repeats: int) -> dict:
    """µs per reading for one ``step_many`` per round vs ``step`` per reading, ``batch`` streams."""
    warm = engine.config.min_history
    rounds = max(readings // batch, 1)
    series = streams(batch, warm + rounds, n_covariates, engine.config.step_seconds)
    start = warmed_states(engine, series, warm)
    timed = [[stream[warm + r] for stream in series] for r in range(rounds)]

    def batched() -> None:
        states = start
        for round_readings in timed:
            states = [result.state for result in engine.step_many(states, round_readings)]

    def sequential() -> None:
        states = list(start)
        for round_readings in timed:
            for k, reading in enumerate(round_readings):
                states[k] = engine.step(states[k], reading).state

    total = rounds * batch
    many, one = median_us(batched, total, repeats), median_us(sequential, total, repeats)
    return {"step_many_us": many, "step_us": one, "speedup": round(one / many, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=4096, help="steady-state readings per repeat and batch size")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (the median is reported)")
    parser.add_argument("--batches", default=",".join(map(str, BATCH_SIZES)), help="comma-separated batch sizes")
    args = parser.parse_args(argv)

    spec, config = default_shaped_spec()
    network = random_network("lstm", 1, spec.size)
    engines = {
        "lstm_1x64": (Engine(network, spec, config), 2),
        "lstm_1x64_intervals": (Engine(network, spec, config, default_shaped_intervals()), 2),
    }
    if (DEFAULT_ARTIFACT / "manifest.json").exists():
        from models.artifact import load_artifact

        artifact = load_artifact(DEFAULT_ARTIFACT)
        engine = artifact.engine()
        engines[f"artifact_default_{artifact.cell}"] = (engine, len(engine.features.covariate_names))
    batches = [int(b) for b in args.batches.split(",")]
    results = {
        name: {str(batch): compare(engine, n_covariates, batch, args.readings, args.repeats) for batch in batches}
        for name, (engine, n_covariates) in engines.items()
    }
    report = {
        "unit": "µs of process CPU per reading (steady state, forecast every reading), by batch size",
        "min_batch": MIN_BATCH,
        "readings": args.readings,
        "repeats": args.repeats,
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "results": results,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
