"""``rnncast train``: fit a recurrent forecaster on a CSV and write a servable artifact."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from datetime import UTC, datetime

import numpy as np

from models.networks import NETWORK_TYPES, VARIANT_TYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train one global recurrent model on every stream of a long-format CSV "
        "(timestamp,stream_id,value[,covariates...]). The network learns a correction to the "
        "seasonal naive forecast from the value, the covariates and calendar features. Training "
        "uses the last --test-fraction of each stream for nothing (evaluate scores it), and an early "
        "part of the rest for early stopping. Writes DIR/model.keras, DIR/weights.npz and DIR/manifest.json."
    )
    parser.add_argument("--data", required=True, help="training CSV (long format)")
    parser.add_argument("--out", required=True, help="artifact directory to write")
    parser.add_argument(
        "--cell",
        choices=NETWORK_TYPES,
        default="lstm",
        help="network: a plain stack of rnn/lstm/gru cells, or a variant: seq2seq (encoder-decoder), "
        "attention (Luong attention over the last --attention-window encoder states), birnn "
        "(forward pass carried, backward pass re-run over the last --window inputs) (default: lstm)",
    )
    parser.add_argument(
        "--encoder-cell",
        choices=("rnn", "lstm", "gru"),
        default="lstm",
        help="variants: the recurrent cell of the encoder / of both directions (default: lstm)",
    )
    parser.add_argument("--decoder-units", type=int, help="seq2seq: decoder units (default: --units / 2)")
    parser.add_argument(
        "--attention-window",
        type=int,
        help="attention: encoder states kept per stream, W (default: one season, at most 96)",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="birnn: inputs the backward pass re-reads at each reading, L (default: one season, at most 96)",
    )
    parser.add_argument("--backward-units", type=int, help="birnn: units of the backward stack (default: --units / 2)")
    parser.add_argument("--horizon", type=int, help="forecast steps H (default: one season)")
    parser.add_argument(
        "--season",
        type=_seasons,
        help="seasonal cycle(s) in steps, comma-separated, e.g. 48,336 for a day and a week of half-hours; each must divide "
        "the longest, the first is the seasonal naive's (default: sub-daily data a day and, with 4 weeks of training "
        "history, a week; daily data 7, and 364 with 3 years)",
    )
    parser.add_argument(
        "--no-smoothing",
        action="store_true",
        help="correct the seasonal naive forecast around a level frozen at the warm-up (the model before smoothing) "
        "instead of per-stream exponential smoothing of level and cycles",
    )
    parser.add_argument("--step", type=float, help="sampling step in seconds (default: inferred per stream)")
    parser.add_argument("--layers", type=int, default=1, help="stacked recurrent layers, 1-3 (default: 1)")
    parser.add_argument("--units", type=int, default=64, help="units per recurrent layer (default: 64)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout after each recurrent layer (default: 0)")
    parser.add_argument(
        "--epochs", type=int, default=60, help="maximum epochs; early stopping usually ends sooner (default: 60)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--loss",
        choices=("mae", "mse"),
        default="mae",
        help="training loss on scaled targets (default: mae, as forecasts are scored)",
    )
    parser.add_argument("--patience", type=int, default=8, help="early-stopping patience in epochs (default: 8)")
    parser.add_argument(
        "--covariates", nargs="*", help="covariate columns to use (default: all; give none to use none)"
    )
    parser.add_argument("--no-calendar", action="store_true", help="do not feed time-of-day/day-of-week features")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="held-out tail of each stream (default: 0.3)")
    parser.add_argument(
        "--max-gap", type=int, default=4, help="serving: impute gaps up to this many steps (default: 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data, same model")
    parser.add_argument(
        "--interval-levels",
        default="0.8,0.95",
        help="central prediction-interval levels, comma-separated, calibrated per horizon step on the "
        "validation part (split conformal) and adapted online per stream; 'none' for point forecasts only "
        "(default: 0.8,0.95)",
    )
    parser.add_argument(
        "--interval-gamma",
        type=float,
        help="step of the intervals' online adaptation (0: static calibrated intervals; default: the "
        "measured default, see benchmarks/README.md)",
    )
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")


def run(args: argparse.Namespace) -> int:
    from models.data import DataError, load_csv
    from models.errors import UsageError

    if not 1 <= args.layers <= 3:
        raise UsageError("--layers must be 1, 2 or 3")
    if not 0 < args.test_fraction < 1:
        raise UsageError("--test-fraction must be between 0 and 1")
    _check_variant_flags(args, UsageError)
    levels = _interval_levels(args, UsageError)
    try:
        dataset = load_csv(args.data, step_seconds=args.step)
    except DataError as err:
        raise UsageError(str(err)) from None

    from models.training import TrainConfig, config_to_json, train

    config = TrainConfig(
        cell=args.cell,
        horizon=args.horizon,
        season=args.season,
        layers=args.layers,
        units=args.units,
        dropout=args.dropout,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=args.patience,
        loss=args.loss,
        test_fraction=args.test_fraction,
        covariates=tuple(args.covariates) if args.covariates is not None else None,
        calendar=not args.no_calendar,
        smoothing=not args.no_smoothing,
        seed=args.seed,
        max_gap=args.max_gap,
        encoder_cell=args.encoder_cell,
        decoder_units=args.decoder_units,
        attention_window=args.attention_window,
        window=args.window,
        backward_units=args.backward_units,
    )
    log = sys.stderr
    print(f"training {config.cell} on {dataset.describe()}", file=log)
    epoch_started = [time.monotonic()]

    def on_epoch(epoch: int, logs: dict) -> None:
        now = time.monotonic()
        print(
            f"epoch {epoch + 1:3d}/{config.epochs}  loss {logs.get('loss', float('nan')):.5f}  "
            f"val_loss {logs.get('val_loss', float('nan')):.5f}  ({now - epoch_started[0]:.1f} s)",
            file=log,
            flush=True,
        )
        epoch_started[0] = now

    try:
        result = train(dataset, config, on_epoch=on_epoch)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        intervals = _calibrate(result, dataset, levels, args.interval_gamma)
    except ValueError as err:
        raise UsageError(str(err)) from None
    manifest = write_artifact(args.out, result, dataset, config_to_json(config), intervals)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        print(
            f"wrote {args.out} (version {manifest['version']}, {result.seconds:.0f} s, "
            f"best val_loss {manifest['validation']['val_loss']:.5f}, engine/Keras max diff "
            f"{manifest['parity']['max_abs_diff']:.1e})\n"
            f"next: rnncast evaluate --artifact {args.out} --data {args.data}"
        )
    return 0


def _seasons(text: str) -> tuple[int, ...]:
    try:
        seasons = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers of steps") from None
    if any(s < 1 for s in seasons):
        raise argparse.ArgumentTypeError(f"{text!r}: every season must be at least 1 step")
    return seasons


_VARIANT_FLAGS = {
    "decoder_units": ("--decoder-units", ("seq2seq",)),
    "attention_window": ("--attention-window", ("attention",)),
    "window": ("--window", ("birnn",)),
    "backward_units": ("--backward-units", ("birnn",)),
}


def _check_variant_flags(args: argparse.Namespace, error: type[Exception]) -> None:
    """A variant's flag given for another cell is a mistake worth saying, not ignoring."""
    for name, (flag, cells) in _VARIANT_FLAGS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if args.cell not in cells:
            raise error(f"{flag} applies to --cell {' or '.join(cells)}, not {args.cell}")
        if value < 1:
            raise error(f"{flag} must be at least 1")
    if args.encoder_cell != "lstm" and args.cell not in VARIANT_TYPES:
        raise error(
            f"--encoder-cell applies to --cell {', '.join(VARIANT_TYPES)}; for a plain stack use --cell {args.encoder_cell}"
        )


