"""Prediction intervals: split-conformal offsets per horizon, adapted online per stream (numpy only).

**Calibration (training).** For each horizon step h and level ``a`` the offsets are the conformal
quantiles of the signed scaled errors ``e = actual - forecast`` (the stream's scaled units) of the
forecasts the engine issued on the validation part: ``lower[a, h]`` at ``(1 - a) / 2``, ``upper[a, h]``
at ``(1 + a) / 2``, with the finite-sample rank correction of split conformal prediction. They are
stored in the artifact's manifest (``intervals``).

**Adaptation (serving).** Each stream carries one log-scale per level, ``log_scale[a]``, in its
state (0 at the start: the calibrated interval). The interval at h is the calibrated one widened or
narrowed about its own centre: ``forecast + centre[a, h] ± exp(log_scale[a]) · half_width[a, h]``.
At every reading that follows a model forecast by exactly one step, the stream scores that forecast's
one-step interval against the reading and moves its log-scale by adaptive conformal inference (Gibbs &
Candès 2021, applied to the scale instead of the quantile level): ``log_scale += gamma · (miss -
(1 - a))``. Over any stretch the one-step miss rate approaches ``1 - a`` (the update's long-run
average is 0 only there), whatever the errors do; the other horizons move with the same factor, which
assumes the shape of the errors over horizons stays as calibrated while their size changes (a level or
variance shift). ``gamma = 0`` is the static calibrated interval.

Why per stream and why the one-step error only: a stream scores its one-step forecast with what its
state already holds (the last one-step forecast), so the adaptation costs one float per level in the
state and is restored exactly after a crash; scoring every horizon would need the last H forecasts of
H values per stream in the state. A shared (per-process) scale would depend on which streams a worker
happens to hold and would not be reproducible offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_GAMMA",
    "IntervalSpec",
    "conformal_offsets",
    "adapt_log_scale",
    "interval_offsets",
    "interval_point_scores",
    "parse_levels",
    "level_key",
]

DEFAULT_LEVELS: tuple[float, ...] = (0.8, 0.95)
# Adaptation step, chosen on held-out data (benchmarks/README.md, "Prediction intervals").
DEFAULT_GAMMA = 0.02
# The adapted scale stays within exp(±LOG_SCALE_LIMIT) of the calibrated width: a long run of
# constant readings (all covered) must not shrink the interval to nothing, nor a broken sensor grow it
# without bound; the limit is far outside what a stream of real readings reaches.
LOG_SCALE_LIMIT = 5.0


def level_key(level: float) -> str:
    """The level as the wire and the manifest name it: ``0.8`` -> ``"0.8"``, ``0.95`` -> ``"0.95"``."""
    return repr(float(level))


def parse_levels(text: str) -> tuple[float, ...]:
    """``"0.8,0.95"`` -> ``(0.8, 0.95)``: distinct levels strictly between 0 and 1, sorted.

    Raises:
        ValueError: With a message naming the bad entry.
    """
    levels = []
    for part in text.split(","):
        part = part.strip()
        try:
            level = float(part)
        except ValueError:
            raise ValueError(f"interval level {part!r} is not a number") from None
        if not 0 < level < 1 or not math.isfinite(level):
            raise ValueError(f"interval level {part} must be strictly between 0 and 1")
        levels.append(level)
    if not levels:
        raise ValueError("no interval level given")
    if len(set(levels)) != len(levels):
        raise ValueError(f"interval levels repeat: {text}")
    return tuple(sorted(levels))


def conformal_offsets(errors: np.ndarray, levels: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split-conformal lower/upper offsets per level and horizon from signed errors.

    Args:
        errors: ``[n, H]`` signed errors ``actual - forecast``; NaN where a point was not scored.
        levels: Central coverage levels in (0, 1).

    Returns:
        ``(lower [L, H], upper [L, H], counts [H])``: the ``ceil((n + 1) · (1 + a) / 2)``-th smallest error
        of each horizon's n scored points for ``upper``, the ``floor((n + 1) · (1 - a) / 2)``-th for
        ``lower`` (clamped to the sample: the widest available when n is too small for the level), and
        n per horizon. A horizon with no scored point gets NaN offsets.
    """
    errors = np.asarray(errors, dtype=np.float64)
    horizon = errors.shape[1]
    lower = np.full((len(levels), horizon), np.nan)
    upper = np.full((len(levels), horizon), np.nan)
    counts = np.zeros(horizon, dtype=np.int64)
    for h in range(horizon):
        column = np.sort(errors[np.isfinite(errors[:, h]), h])
        n = column.size
        counts[h] = n
        if n == 0:
            continue
        for j, level in enumerate(levels):
            tail = (1.0 - level) / 2.0
            high = min(max(math.ceil((n + 1) * (1.0 - tail)), 1), n)
            low = min(max(math.floor((n + 1) * tail), 1), n)
            lower[j, h] = column[low - 1]
            upper[j, h] = column[high - 1]
    return lower, upper, counts


