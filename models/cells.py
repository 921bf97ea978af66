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


class _OneStreamLayer:
    """One layer's weights unpacked for the single-stream step (no properties or bias rows per reading).

    ``step(x [F], state [k·U], out [k·U]) -> output`` runs the same floating-point operations in the
    same order as :meth:`RecurrentLayer.step` on a batch of one (bit-identical), with in-place
    arithmetic on fresh temporaries instead of the [1, ·] round trips; the constant 1.0 of the
    sigmoid and of the GRU's ``1 - update`` is a ones array (a Python scalar costs a conversion per call).
    """

    __slots__ = ("kernel", "recurrent_kernel", "bias", "recurrent_bias", "units", "ones", "step")

    def __init__(self, layer: RecurrentLayer):
        self.kernel = layer.kernel
        self.recurrent_kernel = layer.recurrent_kernel
        self.units = layer.units
        self.ones = np.ones(self.kernel.shape[1])
        self.ones.flags.writeable = False
        self.recurrent_bias = None
        self.bias = layer.bias
        if layer.cell == "gru":
            self.bias, self.recurrent_bias = layer.bias[0], layer.bias[1]
        steps = {"rnn": self._rnn, "lstm": self._lstm, "gru": self._gru}
        if layer.cell not in steps:
            raise ValueError(f"unknown cell type {layer.cell!r}")
        self.step = steps[layer.cell]

    def _sigmoid_inplace(self, z: np.ndarray) -> np.ndarray:
        """``z = 1 / (1 + exp(-z))`` in place: the operations of :func:`sigmoid`."""
        ones = self.ones[: z.shape[0]]
        np.negative(z, out=z)
        np.exp(z, out=z)
        np.add(ones, z, out=z)
        return np.divide(ones, z, out=z)

    def _rnn(self, x: np.ndarray, state: np.ndarray, out: np.ndarray) -> np.ndarray:
        z = np.dot(x, self.kernel)
        z += np.dot(state, self.recurrent_kernel)
        z += self.bias
        return np.tanh(z, out=out)

    def _lstm(self, x: np.ndarray, state: np.ndarray, out: np.ndarray) -> np.ndarray:
        u = self.units
        z = np.dot(x, self.kernel)
        z += np.dot(state[:u], self.recurrent_kernel)
        z += self.bias
        candidate = np.tanh(z[2 * u : 3 * u])
        gates = self._sigmoid_inplace(z)  # i, f, (candidate slot, unused), o: one pass instead of three
        h, c = out[:u], out[u:]
        np.multiply(gates[u : 2 * u], state[u:], out=c)
        candidate *= gates[:u]
        c += candidate
        np.tanh(c, out=h)
        h *= gates[3 * u :]
        return h

    def _gru(self, x: np.ndarray, state: np.ndarray, out: np.ndarray) -> np.ndarray:
        u = self.units
        xz = np.dot(x, self.kernel)
        xz += self.bias
        hz = np.dot(state, self.recurrent_kernel)
        hz += self.recurrent_bias
        gates = self._sigmoid_inplace(np.add(xz[: 2 * u], hz[: 2 * u]))  # update, reset
        update = gates[:u]
        candidate = gates[u:] * hz[2 * u :]
        candidate += xz[2 * u :]
        np.tanh(candidate, out=candidate)
        candidate *= np.subtract(self.ones[:u], update)
        np.multiply(update, state, out=out)
        out += candidate
        return out


