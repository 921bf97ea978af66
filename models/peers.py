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
        raise PeersUnavailable(f"the statistical peers need statsforecast ({err}); install them with: {INSTALL_HINT}") from None
    main = spec.seasons[0]
    return {
        "mstl": lambda: MSTL(season_length=list(spec.seasons) if len(spec.seasons) > 1 else spec.seasons[0]),
        "auto_ets": lambda: AutoETS(season_length=main),
        "holt_winters": lambda: HoltWinters(season_length=main, error_type="A"),
        "seasonal_naive_sf": lambda: SeasonalNaive(season_length=main),
    }


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
