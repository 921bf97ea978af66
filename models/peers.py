"""Statistical peers on rnncast's evaluation protocol: forecasts of well-kept libraries at the same origins.

The peers come from statsforecast (an optional extra, ``requirements-accuracy.txt``): MSTL (several
seasonal cycles, AutoETS on the trend), AutoETS and Holt-Winters (additive, damped, one season),
and its seasonal naive as a cross-check of our own baseline. Each peer is fitted once on the data
before the test part; at each forecast origin it is applied to the history up to and including
that origin (statsforecast's ``forward``: the fitted parameters, the states re-run over the
history), so every forecast uses exactly the readings the engine had seen when it issued its own.

Series are handed over as a sequence of *positions* (integer steps): the step grid for a regular
stream (a missing step is linearly interpolated for the peer, never scored), or the open-step index
for a stream with regular closures. Forecast row ``i`` targets positions ``pos[i] + h``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

INSTALL_HINT = "pip install -r requirements-accuracy.txt"
PEER_NAMES = ("mstl", "auto_ets", "holt_winters", "seasonal_naive_sf")


class PeersUnavailable(RuntimeError):
    """statsforecast is not installed (it is an optional extra)."""


@dataclass(frozen=True)
class PeerSpec:
    """Which peers, and how much history MSTL re-decomposes at each origin (its cost is linear in it)."""

    seasons: tuple[int, ...]
    peers: tuple[str, ...] = PEER_NAMES
    mstl_window: int | None = None  # default: 8 of the longest cycles, at least 672 steps


def _models(spec: PeerSpec) -> dict[str, Callable[[], object]]:
    try:
        from statsforecast.models import MSTL, AutoETS, HoltWinters, SeasonalNaive
    except ImportError as err:
        raise PeersUnavailable(
            f"the statistical peers need statsforecast ({err}); install them with: {INSTALL_HINT}"
        ) from None
    main = spec.seasons[0]
    return {
        "mstl": lambda: MSTL(season_length=list(spec.seasons) if len(spec.seasons) > 1 else spec.seasons[0]),
        "auto_ets": lambda: AutoETS(season_length=main),
        "holt_winters": lambda: HoltWinters(season_length=main, error_type="A"),
        "seasonal_naive_sf": lambda: SeasonalNaive(season_length=main),
    }


def positions_of(timestamps: np.ndarray, step_seconds: float, open_steps: bool = False) -> np.ndarray:
    """Integer step positions: the reading's index for open-step data, otherwise its step on the clock's grid."""
    if open_steps:
        return np.arange(len(timestamps), dtype=np.int64)
    return np.rint((timestamps - timestamps[0]) / step_seconds).astype(np.int64)


def origin_rows(timestamps: np.ndarray, test_from: float, max_origins: int) -> np.ndarray:
    """Every k-th row of the test part, k chosen so that at most ``max_origins`` remain."""
    rows = np.flatnonzero(timestamps >= test_from)
    if rows.size == 0:
        return rows
    stride = max(1, math.ceil(rows.size / max_origins))
    return rows[::stride]


def regular_history(positions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values on every position from the first to the last, missing ones linearly interpolated."""
    positions = np.asarray(positions, dtype=np.int64)
    grid = np.arange(positions[0], positions[-1] + 1)
    return np.interp(grid, positions, np.asarray(values, dtype=np.float64))


