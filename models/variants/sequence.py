"""Recurrent steps with the input projection computed ahead (numpy), for loops over known inputs.

A decoder over known target-time features, or a backward pass over a stored window, knows all of
its inputs before the loop starts: ``x @ kernel + bias`` is one matmul for every step, and each
step is left with the recurrent part only. Same equations as :class:`models.cells.RecurrentLayer`
(Keras' SimpleRNN, LSTM and GRU with ``reset_after=True``), summed in a different order (float64
differences of order 1e-16).
"""

from __future__ import annotations

import numpy as np

from models.cells import RecurrentLayer, sigmoid


def project(layer: RecurrentLayer, x: np.ndarray) -> np.ndarray:
    """``x @ kernel`` plus the input-side bias, for any leading shape of ``x`` [..., F]."""
    input_bias = layer.bias[0] if layer.cell == "gru" else layer.bias
    return x @ layer.kernel + input_bias


def step_projected(
    layer: RecurrentLayer, xz: np.ndarray, states: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """One step given the projected input ``xz`` [N, G·U] (from :func:`project`)."""
    u = layer.units
    if layer.cell == "rnn":
        h = np.tanh(xz + states[0] @ layer.recurrent_kernel)
        return h, (h,)
    if layer.cell == "lstm":
        h_prev, c_prev = states
        z = xz + h_prev @ layer.recurrent_kernel
        gates = sigmoid(z)  # one call for all four blocks; the candidate block is recomputed with tanh
        c = gates[:, u : 2 * u] * c_prev + gates[:, :u] * np.tanh(z[:, 2 * u : 3 * u])
        h = gates[:, 3 * u :] * np.tanh(c)
        return h, (h, c)
    if layer.cell == "gru":
        (h_prev,) = states
        hz = h_prev @ layer.recurrent_kernel + layer.bias[1]
        update_reset = sigmoid(xz[:, : 2 * u] + hz[:, : 2 * u])
        update, reset = update_reset[:, :u], update_reset[:, u:]
        candidate = np.tanh(xz[:, 2 * u :] + reset * hz[:, 2 * u :])
        h = update * h_prev + (1.0 - update) * candidate
        return h, (h,)
    raise ValueError(f"unknown cell type {layer.cell!r}")


def zero_states(layer: RecurrentLayer, batch: int) -> tuple[np.ndarray, ...]:
    return tuple(np.zeros((batch, layer.units)) for _ in range(layer.state_count))


def run_stack(layers: tuple[RecurrentLayer, ...], inputs: np.ndarray) -> np.ndarray:
    """Run a stack from zero states over ``inputs`` [N, L, F] (in that order); the top layer's last output."""
    sequence = inputs
    out = None
    for depth, layer in enumerate(layers):
        projected = project(layer, sequence)
        states = zero_states(layer, inputs.shape[0])
        top = depth == len(layers) - 1
        outputs = None if top else np.empty((inputs.shape[0], inputs.shape[1], layer.units))
        for k in range(inputs.shape[1]):
            out, states = step_projected(layer, projected[:, k], states)
            if outputs is not None:
                outputs[:, k] = out
        sequence = outputs
    return out
