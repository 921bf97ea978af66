"""Training a global recurrent forecaster on every stream of a dataset (Keras)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from models.data import Dataset
from models.features import FeatureSpec
from models.scaling import fit_scaler, fit_stream_value_scaler
from models.sequences import SegmentArrays, contiguous_segments, segment_arrays, windows
from models.smoothing import Smoothing, fit_smoothing


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; every field is recorded in the artifact's manifest."""

    cell: str = "lstm"
    horizon: int | None = None  # default: one season
    season: int | tuple[int, ...] | None = None  # one or several cycles (steps); default: from the step and history
    smoothing: bool = (
        True  # per-stream exponential smoothing of level and cycles (False: frozen-level seasonal naive base)
    )
    layers: int = 1
    units: int = 64
    dropout: float = 0.0
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 3e-3
    clipnorm: float = 1.0
    patience: int = 8
    test_fraction: float = 0.3
    validation_fraction: float = 0.15
    covariates: tuple[str, ...] | None = None  # default: every covariate column
    calendar: bool = True
    seed: int = 0
    max_gap: int = 4
    loss: str = "mae"
    # Variants only (seq2seq, attention, birnn); None = the variant's default (models.keras_variants).
    encoder_cell: str = "lstm"  # the recurrent cell of the variant's encoder/forward stack
    decoder_units: int | None = None  # seq2seq decoder (default: units // 2)
    attention_window: int | None = None  # attention: W encoder states kept per stream (default: one season, <= 96)
    window: int | None = None  # birnn: L inputs the backward pass re-reads (default: one season, <= 96)
    backward_units: int | None = None  # birnn backward stack (default: units // 2)


@dataclass(frozen=True)
class Split:
    """Per-stream time boundaries: train < validation_from <= validation < test_from <= test."""

    validation_from: dict[str, float]
    test_from: dict[str, float]


@dataclass
class TrainResult:
    model: object  # keras.Model
    config: TrainConfig
    features: FeatureSpec
    season: int
    horizon: int
    step_seconds: float
    split: Split
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    variant: object | None = None  # models.keras_variants.VariantSpec for seq2seq/attention/birnn
    smoothing: Smoothing | None = None  # None: the seasonal naive of `season`
    smoothing_choice: dict = field(default_factory=dict)


def default_season(step_seconds: float) -> int:
    """One day of steps for sub-daily data, a week for daily data, otherwise no seasonality (1)."""
    if step_seconds < 86_400:
        return max(int(round(86_400 / step_seconds)), 1)
    if step_seconds == 86_400:
        return 7
    return 1


def warmable_training_rows(dataset: Dataset, validation_from: dict[str, float], step_seconds: float) -> int:
    """Rows before validation in the shortest of the streams' longest gap-free pieces.

    Training windows never cross a gap (a long one restarts the stream), so this, not a stream's
    length, is the history that can warm a cycle up.
    """
    return min(
        max(
            (
                int(np.sum(piece.timestamps < validation_from[sid]))
                for piece in contiguous_segments(sid, s.timestamps, s.values, s.covariates, step_seconds)
            ),
            default=0,
        )
        for sid, s in dataset.series.items()
    )


def default_seasons(step_seconds: float, shortest_training_rows: int) -> tuple[int, ...]:
    """The cycles a stream of this step most likely has, as far as the history can warm them up.

    Sub-daily: a day and a week (the week only when every stream's longest gap-free training piece holds
    at least 4 weeks: a week of warm-up, then enough windows); daily: a week and a year (the year only
    with 3 years of training data). Otherwise :func:`default_season` alone.
    """
    day = default_season(step_seconds)
    if step_seconds < 86_400 and day > 1:
        week = 7 * day
        return (day, week) if shortest_training_rows >= 4 * week else (day,)
    if step_seconds == 86_400:
        return (7, 364) if shortest_training_rows >= 3 * 364 else (7,)
    return (day,)


def common_step(dataset: Dataset) -> float:
    steps = {s.step_seconds for s in dataset.series.values()}
    if len(steps) != 1:
        raise ValueError(f"one model needs one sampling step, the streams have {sorted(steps)} seconds")
    return float(steps.pop())


def split_dataset(dataset: Dataset, test_fraction: float, validation_fraction: float) -> Split:
    validation_from, test_from = {}, {}
    for sid, series in dataset.series.items():
        n = len(series.timestamps)
        n_fit = int(np.floor(n * (1 - test_fraction)))
        test_from[sid] = float(series.timestamps[n_fit]) if n_fit < n else np.inf
        n_train = int(np.floor(n_fit * (1 - validation_fraction)))
        validation_from[sid] = float(series.timestamps[min(n_train, n - 1)])
    return Split(validation_from, test_from)