def peer_forecasts(
    spec: PeerSpec,
    positions: np.ndarray,
    values: np.ndarray,
    fit_before_row: int,
    origins: Sequence[int],
    horizon: int,
    on_origin: Callable[[], None] | None = None,
) -> dict[str, np.ndarray]:
    """Each peer's forecasts ``[n, horizon]`` at the given origin rows (NaN elsewhere).

    Args:
        spec: Seasons and peers.
        positions: Integer step position of each reading (strictly increasing).
        values: The readings.
        fit_before_row: Peers are fitted on rows ``[0, fit_before_row)`` (the data before the test part).
        origins: Rows at which to forecast (each uses rows ``[0, origin]``).
        horizon: Steps ahead.
        on_origin: Called after each origin (progress).

    Raises:
        PeersUnavailable: statsforecast is not installed.
    """
    models = _models(spec)
    positions = np.asarray(positions, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    history = regular_history(positions, values)
    offset = positions - positions[0]
    fit_end = int(offset[fit_before_row - 1]) + 1
    window = spec.mstl_window or max(8 * max(spec.seasons), 672)
    out = {name: np.full((len(values), horizon), np.nan) for name in spec.peers}
    fitted = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in spec.peers:
            train = history[max(fit_end - window, 0) : fit_end] if name == "mstl" else history[:fit_end]
            fitted[name] = models[name]().fit(train)
        for row in origins:
            end = int(offset[row]) + 1
            for name, model in fitted.items():
                past = history[max(end - window, 0) : end] if name == "mstl" else history[:end]
                result = model.forward(y=past, h=horizon)
                out[name][row] = np.asarray(next(iter(result.values())), dtype=np.float64)[:horizon]
            if on_origin is not None:
                on_origin()
    return out


def peer_report(
    streams, peer: str, seasons: tuple[int, ...], horizon: int, season: int, max_origins: int, on_origin=None
) -> dict:
    """A peer beside the model for ``rnncast evaluate``: both scored on the same origins and points.

    Args:
        streams: ``models.evaluation.StreamForecasts`` of the model.
        peer: One of :data:`PEER_NAMES`.
        seasons: The peer's cycles (the model's).
        horizon: H.
        season: The seasonal naive's season (points are skipped exactly as for the model).
        max_origins: Origins per stream at most (every k-th of the test part where the model forecast).
        on_origin: Progress callback.

    Raises:
        PeersUnavailable: statsforecast is not installed.
    """
    from models.metrics import combine_scores, score_series

    model_scores, peer_scores, origins_total = [], [], 0
    spec = PeerSpec(tuple(seasons), peers=(peer,))
    for stream in streams:
        series = stream.series
        rows = origin_rows(series.timestamps, stream.test_from, max_origins)
        rows = rows[np.all(np.isfinite(stream.forecasts[rows]), axis=1)] if rows.size else rows
        first_test = int(np.searchsorted(series.timestamps, stream.test_from))
        if rows.size == 0 or first_test < 2:
            continue
        positions = positions_of(series.timestamps, series.step_seconds)
        forecasts = peer_forecasts(spec, positions, series.values, first_test, rows.tolist(), horizon, on_origin)[peer]
        keep = np.zeros(len(series.values), dtype=bool)
        keep[rows] = True
        model = np.where(keep[:, None], stream.forecasts, np.nan)
        model_scores.append(
            score_series(series.timestamps, series.values, model, series.step_seconds, season, stream.test_from)
        )
        peer_scores.append(
            score_series(series.timestamps, series.values, forecasts, series.step_seconds, season, stream.test_from)
        )
        origins_total += int(rows.size)
    model = combine_scores(model_scores, horizon, season)
    other = combine_scores(peer_scores, horizon, season)
    model_mean, peer_mean = _mean(model["model"]["mae"]), _mean(other["model"]["mae"])
    return {
        "peer": peer,
        "seasons": list(seasons),
        "origins": origins_total,
        "model_mae": model["model"]["mae"],
        "peer_mae": other["model"]["mae"],
        "seasonal_naive_mae": model["seasonal_naive"]["mae"],
        "model_vs_peer": model_mean / peer_mean if peer_mean > 0 else math.nan,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def format_peer_report(report: dict) -> str:
    """A few lines for ``rnncast evaluate``'s text output (bands as in its table)."""
    from models.metrics import horizon_bands

    lines = [
        f"strong peer {report['peer']} (statsforecast, cycles {report['seasons']}) on {report['origins']} of the same origins:",
        f"{'horizons':<12}{'model MAE':>12}{'peer MAE':>12}{'vs peer':>10}",
    ]
    for label, sl in horizon_bands(len(report["model_mae"])):
        m, p = _mean(report["model_mae"][sl]), _mean(report["peer_mae"][sl])
        lines.append(f"{label:<12}{m:>12.6g}{p:>12.6g}{(m / p if p > 0 else math.nan):>10.3f}")
    ratio = report["model_vs_peer"]
    verdict = "beats" if ratio < 1 else "LOSES to"
    lines.append(
        f"model {verdict} {report['peer']} by {abs(1 - ratio) * 100:.1f}% on these origins (mean MAE over horizons)"
    )
    return "\n".join(lines)
