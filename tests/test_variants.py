"""The peephole LSTM and Greff et al.'s variants against a NumPy reference, on every Keras path.

The reference below is written from the equations of "LSTM: a search space odyssey" (Greff
et al. 2016, with Gers & Schmidhuber's peepholes), independently of `LSTMVariantCell`:

    V:  a = x W + h R + b (blocks of the present gates among i, f, z, o)
        i = σ(a_i + p_i c_prev)   f = σ(a_f + p_f c_prev)   z = tanh(a_z)
        c = f c_prev + i z        o = σ(a_o + p_o c)        h = o tanh(c)
    NIG i = 1; NFG f = 1; NOG o = 1; NIAF z = a_z; NOAF h = o c; NP p = 0 (no weights);
    CIFG f = 1 - i (no f weights); FGR a_{i,f,o} += [i|f|o]_prev G.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_rnnx as rx
from keras_rnnx import diagnostics

VARIANTS = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
BLOCKS = {"NIG": "fzo", "NFG": "izo", "CIFG": "izo", "NOG": "ifz"}
B, T, D, U = 3, 6, 4, 3


def blocks(variant):
    return BLOCKS.get(variant, "ifzo")


def peepholes(variant):
    return "" if variant == "NP" else "".join(g for g in "ifo" if g in blocks(variant))


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_step(variant, x, states, weights):
    """One step of the reference; `weights` as `get_weights()` orders them."""
    kernel, recurrent, bias = weights[:3]
    p = dict(zip(peepholes(variant), weights[3:]))
    h_prev, c_prev = states[0], states[1]
    a = dict(zip(blocks(variant), np.split(x @ kernel + h_prev @ recurrent + bias,
                                          len(blocks(variant)), axis=-1)))
    if variant == "FGR":
        extra = np.split(states[2] @ weights[-1], 3, axis=-1)
        for name, part in zip("ifo", extra):
            a[name] = a[name] + part
    one = np.ones_like(c_prev)
    i = sigmoid(a["i"] + p.get("i", 0.0) * c_prev) if "i" in a else one
    f = sigmoid(a["f"] + p.get("f", 0.0) * c_prev) if "f" in a else one
    if variant == "CIFG":
        f = 1.0 - i
    z = a["z"] if variant == "NIAF" else np.tanh(a["z"])
    c = f * c_prev + i * z
    o = sigmoid(a["o"] + p.get("o", 0.0) * c) if "o" in a else one
    h = o * (c if variant == "NOAF" else np.tanh(c))
    new = [h, c] + ([np.concatenate([i, f, o], axis=-1)] if variant == "FGR" else [])
    return new, {"i": i, "f": f, "z": z, "o": o}


def np_run(variant, xs, weights, states=None, mask=None):
    """(outputs (B, T, U), final states), masked steps carried over as in keras.layers.RNN."""
    batch = xs.shape[0]
    if states is None:
        states = [np.zeros((batch, U)), np.zeros((batch, U))]
        if variant == "FGR":
            states.append(np.zeros((batch, 3 * U)))
    out, outputs = np.zeros((batch, U)), []
    for t in range(xs.shape[1]):
        new, _ = np_step(variant, xs[:, t], states, weights)
        if mask is not None:
            keep = mask[:, t][:, None]
            new = [np.where(keep, n, s) for n, s in zip(new, states)]
            out = np.where(keep, new[0], out)
        else:
            out = new[0]
        states = new
        outputs.append(out)
    return np.stack(outputs, axis=1), states


def random_weights(variant, rng, scale=0.6, input_dim=D):
    n = len(blocks(variant))
    weights = [rng.uniform(-scale, scale, (input_dim, n * U)),
               rng.uniform(-scale, scale, (U, n * U)),
               rng.uniform(-scale, scale, (n * U,))]
    weights += [rng.uniform(-scale, scale, (U,)) for _ in peepholes(variant)]
    if variant == "FGR":
        weights.append(rng.uniform(-scale, scale, (3 * U, 3 * U)))
    return weights


def make_layer(variant, rng, layer_cls=keras.layers.RNN, dtype="float32", batch=None,
               cell_kwargs=None, **kwargs):
    layer = layer_cls(rx.LSTMVariantCell(U, variant=variant, dtype=dtype, **(cell_kwargs or {})),
                      dtype=dtype, **kwargs)
    layer.build((batch, T, D))
    weights = random_weights(variant, rng)
    layer.set_weights([w.astype(layer.variable_dtype) for w in weights])
    return layer, weights


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


# --- the cell's contract ----------------------------------------------------------------------


def test_weights_names_shapes_states_and_config(variant):
    cell = rx.LSTMVariantCell(U, variant=variant)
    keras.layers.RNN(cell).build((None, T, D))
    n = len(blocks(variant))
    names = ["kernel", "recurrent_kernel", "bias"] + [
        {"i": "input", "f": "forget", "o": "output"}[g] + "_gate_peephole_weights"
        for g in peepholes(variant)] + (["gate_recurrent_kernel"] if variant == "FGR" else [])
    shapes = [(D, n * U), (U, n * U), (n * U,)] + [(U,)] * len(peepholes(variant)) + (
        [(3 * U, 3 * U)] if variant == "FGR" else [])
    assert [w.path.split("/")[-1] for w in cell.weights] == names
    assert [tuple(w.shape) for w in cell.get_weights()] == shapes
    assert tuple(cell.block_names) == tuple(blocks(variant))
    assert list(cell.state_size) == [U, U] + ([3 * U] if variant == "FGR" else [])
    bias = cell.get_weights()[2].reshape(n, U)
    for k, name in enumerate(blocks(variant)):
        np.testing.assert_array_equal(bias[k], 1.0 if name == "f" else 0.0)
    config = cell.get_config()
    assert config["variant"] == variant
    clone = rx.LSTMVariantCell.from_config(config)
    assert clone.variant == variant and clone.get_config() == config


def test_peephole_cell_is_variant_v():
    cell = rx.PeepholeLSTMCell(U, unit_forget_bias=False)
    assert isinstance(cell, rx.LSTMVariantCell) and cell.variant == "V"
    clone = rx.PeepholeLSTMCell.from_config(cell.get_config())
    assert type(clone) is rx.PeepholeLSTMCell and not clone.unit_forget_bias
    with pytest.raises(ValueError, match=r"PeepholeLSTMCell.*'V'.*'CIFG'"):
        rx.PeepholeLSTMCell(U, variant="CIFG")


@pytest.mark.parametrize("bad", ["X", "v", "", None, 3])
def test_unknown_variant_names_the_valid_ones(bad):
    with pytest.raises(ValueError, match=r"`variant`.*'V', 'NIG', 'NFG', 'NOG', 'NIAF', "
                                         r"'NOAF', 'NP', 'CIFG', 'FGR', got"):
        rx.LSTMVariantCell(U, variant=bad)


# --- numerics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eager", "tf_function", "xla"])
def test_matches_numpy_reference(variant, mode):
    rng = np.random.default_rng(0)
    layer, weights = make_layer(variant, rng, return_sequences=True, return_state=True)
    x = rng.normal(size=(B, T, D)).astype("float32")

    def run(x):
        return layer(x)

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla")
    got = run(x)
    outputs, states = np_run(variant, x.astype(np.float64), weights)
    np.testing.assert_allclose(got[0], outputs, atol=2e-5)
    assert len(got) == 1 + len(states)
    for g, s in zip(got[1:], states):
        np.testing.assert_allclose(g, s, atol=2e-5)


def test_float64_gradients_match_finite_differences(variant):
    """∂L/∂w from TensorFlow vs central differences of the NumPy reference, L = Σ r ⊙ h."""
    rng = np.random.default_rng(1)
    layer, weights = make_layer(variant, rng, dtype="float64", return_sequences=True)
    x = rng.normal(size=(2, 4, D))
    r = rng.normal(size=(2, 4, U))
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt) * r)
    grads = tape.gradient(loss, [xt] + layer.trainable_weights)

    def np_loss(x, weights):
        return float(np.sum(np_run(variant, x, weights)[0] * r))

    eps = 1e-6
    for k, grad in enumerate(grads):
        grad = np.asarray(grad)
        for index in map(tuple, rng.integers(0, grad.shape, size=(4, grad.ndim))):
            if k == 0:
                plus, minus = x.copy(), x.copy()
                plus[index] += eps
                minus[index] -= eps
                fd = (np_loss(plus, weights) - np_loss(minus, weights)) / (2 * eps)
            else:
                plus = [w.copy() for w in weights]
                minus = [w.copy() for w in weights]
                plus[k - 1][index] += eps
                minus[k - 1][index] -= eps
                fd = (np_loss(x, plus) - np_loss(x, minus)) / (2 * eps)
            np.testing.assert_allclose(grad[index], fd, rtol=1e-6, atol=1e-8,
                                       err_msg=f"{variant} weight {k - 1} at {index}")


def test_np_is_the_forget_gate_cell_and_keras_lstm():
    rng = np.random.default_rng(2)
    layers = [keras.layers.RNN(cell, return_sequences=True, return_state=True) for cell in (
        rx.LSTMVariantCell(U, variant="NP"), rx.ForgetGateLSTMCell(U), keras.layers.LSTMCell(U))]
    for layer in layers:
        layer.build((None, T, D))
    # Same default initial bias (unit forget bias), same weight shapes and order.
    assert [w.shape for w in layers[0].get_weights()] == [w.shape for w in
                                                          layers[1].get_weights()]
    np.testing.assert_array_equal(layers[0].get_weights()[2], layers[2].get_weights()[2])
    weights = random_weights("NP", rng)
    x = rng.normal(size=(B, T, D)).astype("float32")
    results = []
    for layer in layers:
        layer.set_weights([w.astype("float32") for w in weights])
        results.append([np.asarray(v) for v in layer(x)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, atol=1e-6)


# --- Keras paths ------------------------------------------------------------------------------


def test_mask_and_initial_state(variant):
    rng = np.random.default_rng(3)
    layer, weights = make_layer(variant, rng, return_sequences=True, return_state=True)
    x = rng.normal(size=(B, T, D)).astype("float32")
    mask = np.ones((B, T), bool)
    mask[0, 4:] = False
    mask[2, 1] = False
    initial = [rng.uniform(-0.5, 0.5, (B, s)).astype("float32") for s in
               layer.cell.state_size]
    got = layer(x, mask=mask, initial_state=initial)
    outputs, states = np_run(variant, x.astype(np.float64), weights,
                             [s.astype(np.float64) for s in initial], mask)
    np.testing.assert_allclose(got[0], outputs, atol=2e-5)
    for g, s in zip(got[1:], states):
        np.testing.assert_allclose(g, s, atol=2e-5)


def test_stateful_continues_and_resets(variant):
    rng = np.random.default_rng(4)
    layer, weights = make_layer(variant, rng, layer_cls=rx.RNN, batch=B, stateful=True,
                                return_sequences=True)
    x = rng.normal(size=(B, 2 * T, D)).astype("float32")
    first, second = np.asarray(layer(x[:, :T])), np.asarray(layer(x[:, T:]))
    outputs, _ = np_run(variant, x.astype(np.float64), weights)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), outputs, atol=2e-5)
    layer.reset_state()
    np.testing.assert_allclose(layer(x[:, :T]), outputs[:, :T], atol=2e-5)


def test_bidirectional(variant):
    rng = np.random.default_rng(5)
    layer = keras.layers.Bidirectional(keras.layers.RNN(
        rx.LSTMVariantCell(U, variant=variant), return_sequences=True))
    layer.build((None, T, D))
    fw, bw = random_weights(variant, rng), random_weights(variant, rng)
    layer.set_weights([w.astype("float32") for w in fw + bw])
    x = rng.normal(size=(B, T, D)).astype("float32")
    got = np.asarray(layer(x))
    forward, _ = np_run(variant, x.astype(np.float64), fw)
    backward, _ = np_run(variant, x[:, ::-1].astype(np.float64), bw)
    np.testing.assert_allclose(got, np.concatenate([forward, backward[:, ::-1]], -1), atol=2e-5)


def test_mixed_precision(variant):
    rng = np.random.default_rng(6)
    layer, weights = make_layer(variant, rng, layer_cls=rx.RNN, dtype="mixed_float16",
                                return_sequences=True)
    x = rng.normal(size=(B, T, D)).astype("float32")
    outputs, _ = np_run(variant, x.astype(np.float64), weights)
    for training in (False, True):
        got = layer(x, training=training)
        assert got.dtype == "float16"
        np.testing.assert_allclose(np.asarray(got, np.float64), outputs, atol=2e-2)


def test_rx_rnn_training_equals_keras_rnn(variant):
    """A few SGD steps through rx.RNN's fast path and keras.layers.RNN's generic loop."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(8, T, D)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    weights = random_weights(variant, rng, scale=0.4)
    results = []
    for layer_cls in (rx.RNN, keras.layers.RNN):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((T, D)),
                                  layer_cls(rx.LSTMVariantCell(U, variant=variant)),
                                  keras.layers.Dense(1, kernel_initializer="ones")])
        model.layers[0].set_weights([w.astype("float32") for w in weights])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        results.append((history.history["loss"], model.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    assert results[0][0][-1] != results[0][0][0]  # the weights did move
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_dropout_masks_are_constant_over_time():
    """With recurrent dropout the fast path and the generic loop draw the same masks."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(B, T, D)).astype("float32")
    outs = []
    for layer_cls in (rx.RNN, keras.layers.RNN):
        layer, _ = make_layer("FGR", np.random.default_rng(9), layer_cls=layer_cls,
                              cell_kwargs=dict(dropout=0.3, recurrent_dropout=0.3, seed=4),
                              return_sequences=True)
        outs.append(np.asarray(layer(x, training=True)))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


# --- saving and serving -----------------------------------------------------------------------


def run_python(code: str, cwd) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One model with a branch per variant: Masking, a Bidirectional rx.RNN with dropout and
    non-zero peepholes and G, a head of 2 columns; saved as .keras and exported. (No fit: the
    training graph of 18 recurrent layers takes minutes to build on 2 cores.)"""
    root = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, T, D)).astype("float32")
    x[1, 4:] = 0.0
    np.save(root / "x.npy", x)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, D))
    masked = keras.layers.Masking(0.0)(inputs)
    heads = []
    for variant in VARIANTS:
        h = keras.layers.Bidirectional(rx.RNN(rx.LSTMVariantCell(
            U, variant=variant, dropout=0.1, recurrent_dropout=0.1, seed=1,
            peephole_initializer="glorot_uniform", gate_recurrent_initializer="orthogonal")))(
            masked)
        heads.append(keras.layers.Dense(2)(h))
    model = keras.Model(inputs, keras.layers.Concatenate()(heads))
    np.save(root / "y.npy", model.predict(x, verbose=0))
    model.save(root / "variants.keras")
    model.export(str(root / "variants_savedmodel"), verbose=False)
    return root


