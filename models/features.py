"""Model inputs: one definition of the feature vector, shared by training and serving.

The input at time t is ``[value_scaled, covariates_scaled..., calendar..., one_step_error]`` where
the value is relative to the stream's smoothed level (:mod:`models.smoothing`), the calendar part is
sin/cos of the time of day and of the day of week, computed in UTC from the event timestamp (never
from the clock), and the last entry (models with smoothing) the smoothing's one-step error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.scaling import ScalerParams

SECONDS_PER_DAY = 86_400.0
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY
# 1970-01-01 was a Thursday; shifting by 3 days makes Monday 00:00 the start of the week.
_WEEK_ORIGIN_SHIFT = 3 * SECONDS_PER_DAY
CALENDAR_FEATURE_NAMES = ("time_of_day_sin", "time_of_day_cos", "day_of_week_sin", "day_of_week_cos")
ERROR_FEATURE_NAME = "one_step_error"
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class FeatureSpec:
    """What the network sees at each step, fitted on the training part."""

    covariate_names: tuple[str, ...]
    covariate_scaler: ScalerParams
    calendar: bool = True
    one_step_error: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        calendar = CALENDAR_FEATURE_NAMES if self.calendar else ()
        error = (ERROR_FEATURE_NAME,) if self.one_step_error else ()
        return ("value", *self.covariate_names, *calendar, *error)

    @property
    def size(self) -> int:
        return len(self.names)

    def to_json(self) -> dict:
        return {
            "names": list(self.names),
            "covariates": list(self.covariate_names),
            "covariate_scaler": self.covariate_scaler.to_json(),
            "calendar": self.calendar,
            "one_step_error": self.one_step_error,
        }

    @classmethod
    def from_json(cls, data: dict) -> FeatureSpec:
        return cls(
            covariate_names=tuple(data["covariates"]),
            covariate_scaler=ScalerParams.from_json(data["covariate_scaler"]),
            calendar=bool(data["calendar"]),
            one_step_error=bool(data.get("one_step_error", False)),
        )


def calendar_features(timestamps: np.ndarray) -> np.ndarray:
    """Calendar features for many timestamps: float64 [n, 4]."""
    ts = np.asarray(timestamps, dtype=np.float64)
    day_angle = (np.mod(ts, SECONDS_PER_DAY) / SECONDS_PER_DAY) * _TWO_PI
    week_angle = (np.mod(ts + _WEEK_ORIGIN_SHIFT, SECONDS_PER_WEEK) / SECONDS_PER_WEEK) * _TWO_PI
    return np.stack([np.sin(day_angle), np.cos(day_angle), np.sin(week_angle), np.cos(week_angle)], axis=1)


def input_matrix(
    spec: FeatureSpec,
    values_scaled: np.ndarray,
    covariates: np.ndarray,
    timestamps: np.ndarray,
    errors: np.ndarray | None = None,
) -> np.ndarray:
    """Feature rows for a whole sequence: float64 [n, spec.size] (``errors``: the one-step errors, if the spec has them)."""
    parts = [np.asarray(values_scaled, dtype=np.float64).reshape(-1, 1)]
    if spec.covariate_names:
        parts.append(spec.covariate_scaler.transform(np.asarray(covariates, dtype=np.float64)))
    if spec.calendar:
        parts.append(calendar_features(timestamps))
    if spec.one_step_error:
        parts.append(np.asarray(errors, dtype=np.float64).reshape(-1, 1))
    return np.concatenate(parts, axis=1)


def input_vector(
    spec: FeatureSpec, value_scaled: float, covariates: np.ndarray, timestamp: float, error: float = 0.0
) -> np.ndarray:
    """Feature row for one reading; equals one row of :func:`input_matrix`."""
    return input_matrix(
        spec,
        np.array([value_scaled]),
        np.asarray(covariates, dtype=np.float64).reshape(1, -1),
        np.array([timestamp], dtype=np.float64),
        np.array([error]),
    )[0]


class InputRowBuilder:
    """:func:`input_vector` for the per-reading path, with the spec's constants unpacked once.

    The covariate scaling and the calendar angles are computed on Python floats with the same
    IEEE operations as :func:`input_matrix` (so the row is bit-identical to it); only sin and cos go
    through numpy, on both angles at once, so they are numpy's own sin and cos as in training.
    """

    def __init__(self, spec: FeatureSpec):
        self.size = spec.size
        self._calendar = spec.calendar
        self._error = spec.one_step_error
        self._covariate_scaler = tuple(zip(spec.covariate_scaler.mean, spec.covariate_scaler.scale))

    def __call__(
        self, value_scaled: float, covariates: Sequence[float], timestamp: float, error: float = 0.0
    ) -> np.ndarray:
        """Feature row [spec.size] for one reading."""
        scaler = self._covariate_scaler
        if len(covariates) != len(scaler):
            raise ValueError(f"reading has {len(covariates)} covariates, the model expects {len(scaler)}")
        row = [float(value_scaled)]
        row += [(float(c) - mean) / scale for c, (mean, scale) in zip(covariates, scaler)]
        if self._calendar:
            timestamp = float(timestamp)
            angles = np.array(
                (
                    (timestamp % SECONDS_PER_DAY) / SECONDS_PER_DAY * _TWO_PI,
                    ((timestamp + _WEEK_ORIGIN_SHIFT) % SECONDS_PER_WEEK) / SECONDS_PER_WEEK * _TWO_PI,
                )
            )
            (day_sin, week_sin), (day_cos, week_cos) = np.sin(angles).tolist(), np.cos(angles).tolist()
            row += (day_sin, day_cos, week_sin, week_cos)
        if self._error:
            row.append(float(error))
        return np.array(row)


class InputColumnsBuilder:
    """:class:`InputRowBuilder` for a batch: feature rows of n readings, feature-major.

    ``rows(columns [4 + C, n], levels, errors) -> [F, n]``, where ``columns`` holds the values,
    timestamps, value means, value scales and the C covariates, one row each; ``levels`` (subtracted
    from the scaled value) and ``errors`` are the smoothing's, for models that have them. Each entry is the per-reading row's (and
    :func:`input_matrix`'s) with the same IEEE operations, one numpy call per
    feature block on contiguous rows; the constants are 0-d arrays (a Python float costs a
    conversion per call).
    """

    def __init__(self, spec: FeatureSpec):
        self.size = spec.size
        self.calendar = spec.calendar
        self.error = spec.one_step_error
        self.covariate_count = count = len(spec.covariate_names)
        # [C, 1] columns: one broadcast subtraction and division for all covariates
        self.covariate_mean = np.array(spec.covariate_scaler.mean, dtype=np.float64).reshape(count, 1)
        self.covariate_scale = np.array(spec.covariate_scaler.scale, dtype=np.float64).reshape(count, 1)
        self.day, self.week = np.array(SECONDS_PER_DAY), np.array(SECONDS_PER_WEEK)
        self.week_shift, self.two_pi = np.array(_WEEK_ORIGIN_SHIFT), np.array(_TWO_PI)

    def __call__(
        self, columns: np.ndarray, levels: np.ndarray | None = None, errors: np.ndarray | None = None
    ) -> np.ndarray:
        rows = np.empty((self.size, columns.shape[1]))
        value = rows[0]
        np.subtract(columns[0], columns[2], out=value)
        value /= columns[3]
        if levels is not None:
            value -= levels
        if self.error:
            rows[-1] = errors
        count = self.covariate_count
        if count:
            covariates = rows[1 : 1 + count]
            np.subtract(columns[4:], self.covariate_mean, out=covariates)
            covariates /= self.covariate_scale
        if self.calendar:
            timestamps, day, week, two_pi = columns[1], self.day, self.week, self.two_pi
            day_angle = np.mod(timestamps, day)
            day_angle /= day
            day_angle *= two_pi
            week_angle = np.add(timestamps, self.week_shift)
            np.mod(week_angle, week, out=week_angle)
            week_angle /= week
            week_angle *= two_pi
            first = 1 + count
            np.sin(day_angle, out=rows[first])
            np.cos(day_angle, out=rows[first + 1])
            np.sin(week_angle, out=rows[first + 2])
            np.cos(week_angle, out=rows[first + 3])
        return rows
