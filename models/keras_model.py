"""The Keras forecaster: recurrent layers returning sequences, a dense head of H corrections and a
linear skip from ``[features, base]``, added to the seasonal-naive base (see ARCHITECTURE.md).
No Lambda layers, so it loads in safe mode.
"""

from __future__ import annotations

import keras
import numpy as np

from models.cells import CELL_TYPES, NetworkWeights, RecurrentLayer

_LAYER_CLASSES = {"rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def build_model(cell: str, layers: int, units: int, n_features: int, horizon: int, dropout: float = 0.0) -> keras.Model:
    if cell not in CELL_TYPES:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELL_TYPES)}")
    features = keras.Input(shape=(None, n_features), name="features")
    base = keras.Input(shape=(None, horizon), name="base")
    x = features
    for i in range(layers):
        x = _LAYER_CLASSES[cell](units, return_sequences=True, name=f"recurrent_{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    # Zero-initialised outputs: training starts from the seasonal naive forecast and learns corrections.
    correction = keras.layers.Dense(horizon, kernel_initializer="zeros", name="head")(x)
    skip = keras.layers.Dense(horizon, kernel_initializer="zeros", name="skip")(
        keras.layers.Concatenate(name="skip_inputs")([features, base])
    )
    forecast = keras.layers.Add(name="forecast")([base, correction, skip])
    return keras.Model(inputs=[features, base], outputs=forecast, name=f"rnncast_{cell}")


def recurrent_layer_names(model: keras.Model) -> list[str]:
    return sorted(
        (layer.name for layer in model.layers if layer.name.startswith("recurrent_")),
        key=lambda name: int(name.rsplit("_", 1)[1]),
    )


def extract_weights(model: keras.Model, cell: str) -> NetworkWeights:
    """Copy a trained model's weights into the numpy engine's layout (float64)."""
    layers = []
    for name in recurrent_layer_names(model):
        kernel, recurrent_kernel, bias = (np.asarray(w, dtype=np.float64) for w in model.get_layer(name).get_weights())
        layers.append(RecurrentLayer(cell=cell, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias))
    head_kernel, head_bias = (np.asarray(w, dtype=np.float64) for w in model.get_layer("head").get_weights())
    skip_kernel, skip_bias = (np.asarray(w, dtype=np.float64) for w in model.get_layer("skip").get_weights())
    return NetworkWeights(
        layers=tuple(layers), head_kernel=head_kernel, head_bias=head_bias, skip_kernel=skip_kernel, skip_bias=skip_bias
    )


def masked_mse(y_true, y_pred):
    """MSE over the targets that exist: NaN marks a target outside the data or in the warm-up."""
    ops = keras.ops
    present = ops.logical_not(ops.isnan(y_true))
    diff = ops.where(present, y_pred - ops.where(present, y_true, 0.0), 0.0)
    count = ops.maximum(ops.sum(ops.cast(present, "float32")), 1.0)
    return ops.sum(diff * diff) / count


def masked_mae(y_true, y_pred):
    """MAE over the targets that exist (NaN = absent), the loss that matches how forecasts are scored."""
    ops = keras.ops
    present = ops.logical_not(ops.isnan(y_true))
    diff = ops.where(present, y_pred - ops.where(present, y_true, 0.0), 0.0)
    count = ops.maximum(ops.sum(ops.cast(present, "float32")), 1.0)
    return ops.sum(ops.abs(diff)) / count


LOSSES = {"mse": masked_mse, "mae": masked_mae}