class _ManyStreamLayer:
    """One layer's weights unpacked for the batched serving step (:meth:`NetworkWeights.step_many`).

    ``step(x [N, F], state [N, k·U], out [N, k·U]) -> output [N, U]`` is :class:`_OneStreamLayer`
    for a batch: the same floating-point operations in the same order as :meth:`RecurrentLayer.step`
    (bit-identical), in place on the few temporaries each call allocates, with the new state vectors
    written straight into ``out`` (the layer's columns of the new flat state) instead of concatenated
    afterwards. The sigmoid's 1.0 (and the GRU's ``1 - update``) is a 0-d array: a ones row broadcast
    over the batch takes numpy's general iterator loop (twice the time at 8 rows), a Python float a
    conversion per call.
    """

    __slots__ = ("kernel", "recurrent_kernel", "bias", "recurrent_bias", "units", "one", "step")

    def __init__(self, layer: RecurrentLayer):
        self.kernel = layer.kernel
        self.recurrent_kernel = layer.recurrent_kernel
        self.units = layer.units
        self.recurrent_bias = None
        self.bias = layer.bias
        if layer.cell == "gru":
            self.bias, self.recurrent_bias = layer.bias[0], layer.bias[1]
        steps = {"rnn": self._rnn, "lstm": self._lstm, "gru": self._gru}
        if layer.cell not in steps:
            raise ValueError(f"unknown cell type {layer.cell!r}")
        self.step = steps[layer.cell]
        self.one = np.array(1.0)
        self.one.flags.writeable = False

    def _sigmoid_inplace(self, z: np.ndarray) -> np.ndarray:
        """``z = 1 / (1 + exp(-z))`` in place on a [N, gate width] array: the operations of :func:`sigmoid`."""
        one = self.one
        np.negative(z, out=z)
        np.exp(z, out=z)
        np.add(one, z, out=z)
        return np.divide(one, z, out=z)

    def _rnn(self, x: np.ndarray, state: np.ndarray, out: np.ndarray) -> np.ndarray:
        z = np.matmul(x, self.kernel)
        z += np.matmul(state, self.recurrent_kernel)
        z += self.bias
        return np.tanh(z, out=out)

    def _lstm(self, x: np.ndarray, state: np.ndarray, out: np.ndarray) -> np.ndarray:
        u = self.units
        z = np.matmul(x, self.kernel)
        z += np.matmul(state[:, :u], self.recurrent_kernel)
        z += self.bias
        candidate = np.tanh(z[:, 2 * u : 3 * u])
        gates = self._sigmoid_inplace(z)  # i, f, (candidate slot, unused), o: one pass instead of three
        h, c = out[:, :u], out[:, u:]
        np.multiply(gates[:, u : 2 * u], state[:, u:], out=c)
        candidate *= gates[:, :u]
        c += candidate
        np.tanh(c, out=h)
        h *= gates[:, 3 * u :]
        return h

    def _gru(self, x: np.ndarray, state: np.ndarray, out: np.ndarray) -> np.ndarray:
        u = self.units
        xz = np.matmul(x, self.kernel)
        xz += self.bias
        hz = np.matmul(state, self.recurrent_kernel)
        hz += self.recurrent_bias
        gates = self._sigmoid_inplace(np.add(xz[:, : 2 * u], hz[:, : 2 * u]))  # update, reset
        update = gates[:, :u]
        candidate = np.multiply(gates[:, u:], hz[:, 2 * u :])
        candidate += xz[:, 2 * u :]
        np.tanh(candidate, out=candidate)
        candidate *= np.subtract(self.one, update)
        np.multiply(update, state, out=out)
        out += candidate
        return out


def _one_stream_plan(layers: tuple[RecurrentLayer, ...]) -> tuple[tuple[_OneStreamLayer, int, int], ...]:
    """Each layer's single-stream step with its slice ``[start, end)`` of the flat state."""
    plan = []
    offset = 0
    for layer in layers:
        end = offset + layer.units * layer.state_count
        plan.append((_OneStreamLayer(layer), offset, end))
        offset = end
    return tuple(plan)


def _many_stream_plan(layers: tuple[RecurrentLayer, ...]) -> tuple[tuple[_ManyStreamLayer, slice], ...]:
    """Each layer's batched step with its columns of the flat state."""
    plan = []
    offset = 0
    for layer in layers:
        end = offset + layer.units * layer.state_count
        plan.append((_ManyStreamLayer(layer), slice(offset, end)))
        offset = end
    return tuple(plan)


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


