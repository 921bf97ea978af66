"""Micro-benchmark of the per-reading serving step: µs of CPU per ``Engine.step`` (numpy only).

Every plain cell (rnn, lstm, gru) with 1 and 2 layers of 64 units, shaped like the default artifact
(H = S = 48, two covariates, calendar features, 30-minute steps), random weights from a fixed seed,
plus the 1-layer LSTM with prediction intervals (levels 0.8 and 0.95, ``lstm_1x64_intervals``) and
``artifacts/default`` itself when it exists. Each engine is warmed up past ``min_history`` on a
fixed random stream, then the same ``--steps`` steady-state readings (every one yields a forecast) are
stepped ``--repeats`` times from the same state; the result is the median over the repeats of
process CPU time per step, with the fastest repeat next to it. No TensorFlow, no broker.

Usage: ``python -m benchmarks.step_micro [--steps 2000] [--repeats 7]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from models.cells import NetworkWeights, RecurrentLayer
from models.engine import Engine, EngineConfig
from models.features import FeatureSpec
from models.intervals import DEFAULT_GAMMA, DEFAULT_LEVELS, IntervalSpec
from models.reading import Reading
from models.scaling import ScalerParams

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
UNITS = 64
SEASON = HORIZON = 48
STEP_SECONDS = 1800.0
DEFAULT_ARTIFACT = Path(__file__).resolve().parent.parent / "artifacts" / "default"


def random_network(cell: str, layers: int, n_features: int, seed: int = 0) -> NetworkWeights:
    """A plain stack with random weights in Keras' layout (the serving engine cannot tell the difference)."""
    rng = np.random.default_rng(seed)
    stack = []
    fan_in = n_features
    for _ in range(layers):
        g = GATES[cell]
        stack.append(
            RecurrentLayer(
                cell=cell,
                kernel=rng.normal(scale=0.4, size=(fan_in, g * UNITS)),
                recurrent_kernel=rng.normal(scale=0.3 / math.sqrt(UNITS), size=(UNITS, g * UNITS)),
                bias=rng.normal(scale=0.1, size=(2, g * UNITS) if cell == "gru" else (g * UNITS,)),
            )
        )
        fan_in = UNITS
    return NetworkWeights(
        layers=tuple(stack),
        head_kernel=rng.normal(scale=0.2, size=(UNITS, HORIZON)),
        head_bias=rng.normal(scale=0.1, size=HORIZON),
        skip_kernel=rng.normal(scale=0.1, size=(n_features + HORIZON, HORIZON)),
        skip_bias=rng.normal(scale=0.1, size=HORIZON),
    )


def fixed_stream(n: int, n_covariates: int, step_seconds: float, seed: int = 1) -> list[Reading]:
    """A daily-seasonal stream with noise and random covariates, no gaps."""
    rng = np.random.default_rng(seed)
    start = 1_400_000_000.0
    return [
        Reading(
            "bench",
            start + i * step_seconds,
            float(100.0 + 20.0 * math.sin(2.0 * math.pi * i / SEASON) + rng.normal()),
            tuple(float(c) for c in rng.normal(size=n_covariates)),
        )
        for i in range(n)
    ]


def us_per_step(engine: Engine, n_covariates: int, steps: int, repeats: int) -> dict:
    warm = engine.config.min_history
    items = fixed_stream(warm + steps, n_covariates, engine.config.step_seconds)
    state = None
    for reading in items[:warm]:
        state = engine.step(state, reading).state
    timed = items[warm:]
    samples = []
    for _ in range(repeats):
        current = state
        started = time.process_time()
        for reading in timed:
            current = engine.step(current, reading).state
        samples.append((time.process_time() - started) / steps * 1e6)
    return {"median_us": round(statistics.median(samples), 2), "min_us": round(min(samples), 2)}


def default_shaped_spec() -> tuple[FeatureSpec, EngineConfig]:
    """Features and serving config shaped like the default artifact (two covariates, calendar, S = 48)."""
    spec = FeatureSpec(
        covariate_names=("temperature", "workday"),
        covariate_scaler=ScalerParams(mean=(16.8, 0.68), scale=(6.0, 0.47)),
        calendar=True,
    )
    return spec, EngineConfig(season=SEASON, step_seconds=STEP_SECONDS, min_history=SEASON + 1)


def default_shaped_intervals(seed: int = 0) -> IntervalSpec:
    """Prediction intervals at the default levels over H = 48 steps, widening with the step (random offsets)."""
    rng = np.random.default_rng(seed)
    half = np.cumsum(rng.uniform(0.2, 0.6, size=(len(DEFAULT_LEVELS), HORIZON)), axis=0) * np.sqrt(
        np.arange(1, HORIZON + 1)
    )
    centre = rng.normal(scale=0.1, size=HORIZON)
    return IntervalSpec.from_offsets(DEFAULT_LEVELS, centre - half, centre + half, DEFAULT_GAMMA)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="steady-state readings per repeat")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (the median is reported)")
    args = parser.parse_args(argv)

    spec, config = default_shaped_spec()
    results: dict[str, dict] = {}
    for cell in ("rnn", "lstm", "gru"):
        for layers in (1, 2):
            engine = Engine(random_network(cell, layers, spec.size), spec, config)
            results[f"{cell}_{layers}x{UNITS}"] = us_per_step(engine, 2, args.steps, args.repeats)
    engine = Engine(random_network("lstm", 1, spec.size), spec, config, default_shaped_intervals())
    results[f"lstm_1x{UNITS}_intervals"] = us_per_step(engine, 2, args.steps, args.repeats)
    if (DEFAULT_ARTIFACT / "manifest.json").exists():
        from models.artifact import load_artifact

        artifact = load_artifact(DEFAULT_ARTIFACT)
        engine = artifact.engine()
        n_covariates = len(engine.features.covariate_names)
        results[f"artifact_default_{artifact.cell}"] = us_per_step(engine, n_covariates, args.steps, args.repeats)
    report = {
        "unit": "µs of process CPU per Engine.step (steady state, forecast every reading)",
        "steps": args.steps,
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "results": results,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
