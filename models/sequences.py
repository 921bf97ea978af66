"""Training arrays built with exactly the engine's semantics (pure numpy).

A contiguous segment of a stream is served like this: its first W readings are the warm-up that
fits the stream's value scaler and the smoothing's components; from reading W+1 on, every reading
updates the smoothing (:mod:`models.smoothing`) and steps the network once, on the value relative
to the level, with the smoothed seasonal base. These functions produce, for every such step, the
input row, the base row and the target row (relative to the level at the origin), so Keras trains
on what the engine will see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.features import FeatureSpec, input_matrix
from models.scaling import fit_stream_value_scaler
from models.smoothing import Smoothing, SmoothingKernel


@dataclass(frozen=True)
class Segment:
    """A gap-free run of one stream."""

    stream_id: str
    timestamps: np.ndarray
    values: np.ndarray
    covariates: np.ndarray


@dataclass(frozen=True)
class SegmentArrays:
    """One row per recurrent step of a segment (its readings after the warm-up)."""

    stream_id: str
    timestamps: np.ndarray  # [m] origin of each step
    inputs: np.ndarray  # [m, F]
    base: np.ndarray  # [m, H] the smoothed seasonal base (scaled, relative to the level)
    targets: np.ndarray  # [m, H] scaled actual values relative to the level at the origin, NaN where absent or masked


def contiguous_segments(stream_id: str, timestamps, values, covariates, step_seconds: float) -> list[Segment]:
    """Split a series at its gaps; in training, a long gap restarts the stream just as serving does."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    steps = np.rint(np.diff(timestamps) / step_seconds)
    cuts = np.flatnonzero(steps > 1) + 1
    bounds = [0, *cuts.tolist(), len(timestamps)]
    return [
        Segment(stream_id, timestamps[a:b], np.asarray(values[a:b], float), np.asarray(covariates[a:b], float))
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def segment_arrays(
    segment: Segment,
    spec: FeatureSpec,
    season: int,
    horizon: int,
    targets_before: float = np.inf,
    smoothing: Smoothing | None = None,
) -> SegmentArrays | None:
    """Rows for every recurrent step of ``segment``; ``None`` if it never gets past the warm-up.

    ``smoothing`` None is the seasonal naive of ``season`` (models trained before smoothing).
    Targets at or after ``targets_before`` are NaN, so no target from a held-out part leaks in.
    """
    smoothing = smoothing if smoothing is not None else Smoothing.seasonal_naive(season)
    warmup = smoothing.warmup
    n = len(segment.values)
    if n <= warmup:
        return None
    mean, scale = fit_stream_value_scaler(segment.values[:warmup])
    scaled = (segment.values - mean) / scale
    levels, base, errors = SmoothingKernel(smoothing, horizon).run(scaled)
    rows = np.arange(warmup, n)
    inputs = input_matrix(spec, scaled[rows] - levels, segment.covariates[rows], segment.timestamps[rows], errors)
    h = np.arange(1, horizon + 1)
    target_index = rows[:, None] + h[None, :]
    valid = target_index < n
    clipped = np.minimum(target_index, n - 1)
    valid &= segment.timestamps[clipped] < targets_before
    targets = np.where(valid, scaled[clipped] - levels[:, None], np.nan)
    return SegmentArrays(segment.stream_id, segment.timestamps[rows], inputs, base, targets)


def windows(
    arrays: list[SegmentArrays],
    *,
    length: int,
    warmup: int,
    stride: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut fixed-length training windows, each starting from a zero state.

    The first ``warmup`` steps of a window only rebuild the hidden state (their targets are
    masked), except for a window that starts where the segment starts, where a zero state is
    exactly what serving has. Rows whose targets are all NaN are context only.
    """
    xs, bs, ys = [], [], []
    for seg in arrays:
        scored = np.isfinite(seg.targets).any(axis=1)
        scored_rows = np.flatnonzero(scored)
        if scored_rows.size == 0:
            continue
        first, last = scored_rows[0], scored_rows[-1]
        start = max(first - warmup, 0)
        while True:
            end = start + length
            x, b, y = _window(seg, start, end)
            mask = np.zeros(length, dtype=bool)
            mask[: max(min(end, len(seg.timestamps)) - start, 0)] = True
            mask[np.arange(length) + start < first] = False
            if start > 0:
                mask[:warmup] = False
            mask &= np.concatenate([scored[start:end], np.zeros(max(end - len(scored), 0), bool)])
            y[~mask] = np.nan
            if np.isfinite(y).any():
                xs.append(x)
                bs.append(b)
                ys.append(y)
            if end > last:
                break
            start += stride
    if not xs:
        raise ValueError("no training windows: the data is too short for this season and horizon")
    return np.stack(xs).astype(np.float32), np.stack(bs).astype(np.float32), np.stack(ys).astype(np.float32)


def _window(seg: SegmentArrays, start: int, end: int):
    """Rows [start, end), zero-padded at the end (padding after the data cannot affect a causal RNN)."""
    pad = max(end - len(seg.timestamps), 0)
    x = np.pad(seg.inputs[start:end], ((0, pad), (0, 0)))
    b = np.pad(seg.base[start:end], ((0, pad), (0, 0)))
    y = np.pad(seg.targets[start:end], ((0, pad), (0, 0)), constant_values=np.nan)
    return x, b, y.copy()
