"""Per-stream exponential smoothing of level and seasonal cycles (pure numpy): the base the network corrects.

As in Smyl's ES-RNN (IJF 2020), every reading updates a level and one seasonal component per
cycle (additive, error-correction form of ETS(A,N,A), with several cycles as in Taylor's
double-seasonal Holt-Winters), kept in the stream's state; the network learns what the smoothed
forecast gets wrong. In the stream's scaled units ``z``, with cycles ``S_1 < S_2 ...``:

    e_t  = z_t - (l_{t-1} + sum_k s^k_{t-S_k})       one-step error
    l_t  = l_{t-1} + alpha e_t
    s^k_t = s^k_{t-S_k} + gamma_k e_t
    base_t[h] = sum_k s^k_{t+h-S_k*ceil(h/S_k)}      the network's base, relative to l_t

and the forecast is ``l_t + base_t + correction``. ``alpha = 0, gamma = 1`` with one cycle is the
seasonal naive forecast around a level frozen at the warm-up's mean: the model rnncast served
before smoothing (:meth:`Smoothing.seasonal_naive`).

Warm-up: the first ``W = max(S_k)`` readings fit the stream's scaler (so ``l = 0``), the shortest
cycle's components are the mean profile over its W/S_1 cycles, each longer cycle's what the
shorter ones leave. Training (:mod:`models.sequences`), the per-reading engine and its batched
path all call :func:`update` and :meth:`Smoothing.base`: one definition of the recursion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Smoothing:
    """The cycles and the smoothing weights of a model (fitted on the training part, in the manifest)."""

    seasons: tuple[int, ...]
    alpha: float = 0.0
    gammas: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.seasons or any(s < 1 for s in self.seasons):
            raise ValueError("smoothing needs at least one season of at least 1 step")
        if list(self.seasons) != sorted(set(self.seasons)):
            raise ValueError(f"seasons must be increasing and distinct, got {list(self.seasons)}")
        if any(self.warmup % s for s in self.seasons):
            raise ValueError(f"each season must divide the longest ({self.warmup}), got {list(self.seasons)}")
        if len(self.gammas) != len(self.seasons):
            raise ValueError(f"one gamma per season: {len(self.gammas)} for {len(self.seasons)}")

    @classmethod
    def seasonal_naive(cls, season: int) -> Smoothing:
        """The frozen-level seasonal naive base (models trained before smoothing)."""
        return cls((int(season),), 0.0, (1.0,))

    @property
    def warmup(self) -> int:
        return max(self.seasons)

    @property
    def ring_size(self) -> int:
        return sum(self.seasons)

    @property
    def is_seasonal_naive(self) -> bool:
        return len(self.seasons) == 1 and self.alpha == 0.0 and self.gammas == (1.0,)

    def to_json(self) -> dict:
        return {"seasons": list(self.seasons), "alpha": self.alpha, "gammas": list(self.gammas)}

    @classmethod
    def from_json(cls, data: dict) -> Smoothing:
        return cls(
            tuple(int(s) for s in data["seasons"]), float(data["alpha"]), tuple(float(g) for g in data["gammas"])
        )

    def initial_ring(self, z: np.ndarray) -> np.ndarray:
        """The seasonal components after the warm-up's ``W`` scaled readings (level 0), oldest first."""
        z = np.asarray(z, dtype=np.float64)
        if len(self.seasons) == 1:
            return z.copy()  # W = S: the warm-up itself (the seasonal naive's ring)
        parts, rest = [], z.copy()
        for season in self.seasons:
            profile = rest.reshape(-1, season).mean(axis=0)  # W is a whole number of cycles
            parts.append(profile)
            rest = rest - np.tile(profile, self.warmup // season)
        return np.concatenate(parts)

    def base_index(self, horizon: int) -> list[np.ndarray]:
        """Per season, the ring positions of ``s^k_{t+h-S_k*ceil(h/S_k)}`` for h = 1..H."""
        h = np.arange(horizon)
        offsets = np.cumsum((0, *self.seasons[:-1]))
        return [offset + h % season for offset, season in zip(offsets, self.seasons)]

    def oldest_index(self) -> np.ndarray:
        """Ring positions of ``s^k_{t-S_k}`` (each cycle's oldest component)."""
        return np.cumsum((0, *self.seasons[:-1]))


class SmoothingKernel:
    """:func:`update` and the base of one :class:`Smoothing` for a horizon, with the index arrays made once."""

    def __init__(self, smoothing: Smoothing, horizon: int):
        self.smoothing = smoothing
        self.horizon = horizon
        self.ring_size = smoothing.ring_size
        self._oldest = smoothing.oldest_index()
        self._gammas = np.asarray(smoothing.gammas, dtype=np.float64)
        self._alpha = float(smoothing.alpha)
        self._seasons = smoothing.seasons
        index = smoothing.base_index(horizon)
        # One cycle and H <= S: the base is the ring's first H entries (a view, no gather).
        self._slice = slice(0, horizon) if len(index) == 1 and horizon <= smoothing.seasons[0] else None
        self._index = index
        self._naive = smoothing.is_seasonal_naive

    def update(self, level: np.ndarray, ring: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One reading for a batch: ``level [n], ring [n, R], z [n] -> (level, ring, error)``, new arrays."""
        new_ring = np.empty_like(ring)
        if self._naive:
            # s_t = s_{t-S} + (z_t - s_{t-S}) = z_t, exactly (and the level never moves)
            error = z - level - ring[..., 0]
            new_ring[..., :-1] = ring[..., 1:]
            new_ring[..., -1] = z
            return level.copy(), new_ring, error
        return _step(level, ring, z, self._alpha, self._gammas, self._oldest, self._seasons)

    def base(self, ring: np.ndarray) -> np.ndarray:
        """``[..., H]`` seasonal part of the forecast from the ring (relative to the level)."""
        if self._slice is not None:
            return ring[..., self._slice].copy()
        total = ring[..., self._index[0]]
        for index in self._index[1:]:
            total = total + ring[..., index]
        return total

    def run(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The recursion over scaled readings ``z [n]`` (or ``[B, n]``: B sequences at once), from the warm-up on.

        Returns, for each row ``t = W .. n-1`` (the rows the network steps on): the level ``l_t``
        ``[(B,) m]``, the base ``[(B,) m, H]`` and the one-step error ``e_t`` ``[(B,) m]``, exactly as
        the engine computes them.
        """
        z = np.asarray(z, dtype=np.float64)
        single = z.ndim == 1
        z = np.atleast_2d(z)
        batch, n = z.shape
        warmup = self.smoothing.warmup
        m = n - warmup
        levels, errors = np.empty((batch, m)), np.empty((batch, m))
        bases = np.empty((batch, m, self.horizon))
        level = np.zeros(batch)
        ring = np.stack([self.smoothing.initial_ring(row[:warmup]) for row in z])
        for i in range(m):
            level, ring, error = self.update(level, ring, z[:, warmup + i])
            levels[:, i], errors[:, i] = level, error
            bases[:, i] = self.base(ring)
        if single:
            return levels[0], bases[0], errors[0]
        return levels, bases, errors


def fit_smoothing(
    segments: list[np.ndarray], seasons: tuple[int, ...], horizon: int, alphas=None, gammas=None
) -> tuple[Smoothing, dict]:
    """Chooses alpha and the gammas on the training segments (scaled) by the base's MAE over horizons.

    A grid (every candidate run at once, vectorised): the smoothed forecast alone, without the
    network, averaged over horizons 1..H and the training rows. Returns the choice and the table of
    candidates' errors (recorded in the manifest).
    """
    alphas = alphas if alphas is not None else (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)
    gammas = gammas if gammas is not None else (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
    grid = [(a, g) for a in alphas for g in gammas]
    k = len(grid)
    smoothing = Smoothing(tuple(seasons), 0.0, tuple(1.0 for _ in seasons))
    warmup, index, oldest = smoothing.warmup, smoothing.base_index(horizon), smoothing.oldest_index()
    alpha = np.array([a for a, _ in grid])
    gamma = np.array([g for _, g in grid])[:, None]  # the same gamma for every cycle
    total, count = np.zeros(k), 0
    for z in segments:
        n = len(z)
        if n <= warmup + horizon:
            continue
        level = np.zeros(k)
        ring = np.tile(smoothing.initial_ring(z[:warmup]), (k, 1))
        for t in range(warmup, n):
            level, ring, _ = _step(level, ring, z[t], alpha, gamma, oldest, smoothing.seasons)
            if t + horizon < n:
                base = sum(ring[:, i] for i in index) + level[:, None]
                total += np.abs(base - z[t + 1 : t + 1 + horizon]).mean(axis=1)
                count += 1
    if count == 0:
        return smoothing, {"chosen_by": "no training rows past the warm-up: seasonal naive smoothing"}
    mae = total / count
    best = int(np.argmin(mae))
    a, g = grid[best]
    chosen = Smoothing(tuple(seasons), float(a), tuple(float(g) for _ in seasons))
    return chosen, {
        "chosen_by": "lowest MAE over horizons of the smoothed forecast alone on the training part (scaled units)",
        "mae": float(mae[best]),
        "candidates": [{"alpha": a, "gamma": g, "mae": float(v)} for (a, g), v in zip(grid, mae)],
    }


def _step(level, ring, z, alpha, gamma, oldest, seasons):
    """The recursion's one step (see the module docstring); ``gamma`` broadcasts against ``[..., cycles]``."""
    previous = ring[..., oldest]
    error = z - level - previous.sum(axis=-1)
    newest = previous + gamma * error[..., np.newaxis]
    new_ring = np.empty_like(ring)
    start = 0
    for k, season in enumerate(seasons):
        end = start + season
        new_ring[..., start : end - 1] = ring[..., start + 1 : end]
        new_ring[..., end - 1] = newest[..., k]
        start = end
    return level + alpha * error, new_ring, error
