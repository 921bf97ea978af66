"""Registered Keras layers for the variant forecasters (no Lambda: they load with ``safe_mode=True``).

Each layer computes, for a whole sequence at once, exactly what its numpy counterpart in
:mod:`models.variants` computes one reading at a time; the tests hold them to 1e-5.

Layers that need context from earlier rows take ``scored_from`` and ``every`` (Python ints, default
0 and 1): they return rows ``scored_from::every`` only, using all earlier rows as context. Training
uses them to skip the warm-up rows, whose targets are masked anyway, and to score every k-th origin
of the O(H)/O(L)-per-row variants; the saved model always computes every row.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from models.cells import STATES_PER_CELL
from models.variants.seq2seq import CALENDAR_SIZE, calendar_rotation

_CELLS = {"rnn": keras.layers.SimpleRNNCell, "lstm": keras.layers.LSTMCell, "gru": keras.layers.GRUCell}
SEQUENCE_LAYERS = {"rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
_PACKAGE = "rnncast"


def _check_cell(cell: str) -> None:
    if cell not in _CELLS:
        raise ValueError(f"unknown recurrent cell {cell!r}; choose one of {', '.join(_CELLS)}")


def _shifted(padded, start: int, total_pad: int, offset: int):
    """Rows of ``padded`` (``total_pad`` zero rows in front) at original index ``t - offset``, t >= start."""
    begin = start + total_pad - offset
    end = -offset if offset > 0 else None
    return padded[:, begin:end]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TimeSlice(keras.layers.Layer):
    """``x[:, start::every]`` (used by the training graph only)."""

    def __init__(self, start: int, every: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.start = int(start)
        self.every = int(every)

    def call(self, x):
        return x[:, self.start :: self.every]

    def compute_output_shape(self, input_shape):
        steps = None if input_shape[1] is None else len(range(self.start, input_shape[1], self.every))
        return (input_shape[0], steps, *input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "start": self.start, "every": self.every}


class _FeedbackCell(keras.layers.Layer):
    """One decoder step: ``[y_prev, calendar_h]`` -> cell -> ``y_h``; the state carries ``y_h`` along.

    Internal to :class:`FeedbackDecoder` (rebuilt by its ``__init__``, never serialised on its own).
    """

    def __init__(self, cell: str, units: int, calendar: bool, **kwargs):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        self.calendar = calendar
        self.cell = _CELLS[cell](units, name="decoder_cell", dtype=policy)
        # Zero-initialised like the plain head: training starts from the seasonal naive + skip.
        self.readout = keras.layers.Dense(1, kernel_initializer="zeros", name="readout", dtype=policy)
        self.state_size = [units] * STATES_PER_CELL[cell] + [1]
        self.output_size = 1

    def build(self, input_shape):
        self.cell.build((None, 1 + (CALENDAR_SIZE if self.calendar else 0)))
        self.readout.build((None, self.cell.units))
        self.built = True

    def call(self, inputs, states, training=None):
        *cell_states, previous = states
        step_input = ops.concatenate([previous, inputs], axis=-1) if self.calendar else previous
        out, new_states = self.cell(step_input, list(cell_states))
        new_states = list(new_states) if isinstance(new_states, (list, tuple)) else [new_states]
        output = self.readout(out)
        return output, [*new_states, output]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FeedbackDecoder(keras.layers.Layer):
    """Seq2seq decoder: from each row's encoder output, unroll H steps feeding back its own output.

    Inputs ``[encoded [B, T, U], features [B, T, F]]``; output ``[B, T, H]`` corrections. Step h
    reads ``[y_{h-1}, calendar(t + h·step)]`` (``y_0 = 0``); the initial state is
    ``tanh(bridge(encoded))``. See :mod:`models.variants.seq2seq`. The H steps run as a symbolic
    loop (``keras.layers.RNN`` over the target times), which keeps the graph small to trace.
    """

    def __init__(self, cell: str, units: int, horizon: int, step_seconds: float, calendar: bool, **kwargs):
        super().__init__(**kwargs)
        _check_cell(cell)
        self.cell_type = cell
        self.units = int(units)
        self.horizon = int(horizon)
        self.step_seconds = float(step_seconds)
        self.calendar = bool(calendar)
        self.state_count = STATES_PER_CELL[cell]
        # Sublayers compute in this layer's dtype (a float64 twin is the exactness check).
        policy = self.dtype_policy
        self.bridge = keras.layers.Dense(self.state_count * self.units, activation="tanh", name="bridge", dtype=policy)
        self.feedback = _FeedbackCell(cell, self.units, self.calendar, name="feedback", dtype=policy)
        self.unroll = keras.layers.RNN(self.feedback, return_sequences=True, name="unroll", dtype=policy)
        self._rotation = calendar_rotation(
            self.horizon, self.step_seconds
        )  # float64: constants round once, at the compute dtype

    @property
    def cell(self):
        return self.feedback.cell

    @property
    def readout(self):
        return self.feedback.readout

    def build(self, input_shape):
        encoded_shape, _ = input_shape
        self.bridge.build((None, encoded_shape[-1]))
        self.unroll.build((None, self.horizon, CALENDAR_SIZE if self.calendar else 1))
        self.built = True

    def call(self, inputs):
        encoded, features = inputs
        batch, steps = ops.shape(encoded)[0], ops.shape(encoded)[1]
        flat = ops.reshape(encoded, (-1, encoded.shape[-1]))
        initial = self.bridge(flat)
        states = [initial[:, i * self.units : (i + 1) * self.units] for i in range(self.state_count)]
        previous = ops.zeros_like(flat[:, :1])
        if self.calendar:
            targets = self._future_calendar(ops.reshape(features[..., -CALENDAR_SIZE:], (-1, CALENDAR_SIZE)))
        else:
            targets = ops.zeros_like(flat[:, :1])[:, None, :] * ops.ones((1, self.horizon, 1), dtype=flat.dtype)
        outputs = self.unroll(targets, initial_state=[*states, previous])  # [B·T, H, 1]
        return ops.reshape(outputs, (batch, steps, self.horizon))

    def _future_calendar(self, now):
        """Calendar features of t + h·step for h = 1..H: [N, H, 4] from those of t ([N, 4])."""
        cos_d, sin_d, cos_w, sin_w = (ops.convert_to_tensor(row, dtype=now.dtype)[None, :] for row in self._rotation)
        day_sin, day_cos, week_sin, week_cos = (now[:, i : i + 1] for i in range(CALENDAR_SIZE))
        return ops.stack(
            [
                day_sin * cos_d + day_cos * sin_d,
                day_cos * cos_d - day_sin * sin_d,
                week_sin * cos_w + week_cos * sin_w,
                week_cos * cos_w - week_sin * sin_w,
            ],
            axis=-1,
        )

    def compute_output_shape(self, input_shape):
        encoded_shape, _ = input_shape
        return (encoded_shape[0], encoded_shape[1], self.horizon)

    def get_config(self):
        return {
            **super().get_config(),
            "cell": self.cell_type,
            "units": self.units,
            "horizon": self.horizon,
            "step_seconds": self.step_seconds,
            "calendar": self.calendar,
        }


def _band(window: int) -> tuple[np.ndarray, np.ndarray]:
    """For a block of W queries and 2W keys: which key each query may see, and that key's slot."""
    slot = np.arange(2 * window)[None, :] - np.arange(window)[:, None]
    valid = (slot >= 0) & (slot < window)
    return valid, np.clip(slot, 0, window - 1).astype("int32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WindowAttention(keras.layers.Layer):
    """Luong "general" attention of each row's state over the last ``window`` states (itself included).

    Input ``hidden [B, T, U]``; output the attentional state ``tanh([context, h_t] W_c + b_c)``
    ``[B, T - scored_from, U]``. States before the sequence start count as zero vectors, as the
    serving memory starts at zeros. See :mod:`models.variants.attention`.
    """

    def __init__(self, window: int, **kwargs):
        super().__init__(**kwargs)
        if int(window) < 1:
            raise ValueError("window must be at least 1")
        self.window = int(window)

    def build(self, input_shape):
        units = int(input_shape[-1])
        self.score_kernel = self.add_weight(name="score_kernel", shape=(units, units), initializer="glorot_uniform")
        self.lag_bias = self.add_weight(name="lag_bias", shape=(self.window,), initializer="zeros")
        self.combine_kernel = self.add_weight(
            name="combine_kernel", shape=(2 * units, units), initializer="glorot_uniform"
        )
        self.combine_bias = self.add_weight(name="combine_bias", shape=(units,), initializer="zeros")
        self.built = True

    def call(self, hidden, scored_from: int = 0):
        # Blocked banded attention: rows are cut into blocks of W; block b's keys are the 2W padded
        # rows starting at b·W, of which row i of the block uses i..i+W-1 (slot k = key - i). All
        # dense batched matmuls, O(T·W) time and memory.
        window, units = self.window, hidden.shape[-1]
        batch = ops.shape(hidden)[0]
        current = hidden[:, scored_from:]
        rows = ops.shape(current)[1]
        blocks = (rows + window - 1) // window
        query = ops.matmul(current, self.score_kernel)
        query = ops.pad(query, [[0, 0], [0, window - 1], [0, 0]])[:, : blocks * window]
        query = ops.reshape(query, (batch, -1, window, units))
        # keys[i + k] is slot k (lag W-1-k) of row i; zeros stand for states before the sequence start.
        keys = ops.pad(hidden, [[0, 0], [window - 1, 2 * window], [0, 0]])[:, scored_from:]
        keys = ops.reshape(keys[:, : (blocks + 1) * window], (batch, -1, window, units))
        keys = ops.concatenate([keys[:, :-1], keys[:, 1:]], axis=2)  # [B, blocks, 2W, U]
        scores = ops.einsum("bnqu,bnku->bnqk", query, keys)
        band, lag = _band(window)
        scores = ops.where(band, scores + ops.take(self.lag_bias, lag), -1e9)
        weights = ops.softmax(scores, axis=-1)
        context = ops.reshape(ops.einsum("bnqk,bnku->bnqu", weights, keys), (batch, -1, units))[:, :rows]
        return ops.tanh(
            ops.matmul(ops.concatenate([context, current], axis=-1), self.combine_kernel) + self.combine_bias
        )

    def get_config(self):
        return {**super().get_config(), "window": self.window}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WindowedBackwardRNN(keras.layers.Layer):
    """For each row t, a recurrent stack run from zeros over inputs t, t-1, ..., t-window+1 (newest first).

    Input ``features [B, T, F]``; output the stack's final top output for rows ``scored_from::every``.
    Inputs before the sequence start are zero rows, as the serving window starts at zeros. See
    :mod:`models.variants.birnn`.
    """

    def __init__(self, cell: str, units: int, layers: int, window: int, **kwargs):
        super().__init__(**kwargs)
        _check_cell(cell)
        if int(window) < 1:
            raise ValueError("window must be at least 1")
        self.cell_type = cell
        self.units = int(units)
        self.layers_count = int(layers)
        self.window = int(window)
        self.rnns = [
            SEQUENCE_LAYERS[cell](
                self.units, return_sequences=i < self.layers_count - 1, name=f"backward_{i}", dtype=self.dtype_policy
            )
            for i in range(self.layers_count)
        ]

    def build(self, input_shape):
        width = int(input_shape[-1])
        for rnn in self.rnns:
            rnn.build((None, self.window, width))
            width = self.units
        self.built = True

    def call(self, features, scored_from: int = 0, every: int = 1):
        pad = self.window - 1
        batch = ops.shape(features)[0]
        padded = ops.pad(features, [[0, 0], [pad, 0], [0, 0]])
        newest_first = [_shifted(padded, scored_from, pad, j)[:, ::every] for j in range(self.window)]
        steps = ops.shape(newest_first[0])[1]
        windows = ops.reshape(ops.stack(newest_first, axis=2), (-1, self.window, features.shape[-1]))
        out = windows
        for rnn in self.rnns:
            out = rnn(out)
        return ops.reshape(out, (batch, steps, self.units))

    def get_config(self):
        return {
            **super().get_config(),
            "cell": self.cell_type,
            "units": self.units,
            "layers": self.layers_count,
            "window": self.window,
        }


CUSTOM_LAYERS = (TimeSlice, FeedbackDecoder, WindowAttention, WindowedBackwardRNN)
