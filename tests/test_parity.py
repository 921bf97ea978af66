"""The numpy engine equals Keras on the same sequence, for every cell type and layer count."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from models.keras_model import build_model, extract_weights  # noqa: E402

STEPS = 520


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_numpy_network_matches_keras_predict(cell, layers):
    keras.utils.set_random_seed(layers)
    n_features, horizon = 7, 6
    model = build_model(cell, layers, 16, n_features, horizon)
    rng = np.random.default_rng(layers)
    # The outputs start at zero (training starts from the baseline); give them real weights here.
    for name in ("head", "skip"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in layer.get_weights()])
    x = rng.normal(size=(1, STEPS, n_features)).astype("float32")
    base = rng.normal(size=(1, STEPS, horizon)).astype("float32")
    expected = model.predict({"features": x, "base": base}, verbose=0)[0]

    weights = extract_weights(model, cell)
    state = weights.zero_state(1)
    got = np.empty_like(expected, dtype=np.float64)
    for t in range(STEPS):
        step_x = x[:, t, :].astype(np.float64)
        step_base = base[:, t, :].astype(np.float64)
        head, state = weights.step(step_x, state)
        got[t] = (step_base + head + weights.skip(step_x, step_base))[0]
    assert np.max(np.abs(got - expected)) <= 1e-5