@dataclass(frozen=True)
class IntervalSpec:
    """The served intervals: calibrated offsets (scaled units) and the adaptation step.

    Attributes:
        levels: Central coverage levels, ascending.
        centre: ``[L, H]`` midpoint of the calibrated offsets, added to the scaled point forecast.
        half_width: ``[L, H]`` half the calibrated width (>= 0), multiplied by the stream's adapted scale.
        gamma: Adaptation step of the log-scale; 0 serves the calibrated intervals unchanged.
    """

    levels: tuple[float, ...]
    centre: np.ndarray
    half_width: np.ndarray
    gamma: float = DEFAULT_GAMMA

    def __post_init__(self) -> None:
        shape = (len(self.levels), self.centre.shape[-1] if self.centre.ndim == 2 else -1)
        if self.centre.shape != shape or self.half_width.shape != shape:
            raise ValueError(f"interval offsets must be [levels, horizon], got {self.centre.shape} and {self.half_width.shape}")
        if not (np.all(np.isfinite(self.centre)) and np.all(np.isfinite(self.half_width)) and np.all(self.half_width >= 0)):
            raise ValueError("interval offsets must be finite with a non-negative width")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"interval adaptation step must be >= 0, got {self.gamma}")
        # 1 - a per level, the target miss rate of the adaptation.
        object.__setattr__(self, "miss_target", 1.0 - np.asarray(self.levels, dtype=np.float64))

    @classmethod
    def from_offsets(cls, levels: tuple[float, ...], lower: np.ndarray, upper: np.ndarray, gamma: float = DEFAULT_GAMMA) -> "IntervalSpec":
        lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        return cls(tuple(float(a) for a in levels), (lower + upper) / 2.0, (upper - lower) / 2.0, float(gamma))

    @property
    def horizon(self) -> int:
        return int(self.centre.shape[1])

    @property
    def lower(self) -> np.ndarray:
        return self.centre - self.half_width

    @property
    def upper(self) -> np.ndarray:
        return self.centre + self.half_width

    def with_gamma(self, gamma: float) -> "IntervalSpec":
        return IntervalSpec(self.levels, self.centre, self.half_width, float(gamma))

    def to_json(self, counts: np.ndarray | None = None) -> dict:
        """The manifest's ``intervals`` block (offsets per level, one float per horizon step)."""
        doc: dict = {
            "method": "split conformal per horizon on the validation part; adaptive (ACI on a per-stream log-scale, one-step errors)",
            "units": "the stream's scaled units, added to the scaled point forecast",
            "gamma": self.gamma,
            "levels": {
                level_key(a): {"lower": [float(x) for x in lo], "upper": [float(x) for x in up]}
                for a, lo, up in zip(self.levels, self.lower, self.upper)
            },
        }
        if counts is not None:
            doc["calibration_points"] = [int(c) for c in counts]
        return doc

    @classmethod
    def from_json(cls, doc: dict, horizon: int) -> "IntervalSpec":
        """Reads the manifest block; raises ValueError (with what is wrong) on a malformed one."""
        try:
            entries = sorted((float(k), v) for k, v in doc["levels"].items())
            levels = tuple(a for a, _ in entries)
            lower = np.array([v["lower"] for _, v in entries], dtype=np.float64)
            upper = np.array([v["upper"] for _, v in entries], dtype=np.float64)
            gamma = float(doc.get("gamma", DEFAULT_GAMMA))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"malformed 'intervals' block ({type(err).__name__}: {err})") from None
        if not levels or lower.shape != (len(levels), horizon) or upper.shape != lower.shape:
            raise ValueError(f"'intervals' offsets must have one float per horizon step ({horizon}) per level")
        if np.any(upper < lower):
            raise ValueError("'intervals' has an upper offset below its lower offset")
        return cls.from_offsets(levels, lower, upper, gamma)


def adapt_log_scale(
    log_scale: np.ndarray, error: np.ndarray, spec: IntervalSpec
) -> np.ndarray:
    """One ACI update of the log-scales from the one-step errors they are scored on.

    Args:
        log_scale: ``[..., L]`` the streams' log-scales before this reading.
        error: ``[...]`` the one-step signed scaled errors ``actual - forecast`` (one per stream).
        spec: The served intervals.

    Returns:
        ``[..., L]`` the new log-scales (a new array), clipped to ``±LOG_SCALE_LIMIT``.
    """
    distance = np.abs(np.asarray(error)[..., np.newaxis] - spec.centre[:, 0])
    miss = distance > np.exp(log_scale) * spec.half_width[:, 0]
    updated = log_scale + spec.gamma * (miss - spec.miss_target)
    return np.clip(updated, -LOG_SCALE_LIMIT, LOG_SCALE_LIMIT, out=updated)


def interval_offsets(log_scale: np.ndarray, spec: IntervalSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` offsets ``[..., L, H]`` from the scaled point forecast for the given log-scales."""
    half = np.exp(log_scale)[..., np.newaxis] * spec.half_width
    return spec.centre - half, spec.centre + half


def interval_point_scores(
    lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point: covered (0/1), width, and the interval (Winkler) score of a central ``level`` interval.

    Winkler score (Gneiting & Raftery 2007, eq. 43): ``(u - l) + (2/α)(l - y)·[y < l] + (2/α)(y - u)·[y > u]``
    with ``α = 1 - level``; lower is better, and its expectation is minimised by the true quantiles.
    Arrays broadcast together; units are those of the inputs.
    """
    alpha = 1.0 - level
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    width = upper - lower
    covered = ((below == 0.0) & (above == 0.0)).astype(np.float64)
    return covered, width, width + (2.0 / alpha) * (below + above)
