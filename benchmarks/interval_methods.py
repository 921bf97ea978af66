"""Which online adaptation of the prediction intervals: measured on held-out data.

For a trained artifact and its CSV: calibrates the split-conformal offsets on the artifact's own
validation part (as ``rnncast train`` does), then serves every stream from its first reading and scores
the test part (as ``rnncast evaluate`` does) with each candidate:

* ``static``: the calibrated interval (the engine with ``gamma = 0``);
* ``aci_<gamma>``: adaptive conformal inference on the per-stream log-scale (the engine, :mod:`models.intervals`);
* ``rolling_<W>``: the calibrated shape scaled by a rolling quantile of the last W errors at each
  anchor step (computed here from the static run: a candidate, not a served method).

Usage: ``python -m benchmarks.interval_methods --artifact DIR --data CSV [--levels 0.8,0.95]``; prints one
JSON object per candidate (coverage per level, mean over horizons and per band; Winkler ratio vs the
seasonal-naive baseline interval).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from models.artifact import load_artifact
from models.data import load_csv
from models.engine import Engine
from models.evaluation import calibrate_intervals, covariate_columns, evaluate, run_stream, test_boundaries
from models.intervals import parse_levels
from models.metrics import combine_scores, interval_band_table, score_series


def summarise(name: str, report: dict) -> dict:
    bands = {}
    for row in interval_band_table(report):
        bands.setdefault(row["level"], {})[row["band"]] = round(row["coverage"], 4)
    return {
        "method": name,
        "coverage": {k: round(v, 4) for k, v in report["summary"]["interval_coverage"].items()},
        "coverage_by_band": bands,
        "score_ratio_vs_baseline": {
            k: round(v, 4) for k, v in report["summary"]["interval_score_ratio_vs_baseline"].items()
        },
        "baseline_coverage": {k: round(v, 4) for k, v in report["summary"]["baseline_interval_coverage"].items()},
        "mae_ratio_vs_persistence": round(report["summary"]["mae_ratio_vs_persistence"], 4),
    }


def rolling(engine: Engine, dataset, season: int, test_fraction: float, window: int) -> dict:
    """The calibrated shape scaled, per level and anchor step k, by the rolling ``level`` quantile of the
    last ``window`` step-k errors that have arrived (distance to the calibrated centre) ÷ the calibrated
    half-width; log-scales interpolated over steps as the engine does. Needs W floats per anchor and
    stream in the state (the engine's adaptation: one per anchor and level, plus the pending forecasts)."""
    spec = engine.intervals
    static = Engine(engine.weights, engine.features, engine.config, spec.with_gamma(0.0))
    columns = covariate_columns(engine, dataset)
    boundaries = test_boundaries(dataset, test_fraction, None)
    scores = []
    for sid, series in dataset.series.items():
        run = run_stream(static, sid, series, columns)
        n = len(series.values)
        actual_scaled = series.values[:, None] / run.scales[None, :]  # [target, origin's scale]
        lower = np.full_like(run.lower, np.nan)
        upper = np.full_like(run.upper, np.nan)
        # errors[b][j]: the step-k_b error of the forecast issued at j (NaN if none), known from j + k_b on.
        errors = []
        for k in spec.anchors.tolist():
            e = np.full(n, np.nan)
            e[: n - k] = (series.values[k:] - run.forecasts[: n - k, k - 1]) / run.scales[: n - k]
            errors.append(e)
        del actual_scaled
        for i in np.flatnonzero(np.isfinite(run.scales)):
            log_scale = np.zeros(spec._anchor_centre.shape)
            for b, k in enumerate(spec.anchors.tolist()):
                recent = errors[b][max(i - k - window + 1, 0) : max(i - k + 1, 0)]
                recent = recent[np.isfinite(recent)]
                if recent.size >= 10:
                    for j, level in enumerate(spec.levels):
                        q = np.quantile(np.abs(recent - spec._anchor_centre[j, b]), level)
                        log_scale[j, b] = np.log(max(q, 1e-12) / max(spec._anchor_half[j, b], 1e-12))
            half = np.exp(log_scale @ spec.interpolation) * spec.half_width
            lower[i] = run.forecasts[i] + (spec.centre - half) * run.scales[i]
            upper[i] = run.forecasts[i] + (spec.centre + half) * run.scales[i]
        scores.append(
            score_series(
                series.timestamps,
                series.values,
                run.forecasts,
                series.step_seconds,
                season,
                boundaries[sid],
                spec.levels,
                lower,
                upper,
            )
        )
    return combine_scores(scores, engine.horizon, season)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--levels", default="0.8,0.95")
    parser.add_argument("--gammas", default="0.005,0.01,0.02,0.05,0.1")
    parser.add_argument("--windows", default="")
    args = parser.parse_args()
    artifact = load_artifact(args.artifact)
    dataset = load_csv(args.data)
    training = artifact.manifest["training"]
    bare = Engine(artifact.weights, artifact.features, artifact.engine_config())
    spec, counts = calibrate_intervals(
        bare, dataset, training["validation_from"], training["test_from"], parse_levels(args.levels), 0.0
    )
    test_fraction = training["config"]["test_fraction"]
    season = artifact.season
    print(json.dumps({"calibration_points": [int(counts.min()), int(counts.max())]}), flush=True)
    for gamma in [0.0] + [float(g) for g in args.gammas.split(",") if g]:
        engine = Engine(artifact.weights, artifact.features, artifact.engine_config(), spec.with_gamma(gamma))
        report, _ = evaluate(engine, dataset, season, test_fraction)
        print(json.dumps(summarise("static" if gamma == 0 else f"aci_{gamma:g}", report)), flush=True)
    for window in [int(w) for w in args.windows.split(",") if w]:
        engine = Engine(artifact.weights, artifact.features, artifact.engine_config(), spec)
        print(
            json.dumps(summarise(f"rolling_{window}", rolling(engine, dataset, season, test_fraction, window))),
            flush=True,
        )


if __name__ == "__main__":
    main()