def step_stack_one(
    layers: tuple[RecurrentLayer, ...], x: np.ndarray, flat_state: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`step_stack` for one stream: ``x`` [F], ``flat_state`` [stack_state_size] -> (top output, new state).

    Bit-identical to ``step_stack(layers, x[None], flat_state[None])`` with the batch axis dropped.
    (:meth:`NetworkWeights.step_one` keeps the unpacked layers between readings; this builds them per call.)
    """
    return _step_plan(_one_stream_plan(layers), x, flat_state)


def _step_plan(
    plan: tuple[tuple[_OneStreamLayer, int, int], ...], x: np.ndarray, flat_state: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    new_state = np.empty_like(flat_state)  # one fresh array that every layer writes its part of
    out = x
    for layer, start, end in plan:
        out = layer.step(out, flat_state[start:end], new_state[start:end])
    return out, new_state


def step_stack_many(
    layers: tuple[RecurrentLayer, ...], x: np.ndarray, flat_state: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`step_stack` with in-place arithmetic: ``x`` [N, F], ``flat_state`` [N, stack_state_size].

    Bit-identical to ``step_stack(layers, x, flat_state)``; the top output is a view of the new state.
    (:meth:`NetworkWeights.step_many` keeps the unpacked layers between calls; this builds them per call.)
    """
    return _step_many_plan(_many_stream_plan(layers), x, flat_state)


def _step_many_plan(
    plan: tuple[tuple[_ManyStreamLayer, slice], ...], x: np.ndarray, flat_state: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    size = plan[-1][1].stop
    if flat_state.ndim != 2 or flat_state.shape[1] != size:
        raise ValueError(f"flat state of shape {flat_state.shape}, the stack expects [N, {size}]")
    new_state = np.empty((flat_state.shape[0], size))  # one fresh array whose columns each layer writes
    if len(plan) == 1:  # the usual stack: the layer's columns are all of them (no views to build)
        return plan[0][0].step(x, flat_state, new_state), new_state
    out = x
    for layer, columns in plan:
        out = layer.step(out, flat_state[:, columns], new_state[:, columns])
    return out, new_state


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
        raise ValueError(
            "weights contain no recurrent layer" if prefix == "layer" else f"weights contain no {prefix} layer"
        )
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

    def __post_init__(self) -> None:
        # The skip kernel's two blocks, split once for the per-reading path (contiguous copies: same values).
        n_features = self.skip_kernel.shape[0] - self.head_bias.shape[0]
        object.__setattr__(self, "_skip_x_kernel", np.ascontiguousarray(self.skip_kernel[:n_features]))
        object.__setattr__(self, "_skip_base_kernel", np.ascontiguousarray(self.skip_kernel[n_features:]))
        object.__setattr__(self, "_one_stream_plan", None)  # built on the first step_one
        object.__setattr__(self, "_many_stream_plan", None)  # built on the first step_many

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

    def step_one(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` for one stream: ``x`` [F], ``flat_state`` [state_size] -> (head output [H], new state).

        Bit-identical to ``step(x[None], flat_state[None])`` with the batch axis dropped.
        """
        plan = self._one_stream_plan  # type: ignore[has-type]
        if plan is None:
            plan = _one_stream_plan(self.layers)
            object.__setattr__(self, "_one_stream_plan", plan)
        out, new_state = _step_plan(plan, x, flat_state)
        head = np.dot(out, self.head_kernel)
        head += self.head_bias
        return head, new_state

    def skip_one(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        """:meth:`skip` for one stream: ``x`` [F], ``base`` [H] -> [H] (bit-identical)."""
        skip = np.dot(x, self._skip_x_kernel)  # type: ignore[attr-defined]
        skip += np.dot(base, self._skip_base_kernel)  # type: ignore[attr-defined]
        skip += self.skip_bias
        return skip

    def step_many(self, x: np.ndarray, flat_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` with in-place arithmetic, for the engine's batched path (bit-identical).

        ``x`` [N, F], ``flat_state`` [N, state_size] -> (head output [N, H], new state [N, state_size]).
        """
        plan = self._many_stream_plan  # type: ignore[has-type]
        if plan is None:
            plan = _many_stream_plan(self.layers)
            object.__setattr__(self, "_many_stream_plan", plan)
        out, new_state = _step_many_plan(plan, x, flat_state)
        head = np.matmul(out, self.head_kernel)
        head += self.head_bias
        return head, new_state

    def skip_many(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        """:meth:`skip` with in-place arithmetic: ``x`` [N, F], ``base`` [N, H] -> [N, H] (bit-identical)."""
        skip = np.matmul(x, self._skip_x_kernel)  # type: ignore[attr-defined]
        skip += np.matmul(base, self._skip_base_kernel)  # type: ignore[attr-defined]
        skip += self.skip_bias
        return skip

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
    def from_arrays(cls, cell: str, arrays: dict[str, np.ndarray]) -> NetworkWeights:
        return cls(
            layers=layers_from_arrays("layer", cell, arrays),
            head_kernel=np.asarray(arrays["head_kernel"], dtype=np.float64),
            head_bias=np.asarray(arrays["head_bias"], dtype=np.float64),
            skip_kernel=np.asarray(arrays["skip_kernel"], dtype=np.float64),
            skip_bias=np.asarray(arrays["skip_bias"], dtype=np.float64),
        )