def _interval_levels(args: argparse.Namespace, error: type[Exception]) -> tuple[float, ...]:
    from models.intervals import parse_levels

    if args.interval_levels.strip().lower() == "none":
        return ()
    if args.interval_gamma is not None and not (math.isfinite(args.interval_gamma) and args.interval_gamma >= 0):
        raise error(f"--interval-gamma must be a finite number >= 0, got {args.interval_gamma}")
    try:
        return parse_levels(args.interval_levels)
    except ValueError as err:
        raise error(f"--interval-levels: {err}") from None


def _calibrate(result, dataset, levels: tuple[float, ...], gamma: float | None) -> dict | None:
    """The manifest's ``intervals`` block: offsets calibrated on the validation part by the numpy engine.

    The engine is the one the artifact will serve (its smoothing, min_history and max_gap), so the
    offsets are quantiles of the errors of the forecasts the stream will actually emit.
    """
    if not levels:
        return None
    from models.engine import Engine
    from models.evaluation import calibrate_intervals
    from models.intervals import DEFAULT_GAMMA

    engine = Engine(numpy_weights(result), result.features, serving_config(result))
    spec, counts = calibrate_intervals(
        engine,
        dataset,
        result.split.validation_from,
        result.split.test_from,
        levels,
        DEFAULT_GAMMA if gamma is None else gamma,
    )
    return spec.to_json(counts)