def per_variant_diff(out: str) -> dict:
    diff = np.abs(np.array(json.loads(out.strip().splitlines()[-1])))
    return {v: float(diff[:, 2 * k: 2 * k + 2].max()) for k, v in enumerate(VARIANTS)}


def test_keras_file_loads_in_a_fresh_process_with_safe_mode(saved):
    out = run_python("""
        import json
        import numpy as np
        import keras
        import keras_rnnx
        x = np.load("x.npy")
        model = keras.saving.load_model("variants.keras", safe_mode=True)
        cells = [layer.cell for layer in model._flatten_layers()
                 if isinstance(layer, keras.layers.RNN)]
        print(sorted({(type(c).__name__, c.variant) for c in cells}))
        print(json.dumps((model.predict(x, verbose=0) - np.load("y.npy")).tolist()))
        """, saved)
    found = out.strip().splitlines()[-2]
    assert found == str(sorted({("LSTMVariantCell", v) for v in VARIANTS}))
    diff = per_variant_diff(out)
    assert all(d < 1e-6 for d in diff.values()), diff


def test_savedmodel_serves_without_the_package(saved):
    out = run_python("""
        import json, sys
        sys.modules["keras_rnnx"] = None  # any import of the package now fails
        import numpy as np
        import tensorflow as tf
        served = tf.saved_model.load("variants_savedmodel")
        got = served.serve(tf.constant(np.load("x.npy"))).numpy()
        print(json.dumps((got - np.load("y.npy")).tolist()))
        """, saved)
    diff = per_variant_diff(out)
    assert all(d < 1e-5 for d in diff.values()), diff


