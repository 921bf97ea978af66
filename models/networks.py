"""Which numpy network serves which ``cell`` name: a small registry (numpy only, no TensorFlow).

``rnn``/``lstm``/``gru`` are plain stacks (:class:`models.cells.NetworkWeights`); the variants in
:mod:`models.variants` carry extra hyperparameters, which the artifact's manifest records under
``"network"`` and :func:`network_from_arrays` passes back when an artifact is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from models.cells import CELL_TYPES, NetworkWeights
from models.variants.attention import AttentionNetwork
from models.variants.birnn import BiRNNNetwork
from models.variants.seq2seq import Seq2SeqNetwork


class Network(Protocol):
    """What :class:`models.engine.Engine` needs from a network."""

    @property
    def horizon(self) -> int: ...

    @property
    def state_size(self) -> int: ...

    def zero_state(self, batch: int = 1) -> np.ndarray: ...

    def step(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def skip(self, x: np.ndarray, base: np.ndarray) -> np.ndarray: ...

    def to_arrays(self) -> dict[str, np.ndarray]: ...


Loader = Callable[[dict[str, np.ndarray], dict], Network]


def _plain(cell: str) -> Loader:
    return lambda arrays, hyperparameters: NetworkWeights.from_arrays(cell, arrays)


VARIANT_TYPES = ("seq2seq", "attention", "birnn")
NETWORK_LOADERS: dict[str, Loader] = {
    **{cell: _plain(cell) for cell in CELL_TYPES},
    "seq2seq": Seq2SeqNetwork.from_arrays,
    "attention": AttentionNetwork.from_arrays,
    "birnn": BiRNNNetwork.from_arrays,
}
NETWORK_TYPES = tuple(NETWORK_LOADERS)


def network_from_arrays(cell: str, arrays: dict[str, np.ndarray], hyperparameters: dict | None = None) -> Network:
    """Rebuild the numpy network for ``cell`` from its arrays and its manifest hyperparameters.

    Raises:
        ValueError: unknown cell, or arrays/hyperparameters that do not fit together.
    """
    try:
        loader = NETWORK_LOADERS[cell]
    except KeyError:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(NETWORK_TYPES)}") from None
    try:
        return loader(arrays, dict(hyperparameters or {}))
    except KeyError as err:
        raise ValueError(f"{cell} network: missing {err.args[0]!r}") from None


def network_hyperparameters(network: Network) -> dict:
    """The extra hyperparameters a variant needs to be rebuilt ({} for plain stacks)."""
    describe = getattr(network, "hyperparameters", None)
    return describe() if callable(describe) else {}