def serving_config(result):
    """The trained model's serving semantics, as its manifest's ``serving`` block and ``smoothing`` record them."""
    from models.engine import EngineConfig

    warmup = result.smoothing.warmup if result.smoothing else result.season
    return EngineConfig(
        result.season, result.step_seconds, warmup + 1, result.config.max_gap, smoothing=result.smoothing
    )


def numpy_weights(result):
    """The trained network in the numpy engine's layout."""
    if result.variant is None:
        from models.keras_model import extract_weights

        return extract_weights(result.model, result.config.cell)
    from models.keras_variants import extract_variant

    return extract_variant(result.model, result.variant)


def write_artifact(out: str, result, dataset, config_json: dict, intervals: dict | None = None) -> dict:
    from models.artifact import save_artifact

    weights = numpy_weights(result)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in weights.to_arrays().values()))
    created = datetime.now(UTC)
    val_losses = result.history.get("val_loss", [])
    best = int(np.nanargmin(val_losses)) if val_losses else -1
    serving = serving_config(result)
    manifest = {
        "version": f"{result.config.cell}-{created:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}",
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cell": result.config.cell,
        "layers": result.config.layers,
        "units": result.config.units,
        "horizon": result.horizon,
        "season": result.season,
        **(
            {"smoothing": result.smoothing.to_json(), "smoothing_choice": result.smoothing_choice}
            if result.smoothing
            else {}
        ),
        "step_seconds": result.step_seconds,
        "features": result.features.to_json(),
        "value_scaling": "per stream: mean/std of the stream's first warm-up readings (the longest cycle; frozen in its state)",
        "serving": {"min_history": serving.min_history, "max_gap": serving.max_gap},
        "training": {
            "config": config_json,
            "data_file": str(dataset.path),
            "data_sha256": dataset.sha256,
            "streams": list(dataset.series),
            "test_from": result.split.test_from,
            "validation_from": result.split.validation_from,
            "seconds": round(result.seconds, 1),
            "epochs_run": len(result.history.get("loss", [])),
        },
        "validation": {
            "val_loss": float(val_losses[best]) if val_losses else float("nan"),
            "best_epoch": best + 1,
            "loss": f"masked {result.config.loss.upper()} in scaled units",
        },
        "parity": parity_check(result.model, weights, result.features.size, result.horizon),
    }
    if intervals is not None:
        manifest["intervals"] = intervals
    if result.variant is not None:
        from models.keras_variants import float64_parity

        # What load_artifact needs, beyond the arrays, to rebuild this variant's numpy network.
        manifest["network"] = result.variant.manifest()
        manifest["state_floats"] = weights.state_size
        manifest["training"]["scored_origin_stride"] = result.variant.origin_stride
        manifest["parity"]["float64_max_abs_diff"] = float64_parity(
            result.model, result.variant, weights, result.config.layers, result.config.units
        )
    save_artifact(out, result.model, weights, manifest)
    return json.loads((__import__("pathlib").Path(out) / "manifest.json").read_text())


def parity_check(model, weights, n_features: int, horizon: int, steps: int = 512) -> dict:
    """Max |numpy engine − Keras| over a random sequence: a trained artifact proves its own parity."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, steps, n_features)).astype(np.float32)
    base = np.zeros((1, steps, horizon), dtype=np.float32)
    expected = model.predict({"features": x, "base": base}, verbose=0)[0]
    state = weights.zero_state(1)
    worst = 0.0
    for t in range(steps):
        step_input = x[:, t, :].astype(np.float64)
        out, state = weights.step(step_input, state)
        out = out + weights.skip(step_input, base[:, t, :].astype(np.float64))
        worst = max(worst, float(np.max(np.abs(out[0] - expected[t]))))
    return {"max_abs_diff": worst, "steps": steps}
