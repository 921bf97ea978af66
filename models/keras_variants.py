"""Keras builders and weight extraction for the variant forecasters (seq2seq, attention, birnn).

Every variant keeps the plain model's contract: inputs ``features [B, T, F]`` and ``base [B, T, H]``,
output ``base + head + skip([features, base])`` ``[B, T, H]``, zero-initialised head and skip, and
only registered layers (:mod:`models.keras_layers`), so artifacts load with ``safe_mode=True``.

:func:`build_variant` returns two models sharing every layer: the *serving* model (saved, compared
with the numpy engine) and a *training* model that emits rows ``scored_from::every`` only. Rows before
``scored_from`` are a training window's warm-up (their targets are masked anyway). ``every`` > 1
scores one origin in k for seq2seq and birnn, whose per-row cost is O(H) and O(L) recurrent steps:
adjacent origins' forecasts are nearly redundant for the gradient, and the training windows' start
stride is made coprime with k (``models.training``) so every origin and time of day is trained.
Each scored origin's forecast is still exactly what the engine serves at that reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from models.cells import RecurrentLayer
from models.keras_layers import SEQUENCE_LAYERS, FeedbackDecoder, TimeSlice, WindowAttention, WindowedBackwardRNN
from models.keras_model import recurrent_layer_names
from models.networks import VARIANT_TYPES
from models.variants.attention import ATTENTION_TYPE, AttentionNetwork
from models.variants.birnn import BiRNNNetwork
from models.variants.seq2seq import Seq2SeqNetwork

MAX_CONTEXT_WINDOW = 96
# Keeps default training of the O(H)/O(L)-per-row variants near the plain LSTM's cost per epoch.
TRAINING_ORIGIN_STRIDE = {"seq2seq": 8, "birnn": 4}


@dataclass(frozen=True)
class VariantSpec:
    """A variant's hyperparameters, resolved (no ``None``); recorded in the manifest as ``network``."""

    cell: str
    encoder_cell: str = "lstm"
    decoder_units: int = 0  # seq2seq
    window: int = 0  # attention: W states; birnn: L inputs
    backward_units: int = 0  # birnn
    step_seconds: float = 0.0  # seq2seq (calendar of the target times)
    calendar: bool = True  # seq2seq

    def manifest(self) -> dict:
        if self.cell == "seq2seq":
            return {
                "encoder_cell": self.encoder_cell,
                "decoder_cell": self.encoder_cell,
                "decoder_units": self.decoder_units,
                "step_seconds": self.step_seconds,
                "calendar": self.calendar,
            }
        if self.cell == "attention":
            return {"encoder_cell": self.encoder_cell, "attention": ATTENTION_TYPE, "window": self.window}
        return {"encoder_cell": self.encoder_cell, "window": self.window, "backward_units": self.backward_units}

    @property
    def origin_stride(self) -> int:
        """Training scores one origin in this many (see the module docstring)."""
        return TRAINING_ORIGIN_STRIDE.get(self.cell, 1)

    @property
    def context(self) -> int:
        """Earlier rows the variant reads beyond the carried state (a training window must warm them up)."""
        return self.window if self.cell in ("attention", "birnn") else 0


def default_window(season: int) -> int:
    """One season of context, capped so that state and per-reading cost stay bounded."""
    return max(1, min(season, MAX_CONTEXT_WINDOW))