def window_shape(season: int) -> tuple[int, int]:
    """(window length, warm-up steps): a few seasons of context, bounded so training stays fast."""
    warmup = min(2 * season, 192)
    return warmup + max(min(5 * season, 336), 64), warmup


def train(dataset: Dataset, config: TrainConfig, on_epoch: Callable[[int, dict], None] | None = None) -> TrainResult:
    import keras

    from models.keras_model import LOSSES, build_model

    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    step = common_step(dataset)
    split = split_dataset(dataset, config.test_fraction, config.validation_fraction)
    if config.season is None:
        seasons = default_seasons(step, warmable_training_rows(dataset, split.validation_from, step))
    else:
        seasons = tuple(sorted({int(config.season)} if isinstance(config.season, int) else set(config.season)))
    season = seasons[0]
    horizon = config.horizon or season
    covariate_names = dataset.covariate_names if config.covariates is None else tuple(config.covariates)
    unknown = [c for c in covariate_names if c not in dataset.covariate_names]
    if unknown:
        raise ValueError(f"unknown covariates {unknown}; the data has {list(dataset.covariate_names)}")
    columns = [dataset.covariate_names.index(c) for c in covariate_names]

    train_covariates = [
        s.covariates[s.timestamps < split.validation_from[sid]][:, columns] for sid, s in dataset.series.items()
    ]
    spec = FeatureSpec(
        covariate_names, fit_scaler(np.concatenate(train_covariates)), config.calendar, one_step_error=config.smoothing
    )

    segments = [
        (sid, segment)
        for sid, series in dataset.series.items()
        for segment in contiguous_segments(sid, series.timestamps, series.values, series.covariates[:, columns], step)
    ]
    smoothing, smoothing_choice = None, {}
    if config.smoothing:
        try:
            smoothing = Smoothing(seasons, 0.0, tuple(1.0 for _ in seasons))
        except ValueError as err:
            raise ValueError(f"--season {','.join(map(str, seasons))}: {err}") from None
        smoothing, smoothing_choice = fit_smoothing(
            [_scaled_training_part(seg, smoothing.warmup, split.validation_from[sid]) for sid, seg in segments],
            seasons,
            horizon,
        )
    elif len(seasons) > 1:
        raise ValueError("several seasonal cycles need smoothing (the seasonal naive base has one)")
    arrays: list[SegmentArrays] = []
    for sid, segment in segments:
        seg = segment_arrays(segment, spec, season, horizon, targets_before=split.test_from[sid], smoothing=smoothing)
        if seg is not None:
            arrays.append(seg)
    variant = _variant_spec(config, season, step, spec.calendar)
    length, warmup = window_shape(season)
    if variant is not None and variant.context > warmup:
        # Windowed variants read `context` earlier rows: a window's warm-up must cover them.
        length, warmup = length + variant.context - warmup, variant.context
    stride = max((length - warmup) // 8, 1)
    every = variant.origin_stride if variant is not None else 1
    while math.gcd(stride, every) != 1:  # window starts cycle through every phase of the scored origins
        stride += 1
    train_sets = [_restrict(a, -np.inf, split.validation_from[a.stream_id]) for a in arrays]
    stream_warmup = smoothing.warmup if smoothing is not None else season
    try:
        x, b, y = windows(train_sets, length=length, warmup=warmup, stride=stride)
        val_sets = [_restrict(a, split.validation_from[a.stream_id], split.test_from[a.stream_id]) for a in arrays]
        vx, vb, vy = windows(val_sets, length=length, warmup=warmup, stride=length - warmup)
    except ValueError as err:
        raise ValueError(
            why_no_windows(dataset, [seg for _, seg in segments], step, stream_warmup, horizon, str(err))
        ) from None

    x, b, y = _at_least_batches(x, b, y, config.batch_size, _MIN_BATCHES_PER_EPOCH)
    if variant is None:
        model = fitted = build_model(config.cell, config.layers, config.units, spec.size, horizon, config.dropout)
        inputs, validation = {"features": x, "base": b}, ({"features": vx, "base": vb}, vy)
    else:
        from models.keras_variants import build_variant

        # The training graph scores rows warmup: only (earlier targets are masked: context only).
        model, fitted = build_variant(
            variant, config.layers, config.units, spec.size, horizon, config.dropout, scored_from=warmup, every=every
        )
        rows = slice(warmup, None, every)
        inputs, validation = [x, b[:, rows]], ([vx, vb[:, rows]], vy[:, rows])
        y = y[:, rows]
    fitted.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate, clipnorm=config.clipnorm),
        loss=LOSSES[config.loss],
    )
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(config.patience // 2, 1)),
    ]
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(epoch, logs or {})))
    history = fitted.fit(
        inputs,
        y,
        validation_data=validation,
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return TrainResult(
        model=model,
        config=config,
        features=spec,
        season=season,
        horizon=horizon,
        smoothing=smoothing,
        smoothing_choice=smoothing_choice,
        step_seconds=step,
        split=split,
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
        seconds=time.monotonic() - started,
        variant=variant,
    )


def why_no_windows(dataset: Dataset, segments: list, step: float, warmup: int, horizon: int, what: str) -> str:
    """The real reason no training (or validation) window could be built, in one line.

    Gaps cut a stream into pieces and every piece warms up again, so the usual cause on a long file
    is pieces shorter than the warm-up; gaps that recur at the same time of day are the closures of
    a stream that only exists in some hours (e.g. business hours), which rnncast does not model yet.
    """
    rows = sum(len(s.timestamps) for s in dataset.series.values())
    longest = max((len(seg.timestamps) for seg in segments), default=0)
    needed = warmup + 1
    if longest >= needed + horizon:
        return f"{what} (longest gap-free piece: {longest} readings; the split keeps 70% x 85% of each stream for training)"
    gaps = [gap for series in dataset.series.values() for gap in series.gaps]
    reason = (
        f"no training windows: {rows:,} rows, but {len(gaps):,} gaps (missing steps of {step:g} s) cut the streams into "
        f"{len(segments):,} gap-free pieces of at most {longest} readings, and each piece must first warm up on "
        f"{warmup} readings (the longest --season) and then have targets {horizon} steps (--horizon) ahead"
    )
    starts = [gap.after_timestamp % 86_400 for gap in gaps]
    if len(gaps) >= 7:
        hour, count = max(((h, starts.count(h)) for h in set(starts)), key=lambda hc: hc[1])
        if count >= 0.5 * len(gaps):
            reason += (
                f"; {count} of the gaps start after the reading at {int(hour // 3600):02d}:{int(hour % 3600 // 60):02d} UTC: "
                "regular closures (e.g. business hours), which rnncast does not model yet (each closure restarts the "
                "stream like any long gap)"
            )
    return reason


def _scaled_training_part(segment, warmup: int, validation_from: float) -> np.ndarray:
    """A segment's readings before the validation part, scaled by its warm-up as the engine scales them."""
    values = segment.values[segment.timestamps < validation_from]
    if len(values) <= warmup:
        return values[:0]
    mean, scale = fit_stream_value_scaler(values[:warmup])
    return (values - mean) / scale


def _variant_spec(config: TrainConfig, season: int, step_seconds: float, calendar: bool):
    """The resolved variant hyperparameters, or None for a plain rnn/lstm/gru stack."""
    from models.networks import VARIANT_TYPES

    if config.cell not in VARIANT_TYPES:
        return None
    from models.keras_variants import resolve_spec

    return resolve_spec(
        config.cell,
        season=season,
        step_seconds=step_seconds,
        units=config.units,
        calendar=calendar,
        encoder_cell=config.encoder_cell,
        decoder_units=config.decoder_units,
        window=config.attention_window if config.cell == "attention" else config.window,
        backward_units=config.backward_units,
    )


# Short datasets give a handful of windows; repeating them keeps enough optimiser steps per epoch
# for early stopping and the learning-rate schedule to mean the same thing on any data size.
_MIN_BATCHES_PER_EPOCH = 16


def _at_least_batches(x, b, y, batch_size: int, batches: int):
    repeats = -(-batches * batch_size // len(x))
    if repeats <= 1:
        return x, b, y
    return np.tile(x, (repeats, 1, 1)), np.tile(b, (repeats, 1, 1)), np.tile(y, (repeats, 1, 1))


def _restrict(arrays: SegmentArrays, origins_from: float, targets_before: float) -> SegmentArrays:
    """Mask targets outside [origins_from, targets_before) while keeping all rows as context.

    A target is kept only if its origin is scored and the target time itself is before
    ``targets_before``, so validation targets never leak into training.
    """
    targets = arrays.targets.copy()
    origin_ok = arrays.timestamps >= origins_from
    targets[~origin_ok] = np.nan
    step_index = np.arange(1, targets.shape[1] + 1)
    if len(arrays.timestamps) > 1:
        step = float(np.median(np.diff(arrays.timestamps)))
        target_times = arrays.timestamps[:, None] + step * step_index[None, :]
        targets[target_times >= targets_before] = np.nan
    return SegmentArrays(arrays.stream_id, arrays.timestamps, arrays.inputs, arrays.base, targets)


def config_to_json(config: TrainConfig) -> dict:
    data = asdict(config)
    if data["covariates"] is not None:
        data["covariates"] = list(data["covariates"])
    return data