# --- the probe --------------------------------------------------------------------------------


def test_probe_reads_the_variants(variant):
    """States, gates and the Jacobian of the full state against the NumPy step (central
    differences); the peephole and G weight-gradient norms against a plain GradientTape."""
    rng = np.random.default_rng(10)
    model = keras.Sequential([keras.Input((T, D)),
                              keras.layers.RNN(rx.LSTMVariantCell(U, variant=variant),
                                               return_sequences=True, name="rnn"),
                              keras.layers.Dense(1)])
    weights = random_weights(variant, rng)
    model.layers[0].set_weights([w.astype("float32") for w in weights])
    model.compile(loss="mse")
    x = rng.normal(size=(2, T, D)).astype("float32")
    y = rng.normal(size=(2, T, 1)).astype("float32")
    entry = diagnostics.probe(model, x, y)["rnn"]
    meta = entry["meta"]
    gate_names = ("i", "f", "z", "o") if variant == "CIFG" else tuple(blocks(variant))
    assert meta["kind"] == f"LSTM-{variant}" and meta["gate_names"] == gate_names
    assert meta["state_names"] == (("h", "c", "g") if variant == "FGR" else ("h", "c"))

    xs = x.astype(np.float64)
    states = [np.zeros((2, U)), np.zeros((2, U))] + (
        [np.zeros((2, 3 * U))] if variant == "FGR" else [])
    size = sum(s.shape[1] for s in states)
    eps = 1e-6
    for t in range(T):
        new, gates = np_step(variant, xs[:, t], states, weights)
        for name, value in zip(meta["state_names"], new):
            np.testing.assert_allclose(entry["states"][name][:, t], value, atol=2e-5)
        for name in gate_names:
            np.testing.assert_allclose(entry["gates"][name][:, t], gates[name], atol=2e-5)
        flat = np.concatenate(states, axis=-1)
        jac = np.zeros((2, size, size))
        for j in range(size):
            def at(delta):
                s = flat.copy()
                s[:, j] += delta
                parts = np.split(s, np.cumsum([p.shape[1] for p in states])[:-1], axis=-1)
                return np.concatenate(np_step(variant, xs[:, t], parts, weights)[0], axis=-1)
            jac[:, :, j] = (at(eps) - at(-eps)) / (2 * eps)
        np.testing.assert_allclose(entry["jacobian_norm"][:, t],
                                   [np.linalg.norm(J, 2) for J in jac], rtol=1e-4, atol=1e-6)
        states = new

    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x))
    cell = model.layers[0].cell
    extra = cell.trainable_weights[3:]
    grads = tape.gradient(loss, extra)
    norms = entry["weight_grad_norm"]
    for w, g in zip(extra, grads):
        name = w.path.split("/")[-1]
        g = np.asarray(g)
        if name == "gate_recurrent_kernel":
            want = {k: np.linalg.norm(part) for k, part in zip("ifo", np.split(g, 3, axis=1))}
        else:
            want = {{"input": "i", "forget": "f", "output": "o"}[name.split("_")[0]]:
                    np.linalg.norm(g)}
        assert norms[name].keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(norms[name][k], want[k], rtol=1e-4)
    assert set(norms) == {"kernel", "recurrent_kernel", "bias"} | {
        w.path.split("/")[-1] for w in extra}


