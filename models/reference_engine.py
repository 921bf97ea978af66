"""A reference engine whose recurrent step is computed by Keras itself (the trained layers' cells).

Slow (a Keras call per reading) and only for parity checks (``evaluate --engine keras``) and for
layers the numpy engine does not support. It shares the stream logic of :class:`models.engine.Engine`
and swaps only the network, so any difference it reveals is in the numerics.
"""

from __future__ import annotations

import numpy as np

from models.artifact import Artifact, load_keras_model
from models.cells import CELL_TYPES
from models.engine import Engine
from models.errors import UsageError
from models.keras_model import recurrent_layer_names


class KerasNetwork:
    """The network interface of :class:`models.cells.NetworkWeights`, computed with Keras cells."""

    def __init__(self, model, numpy_weights):
        self._cells = [model.get_layer(name).cell for name in recurrent_layer_names(model)]
        self._head = model.get_layer("head")
        self._skip = model.get_layer("skip")
        self._layout = [(layer.units, layer.state_count) for layer in numpy_weights.layers]
        self.state_size = numpy_weights.state_size
        self.horizon = numpy_weights.horizon

    def step(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import keras

        out = keras.ops.convert_to_tensor(x.astype(np.float32))
        offset = 0
        new_parts = []
        for cell, (units, count) in zip(self._cells, self._layout):
            states = []
            for _ in range(count):
                states.append(keras.ops.convert_to_tensor(flat_state[:, offset : offset + units].astype(np.float32)))
                offset += units
            out, new_states = cell(out, states if count > 1 else states[0], training=False)
            new_states = new_states if isinstance(new_states, (list, tuple)) else [new_states]
            new_parts.extend(np.asarray(keras.ops.convert_to_numpy(s), dtype=np.float64) for s in new_states)
        head = np.asarray(keras.ops.convert_to_numpy(self._head(out)), dtype=np.float64)
        return head, np.concatenate(new_parts, axis=1)

    def skip(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        import keras

        joined = keras.ops.convert_to_tensor(np.concatenate([x, base], axis=1).astype(np.float32))
        return np.asarray(keras.ops.convert_to_numpy(self._skip(joined)), dtype=np.float64)


def reference_engine(artifact: Artifact, min_history: int | None = None, max_gap: int | None = None) -> Engine:
    if artifact.cell not in CELL_TYPES:
        raise UsageError(
            f"the Keras reference engine steps plain rnn/lstm/gru stacks only, not {artifact.cell}; "
            "its numpy/Keras parity is checked at training time (manifest 'parity') and by the tests"
        )
    model = load_keras_model(artifact)
    engine = artifact.engine(min_history, max_gap)
    engine.weights = KerasNetwork(model, artifact.weights)  # type: ignore[assignment]
    return engine
