"""Small builders shared by the model tests: random networks and tiny artifacts."""

from __future__ import annotations

import math

import numpy as np

from models.cells import NetworkWeights, RecurrentLayer
from models.engine import Engine, EngineConfig
from models.features import FeatureSpec
from models.reading import Reading
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


def small_engine(
    cell: str = "lstm", season: int = 4, horizon: int = 3, covariates: int = 1, max_gap: int = 2, seed: int = 0
) -> Engine:
    spec = FeatureSpec(
        covariate_names=tuple(f"c{i}" for i in range(covariates)),
        covariate_scaler=ScalerParams(mean=(0.0,) * covariates, scale=(1.0,) * covariates),
        calendar=True,
    )
    weights = random_weights(cell, 1, 5, spec.size, horizon, seed)
    return Engine(
        weights, spec, EngineConfig(season=season, step_seconds=60.0, min_history=season + 1, max_gap=max_gap)
    )


VARIANTS = ("seq2seq", "attention", "birnn")


def _random_stack(rng, cell: str, layers: int, units: int, fan_in: int) -> tuple[RecurrentLayer, ...]:
    stack = []
    for _ in range(layers):
        g = GATES[cell]
        stack.append(
            RecurrentLayer(
                cell=cell,
                kernel=rng.normal(scale=0.4, size=(fan_in, g * units)),
                recurrent_kernel=rng.normal(scale=0.3, size=(units, g * units)),
                bias=rng.normal(scale=0.1, size=(2, g * units) if cell == "gru" else (g * units,)),
            )
        )
        fan_in = units
    return tuple(stack)


def random_variant(
    variant: str,
    n_features: int,
    horizon: int,
    *,
    cell: str = "lstm",
    units: int = 5,
    window: int = 4,
    step_seconds: float = 60.0,
    calendar: bool = True,
    seed: int = 0,
):
    """A numpy variant network with random weights (no Keras), for the engine's contract tests."""
    from models.cells import STATES_PER_CELL
    from models.variants.attention import AttentionNetwork
    from models.variants.birnn import BiRNNNetwork
    from models.variants.seq2seq import Seq2SeqNetwork

    rng = np.random.default_rng(seed)
    encoder = _random_stack(rng, cell, 1, units, n_features)
    skip = dict(
        skip_kernel=rng.normal(scale=0.1, size=(n_features + horizon, horizon)),
        skip_bias=rng.normal(scale=0.1, size=horizon),
    )
    if variant == "seq2seq":
        decoder_units = 3
        (decoder,) = _random_stack(rng, cell, 1, decoder_units, 1 + (4 if calendar else 0))
        return Seq2SeqNetwork(
            encoder=encoder,
            bridge_kernel=rng.normal(scale=0.4, size=(units, STATES_PER_CELL[cell] * decoder_units)),
            bridge_bias=rng.normal(scale=0.1, size=STATES_PER_CELL[cell] * decoder_units),
            decoder=decoder,
            readout_kernel=rng.normal(scale=0.4, size=(decoder_units, 1)),
            readout_bias=rng.normal(scale=0.1, size=1),
            step_seconds=step_seconds,
            calendar=calendar,
            **skip,
        )
    if variant == "attention":
        return AttentionNetwork(
            encoder=encoder,
            score_kernel=rng.normal(scale=0.5, size=(units, units)),
            lag_bias=rng.normal(scale=0.2, size=window),
            combine_kernel=rng.normal(scale=0.4, size=(2 * units, units)),
            combine_bias=rng.normal(scale=0.1, size=units),
            head_kernel=rng.normal(scale=0.2, size=(units, horizon)),
            head_bias=rng.normal(scale=0.1, size=horizon),
            **skip,
        )
    if variant == "birnn":
        backward_units = 3
        return BiRNNNetwork(
            forward=encoder,
            backward=_random_stack(rng, cell, 1, backward_units, n_features),
            window=window,
            head_kernel=rng.normal(scale=0.2, size=(units + backward_units, horizon)),
            head_bias=rng.normal(scale=0.1, size=horizon),
            **skip,
        )
    raise ValueError(variant)


def small_variant_engine(
    variant: str, season: int = 4, horizon: int = 3, max_gap: int = 2, seed: int = 0, **kwargs
) -> Engine:
    spec = FeatureSpec(covariate_names=("c0",), covariate_scaler=ScalerParams(mean=(0.0,), scale=(1.0,)), calendar=True)
    network = random_variant(variant, spec.size, horizon, seed=seed, **kwargs)
    return Engine(
        network, spec, EngineConfig(season=season, step_seconds=60.0, min_history=season + 1, max_gap=max_gap)
    )


def readings(n, start=0.0, step=60.0, sid="s"):
    """A smooth test stream with one covariate, ``step`` seconds apart."""
    return [Reading(sid, start + i * step, 10.0 + math.sin(i / 3.0) + 0.1 * i, (float(i % 5),)) for i in range(n)]


def run(engine, items, state=None):
    """Steps ``engine`` over ``items``; returns the last state and every StepResult."""
    results = []
    for r in items:
        res = engine.step(state, r)
        state = res.state
        results.append(res)
    return state, results


def random_intervals(horizon: int, levels: tuple[float, ...] = (0.8, 0.95), gamma: float = 0.05, seed: int = 0):
    """An :class:`~models.intervals.IntervalSpec` with random (valid) offsets that widen with the level."""
    from models.intervals import IntervalSpec

    rng = np.random.default_rng(seed)
    half = np.cumsum(rng.uniform(0.2, 0.6, size=(len(levels), horizon)), axis=0)
    centre = rng.normal(scale=0.1, size=horizon)
    return IntervalSpec.from_offsets(levels, centre - half, centre + half, gamma)
