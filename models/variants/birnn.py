"""Bidirectional forecaster served over a sliding window, in numpy.

A live stream has no future, so a bidirectional RNN cannot run backwards over it. Instead:

* the forward stack is carried per stream like a plain cell (one step per reading, unbounded context);
* the state also keeps the last L input vectors (oldest first, zeros until L readings were
  stepped, exactly as in training, where a sequence starts from zeros), and at every reading the
  backward stack is re-run from a zero state over that window, newest to oldest; its final top
  output (having read the oldest input last) is the backward summary;
* the head reads ``[forward output, backward summary]``.

This is what ``Bidirectional(RNN)(window)`` computes for the backward half; the trade-off is
cost: O(L) backward steps per reading instead of O(1), and L·F more floats of state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.cells import RecurrentLayer, layers_from_arrays, layers_to_arrays, linear_skip, stack_state_size, step_stack
from models.variants.sequence import run_stack


@dataclass(frozen=True)
class BiRNNNetwork:
    """Forward stack (carried), backward stack (re-run over the window), head and skip."""

    forward: tuple[RecurrentLayer, ...]
    backward: tuple[RecurrentLayer, ...]
    window: int
    head_kernel: np.ndarray  # [U_forward + U_backward, H]
    head_bias: np.ndarray
    skip_kernel: np.ndarray
    skip_bias: np.ndarray

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if self.forward[0].kernel.shape[0] != self.backward[0].kernel.shape[0]:
            raise ValueError("forward and backward stacks must read the same inputs")

    @property
    def n_features(self) -> int:
        return int(self.forward[0].kernel.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.head_bias.shape[0])

    @property
    def forward_state_size(self) -> int:
        return stack_state_size(self.forward)

    @property
    def state_size(self) -> int:
        """The forward state, then the last L inputs (L·F floats, oldest first)."""
        return self.forward_state_size + self.window * self.n_features

    def zero_state(self, batch: int = 1) -> np.ndarray:
        return np.zeros((batch, self.state_size))

    def step(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        split = self.forward_state_size
        n = x.shape[0]
        forward_out, forward_state = step_stack(self.forward, x, flat_state[:, :split])
        inputs = flat_state[:, split:].reshape(n, self.window, self.n_features)
        inputs = np.concatenate([inputs[:, 1:], x[:, np.newaxis, :]], axis=1)
        summary = self.backward_summary(inputs)
        head = np.concatenate([forward_out, summary], axis=1) @ self.head_kernel + self.head_bias
        return head, np.concatenate([forward_state, inputs.reshape(n, -1)], axis=1)

    def backward_summary(self, inputs: np.ndarray) -> np.ndarray:
        """Run the backward stack over ``inputs`` [N, L, F] from newest to oldest; its last top output."""
        return run_stack(self.backward, inputs[:, ::-1, :])

    def skip(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return linear_skip(x, base, self.skip_kernel, self.skip_bias)

    def hyperparameters(self) -> dict:
        return {
            "encoder_cell": self.forward[0].cell,
            "window": self.window,
            "backward_units": self.backward[-1].units,
            "backward_layers": len(self.backward),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = layers_to_arrays("forward", self.forward)
        arrays.update(layers_to_arrays("backward", self.backward))
        arrays.update(
            head_kernel=self.head_kernel,
            head_bias=self.head_bias,
            skip_kernel=self.skip_kernel,
            skip_bias=self.skip_bias,
        )
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], hyperparameters: dict) -> BiRNNNetwork:
        cell = hyperparameters["encoder_cell"]
        return cls(
            forward=layers_from_arrays("forward", cell, arrays),
            backward=layers_from_arrays("backward", cell, arrays),
            window=int(hyperparameters["window"]),
            head_kernel=np.asarray(arrays["head_kernel"], dtype=np.float64),
            head_bias=np.asarray(arrays["head_bias"], dtype=np.float64),
            skip_kernel=np.asarray(arrays["skip_kernel"], dtype=np.float64),
            skip_bias=np.asarray(arrays["skip_bias"], dtype=np.float64),
        )