def test_monitor_records_gates_states_and_extra_weights(tmp_path):
    """An FGR run for the viewer: the state g, the peephole and G gradient norms."""
    from keras_rnnx.monitor import RNNMonitor
    from keras_rnnx.runlog import RunReader

    rng = np.random.default_rng(11)
    x = rng.normal(size=(16, T, D)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    model = keras.Sequential([keras.Input((T, D)),
                              rx.RNN(rx.LSTMVariantCell(U, variant="FGR"), name="rnn"),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[RNNMonitor(tmp_path / "run", x[:4], y[:4], every=2)])
    reader = RunReader(tmp_path / "run")
    layer = reader.meta["layers"]["rnn"]
    assert layer["cell"] == "LSTM-FGR" and layer["states"] == ["h", "c", "g"]
    assert layer["activation_bounds"]["g"] == [0.0, 1.0]
    _, g = reader.frames("g", "rnn")[-1]
    assert g.shape == (4, T, 3 * U) and np.all((g >= 0) & (g <= 1))
    _, norms = reader.frames("gate_recurrent_kernel_grad_norm", "rnn")[-1]
    assert norms.shape == (3,) and np.all(norms > 0)
    for name in ("input", "forget", "output"):
        _, norm = reader.frames(f"{name}_gate_peephole_weights_grad_norm", "rnn")[-1]
        assert norm.shape == (1,) and norm[0] > 0
