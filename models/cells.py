"""Recurrent cells in numpy, matching Keras 3's SimpleRNN, LSTM and GRU (reset_after=True).

Every function works on a batch of streams at once: ``x`` is [N, F] and each state is [N, U].
Weights use Keras' own layout (kernel [F, G·U], recurrent kernel [U, G·U]) so they can be
copied from a trained model without reshuffling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CELL_TYPES = ("rnn", "lstm", "gru")
# How many [N, U] state vectors each cell carries.
STATES_PER_CELL = {"rnn": 1, "lstm": 2, "gru": 1}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class RecurrentLayer:
    """One recurrent layer's weights (float64)."""

    cell: str
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: np.ndarray  # [G·U]; for GRU [2, 3U]: input bias, recurrent bias

    @property
    def units(self) -> int:
        return int(self.recurrent_kernel.shape[0])

    @property
    def state_count(self) -> int:
        return STATES_PER_CELL[self.cell]

    def step(self, x: np.ndarray, states: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Advance one time step; returns (output [N, U], new states)."""
        if self.cell == "rnn":
            h = np.tanh(x @ self.kernel + states[0] @ self.recurrent_kernel + self.bias)
            return h, (h,)
        if self.cell == "lstm":
            return _lstm_step(self, x, states)
        if self.cell == "gru":
            return _gru_step(self, x, states)
        raise ValueError(f"unknown cell type {self.cell!r}")


def _lstm_step(layer: RecurrentLayer, x: np.ndarray, states: tuple[np.ndarray, ...]):
    h_prev, c_prev = states
    u = layer.units
    z = x @ layer.kernel + h_prev @ layer.recurrent_kernel + layer.bias
    i = sigmoid(z[:, :u])
    f = sigmoid(z[:, u : 2 * u])
    candidate = np.tanh(z[:, 2 * u : 3 * u])
    o = sigmoid(z[:, 3 * u :])
    c = f * c_prev + i * candidate
    h = o * np.tanh(c)
    return h, (h, c)


def _gru_step(layer: RecurrentLayer, x: np.ndarray, states: tuple[np.ndarray, ...]):
    (h_prev,) = states
    u = layer.units
    input_bias, recurrent_bias = layer.bias[0], layer.bias[1]
    xz = x @ layer.kernel + input_bias
    hz = h_prev @ layer.recurrent_kernel + recurrent_bias
    update = sigmoid(xz[:, :u] + hz[:, :u])
    reset = sigmoid(xz[:, u : 2 * u] + hz[:, u : 2 * u])
    candidate = np.tanh(xz[:, 2 * u :] + reset * hz[:, 2 * u :])
    h = update * h_prev + (1.0 - update) * candidate
    return h, (h,)


def stack_state_size(layers: tuple[RecurrentLayer, ...]) -> int:
    """Floats of recurrent state per stream for a stack of layers."""
    return sum(layer.units * layer.state_count for layer in layers)


def step_stack(
    layers: tuple[RecurrentLayer, ...], x: np.ndarray, flat_state: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One step of a layer stack: ``x`` [N, F], ``flat_state`` [N, stack_state_size] -> (top output, new state).

    The flat state holds every layer's state vectors in order (LSTM: h then c), as Keras orders them.
    """
    new_parts = []
    offset = 0
    out = x
    for layer in layers:
        states = []
        for _ in range(layer.state_count):
            states.append(flat_state[:, offset : offset + layer.units])
            offset += layer.units
        out, new_states = layer.step(out, tuple(states))
        new_parts.extend(new_states)
    return out, np.concatenate(new_parts, axis=1)


def linear_skip(x: np.ndarray, base: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``[x, base] @ kernel + bias`` without building the concatenation."""
    n_features = x.shape[1]
    return x @ kernel[:n_features] + base @ kernel[n_features:] + bias


def layers_to_arrays(prefix: str, layers: tuple[RecurrentLayer, ...]) -> dict[str, np.ndarray]:
    """A stack's weights as ``{prefix}{i}_kernel``, ``_recurrent_kernel``, ``_bias`` arrays."""
    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(layers):
        arrays[f"{prefix}{i}_kernel"] = layer.kernel
        arrays[f"{prefix}{i}_recurrent_kernel"] = layer.recurrent_kernel
        arrays[f"{prefix}{i}_bias"] = layer.bias
    return arrays


def layers_from_arrays(prefix: str, cell: str, arrays: dict[str, np.ndarray]) -> tuple[RecurrentLayer, ...]:
    """The inverse of :func:`layers_to_arrays` (float64); raises ``ValueError`` if there is no layer."""
    if cell not in STATES_PER_CELL:
        raise ValueError(f"unknown cell type {cell!r}")
    layers = []
    i = 0
    while f"{prefix}{i}_kernel" in arrays:
        layers.append(
            RecurrentLayer(
                cell=cell,
                kernel=np.asarray(arrays[f"{prefix}{i}_kernel"], dtype=np.float64),
                recurrent_kernel=np.asarray(arrays[f"{prefix}{i}_recurrent_kernel"], dtype=np.float64),
                bias=np.asarray(arrays[f"{prefix}{i}_bias"], dtype=np.float64),
            )
        )
        i += 1
    if not layers:
        raise ValueError("weights contain no recurrent layer" if prefix == "layer" else f"weights contain no {prefix} layer")
    return tuple(layers)


@dataclass(frozen=True)
class NetworkWeights:
    """A stack of recurrent layers, the dense head on the top layer's output, and a linear skip.

    The skip maps ``[x_t, base_t]`` straight to the H outputs: short horizons need the current
    value next to the seasonal base (a persistence-like term) and a recurrent state is a poor place
    to keep a value from a season ago.
    """

    layers: tuple[RecurrentLayer, ...]
    head_kernel: np.ndarray  # [U_last, H]
    head_bias: np.ndarray  # [H]
    skip_kernel: np.ndarray  # [F + H, H]
    skip_bias: np.ndarray  # [H]

    @property
    def horizon(self) -> int:
        return int(self.head_bias.shape[0])

    @property
    def state_size(self) -> int:
        """Floats of recurrent state per stream (all layers, all state vectors)."""
        return stack_state_size(self.layers)

    def zero_state(self, batch: int = 1) -> np.ndarray:
        return np.zeros((batch, self.state_size))

    def step(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step for a batch: ``x`` [N, F], ``flat_state`` [N, state_size] -> (head output [N, H], new state)."""
        out, new_state = step_stack(self.layers, x, flat_state)
        return out @ self.head_kernel + self.head_bias, new_state

    def skip(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        """The linear skip term for inputs ``x`` [N, F] and seasonal base ``base`` [N, H]."""
        return linear_skip(x, base, self.skip_kernel, self.skip_bias)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "head_kernel": self.head_kernel,
            "head_bias": self.head_bias,
            "skip_kernel": self.skip_kernel,
            "skip_bias": self.skip_bias,
        }
        arrays.update(layers_to_arrays("layer", self.layers))
        return arrays

    @classmethod
    def from_arrays(cls, cell: str, arrays: dict[str, np.ndarray]) -> "NetworkWeights":
        return cls(
            layers=layers_from_arrays("layer", cell, arrays),
            head_kernel=np.asarray(arrays["head_kernel"], dtype=np.float64),
            head_bias=np.asarray(arrays["head_bias"], dtype=np.float64),
            skip_kernel=np.asarray(arrays["skip_kernel"], dtype=np.float64),
            skip_bias=np.asarray(arrays["skip_bias"], dtype=np.float64),
        )
