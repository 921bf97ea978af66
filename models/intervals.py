"""Prediction intervals: split-conformal offsets per horizon, adapted online per stream (numpy only).

**Calibration (training).** For each horizon step h and level ``a`` the offsets are the conformal
quantiles of the signed scaled errors ``e = actual - forecast`` (the stream's scaled units) of the
forecasts the engine issued on the validation part: ``lower[a, h]`` at ``(1 - a) / 2``, ``upper[a, h]``
at ``(1 + a) / 2``, with the finite-sample rank correction of split conformal prediction. They are
stored in the artifact's manifest (``intervals``).

**Adaptation (serving).** Each stream adapts its intervals online from the forecasts it scores
itself. It tracks one *anchor* step per horizon band (:func:`models.metrics.horizon_bands`: the middle
step of each band, e.g. 1, 7, 18, 36 for H = 48) and keeps, per level and anchor, a log-scale (0 at
the start: the calibrated interval). The interval at step h is the calibrated one widened or narrowed
about its own centre, ``forecast + centre[a, h] ± exp(log_scale[a, h]) · half_width[a, h]``, where
``log_scale[a, h]`` interpolates the anchors' linearly in h (flat beyond the first and last). At each
reading the forecasts the stream made for it ``k`` steps ago, one per anchor k, are scored and each
log-scale moves by adaptive conformal inference (Gibbs & Candès 2021) in its quantile-tracking form
(Angelopoulos, Candès & Tibshirani 2023), on the scale instead of the quantile level:
``log_scale += gamma · (miss - (1 - a))``, ``miss`` = the actual outside the interval at that anchor with
the current scale. Over any stretch each anchor's miss rate approaches ``1 - a`` (the update's long-run
average is 0 only there), whatever the errors do. ``gamma = 0`` is the static calibrated interval.

What this costs per stream, in its coded state: the L × B log-scales and, per anchor k > 1, the
forecasts of the last k readings at step k (a shift register: 61 floats for the default H = 48; anchor
1's is the state's one-step forecast), 568 bytes for the default model (2,046 bytes in all), so
the adaptation is restored exactly after a crash. Why per stream and not shared: a shared
(per-process) scale would depend on which streams a worker happens to hold, would differ between
runners and could not be reproduced offline.
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
    "adapt",
    "push",
    "interval_offsets",
    "interval_bounds",
    "interval_point_scores",
    "parse_levels",
    "check_levels",
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


def check_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    """The levels if they are usable: at least one, each strictly between 0 and 1, distinct, ascending.

    Raises:
        ValueError: Naming the bad level (a manifest's ``intervals.levels`` or ``--interval-levels``).
    """
    if not levels:
        raise ValueError("no interval level given")
    for level in levels:
        if not (isinstance(level, float) and math.isfinite(level) and 0 < level < 1):
            raise ValueError(f"interval level {level!r} must be a number strictly between 0 and 1")
    if len(set(levels)) != len(levels):
        raise ValueError(f"interval levels repeat: {', '.join(map(repr, levels))}")
    if list(levels) != sorted(levels):
        raise ValueError(f"interval levels must be ascending: {', '.join(map(repr, levels))}")
    return levels


def parse_levels(text: str) -> tuple[float, ...]:
    """``"0.8,0.95"`` -> ``(0.8, 0.95)``: distinct levels strictly between 0 and 1, sorted.

    Raises:
        ValueError: With a message naming the bad entry.
    """
    levels = []
    for part in text.split(","):
        part = part.strip()
        try:
            levels.append(float(part))
        except ValueError:
            raise ValueError(f"interval level {part!r} is not a number") from None
    return check_levels(tuple(sorted(levels)))


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
            # The 1e-9 keeps a rank that is a whole number on paper (100 x 0.1) from rounding off by one.
            high = min(max(math.ceil((n + 1) * (1.0 - tail) - 1e-9), 1), n)
            low = min(max(math.floor((n + 1) * tail + 1e-9), 1), n)
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
        from models.metrics import horizon_bands  # models.metrics scores intervals with this module

        check_levels(self.levels)
        shape = (len(self.levels), self.centre.shape[-1] if self.centre.ndim == 2 else -1)
        if self.centre.shape != shape or self.half_width.shape != shape:
            raise ValueError(
                f"interval offsets must be [levels, horizon], got {self.centre.shape} and {self.half_width.shape}"
            )
        if not (
            np.all(np.isfinite(self.centre)) and np.all(np.isfinite(self.half_width)) and np.all(self.half_width >= 0)
        ):
            raise ValueError("interval offsets must be finite with a non-negative width")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"interval adaptation step must be >= 0, got {self.gamma}")
        levels, horizon = shape
        anchors = np.array([(sl.start + sl.stop + 1) // 2 for _, sl in horizon_bands(horizon)], dtype=np.int64)
        bands = anchors.size
        steps = np.arange(1, horizon + 1)
        # interpolation[b, h-1]: weight of anchor b's log-scale at step h (linear between anchors).
        interpolation = np.array([np.interp(steps, anchors, np.eye(bands)[b]) for b in range(bands)])
        # Pending forecasts: anchor b's shift register of its last anchors[b] forecasts, oldest first,
        # all registers in one row after the L x B log-scales. ``shift`` takes the row with the new
        # forecasts appended to the next row: every register moves up one, its newest from the end.
        # Anchor 1 (always step 1, band "1") has no register: the stream state's one-step forecast
        # is that pending forecast already.
        registers = anchors[1:]
        ends = np.cumsum(registers)
        starts = ends - registers
        pending = int(ends[-1]) if registers.size else 0
        shift = np.arange(1, pending + 1)
        shift[ends - 1] = pending + np.arange(registers.size)
        scales = levels * bands
        miss_target = 1.0 - np.asarray(self.levels, dtype=np.float64)  # 1 - a, per level
        # Flat [L * B] views of what adapt() needs per log-scale (row-major: level, then anchor).
        # Anchor 1's pending forecast is the one-step forecast adapt() appends after the state.
        pending_index = np.concatenate([[scales + pending], scales + starts])
        centre_flat = self.centre[:, anchors - 1].ravel()
        # The ACI step, miss - (1 - a) times gamma, for a miss and for a hit, per log-scale.
        miss_step = np.repeat((1.0 - miss_target) * self.gamma, bands)
        hit_step = np.repeat((0.0 - miss_target) * self.gamma, bands)
        derived = {
            "miss_target": miss_target,
            "anchors": anchors,
            "interpolation": interpolation,
            "state_size": scales + pending,
            "_scales": scales,
            "_oldest": scales + starts,  # [B - 1] where each register's oldest forecast sits in the row
            "_shift": np.concatenate([np.arange(scales), scales + shift]),
            "_register_columns": registers - 1,
            "_anchor_centre": self.centre[:, anchors - 1],  # [L, B]
            "_anchor_half": self.half_width[:, anchors - 1],
            "_pending_index": np.tile(pending_index, levels),  # [L * B] into the state + one-step forecast
            "_centre_flat": centre_flat,
            "_half_flat": self.half_width[:, anchors - 1].ravel(),
            "_miss_step": miss_step,
            "_hit_step": hit_step,
            # The same per log-scale as Python floats (the one-stream path): centre, miss step, hit step.
            "_per_scale": (centre_flat.tolist(), miss_step.tolist(), hit_step.tolist()),
            "_limit_low": np.full(scales, -LOG_SCALE_LIMIT),
            "_limit_high": np.full(scales, LOG_SCALE_LIMIT),
            # [2, L, H]: -half_width and +half_width, so that one product gives both bounds.
            "_signed_half": np.stack([-self.half_width, self.half_width]),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def initial_state(self) -> np.ndarray:
        """A stream's adaptation state before its first forecast: calibrated scales, nothing pending."""
        state = np.full(self.state_size, np.nan)
        state[: self._scales] = 0.0
        return state

    @classmethod
    def from_offsets(
        cls, levels: tuple[float, ...], lower: np.ndarray, upper: np.ndarray, gamma: float = DEFAULT_GAMMA
    ) -> IntervalSpec:
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

    def with_gamma(self, gamma: float) -> IntervalSpec:
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
    def from_json(cls, doc: dict, horizon: int) -> IntervalSpec:
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


def adapt(
    state: np.ndarray, actual: np.ndarray | float, one_step: np.ndarray | float, spec: IntervalSpec
) -> np.ndarray:
    """Scores the pending anchor forecasts that target this reading and moves the log-scales.

    Args:
        state: ``[..., D]`` the streams' adaptation states (:meth:`IntervalSpec.initial_state` layout).
        actual: ``[...]`` this reading in each stream's scaled units.
        one_step: ``[...]`` the forecast for this reading made one step before (scaled units; NaN: none),
            anchor 1's pending forecast, which the stream state keeps anyway.
        spec: The served intervals.

    Returns:
        ``[..., D]`` a new state: log-scales updated where a forecast was pending (NaN: none yet),
        clipped to ``±LOG_SCALE_LIMIT``; the pending forecasts unchanged (:func:`push` moves them).
    """
    state = np.array(state, dtype=np.float64)
    if state.ndim == 1:
        return _adapt_one(state, float(actual), float(one_step), spec)
    # Flat over the L x B log-scales, with precomputed per-scale constants: numpy's cost here is per
    # call, not per element.
    extended = np.concatenate([state, np.asarray(one_step, dtype=np.float64)[..., np.newaxis]], axis=-1)
    forecast = extended[..., spec._pending_index]  # [..., L * B]: each log-scale's pending forecast
    distance = np.subtract(np.asarray(actual, dtype=np.float64)[..., np.newaxis], forecast)
    distance -= spec._centre_flat
    np.abs(distance, out=distance)
    log_scale = state[..., : spec._scales]
    limit = np.exp(log_scale)
    limit *= spec._half_flat
    step = np.where(distance > limit, spec._miss_step, spec._hit_step)
    step *= np.isfinite(forecast)  # nothing pending, nothing learned (0 or exactly 1)
    log_scale += step
    np.minimum(log_scale, spec._limit_high, out=log_scale)
    np.maximum(log_scale, spec._limit_low, out=log_scale)
    return state


def _adapt_one(state: np.ndarray, actual: float, one_step: float, spec: IntervalSpec) -> np.ndarray:
    """:func:`adapt` for one stream (``state`` a copy it may change): the same float64 operations, with
    numpy's exp, on Python floats for the L x B log-scales (a handful: numpy's per-call cost dominated)."""
    scales = spec._scales
    log_scale = state[:scales]
    limits = np.exp(log_scale)
    limits *= spec._half_flat
    pending = [one_step, *state[spec._oldest].tolist()]
    anchors = len(pending)
    new = log_scale.tolist()
    isfinite = math.isfinite
    for j, (limit, centre, miss, hit) in enumerate(zip(limits.tolist(), *spec._per_scale)):
        forecast = pending[j % anchors]
        value = new[j]
        if isfinite(forecast):  # nothing pending, nothing learned (but clipped all the same, as adapt does)
            value += miss if abs(actual - forecast - centre) > limit else hit
        new[j] = LOG_SCALE_LIMIT if value > LOG_SCALE_LIMIT else -LOG_SCALE_LIMIT if value < -LOG_SCALE_LIMIT else value
    log_scale[:] = new
    return state


def push(state: np.ndarray, forecast_scaled: np.ndarray, spec: IntervalSpec) -> np.ndarray:
    """The state after a step that forecast ``forecast_scaled`` ``[..., H]``: each anchor register moves up one."""
    extended = np.concatenate([state, forecast_scaled[..., spec._register_columns]], axis=-1)
    return extended[..., spec._shift]


def interval_offsets(state: np.ndarray, spec: IntervalSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` offsets ``[..., L, H]`` from the scaled point forecast for the states' log-scales."""
    log_scale = state[..., : spec._scales].reshape(state.shape[:-1] + spec._anchor_centre.shape)  # [..., L, B]
    half = np.exp(log_scale @ spec.interpolation) * spec.half_width
    return spec.centre - half, spec.centre + half


def interval_bounds(
    state: np.ndarray, scaled: np.ndarray, mean: np.ndarray | float, scale: np.ndarray | float, spec: IntervalSpec
) -> np.ndarray:
    """The bounds in original units, ``[..., 2, L, H]`` (lower, upper), around the scaled point forecast.

    The same numbers as ``(scaled + interval_offsets(state)) * scale + mean``, in one array and a few
    numpy calls (the per-reading path's cost is per call).

    Args:
        state: ``[..., D]`` adaptation states.
        scaled: ``[..., H]`` the scaled point forecasts.
        mean: ``[...]`` each stream's value mean (original units per scaled unit: ``scale``).
        scale: ``[...]`` each stream's value scale.
        spec: The served intervals.
    """
    batch = state.shape[:-1]
    log_scale = state[..., : spec._scales].reshape(batch + spec._anchor_centre.shape)  # [..., L, B]
    bounds = np.exp(log_scale @ spec.interpolation)[..., np.newaxis, :, :]  # [..., 1, L, H]
    bounds = bounds * spec._signed_half  # -half, +half: exactly the negated product for the lower bound
    bounds += spec.centre
    bounds += scaled[..., np.newaxis, np.newaxis, :]
    if batch:
        mean = np.asarray(mean, dtype=np.float64).reshape(batch + (1, 1, 1))
        scale = np.asarray(scale, dtype=np.float64).reshape(batch + (1, 1, 1))
    bounds *= scale
    bounds += mean
    return bounds


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
