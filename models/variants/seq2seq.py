"""Encoder–decoder (seq2seq) forecaster in numpy.

The encoder is a stack of LSTM/GRU/SimpleRNN layers whose state is carried per stream exactly like
the plain cells (one step per reading). At every reading a decoder unrolls H steps from the
encoder's top output: its initial state is ``tanh(bridge(h_t))``, and at step h its input is
``[y_{h-1}, calendar(t + h·step)]`` where ``y_{h-1}`` is its own previous output (``y_0 = 0``) and
the calendar features of the target time are known in advance. The calendar features of
``t + h·step`` are a fixed rotation of those of ``t`` (sin/cos of an angle advanced by a constant),
so they are computed from the input vector itself. Cost per reading: O(H) decoder steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.cells import (
    STATES_PER_CELL,
    RecurrentLayer,
    layers_from_arrays,
    layers_to_arrays,
    linear_skip,
    stack_state_size,
    step_stack,
)
from models.features import CALENDAR_FEATURE_NAMES, SECONDS_PER_DAY, SECONDS_PER_WEEK
from models.variants.sequence import step_projected

CALENDAR_SIZE = len(CALENDAR_FEATURE_NAMES)


def calendar_rotation(horizon: int, step_seconds: float) -> np.ndarray:
    """cos/sin of the angle each calendar pair advances by at ``h·step``, h = 1..H: float64 [4, H].

    Rows: cos and sin of the time-of-day advance, cos and sin of the day-of-week advance.
    """
    advance = step_seconds * np.arange(1, horizon + 1, dtype=np.float64)
    day = 2.0 * np.pi * advance / SECONDS_PER_DAY
    week = 2.0 * np.pi * advance / SECONDS_PER_WEEK
    return np.stack([np.cos(day), np.sin(day), np.cos(week), np.sin(week)])


def future_calendars(calendar_now: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Calendar features of ``t + h·step`` for every h = 1..H: [N, H, 4] from those of t ([N, 4])."""
    day_sin, day_cos, week_sin, week_cos = (calendar_now[:, i : i + 1] for i in range(CALENDAR_SIZE))
    cos_d, sin_d, cos_w, sin_w = rotation
    return np.stack(
        [
            day_sin * cos_d + day_cos * sin_d,
            day_cos * cos_d - day_sin * sin_d,
            week_sin * cos_w + week_cos * sin_w,
            week_cos * cos_w - week_sin * sin_w,
        ],
        axis=-1,
    )


@dataclass(frozen=True)
class Seq2SeqNetwork:
    """Encoder stack, bridge, decoder cell, readout, and the linear skip.

    Attributes:
        encoder: the carried recurrent stack.
        bridge_kernel: [U_enc, k·U_dec] (k = state vectors of the decoder cell), tanh activation.
        decoder: one recurrent layer fed ``[y_prev, calendar(target)]``.
        readout_kernel: [U_dec, 1], the decoder's output per step.
        step_seconds: sampling step (for the target times' calendar features).
        calendar: whether the features end with the 4 calendar features.
    """

    encoder: tuple[RecurrentLayer, ...]
    bridge_kernel: np.ndarray
    bridge_bias: np.ndarray
    decoder: RecurrentLayer
    readout_kernel: np.ndarray
    readout_bias: np.ndarray
    skip_kernel: np.ndarray
    skip_bias: np.ndarray
    step_seconds: float
    calendar: bool

    def __post_init__(self) -> None:
        expected_inputs = 1 + (CALENDAR_SIZE if self.calendar else 0)
        if self.decoder.kernel.shape[0] != expected_inputs:
            raise ValueError(f"decoder takes {self.decoder.kernel.shape[0]} inputs, expected {expected_inputs}")
        if self.bridge_kernel.shape[1] != self.decoder.units * self.decoder.state_count:
            raise ValueError("bridge output does not match the decoder state")
        object.__setattr__(self, "_rotation", calendar_rotation(self.horizon, self.step_seconds))

    @property
    def horizon(self) -> int:
        return int(self.skip_bias.shape[0])

    @property
    def state_size(self) -> int:
        """Only the encoder is carried; the decoder starts afresh at each reading."""
        return stack_state_size(self.encoder)

    def zero_state(self, batch: int = 1) -> np.ndarray:
        return np.zeros((batch, self.state_size))

    def step(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encoded, new_state = step_stack(self.encoder, x, flat_state)
        return self.decode(encoded, x), new_state

    def decode(self, encoded: np.ndarray, x: np.ndarray) -> np.ndarray:
        """H decoder steps from the encoder output ``encoded`` [N, U]: corrections [N, H]."""
        decoder, units = self.decoder, self.decoder.units
        initial = np.tanh(encoded @ self.bridge_kernel + self.bridge_bias)
        states = tuple(initial[:, i * units : (i + 1) * units] for i in range(decoder.state_count))
        # Step h's input is [y_{h-1}, calendar_h]: the calendar part is known, project it for all h at once.
        input_bias = decoder.bias[0] if decoder.cell == "gru" else decoder.bias
        if self.calendar:
            known = future_calendars(x[:, -CALENDAR_SIZE:], self._rotation) @ decoder.kernel[1:] + input_bias
        else:
            known = np.broadcast_to(input_bias, (x.shape[0], self.horizon, input_bias.shape[0]))
        feedback = decoder.kernel[0]
        previous = np.zeros((x.shape[0], 1))
        outputs = np.empty((x.shape[0], self.horizon))
        for h in range(self.horizon):
            out, states = step_projected(decoder, known[:, h] + previous * feedback, states)
            previous = out @ self.readout_kernel + self.readout_bias
            outputs[:, h] = previous[:, 0]
        return outputs

    def skip(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return linear_skip(x, base, self.skip_kernel, self.skip_bias)

    def hyperparameters(self) -> dict:
        return {
            "encoder_cell": self.encoder[0].cell,
            "decoder_cell": self.decoder.cell,
            "decoder_units": self.decoder.units,
            "step_seconds": self.step_seconds,
            "calendar": self.calendar,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = layers_to_arrays("encoder", self.encoder)
        arrays.update(layers_to_arrays("decoder", (self.decoder,)))
        arrays.update(
            bridge_kernel=self.bridge_kernel,
            bridge_bias=self.bridge_bias,
            readout_kernel=self.readout_kernel,
            readout_bias=self.readout_bias,
            skip_kernel=self.skip_kernel,
            skip_bias=self.skip_bias,
        )
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], hyperparameters: dict) -> Seq2SeqNetwork:
        encoder_cell = hyperparameters["encoder_cell"]
        decoder_cell = hyperparameters.get("decoder_cell", encoder_cell)
        (decoder,) = layers_from_arrays("decoder", decoder_cell, arrays)
        if STATES_PER_CELL[decoder_cell] * decoder.units != arrays["bridge_kernel"].shape[1]:
            raise ValueError("bridge_kernel does not match the decoder")
        return cls(
            encoder=layers_from_arrays("encoder", encoder_cell, arrays),
            bridge_kernel=_f64(arrays["bridge_kernel"]),
            bridge_bias=_f64(arrays["bridge_bias"]),
            decoder=decoder,
            readout_kernel=_f64(arrays["readout_kernel"]),
            readout_bias=_f64(arrays["readout_bias"]),
            skip_kernel=_f64(arrays["skip_kernel"]),
            skip_bias=_f64(arrays["skip_bias"]),
            step_seconds=float(hyperparameters["step_seconds"]),
            calendar=bool(hyperparameters["calendar"]),
        )


def _f64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)
