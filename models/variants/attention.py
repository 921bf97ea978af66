"""Windowed-attention forecaster in numpy (Luong "general" attention over the last W encoder states).

The encoder is a carried recurrent stack. Its last W top-layer outputs are kept per stream in a
shift register inside the flat state (oldest first, the current output last; zeros until W steps
have been taken, exactly as in training, where a sequence starts from zeros). At each reading:

    score_k  = (h_t W_a) · m_k + b_lag[k]        k = 0..W-1 over the memory m (Luong "general",
                                                  plus a learned bias per lag, as attention has no
                                                  other notion of position)
    alpha    = softmax(score)
    context  = sum_k alpha_k m_k
    attended = tanh([context, h_t] W_c + b_c)    (Luong's attentional hidden state)
    head     = attended W_head + b_head

Cost per reading: O(W·U). State: the encoder state plus W·U floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.cells import RecurrentLayer, layers_from_arrays, layers_to_arrays, linear_skip, stack_state_size, step_stack

ATTENTION_TYPE = "luong_general"


@dataclass(frozen=True)
class AttentionNetwork:
    """Encoder stack, the attention over its last ``window`` outputs, the dense head and the skip."""

    encoder: tuple[RecurrentLayer, ...]
    score_kernel: np.ndarray  # W_a [U, U]
    lag_bias: np.ndarray  # [W], slot 0 = oldest
    combine_kernel: np.ndarray  # W_c [2U, U]: rows for the context, then for h_t
    combine_bias: np.ndarray  # [U]
    head_kernel: np.ndarray  # [U, H]
    head_bias: np.ndarray  # [H]
    skip_kernel: np.ndarray
    skip_bias: np.ndarray

    @property
    def window(self) -> int:
        return int(self.lag_bias.shape[0])

    @property
    def units(self) -> int:
        return self.encoder[-1].units

    @property
    def horizon(self) -> int:
        return int(self.head_bias.shape[0])

    @property
    def encoder_state_size(self) -> int:
        return stack_state_size(self.encoder)

    @property
    def state_size(self) -> int:
        """The encoder state, then the memory of W outputs (W·U floats, oldest first)."""
        return self.encoder_state_size + self.window * self.units

    def zero_state(self, batch: int = 1) -> np.ndarray:
        return np.zeros((batch, self.state_size))

    def step(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        split = self.encoder_state_size
        hidden, encoder_state = step_stack(self.encoder, x, flat_state[:, :split])
        memory = flat_state[:, split:].reshape(x.shape[0], self.window, self.units)
        memory = np.concatenate([memory[:, 1:], hidden[:, np.newaxis, :]], axis=1)
        attended = self.attend(hidden, memory)
        head = attended @ self.head_kernel + self.head_bias
        return head, np.concatenate([encoder_state, memory.reshape(x.shape[0], -1)], axis=1)

    def attend(self, hidden: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """Attentional state for queries ``hidden`` [N, U] over ``memory`` [N, W, U]."""
        query = hidden @ self.score_kernel
        scores = np.einsum("nu,nwu->nw", query, memory) + self.lag_bias
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=1, keepdims=True)
        context = np.einsum("nw,nwu->nu", weights, memory)
        units = self.units
        return np.tanh(context @ self.combine_kernel[:units] + hidden @ self.combine_kernel[units:] + self.combine_bias)

    def skip(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return linear_skip(x, base, self.skip_kernel, self.skip_bias)

    def hyperparameters(self) -> dict:
        return {"encoder_cell": self.encoder[0].cell, "attention": ATTENTION_TYPE, "window": self.window}

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = layers_to_arrays("encoder", self.encoder)
        arrays.update(
            score_kernel=self.score_kernel,
            lag_bias=self.lag_bias,
            combine_kernel=self.combine_kernel,
            combine_bias=self.combine_bias,
            head_kernel=self.head_kernel,
            head_bias=self.head_bias,
            skip_kernel=self.skip_kernel,
            skip_bias=self.skip_bias,
        )
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], hyperparameters: dict) -> AttentionNetwork:
        if hyperparameters.get("attention", ATTENTION_TYPE) != ATTENTION_TYPE:
            raise ValueError(
                f"attention type {hyperparameters['attention']!r} is not supported (only {ATTENTION_TYPE})"
            )
        network = cls(
            encoder=layers_from_arrays("encoder", hyperparameters["encoder_cell"], arrays),
            **{
                name: np.asarray(arrays[name], dtype=np.float64)
                for name in (
                    "score_kernel",
                    "lag_bias",
                    "combine_kernel",
                    "combine_bias",
                    "head_kernel",
                    "head_bias",
                    "skip_kernel",
                    "skip_bias",
                )
            },
        )
        if "window" in hyperparameters and int(hyperparameters["window"]) != network.window:
            raise ValueError(
                f"lag_bias has {network.window} lags, the manifest says window {hyperparameters['window']}"
            )
        return network