def resolve_spec(
    cell: str,
    *,
    season: int,
    step_seconds: float,
    units: int,
    calendar: bool,
    encoder_cell: str = "lstm",
    decoder_units: int | None = None,
    window: int | None = None,
    backward_units: int | None = None,
) -> VariantSpec:
    if cell not in VARIANT_TYPES:
        raise ValueError(f"{cell!r} is not a variant; choose one of {', '.join(VARIANT_TYPES)}")
    half = max(units // 2, 1)
    return VariantSpec(
        cell=cell,
        encoder_cell=encoder_cell,
        decoder_units=int(decoder_units or half) if cell == "seq2seq" else 0,
        window=int(window or default_window(season)) if cell in ("attention", "birnn") else 0,
        backward_units=int(backward_units or half) if cell == "birnn" else 0,
        step_seconds=float(step_seconds) if cell == "seq2seq" else 0.0,
        calendar=bool(calendar),
    )


def build_variant(
    spec: VariantSpec,
    layers: int,
    units: int,
    n_features: int,
    horizon: int,
    dropout: float = 0.0,
    scored_from: int = 0,
    every: int = 1,
    dtype: str | None = None,
) -> tuple[keras.Model, keras.Model]:
    """(serving model, training model emitting rows ``scored_from::every``), sharing all layers.

    ``every`` applies to seq2seq and birnn (attention costs O(W) per row and scores every row).
    The training model's second input is the base of the scored rows only. ``dtype="float64"``
    builds a float64 twin (see :func:`float64_parity`).
    """
    kw = {"dtype": dtype} if dtype else {}
    if spec.cell == "attention":
        every = 1
    if spec.cell == "seq2seq" and spec.calendar and n_features < 4:
        raise ValueError("seq2seq with calendar features needs the 4 calendar inputs")
    features = keras.Input(shape=(None, n_features), name="features", **kw)
    base = keras.Input(shape=(None, horizon), name="base", **kw)
    scored_base = keras.Input(shape=(None, horizon), name="scored_base", **kw)
    x = features
    for i in range(layers):
        x = SEQUENCE_LAYERS[spec.encoder_cell](units, return_sequences=True, name=f"recurrent_{i}", **kw)(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}", **kw)(x)
    encoded = x
    head_dense = keras.layers.Dense(horizon, kernel_initializer="zeros", name="head", **kw)
    skip_dense = keras.layers.Dense(horizon, kernel_initializer="zeros", name="skip", **kw)
    if spec.cell == "seq2seq":
        decoder = FeedbackDecoder(
            spec.encoder_cell, spec.decoder_units, horizon, spec.step_seconds, spec.calendar, name="decoder", **kw
        )
    elif spec.cell == "attention":
        attention = WindowAttention(spec.window, name="attention", **kw)
    else:
        backward = WindowedBackwardRNN(
            spec.encoder_cell, spec.backward_units, layers, spec.window, name="backward", **kw
        )

    def wire(start: int, step: int, base_input):
        suffix = "" if (start, step) == (0, 1) else "_scored"

        def rows(tensor):
            return tensor if (start, step) == (0, 1) else TimeSlice(start, step, **kw)(tensor)

        if spec.cell == "seq2seq":
            head = decoder([rows(encoded), rows(features)])
        elif spec.cell == "attention":
            head = head_dense(attention(encoded, scored_from=start))
        else:
            joined = keras.layers.Concatenate(name=f"head_inputs{suffix}", **kw)(
                [rows(encoded), backward(features, scored_from=start, every=step)]
            )
            head = head_dense(joined)
        skip = skip_dense(keras.layers.Concatenate(name=f"skip_inputs{suffix}", **kw)([rows(features), base_input]))
        return keras.layers.Add(name=f"forecast{suffix}", **kw)([base_input, head, skip])

    serving = keras.Model(inputs=[features, base], outputs=wire(0, 1, base), name=f"rnncast_{spec.cell}")
    training = keras.Model(
        inputs=[features, scored_base],
        outputs=wire(scored_from, every, scored_base),
        name=f"rnncast_{spec.cell}_training",
    )
    return serving, training


def extract_variant(model: keras.Model, spec: VariantSpec):
    """Copy a trained variant's weights into its numpy network (float64)."""
    encoder = _stack(model, [model.get_layer(name) for name in recurrent_layer_names(model)], spec.encoder_cell)
    skip_kernel, skip_bias = _arrays(model.get_layer("skip").get_weights())
    if spec.cell == "seq2seq":
        decoder = model.get_layer("decoder")
        bridge_kernel, bridge_bias = _arrays(decoder.bridge.get_weights())
        readout_kernel, readout_bias = _arrays(decoder.readout.get_weights())
        kernel, recurrent_kernel, bias = _arrays(decoder.cell.get_weights())
        return Seq2SeqNetwork(
            encoder=encoder,
            bridge_kernel=bridge_kernel,
            bridge_bias=bridge_bias,
            decoder=RecurrentLayer(spec.encoder_cell, kernel, recurrent_kernel, bias),
            readout_kernel=readout_kernel,
            readout_bias=readout_bias,
            skip_kernel=skip_kernel,
            skip_bias=skip_bias,
            step_seconds=spec.step_seconds,
            calendar=spec.calendar,
        )
    head_kernel, head_bias = _arrays(model.get_layer("head").get_weights())
    if spec.cell == "attention":
        attention = model.get_layer("attention")
        return AttentionNetwork(
            encoder=encoder,
            score_kernel=_array(attention.score_kernel),
            lag_bias=_array(attention.lag_bias),
            combine_kernel=_array(attention.combine_kernel),
            combine_bias=_array(attention.combine_bias),
            head_kernel=head_kernel,
            head_bias=head_bias,
            skip_kernel=skip_kernel,
            skip_bias=skip_bias,
        )
    backward = model.get_layer("backward")
    return BiRNNNetwork(
        forward=encoder,
        backward=_stack(model, backward.rnns, spec.encoder_cell),
        window=spec.window,
        head_kernel=head_kernel,
        head_bias=head_bias,
        skip_kernel=skip_kernel,
        skip_bias=skip_bias,
    )


def float64_parity(model: keras.Model, spec: VariantSpec, network, layers: int, units: int, steps: int = 512) -> float:
    """Max |numpy − Keras| on a random sequence, with the trained weights in a float64 twin of the model.

    The float32 model differs from the float64 numpy engine by rounding only, but a decoder that
    feeds back its outputs can amplify rounding; the float64 twin shows the two compute the same
    function (differences of order 1e-12).
    """
    n_features = int(model.get_layer("skip").get_weights()[0].shape[0]) - network.horizon
    twin, _ = build_variant(spec, layers, units, n_features, network.horizon, dtype="float64")
    for layer in model.layers:
        if layer.weights:
            twin.get_layer(layer.name).set_weights([np.asarray(w, dtype=np.float64) for w in layer.get_weights()])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, steps, n_features))
    base = np.zeros((1, steps, network.horizon))
    # A direct call: predict() would cast the float64 inputs to floatx (float32).
    expected = keras.ops.convert_to_numpy(twin([x, base], training=False))[0]
    state = network.zero_state(1)
    worst = 0.0
    for t in range(steps):
        head, state = network.step(x[:, t, :], state)
        worst = max(worst, float(np.max(np.abs(head[0] + network.skip(x[:, t, :], base[:, t, :])[0] - expected[t]))))
    return worst


def _stack(model, layers, cell: str) -> tuple[RecurrentLayer, ...]:
    out = []
    for layer in layers:
        kernel, recurrent_kernel, bias = _arrays(layer.get_weights())
        out.append(RecurrentLayer(cell=cell, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias))
    return tuple(out)


def _arrays(weights) -> list[np.ndarray]:
    return [np.asarray(w, dtype=np.float64) for w in weights]


def _array(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)
