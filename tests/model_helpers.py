"""Small builders shared by the model tests: random networks and tiny artifacts."""

from __future__ import annotations

import numpy as np

from models.cells import NetworkWeights, RecurrentLayer
from models.engine import Engine, EngineConfig
from models.features import FeatureSpec
from models.scaling import ScalerParams

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def random_weights(cell: str, layers: int, units: int, n_features: int, horizon: int, seed: int = 0) -> NetworkWeights:
    rng = np.random.default_rng(seed)
    stack = []
    fan_in = n_features
    for _ in range(layers):
        g = GATES[cell]
        bias = rng.normal(scale=0.1, size=(2, g * units) if cell == "gru" else (g * units,))
        stack.append(
            RecurrentLayer(
                cell=cell,
                kernel=rng.normal(scale=0.4, size=(fan_in, g * units)),
                recurrent_kernel=rng.normal(scale=0.3, size=(units, g * units)),
                bias=bias,
            )
        )
        fan_in = units
    return NetworkWeights(
        layers=tuple(stack),
        head_kernel=rng.normal(scale=0.2, size=(units, horizon)),
        head_bias=rng.normal(scale=0.1, size=horizon),
        skip_kernel=rng.normal(scale=0.1, size=(n_features + horizon, horizon)),
        skip_bias=rng.normal(scale=0.1, size=horizon),
    )


def small_engine(cell: str = "lstm", season: int = 4, horizon: int = 3, covariates: int = 1, max_gap: int = 2, seed: int = 0) -> Engine:
    spec = FeatureSpec(
        covariate_names=tuple(f"c{i}" for i in range(covariates)),
        covariate_scaler=ScalerParams(mean=(0.0,) * covariates, scale=(1.0,) * covariates),
        calendar=True,
    )
    weights = random_weights(cell, 1, 5, spec.size, horizon, seed)
    return Engine(weights, spec, EngineConfig(season=season, step_seconds=60.0, min_history=season + 1, max_gap=max_gap))
